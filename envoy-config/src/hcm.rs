//! The HTTP connection manager settings that meshauthz's guarantees rest on, in one place.
//! Every HCM this project writes (the generated sidecars and gateway, the tests, the benchmark
//! proxies) gets them from the one bootstrap builder ([`crate::bootstrap::Hcm`]):
//!
//! | setting | why |
//! |---|---|
//! | `use_remote_address: true`, `xff_num_trusted_hops: 0` | `source.address` (what `ipBlocks` match) is the TCP peer, never an address from `x-forwarded-for`; the filter refuses an address it can tell came from a header (port 0) |
//! | `strip_any_host_port: true`, `strip_trailing_host_dot: true` | Envoy normalizes `Host`/`:authority` before the filter and the router, so the host the filter decides is the host the router routes (the filter compares the host exactly) |
//!
//! XFCC handling (`forward_client_cert_details`) depends on the filter's `xfcc` mode:
//! [`crate::bootstrap::ForwardClientCert::for_filter`].

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
