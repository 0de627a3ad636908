//! Keys: every distinct principal pattern, CIDR and host pattern in the table gets a number, and
//! these indexes find, for one request, the numbers of all patterns that match it.
//!
//! Exact literals are one hash probe; `prefix*` and `*suffix` literals one probe per distinct
//! literal length (a handful in practice); `*` one key; CIDRs one probe per distinct prefix
//! length. Key 0 on each side is [`ALWAYS`], the key of clauses that match everything (rules
//! without sources or without destinations); every request has it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::clause::{Cidr, LitKind};
use crate::hash::FastMap;
use crate::spec::{mask32, mask128};

pub(crate) const ALWAYS: u32 = 0;

/// Matching keys gathered on the stack. A request matching more than `CAP` patterns on one
/// side (only possible with pathological tables) overflows; the evaluator then scans instead.
pub(crate) struct KeyBuf {
    keys: [u32; KeyBuf::CAP],
    len: usize,
    pub overflow: bool,
}

impl KeyBuf {
    const CAP: usize = 64;

    pub fn new() -> KeyBuf {
        KeyBuf {
            keys: [ALWAYS; KeyBuf::CAP],
            len: 1,
            overflow: false,
        }
    }

    #[inline]
    pub fn push(&mut self, key: u32) {
        match self.keys.get_mut(self.len) {
            Some(slot) => {
                *slot = key;
                self.len += 1;
            }
            None => self.overflow = true,
        }
    }

    pub fn as_slice(&self) -> &[u32] {
        &self.keys[..self.len]
    }
}

/// Principal or host patterns -> key numbers.
#[derive(Debug, Default)]
pub(crate) struct PatternKeys {
    exact: FastMap<Box<[u8]>, u32>,
    prefix: FastMap<Box<[u8]>, u32>,
    suffix: FastMap<Box<[u8]>, u32>,
    prefix_lens: Vec<(usize, LengthFilter)>,
    suffix_lens: Vec<(usize, LengthFilter)>,
    any: Option<u32>,
    /// `Contains("/ns/<ns>/")` literals (Istio's namespaces, on principals): a value is looked
    /// up once per `/ns/` segment it has.
    namespace: FastMap<Box<[u8]>, u32>,
}

/// Whether a literal is `/ns/<ns>/` with one non-empty segment, the only `Contains` shape the
/// index looks up.
pub(crate) fn is_namespace_literal(lit: &[u8]) -> bool {
    lit.len() > 5 && lit.starts_with(b"/ns/") && lit.ends_with(b"/") && !lit[4..lit.len() - 1].contains(&b'/')
}

/// A one-hash Bloom filter over the literals of one length, about 8 bits per literal, so that
/// the probe of a length that holds no matching literal (most of them) costs a bit test in a
/// small, cache-resident bitmap instead of a miss into a large hash map.
#[derive(Debug, Default)]
pub(crate) struct LengthFilter {
    bits: Vec<u64>,
}

impl LengthFilter {
    fn build<'a>(literals: impl Iterator<Item = &'a [u8]> + Clone) -> LengthFilter {
        let words = (literals.clone().count() * 8).div_ceil(64).next_power_of_two().max(1);
        let mut bits = vec![0u64; words];
        for lit in literals {
            let h = filter_hash(lit);
            let word = (h >> 6) as usize & (words - 1);
            bits[word] |= 1 << (h & 63);
        }
        LengthFilter { bits }
    }

    #[inline]
    fn may_contain(&self, v: &[u8]) -> bool {
        let h = filter_hash(v);
        let word = (h >> 6) as usize & (self.bits.len().wrapping_sub(1));
        self.bits.get(word).is_some_and(|w| w & (1 << (h & 63)) != 0)
    }
}

fn filter_hash(v: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h = crate::hash::WordHasher::default();
    h.write(v);
    h.finish()
}

impl PatternKeys {
    /// The key of `lit`, numbering it from `next` if it is new.
    pub fn intern(&mut self, kind: LitKind, bytes: &[u8], next: &mut u32) -> u32 {
        let map = match kind {
            LitKind::Any => {
                return *self.any.get_or_insert_with(|| {
                    *next += 1;
                    *next - 1
                });
            }
            LitKind::Exact => &mut self.exact,
            LitKind::Prefix => &mut self.prefix,
            LitKind::Suffix => &mut self.suffix,
            LitKind::Contains => &mut self.namespace,
        };
        // Look up before inserting: most literals repeat, and a hit then copies nothing.
        if let Some(&k) = map.get(bytes) {
            return k;
        }
        let k = *next;
        *next += 1;
        map.insert(bytes.into(), k);
        k
    }

    /// Call once all patterns are interned.
    pub fn finish(&mut self) {
        let lens = |m: &FastMap<Box<[u8]>, u32>| {
            let mut v: Vec<usize> = m.keys().map(|k| k.len()).collect();
            v.sort_unstable();
            v.dedup();
            v.into_iter()
                .map(|len| {
                    (
                        len,
                        LengthFilter::build(m.keys().filter(move |k| k.len() == len).map(|k| &k[..])),
                    )
                })
                .collect()
        };
        self.prefix_lens = lens(&self.prefix);
        self.suffix_lens = lens(&self.suffix);
    }

    /// Pushes the key of every pattern that matches `value` (`None`: absent, matches nothing).
    #[inline]
    pub fn matching(&self, value: Option<&[u8]>, out: &mut KeyBuf) {
        let Some(v) = value else { return };
        if let Some(k) = self.any {
            out.push(k);
        }
        if let Some(&k) = self.exact.get(v) {
            out.push(k);
        }
        for (len, filter) in &self.prefix_lens {
            let Some(head) = v.get(..*len) else { break };
            if filter.may_contain(head) {
                if let Some(&k) = self.prefix.get(head) {
                    out.push(k);
                }
            }
        }
        for (len, filter) in &self.suffix_lens {
            let Some(start) = v.len().checked_sub(*len) else {
                break;
            };
            let tail = &v[start..];
            if filter.may_contain(tail) {
                if let Some(&k) = self.suffix.get(tail) {
                    out.push(k);
                }
            }
        }
        if !self.namespace.is_empty() {
            // Every `/ns/<segment>/` in the value, overlapping ones included.
            let mut from = 0;
            while let Some(at) = find(&v[from..], b"/ns/").map(|i| i + from) {
                if let Some(end) = v[at + 4..].iter().position(|&b| b == b'/') {
                    if let Some(&k) = self.namespace.get(&v[at..at + 4 + end + 1]) {
                        out.push(k);
                    }
                }
                from = at + 1;
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// CIDRs -> key numbers, one map per prefix length.
#[derive(Debug, Default)]
pub(crate) struct CidrKeys {
    v4: Vec<(u8, FastMap<u32, u32>)>,
    v6: Vec<(u8, FastMap<u128, u32>)>,
}

#[derive(Default)]
pub(crate) struct CidrKeysBuilder {
    v4: BTreeMap<u8, FastMap<u32, u32>>,
    v6: BTreeMap<u8, FastMap<u128, u32>>,
}

impl CidrKeysBuilder {
    pub fn intern(&mut self, cidr: Cidr, next: &mut u32) -> u32 {
        let fresh = || {
            *next += 1;
            *next - 1
        };
        match cidr {
            Cidr::V4(net, len) => *self.v4.entry(len).or_default().entry(net).or_insert_with(fresh),
            Cidr::V6(net, len) => *self.v6.entry(len).or_default().entry(net).or_insert_with(fresh),
        }
    }

    pub fn build(self) -> CidrKeys {
        CidrKeys {
            v4: self.v4.into_iter().collect(),
            v6: self.v6.into_iter().collect(),
        }
    }
}

impl CidrKeys {
    #[inline]
    pub fn matching(&self, ip: Option<IpAddr>, out: &mut KeyBuf) {
        match ip {
            Some(IpAddr::V4(ip)) => {
                let ip = u32::from(ip);
                for (len, map) in &self.v4 {
                    if let Some(&k) = map.get(&(ip & mask32(*len))) {
                        out.push(k);
                    }
                }
            }
            Some(IpAddr::V6(ip)) => {
                let ip = u128::from(ip);
                for (len, map) in &self.v6 {
                    if let Some(&k) = map.get(&(ip & mask128(*len))) {
                        out.push(k);
                    }
                }
            }
            None => {}
        }
    }
}
