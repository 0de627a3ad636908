//! Building the index from a policy set (once per configuration; not on the request path).

use super::clause::{DestClause, HeaderCheck, HeaderSlot, Pool, SourceClause, Span};
use super::keys::{ALWAYS, CidrKeysBuilder, PatternKeys};
use super::{ALL_DESTS, BuildError, PolicyInfo, RuleInfo, Table};
use crate::hash::FastMap;
use crate::spec::{Action, Destination, Policy, PolicySet, Source};

/// Above this many (source key, destination key) combinations a rule is indexed by its source
/// keys alone, so one rule listing many principals and many hosts cannot blow the index up.
const MAX_PAIRS_PER_RULE: usize = 256;

pub(super) fn build(set: &PolicySet) -> Result<Table, BuildError> {
    let mut b = Builder {
        next_src_key: ALWAYS + 1,
        next_dst_key: ALWAYS + 1,
        ..Builder::default()
    };
    let deny_first = set
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
    Ok(Table {
        policies: set
            .policies
            .iter()
            .map(|p| PolicyInfo {
                name: p.name.clone(),
                action: p.action,
            })
            .collect(),
        first_allow: first_allow.unwrap_or(rule_count),
        has_allow: first_allow.is_some(),
        uses_source_ip: b.sources.iter().any(|c| !c.ip_blocks.is_empty()),
        pool: b.pool,
        rules: b.rules,
        sources: b.sources,
        dests: b.dests,
        principal_keys: b.principal_keys,
        cidr_keys: b.cidr_keys.build(),
        host_keys: b.host_keys,
        pair_index,
        pairs,
        header_names: b.header_names,
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
            });
        }
        for s in sources {
            let id = self.sources.len() as u32;
            let clause = SourceClause {
                rule,
                principals: self.pool.push_patterns(&s.principals, false),
                ip_blocks: self.pool.push_cidrs(&s.ip_blocks),
            };
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
            });
        }
        for d in dests {
            let id = self.dests.len() as u32;
            let header = match &d.header {
                None => None,
                Some(h) => Some(HeaderCheck {
                    slot: self.header_slot(&h.name),
                    regex: self.regex(&h.regex, &of.name)?,
                    any_value: of.action == Action::Deny,
                }),
            };
            let clause = DestClause {
                hosts: self.pool.push_patterns(&d.hosts, true),
                ports: self.pool.push_ports(&d.ports),
                methods: self.pool.push_exact(&d.methods),
                header,
            };
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

    fn regex(&mut self, source: &str, policy: &str) -> Result<u32, BuildError> {
        if let Some(&id) = self.regex_ids.get(source.as_bytes()) {
            return Ok(id);
        }
        let ascii = super::dialect::ascii_perl_classes(source);
        let re = regex::RegexBuilder::new(&format!("^(?:{ascii})$"))
            .size_limit(1 << 20)
            .build()
            .map_err(|e| BuildError {
                policy: policy.to_owned(),
                message: format!("header regex: {e}"),
            })?;
        let id = self.pool.regexes.len() as u32;
        self.pool.regexes.push(re);
        self.regex_ids.insert(source.as_bytes().into(), id);
        Ok(id)
    }
}
