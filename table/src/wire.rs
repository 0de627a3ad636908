//! The table's binary format.
//!
//! ```text
//! header (20 bytes)
//!   magic     8 bytes  "MZAUTHZ\0"
//!   version   u16 LE   FORMAT_VERSION
//!   flags     u16 LE   0 (reserved; anything else is rejected)
//!   body_len  u32 LE   exact length of what follows
//!   crc32     u32 LE   CRC-32 (IEEE) of the body
//! body
//!   strings   varint n, then n x (varint len, UTF-8 bytes)      -- deduplicated pool
//!   policies  varint n, then n x policy
//!   policy    varint name, u8 action (0 allow, 1 deny, 2 audit), [v2: u8 flags (1 dry-run)],
//!             varint n, n x rule
//!   rule      varint n, n x source, varint m, m x destination
//!   source    varint n, n x pattern, varint m, m x ipnet, [v2: varint k, k x condition]
//!   dest      varint n, n x pattern, varint m, m x u16 LE port, varint k, k x varint method,
//!             u8 has_header, [varint name, varint regex], [v2: varint k, k x condition]
//!   pattern   u8 kind (0 any, 1 exact, 2 prefix, 3 suffix), [varint literal]
//!   ipnet     u8 family (4, 6), u8 prefix_len, 4 or 16 address bytes
//!   condition u8 attribute (0 principal, 1 host, 2 method, 3 path, 4 sni, 5 header, 6 source
//!             ip, 7 destination ip, 8 destination port, 9 remote ip, 10 claim, 11 request
//!             principal), [header: varint name; claim: varint n >= 1, n x varint segment],
//!             u8 negated,
//!             varint n (>= 1), n x matcher
//!   matcher   u8 kind (0 present, 1 non-empty, 2 exact, 3 prefix, 4 suffix, 5 regex, 6 path
//!             template, 9 contains: varint string; 7 ipnet; 8 u16 LE port; 10 issuer and
//!             subject: two string matchers)
//! ```
//! Version 1 has no audit action, no flags and no conditions, and needs hosts and ports in
//! every destination; version 2 relaxes that (any non-empty destination). The encoder writes
//! version 1 whenever the set fits it, so filters that read only version 1 keep loading what
//! the guide's format compiles to.
//!
//! Every string reference is an index into the pool. The decoder checks every byte of this:
//! lengths against what is left, indexes against the pool, enums against their ranges; it never
//! allocates more than the input could describe and never panics, whatever the bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::spec::{
    Action, Attribute, Condition, Destination, HeaderMatch, IpNet, Matcher, Pattern, Policy, PolicySet, Rule, Source,
};

pub const MAGIC: &[u8; 8] = b"MZAUTHZ\0";
/// The newest format this build reads and writes; it reads every older one too.
pub const FORMAT_VERSION: u16 = 2;
const HEADER_LEN: usize = 20;

/// Why bytes are not a table. Offsets are from the start of the input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    TooShort,
    BadMagic,
    UnsupportedVersion(u16),
    ReservedFlags(u16),
    LengthMismatch {
        declared: u32,
        actual: usize,
    },
    Checksum {
        expected: u32,
        actual: u32,
    },
    Truncated {
        offset: usize,
    },
    VarintOverflow {
        offset: usize,
    },
    BadUtf8 {
        offset: usize,
    },
    StringIndex {
        offset: usize,
        index: u64,
    },
    BadEnum {
        offset: usize,
        what: &'static str,
        value: u8,
    },
    BadPattern {
        offset: usize,
    },
    BadPrefixLen {
        offset: usize,
        len: u8,
    },
    ZeroPort {
        offset: usize,
    },
    EmptyList {
        offset: usize,
        what: &'static str,
    },
    TrailingBytes {
        offset: usize,
    },
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::TooShort => write!(f, "shorter than the {HEADER_LEN}-byte header"),
            DecodeError::BadMagic => write!(f, "not a meshauthz table (bad magic)"),
            DecodeError::UnsupportedVersion(v) => {
                write!(
                    f,
                    "format version {v} is not supported (this build reads 1 to {FORMAT_VERSION})"
                )
            }
            DecodeError::ReservedFlags(v) => write!(f, "reserved flags are set ({v:#06x})"),
            DecodeError::LengthMismatch { declared, actual } => {
                write!(f, "header declares a {declared}-byte body, {actual} bytes follow")
            }
            DecodeError::Checksum { expected, actual } => {
                write!(f, "checksum mismatch: header {expected:#010x}, body {actual:#010x}")
            }
            DecodeError::Truncated { offset } => write!(f, "truncated at byte {offset}"),
            DecodeError::VarintOverflow { offset } => {
                write!(f, "integer too large at byte {offset}")
            }
            DecodeError::BadUtf8 { offset } => write!(f, "string at byte {offset} is not UTF-8"),
            DecodeError::StringIndex { offset, index } => {
                write!(f, "string index {index} at byte {offset} is out of range")
            }
            DecodeError::BadEnum { offset, what, value } => {
                write!(f, "invalid {what} {value} at byte {offset}")
            }
            DecodeError::BadPattern { offset } => {
                write!(f, "empty pattern literal at byte {offset}")
            }
            DecodeError::BadPrefixLen { offset, len } => {
                write!(f, "prefix length {len} too long for the address at byte {offset}")
            }
            DecodeError::ZeroPort { offset } => write!(f, "port 0 at byte {offset}"),
            DecodeError::EmptyList { offset, what } => {
                write!(f, "empty {what} list at byte {offset}")
            }
            DecodeError::TrailingBytes { offset } => {
                write!(f, "unexpected bytes after the body at byte {offset}")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// CRC-32 (IEEE 802.3, reflected), as zlib computes it.
pub fn crc32(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    let mut crc = u32::MAX;
    for &b in bytes {
        crc = TABLE[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

/// The format version a table's header declares (`None` if too short or not a table).
pub fn version_of(bytes: &[u8]) -> Option<u16> {
    let header = bytes.get(..HEADER_LEN).filter(|h| &h[..8] == MAGIC)?;
    Some(u16::from_le_bytes([header[8], header[9]]))
}

/// Decodes and validates a table's bytes into the policy set it holds.
pub fn decode(bytes: &[u8]) -> Result<PolicySet, DecodeError> {
    let header = bytes.get(..HEADER_LEN).ok_or(DecodeError::TooShort)?;
    if &header[..8] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let version = u16::from_le_bytes([header[8], header[9]]);
    if version == 0 || version > FORMAT_VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    let flags = u16::from_le_bytes([header[10], header[11]]);
    if flags != 0 {
        return Err(DecodeError::ReservedFlags(flags));
    }
    let declared = u32::from_le_bytes([header[12], header[13], header[14], header[15]]);
    let body = &bytes[HEADER_LEN..];
    if usize::try_from(declared).ok() != Some(body.len()) {
        return Err(DecodeError::LengthMismatch {
            declared,
            actual: body.len(),
        });
    }
    let expected = u32::from_le_bytes([header[16], header[17], header[18], header[19]]);
    let actual = crc32(body);
    if expected != actual {
        return Err(DecodeError::Checksum { expected, actual });
    }
    let mut r = Reader {
        bytes,
        pos: HEADER_LEN,
        strings: Vec::new(),
        v2: version >= 2,
    };
    let n = r.count(1)?;
    let mut strings = Vec::with_capacity(n);
    for _ in 0..n {
        let len = r.count(1)?;
        let at = r.pos;
        let raw = r.take(len)?;
        strings.push(std::str::from_utf8(raw).map_err(|_| DecodeError::BadUtf8 { offset: at })?);
    }
    r.strings = strings;
    let n = r.count(3)?;
    let mut policies = Vec::with_capacity(n);
    for _ in 0..n {
        policies.push(r.policy()?);
    }
    if r.pos != bytes.len() {
        return Err(DecodeError::TrailingBytes { offset: r.pos });
    }
    Ok(PolicySet { policies })
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    strings: Vec<&'a str>,
    v2: bool,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or(DecodeError::Truncated { offset: self.pos })?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let start = self.pos;
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            let bits = u64::from(b & 0x7F);
            if shift == 63 && bits > 1 {
                return Err(DecodeError::VarintOverflow { offset: start });
            }
            value |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::VarintOverflow { offset: start })
    }

    /// A count of items that each take at least `min_item_len` bytes: a count the rest of the
    /// input cannot hold is rejected before anything is allocated for it.
    fn count(&mut self, min_item_len: usize) -> Result<usize, DecodeError> {
        let at = self.pos;
        let n = self.varint()?;
        let room = (self.bytes.len() - self.pos) / min_item_len.max(1);
        match usize::try_from(n) {
            Ok(n) if n <= room => Ok(n),
            _ => Err(DecodeError::Truncated { offset: at }),
        }
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let at = self.pos;
        let index = self.varint()?;
        usize::try_from(index)
            .ok()
            .and_then(|i| self.strings.get(i))
            .map(|s| (*s).to_owned())
            .ok_or(DecodeError::StringIndex { offset: at, index })
    }

    fn policy(&mut self) -> Result<Policy, DecodeError> {
        let name = self.string()?;
        let at = self.pos;
        let action = match self.u8()? {
            0 => Action::Allow,
            1 => Action::Deny,
            2 if self.v2 => Action::Audit,
            value => {
                return Err(DecodeError::BadEnum {
                    offset: at,
                    what: "action",
                    value,
                });
            }
        };
        let at = self.pos;
        let dry_run = match if self.v2 { self.u8()? } else { 0 } {
            0 => false,
            // Istio refuses dry-run on AUDIT; an audit never decides anyway.
            1 if action != Action::Audit => true,
            value => {
                return Err(DecodeError::BadEnum {
                    offset: at,
                    what: "policy flags",
                    value,
                });
            }
        };
        let n = self.count(2)?;
        let mut rules = Vec::with_capacity(n);
        for _ in 0..n {
            rules.push(self.rule()?);
        }
        Ok(Policy {
            name,
            action,
            rules,
            dry_run,
        })
    }

    fn rule(&mut self) -> Result<Rule, DecodeError> {
        let n = self.count(2)?;
        let mut sources = Vec::with_capacity(n);
        for _ in 0..n {
            let at = self.pos;
            let principals = self.list(1, Self::pattern)?;
            let ip_blocks = self.list(6, Self::ipnet)?;
            let conditions = self.conditions()?;
            if principals.is_empty() && ip_blocks.is_empty() && conditions.is_empty() {
                return Err(DecodeError::EmptyList {
                    offset: at,
                    what: "source",
                });
            }
            sources.push(Source {
                principals,
                ip_blocks,
                conditions,
            });
        }
        let n = self.count(5)?;
        let mut destinations = Vec::with_capacity(n);
        for _ in 0..n {
            destinations.push(self.destination()?);
        }
        Ok(Rule { sources, destinations })
    }

    fn destination(&mut self) -> Result<Destination, DecodeError> {
        let start = self.pos;
        let at = self.pos;
        let hosts = self.list(1, Self::pattern)?;
        if hosts.is_empty() && !self.v2 {
            return Err(DecodeError::EmptyList {
                offset: at,
                what: "hosts",
            });
        }
        let at = self.pos;
        let ports = self.list(2, |r| {
            let at = r.pos;
            let raw = r.take(2)?;
            match u16::from_le_bytes([raw[0], raw[1]]) {
                0 => Err(DecodeError::ZeroPort { offset: at }),
                port => Ok(port),
            }
        })?;
        if ports.is_empty() && !self.v2 {
            return Err(DecodeError::EmptyList {
                offset: at,
                what: "ports",
            });
        }
        let methods = self.list(1, Self::string)?;
        let at = self.pos;
        let header = match self.u8()? {
            0 => None,
            1 => Some(HeaderMatch {
                name: self.string()?,
                regex: self.string()?,
            }),
            value => {
                return Err(DecodeError::BadEnum {
                    offset: at,
                    what: "header flag",
                    value,
                });
            }
        };
        let conditions = self.conditions()?;
        if hosts.is_empty() && ports.is_empty() && methods.is_empty() && header.is_none() && conditions.is_empty() {
            return Err(DecodeError::EmptyList {
                offset: start,
                what: "destination",
            });
        }
        Ok(Destination {
            hosts,
            ports,
            methods,
            header,
            conditions,
        })
    }

    /// A clause's conditions: none in version 1.
    fn conditions(&mut self) -> Result<Vec<Condition>, DecodeError> {
        if !self.v2 {
            return Ok(Vec::new());
        }
        self.list(3, Self::condition)
    }

    fn condition(&mut self) -> Result<Condition, DecodeError> {
        let at = self.pos;
        let attribute = match self.u8()? {
            0 => Attribute::Principal,
            1 => Attribute::Host,
            2 => Attribute::Method,
            3 => Attribute::Path,
            4 => Attribute::Sni,
            5 => Attribute::Header(self.string()?),
            6 => Attribute::SourceIp,
            7 => Attribute::DestinationIp,
            8 => Attribute::DestinationPort,
            9 => Attribute::RemoteIp,
            10 => {
                let at = self.pos;
                let path = self.list(1, Self::string)?;
                if path.is_empty() {
                    return Err(DecodeError::EmptyList {
                        offset: at,
                        what: "claim path",
                    });
                }
                Attribute::Claim(path)
            }
            11 => Attribute::RequestPrincipal,
            value => {
                return Err(DecodeError::BadEnum {
                    offset: at,
                    what: "condition attribute",
                    value,
                });
            }
        };
        let at = self.pos;
        let negated = match self.u8()? {
            0 => false,
            1 => true,
            value => {
                return Err(DecodeError::BadEnum {
                    offset: at,
                    what: "negation flag",
                    value,
                });
            }
        };
        let at = self.pos;
        let matchers = self.list(1, |r| r.matcher(&attribute))?;
        if matchers.is_empty() {
            return Err(DecodeError::EmptyList {
                offset: at,
                what: "matcher",
            });
        }
        Ok(Condition {
            attribute,
            negated,
            matchers,
        })
    }

    /// One matcher, of a kind that suits `attribute`.
    fn matcher(&mut self, attribute: &Attribute) -> Result<Matcher, DecodeError> {
        let at = self.pos;
        let kind = self.u8()?;
        let string = attribute.is_string() && *attribute != Attribute::RequestPrincipal;
        let port = *attribute == Attribute::DestinationPort;
        Ok(match kind {
            10 if *attribute == Attribute::RequestPrincipal => {
                // Two plain string matchers, read as those of a string attribute.
                let plain = Attribute::Method;
                Matcher::IssuerSubject(Box::new(self.matcher(&plain)?), Box::new(self.matcher(&plain)?))
            }
            0 if string => Matcher::Present,
            1 if string => Matcher::NonEmpty,
            2 if string => Matcher::Exact(self.string()?),
            3 if string => Matcher::Prefix(self.string()?),
            4 if string => Matcher::Suffix(self.string()?),
            5 if string => Matcher::Regex(self.string()?),
            6 if *attribute == Attribute::Path => Matcher::PathTemplate(self.string()?),
            9 if string => Matcher::Contains(self.string()?),
            7 if !string && !port => Matcher::Net(self.ipnet()?),
            8 if port => {
                let raw = self.take(2)?;
                Matcher::Port(u16::from_le_bytes([raw[0], raw[1]]))
            }
            value => {
                return Err(DecodeError::BadEnum {
                    offset: at,
                    what: "matcher kind",
                    value,
                });
            }
        })
    }

    fn list<T>(
        &mut self,
        min_item_len: usize,
        mut item: impl FnMut(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<Vec<T>, DecodeError> {
        let n = self.count(min_item_len)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(item(self)?);
        }
        Ok(out)
    }

    fn pattern(&mut self) -> Result<Pattern, DecodeError> {
        let at = self.pos;
        let kind = self.u8()?;
        let make: fn(String) -> Pattern = match kind {
            0 => return Ok(Pattern::Any),
            1 => Pattern::Exact,
            2 => Pattern::Prefix,
            3 => Pattern::Suffix,
            value => {
                return Err(DecodeError::BadEnum {
                    offset: at,
                    what: "pattern kind",
                    value,
                });
            }
        };
        let literal = self.string()?;
        if literal.is_empty() {
            return Err(DecodeError::BadPattern { offset: at });
        }
        Ok(make(literal))
    }

    fn ipnet(&mut self) -> Result<IpNet, DecodeError> {
        let at = self.pos;
        let family = self.u8()?;
        let prefix_len = self.u8()?;
        let addr = match family {
            4 => {
                let b = self.take(4)?;
                IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
            }
            6 => {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(self.take(16)?);
                IpAddr::V6(Ipv6Addr::from(octets))
            }
            value => {
                return Err(DecodeError::BadEnum {
                    offset: at,
                    what: "address family",
                    value,
                });
            }
        };
        IpNet::new(addr, prefix_len).ok_or(DecodeError::BadPrefixLen {
            offset: at,
            len: prefix_len,
        })
    }
}

/// Encodes a policy set. Encoding then decoding gives back an equal set (host bits of IP
/// networks are already clear in [`IpNet`]).
#[cfg(feature = "encode")]
pub fn encode(set: &PolicySet) -> Vec<u8> {
    let version = if needs_v2(set) { 2 } else { 1 };
    let mut w = Writer {
        v2: version >= 2,
        ..Writer::default()
    };
    for policy in &set.policies {
        w.policy(policy);
    }
    let mut body = Vec::with_capacity(w.out.len() + w.pool_bytes + 16);
    put_varint(&mut body, w.pool.len() as u64);
    for s in &w.pool {
        put_varint(&mut body, s.len() as u64);
        body.extend_from_slice(s.as_bytes());
    }
    put_varint(&mut body, set.policies.len() as u64);
    body.extend_from_slice(&w.out);
    let mut bytes = Vec::with_capacity(HEADER_LEN + body.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&u16::to_le_bytes(version));
    bytes.extend_from_slice(&0u16.to_le_bytes());
    let body_len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    bytes.extend_from_slice(&body_len.to_le_bytes());
    bytes.extend_from_slice(&crc32(&body).to_le_bytes());
    bytes.extend_from_slice(&body);
    bytes
}

/// Whether the set uses anything version 1 cannot hold.
#[cfg(feature = "encode")]
fn needs_v2(set: &PolicySet) -> bool {
    set.policies.iter().any(needs_format_2)
}

/// Whether a policy uses anything format 1 cannot hold (AUDIT, dry-run, conditions, a
/// destination without hosts or ports).
pub fn needs_format_2(p: &Policy) -> bool {
    p.action == Action::Audit
        || p.dry_run
        || p.rules.iter().any(|r| {
            r.sources.iter().any(|s| !s.conditions.is_empty())
                || r.destinations
                    .iter()
                    .any(|d| !d.conditions.is_empty() || d.hosts.is_empty() || d.ports.is_empty())
        })
}

#[cfg(feature = "encode")]
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[cfg(feature = "encode")]
#[derive(Default)]
struct Writer<'s> {
    pool: Vec<&'s str>,
    index: std::collections::HashMap<&'s str, u64>,
    pool_bytes: usize,
    out: Vec<u8>,
    v2: bool,
}

#[cfg(feature = "encode")]
impl<'s> Writer<'s> {
    fn string(&mut self, s: &'s str) {
        let next = self.pool.len() as u64;
        let index = *self.index.entry(s).or_insert(next);
        if index == next {
            self.pool.push(s);
            self.pool_bytes += s.len() + 2;
        }
        put_varint(&mut self.out, index);
    }

    fn len(&mut self, n: usize) {
        put_varint(&mut self.out, n as u64);
    }

    fn policy(&mut self, p: &'s Policy) {
        self.string(&p.name);
        self.out.push(match p.action {
            Action::Allow => 0,
            Action::Deny => 1,
            Action::Audit => 2,
        });
        if self.v2 {
            self.out.push(u8::from(p.dry_run));
        }
        self.len(p.rules.len());
        for rule in &p.rules {
            self.len(rule.sources.len());
            for s in &rule.sources {
                self.len(s.principals.len());
                s.principals.iter().for_each(|p| self.pattern(p));
                self.len(s.ip_blocks.len());
                s.ip_blocks.iter().for_each(|n| self.ipnet(n));
                self.conditions(&s.conditions);
            }
            self.len(rule.destinations.len());
            for d in &rule.destinations {
                self.len(d.hosts.len());
                d.hosts.iter().for_each(|p| self.pattern(p));
                self.len(d.ports.len());
                for port in &d.ports {
                    self.out.extend_from_slice(&port.to_le_bytes());
                }
                self.len(d.methods.len());
                d.methods.iter().for_each(|m| self.string(m));
                match &d.header {
                    None => self.out.push(0),
                    Some(h) => {
                        self.out.push(1);
                        self.string(&h.name);
                        self.string(&h.regex);
                    }
                }
                self.conditions(&d.conditions);
            }
        }
    }

    fn ipnet(&mut self, net: &IpNet) {
        match net.addr() {
            IpAddr::V4(a) => {
                self.out.extend_from_slice(&[4, net.prefix_len()]);
                self.out.extend_from_slice(&a.octets());
            }
            IpAddr::V6(a) => {
                self.out.extend_from_slice(&[6, net.prefix_len()]);
                self.out.extend_from_slice(&a.octets());
            }
        }
    }

    fn conditions(&mut self, conds: &'s [Condition]) {
        if !self.v2 {
            return;
        }
        self.len(conds.len());
        for c in conds {
            match &c.attribute {
                Attribute::Principal => self.out.push(0),
                Attribute::Host => self.out.push(1),
                Attribute::Method => self.out.push(2),
                Attribute::Path => self.out.push(3),
                Attribute::Sni => self.out.push(4),
                Attribute::Header(name) => {
                    self.out.push(5);
                    self.string(name);
                }
                Attribute::SourceIp => self.out.push(6),
                Attribute::DestinationIp => self.out.push(7),
                Attribute::DestinationPort => self.out.push(8),
                Attribute::RemoteIp => self.out.push(9),
                Attribute::Claim(path) => {
                    self.out.push(10);
                    self.len(path.len());
                    path.iter().for_each(|seg| self.string(seg));
                }
                Attribute::RequestPrincipal => self.out.push(11),
            }
            self.out.push(u8::from(c.negated));
            self.len(c.matchers.len());
            for m in &c.matchers {
                self.matcher(m);
            }
        }
    }

    fn matcher(&mut self, m: &'s Matcher) {
        {
            {
                match m {
                    Matcher::Present => self.out.push(0),
                    Matcher::NonEmpty => self.out.push(1),
                    Matcher::Exact(v) => self.tagged(2, v),
                    Matcher::Prefix(v) => self.tagged(3, v),
                    Matcher::Suffix(v) => self.tagged(4, v),
                    Matcher::Regex(v) => self.tagged(5, v),
                    Matcher::PathTemplate(v) => self.tagged(6, v),
                    Matcher::Contains(v) => self.tagged(9, v),
                    Matcher::Net(n) => {
                        self.out.push(7);
                        self.ipnet(n);
                    }
                    Matcher::Port(p) => {
                        self.out.push(8);
                        self.out.extend_from_slice(&p.to_le_bytes());
                    }
                    Matcher::IssuerSubject(iss, sub) => {
                        self.out.push(10);
                        self.matcher(iss);
                        self.matcher(sub);
                    }
                }
            }
        }
    }

    fn tagged(&mut self, tag: u8, s: &'s str) {
        self.out.push(tag);
        self.string(s);
    }

    fn pattern(&mut self, p: &'s Pattern) {
        match p {
            Pattern::Any => self.out.push(0),
            Pattern::Exact(s) => {
                self.out.push(1);
                self.string(s);
            }
            Pattern::Prefix(s) => {
                self.out.push(2);
                self.string(s);
            }
            Pattern::Suffix(s) => {
                self.out.push(3);
                self.string(s);
            }
        }
    }
}
