//! What the request logic asks of the proxy, as a trait: the proxy-wasm host implements it
//! ([`crate::abi`]), and tests implement it with canned answers and chosen failures.
//!
//! Every call can fail, and the logic treats a failure as a reason to deny, never as "absent":
//! a `DENY` on the source address must not stop matching because a host call errored.

/// A connection or request attribute the filter reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Property {
    /// `connection_id`: Envoy's id for the downstream connection (u64).
    ConnectionId,
    /// `connection.mtls`: whether the peer presented a certificate (bool).
    Mtls,
    /// `connection.sha256_peer_certificate_digest` (hex string).
    PeerCertificateDigest,
    /// `connection.peer_certificate` (URL-encoded PEM).
    PeerCertificate,
    /// `connection.subject_peer_certificate` (RFC 2253).
    PeerSubject,
    /// `connection.uri_san_local_certificate`: the first URI SAN of this hop's certificate.
    LocalUriSan,
    /// `source.address`: the downstream remote address the HCM settled on (`ip:port`).
    SourceAddress,
    /// `destination.port`: the connection's local port (u64).
    DestinationPort,
    /// `destination.address`: the connection's local address (`ip:port`).
    DestinationAddress,
    /// `connection.requested_server_name`: the SNI the client sent (absent or empty without).
    RequestedServerName,
}

impl Property {
    pub const ALL: [Property; 10] = [
        Property::ConnectionId,
        Property::Mtls,
        Property::PeerCertificateDigest,
        Property::PeerCertificate,
        Property::PeerSubject,
        Property::LocalUriSan,
        Property::SourceAddress,
        Property::DestinationPort,
        Property::DestinationAddress,
        Property::RequestedServerName,
    ];

    /// The attribute's name, as Envoy's documentation writes it.
    pub fn name(self) -> &'static str {
        match self {
            Property::ConnectionId => "connection_id",
            Property::Mtls => "connection.mtls",
            Property::PeerCertificateDigest => "connection.sha256_peer_certificate_digest",
            Property::PeerCertificate => "connection.peer_certificate",
            Property::PeerSubject => "connection.subject_peer_certificate",
            Property::LocalUriSan => "connection.uri_san_local_certificate",
            Property::SourceAddress => "source.address",
            Property::DestinationPort => "destination.port",
            Property::DestinationAddress => "destination.address",
            Property::RequestedServerName => "connection.requested_server_name",
        }
    }

    pub fn from_name(name: &str) -> Option<Property> {
        Property::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// A host call that did not answer. `what` names the call for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostError {
    pub what: &'static str,
    pub status: String,
}

impl std::fmt::Display for HostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "host call `{}` failed ({})", self.what, self.status)
    }
}

/// The fault-injection builds' check before a host call: `Err` if `what` is listed in the
/// configuration's `fail_host_calls` (always empty in release builds).
pub fn injected_fault(fail: &[String], what: &'static str) -> Result<(), HostError> {
    if fail.iter().any(|f| f == what) {
        return Err(HostError {
            what,
            status: "failed by fault injection".into(),
        });
    }
    Ok(())
}

/// The proxy, as the request logic sees it.
pub trait Host {
    /// The request headers, in whatever form the host hands them over.
    type Headers;

    /// `Ok(None)` when the host reports the property absent.
    fn property(&self, property: Property) -> Result<Option<Box<[u8]>>, HostError>;

    fn request_headers(&self) -> Result<Self::Headers, HostError>;

    /// A claim of the request's verified JWT: `path` into the `payload` that
    /// `envoy.filters.http.jwt_authn` puts in the dynamic metadata. A string comes back as its
    /// bytes, a list in the header-pairs serialization (one name per element); `Ok(None)`
    /// without a verified token or such a claim.
    fn jwt_claim(&self, path: &[String]) -> Result<Option<Box<[u8]>>, HostError> {
        let _ = path;
        Err(HostError {
            what: "jwt claim",
            status: "not available to this host".into(),
        })
    }

    /// Every `(name, value)` entry of `headers` in order, a repeated header once per value;
    /// `None` if the host's data is malformed.
    fn header_pairs(headers: &Self::Headers) -> Option<impl Iterator<Item = (&[u8], &[u8])>>;

    /// Sets a request header, replacing every value it had.
    fn set_request_header(&self, name: &str, value: &str) -> Result<(), HostError>;

    fn remove_request_header(&self, name: &str) -> Result<(), HostError>;

    /// Answers the request with the deny reply and stops it.
    fn send_deny(&self);

    /// `xfcc: off`: undo any element the host setup added to the request's XFCC for the
    /// filter's own use (the native build's HCM adds this hop's, with the certificate), leaving
    /// what previous hops sent (`previous`).
    fn restore_forwarded_client_cert(&self, previous: Option<&str>) -> Result<(), HostError> {
        let _ = previous;
        Ok(())
    }
}
