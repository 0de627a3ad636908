//! The fair linear-scan baseline: how an engine like Envoy's RBAC decides, with everything that
//! can be prepared prepared once (regexes compiled, host patterns lowercased, networks masked),
//! then every rule checked in order per request. The reference evaluator
//! (`table/tests/support/reference.rs`) is a linear scan too, but written for clarity: it
//! compiles regexes and lowercases on every call, which no real engine does.

use std::net::IpAddr;

use meshauthz_table::{Action, IpNet, Pattern, PolicySet, Request};
use regex::Regex;

#[derive(Debug)]
struct Dest {
    hosts: Vec<Pattern>,
    ports: Vec<u16>,
    methods: Vec<String>,
    /// (header slot in the table's `header_names`, anchored regex); `None` slot: `:authority`.
    header: Option<(Option<usize>, Regex)>,
}

#[derive(Debug)]
struct Src {
    principals: Vec<Pattern>,
    ip_blocks: Vec<IpNet>,
}

#[derive(Debug)]
struct Rule {
    sources: Vec<Src>,
    dests: Vec<Dest>,
}

/// DENY rules, then ALLOW rules, each in order.
#[derive(Debug)]
pub struct LinearScan {
    deny: Vec<Rule>,
    allow: Vec<Rule>,
    has_allow: bool,
}

impl LinearScan {
    /// `header_names`: the table's, so a [`Request`] built for the table works here too.
    pub fn new(set: &PolicySet, header_names: &[String]) -> LinearScan {
        let lower = |p: &Pattern| match p {
            Pattern::Any => Pattern::Any,
            Pattern::Exact(s) => Pattern::Exact(s.to_ascii_lowercase()),
            Pattern::Prefix(s) => Pattern::Prefix(s.to_ascii_lowercase()),
            Pattern::Suffix(s) => Pattern::Suffix(s.to_ascii_lowercase()),
        };
        let rules = |action: Action| -> Vec<Rule> {
            let mut out = Vec::new();
            for p in set.policies.iter().filter(|p| p.action == action) {
                if p.rules.is_empty() {
                    out.push(Rule {
                        sources: Vec::new(),
                        dests: Vec::new(),
                    });
                }
                for r in &p.rules {
                    out.push(Rule {
                        sources: r
                            .sources
                            .iter()
                            .map(|s| Src {
                                principals: s.principals.clone(),
                                ip_blocks: s.ip_blocks.clone(),
                            })
                            .collect(),
                        dests: r
                            .destinations
                            .iter()
                            .map(|d| Dest {
                                hosts: d.hosts.iter().map(lower).collect(),
                                ports: d.ports.clone(),
                                methods: d.methods.clone(),
                                header: d.header.as_ref().and_then(|h| {
                                    let slot = header_names.iter().position(|n| *n == h.name);
                                    let re = Regex::new(&format!("^(?:{})$", h.regex)).ok()?;
                                    Some((slot, re))
                                }),
                            })
                            .collect(),
                    });
                }
            }
            out
        };
        LinearScan {
            deny: rules(Action::Deny),
            allow: rules(Action::Allow),
            has_allow: set.policies.iter().any(|p| p.action == Action::Allow),
        }
    }

    pub fn allowed(&self, req: &Request<'_>) -> bool {
        let host = req.authority.to_ascii_lowercase();
        let matches = |r: &Rule| {
            (r.sources.is_empty() || r.sources.iter().any(|s| src_matches(s, req)))
                && (r.dests.is_empty() || r.dests.iter().any(|d| dest_matches(d, req, &host)))
        };
        if self.deny.iter().any(matches) {
            return false;
        }
        !self.has_allow || self.allow.iter().any(matches)
    }
}

fn src_matches(s: &Src, req: &Request<'_>) -> bool {
    (s.principals.is_empty()
        || req
            .principal
            .is_some_and(|p| s.principals.iter().any(|pat| pat.matches(p.as_bytes()))))
        && (s.ip_blocks.is_empty()
            || req
                .source_ip
                .is_some_and(|ip: IpAddr| s.ip_blocks.iter().any(|n| n.contains(ip))))
}

fn dest_matches(d: &Dest, req: &Request<'_>, host: &str) -> bool {
    d.hosts.iter().any(|p| p.matches(host.as_bytes()))
        && d.ports.contains(&req.port)
        && (d.methods.is_empty() || d.methods.iter().any(|m| m == req.method))
        && d.header.as_ref().is_none_or(|(slot, re)| match slot {
            None => re.is_match(req.authority),
            Some(i) => req
                .headers
                .get(*i)
                .is_some_and(|values| !values.is_empty() && re.is_match(&values.join(","))),
        })
}
