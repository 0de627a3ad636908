//! Harness for tests (and the demo) that run real processes on loopback: Envoy, an echo
//! upstream, and curl as the client. Every process started here is stopped when its handle
//! drops, including when a test panics; every wait is bounded.

#![forbid(unsafe_code)]

pub mod bootstrap;
pub mod demo;
pub mod echo;
pub mod envoy;
pub mod http;

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};

pub use echo::Echo;
pub use envoy::Envoy;
pub use http::{CurlResult, curl};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// The Envoy binary: `MESHAUTHZ_ENVOY`, or the one `cargo xtask setup` installs under target/.
pub fn envoy_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("MESHAUTHZ_ENVOY") {
        return PathBuf::from(p);
    }
    let lib = root().join("target/envoy-venv/lib");
    std::fs::read_dir(&lib)
        .ok()
        .and_then(|dir| {
            dir.flatten()
                .map(|e| e.path().join("site-packages/envoy/_bin/envoy"))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "no Envoy under {}: run `cargo xtask setup` (or set MESHAUTHZ_ENVOY)",
                lib.display()
            )
        })
}

/// The filter: `MESHAUTHZ_FILTER_WASM`, or the release build `cargo xtask build` makes.
pub fn filter_wasm() -> PathBuf {
    let path = std::env::var_os("MESHAUTHZ_FILTER_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/wasm32-wasip1/release/meshauthz_filter.wasm"));
    assert!(path.is_file(), "{} is missing: run `cargo xtask build`", path.display());
    path
}

/// Polls `done` every 200 ms until it holds; panics with `what()` after `limit`.
pub fn wait_until(limit: std::time::Duration, mut done: impl FnMut() -> bool, what: impl Fn() -> String) {
    let deadline = std::time::Instant::now() + limit;
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{}", what());
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// A port that was free on `ip` a moment ago.
pub fn free_port(ip: Ipv4Addr) -> u16 {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}
