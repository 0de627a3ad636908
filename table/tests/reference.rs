//! The table against a reference evaluator written straight from SEMANTICS.md: a linear scan
//! with no indexes, no shared code with the evaluator beyond the plain-data types. Property
//! tests generate policy sets and requests dense in collisions (few principals, hosts, ports,
//! CIDR edges, IPv6, wildcards, empty lists, DENY+ALLOW mixes) and demand equal decisions,
//! down to the rule that decided.

#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

use std::net::IpAddr;

use meshauthz_table::wire::{self, decode, encode};
use meshauthz_table::*;
use proptest::prelude::*;

/// A request with headers by name, as the reference sees it.
#[derive(Clone, Debug)]
struct Req {
    principal: Option<String>,
    source_ip: Option<IpAddr>,
    authority: String,
    port: u16,
    method: String,
    headers: Vec<(String, String)>,
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

fn reference_host(authority: &str) -> String {
    let mut h = authority.to_lowercase();
    if h.starts_with('[') {
        if let Some(end) = h.find("]:") {
            if h[end + 2..].chars().all(|c| c.is_ascii_digit()) && end + 2 < h.len() {
                h.truncate(end + 1);
            }
        }
    } else if h.matches(':').count() == 1 {
        let i = h.find(':').unwrap();
        if i + 1 < h.len() && h[i + 1..].chars().all(|c| c.is_ascii_digit()) {
            h.truncate(i);
        }
    }
    if h.ends_with('.') {
        h.pop();
    }
    h
}

fn unmap(ip: IpAddr) -> IpAddr {
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
    let ip_ok = s.ip_blocks.is_empty()
        || r.source_ip
            .is_some_and(|ip| s.ip_blocks.iter().any(|n| in_net(n, ip)));
    principal_ok && ip_ok
}

fn header_value(r: &Req, name: &str) -> Option<String> {
    match name {
        ":authority" | "host" => Some(r.authority.clone()),
        ":method" => Some(r.method.clone()),
        _ => {
            let values: Vec<&str> = r
                .headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
                .collect();
            (!values.is_empty()).then(|| values.join(","))
        }
    }
}

fn dest_matches(d: &Destination, r: &Req) -> bool {
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
        Some(h) => header_value(r, &h.name).is_some_and(|v| {
            regex::Regex::new(&format!("^(?:{})$", h.regex))
                .unwrap()
                .is_match(&v)
        }),
    };
    host_ok
        && d.ports.contains(&r.port)
        && (d.methods.is_empty() || d.methods.contains(&r.method))
        && header_ok
}

fn rule_matches(rule: &Rule, r: &Req) -> bool {
    (rule.sources.is_empty() || rule.sources.iter().any(|s| source_matches(s, r)))
        && (rule.destinations.is_empty() || rule.destinations.iter().any(|d| dest_matches(d, r)))
}

/// (allowed, Some((policy, rule))) where rule None = policy without rules.
fn reference(set: &PolicySet, r: &Req) -> (bool, Option<(u32, Option<u32>)>) {
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
                    .position(|rule| rule_matches(rule, r))
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

fn table_decision(table: &Table, r: &Req) -> (bool, Option<(u32, Option<u32>)>) {
    let values: Vec<Option<String>> = table
        .header_names()
        .iter()
        .map(|n| header_value(r, n))
        .collect();
    let slots: Vec<Option<&str>> = values.iter().map(|v| v.as_deref()).collect();
    let d = table.evaluate(&Request {
        principal: r.principal.as_deref(),
        source_ip: r.source_ip,
        authority: &r.authority,
        port: r.port,
        method: &r.method,
        headers: &slots,
    });
    (d.allowed, d.by.map(|b| (b.policy, b.rule)))
}

// ---- generators: small alphabets so that patterns and requests collide often ----

const PRINCIPALS: &[&str] = &[
    "spiffe://td.example/ns/a/sa/client",
    "spiffe://td.example/ns/a/sa/server",
    "spiffe://td.example/ns/b/sa/client",
    "spiffe://other.example/ns/a/sa/client",
];
const HOSTS: &[&str] = &[
    "service-test",
    "mesh-gateway",
    "api.example.com",
    "www.example.com",
];
const METHODS: &[&str] = &["GET", "POST", "HEAD", "get"];
const PORTS: &[u16] = &[80, 443, 8000, 8080];

fn pattern_from(values: &'static [&'static str]) -> impl Strategy<Value = Pattern> {
    (0..values.len(), 0..6usize, 1..8usize).prop_map(move |(i, kind, cut)| {
        let v = values[i];
        let cut = cut.min(v.len() - 1).max(1);
        match kind {
            0 => Pattern::Any,
            1 => Pattern::Prefix(v[..cut].to_owned()),
            2 => Pattern::Suffix(v[v.len() - cut..].to_owned()),
            _ => Pattern::Exact(v.to_owned()),
        }
    })
}

fn ip_strategy() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        (0u8..4, 0u8..=255).prop_map(|(a, b)| IpAddr::from([10, a, 0, b])),
        (0u8..=255).prop_map(|b| IpAddr::from([192, 168, 1, b])),
        (0u16..4, 0u16..=0xFFFF).prop_map(|(a, b)| IpAddr::from([0x2001, 0xdb8, a, 0, 0, 0, 0, b])),
        (0u8..=255).prop_map(|b| IpAddr::from([0, 0, 0, 0, 0, 0xffff, 0x0a00, u16::from(b)])),
    ]
}

fn net_strategy() -> impl Strategy<Value = IpNet> {
    (ip_strategy(), 0u8..=128).prop_map(|(ip, len)| {
        let ip = unmap(ip);
        let max = if ip.is_ipv4() { 32 } else { 128 };
        IpNet::new(ip, len % (max + 1)).unwrap()
    })
}

fn source_strategy() -> impl Strategy<Value = Source> {
    (
        prop::collection::vec(pattern_from(PRINCIPALS), 0..3),
        prop::collection::vec(net_strategy(), 0..3),
    )
        .prop_filter("a source needs principals or ipBlocks", |(p, i)| {
            !p.is_empty() || !i.is_empty()
        })
        .prop_map(|(principals, ip_blocks)| Source {
            principals,
            ip_blocks,
        })
}

fn dest_strategy() -> impl Strategy<Value = Destination> {
    (
        prop::collection::vec(pattern_from(HOSTS), 1..3),
        prop::collection::vec(prop::sample::select(PORTS), 1..3),
        prop::collection::vec(prop::sample::select(METHODS), 0..3),
        prop::option::weighted(
            0.2,
            (
                prop::sample::select(&["x-env", ":authority", "x-team"][..]),
                prop::sample::select(&["prod|staging", "a.*", "service-test(:8000)?"][..]),
            ),
        ),
    )
        .prop_map(|(hosts, ports, methods, header)| Destination {
            hosts,
            ports,
            methods: methods.into_iter().map(str::to_owned).collect(),
            header: header.map(|(n, r)| HeaderMatch {
                name: n.to_owned(),
                regex: r.to_owned(),
            }),
        })
}

fn policy_set_strategy() -> impl Strategy<Value = PolicySet> {
    let rule = (
        prop::collection::vec(source_strategy(), 0..3),
        prop::collection::vec(dest_strategy(), 0..3),
    )
        .prop_map(|(sources, destinations)| Rule {
            sources,
            destinations,
        });
    let policy = (prop::bool::weighted(0.3), prop::collection::vec(rule, 0..4));
    prop::collection::vec(policy, 0..4).prop_map(|policies| PolicySet {
        policies: policies
            .into_iter()
            .enumerate()
            .map(|(i, (deny, rules))| Policy {
                name: format!("p{i}"),
                action: if deny { Action::Deny } else { Action::Allow },
                rules,
            })
            .collect(),
    })
}

fn request_strategy() -> impl Strategy<Value = Req> {
    let authority = (prop::sample::select(HOSTS), 0..5usize).prop_map(|(h, form)| match form {
        0 => format!("{h}:8000"),
        1 => h.to_uppercase(),
        2 => format!("{h}."),
        _ => h.to_owned(),
    });
    (
        prop::option::weighted(
            0.8,
            prop::sample::select(PRINCIPALS).prop_map(str::to_owned),
        ),
        prop::option::weighted(0.8, ip_strategy()),
        authority,
        prop::sample::select(PORTS),
        prop::sample::select(METHODS).prop_map(str::to_owned),
        prop::collection::vec(
            (
                prop::sample::select(&["x-env", "x-team", "X-Env"][..]),
                prop::sample::select(&["prod", "staging", "abc", ""][..]),
            ),
            0..3,
        ),
    )
        .prop_map(
            |(principal, source_ip, authority, port, method, headers)| Req {
                principal,
                source_ip,
                authority,
                port,
                method,
                headers: headers
                    .into_iter()
                    .map(|(n, v)| (n.to_owned(), v.to_owned()))
                    .collect(),
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn table_agrees_with_reference(set in policy_set_strategy(), reqs in prop::collection::vec(request_strategy(), 1..8)) {
        let bytes = encode(&set);
        let table = Table::from_bytes(&bytes).expect("an encoded set loads");
        for r in &reqs {
            prop_assert_eq!(table_decision(&table, r), reference(&set, r), "request {:?}", r);
        }
    }

    #[test]
    fn encode_decode_round_trips(set in policy_set_strategy()) {
        prop_assert_eq!(decode(&encode(&set)).unwrap(), set);
    }

    #[test]
    fn decoder_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = Table::from_bytes(&bytes);
    }

    #[test]
    fn decoder_never_panics_on_corrupted_tables(set in policy_set_strategy(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = encode(&set);
        let i = at.index(bytes.len());
        bytes[i] = byte;
        let _ = Table::from_bytes(&bytes);
        // Also with the checksum patched, so the structure checks are reached.
        if bytes.len() > 20 {
            let crc = wire::crc32(&bytes[20..]);
            bytes[16..20].copy_from_slice(&crc.to_le_bytes());
            let _ = Table::from_bytes(&bytes);
        }
    }
}

fn req(principal: Option<&str>, authority: &str, port: u16, method: &str) -> Req {
    Req {
        principal: principal.map(str::to_owned),
        source_ip: None,
        authority: authority.to_owned(),
        port,
        method: method.to_owned(),
        headers: vec![],
    }
}

fn guide_policy() -> PolicySet {
    PolicySet {
        policies: vec![Policy {
            name: "authz-policy".into(),
            action: Action::Allow,
            rules: vec![Rule {
                sources: vec![Source {
                    principals: vec![Pattern::Exact(
                        "spiffe://p.svc.id.goog/ns/default/sa/client".into(),
                    )],
                    ip_blocks: vec![],
                }],
                destinations: vec![Destination {
                    hosts: vec![Pattern::Exact("service-test".into())],
                    ports: vec![8000],
                    methods: vec!["GET".into()],
                    header: None,
                }],
            }],
        }],
    }
}

#[test]
fn guide_policy_decisions() {
    let table = Table::from_bytes(&encode(&guide_policy())).unwrap();
    let client = Some("spiffe://p.svc.id.goog/ns/default/sa/client");
    let cases = [
        (
            req(client, "service-test", 8000, "GET"),
            (true, Some((0, Some(0)))),
        ),
        (
            req(client, "SERVICE-TEST:8000", 8000, "GET"),
            (true, Some((0, Some(0)))),
        ),
        (
            req(client, "service-test.", 8000, "GET"),
            (true, Some((0, Some(0)))),
        ),
        (req(client, "service-test", 8000, "POST"), (false, None)),
        (req(client, "service-test", 8000, "HEAD"), (false, None)),
        (req(client, "service-test", 8001, "GET"), (false, None)),
        (req(None, "service-test", 8000, "GET"), (false, None)),
        (
            req(
                Some("spiffe://p.svc.id.goog/ns/default/sa/other"),
                "service-test",
                8000,
                "GET",
            ),
            (false, None),
        ),
    ];
    for (r, want) in cases {
        assert_eq!(table_decision(&table, &r), want, "{r:?}");
    }
}

#[test]
fn no_policies_allow_and_empty_deny_policy_denies_all() {
    let table = Table::from_bytes(&encode(&PolicySet::default())).unwrap();
    assert_eq!(
        table_decision(&table, &req(None, "x", 1, "GET")),
        (true, None)
    );
    let set = PolicySet {
        policies: vec![Policy {
            name: "lockdown".into(),
            action: Action::Deny,
            rules: vec![],
        }],
    };
    let table = Table::from_bytes(&encode(&set)).unwrap();
    assert_eq!(
        table_decision(&table, &req(None, "x", 1, "GET")),
        (false, Some((0, None)))
    );
}

#[test]
fn any_principal_never_matches_plaintext() {
    let set = PolicySet {
        policies: vec![Policy {
            name: "deny-mtls".into(),
            action: Action::Deny,
            rules: vec![Rule {
                sources: vec![Source {
                    principals: vec![Pattern::Any],
                    ip_blocks: vec![],
                }],
                destinations: vec![],
            }],
        }],
    };
    let table = Table::from_bytes(&encode(&set)).unwrap();
    assert_eq!(
        table_decision(&table, &req(None, "x", 1, "GET")),
        (true, None)
    );
    assert_eq!(
        table_decision(&table, &req(Some("spiffe://a/b"), "x", 1, "GET")),
        (false, Some((0, Some(0))))
    );
}

#[test]
fn host_normalization() {
    let mut buf = [0u8; 255];
    for (raw, want) in [
        ("Service-Test:8000", "service-test"),
        ("service-test.", "service-test"),
        ("service-test.:80", "service-test"),
        ("[::1]:8000", "[::1]"),
        ("[::1]", "[::1]"),
        ("::1", "::1"),
        ("host:abc", "host:abc"),
        ("", ""),
    ] {
        assert_eq!(
            normalize_host(raw, &mut buf).as_ref(),
            want.as_bytes(),
            "{raw}"
        );
        assert_eq!(reference_host(raw), want, "reference for {raw}");
    }
    let long = "A".repeat(300);
    assert_eq!(
        normalize_host(&long, &mut buf).as_ref(),
        "a".repeat(300).as_bytes()
    );
}
