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
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, SignatureAlgorithm,
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
    Io {
        path: String,
        source: std::io::Error,
    },
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
            KeyAlgorithm::Rsa(bits) => {
                return Err(CaError::Invalid(format!(
                    "RSA-{bits} keys are not supported by this build"
                )));
            }
        };
        Ok(KeyPair::generate_for(alg)?)
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
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(err)?;
    }
    f.write_all(content.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// A root and an issuing CA, with their keys.
pub struct MeshCa {
    root_pem: String,
    root_key: KeyPair,
    issuing: rcgen::Certificate,
    issuing_key: KeyPair,
}

impl std::fmt::Debug for MeshCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print keys.
        f.debug_struct("MeshCa").finish_non_exhaustive()
    }
}

fn ca_params(
    common_name: &str,
    organization: &str,
    path_len: u8,
    validity: Duration,
) -> CertificateParams {
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
        let root =
            ca_params("pkcs2-ca", organization, 1, Duration::days(3650)).self_signed(&root_key)?;
        let issuing_key = KeyAlgorithm::EcdsaP256.generate()?;
        let issuing = ca_params("td-ca", organization, 0, Duration::days(365)).signed_by(
            &issuing_key,
            &root,
            &root_key,
        )?;
        Ok(MeshCa {
            root_pem: root.pem(),
            root_key,
            issuing,
            issuing_key,
        })
    }

    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    pub fn issuing_pem(&self) -> String {
        self.issuing.pem()
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
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = spec.not_before;
        params.not_after = spec.not_before + spec.validity;
        let leaf = params.signed_by(&key, &self.issuing, &self.issuing_key)?;
        Ok(Credentials {
            certificates: format!("{}{}", leaf.pem(), self.issuing.pem()),
            private_key: key.serialize_pem(),
            ca_certificates: self.root_pem.clone(),
        })
    }
}
