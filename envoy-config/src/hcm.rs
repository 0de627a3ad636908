//! The HTTP connection manager settings that meshauthz's guarantees rest on, in one place.
//! Every HCM this project writes (the generated sidecars and gateway, the tests, the benchmark
//! proxies) gets them from the one bootstrap builder ([`crate::bootstrap::Hcm`]):
//!
//! | setting | why |
//! |---|---|
//! | `use_remote_address: true`, `xff_num_trusted_hops: 0` | `source.address` (what `ipBlocks` match) is the TCP peer, never an address from `x-forwarded-for`; the filter refuses an address it can tell came from a header (port 0) |
//! | `strip_any_host_port: true`, `strip_trailing_host_dot: true` | Envoy normalizes `Host`/`:authority` before the filter and the router, so the host the filter decides is the host the router routes (the filter compares the host exactly). Left out for Istio input ([`HostPort::Keep`]), whose hosts keep the port as Istio's sidecars do |
//! | `normalize_path: true` | RFC 3986 dot segments are resolved before the filter and the router, so a path rule decides the path that is routed (`/public/../admin` is `/admin`), as in Istio's sidecars |
//!
//! XFCC handling (`forward_client_cert_details`) depends on the filter's `xfcc` mode:
//! [`crate::bootstrap::ForwardClientCert::for_filter`].

use serde_json::{Value, json};

/// What the HCM does with a port in `Host`/`:authority`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HostPort {
    /// Strip it (and a trailing dot): the guide's format, whose hosts carry no port.
    #[default]
    Strip,
    /// Keep the host as sent: Istio's sidecar HCM, which Istio policies are written for
    /// (`hosts: ["h"]` does not match `h:8080`).
    Keep,
}

/// The settings above, as HCM fields.
pub fn security_settings(host_port: HostPort) -> Vec<(&'static str, Value)> {
    let mut settings = vec![
        ("use_remote_address", json!(true)),
        ("xff_num_trusted_hops", json!(0)),
        ("normalize_path", json!(true)),
    ];
    if host_port == HostPort::Strip {
        settings.push(("strip_any_host_port", json!(true)));
        settings.push(("strip_trailing_host_dot", json!(true)));
    }
    settings
}
