//! Building the index from a policy set (once per configuration; not on the request path).

use super::clause::{Cidr, DestClause, HeaderCheck, HeaderSlot, LitKind, Pool, SourceClause, Span};
use super::cond::{Check, CondCheck, Slot, template_regex};
use super::keys::{ALWAYS, CidrKeysBuilder, PatternKeys};
use super::{ALL_DESTS, BuildError, PolicyInfo, RuleInfo, Table};
use crate::hash::FastMap;
use crate::spec::{Action, Attribute, Condition, Destination, Matcher, Policy, PolicySet, Source};

/// Above this many (source key, destination key) combinations a rule is indexed by its source
/// keys alone, so one rule listing many principals and many hosts cannot blow the index up.
const MAX_PAIRS_PER_RULE: usize = 256;

/// The enforced policies' table, holding the AUDIT policies' and the dry-run policies' tables
/// (each its own engine, as Istio's are separate RBAC filters) when there are any. All three
/// share one header list, so one [`Request`](crate::Request) serves them all.
pub(super) fn build(set: &PolicySet) -> Result<Table, BuildError> {
    let mut header_names = (Vec::new(), Vec::new());
    let mut table = engine(set, &mut header_names, |p| !p.dry_run && p.action != Action::Audit)?;
    let mut sub = |select: fn(&Policy) -> bool| -> Result<Option<Box<Table>>, BuildError> {
        if !set.policies.iter().any(select) {
            return Ok(None);
        }
        engine(set, &mut header_names, select).map(|t| Some(Box::new(t)))
    };
    table.audit = sub(|p| p.action == Action::Audit)?;
    table.dry_run = sub(|p| p.dry_run && p.action != Action::Audit)?;
    for t in [&table.audit, &table.dry_run].into_iter().flatten() {
        table.uses_source_ip |= t.uses_source_ip;
        table.uses_sni |= t.uses_sni;
        table.uses_destination_ip |= t.uses_destination_ip;
        table.uses_remote_ip |= t.uses_remote_ip;
    }
    table.policies = set
        .policies
        .iter()
        .map(|p| PolicyInfo {
            name: p.name.clone(),
            action: p.action,
            dry_run: p.dry_run,
        })
        .collect();
    (table.header_names, table.claim_paths) = header_names;
    Ok(table)
}

/// One engine: the selected policies, DENY (or AUDIT) rules first, then ALLOW.
/// `names`: the header names and claim paths found so far, shared by the engines of one table.
type Names = (Vec<String>, Vec<Vec<String>>);

fn engine(set: &PolicySet, header_names: &mut Names, select: fn(&Policy) -> bool) -> Result<Table, BuildError> {
    let mut b = Builder {
        next_src_key: ALWAYS + 1,
        next_dst_key: ALWAYS + 1,
        header_names: std::mem::take(&mut header_names.0),
        claim_paths: std::mem::take(&mut header_names.1),
        ..Builder::default()
    };
    let selected = || set.policies.iter().enumerate().filter(|(_, p)| select(p));
    let deny_first = selected()
        .filter(|(_, p)| p.action != Action::Allow)
        .chain(selected().filter(|(_, p)| p.action == Action::Allow));
    let mut first_allow = None;
    for (pi, policy) in deny_first {
        if policy.action == Action::Allow && first_allow.is_none() {
            first_allow = Some(b.rules.len() as u32);
        }
        if policy.rules.is_empty() {
            b.rule(pi as u32, None, &[], &[], policy)?;
        }
        for (ri, rule) in policy.rules.iter().enumerate() {
            b.rule(pi as u32, Some(ri as u32), &rule.sources, &rule.destinations, policy)?;
        }
    }
    b.principal_keys.finish();
    b.host_keys.finish();
    // Entries were pushed in rule order; a stable sort by key keeps that order within each key,
    // and one flat vector instead of a list per key saves an allocation per key pair (at 100k
    // rules, allocator work was most of the load time).
    let mut entries = b.pair_entries;
    entries.sort_by_key(|&(key, _)| key);
    // A clause listing one literal twice adds a repeat, next to the original after the sort.
    entries.dedup();
    let mut pairs = Vec::with_capacity(entries.len());
    let mut pair_index = FastMap::default();
    pair_index.reserve(entries.len());
    for group in entries.chunk_by(|a, b| a.0 == b.0) {
        let start = pairs.len() as u32;
        pairs.extend(group.iter().map(|&(_, pair)| pair));
        pair_index.insert(group[0].0, (start, pairs.len() as u32));
    }
    pair_index.shrink_to_fit();
    if !b.pool.fits_u32() || b.rules.len() > u32::MAX as usize {
        return Err(BuildError {
            policy: String::new(),
            message: "the policy set is too large to index (over 2^32 literals, bytes or rules)".into(),
        });
    }
    let rule_count = b.rules.len() as u32;
    *header_names = (std::mem::take(&mut b.header_names), std::mem::take(&mut b.claim_paths));
    Ok(Table {
        policies: Vec::new(),
        first_allow: first_allow.unwrap_or(rule_count),
        has_allow: first_allow.is_some(),
        uses_source_ip: b.sources.iter().any(|c| !c.ip_blocks.is_empty()) || b.uses_source_ip,
        uses_sni: b.uses_sni,
        uses_destination_ip: b.uses_destination_ip,
        uses_remote_ip: b.uses_remote_ip,
        audit: None,
        dry_run: None,
        pool: b.pool,
        rules: b.rules,
        sources: b.sources,
        dests: b.dests,
        principal_keys: b.principal_keys,
        cidr_keys: b.cidr_keys.build(),
        host_keys: b.host_keys,
        pair_index,
        pairs,
        header_names: Vec::new(),
        claim_paths: Vec::new(),
    })
}

/// The literals of the first positive principal condition whose every matcher the principal
/// index can look up: a request matching the condition then finds one of their keys.
fn indexable_principals(conds: &[Condition]) -> Option<Vec<(LitKind, &str)>> {
    conds
        .iter()
        .filter(|c| c.attribute == Attribute::Principal && !c.negated)
        .find_map(|c| {
            c.matchers
                .iter()
                .map(|m| match m {
                    Matcher::Exact(v) => Some((LitKind::Exact, v.as_str())),
                    Matcher::Prefix(v) if !v.is_empty() => Some((LitKind::Prefix, v.as_str())),
                    Matcher::Suffix(v) if !v.is_empty() => Some((LitKind::Suffix, v.as_str())),
                    Matcher::Contains(v) if super::keys::is_namespace_literal(v.as_bytes()) => {
                        Some((LitKind::Contains, v.as_str()))
                    }
                    Matcher::NonEmpty | Matcher::Present => Some((LitKind::Any, "")),
                    _ => None,
                })
                .collect()
        })
}

#[derive(Default)]
struct Builder {
    rules: Vec<RuleInfo>,
    sources: Vec<SourceClause>,
    dests: Vec<DestClause>,
    principal_keys: PatternKeys,
    cidr_keys: CidrKeysBuilder,
    host_keys: PatternKeys,
    next_src_key: u32,
    next_dst_key: u32,
    /// (source key << 32 | destination key, (source clause, destination clause)), rule order.
    pair_entries: Vec<(u64, (u32, u32))>,
    pool: Pool,
    regex_ids: FastMap<Box<[u8]>, u32>,
    header_names: Vec<String>,
    claim_paths: Vec<Vec<String>>,
    uses_source_ip: bool,
    uses_sni: bool,
    uses_destination_ip: bool,
    uses_remote_ip: bool,
}

impl Builder {
    fn rule(
        &mut self,
        policy: u32,
        index: Option<u32>,
        sources: &[Source],
        dests: &[Destination],
        of: &Policy,
    ) -> Result<(), BuildError> {
        let rule = self.rules.len() as u32;
        // (clause id, key) for every way each side can match.
        let mut src_keys: Vec<(u32, u32)> = Vec::new();
        let src_start = self.sources.len() as u32;
        if sources.is_empty() {
            src_keys.push((src_start, ALWAYS));
            self.sources.push(SourceClause {
                rule,
                principals: Span::default(),
                ip_blocks: Span::default(),
                conditions: Span::default(),
            });
        }
        let deny = of.action == Action::Deny;
        for s in sources {
            let id = self.sources.len() as u32;
            let conditions = self.conditions(&s.conditions, deny, &of.name)?;
            let clause = SourceClause {
                rule,
                principals: self.pool.push_patterns(&s.principals, false),
                ip_blocks: self.pool.push_cidrs(&s.ip_blocks),
                conditions,
            };
            // Only conditions: looked up by the first positive principal condition the index
            // can hold (Istio's namespaces, exact and affix principals), else a candidate for
            // every request (its conditions then decide).
            if clause.principals.is_empty() && clause.ip_blocks.is_empty() {
                match indexable_principals(&s.conditions) {
                    Some(lits) => {
                        for (kind, lit) in lits {
                            src_keys.push((
                                id,
                                self.principal_keys.intern(kind, lit.as_bytes(), &mut self.next_src_key),
                            ));
                        }
                    }
                    None => src_keys.push((id, ALWAYS)),
                }
            }
            // Principals are the selective part when present; IP blocks are then checked on
            // the clause itself.
            if clause.principals.is_empty() {
                for &c in self.pool.cidrs(clause.ip_blocks) {
                    src_keys.push((id, self.cidr_keys.intern(c, &mut self.next_src_key)));
                }
            }
            for &l in self.pool.lits(clause.principals) {
                let bytes = self.pool.bytes(l.bytes);
                src_keys.push((id, self.principal_keys.intern(l.kind, bytes, &mut self.next_src_key)));
            }
            self.sources.push(clause);
        }
        let mut dst_keys: Vec<(u32, u32)> = Vec::new();
        let dst_start = self.dests.len() as u32;
        if dests.is_empty() {
            dst_keys.push((dst_start, ALWAYS));
            self.dests.push(DestClause {
                hosts: Span::default(),
                ports: Span::default(),
                methods: Span::default(),
                header: None,
                conditions: Span::default(),
            });
        }
        for d in dests {
            let id = self.dests.len() as u32;
            let header = match &d.header {
                None => None,
                Some(h) => Some(HeaderCheck {
                    slot: self.header_slot(&h.name),
                    regex: self.regex(&h.regex, &of.name, "header regex")?,
                    any_value: of.action == Action::Deny,
                }),
            };
            let conditions = self.conditions(&d.conditions, deny, &of.name)?;
            let clause = DestClause {
                hosts: self.pool.push_patterns(&d.hosts, true),
                ports: self.pool.push_ports(&d.ports),
                methods: self.pool.push_exact(&d.methods),
                header,
                conditions,
            };
            if clause.hosts.is_empty() {
                dst_keys.push((id, ALWAYS));
            }
            for &l in self.pool.lits(clause.hosts) {
                let bytes = self.pool.bytes(l.bytes);
                dst_keys.push((id, self.host_keys.intern(l.kind, bytes, &mut self.next_dst_key)));
            }
            self.dests.push(clause);
        }
        let key = |s: u32, d: u32| u64::from(s) << 32 | u64::from(d);
        if src_keys.len().saturating_mul(dst_keys.len()) <= MAX_PAIRS_PER_RULE {
            for &(sc, sk) in &src_keys {
                for &(dc, dk) in &dst_keys {
                    self.pair_entries.push((key(sk, dk), (sc, dc)));
                }
            }
        } else {
            for &(sc, sk) in &src_keys {
                self.pair_entries.push((key(sk, ALWAYS), (sc, ALL_DESTS)));
            }
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

    /// A clause's conditions, compiled; a matcher that does not suit its attribute is an error
    /// (the decoder lets none through; this guards hand-built sets).
    fn conditions(&mut self, conds: &[Condition], deny: bool, policy: &str) -> Result<Span, BuildError> {
        let mut out = Vec::with_capacity(conds.len());
        for c in conds {
            let slot = match &c.attribute {
                Attribute::Principal => Slot::Principal,
                Attribute::Host => Slot::Host,
                Attribute::Method => Slot::Method,
                Attribute::Path => Slot::Header(self.header_slot(":path"), true),
                Attribute::Sni => {
                    self.uses_sni = true;
                    Slot::Sni
                }
                Attribute::Header(name) => Slot::Header(self.header_slot(name), false),
                Attribute::SourceIp => {
                    self.uses_source_ip = true;
                    Slot::SourceIp
                }
                Attribute::DestinationIp => {
                    self.uses_destination_ip = true;
                    Slot::DestinationIp
                }
                Attribute::DestinationPort => Slot::DestinationPort,
                Attribute::RemoteIp => {
                    self.uses_remote_ip = true;
                    Slot::RemoteIp
                }
                Attribute::Claim(path) => Slot::Claim(self.claim_slot(path)),
                Attribute::RequestPrincipal => {
                    let (iss, sub) = (self.claim_slot(&["iss".into()]), self.claim_slot(&["sub".into()]));
                    Slot::RequestPrincipal(iss, sub)
                }
            };
            let lowercase = c.attribute == Attribute::Host;
            let mut checks = Vec::with_capacity(c.matchers.len());
            for m in &c.matchers {
                if let (Matcher::IssuerSubject(iss, sub), Attribute::RequestPrincipal) = (m, &c.attribute) {
                    let iss = self.string_check(iss, policy)?;
                    let sub = self.string_check(sub, policy)?;
                    checks.push(self.pool.push_pair(iss, sub));
                    continue;
                }
                let check = match (m, c.attribute.is_string() && c.attribute != Attribute::RequestPrincipal) {
                    (Matcher::Present, true) => Check::Present,
                    (Matcher::NonEmpty, true) => Check::NonEmpty,
                    (Matcher::Exact(v), true) => Check::Lit(self.pool.lit(LitKind::Exact, v, lowercase)),
                    (Matcher::Prefix(v), true) => Check::Lit(self.pool.lit(LitKind::Prefix, v, lowercase)),
                    (Matcher::Suffix(v), true) => Check::Lit(self.pool.lit(LitKind::Suffix, v, lowercase)),
                    (Matcher::Contains(v), true) => Check::Lit(self.pool.lit(LitKind::Contains, v, lowercase)),
                    (Matcher::Regex(re), true) => Check::Regex(self.regex(re, policy, "condition regex")?),
                    (Matcher::PathTemplate(t), true) if c.attribute == Attribute::Path => {
                        let re = template_regex(t).ok_or_else(|| BuildError {
                            policy: policy.to_owned(),
                            message: format!("path template {t:?}: braces only as a whole {{*}} or {{**}} segment"),
                        })?;
                        Check::Regex(self.regex(&re, policy, "path template")?)
                    }
                    (Matcher::Net(n), false) if c.attribute != Attribute::DestinationPort => Check::Net(Cidr::new(n)),
                    (Matcher::Port(p), false) if c.attribute == Attribute::DestinationPort => Check::Port(*p),
                    _ => {
                        return Err(BuildError {
                            policy: policy.to_owned(),
                            message: format!("condition on {:?}: matcher {m:?} does not apply", c.attribute),
                        });
                    }
                };
                checks.push(check);
            }
            if checks.is_empty() {
                return Err(BuildError {
                    policy: policy.to_owned(),
                    message: format!("condition on {:?} has no matchers", c.attribute),
                });
            }
            out.push(CondCheck {
                slot,
                negated: c.negated,
                checks: self.pool.push_checks(checks),
                any_value: deny && !c.negated && matches!(c.attribute, Attribute::Header(_) | Attribute::Path),
            });
        }
        Ok(self.pool.push_conds(out))
    }

    /// One side of an issuer-and-subject matcher: a plain string check.
    fn string_check(&mut self, m: &Matcher, policy: &str) -> Result<Check, BuildError> {
        Ok(match m {
            Matcher::Present => Check::Present,
            Matcher::NonEmpty => Check::NonEmpty,
            Matcher::Exact(v) => Check::Lit(self.pool.lit(LitKind::Exact, v, false)),
            Matcher::Prefix(v) => Check::Lit(self.pool.lit(LitKind::Prefix, v, false)),
            Matcher::Suffix(v) => Check::Lit(self.pool.lit(LitKind::Suffix, v, false)),
            Matcher::Contains(v) => Check::Lit(self.pool.lit(LitKind::Contains, v, false)),
            Matcher::Regex(re) => Check::Regex(self.regex(re, policy, "condition regex")?),
            other => {
                return Err(BuildError {
                    policy: policy.to_owned(),
                    message: format!("request principal: {other:?} is not a string matcher"),
                });
            }
        })
    }

    fn claim_slot(&mut self, path: &[String]) -> u32 {
        match self.claim_paths.iter().position(|p| p == path) {
            Some(i) => i as u32,
            None => {
                self.claim_paths.push(path.to_vec());
                self.claim_paths.len() as u32 - 1
            }
        }
    }

    fn regex(&mut self, source: &str, policy: &str, what: &str) -> Result<u32, BuildError> {
        if let Some(&id) = self.regex_ids.get(source.as_bytes()) {
            return Ok(id);
        }
        let ascii = super::dialect::ascii_perl_classes(source);
        let re = regex::RegexBuilder::new(&format!("^(?:{ascii})$"))
            .size_limit(1 << 20)
            .build()
            .map_err(|e| BuildError {
                policy: policy.to_owned(),
                message: format!("{what}: {e}"),
            })?;
        let id = self.pool.regexes.len() as u32;
        self.pool.regexes.push(re);
        self.regex_ids.insert(source.as_bytes().into(), id);
        Ok(id)
    }
}
