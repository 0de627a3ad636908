//! Clauses: one source or destination of one rule, in the form the evaluator checks directly.
//! Every matcher here has one `matches` and nothing else.

use std::net::IpAddr;

use regex::Regex;

use super::cond::{Check, CondCheck};
use crate::request::Request;
use crate::spec::{Pattern, mask32, mask128};

/// What one request looks like to the matchers: the raw request plus what the evaluator derived
/// once (normalized host, canonical source IP), and the destination port, asked for only when a
/// clause gets as far as needing it (in the filter it costs a host call).
pub(crate) struct Ctx<'r> {
    pub req: &'r Request<'r>,
    pub host: &'r [u8],
    pub source_ip: Option<IpAddr>,
    pub port_source: &'r dyn Fn() -> u16,
    pub port: std::cell::Cell<Option<u16>>,
}

impl Ctx<'_> {
    #[inline]
    pub fn port(&self) -> u16 {
        match self.port.get() {
            Some(p) => p,
            None => {
                let p = (self.port_source)();
                self.port.set(Some(p));
                p
            }
        }
    }
}

/// A range of one of the [`Pool`]'s vectors.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Span {
    start: u32,
    end: u32,
}

impl Span {
    fn of(start: usize, end: usize) -> Span {
        // Lengths are checked against u32 once the build is done (`Pool::fits_u32`).
        Span {
            start: start as u32,
            end: end as u32,
        }
    }

    fn range(self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }

    pub fn is_empty(self) -> bool {
        self.start >= self.end
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LitKind {
    Any,
    Exact,
    Prefix,
    Suffix,
    /// Conditions only: the literal appears anywhere.
    Contains,
}

/// A pattern whose literal lives in the pool's bytes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Lit {
    pub kind: LitKind,
    pub bytes: Span,
}

/// The variable-length parts of every clause (literal bytes, literal lists, CIDRs, ports) and
/// the header regexes, in flat vectors that clauses index by [`Span`]. A 100,000-rule table is
/// then a handful of allocations rather than millions, which is most of what loading and
/// dropping one used to cost.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    bytes: Vec<u8>,
    lits: Vec<Lit>,
    cidrs: Vec<Cidr>,
    ports: Vec<u16>,
    pub regexes: Vec<Regex>,
    conds: Vec<CondCheck>,
    checks: Vec<Check>,
    /// Issuer and subject checks of request-principal matchers.
    pairs: Vec<(Check, Check)>,
}

impl Pool {
    pub fn bytes(&self, span: Span) -> &[u8] {
        self.bytes.get(span.range()).unwrap_or(&[])
    }

    pub fn lits(&self, span: Span) -> &[Lit] {
        self.lits.get(span.range()).unwrap_or(&[])
    }

    fn push_bytes(&mut self, b: &[u8]) -> Span {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(b);
        Span::of(start, self.bytes.len())
    }

    /// Appends the patterns as literals (lowercased for hosts) and returns their range.
    pub fn push_patterns(&mut self, patterns: &[Pattern], lowercase: bool) -> Span {
        let start = self.lits.len();
        for p in patterns {
            let (kind, text) = match p {
                Pattern::Any => (LitKind::Any, ""),
                Pattern::Exact(s) => (LitKind::Exact, s.as_str()),
                Pattern::Prefix(s) => (LitKind::Prefix, s.as_str()),
                Pattern::Suffix(s) => (LitKind::Suffix, s.as_str()),
            };
            let bytes = if lowercase {
                let b = self.bytes.len();
                self.bytes.extend(text.bytes().map(|c| c.to_ascii_lowercase()));
                Span::of(b, self.bytes.len())
            } else {
                self.push_bytes(text.as_bytes())
            };
            self.lits.push(Lit { kind, bytes });
        }
        Span::of(start, self.lits.len())
    }

    /// Methods are exact, case-sensitive literals.
    pub fn push_exact(&mut self, values: &[String]) -> Span {
        let start = self.lits.len();
        for v in values {
            let bytes = self.push_bytes(v.as_bytes());
            self.lits.push(Lit {
                kind: LitKind::Exact,
                bytes,
            });
        }
        Span::of(start, self.lits.len())
    }

    pub fn push_cidrs(&mut self, nets: &[crate::spec::IpNet]) -> Span {
        let start = self.cidrs.len();
        self.cidrs.extend(nets.iter().map(Cidr::new));
        Span::of(start, self.cidrs.len())
    }

    pub fn cidrs(&self, span: Span) -> &[Cidr] {
        self.cidrs.get(span.range()).unwrap_or(&[])
    }

    pub fn push_ports(&mut self, ports: &[u16]) -> Span {
        let start = self.ports.len();
        self.ports.extend_from_slice(ports);
        Span::of(start, self.ports.len())
    }

    fn ports(&self, span: Span) -> &[u16] {
        self.ports.get(span.range()).unwrap_or(&[])
    }

    /// A literal for a condition's check (lowercased for hosts).
    pub fn lit(&mut self, kind: LitKind, text: &str, lowercase: bool) -> Lit {
        let start = self.bytes.len();
        if lowercase {
            self.bytes.extend(text.bytes().map(|c| c.to_ascii_lowercase()));
        } else {
            self.bytes.extend_from_slice(text.as_bytes());
        }
        Lit {
            kind,
            bytes: Span::of(start, self.bytes.len()),
        }
    }

    pub fn push_checks(&mut self, checks: impl IntoIterator<Item = Check>) -> Span {
        let start = self.checks.len();
        self.checks.extend(checks);
        Span::of(start, self.checks.len())
    }

    pub fn push_pair(&mut self, iss: Check, sub: Check) -> Check {
        self.pairs.push((iss, sub));
        Check::IssuerSubject(self.pairs.len() as u32 - 1)
    }

    pub fn pair(&self, i: u32) -> Option<(Check, Check)> {
        self.pairs.get(i as usize).copied()
    }

    pub fn checks(&self, span: Span) -> &[Check] {
        self.checks.get(span.range()).unwrap_or(&[])
    }

    pub fn push_conds(&mut self, conds: Vec<CondCheck>) -> Span {
        let start = self.conds.len();
        self.conds.extend(conds);
        Span::of(start, self.conds.len())
    }

    #[inline]
    fn conds_hold(&self, span: Span, ctx: &Ctx<'_>) -> bool {
        self.conds
            .get(span.range())
            .unwrap_or(&[])
            .iter()
            .all(|c| c.matches(ctx, self))
    }

    /// Whether every span handed out so far was exact (no vector outgrew `u32`).
    pub fn fits_u32(&self) -> bool {
        let max = u32::MAX as usize;
        [
            self.bytes.len(),
            self.lits.len(),
            self.cidrs.len(),
            self.ports.len(),
            self.conds.len(),
            self.checks.len(),
            self.pairs.len(),
        ]
        .iter()
        .all(|&n| n <= max)
    }

    #[inline]
    pub fn lit_matches(&self, lit: Lit, v: &[u8]) -> bool {
        let s = self.bytes(lit.bytes);
        match lit.kind {
            LitKind::Any => true,
            LitKind::Exact => v == s,
            LitKind::Prefix => v.starts_with(s),
            LitKind::Suffix => v.ends_with(s),
            LitKind::Contains => s.is_empty() || v.windows(s.len()).any(|w| w == s),
        }
    }

    fn any_lit_matches(&self, span: Span, v: &[u8]) -> bool {
        self.lits(span).iter().any(|&l| self.lit_matches(l, v))
    }
}

/// An IP network with host bits clear.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Cidr {
    V4(u32, u8),
    V6(u128, u8),
}

impl Cidr {
    pub fn new(net: &crate::spec::IpNet) -> Cidr {
        match net.addr() {
            IpAddr::V4(a) => Cidr::V4(u32::from(a), net.prefix_len()),
            IpAddr::V6(a) => Cidr::V6(u128::from(a), net.prefix_len()),
        }
    }

    #[inline]
    pub fn matches(self, ip: IpAddr) -> bool {
        match (self, ip) {
            (Cidr::V4(net, len), IpAddr::V4(ip)) => u32::from(ip) & mask32(len) == net,
            (Cidr::V6(net, len), IpAddr::V6(ip)) => u128::from(ip) & mask128(len) == net,
            _ => false,
        }
    }
}

/// Where a header regex finds its value.
#[derive(Clone, Copy, Debug)]
pub(crate) enum HeaderSlot {
    Authority,
    Method,
    Named(u32),
}

/// `httpHeaderMatch`: one header, one anchored regex.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HeaderCheck {
    pub slot: HeaderSlot,
    pub regex: u32,
    /// In a DENY policy the regex also holds when any single value of a repeated header
    /// matches, so repeating a header cannot dodge a DENY; ALLOW sees only the joined value.
    pub any_value: bool,
}

impl HeaderCheck {
    #[inline]
    pub fn matches(&self, ctx: &Ctx<'_>, regexes: &[Regex]) -> bool {
        let Some(re) = regexes.get(self.regex as usize) else {
            return false;
        };
        let values: &[&str] = match self.slot {
            HeaderSlot::Authority => std::slice::from_ref(&ctx.req.authority),
            HeaderSlot::Method => std::slice::from_ref(&ctx.req.method),
            HeaderSlot::Named(i) => ctx.req.headers.get(i as usize).copied().unwrap_or(&[]),
        };
        match values {
            [] => false,
            [one] => re.is_match(one),
            many => {
                (self.any_value && many.iter().any(|v| re.is_match(v)))
                    // Envoy joins a repeated header with `,` for its own matchers.
                    || re.is_match(&many.join(","))
            }
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct SourceClause {
    pub rule: u32,
    pub principals: Span,
    pub ip_blocks: Span,
    pub conditions: Span,
}

impl SourceClause {
    /// Principals match (if any) and IP blocks match (if any). An empty clause (a rule without
    /// sources) matches everything.
    #[inline]
    pub fn matches(&self, ctx: &Ctx<'_>, pool: &Pool) -> bool {
        (self.principals.is_empty()
            || ctx
                .req
                .principal
                .is_some_and(|p| pool.any_lit_matches(self.principals, p.as_bytes())))
            && (self.ip_blocks.is_empty()
                || ctx
                    .source_ip
                    .is_some_and(|ip| pool.cidrs(self.ip_blocks).iter().any(|n| n.matches(ip))))
            && (self.conditions.is_empty() || pool.conds_hold(self.conditions, ctx))
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct DestClause {
    pub hosts: Span,
    pub ports: Span,
    pub methods: Span,
    pub header: Option<HeaderCheck>,
    pub conditions: Span,
}

impl DestClause {
    /// Host, port, method (if any) and header (if any). An empty clause (a rule without
    /// destinations) matches everything. The port is checked after what the request already
    /// carries, so a request that fails on method or host never has its port looked up.
    #[inline]
    pub fn matches(&self, ctx: &Ctx<'_>, pool: &Pool) -> bool {
        (self.methods.is_empty() || pool.any_lit_matches(self.methods, ctx.req.method.as_bytes()))
            && (self.hosts.is_empty() || pool.any_lit_matches(self.hosts, ctx.host))
            && (self.ports.is_empty() || pool.ports(self.ports).contains(&ctx.port()))
            && self.header.is_none_or(|h| h.matches(ctx, &pool.regexes))
            && (self.conditions.is_empty() || pool.conds_hold(self.conditions, ctx))
    }
}
