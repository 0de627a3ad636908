//! The Envoy load benchmark behind `cargo xtask bench`: the same traffic through a server Envoy
//! (`--concurrency 1`, direct response) with (a) no authorization filter, (b) native RBAC from
//! `--emit envoy-rbac`, (b2) native RBAC in its matcher form (`--emit envoy-rbac-matcher`), (c) a
//! proxy-wasm filter that only returns Continue, (d) meshauthz (Wasm), (e) meshauthz as a native
//! dynamic module;
//! for policies of several sizes, half the requests allowed and half denied. Clients reach it
//! over mTLS through a client sidecar Envoy, as in the guide.
//!
//! Variants are interleaved and repeated within one run so that the ratios are comparable on a
//! noisy machine. Throughput runs on all CPUs; latency, at a moderate fixed rate, with the server
//! Envoy pinned alone to one CPU (`taskset`). Output: a JSON array of measurements on stdout (one object per variant, size
//! and round).
//!
//! Two workloads: `exact` (every rule an exact principal, host, port and method: what RBAC's
//! matcher tree indexes best) and `mix` (the criterion benchmarks' mesh-shaped set from
//! `meshauthz_benches::workload`: wildcard principals and hosts, CIDR-only sources, header
//! regexes, one DENY policy in ten), each ending with the rule that allows the client's GET.
//!
//! Usage: envoy-load --wasm MESHAUTHZ.wasm --noop-wasm NOOP.wasm [--sizes 1,100,1000,10000]
//!        [--rounds 5] [--seconds 4] [--rate 400] [--workloads exact,mix]
//!        [--variants none,rbac,rbac_matcher,noop_wasm,meshauthz,meshauthz_native]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use meshauthz_envoy_config::bootstrap::{
    Bootstrap, CaSource, CertSource, Cluster, DownstreamTls, FilterChain, ForwardClientCert, Hcm, HttpFilter, Listener,
    Route, UpstreamTls, VirtualHost,
};
use meshauthz_envoy_config::ca::{LeafSpec, MeshCa};
use meshauthz_policy_compiler::emit::{Mode, Xfcc, plugin_config};
use meshauthz_policy_compiler::rbac_matcher::envoy_rbac_matcher;
use meshauthz_policy_compiler::{compile_sources, rbac::envoy_rbac};
use meshauthz_tests::{Envoy, free_port};
use serde_json::json;

const CLIENT_ID: &str = "spiffe://bench.svc.id.goog/ns/default/sa/demo-client";
const SERVER_ID: &str = "spiffe://bench.svc.id.goog/ns/default/sa/demo-server";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Variant {
    NoFilter,
    NativeRbac,
    RbacMatcher,
    NoopWasm,
    Meshauthz,
    MeshauthzNative,
}

impl Variant {
    const ALL: [Variant; 6] = [
        Variant::NoFilter,
        Variant::NativeRbac,
        Variant::RbacMatcher,
        Variant::NoopWasm,
        Variant::Meshauthz,
        Variant::MeshauthzNative,
    ];

    fn name(self) -> &'static str {
        match self {
            Variant::NoFilter => "none",
            Variant::NativeRbac => "rbac",
            Variant::RbacMatcher => "rbac_matcher",
            Variant::NoopWasm => "noop_wasm",
            Variant::Meshauthz => "meshauthz",
            Variant::MeshauthzNative => "meshauthz_native",
        }
    }
}

/// Which generated policy set the server enforces.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Workload {
    Exact,
    Mix,
}

impl Workload {
    const ALL: [Workload; 2] = [Workload::Exact, Workload::Mix];

    fn name(self) -> &'static str {
        match self {
            Workload::Exact => "exact",
            Workload::Mix => "mix",
        }
    }
}

struct Args {
    wasm: PathBuf,
    noop: PathBuf,
    sizes: Vec<usize>,
    rounds: usize,
    seconds: u64,
    rate: u64,
    variants: Vec<Variant>,
    workloads: Vec<Workload>,
    /// After the rounds: Envoy's RSS with the largest policy at 1, 2 and 4 workers, for the
    /// meshauthz builds.
    rss: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        wasm: PathBuf::new(),
        noop: PathBuf::new(),
        sizes: vec![1, 100, 1000, 10000],
        rounds: 5,
        seconds: 4,
        rate: 400,
        variants: Variant::ALL.to_vec(),
        workloads: Workload::ALL.to_vec(),
        rss: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--wasm" => a.wasm = value()?.into(),
            "--noop-wasm" => a.noop = value()?.into(),
            "--sizes" => {
                a.sizes = value()?
                    .split(',')
                    .map(|s| s.parse().map_err(|e| format!("--sizes: {e}")))
                    .collect::<Result<_, _>>()?
            }
            "--rounds" => a.rounds = value()?.parse().map_err(|e| format!("--rounds: {e}"))?,
            "--seconds" => a.seconds = value()?.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--rate" => a.rate = value()?.parse().map_err(|e| format!("--rate: {e}"))?,
            "--rss" => a.rss = true,
            "--variants" => {
                let names = value()?;
                a.variants = names
                    .split(',')
                    .map(|n| {
                        Variant::ALL
                            .into_iter()
                            .find(|v| v.name() == n)
                            .ok_or(format!("--variants: unknown {n}"))
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--workloads" => {
                let names = value()?;
                a.workloads = names
                    .split(',')
                    .map(|n| {
                        Workload::ALL
                            .into_iter()
                            .find(|w| w.name() == n)
                            .ok_or(format!("--workloads: unknown {n} (exact, mix)"))
                    })
                    .collect::<Result<_, _>>()?;
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if !a.wasm.is_file() || !a.noop.is_file() {
        return Err("--wasm and --noop-wasm must name the built filters".into());
    }
    Ok(a)
}

/// N rules: N-1 for other workloads, then the one that allows the client's GET, last, so a
/// linear scan walks all of them for every request (the POSTs match nothing).
fn policy(workload: Workload, rules: usize, port: u16) -> String {
    match workload {
        Workload::Exact => exact_policy(rules, port),
        Workload::Mix => mix_policy(rules, port),
    }
}

/// The mesh-shaped set of the criterion benchmarks (its rules name ports other than the
/// server's, hosts other than `service-test` and principals other than the client's, so none of
/// its ALLOW or DENY rules decides the load's requests), then a wildcard rule for the client: a
/// namespace-wide principal and a host prefix, which neither RBAC form can look up exactly.
fn mix_policy(rules: usize, port: u16) -> String {
    let mut y = if rules > 1 {
        meshauthz_benches::workload(rules - 1, 7).yaml
    } else {
        String::new()
    };
    y += &format!(
        "---\nname: bench\naction: ALLOW\nrules:\n- sources: [{{principals: [\"spiffe://bench.svc.id.goog/ns/default/*\"]}}]\n  destinations: [{{hosts: [\"service-*\"], ports: [{port}], methods: [GET]}}]\n"
    );
    y
}

fn exact_policy(rules: usize, port: u16) -> String {
    let mut y = String::from("name: bench\naction: ALLOW\nrules:\n");
    for i in 0..rules.saturating_sub(1) {
        y += &format!(
            "- sources: [{{principals: [\"spiffe://bench.svc.id.goog/ns/ns{}/sa/svc{i}\"]}}]\n  destinations: [{{hosts: [\"svc{i}.bench\"], ports: [{port}], methods: [GET]}}]\n",
            i % 50
        );
    }
    y += &format!(
        "- sources: [{{principals: [\"{CLIENT_ID}\"]}}]\n  destinations: [{{hosts: [service-test], ports: [{port}], methods: [GET]}}]\n"
    );
    y
}

/// How the server's HCM treats `x-forwarded-client-cert`. Every variant forwards the client's
/// certificate to the upstream as the guide's sidecars do, so all four do the same job: meshauthz
/// sets the header itself (the HCM only strips what the client sent), the others have the HCM set
/// the same element natively.
fn xfcc_handling(v: Variant) -> ForwardClientCert {
    match v {
        Variant::Meshauthz => ForwardClientCert::Sanitize,
        // The native filter reads the peer's certificate from the element Envoy sets.
        Variant::MeshauthzNative => ForwardClientCert::SanitizeSetWithCert,
        Variant::NoFilter | Variant::NativeRbac | Variant::RbacMatcher | Variant::NoopWasm => {
            ForwardClientCert::SanitizeSet
        }
    }
}

/// The server Envoy: mTLS inbound, `filters`, then a direct 200 (no upstream, so the proxy is
/// what is measured).
fn server_bootstrap(admin: u16, port: u16, certs: &Path, filters: Vec<HttpFilter>, xfcc: ForwardClientCert) -> String {
    let hcm = Hcm {
        http_filters: filters,
        forward_client_cert: xfcc,
        ..Hcm::new(
            "inbound",
            vec![VirtualHost::new(
                "all",
                &["*"],
                Route::Direct {
                    status: 200,
                    body: "ok".into(),
                },
            )],
        )
    };
    let listener = Listener {
        name: "inbound".into(),
        address: (Ipv4Addr::LOCALHOST, port),
        chains: vec![FilterChain {
            transport: None,
            tls: Some(DownstreamTls {
                certificate: CertSource::dir(certs),
                client_ca: Some(CaSource::dir(certs)),
                alpn: false,
            }),
            hcm,
        }],
    };
    Bootstrap {
        listeners: vec![listener],
        ..Bootstrap::new((Ipv4Addr::LOCALHOST, admin))
    }
    .to_yaml()
}

/// The client sidecar: plaintext in, mTLS (checking the server's SPIFFE ID) out.
fn client_bootstrap(admin: u16, port: u16, server_port: u16, certs: &Path) -> String {
    let listener = Listener {
        name: "outbound".into(),
        address: (Ipv4Addr::LOCALHOST, port),
        chains: vec![FilterChain {
            transport: None,
            tls: None,
            hcm: Hcm::new(
                "outbound",
                vec![VirtualHost::new(
                    "service-test",
                    &["*"],
                    Route::Cluster("server".into()),
                )],
            ),
        }],
    };
    let mut server = Cluster::new("server", &[(Ipv4Addr::LOCALHOST, server_port)]);
    server.tls = Some(UpstreamTls {
        certificate: Some(CertSource::dir(certs)),
        server_ca: Some(CaSource::dir(certs)),
        uri_sans: vec![SERVER_ID.into()],
        sni: None,
    });
    Bootstrap {
        listeners: vec![listener],
        clusters: vec![server],
        ..Bootstrap::new((Ipv4Addr::LOCALHOST, admin))
    }
    .to_yaml()
}

fn filters_for(v: Variant, args: &Args, w: Workload, rules: usize, port: u16) -> Result<Vec<HttpFilter>, String> {
    let compiled =
        compile_sources(&[("bench.yaml".into(), policy(w, rules, port))], false).map_err(|e| e.to_string())?;
    Ok(match v {
        Variant::NoFilter => Vec::new(),
        Variant::NativeRbac => {
            let filters: Vec<serde_json::Value> =
                serde_json::from_str(&envoy_rbac(&compiled.set, false)?).map_err(|e| e.to_string())?;
            filters.into_iter().map(HttpFilter::Raw).collect()
        }
        Variant::RbacMatcher => {
            let filters: Vec<serde_json::Value> =
                serde_json::from_str(&envoy_rbac_matcher(&compiled.set, false)).map_err(|e| e.to_string())?;
            filters.into_iter().map(HttpFilter::Raw).collect()
        }
        Variant::NoopWasm => vec![HttpFilter::OtherWasm {
            plugin_config: "{}".into(),
            wasm: args.noop.clone(),
        }],
        Variant::MeshauthzNative => vec![HttpFilter::MeshauthzNative {
            plugin_config: plugin_config(&compiled.table_bytes(), Mode::Enforce, Xfcc::SanitizeSet),
        }],
        Variant::Meshauthz => vec![HttpFilter::Meshauthz {
            plugin_config: plugin_config(&compiled.table_bytes(), Mode::Enforce, Xfcc::SanitizeSet),
            wasm: args.wasm.clone(),
        }],
    })
}

/// Envoy's resident memory with the largest policy, at 1, 2 and 4 workers, for each meshauthz
/// build: the Wasm build holds a table and index per worker VM, the native one one per
/// configuration.
fn memory(
    args: &Args,
    dir: &tempfile::TempDir,
    server_port: u16,
    client_port: u16,
    certs: &Path,
) -> Result<Vec<serde_json::Value>, String> {
    let size = args.sizes.iter().copied().max().unwrap_or(1);
    let mut out = Vec::new();
    for v in [Variant::Meshauthz, Variant::MeshauthzNative] {
        if !args.variants.contains(&v) {
            continue;
        }
        for workers in [1u32, 2, 4] {
            let admin = free_port(Ipv4Addr::LOCALHOST);
            let boot = dir.path().join(format!("rss-{}-{workers}.yaml", v.name()));
            let filters = filters_for(v, args, Workload::Exact, size, server_port)?;
            std::fs::write(
                &boot,
                server_bootstrap(admin, server_port, certs, filters, xfcc_handling(v)),
            )
            .map_err(|e| e.to_string())?;
            let log = dir.path().join(format!("rss-{}-{workers}.log", v.name()));
            let server = Envoy::start_quiet_workers(&boot, (Ipv4Addr::LOCALHOST, admin).into(), &log, workers)?;
            // Traffic on every worker, so that each has built what it builds lazily.
            let _ = fixed_rate(client_port, args.rate, 1)?;
            let r = json!({"rss": true, "rules": size, "variant": v.name(), "workers": workers,
                "rss_mib": server.rss_kib().map(|k| k as f64 / 1024.0)});
            eprintln!("{r}");
            out.push(r);
        }
    }
    Ok(out)
}

/// wrk at full speed: requests per second.
fn throughput(port: u16, seconds: u64, script: &Path) -> Result<f64, String> {
    let out = Command::new("wrk")
        .args(["-t1", "-c16", &format!("-d{seconds}s"), "-s"])
        .arg(script)
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .map_err(|e| format!("wrk: {e} (cargo xtask bench installs it)"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:").and_then(|v| v.trim().parse().ok()))
        .ok_or_else(|| format!("no Requests/sec in wrk output:\n{text}"))
}

/// A fixed request rate over 4 keep-alive connections: (p50, p99) latency in microseconds and
/// the share of 200s (the rest must be 403s).
fn fixed_rate(port: u16, rate: u64, seconds: u64) -> Result<(f64, f64, f64), String> {
    let conns = 4u64;
    let interval = Duration::from_micros(1_000_000 * conns / rate.max(1));
    let handles: Vec<_> = (0..conns)
        .map(|c| {
            std::thread::spawn(move || -> Result<(Vec<u64>, u64), String> {
                let addr: SocketAddr = (Ipv4Addr::LOCALHOST, port).into();
                let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
                s.set_read_timeout(Some(Duration::from_secs(5)))
                    .map_err(|e| e.to_string())?;
                s.set_nodelay(true).map_err(|e| e.to_string())?;
                let mut reader = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
                let (mut lat, mut ok) = (Vec::new(), 0u64);
                let end = Instant::now() + Duration::from_secs(seconds);
                let mut next = Instant::now() + interval * (c as u32) / (conns as u32);
                let mut n = c;
                while next < end {
                    if let Some(wait) = next.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let method = if n % 2 == 0 { "GET" } else { "POST" };
                    n += 1;
                    let start = Instant::now();
                    write!(
                        s,
                        "{method} / HTTP/1.1\r\nHost: service-test\r\nContent-Length: 0\r\n\r\n"
                    )
                    .map_err(|e| e.to_string())?;
                    let mut status = String::new();
                    reader.read_line(&mut status).map_err(|e| e.to_string())?;
                    let mut length = 0usize;
                    loop {
                        let mut line = String::new();
                        reader.read_line(&mut line).map_err(|e| e.to_string())?;
                        if line == "\r\n" || line.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = line.split_once(':') {
                            if k.eq_ignore_ascii_case("content-length") {
                                length = v.trim().parse().unwrap_or(0);
                            }
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).map_err(|e| e.to_string())?;
                    lat.push(start.elapsed().as_micros() as u64);
                    ok += u64::from(status.contains(" 200 "));
                    next += interval;
                }
                Ok((lat, ok))
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut ok = 0;
    for h in handles {
        let (lat, o) = h.join().map_err(|_| "latency thread panicked".to_owned())??;
        all.extend(lat);
        ok += o;
    }
    all.sort_unstable();
    let pct = |p: f64| all.get(((all.len() as f64 - 1.0) * p) as usize).copied().unwrap_or(0) as f64;
    Ok((pct(0.50), pct(0.99), ok as f64 / all.len().max(1) as f64))
}

/// CPU affinity set with `taskset` for the latency phase, undone on drop. Does nothing on a
/// single CPU or without `taskset`: the measurement then runs unpinned.
struct Pinning {
    others: Vec<u32>,
    all: String,
}

impl Pinning {
    fn isolate(server: u32, others: &[u32]) -> Option<Pinning> {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        if cpus < 2 {
            return None;
        }
        let last = cpus - 1;
        let pin = |pid: u32, list: &str| {
            Command::new("taskset")
                .args(["-a", "-p", "-c", list, &pid.to_string()])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        let rest = if last == 1 {
            "0".to_owned()
        } else {
            format!("0-{}", last - 1)
        };
        let ok = pin(server, &last.to_string()) && others.iter().all(|&p| pin(p, &rest));
        let pinning = Pinning {
            others: others.to_vec(),
            all: format!("0-{last}"),
        };
        if !ok {
            eprintln!("envoy-load: taskset failed; latency measured unpinned");
        }
        Some(pinning)
    }
}

impl Drop for Pinning {
    fn drop(&mut self) {
        for &pid in &self.others {
            let _ = Command::new("taskset")
                .args(["-a", "-p", "-c", &self.all, &pid.to_string()])
                .output();
        }
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("envoy-load: {e}");
        std::process::exit(2);
    }
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let ca = MeshCa::generate("TestCorpLLC").map_err(|e| e.to_string())?;
    let (server_certs, client_certs) = (dir.path().join("server"), dir.path().join("client"));
    ca.issue(&LeafSpec::svid(SERVER_ID))
        .and_then(|c| c.write_to(&server_certs))
        .map_err(|e| e.to_string())?;
    ca.issue(&LeafSpec::svid(CLIENT_ID))
        .and_then(|c| c.write_to(&client_certs))
        .map_err(|e| e.to_string())?;
    let script = dir.path().join("alternate.lua");
    std::fs::write(
        &script,
        "local n = 0\nrequest = function()\n  n = n + 1\n  local m = (n % 2 == 0) and \"GET\" or \"POST\"\n  return wrk.format(m, \"/\", {[\"Host\"] = \"service-test\", [\"Content-Length\"] = \"0\"})\nend\n",
    )
    .map_err(|e| e.to_string())?;
    let server_port = free_port(Ipv4Addr::LOCALHOST);
    let (client_port, client_admin) = (free_port(Ipv4Addr::LOCALHOST), free_port(Ipv4Addr::LOCALHOST));
    let client_boot = dir.path().join("client.yaml");
    std::fs::write(
        &client_boot,
        client_bootstrap(client_admin, client_port, server_port, &client_certs),
    )
    .map_err(|e| e.to_string())?;
    let client = Envoy::start_quiet(
        &client_boot,
        (Ipv4Addr::LOCALHOST, client_admin).into(),
        &dir.path().join("client.log"),
    )?;
    let mut results = Vec::new();
    for round in 0..args.rounds {
        for (&size, &workload) in args
            .sizes
            .iter()
            .flat_map(|s| args.workloads.iter().map(move |w| (s, w)))
        {
            // A different order each round, so that no variant always follows the same one
            // (say, native RBAC's 10,000-rule run, which leaves the machine warm and busy).
            let mut order = args.variants.clone();
            let shift = round % order.len().max(1);
            order.rotate_left(shift);
            for &v in &order {
                // Beyond 10,000 rules Envoy's linear RBAC takes minutes per run, and the matcher
                // form's configuration (each rule in its host's entry and in the fallback list)
                // runs to hundreds of megabytes.
                if matches!(v, Variant::NativeRbac | Variant::RbacMatcher) && size > 10_000 {
                    continue;
                }
                // In the mix, a service-prefix host (`svc1*`) matches a tenth of all the exact
                // hosts, and the matcher form copies each rule into every entry it can match:
                // at 10,000 rules building that configuration took over 4 GiB here.
                if v == Variant::RbacMatcher && workload == Workload::Mix && size > 1_000 {
                    continue;
                }
                let admin = free_port(Ipv4Addr::LOCALHOST);
                let boot = dir
                    .path()
                    .join(format!("server-{}-{}-{size}.yaml", v.name(), workload.name()));
                let filters = filters_for(v, &args, workload, size, server_port)?;
                std::fs::write(
                    &boot,
                    server_bootstrap(admin, server_port, &server_certs, filters, xfcc_handling(v)),
                )
                .map_err(|e| e.to_string())?;
                let log = dir
                    .path()
                    .join(format!("server-{}-{}-{size}-{round}.log", v.name(), workload.name()));
                let started = Instant::now();
                let server = Envoy::start_quiet(&boot, (Ipv4Addr::LOCALHOST, admin).into(), &log)?;
                let startup_ms = started.elapsed().as_millis();
                // Warm-up: connections, V8 tiers, the identity cache.
                let _ = fixed_rate(client_port, args.rate, 1)?;
                let cpu_before = server.cpu_times();
                let wall = Instant::now();
                let rps = throughput(client_port, args.seconds, &script)?;
                // The server Envoy's own CPU per request: what the filter adds, without the
                // noise of the client side sharing the two cores.
                let requests = (rps * wall.elapsed().as_secs_f64()).max(1.0);
                let per_request = |d: Duration| d.as_secs_f64() * 1e6 / requests;
                let (cpu_us, user_us) = match (cpu_before, server.cpu_times()) {
                    (Some((u0, s0)), Some((u1, s1))) => {
                        (Some(per_request((u1 + s1) - (u0 + s0))), Some(per_request(u1 - u0)))
                    }
                    _ => (None, None),
                };
                // Latency is measured with the server Envoy alone on the last CPU and everything
                // else (the client sidecar, the load threads) on the others: at a moderate rate
                // the client side has room to spare, and the server's tail then shows its own
                // work rather than which process the scheduler ran first.
                let pinned = Pinning::isolate(server.pid(), &[client.pid(), std::process::id()]);
                let latency = fixed_rate(client_port, args.rate, args.seconds);
                drop(pinned);
                let (p50, p99, allowed) = latency?;
                let configure_ms = server
                    .log_text()
                    .lines()
                    .filter_map(|l| {
                        l.split("configure_ms=")
                            .nth(1)?
                            .split_whitespace()
                            .next()?
                            .parse::<f64>()
                            .ok()
                    })
                    // Configured on the main thread and on the worker: the slower one.
                    .reduce(f64::max);
                let r = json!({"round": round, "rules": size, "workload": workload.name(), "variant": v.name(), "rps": rps, "p50_us": p50, "p99_us": p99,
                    "allowed_share": allowed, "startup_ms": startup_ms, "configure_ms": configure_ms, "server_cpu_us": cpu_us, "server_user_us": user_us});
                eprintln!("{r}");
                results.push(r);
                drop(server);
            }
        }
    }
    if args.rss {
        results.extend(memory(&args, &dir, server_port, client_port, &server_certs)?);
    }
    println!("{}", serde_json::Value::Array(results));
    Ok(())
}
