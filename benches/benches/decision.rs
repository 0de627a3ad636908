//! Decision time against policy size, for the indexed table, a fair linear scan (everything
//! precompiled, as Envoy's RBAC engine is: `meshauthz_benches::linear`) and the reference
//! evaluator (a linear scan that compiles as it goes) in the same run; compile time; table size. `cargo xtask bench` runs this and writes the
//! figures into BENCHMARKS.md.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use meshauthz_benches::{compile, reference, requests, workload};
use meshauthz_table::{Claim, Request, Table, wire};

const SIZES: &[usize] = &[10, 100, 1_000, 10_000, 100_000];

fn decisions(c: &mut Criterion) {
    let mut group = c.benchmark_group("decision");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for &n in SIZES {
        let w = workload(n, 42);
        let bytes = compile(&w);
        let table = Table::from_bytes(&bytes).expect("loads");
        let set = wire::decode(&bytes).expect("decodes");
        let reqs = requests(&w, 256, 9);
        // Headers resolved up front, as the filter does before it calls evaluate.
        let slots: Vec<Vec<Vec<&str>>> = reqs
            .iter()
            .map(|r| {
                table
                    .header_names()
                    .iter()
                    .map(|h| {
                        r.headers
                            .iter()
                            .filter(|(k, _)| k == h)
                            .map(|(_, v)| v.as_str())
                            .collect::<Vec<_>>()
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        let slot_refs: Vec<Vec<&[&str]>> = slots.iter().map(|s| s.iter().map(Vec::as_slice).collect()).collect();
        let requests: Vec<Request<'_>> = reqs
            .iter()
            .zip(&slot_refs)
            .map(|(r, h)| Request {
                sni: None,
                destination_ip: None,
                remote_ip: None,
                claims: &[],
                principal: r.principal.as_deref(),
                source_ip: r.source_ip,
                authority: &r.authority,
                port: r.port,
                method: &r.method,
                headers: h,
            })
            .collect();
        group.throughput(Throughput::Elements(1));
        let mut i = 0;
        group.bench_with_input(BenchmarkId::new("table", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) % requests.len();
                black_box(table.evaluate(black_box(&requests[i])))
            })
        });
        if n <= 10_000 {
            let scan = meshauthz_benches::linear::LinearScan::new(&set, table.header_names());
            for (r, t) in reqs.iter().zip(&requests) {
                assert_eq!(
                    scan.allowed(t),
                    reference::reference(&set, r).0,
                    "the baseline decides right"
                );
            }
            let mut i = 0;
            group.bench_with_input(BenchmarkId::new("linear_precompiled", n), &n, |b, _| {
                b.iter(|| {
                    i = (i + 1) % requests.len();
                    black_box(scan.allowed(black_box(&requests[i])))
                })
            });
            let mut i = 0;
            group.bench_with_input(BenchmarkId::new("linear_scan", n), &n, |b, _| {
                b.iter(|| {
                    i = (i + 1) % reqs.len();
                    black_box(reference::reference(&set, black_box(&reqs[i])))
                })
            });
        }
        println!("table_bytes/{n}: {} (yaml {} bytes)", bytes.len(), w.yaml.len());
    }
    group.finish();
}

/// The same measurement for Istio-shaped policies (namespaces, paths, notPaths, templates,
/// a header condition): the table's format-2 conditions on top of the index.
fn istio_decisions(c: &mut Criterion) {
    use meshauthz_benches::istio::{compile_istio, istio_workload};
    let mut group = c.benchmark_group("decision_istio");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for &n in SIZES {
        let w = istio_workload(n, 42, 256);
        let bytes = compile_istio(&w);
        let table = Table::from_bytes(&bytes).expect("loads");
        let names = table.header_names();
        let slots: Vec<Vec<Vec<&str>>> = w
            .requests
            .iter()
            .map(|r| {
                names
                    .iter()
                    .map(|h| match h.as_str() {
                        ":path" => vec![r.path.as_str()],
                        "x-tenant" => r.tenant.iter().map(String::as_str).collect(),
                        _ => Vec::new(),
                    })
                    .collect()
            })
            .collect();
        let slot_refs: Vec<Vec<&[&str]>> = slots.iter().map(|s| s.iter().map(Vec::as_slice).collect()).collect();
        let claims: Vec<Vec<Claim<'_>>> = w
            .requests
            .iter()
            .map(|r| {
                table
                    .claim_paths()
                    .iter()
                    .map(|p| match (p.as_slice(), &r.jwt) {
                        ([c], Some((iss, _))) if c == "iss" => Claim::Str(iss),
                        ([c], Some((_, sub))) if c == "sub" => Claim::Str(sub),
                        _ => Claim::Absent,
                    })
                    .collect()
            })
            .collect();
        let requests: Vec<Request<'_>> = w
            .requests
            .iter()
            .zip(&slot_refs)
            .zip(&claims)
            .map(|((r, h), c)| Request {
                claims: c,
                principal: r.principal.as_deref(),
                authority: &r.host,
                port: 8080,
                method: &r.method,
                headers: h,
                ..Request::default()
            })
            .collect();
        let allowed = requests.iter().filter(|r| table.evaluate(r).allowed).count();
        assert!(
            allowed > requests.len() / 4 && allowed <= requests.len() / 2 + 1,
            "the Istio workload allows the requests built to match ({allowed} of {})",
            requests.len()
        );
        group.throughput(Throughput::Elements(1));
        let mut i = 0;
        group.bench_with_input(BenchmarkId::new("table", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) % requests.len();
                black_box(table.evaluate(black_box(&requests[i])))
            })
        });
        println!("istio_table_bytes/{n}: {} (yaml {} bytes)", bytes.len(), w.yaml.len());
    }
    group.finish();
}

fn compiles(c: &mut Criterion) {
    let mut group = c.benchmark_group("compile");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_secs(3));
    for &n in SIZES {
        let w = workload(n, 42);
        group.bench_with_input(BenchmarkId::new("yaml_to_table", n), &n, |b, _| {
            b.iter(|| black_box(compile(&w)))
        });
        let bytes = compile(&w);
        group.bench_with_input(BenchmarkId::new("load_table", n), &n, |b, _| {
            b.iter(|| black_box(Table::from_bytes(black_box(&bytes)).expect("loads")))
        });
    }
    group.finish();
}

criterion_group!(benches, decisions, istio_decisions, compiles);
criterion_main!(benches);
