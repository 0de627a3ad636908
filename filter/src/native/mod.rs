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

use std::cell::RefCell;
use std::ffi::{c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};

use ffi::{Buffer, Callbacks, Header, attribute};
use log::{error, info};
use sha2::Digest as _;

use crate::config::FilterConfig;
use crate::decide::{self, Caches, Verdict, XFCC};
use crate::host::{Host, HostError, Property};
use crate::stats::{bumps, counter_names};
use crate::{DENY_BODY, DENY_DETAILS, DENY_STATUS};

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
        info!(
            "meshauthz: configured policies={} rules={} mode={:?} xfcc={:?} configure_ms={:.3}",
            config.table.policy_count(),
            config.table.rule_count(),
            config.mode,
            config.xfcc,
            started.elapsed().as_secs_f64() * 1e3,
        );
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
            let (fixed, policy) = bumps(outcome.tally);
            let ids = fixed
                .iter()
                .filter_map(|&i| config.fixed.get(i))
                .chain(policy.and_then(|p| config.per_policy.get(p as usize)));
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

/// Envoy, as [`decide`] sees it, for one request.
struct NativeHost<'a> {
    cb: &'static Callbacks,
    filter: *mut c_void,
    /// Host call names to fail (fault-injection builds only; empty otherwise).
    fail: &'a [String],
    /// Whether the HCM added this hop's XFCC element (with the certificate) to the request.
    hcm_added_xfcc: std::cell::Cell<bool>,
    /// Whether the logic needs what previous hops sent (`append_forward`, `off`); with
    /// `sanitize_set` an mTLS request's XFCC is replaced whole, so it is not worth splitting.
    previous_xfcc_needed: bool,
}

/// The request headers as Envoy holds them (views valid until a header is set), with this
/// hop's own XFCC element, which the HCM added to carry the certificate of an mTLS peer, taken
/// off: what the logic sees as "incoming" is what previous hops (or a plaintext client) sent.
struct NativeHeaders {
    entries: Vec<Header>,
    xfcc_before_this_hop: Option<String>,
}

impl NativeHost<'_> {
    fn check(&self, what: &'static str) -> Result<(), HostError> {
        crate::host::injected_fault(self.fail, what)
    }

    fn string_attribute(&self, id: u32) -> Option<Box<[u8]>> {
        let mut out = Buffer::NULL;
        // SAFETY: `filter` is the live filter of the current hook; `out` is valid for one write.
        let ok = unsafe { (self.cb.attribute_string)(self.filter, id, &mut out) };
        // SAFETY: Envoy's buffer, valid during this hook; copied at once.
        ok.then(|| unsafe { out.bytes() }.map(Box::from)).flatten()
    }

    fn int_attribute(&self, id: u32) -> Option<u64> {
        let mut out = 0u64;
        // SAFETY: as above.
        unsafe { (self.cb.attribute_int)(self.filter, id, &mut out) }.then_some(out)
    }

    /// Every value of request header `name`, copied.
    fn request_header_values(&self, name: &[u8]) -> Vec<Vec<u8>> {
        let mut values = Vec::new();
        let mut count = 1usize;
        let mut i = 0;
        while i < count {
            let mut out = Buffer::NULL;
            // SAFETY: `name` outlives the call; `out` and `count` are valid for one write each.
            let ok = unsafe {
                (self.cb.get_header)(
                    self.filter,
                    ffi::HEADER_TYPE_REQUEST,
                    Buffer::of(name),
                    &mut out,
                    i,
                    &mut count,
                )
            };
            // SAFETY: Envoy's buffer, valid during this hook; copied at once.
            match ok.then(|| unsafe { out.bytes() }).flatten() {
                Some(v) => values.push(v.to_vec()),
                None => break,
            }
            i += 1;
        }
        values
    }

    #[cfg(feature = "fault-injection")]
    fn request_header_present(&self, name: &[u8]) -> bool {
        !self.request_header_values(name).is_empty()
    }

    /// The peer certificate the HCM put in this hop's XFCC element, accepted only if its
    /// SHA-256 is the connection's own peer-certificate digest.
    fn peer_certificate(&self) -> Result<Option<Box<[u8]>>, HostError> {
        let failed = |status: &str| HostError {
            what: Property::PeerCertificate.name(),
            status: status.to_owned(),
        };
        let xfcc = self.request_header_values(XFCC.as_bytes());
        let joined = String::from_utf8_lossy(&xfcc.join(&b","[..])).into_owned();
        let pem = crate::xfcc::certificate(&joined).ok_or_else(|| {
            failed(
                "no Cert= in the HCM's x-forwarded-client-cert: the native filter needs \
                 forward_client_cert_details SANITIZE_SET (or APPEND_FORWARD) with set_current_client_cert_details.cert",
            )
        })?;
        let (_, parsed) =
            x509_parser::pem::parse_x509_pem(&pem).map_err(|e| failed(&format!("XFCC Cert= is not PEM: {e}")))?;
        let digest = self
            .string_attribute(attribute::SHA256_PEER_CERTIFICATE_DIGEST)
            .ok_or_else(|| failed("no peer certificate digest"))?;
        let ours = hex(&sha2::Sha256::digest(&parsed.contents));
        if !ours.as_bytes().eq_ignore_ascii_case(&digest) {
            return Err(failed("the XFCC Cert= is not the connection's peer certificate"));
        }
        Ok(Some(pem.into_boxed_slice()))
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

impl Host for NativeHost<'_> {
    type Headers = NativeHeaders;

    fn property(&self, property: Property) -> Result<Option<Box<[u8]>>, HostError> {
        self.check(property.name())?;
        let int = |v: Option<u64>| v.map(|v| Box::from(v.to_le_bytes()));
        Ok(match property {
            Property::ConnectionId => int(self.int_attribute(attribute::CONNECTION_ID)),
            Property::Mtls => {
                let mut presented = false;
                // SAFETY: as in `string_attribute`.
                let ok = unsafe { (self.cb.attribute_bool)(self.filter, attribute::CONNECTION_MTLS, &mut presented) };
                if ok {
                    Some(Box::from([u8::from(presented)]))
                } else if self.int_attribute(attribute::CONNECTION_ID).is_some() {
                    // Envoy answers "not available" for a connection without TLS.
                    Some(Box::from([0u8]))
                } else {
                    return Err(HostError {
                        what: property.name(),
                        status: "no downstream connection".into(),
                    });
                }
            }
            Property::PeerCertificateDigest => self.string_attribute(attribute::SHA256_PEER_CERTIFICATE_DIGEST),
            Property::PeerCertificate => return self.peer_certificate(),
            Property::PeerSubject => self.string_attribute(attribute::SUBJECT_PEER_CERTIFICATE),
            Property::LocalUriSan => self.string_attribute(attribute::URI_SAN_LOCAL_CERTIFICATE),
            Property::SourceAddress => self.string_attribute(attribute::SOURCE_ADDRESS),
            Property::DestinationPort => int(self.int_attribute(attribute::DESTINATION_PORT)),
        })
    }

    fn request_headers(&self) -> Result<NativeHeaders, HostError> {
        self.check("request_headers")?;
        // SAFETY: `filter` is the live filter of the current hook.
        let n = unsafe { (self.cb.get_headers_size)(self.filter, ffi::HEADER_TYPE_REQUEST) };
        let mut entries = vec![
            Header {
                key: Buffer::NULL,
                value: Buffer::NULL,
            };
            n
        ];
        // SAFETY: `entries` has room for the `n` headers Envoy just counted.
        if n > 0 && !unsafe { (self.cb.get_headers)(self.filter, ffi::HEADER_TYPE_REQUEST, entries.as_mut_ptr()) } {
            return Err(HostError {
                what: "request_headers",
                status: "Envoy could not list the request headers".into(),
            });
        }
        let xfcc: Vec<&[u8]> = entries
            .iter()
            // SAFETY: Envoy's views, valid during this hook and before any setter.
            .filter(|h| unsafe { h.key.bytes() }.is_some_and(|k| k.eq_ignore_ascii_case(XFCC.as_bytes())))
            .filter_map(|h| unsafe { h.value.bytes() })
            .collect();
        // The HCM adds this hop's element exactly when the peer presented a certificate.
        let added_by_hcm = matches!(self.property(Property::Mtls), Ok(Some(v)) if *v == [1]) && !xfcc.is_empty();
        self.hcm_added_xfcc.set(added_by_hcm);
        let xfcc_before_this_hop = (!xfcc.is_empty() && (self.previous_xfcc_needed || !added_by_hcm)).then(|| {
            let joined = String::from_utf8_lossy(&xfcc.join(&b","[..])).into_owned();
            if added_by_hcm {
                crate::xfcc::without_last_element(&joined)
            } else {
                joined
            }
        });
        Ok(NativeHeaders {
            entries,
            xfcc_before_this_hop: xfcc_before_this_hop.filter(|x| !x.is_empty()),
        })
    }

    fn header_pairs(headers: &NativeHeaders) -> Option<impl Iterator<Item = (&[u8], &[u8])>> {
        let is_xfcc = |k: &[u8]| k.eq_ignore_ascii_case(XFCC.as_bytes());
        let entries = headers.entries.iter().filter_map(move |h| {
            // SAFETY: as in `request_headers`; the logic reads them before it sets anything.
            let (k, v) = unsafe { (h.key.bytes()?, h.value.bytes().unwrap_or_default()) };
            (!is_xfcc(k)).then_some((k, v))
        });
        let xfcc = headers
            .xfcc_before_this_hop
            .as_deref()
            .map(|x| (XFCC.as_bytes(), x.as_bytes()));
        Some(entries.chain(xfcc))
    }

    fn set_request_header(&self, name: &str, value: &str) -> Result<(), HostError> {
        self.check("set_request_header")?;
        // SAFETY: both buffers outlive the call; Envoy copies them.
        let ok = unsafe {
            (self.cb.set_header)(
                self.filter,
                ffi::HEADER_TYPE_REQUEST,
                Buffer::of(name.as_bytes()),
                Buffer::of(value.as_bytes()),
            )
        };
        ok.then_some(()).ok_or(HostError {
            what: "set_request_header",
            status: "refused".into(),
        })
    }

    fn remove_request_header(&self, name: &str) -> Result<(), HostError> {
        self.check("remove_request_header")?;
        // SAFETY: a null value removes the header; `name` outlives the call.
        let ok = unsafe {
            (self.cb.set_header)(
                self.filter,
                ffi::HEADER_TYPE_REQUEST,
                Buffer::of(name.as_bytes()),
                Buffer::NULL,
            )
        };
        ok.then_some(()).ok_or(HostError {
            what: "remove_request_header",
            status: "refused".into(),
        })
    }

    fn send_deny(&self) {
        send(self.cb, self.filter, DENY_STATUS, DENY_BODY);
    }

    fn restore_forwarded_client_cert(&self, previous: Option<&str>) -> Result<(), HostError> {
        if !self.hcm_added_xfcc.get() {
            return Ok(());
        }
        match previous {
            Some(p) => self.set_request_header(XFCC, p),
            None => self.remove_request_header(XFCC),
        }
    }
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
