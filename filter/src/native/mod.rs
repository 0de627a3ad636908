//! The dynamic-module host layer: `libmeshauthz_filter.so`, loaded by Envoy 1.40 as
//! `envoy.filters.http.dynamic_modules` (ABI `v0.2.0`). The request logic is [`crate::decide`],
//! the same as the Wasm build's; this layer answers its questions through Envoy's callbacks.
//!
//! - Configurations are created and destroyed on Envoy's main thread and shared by every
//!   worker: [`Config`] is `Send + Sync`, and a table is built once per configuration.
//! - Per-connection memory ([`Caches`]) is per worker thread: a stream never leaves its worker.
//! - Identity: the ABI gives an HTTP filter only the peer's first URI SAN, so the peer's
//!   certificate comes from the HCM's own XFCC element (`set_current_client_cert_details:
//!   {cert: true}`), accepted only when its SHA-256 is the connection's peer-certificate digest.
//! - Counters are Envoy counters (`dynamicmodulescustom.meshauthz.*`), bumped per request.
//! - No panic crosses the boundary: every hook catches it; a request whose decision panicked is
//!   answered 500 and Envoy keeps serving.

#![allow(unsafe_code)]

mod ffi;
mod host;

use std::cell::RefCell;
use std::ffi::{c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};

use ffi::{Buffer, Callbacks, Header};
use host::NativeHost;
use log::{error, info};

use crate::DENY_DETAILS;
use crate::config::FilterConfig;
use crate::decide::{self, Caches, Verdict};
use crate::stats::{bumps, counter_names};

/// What `program_init` answers: the ABI this module is written against.
static ABI_VERSION: &[u8] = b"v0.2.0\0";

/// One filter configuration: the validated plugin configuration and its counters' ids.
struct Config {
    config: FilterConfig,
    /// Ids of [`counter_names`]'s fixed counters, then of the per-policy ones.
    fixed: Vec<usize>,
    per_policy: Vec<usize>,
}

// Built on the main thread, read by every worker: the table and the ids are plain data.
const _: () = {
    const fn shared<T: Send + Sync>() {}
    shared::<Config>()
};

thread_local! {
    /// This worker's peers and connections.
    static CACHES: RefCell<Caches> = RefCell::new(Caches::default());
}

/// Runs a hook, catching any panic so it never unwinds into Envoy.
fn guarded<T>(hook: &str, fallback: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        error!("meshauthz: panic in {hook}; contained");
        fallback
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    guarded("program_init", std::ptr::null(), || {
        if Callbacks::load().is_none() {
            // Not an Envoy with the callbacks this module needs: refuse to load.
            return std::ptr::null();
        }
        let _ = log::set_logger(&LOGGER);
        ABI_VERSION.as_ptr().cast()
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy_ptr: *mut c_void,
    _name: Buffer,
    config: Buffer,
) -> *const c_void {
    guarded("config_new", std::ptr::null(), || {
        let Some(cb) = Callbacks::load() else {
            return std::ptr::null();
        };
        let started = std::time::Instant::now();
        log::set_max_level(envoy_log_level(cb));
        // SAFETY: Envoy passes the configuration bytes, valid for this call.
        let bytes = unsafe { config.bytes() };
        let config = match FilterConfig::parse(bytes) {
            // Envoy 1.40's dynamic-module ABI reads top-level metadata keys only, and
            // jwt_authn's claims are nested under `payload`: a table that needs them cannot be
            // decided here, so it is refused rather than decided without them.
            Ok(c) if !c.table.claim_paths().is_empty() => {
                error!(
                    "meshauthz: rejecting configuration: its policies use JWT claims (requestPrincipals, \
                     request.auth.*), which the native build cannot read in Envoy 1.40; use the Wasm build"
                );
                return std::ptr::null();
            }
            Ok(c) => c,
            Err(e) => {
                error!("meshauthz: rejecting configuration: {e}");
                return std::ptr::null();
            }
        };
        let (fixed, per_policy) = counter_names(&config.table);
        let define = |name: &str| -> Option<usize> {
            let mut id = 0usize;
            // SAFETY: `name` outlives the call; no labels; `id` is valid for one write.
            let result = unsafe {
                (cb.define_counter)(
                    config_envoy_ptr,
                    Buffer::of(name.as_bytes()),
                    std::ptr::null(),
                    0,
                    &mut id,
                )
            };
            (result == ffi::METRICS_SUCCESS).then_some(id)
        };
        let (Some(fixed), Some(per_policy)) = (
            fixed.into_iter().map(define).collect::<Option<Vec<_>>>(),
            per_policy.iter().map(|n| define(n)).collect::<Option<Vec<_>>>(),
        ) else {
            error!("meshauthz: rejecting configuration: Envoy refused to define its counters");
            return std::ptr::null();
        };
        info!("{}", config.summary(started.elapsed().as_secs_f64() * 1e3));
        Box::into_raw(Box::new(Config {
            config,
            fixed,
            per_policy,
        }))
        .cast_const()
        .cast()
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: *const c_void) {
    guarded("config_destroy", (), || {
        if !config.is_null() {
            // SAFETY: the pointer came from `Box::into_raw` in `config_new`, and Envoy destroys
            // a configuration once, after its last filter.
            drop(unsafe { Box::from_raw(config.cast_mut().cast::<Config>()) });
        }
    });
}

/// A stream's filter needs nothing of its own: the configuration pointer is its handle.
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: *const c_void,
    _filter: *mut c_void,
) -> *const c_void {
    config
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter: *mut c_void,
    config: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    let Some(cb) = Callbacks::load() else {
        return ffi::HEADERS_STOP_ITERATION;
    };
    // SAFETY: `config` is what `http_filter_new` returned: a live `Config` (Envoy keeps the
    // configuration until its filters are gone).
    let Some(config) = (unsafe { config.cast::<Config>().as_ref() }) else {
        send(cb, filter, 500, b"meshauthz: no configuration");
        return ffi::HEADERS_STOP_ITERATION;
    };
    let host = NativeHost {
        cb,
        filter,
        fail: &config.config.fail_host_calls,
        hcm_added_xfcc: std::cell::Cell::new(false),
        previous_xfcc_needed: config.config.xfcc != crate::config::XfccMode::SanitizeSet,
    };
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        #[cfg(feature = "fault-injection")]
        if host.request_header_present(b"x-meshauthz-test-panic") {
            panic!("meshauthz: test panic on a marked request");
        }
        CACHES.with_borrow_mut(|caches| decide::on_request(&host, caches, &config.config))
    }));
    match outcome {
        Ok(outcome) => {
            let b = bumps(outcome.tally);
            let ids = b
                .fixed()
                .filter_map(|i| config.fixed.get(i))
                .chain(b.policies().filter_map(|p| config.per_policy.get(p as usize)));
            for &id in ids {
                // SAFETY: a counter id this configuration defined; no labels.
                unsafe { (cb.increment_counter)(filter, id, std::ptr::null(), 0, 1) };
            }
            match outcome.verdict {
                Verdict::Continue => ffi::HEADERS_CONTINUE,
                Verdict::Denied => ffi::HEADERS_STOP_ITERATION,
            }
        }
        Err(_) => {
            error!("meshauthz: panic while deciding a request; answered 500");
            send(cb, filter, 500, b"meshauthz: internal error");
            ffi::HEADERS_STOP_ITERATION
        }
    }
}

fn send(cb: &Callbacks, filter: *mut c_void, status: u32, body: &[u8]) {
    let content_type = Header {
        key: Buffer::of(b"content-type"),
        value: Buffer::of(b"text/plain"),
    };
    // SAFETY: every buffer outlives the call; Envoy copies what it keeps.
    unsafe {
        (cb.send_response)(
            filter,
            status,
            &content_type,
            1,
            Buffer::of(body),
            Buffer::of(DENY_DETAILS.as_bytes()),
        )
    };
}

// The hooks the loader requires but this filter does not use: let everything through.

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_body(_: *mut c_void, _: *const c_void, _: bool) -> u32 {
    ffi::BODY_CONTINUE
}
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(_: *mut c_void, _: *const c_void) -> u32 {
    ffi::TRAILERS_CONTINUE
}
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    _: *mut c_void,
    _: *const c_void,
    _: bool,
) -> u32 {
    ffi::HEADERS_CONTINUE
}
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(_: *mut c_void, _: *const c_void, _: bool) -> u32 {
    ffi::BODY_CONTINUE
}
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(_: *mut c_void, _: *const c_void) -> u32 {
    ffi::TRAILERS_CONTINUE
}
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(_: *mut c_void, _: *const c_void) {}
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_destroy(_: *const c_void) {}
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(_: *mut c_void, _: *const c_void, _: u64) {}
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _: *mut c_void,
    _: *const c_void,
) {
}
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _: *mut c_void,
    _: *const c_void,
) {
}
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    _: *mut c_void,
    _: *const c_void,
    _: u64,
    _: u32,
    _: *const Header,
    _: usize,
    _: *const Buffer,
    _: usize,
) {
}
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _: *mut c_void,
    _: *const c_void,
    _: u64,
    _: *const Header,
    _: usize,
    _: bool,
) {
}
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _: *mut c_void,
    _: *const c_void,
    _: u64,
    _: *const Buffer,
    _: usize,
    _: bool,
) {
}
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _: *mut c_void,
    _: *const c_void,
    _: u64,
    _: *const Header,
    _: usize,
) {
}
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(_: *mut c_void, _: *const c_void, _: u64) {}
#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _: *mut c_void,
    _: *const c_void,
    _: u64,
    _: u32,
) {
}

/// Envoy's `dynamic_modules` log level, as a `log` filter.
fn envoy_log_level(cb: &Callbacks) -> log::LevelFilter {
    use ffi::log_level as l;
    // SAFETY: plain integer argument.
    let enabled = |level| unsafe { (cb.log_enabled)(level) };
    [
        (l::TRACE, log::LevelFilter::Trace),
        (l::DEBUG, log::LevelFilter::Debug),
        (l::INFO, log::LevelFilter::Info),
        (l::WARN, log::LevelFilter::Warn),
        (l::ERROR, log::LevelFilter::Error),
    ]
    .into_iter()
    .find(|&(level, _)| enabled(level))
    .map_or(log::LevelFilter::Off, |(_, f)| f)
}

/// The `log` crate's records, written to Envoy's log (component `dynamic_modules`).
struct EnvoyLogger;

static LOGGER: EnvoyLogger = EnvoyLogger;

impl log::Log for EnvoyLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        let Some(cb) = Callbacks::load() else { return };
        if !self.enabled(record.metadata()) {
            return;
        }
        use ffi::log_level as l;
        let level = match record.level() {
            log::Level::Trace => l::TRACE,
            log::Level::Debug => l::DEBUG,
            log::Level::Info => l::INFO,
            log::Level::Warn => l::WARN,
            log::Level::Error => l::ERROR,
        };
        let message = record.args().to_string();
        // SAFETY: `message` outlives the call.
        unsafe { (cb.log)(level, Buffer::of(message.as_bytes())) };
    }

    fn flush(&self) {}
}
