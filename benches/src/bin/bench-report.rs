//! Writes the figures of one `cargo xtask bench` run into BENCHMARKS.md, between the
//! `<!-- bench:begin -->` and `<!-- bench:end -->` markers: criterion's medians (decision time
//! against rule count for the table and the linear scan, compile and load time), table sizes,
//! the Wasm binary sizes, and the Envoy load benchmark (throughput, latency, ratios).
//!
//! Usage: bench-report --load target/bench/envoy-load.json --out BENCHMARKS.md

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

use meshauthz_benches::{compile, workload};
use serde_json::Value;

const SIZES: &[usize] = &[10, 100, 1_000, 10_000, 100_000];
const BEGIN: &str = "<!-- bench:begin -->";
const END: &str = "<!-- bench:end -->";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// criterion's median estimate, in nanoseconds.
fn median_ns(group: &str, bench: &str, n: usize) -> Option<f64> {
    let path = root().join(format!("target/criterion/{group}/{bench}/{n}/new/estimates.json"));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    v["median"]["point_estimate"].as_f64()
}

fn human_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.1} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn micro() -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### Decision, compile, load (criterion, `benches/benches/decision.rs`)\n"
    );
    let _ = writeln!(
        s,
        "| rules | decision (table) | linear scan, precompiled | speed-up vs precompiled scan | reference scan (compiles as it goes) | compile YAML->table | load table (decode + index) | table bytes | YAML bytes |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &n in SIZES {
        let t = median_ns("decision", "table", n);
        let p = median_ns("decision", "linear_precompiled", n);
        let l = median_ns("decision", "linear_scan", n);
        let w = workload(n, 42);
        let bytes = compile(&w).len();
        let f = |v: Option<f64>| v.map_or("-".to_owned(), human_ns);
        let ratio = match (t, p) {
            (Some(t), Some(p)) if p < t * 10.0 => format!("{:.1}x", p / t),
            (Some(t), Some(p)) => format!("{:.0}x", p / t),
            _ => "-".into(),
        };
        let _ = writeln!(
            s,
            "| {n} | {} | {} | {ratio} | {} | {} | {} | {bytes} | {} |",
            f(t),
            f(p),
            f(l),
            f(median_ns("compile", "yaml_to_table", n)),
            f(median_ns("compile", "load_table", n)),
            w.yaml.len()
        );
    }
    if let (Some(a), Some(b)) = (
        median_ns("decision", "table", 100_000),
        median_ns("decision", "table", 10),
    ) {
        let _ = writeln!(s, "\ndecision(100k) / decision(10) = {:.2}", a / b);
    }
    let _ = writeln!(
        s,
        "\nIstio-shaped policies (`meshauthz_benches::istio`: exact principals, namespaces and JWT request \
         principals, hosts, path prefixes, notPaths, `{{*}}` templates, a header condition, DENY of `/admin/*` \
         from untrusted namespaces), compiled for one workload:\n"
    );
    let _ = writeln!(s, "| rules | decision (table) |");
    let _ = writeln!(s, "|---:|---:|");
    for &n in SIZES {
        let t = median_ns("decision_istio", "table", n);
        let _ = writeln!(s, "| {n} | {} |", t.map_or("-".to_owned(), human_ns));
    }
    if let (Some(a), Some(b)) = (
        median_ns("decision_istio", "table", 100_000),
        median_ns("decision_istio", "table", 10),
    ) {
        let _ = writeln!(s, "\nIstio decision(100k) / decision(10) = {:.2}", a / b);
    }
    s
}

fn load(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let rows: Vec<Value> = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let rounds = rows
        .iter()
        .filter_map(|r| r["round"].as_u64())
        .max()
        .map_or(0, |m| m + 1);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### Envoy load (`benches/src/bin/envoy-load.rs`, {rounds} interleaved rounds, medians)\n\n\
         wrk -> client sidecar Envoy -> mTLS -> server Envoy (`--concurrency 1`, direct response) with\n\
         (a) no filter, (b) native RBAC (`--emit envoy-rbac`), (b2) native RBAC's matcher form\n\
         (`--emit envoy-rbac-matcher`), (c) no-op proxy-wasm filter, (d) meshauthz (Wasm), (e) meshauthz (native).\n\
         Half the requests are allowed (GET, matched by the last rule), half denied (POST).\n\
         Every variant forwards the client certificate (XFCC) as the guide's sidecars do: meshauthz itself,\n\
         the others through the HCM's `SANITIZE_SET`. The variants run in a different order each round.\n\
         Throughput: wrk, 1 thread, 16 connections. Latency: a fixed rate over 4 keep-alive connections, with the\n\
         server Envoy alone on one CPU and the client side on the other.\n\
         Ratios and differences are taken within each round, then the median over rounds (and the range).\n\n\
         Two workloads: *exact* (each rule one exact principal, host, port and method, the client's rule\n\
         last: what RBAC's matcher tree looks up best) and *mix* (the criterion workload above: wildcard\n\
         principals and hosts, CIDR sources, header regexes, DENY policies, then a rule for the client with\n\
         a namespace-wide principal and a host prefix).\n"
    );
    let runs: Vec<&Value> = rows.iter().filter(|r| r["rss"] != true).collect();
    for workload in ["exact", "mix"] {
        // Results from before the workloads were split are the exact workload.
        let of: Vec<&Value> = runs
            .iter()
            .copied()
            .filter(|r| r["workload"].as_str().unwrap_or("exact") == workload)
            .collect();
        if !of.is_empty() {
            let _ = writeln!(s, "#### Workload: {workload}\n");
            s += &workload_tables(&of);
        }
    }
    s += &rss_and_runs(&rows);
    Ok(s)
}

/// The throughput, latency and CPU tables of one workload's runs.
fn workload_tables(runs: &[&Value]) -> String {
    // (rules, variant) -> measurements over rounds
    let mut by: BTreeMap<(u64, String), Vec<&Value>> = BTreeMap::new();
    for &r in runs {
        let key = (
            r["rules"].as_u64().unwrap_or(0),
            r["variant"].as_str().unwrap_or("").to_owned(),
        );
        by.entry(key).or_default().push(r);
    }
    let stat = |rules: u64, variant: &str, field: &str| -> f64 {
        median(
            by.get(&(rules, variant.to_owned()))
                .map(|v| v.iter().filter_map(|r| r[field].as_f64()).collect())
                .unwrap_or_default(),
        )
    };
    // Paired within a round: both variants ran minutes apart at most, so slow drift of the
    // machine between rounds cancels. Reported as the median over rounds and its range.
    let per_round = |rules: u64, x: &str, y: &str, field: &str, f: fn(f64, f64) -> f64| -> Vec<f64> {
        let of = |v: &str| by.get(&(rules, v.to_owned())).cloned().unwrap_or_default();
        let ys = of(y);
        of(x)
            .iter()
            .filter_map(|rx| {
                let ry = ys.iter().find(|ry| ry["round"] == rx["round"])?;
                Some(f(rx[field].as_f64()?, ry[field].as_f64()?))
            })
            .collect()
    };
    let paired = |rules: u64, x: &str, y: &str, field: &str, f: fn(f64, f64) -> f64, digits: usize| -> String {
        let v = per_round(rules, x, y, field, f);
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        match v.len() {
            0 => "-".to_owned(),
            1 => format!("{:.digits$}", v[0]),
            _ => format!("{:.digits$} ({lo:.digits$} to {hi:.digits$})", median(v)),
        }
    };
    let ratio: fn(f64, f64) -> f64 = |x, y| x / y;
    let minus: fn(f64, f64) -> f64 = |x, y| x - y;
    let mut sizes: Vec<u64> = by.keys().map(|k| k.0).filter(|&r| r > 0).collect();
    sizes.dedup();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| rules | rps (a) none | rps (b) rbac | rps (c) noop wasm | rps (d) meshauthz | (d)/(a) | (d)/(b) | (d)/(c) | p50 / p99 (a) µs | p50 / p99 (b) µs | p50 / p99 (d) µs | added p99 (d)-(a) µs | configure (d) ms |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for rules in sizes {
        let rps = |v: &str| stat(rules, v, "rps");
        let (a, b, c, d) = (rps("none"), rps("rbac"), rps("noop_wasm"), rps("meshauthz"));
        let lat = |v: &str| format!("{:.0} / {:.0}", stat(rules, v, "p50_us"), stat(rules, v, "p99_us"));
        let _ = writeln!(
            s,
            "| {rules} | {a:.0} | {b:.0} | {c:.0} | {d:.0} | {} | {} | {} | {} | {} | {} | {} | {:.2} |",
            paired(rules, "meshauthz", "none", "rps", ratio, 2),
            paired(rules, "meshauthz", "rbac", "rps", ratio, 2),
            paired(rules, "meshauthz", "noop_wasm", "rps", ratio, 2),
            lat("none"),
            lat("rbac"),
            lat("meshauthz"),
            paired(rules, "meshauthz", "none", "p99_us", minus, 0),
            stat(rules, "meshauthz", "configure_ms"),
        );
    }
    let _ = writeln!(
        s,
        "\nServer Envoy CPU per request (user + system time over the wrk phase / requests served): the \
         cost each filter adds, measured on the proxy itself rather than through the shared-core throughput. \
         The user-time column leaves out system time, which also carries the loopback network stack and is \
         the noisier half.\n"
    );
    let _ = writeln!(
        s,
        "| rules | (a) none µs | (b) rbac µs | (c) noop wasm µs | (d) meshauthz µs | (d)-(c) µs | (d)-(c) user µs | (c)/(d) | (b)/(d) |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut sizes: Vec<u64> = by.keys().map(|k| k.0).collect();
    sizes.dedup();
    for rules in sizes {
        let cpu = |v: &str| stat(rules, v, "server_cpu_us");
        let (a, b, c, d) = (cpu("none"), cpu("rbac"), cpu("noop_wasm"), cpu("meshauthz"));
        let _ = writeln!(
            s,
            "| {rules} | {a:.1} | {b:.1} | {c:.1} | {d:.1} | {} | {} | {:.2} | {:.2} |",
            paired(rules, "meshauthz", "noop_wasm", "server_cpu_us", minus, 1),
            paired(rules, "meshauthz", "noop_wasm", "server_user_us", minus, 1),
            c / d,
            b / d
        );
    }
    if by.keys().any(|k| k.1 == "meshauthz_native") {
        let _ = writeln!(
            s,
            "\n(e) meshauthz as a native dynamic module (`libmeshauthz_filter.so`), the same policy, same traffic, \
             same rounds; its HCM adds this hop's certificate to XFCC (`set_current_client_cert_details.cert`), \
             which the filter verifies and replaces.\n"
        );
        let _ = writeln!(
            s,
            "| rules | rps (e) native | rps (b2) rbac matcher | (e)/(a) | (e)/(b) | (e)/(b2) | (e)/(d) | p50 / p99 (e) µs | added p99 (e)-(a) µs | server CPU (e) µs | (e)-(a) CPU µs | (b)/(e) CPU | (b2)/(e) CPU |"
        );
        let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        let mut sizes: Vec<u64> = by.keys().map(|k| k.0).collect();
        sizes.dedup();
        for rules in sizes {
            let e = "meshauthz_native";
            let _ = writeln!(
                s,
                "| {rules} | {:.0} | {:.0} | {} | {} | {} | {} | {:.0} / {:.0} | {} | {:.1} | {} | {:.2} | {:.2} |",
                stat(rules, e, "rps"),
                stat(rules, "rbac_matcher", "rps"),
                paired(rules, e, "none", "rps", ratio, 2),
                paired(rules, e, "rbac", "rps", ratio, 2),
                paired(rules, e, "rbac_matcher", "rps", ratio, 2),
                paired(rules, e, "meshauthz", "rps", ratio, 2),
                stat(rules, e, "p50_us"),
                stat(rules, e, "p99_us"),
                paired(rules, e, "none", "p99_us", minus, 0),
                stat(rules, e, "server_cpu_us"),
                paired(rules, e, "none", "server_cpu_us", minus, 1),
                stat(rules, "rbac", "server_cpu_us") / stat(rules, e, "server_cpu_us"),
                stat(rules, "rbac_matcher", "server_cpu_us") / stat(rules, e, "server_cpu_us"),
            );
        }
    }
    s
}

/// Memory by worker count, then every run's raw figures.
fn rss_and_runs(rows: &[Value]) -> String {
    let mut s = String::new();
    let rss: Vec<&Value> = rows.iter().filter(|r| r["rss"] == true).collect();
    if !rss.is_empty() {
        let _ = writeln!(
            s,
            "\nServer Envoy resident memory (VmRSS after traffic) with the largest policy, by worker count:\n"
        );
        let _ = writeln!(s, "| variant | rules | workers | RSS MiB |");
        let _ = writeln!(s, "|---|---:|---:|---:|");
        for r in &rss {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.1} |",
                r["variant"].as_str().unwrap_or(""),
                r["rules"],
                r["workers"],
                r["rss_mib"].as_f64().unwrap_or(f64::NAN)
            );
        }
    }
    let _ = writeln!(s, "\nEvery run, per round and variant (rps, p50/p99 µs):\n");
    for r in rows.iter().filter(|r| r["rss"] != true) {
        let _ = writeln!(
            s,
            "- round {} {} rules {} {}: {:.0} rps, {:.0}/{:.0} µs, server {:.1} µs CPU ({:.1} user) per request",
            r["round"],
            r["workload"].as_str().unwrap_or("exact"),
            r["rules"],
            r["variant"].as_str().unwrap_or(""),
            r["rps"].as_f64().unwrap_or(0.0),
            r["p50_us"].as_f64().unwrap_or(0.0),
            r["p99_us"].as_f64().unwrap_or(0.0),
            r["server_cpu_us"].as_f64().unwrap_or(f64::NAN),
            r["server_user_us"].as_f64().unwrap_or(f64::NAN)
        );
    }
    s
}

fn wasm_sizes() -> String {
    let mut s = String::from(
        "### Filter binaries (LTO, one codegen unit, stripped; Wasm: panic=abort, native: panics unwind to the FFI guard)\n\n",
    );
    if let Ok(m) = std::fs::metadata(root().join("target/release/libmeshauthz_filter.so")) {
        let _ = writeln!(
            s,
            "- `libmeshauthz_filter.so`: {} bytes ({:.0} KiB)",
            m.len(),
            m.len() as f64 / 1024.0
        );
    }
    for name in ["meshauthz_filter", "meshauthz_noop_filter"] {
        let p = root().join(format!("target/wasm32-wasip1/release/{name}.wasm"));
        if let Ok(m) = std::fs::metadata(&p) {
            let _ = writeln!(
                s,
                "- `{name}.wasm`: {} bytes ({:.0} KiB)",
                m.len(),
                m.len() as f64 / 1024.0
            );
        }
    }
    s
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut load_path, mut out) = (None, root().join("BENCHMARKS.md"));
    while let Some(a) = args.next() {
        match a.as_str() {
            "--load" => load_path = args.next().map(PathBuf::from),
            "--out" => out = args.next().map(PathBuf::from).unwrap_or(out),
            other => {
                eprintln!("bench-report: unknown argument {other}");
                std::process::exit(2);
            }
        }
    }
    let mut section = format!("{BEGIN}\n_Generated by `cargo xtask bench` on {}._\n\n", date());
    section += &micro();
    section += "\n";
    section += &wasm_sizes();
    if let Some(p) = load_path {
        match load(&p) {
            Ok(t) => section += &format!("\n{t}"),
            Err(e) => {
                eprintln!("bench-report: {e}");
                std::process::exit(2);
            }
        }
    }
    // Variants left out at a size (RBAC beyond 10,000 rules) have no figures.
    let section = section.replace("NaN / NaN", "-").replace("| NaN ", "| - ") + END;
    let current = std::fs::read_to_string(&out).unwrap_or_default();
    let updated = match (current.find(BEGIN), current.find(END)) {
        (Some(b), Some(e)) if e > b => format!("{}{section}{}", &current[..b], &current[e + END.len()..]),
        _ => format!("{current}\n{section}\n"),
    };
    if let Err(e) = std::fs::write(&out, updated) {
        eprintln!("bench-report: {}: {e}", out.display());
        std::process::exit(2);
    }
    println!("{section}");
}

fn date() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
