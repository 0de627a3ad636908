//! An Istio-shaped benchmark workload: `security.istio.io/v1` AuthorizationPolicies for one
//! workload (namespace `bench`), 50 rules a policy, shaped like a mesh's: exact principals and
//! namespaces as sources; service hosts; path prefixes, `notPaths` and `{*}` templates; methods;
//! a header condition on some rules; JWT request principals on some; one policy in ten a DENY of
//! `/admin/*` from an untrusted namespace. Deterministic, like the guide-format workload.

use std::fmt::Write;

use crate::Rng;

/// The workload the policies are compiled for.
pub const NAMESPACE: &str = "bench";
const RULES_PER_POLICY: usize = 50;
const RULES_PER_NAMESPACE: usize = 40;

/// One request that the workload's policies decide.
#[derive(Debug, Clone)]
pub struct IstioRequest {
    pub principal: Option<String>,
    pub host: String,
    pub path: String,
    pub method: String,
    pub tenant: Option<String>,
    /// The verified JWT's issuer and subject, if the request carries one.
    pub jwt: Option<(String, String)>,
}

/// A generated Istio policy set and requests for it, half built to match a random rule.
#[derive(Debug)]
pub struct IstioWorkload {
    pub yaml: String,
    pub requests: Vec<IstioRequest>,
}

pub fn istio_workload(rules: usize, seed: u64, requests: usize) -> IstioWorkload {
    let mut rng = Rng::new(seed);
    let namespaces = (rules / RULES_PER_NAMESPACE).max(10);
    let mut yaml = String::new();
    let mut matching = Vec::with_capacity(rules);
    for p in 0..rules.div_ceil(RULES_PER_POLICY) {
        let deny = p % 10 == 9;
        let _ = write!(
            yaml,
            "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p{p}\n  namespace: {NAMESPACE}\nspec:\n  action: {}\n  rules:\n",
            if deny { "DENY" } else { "ALLOW" }
        );
        for r in 0..RULES_PER_POLICY.min(rules - p * RULES_PER_POLICY) {
            let i = p * RULES_PER_POLICY + r;
            let ns = rng.below(namespaces);
            let host = format!("svc{i}.{NAMESPACE}.svc.cluster.local");
            let principal = format!("spiffe://cluster.local/ns/ns{ns}/sa/svc{i}");
            if deny {
                let _ = write!(
                    yaml,
                    "  - from: [{{source: {{namespaces: [untrusted{ns}]}}}}]\n    to: [{{operation: {{hosts: [\"{host}\"], paths: [\"/admin/*\"]}}}}]\n"
                );
                continue;
            }
            let mut jwt = None;
            let (from, req_path, tenant) = match rng.below(10) {
                0..=2 => (
                    format!("principals: [\"cluster.local/ns/ns{ns}/sa/svc{i}\"]"),
                    format!("/api/v{i}/items"),
                    None,
                ),
                4..=6 => (format!("namespaces: [ns{ns}]"), format!("/api/v{i}/items"), None),
                3 => {
                    jwt = Some(("https://issuer.example".to_owned(), format!("svc{i}")));
                    (
                        format!("requestPrincipals: [\"https://issuer.example/svc{i}\"]"),
                        format!("/api/v{i}/items"),
                        None,
                    )
                }
                7 | 8 => (
                    format!("principals: [\"cluster.local/ns/ns{ns}/sa/svc{i}\"]"),
                    format!("/svc{i}/x/items"),
                    None,
                ),
                _ => (
                    format!("principals: [\"cluster.local/ns/ns{ns}/sa/svc{i}\"]"),
                    format!("/api/v{i}/items"),
                    Some(format!("tenant-{i}")),
                ),
            };
            let to = if req_path.starts_with("/svc") {
                format!("paths: [\"/svc{i}/{{*}}/items\"]")
            } else {
                format!("paths: [\"/api/v{i}/*\"], notPaths: [\"/api/v{i}/admin*\"]")
            };
            let _ = write!(
                yaml,
                "  - from: [{{source: {{{from}}}}}]\n    to: [{{operation: {{hosts: [\"{host}\"], methods: [GET, POST], {to}}}}}]\n"
            );
            if let Some(t) = &tenant {
                let _ = writeln!(
                    yaml,
                    "    when: [{{key: \"request.headers[x-tenant]\", values: [\"{t}\"]}}]"
                );
            }
            matching.push(IstioRequest {
                principal: Some(principal),
                host,
                path: req_path,
                method: "GET".into(),
                tenant,
                jwt,
            });
        }
    }
    let requests = (0..requests)
        .map(|k| {
            if k % 2 == 0 && !matching.is_empty() {
                matching[rng.below(matching.len())].clone()
            } else {
                IstioRequest {
                    principal: Some(format!("spiffe://cluster.local/ns/unknown/sa/intruder{k}")),
                    host: format!("unknown{k}.example.com"),
                    path: "/api/v1/items".into(),
                    method: "GET".into(),
                    tenant: None,
                    jwt: Some(("https://issuer.example".into(), format!("intruder{k}"))),
                }
            }
        })
        .collect();
    IstioWorkload { yaml, requests }
}

/// Compiles an Istio workload for its namespace.
pub fn compile_istio(w: &IstioWorkload) -> Vec<u8> {
    let options = meshauthz_policy_compiler::CompileOptions {
        deny_warnings: false,
        istio: meshauthz_policy_compiler::IstioOptions {
            namespace: Some(NAMESPACE.into()),
            ..meshauthz_policy_compiler::IstioOptions::default()
        },
    };
    meshauthz_policy_compiler::compile_sources_with(&[("istio-bench.yaml".into(), w.yaml.clone())], &options)
        .unwrap_or_else(|e| panic!("generated Istio workload must compile: {e}"))
        .table_bytes()
}
