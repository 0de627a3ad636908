//! The Wasm filter in a real Envoy 1.40 over real mTLS: the guide's authorization checks, XFCC
//! byte-for-byte against Envoy's own SANITIZE_SET, shadow mode, stats, configuration errors.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use meshauthz_envoy_config::ca::{LeafSpec, MeshCa};
use meshauthz_policy_compiler::compile_sources;
use meshauthz_policy_compiler::emit::{Mode, Xfcc, plugin_config};
use meshauthz_tests::bootstrap::{ForwardClientCert, Listener, bootstrap};
use meshauthz_tests::http::client_cert_args;
use meshauthz_tests::{Build, CurlResult, Echo, Envoy, curl, filter_wasm, free_port, wait_until};

use meshauthz_tests::both_builds;

const TD: &str = "my-project.svc.id.goog";

fn spiffe(sa: &str) -> String {
    format!("spiffe://{TD}/ns/default/sa/{sa}")
}

fn policy_yaml(name: &str, ports: &[u16]) -> String {
    format!(
        "name: {name}\naction: ALLOW\nrules:\n- sources:\n  - principals: [\"{}\"]\n  destinations:\n  - hosts: [service-test]\n    ports: {ports:?}\n    methods: [GET]\n",
        spiffe("demo-client")
    )
}

fn config_for(yaml: &str, mode: Mode, xfcc: Xfcc) -> String {
    let compiled = compile_sources(&[("policy.yaml".into(), yaml.into())], true).expect("test policy compiles");
    plugin_config(&compiled.table_bytes(), mode, xfcc)
}

/// A CA, credentials for the server and several clients, an echo upstream, and one Envoy.
/// Every listener's filter has the same `vm_config`, so Envoy runs them all in one VM: each
/// stream must be decided by its own listener's configuration (enforce vs shadow, XFCC modes).
struct Fixture {
    dir: tempfile::TempDir,
    envoy: Envoy,
    _echo: Echo,
    ports: Ports,
}

struct Ports {
    enforce: u16,
    /// Same filter, but a port the policy does not list.
    unlisted: u16,
    /// Envoy's own SANITIZE_SET, no filter: the XFCC reference.
    reference: u16,
    plaintext: u16,
    shadow: u16,
    /// `xfcc: append_forward` behind an HCM that forwards the client's XFCC untouched.
    append: u16,
    /// `xfcc: off`, same HCM.
    xfcc_off: u16,
}

impl Fixture {
    fn start(build: Build) -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = MeshCa::generate("TestCorpLLC").expect("CA");
        let server = dir.path().join("server");
        ca.issue(&LeafSpec::svid(&spiffe("demo-server")))
            .expect("issue")
            .write_to(&server)
            .expect("write");
        let mut client = LeafSpec::svid(&spiffe("demo-client"));
        client.common_name = Some("demo-client, \"quoted\"".into());
        client.dns = vec!["client.example".into(), "client2.example".into()];
        ca.issue(&client)
            .expect("issue")
            .write_to(&dir.path().join("client"))
            .expect("write");
        ca.issue(&LeafSpec::svid(&spiffe("other")))
            .expect("issue")
            .write_to(&dir.path().join("other"))
            .expect("write");
        let mut two = LeafSpec::svid(&spiffe("demo-client"));
        two.uris.push(spiffe("demo-server"));
        ca.issue(&two)
            .expect("issue")
            .write_to(&dir.path().join("two-uris"))
            .expect("write");

        let echo = Echo::start(Ipv4Addr::LOCALHOST, 0).expect("echo upstream");
        let ip = Ipv4Addr::LOCALHOST;
        let ports = Ports {
            enforce: free_port(ip),
            unlisted: free_port(ip),
            reference: free_port(ip),
            plaintext: free_port(ip),
            shadow: free_port(ip),
            append: free_port(ip),
            xfcc_off: free_port(ip),
        };
        let enforce = config_for(
            &policy_yaml("authz-policy", &[ports.enforce, ports.plaintext]),
            Mode::Enforce,
            Xfcc::SanitizeSet,
        );
        let forward_ports = [ports.append, ports.xfcc_off];
        let append = config_for(
            &policy_yaml("authz-append", &forward_ports),
            Mode::Enforce,
            Xfcc::AppendForward,
        );
        let off = config_for(&policy_yaml("authz-off", &forward_ports), Mode::Enforce, Xfcc::Off);
        let shadow = config_for(
            &policy_yaml("authz-shadow", &[ports.shadow]),
            Mode::Shadow,
            Xfcc::SanitizeSet,
        );
        let listener = |name: &str, port, tls: bool, config: Option<&String>, fcc| Listener {
            name: name.into(),
            ip,
            port,
            rbac_filters: None,
            tls: tls.then(|| server.clone()),
            plugin_config: config.cloned(),
            forward_client_cert: fcc,
            hardened: true,
            build,
            faults: false,
            ecds: None,
        };
        let listeners = [
            listener(
                "enforce",
                ports.enforce,
                true,
                Some(&enforce),
                ForwardClientCert::Sanitize,
            ),
            listener(
                "unlisted",
                ports.unlisted,
                true,
                Some(&enforce),
                ForwardClientCert::Sanitize,
            ),
            listener("reference", ports.reference, true, None, ForwardClientCert::SanitizeSet),
            listener(
                "plaintext",
                ports.plaintext,
                false,
                Some(&enforce),
                ForwardClientCert::Sanitize,
            ),
            listener("shadow", ports.shadow, true, Some(&shadow), ForwardClientCert::Sanitize),
            listener(
                "append",
                ports.append,
                true,
                Some(&append),
                ForwardClientCert::ForwardOnly,
            ),
            listener(
                "xfcc-off",
                ports.xfcc_off,
                true,
                Some(&off),
                ForwardClientCert::ForwardOnly,
            ),
        ];
        let envoy = meshauthz_tests::bootstrap::start(dir.path(), &listeners, &filter_wasm(), echo.addr().port());
        Fixture {
            dir,
            envoy,
            _echo: echo,
            ports,
        }
    }

    fn identity(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// curl over mTLS as `client` (a credentials directory name), with extra arguments.
    fn request(&self, client: Option<&str>, port: u16, host: &str, extra: &[&str]) -> CurlResult {
        let mut args: Vec<String> = Vec::new();
        let scheme = match client {
            Some(c) => {
                args.extend(client_cert_args(&self.identity(c)));
                args.push("-k".into());
                "https"
            }
            None => "http",
        };
        args.extend(["-H".to_owned(), format!("Host: {host}")]);
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(format!("{scheme}://127.0.0.1:{port}/get"));
        curl(&args)
    }
}

fn assert_denied(r: &CurlResult, what: &str) {
    assert_eq!(r.status, 403, "{what}: {r:?}");
    assert_eq!(r.body, "RBAC: access denied", "{what}");
}

fn guide_policy_is_enforced_over_mtls(build: Build) {
    let f = Fixture::start(build);
    let p = f.ports.enforce;
    let ok = f.request(Some("client"), p, "service-test", &[]);
    assert_eq!(ok.status, 200, "allowed GET: {ok:?}\n{}", f.envoy.log_text());
    assert!(ok.body.starts_with("GET /get HTTP/1.1\n"), "{}", ok.body);
    let xfcc = ok
        .echoed_header("x-forwarded-client-cert")
        .expect("XFCC reaches the upstream");
    assert!(
        xfcc.starts_with(&format!("By={};Hash=", spiffe("demo-server"))),
        "{xfcc}"
    );
    assert!(
        xfcc.contains(&format!(
            ";URI={};DNS=client.example;DNS=client2.example",
            spiffe("demo-client")
        )),
        "{xfcc}"
    );

    let post = f.request(Some("client"), p, "service-test", &["-X", "POST", "-d", ""]);
    assert_denied(&post, "POST");
    // Structured decision log at debug level (the harness runs Envoy with wasm:debug). The POST
    // fails on its method, so the port was never fetched (`-`).
    let line = format!(
        "meshauthz: decision=deny mode=Enforce policy=none rule=none principal={} host=service-test port=- method=POST",
        spiffe("demo-client")
    );
    assert!(f.envoy.log_text().contains(&line), "no `{line}` in the log");
    let denied = f.request(Some("client"), p, "service-test", &["-X", "POST", "-d", "", "-D", "-"]);
    assert!(
        denied.body.to_ascii_lowercase().contains("content-type: text/plain"),
        "{}",
        denied.body
    );

    let head = f.request(Some("client"), p, "service-test", &["-I"]);
    assert_eq!(head.status, 403, "HEAD: {head:?}");

    assert_denied(
        &f.request(Some("other"), p, "service-test", &[]),
        "another service account",
    );
    for host in ["service-test:8000", "SERVICE-TEST", "service-test."] {
        assert_eq!(f.request(Some("client"), p, host, &[]).status, 200, "host {host}");
    }
    assert_denied(&f.request(Some("client"), p, "other-host", &[]), "unlisted host");
    assert_denied(
        &f.request(Some("client"), f.ports.unlisted, "service-test", &[]),
        "unlisted port",
    );
    assert_denied(
        &f.request(None, f.ports.plaintext, "service-test", &[]),
        "plaintext has no principal",
    );

    let two = f.request(Some("two-uris"), p, "service-test", &[]);
    assert_denied(&two, "certificate with two URI SANs");
    assert!(
        f.envoy.log_text().contains("an X.509-SVID has exactly one"),
        "the log says why"
    );
}

fn xfcc_is_byte_identical_to_envoy_sanitize_set_and_spoofing_is_dropped(build: Build) {
    let f = Fixture::start(build);
    let spoof = format!("By=spiffe://evil/x;URI={}", spiffe("admin"));
    let ours = f.request(
        Some("client"),
        f.ports.enforce,
        "service-test",
        &["-H", &format!("x-forwarded-client-cert: {spoof}")],
    );
    let envoys = f.request(Some("client"), f.ports.reference, "service-test", &[]);
    assert_eq!(ours.status, 200, "{ours:?}");
    assert_eq!(envoys.status, 200, "{envoys:?}");
    let ours = ours.echoed_headers("x-forwarded-client-cert");
    let envoys = envoys.echoed_headers("x-forwarded-client-cert");
    assert_eq!(ours.len(), 1, "exactly one XFCC reaches the upstream: {ours:?}");
    assert_eq!(ours, envoys, "filter XFCC vs Envoy SANITIZE_SET");
    assert!(!ours[0].contains("evil"));
}

fn xfcc_append_forward_and_off(build: Build) {
    let f = Fixture::start(build);
    let previous = "By=spiffe://td/ns/x/sa/edge;URI=spiffe://td/ns/x/sa/origin";
    let header = format!("x-forwarded-client-cert: {previous}");
    let reference = f.request(Some("client"), f.ports.reference, "service-test", &[]);
    let ours = reference
        .echoed_header("x-forwarded-client-cert")
        .expect("Envoy's own element")
        .to_owned();
    let appended = f.request(Some("client"), f.ports.append, "service-test", &["-H", &header]);
    assert_eq!(
        appended.echoed_headers("x-forwarded-client-cert"),
        vec![format!("{previous},{ours}")]
    );
    let first_hop = f.request(Some("client"), f.ports.append, "service-test", &[]);
    assert_eq!(first_hop.echoed_headers("x-forwarded-client-cert"), vec![ours.clone()]);
    let off = f.request(Some("client"), f.ports.xfcc_off, "service-test", &["-H", &header]);
    assert_eq!(
        off.echoed_headers("x-forwarded-client-cert"),
        vec![previous.to_owned()],
        "off leaves the header alone"
    );
}

fn shadow_mode_counts_but_never_denies_and_stats_are_visible(build: Build) {
    let f = Fixture::start(build);
    let post = f.request(
        Some("client"),
        f.ports.shadow,
        "service-test",
        &["-X", "POST", "-d", ""],
    );
    assert_eq!(post.status, 200, "shadow mode lets a denied request through: {post:?}");
    assert!(post.echoed_header("x-forwarded-client-cert").is_some());
    assert_eq!(
        f.request(Some("client"), f.ports.shadow, "service-test", &[]).status,
        200
    );
    assert_denied(
        &f.request(Some("other"), f.ports.enforce, "service-test", &[]),
        "enforce",
    );
    assert_eq!(
        f.request(Some("client"), f.ports.enforce, "service-test", &[]).status,
        200
    );
    // Wasm counters reach Envoy on the filter's flush timer (250 ms): wait for them, bounded.
    // The native filter's are Envoy counters already: they must be there at once.
    let prefix = build.counter_prefix();
    let want = [
        ("meshauthz.shadow_denied", 1),
        ("meshauthz.denied", 1),
        // allowed: the shadow listener's two requests and the enforce listener's one.
        ("meshauthz.allowed", 3),
        ("meshauthz.policy.authz-policy.allowed", 1),
        ("meshauthz.policy.authz-shadow.allowed", 1),
    ];
    let counters = || {
        want.iter()
            .map(|(name, _)| f.envoy.counter(&format!("{prefix}{name}")).unwrap_or(0))
            .collect::<Vec<u64>>()
    };
    let limit = match build {
        Build::Wasm => 5,
        Build::Native => 0,
    };
    wait_until(
        std::time::Duration::from_secs(limit),
        || counters().iter().zip(&want).all(|(g, (_, w))| g == w),
        || {
            format!(
                "counters {:?}, want {want:?}\n{:?}",
                counters(),
                f.envoy.admin_get("/stats?filter=meshauthz")
            )
        },
    );
}

fn refuses(build: Build, plugin_config: &str, expect_in_log: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let l = Listener {
        name: "bad".into(),
        ip: Ipv4Addr::LOCALHOST,
        rbac_filters: None,
        port: free_port(Ipv4Addr::LOCALHOST),
        tls: None,
        plugin_config: Some(plugin_config.into()),
        forward_client_cert: ForwardClientCert::Sanitize,
        hardened: true,
        build,
        faults: false,
        ecds: None,
    };
    let admin = free_port(Ipv4Addr::LOCALHOST);
    let path = dir.path().join("envoy.yaml");
    std::fs::write(&path, bootstrap(admin, &[l], &filter_wasm(), 9)).expect("write");
    let (code, log) = Envoy::wait_exit(&path, &dir.path().join("envoy.log"), std::time::Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("Envoy accepted an invalid configuration: {e}"));
    assert_ne!(code, 0, "{log}");
    assert!(log.contains(expect_in_log), "log lacks {expect_in_log:?}:\n{log}");
}

fn invalid_plugin_configuration_is_refused(build: Build) {
    refuses(
        build,
        "{\"table\": \"dGhpcyBpcyBub3QgYSBtZXNoYXV0aHogdGFibGU=\"}",
        "meshauthz: rejecting configuration: plugin configuration `table`: invalid table: not a meshauthz table",
    );
    refuses(
        build,
        "{\"tabel\": \"\"}",
        "meshauthz: rejecting configuration: plugin configuration is not valid JSON",
    );
    refuses(build, "", "meshauthz: rejecting configuration: no plugin configuration");
    // The release filter has no fault injection: the test-only key is an unknown key.
    let mut valid: serde_json::Value = serde_json::from_str(&config_for(
        &policy_yaml("p", &[8000]),
        Mode::Enforce,
        Xfcc::SanitizeSet,
    ))
    .expect("json");
    valid["fail_host_calls"] = serde_json::json!(["source.address"]);
    refuses(
        build,
        &valid.to_string(),
        "meshauthz: rejecting configuration: plugin configuration is not valid JSON for this filter: unknown field `fail_host_calls`",
    );
}

/// A new table arrives through a listener update (file-based LDS) while a client keeps sending
/// requests: every request gets a clean 200 or 403, and the new policy takes over without a
/// restart.
fn policy_update_applies_while_requests_flow(build: Build) {
    use meshauthz_tests::bootstrap::{bootstrap_with_file_lds, lds_yaml};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    let dir = tempfile::tempdir().expect("temp dir");
    let ca = MeshCa::generate("TestCorpLLC").expect("CA");
    let server = dir.path().join("server");
    ca.issue(&LeafSpec::svid(&spiffe("demo-server")))
        .expect("issue")
        .write_to(&server)
        .expect("write");
    let client = dir.path().join("client");
    ca.issue(&LeafSpec::svid(&spiffe("demo-client")))
        .expect("issue")
        .write_to(&client)
        .expect("write");
    let echo = Echo::start(Ipv4Addr::LOCALHOST, 0).expect("echo");
    let port = free_port(Ipv4Addr::LOCALHOST);
    let listener_with = |method: &str| {
        let yaml = policy_yaml("authz-policy", &[port]).replace("methods: [GET]", &format!("methods: [{method}]"));
        Listener {
            name: "inbound".into(),
            ip: Ipv4Addr::LOCALHOST,
            rbac_filters: None,
            port,
            tls: Some(server.clone()),
            plugin_config: Some(config_for(&yaml, Mode::Enforce, Xfcc::SanitizeSet)),
            forward_client_cert: ForwardClientCert::Sanitize,
            hardened: true,
            build,
            faults: false,
            ecds: None,
        }
    };
    let lds = dir.path().join("lds").join("lds.yaml");
    std::fs::create_dir_all(lds.parent().expect("parent")).expect("mkdir");
    let publish = |l: Listener| {
        let tmp = lds.with_extension("tmp");
        std::fs::write(&tmp, lds_yaml(&[l], &filter_wasm())).expect("write lds");
        std::fs::rename(&tmp, &lds).expect("rename lds");
    };
    publish(listener_with("GET"));
    let admin = free_port(Ipv4Addr::LOCALHOST);
    let boot = dir.path().join("envoy.yaml");
    std::fs::write(&boot, bootstrap_with_file_lds(admin, &lds, echo.addr().port())).expect("write");
    let envoy = Envoy::start(
        &boot,
        (Ipv4Addr::LOCALHOST, admin).into(),
        &dir.path().join("envoy.log"),
    )
    .unwrap_or_else(|e| panic!("{e}"));

    let args = |method: &str| {
        let mut a = client_cert_args(&client);
        a.extend(["-k", "-X", method, "-H", "Host: service-test"].map(String::from));
        a.push(format!("https://127.0.0.1:{port}/get"));
        a
    };
    // Wait (bounded) for the LDS listener to serve.
    wait_until(
        Duration::from_secs(30),
        || curl(&args("GET")).status == 200,
        || format!("listener never served:\n{}", envoy.log_text()),
    );

    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let (get_args, post_args) = (args("GET"), args("POST"));
    let load = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for i in 0..2000 {
            if flag.load(Ordering::SeqCst) {
                break;
            }
            let r = curl(if i % 2 == 0 { &get_args } else { &post_args });
            seen.push((r.status, r.exit));
        }
        seen
    });
    std::thread::sleep(Duration::from_millis(500));
    publish(listener_with("POST"));
    wait_until(
        Duration::from_secs(30),
        || curl(&args("GET")).status == 403,
        || format!("the new policy never took effect:\n{}", envoy.log_text()),
    );
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    let seen = load.join().expect("load thread");
    assert!(seen.len() >= 4, "the load ran: {seen:?}");
    let bad: Vec<_> = seen
        .iter()
        .filter(|(status, _)| *status != 200 && *status != 403)
        .collect();
    assert!(bad.is_empty(), "requests failed during the update: {bad:?}");
    assert_eq!(curl(&args("POST")).status, 200, "new policy allows POST");
    assert_eq!(curl(&args("GET")).status, 403, "new policy denies GET");
}

both_builds!(guide_policy_is_enforced_over_mtls);

both_builds!(xfcc_is_byte_identical_to_envoy_sanitize_set_and_spoofing_is_dropped);

both_builds!(xfcc_append_forward_and_off);

both_builds!(shadow_mode_counts_but_never_denies_and_stats_are_visible);

both_builds!(invalid_plugin_configuration_is_refused);

both_builds!(policy_update_applies_while_requests_flow);

/// A panic inside the native filter never crosses into Envoy: the request that panicked gets
/// a 500 and Envoy goes on serving (the test-only fault-injection build panics on a marked
/// request).
#[test]
fn a_panic_in_the_native_filter_is_contained() {
    let dir = tempfile::tempdir().expect("temp dir");
    let echo = Echo::start(Ipv4Addr::LOCALHOST, 0).expect("echo");
    let port = free_port(Ipv4Addr::LOCALHOST);
    let allow_all = config_for("name: all\naction: ALLOW\n", Mode::Enforce, Xfcc::SanitizeSet);
    let l = Listener {
        name: "panics".into(),
        ip: Ipv4Addr::LOCALHOST,
        port,
        tls: None,
        plugin_config: Some(allow_all),
        rbac_filters: None,
        forward_client_cert: ForwardClientCert::Sanitize,
        hardened: true,
        build: Build::Native,
        faults: true,
        ecds: None,
    };
    let envoy = meshauthz_tests::bootstrap::start(dir.path(), &[l], &filter_wasm(), echo.addr().port());
    let url = format!("http://127.0.0.1:{port}/get");
    let get = |extra: &[&str]| {
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        args.push(url.clone());
        curl(&args)
    };
    assert_eq!(get(&[]).status, 200, "{}", envoy.log_text());
    let panicked = get(&["-H", "x-meshauthz-test-panic: 1"]);
    assert_eq!(panicked.status, 500, "{panicked:?}");
    assert_eq!(panicked.body, "meshauthz: internal error");
    for _ in 0..3 {
        assert_eq!(get(&[]).status, 200, "Envoy keeps serving after a contained panic");
    }
    assert!(
        envoy
            .log_text()
            .contains("panic while deciding a request; answered 500")
    );
}

/// Policy delivered over ECDS (`policy-compiler compile --emit ecds`; the HCM's
/// `config_discovery` watches the file): until a valid configuration arrives, requests are
/// answered 500, never let through; while clients keep sending on kept-alive connections, a new
/// policy replaces the old without a restart and without a failed or unchecked request; a broken
/// update is rejected (`update_rejected`) and the old table keeps deciding.
fn policy_update_over_ecds_while_requests_flow(build: Build) {
    use meshauthz_tests::bootstrap::ecds_file;
    use meshauthz_tests::http::curl_batch;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    let dir = tempfile::tempdir().expect("temp dir");
    let ca = MeshCa::generate("TestCorpLLC").expect("CA");
    let (server, client) = (dir.path().join("server"), dir.path().join("client"));
    for (path, sa) in [(&server, "demo-server"), (&client, "demo-client")] {
        ca.issue(&LeafSpec::svid(&spiffe(sa)))
            .expect("issue")
            .write_to(path)
            .expect("write");
    }
    let echo = Echo::start(Ipv4Addr::LOCALHOST, 0).expect("echo");
    let port = free_port(Ipv4Addr::LOCALHOST);
    let ecds = dir.path().join("ecds").join("meshauthz.yaml");
    std::fs::create_dir_all(ecds.parent().expect("parent")).expect("mkdir");
    let publish = |content: String| {
        let tmp = ecds.with_extension("tmp");
        std::fs::write(&tmp, content).expect("write ecds");
        std::fs::rename(&tmp, &ecds).expect("rename ecds");
    };
    let allowing = |method: &str| {
        let yaml = policy_yaml("authz-policy", &[port]).replace("methods: [GET]", &format!("methods: [{method}]"));
        ecds_file(build, &config_for(&yaml, Mode::Enforce, Xfcc::SanitizeSet))
    };
    let broken = ecds_file(build, r#"{"table": "bm90IGEgdGFibGU="}"#);
    // The first configuration Envoy sees is broken: the policy never arrived.
    publish(broken.clone());
    let l = Listener {
        name: "inbound".into(),
        ip: Ipv4Addr::LOCALHOST,
        port,
        tls: Some(server.clone()),
        plugin_config: None,
        rbac_filters: None,
        forward_client_cert: ForwardClientCert::Sanitize,
        hardened: true,
        build,
        faults: false,
        ecds: Some(ecds.clone()),
    };
    let envoy = meshauthz_tests::bootstrap::start(dir.path(), &[l], &filter_wasm(), echo.addr().port());
    let args = |method: &str| {
        let mut a = client_cert_args(&client);
        a.extend(["-k", "-X", method, "-H", "Host: service-test"].map(String::from));
        a.push(format!("https://127.0.0.1:{port}/get"));
        a
    };
    let missing = curl(&args("GET"));
    assert_eq!(
        missing.status,
        500,
        "no valid configuration yet: {missing:?}\n{}",
        envoy.log_text()
    );
    let rejected = |envoy: &Envoy| {
        envoy
            .counter("extension_config_discovery.http_filter.meshauthz.update_rejected")
            .unwrap_or(0)
    };
    assert!(rejected(&envoy) >= 1, "the broken configuration was rejected");

    publish(allowing("GET"));
    wait_until(
        Duration::from_secs(15),
        || curl(&args("GET")).status == 200,
        || format!("the first policy never took effect:\n{}", envoy.log_text()),
    );
    // Clients on kept-alive connections, alternating GET and POST, all through the update.
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let batch: Vec<Vec<String>> = (0..40).map(|i| args(if i % 2 == 0 { "GET" } else { "POST" })).collect();
    let load = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for _ in 0..200 {
            if flag.load(Ordering::SeqCst) {
                break;
            }
            seen.extend(curl_batch(&batch).into_iter().map(|(r, _)| r.status));
        }
        seen
    });
    std::thread::sleep(Duration::from_millis(300));
    publish(allowing("POST"));
    wait_until(
        Duration::from_secs(15),
        || curl(&args("GET")).status == 403,
        || format!("the new policy never took effect:\n{}", envoy.log_text()),
    );
    let before = rejected(&envoy);
    publish(broken);
    wait_until(
        Duration::from_secs(15),
        || rejected(&envoy) > before,
        || format!("the broken update was never rejected:\n{}", envoy.log_text()),
    );
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    let seen = load.join().expect("load thread");
    assert!(seen.len() >= 40, "the load ran: {} requests", seen.len());
    let bad: Vec<_> = seen.iter().filter(|s| **s != 200 && **s != 403).collect();
    assert!(bad.is_empty(), "requests failed during the updates: {bad:?}");
    assert_eq!(curl(&args("POST")).status, 200, "the last valid policy still decides");
    assert_eq!(curl(&args("GET")).status, 403, "the last valid policy still decides");
    assert!(
        envoy.log_text().contains("meshauthz: rejecting configuration"),
        "the filter says why it refused the update"
    );
}

both_builds!(policy_update_over_ecds_while_requests_flow);
