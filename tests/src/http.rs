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

/// The options every request here starts with: silent but for errors, a 10 s limit, the body
/// to stdout followed by `write_out`, no proxy.
fn common_args(write_out: &str) -> [String; 9] {
    ["-sS", "--max-time", "10", "-o", "-", "-w", write_out, "--noproxy", "*"].map(str::to_owned)
}

/// Runs curl with a 10 s limit. `args` are curl arguments (URL included).
pub fn curl(args: &[String]) -> CurlResult {
    let out = Command::new("curl")
        .args(common_args("\n%{http_code}"))
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

/// What separates one request's output from the next in [`curl_batch`].
const BATCH_MARK: &str = "\n@@meshauthz-batch@@";

/// Runs several requests in one curl process, each with its own arguments (URL included),
/// separated by `--next`: curl reuses one connection for all of them when they go to the same
/// origin with the same TLS settings (HTTP/1.1 keep-alive, or HTTP/2 streams), which is how a
/// filter's per-connection caches get exercised. Returns each request's result and whether it
/// opened a new connection.
pub fn curl_batch(requests: &[Vec<String>]) -> Vec<(CurlResult, bool)> {
    let mut args: Vec<String> = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        if i > 0 {
            args.push("--next".into());
        }
        args.extend(common_args(&format!("{BATCH_MARK} %{{http_code}} %{{num_connects}}\n")));
        args.extend(r.iter().cloned());
    }
    let out = Command::new("curl")
        .args(&args)
        .output()
        .expect("curl runs (install curl)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let mut results = Vec::new();
    let mut rest = stdout.as_str();
    while let Some(at) = rest.find(BATCH_MARK) {
        let body = &rest[..at];
        let after = &rest[at + BATCH_MARK.len()..];
        let line_end = after.find('\n').unwrap_or(after.len());
        let mut fields = after[..line_end].split_whitespace();
        let status = fields.next().and_then(|c| c.parse().ok()).unwrap_or(0);
        let new_connection = fields.next().and_then(|c| c.parse::<u32>().ok()).unwrap_or(1) > 0;
        results.push((
            CurlResult {
                status,
                body: body.to_owned(),
                exit: out.status.code().unwrap_or(-1),
                stderr: stderr.clone(),
            },
            new_connection,
        ));
        rest = after.get(line_end + 1..).unwrap_or("");
    }
    assert_eq!(
        results.len(),
        requests.len(),
        "curl answered {} of {} requests: {stderr}",
        results.len(),
        requests.len()
    );
    results
}
