//! Attacks on an Istio policy in a real Envoy 1.40, both builds, over HTTP/1.1 and HTTP/2, each
//! request sent twice on one kept-alive connection: the requests an attacker sends to reach a
//! path a DENY forbids, to use a host or method an ALLOW does not name, or to get by without a
//! certificate. The HCM is Istio's sidecar model (the host keeps its port, `normalize_path`).
//!
//! `remoteIpBlocks` match the address the HCM settled on: with this project's HCM (no trusted
//! hops) the peer, whatever `x-forwarded-for` says.
//!
//! Where meshauthz denies what Istio's own RBAC lets through (SEMANTICS.md, "Istio input"): a
//! DENY's path also holds on the percent-decoded and the slash-merged path, so `/%61dmin` and
//! `//admin` are denied like `/admin` whatever the backend does with them.

use std::net::Ipv4Addr;

use meshauthz_envoy_config::ca::{LeafSpec, MeshCa};
use meshauthz_policy_compiler::emit::{Mode, Xfcc, plugin_config};
use meshauthz_policy_compiler::{CompileOptions, IstioOptions, compile_sources_with};
use meshauthz_tests::bootstrap::{ForwardClientCert, Listener, start_built};
use meshauthz_tests::http::{client_cert_args, curl_batch};
use meshauthz_tests::{Build, Echo, both_builds, filter_wasm, free_port};

const POLICY: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: foo}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin", "/admin/*"]}}]
  - from: [{source: {remoteIpBlocks: ["127.0.0.2/32", "8.8.8.8"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-client, namespace: foo}
spec:
  selector: {matchLabels: {app: service-test}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/foo/sa/client"]}}]
    to: [{operation: {hosts: ["service-test", "service-test:*"], methods: ["GET"]}}]
"#;

fn istio_policies_hold_against_path_host_and_method_tricks(build: Build) {
    let dir = tempfile::tempdir().expect("tmp");
    let ca = MeshCa::generate("TestCorpLLC").expect("ca");
    let (server, client) = (dir.path().join("server"), dir.path().join("client"));
    for (id, to) in [("server", &server), ("client", &client)] {
        ca.issue(&LeafSpec::svid(&format!("spiffe://cluster.local/ns/foo/sa/{id}")))
            .and_then(|c| c.write_to(to))
            .expect("certificate");
    }
    let options = CompileOptions {
        istio: IstioOptions {
            namespace: Some("foo".into()),
            labels: vec![("app".into(), "service-test".into())],
            ..IstioOptions::default()
        },
        ..CompileOptions::default()
    };
    let compiled = compile_sources_with(&[("attack.yaml".into(), POLICY.into())], &options).expect("compiles");
    let echo = Echo::start(Ipv4Addr::LOCALHOST, 0).expect("echo");
    let (tls_port, plain_port) = (free_port(Ipv4Addr::LOCALHOST), free_port(Ipv4Addr::LOCALHOST));
    let listeners = [(tls_port, true), (plain_port, false)].map(|(port, tls)| {
        Listener {
            name: format!("l{port}"),
            ip: Ipv4Addr::LOCALHOST,
            port,
            tls: tls.then(|| server.clone()),
            plugin_config: Some(plugin_config(&compiled.table_bytes(), Mode::Enforce, Xfcc::SanitizeSet)),
            rbac_filters: None,
            forward_client_cert: ForwardClientCert::Sanitize,
            hardened: true,
            build,
            faults: false,
            ecds: None,
        }
        .build_istio(&filter_wasm(), None)
    });
    let envoy = start_built(dir.path(), listeners.to_vec(), echo.addr().port());

    // (method, host, path as sent, expected status)
    let cases: &[(&str, &str, &str, u16)] = &[
        ("GET", "service-test", "/public", 200),
        ("GET", "service-test", "/admin", 403),
        ("GET", "service-test", "/admin?role=user", 403),
        ("GET", "service-test", "/admin/", 403),
        ("GET", "service-test", "/admin/users", 403),
        ("GET", "service-test", "/public/../admin", 403),
        ("GET", "service-test", "/./admin", 403),
        ("GET", "service-test", "/%61dmin", 403),
        ("GET", "service-test", "/%2Fadmin", 403),
        ("GET", "service-test", "//admin", 403),
        ("GET", "service-test", "///admin//users", 403),
        // Paths are case-sensitive (Istio's meaning): a different resource.
        ("GET", "service-test", "/ADMIN", 200),
        ("GET", "service-test", "/administrator", 200),
        // Hosts: case-insensitive, the port kept and matched by `service-test:*`.
        ("GET", "SERVICE-TEST", "/public", 200),
        ("GET", "service-test:9999", "/public", 200),
        ("GET", "other-host", "/public", 403),
        ("GET", "service-test.evil", "/public", 403),
        ("GET", "service-test.", "/public", 403),
        ("POST", "service-test", "/public", 403),
    ];
    for http2 in [false, true] {
        let batch: Vec<Vec<String>> = cases
            .iter()
            .flat_map(|&(method, host, target, _)| {
                let mut a = vec!["--path-as-is".to_owned(), "-X".into(), method.into()];
                a.extend(["-H".into(), format!("Host: {host}")]);
                a.extend(client_cert_args(&client));
                a.extend(["-k".into(), if http2 { "--http2" } else { "--http1.1" }.into()]);
                a.push(format!("https://127.0.0.1:{tls_port}{target}"));
                [a.clone(), a]
            })
            .collect();
        let results = curl_batch(&batch);
        for (i, (method, host, target, want)) in cases.iter().enumerate() {
            for (res, _) in &results[2 * i..2 * i + 2] {
                assert_eq!(
                    res.status,
                    *want,
                    "{build:?} http2={http2}: {method} {target} Host: {host}\n{}",
                    envoy.log_text()
                );
            }
        }
        // remoteIpBlocks: the address the HCM settled on. This HCM trusts no hop, so a forged
        // `x-forwarded-for` changes nothing, and the peer 127.0.0.2 is denied.
        let remote = |interface: &str, xff: Option<&str>| {
            let mut a = vec![
                "--interface".to_owned(),
                interface.into(),
                "-H".into(),
                "Host: service-test".into(),
            ];
            if let Some(x) = xff {
                a.extend(["-H".into(), format!("x-forwarded-for: {x}")]);
            }
            a.extend(client_cert_args(&client));
            a.extend(["-k".into(), if http2 { "--http2" } else { "--http1.1" }.into()]);
            a.push(format!("https://127.0.0.1:{tls_port}/public"));
            curl_batch(&[a])[0].0.status
        };
        assert_eq!(
            remote("127.0.0.1", Some("8.8.8.8")),
            200,
            "{build:?}: a forged XFF is not the remote"
        );
        assert_eq!(remote("127.0.0.2", None), 403, "{build:?}: the peer is the remote");
        // Without a certificate nothing is the client's.
        let plain = curl_batch(&[vec![
            "--http1.1".into(),
            "-H".into(),
            "Host: service-test".into(),
            format!("http://127.0.0.1:{plain_port}/public"),
        ]]);
        assert_eq!(plain[0].0.status, 403, "{build:?}: plaintext");
    }
}

both_builds!(istio_policies_hold_against_path_host_and_method_tricks);
