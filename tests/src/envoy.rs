//! A real Envoy process: started from a bootstrap, waited for, stopped on drop.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Envoy {
    child: Child,
    admin: SocketAddr,
    log: PathBuf,
}

impl Envoy {
    /// Starts Envoy on `bootstrap` (a file) with one worker, and waits until its admin
    /// `/ready` says LIVE. On failure returns Envoy's log.
    pub fn start(bootstrap: &Path, admin: SocketAddr, log: &Path) -> Result<Envoy, String> {
        Self::start_logging(bootstrap, admin, log, "wasm:debug")
    }

    /// As [`Envoy::start`], but the Wasm component logs at info: no per-request decision lines
    /// (for benchmarks).
    pub fn start_quiet(bootstrap: &Path, admin: SocketAddr, log: &Path) -> Result<Envoy, String> {
        Self::start_logging(bootstrap, admin, log, "wasm:info")
    }

    /// As [`Envoy::start_quiet`], with `workers` worker threads (memory per worker).
    pub fn start_quiet_workers(bootstrap: &Path, admin: SocketAddr, log: &Path, workers: u32) -> Result<Envoy, String> {
        let modules = crate::Build::Native.modules_dir(false);
        Self::spawn(
            bootstrap,
            admin,
            log,
            "wasm:info,dynamic_modules:info",
            &modules,
            workers,
        )
    }

    /// As [`Envoy::start`], loading dynamic modules from `modules` (the native filter's
    /// directory: the release build's, or the fault-injection build's).
    pub fn start_with_modules(
        bootstrap: &Path,
        admin: SocketAddr,
        log: &Path,
        modules: &Path,
    ) -> Result<Envoy, String> {
        Self::spawn(bootstrap, admin, log, "wasm:debug,dynamic_modules:debug", modules, 1)
    }

    fn start_logging(bootstrap: &Path, admin: SocketAddr, log: &Path, levels: &str) -> Result<Envoy, String> {
        let levels = format!(
            "{levels},dynamic_modules:{}",
            levels.rsplit(':').next().unwrap_or("info")
        );
        Self::spawn(
            bootstrap,
            admin,
            log,
            &levels,
            &crate::Build::Native.modules_dir(false),
            1,
        )
    }

    fn spawn(
        bootstrap: &Path,
        admin: SocketAddr,
        log: &Path,
        levels: &str,
        modules: &Path,
        workers: u32,
    ) -> Result<Envoy, String> {
        let log_file = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err_file = log_file.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(crate::envoy_binary())
            .arg("-c")
            .arg(bootstrap)
            .args(["--concurrency", &workers.to_string()])
            .args(["--disable-hot-restart", "--log-level", "info"])
            .args(["--component-log-level", levels])
            .env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", modules)
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(err_file)
            .spawn()
            .map_err(|e| format!("cannot start Envoy: {e}"))?;
        let mut envoy = Envoy {
            child,
            admin,
            log: log.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = envoy.child.try_wait() {
                return Err(format!("Envoy exited ({status}) during startup:\n{}", envoy.log_text()));
            }
            if envoy
                .admin_get("/ready")
                .is_some_and(|(code, body)| code == 200 && body.contains("LIVE"))
            {
                return Ok(envoy);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!("Envoy not ready after 60 s:\n{}", envoy.log_text()))
    }

    /// Waits (bounded) for Envoy to exit by itself, e.g. on a rejected configuration.
    pub fn wait_exit(bootstrap: &Path, log: &Path, timeout: Duration) -> Result<(i32, String), String> {
        let log_file = std::fs::File::create(log).map_err(|e| e.to_string())?;
        let err_file = log_file.try_clone().map_err(|e| e.to_string())?;
        let mut child = Command::new(crate::envoy_binary())
            .arg("-c")
            .arg(bootstrap)
            .args(["--concurrency", "1", "--disable-hot-restart", "--log-level", "info"])
            .env(
                "ENVOY_DYNAMIC_MODULES_SEARCH_PATH",
                crate::Build::Native.modules_dir(false),
            )
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(err_file)
            .spawn()
            .map_err(|e| format!("cannot start Envoy: {e}"))?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Ok((
                    status.code().unwrap_or(-1),
                    std::fs::read_to_string(log).unwrap_or_default(),
                ));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "Envoy still running after {timeout:?}:\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// CPU time (user + system) the process has used so far, from `/proc`.
    pub fn cpu_time(&self) -> Option<Duration> {
        self.cpu_times().map(|(user, system)| user + system)
    }

    /// User and system CPU time the process has used so far, apart. User time is Envoy's own
    /// work (filters, V8); system time also carries the loopback network stack, which the kernel
    /// charges to whichever process happens to be running, so it is the noisier half.
    pub fn cpu_times(&self) -> Option<(Duration, Duration)> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).ok()?;
        // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
        let rest = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
        let hz = 100; // USER_HZ on Linux
        let at = |t: u64| Duration::from_millis(t * 1000 / hz);
        Some((at(ticks(11)?), at(ticks(12)?)))
    }

    /// The process's resident memory (`VmRSS`), in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// The Envoy process's ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET on the admin interface: (status, body).
    pub fn admin_get(&self, path: &str) -> Option<(u16, String)> {
        plain_get(self.admin, path)
    }

    /// The value of one counter at `/stats`, if Envoy has it.
    pub fn counter(&self, name: &str) -> Option<u64> {
        let (_, body) = self.admin_get(&format!("/stats?filter=^{name}$"))?;
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(": ")?.trim().parse().ok())
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 GET (Connection: close) over plain TCP (for the admin interface).
pub fn plain_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}
