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
//!   policy    varint name, u8 action (0 allow, 1 deny), varint n, n x rule
//!   rule      varint n, n x source, varint m, m x destination
//!   source    varint n, n x pattern, varint m, m x ipnet
//!   dest      varint n, n x pattern, varint m, m x u16 LE port, varint k, k x varint method,
//!             u8 has_header, [varint name, varint regex]
//!   pattern   u8 kind (0 any, 1 exact, 2 prefix, 3 suffix), [varint literal]
//!   ipnet     u8 family (4, 6), u8 prefix_len, 4 or 16 address bytes
//! ```
//! Every string reference is an index into the pool. The decoder checks every byte of this:
//! lengths against what is left, indexes against the pool, enums against their ranges; it never
//! allocates more than the input could describe and never panics, whatever the bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::spec::{Action, Destination, HeaderMatch, IpNet, Pattern, Policy, PolicySet, Rule, Source};

pub const MAGIC: &[u8; 8] = b"MZAUTHZ\0";
pub const FORMAT_VERSION: u16 = 1;
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
                    "format version {v} is not supported (this build reads {FORMAT_VERSION})"
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

/// Decodes and validates a table's bytes into the policy set it holds.
pub fn decode(bytes: &[u8]) -> Result<PolicySet, DecodeError> {
    let header = bytes.get(..HEADER_LEN).ok_or(DecodeError::TooShort)?;
    if &header[..8] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let version = u16::from_le_bytes([header[8], header[9]]);
    if version != FORMAT_VERSION {
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
            value => {
                return Err(DecodeError::BadEnum {
                    offset: at,
                    what: "action",
                    value,
                });
            }
        };
        let n = self.count(2)?;
        let mut rules = Vec::with_capacity(n);
        for _ in 0..n {
            rules.push(self.rule()?);
        }
        Ok(Policy { name, action, rules })
    }

    fn rule(&mut self) -> Result<Rule, DecodeError> {
        let n = self.count(2)?;
        let mut sources = Vec::with_capacity(n);
        for _ in 0..n {
            let at = self.pos;
            let principals = self.list(1, Self::pattern)?;
            let ip_blocks = self.list(6, Self::ipnet)?;
            if principals.is_empty() && ip_blocks.is_empty() {
                return Err(DecodeError::EmptyList {
                    offset: at,
                    what: "source",
                });
            }
            sources.push(Source { principals, ip_blocks });
        }
        let n = self.count(5)?;
        let mut destinations = Vec::with_capacity(n);
        for _ in 0..n {
            destinations.push(self.destination()?);
        }
        Ok(Rule { sources, destinations })
    }

    fn destination(&mut self) -> Result<Destination, DecodeError> {
        let at = self.pos;
        let hosts = self.list(1, Self::pattern)?;
        if hosts.is_empty() {
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
        if ports.is_empty() {
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
        Ok(Destination {
            hosts,
            ports,
            methods,
            header,
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
    let mut w = Writer::default();
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
    bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&0u16.to_le_bytes());
    let body_len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    bytes.extend_from_slice(&body_len.to_le_bytes());
    bytes.extend_from_slice(&crc32(&body).to_le_bytes());
    bytes.extend_from_slice(&body);
    bytes
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
        });
        self.len(p.rules.len());
        for rule in &p.rules {
            self.len(rule.sources.len());
            for s in &rule.sources {
                self.len(s.principals.len());
                s.principals.iter().for_each(|p| self.pattern(p));
                self.len(s.ip_blocks.len());
                for net in &s.ip_blocks {
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
            }
        }
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
