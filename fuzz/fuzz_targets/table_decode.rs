//! Arbitrary bytes into the table decoder: it must return an error or a table, never panic,
//! and a table it accepts must evaluate without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshauthz_table::{Request, Table};

fuzz_target!(|data: &[u8]| {
    // Past the header the checksum would reject almost everything: also try with it fixed.
    let mut fixed = data.to_vec();
    if fixed.len() >= 20 {
        let crc = meshauthz_table::wire::crc32(&fixed[20..]);
        fixed[16..20].copy_from_slice(&crc.to_le_bytes());
        let len = (fixed.len() - 20) as u32;
        fixed[12..16].copy_from_slice(&len.to_le_bytes());
    }
    for bytes in [data, &fixed[..]] {
        if let Ok(table) = Table::from_bytes(bytes) {
            let values: &[&str] = &["/x%2F/../y//z?q", "y"];
            let headers = vec![values; table.header_names().len()];
            let request = Request {
                principal: Some("spiffe://td/ns/a/ns/b/sa/c"),
                source_ip: Some([10, 0, 0, 1].into()),
                authority: "Service-Test:8000",
                port: 8000,
                method: "GET",
                headers: &headers,
                sni: Some("service-test"),
                destination_ip: Some([127, 0, 0, 1].into()),
                remote_ip: None,
                claims: &[],
            };
            let _ = table.evaluate(&request);
            let _ = table.observe(&request, &|| 8000);
        }
    }
});
