//! The proxy-wasm ABI (0.2.1): the part of it this filter uses, and nothing else.
//!
//! Why not the proxy-wasm SDK: Envoy enters the VM for every callback a module *exports*, and
//! the SDK exports all of them, so every SDK filter pays six VM entries per request (context
//! create, request headers, response headers, log, done, delete) whatever it does. This filter
//! decides in one callback and keeps no per-stream state, so it exports only what it needs:
//!
//! | export | why |
//! |---|---|
//! | `proxy_abi_version_0_2_1` | tells Envoy which ABI the module speaks |
//! | `proxy_on_memory_allocate` | Envoy copies host data (headers, properties) into our memory |
//! | `proxy_on_context_create` | which filter configuration (root context) a stream belongs to |
//! | `proxy_on_configure`, `proxy_on_tick` | per configuration: load the table, flush counters |
//! | `proxy_on_request_headers` | the decision |
//!
//! Measured on Envoy 1.40 (`BENCHMARKS.md`): the SDK's empty filter costs the server about
//! 3.6 µs per request more than an empty filter with these exports.
//!
//! This module is the crate's only unsafe code: the host imports, the exports, and handing
//! host-allocated buffers back to Rust. Everything it offers the rest of the crate is safe.
//! Native builds (unit tests) have no host: every host call there fails with
//! [`Status::Unavailable`].

#![allow(unsafe_code)]

/// A host call's outcome. Only the distinction between success and the rest matters here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    NotFound,
    /// Any other code, or no host at all (native builds).
    Unavailable(u32),
}

impl Status {
    fn from_code(code: u32) -> Status {
        match code {
            0 => Status::Ok,
            1 => Status::NotFound,
            other => Status::Unavailable(other),
        }
    }
}

/// What `proxy_on_request_headers` tells Envoy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Continue,
    /// Stop the filter chain: the request was answered locally.
    Pause,
}

/// Envoy's log levels, as the ABI numbers them.
fn level_code(level: log::Level) -> u32 {
    match level {
        log::Level::Trace => 0,
        log::Level::Debug => 1,
        log::Level::Info => 2,
        log::Level::Warn => 3,
        log::Level::Error => 4,
    }
}

const MAP_REQUEST_HEADERS: u32 = 0;
const BUFFER_PLUGIN_CONFIGURATION: u32 = 7;
const METRIC_COUNTER: u32 = 0;
/// `grpc_status` for a plain HTTP local reply.
const NO_GRPC_STATUS: i32 = -1;

#[cfg(target_arch = "wasm32")]
mod host {
    #[link(wasm_import_module = "env")]
    unsafe extern "C" {
        pub fn proxy_log(level: u32, message: *const u8, size: usize) -> u32;
        pub fn proxy_get_log_level(level: *mut u32) -> u32;
        pub fn proxy_get_current_time_nanoseconds(time: *mut u64) -> u32;
        pub fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
        pub fn proxy_get_buffer_bytes(
            buffer: u32,
            start: usize,
            max_size: usize,
            data: *mut *mut u8,
            size: *mut usize,
        ) -> u32;
        pub fn proxy_get_header_map_pairs(map: u32, data: *mut *mut u8, size: *mut usize) -> u32;
        pub fn proxy_replace_header_map_value(
            map: u32,
            key: *const u8,
            key_size: usize,
            value: *const u8,
            value_size: usize,
        ) -> u32;
        pub fn proxy_remove_header_map_value(map: u32, key: *const u8, key_size: usize) -> u32;
        pub fn proxy_get_property(path: *const u8, path_size: usize, data: *mut *mut u8, size: *mut usize) -> u32;
        pub fn proxy_send_local_response(
            status: u32,
            details: *const u8,
            details_size: usize,
            body: *const u8,
            body_size: usize,
            headers: *const u8,
            headers_size: usize,
            grpc_status: i32,
        ) -> u32;
        pub fn proxy_define_metric(kind: u32, name: *const u8, name_size: usize, id: *mut u32) -> u32;
        pub fn proxy_increment_metric(id: u32, offset: i64) -> u32;
    }
}

/// Stand-ins with the imports' signatures for native builds, where there is no host.
#[cfg(not(target_arch = "wasm32"))]
#[allow(clippy::missing_safety_doc, clippy::too_many_arguments)]
mod host {
    const NO_HOST: u32 = 12;
    pub unsafe fn proxy_log(_: u32, _: *const u8, _: usize) -> u32 {
        NO_HOST
    }
    pub unsafe fn proxy_get_log_level(_: *mut u32) -> u32 {
        NO_HOST
    }
    pub unsafe fn proxy_get_current_time_nanoseconds(_: *mut u64) -> u32 {
        NO_HOST
    }
    pub unsafe fn proxy_set_tick_period_milliseconds(_: u32) -> u32 {
        NO_HOST
    }
    pub unsafe fn proxy_get_buffer_bytes(_: u32, _: usize, _: usize, _: *mut *mut u8, _: *mut usize) -> u32 {
        NO_HOST
    }
    pub unsafe fn proxy_get_header_map_pairs(_: u32, _: *mut *mut u8, _: *mut usize) -> u32 {
        NO_HOST
    }
    pub unsafe fn proxy_replace_header_map_value(_: u32, _: *const u8, _: usize, _: *const u8, _: usize) -> u32 {
        NO_HOST
    }
    pub unsafe fn proxy_remove_header_map_value(_: u32, _: *const u8, _: usize) -> u32 {
        NO_HOST
    }
    pub unsafe fn proxy_get_property(_: *const u8, _: usize, _: *mut *mut u8, _: *mut usize) -> u32 {
        NO_HOST
    }
    pub unsafe fn proxy_send_local_response(
        _: u32,
        _: *const u8,
        _: usize,
        _: *const u8,
        _: usize,
        _: *const u8,
        _: usize,
        _: i32,
    ) -> u32 {
        NO_HOST
    }
    pub unsafe fn proxy_define_metric(_: u32, _: *const u8, _: usize, _: *mut u32) -> u32 {
        NO_HOST
    }
    pub unsafe fn proxy_increment_metric(_: u32, _: i64) -> u32 {
        NO_HOST
    }
}

// ---- Exports: Envoy calls these (only in the `.wasm`; the native build exports the dynamic
// module's hooks instead). ----

#[cfg(target_arch = "wasm32")]
#[unsafe(no_mangle)]
pub extern "C" fn proxy_abi_version_0_2_1() {}

/// Envoy asks for `size` bytes to copy host data into; [`take`] gives them back to Rust.
#[cfg(target_arch = "wasm32")]
#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let buffer: Box<[std::mem::MaybeUninit<u8>]> = Box::new_uninit_slice(size);
    Box::into_raw(buffer).cast::<u8>()
}

#[cfg(target_arch = "wasm32")]
#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_context_create(context_id: u32, parent_context_id: u32) {
    crate::wasm::on_context_create(context_id, parent_context_id);
}

#[cfg(target_arch = "wasm32")]
#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_configure(root_context_id: u32, configuration_size: usize) -> u32 {
    u32::from(crate::wasm::on_configure(root_context_id, configuration_size))
}

#[cfg(target_arch = "wasm32")]
#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_tick(root_context_id: u32) {
    crate::wasm::on_tick(root_context_id);
}

#[cfg(target_arch = "wasm32")]
#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_request_headers(context_id: u32, _headers: usize, _end_of_stream: u32) -> u32 {
    match crate::wasm::on_request_headers(context_id) {
        Action::Continue => 0,
        Action::Pause => 1,
    }
}

// ---- Host calls, safe. ----

/// Takes ownership of a buffer the host filled through [`proxy_on_memory_allocate`].
fn take(data: *mut u8, size: usize) -> Option<Box<[u8]>> {
    if data.is_null() {
        return None;
    }
    // SAFETY: the host returns a pointer it got from `proxy_on_memory_allocate(size)` (a boxed
    // slice of exactly `size` bytes) after writing all `size` bytes, and hands it over once.
    Some(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(data, size)) })
}

/// Runs a host call that returns a buffer.
fn returned(call: impl FnOnce(*mut *mut u8, *mut usize) -> u32) -> Result<Option<Box<[u8]>>, Status> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    match Status::from_code(call(&mut data, &mut size)) {
        Status::Ok => Ok(take(data, size)),
        Status::NotFound => Ok(None),
        other => Err(other),
    }
}

fn log(level: log::Level, message: &str) {
    // SAFETY: pointer and length describe `message`, which outlives the call.
    unsafe { host::proxy_log(level_code(level), message.as_ptr(), message.len()) };
}

/// Envoy's current log level for Wasm, as a `log` filter.
pub fn log_level() -> Option<log::LevelFilter> {
    let mut level = 0u32;
    // SAFETY: `level` is a valid place for the host to write one u32.
    let status = Status::from_code(unsafe { host::proxy_get_log_level(&mut level) });
    (status == Status::Ok).then_some(match level {
        0 => log::LevelFilter::Trace,
        1 => log::LevelFilter::Debug,
        2 => log::LevelFilter::Info,
        3 => log::LevelFilter::Warn,
        _ => log::LevelFilter::Error,
    })
}

/// Wall-clock nanoseconds, for measuring how long configuring took.
pub fn now_nanos() -> Option<u64> {
    let mut time = 0u64;
    // SAFETY: `time` is a valid place for the host to write one u64.
    let status = Status::from_code(unsafe { host::proxy_get_current_time_nanoseconds(&mut time) });
    (status == Status::Ok).then_some(time)
}

/// Asks for `proxy_on_tick` on the current root context every `millis`.
pub fn set_tick_period(millis: u32) {
    // SAFETY: plain integer argument.
    unsafe { host::proxy_set_tick_period_milliseconds(millis) };
}

/// The plugin configuration of the root context being configured.
pub fn plugin_configuration(size: usize) -> Result<Option<Box<[u8]>>, Status> {
    // SAFETY: the out-pointers are valid for one write each for the duration of the call.
    returned(|data, len| unsafe { host::proxy_get_buffer_bytes(BUFFER_PLUGIN_CONFIGURATION, 0, size, data, len) })
}

/// A property by its path, the segments separated by NUL (`b"connection\0..."`).
pub fn property(path: &[u8]) -> Result<Option<Box<[u8]>>, Status> {
    // SAFETY: `path` outlives the call; the out-pointers are valid for one write each.
    returned(|data, len| unsafe { host::proxy_get_property(path.as_ptr(), path.len(), data, len) })
}

/// As [`property`], but a property the host answers with no bytes is present and empty
/// (`Some([])`), not absent: only `NotFound` is absent. A JWT claim can be the empty string.
pub fn property_present(path: &[u8]) -> Result<Option<Box<[u8]>>, Status> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: `path` outlives the call; the out-pointers are valid for one write each.
    let code = unsafe { host::proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size) };
    match Status::from_code(code) {
        Status::Ok => Ok(Some(take(data, size).unwrap_or_default())),
        Status::NotFound => Ok(None),
        other => Err(other),
    }
}

/// Every request header, serialized as pairs (read with [`crate::pairs::Pairs`]).
pub fn request_header_pairs() -> Result<Option<Box<[u8]>>, Status> {
    // SAFETY: the out-pointers are valid for one write each for the duration of the call.
    returned(|data, len| unsafe { host::proxy_get_header_map_pairs(MAP_REQUEST_HEADERS, data, len) })
}

/// Sets a request header, replacing every value it had.
pub fn replace_request_header(name: &str, value: &str) -> Status {
    // SAFETY: both slices outlive the call.
    Status::from_code(unsafe {
        host::proxy_replace_header_map_value(
            MAP_REQUEST_HEADERS,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

pub fn remove_request_header(name: &str) -> Status {
    // SAFETY: `name` outlives the call.
    Status::from_code(unsafe { host::proxy_remove_header_map_value(MAP_REQUEST_HEADERS, name.as_ptr(), name.len()) })
}

/// Answers the request locally. `headers` are serialized pairs ([`crate::pairs::serialize`]);
/// `details` is what Envoy's `%RESPONSE_CODE_DETAILS%` shows.
pub fn send_local_response(status: u32, details: &str, body: &[u8], headers: &[u8]) -> Status {
    // SAFETY: every slice outlives the call; the host copies what it keeps.
    Status::from_code(unsafe {
        host::proxy_send_local_response(
            status,
            details.as_ptr(),
            details.len(),
            body.as_ptr(),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            NO_GRPC_STATUS,
        )
    })
}

/// Defines (or finds) a counter; `None` if the host refuses.
pub fn define_counter(name: &str) -> Option<u32> {
    let mut id = 0u32;
    // SAFETY: `name` outlives the call; `id` is a valid place for one u32.
    let status =
        Status::from_code(unsafe { host::proxy_define_metric(METRIC_COUNTER, name.as_ptr(), name.len(), &mut id) });
    (status == Status::Ok).then_some(id)
}

pub fn increment_counter(id: u32, by: i64) -> Status {
    // SAFETY: plain integer arguments.
    Status::from_code(unsafe { host::proxy_increment_metric(id, by) })
}

/// The `log` crate's records, written to Envoy's log.
struct HostLogger;

impl log::Log for HostLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            log(record.level(), &record.args().to_string());
        }
    }

    fn flush(&self) {}
}

static LOGGER: HostLogger = HostLogger;

/// Routes the `log` macros to Envoy, at `level`. Safe to call more than once.
pub fn init_logging(level: log::LevelFilter) {
    // Already set on a later call: only the level changes.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}
