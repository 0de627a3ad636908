//! Small Envoy bootstrap builders for the filter tests: one TLS (or plaintext) listener in
//! front of an upstream, with or without the meshauthz filter.

use std::fmt::Write;
use std::path::Path;

/// The server side of one listener.
#[derive(Debug, Clone)]
pub struct Listener {
    pub name: String,
    pub ip: std::net::Ipv4Addr,
    pub port: u16,
    /// Directory with certificates.pem, private_key.pem, ca_certificates.pem; `None`: plaintext.
    pub tls: Option<std::path::PathBuf>,
    /// The filter's plugin configuration JSON; `None`: no meshauthz filter.
    pub plugin_config: Option<String>,
    /// Native RBAC filters (`policy-compiler --emit envoy-rbac`) to run instead.
    pub rbac_filters: Option<String>,
    /// HCM `forward_client_cert_details`; `SANITIZE` (Envoy's default) leaves XFCC to us.
    pub forward_client_cert: &'static str,
    /// The documented HCM settings (`meshauthz_envoy_config::hcm`); `false` leaves Envoy's
    /// defaults, for the attacks that show what the settings are for.
    pub hardened: bool,
}

impl Listener {
    pub fn yaml(&self, wasm: &Path, cluster: &str) -> String {
        let mut y = String::new();
        let _ = write!(
            y,
            r#"
  - name: {name}
    address: {{socket_address: {{address: {ip}, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          forward_client_cert_details: {fcc}
          set_current_client_cert_details: {{subject: true, uri: true, dns: true}}{hardening}
          route_config:
            virtual_hosts:
            - name: service-test
              domains: ["service-test"]
              routes: [{{match: {{prefix: "/"}}, route: {{cluster: {cluster}}}}}]
            - name: catch-all
              domains: ["*"]
              routes: [{{match: {{prefix: "/"}}, route: {{cluster: {cluster}}}}}]
              request_headers_to_add: [{{header: {{key: x-virtual-host, value: catch-all}}}}]
          http_filters:"#,
            name = self.name,
            ip = self.ip,
            port = self.port,
            fcc = self.forward_client_cert,
            hardening = if self.hardened {
                meshauthz_envoy_config::hcm::security_settings_yaml("          ")
            } else {
                String::new()
            },
        );
        if let Some(config) = &self.plugin_config {
            let _ = write!(y, "{}", wasm_filter_yaml(wasm, config, "          "));
        }
        if let Some(rbac) = &self.rbac_filters {
            // JSON is YAML: one flow mapping per filter.
            let filters: Vec<serde_json::Value> = serde_json::from_str(rbac).unwrap_or_default();
            for f in filters {
                let _ = write!(y, "\n          - {f}");
            }
        }
        let _ = write!(
            y,
            r#"
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}"#
        );
        if let Some(dir) = &self.tls {
            let _ = write!(
                y,
                r#"
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            alpn_protocols: [h2, http/1.1]
            tls_certificates:
            - certificate_chain: {{filename: {cert}}}
              private_key: {{filename: {key}}}
            validation_context:
              trusted_ca: {{filename: {ca}}}"#,
                cert = dir.join("certificates.pem").display(),
                key = dir.join("private_key.pem").display(),
                ca = dir.join("ca_certificates.pem").display(),
            );
        }
        y
    }
}

/// The `envoy.filters.http.wasm` entry for the meshauthz filter, indented by `indent`.
pub fn wasm_filter_yaml(wasm: &Path, plugin_config: &str, indent: &str) -> String {
    let json = plugin_config.replace('\n', " ").replace('\'', "''");
    let body = format!(
        r#"
- name: meshauthz
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
    config:
      name: meshauthz
      root_id: meshauthz
      configuration:
        "@type": type.googleapis.com/google.protobuf.StringValue
        value: '{json}'
      vm_config:
        vm_id: meshauthz
        runtime: envoy.wasm.runtime.v8
        code: {{local: {{filename: {wasm}}}}}"#,
        wasm = wasm.display()
    );
    body.lines()
        .map(|l| {
            if l.is_empty() {
                String::new()
            } else {
                format!("{indent}{l}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A whole bootstrap: admin on `admin_port`, the listeners, one static upstream cluster.
pub fn bootstrap(admin_port: u16, listeners: &[Listener], wasm: &Path, upstream_port: u16) -> String {
    let mut y = format!(
        r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin_port}}}}}
static_resources:
  listeners:"#
    );
    for l in listeners {
        y.push_str(&l.yaml(wasm, "upstream"));
    }
    y.push_str(&cluster_yaml(upstream_port));
    y
}

pub fn cluster_yaml(upstream_port: u16) -> String {
    format!(
        r#"
  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream_port}}}}}}}
"#
    )
}

/// A bootstrap whose listeners come from `lds_path` (file-based LDS, watched for renames), so a
/// test can swap a listener's filter configuration while Envoy runs.
pub fn bootstrap_with_file_lds(admin_port: u16, lds_path: &Path, upstream_port: u16) -> String {
    let dir = lds_path.parent().unwrap_or(Path::new("."));
    format!(
        r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin_port}}}}}
node: {{id: meshauthz-test, cluster: meshauthz-test}}
dynamic_resources:
  lds_config:
    resource_api_version: V3
    path_config_source:
      path: {lds}
      watched_directory: {{path: {dir}}}
static_resources:{clusters}"#,
        lds = lds_path.display(),
        dir = dir.display(),
        clusters = cluster_yaml(upstream_port),
    )
}

/// The LDS file content for `listeners`.
pub fn lds_yaml(listeners: &[Listener], wasm: &Path) -> String {
    let mut y = String::from("resources:");
    for l in listeners {
        let body = l.yaml(wasm, "upstream");
        y.push_str(&body.replacen(
            "\n  - name:",
            "\n  - \"@type\": type.googleapis.com/envoy.config.listener.v3.Listener\n    name:",
            1,
        ));
    }
    y.push('\n');
    y
}
