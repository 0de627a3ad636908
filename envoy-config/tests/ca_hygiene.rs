//! The mesh CA judged by OpenSSL: chains verify under `-x509_strict`, leaves are well-formed
//! (critical SAN with an empty subject, key usage that fits the key, 16-byte serials, never
//! outliving the issuer), and `ca init` never overwrites a CA or writes keys through links.

use std::path::Path;
use std::process::{Command, Output};

use meshauthz_envoy_config::ca::{KeyAlgorithm, LeafSpec, MeshCa, write_file};
use time::Duration;

fn openssl(args: &[&str], cwd: &Path) -> Output {
    Command::new("openssl")
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("openssl runs")
}

fn text_of(pem: &str, dir: &Path) -> String {
    std::fs::write(dir.join("x.pem"), pem).expect("write");
    let out = openssl(&["x509", "-noout", "-text", "-in", "x.pem"], dir);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The leaf of `certificates.pem`, and the issuing CA after it.
fn split_chain(certificates: &str) -> (String, String) {
    let end = "-----END CERTIFICATE-----";
    let at = certificates.find(end).expect("a certificate") + end.len();
    (
        certificates[..at].to_owned() + "\n",
        certificates[at..].trim_start().to_owned(),
    )
}

#[test]
fn chains_verify_strictly_and_leaves_are_well_formed() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    // Saved and loaded again, as `envoy-config ca issue --ca DIR` does.
    MeshCa::generate("TestCorpLLC")
        .expect("ca")
        .save(&dir.join("ca"), false)
        .expect("save");
    let ca = MeshCa::load(&dir.join("ca")).expect("load");
    for (name, key) in [
        ("ec", KeyAlgorithm::EcdsaP256),
        ("p384", KeyAlgorithm::EcdsaP384),
        ("rsa", KeyAlgorithm::Rsa(2048)),
    ] {
        let mut spec = LeafSpec::svid("spiffe://td.example/ns/default/sa/client");
        spec.key = key;
        spec.dns = vec!["client.example".into()];
        let creds = ca.issue(&spec).expect("issue");
        let (leaf, issuing) = split_chain(&creds.certificates);
        std::fs::write(dir.join("leaf.pem"), &leaf).expect("write");
        std::fs::write(dir.join("issuing.pem"), &issuing).expect("write");
        std::fs::write(dir.join("root.pem"), &creds.ca_certificates).expect("write");
        let out = openssl(
            &[
                "verify",
                "-x509_strict",
                "-purpose",
                "sslclient",
                "-CAfile",
                "root.pem",
                "-untrusted",
                "issuing.pem",
                "leaf.pem",
            ],
            dir,
        );
        assert!(
            out.status.success(),
            "{name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let text = text_of(&leaf, dir);
        assert!(
            text.contains("X509v3 Subject Alternative Name: critical"),
            "{name}: {text}"
        );
        assert!(
            text.contains("URI:spiffe://td.example/ns/default/sa/client") && text.contains("DNS:client.example"),
            "{name}: {text}"
        );
        assert!(
            text.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
            "{name}"
        );
        assert!(text.contains("CA:FALSE"), "{name}");
        let encipherment = text.contains("Key Encipherment");
        assert_eq!(
            encipherment,
            name == "rsa",
            "{name}: keyEncipherment only for RSA:\n{text}"
        );
        // `Serial Number:` then 16 colon-separated octets on the next line.
        let serial = text
            .lines()
            .skip_while(|l| !l.contains("Serial Number:"))
            .nth(1)
            .expect("serial line")
            .trim();
        assert_eq!(serial.split(':').count(), 16, "{name}: serial {serial}");
    }
    // Two leaves never share a serial.
    let a = text_of(
        &ca.issue(&LeafSpec::svid("spiffe://td/a")).expect("issue").certificates,
        dir,
    );
    let b = text_of(
        &ca.issue(&LeafSpec::svid("spiffe://td/a")).expect("issue").certificates,
        dir,
    );
    let serial = |t: &str| {
        t.lines()
            .skip_while(|l| !l.contains("Serial Number:"))
            .nth(1)
            .map(str::to_owned)
    };
    assert_ne!(serial(&a), serial(&b));
}

#[test]
fn a_leaf_never_outlives_its_issuer() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ca = MeshCa::generate("TestCorpLLC").expect("ca");
    let mut spec = LeafSpec::svid("spiffe://td/ns/a/sa/b");
    spec.validity = Duration::days(5000);
    let creds = ca.issue(&spec).expect("issue");
    let (leaf, issuing) = split_chain(&creds.certificates);
    let end = |pem: &str| {
        std::fs::write(tmp.path().join("c.pem"), pem).expect("write");
        let out = openssl(&["x509", "-noout", "-enddate", "-in", "c.pem"], tmp.path());
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(end(&leaf), end(&issuing), "capped at the issuing CA's notAfter");
}

#[test]
fn ca_init_refuses_to_overwrite_and_force_keeps_backups() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cli = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_envoy-config"))
            .args(args)
            .current_dir(tmp.path())
            .output()
            .expect("runs")
    };
    assert!(cli(&["ca", "init", "--dir", "ca"]).status.success());
    let key = std::fs::read(tmp.path().join("ca/root.key")).expect("key");
    let again = cli(&["ca", "init", "--dir", "ca"]);
    assert_eq!(again.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already holds a CA"),
        "{again:?}"
    );
    assert_eq!(
        std::fs::read(tmp.path().join("ca/root.key")).expect("key"),
        key,
        "untouched"
    );
    assert!(cli(&["ca", "init", "--dir", "ca", "--force"]).status.success());
    assert_ne!(
        std::fs::read(tmp.path().join("ca/root.key")).expect("key"),
        key,
        "replaced"
    );
    let backups: Vec<String> = std::fs::read_dir(tmp.path().join("ca"))
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".bak"))
        .collect();
    assert_eq!(backups.len(), 4, "{backups:?}");
    let old_key = backups
        .iter()
        .find(|b| b.starts_with("root.key."))
        .expect("root key backup");
    assert_eq!(std::fs::read(tmp.path().join("ca").join(old_key)).expect("backup"), key);
}

#[cfg(unix)]
#[test]
fn key_files_never_go_through_links_or_predictable_names() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("tmp");
    let victim = tmp.path().join("victim");
    std::fs::write(&victim, "precious").expect("write");
    let key = tmp.path().join("key.pem");
    // An attacker's links at the final name and at the old predictable temporary name.
    std::os::unix::fs::symlink(&victim, &key).expect("symlink");
    std::os::unix::fs::symlink(&victim, tmp.path().join("key.tmp")).expect("symlink");
    write_file(&key, "secret", 0o600).expect("write");
    assert_eq!(std::fs::read_to_string(&victim).expect("victim"), "precious");
    assert_eq!(std::fs::read_to_string(&key).expect("key"), "secret");
    let meta = std::fs::symlink_metadata(&key).expect("meta");
    assert!(meta.file_type().is_file(), "the link was replaced by a file");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
}
