//! The HTTP connection manager settings that meshauthz's guarantees rest on, in one place.
//! Every HCM this project writes (the generated sidecars and gateway, the tests, the benchmark
//! proxies) takes them from here, so they cannot drift apart:
//!
//! | setting | why |
//! |---|---|
//! | `use_remote_address: true`, `xff_num_trusted_hops: 0` | `source.address` (what `ipBlocks` match) is the TCP peer, never an address from `x-forwarded-for`; the filter refuses an address it can tell came from a header (port 0) |
//! | `strip_any_host_port: true`, `strip_trailing_host_dot: true` | Envoy normalizes `Host`/`:authority` before the filter and the router, so the host the filter decides is the host the router routes (the filter compares the host exactly) |
//!
//! XFCC handling (`forward_client_cert_details`) depends on the filter's `xfcc` mode and is
//! chosen by [`forward_client_cert`].

use serde_json::{Value, json};

/// The settings above, as HCM fields.
pub fn security_settings() -> Vec<(&'static str, Value)> {
    vec![
        ("use_remote_address", json!(true)),
        ("xff_num_trusted_hops", json!(0)),
        ("strip_any_host_port", json!(true)),
        ("strip_trailing_host_dot", json!(true)),
    ]
}

/// The same as YAML lines (`key: value`), each prefixed with `indent`, for configurations
/// written as YAML text.
pub fn security_settings_yaml(indent: &str) -> String {
    security_settings()
        .into_iter()
        .map(|(k, v)| format!("\n{indent}{k}: {v}"))
        .collect()
}

/// What the filter's `xfcc` mode needs from the HCM's `forward_client_cert_details`:
/// `sanitize_set` and `off` want the client's header stripped before the filter (`SANITIZE`);
/// `append_forward` wants a previous hop's header kept for mTLS peers only (`FORWARD_ONLY`,
/// which removes it from plaintext connections, as Envoy's own `APPEND_FORWARD` does).
pub fn forward_client_cert(filter_xfcc_append_forward: bool) -> &'static str {
    if filter_xfcc_append_forward {
        "FORWARD_ONLY"
    } else {
        "SANITIZE"
    }
}
