//! The one file of this project's own: what GKE would tell the control plane about the pods.
//!
//! ```yaml
//! trustDomain: my-project.svc.id.goog
//! namespace: default
//! workloads:
//! - name: payments              # also the credentials directory name
//!   proxy: sidecar              # sidecar | gateway
//!   serviceAccount: demo-server
//!   labels: {app: payments}
//!   address: 127.0.0.2          # the pod IP: where its proxy listens
//!   appAddress: 127.0.1.2       # where the app listens (the pod's own loopback in GKE)
//!   appPort: 8000               # the app's port; the sidecar intercepts it inbound
//!   backendService: td-gke-service   # the workload is an endpoint (NEG member) of it
//! - name: mesh-gateway
//!   proxy: gateway
//!   serviceAccount: demo-client
//!   address: 127.0.0.4
//!   scope: gateway-proxy        # selects Gateway resources with this scope
//! ```

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use serde::Deserialize;

use crate::resources::ResourceError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadsFile {
    pub trust_domain: String,
    pub namespace: String,
    pub workloads: Vec<Workload>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyRole {
    Sidecar,
    Gateway,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Workload {
    pub name: String,
    pub proxy: ProxyRole,
    pub service_account: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub address: Ipv4Addr,
    #[serde(default)]
    pub app_address: Option<Ipv4Addr>,
    #[serde(default)]
    pub app_port: Option<u16>,
    #[serde(default)]
    pub backend_service: Option<String>,
    /// The mesh a sidecar joins (default: the only mesh).
    #[serde(default)]
    pub mesh: Option<String>,
    /// The Gateway scope a gateway proxy serves.
    #[serde(default)]
    pub scope: Option<String>,
    /// Envoy's admin port on `address` (default 15000).
    #[serde(default)]
    pub admin_port: Option<u16>,
}

impl WorkloadsFile {
    pub fn load(path: &Path) -> Result<WorkloadsFile, ResourceError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ResourceError {
            file: file.clone(),
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(&file, &text)
    }

    pub fn parse(file: &str, text: &str) -> Result<WorkloadsFile, ResourceError> {
        let w: WorkloadsFile = serde_yaml_ng::from_str(text).map_err(|e| ResourceError {
            file: file.to_owned(),
            message: format!("workloads: {e}"),
        })?;
        let e = |m: String| ResourceError {
            file: file.to_owned(),
            message: m,
        };
        meshauthz_table::spiffe::validate(&format!("spiffe://{}", w.trust_domain))
            .map_err(|m| e(format!("trustDomain `{}`: {m}", w.trust_domain)))?;
        for (i, wl) in w.workloads.iter().enumerate() {
            if w.workloads[..i].iter().any(|o| o.name == wl.name) {
                return Err(e(format!("workloads[{i}].name: duplicate workload `{}`", wl.name)));
            }
            if wl.name.is_empty()
                || !wl
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(e(format!("workloads[{i}].name: `{}` must be [A-Za-z0-9_-]+", wl.name)));
            }
            if !wl.address.is_loopback() {
                return Err(e(format!(
                    "workloads[{i}].address: {} is not a loopback address (127.0.0.0/8)",
                    wl.address
                )));
            }
            if wl.app_port.is_some() != wl.app_address.is_some() {
                return Err(e(format!("workloads[{i}]: appPort and appAddress go together")));
            }
            if wl.backend_service.is_some() && wl.app_port.is_none() {
                return Err(e(format!("workloads[{i}].backendService: an endpoint needs appPort")));
            }
            match wl.proxy {
                ProxyRole::Gateway if wl.scope.is_none() => {
                    return Err(e(format!(
                        "workloads[{i}].scope: a gateway proxy needs the scope it serves"
                    )));
                }
                ProxyRole::Sidecar if wl.scope.is_some() => {
                    return Err(e(format!("workloads[{i}].scope: only gateway proxies have a scope")));
                }
                _ => {}
            }
        }
        Ok(w)
    }
}

impl Workload {
    /// The workload's SPIFFE ID: `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
    pub fn spiffe_id(&self, file: &WorkloadsFile) -> String {
        format!(
            "spiffe://{}/ns/{}/sa/{}",
            file.trust_domain, file.namespace, self.service_account
        )
    }
}
