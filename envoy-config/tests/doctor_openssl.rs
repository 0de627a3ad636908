//! The doctor on credential sets made with `openssl` (not with this project's CA), in the GKE
//! layout: it exits 0 for the good ones only, and names every failing check of the bad ones.

use std::path::{Path, PathBuf};
use std::process::Command;

const TD: &str = "my-project.svc.id.goog";
const OPENSSL_CA_CONFIG: &str = "\
[ca]
default_ca = ca_default
[ca_default]
database = index.txt
new_certs_dir = .
rand_serial = yes
default_md = sha256
policy = anything
unique_subject = no
copy_extensions = none
[anything]
commonName = optional
organizationName = optional
";

/// A scratch PKI driven through the `openssl` command line.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("ca.cnf"), OPENSSL_CA_CONFIG).expect("write");
        std::fs::write(dir.path().join("index.txt"), "").expect("write");
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `NAME.key`: `ec` (P-256) or `rsa` (2048).
    fn key(&self, name: &str, kind: &str) {
        let key = format!("{name}.key");
        match kind {
            "ec" => self.openssl(&[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                &key,
            ]),
            _ => self.openssl(&[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                &key,
            ]),
        }
    }

    /// A self-signed root `NAME.pem` with `pathlen`.
    fn root(&self, name: &str, kind: &str, pathlen: u32) {
        self.key(name, kind);
        self.openssl(&[
            "req",
            "-x509",
            "-new",
            "-key",
            &format!("{name}.key"),
            "-subj",
            &format!("/CN={name}/O=OpenSSL Test"),
            "-days",
            "3650",
            "-addext",
            &format!("basicConstraints=critical,CA:TRUE,pathlen:{pathlen}"),
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-out",
            &format!("{name}.pem"),
        ]);
    }

    /// `NAME.pem` signed by `issuer` with the extensions `ext` (openssl `-extfile` syntax),
    /// valid from `start` to `end` (`YYYYMMDDHHMMSSZ`).
    fn sign(&self, name: &str, kind: &str, issuer: &str, ext: &str, (start, end): (&str, &str)) {
        self.key(name, kind);
        self.openssl(&[
            "req",
            "-new",
            "-key",
            &format!("{name}.key"),
            "-subj",
            &format!("/O=OpenSSL Test/CN={name}"),
            "-out",
            &format!("{name}.csr"),
        ]);
        std::fs::write(self.path(&format!("{name}.ext")), format!("[ext]\n{ext}\n")).expect("write");
        self.openssl(&[
            "ca",
            "-batch",
            "-config",
            "ca.cnf",
            "-notext",
            "-cert",
            &format!("{issuer}.pem"),
            "-keyfile",
            &format!("{issuer}.key"),
            "-in",
            &format!("{name}.csr"),
            "-out",
            &format!("{name}.pem"),
            "-startdate",
            start,
            "-enddate",
            end,
            "-extfile",
            &format!("{name}.ext"),
            "-extensions",
            "ext",
        ]);
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).expect("read")
    }

    /// A GKE credentials directory: `certificates.pem` = the chain, `private_key.pem` = the
    /// key (0600), `ca_certificates.pem` = the trust bundle.
    fn credentials(&self, dir: &str, chain: &[&str], key: &str, bundle: &[&str]) -> PathBuf {
        let out = self.path(dir);
        std::fs::create_dir_all(&out).expect("mkdir");
        let cat = |names: &[&str]| names.iter().map(|n| self.read(&format!("{n}.pem"))).collect::<String>();
        std::fs::write(out.join("certificates.pem"), cat(chain)).expect("write");
        std::fs::write(out.join("ca_certificates.pem"), cat(bundle)).expect("write");
        let key_path = out.join("private_key.pem");
        std::fs::write(&key_path, self.read(&format!("{key}.key"))).expect("write");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        }
        out
    }
}

fn svid_ext(uris: &[&str]) -> String {
    let mut san: Vec<String> = uris.iter().map(|u| format!("URI:{u}")).collect();
    san.push("DNS:workload.example".into());
    format!(
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName={}",
        san.join(",")
    )
}

const INTERMEDIATE_EXT: &str =
    "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash";

/// Validity windows relative to now, as `openssl ca` takes them.
fn window(from_days: i64, to_days: i64) -> (&'static str, &'static str) {
    let fmt = |days: i64| {
        let t = time::OffsetDateTime::now_utc() + time::Duration::days(days);
        let s = format!(
            "{:04}{:02}{:02}{:02}{:02}{:02}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        );
        &*Box::leak(s.into_boxed_str())
    };
    (fmt(from_days), fmt(to_days))
}

/// Runs `envoy-config doctor --json` and returns (exit code, failing check names).
fn doctor(dir: &Path) -> (i32, Vec<String>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_envoy-config"))
        .args(["doctor", "--json", "--trust-domain", TD])
        .arg(dir)
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let failing = json["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| c["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(json["ok"] == true, out.status.code() == Some(0), "{text}");
    (out.status.code().unwrap_or(-1), failing, text)
}

#[test]
fn openssl_made_credentials_are_judged_right() {
    let pki = Pki::new();
    let id = format!("spiffe://{TD}/ns/default/sa/demo-server");
    let now = window(-1, 30);
    pki.root("root", "ec", 1);
    pki.root("stranger", "ec", 1);
    pki.root("root0", "ec", 0);
    pki.sign("int", "ec", "root", INTERMEDIATE_EXT, window(-10, 300));
    pki.sign("int-expired", "ec", "root", INTERMEDIATE_EXT, window(-300, -10));
    pki.sign("int-future", "ec", "root", INTERMEDIATE_EXT, window(10, 300));
    pki.sign(
        "int-not-ca",
        "ec",
        "root",
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature",
        window(-10, 300),
    );
    pki.sign("int-under-root0", "ec", "root0", INTERMEDIATE_EXT, window(-10, 300));

    let leaf = |name: &str, kind: &str, issuer: &str, ext: &str, when| pki.sign(name, kind, issuer, ext, when);
    let good_ext = svid_ext(&[&id]);
    leaf("leaf", "ec", "int", &good_ext, now);
    leaf("leaf-single", "ec", "root", &good_ext, now);
    leaf("leaf-expired", "ec", "int", &good_ext, window(-30, -1));
    leaf("leaf-future", "ec", "int", &good_ext, window(1, 30));
    leaf("leaf-under-expired", "ec", "int-expired", &good_ext, window(-20, -11));
    leaf("leaf-under-future", "ec", "int-future", &good_ext, now);
    leaf(
        "leaf-two-uris",
        "ec",
        "int",
        &svid_ext(&[&id, &format!("spiffe://{TD}/ns/default/sa/x")]),
        now,
    );
    leaf("leaf-no-uri", "ec", "int", &svid_ext(&[]), now);
    leaf(
        "leaf-bad-id",
        "ec",
        "int",
        &svid_ext(&["spiffe://My-Project.svc.id.goog/ns/default/sa/x"]),
        now,
    );
    leaf(
        "leaf-other-td",
        "ec",
        "int",
        &svid_ext(&["spiffe://other.example/ns/default/sa/x"]),
        now,
    );
    leaf("leaf-rsa", "rsa", "int", &good_ext, now);
    leaf(
        "leaf-no-client-auth",
        "ec",
        "int",
        &good_ext.replace("serverAuth,clientAuth", "serverAuth"),
        now,
    );
    leaf("leaf-under-not-ca", "ec", "int-not-ca", &good_ext, now);
    leaf("leaf-pathlen", "ec", "int-under-root0", &good_ext, now);
    pki.key("unrelated", "ec");

    let cases: Vec<(&str, PathBuf, Vec<&str>)> = vec![
        (
            "two-level CA",
            pki.credentials("good", &["leaf", "int"], "leaf", &["root"]),
            vec![],
        ),
        (
            "single-level CA",
            pki.credentials("single", &["leaf-single"], "leaf-single", &["root"]),
            vec![],
        ),
        (
            "expired leaf",
            pki.credentials("c1", &["leaf-expired", "int"], "leaf-expired", &["root"]),
            vec!["validity"],
        ),
        (
            "leaf not yet valid",
            pki.credentials("c2", &["leaf-future", "int"], "leaf-future", &["root"]),
            vec!["validity"],
        ),
        (
            "expired intermediate",
            pki.credentials(
                "c3",
                &["leaf-under-expired", "int-expired"],
                "leaf-under-expired",
                &["root"],
            ),
            vec!["validity", "chain"],
        ),
        (
            "intermediate not yet valid",
            pki.credentials(
                "c4",
                &["leaf-under-future", "int-future"],
                "leaf-under-future",
                &["root"],
            ),
            vec!["chain"],
        ),
        (
            "wrong trust bundle",
            pki.credentials("c5", &["leaf", "int"], "leaf", &["stranger"]),
            vec!["chain"],
        ),
        (
            "two URI SANs",
            pki.credentials("c6", &["leaf-two-uris", "int"], "leaf-two-uris", &["root"]),
            vec!["SPIFFE ID"],
        ),
        (
            "no URI SAN",
            pki.credentials("c7", &["leaf-no-uri", "int"], "leaf-no-uri", &["root"]),
            vec!["SPIFFE ID"],
        ),
        (
            "bad SPIFFE ID",
            pki.credentials("c8", &["leaf-bad-id", "int"], "leaf-bad-id", &["root"]),
            vec!["SPIFFE ID"],
        ),
        (
            "wrong trust domain",
            pki.credentials("c9", &["leaf-other-td", "int"], "leaf-other-td", &["root"]),
            vec!["SPIFFE ID"],
        ),
        (
            "RSA leaf under an ECDSA CA",
            pki.credentials("c10", &["leaf-rsa", "int"], "leaf-rsa", &["root"]),
            vec!["key family"],
        ),
        (
            "mismatched key",
            pki.credentials("c11", &["leaf", "int"], "unrelated", &["root"]),
            vec!["private key"],
        ),
        (
            "no clientAuth EKU",
            pki.credentials("c12", &["leaf-no-client-auth", "int"], "leaf-no-client-auth", &["root"]),
            vec!["extended key usage"],
        ),
        (
            "signed by a non-CA",
            pki.credentials(
                "c13",
                &["leaf-under-not-ca", "int-not-ca"],
                "leaf-under-not-ca",
                &["root"],
            ),
            vec!["chain"],
        ),
        (
            "path length exceeded",
            pki.credentials("c14", &["leaf-pathlen", "int-under-root0"], "leaf-pathlen", &["root0"]),
            vec!["chain"],
        ),
        (
            "several problems at once",
            pki.credentials("c15", &["leaf-rsa", "int"], "unrelated", &["stranger"]),
            vec!["key family", "private key", "chain"],
        ),
    ];
    let mut wrong = Vec::new();
    for (what, dir, want) in &cases {
        let (code, failing, text) = doctor(dir);
        let want_code = if want.is_empty() { 0 } else { 1 };
        if code != want_code || failing != *want {
            wrong.push(format!(
                "{what}: exit {code} failing {failing:?}, want exit {want_code} failing {want:?}\n{text}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // The line form names each problem of the chain, not just the first.
    let out = Command::new(env!("CARGO_BIN_EXE_envoy-config"))
        .arg("doctor")
        .arg(&cases[cases.len() - 1].1)
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text.contains("FAIL key family: RSA workload key but the issuing CA uses ECDSA"),
        "{text}"
    );
    assert!(text.contains("FAIL private key:"), "{text}");
    assert!(
        text.contains("FAIL chain: `CN=root, O=OpenSSL Test` does not chain to any certificate"),
        "{text}"
    );
    assert!(
        text.contains("ok   extended key usage: serverAuth and clientAuth"),
        "{text}"
    );
}
