//! meshauthz's Envoy filter: enforces a compiled decision table on every inbound request.
//!
//! Thin by design: host calls gather the request (peer identity, `:authority`, `:method`,
//! destination port, and the source address and headers only when the table looks at them),
//! [`meshauthz_table::Table::evaluate`] decides, and the filter either answers `403 RBAC: access
//! denied` (as Envoy's RBAC filter does) or lets the request through with this hop's
//! `x-forwarded-client-cert`.
//!
//! Fail closed: without a valid table, `on_configure` returns false (Envoy rejects the
//! configuration) and any request that still reaches the filter is denied. Nothing on the
//! request path unwraps a host result or request data.
//!
//! Cheap by construction: the filter speaks the proxy-wasm ABI itself ([`abi`]) and exports
//! only the callbacks it needs, so Envoy enters the VM twice per request (context create,
//! request headers) where an SDK filter is entered six times. A request costs three host
//! calls: `connection_id`, all request headers in one call, then the XFCC header or the local
//! reply. The peer identity (certificate digest, parsed once per certificate) and
//! `destination.port` (only when a candidate rule gets as far as its ports) are looked up on a
//! connection's first request and remembered for the connection.
//! A stream is decided by its own root context's table ([`roots`]).

pub mod abi;
pub mod config;
pub mod identity;
pub mod pairs;
mod roots;
mod stats;

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::LazyLock;

use log::{debug, error, info, warn};
use meshauthz_table::Request;

use abi::Action;
use config::{FilterConfig, Mode, XfccMode};
use identity::PeerIdentity;
use pairs::Pairs;
use roots::Roots;
use stats::Stats;

/// The deny reply, byte for byte what Envoy's RBAC filter sends.
pub const DENY_STATUS: u32 = 403;
pub const DENY_BODY: &[u8] = b"RBAC: access denied";
/// What Envoy's `%RESPONSE_CODE_DETAILS%` shows for a request this filter denied.
pub const DENY_DETAILS: &str = "meshauthz_access_denied";
const XFCC: &str = "x-forwarded-client-cert";
/// Peer certificates, and connections, remembered at once; a cache is cleared when it fills.
const CACHE_LIMIT: usize = 4096;
/// The deny reply's headers, serialized once for every denied request.
static DENY_HEADERS: LazyLock<Vec<u8>> = LazyLock::new(|| pairs::serialize(&[("content-type", "text/plain")]));

/// What a peer certificate gives every request on its connections.
#[derive(Debug)]
struct Peer {
    identity: PeerIdentity,
    /// This hop's XFCC element for the peer.
    xfcc: String,
}

/// One filter configuration (an Envoy root context) and its counters.
#[derive(Debug)]
struct Configured {
    config: FilterConfig,
    stats: Stats,
}

/// What a downstream connection gives every request on it. Both are fixed for the
/// connection's life (Envoy's server-side TLS never renegotiates), so they are looked up once
/// per connection instead of once per request: a property read is the most expensive host
/// call there is (see `BENCHMARKS.md`).
#[derive(Debug)]
struct Connection {
    peer: Option<Rc<Peer>>,
    /// `destination.port`, once a decision needed it.
    port: Cell<Option<u16>>,
}

/// The VM's state. Envoy runs one VM per worker thread and calls it from that thread only.
#[derive(Debug)]
struct State {
    roots: Roots<Configured>,
    /// By certificate digest: a client's new connections skip parsing its certificate again.
    peers: HashMap<Box<[u8]>, Rc<Peer>>,
    /// By Envoy's connection ID, which Envoy assigns and never reuses within a process.
    connections: HashMap<u64, Rc<Connection>>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State {
        roots: Roots::new(),
        peers: HashMap::new(),
        connections: HashMap::new(),
    });
}

fn on_context_create(context_id: u32, root_context_id: u32) {
    // Root contexts (parent 0) are set up by `on_configure`.
    if root_context_id != 0 {
        STATE.with_borrow_mut(|s| s.roots.stream_created(context_id, root_context_id));
    }
}

fn on_configure(root_context_id: u32, size: usize) -> bool {
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
            let stats = Stats::define(&config.table);
            let elapsed_ms = match (started, abi::now_nanos()) {
                (Some(a), Some(b)) => b.saturating_sub(a) as f64 / 1e6,
                _ => 0.0,
            };
            info!(
                "meshauthz: configured policies={} rules={} mode={:?} xfcc={:?} configure_ms={elapsed_ms:.3}",
                config.table.policy_count(),
                config.table.rule_count(),
                config.mode,
                config.xfcc,
            );
            let replaced = STATE.with_borrow_mut(|s| {
                s.roots
                    .configure(root_context_id, Rc::new(Configured { config, stats }))
            });
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
fn on_tick(root_context_id: u32) {
    let tick = STATE.with_borrow_mut(|s| s.roots.tick(root_context_id));
    if let Some(c) = tick.ticked {
        c.stats.flush();
    }
    for (id, c) in tick.gone {
        c.stats.flush();
        info!("meshauthz: dropped the table of root context {id}, which stopped ticking");
    }
}

fn on_request_headers(context_id: u32) -> Action {
    let Some(configured) = STATE.with_borrow(|s| s.roots.of_stream(context_id)) else {
        warn!("meshauthz: no valid table for this stream; denying");
        return deny();
    };
    let config = &configured.config;
    let connection = connection();
    let peer = connection.peer.as_deref();
    let principal = peer.and_then(|p| p.identity.principal.as_deref());
    let buffer = match abi::request_header_pairs() {
        Ok(Some(buffer)) => buffer,
        other => {
            warn!(
                "meshauthz: cannot read the request headers ({:?}); denying",
                other.err()
            );
            return deny();
        }
    };
    let Some(headers) = RequestHeaders::read(&buffer, config) else {
        warn!("meshauthz: malformed request headers from Envoy; denying");
        return deny();
    };
    let source_ip = if config.table.uses_source_ip() {
        abi::property(b"source\0address")
            .ok()
            .flatten()
            .and_then(|b| parse_ip(&b))
    } else {
        None
    };
    let header_slots: Vec<Option<&str>> = headers.values.iter().map(|v| v.as_deref()).collect();
    let request = Request {
        principal,
        source_ip,
        authority: &headers.authority,
        port: 0,
        method: &headers.method,
        headers: &header_slots,
    };
    // The port costs a host call: fetched only if a candidate rule gets as far as its ports.
    let port = Cell::new(None);
    let decision = config.table.evaluate_with_port(&request, &|| {
        let p = connection.port.get().unwrap_or_else(|| {
            let p = abi::property(b"destination\0port")
                .ok()
                .flatten()
                .and_then(|b| le_u16(&b))
                .unwrap_or(0);
            connection.port.set(Some(p));
            p
        });
        port.set(Some(p));
        p
    });
    configured.stats.record(&decision, config.mode);
    if log::log_enabled!(log::Level::Debug) {
        let by = decision.by.map(|b| (config.table.policy_name(b.policy), b.rule));
        debug!(
            "meshauthz: decision={} mode={:?} policy={} rule={} principal={} host={} port={} method={}",
            if decision.allowed { "allow" } else { "deny" },
            config.mode,
            by.map_or("none", |b| b.0),
            by.and_then(|b| b.1).map_or("none".into(), |r| r.to_string()),
            principal.unwrap_or("-"),
            headers.authority,
            port.get().map_or("-".into(), |p| p.to_string()),
            headers.method,
        );
    }
    if !decision.allowed && config.mode == Mode::Enforce {
        return deny();
    }
    forward_client_cert(config.xfcc, peer, headers.xfcc.as_deref());
    Action::Continue
}

fn deny() -> Action {
    abi::send_local_response(DENY_STATUS, DENY_DETAILS, DENY_BODY, &DENY_HEADERS);
    Action::Pause
}

/// Inserts into a cache of at most [`CACHE_LIMIT`] entries, clearing it when full: the entries
/// are cheap to rebuild, and clearing keeps the bound without bookkeeping per request.
fn insert_bounded<K: Hash + Eq, V>(cache: &mut HashMap<K, V>, key: K, value: V) {
    if cache.len() >= CACHE_LIMIT {
        cache.clear();
    }
    cache.insert(key, value);
}

/// The request's connection: one host call (`connection_id`) when it is known, the peer
/// identity and the port looked up on its first request.
fn connection() -> Rc<Connection> {
    let id = abi::property(b"connection_id").ok().flatten().and_then(|b| le_u64(&b));
    if let Some(c) = id.and_then(|id| STATE.with_borrow(|s| s.connections.get(&id).cloned())) {
        return c;
    }
    let connection = Rc::new(Connection {
        peer: peer(),
        port: Cell::new(None),
    });
    if let Some(id) = id {
        STATE.with_borrow_mut(|s| {
            insert_bounded(&mut s.connections, id, Rc::clone(&connection));
        });
    }
    connection
}

/// The peer's identity, from the cache keyed by the certificate digest, parsing the
/// certificate on a miss. `None` on plaintext.
fn peer() -> Option<Rc<Peer>> {
    let digest = abi::property(b"connection\0sha256_peer_certificate_digest").ok()??;
    if digest.is_empty() {
        return None;
    }
    if let Some(p) = STATE.with_borrow(|s| s.peers.get(&digest).cloned()) {
        return Some(p);
    }
    let text = |path: &[u8]| {
        abi::property(path)
            .ok()
            .flatten()
            .and_then(|b| String::from_utf8(b.into_vec()).ok())
            .unwrap_or_default()
    };
    let identity = match abi::property(b"connection\0peer_certificate") {
        Ok(Some(pem)) => match identity::from_pem(&pem) {
            Ok(id) => id,
            Err(e) => {
                warn!("meshauthz: {e}; the request has no principal");
                identity::from_uri_sans(Vec::new(), Vec::new())
            }
        },
        // Envoys without `connection.peer_certificate`: the first URI SAN is all there is.
        _ => {
            let uri = text(b"connection\0uri_san_peer_certificate");
            identity::from_uri_sans(Some(uri).into_iter().filter(|u| !u.is_empty()).collect(), Vec::new())
        }
    };
    if let Some(why) = &identity.rejected {
        warn!("meshauthz: peer certificate is not an X.509-SVID ({why}); the request has no principal");
    }
    let local = text(b"connection\0uri_san_local_certificate");
    let local: Vec<String> = Some(local).into_iter().filter(|l| !l.is_empty()).collect();
    let subject = text(b"connection\0subject_peer_certificate");
    let hash = String::from_utf8_lossy(&digest).into_owned();
    let xfcc = identity::xfcc_element(&local, &hash, &subject, &identity);
    let peer = Rc::new(Peer { identity, xfcc });
    STATE.with_borrow_mut(|s| {
        insert_bounded(&mut s.peers, digest, Rc::clone(&peer));
    });
    Some(peer)
}

/// What the evaluator needs from the request headers, borrowed from Envoy's buffer where it
/// can be. Header values that are not UTF-8 are read with each invalid sequence replaced by
/// U+FFFD (SEMANTICS.md).
struct RequestHeaders<'a> {
    authority: Cow<'a, str>,
    method: Cow<'a, str>,
    /// The incoming `x-forwarded-client-cert` (repeated headers joined with `,`).
    xfcc: Option<Cow<'a, str>>,
    /// The headers the table references, in its slot order (repeated headers joined with `,`).
    values: Vec<Option<Cow<'a, str>>>,
}

impl<'a> RequestHeaders<'a> {
    /// All of it from the one `proxy_get_header_map_pairs` call rather than one call per header.
    fn read(buffer: &'a [u8], config: &FilterConfig) -> Option<RequestHeaders<'a>> {
        let names = config.table.header_names();
        let mut h = RequestHeaders {
            authority: Cow::Borrowed(""),
            method: Cow::Borrowed(""),
            xfcc: None,
            values: vec![None; names.len()],
        };
        // Only the values used are checked as UTF-8; the rest (`:path`, `user-agent`, ...) are skipped.
        let text = String::from_utf8_lossy;
        for (name, value) in Pairs::parse(buffer)?.iter() {
            match name {
                b":authority" => h.authority = text(value),
                b":method" => h.method = text(value),
                _ => {
                    if name.eq_ignore_ascii_case(XFCC.as_bytes()) {
                        join(&mut h.xfcc, text(value));
                    }
                    if let Some(i) = names.iter().position(|n| n.as_bytes().eq_ignore_ascii_case(name)) {
                        join(&mut h.values[i], text(value));
                    }
                }
            }
        }
        Some(h)
    }
}

fn join<'a>(slot: &mut Option<Cow<'a, str>>, value: Cow<'a, str>) {
    match slot {
        Some(v) => {
            let v = v.to_mut();
            v.push(',');
            v.push_str(&value);
        }
        None => *slot = Some(value),
    }
}

/// This hop's `x-forwarded-client-cert`. `incoming` is what the request arrived with: with
/// `sanitize_set` it never reaches the upstream (a client cannot vouch for itself).
fn forward_client_cert(mode: XfccMode, peer: Option<&Peer>, incoming: Option<&str>) {
    match (mode, peer) {
        (XfccMode::Off, _) => {}
        (XfccMode::SanitizeSet, Some(p)) => {
            abi::replace_request_header(XFCC, &p.xfcc);
        }
        (XfccMode::SanitizeSet, None) => {
            if incoming.is_some() {
                abi::remove_request_header(XFCC);
            }
        }
        (XfccMode::AppendForward, Some(p)) => {
            let value = match incoming {
                Some(prev) if !prev.is_empty() => Cow::Owned(format!("{prev},{}", p.xfcc)),
                _ => Cow::Borrowed(p.xfcc.as_str()),
            };
            abi::replace_request_header(XFCC, &value);
        }
        // Plaintext: nothing of ours to append; a previous hop's element is kept.
        (XfccMode::AppendForward, None) => {}
    }
}

/// `destination.port` is an 8-byte little-endian integer.
fn le_u16(bytes: &[u8]) -> Option<u16> {
    u16::try_from(le_u64(bytes)?).ok()
}

/// Integer properties (`connection_id`, `destination.port`) are 8 bytes, little-endian.
fn le_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

/// `source.address` is `ip:port` (IPv6 in brackets), or a bare IP.
fn parse_ip(bytes: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(bytes).ok()?;
    text.parse::<SocketAddr>()
        .map(|s| s.ip())
        .or_else(|_| text.parse::<IpAddr>())
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn property_decoding() {
        assert_eq!(le_u16(&8000u64.to_le_bytes()), Some(8000));
        assert_eq!(le_u16(&70000u64.to_le_bytes()), None);
        assert_eq!(le_u16(&[1, 2]), None);
        assert_eq!(parse_ip(b"127.0.0.2:5555"), Some(IpAddr::from([127, 0, 0, 2])));
        assert_eq!(parse_ip(b"[::1]:80"), Some("::1".parse().expect("ip")));
        assert_eq!(parse_ip(b"10.0.0.1"), Some(IpAddr::from([10, 0, 0, 1])));
        assert_eq!(parse_ip(b"garbage"), None);
    }
}
