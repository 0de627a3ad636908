//! The guide's resources as one model: indexed by name (a duplicate name is an error), every
//! reference resolved to a resource of the right kind, and every field the generator cannot
//! honour rejected with the file and field named. [`crate::generate`] builds from a model
//! only once it is consistent.

use std::collections::BTreeMap;

use crate::generate::SPIFFE_PLUGIN;
use crate::resources::{
    BackendService, CertificateProvider, ClientTlsPolicy, Gateway, HttpRoute, Mesh, ResourceError, Resources,
    ServerTlsPolicy, kind, reference,
};

pub(crate) fn fail(file: &str, message: impl Into<String>) -> ResourceError {
    ResourceError {
        file: file.to_owned(),
        message: message.into(),
    }
}

/// Resources indexed by name, every reference checked.
pub(crate) struct Model<'r> {
    pub(crate) res: &'r Resources,
    pub(crate) meshes: BTreeMap<&'r str, (&'r str, &'r Mesh)>,
    pub(crate) routes: Vec<(&'r str, &'r HttpRoute)>,
    pub(crate) client_tls: BTreeMap<&'r str, (&'r str, &'r ClientTlsPolicy)>,
    pub(crate) server_tls: BTreeMap<&'r str, (&'r str, &'r ServerTlsPolicy)>,
    pub(crate) gateways: BTreeMap<&'r str, (&'r str, &'r Gateway)>,
    pub(crate) backends: BTreeMap<&'r str, (&'r str, &'r BackendService)>,
    pub(crate) authz: BTreeMap<&'r str, &'r str>,
}

fn index<'r, T>(
    items: &'r [(String, T)],
    name: impl Fn(&T) -> &str,
    what: &str,
) -> Result<BTreeMap<&'r str, (&'r str, &'r T)>, ResourceError> {
    let mut out = BTreeMap::new();
    for (file, item) in items {
        let n = name(item);
        if let Some((first, _)) = out.insert(n, (file.as_str(), item)) {
            return Err(fail(file, format!("name: duplicate {what} `{n}` (also in {first})")));
        }
    }
    Ok(out)
}

fn check_provider(file: &str, field: &str, p: &CertificateProvider) -> Result<(), ResourceError> {
    let plugin = &p.certificate_provider_instance.plugin_instance;
    if plugin == SPIFFE_PLUGIN {
        Ok(())
    } else {
        Err(fail(
            file,
            format!("{field}: certificate provider `{plugin}` is not supported (only {SPIFFE_PLUGIN})"),
        ))
    }
}

impl<'r> Model<'r> {
    pub(crate) fn new(res: &'r Resources) -> Result<Model<'r>, ResourceError> {
        let m = Model {
            res,
            meshes: index(&res.meshes, |m| &m.name, "Mesh")?,
            routes: res.http_routes.iter().map(|(f, r)| (f.as_str(), r)).collect(),
            client_tls: index(&res.client_tls_policies, |p| &p.name, "ClientTlsPolicy")?,
            server_tls: index(&res.server_tls_policies, |p| &p.name, "ServerTlsPolicy")?,
            gateways: index(&res.gateways, |g| &g.name, "Gateway")?,
            backends: index(&res.backend_services, |b| &b.name, "BackendService")?,
            authz: index(
                &res.authorization_policies,
                |n: &String| n.as_str(),
                "AuthorizationPolicy",
            )?
            .into_iter()
            .map(|(name, (file, _))| (name, file))
            .collect(),
        };
        index(&res.http_routes, |r| &r.name, "HTTPRoute")?;
        index(&res.endpoint_policies, |p| &p.name, "EndpointPolicy")?;
        m.check_references()?;
        Ok(m)
    }

    fn resolve<'t, T>(
        &self,
        file: &str,
        field: &str,
        text: &'t str,
        collection: &str,
        map: &BTreeMap<&str, T>,
    ) -> Result<&'t str, ResourceError> {
        let name = reference(file, field, text, collection)?;
        if map.contains_key(name) {
            Ok(name)
        } else {
            Err(fail(
                file,
                format!("{field}: `{text}` names {collection}/{name}, which no given file defines"),
            ))
        }
    }

    fn check_references(&self) -> Result<(), ResourceError> {
        for (file, r) in &self.routes {
            if r.rules.len() != 1 {
                return Err(fail(
                    file,
                    format!(
                        "rules: {} rules; exactly one is supported (a rule without `matches` matches every request, so a second could never apply)",
                        r.rules.len()
                    ),
                ));
            }
            for (i, m) in r.meshes.iter().enumerate() {
                self.resolve(file, &format!("meshes[{i}]"), m, kind::MESH, &self.meshes)?;
            }
            for (i, g) in r.gateways.iter().enumerate() {
                self.resolve(file, &format!("gateways[{i}]"), g, kind::GATEWAY, &self.gateways)?;
            }
            for (i, rule) in r.rules.iter().enumerate() {
                for (j, d) in rule.action.destinations.iter().enumerate() {
                    let field = format!("rules[{i}].action.destinations[{j}].serviceName");
                    self.resolve(file, &field, &d.service_name, kind::BACKEND_SERVICE, &self.backends)?;
                }
            }
        }
        for (file, b) in self.backends.values() {
            if let Some(s) = &b.security_settings {
                self.resolve(
                    file,
                    "securitySettings.clientTlsPolicy",
                    &s.client_tls_policy,
                    kind::CLIENT_TLS,
                    &self.client_tls,
                )?;
            }
        }
        for (file, p) in self.client_tls.values() {
            if let Some(c) = &p.client_certificate {
                check_provider(file, "clientCertificate", c)?;
            }
            for (i, c) in p.server_validation_ca.iter().enumerate() {
                check_provider(file, &format!("serverValidationCa[{i}]"), c)?;
            }
        }
        for (file, p) in self.server_tls.values() {
            if let Some(c) = &p.server_certificate {
                check_provider(file, "serverCertificate", c)?;
            }
            let open = p.allow_open == Some(true);
            match (&p.server_certificate, &p.mtls_policy) {
                // Without a server certificate there is no TLS to ask a client certificate in:
                // the port would quietly serve plaintext.
                (None, Some(_)) => {
                    return Err(fail(
                        file,
                        "mtlsPolicy: requires serverCertificate (mTLS without a server certificate would be a plaintext port)",
                    ));
                }
                (Some(_), None) if open => {
                    return Err(fail(
                        file,
                        "allowOpen: cannot be combined with serverCertificate alone (the API has no plaintext-or-TLS mode; add mtlsPolicy for plaintext-or-mTLS)",
                    ));
                }
                _ => {}
            }
            for (i, c) in p.mtls_policy.iter().flat_map(|m| &m.client_validation_ca).enumerate() {
                check_provider(file, &format!("mtlsPolicy.clientValidationCa[{i}]"), c)?;
            }
        }
        for (file, g) in self.gateways.values() {
            if g.kind != "OPEN_MESH" {
                return Err(fail(
                    file,
                    format!(
                        "type: `{}` is not supported (only OPEN_MESH: a standalone Envoy gateway)",
                        g.kind
                    ),
                ));
            }
        }
        for (file, b) in self.backends.values() {
            if let Some(scheme) = b
                .load_balancing_scheme
                .as_deref()
                .filter(|s| *s != "INTERNAL_SELF_MANAGED")
            {
                return Err(fail(
                    file,
                    format!(
                        "loadBalancingScheme: `{scheme}` is not supported (only INTERNAL_SELF_MANAGED, a mesh service)"
                    ),
                ));
            }
            if let Some(protocol) = b.protocol.as_deref().filter(|p| *p != "HTTP") {
                return Err(fail(
                    file,
                    format!("protocol: `{protocol}` is not supported (only HTTP, the guide's; HTTP/1.1 to the app)"),
                ));
            }
            if !b.health_checks.is_empty() {
                return Err(fail(
                    file,
                    "healthChecks: not supported: the generated clusters have static endpoints and no health checking",
                ));
            }
        }
        for (file, p) in &self.res.endpoint_policies {
            if p.kind != "SIDECAR_PROXY" && p.kind != "GRPC_SERVER" {
                return Err(fail(
                    file,
                    format!("type: `{}` is not SIDECAR_PROXY or GRPC_SERVER", p.kind),
                ));
            }
            if let Some(s) = &p.server_tls_policy {
                self.resolve(file, "serverTlsPolicy", s, kind::SERVER_TLS, &self.server_tls)?;
            }
            if let Some(a) = &p.authorization_policy {
                self.resolve(file, "authorizationPolicy", a, kind::AUTHZ, &self.authz)?;
            }
        }
        for (file, g) in self.gateways.values() {
            if let Some(s) = &g.server_tls_policy {
                self.resolve(file, "serverTLSPolicy", s, kind::SERVER_TLS, &self.server_tls)?;
            }
        }
        Ok(())
    }

    pub(crate) fn server_tls_of(&self, reference_text: &str) -> Option<&'r ServerTlsPolicy> {
        let name = reference_text.rsplit('/').next()?;
        self.server_tls.get(name).map(|(_, p)| *p)
    }
}
