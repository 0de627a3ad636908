//! The request logic against a scripted host: every failed host call denies, certificates
//! that are not X.509-SVIDs are refused, header-made source addresses are refused, XFCC
//! `By=` belongs to the connection, and random header sets decide as the reference does.

#![allow(clippy::unwrap_used)]

#[path = "../../table/tests/support/reference.rs"]
mod reference;

use std::cell::RefCell;
use std::collections::HashMap;

use base64::Engine;
use meshauthz_table::{Action, Destination, HeaderMatch, IpNet, Pattern, Policy, PolicySet, Rule, Source};
use proptest::prelude::*;

use super::*;

const CLIENT: &str = "spiffe://td/ns/a/sa/client";

fn cert_pem(uris: &[&str]) -> Vec<u8> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    for u in uris {
        params
            .subject_alt_names
            .push(rcgen::SanType::URI((*u).try_into().unwrap()));
    }
    let key = rcgen::KeyPair::generate().unwrap();
    params.self_signed(&key).unwrap().pem().into_bytes()
}

/// A host with scripted answers. A property missing from `props` fails.
#[derive(Default)]
struct FakeHost {
    props: HashMap<Property, Option<Vec<u8>>>,
    headers: Vec<(String, Vec<u8>)>,
    fail: Vec<&'static str>,
    set: RefCell<Vec<(String, String)>>,
    removed: RefCell<Vec<String>>,
    denied: Cell<bool>,
    asked: RefCell<Vec<Property>>,
}

fn failed(what: &'static str) -> HostError {
    HostError {
        what,
        status: "scripted failure".into(),
    }
}

impl Host for FakeHost {
    type Headers = Vec<(Vec<u8>, Vec<u8>)>;

    fn property(&self, property: Property) -> Result<Option<Box<[u8]>>, HostError> {
        self.asked.borrow_mut().push(property);
        match self.props.get(&property) {
            Some(v) if !self.fail.contains(&property.name()) => Ok(v.clone().map(Vec::into_boxed_slice)),
            _ => Err(failed(property.name())),
        }
    }

    fn request_headers(&self) -> Result<Self::Headers, HostError> {
        if self.fail.contains(&"request_headers") {
            return Err(failed("request_headers"));
        }
        Ok(self
            .headers
            .iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.clone()))
            .collect())
    }

    fn header_pairs(headers: &Self::Headers) -> Option<impl Iterator<Item = (&[u8], &[u8])>> {
        Some(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())))
    }

    fn set_request_header(&self, name: &str, value: &str) -> Result<(), HostError> {
        if self.fail.contains(&"set_request_header") {
            return Err(failed("set_request_header"));
        }
        self.set.borrow_mut().push((name.into(), value.into()));
        Ok(())
    }

    fn remove_request_header(&self, name: &str) -> Result<(), HostError> {
        if self.fail.contains(&"remove_request_header") {
            return Err(failed("remove_request_header"));
        }
        self.removed.borrow_mut().push(name.into());
        Ok(())
    }

    fn send_deny(&self) {
        self.denied.set(true);
    }
}

impl FakeHost {
    /// An mTLS connection `id` from a peer presenting `pem`, to port 8000, from 127.0.0.9.
    fn mtls(id: u64, pem: &[u8]) -> FakeHost {
        let mut h = FakeHost::plaintext(id);
        h.props.insert(Property::Mtls, Some(vec![1]));
        h.props.insert(
            Property::PeerCertificateDigest,
            Some(format!("digest-{}", pem.len()).into_bytes()),
        );
        h.props.insert(Property::PeerCertificate, Some(pem.to_vec()));
        h.props.insert(Property::PeerSubject, Some(b"O=test".to_vec()));
        h.props
            .insert(Property::LocalUriSan, Some(b"spiffe://td/ns/a/sa/server".to_vec()));
        h
    }

    fn plaintext(id: u64) -> FakeHost {
        let mut h = FakeHost::default();
        h.props.insert(Property::ConnectionId, Some(id.to_le_bytes().to_vec()));
        h.props.insert(Property::Mtls, Some(vec![0]));
        h.props
            .insert(Property::SourceAddress, Some(b"127.0.0.9:40000".to_vec()));
        h.props
            .insert(Property::DestinationPort, Some(8000u64.to_le_bytes().to_vec()));
        h.props
            .insert(Property::DestinationAddress, Some(b"127.0.0.1:8000".to_vec()));
        h.props.insert(Property::RequestedServerName, None);
        h.header(":authority", "service-test").header(":method", "GET")
    }

    fn header(mut self, name: &str, value: &str) -> FakeHost {
        self.headers.push((name.into(), value.as_bytes().to_vec()));
        self
    }
}

fn configured(set: &PolicySet, xfcc: XfccMode) -> FilterConfig {
    let table = base64::engine::general_purpose::STANDARD.encode(meshauthz_table::wire::encode(set));
    let mode = match xfcc {
        XfccMode::SanitizeSet => "sanitize_set",
        XfccMode::AppendForward => "append_forward",
        XfccMode::Off => "off",
    };
    let json = format!(r#"{{"table":"{table}","xfcc":"{mode}"}}"#);
    FilterConfig::parse(Some(json.as_bytes())).unwrap()
}

fn policy(name: &str, action: Action, sources: Vec<Source>, header: Option<(&str, &str)>) -> Policy {
    Policy {
        dry_run: false,
        name: name.into(),
        action,
        rules: vec![Rule {
            sources,
            destinations: vec![Destination {
                conditions: Vec::new(),
                hosts: vec![Pattern::Exact("service-test".into())],
                ports: vec![8000],
                methods: vec!["GET".into()],
                header: header.map(|(n, r)| HeaderMatch {
                    name: n.into(),
                    regex: r.into(),
                }),
            }],
        }],
    }
}

fn principals(p: &[&str]) -> Vec<Source> {
    vec![Source {
        conditions: Vec::new(),
        principals: p.iter().map(|p| Pattern::parse(p).unwrap()).collect(),
        ip_blocks: vec![],
    }]
}

/// One ALLOW policy without rules: every request that gets to a decision is allowed.
fn allow_all() -> PolicySet {
    PolicySet {
        policies: vec![Policy {
            dry_run: false,
            name: "all".into(),
            action: Action::Allow,
            rules: vec![],
        }],
    }
}

/// DENY 10.0.0.0/8, DENY by SNI and local address, ALLOW the client: every host call the
/// decision needs is exercised.
fn guarded() -> PolicySet {
    let net = || IpNet::new("10.0.0.0".parse().unwrap(), 8).unwrap();
    let deny_net = vec![Source {
        conditions: Vec::new(),
        principals: vec![],
        ip_blocks: vec![net()],
    }];
    let deny_connection = Policy {
        dry_run: false,
        name: "deny-connection".into(),
        action: Action::Deny,
        rules: vec![Rule {
            sources: Vec::new(),
            destinations: vec![Destination {
                conditions: vec![
                    meshauthz_table::Condition {
                        attribute: meshauthz_table::Attribute::Sni,
                        negated: false,
                        matchers: vec![meshauthz_table::Matcher::Exact("blocked".into())],
                    },
                    meshauthz_table::Condition {
                        attribute: meshauthz_table::Attribute::DestinationIp,
                        negated: false,
                        matchers: vec![meshauthz_table::Matcher::Net(net())],
                    },
                ],
                ..Destination::default()
            }],
        }],
    };
    PolicySet {
        policies: vec![
            policy("deny-net", Action::Deny, deny_net, None),
            deny_connection,
            policy("allow-client", Action::Allow, principals(&[CLIENT]), None),
        ],
    }
}

fn run(host: &FakeHost, caches: &mut Caches, c: &FilterConfig) -> Verdict {
    let outcome = on_request(host, caches, c);
    let v = outcome.verdict;
    assert_eq!(
        outcome.tally == Tally::Refused,
        v == Verdict::Denied && !matches!(outcome.tally, Tally::Decided { .. }),
        "a refusal is counted as one"
    );
    assert_eq!(
        v == Verdict::Denied,
        host.denied.get(),
        "the verdict and the reply agree"
    );
    v
}

#[test]
fn every_failed_host_call_denies_and_is_not_remembered() {
    let c = configured(&guarded(), XfccMode::SanitizeSet);
    let pem = cert_pem(&[CLIENT]);
    let mut caches = Caches::default();
    assert_eq!(run(&FakeHost::mtls(1, &pem), &mut caches, &c), Verdict::Continue);
    let calls = Property::ALL
        .iter()
        .map(|p| p.name())
        .chain(["request_headers", "set_request_header"]);
    for (i, what) in calls.enumerate() {
        // A fresh connection each time, so that per-connection lookups happen again.
        let id = 100 + i as u64;
        let mut host = FakeHost::mtls(id, &pem);
        host.fail.push(what);
        let mut fresh = Caches::default();
        let want = if what == "connection_id" {
            Verdict::Continue // only the cache key
        } else {
            Verdict::Denied
        };
        assert_eq!(run(&host, &mut fresh, &c), want, "{what} failing");
        // The same connection, the host answering again: decided normally.
        assert_eq!(
            run(&FakeHost::mtls(id, &pem), &mut fresh, &c),
            Verdict::Continue,
            "after {what}"
        );
    }
    // Removing a plaintext client's XFCC fails: denied, the forged header must not pass.
    let c = configured(&allow_all(), XfccMode::SanitizeSet);
    let mut host = FakeHost::plaintext(7).header(XFCC, "By=forged");
    host.fail.push("remove_request_header");
    assert_eq!(run(&host, &mut Caches::default(), &c), Verdict::Denied);
}

#[test]
fn certificates_that_are_not_svids_are_refused() {
    let c = configured(&allow_all(), XfccMode::SanitizeSet);
    let mut caches = Caches::default();
    let two = cert_pem(&[CLIENT, "spiffe://td/ns/a/sa/other"]);
    let none = cert_pem(&[]);
    let bad = cert_pem(&["spiffe://TD/x"]);
    for (id, pem) in [(1, two), (2, none), (3, bad), (4, b"garbage".to_vec())] {
        assert_eq!(
            run(&FakeHost::mtls(id, &pem), &mut caches, &c),
            Verdict::Denied,
            "cert {id}"
        );
    }
    // Absent peer data on an mTLS connection is a failure, not plaintext.
    let mut host = FakeHost::mtls(5, &cert_pem(&[CLIENT]));
    host.props.insert(Property::PeerCertificateDigest, None);
    assert_eq!(run(&host, &mut caches, &c), Verdict::Denied);
    let mut host = FakeHost::mtls(6, &cert_pem(&[CLIENT]));
    host.props.insert(Property::Mtls, Some(vec![7]));
    assert_eq!(run(&host, &mut caches, &c), Verdict::Denied);
    // Plaintext has no principal, is allowed here, and its forged XFCC is removed.
    let host = FakeHost::plaintext(8).header(XFCC, "By=forged");
    assert_eq!(run(&host, &mut caches, &c), Verdict::Continue);
    assert_eq!(host.removed.borrow().as_slice(), [XFCC.to_owned()]);
    // URL-encoded PEM reads like PEM.
    let pem = cert_pem(&[CLIENT]);
    let encoded: String = String::from_utf8(pem.clone())
        .unwrap()
        .replace('\n', "%0A")
        .replace(' ', "%20");
    assert_eq!(
        run(&FakeHost::mtls(9, encoded.as_bytes()), &mut caches, &c),
        Verdict::Continue
    );
}

#[test]
fn a_source_address_from_a_header_is_refused() {
    let c = configured(&guarded(), XfccMode::SanitizeSet);
    let pem = cert_pem(&[CLIENT]);
    let mut caches = Caches::default();
    for (addr, want) in [
        ("127.0.0.9:40000", Verdict::Continue),
        ("10.1.2.3:40000", Verdict::Denied),
        ("8.8.8.8:0", Verdict::Denied),
        ("8.8.8.8", Verdict::Denied),
        ("[::1]:0", Verdict::Denied),
    ] {
        let mut host = FakeHost::mtls(1, &pem);
        host.props
            .insert(Property::SourceAddress, Some(addr.as_bytes().to_vec()));
        assert_eq!(run(&host, &mut caches, &c), want, "{addr}");
    }
    // A table that never looks at the source never asks for it.
    let c = configured(
        &PolicySet {
            policies: vec![guarded().policies[1].clone()],
        },
        XfccMode::SanitizeSet,
    );
    let mut host = FakeHost::mtls(2, &pem);
    host.props.insert(Property::SourceAddress, Some(b"8.8.8.8:0".to_vec()));
    assert_eq!(run(&host, &mut caches, &c), Verdict::Continue);
    assert!(!host.asked.borrow().contains(&Property::SourceAddress));
}

#[test]
fn xfcc_by_is_the_connections_own_identity() {
    let c = configured(&guarded(), XfccMode::SanitizeSet);
    let pem = cert_pem(&[CLIENT]);
    let mut caches = Caches::default();
    let a = FakeHost::mtls(1, &pem).header(XFCC, "By=forged");
    let mut b = FakeHost::mtls(2, &pem);
    b.props
        .insert(Property::LocalUriSan, Some(b"spiffe://td/ns/a/sa/gateway".to_vec()));
    assert_eq!(run(&a, &mut caches, &c), Verdict::Continue);
    assert_eq!(run(&b, &mut caches, &c), Verdict::Continue);
    let by = |h: &FakeHost| h.set.borrow()[0].1.split(';').next().unwrap().to_owned();
    assert_eq!(by(&a), "By=spiffe://td/ns/a/sa/server");
    assert_eq!(by(&b), "By=spiffe://td/ns/a/sa/gateway");
    assert!(!a.set.borrow()[0].1.contains("forged"));
    // append_forward keeps the previous hop's element from an mTLS peer only.
    let c = configured(&guarded(), XfccMode::AppendForward);
    let prev = FakeHost::mtls(3, &pem).header(XFCC, "By=prev");
    assert_eq!(run(&prev, &mut caches, &c), Verdict::Continue);
    assert!(
        prev.set.borrow()[0]
            .1
            .starts_with("By=prev,By=spiffe://td/ns/a/sa/server;")
    );
}

// ---- random header sets: the filter never allows what the reference denies ----

const NAMES: &[&str] = &["x-role", "X-Role", "x-env", "x-other"];
const VALUES: &[&[u8]] = &[
    b"admin",
    b"user",
    b"prod",
    b"",
    b"admin,user",
    b"\xff\xfeadmin",
    b"adm\xc3\xa9",
];

fn header_policies() -> PolicySet {
    PolicySet {
        policies: vec![
            policy("deny-admin", Action::Deny, vec![], Some(("x-role", "admin"))),
            policy("deny-env", Action::Deny, vec![], Some(("x-env", r"\w+,prod"))),
            policy(
                "allow-user",
                Action::Allow,
                principals(&[CLIENT]),
                Some(("x-role", "user|admin,user")),
            ),
            policy("allow-prod", Action::Allow, vec![], Some(("x-env", "prod"))),
        ],
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn random_headers_decide_as_the_reference(
        entries in prop::collection::vec((prop::sample::select(NAMES), prop::sample::select(VALUES), 0..3usize), 0..8),
        mtls in any::<bool>(),
    ) {
        let set = header_policies();
        let c = configured(&set, XfccMode::SanitizeSet);
        let pem = cert_pem(&[CLIENT]);
        let mut host = if mtls { FakeHost::mtls(1, &pem) } else { FakeHost::plaintext(1) };
        let mut req_headers = Vec::new();
        for (name, value, huge) in &entries {
            let mut value = value.to_vec();
            if *huge == 2 {
                value.extend(std::iter::repeat_n(b'a', 64 * 1024));
            }
            req_headers.push((name.to_string(), String::from_utf8_lossy(&value).into_owned()));
            host.headers.push((name.to_string(), value));
        }
        let verdict = run(&host, &mut Caches::default(), &c);
        let req = reference::Req {
            principal: mtls.then(|| CLIENT.to_owned()),
            source_ip: None,
            authority: "service-test".into(),
            port: 8000,
            method: "GET".into(),
            headers: req_headers,
        };
        let (allowed, _) = reference::reference(&set, &req);
        prop_assert_eq!(verdict == Verdict::Continue, allowed, "{:?}", entries);
    }
}
