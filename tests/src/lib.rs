//! Harness for tests (and the demo) that run real processes on loopback: Envoy, an echo
//! upstream, and curl as the client. Every process started here is stopped when its handle
//! drops, including when a test panics; every wait is bounded.

#![forbid(unsafe_code)]

pub mod bootstrap;
pub mod demo;
pub mod echo;
pub mod envoy;
pub mod http;
pub mod jwt;

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

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

/// Turns `fn NAME(build: Build)` into two tests, `NAME::wasm` and `NAME::native`: every
/// real-Envoy test of the filter runs against both builds.
#[macro_export]
macro_rules! both_builds {
    ($name:ident) => {
        mod $name {
            #[test]
            fn wasm() {
                super::$name($crate::Build::Wasm)
            }
            #[test]
            fn native() {
                super::$name($crate::Build::Native)
            }
        }
    };
}

/// The two builds of the filter, which every real-Envoy test of the filter runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Build {
    /// `meshauthz_filter.wasm` (proxy-wasm, V8).
    Wasm,
    /// `libmeshauthz_filter.so` (dynamic module).
    Native,
}

impl Build {
    pub const ALL: [Build; 2] = [Build::Wasm, Build::Native];

    /// The filter stanza for `plugin_config`; `faults`: the test-only fault-injection build.
    pub fn filter(self, plugin_config: &str, faults: bool) -> meshauthz_envoy_config::bootstrap::HttpFilter {
        use meshauthz_envoy_config::bootstrap::HttpFilter;
        match self {
            Build::Wasm => HttpFilter::Meshauthz {
                plugin_config: plugin_config.to_owned(),
                wasm: if faults { filter_faults_wasm() } else { filter_wasm() },
            },
            Build::Native => HttpFilter::MeshauthzNative {
                plugin_config: plugin_config.to_owned(),
            },
        }
    }

    /// The build as the compiler's emitters name it.
    pub fn filter_build(self) -> meshauthz_policy_compiler::emit::FilterBuild {
        match self {
            Build::Wasm => meshauthz_policy_compiler::emit::FilterBuild::Wasm(filter_wasm()),
            Build::Native => meshauthz_policy_compiler::emit::FilterBuild::Native,
        }
    }

    /// Where Envoy finds `libmeshauthz_filter.so` (`ENVOY_DYNAMIC_MODULES_SEARCH_PATH`):
    /// `MESHAUTHZ_FILTER_NATIVE_DIR` (`..._FAULTS_DIR`), or where `cargo xtask build` puts it.
    pub fn modules_dir(self, faults: bool) -> PathBuf {
        let (var, default) = if faults {
            ("MESHAUTHZ_FILTER_NATIVE_FAULTS_DIR", "target/native-faults")
        } else {
            ("MESHAUTHZ_FILTER_NATIVE_DIR", "target/release")
        };
        std::env::var_os(var)
            .map(PathBuf::from)
            .unwrap_or_else(|| root().join(default))
    }

    /// The prefix Envoy gives the filter's counters.
    pub fn counter_prefix(self) -> &'static str {
        match self {
            Build::Wasm => "wasmcustom.",
            Build::Native => "dynamicmodulescustom.",
        }
    }
}

/// The test-only `fault-injection` build (`fail_host_calls`), which `cargo xtask build` makes
/// beside the release filter: `MESHAUTHZ_FILTER_FAULTS_WASM`, or its place under target/.
pub fn filter_faults_wasm() -> PathBuf {
    let path = std::env::var_os("MESHAUTHZ_FILTER_FAULTS_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/wasm32-wasip1/meshauthz_filter_faults.wasm"));
    assert!(path.is_file(), "{} is missing: run `cargo xtask build`", path.display());
    path
}

/// The tests' deterministic generator (xorshift): a seed gives the same corpus on every run.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// A number below `n` (0 when `n` is 0).
    pub fn next(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }

    pub fn pick<'a, T: ?Sized>(&mut self, from: &'a [&'a T]) -> &'a T {
        from[self.next(from.len())]
    }
}

/// Polls `done` every 200 ms until it holds; panics with `what()` after `limit`.
pub fn wait_until(limit: std::time::Duration, mut done: impl FnMut() -> bool, what: impl Fn() -> String) {
    let deadline = std::time::Instant::now() + limit;
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{}", what());
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// A port on `ip` that nothing listened on a moment ago and that no other caller in this process
/// has been given.
///
/// Binding port 0 and releasing it is not enough when tests run in parallel: the kernel hands
/// the same ephemeral port to the next caller, or to an outgoing connection (curl, Envoy's
/// upstream connections) before Envoy binds it. So ports are drawn from outside the kernel's
/// ephemeral range, where no connect() lands, through a process-wide counter that never repeats,
/// starting at an offset taken from the process id so that concurrent processes spread apart.
pub fn free_port(ip: Ipv4Addr) -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (lo, hi) = listen_range();
    let span = u32::from(hi - lo) + 1;
    let start = std::process::id().wrapping_mul(2_654_435_761) % span;
    for _ in 0..span {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let port = lo + offset as u16;
        if TcpListener::bind((ip, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on {ip} in {lo}..={hi}")
}

/// The widest block of ports outside `net.ipv4.ip_local_port_range` (kept above 20000, clear of
/// the fixed ports the guide uses), or the ephemeral range itself if the kernel leaves no room.
fn listen_range() -> (u16, u16) {
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut it = text.split_whitespace().map(|v| v.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999));
    let below = (20000, ephemeral.0.saturating_sub(1));
    let above = (ephemeral.1.saturating_add(1).max(20000), 65535);
    let size = |(a, b): (u16, u16)| b.saturating_sub(a);
    let best = if size(below) >= size(above) { below } else { above };
    if size(best) >= 1000 { best } else { ephemeral }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_bindable_and_outside_the_ephemeral_range() {
        let ports: Vec<u16> = (0..200).map(|_| free_port(Ipv4Addr::LOCALHOST)).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "a port was handed out twice: {ports:?}");
        let (lo, hi) = listen_range();
        assert!(
            ports.iter().all(|p| (lo..=hi).contains(p)),
            "{ports:?} outside {lo}..={hi}"
        );
        for p in &ports[..10] {
            TcpListener::bind((Ipv4Addr::LOCALHOST, *p)).expect("the port is free");
        }
    }
}
