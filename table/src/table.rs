//! The evaluator: a policy set turned into indexes that find the few rules a request can match
//! without scanning the rest.
//!
//! Each rule is two sides, sources and destinations, each a list of clauses (OR); a rule matches
//! when both sides do. A rule with an empty side gets one clause that matches everything, so
//! every rule has at least one clause per side and "side matches" is always "any clause matches".
//!
//! Indexes point from request values to clauses that can match them:
//! - principals: exact strings in a hash map, `prefix*` and `*suffix` in hash maps probed once per
//!   distinct literal length, `*` in a list;
//! - source IPs of clauses without principals: one hash map per distinct CIDR length;
//! - hosts (normalized): as principals.
//!
//! A decision collects the candidate clauses of both sides, walks the smaller set, and checks each
//! candidate's whole rule directly. Rules are numbered DENY policies first, then ALLOW, each in
//! the author's order, so the lowest matching rule number is the decision and everything above
//! the best match found so far is skipped. Nothing is allocated per decision except for a host
//! longer than 255 bytes that needs lowercasing.

use std::net::IpAddr;

use regex::Regex;

use crate::hash::FastMap;
use crate::request::{Decision, Request, RuleRef};
use crate::spec::{Action, Destination, Pattern, PolicySet, Source, canonical_ip, mask32, mask128};

/// A table that is ready to evaluate requests.
#[derive(Debug)]
pub struct Table {
    policies: Vec<PolicyInfo>,
    rules: Vec<RuleInfo>,
    /// Rules `first_allow..` belong to ALLOW policies.
    first_allow: u32,
    has_allow: bool,
    sources: Vec<SourceClause>,
    dests: Vec<DestClause>,
    principal_index: PatternIndex,
    ip_index: CidrIndex,
    host_index: PatternIndex,
    regexes: Vec<Regex>,
    header_names: Vec<String>,
    rule_count: usize,
    uses_source_ip: bool,
}

/// A header regex that the `regex` engine would not compile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildError {
    pub policy: String,
    pub message: String,
}

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "policy {}: {}", self.policy, self.message)
    }
}

impl std::error::Error for BuildError {}

#[derive(Debug)]
struct PolicyInfo {
    name: String,
    action: Action,
}

#[derive(Debug)]
struct RuleInfo {
    policy: u32,
    /// `u32::MAX` for the match-all rule of a policy without rules.
    index: u32,
    sources: (u32, u32),
    dests: (u32, u32),
}

#[derive(Debug)]
struct SourceClause {
    rule: u32,
    principals: Vec<Lit>,
    ip_blocks: Vec<Cidr>,
}

#[derive(Debug)]
struct DestClause {
    rule: u32,
    hosts: Vec<Lit>,
    ports: Vec<u16>,
    methods: Vec<Box<[u8]>>,
    header: Option<(HeaderSlot, u32)>,
}

#[derive(Clone, Copy, Debug)]
enum HeaderSlot {
    Authority,
    Method,
    Named(u32),
}

/// A pattern with its literal as bytes, ready to compare.
#[derive(Debug)]
enum Lit {
    Any,
    Exact(Box<[u8]>),
    Prefix(Box<[u8]>),
    Suffix(Box<[u8]>),
}

impl Lit {
    fn new(p: &Pattern, lowercase: bool) -> Lit {
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
    fn matches(&self, v: &[u8]) -> bool {
        match self {
            Lit::Any => true,
            Lit::Exact(s) => v == &s[..],
            Lit::Prefix(s) => v.starts_with(s),
            Lit::Suffix(s) => v.ends_with(s),
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Cidr {
    V4(u32, u8),
    V6(u128, u8),
}

impl Cidr {
    fn new(net: &crate::spec::IpNet) -> Cidr {
        match net.addr() {
            IpAddr::V4(a) => Cidr::V4(u32::from(a), net.prefix_len()),
            IpAddr::V6(a) => Cidr::V6(u128::from(a), net.prefix_len()),
        }
    }

    #[inline]
    fn contains(self, ip: IpAddr) -> bool {
        match (self, ip) {
            (Cidr::V4(net, len), IpAddr::V4(ip)) => u32::from(ip) & mask32(len) == net,
            (Cidr::V6(net, len), IpAddr::V6(ip)) => u128::from(ip) & mask128(len) == net,
            _ => false,
        }
    }
}

/// A range of [`IdLists::ids`].
type IdRange = (u32, u32);

/// Clause ids stored contiguously; maps point at ranges of `ids`.
#[derive(Debug, Default)]
struct IdLists {
    ids: Vec<u32>,
}

impl IdLists {
    /// Moves each group's ids into the shared list; the map keeps only its range.
    fn freeze<K: std::hash::Hash + Eq>(
        &mut self,
        groups: FastMap<K, Vec<u32>>,
    ) -> FastMap<K, IdRange> {
        groups
            .into_iter()
            .map(|(k, v)| {
                let start = self.ids.len() as u32;
                self.ids.extend(v);
                (k, (start, self.ids.len() as u32))
            })
            .collect()
    }

    #[inline]
    fn get(&self, (start, end): IdRange) -> &[u32] {
        self.ids.get(start as usize..end as usize).unwrap_or(&[])
    }
}

#[derive(Debug, Default)]
struct PatternIndex {
    ids: IdLists,
    exact: FastMap<Box<[u8]>, IdRange>,
    prefix: FastMap<Box<[u8]>, IdRange>,
    suffix: FastMap<Box<[u8]>, IdRange>,
    prefix_lens: Vec<usize>,
    suffix_lens: Vec<usize>,
    any: Vec<u32>,
    /// Clauses that match whatever the value (a rule without this side).
    always: Vec<u32>,
}

#[derive(Default)]
struct PatternIndexBuilder {
    exact: FastMap<Box<[u8]>, Vec<u32>>,
    prefix: FastMap<Box<[u8]>, Vec<u32>>,
    suffix: FastMap<Box<[u8]>, Vec<u32>>,
    any: Vec<u32>,
    always: Vec<u32>,
}

impl PatternIndexBuilder {
    fn add(&mut self, lit: &Lit, clause: u32) {
        let push = |map: &mut FastMap<Box<[u8]>, Vec<u32>>, k: &[u8]| {
            let list = map.entry(k.into()).or_default();
            // A clause listing the same literal twice needs one entry.
            if list.last() != Some(&clause) {
                list.push(clause);
            }
        };
        match lit {
            Lit::Any => self.any.push(clause),
            Lit::Exact(s) => push(&mut self.exact, s),
            Lit::Prefix(s) => push(&mut self.prefix, s),
            Lit::Suffix(s) => push(&mut self.suffix, s),
        }
    }

    fn build(self) -> PatternIndex {
        let lens = |m: &FastMap<Box<[u8]>, Vec<u32>>| {
            let mut v: Vec<usize> = m.keys().map(|k| k.len()).collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        let prefix_lens = lens(&self.prefix);
        let suffix_lens = lens(&self.suffix);
        let mut ids = IdLists::default();
        let mut any = self.any;
        any.dedup();
        PatternIndex {
            exact: ids.freeze(self.exact),
            prefix: ids.freeze(self.prefix),
            suffix: ids.freeze(self.suffix),
            ids,
            prefix_lens,
            suffix_lens,
            any,
            always: self.always,
        }
    }
}

impl PatternIndex {
    /// Calls `hit` with every non-empty list of clauses that may match `value` (`None`: absent).
    #[inline]
    fn lookup<'t>(&'t self, value: Option<&[u8]>, hit: &mut impl FnMut(&'t [u32])) {
        if !self.always.is_empty() {
            hit(&self.always);
        }
        let Some(v) = value else { return };
        if !self.any.is_empty() {
            hit(&self.any);
        }
        if let Some(&r) = self.exact.get(v) {
            hit(self.ids.get(r));
        }
        for &len in &self.prefix_lens {
            let Some(key) = v.get(..len) else { break };
            if let Some(&r) = self.prefix.get(key) {
                hit(self.ids.get(r));
            }
        }
        for &len in &self.suffix_lens {
            let Some(start) = v.len().checked_sub(len) else {
                break;
            };
            if let Some(&r) = self.suffix.get(&v[start..]) {
                hit(self.ids.get(r));
            }
        }
    }
}

/// Source clauses without principals, keyed by their networks.
#[derive(Debug, Default)]
struct CidrIndex {
    ids: IdLists,
    /// Per prefix length: network -> clauses.
    v4: Vec<(u8, FastMap<u32, IdRange>)>,
    v6: Vec<(u8, FastMap<u128, IdRange>)>,
}

impl CidrIndex {
    fn build(entries: &[(Cidr, u32)]) -> CidrIndex {
        let mut v4: std::collections::BTreeMap<u8, FastMap<u32, Vec<u32>>> = Default::default();
        let mut v6: std::collections::BTreeMap<u8, FastMap<u128, Vec<u32>>> = Default::default();
        for &(cidr, clause) in entries {
            let list = match cidr {
                Cidr::V4(net, len) => v4.entry(len).or_default().entry(net).or_default(),
                Cidr::V6(net, len) => v6.entry(len).or_default().entry(net).or_default(),
            };
            if list.last() != Some(&clause) {
                list.push(clause);
            }
        }
        let mut ids = IdLists::default();
        let v4 = v4
            .into_iter()
            .map(|(len, m)| (len, ids.freeze(m)))
            .collect();
        let v6 = v6
            .into_iter()
            .map(|(len, m)| (len, ids.freeze(m)))
            .collect();
        CidrIndex { ids, v4, v6 }
    }

    #[inline]
    fn lookup<'t>(&'t self, ip: Option<IpAddr>, hit: &mut impl FnMut(&'t [u32])) {
        match ip {
            Some(IpAddr::V4(ip)) => {
                let ip = u32::from(ip);
                for (len, map) in &self.v4 {
                    if let Some(&r) = map.get(&(ip & mask32(*len))) {
                        hit(self.ids.get(r));
                    }
                }
            }
            Some(IpAddr::V6(ip)) => {
                let ip = u128::from(ip);
                for (len, map) in &self.v6 {
                    if let Some(&r) = map.get(&(ip & mask128(*len))) {
                        hit(self.ids.get(r));
                    }
                }
            }
            None => {}
        }
    }
}

/// Up to `N` candidate lists gathered on the stack; past that, the side is walked by looking
/// it up again instead.
struct Hits<'t, const N: usize> {
    lists: [&'t [u32]; N],
    len: usize,
    total: usize,
    overflow: bool,
}

impl<'t, const N: usize> Hits<'t, N> {
    fn new() -> Self {
        Hits {
            lists: [&[]; N],
            len: 0,
            total: 0,
            overflow: false,
        }
    }

    #[inline]
    fn push(&mut self, list: &'t [u32]) {
        self.total += list.len();
        match self.lists.get_mut(self.len) {
            Some(slot) => {
                *slot = list;
                self.len += 1;
            }
            None => self.overflow = true,
        }
    }
}

const MAX_HOST_STACK: usize = 255;

/// Lowercases, drops a `:port` (also after `[v6]`), and drops one trailing dot. Returns the
/// normalized bytes: borrowed when nothing changes, in `buf` when they fit, else on the heap.
pub fn normalize_host<'b>(
    raw: &'b str,
    buf: &'b mut [u8; MAX_HOST_STACK],
) -> std::borrow::Cow<'b, [u8]> {
    let mut host = raw.as_bytes();
    let port_start = if host.first() == Some(&b'[') {
        host.iter()
            .position(|&b| b == b']')
            .map(|i| i + 1)
            .filter(|&i| host.get(i) == Some(&b':'))
    } else {
        match host.iter().rposition(|&b| b == b':') {
            Some(i) if !host[..i].contains(&b':') => Some(i),
            _ => None,
        }
    };
    if let Some(i) = port_start {
        let port = &host[i + 1..];
        if !port.is_empty() && port.iter().all(u8::is_ascii_digit) {
            host = &host[..i];
        }
    }
    if let Some(stripped) = host.strip_suffix(b".") {
        host = stripped;
    }
    if !host.iter().any(u8::is_ascii_uppercase) {
        return std::borrow::Cow::Borrowed(host);
    }
    match buf.get_mut(..host.len()) {
        Some(out) => {
            for (o, &b) in out.iter_mut().zip(host) {
                *o = b.to_ascii_lowercase();
            }
            std::borrow::Cow::Borrowed(&buf[..host.len()])
        }
        None => std::borrow::Cow::Owned(host.to_ascii_lowercase()),
    }
}

impl Table {
    /// Decodes and validates table bytes, then builds the indexes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Table, crate::TableError> {
        let set = crate::wire::decode(bytes).map_err(crate::TableError::Decode)?;
        Table::new(&set).map_err(crate::TableError::Build)
    }

    /// Builds the indexes for a policy set.
    pub fn new(set: &PolicySet) -> Result<Table, BuildError> {
        let mut b = Builder::default();
        let order = set
            .policies
            .iter()
            .enumerate()
            .filter(|(_, p)| p.action == Action::Deny)
            .chain(
                set.policies
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.action == Action::Allow),
            );
        let mut first_allow = None;
        for (pi, policy) in order {
            if policy.action == Action::Allow && first_allow.is_none() {
                first_allow = Some(b.rules.len() as u32);
            }
            if policy.rules.is_empty() {
                b.rule(pi as u32, u32::MAX, &[], &[], &policy.name)?;
            }
            for (ri, rule) in policy.rules.iter().enumerate() {
                b.rule(
                    pi as u32,
                    ri as u32,
                    &rule.sources,
                    &rule.destinations,
                    &policy.name,
                )?;
            }
        }
        let rule_count = b.rules.len();
        let uses_source_ip = b.sources.iter().any(|c| !c.ip_blocks.is_empty());
        Ok(Table {
            uses_source_ip,
            policies: set
                .policies
                .iter()
                .map(|p| PolicyInfo {
                    name: p.name.clone(),
                    action: p.action,
                })
                .collect(),
            first_allow: first_allow.unwrap_or(rule_count as u32),
            has_allow: first_allow.is_some(),
            rules: b.rules,
            sources: b.sources,
            dests: b.dests,
            principal_index: b.principals.build(),
            ip_index: CidrIndex::build(&b.ip_only),
            host_index: b.hosts.build(),
            regexes: b.regexes,
            header_names: b.header_names,
            rule_count,
        })
    }

    /// The non-pseudo headers (lowercase) and pseudo-headers other than `:authority` and
    /// `:method` that the policies look at; [`Request::headers`] is indexed the same way.
    pub fn header_names(&self) -> &[String] {
        &self.header_names
    }

    /// Whether any rule looks at the source address (so the filter can skip fetching it).
    pub fn uses_source_ip(&self) -> bool {
        self.uses_source_ip
    }

    pub fn policy_count(&self) -> usize {
        self.policies.len()
    }

    /// Rules in the table, counting a policy without rules as one match-all rule.
    pub fn rule_count(&self) -> usize {
        self.rule_count
    }

    pub fn policy_name(&self, policy: u32) -> &str {
        self.policies
            .get(policy as usize)
            .map_or("", |p| p.name.as_str())
    }

    pub fn policy_action(&self, policy: u32) -> Option<Action> {
        self.policies.get(policy as usize).map(|p| p.action)
    }

    /// Decides one request.
    pub fn evaluate(&self, req: &Request<'_>) -> Decision {
        let mut host_buf = [0u8; MAX_HOST_STACK];
        let host = normalize_host(req.authority, &mut host_buf);
        let source_ip = req.source_ip.map(canonical_ip);
        let ctx = Ctx {
            req,
            host: &host,
            source_ip,
        };

        let mut src_hits = Hits::<24>::new();
        self.source_lookup(&ctx, &mut |l| src_hits.push(l));
        let mut dst_hits = Hits::<24>::new();
        self.host_index
            .lookup(Some(&host), &mut |l| dst_hits.push(l));

        let mut best = u32::MAX;
        if src_hits.total <= dst_hits.total {
            let mut visit = |list: &[u32]| {
                for &c in list {
                    let Some(clause) = self.sources.get(c as usize) else {
                        continue;
                    };
                    if clause.rule < best
                        && self.source_matches(clause, &ctx)
                        && self.rule_dests_match(clause.rule, &ctx)
                    {
                        best = clause.rule;
                    }
                }
            };
            if src_hits.overflow {
                self.source_lookup(&ctx, &mut visit);
            } else {
                src_hits.lists[..src_hits.len].iter().for_each(|l| visit(l));
            }
        } else {
            let mut visit = |list: &[u32]| {
                for &c in list {
                    let Some(clause) = self.dests.get(c as usize) else {
                        continue;
                    };
                    if clause.rule < best
                        && self.dest_matches(clause, &ctx)
                        && self.rule_sources_match(clause.rule, &ctx)
                    {
                        best = clause.rule;
                    }
                }
            };
            if dst_hits.overflow {
                self.host_index.lookup(Some(&host), &mut visit);
            } else {
                dst_hits.lists[..dst_hits.len].iter().for_each(|l| visit(l));
            }
        }
        self.decide(best)
    }

    fn decide(&self, best: u32) -> Decision {
        let by = self.rules.get(best as usize).map(|r| RuleRef {
            policy: r.policy,
            rule: (r.index != u32::MAX).then_some(r.index),
        });
        if best < self.first_allow {
            Decision { allowed: false, by }
        } else if self.has_allow {
            Decision {
                allowed: by.is_some(),
                by,
            }
        } else {
            Decision {
                allowed: true,
                by: None,
            }
        }
    }

    #[inline]
    fn source_lookup<'t>(&'t self, ctx: &Ctx<'_>, hit: &mut impl FnMut(&'t [u32])) {
        self.principal_index
            .lookup(ctx.req.principal.map(str::as_bytes), hit);
        self.ip_index.lookup(ctx.source_ip, hit);
    }

    #[inline]
    fn source_matches(&self, c: &SourceClause, ctx: &Ctx<'_>) -> bool {
        let principal_ok = c.principals.is_empty()
            || ctx
                .req
                .principal
                .is_some_and(|p| c.principals.iter().any(|l| l.matches(p.as_bytes())));
        principal_ok
            && (c.ip_blocks.is_empty()
                || ctx
                    .source_ip
                    .is_some_and(|ip| c.ip_blocks.iter().any(|n| n.contains(ip))))
    }

    #[inline]
    fn dest_matches(&self, c: &DestClause, ctx: &Ctx<'_>) -> bool {
        (c.ports.is_empty() || c.ports.contains(&ctx.req.port))
            && (c.hosts.is_empty() || c.hosts.iter().any(|l| l.matches(ctx.host)))
            && (c.methods.is_empty()
                || c.methods
                    .iter()
                    .any(|m| &m[..] == ctx.req.method.as_bytes()))
            && c.header.is_none_or(|(slot, re)| {
                let value = match slot {
                    HeaderSlot::Authority => Some(ctx.req.authority),
                    HeaderSlot::Method => Some(ctx.req.method),
                    HeaderSlot::Named(i) => ctx.req.headers.get(i as usize).copied().flatten(),
                };
                match (value, self.regexes.get(re as usize)) {
                    (Some(v), Some(re)) => re.is_match(v),
                    _ => false,
                }
            })
    }

    fn rule_dests_match(&self, rule: u32, ctx: &Ctx<'_>) -> bool {
        let Some(r) = self.rules.get(rule as usize) else {
            return false;
        };
        let clauses = self
            .dests
            .get(r.dests.0 as usize..r.dests.1 as usize)
            .unwrap_or(&[]);
        clauses.iter().any(|c| self.dest_matches(c, ctx))
    }

    fn rule_sources_match(&self, rule: u32, ctx: &Ctx<'_>) -> bool {
        let Some(r) = self.rules.get(rule as usize) else {
            return false;
        };
        let clauses = self
            .sources
            .get(r.sources.0 as usize..r.sources.1 as usize)
            .unwrap_or(&[]);
        clauses.iter().any(|c| self.source_matches(c, ctx))
    }
}

struct Ctx<'r> {
    req: &'r Request<'r>,
    host: &'r [u8],
    source_ip: Option<IpAddr>,
}

#[derive(Default)]
struct Builder {
    rules: Vec<RuleInfo>,
    sources: Vec<SourceClause>,
    dests: Vec<DestClause>,
    principals: PatternIndexBuilder,
    hosts: PatternIndexBuilder,
    ip_only: Vec<(Cidr, u32)>,
    regexes: Vec<Regex>,
    regex_ids: FastMap<Box<[u8]>, u32>,
    header_names: Vec<String>,
}

impl Builder {
    fn rule(
        &mut self,
        policy: u32,
        index: u32,
        sources: &[Source],
        dests: &[Destination],
        name: &str,
    ) -> Result<(), BuildError> {
        let rule = self.rules.len() as u32;
        let src_start = self.sources.len() as u32;
        if sources.is_empty() {
            self.principals.always.push(src_start);
            self.sources.push(SourceClause {
                rule,
                principals: Vec::new(),
                ip_blocks: Vec::new(),
            });
        }
        for s in sources {
            let id = self.sources.len() as u32;
            let clause = SourceClause {
                rule,
                principals: s.principals.iter().map(|p| Lit::new(p, false)).collect(),
                ip_blocks: s.ip_blocks.iter().map(Cidr::new).collect(),
            };
            if clause.principals.is_empty() {
                self.ip_only
                    .extend(clause.ip_blocks.iter().map(|&c| (c, id)));
                if clause.ip_blocks.is_empty() {
                    self.principals.always.push(id);
                }
            }
            clause
                .principals
                .iter()
                .for_each(|l| self.principals.add(l, id));
            self.sources.push(clause);
        }
        let dst_start = self.dests.len() as u32;
        if dests.is_empty() {
            self.hosts.always.push(dst_start);
            self.dests.push(DestClause {
                rule,
                hosts: Vec::new(),
                ports: Vec::new(),
                methods: Vec::new(),
                header: None,
            });
        }
        for d in dests {
            let id = self.dests.len() as u32;
            let header = match &d.header {
                None => None,
                Some(h) => Some((self.header_slot(&h.name), self.regex(&h.regex, name)?)),
            };
            let clause = DestClause {
                rule,
                hosts: d.hosts.iter().map(|p| Lit::new(p, true)).collect(),
                ports: d.ports.clone(),
                methods: d.methods.iter().map(|m| m.as_bytes().into()).collect(),
                header,
            };
            if clause.hosts.is_empty() {
                self.hosts.always.push(id);
            }
            clause.hosts.iter().for_each(|l| self.hosts.add(l, id));
            self.dests.push(clause);
        }
        self.rules.push(RuleInfo {
            policy,
            index,
            sources: (src_start, self.sources.len() as u32),
            dests: (dst_start, self.dests.len() as u32),
        });
        Ok(())
    }

    fn header_slot(&mut self, name: &str) -> HeaderSlot {
        let name = name.to_ascii_lowercase();
        match name.as_str() {
            // HTTP/1 `Host` is HTTP/2 `:authority`; Envoy keeps only the latter.
            ":authority" | "host" => HeaderSlot::Authority,
            ":method" => HeaderSlot::Method,
            _ => match self.header_names.iter().position(|n| *n == name) {
                Some(i) => HeaderSlot::Named(i as u32),
                None => {
                    self.header_names.push(name);
                    HeaderSlot::Named(self.header_names.len() as u32 - 1)
                }
            },
        }
    }

    fn regex(&mut self, source: &str, policy: &str) -> Result<u32, BuildError> {
        if let Some(&id) = self.regex_ids.get(source.as_bytes()) {
            return Ok(id);
        }
        let re = regex::RegexBuilder::new(&format!("^(?:{source})$"))
            .size_limit(1 << 20)
            .build()
            .map_err(|e| BuildError {
                policy: policy.to_owned(),
                message: format!("header regex: {e}"),
            })?;
        let id = self.regexes.len() as u32;
        self.regexes.push(re);
        self.regex_ids.insert(source.as_bytes().into(), id);
        Ok(id)
    }
}
