//! Arbitrary text into the compiler's YAML front end: diagnostics or a policy set, never a
//! panic; what compiles must encode to a table that loads.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(compiled) = meshauthz_policy_compiler::compile_sources(&[("fuzz.yaml".into(), text.into())], false) {
        let bytes = compiled.table_bytes();
        assert!(meshauthz_table::Table::from_bytes(&bytes).is_ok(), "compiled table must load");
    }
});
