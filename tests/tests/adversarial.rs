//! Attacks on the filter in a real Envoy 1.40 over real mTLS, each the request an attacker
//! would send, over HTTP/1.1 and HTTP/2, on fresh connections and several times on one
//! kept-alive connection (so the per-connection caches are what decides the later ones).
//!
//! Every listener runs in one Envoy and, sharing a `vm_config`, in one Wasm VM. "hardened"
//! listeners have the HCM settings the README documents (`meshauthz_envoy_config::hcm`);
//! "bare" ones keep Envoy's defaults, to show that the filter fails closed without them.
//! The route configuration has a `service-test` virtual host and a catch-all one that marks
//! what it serves with `x-virtual-host: catch-all`, so a test sees where a request was routed.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use meshauthz_envoy_config::ca::{LeafSpec, MeshCa};
use meshauthz_policy_compiler::compile_sources;
use meshauthz_policy_compiler::emit::{Mode, Xfcc, plugin_config};
use meshauthz_tests::bootstrap::{self, ForwardClientCert, Listener};
use meshauthz_tests::http::{client_cert_args, curl_batch};
use meshauthz_tests::{Build, CurlResult, Echo, Envoy, filter_faults_wasm, filter_wasm, free_port};

use meshauthz_tests::both_builds;

const TD: &str = "my-project.svc.id.goog";

fn spiffe(sa: &str) -> String {
    format!("spiffe://{TD}/ns/default/sa/{sa}")
}

/// The policies of each kind of listener; `{port}` is the listener's own port.
fn policy(kind: &str, port: u16) -> String {
    let client = spiffe("demo-client");
    let other = spiffe("other");
    match kind {
        "deny-net" => "name: deny-loopback\naction: DENY\nrules:\n- sources: [{ipBlocks: [127.0.0.0/8]}]\n---\n\
             name: allow-peers\naction: ALLOW\nrules:\n- sources: [{principals: [\"*\"]}]\n"
            .into(),
        "allow-ten" => "name: allow-ten\naction: ALLOW\nrules:\n- sources: [{ipBlocks: [10.0.0.0/8]}]\n".into(),
        "allow-loopback" => {
            "name: allow-loopback\naction: ALLOW\nrules:\n- sources: [{ipBlocks: [127.0.0.0/8]}]\n".into()
        }
        "header" => format!(
            "name: deny-admin\naction: DENY\nrules:\n- destinations:\n  - hosts: [\"*\"]\n    ports: [{port}]\n    \
             httpHeaderMatch: {{headerName: x-role, regexMatch: admin}}\n---\n\
             name: allow-ticket\naction: ALLOW\nrules:\n- sources: [{{principals: [\"{client}\"]}}]\n  destinations:\n  \
             - hosts: [\"*\"]\n    ports: [{port}]\n    httpHeaderMatch: {{headerName: x-ticket, regexMatch: '\\d+'}}\n"
        ),
        "host" => format!(
            "name: allow-service-test\naction: ALLOW\nrules:\n- sources: [{{principals: [\"{client}\"]}}]\n  \
             destinations: [{{hosts: [service-test], ports: [{port}], methods: [GET]}}]\n"
        ),
        "svid" => format!(
            "name: deny-other\naction: DENY\nrules:\n- sources: [{{principals: [\"{other}\"]}}]\n---\n\
             name: allow-loopback\naction: ALLOW\nrules:\n- sources: [{{ipBlocks: [127.0.0.0/8]}}]\n"
        ),
        "allow-all" => "name: allow-all\naction: ALLOW\n".into(),
        "guarded" => format!(
            "name: deny-ten\naction: DENY\nrules:\n- sources: [{{ipBlocks: [10.0.0.0/8]}}]\n---\n\
             name: allow-client\naction: ALLOW\nrules:\n- sources: [{{principals: [\"{client}\"]}}]\n  \
             destinations: [{{hosts: [service-test], ports: [{port}]}}]\n"
        ),
        other => panic!("no policy kind {other}"),
    }
}

fn config(kind: &str, port: u16, xfcc: Xfcc) -> String {
    let yaml = policy(kind, port);
    let compiled = compile_sources(&[("policy.yaml".into(), yaml.clone())], true)
        .unwrap_or_else(|e| panic!("attack policy compiles: {e}\n{yaml}"));
    plugin_config(&compiled.table_bytes(), Mode::Enforce, xfcc)
}

/// One listener of the attack Envoy.
struct Spec {
    name: &'static str,
    kind: &'static str,
    tls: Option<&'static str>,
    hardened: bool,
    xfcc: Xfcc,
    fcc: ForwardClientCert,
}

const fn spec(name: &'static str, kind: &'static str, hardened: bool) -> Spec {
    Spec {
        name,
        kind,
        tls: Some("server"),
        hardened,
        xfcc: Xfcc::SanitizeSet,
        fcc: ForwardClientCert::Sanitize,
    }
}

/// Credentials: the server, a gateway (another local identity in the same VM) and clients,
/// among them certificates that are not X.509-SVIDs.
fn credentials(dir: &Path) {
    let ca = MeshCa::generate("TestCorpLLC").expect("CA");
    let issue = |name: &str, spec: LeafSpec| {
        ca.issue(&spec)
            .expect("issue")
            .write_to(&dir.join(name))
            .expect("write credentials")
    };
    issue("server", LeafSpec::svid(&spiffe("demo-server")));
    issue("gateway", LeafSpec::svid(&spiffe("gateway")));
    issue("client", LeafSpec::svid(&spiffe("demo-client")));
    // The same identity in certificates of their own, which no other listener of the VM has
    // seen (and cached by digest) before.
    issue("client-fresh-1", LeafSpec::svid(&spiffe("demo-client")));
    issue("client-fresh-2", LeafSpec::svid(&spiffe("demo-client")));
    issue("other", LeafSpec::svid(&spiffe("other")));
    let mut two = LeafSpec::svid(&spiffe("other"));
    two.uris.push(spiffe("demo-client"));
    issue("two-uris", two);
    let mut none = LeafSpec::svid(&spiffe("demo-client"));
    none.uris.clear();
    none.dns = vec!["demo-client.example".into()];
    issue("no-uri", none);
}

struct Mesh {
    build: Build,
    dir: tempfile::TempDir,
    envoy: Envoy,
    _echo: Echo,
    ports: BTreeMap<&'static str, u16>,
}

impl Mesh {
    /// Every listener of `specs` with `build` of the filter; `faults` names the host call a
    /// listener's filter fails (the fault-injection build then runs).
    fn start(specs: &[Spec], build: Build, faults: impl Fn(&str) -> Option<&'static str>) -> Mesh {
        let faulty = specs.iter().any(|s| faults(s.name).is_some());
        let wasm = if faulty { filter_faults_wasm() } else { filter_wasm() };
        let dir = tempfile::tempdir().expect("temp dir");
        credentials(dir.path());
        let echo = Echo::start(Ipv4Addr::LOCALHOST, 0).expect("echo upstream");
        let ip = Ipv4Addr::LOCALHOST;
        let ports: BTreeMap<&'static str, u16> = specs.iter().map(|s| (s.name, free_port(ip))).collect();
        let listeners: Vec<Listener> = specs
            .iter()
            .map(|s| {
                let port = ports[s.name];
                let mut plugin = config(s.kind, port, s.xfcc);
                if let Some(call) = faults(s.name) {
                    let mut json: serde_json::Value = serde_json::from_str(&plugin).expect("plugin JSON");
                    json["fail_host_calls"] = serde_json::json!([call]);
                    plugin = json.to_string();
                }
                Listener {
                    name: s.name.into(),
                    ip,
                    port,
                    tls: s.tls.map(|t| dir.path().join(t)),
                    plugin_config: Some(plugin),
                    rbac_filters: None,
                    forward_client_cert: s.fcc,
                    hardened: s.hardened,
                    build,
                    faults: faulty,
                    ecds: None,
                }
            })
            .collect();
        let envoy = bootstrap::start(dir.path(), &listeners, &wasm, echo.addr().port());
        Mesh {
            build,
            dir,
            envoy,
            _echo: echo,
            ports,
        }
    }

    fn identity(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    H1,
    H2,
}

/// What an attack expects besides its status.
type Check = fn(&CurlResult) -> Result<(), String>;

/// One crafted request and what it must get.
struct Attack {
    what: &'static str,
    listener: &'static str,
    client: Option<&'static str>,
    host: &'static str,
    headers: Vec<String>,
    /// An absolute-form request target (HTTP/1.1 only).
    target: Option<&'static str>,
    status: u16,
    check: Option<Check>,
}

fn attack(what: &'static str, listener: &'static str, host: &'static str, headers: &[&str], status: u16) -> Attack {
    Attack {
        what,
        listener,
        client: Some("client"),
        host,
        headers: headers.iter().map(|h| (*h).to_owned()).collect(),
        target: None,
        status,
        check: None,
    }
}

impl Attack {
    fn from(mut self, client: Option<&'static str>) -> Attack {
        self.client = client;
        self
    }

    fn then(mut self, check: Check) -> Attack {
        self.check = Some(check);
        self
    }

    fn target(mut self, target: &'static str) -> Attack {
        self.target = Some(target);
        self
    }

    fn args(&self, mesh: &Mesh, proto: Proto) -> Vec<String> {
        let mut args: Vec<String> = Vec::new();
        let scheme = match self.client {
            Some(c) => {
                args.extend(client_cert_args(&mesh.identity(c)));
                args.push("-k".into());
                "https"
            }
            None => "http",
        };
        args.push(
            match (proto, self.client) {
                (Proto::H1, _) => "--http1.1",
                (Proto::H2, Some(_)) => "--http2",
                (Proto::H2, None) => "--http2-prior-knowledge",
            }
            .into(),
        );
        args.extend(["-H".to_owned(), format!("Host: {}", self.host)]);
        for h in &self.headers {
            args.extend(["-H".to_owned(), h.clone()]);
        }
        if let Some(t) = self.target {
            args.extend(["--request-target".to_owned(), t.to_owned()]);
        }
        args.push(format!("{scheme}://127.0.0.1:{}/get", mesh.ports[self.listener]));
        args
    }

    fn judge(&self, r: &CurlResult, proto: Proto, how: &str) -> Result<(), String> {
        let mut problems = Vec::new();
        if r.status != self.status {
            problems.push(format!("status {} (want {})", r.status, self.status));
        }
        if self.status == 403 && r.body != "RBAC: access denied" {
            problems.push(format!("deny body {:?}", r.body));
        }
        if let Some(Err(e)) = self.check.map(|c| c(r)) {
            problems.push(e);
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} [{} {proto:?} {how}]: {}\n  body: {:?}\n  curl: {}",
                self.what,
                self.listener,
                problems.join("; "),
                r.body,
                r.stderr.trim()
            ))
        }
    }
}

fn routed_to_service_test(r: &CurlResult) -> Result<(), String> {
    match r.echoed_header("x-virtual-host") {
        None => Ok(()),
        Some(v) => Err(format!("served by virtual host {v}, not service-test")),
    }
}

fn no_xfcc_upstream(r: &CurlResult) -> Result<(), String> {
    match r.echoed_headers("x-forwarded-client-cert").as_slice() {
        [] => Ok(()),
        got => Err(format!("XFCC reached the upstream: {got:?}")),
    }
}

fn by_server(r: &CurlResult) -> Result<(), String> {
    by(r, "demo-server")
}

fn by_gateway(r: &CurlResult) -> Result<(), String> {
    by(r, "gateway")
}

fn by(r: &CurlResult, sa: &str) -> Result<(), String> {
    let want = format!("By={};Hash=", spiffe(sa));
    match r.echoed_headers("x-forwarded-client-cert").as_slice() {
        [one] if one.starts_with(&want) && !one.contains("forged") => Ok(()),
        got => Err(format!("XFCC {got:?}, want one element starting {want}")),
    }
}

/// Runs every attack over both protocols: each on a fresh connection, then each listener's and
/// client's attacks twice over on one kept-alive connection. Returns every failure.
fn run(mesh: &Mesh, attacks: &[Attack]) -> Vec<String> {
    let mut failures = Vec::new();
    for proto in [Proto::H1, Proto::H2] {
        let usable: Vec<&Attack> = attacks
            .iter()
            .filter(|a| proto == Proto::H1 || a.target.is_none())
            .collect();
        for a in &usable {
            let (r, _) = curl_batch(&[a.args(mesh, proto)]).remove(0);
            failures.extend(a.judge(&r, proto, "fresh").err());
        }
        let mut groups: BTreeMap<(&str, Option<&str>), Vec<&Attack>> = BTreeMap::new();
        for a in &usable {
            groups.entry((a.listener, a.client)).or_default().push(a);
        }
        for ((_, client), group) in &groups {
            if client.is_none() && proto == Proto::H2 {
                // curl 7.88 cannot reuse an HTTP/2 prior-knowledge (h2c) connection ("Error in
                // the HTTP2 framing layer", with or without any filter): fresh ones only.
                continue;
            }
            let twice: Vec<&Attack> = group.iter().chain(group.iter()).copied().collect();
            let requests: Vec<Vec<String>> = twice.iter().map(|a| a.args(mesh, proto)).collect();
            let results = curl_batch(&requests);
            for (i, (a, (r, new_connection))) in twice.iter().zip(&results).enumerate() {
                failures.extend(a.judge(r, proto, &format!("kept-alive #{i}")).err());
                if i > 0 && *new_connection {
                    failures.push(format!("{} [{proto:?}]: request {i} opened a new connection", a.what));
                }
            }
        }
    }
    failures
}

fn assert_no_failures(mesh: &Mesh, failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} attack results were wrong ({:?} build):\n{}\n--- envoy log tail ---\n{}",
        failures.len(),
        mesh.build,
        failures.join("\n"),
        mesh.envoy
            .log_text()
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

const FORGED_SOURCES: &[&str] = &[
    "x-forwarded-for: 8.8.8.8",
    "x-forwarded-for: 8.8.8.8:4444",
    "x-forwarded-for: 10.1.2.3, 8.8.8.8",
    "x-envoy-external-address: 8.8.8.8",
    "x-real-ip: 8.8.8.8",
    "forwarded: for=8.8.8.8",
];

fn source_addresses_come_from_the_connection(build: Build) {
    let specs = [
        spec("deny-net", "deny-net", true),
        spec("deny-net-bare", "deny-net", false),
        spec("allow-ten", "allow-ten", true),
        spec("allow-ten-bare", "allow-ten", false),
        spec("allow-loopback", "allow-loopback", true),
        spec("allow-loopback-bare", "allow-loopback", false),
    ];
    let mesh = Mesh::start(&specs, build, |_| None);
    let mut attacks = vec![
        attack("DENY 127/8, no forged header", "deny-net", "service-test", &[], 403),
        attack(
            "DENY 127/8, no forged header (bare HCM)",
            "deny-net-bare",
            "service-test",
            &[],
            403,
        ),
        attack("ALLOW 127/8 from loopback", "allow-loopback", "service-test", &[], 200),
        attack(
            "ALLOW 127/8 from loopback (bare HCM)",
            "allow-loopback-bare",
            "service-test",
            &[],
            200,
        ),
    ];
    for forged in FORGED_SOURCES {
        let h = [*forged];
        attacks.push(attack(
            "DENY 127/8 evaded by a forged source header",
            "deny-net",
            "service-test",
            &h,
            403,
        ));
        attacks.push(attack("the same, bare HCM", "deny-net-bare", "service-test", &h, 403));
        attacks.push(attack(
            "ALLOW 10/8 claimed by a forged source header",
            "allow-ten",
            "service-test",
            &h,
            403,
        ));
        attacks.push(attack("the same, bare HCM", "allow-ten-bare", "service-test", &h, 403));
        // The hardened HCM ignores the header: the real (allowed) peer address decides.
        attacks.push(attack(
            "ALLOW 127/8 with a forged header",
            "allow-loopback",
            "service-test",
            &h,
            200,
        ));
    }
    // Without the documented settings Envoy takes the address from x-forwarded-for (port 0):
    // the filter refuses rather than decide from a header.
    attacks.push(attack(
        "ALLOW 127/8, bare HCM, x-forwarded-for present",
        "allow-loopback-bare",
        "service-test",
        &["x-forwarded-for: 127.0.0.1"],
        403,
    ));
    let failures = run(&mesh, &attacks);
    assert_no_failures(&mesh, &failures);
    assert!(
        mesh.envoy.log_text().contains("is not the connection's peer address"),
        "the refusal is logged"
    );
}

fn repeated_headers_and_regex_classes(build: Build) {
    let mesh = Mesh::start(&[spec("header", "header", true)], build, |_| None);
    let attacks = vec![
        attack("ticket", "header", "service-test", &["x-ticket: 42"], 200),
        attack(
            "DENY x-role admin",
            "header",
            "service-test",
            &["x-ticket: 42", "x-role: admin"],
            403,
        ),
        attack(
            "DENY evaded by sending the header twice",
            "header",
            "service-test",
            &["x-ticket: 42", "x-role: admin", "x-role: admin"],
            403,
        ),
        attack(
            "DENY evaded behind an innocent value",
            "header",
            "service-test",
            &["x-ticket: 42", "x-role: user", "x-role: admin"],
            403,
        ),
        attack(
            "\\d is ASCII: Arabic-Indic digits",
            "header",
            "service-test",
            &["x-ticket: \u{0664}\u{0662}"],
            403,
        ),
        // ALLOW sees the joined value, as Envoy's matchers do: `42,43` is not `\d+`.
        attack(
            "ALLOW on a repeated header",
            "header",
            "service-test",
            &["x-ticket: 42", "x-ticket: 43"],
            403,
        ),
        attack("no ticket", "header", "service-test", &[], 403),
    ];
    let failures = run(&mesh, &attacks);
    assert_no_failures(&mesh, &failures);
}

fn the_host_decided_is_the_host_routed(build: Build) {
    let mesh = Mesh::start(
        &[
            spec("host", "host", true),
            spec("host-bare", "host", false),
            Spec {
                tls: Some("gateway"),
                ..spec("gateway", "host", true)
            },
        ],
        build,
        |_| None,
    );
    let own_port: &'static str = Box::leak(format!("service-test:{}", mesh.ports["host"]).into_boxed_str());
    let own_port_dot: &'static str = Box::leak(format!("service-test.:{}", mesh.ports["host"]).into_boxed_str());
    let ok = |what, host| attack(what, "host", host, &[], 200).then(routed_to_service_test);
    let attacks = vec![
        ok("exact host", "service-test").then(by_server),
        ok("another port", "service-test:9999"),
        ok("the listener's own port", own_port),
        ok("trailing dot", "service-test."),
        ok("trailing dot and port", own_port_dot),
        ok("upper case", "SERVICE-TEST"),
        attack("unlisted host", "host", "other-host", &[], 403),
        attack("unlisted host with the port", "host", "other-host:9999", &[], 403),
        attack("IPv6 literal with port", "host", "[::1]:9999", &[], 403),
        attack("suffix trick", "host", "service-test.evil", &[], 403),
        attack("absolute-form target naming the host", "host", "other-host", &[], 200)
            .target("http://service-test:9999/get")
            .then(routed_to_service_test),
        attack(
            "absolute-form target naming another host",
            "host",
            "service-test",
            &[],
            403,
        )
        .target("http://other-host/get"),
        // Without the HCM settings the router matches `service-test:9999` to the catch-all:
        // the filter compares the host exactly and denies what service-test's policy never saw.
        attack("bare HCM: another port", "host-bare", "service-test:9999", &[], 403),
        attack("bare HCM: trailing dot", "host-bare", "service-test.", &[], 403),
        attack("bare HCM: upper case", "host-bare", "SERVICE-TEST", &[], 200).then(routed_to_service_test),
        // XFCC By= is the local identity of the request's own connection, in the same VM.
        attack(
            "gateway identity",
            "gateway",
            "service-test",
            &["x-forwarded-client-cert: By=forged"],
            200,
        )
        .then(by_gateway),
        attack(
            "server identity",
            "host",
            "service-test",
            &["x-forwarded-client-cert: By=forged"],
            200,
        )
        .then(by_server),
    ];
    let failures = run(&mesh, &attacks);
    assert_no_failures(&mesh, &failures);
}

fn certificates_that_are_not_svids_are_denied_and_xfcc_never_passes_from_plaintext(build: Build) {
    let plain = |name, xfcc| Spec {
        tls: None,
        xfcc,
        // The HCM keeps the client's header, so what reaches the upstream is the filter's doing.
        fcc: ForwardClientCert::AlwaysForwardOnly,
        ..spec(name, "allow-all", true)
    };
    let mesh = Mesh::start(
        &[
            spec("svid", "svid", true),
            plain("plain-sanitize", Xfcc::SanitizeSet),
            plain("plain-append", Xfcc::AppendForward),
            plain("plain-off", Xfcc::Off),
        ],
        build,
        |_| None,
    );
    let forged = "x-forwarded-client-cert: By=spiffe://evil/x;URI=spiffe://evil/admin";
    let mut attacks = vec![
        attack("an X.509-SVID", "svid", "service-test", &[], 200),
        attack("the denied identity", "svid", "service-test", &[], 403).from(Some("other")),
        attack("two URI SANs, one of them denied", "svid", "service-test", &[], 403).from(Some("two-uris")),
        attack("no URI SAN", "svid", "service-test", &[], 403).from(Some("no-uri")),
    ];
    for listener in ["plain-sanitize", "plain-append", "plain-off"] {
        attacks.push(
            attack("forged XFCC from plaintext", listener, "service-test", &[forged], 200)
                .from(None)
                .then(no_xfcc_upstream),
        );
    }
    let failures = run(&mesh, &attacks);
    assert_no_failures(&mesh, &failures);
    let log = mesh.envoy.log_text();
    assert!(
        log.contains("an X.509-SVID has exactly one"),
        "the two-SAN reason is logged"
    );
    assert!(
        log.contains("the certificate has no URI SAN"),
        "the no-SAN reason is logged"
    );
}

/// A build with the test-only `fault-injection` feature fails one host call per listener:
/// every failure denies; the connection id, which only keys a cache, does not.
fn every_failed_host_call_denies(build: Build) {
    const CALLS: &[(&str, &str)] = &[
        ("f-port", "destination.port"),
        ("f-digest", "connection.sha256_peer_certificate_digest"),
        ("f-cert", "connection.peer_certificate"),
        ("f-mtls", "connection.mtls"),
        ("f-subject", "connection.subject_peer_certificate"),
        ("f-local", "connection.uri_san_local_certificate"),
        ("f-source", "source.address"),
        ("f-headers", "request_headers"),
        ("f-set-xfcc", "set_request_header"),
        ("f-conn-id", "connection_id"),
    ];
    // DENY 10/8 (so the source address is needed) and ALLOW the client on its port.
    let guarded = |name| spec(name, "guarded", true);
    let mut specs: Vec<Spec> = CALLS.iter().map(|(name, _)| guarded(name)).collect();
    specs.push(guarded("f-none"));
    let mesh = Mesh::start(&specs, build, |name| {
        CALLS.iter().find(|(n, _)| *n == name).map(|(_, c)| *c)
    });
    let mut attacks: Vec<Attack> = CALLS
        .iter()
        .map(|(name, call)| {
            let status = if *call == "connection_id" { 200 } else { 403 };
            let a = attack(call, name, "service-test", &[], status);
            // The certificate and its subject are read once per certificate: a certificate no
            // other listener has shown makes the call happen.
            match *call {
                "connection.peer_certificate" => a.from(Some("client-fresh-1")),
                "connection.subject_peer_certificate" => a.from(Some("client-fresh-2")),
                _ => a,
            }
        })
        .collect();
    attacks.push(attack("no fault", "f-none", "service-test", &[], 200));
    let failures = run(&mesh, &attacks);
    assert_no_failures(&mesh, &failures);
    let log = mesh.envoy.log_text();
    for (_, call) in CALLS.iter().filter(|(_, c)| *c != "connection_id") {
        let line = format!("host call `{call}` failed (failed by fault injection); denying");
        assert!(log.contains(&line), "no `{line}` in the log");
    }
}

both_builds!(source_addresses_come_from_the_connection);

both_builds!(repeated_headers_and_regex_classes);

both_builds!(the_host_decided_is_the_host_routed);

both_builds!(certificates_that_are_not_svids_are_denied_and_xfcc_never_passes_from_plaintext);

both_builds!(every_failed_host_call_denies);
