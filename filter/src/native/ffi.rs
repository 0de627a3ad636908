//! The part of Envoy's dynamic-module ABI (`v0.2.0`, Envoy 1.40) this filter calls: types as
//! the ABI lays them out, and the callbacks, looked up by name in the Envoy process when the
//! module is loaded ([`Callbacks::load`]).
//!
//! Why look them up instead of linking: the crate's own unit tests (and any binary that links
//! it without Envoy) would otherwise fail to link against symbols only Envoy defines, and a
//! callback this Envoy lacks becomes a clean refusal to load (`program_init` returns null)
//! rather than an undefined-symbol error. A lookup happens once per process.
//!
//! Written from the ABI's documentation; every signature and ordinal used is pinned by the
//! real-Envoy tests (`tests/tests/filter.rs` runs against this build too).

#![allow(unsafe_code)]

use std::ffi::{c_char, c_void};
use std::sync::OnceLock;

/// `envoy_dynamic_module_type_envoy_buffer` / `module_buffer`: a borrowed byte range.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Buffer {
    pub ptr: *const u8,
    pub len: usize,
}

impl Buffer {
    pub const NULL: Buffer = Buffer {
        ptr: std::ptr::null(),
        len: 0,
    };

    pub fn of(bytes: &[u8]) -> Buffer {
        Buffer {
            ptr: bytes.as_ptr(),
            len: bytes.len(),
        }
    }

    /// The bytes, or `None` for a null pointer.
    ///
    /// # Safety
    /// `ptr` must be null or point to `len` readable bytes that stay valid and unchanged for
    /// `'a` (for Envoy's buffers: until the hook returns, and before any setter is called).
    pub unsafe fn bytes<'a>(self) -> Option<&'a [u8]> {
        if self.ptr.is_null() {
            return None;
        }
        // SAFETY: as the caller promises.
        Some(unsafe { std::slice::from_raw_parts(self.ptr, self.len) })
    }
}

/// `envoy_dynamic_module_type_{envoy,module}_http_header`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Header {
    pub key: Buffer,
    pub value: Buffer,
}

pub const HEADER_TYPE_REQUEST: u32 = 0;
/// `envoy_dynamic_module_type_on_http_filter_request_headers_status`.
pub const HEADERS_CONTINUE: u32 = 0;
pub const HEADERS_STOP_ITERATION: u32 = 1;
pub const BODY_CONTINUE: u32 = 0;
pub const TRAILERS_CONTINUE: u32 = 0;
/// `envoy_dynamic_module_type_metrics_result_Success`.
pub const METRICS_SUCCESS: u32 = 0;

/// `envoy_dynamic_module_type_attribute_id` ordinals (pinned by tests against Envoy 1.40).
pub mod attribute {
    pub const SOURCE_ADDRESS: u32 = 24;
    pub const DESTINATION_ADDRESS: u32 = 26;
    pub const DESTINATION_PORT: u32 = 27;
    pub const CONNECTION_ID: u32 = 28;
    pub const CONNECTION_MTLS: u32 = 29;
    pub const CONNECTION_REQUESTED_SERVER_NAME: u32 = 30;
    pub const SUBJECT_PEER_CERTIFICATE: u32 = 33;
    pub const URI_SAN_LOCAL_CERTIFICATE: u32 = 36;
    pub const SHA256_PEER_CERTIFICATE_DIGEST: u32 = 38;
}

/// `envoy_dynamic_module_type_log_level`.
pub mod log_level {
    pub const TRACE: u32 = 0;
    pub const DEBUG: u32 = 1;
    pub const INFO: u32 = 2;
    pub const WARN: u32 = 3;
    pub const ERROR: u32 = 4;
}

type Ptr = *mut c_void;

type GetHeadersSizeFn = unsafe extern "C" fn(Ptr, u32) -> usize;
type GetHeadersFn = unsafe extern "C" fn(Ptr, u32, *mut Header) -> bool;
type GetHeaderFn = unsafe extern "C" fn(Ptr, u32, Buffer, *mut Buffer, usize, *mut usize) -> bool;
type SetHeaderFn = unsafe extern "C" fn(Ptr, u32, Buffer, Buffer) -> bool;
type SendResponseFn = unsafe extern "C" fn(Ptr, u32, *const Header, usize, Buffer, Buffer);
type AttributeStringFn = unsafe extern "C" fn(Ptr, u32, *mut Buffer) -> bool;
type AttributeIntFn = unsafe extern "C" fn(Ptr, u32, *mut u64) -> bool;
type AttributeBoolFn = unsafe extern "C" fn(Ptr, u32, *mut bool) -> bool;
type DefineCounterFn = unsafe extern "C" fn(Ptr, Buffer, *const Buffer, usize, *mut usize) -> u32;
type IncrementCounterFn = unsafe extern "C" fn(Ptr, usize, *const Buffer, usize, u64) -> u32;
type LogFn = unsafe extern "C" fn(u32, Buffer);
type LogEnabledFn = unsafe extern "C" fn(u32) -> bool;

/// The callbacks, as function pointers into Envoy.
#[derive(Debug)]
pub struct Callbacks {
    pub get_headers_size: GetHeadersSizeFn,
    pub get_headers: GetHeadersFn,
    pub get_header: GetHeaderFn,
    pub set_header: SetHeaderFn,
    pub send_response: SendResponseFn,
    pub attribute_string: AttributeStringFn,
    pub attribute_int: AttributeIntFn,
    pub attribute_bool: AttributeBoolFn,
    pub define_counter: DefineCounterFn,
    pub increment_counter: IncrementCounterFn,
    pub log: LogFn,
    pub log_enabled: LogEnabledFn,
}

unsafe extern "C" {
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
}

/// glibc's `RTLD_DEFAULT`: search the process's global symbols (Envoy exports its callbacks).
const RTLD_DEFAULT: *mut c_void = std::ptr::null_mut();

static CALLBACKS: OnceLock<Option<Callbacks>> = OnceLock::new();

impl Callbacks {
    /// Looks every callback up once; `None` if this process is not an Envoy that has them all.
    pub fn load() -> Option<&'static Callbacks> {
        CALLBACKS.get_or_init(Callbacks::resolve).as_ref()
    }

    fn resolve() -> Option<Callbacks> {
        /// One symbol as a function pointer of the field's type.
        macro_rules! symbol {
            ($name:literal, $ty:ty) => {{
                // SAFETY: a NUL-terminated name; dlsym only reads it.
                let p = unsafe { dlsym(RTLD_DEFAULT, concat!($name, "\0").as_ptr().cast()) };
                if p.is_null() {
                    return None;
                }
                // SAFETY: Envoy defines the symbol with the signature the ABI documents, which
                // is the field's type; a data pointer and a function pointer have the same
                // size and representation on the platforms Envoy runs on.
                unsafe { std::mem::transmute::<*mut c_void, $ty>(p) }
            }};
        }
        Some(Callbacks {
            get_headers_size: symbol!("envoy_dynamic_module_callback_http_get_headers_size", GetHeadersSizeFn),
            get_headers: symbol!("envoy_dynamic_module_callback_http_get_headers", GetHeadersFn),
            get_header: symbol!("envoy_dynamic_module_callback_http_get_header", GetHeaderFn),
            set_header: symbol!("envoy_dynamic_module_callback_http_set_header", SetHeaderFn),
            send_response: symbol!("envoy_dynamic_module_callback_http_send_response", SendResponseFn),
            attribute_string: symbol!(
                "envoy_dynamic_module_callback_http_filter_get_attribute_string",
                AttributeStringFn
            ),
            attribute_int: symbol!(
                "envoy_dynamic_module_callback_http_filter_get_attribute_int",
                AttributeIntFn
            ),
            attribute_bool: symbol!(
                "envoy_dynamic_module_callback_http_filter_get_attribute_bool",
                AttributeBoolFn
            ),
            define_counter: symbol!(
                "envoy_dynamic_module_callback_http_filter_config_define_counter",
                DefineCounterFn
            ),
            increment_counter: symbol!(
                "envoy_dynamic_module_callback_http_filter_increment_counter",
                IncrementCounterFn
            ),
            log: symbol!("envoy_dynamic_module_callback_log", LogFn),
            log_enabled: symbol!("envoy_dynamic_module_callback_log_enabled", LogEnabledFn),
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn outside_envoy_there_are_no_callbacks() {
        assert!(super::Callbacks::load().is_none());
    }
}
