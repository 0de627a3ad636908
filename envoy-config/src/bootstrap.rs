//! The one Envoy configuration builder: every bootstrap this project writes (the generated
//! sidecars and gateway, the integration tests, the benchmark proxies) is built from these
//! types, so each security-relevant setting exists once: the HCM's address and host handling
//! ([`crate::hcm`]), XFCC handling ([`ForwardClientCert`]), TLS contexts, SDS references and the filter
//! stanza ([`HttpFilter::Meshauthz`]).
//!
//! The types are plain data; [`Bootstrap::to_value`] renders Envoy's v3 JSON (which is also
//! YAML), [`Bootstrap::to_yaml`] YAML.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// A whole bootstrap: admin, then static listeners and clusters (or listeners from a watched
/// file, for tests that update them while Envoy runs).
#[derive(Debug, Clone)]
pub struct Bootstrap {
    pub node: Option<(String, String)>,
    pub admin: (Ipv4Addr, u16),
    pub listeners: Vec<Listener>,
    pub clusters: Vec<Cluster>,
    /// File-based LDS: listeners come from this file ([`lds_file`]), reloaded when a new file
    /// is moved into its directory.
    pub lds_path: Option<PathBuf>,
}

impl Bootstrap {
    pub fn new(admin: (Ipv4Addr, u16)) -> Bootstrap {
        Bootstrap {
            node: None,
            admin,
            listeners: Vec::new(),
            clusters: Vec::new(),
            lds_path: None,
        }
    }

    pub fn to_value(&self) -> Value {
        let mut b = json!({"admin": {"address": socket(self.admin)}});
        if let Some((id, cluster)) = &self.node {
            b["node"] = json!({"id": id, "cluster": cluster});
        }
        let mut statics = json!({"clusters": self.clusters.iter().map(Cluster::to_value).collect::<Vec<_>>()});
        match &self.lds_path {
            Some(lds) => {
                let dir = lds.parent().unwrap_or(Path::new("."));
                b["dynamic_resources"] = json!({"lds_config": {
                    "resource_api_version": "V3",
                    "path_config_source": {"path": path(lds), "watched_directory": {"path": path(dir)}},
                }});
            }
            None => statics["listeners"] = Value::Array(self.listeners.iter().map(Listener::to_value).collect()),
        }
        b["static_resources"] = statics;
        b
    }

    pub fn to_yaml(&self) -> String {
        // Plain data: serialization cannot fail; JSON is YAML should it ever.
        serde_yaml_ng::to_string(&self.to_value()).unwrap_or_else(|_| self.to_value().to_string())
    }
}

/// The content of a file-based LDS file holding `listeners`.
pub fn lds_file(listeners: &[Listener]) -> String {
    let resources: Vec<Value> = listeners
        .iter()
        .map(|l| {
            let mut v = l.to_value();
            v["@type"] = json!("type.googleapis.com/envoy.config.listener.v3.Listener");
            v
        })
        .collect();
    format!("{:#}\n", json!({ "resources": resources }))
}

#[derive(Debug, Clone)]
pub struct Listener {
    pub name: String,
    pub address: (Ipv4Addr, u16),
    /// With more than one, each names the transport it serves ([`FilterChain::transport`]) and
    /// the TLS inspector picks one per connection.
    pub chains: Vec<FilterChain>,
}

impl Listener {
    pub fn to_value(&self) -> Value {
        let mut l = json!({
            "name": self.name,
            "address": socket(self.address),
            "filter_chains": self.chains.iter().map(FilterChain::to_value).collect::<Vec<_>>(),
        });
        if self.chains.iter().any(|c| c.transport.is_some()) {
            l["listener_filters"] = json!([{
                "name": "envoy.filters.listener.tls_inspector",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"},
            }]);
        }
        l
    }
}

/// Which connections a filter chain serves when a listener has several.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tls,
    Plaintext,
}

#[derive(Debug, Clone)]
pub struct FilterChain {
    pub transport: Option<Transport>,
    pub tls: Option<DownstreamTls>,
    pub hcm: Hcm,
}

impl FilterChain {
    fn to_value(&self) -> Value {
        let mut c = json!({"filters": [self.hcm.to_value()]});
        if let Some(t) = self.transport {
            let name = match t {
                Transport::Tls => "tls",
                Transport::Plaintext => "raw_buffer",
            };
            c["filter_chain_match"] = json!({"transport_protocol": name});
        }
        if let Some(tls) = &self.tls {
            c["transport_socket"] = tls.to_value();
        }
        c
    }
}

/// Where a certificate and its key come from.
#[derive(Debug, Clone)]
pub enum CertSource {
    Files {
        chain: PathBuf,
        key: PathBuf,
    },
    /// An `SdsSecretConfig`.
    Sds(Value),
}

impl CertSource {
    /// The GKE layout's `certificates.pem` and `private_key.pem` in `dir`.
    pub fn dir(dir: &Path) -> CertSource {
        CertSource::Files {
            chain: dir.join(crate::ca::CERTIFICATES),
            key: dir.join(crate::ca::PRIVATE_KEY),
        }
    }

    fn add_to(&self, ctx: &mut Value) {
        match self {
            CertSource::Files { chain, key } => {
                ctx["tls_certificates"] =
                    json!([{"certificate_chain": {"filename": path(chain)}, "private_key": {"filename": path(key)}}]);
            }
            CertSource::Sds(sds) => ctx["tls_certificate_sds_secret_configs"] = json!([sds]),
        }
    }
}

/// Where trust anchors come from.
#[derive(Debug, Clone)]
pub enum CaSource {
    File(PathBuf),
    Sds(Value),
}

impl CaSource {
    /// The GKE layout's `ca_certificates.pem` in `dir`.
    pub fn dir(dir: &Path) -> CaSource {
        CaSource::File(dir.join(crate::ca::CA_CERTIFICATES))
    }
}

/// The server side of TLS. `client_ca` set: mTLS, a client certificate is required.
#[derive(Debug, Clone)]
pub struct DownstreamTls {
    pub certificate: CertSource,
    pub client_ca: Option<CaSource>,
    /// Offer HTTP/2 and HTTP/1.1 by ALPN.
    pub alpn: bool,
}

impl DownstreamTls {
    fn to_value(&self) -> Value {
        let mut ctx = json!({});
        self.certificate.add_to(&mut ctx);
        match &self.client_ca {
            Some(CaSource::File(f)) => ctx["validation_context"] = json!({"trusted_ca": {"filename": path(f)}}),
            Some(CaSource::Sds(sds)) => ctx["validation_context_sds_secret_config"] = sds.clone(),
            None => {}
        }
        if self.alpn {
            ctx["alpn_protocols"] = json!(["h2", "http/1.1"]);
        }
        json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                "require_client_certificate": self.client_ca.is_some(),
                "common_tls_context": ctx,
            },
        })
    }
}

/// The HCM's `forward_client_cert_details`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardClientCert {
    /// Envoy strips what the client sent (the meshauthz filter then sets its own element).
    Sanitize,
    /// Envoy sets this hop's element itself (subject, URI and DNS), as the guide's sidecars do.
    SanitizeSet,
    /// Kept from mTLS peers, removed from plaintext ones (the filter's `append_forward`).
    ForwardOnly,
    /// Always kept: only for tests of what the filter itself does with a client's header.
    AlwaysForwardOnly,
    /// For the native filter: Envoy strips what the client sent and sets this hop's element
    /// with the peer certificate (`Cert=`), from which the filter reads the peer's identity
    /// (the dynamic-module ABI gives an HTTP filter no certificate); the filter then replaces
    /// the element with its own.
    SanitizeSetWithCert,
    /// The same for the native filter's `append_forward`: previous hops' elements kept from
    /// mTLS peers (removed from plaintext ones), this hop's appended with `Cert=`.
    AppendForwardWithCert,
}

impl ForwardClientCert {
    /// The HCM mode the filter's `xfcc` option needs (see the README).
    pub fn for_filter(append_forward: bool) -> ForwardClientCert {
        if append_forward {
            ForwardClientCert::ForwardOnly
        } else {
            ForwardClientCert::Sanitize
        }
    }

    /// What the native filter needs instead of the mode the Wasm filter would use: the same
    /// treatment of the client's header, plus this hop's certificate.
    pub fn for_native_filter(self) -> ForwardClientCert {
        match self {
            ForwardClientCert::Sanitize => ForwardClientCert::SanitizeSetWithCert,
            ForwardClientCert::ForwardOnly => ForwardClientCert::AppendForwardWithCert,
            other => other,
        }
    }

    /// The HCM mode the native filter's `xfcc` option needs.
    pub fn for_native(append_forward: bool) -> ForwardClientCert {
        if append_forward {
            ForwardClientCert::AppendForwardWithCert
        } else {
            ForwardClientCert::SanitizeSetWithCert
        }
    }

    fn add_to(self, hcm: &mut Value) {
        let mode = match self {
            ForwardClientCert::Sanitize => "SANITIZE",
            ForwardClientCert::SanitizeSet | ForwardClientCert::SanitizeSetWithCert => "SANITIZE_SET",
            ForwardClientCert::ForwardOnly => "FORWARD_ONLY",
            ForwardClientCert::AlwaysForwardOnly => "ALWAYS_FORWARD_ONLY",
            ForwardClientCert::AppendForwardWithCert => "APPEND_FORWARD",
        };
        hcm["forward_client_cert_details"] = json!(mode);
        match self {
            ForwardClientCert::SanitizeSet => {
                hcm["set_current_client_cert_details"] = json!({"subject": true, "uri": true, "dns": true});
            }
            ForwardClientCert::SanitizeSetWithCert | ForwardClientCert::AppendForwardWithCert => {
                hcm["set_current_client_cert_details"] = json!({"cert": true});
            }
            _ => {}
        }
    }
}

#[derive(Debug, Clone)]
pub struct Hcm {
    pub stat_prefix: String,
    pub virtual_hosts: Vec<VirtualHost>,
    /// Before the router, which is always last.
    pub http_filters: Vec<HttpFilter>,
    pub forward_client_cert: ForwardClientCert,
    /// [`crate::hcm::security_settings`]; only attack tests turn them off, to show what they
    /// are for.
    pub hardened: bool,
    /// Whether a hardened HCM strips the host's port ([`crate::hcm::HostPort`]).
    pub host_port: crate::hcm::HostPort,
}

impl Hcm {
    pub fn new(stat_prefix: &str, virtual_hosts: Vec<VirtualHost>) -> Hcm {
        Hcm {
            stat_prefix: stat_prefix.to_owned(),
            virtual_hosts,
            http_filters: Vec::new(),
            forward_client_cert: ForwardClientCert::Sanitize,
            hardened: true,
            host_port: crate::hcm::HostPort::Strip,
        }
    }

    fn to_value(&self) -> Value {
        let mut filters: Vec<Value> = self.http_filters.iter().map(HttpFilter::to_value).collect();
        filters.push(json!({"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}));
        let mut config = json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": self.stat_prefix,
            "route_config": {
                "name": self.stat_prefix,
                "virtual_hosts": self.virtual_hosts.iter().map(VirtualHost::to_value).collect::<Vec<_>>(),
            },
            "http_filters": filters,
        });
        if self.hardened {
            for (k, v) in crate::hcm::security_settings(self.host_port) {
                config[k] = v;
            }
        }
        self.forward_client_cert.add_to(&mut config);
        json!({"name": "envoy.filters.network.http_connection_manager", "typed_config": config})
    }
}

#[derive(Debug, Clone)]
pub struct VirtualHost {
    pub name: String,
    pub domains: Vec<String>,
    /// Every path goes here.
    pub route: Route,
    pub request_headers_to_add: Vec<(String, String)>,
}

impl VirtualHost {
    pub fn new(name: &str, domains: &[&str], route: Route) -> VirtualHost {
        VirtualHost {
            name: name.to_owned(),
            domains: domains.iter().map(|d| (*d).to_owned()).collect(),
            route,
            request_headers_to_add: Vec::new(),
        }
    }

    fn to_value(&self) -> Value {
        let route = match &self.route {
            Route::Cluster(c) => json!({"match": {"prefix": "/"}, "route": {"cluster": c}}),
            Route::Weighted(ws) => {
                let clusters: Vec<Value> = ws.iter().map(|(n, w)| json!({"name": n, "weight": w})).collect();
                json!({"match": {"prefix": "/"}, "route": {"weighted_clusters": {"clusters": clusters}}})
            }
            Route::Direct { status, body } => json!({
                "match": {"prefix": "/"},
                "direct_response": {"status": status, "body": {"inline_string": body}},
            }),
        };
        let mut v = json!({"name": self.name, "domains": self.domains, "routes": [route]});
        if !self.request_headers_to_add.is_empty() {
            v["request_headers_to_add"] = self
                .request_headers_to_add
                .iter()
                .map(|(k, val)| json!({"header": {"key": k, "value": val}}))
                .collect();
        }
        v
    }
}

#[derive(Debug, Clone)]
pub enum Route {
    Cluster(String),
    Weighted(Vec<(String, u32)>),
    Direct { status: u16, body: String },
}

#[derive(Debug, Clone)]
pub enum HttpFilter {
    /// The meshauthz Wasm filter: `plugin_config` is the JSON of `--emit plugin-config`.
    /// Filters with the same `wasm` share one VM (one `vm_id`), as in a real sidecar.
    Meshauthz { plugin_config: String, wasm: PathBuf },
    /// The same filter as an Envoy dynamic module (`libmeshauthz_filter.so`, found through
    /// `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`), with the same plugin configuration. Its HCM needs
    /// [`ForwardClientCert::for_native`].
    MeshauthzNative { plugin_config: String },
    /// The filter's configuration delivered over ECDS: a `TypedExtensionConfig` read from
    /// `config_path` (written by `policy-compiler compile --emit ecds`), reloaded when a new
    /// file is moved into its directory.
    Discovered {
        build: meshauthz_policy_compiler::emit::FilterBuild,
        config_path: PathBuf,
    },
    /// Another proxy-wasm module (the benchmarks' no-op baseline).
    OtherWasm { plugin_config: String, wasm: PathBuf },
    /// A filter given as Envoy JSON (`--emit envoy-rbac`'s entries).
    Raw(Value),
}

impl HttpFilter {
    fn to_value(&self) -> Value {
        use meshauthz_policy_compiler::emit::{FILTER_NAME, FilterBuild};
        match self {
            HttpFilter::Meshauthz { plugin_config, wasm } => json!({
                "name": FILTER_NAME,
                "typed_config": FilterBuild::Wasm(wasm.clone()).typed_config(plugin_config),
            }),
            HttpFilter::MeshauthzNative { plugin_config } => json!({
                "name": FILTER_NAME,
                "typed_config": FilterBuild::Native.typed_config(plugin_config),
            }),
            HttpFilter::OtherWasm { plugin_config, wasm } => {
                let mut typed = FilterBuild::Wasm(wasm.clone()).typed_config(plugin_config);
                // Its own VM and root, beside any meshauthz filter.
                typed["config"]["name"] = json!("other-wasm");
                typed["config"]["root_id"] = json!("other-wasm");
                typed["config"]["vm_config"]["vm_id"] = json!("other-wasm");
                json!({"name": "other-wasm", "typed_config": typed})
            }
            HttpFilter::Discovered { build, config_path } => {
                let dir = config_path.parent().unwrap_or(Path::new("."));
                json!({
                    "name": FILTER_NAME,
                    "config_discovery": {
                        "config_source": {
                            "resource_api_version": "V3",
                            "path_config_source": {"path": path(config_path), "watched_directory": {"path": path(dir)}},
                            // A listener does not wait long for a configuration that is not
                            // there: it serves (500s) and picks the configuration up when it comes.
                            "initial_fetch_timeout": "1s",
                        },
                        // No default_config: until a valid configuration arrives, Envoy answers
                        // requests 500 rather than letting them through unfiltered.
                        "type_urls": [build.type_url()],
                    },
                })
            }
            HttpFilter::Raw(v) => v.clone(),
        }
    }
}

/// The client side of TLS to an upstream.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    pub certificate: Option<CertSource>,
    pub server_ca: Option<CaSource>,
    /// The server's certificate must carry one of these URI SANs.
    pub uri_sans: Vec<String>,
    pub sni: Option<String>,
}

impl UpstreamTls {
    fn to_value(&self) -> Value {
        let mut ctx = json!({});
        if let Some(c) = &self.certificate {
            c.add_to(&mut ctx);
        }
        let matchers: Vec<Value> = self
            .uri_sans
            .iter()
            .map(|s| json!({"san_type": "URI", "matcher": {"exact": s}}))
            .collect();
        match &self.server_ca {
            Some(CaSource::Sds(sds)) => {
                ctx["combined_validation_context"] = json!({
                    "default_validation_context": {"match_typed_subject_alt_names": matchers},
                    "validation_context_sds_secret_config": sds,
                });
            }
            Some(CaSource::File(f)) => {
                ctx["validation_context"] =
                    json!({"trusted_ca": {"filename": path(f)}, "match_typed_subject_alt_names": matchers});
            }
            None => {}
        }
        let mut tls = json!({
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": ctx,
        });
        if let Some(sni) = &self.sni {
            tls["sni"] = json!(sni);
        }
        json!({"name": "envoy.transport_sockets.tls", "typed_config": tls})
    }
}

#[derive(Debug, Clone)]
pub struct Cluster {
    pub name: String,
    pub endpoints: Vec<(Ipv4Addr, u16)>,
    pub tls: Option<UpstreamTls>,
}

impl Cluster {
    pub fn new(name: &str, endpoints: &[(Ipv4Addr, u16)]) -> Cluster {
        Cluster {
            name: name.to_owned(),
            endpoints: endpoints.to_vec(),
            tls: None,
        }
    }

    fn to_value(&self) -> Value {
        let lb: Vec<Value> = self
            .endpoints
            .iter()
            .map(|&a| json!({"endpoint": {"address": socket(a)}}))
            .collect();
        let mut c = json!({
            "name": self.name,
            "type": "STATIC",
            "connect_timeout": "2s",
            "load_assignment": {"cluster_name": self.name, "endpoints": [{"lb_endpoints": lb}]},
        });
        if let Some(t) = &self.tls {
            c["transport_socket"] = t.to_value();
        }
        c
    }
}

fn socket((addr, port): (Ipv4Addr, u16)) -> Value {
    json!({"socket_address": {"address": addr.to_string(), "port_value": port}})
}

fn path(p: &Path) -> String {
    p.display().to_string()
}
