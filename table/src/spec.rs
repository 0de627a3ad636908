//! The policy set as plain data: what the compiler produces, what the table encodes, what the
//! decoder gives back.
//!
//! These types carry no behaviour beyond what it takes to read them. Validation of user input
//! (SPIFFE rules, method tokens, regex dialect) is the compiler's job; the decoder only checks
//! what the evaluator needs to stay sound, so a hand-made table can never make it panic.

use std::net::IpAddr;

/// All policies that apply to one workload, in the order the author gave them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicySet {
    pub policies: Vec<Policy>,
}

/// What a matching policy does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Allow,
    Deny,
    /// Istio's AUDIT: a match is counted and logged and never changes the decision.
    Audit,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY",
            Action::Audit => "AUDIT",
        }
    }
}

/// One `AuthorizationPolicy`. A policy without rules matches every request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub name: String,
    pub action: Action,
    pub rules: Vec<Rule>,
    /// Istio's `istio.io/dry-run`: evaluated on its own (with the other dry-run policies) and
    /// counted, never enforced.
    pub dry_run: bool,
}

/// A rule matches when (no sources, or any source matches) and (no destinations, or any
/// destination matches).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    pub sources: Vec<Source>,
    pub destinations: Vec<Destination>,
}

/// Matches when its principals match (if any), its IP blocks match (if any) and every
/// condition holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Source {
    pub principals: Vec<Pattern>,
    pub ip_blocks: Vec<IpNet>,
    /// Format 2: further tests on the request (Istio's not-lists, namespaces, `when`).
    pub conditions: Vec<Condition>,
}

/// Matches when host, port, method (if any) and header (if any) all match, and every
/// condition holds. An empty list matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Destination {
    /// Host patterns; literals are stored lowercase.
    pub hosts: Vec<Pattern>,
    pub ports: Vec<u16>,
    pub methods: Vec<String>,
    pub header: Option<HeaderMatch>,
    /// Format 2: further tests on the request (paths, SNI, destination IP, not-lists).
    pub conditions: Vec<Condition>,
}

/// One test of one request attribute: it holds when some matcher matches the attribute's
/// value, or, when `negated`, when none does. An attribute the request does not have (no
/// principal on plaintext, an absent header) matches no matcher, so a negated condition on it
/// holds, as Envoy's `not` does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    pub attribute: Attribute,
    pub negated: bool,
    /// At least one; each must suit the attribute (strings for string attributes, networks for
    /// addresses, ports for the port).
    pub matchers: Vec<Matcher>,
}

/// What a [`Condition`] looks at.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Attribute {
    /// The peer's SPIFFE ID (absent without a valid X.509-SVID).
    Principal,
    /// `:authority`, compared case-insensitively (matcher literals are stored lowercase).
    Host,
    /// `:method`, case-sensitive.
    Method,
    /// `:path` without its query (`?`) and fragment (`#`).
    Path,
    /// The TLS SNI the client asked for; empty without TLS or SNI.
    Sni,
    /// A request header (lowercase name); repeated values are joined with `,`.
    Header(String),
    /// The direct peer's address.
    SourceIp,
    /// The connection's local address.
    DestinationIp,
    /// The connection's local port.
    DestinationPort,
    /// The original client address as the HCM computed it (`source.address`): the peer under
    /// `use_remote_address: true` with no trusted hops, else what `x-forwarded-for` and the
    /// trusted hops say. Istio's `remoteIpBlocks`; trust it only as far as the HCM's XFF setup.
    RemoteIp,
    /// A claim of the request's verified JWT (the path into `envoy.filters.http.jwt_authn`'s
    /// `payload` metadata): a string, or a list of strings any of which may match; absent
    /// without a verified token.
    Claim(Vec<String>),
    /// The JWT's issuer and subject together (Istio's `requestPrincipals`), matched with
    /// [`Matcher::IssuerSubject`].
    RequestPrincipal,
}

impl Attribute {
    /// Whether [`Matcher`]s of this attribute are strings (else networks or ports).
    pub fn is_string(&self) -> bool {
        !matches!(
            self,
            Attribute::SourceIp | Attribute::DestinationIp | Attribute::DestinationPort | Attribute::RemoteIp
        )
    }
}

/// One value a condition compares with.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Matcher {
    /// The attribute is present (a header sent, even empty).
    Present,
    /// Present and not empty.
    NonEmpty,
    Exact(String),
    Prefix(String),
    Suffix(String),
    /// The literal appears anywhere in the value. Istio's namespaces are `Contains("/ns/<ns>/")`
    /// on the principal, which the index looks up by namespace.
    Contains(String),
    /// An RE2-style regex that must match the whole value.
    Regex(String),
    /// A path template: `/` separated segments, each a literal, `{*}` (one non-empty segment) or
    /// `{**}` (any number of segments, none included).
    PathTemplate(String),
    Net(IpNet),
    Port(u16),
    /// [`Attribute::RequestPrincipal`]: the issuer (`iss`) matches the first, the subject
    /// (`sub`) the second; both must be string claims. Neither may be another `IssuerSubject`.
    IssuerSubject(Box<Matcher>, Box<Matcher>),
}

/// `httpHeaderMatch`: the regex must match the whole (comma-joined) header value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderMatch {
    /// Lowercase header name, or a pseudo-header such as `:authority`.
    pub name: String,
    /// The regex as the author wrote it, without anchors.
    pub regex: String,
}

/// A principal or host pattern: `*`, `prefix*`, `*suffix` or an exact string.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Pattern {
    /// `*`: anything present.
    Any,
    Exact(String),
    /// `prefix*`, stored without the star.
    Prefix(String),
    /// `*suffix`, stored without the star.
    Suffix(String),
}

impl Pattern {
    /// Reads the pattern syntax. Returns `None` when `*` stands anywhere but at one end, or at
    /// both ends, or when the literal part is empty.
    pub fn parse(text: &str) -> Option<Pattern> {
        if text == "*" {
            return Some(Pattern::Any);
        }
        let (kind, literal): (fn(String) -> Pattern, &str) = if let Some(rest) = text.strip_suffix('*') {
            (Pattern::Prefix, rest)
        } else if let Some(rest) = text.strip_prefix('*') {
            (Pattern::Suffix, rest)
        } else {
            (Pattern::Exact, text)
        };
        if literal.is_empty() || literal.contains('*') {
            return None;
        }
        Some(kind(literal.to_owned()))
    }

    /// Whether `value` matches, comparing bytes exactly.
    pub fn matches(&self, value: &[u8]) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Exact(s) => value == s.as_bytes(),
            Pattern::Prefix(s) => value.starts_with(s.as_bytes()),
            Pattern::Suffix(s) => value.ends_with(s.as_bytes()),
        }
    }

    /// The literal part (empty for `Any`).
    pub fn literal(&self) -> &str {
        match self {
            Pattern::Any => "",
            Pattern::Exact(s) | Pattern::Prefix(s) | Pattern::Suffix(s) => s,
        }
    }

    /// The pattern as a policy author writes it.
    pub fn to_source_text(&self) -> String {
        match self {
            Pattern::Any => "*".to_owned(),
            Pattern::Exact(s) => s.clone(),
            Pattern::Prefix(s) => format!("{s}*"),
            Pattern::Suffix(s) => format!("*{s}"),
        }
    }
}

/// An IPv4 or IPv6 network: address and prefix length. Host bits are always zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpNet {
    addr: IpAddr,
    prefix_len: u8,
}

impl IpNet {
    /// Builds a network, clearing host bits. `None` if the prefix is longer than the address.
    pub fn new(addr: IpAddr, prefix_len: u8) -> Option<IpNet> {
        let addr = match addr {
            IpAddr::V4(a) if prefix_len <= 32 => IpAddr::V4((u32::from(a) & mask32(prefix_len)).into()),
            IpAddr::V6(a) if prefix_len <= 128 => IpAddr::V6((u128::from(a) & mask128(prefix_len)).into()),
            _ => return None,
        };
        Some(IpNet { addr, prefix_len })
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Whether `ip` lies inside. An IPv4-mapped IPv6 address is compared as IPv4, because a
    /// dual-stack listener reports IPv4 peers that way.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical_ip(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => u32::from(ip) & mask32(self.prefix_len) == u32::from(net),
            (IpAddr::V6(net), IpAddr::V6(ip)) => u128::from(ip) & mask128(self.prefix_len) == u128::from(net),
            _ => false,
        }
    }
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`) becomes IPv4; everything else is unchanged.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

pub(crate) fn mask32(prefix_len: u8) -> u32 {
    if prefix_len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix_len.min(32)))
    }
}

pub(crate) fn mask128(prefix_len: u8) -> u128 {
    if prefix_len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(prefix_len.min(128)))
    }
}
