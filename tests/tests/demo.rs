//! The guide's walkthrough as an integration test: the same scenario `cargo xtask demo` plays,
//! then certificate rotation picked up by a running Envoy, and every generated bootstrap
//! accepted by `envoy --mode validate`.

use std::process::Command;
use std::time::{Duration, Instant};

use meshauthz_envoy_config::ca::LeafSpec;
use meshauthz_envoy_config::generate::PolicyDelivery;
use meshauthz_tests::Build;
use meshauthz_tests::demo::{Mesh, pick_block, play, report};

/// The SHA-256 fingerprint of the certificate a TLS server presents (via openssl s_client,
/// presenting `client`'s credentials since the listener requires them).
fn presented_fingerprint(addr: &str, client: &std::path::Path) -> Option<String> {
    let s_client = Command::new("openssl")
        .args(["s_client", "-connect", addr, "-cert"])
        .arg(client.join("certificates.pem"))
        .arg("-key")
        .arg(client.join("private_key.pem"))
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .ok()?;
    use std::io::Write;
    x509.stdin.take()?.write_all(&s_client.stdout).ok()?;
    let out = x509.wait_with_output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Plays the guide with `build` and `delivery`, then has `envoy --mode validate` check every
/// bootstrap of every step (with a static native filter, validation loads the module).
fn walkthrough(dir: &std::path::Path, build: Build, delivery: PolicyDelivery) -> Mesh {
    let mut mesh = Mesh::with_filter(dir, pick_block(), build, delivery).expect("mesh");
    let started = Instant::now();
    let outcomes = play(&mut mesh, |_, _| true).unwrap_or_else(|e| panic!("{e}"));
    let text = report(&outcomes);
    assert!(
        outcomes.iter().all(|o| o.ok),
        "the guide's checks ({build:?}, {delivery:?}):\n{text}"
    );
    assert_eq!(outcomes.len(), 13, "{text}");
    eprintln!("walkthrough in {:.1} s", started.elapsed().as_secs_f64());
    for step in 1..=4 {
        for entry in std::fs::read_dir(dir.join(format!("step{step}")))
            .expect("step dir")
            .flatten()
        {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let out = Command::new(meshauthz_tests::envoy_binary())
                    .args(["--mode", "validate", "--disable-hot-restart", "-c"])
                    .arg(&path)
                    .env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", Build::Native.modules_dir(false))
                    .output()
                    .expect("envoy runs");
                assert!(
                    out.status.success(),
                    "{}: {}",
                    path.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
    mesh
}

#[test]
fn guide_walkthrough_on_loopback() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mesh = walkthrough(dir.path(), Build::Wasm, PolicyDelivery::Static);

    // Rotation: new credentials written into the watched directory are served by the running
    // server sidecar on the next handshake, without a restart.
    let server_addr = format!("{}:8000", mesh.address("payments"));
    let client_dir = dir.path().join("certs/client");
    let before = presented_fingerprint(&server_addr, &client_dir).expect("server presents a certificate");
    let creds = mesh
        .ca
        .issue(&LeafSpec::svid(&mesh.spiffe_id("demo-server")))
        .expect("issue");
    creds.write_to(&dir.path().join("certs/payments")).expect("write");
    meshauthz_tests::wait_until(
        Duration::from_secs(15),
        || presented_fingerprint(&server_addr, &client_dir).is_some_and(|f| f != before),
        || format!("the rotated certificate was never served (still {before})"),
    );
    assert_eq!(
        mesh.from_client("GET").status,
        200,
        "traffic flows with the rotated certificate"
    );
}

/// The same walkthrough with the native filter: inline, and with the policy over ECDS.
#[test]
fn guide_walkthrough_with_the_native_filter() {
    for delivery in [PolicyDelivery::Static, PolicyDelivery::Ecds] {
        let dir = tempfile::tempdir().expect("temp dir");
        walkthrough(dir.path(), Build::Native, delivery);
    }
}

/// `allowOpen` next to `mtlsPolicy`: the server sidecar's port serves plaintext and mTLS
/// clients alike, told apart per connection by the TLS inspector; the filter sees the
/// plaintext peer without a principal and never passes its XFCC on.
#[test]
fn allow_open_serves_plaintext_and_mtls_on_one_port() {
    use meshauthz_tests::CurlResult;
    use meshauthz_tests::http::client_cert_args;

    let dir = tempfile::tempdir().expect("temp dir");
    let mut mesh = Mesh::new(dir.path(), pick_block()).expect("mesh");
    let open = dir.path().join("server-mtls-policy.yaml");
    std::fs::write(
        &open,
        "name: server-mtls-policy\nallowOpen: true\nserverCertificate:\n  certificateProviderInstance:\n    \
         pluginInstance: google_cloud_private_spiffe\nmtlsPolicy:\n  clientValidationCa:\n  - certificateProviderInstance:\n      \
         pluginInstance: google_cloud_private_spiffe\n",
    )
    .expect("write");
    // GET for the client's identity, PUT for anyone on loopback (plaintext included).
    let authz = dir.path().join("authz-policy.yaml");
    std::fs::write(
        &authz,
        format!(
            "name: authz-policy\naction: ALLOW\nrules:\n- sources: [{{principals: [\"{}\"]}}]\n  \
             destinations: [{{hosts: [service-test], ports: [8000], methods: [GET]}}]\n\
             - sources: [{{ipBlocks: [127.0.0.0/8]}}]\n  destinations: [{{hosts: [service-test], ports: [8000], methods: [PUT]}}]\n",
            mesh.spiffe_id("demo-client")
        ),
    )
    .expect("write");
    let files = [
        "mesh.yaml",
        "http_route.yaml",
        "client-mtls-policy.yaml",
        "demo-backend-service.yaml",
        "ep_mtls_authz.yaml",
        open.to_str().expect("utf-8"),
        authz.to_str().expect("utf-8"),
    ];
    mesh.apply(1, &files).unwrap_or_else(|e| panic!("{e}"));
    let server = format!("{}:8000", mesh.address("payments"));
    let request = |tls: bool, method: &str| -> CurlResult {
        let mut args = vec![
            "-X".to_owned(),
            method.to_owned(),
            "-H".into(),
            "Host: service-test".into(),
        ];
        args.extend(["-H".to_owned(), "x-forwarded-client-cert: By=spiffe://evil/x".into()]);
        let scheme = if tls {
            args.extend(client_cert_args(&dir.path().join("certs/client")));
            args.push("-k".into());
            "https"
        } else {
            "http"
        };
        args.push(format!("{scheme}://{server}/get"));
        meshauthz_tests::curl(&args)
    };
    let mtls_get = request(true, "GET");
    assert_eq!(mtls_get.status, 200, "mTLS GET: {mtls_get:?}");
    assert!(
        mtls_get
            .echoed_header("x-forwarded-client-cert")
            .is_some_and(|x| x.contains(&mesh.spiffe_id("demo-client")) && !x.contains("evil")),
        "{mtls_get:?}"
    );
    let plain_get = request(false, "GET");
    assert_eq!(
        (plain_get.status, plain_get.body.as_str()),
        (403, "RBAC: access denied"),
        "plaintext has no principal"
    );
    let plain_put = request(false, "PUT");
    assert_eq!(plain_put.status, 200, "plaintext PUT: {plain_put:?}");
    assert_eq!(
        plain_put.echoed_header("x-forwarded-client-cert"),
        None,
        "{plain_put:?}"
    );
    // And through the client sidecar, as the guide's client would.
    assert_eq!(mesh.from_client("GET").status, 200);
}
