//! The reference evaluator: SEMANTICS.md as a linear scan, written without looking at the
//! indexed evaluator and sharing none of its code beyond the plain-data types. Test and
//! benchmark code only: the property tests compare the table against it, and the benchmarks
//! measure it as the linear-scan baseline (it is included by path from `benches/`).

#![allow(dead_code, clippy::unwrap_used)]

use std::net::IpAddr;

use meshauthz_table::{Action, Destination, IpNet, Pattern, PolicySet, Request, Rule, Source, Table};

/// A request with headers by name, as the reference sees it.
#[derive(Clone, Debug)]
pub struct Req {
    pub principal: Option<String>,
    pub source_ip: Option<IpAddr>,
    pub authority: String,
    pub port: u16,
    pub method: String,
    pub headers: Vec<(String, String)>,
}

fn pattern_matches(p: &Pattern, value: &str) -> bool {
    // Written from the pattern text, not from Pattern::matches.
    let text = p.to_source_text();
    if text == "*" {
        true
    } else if let Some(prefix) = text.strip_suffix('*') {
        value.starts_with(prefix)
    } else if let Some(suffix) = text.strip_prefix('*') {
        value.ends_with(suffix)
    } else {
        value == text
    }
}

/// What host patterns see: the `:authority` lowercased, nothing removed (the HCM strips
/// ports and trailing dots before the filter, if configured to).
pub fn reference_host(authority: &str) -> String {
    authority.to_ascii_lowercase()
}

pub fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn in_net(net: &IpNet, ip: IpAddr) -> bool {
    match (net.addr(), unmap(ip)) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let bits = net.prefix_len() as u32;
            bits == 0 || (u32::from(n) >> (32 - bits)) == (u32::from(a) >> (32 - bits))
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let bits = net.prefix_len() as u32;
            bits == 0 || (u128::from(n) >> (128 - bits)) == (u128::from(a) >> (128 - bits))
        }
        _ => false,
    }
}

fn source_matches(s: &Source, r: &Req) -> bool {
    let principal_ok = s.principals.is_empty()
        || r.principal
            .as_deref()
            .is_some_and(|p| s.principals.iter().any(|pat| pattern_matches(pat, p)));
    let ip_ok = s.ip_blocks.is_empty() || r.source_ip.is_some_and(|ip| s.ip_blocks.iter().any(|n| in_net(n, ip)));
    principal_ok && ip_ok
}

/// Every value of a header, in order; the pseudo-headers have exactly one.
fn header_values(r: &Req, name: &str) -> Vec<String> {
    match name {
        ":authority" | "host" => vec![r.authority.clone()],
        ":method" => vec![r.method.clone()],
        _ => r
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect(),
    }
}

/// RE2 semantics for the classes that differ from Rust's: `\d`, `\w`, `\s`, `\b` are ASCII.
/// The generated values are ASCII or whole non-ASCII words, so a byte regex without Unicode
/// says exactly what RE2 says about them.
fn full_match(regex: &str, value: &str) -> bool {
    regex::bytes::RegexBuilder::new(&format!("^(?:{regex})$"))
        .unicode(false)
        .build()
        .unwrap()
        .is_match(value.as_bytes())
}

fn dest_matches(d: &Destination, r: &Req, action: Action) -> bool {
    let host = reference_host(&r.authority);
    let host_ok = d.hosts.iter().any(|p| {
        let lowered = match p {
            Pattern::Any => Pattern::Any,
            Pattern::Exact(s) => Pattern::Exact(s.to_lowercase()),
            Pattern::Prefix(s) => Pattern::Prefix(s.to_lowercase()),
            Pattern::Suffix(s) => Pattern::Suffix(s.to_lowercase()),
        };
        pattern_matches(&lowered, &host)
    });
    let header_ok = match &d.header {
        None => true,
        Some(h) => {
            let values = header_values(r, &h.name);
            // The joined value always counts; in a DENY policy each single value does too.
            !values.is_empty()
                && (full_match(&h.regex, &values.join(","))
                    || (action == Action::Deny && values.iter().any(|v| full_match(&h.regex, v))))
        }
    };
    host_ok && d.ports.contains(&r.port) && (d.methods.is_empty() || d.methods.contains(&r.method)) && header_ok
}

fn rule_matches(rule: &Rule, r: &Req, action: Action) -> bool {
    (rule.sources.is_empty() || rule.sources.iter().any(|s| source_matches(s, r)))
        && (rule.destinations.is_empty() || rule.destinations.iter().any(|d| dest_matches(d, r, action)))
}

/// (allowed, Some((policy, rule))) where rule None = policy without rules.
pub fn reference(set: &PolicySet, r: &Req) -> (bool, Option<(u32, Option<u32>)>) {
    let first_match = |action: Action| {
        set.policies
            .iter()
            .enumerate()
            .filter(|(_, p)| p.action == action)
            .find_map(|(pi, p)| {
                if p.rules.is_empty() {
                    return Some((pi as u32, None));
                }
                p.rules
                    .iter()
                    .position(|rule| rule_matches(rule, r, action))
                    .map(|ri| (pi as u32, Some(ri as u32)))
            })
    };
    if let Some(by) = first_match(Action::Deny) {
        return (false, Some(by));
    }
    if set.policies.iter().any(|p| p.action == Action::Allow) {
        let by = first_match(Action::Allow);
        return (by.is_some(), by);
    }
    (true, None)
}

pub fn table_decision(table: &Table, r: &Req) -> (bool, Option<(u32, Option<u32>)>) {
    let values: Vec<Vec<&str>> = table
        .header_names()
        .iter()
        .map(|n| {
            r.headers
                .iter()
                .filter(|(h, _)| h.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.as_str())
                .collect()
        })
        .collect();
    let slots: Vec<&[&str]> = values.iter().map(Vec::as_slice).collect();
    let d = table.evaluate(&Request {
        sni: None,
        destination_ip: None,
        remote_ip: None,
        claims: &[],
        principal: r.principal.as_deref(),
        source_ip: r.source_ip,
        authority: &r.authority,
        port: r.port,
        method: &r.method,
        headers: &slots,
    });
    (d.allowed, d.by.map(|b| (b.policy, b.rule)))
}
