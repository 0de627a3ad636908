//! The tests' listeners, built with the project's one bootstrap builder
//! (`meshauthz_envoy_config::bootstrap`): one TLS (or plaintext) listener in front of the echo
//! upstream, with or without the meshauthz filter, and the routes the attack tests need.

use std::net::Ipv4Addr;
use std::path::Path;

pub use meshauthz_envoy_config::bootstrap::ForwardClientCert;
use meshauthz_envoy_config::bootstrap::{
    self as builder, CaSource, CertSource, Cluster, DownstreamTls, FilterChain, Hcm, HttpFilter, Route, VirtualHost,
};

/// The server side of one test listener.
#[derive(Debug, Clone)]
pub struct Listener {
    pub name: String,
    pub ip: Ipv4Addr,
    pub port: u16,
    /// Directory with certificates.pem, private_key.pem, ca_certificates.pem; `None`: plaintext.
    pub tls: Option<std::path::PathBuf>,
    /// The filter's plugin configuration JSON; `None`: no meshauthz filter.
    pub plugin_config: Option<String>,
    /// Native RBAC filters (`policy-compiler --emit envoy-rbac`) to run instead.
    pub rbac_filters: Option<String>,
    /// The HCM's `forward_client_cert_details`.
    pub forward_client_cert: ForwardClientCert,
    /// The documented HCM settings (`meshauthz_envoy_config::hcm`); `false` leaves Envoy's
    /// defaults, for the attacks that show what the settings are for.
    pub hardened: bool,
    /// Which build of the filter runs (with `plugin_config`).
    pub build: crate::Build,
    /// The test-only fault-injection build of it.
    pub faults: bool,
    /// Deliver the filter's configuration over ECDS from this file ([`ecds_file`]) instead of
    /// inline (`plugin_config` is then not used).
    pub ecds: Option<std::path::PathBuf>,
}

/// The ECDS file content configuring `build` with `plugin_config`.
pub fn ecds_file(build: crate::Build, plugin_config: &str) -> String {
    meshauthz_policy_compiler::emit::ecds_resource(&build.filter_build(), plugin_config)
}

/// The upstream every test listener routes to.
const UPSTREAM: &str = "upstream";

impl Listener {
    /// This listener as the builder's type. Two virtual hosts: `service-test`, and a catch-all
    /// that marks what it serves with `x-virtual-host: catch-all`, so a test sees where Envoy
    /// routed a request.
    pub fn build(&self, wasm: &Path) -> builder::Listener {
        let mut catch_all = VirtualHost::new("catch-all", &["*"], Route::Cluster(UPSTREAM.into()));
        catch_all.request_headers_to_add = vec![("x-virtual-host".into(), "catch-all".into())];
        let discovered = self.ecds.iter().map(|path| HttpFilter::Discovered {
            build: self.build.filter_build(),
            config_path: path.clone(),
        });
        let mut filters: Vec<HttpFilter> = self
            .plugin_config
            .iter()
            .filter(|_| self.ecds.is_none())
            .map(|c| match self.build {
                // `wasm`: the build the caller chose (the fault-injection one, say).
                crate::Build::Wasm => HttpFilter::Meshauthz {
                    plugin_config: c.clone(),
                    wasm: wasm.to_owned(),
                },
                crate::Build::Native => self.build.filter(c, self.faults),
            })
            .chain(discovered)
            .collect();
        // The native filter reads the peer's certificate from the HCM's own XFCC element.
        let has_filter = self.plugin_config.is_some() || self.ecds.is_some();
        let forward_client_cert = match (self.build, has_filter) {
            (crate::Build::Native, true) => self.forward_client_cert.for_native_filter(),
            _ => self.forward_client_cert,
        };
        let rbac: Vec<serde_json::Value> = self
            .rbac_filters
            .as_deref()
            .map(|r| serde_json::from_str(r).unwrap_or_default())
            .unwrap_or_default();
        filters.extend(rbac.into_iter().map(HttpFilter::Raw));
        let hcm = Hcm {
            http_filters: filters,
            forward_client_cert,
            hardened: self.hardened,
            ..Hcm::new(
                &self.name,
                vec![
                    VirtualHost::new("service-test", &["service-test"], Route::Cluster(UPSTREAM.into())),
                    catch_all,
                ],
            )
        };
        let tls = self.tls.as_deref().map(|dir| DownstreamTls {
            certificate: CertSource::dir(dir),
            client_ca: Some(CaSource::dir(dir)),
            alpn: true,
        });
        builder::Listener {
            name: self.name.clone(),
            address: (self.ip, self.port),
            chains: vec![FilterChain {
                transport: None,
                tls,
                hcm,
            }],
        }
    }
}

impl Listener {
    /// This listener under Istio's sidecar HCM model (the host keeps its port, as Istio
    /// policies expect), with `front` (jwt_authn, say) before every other filter.
    pub fn build_istio(&self, wasm: &Path, front: Option<serde_json::Value>) -> builder::Listener {
        let mut l = self.build(wasm);
        for chain in &mut l.chains {
            chain.hcm.host_port = meshauthz_envoy_config::hcm::HostPort::Keep;
            if let Some(f) = &front {
                chain.hcm.http_filters.insert(0, HttpFilter::Raw(f.clone()));
            }
        }
        l
    }
}

fn upstream(port: u16) -> Cluster {
    Cluster::new(UPSTREAM, &[(Ipv4Addr::LOCALHOST, port)])
}

/// A whole bootstrap (YAML): admin on `admin_port`, the listeners, the echo upstream.
pub fn bootstrap(admin_port: u16, listeners: &[Listener], wasm: &Path, upstream_port: u16) -> String {
    builder::Bootstrap {
        // File-based xDS (ECDS here) needs a node.
        node: Some(("meshauthz-test".into(), "meshauthz-test".into())),
        listeners: listeners.iter().map(|l| l.build(wasm)).collect(),
        clusters: vec![upstream(upstream_port)],
        ..builder::Bootstrap::new((Ipv4Addr::LOCALHOST, admin_port))
    }
    .to_yaml()
}

/// Writes [`bootstrap`] into `dir` and starts Envoy on it (log: `dir/envoy.log`), loading the
/// native filter from the fault-injection build's directory if any listener asks for it.
pub fn start(dir: &Path, listeners: &[Listener], wasm: &Path, upstream_port: u16) -> crate::Envoy {
    let admin = crate::free_port(Ipv4Addr::LOCALHOST);
    let path = dir.join("envoy.yaml");
    std::fs::write(&path, bootstrap(admin, listeners, wasm, upstream_port)).expect("write bootstrap");
    let modules = crate::Build::Native.modules_dir(listeners.iter().any(|l| l.faults));
    crate::Envoy::start_with_modules(
        &path,
        (Ipv4Addr::LOCALHOST, admin).into(),
        &dir.join("envoy.log"),
        &modules,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Listeners already built (and adjusted: the Istio HCM model, a filter in front), in front of
/// the echo upstream on `upstream_port`: writes `dir/envoy.yaml` and starts Envoy on it.
pub fn start_built(dir: &Path, listeners: Vec<builder::Listener>, upstream_port: u16) -> crate::Envoy {
    let admin = crate::free_port(Ipv4Addr::LOCALHOST);
    let boot = builder::Bootstrap {
        listeners,
        clusters: vec![upstream(upstream_port)],
        ..builder::Bootstrap::new((Ipv4Addr::LOCALHOST, admin))
    };
    let path = dir.join("envoy.yaml");
    std::fs::write(&path, boot.to_yaml()).expect("write bootstrap");
    crate::Envoy::start(&path, (Ipv4Addr::LOCALHOST, admin).into(), &dir.join("envoy.log"))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A bootstrap whose listeners come from `lds_path` (file-based LDS, watched for renames), so a
/// test can swap a listener's filter configuration while Envoy runs.
pub fn bootstrap_with_file_lds(admin_port: u16, lds_path: &Path, upstream_port: u16) -> String {
    builder::Bootstrap {
        node: Some(("meshauthz-test".into(), "meshauthz-test".into())),
        clusters: vec![upstream(upstream_port)],
        lds_path: Some(lds_path.to_owned()),
        ..builder::Bootstrap::new((Ipv4Addr::LOCALHOST, admin_port))
    }
    .to_yaml()
}

/// The LDS file content for `listeners`.
pub fn lds_yaml(listeners: &[Listener], wasm: &Path) -> String {
    let built: Vec<builder::Listener> = listeners.iter().map(|l| l.build(wasm)).collect();
    builder::lds_file(&built)
}
