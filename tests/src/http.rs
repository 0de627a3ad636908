//! curl as the test client: a real TLS stack presenting real client certificates.

use std::path::Path;
use std::process::Command;

/// One request's outcome. `status` is 0 when no HTTP response arrived (e.g. reset).
#[derive(Debug, Clone)]
pub struct CurlResult {
    pub status: u16,
    pub body: String,
    /// curl's exit code (0 ok, 35 TLS error, 56 receive failure/reset, ...).
    pub exit: i32,
    pub stderr: String,
}

impl CurlResult {
    /// Value of a header line the echo upstream received (`name: value`), if any.
    pub fn echoed_header(&self, name: &str) -> Option<&str> {
        self.body.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim_start())
        })
    }

    pub fn echoed_headers(&self, name: &str) -> Vec<&str> {
        self.body
            .lines()
            .filter_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case(name).then(|| v.trim_start())
            })
            .collect()
    }
}

/// A client identity: a directory in the GKE layout (certificates.pem, private_key.pem).
pub fn client_cert_args(dir: &Path) -> Vec<String> {
    vec![
        "--cert".into(),
        dir.join("certificates.pem").display().to_string(),
        "--key".into(),
        dir.join("private_key.pem").display().to_string(),
    ]
}

/// Runs curl with a 10 s limit. `args` are curl arguments (URL included).
pub fn curl(args: &[String]) -> CurlResult {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "--noproxy",
            "*",
        ])
        .args(args)
        .output()
        .expect("curl runs (install curl)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", stdout.as_str()));
    CurlResult {
        status: code.trim().parse().unwrap_or(0),
        body: body.to_owned(),
        exit: out.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
