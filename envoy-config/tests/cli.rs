//! envoy-config as a user runs it: the CA, the doctor on good and broken credentials, and
//! the generator's errors on bad input (file and field named, nothing written).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use meshauthz_envoy_config::ca::{CaError, KeyAlgorithm, LeafSpec, MeshCa, WorkloadCertificateConfig};
use meshauthz_envoy_config::doctor::{Expectations, examine};
use meshauthz_envoy_config::guide::final_step;
use time::{Duration, OffsetDateTime};

fn cli(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_envoy-config"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("envoy-config runs")
}

fn guide() -> PathBuf {
    meshauthz_envoy_config::guide::dir()
}

fn failing_checks(dir: &Path, expect: &Expectations) -> Vec<(String, String)> {
    examine(dir, expect)
        .into_iter()
        .filter(|c| !c.ok)
        .map(|c| (c.name.to_owned(), c.detail))
        .collect()
}

#[test]
fn ca_hierarchy_keys_and_issue() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = cli(&["ca", "init", "--dir", "ca"], tmp.path());
    assert!(out.status.success(), "{out:?}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for key in ["ca/root.key", "ca/issuing.key"] {
            let mode = std::fs::metadata(tmp.path().join(key))
                .expect("key")
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o600, "{key}");
        }
    }
    // Path lengths as the guide's CA Service pools: root 1, issuing 0.
    for (file, want) in [("ca/root.pem", "pathlen:1"), ("ca/issuing.pem", "pathlen:0")] {
        let text = Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(tmp.path().join(file))
            .output()
            .expect("openssl");
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(text.contains("CA:TRUE") && text.contains(want), "{file}: {text}");
        assert!(
            text.contains("prime256v1") || text.contains("P-256"),
            "{file} is ECDSA P-256"
        );
    }
    std::fs::write(
        tmp.path().join("wcc.yaml"),
        "apiVersion: security.cloud.google.com/v1\nkind: WorkloadCertificateConfig\nmetadata: {name: default}\nspec:\n  keyAlgorithm:\n    rsa: {modulusSize: 2048}\n  validityDurationSeconds: 3600\n  rotationWindowPercentage: 50\n",
    )
    .expect("write");
    let id = "spiffe://my-project.svc.id.goog/ns/default/sa/demo-client";
    let out = cli(
        &[
            "ca",
            "issue",
            "--ca",
            "ca",
            "--config",
            "wcc.yaml",
            "--spiffe-id",
            id,
            "--out",
            "client",
        ],
        tmp.path(),
    );
    assert!(out.status.success(), "{out:?}");
    let out = cli(
        &["doctor", "client", "--trust-domain", "my-project.svc.id.goog"],
        tmp.path(),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    // An RSA workload key from an ECDSA issuing CA: the guide's key-family check fails.
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("ok   key algorithm: RSA 2048"), "{text}");
    assert!(
        text.contains("FAIL key family: RSA workload key but the issuing CA uses ECDSA"),
        "{text}"
    );
    assert!(text.contains(&format!("ok   SPIFFE ID: {id}")), "{text}");
    assert!(
        text.contains("ok   chain: 2 certificate(s) verify to `CN=pkcs2-ca, O=TestCorpLLC`"),
        "{text}"
    );
    // Not due for rotation yet (valid for an hour, rotates at half).
    let out = cli(
        &["ca", "rotate", "--ca", "ca", "--config", "wcc.yaml", "client"],
        tmp.path(),
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("not due until"),
        "{out:?}"
    );
}

#[test]
fn doctor_finds_what_is_broken() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ca = MeshCa::generate("TestCorpLLC").expect("ca");
    let id = "spiffe://my-project.svc.id.goog/ns/default/sa/demo-server";
    let expect = Expectations {
        trust_domain: Some("my-project.svc.id.goog".into()),
        ..Expectations::default()
    };
    let good = tmp.path().join("good");
    ca.issue(&LeafSpec::svid(id))
        .expect("issue")
        .write_to(&good)
        .expect("write");
    assert_eq!(
        failing_checks(&good, &expect),
        vec![],
        "healthy credentials pass every check"
    );

    let expired = tmp.path().join("expired");
    let mut spec = LeafSpec::svid(id);
    spec.not_before = OffsetDateTime::now_utc() - Duration::days(3);
    ca.issue(&spec).expect("issue").write_to(&expired).expect("write");
    let f = failing_checks(&expired, &expect);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].0, "validity");
    assert!(f[0].1.starts_with("expired: notAfter"), "{f:?}");

    let future = tmp.path().join("future");
    let mut spec = LeafSpec::svid(id);
    spec.not_before = OffsetDateTime::now_utc() + Duration::hours(2);
    ca.issue(&spec).expect("issue").write_to(&future).expect("write");
    assert!(failing_checks(&future, &expect)[0].1.starts_with("not yet valid"));

    let other_domain = tmp.path().join("other-domain");
    ca.issue(&LeafSpec::svid("spiffe://other.example/ns/a/sa/b"))
        .expect("issue")
        .write_to(&other_domain)
        .expect("write");
    let f = failing_checks(&other_domain, &expect);
    assert_eq!(
        f,
        vec![(
            "SPIFFE ID".into(),
            "spiffe://other.example/ns/a/sa/b is in trust domain other.example, expected my-project.svc.id.goog".into()
        )]
    );

    let two = tmp.path().join("two-uris");
    let mut spec = LeafSpec::svid(id);
    spec.uris.push("spiffe://my-project.svc.id.goog/ns/default/sa/x".into());
    ca.issue(&spec).expect("issue").write_to(&two).expect("write");
    assert!(failing_checks(&two, &expect)[0].1.contains("2 URI SANs"));

    let wrong_ca = tmp.path().join("wrong-ca");
    ca.issue(&LeafSpec::svid(id))
        .expect("issue")
        .write_to(&wrong_ca)
        .expect("write");
    let stranger = MeshCa::generate("Elsewhere").expect("ca");
    std::fs::write(wrong_ca.join("ca_certificates.pem"), stranger.root_pem()).expect("write");
    let f = failing_checks(&wrong_ca, &expect);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].0, "chain");

    let wrong_key = tmp.path().join("wrong-key");
    ca.issue(&LeafSpec::svid(id))
        .expect("issue")
        .write_to(&wrong_key)
        .expect("write");
    let other = ca.issue(&LeafSpec::svid(id)).expect("issue");
    std::fs::write(wrong_key.join("private_key.pem"), other.private_key).expect("write");
    assert_eq!(failing_checks(&wrong_key, &expect)[0].0, "private key");

    // Against a WorkloadCertificateConfig: P-384 wanted, and half of a 1-day validity gone.
    let config = WorkloadCertificateConfig {
        key: KeyAlgorithm::EcdsaP384,
        ..WorkloadCertificateConfig::default()
    };
    let aging = tmp.path().join("aging");
    let mut spec = LeafSpec::svid(id);
    spec.not_before = OffsetDateTime::now_utc() - Duration::hours(13);
    ca.issue(&spec).expect("issue").write_to(&aging).expect("write");
    let f = failing_checks(
        &aging,
        &Expectations {
            config: Some(config),
            ..expect.clone()
        },
    );
    let names: Vec<&str> = f.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, vec!["rotation", "key algorithm"], "{f:?}");

    // The CLI exits 1 and prints one line per check.
    let out = cli(&["doctor", expired.to_str().expect("utf-8")], tmp.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.starts_with("FAIL validity: expired"))
    );
}

#[test]
fn rotate_reissues_what_entered_its_window() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ca = MeshCa::generate("TestCorpLLC").expect("ca");
    ca.save(&tmp.path().join("ca"), false).expect("save");
    let id = "spiffe://my-project.svc.id.goog/ns/default/sa/demo-client";
    let mut spec = LeafSpec::svid(id);
    spec.not_before = OffsetDateTime::now_utc() - Duration::hours(20);
    let dir = tmp.path().join("client");
    ca.issue(&spec).expect("issue").write_to(&dir).expect("write");
    let before = std::fs::read_to_string(dir.join("certificates.pem")).expect("read");
    let out = cli(&["ca", "rotate", "--ca", "ca", "client"], tmp.path());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("rotated {id}")),
        "{out:?}"
    );
    assert_ne!(
        std::fs::read_to_string(dir.join("certificates.pem")).expect("read"),
        before
    );
    let expect = Expectations {
        trust_domain: Some("my-project.svc.id.goog".into()),
        ..Expectations::default()
    };
    assert_eq!(
        failing_checks(&dir, &expect),
        vec![],
        "a CA loaded from disk issues chains that verify"
    );
}

#[test]
fn rsa_and_p384_keys() {
    let ca = MeshCa::generate("TestCorpLLC").expect("ca");
    for key in [KeyAlgorithm::Rsa(2048), KeyAlgorithm::EcdsaP384] {
        let mut spec = LeafSpec::svid("spiffe://td/ns/a/sa/b");
        spec.key = key;
        let creds = ca.issue(&spec).expect("issue");
        assert!(creds.private_key.contains("PRIVATE KEY"));
    }
    let mut spec = LeafSpec::svid("spiffe://td/ns/a/sa/b");
    spec.key = KeyAlgorithm::Rsa(1024);
    assert!(matches!(ca.issue(&spec), Err(CaError::Invalid(_))));
}

fn generate(extra: &[(&str, &str)], files: &[&str]) -> (Output, tempfile::TempDir) {
    let tmp = tempfile::tempdir().expect("tmp");
    for (name, text) in extra {
        std::fs::write(tmp.path().join(name), text).expect("write");
    }
    let mut args: Vec<String> = [
        "generate",
        "--workloads",
        "workloads.yaml",
        "--certs-dir",
        "certs",
        "--wasm",
        "f.wasm",
        "-o",
        "out",
    ]
    .map(String::from)
    .to_vec();
    for f in files {
        let local = tmp.path().join(f);
        args.push(
            if local.exists() { local } else { guide().join(f) }
                .display()
                .to_string(),
        );
    }
    if !tmp.path().join("workloads.yaml").exists() {
        std::fs::copy(guide().join("workloads.yaml"), tmp.path().join("workloads.yaml")).expect("copy");
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    (cli(&args, tmp.path()), tmp)
}

fn assert_rejected(out: &Output, tmp: &Path, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(needle), "want {needle:?} in: {stderr}");
    assert!(!tmp.join("out").exists(), "nothing written on error");
}

#[test]
fn generator_accepts_the_guide_and_rejects_bad_input() {
    let (out, tmp) = generate(&[], final_step());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for w in ["payments", "client", "mesh-gateway"] {
        assert!(tmp.path().join(format!("out/{w}.yaml")).is_file());
    }

    let mut files = final_step().to_vec();
    files.retain(|f| *f != "client-mtls-policy.yaml");
    let (out, tmp) = generate(&[], &files);
    assert_rejected(
        &out,
        tmp.path(),
        "demo-backend-service.yaml: securitySettings.clientTlsPolicy: `projects/my-project/locations/global/clientTlsPolicies/client-mtls-policy` names clientTlsPolicies/client-mtls-policy, which no given file defines",
    );

    let wrong_kind = "name: ep2\ntype: SIDECAR_PROXY\nendpointMatcher:\n  metadataLabelMatcher:\n    metadataLabelMatchCriteria: MATCH_ALL\n    metadataLabels: [{labelName: app, labelValue: other}]\nserverTlsPolicy: projects/p/locations/global/clientTlsPolicies/client-mtls-policy\n";
    let (out, tmp) = generate(&[("ep2.yaml", wrong_kind)], &[final_step(), &["ep2.yaml"]].concat());
    assert_rejected(
        &out,
        tmp.path(),
        "ep2.yaml: serverTlsPolicy: `projects/p/locations/global/clientTlsPolicies/client-mtls-policy` refers to clientTlsPolicies, expected serverTlsPolicies",
    );

    let typo = "name: server-mtls-policy\nserverCertificate:\n  certificateProviderInstance:\n    pluginInstance: google_cloud_private_spiffe\nmtlsPolicyy:\n  clientValidationCa: []\n";
    let (out, tmp) = generate(&[("server-mtls-policy.yaml", typo)], final_step());
    assert_rejected(
        &out,
        tmp.path(),
        "server-mtls-policy.yaml: ServerTlsPolicy: unknown field `mtlsPolicyy`",
    );

    let unused = std::fs::read_to_string(guide().join("workloads.yaml")).expect("read")
        + "- name: lonely\n  proxy: gateway\n  serviceAccount: x\n  address: 127.0.0.9\n  scope: nobody\n";
    let (out, tmp) = generate(&[("workloads.yaml", &unused)], final_step());
    assert_rejected(
        &out,
        tmp.path(),
        "workload `lonely`: no Gateway has scope `nobody`: no resource uses it",
    );

    let (out, tmp) = generate(
        &[("weird.yaml", "name: x\nfoo: bar\n")],
        &[final_step(), &["weird.yaml"]].concat(),
    );
    assert_rejected(&out, tmp.path(), "weird.yaml: cannot tell which resource this is");

    // Nothing parsed is ignored: what the generator cannot honour is an error naming the field.
    let no_cert = "name: server-mtls-policy\nmtlsPolicy:\n  clientValidationCa:\n  - certificateProviderInstance:\n      pluginInstance: google_cloud_private_spiffe\n";
    let (out, tmp) = generate(&[("server-mtls-policy.yaml", no_cert)], final_step());
    assert_rejected(
        &out,
        tmp.path(),
        "server-mtls-policy.yaml: mtlsPolicy: requires serverCertificate",
    );
    let open_tls = "name: server-tls-policy\nallowOpen: true\nserverCertificate:\n  certificateProviderInstance:\n    pluginInstance: google_cloud_private_spiffe\n";
    let (out, tmp) = generate(&[("server-tls-policy.yaml", open_tls)], final_step());
    assert_rejected(
        &out,
        tmp.path(),
        "server-tls-policy.yaml: allowOpen: cannot be combined with serverCertificate alone",
    );
    let backend = std::fs::read_to_string(guide().join("demo-backend-service.yaml")).expect("read");
    for (extra, needle) in [
        (
            "healthChecks: [projects/p/global/healthChecks/hc]\n",
            "healthChecks: not supported",
        ),
        ("protocol: GRPC\n", "protocol: `GRPC` is not supported"),
    ] {
        let text = format!("{backend}{extra}");
        let (out, tmp) = generate(&[("demo-backend-service.yaml", &text)], final_step());
        assert_rejected(&out, tmp.path(), needle);
    }
    let external = backend.replace("INTERNAL_SELF_MANAGED", "EXTERNAL");
    let (out, tmp) = generate(&[("demo-backend-service.yaml", &external)], final_step());
    assert_rejected(&out, tmp.path(), "loadBalancingScheme: `EXTERNAL` is not supported");
    let gateway = std::fs::read_to_string(guide().join("td-gke-gateway.yaml"))
        .expect("read")
        .replace("OPEN_MESH", "SECURE_WEB_GATEWAY");
    let (out, tmp) = generate(&[("td-gke-gateway.yaml", &gateway)], final_step());
    assert_rejected(&out, tmp.path(), "type: `SECURE_WEB_GATEWAY` is not supported");
    let twin = std::fs::read_to_string(guide().join("authz-policy-gateway.yaml")).expect("read");
    let (out, tmp) = generate(&[("twin.yaml", &twin)], &[final_step(), &["twin.yaml"]].concat());
    assert_rejected(&out, tmp.path(), "name: duplicate AuthorizationPolicy `authz-policy`");
    // A GRPC_SERVER endpoint policy programs proxyless gRPC, not Envoy: said, not skipped silently.
    let grpc = "name: grpc-ep\ntype: GRPC_SERVER\nendpointMatcher:\n  metadataLabelMatcher:\n    metadataLabelMatchCriteria: MATCH_ALL\n    metadataLabels: [{labelName: app, labelValue: payments}]\nserverTlsPolicy: projects/my-project/locations/global/serverTlsPolicies/server-mtls-policy\n";
    let (out, _tmp) = generate(&[("grpc-ep.yaml", grpc)], &[final_step(), &["grpc-ep.yaml"]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("grpc-ep.yaml: warning: type: endpoint policy `grpc-ep` is GRPC_SERVER"),
        "{stderr}"
    );

    // The policy compiler's warnings are printed; --deny-warnings makes them fatal.
    let lowercase = std::fs::read_to_string(guide().join("authz-policy-gateway.yaml"))
        .expect("read")
        .replace("GET", "get");
    let (out, tmp) = generate(&[("authz-policy-gateway.yaml", &lowercase)], final_step());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("authz-policy-gateway.yaml:")
            && stderr.contains(": warning: ")
            && stderr.contains("did you mean `GET`?"),
        "{stderr}"
    );
    assert!(tmp.path().join("out/payments.yaml").is_file());
    let mut args = vec![
        "generate",
        "--deny-warnings",
        "--workloads",
        "workloads.yaml",
        "--certs-dir",
        "certs",
    ];
    args.extend(["--wasm", "f.wasm", "-o", "out"]);
    let resources: Vec<String> = final_step()
        .iter()
        .map(|f| {
            let local = tmp.path().join(f);
            if local.exists() { local } else { guide().join(f) }
                .display()
                .to_string()
        })
        .collect();
    std::fs::remove_dir_all(tmp.path().join("out")).expect("clean");
    args.extend(resources.iter().map(String::as_str));
    let denied = cli(&args, tmp.path());
    assert_rejected(&denied, tmp.path(), ": error: ");

    let plugin = "name: client-mtls-policy\nclientCertificate:\n  certificateProviderInstance:\n    pluginInstance: something_else\n";
    let (out, tmp) = generate(&[("client-mtls-policy.yaml", plugin)], final_step());
    assert_rejected(
        &out,
        tmp.path(),
        "clientCertificate: certificate provider `something_else` is not supported",
    );
}
