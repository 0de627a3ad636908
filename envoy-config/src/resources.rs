//! The guide's Cloud Service Mesh resources, read as the guide writes them (`gcloud ... import`
//! YAML: no `kind`, camelCase fields, references as `projects/P/locations/global/<kind>/<name>`).
//!
//! A file's kind is recognised by the fields only that kind has. Unknown fields are errors (a
//! misspelt `mtlsPolicy` would otherwise silently drop client authentication), and so is every
//! reference to a missing resource or to a resource of the wrong kind.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ResourceError {
    pub file: String,
    pub message: String,
}

fn err(file: &str, message: impl Into<String>) -> ResourceError {
    ResourceError {
        file: file.to_owned(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Mesh {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub interception_port: Option<u16>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRoute {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub meshes: Vec<String>,
    #[serde(default)]
    pub gateways: Vec<String>,
    pub rules: Vec<RouteRule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteRule {
    pub action: RouteAction,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteAction {
    pub destinations: Vec<RouteDestination>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteDestination {
    pub service_name: String,
    #[serde(default)]
    pub weight: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CertificateProvider {
    pub certificate_provider_instance: PluginInstance,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PluginInstance {
    pub plugin_instance: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClientTlsPolicy {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub sni: Option<String>,
    #[serde(default)]
    pub client_certificate: Option<CertificateProvider>,
    #[serde(default)]
    pub server_validation_ca: Vec<CertificateProvider>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServerTlsPolicy {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub allow_open: Option<bool>,
    #[serde(default)]
    pub server_certificate: Option<CertificateProvider>,
    #[serde(default)]
    pub mtls_policy: Option<MtlsPolicy>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MtlsPolicy {
    pub client_validation_ca: Vec<CertificateProvider>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EndpointPolicy {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(rename = "type")]
    pub kind: String,
    pub endpoint_matcher: EndpointMatcher,
    #[serde(default)]
    pub server_tls_policy: Option<String>,
    #[serde(default)]
    pub authorization_policy: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EndpointMatcher {
    pub metadata_label_matcher: MetadataLabelMatcher,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MetadataLabelMatcher {
    pub metadata_label_match_criteria: MatchCriteria,
    #[serde(default)]
    pub metadata_labels: Vec<MetadataLabel>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MatchCriteria {
    MatchAll,
    MatchAny,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MetadataLabel {
    pub label_name: String,
    pub label_value: String,
}

impl EndpointPolicy {
    /// Whether a workload with `labels` is selected (MATCH_ALL: every label; MATCH_ANY: one).
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        let m = &self.endpoint_matcher.metadata_label_matcher;
        let has = |l: &MetadataLabel| labels.get(&l.label_name) == Some(&l.label_value);
        match m.metadata_label_match_criteria {
            MatchCriteria::MatchAll => m.metadata_labels.iter().all(has),
            MatchCriteria::MatchAny => m.metadata_labels.iter().any(has),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Gateway {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub scope: String,
    pub ports: Vec<u16>,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, rename = "serverTLSPolicy")]
    pub server_tls_policy: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BackendService {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub load_balancing_scheme: Option<String>,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub health_checks: Vec<String>,
    #[serde(default)]
    pub security_settings: Option<SecuritySettings>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecuritySettings {
    pub client_tls_policy: String,
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
}

/// Every resource given, by kind, with the file it came from.
#[derive(Debug, Default)]
pub struct Resources {
    pub meshes: Vec<(String, Mesh)>,
    pub http_routes: Vec<(String, HttpRoute)>,
    pub client_tls_policies: Vec<(String, ClientTlsPolicy)>,
    pub server_tls_policies: Vec<(String, ServerTlsPolicy)>,
    pub endpoint_policies: Vec<(String, EndpointPolicy)>,
    pub gateways: Vec<(String, Gateway)>,
    pub backend_services: Vec<(String, BackendService)>,
    /// AuthorizationPolicy files: (file, policy name); compiled by the policy compiler.
    pub authorization_policies: Vec<(String, String)>,
    pub authorization_texts: Vec<(String, String)>,
}

/// The collection name a reference uses for each kind.
pub mod kind {
    pub const MESH: &str = "meshes";
    pub const BACKEND_SERVICE: &str = "backendServices";
    pub const CLIENT_TLS: &str = "clientTlsPolicies";
    pub const SERVER_TLS: &str = "serverTlsPolicies";
    pub const AUTHZ: &str = "authorizationPolicies";
    pub const GATEWAY: &str = "gateways";
}

/// Splits `projects/P/locations/global/<collection>/<name>` and checks the collection.
pub fn reference<'a>(file: &str, field: &str, text: &'a str, want: &str) -> Result<&'a str, ResourceError> {
    let parts: Vec<&str> = text.split('/').collect();
    match parts.as_slice() {
        ["projects", _, "locations", "global", collection, name] if !name.is_empty() => {
            if *collection == want {
                Ok(name)
            } else {
                Err(err(
                    file,
                    format!("{field}: `{text}` refers to {collection}, expected {want}"),
                ))
            }
        }
        _ => Err(err(
            file,
            format!("{field}: `{text}` is not a reference of the form projects/PROJECT/locations/global/{want}/NAME"),
        )),
    }
}

impl Resources {
    /// Reads one resource file, recognising its kind.
    pub fn add_file(&mut self, path: &Path) -> Result<(), ResourceError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| err(&file, format!("cannot read: {e}")))?;
        self.add_text(&file, &text)
    }

    pub fn add_text(&mut self, file: &str, text: &str) -> Result<(), ResourceError> {
        let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).map_err(|e| err(file, e.to_string()))?;
        let map = value
            .as_mapping()
            .ok_or_else(|| err(file, "expected a mapping (one resource per file)"))?;
        let has = |k: &str| map.contains_key(k);
        fn parse<T: for<'de> Deserialize<'de>>(file: &str, text: &str, kind: &str) -> Result<T, ResourceError> {
            serde_yaml_ng::from_str(text).map_err(|e| err(file, format!("{kind}: {e}")))
        }
        if has("action") {
            let name = map.get("name").and_then(|n| n.as_str()).unwrap_or_default().to_owned();
            self.authorization_policies.push((file.to_owned(), name));
            self.authorization_texts.push((file.to_owned(), text.to_owned()));
        } else if has("endpointMatcher") {
            self.endpoint_policies
                .push((file.to_owned(), parse(file, text, "EndpointPolicy")?));
        } else if has("scope") {
            self.gateways.push((file.to_owned(), parse(file, text, "Gateway")?));
        } else if has("hostnames") || has("rules") {
            self.http_routes
                .push((file.to_owned(), parse(file, text, "HTTPRoute")?));
        } else if has("clientCertificate") || has("serverValidationCa") {
            self.client_tls_policies
                .push((file.to_owned(), parse(file, text, "ClientTlsPolicy")?));
        } else if has("serverCertificate") || has("mtlsPolicy") {
            self.server_tls_policies
                .push((file.to_owned(), parse(file, text, "ServerTlsPolicy")?));
        } else if has("securitySettings") || has("loadBalancingScheme") {
            self.backend_services
                .push((file.to_owned(), parse(file, text, "BackendService")?));
        } else if has("interceptionPort") {
            self.meshes.push((file.to_owned(), parse(file, text, "Mesh")?));
        } else {
            return Err(err(
                file,
                "cannot tell which resource this is (expected a Mesh, HTTPRoute, ClientTlsPolicy, ServerTlsPolicy, EndpointPolicy, Gateway, BackendService or AuthorizationPolicy)",
            ));
        }
        Ok(())
    }
}
