//! The guide's walkthrough as an integration test: the same scenario `cargo xtask demo` plays,
//! then certificate rotation picked up by a running Envoy, and every generated bootstrap
//! accepted by `envoy --mode validate`.

use std::process::Command;
use std::time::{Duration, Instant};

use meshauthz_envoy_config::ca::LeafSpec;
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

#[test]
fn guide_walkthrough_on_loopback() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut mesh = Mesh::new(dir.path(), pick_block()).expect("mesh");
    let started = Instant::now();
    let outcomes = play(&mut mesh, |_, _| true).unwrap_or_else(|e| panic!("{e}"));
    let text = report(&outcomes);
    assert!(outcomes.iter().all(|o| o.ok), "the guide's checks:\n{text}");
    assert_eq!(outcomes.len(), 13, "{text}");
    eprintln!("walkthrough in {:.1} s", started.elapsed().as_secs_f64());

    // Every bootstrap of every step is valid Envoy 1.40 configuration.
    for step in 1..=4 {
        for entry in std::fs::read_dir(dir.path().join(format!("step{step}")))
            .expect("step dir")
            .flatten()
        {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let out = Command::new(meshauthz_tests::envoy_binary())
                    .args(["--mode", "validate", "--disable-hot-restart", "-c"])
                    .arg(&path)
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
