//! The table against the reference evaluator (`support/reference.rs`). Property tests
//! generate policy sets and requests dense in collisions (few principals, hosts, ports, CIDR
//! edges, IPv6, wildcards, empty lists, DENY+ALLOW mixes) and demand equal decisions, down to
//! the rule that decided.

#![allow(clippy::unwrap_used)] // test code: a panic is a failed test

#[path = "support/reference.rs"]
mod reference;

use std::net::IpAddr;

use meshauthz_table::wire::{self, decode, encode};
use meshauthz_table::*;
use proptest::prelude::*;
use reference::{Req, reference, reference_host, table_decision, unmap};

// ---- generators: small alphabets so that patterns and requests collide often ----

const PRINCIPALS: &[&str] = &[
    "spiffe://td.example/ns/a/sa/client",
    "spiffe://td.example/ns/a/sa/server",
    "spiffe://td.example/ns/b/sa/client",
    "spiffe://other.example/ns/a/sa/client",
];
const HOSTS: &[&str] = &["service-test", "mesh-gateway", "api.example.com", "www.example.com"];
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
            conditions: Vec::new(),
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
                prop::sample::select(&["x-env", ":authority", "x-team", "x-id"][..]),
                prop::sample::select(&["prod|staging", "a.*", "service-test(:8000)?", r"\d+", r"[\w,]+", "abc"][..]),
            ),
        ),
    )
        .prop_map(|(hosts, ports, methods, header)| Destination {
            conditions: Vec::new(),
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
        .prop_map(|(sources, destinations)| Rule { sources, destinations });
    let policy = (prop::bool::weighted(0.3), prop::collection::vec(rule, 0..4));
    prop::collection::vec(policy, 0..4).prop_map(|policies| PolicySet {
        policies: policies
            .into_iter()
            .enumerate()
            .map(|(i, (deny, rules))| Policy {
                dry_run: false,
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
        prop::option::weighted(0.8, prop::sample::select(PRINCIPALS).prop_map(str::to_owned)),
        prop::option::weighted(0.8, ip_strategy()),
        authority,
        prop::sample::select(PORTS),
        prop::sample::select(METHODS).prop_map(str::to_owned),
        prop::collection::vec(
            (
                prop::sample::select(&["x-env", "x-team", "X-Env", "x-id"][..]),
                prop::sample::select(&["prod", "staging", "abc", "", "12", "\u{0661}\u{0662}", "prod,abc"][..]),
            ),
            0..4,
        ),
    )
        .prop_map(|(principal, source_ip, authority, port, method, headers)| Req {
            principal,
            source_ip,
            authority,
            port,
            method,
            headers: headers.into_iter().map(|(n, v)| (n.to_owned(), v.to_owned())).collect(),
        })
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
            dry_run: false,
            name: "authz-policy".into(),
            action: Action::Allow,
            rules: vec![Rule {
                sources: vec![Source {
                    conditions: Vec::new(),
                    principals: vec![Pattern::Exact("spiffe://p.svc.id.goog/ns/default/sa/client".into())],
                    ip_blocks: vec![],
                }],
                destinations: vec![Destination {
                    conditions: Vec::new(),
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
        (req(client, "service-test", 8000, "GET"), (true, Some((0, Some(0))))),
        (req(client, "SERVICE-TEST", 8000, "GET"), (true, Some((0, Some(0))))),
        // The HCM strips ports and trailing dots; one that reaches the table was not stripped.
        (req(client, "service-test:8000", 8000, "GET"), (false, None)),
        (req(client, "service-test.", 8000, "GET"), (false, None)),
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
    assert_eq!(table_decision(&table, &req(None, "x", 1, "GET")), (true, None));
    let set = PolicySet {
        policies: vec![Policy {
            dry_run: false,
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
            dry_run: false,
            name: "deny-mtls".into(),
            action: Action::Deny,
            rules: vec![Rule {
                sources: vec![Source {
                    conditions: Vec::new(),
                    principals: vec![Pattern::Any],
                    ip_blocks: vec![],
                }],
                destinations: vec![],
            }],
        }],
    };
    let table = Table::from_bytes(&encode(&set)).unwrap();
    assert_eq!(table_decision(&table, &req(None, "x", 1, "GET")), (true, None));
    assert_eq!(
        table_decision(&table, &req(Some("spiffe://a/b"), "x", 1, "GET")),
        (false, Some((0, Some(0))))
    );
}

/// Hosts are compared as the router sees them: lowercased, nothing removed.
#[test]
fn host_matching_removes_nothing() {
    let mut buf = [0u8; 255];
    for (raw, want) in [
        ("Service-Test", "service-test"),
        ("Service-Test:8000", "service-test:8000"),
        ("service-test.", "service-test."),
        ("[::1]:8000", "[::1]:8000"),
        ("", ""),
    ] {
        assert_eq!(normalize_host(raw, &mut buf).as_ref(), want.as_bytes(), "{raw}");
        assert_eq!(reference_host(raw), want, "reference for {raw}");
    }
    let long = "A".repeat(300);
    assert_eq!(normalize_host(&long, &mut buf).as_ref(), "a".repeat(300).as_bytes());
    let set = guide_policy();
    let table = Table::new(&set).unwrap();
    let client = Some("spiffe://p.svc.id.goog/ns/default/sa/client");
    for host in [
        "service-test:8000",
        "service-test.",
        "service-test:9999",
        "service-test.:8000",
    ] {
        assert_eq!(
            table_decision(&table, &req(client, host, 8000, "GET")),
            (false, None),
            "{host}"
        );
    }
    assert!(table_decision(&table, &req(client, "SERVICE-TEST", 8000, "GET")).0);
}

/// A DENY on a header holds when any single value matches, or the joined value; an ALLOW only
/// looks at the joined value (as Envoy's matchers do).
#[test]
fn repeated_headers_never_dodge_a_deny() {
    let dest = |regex: &str| Destination {
        conditions: Vec::new(),
        hosts: vec![Pattern::Any],
        ports: vec![80],
        methods: vec![],
        header: Some(HeaderMatch {
            name: "x-role".into(),
            regex: regex.into(),
        }),
    };
    let policy = |name: &str, action, regex: &str| Policy {
        dry_run: false,
        name: name.into(),
        action,
        rules: vec![Rule {
            sources: vec![],
            destinations: vec![dest(regex)],
        }],
    };
    let set = PolicySet {
        policies: vec![
            policy("deny-admin", Action::Deny, "admin"),
            policy("allow-user", Action::Allow, "user"),
        ],
    };
    let table = Table::new(&set).unwrap();
    let with = |values: &[&str]| {
        let mut r = req(None, "h", 80, "GET");
        r.headers = values.iter().map(|v| ("x-role".to_owned(), (*v).to_owned())).collect();
        let got = table_decision(&table, &r);
        assert_eq!(got, reference(&set, &r), "{values:?}");
        got
    };
    assert_eq!(with(&["admin"]), (false, Some((0, Some(0)))));
    assert_eq!(with(&["admin", "admin"]), (false, Some((0, Some(0)))));
    assert_eq!(with(&["user", "admin"]), (false, Some((0, Some(0)))));
    assert_eq!(with(&["user"]), (true, Some((1, Some(0)))));
    // ALLOW: the joined `user,user` is not `user`.
    assert_eq!(with(&["user", "user"]), (false, None));
}

/// `\d`, `\w` and `\s` are ASCII, as in RE2 and ECMAScript.
#[test]
fn perl_classes_are_ascii() {
    let set = PolicySet {
        policies: vec![Policy {
            dry_run: false,
            name: "ids".into(),
            action: Action::Allow,
            rules: vec![Rule {
                sources: vec![],
                destinations: vec![Destination {
                    conditions: Vec::new(),
                    hosts: vec![Pattern::Any],
                    ports: vec![80],
                    methods: vec![],
                    header: Some(HeaderMatch {
                        name: "x-id".into(),
                        regex: r"\d+\s\w+".into(),
                    }),
                }],
            }],
        }],
    };
    let table = Table::new(&set).unwrap();
    for (value, allowed) in [
        ("12 ab", true),
        ("\u{0661}\u{0662} ab", false),
        ("12\u{00a0}ab", false),
        ("12 \u{00e9}", false),
    ] {
        let mut r = req(None, "h", 80, "GET");
        r.headers = vec![("x-id".into(), value.into())];
        assert_eq!(table_decision(&table, &r).0, allowed, "{value:?}");
        assert_eq!(reference(&set, &r).0, allowed, "reference: {value:?}");
    }
}

/// A rule with more pattern combinations than the pair index takes (checked by source key
/// alone), and a principal matching more prefix patterns than the key buffer holds (the
/// evaluator falls back to a scan): both must still decide like the reference.
#[test]
fn wide_rules_and_key_overflow_agree_with_reference() {
    let principal = "spiffe://td.example/ns/a/sa/client-with-a-rather-long-name-for-prefixes";
    let wide = Rule {
        sources: vec![Source {
            conditions: Vec::new(),
            principals: (0..20)
                .map(|i| Pattern::Exact(format!("spiffe://td.example/ns/a/sa/p{i}")))
                .chain([Pattern::Exact(principal.into())])
                .collect(),
            ip_blocks: vec![],
        }],
        destinations: vec![Destination {
            conditions: Vec::new(),
            hosts: (0..20)
                .map(|i| Pattern::Exact(format!("h{i}")))
                .chain([Pattern::Exact("service-test".into())])
                .collect(),
            ports: vec![8000],
            methods: vec!["GET".into()],
            header: None,
        }],
    };
    let prefixes = Rule {
        sources: vec![Source {
            conditions: Vec::new(),
            principals: (3..principal.len())
                .map(|n| Pattern::Prefix(principal[..n].to_owned()))
                .collect(),
            ip_blocks: vec![],
        }],
        destinations: vec![Destination {
            conditions: Vec::new(),
            hosts: vec![Pattern::Any],
            ports: vec![9000],
            methods: vec![],
            header: None,
        }],
    };
    let set = PolicySet {
        policies: vec![
            Policy {
                dry_run: false,
                name: "wide".into(),
                action: Action::Allow,
                rules: vec![wide],
            },
            Policy {
                dry_run: false,
                name: "prefixes".into(),
                action: Action::Allow,
                rules: vec![prefixes],
            },
        ],
    };
    let table = Table::from_bytes(&encode(&set)).unwrap();
    for (p, host, port, method) in [
        (principal, "service-test", 8000, "GET"),
        (principal, "h3", 8000, "GET"),
        (principal, "h3", 8000, "POST"),
        ("spiffe://td.example/ns/a/sa/p7", "h19", 8000, "GET"),
        ("spiffe://td.example/ns/a/sa/p7", "nope", 8000, "GET"),
        (principal, "anything", 9000, "PUT"),
        ("spiffe://td.example/ns/b", "anything", 9000, "PUT"),
    ] {
        let r = req(Some(p), host, port, method);
        assert_eq!(table_decision(&table, &r), reference(&set, &r), "{r:?}");
    }
}
