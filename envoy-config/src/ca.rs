//! The mesh CA: the guide's two-level hierarchy (a root with path length 1, a subordinate
//! issuing CA with path length 0, both ECDSA P-256) issuing SPIFFE workload certificates in the
//! layout GKE mounts into pods:
//!
//! | file | content |
//! |---|---|
//! | `certificates.pem` | the workload certificate, then the issuing CA's |
//! | `private_key.pem` | the workload key (mode 0600) |
//! | `ca_certificates.pem` | the trust anchor (root CA) |

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType, SignatureAlgorithm,
};
use time::{Duration, OffsetDateTime};

pub const CERTIFICATES: &str = "certificates.pem";
pub const PRIVATE_KEY: &str = "private_key.pem";
pub const CA_CERTIFICATES: &str = "ca_certificates.pem";

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{0}")]
    Invalid(String),
}

/// Key algorithms a `WorkloadCertificateConfig` can ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyAlgorithm {
    EcdsaP256,
    EcdsaP384,
    Rsa(u32),
}

impl KeyAlgorithm {
    fn generate(self) -> Result<KeyPair, CaError> {
        let alg: &'static SignatureAlgorithm = match self {
            KeyAlgorithm::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyAlgorithm::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyAlgorithm::Rsa(bits) => return rsa_key(bits),
        };
        Ok(KeyPair::generate_for(alg)?)
    }

    /// How the doctor names it (as `openssl x509 -text` "Public Key Algorithm" would).
    pub fn describe(self) -> String {
        match self {
            KeyAlgorithm::EcdsaP256 => "ECDSA P-256".into(),
            KeyAlgorithm::EcdsaP384 => "ECDSA P-384".into(),
            KeyAlgorithm::Rsa(bits) => format!("RSA {bits}"),
        }
    }
}

/// rcgen signs with RSA keys but cannot make them; the `rsa` crate does.
fn rsa_key(bits: u32) -> Result<KeyPair, CaError> {
    use rsa::pkcs8::EncodePrivateKey;
    if ![2048, 3072, 4096].contains(&bits) {
        return Err(CaError::Invalid(format!(
            "RSA modulus size {bits} is not 2048, 3072 or 4096"
        )));
    }
    let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), bits as usize)
        .map_err(|e| CaError::Invalid(format!("RSA key generation: {e}")))?;
    let pem = key
        .to_pkcs8_pem(rsa::pkcs8::LineEnding::LF)
        .map_err(|e| CaError::Invalid(format!("RSA key encoding: {e}")))?;
    Ok(KeyPair::from_pkcs8_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256)?)
}

/// The parts of a GKE `WorkloadCertificateConfig` that say how certificates are issued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkloadCertificateConfig {
    pub key: KeyAlgorithm,
    pub validity: Duration,
    /// Re-issue once less than this share of the validity remains.
    pub rotation_window_percentage: u8,
}

impl Default for WorkloadCertificateConfig {
    /// GKE's defaults: ECDSA P-256, one day, rotate at 50%.
    fn default() -> Self {
        WorkloadCertificateConfig {
            key: KeyAlgorithm::EcdsaP256,
            validity: Duration::days(1),
            rotation_window_percentage: 50,
        }
    }
}

/// The YAML shape, read leniently outside `spec` (apiVersion, metadata) and strictly inside.
mod wcc {
    use serde::Deserialize;

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct File {
        pub kind: Option<String>,
        pub spec: Spec,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct Spec {
        #[serde(rename = "certificateAuthorityConfig")]
        pub _ca: Option<serde_yaml_ng::Value>,
        pub key_algorithm: Option<KeyAlgorithm>,
        pub validity_duration_seconds: Option<i64>,
        pub rotation_window_percentage: Option<u8>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct KeyAlgorithm {
        pub rsa: Option<Rsa>,
        pub ecdsa: Option<Ecdsa>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct Rsa {
        pub modulus_size: u32,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct Ecdsa {
        pub curve: String,
    }
}

impl WorkloadCertificateConfig {
    pub fn parse(text: &str) -> Result<WorkloadCertificateConfig, CaError> {
        let invalid = |m: String| CaError::Invalid(format!("WorkloadCertificateConfig: {m}"));
        let f: wcc::File = serde_yaml_ng::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if let Some(kind) = f.kind.filter(|k| k != "WorkloadCertificateConfig") {
            return Err(invalid(format!(
                "kind: expected WorkloadCertificateConfig, found {kind}"
            )));
        }
        let mut c = WorkloadCertificateConfig::default();
        if let Some(k) = f.spec.key_algorithm {
            c.key = match (k.rsa, k.ecdsa) {
                (Some(rsa), None) if [2048, 3072, 4096].contains(&rsa.modulus_size) => {
                    KeyAlgorithm::Rsa(rsa.modulus_size)
                }
                (Some(rsa), None) => {
                    return Err(invalid(format!(
                        "spec.keyAlgorithm.rsa.modulusSize: {} is not 2048, 3072 or 4096",
                        rsa.modulus_size
                    )));
                }
                (None, Some(ec)) => match ec.curve.as_str() {
                    "P256" => KeyAlgorithm::EcdsaP256,
                    "P384" => KeyAlgorithm::EcdsaP384,
                    other => {
                        return Err(invalid(format!(
                            "spec.keyAlgorithm.ecdsa.curve: `{other}` is not P256 or P384"
                        )));
                    }
                },
                _ => return Err(invalid("spec.keyAlgorithm: give exactly one of rsa, ecdsa".into())),
            };
        }
        if let Some(secs) = f.spec.validity_duration_seconds {
            if secs <= 0 {
                return Err(invalid(format!(
                    "spec.validityDurationSeconds: {secs} must be positive"
                )));
            }
            c.validity = Duration::seconds(secs);
        }
        if let Some(p) = f.spec.rotation_window_percentage {
            if !(1..=99).contains(&p) {
                return Err(invalid(format!("spec.rotationWindowPercentage: {p} is not in 1..=99")));
            }
            c.rotation_window_percentage = p;
        }
        Ok(c)
    }

    /// When a certificate valid from `not_before` to `not_after` enters its rotation window.
    pub fn rotation_time(&self, not_before: OffsetDateTime, not_after: OffsetDateTime) -> OffsetDateTime {
        let life = not_after - not_before;
        not_after - life * (f64::from(self.rotation_window_percentage) / 100.0)
    }
}

/// What one workload certificate says.
#[derive(Clone, Debug)]
pub struct LeafSpec {
    /// URI SANs; an X.509-SVID has exactly one, the SPIFFE ID.
    pub uris: Vec<String>,
    pub dns: Vec<String>,
    pub common_name: Option<String>,
    pub key: KeyAlgorithm,
    pub not_before: OffsetDateTime,
    pub validity: Duration,
}

impl LeafSpec {
    /// An X.509-SVID for `spiffe_id` as `config` says, valid from a minute ago.
    pub fn svid_with(spiffe_id: &str, config: &WorkloadCertificateConfig) -> LeafSpec {
        LeafSpec {
            key: config.key,
            validity: config.validity,
            ..LeafSpec::svid(spiffe_id)
        }
    }

    /// A one-day ECDSA P-256 X.509-SVID for `spiffe_id`, valid from a minute ago.
    pub fn svid(spiffe_id: &str) -> LeafSpec {
        LeafSpec {
            uris: vec![spiffe_id.to_owned()],
            dns: Vec::new(),
            common_name: None,
            key: KeyAlgorithm::EcdsaP256,
            not_before: OffsetDateTime::now_utc() - Duration::minutes(1),
            validity: Duration::days(1),
        }
    }
}

/// A workload's credentials, as PEM text.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// Leaf then issuing CA.
    pub certificates: String,
    pub private_key: String,
    /// The root CA.
    pub ca_certificates: String,
}

impl Credentials {
    /// Writes the GKE layout into `dir` (created if needed); the key gets mode 0600.
    pub fn write_to(&self, dir: &Path) -> Result<(), CaError> {
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| CaError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        write_file(&dir.join(CERTIFICATES), &self.certificates, 0o644)?;
        write_file(&dir.join(PRIVATE_KEY), &self.private_key, 0o600)?;
        write_file(&dir.join(CA_CERTIFICATES), &self.ca_certificates, 0o644)
    }
}

/// Writes through a temporary file and a rename, so a watcher (Envoy's SDS) never reads half a
/// file, with `mode` set before the content lands.
pub fn write_file(path: &Path, content: &str, mode: u32) -> Result<(), CaError> {
    use std::io::Write;
    let err = |source| CaError::Io {
        path: path.display().to_string(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    let mut f = options.open(&tmp).map_err(err)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(err)?;
    }
    f.write_all(content.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

pub const ROOT_CERT: &str = "root.pem";
pub const ROOT_KEY: &str = "root.key";
pub const ISSUING_CERT: &str = "issuing.pem";
pub const ISSUING_KEY: &str = "issuing.key";

/// A root and an issuing CA, with their keys.
pub struct MeshCa {
    root_pem: String,
    root_key: KeyPair,
    /// The issuing CA's certificate as the root signed it (what chains carry).
    issuing_pem: String,
    /// The same name and key, in the form rcgen signs with.
    issuer: rcgen::Certificate,
    issuing_key: KeyPair,
}

impl std::fmt::Debug for MeshCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print keys.
        f.debug_struct("MeshCa").finish_non_exhaustive()
    }
}

fn ca_params(common_name: &str, organization: &str, path_len: u8, validity: Duration) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, organization);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = OffsetDateTime::now_utc() - Duration::minutes(5);
    params.not_after = params.not_before + validity;
    params
}

impl MeshCa {
    /// The guide's hierarchy: `CN=pkcs2-ca, O=<org>` (path length 1) over `CN=td-ca, O=<org>`
    /// (path length 0).
    pub fn generate(organization: &str) -> Result<MeshCa, CaError> {
        let root_key = KeyAlgorithm::EcdsaP256.generate()?;
        let root = ca_params("pkcs2-ca", organization, 1, Duration::days(3650)).self_signed(&root_key)?;
        let issuing_key = KeyAlgorithm::EcdsaP256.generate()?;
        let issuing =
            ca_params("td-ca", organization, 0, Duration::days(365)).signed_by(&issuing_key, &root, &root_key)?;
        Ok(MeshCa {
            root_pem: root.pem(),
            root_key,
            issuing_pem: issuing.pem(),
            issuer: issuing,
            issuing_key,
        })
    }

    /// Writes the CA into `dir`; keys get mode 0600.
    pub fn save(&self, dir: &Path) -> Result<(), CaError> {
        std::fs::create_dir_all(dir).map_err(|source| CaError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        write_file(&dir.join(ROOT_CERT), &self.root_pem, 0o644)?;
        write_file(&dir.join(ROOT_KEY), &self.root_key.serialize_pem(), 0o600)?;
        write_file(&dir.join(ISSUING_CERT), &self.issuing_pem, 0o644)?;
        write_file(&dir.join(ISSUING_KEY), &self.issuing_key.serialize_pem(), 0o600)
    }

    /// Reads a CA written by [`MeshCa::save`].
    pub fn load(dir: &Path) -> Result<MeshCa, CaError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| CaError::Io {
                path: path.display().to_string(),
                source,
            })
        };
        let root_pem = read(ROOT_CERT)?;
        let root_key = KeyPair::from_pem(&read(ROOT_KEY)?)?;
        let issuing_pem = read(ISSUING_CERT)?;
        let issuing_key = KeyPair::from_pem(&read(ISSUING_KEY)?)?;
        let issuer = CertificateParams::from_ca_cert_pem(&issuing_pem)?.self_signed(&issuing_key)?;
        Ok(MeshCa {
            root_pem,
            root_key,
            issuing_pem,
            issuer,
            issuing_key,
        })
    }

    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    pub fn issuing_pem(&self) -> &str {
        &self.issuing_pem
    }

    /// The root key, PEM (PKCS#8).
    pub fn root_key_pem(&self) -> String {
        self.root_key.serialize_pem()
    }

    /// The issuing CA's key, PEM (PKCS#8).
    pub fn issuing_key_pem(&self) -> String {
        self.issuing_key.serialize_pem()
    }

    /// Issues a workload certificate signed by the issuing CA.
    pub fn issue(&self, spec: &LeafSpec) -> Result<Credentials, CaError> {
        let key = spec.key.generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        if let Some(cn) = &spec.common_name {
            dn.push(DnType::CommonName, cn.as_str());
        }
        params.distinguished_name = dn;
        for uri in &spec.uris {
            let ia5 = uri
                .clone()
                .try_into()
                .map_err(|_| CaError::Invalid(format!("URI SAN `{uri}` is not ASCII")))?;
            params.subject_alt_names.push(SanType::URI(ia5));
        }
        for name in &spec.dns {
            let ia5 = name
                .clone()
                .try_into()
                .map_err(|_| CaError::Invalid(format!("DNS SAN `{name}` is not ASCII")))?;
            params.subject_alt_names.push(SanType::DnsName(ia5));
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = spec.not_before;
        params.not_after = spec.not_before + spec.validity;
        let leaf = params.signed_by(&key, &self.issuer, &self.issuing_key)?;
        Ok(Credentials {
            certificates: format!("{}{}", leaf.pem(), self.issuing_pem),
            private_key: key.serialize_pem(),
            ca_certificates: self.root_pem.clone(),
        })
    }
}

/// The SPIFFE ID and validity of the workload certificate in `dir` (for rotation).
pub fn read_leaf(dir: &Path) -> Result<(String, OffsetDateTime, OffsetDateTime), CaError> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let path = dir.join(CERTIFICATES);
    let bytes = std::fs::read(&path).map_err(|source| CaError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let invalid = |m: String| CaError::Invalid(format!("{}: {m}", path.display()));
    let (_, pem) = x509_parser::pem::parse_x509_pem(&bytes).map_err(|e| invalid(e.to_string()))?;
    let (_, cert) = X509Certificate::from_der(&pem.contents).map_err(|e| invalid(e.to_string()))?;
    let uris: Vec<&str> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some(*u),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let [id] = uris.as_slice() else {
        return Err(invalid(format!(
            "{} URI SANs; cannot tell which identity to re-issue",
            uris.len()
        )));
    };
    Ok((
        id.to_string(),
        cert.validity().not_before.to_datetime(),
        cert.validity().not_after.to_datetime(),
    ))
}
