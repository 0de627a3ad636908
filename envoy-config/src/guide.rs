//! The guide's resources shipped in `envoy-config/guide/`, and the order the guide applies them
//! in: the demo plays these steps and the generator's tests use the final one.

use std::path::PathBuf;

/// The directory holding the guide's resource files and `workloads.yaml`.
pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("guide")
}

/// The guide's files, step by step (each step lists everything in force then).
pub const STEPS: &[(&str, &[&str])] = &[
    (
        "1 client mTLS only",
        &[
            "mesh.yaml",
            "http_route.yaml",
            "client-mtls-policy.yaml",
            "demo-backend-service.yaml",
        ],
    ),
    (
        "2 + server mTLS",
        &[
            "mesh.yaml",
            "http_route.yaml",
            "client-mtls-policy.yaml",
            "demo-backend-service.yaml",
            "server-mtls-policy.yaml",
            "ep_mtls.yaml",
        ],
    ),
    (
        "3 + authorization",
        &[
            "mesh.yaml",
            "http_route.yaml",
            "client-mtls-policy.yaml",
            "demo-backend-service.yaml",
            "server-mtls-policy.yaml",
            "ep_mtls_authz.yaml",
            "authz-policy.yaml",
        ],
    ),
    (
        "4 ingress gateway",
        &[
            "mesh.yaml",
            "http_route.yaml",
            "client-mtls-policy.yaml",
            "demo-backend-service.yaml",
            "server-mtls-policy.yaml",
            "ep_mtls_authz.yaml",
            "authz-policy-gateway.yaml",
            "server-tls-policy.yaml",
            "td-gke-gateway.yaml",
            "td-gke-route.yaml",
        ],
    ),
];

/// Every file in force at the end of the walkthrough.
pub fn final_step() -> &'static [&'static str] {
    STEPS.last().map_or(&[], |(_, files)| files)
}
