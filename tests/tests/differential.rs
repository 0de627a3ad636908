//! Differential test: real Envoys running the meshauthz filter (both builds) and a real Envoy running the
//! native RBAC filters from `policy-compiler --emit envoy-rbac`, on the same generated policy
//! sets and the same corpus of requests (several principals over mTLS, plaintext, hosts in
//! several spellings, ports, methods, source addresses, a header). Every decision must agree.
//!
//! The corpus avoids the documented differences (SEMANTICS.md, "Native RBAC differences"):
//! every client certificate is an X.509-SVID with one URI SAN. It includes the attacks the
//! filter must not fall for: a forged `x-forwarded-for` (both filters decide from the peer's
//! address) and a header sent twice (a DENY holds on any one value).

use std::net::Ipv4Addr;

use meshauthz_envoy_config::ca::{LeafSpec, MeshCa};
use meshauthz_policy_compiler::emit::{Mode, Xfcc, plugin_config};
use meshauthz_policy_compiler::rbac_matcher::envoy_rbac_matcher;
use meshauthz_policy_compiler::{compile_sources, rbac::envoy_rbac};
use meshauthz_tests::bootstrap::{ForwardClientCert, Listener, bootstrap};
use meshauthz_tests::http::client_cert_args;
use meshauthz_tests::{Build, Echo, Envoy, Rng, curl, filter_wasm};

const TD: &str = "diff.example";
const CLIENTS: &[&str] = &[
    "spiffe://diff.example/ns/default/sa/a",
    "spiffe://diff.example/ns/default/sa/b",
    "spiffe://diff.example/ns/other/sa/c",
];
const HOSTS: &[&str] = &[
    "svc-a",
    "SVC-A:8443",
    "svc-b.example.com",
    "svc-b.example.com.",
    "other.example.com",
    "svcz",
];
const METHODS: &[&str] = &["GET", "POST", "PUT"];

/// A block of loopback addresses with `ports` free on both proxy addresses.
fn addresses() -> ([Ipv4Addr; 6], [u16; 3]) {
    let block = meshauthz_tests::demo::pick_block();
    let ip = |n| Ipv4Addr::new(127, block[0], block[1], n);
    let ips = [ip(10), ip(11), ip(12), ip(13), ip(20), ip(21)];
    let port = || {
        (0..50)
            .find_map(|_| {
                let p = meshauthz_tests::free_port(ips[0]);
                let free = |ip| std::net::TcpListener::bind((ip, p)).is_ok();
                (free(ips[1]) && free(ips[2]) && free(ips[3])).then_some(p)
            })
            .expect("a port free on both addresses")
    };
    (ips, [port(), port(), port()])
}

fn policy_set(rng: &mut Rng, ports: [u16; 3], sources: [Ipv4Addr; 2]) -> String {
    let mut yaml = String::new();
    let n = 1 + rng.next(4);
    for p in 0..n {
        let action = if rng.next(3) == 0 { "DENY" } else { "ALLOW" };
        yaml += &format!("---\nname: p{p}\naction: {action}\n");
        if rng.next(8) == 0 {
            continue; // a policy without rules
        }
        yaml += "rules:\n";
        for _ in 0..1 + rng.next(3) {
            yaml += "- {";
            if rng.next(4) != 0 {
                let mut srcs = Vec::new();
                for _ in 0..1 + rng.next(2) {
                    let principal = match rng.next(5) {
                        0 => "\"*\"".to_owned(),
                        1 => format!("\"spiffe://{TD}/ns/default/*\""),
                        2 => "\"*/sa/c\"".to_owned(),
                        _ => format!("\"{}\"", rng.pick(CLIENTS)),
                    };
                    let ip = match rng.next(3) {
                        0 => format!("\"{}\"", sources[rng.next(2)]),
                        1 => format!("\"{}/24\"", sources[0]),
                        _ => String::new(),
                    };
                    srcs.push(match (rng.next(3), ip.is_empty()) {
                        (0, false) => format!("{{ipBlocks: [{ip}]}}"),
                        (1, false) => format!("{{principals: [{principal}], ipBlocks: [{ip}]}}"),
                        _ => format!("{{principals: [{principal}]}}"),
                    });
                }
                yaml += &format!("sources: [{}], ", srcs.join(", "));
            }
            if rng.next(5) != 0 {
                let host = rng.pick(&["svc-a", "svc-b.example.com", "*.example.com", "svc*", "*"]);
                let port = ports[rng.next(3)];
                let mut dest = format!("{{hosts: [\"{host}\"], ports: [{port}, {}]", ports[rng.next(3)]);
                if rng.next(2) == 0 {
                    dest += &format!(", methods: [{}]", rng.pick(METHODS));
                }
                if rng.next(5) == 0 {
                    dest += ", httpHeaderMatch: {headerName: x-env, regexMatch: \"prod|staging\"}";
                }
                yaml += &format!("destinations: [{dest}}}]");
            }
            yaml += "}\n";
        }
    }
    yaml
}

#[test]
fn both_filter_builds_and_native_rbac_decide_alike() {
    let dir = tempfile::tempdir().expect("tmp");
    let ca = MeshCa::generate("TestCorpLLC").expect("ca");
    let server = dir.path().join("server");
    ca.issue(&LeafSpec::svid(&format!("spiffe://{TD}/ns/default/sa/server")))
        .expect("issue")
        .write_to(&server)
        .expect("write");
    for (i, id) in CLIENTS.iter().enumerate() {
        ca.issue(&LeafSpec::svid(id))
            .expect("issue")
            .write_to(&dir.path().join(format!("client{i}")))
            .expect("write");
    }
    let echo = Echo::start(Ipv4Addr::LOCALHOST, 0).expect("echo");
    let (ips, ports) = addresses();
    let (wasm_ip, rbac_ip, native_ip, matcher_ip) = (ips[0], ips[1], ips[2], ips[3]);
    let sources = [ips[4], ips[5]];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut compared = 0;
    let mut allowed = 0;
    for round in 0..4 {
        let yaml = policy_set(&mut rng, ports, sources);
        let compiled =
            compile_sources(&[("diff.yaml".into(), yaml.clone())], false).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        let plugin = plugin_config(&compiled.table_bytes(), Mode::Enforce, Xfcc::SanitizeSet);
        let rbac = envoy_rbac(&compiled.set, false).expect("envoy-rbac");
        let matcher = envoy_rbac_matcher(&compiled.set, false);
        // `Some(build)`: meshauthz; `None`: native RBAC (`rbac`: its rules or its matcher form).
        let envoy_for = |ip: Ipv4Addr, filter: Option<Build>, rbac: &String| {
            let listeners: Vec<Listener> = ports
                .iter()
                .enumerate()
                .map(|(i, &port)| Listener {
                    name: format!("l{i}"),
                    ip,
                    port,
                    // The third port is plaintext: no principal.
                    tls: (i < 2).then(|| server.clone()),
                    plugin_config: filter.map(|_| plugin.clone()),
                    rbac_filters: filter.is_none().then(|| rbac.to_string()),
                    forward_client_cert: ForwardClientCert::Sanitize,
                    hardened: true,
                    build: filter.unwrap_or(Build::Wasm),
                    faults: false,
                    ecds: None,
                })
                .collect();
            let admin = meshauthz_tests::free_port(Ipv4Addr::LOCALHOST);
            let name = filter.map_or(format!("rbac{ip}"), |b| format!("{b:?}"));
            let path = dir.path().join(format!("r{round}-{name}.yaml"));
            std::fs::write(&path, bootstrap(admin, &listeners, &filter_wasm(), echo.addr().port())).expect("write");
            Envoy::start(
                &path,
                (Ipv4Addr::LOCALHOST, admin).into(),
                &dir.path().join(format!("r{round}-{name}.log")),
            )
            .unwrap_or_else(|e| panic!("{e}\npolicy:\n{yaml}\nrbac:\n{rbac}"))
        };
        let wasm_envoy = envoy_for(wasm_ip, Some(Build::Wasm), &rbac);
        let native_envoy = envoy_for(native_ip, Some(Build::Native), &rbac);
        let rbac_envoy = envoy_for(rbac_ip, None, &rbac);
        let matcher_envoy = envoy_for(matcher_ip, None, &matcher);
        for _ in 0..50 {
            let port_i = rng.next(3);
            let client = rng.next(CLIENTS.len());
            let host = rng.pick(HOSTS);
            let method = rng.pick(METHODS);
            let source = sources[rng.next(2)];
            let header: &[&str] = match rng.next(6) {
                0 | 1 => &["x-env: prod"],
                2 => &["x-env: dev", "x-env: prod"],
                _ => &[],
            };
            let forged = match rng.next(3) {
                0 => Some(sources[rng.next(2)].to_string()),
                1 => Some("8.8.8.8".to_owned()),
                _ => None,
            };
            let request = |ip: Ipv4Addr| {
                let mut args = vec!["--interface".to_owned(), source.to_string(), "-X".into(), method.into()];
                args.extend(["-H".to_owned(), format!("Host: {host}")]);
                for h in header {
                    args.extend(["-H".to_owned(), (*h).to_owned()]);
                }
                if let Some(xff) = &forged {
                    args.extend(["-H".to_owned(), format!("x-forwarded-for: {xff}")]);
                }
                let scheme = if port_i < 2 {
                    args.extend(client_cert_args(&dir.path().join(format!("client{client}"))));
                    args.push("-k".into());
                    "https"
                } else {
                    "http"
                };
                args.push(format!("{scheme}://{ip}:{}/x", ports[port_i]));
                curl(&args)
            };
            let (w, n, r, m) = (
                request(wasm_ip),
                request(native_ip),
                request(rbac_ip),
                request(matcher_ip),
            );
            let who = if port_i < 2 { CLIENTS[client] } else { "(plaintext)" };
            assert!(
                w.status == 200 || w.status == 403,
                "wasm: {w:?}\n{}",
                wasm_envoy.log_text()
            );
            assert!(
                r.status == 200 || r.status == 403,
                "rbac: {r:?}\n{}",
                rbac_envoy.log_text()
            );
            assert_eq!(
                w.status, r.status,
                "decisions differ for {method} {host} port#{port_i} from {who} at {source} headers={header:?} \
                 x-forwarded-for={forged:?}\npolicy:\n{yaml}\nrbac:\n{rbac}"
            );
            assert_eq!(
                n.status,
                r.status,
                "native filter and RBAC differ for {method} {host} port#{port_i} from {who} at {source} \
                 headers={header:?} x-forwarded-for={forged:?}\npolicy:\n{yaml}\n{}",
                native_envoy.log_text()
            );
            // The matcher form cannot ask a connection without a certificate for its URI SAN
            // (the input is "not available", which halts the match and denies): compared over
            // mTLS only (SEMANTICS.md, "Native RBAC differences").
            assert!(
                port_i == 2 || m.status == r.status,
                "the RBAC matcher tree and RBAC rules differ for {method} {host} port#{port_i} from {who} at {source} \
                 headers={header:?} x-forwarded-for={forged:?}: {} vs {}\npolicy:\n{yaml}\nmatcher:\n{matcher}\n{}",
                m.status,
                r.status,
                matcher_envoy.log_text()
            );
            compared += 1;
            allowed += usize::from(w.status == 200);
        }
    }
    eprintln!("{compared} requests compared, {allowed} allowed by both");
    assert_eq!(compared, 200);
    assert!(
        (20..=180).contains(&allowed),
        "the corpus exercises both outcomes: {allowed} of {compared} allowed"
    );
}
