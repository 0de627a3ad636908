//! Arbitrary text into the compiler's YAML front end: diagnostics or a policy set, never a
//! panic; what compiles must encode to a table that loads.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // Both formats: the Istio front end reads documents for a workload.
    let options = meshauthz_policy_compiler::CompileOptions {
        deny_warnings: false,
        istio: meshauthz_policy_compiler::IstioOptions {
            namespace: Some("foo".into()),
            labels: vec![("app".into(), "a".into())],
            ..Default::default()
        },
    };
    if let Ok(compiled) = meshauthz_policy_compiler::compile_sources_with(&[("fuzz.yaml".into(), text.into())], &options) {
        let bytes = compiled.table_bytes();
        assert!(meshauthz_table::Table::from_bytes(&bytes).is_ok(), "compiled table must load");
        let _ = meshauthz_policy_compiler::rbac::envoy_rbac(&compiled.set, false);
    }
});
