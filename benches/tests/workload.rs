//! The generated workloads are what the benchmarks claim: valid, decided like the reference,
//! half allowed, and compact.

use meshauthz_benches::{compile, reference, requests, workload};
use meshauthz_table::{Table, wire};

#[test]
fn table_of_10k_rules_is_smaller_than_its_yaml() {
    let w = workload(10_000, 1);
    let table = compile(&w);
    assert!(
        table.len() < w.yaml.len(),
        "table {} bytes vs YAML {} bytes",
        table.len(),
        w.yaml.len()
    );
}

#[test]
fn workload_decisions_agree_with_reference_and_are_mixed() {
    let w = workload(2_000, 7);
    let bytes = compile(&w);
    let table = Table::from_bytes(&bytes).expect("loads");
    let set = wire::decode(&bytes).expect("decodes");
    let reqs = requests(&w, 400, 3);
    let mut allowed = 0;
    for r in &reqs {
        let got = reference::table_decision(&table, r);
        assert_eq!(got, reference::reference(&set, r), "{r:?}");
        allowed += usize::from(got.0);
    }
    assert!((120..=280).contains(&allowed), "about half allowed: {allowed}/400");
}
