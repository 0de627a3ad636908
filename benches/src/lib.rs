//! Benchmark workloads: generated policy sets shaped like a real mesh, and request mixes that
//! are half allowed, half denied. Deterministic (a seeded xorshift), so every run and every
//! machine measures the same thing.
//!
//! The shape, per rule: sources are mostly exact SPIFFE IDs, some namespace-wide
//! (`spiffe://td/ns/nsK/*`), some service-account-wide (`*/sa/svcK`), some IP-only CIDRs;
//! destinations are mostly exact service hosts, some namespace suffixes (`*.nsK.svc.cluster.local`)
//! and service prefixes (`svcK*`); a few ports; methods on most rules; a header regex on 2%. One
//! policy in ten is a DENY policy. Policies hold 50 rules each.
//!
//! The mesh grows with its policy: one namespace per 40 rules (at least 10), so a namespace
//! holds about as many services at 100 rules as at 100,000, as in a real mesh where more rules
//! mean more services rather than more rules per service.

#![forbid(unsafe_code)]

pub mod istio;
pub mod linear;
#[path = "../../table/tests/support/reference.rs"]
pub mod reference;

use std::fmt::Write;

pub const TRUST_DOMAIN: &str = "bench.svc.id.goog";
const RULES_PER_POLICY: usize = 50;
const RULES_PER_NAMESPACE: usize = 40;

/// A small deterministic PRNG (xorshift64*).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// What one generated rule allows, for building requests that hit it.
#[derive(Debug, Clone)]
pub struct RuleShape {
    pub principal: Option<String>,
    pub source_ip: Option<std::net::IpAddr>,
    pub host: String,
    pub port: u16,
    pub method: String,
    pub header: Option<(String, String)>,
    pub deny: bool,
}

/// A generated policy set: its YAML and, per rule, a request that matches it.
#[derive(Debug)]
pub struct Workload {
    pub yaml: String,
    pub rules: Vec<RuleShape>,
}

const METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE", "HEAD"];

/// Generates `rules` rules in policies of 50.
pub fn workload(rules: usize, seed: u64) -> Workload {
    let mut rng = Rng::new(seed);
    let mut yaml = String::new();
    let mut shapes = Vec::with_capacity(rules);
    let namespaces = (rules / RULES_PER_NAMESPACE).max(10);
    let policies = rules.div_ceil(RULES_PER_POLICY);
    for p in 0..policies {
        let deny = p % 10 == 9;
        let action = if deny { "DENY" } else { "ALLOW" };
        let _ = write!(yaml, "---\nname: policy-{p}\naction: {action}\nrules:\n");
        let in_policy = RULES_PER_POLICY.min(rules - p * RULES_PER_POLICY);
        for r in 0..in_policy {
            let i = p * RULES_PER_POLICY + r;
            shapes.push(rule(&mut yaml, &mut rng, i, namespaces, deny));
        }
    }
    Workload { yaml, rules: shapes }
}

fn rule(yaml: &mut String, rng: &mut Rng, i: usize, namespaces: usize, deny: bool) -> RuleShape {
    let ns = rng.below(namespaces);
    let svc = format!("svc{i}");
    let principal = format!("spiffe://{TRUST_DOMAIN}/ns/ns{ns}/sa/{svc}");
    yaml.push_str("- sources:\n");
    let (principal, source_ip) = match rng.below(20) {
        0..=13 => {
            let _ = writeln!(yaml, "  - principals: [\"{principal}\"]");
            (Some(principal), None)
        }
        14..=16 => {
            let _ = writeln!(yaml, "  - principals: [\"spiffe://{TRUST_DOMAIN}/ns/ns{ns}/*\"]");
            (Some(principal), None)
        }
        17 => {
            let _ = writeln!(yaml, "  - principals: [\"*/sa/{svc}\"]");
            (Some(principal), None)
        }
        _ => {
            let (a, b) = (rng.below(256) as u8, rng.below(256) as u8);
            let _ = writeln!(yaml, "  - ipBlocks: [\"10.{a}.{b}.0/24\"]");
            (None, Some(std::net::IpAddr::from([10, a, b, 7])))
        }
    };
    let host_base = format!("{svc}.ns{ns}.svc.cluster.local");
    let host_pattern = match rng.below(10) {
        0..=6 => host_base.clone(),
        7 | 8 => format!("*.ns{ns}.svc.cluster.local"),
        _ => format!("{svc}*"),
    };
    let port = [80u16, 443, 8000, 8080][rng.below(4)];
    let method = METHODS[rng.below(METHODS.len())].to_owned();
    let _ = write!(
        yaml,
        "  destinations:\n  - hosts: [\"{host_pattern}\"]\n    ports: [{port}, {}]\n",
        9000 + i % 100
    );
    if rng.below(5) != 0 {
        let _ = writeln!(yaml, "    methods: [{method}, HEAD]");
    }
    let header = (rng.below(50) == 0).then(|| {
        let _ = writeln!(
            yaml,
            "    httpHeaderMatch: {{headerName: x-tenant, regexMatch: \"tenant-{i}-(a|b)\"}}"
        );
        ("x-tenant".to_owned(), format!("tenant-{i}-a"))
    });
    RuleShape {
        principal,
        source_ip,
        host: host_base,
        port,
        method,
        header,
        deny,
    }
}

/// `n` requests, alternating one built to match a random rule and one from an unknown
/// workload (which no ALLOW rule matches).
pub fn requests(w: &Workload, n: usize, seed: u64) -> Vec<reference::Req> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|k| {
            let shape = &w.rules[rng.below(w.rules.len())];
            let mut req = reference::Req {
                principal: shape.principal.clone(),
                source_ip: shape.source_ip,
                authority: shape.host.clone(),
                port: shape.port,
                method: shape.method.clone(),
                headers: shape.header.iter().cloned().collect(),
            };
            if k % 2 == 1 {
                req.principal = Some(format!("spiffe://{TRUST_DOMAIN}/ns/unknown/sa/intruder{k}"));
                req.source_ip = Some(std::net::IpAddr::from([192, 168, 0, 1]));
                req.authority = format!("unknown{k}.example.com");
            }
            req
        })
        .collect()
}

/// Compiles a workload's YAML into table bytes.
pub fn compile(w: &Workload) -> Vec<u8> {
    meshauthz_policy_compiler::compile_sources(&[("bench.yaml".into(), w.yaml.clone())], false)
        .unwrap_or_else(|e| panic!("generated workload must compile: {e}"))
        .table_bytes()
}
