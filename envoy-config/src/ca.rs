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
/// file. The temporary file is created in the target's directory with a random name and
/// `O_EXCL` (never through a predictable name an attacker could have linked elsewhere), with
/// `mode` set before any content is written; the rename replaces a link at `path` rather than
/// following it.
pub fn write_file(path: &Path, content: &str, mode: u32) -> Result<(), CaError> {
    use std::io::Write;
    let err = |source| CaError::Io {
        path: path.display().to_string(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".meshauthz-")
        .tempfile_in(dir)
        .map_err(err)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(err)?;
    }
    #[cfg(not(unix))]
    let _ = mode;
    tmp.write_all(content.as_bytes()).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}

/// A random positive 16-byte serial number (RFC 5280 4.1.2.2: at most 20 octets, unpredictable
/// serials as CA/B practice asks).
fn random_serial() -> rcgen::SerialNumber {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x40; // and a full 16 octets once DER-encoded
    rcgen::SerialNumber::from_slice(&bytes)
}

/// The SubjectAltName extension, critical: a workload certificate has an empty subject (as GKE's
/// do), and RFC 5280 4.2.1.6 then requires the SAN to be critical. rcgen writes it non-critical,
/// so it is encoded here: `GeneralNames` with URIs (`[6]`) and DNS names (`[2]`).
fn critical_san(uris: &[String], dns: &[String]) -> rcgen::CustomExtension {
    fn der(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = content.len();
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes: Vec<u8> = len.to_be_bytes().into_iter().skip_while(|&b| b == 0).collect();
            out.push(0x80 | bytes.len() as u8);
            out.extend(bytes);
        }
        out.extend_from_slice(content);
        out
    }
    let mut names = Vec::new();
    for u in uris {
        names.extend(der(0x86, u.as_bytes()));
    }
    for d in dns {
        names.extend(der(0x82, d.as_bytes()));
    }
    let mut ext = rcgen::CustomExtension::from_oid_content(&[2, 5, 29, 17], der(0x30, &names));
    ext.set_criticality(true);
    ext
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
    /// No certificate it issues outlives it.
    issuing_not_after: OffsetDateTime,
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
    params.serial_number = Some(random_serial());
    // RFC 5280 4.2.1.1 (and `openssl verify -x509_strict`) want the issuer's key identifier.
    params.use_authority_key_identifier_extension = true;
    params
}

/// A certificate's notAfter.
fn not_after(pem: &str) -> Result<OffsetDateTime, CaError> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let invalid = |m: String| CaError::Invalid(format!("issuing CA certificate: {m}"));
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| invalid(e.to_string()))?;
    let (_, cert) = X509Certificate::from_der(&pem.contents).map_err(|e| invalid(e.to_string()))?;
    Ok(cert.validity().not_after.to_datetime())
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
        let issuing_pem = issuing.pem();
        Ok(MeshCa {
            root_pem: root.pem(),
            root_key,
            issuing_not_after: not_after(&issuing_pem)?,
            issuing_pem,
            issuer: issuing,
            issuing_key,
        })
    }

    /// The files [`MeshCa::save`] writes.
    pub const FILES: [&'static str; 4] = [ROOT_CERT, ROOT_KEY, ISSUING_CERT, ISSUING_KEY];

    /// Writes the CA into `dir`; keys get mode 0600. An existing CA there is an error, unless
    /// `replace`, and then its files are first renamed to `<name>.<unix time>.bak`.
    pub fn save(&self, dir: &Path, replace: bool) -> Result<(), CaError> {
        std::fs::create_dir_all(dir).map_err(|source| CaError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let existing: Vec<&str> = Self::FILES
            .into_iter()
            .filter(|f| dir.join(f).symlink_metadata().is_ok())
            .collect();
        if !existing.is_empty() && !replace {
            return Err(CaError::Invalid(format!(
                "{} already holds a CA ({}): refusing to overwrite it (--force replaces it and keeps the old files as backups)",
                dir.display(),
                existing.join(", ")
            )));
        }
        let stamp = OffsetDateTime::now_utc().unix_timestamp();
        for f in existing {
            let (from, to) = (dir.join(f), dir.join(format!("{f}.{stamp}.bak")));
            std::fs::rename(&from, &to).map_err(|source| CaError::Io {
                path: from.display().to_string(),
                source,
            })?;
        }
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
            issuing_not_after: not_after(&issuing_pem)?,
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
        for name in spec.uris.iter().chain(&spec.dns) {
            if !name.is_ascii() || name.is_empty() {
                return Err(CaError::Invalid(format!("SAN `{name}` is not a non-empty ASCII name")));
            }
        }
        if dn.iter().next().is_some() {
            params.distinguished_name = dn;
            params.subject_alt_names = spec
                .uris
                .iter()
                .filter_map(|u| u.clone().try_into().ok().map(SanType::URI))
                .chain(
                    spec.dns
                        .iter()
                        .filter_map(|d| d.clone().try_into().ok().map(SanType::DnsName)),
                )
                .collect();
        } else {
            // An empty subject: the SAN carries the identity and must be critical.
            params.distinguished_name = dn;
            if !spec.uris.is_empty() || !spec.dns.is_empty() {
                params.custom_extensions.push(critical_san(&spec.uris, &spec.dns));
            }
        }
        params.is_ca = IsCa::ExplicitNoCa;
        // keyEncipherment is for RSA key transport; an ECDSA key only signs.
        params.key_usages = match spec.key {
            KeyAlgorithm::Rsa(_) => vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment],
            _ => vec![KeyUsagePurpose::DigitalSignature],
        };
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        params.not_before = spec.not_before;
        params.not_after = (spec.not_before + spec.validity).min(self.issuing_not_after);
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
