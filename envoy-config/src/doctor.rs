//! The certificate doctor: the guide's troubleshooting checks on a workload credentials
//! directory (GKE layout), one line per check, `ok` or `FAIL` with the reason.

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
    let issuer_key = chain.get(1).map(key_algorithm);
    push(
        "key family",
        match (&leaf_key, issuer_key.as_ref()) {
            (Ok(l), Some(Ok(i))) if family(*l) == family(*i) => {
                Ok(format!("{} key issued by a {} CA", family(*l), family(*i)))
            }
            (Ok(l), Some(Ok(i))) => Err(format!(
                "{} workload key but the issuing CA uses {}",
                family(*l),
                family(*i)
            )),
            (_, None) => Err(format!(
                "{CERTIFICATES} holds no issuing CA certificate after the workload's"
            )),
            (Err(e), _) | (_, Some(Err(e))) => Err(e.clone()),
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
    push("private key", private_key_matches(dir, leaf));
    push("chain", verify_chain(&chain, roots_ders, now));
    checks
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

fn verify_chain(
    chain: &[X509Certificate<'_>],
    roots: Result<Vec<Vec<u8>>, String>,
    now: i64,
) -> Result<String, String> {
    let roots_der = roots?;
    let mut roots = Vec::new();
    for der in &roots_der {
        roots.push(
            X509Certificate::from_der(der)
                .map_err(|e| format!("{CA_CERTIFICATES}: not X.509: {e}"))?
                .1,
        );
    }
    for (i, cert) in chain.iter().enumerate() {
        let Some(issuer) = chain.get(i + 1) else { break };
        cert.verify_signature(Some(issuer.public_key())).map_err(|e| {
            format!(
                "certificate {i} is not signed by certificate {} of {CERTIFICATES}: {e}",
                i + 1
            )
        })?;
        let is_ca = issuer.basic_constraints().ok().flatten().is_some_and(|b| b.value.ca);
        if !is_ca {
            return Err(format!("certificate {} of {CERTIFICATES} signs but is not a CA", i + 1));
        }
        let v = issuer.validity();
        if now < v.not_before.timestamp() || now > v.not_after.timestamp() {
            return Err(format!("issuing CA `{}` is outside its validity", issuer.subject()));
        }
    }
    let top = chain.last().ok_or("empty chain")?;
    let anchor = roots
        .iter()
        .find(|r| r.subject() == top.issuer() && top.verify_signature(Some(r.public_key())).is_ok())
        .ok_or_else(|| {
            format!(
                "`{}` does not chain to any certificate in {CA_CERTIFICATES}",
                top.issuer()
            )
        })?;
    Ok(format!(
        "{} certificate(s) verify to `{}`",
        chain.len(),
        anchor.subject()
    ))
}
