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

use crate::spec::{Action, Policy, PolicySet};

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

mod decode;
use decode::Reader;

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
mod encode;
#[cfg(feature = "encode")]
pub use encode::encode;
