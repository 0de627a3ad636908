//! The certificate doctor: the guide's troubleshooting checks on a workload credentials
//! directory (GKE layout), one line per check, `ok` or `FAIL` with the reason.
//!
//! Every check runs, whatever an earlier one found, so one run names every problem. The
//! issuing CA is the certificate after the workload's in `certificates.pem` or, in a
//! single-level CA where there is none, the trust anchor in `ca_certificates.pem` that signed
//! it. The chain check walks every link: signature, validity, `CA:TRUE`, path length and
//! `keyCertSign`, up to a trust anchor.

use std::path::Path;

use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
use x509_parser::public_key::PublicKey;

use crate::ca::{CA_CERTIFICATES, CERTIFICATES, KeyAlgorithm, PRIVATE_KEY, WorkloadCertificateConfig};

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

impl Check {
    /// `{"name": ..., "ok": ..., "detail": ...}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"name": self.name, "ok": self.ok, "detail": self.detail})
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<4} {}: {}",
            if self.ok { "ok" } else { "FAIL" },
            self.name,
            self.detail
        )
    }
}

/// What the doctor is told to expect.
#[derive(Debug, Clone, Default)]
pub struct Expectations {
    pub trust_domain: Option<String>,
    pub config: Option<WorkloadCertificateConfig>,
    /// The time to judge validity at (default: now).
    pub now: Option<OffsetDateTime>,
}

fn pems(bytes: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    for pem in x509_parser::pem::Pem::iter_from_buffer(bytes) {
        let pem = pem.map_err(|e| format!("PEM: {e}"))?;
        if pem.label == "CERTIFICATE" {
            out.push(pem.contents);
        }
    }
    if out.is_empty() {
        Err("no CERTIFICATE block".into())
    } else {
        Ok(out)
    }
}

fn key_algorithm(cert: &X509Certificate<'_>) -> Result<KeyAlgorithm, String> {
    match cert.public_key().parsed() {
        Ok(PublicKey::EC(_)) => {
            let curve = cert
                .public_key()
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string())
                .unwrap_or_default();
            match curve.as_str() {
                "1.2.840.10045.3.1.7" => Ok(KeyAlgorithm::EcdsaP256),
                "1.3.132.0.34" => Ok(KeyAlgorithm::EcdsaP384),
                other => Err(format!("EC key on unsupported curve {other}")),
            }
        }
        Ok(PublicKey::RSA(rsa)) => Ok(KeyAlgorithm::Rsa(rsa.key_size() as u32)),
        Ok(_) => Err("unsupported public key algorithm".into()),
        Err(e) => Err(format!("unreadable public key: {e}")),
    }
}

fn family(k: KeyAlgorithm) -> &'static str {
    match k {
        KeyAlgorithm::Rsa(_) => "RSA",
        _ => "ECDSA",
    }
}

fn when(t: i64) -> String {
    OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| d.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| t.to_string())
}

/// Runs every check on `dir`. The result is never empty; any `ok == false` means unhealthy.
pub fn examine(dir: &Path, expect: &Expectations) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut push = |name, result: Result<String, String>| {
        let (ok, detail) = match result {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        checks.push(Check { name, ok, detail });
    };
    let read = |name: &str| std::fs::read(dir.join(name)).map_err(|e| format!("{}: {e}", dir.join(name).display()));
    let chain_ders = match read(CERTIFICATES).and_then(|b| pems(&b)) {
        Ok(c) => c,
        Err(e) => {
            push("certificates", Err(e));
            return checks;
        }
    };
    let roots_ders = read(CA_CERTIFICATES).and_then(|b| pems(&b));
    let mut chain = Vec::new();
    for der in &chain_ders {
        match X509Certificate::from_der(der) {
            Ok((_, c)) => chain.push(c),
            Err(e) => {
                push("certificates", Err(format!("{CERTIFICATES}: not X.509: {e}")));
                return checks;
            }
        }
    }
    let leaf = &chain[0];
    let now = expect.now.unwrap_or_else(OffsetDateTime::now_utc).unix_timestamp();
    let (nb, na) = (
        leaf.validity().not_before.timestamp(),
        leaf.validity().not_after.timestamp(),
    );
    push(
        "validity",
        if now < nb {
            Err(format!("not yet valid: notBefore {}", when(nb)))
        } else if now > na {
            Err(format!("expired: notAfter {}", when(na)))
        } else {
            Ok(format!("valid until {} ({} s left)", when(na), na - now))
        },
    );
    if let Some(config) = &expect.config {
        let (Ok(nbt), Ok(nat)) = (
            OffsetDateTime::from_unix_timestamp(nb),
            OffsetDateTime::from_unix_timestamp(na),
        ) else {
            return checks;
        };
        let rotate_at = config.rotation_time(nbt, nat).unix_timestamp();
        push(
            "rotation",
            if now >= rotate_at {
                Err(format!(
                    "inside its rotation window since {}: it should have been re-issued",
                    when(rotate_at)
                ))
            } else {
                Ok(format!(
                    "enters its {}% rotation window at {}",
                    config.rotation_window_percentage,
                    when(rotate_at)
                ))
            },
        );
    }
    let leaf_key = key_algorithm(leaf);
    push(
        "key algorithm",
        match (&leaf_key, &expect.config) {
            (Err(e), _) => Err(e.clone()),
            (Ok(k), Some(c)) if *k != c.key => Err(format!(
                "{} but the WorkloadCertificateConfig asks for {}",
                k.describe(),
                c.key.describe()
            )),
            (Ok(k), _) => Ok(k.describe()),
        },
    );
    let roots = parse_all(&roots_ders);
    // The issuing CA: the next certificate of the chain, or (single-level CA) the anchor.
    let issuer = chain.get(1).or_else(|| {
        roots
            .as_ref()
            .ok()?
            .iter()
            .find(|r| r.subject() == leaf.issuer() && leaf.verify_signature(Some(r.public_key())).is_ok())
    });
    push(
        "key family",
        match (&leaf_key, issuer.map(key_algorithm)) {
            (Ok(l), Some(Ok(i))) if family(*l) == family(i) => {
                Ok(format!("{} key issued by a {} CA", family(*l), family(i)))
            }
            (Ok(l), Some(Ok(i))) => Err(format!(
                "{} workload key but the issuing CA uses {}",
                family(*l),
                family(i)
            )),
            (_, None) => Err(format!(
                "no issuing CA: neither {CERTIFICATES} nor {CA_CERTIFICATES} holds the certificate that signed the workload's"
            )),
            (Err(e), _) => Err(e.clone()),
            (_, Some(Err(e))) => Err(e),
        },
    );
    let uris: Vec<String> = match leaf.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some((*u).to_owned()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    push(
        "SPIFFE ID",
        match uris.as_slice() {
            [id] => match meshauthz_table::spiffe::validate(id) {
                Err(e) => Err(format!("URI SAN `{id}` is not a SPIFFE ID: {e}")),
                Ok(()) => {
                    let domain = id.trim_start_matches("spiffe://").split('/').next().unwrap_or_default();
                    match &expect.trust_domain {
                        Some(td) if td != domain => Err(format!("{id} is in trust domain {domain}, expected {td}")),
                        _ => Ok(id.clone()),
                    }
                }
            },
            [] => Err("no URI SAN: an X.509-SVID has exactly one".into()),
            more => Err(format!("{} URI SANs: an X.509-SVID has exactly one", more.len())),
        },
    );
    push("key usage", leaf_key_usage(leaf, leaf_key.as_ref().ok().copied()));
    push("extended key usage", leaf_extended_key_usage(leaf));
    push("private key", private_key_matches(dir, leaf));
    push("chain", roots.and_then(|roots| verify_chain(&chain, &roots, now)));
    checks
}

fn parse_all(ders: &Result<Vec<Vec<u8>>, String>) -> Result<Vec<X509Certificate<'_>>, String> {
    let ders = ders.as_ref().map_err(Clone::clone)?;
    ders.iter()
        .map(|der| {
            X509Certificate::from_der(der)
                .map(|(_, c)| c)
                .map_err(|e| format!("{CA_CERTIFICATES}: not X.509: {e}"))
        })
        .collect()
}

/// A workload certificate signs (TLS handshakes); it is no CA, and it never signs certificates.
fn leaf_key_usage(leaf: &X509Certificate<'_>, key: Option<KeyAlgorithm>) -> Result<String, String> {
    let mut problems = Vec::new();
    if leaf.basic_constraints().ok().flatten().is_some_and(|b| b.value.ca) {
        problems.push("the workload certificate is a CA (CA:TRUE)".to_owned());
    }
    match leaf.key_usage() {
        Ok(Some(ku)) => {
            if !ku.value.digital_signature() {
                problems.push("keyUsage lacks digitalSignature".to_owned());
            }
            if ku.value.key_cert_sign() || ku.value.crl_sign() {
                problems.push("keyUsage allows signing certificates or CRLs".to_owned());
            }
            if ku.value.key_encipherment() && !matches!(key, Some(KeyAlgorithm::Rsa(_))) {
                problems.push("keyUsage has keyEncipherment, which only an RSA key can do".to_owned());
            }
        }
        Ok(None) => {}
        Err(e) => problems.push(format!("unreadable keyUsage: {e}")),
    }
    if problems.is_empty() {
        Ok("digitalSignature, not a CA".into())
    } else {
        Err(problems.join("; "))
    }
}

/// Mesh mTLS uses a workload certificate both ways: as a server and as a client.
fn leaf_extended_key_usage(leaf: &X509Certificate<'_>) -> Result<String, String> {
    match leaf.extended_key_usage() {
        Ok(Some(eku)) => match (eku.value.server_auth, eku.value.client_auth) {
            (true, true) => Ok("serverAuth and clientAuth".into()),
            (s, c) => Err(format!(
                "extendedKeyUsage lacks {}: mesh mTLS needs serverAuth and clientAuth",
                match (s, c) {
                    (false, false) => "serverAuth and clientAuth",
                    (false, true) => "serverAuth",
                    _ => "clientAuth",
                }
            )),
        },
        Ok(None) => Err("no extendedKeyUsage: mesh mTLS needs serverAuth and clientAuth".into()),
        Err(e) => Err(format!("unreadable extendedKeyUsage: {e}")),
    }
}

fn private_key_matches(dir: &Path, leaf: &X509Certificate<'_>) -> Result<String, String> {
    let path = dir.join(PRIVATE_KEY);
    let pem = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let key = rcgen::KeyPair::from_pem(&pem).map_err(|e| format!("{PRIVATE_KEY}: unreadable: {e}"))?;
    if key.public_key_raw() != leaf.public_key().subject_public_key.data.as_ref() {
        return Err(format!("{PRIVATE_KEY} does not belong to the workload certificate"));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0);
        if mode & 0o077 != 0 {
            return Err(format!(
                "{PRIVATE_KEY} matches, but its mode {mode:o} lets others read it (want 600)"
            ));
        }
    }
    Ok("matches the workload certificate".into())
}

/// Walks the chain from the workload certificate to a trust anchor in `roots`, checking each
/// link, and reports every problem found.
fn verify_chain(chain: &[X509Certificate<'_>], roots: &[X509Certificate<'_>], now: i64) -> Result<String, String> {
    let mut problems = Vec::new();
    // `path[i]` signs `path[i - 1]`; the anchor, once found, ends it.
    let mut path: Vec<&X509Certificate<'_>> = chain.iter().collect();
    for (i, pair) in chain.windows(2).enumerate() {
        if let Err(e) = pair[0].verify_signature(Some(pair[1].public_key())) {
            problems.push(format!(
                "certificate {i} of {CERTIFICATES} is not signed by certificate {}: {e}",
                i + 1
            ));
        }
    }
    let top = chain.last().ok_or("empty chain")?;
    let self_signed = top.subject() == top.issuer() && top.verify_signature(None).is_ok();
    let anchor = roots
        .iter()
        .find(|r| r.subject() == top.issuer() && top.verify_signature(Some(r.public_key())).is_ok());
    let anchor_name = match (anchor, self_signed) {
        (Some(a), _) => {
            if !(self_signed && a.public_key() == top.public_key()) {
                path.push(a);
            }
            a.subject().to_string()
        }
        (None, _) => {
            problems.push(format!(
                "`{}` does not chain to any certificate in {CA_CERTIFICATES}",
                top.issuer()
            ));
            String::new()
        }
    };
    // Every certificate that signs another in the path is a CA allowed to.
    for (j, ca) in path.iter().enumerate().skip(1) {
        let name = ca.subject();
        match ca.basic_constraints().ok().flatten() {
            Some(bc) if bc.value.ca => {
                // Intermediate CAs between this one and the workload certificate.
                let below = (j - 1) as u32;
                if let Some(len) = bc.value.path_len_constraint {
                    if below > len {
                        problems.push(format!(
                            "`{name}` has path length {len} but {below} CA certificate(s) below it"
                        ));
                    }
                }
            }
            _ => problems.push(format!("`{name}` signs certificates but is not a CA (no CA:TRUE)")),
        }
        if let Ok(Some(ku)) = ca.key_usage() {
            if !ku.value.key_cert_sign() {
                problems.push(format!(
                    "`{name}` signs certificates but its keyUsage lacks keyCertSign"
                ));
            }
        }
        let v = ca.validity();
        if now < v.not_before.timestamp() {
            problems.push(format!(
                "`{name}` is not yet valid: notBefore {}",
                when(v.not_before.timestamp())
            ));
        } else if now > v.not_after.timestamp() {
            problems.push(format!("`{name}` expired: notAfter {}", when(v.not_after.timestamp())));
        }
    }
    if problems.is_empty() {
        Ok(format!("{} certificate(s) verify to `{anchor_name}`", chain.len()))
    } else {
        Err(problems.join("; "))
    }
}
