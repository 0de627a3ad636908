//! The proxy-wasm host layer: the exports Envoy calls (through [`crate::abi`]), the
//! configuration of each root context, and [`WasmHost`], which answers the request logic's
//! questions with host calls.
//!
//! Cheap by construction: the filter speaks the proxy-wasm ABI itself and exports only the
//! callbacks it needs, so Envoy enters the VM twice per request (context create, request
//! headers) where an SDK filter is entered six times. A request on a known connection costs
//! three host calls: `connection_id`, all request headers in one call, then the XFCC header or
//! the local reply (plus `source.address` when a policy looks at it). The peer identity and
//! `destination.port` are looked up on a connection's first request and remembered for the
//! connection. A stream is decided by its own root context's table ([`crate::roots`]).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::LazyLock;

use log::{error, info, warn};

use crate::abi::{self, Action, Status};
use crate::config::FilterConfig;
use crate::decide::{self, Caches, Verdict};
use crate::host::{Host, HostError, Property};
use crate::pairs::{self, Pairs};
use crate::roots::Roots;
use crate::stats::{self, Stats};
use crate::{DENY_BODY, DENY_DETAILS, DENY_STATUS};

/// One filter configuration (an Envoy root context) and its counters.
#[derive(Debug)]
struct Configured {
    config: FilterConfig,
    stats: Stats,
}
/// The deny reply's headers, serialized once for every denied request.
static DENY_HEADERS: LazyLock<Vec<u8>> = LazyLock::new(|| pairs::serialize(&[("content-type", "text/plain")]));

/// The VM's state. Envoy runs one VM per worker thread and calls it from that thread only.
#[derive(Debug)]
struct State {
    roots: Roots<Configured>,
    caches: Caches,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State {
        roots: Roots::new(),
        caches: Caches::default(),
    });
}

pub(crate) fn on_context_create(context_id: u32, root_context_id: u32) {
    // Root contexts (parent 0) are set up by `on_configure`.
    if root_context_id != 0 {
        STATE.with_borrow_mut(|s| s.roots.stream_created(context_id, root_context_id));
    }
}

pub(crate) fn on_configure(root_context_id: u32, size: usize) -> bool {
    let started = abi::now_nanos();
    // Follow Envoy's `wasm` log level, so `--component-log-level wasm:debug` turns on the
    // per-decision log lines; below Info nothing per request is formatted.
    abi::init_logging(abi::log_level().unwrap_or(log::LevelFilter::Info));
    let bytes = match abi::plugin_configuration(size) {
        Ok(bytes) => bytes,
        Err(status) => {
            error!("meshauthz: rejecting configuration: cannot read it from Envoy ({status:?})");
            return false;
        }
    };
    match FilterConfig::parse(bytes.as_deref()) {
        Ok(config) => {
            let elapsed_ms = match (started, abi::now_nanos()) {
                (Some(a), Some(b)) => b.saturating_sub(a) as f64 / 1e6,
                _ => 0.0,
            };
            info!("{}", config.summary(elapsed_ms));
            if !config.fail_host_calls.is_empty() {
                warn!(
                    "meshauthz: fault injection: failing host calls {:?}",
                    config.fail_host_calls
                );
            }
            let stats = Stats::define(&config.table);
            let configured = Rc::new(Configured { config, stats });
            let replaced = STATE.with_borrow_mut(|s| s.roots.configure(root_context_id, configured));
            if let Some(old) = replaced {
                old.stats.flush();
            }
            abi::set_tick_period(stats::FLUSH_PERIOD_MS);
            true
        }
        Err(e) => {
            error!("meshauthz: rejecting configuration: {e}");
            false
        }
    }
}

/// Flushes the root's counters, and those of roots found gone ([`roots`]) before their
/// tables are dropped.
pub(crate) fn on_tick(root_context_id: u32) {
    let tick = STATE.with_borrow_mut(|s| s.roots.tick(root_context_id));
    if let Some(c) = tick.ticked {
        c.stats.flush();
    }
    for (id, c) in tick.gone {
        c.stats.flush();
        info!("meshauthz: dropped the table of root context {id}, which stopped ticking");
    }
}

pub(crate) fn on_request_headers(context_id: u32) -> Action {
    let Some(configured) = STATE.with_borrow(|s| s.roots.of_stream(context_id)) else {
        warn!("meshauthz: no valid table for this stream's own configuration; denying");
        WasmHost { fail: &[] }.send_deny();
        return Action::Pause;
    };
    let host = WasmHost {
        fail: &configured.config.fail_host_calls,
    };
    // Host calls made while deciding never re-enter the VM except through
    // `proxy_on_memory_allocate`, which does not touch the state.
    let outcome = STATE.with_borrow_mut(|s| decide::on_request(&host, &mut s.caches, &configured.config));
    configured.stats.record(outcome.tally);
    match outcome.verdict {
        Verdict::Continue => Action::Continue,
        Verdict::Denied => Action::Pause,
    }
}

/// The proxy-wasm host, as [`decide`] sees it.
struct WasmHost<'a> {
    /// Host call names to fail (fault-injection builds only; empty otherwise).
    fail: &'a [String],
}

impl WasmHost<'_> {
    fn check(&self, what: &'static str) -> Result<(), HostError> {
        crate::host::injected_fault(self.fail, what)
    }
}

fn host_result<T>(what: &'static str, r: Result<T, Status>) -> Result<T, HostError> {
    r.map_err(|status| HostError {
        what,
        status: format!("{status:?}"),
    })
}

impl Host for WasmHost<'_> {
    type Headers = Box<[u8]>;

    fn property(&self, property: Property) -> Result<Option<Box<[u8]>>, HostError> {
        let what = property.name();
        self.check(what)?;
        let path: &[u8] = match property {
            Property::ConnectionId => b"connection_id",
            Property::Mtls => b"connection\0mtls",
            Property::PeerCertificateDigest => b"connection\0sha256_peer_certificate_digest",
            Property::PeerCertificate => b"connection\0peer_certificate",
            Property::PeerSubject => b"connection\0subject_peer_certificate",
            Property::LocalUriSan => b"connection\0uri_san_local_certificate",
            Property::SourceAddress => b"source\0address",
            Property::DestinationPort => b"destination\0port",
            Property::DestinationAddress => b"destination\0address",
            Property::RequestedServerName => b"connection\0requested_server_name",
        };
        host_result(what, abi::property(path))
    }

    fn jwt_claim(&self, path: &[String]) -> Result<Option<Box<[u8]>>, HostError> {
        self.check("jwt claim")?;
        let mut p = b"metadata\0filter_metadata\0envoy.filters.http.jwt_authn\0payload".to_vec();
        for segment in path {
            p.push(0);
            p.extend_from_slice(segment.as_bytes());
        }
        host_result("jwt claim", abi::property_present(&p))
    }

    fn request_headers(&self) -> Result<Box<[u8]>, HostError> {
        self.check("request_headers")?;
        host_result("request_headers", abi::request_header_pairs())?.ok_or_else(|| HostError {
            what: "request_headers",
            status: "no header map".into(),
        })
    }

    fn header_pairs(headers: &Box<[u8]>) -> Option<impl Iterator<Item = (&[u8], &[u8])>> {
        Some(Pairs::parse(headers)?.iter())
    }

    fn set_request_header(&self, name: &str, value: &str) -> Result<(), HostError> {
        self.check("set_request_header")?;
        status_result("set_request_header", abi::replace_request_header(name, value))
    }

    fn remove_request_header(&self, name: &str) -> Result<(), HostError> {
        self.check("remove_request_header")?;
        status_result("remove_request_header", abi::remove_request_header(name))
    }

    fn send_deny(&self) {
        abi::send_local_response(DENY_STATUS, DENY_DETAILS, DENY_BODY, &DENY_HEADERS);
    }
}

fn status_result(what: &'static str, status: Status) -> Result<(), HostError> {
    match status {
        Status::Ok => Ok(()),
        other => Err(HostError {
            what,
            status: format!("{other:?}"),
        }),
    }
}
