//! The evaluator: a policy set turned into an index that finds the few rules a request can
//! match without scanning the rest.
//!
//! Each rule is two sides, sources and destinations, each a list of clauses (OR); a rule matches
//! when both sides do. A rule with an empty side gets one clause that matches everything, so
//! every rule has at least one clause per side.
//!
//! The index is a cross-product of the two most selective fields, the classic packet
//! classification trick restricted to where it pays: every principal pattern (or CIDR, for
//! sources without principals) and every host pattern gets a key number ([`keys`]), and a hash
//! map from (source key, destination key) lists the (source clause, destination clause) pairs
//! that carry both. A request finds its matching keys on each side (a few hash probes), probes
//! the map once per key pair, and checks only the clause pairs found there (ports, methods,
//! headers, IP blocks). The cost depends on how many patterns a request matches, not on how many
//! rules exist.
//!
//! Rules are numbered DENY policies first, then ALLOW, each in the author's order, and every
//! pair list is sorted by rule, so the lowest matching rule number is the decision and a list is
//! abandoned at the first rule above the best match so far. Nothing is allocated per decision
//! (a host over 255 bytes that needs lowercasing excepted).

mod build;
mod clause;
mod cond;
mod dialect;
mod host;
mod keys;

use std::net::IpAddr;

use crate::hash::FastMap;
use crate::request::{Decision, Observed, Request, RuleRef};
use crate::spec::{Action, PolicySet, canonical_ip};
use clause::{Ctx, DestClause, Pool, SourceClause};
pub use host::normalize_host;
use keys::{CidrKeys, KeyBuf, PatternKeys};

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
    principal_keys: PatternKeys,
    cidr_keys: CidrKeys,
    host_keys: PatternKeys,
    /// (source key << 32 | destination key) -> range of `pairs`.
    pair_index: FastMap<u64, (u32, u32)>,
    /// (source clause, destination clause or [`ALL_DESTS`]), sorted by rule within a range.
    pairs: Vec<(u32, u32)>,
    /// Literals, CIDRs, ports and regexes of every clause.
    pool: Pool,
    header_names: Vec<String>,
    /// The JWT claim paths the policies look at; [`Request::claims`] is indexed the same way.
    claim_paths: Vec<Vec<String>>,
    uses_source_ip: bool,
    uses_sni: bool,
    uses_destination_ip: bool,
    uses_remote_ip: bool,
    /// The AUDIT policies, as their own engine (a match only counts).
    audit: Option<Box<Table>>,
    /// The dry-run policies, as their own engine (decides nothing).
    dry_run: Option<Box<Table>>,
}

/// In a pair: the rule had too many pattern combinations to index both sides, so its
/// destination clauses are all checked directly.
const ALL_DESTS: u32 = u32::MAX;

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
    dry_run: bool,
}

#[derive(Debug)]
struct RuleInfo {
    policy: u32,
    /// `None` for the match-all rule of a policy without rules.
    index: Option<u32>,
    sources: (u32, u32),
    dests: (u32, u32),
}

impl Table {
    /// Decodes and validates table bytes, then builds the index.
    pub fn from_bytes(bytes: &[u8]) -> Result<Table, crate::TableError> {
        let set = crate::wire::decode(bytes).map_err(crate::TableError::Decode)?;
        Table::new(&set).map_err(crate::TableError::Build)
    }

    /// Builds the index for a policy set.
    pub fn new(set: &PolicySet) -> Result<Table, BuildError> {
        build::build(set)
    }

    /// The non-pseudo headers (lowercase), and pseudo-headers other than `:authority` and
    /// `:method`, that the policies look at; [`Request::headers`] is indexed the same way.
    pub fn header_names(&self) -> &[String] {
        &self.header_names
    }

    /// The JWT claims (paths into jwt_authn's `payload` metadata) the policies look at, in the
    /// order [`Request::claims`] gives their values; `iss` and `sub` for request principals.
    pub fn claim_paths(&self) -> &[Vec<String>] {
        &self.claim_paths
    }

    /// Whether any rule looks at the source address (so the filter can skip fetching it).
    pub fn uses_source_ip(&self) -> bool {
        self.uses_source_ip
    }

    /// Whether any rule looks at the TLS SNI.
    pub fn uses_sni(&self) -> bool {
        self.uses_sni
    }

    /// Whether any rule looks at the connection's local address.
    pub fn uses_destination_ip(&self) -> bool {
        self.uses_destination_ip
    }

    /// Whether any rule looks at the original client address (Istio's `remoteIpBlocks`).
    pub fn uses_remote_ip(&self) -> bool {
        self.uses_remote_ip
    }

    /// Whether there are AUDIT or dry-run policies, i.e. whether [`Table::observe`] can say
    /// anything.
    pub fn observes(&self) -> bool {
        self.audit.is_some() || self.dry_run.is_some()
    }

    /// What the AUDIT and the dry-run policies make of a request. Never part of the decision.
    pub fn observe(&self, req: &Request<'_>, port: &dyn Fn() -> u16) -> Observed {
        Observed {
            audit: self.audit.as_ref().and_then(|t| t.evaluate_with_port(req, port).by),
            dry_run: self.dry_run.as_ref().map(|t| t.evaluate_with_port(req, port)),
        }
    }

    pub fn policy_count(&self) -> usize {
        self.policies.len()
    }

    /// Rules in the table, counting a policy without rules as one match-all rule.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
            + [&self.audit, &self.dry_run]
                .into_iter()
                .flatten()
                .map(|t| t.rules.len())
                .sum::<usize>()
    }

    pub fn policy_name(&self, policy: u32) -> &str {
        self.policies.get(policy as usize).map_or("", |p| p.name.as_str())
    }

    pub fn policy_action(&self, policy: u32) -> Option<Action> {
        self.policies.get(policy as usize).map(|p| p.action)
    }

    /// Whether a policy is dry-run (evaluated and counted, never enforced).
    pub fn policy_dry_run(&self, policy: u32) -> bool {
        self.policies.get(policy as usize).is_some_and(|p| p.dry_run)
    }

    /// Decides one request.
    pub fn evaluate(&self, req: &Request<'_>) -> Decision {
        self.evaluate_with_port(req, &|| req.port)
    }

    /// Decides one request whose destination port (ignoring [`Request::port`]) comes from
    /// `port`, called at most once and only if some candidate rule gets as far as its ports.
    pub fn evaluate_with_port(&self, req: &Request<'_>, port: &dyn Fn() -> u16) -> Decision {
        let mut host_buf = [0u8; host::MAX_HOST_STACK];
        let host = normalize_host(req.authority, &mut host_buf);
        let source_ip: Option<IpAddr> = req.source_ip.map(canonical_ip);
        let ctx = Ctx {
            req,
            host: &host,
            source_ip,
            port_source: port,
            port: std::cell::Cell::new(None),
        };

        let mut src = KeyBuf::new();
        self.principal_keys.matching(req.principal.map(str::as_bytes), &mut src);
        self.cidr_keys.matching(source_ip, &mut src);
        let mut dst = KeyBuf::new();
        self.host_keys.matching(Some(&host), &mut dst);
        if src.overflow || dst.overflow {
            return self.decide(self.scan(&ctx));
        }

        let mut best = u32::MAX;
        for &s in src.as_slice() {
            for &d in dst.as_slice() {
                let Some(&(start, end)) = self.pair_index.get(&(u64::from(s) << 32 | u64::from(d))) else {
                    continue;
                };
                for &(sc, dc) in self.pairs.get(start as usize..end as usize).unwrap_or(&[]) {
                    let Some(source) = self.sources.get(sc as usize) else {
                        continue;
                    };
                    if source.rule >= best {
                        break;
                    }
                    let dest_ok = if dc == ALL_DESTS {
                        self.rule_dests_match(source.rule, &ctx)
                    } else {
                        self.dests.get(dc as usize).is_some_and(|c| c.matches(&ctx, &self.pool))
                    };
                    if dest_ok && source.matches(&ctx, &self.pool) {
                        best = source.rule;
                        break;
                    }
                }
            }
        }
        self.decide(best)
    }

    /// Every rule in order: the answer when a request matches more patterns than the key
    /// buffers hold.
    fn scan(&self, ctx: &Ctx<'_>) -> u32 {
        (0..self.rules.len() as u32)
            .find(|&r| self.rule_sources_match(r, ctx) && self.rule_dests_match(r, ctx))
            .unwrap_or(u32::MAX)
    }

    fn decide(&self, best: u32) -> Decision {
        let by = self.rules.get(best as usize).map(|r| RuleRef {
            policy: r.policy,
            rule: r.index,
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

    fn rule_dests_match(&self, rule: u32, ctx: &Ctx<'_>) -> bool {
        let Some(r) = self.rules.get(rule as usize) else {
            return false;
        };
        let clauses = self.dests.get(r.dests.0 as usize..r.dests.1 as usize).unwrap_or(&[]);
        clauses.iter().any(|c| c.matches(ctx, &self.pool))
    }

    fn rule_sources_match(&self, rule: u32, ctx: &Ctx<'_>) -> bool {
        let Some(r) = self.rules.get(rule as usize) else {
            return false;
        };
        let clauses = self
            .sources
            .get(r.sources.0 as usize..r.sources.1 as usize)
            .unwrap_or(&[]);
        clauses.iter().any(|c| c.matches(ctx, &self.pool))
    }
}
