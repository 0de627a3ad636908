//! The request logic, written once against [`Host`]: who the peer is, what the request says,
//! the decision, and what reaches the upstream.
//!
//! Decide only from what the connection proves, and deny on every error:
//! - the principal is the single URI SAN of the peer's X.509-SVID; a certificate that is not
//!   one is an authentication failure and the request is denied, whatever the policies say;
//! - the source address is the connection's peer: an address the HCM took from a header
//!   (`x-forwarded-for`, or an original-IP detection extension) carries port 0, because no
//!   header names a TCP port, and such a request is refused when a policy looks at the source;
//! - a host call that fails refuses the request; nothing that failed is remembered;
//! - a client's `x-forwarded-client-cert` never passes from a connection without a certificate.
//!
//! Refusals (authentication and host failures) deny in both modes: shadow mode is for trying
//! out policies, not for letting through requests that could not be judged.

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;

use log::{debug, warn};
use meshauthz_table::{Claim, Request};

use crate::claims::ClaimValue;
use crate::config::{FilterConfig, Mode, XfccMode};
use crate::host::{Host, HostError, Property};
use crate::identity::{self, PeerIdentity};

pub(crate) const XFCC: &str = "x-forwarded-client-cert";
/// Peer certificates, and connections, remembered at once; a cache is cleared when it fills.
const CACHE_LIMIT: usize = 4096;

/// What the filter tells the host to do with the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Continue,
    /// Answered with the deny reply.
    Denied,
}

/// What a request counts for: each host layer keeps the counters its own way
/// ([`crate::stats`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tally {
    /// Denied without a policy decision (authentication or host failure).
    Refused,
    Decided {
        allowed: bool,
        mode: Mode,
        /// The policy whose rule decided, if one did.
        policy: Option<u32>,
        /// The AUDIT policy whose rule matched, if one did.
        audit: Option<u32>,
        /// What the dry-run policies alone decided (and by which policy), if there are any.
        dry_run: Option<(bool, Option<u32>)>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub verdict: Verdict,
    pub tally: Tally,
}

/// What a peer certificate gives every connection that presents it.
#[derive(Debug)]
struct Peer {
    identity: PeerIdentity,
    /// The peer's part of the XFCC element (`Hash=...;Subject=...;URI=...`).
    xfcc_part: String,
}

/// How the connection's peer authenticated.
#[derive(Debug)]
enum Authn {
    /// No client certificate (plaintext, or TLS without one): no principal.
    None,
    /// A valid X.509-SVID; `xfcc` is this hop's element for it, `By=` this connection's own
    /// local identity.
    Svid { principal: String, xfcc: String },
    /// A certificate that establishes no identity, and why.
    Rejected(String),
}

/// What a downstream connection gives every request on it, fixed for the connection's life
/// (Envoy's server-side TLS never renegotiates), so looked up on its first request.
#[derive(Debug)]
struct Connection {
    authn: Authn,
    /// `destination.port`, once a decision needed it and the host answered.
    port: Cell<Option<u16>>,
    /// The SNI (`None` inside: none sent) and the local address, once a policy needed them
    /// and the host answered; both are the connection's for its life.
    sni: std::cell::OnceCell<Option<Box<str>>>,
    local_ip: Cell<Option<IpAddr>>,
    /// Whether a source address that is not the peer's was logged for this connection.
    warned_source: Cell<bool>,
}

/// Per-VM (per-thread) memory of peers and connections.
#[derive(Debug, Default)]
pub struct Caches {
    /// By certificate digest: a client's new connections skip parsing its certificate again.
    peers: HashMap<Box<[u8]>, Rc<Peer>>,
    /// By Envoy's connection ID, which Envoy assigns and never reuses within a process.
    connections: HashMap<u64, Rc<Connection>>,
}

/// Why a request was denied without a policy decision.
#[derive(Debug)]
enum Refusal {
    Host(HostError),
    NotAnSvid(String),
    /// Already logged (once per connection).
    SourceNotPeer,
    MalformedHeaders,
}

impl From<HostError> for Refusal {
    fn from(e: HostError) -> Refusal {
        Refusal::Host(e)
    }
}

/// Decides one request and acts on it through `host`.
pub fn on_request<H: Host>(host: &H, caches: &mut Caches, config: &FilterConfig) -> Outcome {
    match decide(host, caches, config) {
        Ok(outcome) => outcome,
        Err(refusal) => {
            match refusal {
                Refusal::Host(e) => warn!("meshauthz: {e}; denying"),
                Refusal::NotAnSvid(why) => {
                    warn!("meshauthz: peer certificate is not an X.509-SVID ({why}); denying")
                }
                Refusal::MalformedHeaders => warn!("meshauthz: malformed request headers from Envoy; denying"),
                Refusal::SourceNotPeer => {}
            }
            host.send_deny();
            Outcome {
                verdict: Verdict::Denied,
                tally: Tally::Refused,
            }
        }
    }
}

fn decide<H: Host>(host: &H, caches: &mut Caches, config: &FilterConfig) -> Result<Outcome, Refusal> {
    let connection = connection(host, caches)?;
    let (principal, xfcc) = match &connection.authn {
        Authn::None => (None, None),
        Authn::Svid { principal, xfcc } => (Some(principal.as_str()), Some(xfcc.as_str())),
        Authn::Rejected(why) => return Err(Refusal::NotAnSvid(why.clone())),
    };
    let buffer = host.request_headers()?;
    let headers = RequestHeaders::read::<H>(&buffer, config).ok_or(Refusal::MalformedHeaders)?;
    let source_ip = if config.table.uses_source_ip() {
        Some(source_ip(host, &connection)?)
    } else {
        None
    };
    // Both are the connection's, asked for only when a policy looks at them. An absent SNI
    // (plaintext, or a client that sent none) is `None`; a local address that does not parse
    // refuses the request, as any failed host call does.
    let sni = if config.table.uses_sni() {
        connection.sni(host)?
    } else {
        None
    };
    let destination_ip = if config.table.uses_destination_ip() {
        Some(connection.local_ip(host)?)
    } else {
        None
    };
    // Istio's `remoteIpBlocks`: the address the HCM settled on, taken as it is (from
    // `x-forwarded-for` too, as far as the HCM trusts it); `ipBlocks` never take it so.
    let remote_ip = if config.table.uses_remote_ip() {
        Some(address(host, Property::SourceAddress)?)
    } else {
        None
    };
    // The verified JWT's claims (jwt_authn's metadata, which a client cannot set).
    let raw_claims: Vec<Option<Box<[u8]>>> = config
        .table
        .claim_paths()
        .iter()
        .map(|path| host.jwt_claim(path))
        .collect::<Result<_, _>>()?;
    let claim_values: Vec<ClaimValue<'_>> = raw_claims.iter().map(|c| ClaimValue::read(c.as_deref())).collect();
    let claim_lists: Vec<Vec<&str>> = claim_values.iter().map(ClaimValue::list).collect();
    let claims: Vec<Claim<'_>> = claim_values
        .iter()
        .zip(&claim_lists)
        .map(|(v, list)| match v {
            ClaimValue::Absent => Claim::Absent,
            ClaimValue::Str(s) => Claim::Str(s),
            ClaimValue::List(_) => Claim::List(list),
        })
        .collect();
    let values: Vec<Vec<&str>> = headers
        .values
        .iter()
        .map(|v| v.iter().map(|s| &**s).collect())
        .collect();
    let slots: Vec<&[&str]> = values.iter().map(Vec::as_slice).collect();
    let request = Request {
        sni,
        destination_ip,
        remote_ip,
        claims: &claims,
        principal,
        source_ip,
        authority: &headers.authority,
        port: 0,
        method: &headers.method,
        headers: &slots,
    };
    // The port costs a host call: fetched only if a candidate rule gets as far as its ports.
    // A failed fetch decides nothing: the request is refused below, whatever the table said.
    let port_failure = Cell::new(None);
    let decision = config.table.evaluate_with_port(&request, &|| {
        connection.port(host).unwrap_or_else(|e| {
            port_failure.set(Some(e));
            0
        })
    });
    let observed = if config.table.observes() {
        config.table.observe(&request, &|| {
            connection.port(host).unwrap_or_else(|e| {
                port_failure.set(Some(e));
                0
            })
        })
    } else {
        meshauthz_table::Observed::default()
    };
    if let Some(e) = port_failure.take() {
        return Err(e.into());
    }
    if let Some(a) = observed.audit {
        log::info!(
            "meshauthz: audit policy={} principal={} host={} method={}",
            config.table.policy_name(a.policy),
            principal.unwrap_or("-"),
            headers.authority,
            headers.method
        );
    }
    let tally = Tally::Decided {
        allowed: decision.allowed,
        mode: config.mode,
        policy: decision.by.map(|b| b.policy),
        audit: observed.audit.map(|a| a.policy),
        dry_run: observed.dry_run.map(|d| (d.allowed, d.by.map(|b| b.policy))),
    };
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
            connection.port.get().map_or("-".into(), |p| p.to_string()),
            headers.method,
        );
    }
    if !decision.allowed && config.mode == Mode::Enforce {
        host.send_deny();
        return Ok(Outcome {
            verdict: Verdict::Denied,
            tally,
        });
    }
    forward_client_cert(host, config.xfcc, xfcc, headers.xfcc.as_deref())?;
    Ok(Outcome {
        verdict: Verdict::Continue,
        tally,
    })
}

/// Inserts into a cache of at most [`CACHE_LIMIT`] entries, clearing it when full: the entries
/// are cheap to rebuild, and clearing keeps the bound without bookkeeping per request.
fn insert_bounded<K: Hash + Eq, V>(cache: &mut HashMap<K, V>, key: K, value: V) {
    if cache.len() >= CACHE_LIMIT {
        cache.clear();
    }
    cache.insert(key, value);
}

/// The request's connection: one host call (`connection_id`) when it is known, its peer
/// authenticated on its first request. Only a fully established connection is remembered.
fn connection<H: Host>(host: &H, caches: &mut Caches) -> Result<Rc<Connection>, HostError> {
    // The id only keys the cache; without it the connection is established afresh.
    let id = host
        .property(Property::ConnectionId)
        .ok()
        .flatten()
        .and_then(|b| le_u64(&b));
    if let Some(c) = id.and_then(|id| caches.connections.get(&id)) {
        return Ok(Rc::clone(c));
    }
    let connection = Rc::new(Connection {
        authn: authenticate(host, caches)?,
        port: Cell::new(None),
        sni: std::cell::OnceCell::new(),
        local_ip: Cell::new(None),
        warned_source: Cell::new(false),
    });
    if let Some(id) = id {
        insert_bounded(&mut caches.connections, id, Rc::clone(&connection));
    }
    Ok(connection)
}

fn authenticate<H: Host>(host: &H, caches: &mut Caches) -> Result<Authn, HostError> {
    let unexpected = |p: Property, got: &str| HostError {
        what: p.name(),
        status: got.to_owned(),
    };
    let presented = match host.property(Property::Mtls)?.as_deref() {
        Some([1]) => true,
        Some([0]) => false,
        Some(_) => return Err(unexpected(Property::Mtls, "not a boolean")),
        None => return Err(unexpected(Property::Mtls, "absent")),
    };
    if !presented {
        return Ok(Authn::None);
    }
    let digest = match host.property(Property::PeerCertificateDigest)? {
        Some(d) if !d.is_empty() => d,
        _ => {
            return Err(unexpected(
                Property::PeerCertificateDigest,
                "absent on an mTLS connection",
            ));
        }
    };
    let peer = match caches.peers.get(&digest) {
        Some(p) => Rc::clone(p),
        None => {
            let pem = host
                .property(Property::PeerCertificate)?
                .ok_or_else(|| unexpected(Property::PeerCertificate, "absent on an mTLS connection"))?;
            let identity = identity::from_pem(&crate::xfcc::percent_decode(&pem)).unwrap_or_else(|e| PeerIdentity {
                principal: Err(e),
                uris: Vec::new(),
                dns: Vec::new(),
            });
            let subject = text(host.property(Property::PeerSubject)?);
            let hash = String::from_utf8_lossy(&digest);
            let xfcc_part = identity::xfcc_peer_part(&hash, &subject, &identity);
            let peer = Rc::new(Peer { identity, xfcc_part });
            insert_bounded(&mut caches.peers, digest, Rc::clone(&peer));
            peer
        }
    };
    let principal = match &peer.identity.principal {
        Ok(p) => p.clone(),
        Err(why) => return Ok(Authn::Rejected(why.clone())),
    };
    let local = text(host.property(Property::LocalUriSan)?);
    let local = (!local.is_empty()).then_some(local.as_str());
    Ok(Authn::Svid {
        principal,
        xfcc: identity::xfcc_element(local, &peer.xfcc_part),
    })
}

impl Connection {
    /// The SNI the client sent: asked once per connection; a failure is not remembered.
    fn sni<H: Host>(&self, host: &H) -> Result<Option<&str>, HostError> {
        if self.sni.get().is_none() {
            let sni = host
                .property(Property::RequestedServerName)?
                .map(|v| text(Some(v)).into_boxed_str());
            let _ = self.sni.set(sni);
        }
        Ok(self.sni.get().and_then(|s| s.as_deref()))
    }

    /// The connection's local address: asked once per connection; a failure is not remembered.
    fn local_ip<H: Host>(&self, host: &H) -> Result<IpAddr, HostError> {
        if let Some(ip) = self.local_ip.get() {
            return Ok(ip);
        }
        let ip = destination_ip(host)?;
        self.local_ip.set(Some(ip));
        Ok(ip)
    }

    /// `destination.port`: asked once per connection; a failure is not remembered.
    fn port<H: Host>(&self, host: &H) -> Result<u16, HostError> {
        if let Some(p) = self.port.get() {
            return Ok(p);
        }
        let p = host
            .property(Property::DestinationPort)?
            .and_then(|b| le_u16(&b))
            .ok_or_else(|| HostError {
                what: Property::DestinationPort.name(),
                status: "absent or not a port".into(),
            })?;
        self.port.set(Some(p));
        Ok(p)
    }
}

/// The peer's address, if the HCM's `source.address` is the connection's own. An address the
/// HCM took from a header has port 0 (headers carry no TCP port), and is refused.
///
/// (See [`destination_ip`] for the local side.)
fn source_ip<H: Host>(host: &H, connection: &Connection) -> Result<IpAddr, Refusal> {
    let bytes = host.property(Property::SourceAddress)?.ok_or_else(|| HostError {
        what: Property::SourceAddress.name(),
        status: "absent".into(),
    })?;
    let text = String::from_utf8_lossy(&bytes);
    match text.parse::<SocketAddr>() {
        Ok(a) if a.port() != 0 => Ok(a.ip()),
        _ => {
            if !connection.warned_source.replace(true) {
                warn!(
                    "meshauthz: source.address `{text}` is not the connection's peer address (it came from a header: \
                     set the HCM's use_remote_address: true and xff_num_trusted_hops: 0); denying requests on this \
                     connection whose decision needs the source address"
                );
            }
            Err(Refusal::SourceNotPeer)
        }
    }
}

/// The connection's local address (`destination.address`, `ip:port`).
fn destination_ip<H: Host>(host: &H) -> Result<IpAddr, HostError> {
    address(host, Property::DestinationAddress)
}

/// An `ip:port` property's address.
fn address<H: Host>(host: &H, property: Property) -> Result<IpAddr, HostError> {
    let what = property.name();
    let bytes = host.property(property)?.ok_or_else(|| HostError {
        what,
        status: "absent".into(),
    })?;
    let text = String::from_utf8_lossy(&bytes);
    text.parse::<SocketAddr>().map(|a| a.ip()).map_err(|_| HostError {
        what,
        status: format!("`{text}` is not ip:port"),
    })
}

/// A string property; absent reads as empty.
fn text(bytes: Option<Box<[u8]>>) -> String {
    bytes
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// What the evaluator needs from the request headers, borrowed from the host's buffer where it
/// can be. Header values that are not UTF-8 are read with each invalid sequence replaced by
/// U+FFFD (SEMANTICS.md).
struct RequestHeaders<'a> {
    authority: Cow<'a, str>,
    method: Cow<'a, str>,
    /// The incoming `x-forwarded-client-cert` (repeated headers joined with `,`).
    xfcc: Option<Cow<'a, str>>,
    /// Every value of each header the table references, in its slot order.
    values: Vec<Vec<Cow<'a, str>>>,
}

impl<'a> RequestHeaders<'a> {
    fn read<H: Host>(buffer: &'a H::Headers, config: &FilterConfig) -> Option<RequestHeaders<'a>> {
        let names = config.table.header_names();
        let mut h = RequestHeaders {
            authority: Cow::Borrowed(""),
            method: Cow::Borrowed(""),
            xfcc: None,
            values: vec![Vec::new(); names.len()],
        };
        // Only the values used are checked as UTF-8; the rest (`:path`, `user-agent`, ...) are skipped.
        let text = String::from_utf8_lossy;
        for (name, value) in H::header_pairs(buffer)? {
            match name {
                b":authority" => h.authority = text(value),
                b":method" => h.method = text(value),
                _ => {
                    if name.eq_ignore_ascii_case(XFCC.as_bytes()) {
                        h.xfcc = Some(match h.xfcc.take() {
                            Some(prev) => Cow::Owned(format!("{prev},{}", text(value))),
                            None => text(value),
                        });
                    }
                    if let Some(i) = names.iter().position(|n| n.as_bytes().eq_ignore_ascii_case(name)) {
                        h.values.get_mut(i)?.push(text(value));
                    }
                }
            }
        }
        Some(h)
    }
}

/// This hop's `x-forwarded-client-cert`. `incoming` is what the request arrived with. A
/// connection without a certificate has nothing to vouch for: whatever it sent is removed in
/// every mode, as Envoy's `SANITIZE_SET` and `APPEND_FORWARD` do.
fn forward_client_cert<H: Host>(
    host: &H,
    mode: XfccMode,
    ours: Option<&str>,
    incoming: Option<&str>,
) -> Result<(), HostError> {
    match (mode, ours) {
        (_, None) => match incoming {
            Some(_) => host.remove_request_header(XFCC),
            None => Ok(()),
        },
        (XfccMode::Off, Some(_)) => host.restore_forwarded_client_cert(incoming),
        (XfccMode::SanitizeSet, Some(element)) => host.set_request_header(XFCC, element),
        (XfccMode::AppendForward, Some(element)) => match incoming {
            Some(prev) if !prev.is_empty() => host.set_request_header(XFCC, &format!("{prev},{element}")),
            _ => host.set_request_header(XFCC, element),
        },
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

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
