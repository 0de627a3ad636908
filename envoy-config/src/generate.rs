//! Resources + workloads -> one Envoy bootstrap per proxy, as Traffic Director would program it.
//!
//! - `google_cloud_private_spiffe` becomes two filesystem SDS secrets (files written beside the
//!   bootstrap) that point into the workload's credentials directory (GKE layout); Envoy watches
//!   that directory, so rotated credentials are picked up without a restart.
//! - A sidecar in a mesh gets an outbound listener on the mesh's `interceptionPort`, with one
//!   virtual host per HTTPRoute attached to the mesh; a route's backend service becomes a cluster
//!   of the workloads that are its endpoints, with upstream mTLS (client certificate, server SAN
//!   check) when the service has `securitySettings`.
//! - A sidecar with an app port gets an inbound listener on it; the endpoint policy that selects
//!   the workload's labels sets its TLS (client certificates required with `mtlsPolicy`) and its
//!   authorization policy, compiled into the meshauthz Wasm filter.
//! - A gateway proxy serves the Gateways of its scope: a TLS listener per port and the
//!   HTTPRoutes attached to the gateway, forwarding over mTLS as the gateway's own identity.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use meshauthz_policy_compiler::emit::{self, FilterBuild, Mode, Xfcc};
use serde_json::{Value, json};

use crate::bootstrap::{
    self, CaSource, CertSource, Cluster, DownstreamTls, FilterChain, ForwardClientCert, Hcm, HttpFilter, Listener,
    Route, Transport, UpstreamTls, VirtualHost,
};
use crate::model::{Model, fail};
use crate::resources::{
    ClientTlsPolicy, EndpointPolicy, Gateway, HttpRoute, ResourceError, Resources, ServerTlsPolicy, kind, reference,
};
use crate::workloads::{ProxyRole, Workload, WorkloadsFile};

/// The only certificate provider the guide uses: the mesh certificates GKE mounts.
pub const SPIFFE_PLUGIN: &str = "google_cloud_private_spiffe";
const CERT_SECRET: &str = "mesh-certificate";
const CA_SECRET: &str = "mesh-trust-bundle";

/// Where generated bootstraps point at files. All paths should be absolute: Envoy resolves
/// them from its own working directory.
#[derive(Debug, Clone)]
pub struct Options {
    /// `<certs_dir>/<workload name>/` holds each workload's credentials.
    pub certs_dir: PathBuf,
    /// Which build of the meshauthz filter the bootstraps load.
    pub filter: FilterBuild,
    /// How the filter's configuration (the compiled policy) reaches Envoy.
    pub policy_delivery: PolicyDelivery,
    /// Where the bootstraps and their SDS files will be written.
    pub output_dir: PathBuf,
    /// The policy compiler's warnings fail the generation.
    pub deny_warnings: bool,
}

/// How a bootstrap gets the authorization filter's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyDelivery {
    /// Inline in the bootstrap.
    Static,
    /// Over ECDS: the HCM's `config_discovery` watches `OUT/<workload>.ecds/meshauthz.yaml`
    /// (`policy-compiler compile --emit ecds` writes the same resource; a control plane can
    /// serve it instead). No default: until a valid policy arrives, Envoy answers 500.
    Ecds,
}

/// What [`generate`] made, and what it has to say about the input.
#[derive(Debug, Clone)]
pub struct Generated {
    pub bootstraps: Vec<Bootstrap>,
    /// `FILE:LINE:COL: warning: ...` lines: the policy compiler's warnings.
    pub warnings: Vec<String>,
}

/// One generated bootstrap, with the SDS files it reads.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    pub workload: String,
    pub yaml: String,
    pub admin: (std::net::Ipv4Addr, u16),
    /// (path, content) of the files the bootstrap reads (filesystem SDS secrets, the ECDS
    /// policy), under the output directory.
    pub files: Vec<(PathBuf, String)>,
}

impl Bootstrap {
    /// The bootstrap's own path under the output directory.
    pub fn path(&self, opts: &Options) -> PathBuf {
        opts.output_dir.join(format!("{}.yaml", self.workload))
    }

    /// Writes the SDS files, then the bootstrap, each atomically.
    pub fn write(&self, opts: &Options) -> Result<PathBuf, crate::ca::CaError> {
        for (path, content) in &self.files {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|source| crate::ca::CaError::Io {
                    path: dir.display().to_string(),
                    source,
                })?;
            }
            crate::ca::write_file(path, content, 0o644)?;
        }
        let path = self.path(opts);
        crate::ca::write_file(&path, &self.yaml, 0o644)?;
        Ok(path)
    }
}

/// Generates a bootstrap for every workload.
pub fn generate(res: &Resources, wl: &WorkloadsFile, opts: &Options) -> Result<Generated, ResourceError> {
    let model = Model::new(res)?;
    let mut compiled_authz: BTreeMap<String, String> = BTreeMap::new();
    let mut warnings = Vec::new();
    for (file, text) in &res.authorization_texts {
        let c = meshauthz_policy_compiler::compile_sources(&[(file.clone(), text.clone())], opts.deny_warnings)
            .map_err(|e| fail(file, e.to_string()))?;
        warnings.extend(c.warnings.iter().map(ToString::to_string));
        for p in &c.set.policies {
            let single = meshauthz_table::PolicySet {
                policies: vec![p.clone()],
            };
            let table = meshauthz_table::wire::encode(&single);
            compiled_authz.insert(
                p.name.clone(),
                emit::plugin_config(&table, Mode::Enforce, Xfcc::SanitizeSet),
            );
        }
    }
    for (file, p) in &res.endpoint_policies {
        if p.kind == "GRPC_SERVER" {
            let what = format!(
                "type: endpoint policy `{}` is GRPC_SERVER: it programs proxyless gRPC servers, not Envoy, so no generated bootstrap applies it",
                p.name
            );
            if opts.deny_warnings {
                return Err(fail(file, format!("error: {what}")));
            }
            warnings.push(format!("{file}: warning: {what}"));
        }
    }
    let wl_file = "workloads";
    let mut out = Vec::new();
    for w in &wl.workloads {
        let mut listeners = Vec::new();
        let mut backends_used: Vec<&str> = Vec::new();
        let mut app_cluster = None;
        // The ECDS policy file this workload's filter watches, if it has one.
        let mut ecds = None;
        match w.proxy {
            ProxyRole::Sidecar => {
                let mesh = match &w.mesh {
                    Some(name) => Some(*model.meshes.get(name.as_str()).ok_or_else(|| {
                        fail(wl_file, format!("workload `{}`: mesh `{name}` is not defined", w.name))
                    })?),
                    None if model.meshes.len() == 1 => model.meshes.values().next().copied(),
                    None if model.meshes.is_empty() => None,
                    None => {
                        return Err(fail(
                            wl_file,
                            format!("workload `{}`: several meshes exist; name one with `mesh`", w.name),
                        ));
                    }
                };
                if let Some((_, mesh)) = mesh {
                    let routes: Vec<&HttpRoute> = model
                        .routes
                        .iter()
                        .filter(|(_, r)| {
                            r.meshes
                                .iter()
                                .any(|m| m.rsplit('/').next() == Some(mesh.name.as_str()))
                        })
                        .map(|(_, r)| *r)
                        .collect();
                    let port = mesh.interception_port.unwrap_or(15001);
                    listeners.push(outbound_listener(w, port, &routes, &mut backends_used));
                }
                if let (Some(app_port), Some(app_addr)) = (w.app_port, w.app_address) {
                    let selecting: Vec<&EndpointPolicy> = res
                        .endpoint_policies
                        .iter()
                        .map(|(_, p)| p)
                        .filter(|p| p.kind == "SIDECAR_PROXY" && p.selects(&w.labels))
                        .collect();
                    if selecting.len() > 1 {
                        return Err(fail(
                            wl_file,
                            format!(
                                "workload `{}` is selected by several endpoint policies ({})",
                                w.name,
                                selecting.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ")
                            ),
                        ));
                    }
                    let policy = selecting.first().copied();
                    let tls = policy
                        .and_then(|p| p.server_tls_policy.as_deref())
                        .and_then(|r| model.server_tls_of(r));
                    let authz = match policy.and_then(|p| p.authorization_policy.as_deref()) {
                        None => None,
                        Some(r) => {
                            let name = r.rsplit('/').next().unwrap_or_default();
                            let cfg = compiled_authz.get(name).ok_or_else(|| {
                                fail(wl_file, format!("authorization policy `{name}` did not compile"))
                            })?;
                            Some(cfg.as_str())
                        }
                    };
                    if let (Some(config), PolicyDelivery::Ecds) = (authz, opts.policy_delivery) {
                        ecds = Some((ecds_path(w, opts), emit::ecds_resource(&opts.filter, config)));
                    }
                    listeners.push(inbound_listener(w, app_port, tls, authz, opts));
                    app_cluster = Some(Cluster::new("inbound-app", &[(app_addr, app_port)]));
                } else if mesh.is_none() {
                    return Err(fail(
                        wl_file,
                        format!("workload `{}`: no mesh and no app port: no resource uses it", w.name),
                    ));
                }
            }
            ProxyRole::Gateway => {
                let scope = w.scope.as_deref().unwrap_or_default();
                let gateways: Vec<&Gateway> = model
                    .gateways
                    .values()
                    .map(|(_, g)| *g)
                    .filter(|g| g.scope == scope)
                    .collect();
                if gateways.is_empty() {
                    return Err(fail(
                        wl_file,
                        format!(
                            "workload `{}`: no Gateway has scope `{scope}`: no resource uses it",
                            w.name
                        ),
                    ));
                }
                for g in gateways {
                    let routes: Vec<&HttpRoute> = model
                        .routes
                        .iter()
                        .filter(|(_, r)| r.gateways.iter().any(|x| x.rsplit('/').next() == Some(g.name.as_str())))
                        .map(|(_, r)| *r)
                        .collect();
                    let tls = g.server_tls_policy.as_deref().and_then(|r| model.server_tls_of(r));
                    for &port in &g.ports {
                        listeners.push(gateway_listener(
                            w,
                            g,
                            port,
                            tls,
                            &SecretFiles::of(w, opts),
                            &routes,
                            &mut backends_used,
                        ));
                    }
                }
            }
        }
        let parts = Parts {
            listeners,
            backends_used,
            app_cluster,
            ecds,
        };
        out.push(assemble(w, wl, &model, opts, parts)?);
    }
    for w in &wl.workloads {
        if let Some(b) = &w.backend_service {
            if !model.backends.contains_key(b.as_str()) {
                return Err(fail(
                    wl_file,
                    format!("workload `{}`: backendService `{b}` is not defined", w.name),
                ));
            }
        }
    }
    Ok(Generated {
        bootstraps: out,
        warnings,
    })
}

/// What one proxy's resources gave: its listeners, the backend services they route to, the
/// local app (a sidecar's), and its ECDS policy file (path, content) if delivered so.
struct Parts<'r> {
    listeners: Vec<Listener>,
    backends_used: Vec<&'r str>,
    app_cluster: Option<Cluster>,
    ecds: Option<(PathBuf, String)>,
}

/// One proxy's bootstrap: its listeners, a cluster per backend service they route to (plus the
/// local app for a sidecar), and the mesh certificate secrets.
fn assemble(
    w: &Workload,
    wl: &WorkloadsFile,
    model: &Model<'_>,
    opts: &Options,
    parts: Parts<'_>,
) -> Result<Bootstrap, ResourceError> {
    let Parts {
        listeners,
        mut backends_used,
        app_cluster,
        ecds,
    } = parts;
    backends_used.sort_unstable();
    backends_used.dedup();
    let mut clusters: Vec<Cluster> = app_cluster.into_iter().collect();
    for name in backends_used {
        let Some((file, backend)) = model.backends.get(name) else {
            continue;
        };
        let endpoints: Vec<_> = wl
            .workloads
            .iter()
            .filter(|e| e.backend_service.as_deref() == Some(name))
            .filter_map(|e| Some((e.address, e.app_port?)))
            .collect();
        let mut cluster = Cluster::new(name, &endpoints);
        if let Some(s) = &backend.security_settings {
            let policy_name = reference(
                file,
                "securitySettings.clientTlsPolicy",
                &s.client_tls_policy,
                kind::CLIENT_TLS,
            )?;
            cluster.tls = model
                .client_tls
                .get(policy_name)
                .map(|(_, p)| upstream_tls(p, &s.subject_alt_names, &SecretFiles::of(w, opts)));
        }
        clusters.push(cluster);
    }
    let admin_port = w.admin_port.unwrap_or(15000);
    let bootstrap = bootstrap::Bootstrap {
        node: Some((format!("{}.{}", w.name, wl.namespace), w.name.clone())),
        listeners,
        clusters,
        ..bootstrap::Bootstrap::new((w.address, admin_port))
    };
    let to_yaml = |v: &Value| serde_yaml_ng::to_string(v).map_err(|e| fail("bootstrap", e.to_string()));
    let secrets = SecretFiles::of(w, opts);
    let mut files = vec![
        (secrets.cert_sds.clone(), to_yaml(&secrets.cert_resource())?),
        (secrets.ca_sds.clone(), to_yaml(&secrets.ca_resource())?),
    ];
    files.extend(ecds);
    Ok(Bootstrap {
        workload: w.name.clone(),
        yaml: to_yaml(&bootstrap.to_value())?,
        admin: (w.address, admin_port),
        files,
    })
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// Where one workload's secrets come from: filesystem SDS resources (beside its bootstrap)
/// pointing into its credentials directory.
struct SecretFiles {
    certs: PathBuf,
    cert_sds: PathBuf,
    ca_sds: PathBuf,
}

impl SecretFiles {
    fn of(w: &Workload, opts: &Options) -> SecretFiles {
        let sds = opts.output_dir.join(format!("{}.sds", w.name));
        SecretFiles {
            certs: opts.certs_dir.join(&w.name),
            cert_sds: sds.join("mesh-certificate.yaml"),
            ca_sds: sds.join("mesh-trust-bundle.yaml"),
        }
    }

    fn cert_resource(&self) -> Value {
        json!({"resources": [{
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
            "name": CERT_SECRET,
            "tls_certificate": {
                "certificate_chain": {"filename": path(&self.certs.join(crate::ca::CERTIFICATES))},
                "private_key": {"filename": path(&self.certs.join(crate::ca::PRIVATE_KEY))},
            },
        }]})
    }

    fn ca_resource(&self) -> Value {
        json!({"resources": [{
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
            "name": CA_SECRET,
            "validation_context": {"trusted_ca": {"filename": path(&self.certs.join(crate::ca::CA_CERTIFICATES))}},
        }]})
    }

    /// An `SdsSecretConfig` reading `file`, reloaded whenever something is moved into the
    /// credentials directory: the way GKE's mount (and `envoy-config ca rotate`) replaces files.
    fn reference(&self, name: &str, file: &Path) -> Value {
        json!({
            "name": name,
            "sds_config": {
                "resource_api_version": "V3",
                "path_config_source": {"path": path(file), "watched_directory": {"path": path(&self.certs)}},
            },
        })
    }

    fn certificate(&self) -> CertSource {
        CertSource::Sds(self.reference(CERT_SECRET, &self.cert_sds))
    }

    fn trust_bundle(&self) -> CaSource {
        CaSource::Sds(self.reference(CA_SECRET, &self.ca_sds))
    }
}

fn virtual_hosts<'r>(routes: &[&'r HttpRoute], backends_used: &mut Vec<&'r str>) -> Vec<VirtualHost> {
    let mut vhosts = Vec::new();
    for r in routes {
        let domains: Vec<String> = r.hostnames.iter().flat_map(|h| [h.clone(), format!("{h}:*")]).collect();
        // One rule per route (checked): it sends every path to its destinations.
        for rule in r.rules.iter().take(1) {
            let dests = &rule.action.destinations;
            let names: Vec<&'r str> = dests.iter().filter_map(|d| d.service_name.rsplit('/').next()).collect();
            backends_used.extend(&names);
            let route = match names.as_slice() {
                [one] => Route::Cluster((*one).to_owned()),
                _ => Route::Weighted(
                    dests
                        .iter()
                        .zip(&names)
                        .map(|(d, n)| ((*n).to_owned(), d.weight.unwrap_or(1)))
                        .collect(),
                ),
            };
            vhosts.push(VirtualHost {
                name: r.name.clone(),
                domains: domains.clone(),
                route,
                request_headers_to_add: Vec::new(),
            });
        }
    }
    vhosts
}

fn outbound_listener<'r>(
    w: &Workload,
    port: u16,
    routes: &[&'r HttpRoute],
    backends_used: &mut Vec<&'r str>,
) -> Listener {
    Listener {
        name: "outbound".into(),
        address: (w.address, port),
        chains: vec![FilterChain {
            transport: None,
            tls: None,
            hcm: Hcm::new("outbound", virtual_hosts(routes, backends_used)),
        }],
    }
}

fn downstream_tls(tls: &ServerTlsPolicy, secrets: &SecretFiles) -> Option<DownstreamTls> {
    tls.server_certificate.as_ref()?;
    Some(DownstreamTls {
        certificate: secrets.certificate(),
        client_ca: tls.mtls_policy.as_ref().map(|_| secrets.trust_bundle()),
        alpn: false,
    })
}

fn upstream_tls(policy: &ClientTlsPolicy, sans: &[String], secrets: &SecretFiles) -> UpstreamTls {
    UpstreamTls {
        certificate: policy.client_certificate.as_ref().map(|_| secrets.certificate()),
        server_ca: (!policy.server_validation_ca.is_empty()).then(|| secrets.trust_bundle()),
        uri_sans: sans.to_vec(),
        sni: policy.sni.clone(),
    }
}

/// Where a workload's ECDS policy file lives.
fn ecds_path(w: &Workload, opts: &Options) -> PathBuf {
    opts.output_dir.join(format!("{}.ecds", w.name)).join("meshauthz.yaml")
}

/// The meshauthz filter entry for a plugin configuration, delivered as `opts` says.
fn authz_filter(w: &Workload, plugin_config: &str, opts: &Options) -> HttpFilter {
    match (&opts.policy_delivery, &opts.filter) {
        (PolicyDelivery::Ecds, build) => HttpFilter::Discovered {
            build: build.clone(),
            config_path: ecds_path(w, opts),
        },
        (PolicyDelivery::Static, FilterBuild::Wasm(path)) => HttpFilter::Meshauthz {
            plugin_config: plugin_config.to_owned(),
            wasm: path.clone(),
        },
        (PolicyDelivery::Static, FilterBuild::Native) => HttpFilter::MeshauthzNative {
            plugin_config: plugin_config.to_owned(),
        },
    }
}

fn inbound_listener(
    w: &Workload,
    port: u16,
    tls: Option<&ServerTlsPolicy>,
    authz: Option<&str>,
    opts: &Options,
) -> Listener {
    let transport = tls.and_then(|t| downstream_tls(t, &SecretFiles::of(w, opts)));
    let mtls = transport.as_ref().is_some_and(|t| t.client_ca.is_some());
    let hcm = |tls_chain: bool| Hcm {
        http_filters: authz.map(|config| authz_filter(w, config, opts)).into_iter().collect(),
        // With mTLS the peer's identity is forwarded in XFCC: by the meshauthz filter when it
        // runs (it replaces whatever the client sent; the native one reads the peer's
        // certificate from the element Envoy sets first), else by Envoy itself.
        forward_client_cert: match (tls_chain && mtls, authz.is_some(), &opts.filter) {
            (true, false, _) => ForwardClientCert::SanitizeSet,
            (true, true, FilterBuild::Native) => ForwardClientCert::SanitizeSetWithCert,
            _ => ForwardClientCert::Sanitize,
        },
        ..Hcm::new(
            "inbound",
            vec![VirtualHost::new(
                "inbound",
                &["*"],
                Route::Cluster("inbound-app".into()),
            )],
        )
    };
    listener("inbound", w, port, tls, transport, hcm)
}

/// A listener whose filter chains serve what the server TLS policy asks: plaintext without
/// one, TLS (or mTLS) with one, and with `allowOpen` next to `mtlsPolicy` both on one port,
/// chosen per connection by the TLS inspector (a plaintext peer then has no principal).
/// `hcm(tls)` builds the HCM for a TLS (`true`) or plaintext connection.
fn listener(
    name: &str,
    w: &Workload,
    port: u16,
    tls: Option<&ServerTlsPolicy>,
    transport: Option<DownstreamTls>,
    hcm: impl Fn(bool) -> Hcm,
) -> Listener {
    let chain = |transport, tls, secure| FilterChain {
        transport,
        tls,
        hcm: hcm(secure),
    };
    let chains = match transport {
        None => vec![chain(None, None, false)],
        Some(t) if tls.is_some_and(|p| p.allow_open == Some(true)) => vec![
            chain(Some(Transport::Tls), Some(t), true),
            chain(Some(Transport::Plaintext), None, false),
        ],
        Some(t) => vec![chain(None, Some(t), true)],
    };
    Listener {
        name: name.to_owned(),
        address: (w.address, port),
        chains,
    }
}

fn gateway_listener<'r>(
    w: &Workload,
    g: &Gateway,
    port: u16,
    tls: Option<&ServerTlsPolicy>,
    secrets: &SecretFiles,
    routes: &[&'r HttpRoute],
    backends_used: &mut Vec<&'r str>,
) -> Listener {
    let vhosts = virtual_hosts(routes, backends_used);
    let stat = format!("gateway_{}_{port}", g.name);
    // The gateway is the edge: it trusts no client-supplied forwarding headers (as every HCM
    // here: `hcm::security_settings`).
    let hcm = |_tls: bool| Hcm::new(&stat, vhosts.clone());
    let transport = tls.and_then(|t| downstream_tls(t, secrets));
    listener(&format!("gateway-{}-{port}", g.name), w, port, tls, transport, hcm)
}
