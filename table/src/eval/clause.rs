//! Clauses: one source or destination of one rule, in the form the evaluator checks directly.
//! Every matcher here has one `matches` and nothing else.

use std::net::IpAddr;

use regex::Regex;

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

/// A pattern with its literal as bytes.
#[derive(Debug)]
pub(crate) enum Lit {
    Any,
    Exact(Box<[u8]>),
    Prefix(Box<[u8]>),
    Suffix(Box<[u8]>),
}

impl Lit {
    pub fn new(p: &Pattern, lowercase: bool) -> Lit {
        let bytes = |s: &str| -> Box<[u8]> {
            if lowercase {
                s.to_ascii_lowercase().into_bytes().into()
            } else {
                s.as_bytes().into()
            }
        };
        match p {
            Pattern::Any => Lit::Any,
            Pattern::Exact(s) => Lit::Exact(bytes(s)),
            Pattern::Prefix(s) => Lit::Prefix(bytes(s)),
            Pattern::Suffix(s) => Lit::Suffix(bytes(s)),
        }
    }

    #[inline]
    pub fn matches(&self, v: &[u8]) -> bool {
        match self {
            Lit::Any => true,
            Lit::Exact(s) => v == &s[..],
            Lit::Prefix(s) => v.starts_with(s),
            Lit::Suffix(s) => v.ends_with(s),
        }
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

#[derive(Debug)]
pub(crate) struct SourceClause {
    pub rule: u32,
    pub principals: Vec<Lit>,
    pub ip_blocks: Vec<Cidr>,
}

impl SourceClause {
    /// Principals match (if any) and IP blocks match (if any). An empty clause (a rule without
    /// sources) matches everything.
    #[inline]
    pub fn matches(&self, ctx: &Ctx<'_>) -> bool {
        (self.principals.is_empty()
            || ctx
                .req
                .principal
                .is_some_and(|p| self.principals.iter().any(|l| l.matches(p.as_bytes()))))
            && (self.ip_blocks.is_empty()
                || ctx
                    .source_ip
                    .is_some_and(|ip| self.ip_blocks.iter().any(|n| n.matches(ip))))
    }
}

#[derive(Debug)]
pub(crate) struct DestClause {
    pub hosts: Vec<Lit>,
    pub ports: Vec<u16>,
    pub methods: Vec<Box<[u8]>>,
    pub header: Option<HeaderCheck>,
}

impl DestClause {
    /// Host, port, method (if any) and header (if any). An empty clause (a rule without
    /// destinations) matches everything. The port is checked after what the request already
    /// carries, so a request that fails on method or host never has its port looked up.
    #[inline]
    pub fn matches(&self, ctx: &Ctx<'_>, regexes: &[Regex]) -> bool {
        (self.methods.is_empty() || self.methods.iter().any(|m| &m[..] == ctx.req.method.as_bytes()))
            && (self.hosts.is_empty() || self.hosts.iter().any(|l| l.matches(ctx.host)))
            && (self.ports.is_empty() || self.ports.contains(&ctx.port()))
            && self.header.is_none_or(|h| h.matches(ctx, regexes))
    }
}
