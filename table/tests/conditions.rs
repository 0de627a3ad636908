//! Format 2: conditions, AUDIT and dry-run policies, and the version the encoder picks.

use std::net::IpAddr;

use meshauthz_table::{
    Action, Attribute, Condition, Destination, IpNet, Matcher, Pattern, Policy, PolicySet, Request, Rule, Source,
    Table, wire,
};

fn cond(attribute: Attribute, negated: bool, matchers: Vec<Matcher>) -> Condition {
    Condition {
        attribute,
        negated,
        matchers,
    }
}

fn policy(name: &str, action: Action, rules: Vec<Rule>) -> Policy {
    Policy {
        name: name.into(),
        action,
        rules,
        dry_run: false,
    }
}

fn to(conditions: Vec<Condition>) -> Rule {
    Rule {
        sources: Vec::new(),
        destinations: vec![Destination {
            conditions,
            ..Destination::default()
        }],
    }
}

struct Req<'a> {
    principal: Option<&'a str>,
    path: &'a str,
    host: &'a str,
    sni: Option<&'a str>,
    dest: Option<IpAddr>,
}

impl Default for Req<'_> {
    fn default() -> Self {
        Req {
            principal: None,
            path: "/",
            host: "svc",
            sni: None,
            dest: None,
        }
    }
}

/// Round-trips the set through the wire format, then decides.
fn allowed(set: &PolicySet, r: Req<'_>) -> bool {
    let table = Table::from_bytes(&wire::encode(set)).expect("valid table");
    let path = [r.path];
    let headers: Vec<&[&str]> = table
        .header_names()
        .iter()
        .map(|n| if n == ":path" { &path[..] } else { &[][..] })
        .collect();
    table
        .evaluate(&Request {
            principal: r.principal,
            authority: r.host,
            method: "GET",
            port: 8080,
            headers: &headers,
            sni: r.sni,
            destination_ip: r.dest,
            ..Request::default()
        })
        .allowed
}

#[test]
fn negated_principal_holds_on_plaintext_and_on_other_peers() {
    let set = PolicySet {
        policies: vec![policy(
            "not-bad",
            Action::Allow,
            vec![Rule {
                sources: vec![Source {
                    conditions: vec![cond(
                        Attribute::Principal,
                        true,
                        vec![Matcher::Prefix("spiffe://td/ns/bad/".into())],
                    )],
                    ..Source::default()
                }],
                destinations: Vec::new(),
            }],
        )],
    };
    assert!(allowed(&set, Req::default()));
    assert!(allowed(
        &set,
        Req {
            principal: Some("spiffe://td/ns/good/sa/a"),
            ..Req::default()
        }
    ));
    assert!(!allowed(
        &set,
        Req {
            principal: Some("spiffe://td/ns/bad/sa/a"),
            ..Req::default()
        }
    ));
}

#[test]
fn paths_ignore_the_query_and_templates_match_segments() {
    let set = PolicySet {
        policies: vec![policy(
            "paths",
            Action::Allow,
            vec![to(vec![cond(
                Attribute::Path,
                false,
                vec![
                    Matcher::Exact("/exact".into()),
                    Matcher::PathTemplate("/api/{*}/items/{**}".into()),
                ],
            )])],
        )],
    };
    let path = |p| Req {
        path: p,
        ..Req::default()
    };
    assert!(allowed(&set, path("/exact")));
    assert!(allowed(&set, path("/exact?x=1#f")));
    assert!(!allowed(&set, path("/exact/")));
    assert!(allowed(&set, path("/api/v1/items/")));
    assert!(allowed(&set, path("/api/v1/items/a/b")));
    assert!(!allowed(&set, path("/api/v1/v2/items/a")));
    assert!(!allowed(&set, path("/api//items/a")));
}

#[test]
fn hosts_compare_case_insensitively_and_keep_the_port() {
    let set = PolicySet {
        policies: vec![policy(
            "hosts",
            Action::Allow,
            vec![to(vec![cond(
                Attribute::Host,
                false,
                vec![Matcher::Exact("Svc.Example".into()), Matcher::Suffix(".Corp".into())],
            )])],
        )],
    };
    let host = |h| Req {
        host: h,
        ..Req::default()
    };
    assert!(allowed(&set, host("svc.example")));
    assert!(allowed(&set, host("SVC.EXAMPLE")));
    assert!(allowed(&set, host("a.corp")));
    assert!(!allowed(&set, host("svc.example:80")));
}

#[test]
fn sni_absent_is_empty_and_destination_ip_is_the_local_address() {
    let set = PolicySet {
        policies: vec![policy(
            "conn",
            Action::Deny,
            vec![to(vec![
                cond(Attribute::Sni, true, vec![Matcher::NonEmpty]),
                cond(
                    Attribute::DestinationIp,
                    false,
                    vec![Matcher::Net(IpNet::new([10, 0, 0, 0].into(), 8).unwrap())],
                ),
            ])],
        )],
    };
    let table = Table::from_bytes(&wire::encode(&set)).unwrap();
    assert!(table.uses_sni() && table.uses_destination_ip());
    let local = Some(IpAddr::from([10, 1, 2, 3]));
    assert!(!allowed(
        &set,
        Req {
            dest: local,
            ..Req::default()
        }
    ));
    assert!(allowed(
        &set,
        Req {
            dest: local,
            sni: Some("svc"),
            ..Req::default()
        }
    ));
    assert!(allowed(
        &set,
        Req {
            dest: Some(IpAddr::from([127, 0, 0, 1])),
            ..Req::default()
        }
    ));
}

#[test]
fn audit_and_dry_run_never_decide_but_are_observed() {
    let deny_all = Rule {
        sources: Vec::new(),
        destinations: vec![Destination {
            hosts: vec![Pattern::Any],
            ..Destination::default()
        }],
    };
    let mut dry = policy("dry-deny", Action::Deny, vec![deny_all.clone()]);
    dry.dry_run = true;
    let set = PolicySet {
        policies: vec![policy("audit", Action::Audit, vec![deny_all]), dry],
    };
    let bytes = wire::encode(&set);
    assert_eq!(u16::from_le_bytes([bytes[8], bytes[9]]), 2);
    assert_eq!(wire::decode(&bytes).unwrap(), set);
    let table = Table::from_bytes(&bytes).unwrap();
    let req = Request {
        authority: "svc",
        method: "GET",
        ..Request::default()
    };
    assert!(table.evaluate(&req).allowed, "AUDIT and dry-run DENY must not deny");
    let seen = table.observe(&req, &|| 80);
    assert_eq!(seen.audit.map(|r| r.policy), Some(0));
    let dry = seen.dry_run.expect("a dry-run decision");
    assert!(!dry.allowed);
    assert_eq!(dry.by.map(|r| r.policy), Some(1));
}

#[test]
fn the_encoder_writes_version_1_when_the_set_fits_it() {
    let set = PolicySet {
        policies: vec![policy(
            "v1",
            Action::Allow,
            vec![Rule {
                sources: Vec::new(),
                destinations: vec![Destination {
                    hosts: vec![Pattern::Exact("svc".into())],
                    ports: vec![80],
                    ..Destination::default()
                }],
            }],
        )],
    };
    let bytes = wire::encode(&set);
    assert_eq!(u16::from_le_bytes([bytes[8], bytes[9]]), 1);
    assert_eq!(wire::decode(&bytes).unwrap(), set);
}

#[test]
fn the_decoder_refuses_a_matcher_that_does_not_suit_its_attribute() {
    let set = PolicySet {
        policies: vec![policy(
            "port",
            Action::Allow,
            vec![to(vec![cond(
                Attribute::DestinationPort,
                false,
                vec![Matcher::Port(80)],
            )])],
        )],
    };
    let mut bytes = wire::encode(&set);
    // The port matcher's kind byte (8) sits three bytes before the end (kind, u16 port).
    let at = bytes.len() - 3;
    assert_eq!(bytes[at], 8);
    bytes[at] = 2;
    // Fix the checksum so that only the kind is wrong.
    let crc = wire::crc32(&bytes[20..]);
    bytes[16..20].copy_from_slice(&crc.to_le_bytes());
    let err = wire::decode(&bytes).unwrap_err();
    assert!(err.to_string().contains("matcher kind"), "{err}");
}

#[test]
fn namespace_conditions_are_looked_up_by_namespace() {
    // 1,000 rules, each one namespace: a request is decided by the rule of its own namespace,
    // including a principal with two `/ns/` segments, and an unknown namespace by none.
    let rules = (0..1000)
        .map(|i| Rule {
            sources: vec![Source {
                conditions: vec![cond(
                    Attribute::Principal,
                    false,
                    vec![Matcher::Contains(format!("/ns/ns{i}/"))],
                )],
                ..Source::default()
            }],
            destinations: Vec::new(),
        })
        .collect();
    let set = PolicySet {
        policies: vec![policy("namespaces", Action::Allow, rules)],
    };
    let table = Table::from_bytes(&wire::encode(&set)).unwrap();
    let decide = |p: &str| {
        table
            .evaluate(&Request {
                principal: Some(p),
                authority: "svc",
                method: "GET",
                ..Request::default()
            })
            .by
            .and_then(|b| b.rule)
    };
    assert_eq!(decide("spiffe://td/ns/ns417/sa/a"), Some(417));
    assert_eq!(decide("spiffe://td/x/ns/ns/ns/ns9/sa/a"), Some(9));
    assert_eq!(decide("spiffe://td/ns/ns4170/sa/a"), None);
    assert_eq!(
        decide("spiffe://td/ns/ns417"),
        None,
        "the segment must be followed by `/`"
    );
}

#[test]
fn a_deny_path_also_holds_on_the_percent_decoded_path() {
    let rule = |negated| {
        to(vec![cond(
            Attribute::Path,
            negated,
            vec![Matcher::Exact("/admin".into())],
        )])
    };
    let deny = PolicySet {
        policies: vec![policy("no-admin", Action::Deny, vec![rule(false)])],
    };
    let path = |p| Req {
        path: p,
        ..Req::default()
    };
    assert!(!allowed(&deny, path("/admin")));
    assert!(!allowed(&deny, path("/%61dmin")));
    assert!(!allowed(&deny, path("/%61%64min?x")));
    assert!(allowed(&deny, path("/public")));
    // An ALLOW sees the path as sent: `/%61dmin` is not `/admin`.
    let allow = PolicySet {
        policies: vec![policy("admin-only", Action::Allow, vec![rule(false)])],
    };
    assert!(allowed(&allow, path("/admin")));
    assert!(!allowed(&allow, path("/%61dmin")));
}

#[test]
fn remote_ip_is_its_own_attribute() {
    let net = IpNet::new([203, 0, 113, 0].into(), 24).unwrap();
    let set = PolicySet {
        policies: vec![policy(
            "remote",
            Action::Allow,
            vec![Rule {
                sources: vec![Source {
                    conditions: vec![cond(Attribute::RemoteIp, false, vec![Matcher::Net(net)])],
                    ..Source::default()
                }],
                destinations: Vec::new(),
            }],
        )],
    };
    let table = Table::from_bytes(&wire::encode(&set)).unwrap();
    assert!(table.uses_remote_ip() && !table.uses_source_ip());
    let decide = |remote: Option<IpAddr>, source: Option<IpAddr>| {
        table
            .evaluate(&Request {
                authority: "svc",
                method: "GET",
                remote_ip: remote,
                source_ip: source,
                ..Request::default()
            })
            .allowed
    };
    assert!(decide(Some([203, 0, 113, 9].into()), Some([127, 0, 0, 1].into())));
    assert!(!decide(Some([198, 51, 100, 9].into()), Some([203, 0, 113, 9].into())));
    assert!(!decide(None, None));
}
