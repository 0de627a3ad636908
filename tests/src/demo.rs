//! The guide's walkthrough, played on loopback with real Envoys: the scenario behind
//! `cargo xtask demo` and its integration test.
//!
//! Every pod gets its own loopback address inside one 127.x.y.0/24 block (the guide's
//! `workloads.yaml` moved there), so several runs never collide. Each step generates the
//! bootstraps from the guide's files of that step and restarts the proxies, then runs the
//! guide's checks from the client pod (through its sidecar) or from outside (to the gateway).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use meshauthz_envoy_config::ca::{LeafSpec, MeshCa};
use meshauthz_envoy_config::generate::{Options, PolicyDelivery, generate};
pub use meshauthz_envoy_config::guide::STEPS;
use meshauthz_envoy_config::resources::Resources;
use meshauthz_envoy_config::workloads::{ProxyRole, WorkloadsFile};

use crate::http::curl;
use crate::{Echo, Envoy};

/// What the guide expects next to what happened.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub step: &'static str,
    pub check: String,
    pub expected: String,
    pub observed: String,
    pub ok: bool,
}

/// The mesh while it runs: stops everything when dropped.
pub struct Mesh {
    pub dir: PathBuf,
    pub workloads: WorkloadsFile,
    pub ca: MeshCa,
    /// Which filter build the sidecars load, and how their policy arrives.
    pub build: crate::Build,
    pub delivery: PolicyDelivery,
    proxies: Vec<Envoy>,
    _echo: Echo,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh").field("dir", &self.dir).finish_non_exhaustive()
    }
}

fn guide_dir() -> PathBuf {
    meshauthz_envoy_config::guide::dir()
}

/// A 127.x.y.0/24 block whose demo addresses are free.
pub fn pick_block() -> [u8; 2] {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(7)
        ^ std::process::id();
    for i in 0..64u32 {
        let v = seed.wrapping_mul(2_654_435_761).wrapping_add(i.wrapping_mul(40_503));
        let block = [(v >> 8) as u8 | 1, (v >> 16) as u8 & 0xFE];
        let addr = Ipv4Addr::new(127, block[0], block[1], 2);
        if std::net::TcpListener::bind((addr, 15000)).is_ok() {
            return block;
        }
    }
    [0, 0]
}

fn move_to_block(ip: Ipv4Addr, block: [u8; 2]) -> Ipv4Addr {
    let o = ip.octets();
    // 127.0.0.N -> 127.x.y.N, 127.0.1.N (app addresses) -> 127.x.(y+1).N
    Ipv4Addr::new(127, block[0], block[1].wrapping_add(o[2]), o[3])
}

impl Mesh {
    /// CA, credentials and the echo app; no proxy yet.
    pub fn new(dir: &Path, block: [u8; 2]) -> Result<Mesh, String> {
        Mesh::with_filter(dir, block, crate::Build::Wasm, PolicyDelivery::Static)
    }

    /// CA, credentials and the echo app, for sidecars running `build` with its policy
    /// delivered by `delivery`.
    pub fn with_filter(
        dir: &Path,
        block: [u8; 2],
        build: crate::Build,
        delivery: PolicyDelivery,
    ) -> Result<Mesh, String> {
        let mut workloads = WorkloadsFile::load(&guide_dir().join("workloads.yaml")).map_err(|e| e.to_string())?;
        for w in &mut workloads.workloads {
            w.address = move_to_block(w.address, block);
            w.app_address = w.app_address.map(|a| move_to_block(a, block));
        }
        let ca = MeshCa::generate("TestCorpLLC").map_err(|e| e.to_string())?;
        ca.save(&dir.join("ca"), false).map_err(|e| e.to_string())?;
        for w in &workloads.workloads {
            let creds = ca
                .issue(&LeafSpec::svid(&w.spiffe_id(&workloads)))
                .map_err(|e| e.to_string())?;
            creds
                .write_to(&dir.join("certs").join(&w.name))
                .map_err(|e| e.to_string())?;
        }
        let app = workloads
            .workloads
            .iter()
            .find(|w| w.app_port.is_some())
            .ok_or("no app workload")?;
        let (Some(app_addr), Some(app_port)) = (app.app_address, app.app_port) else {
            return Err("the app workload has no address".into());
        };
        let echo = Echo::start(app_addr, app_port).map_err(|e| format!("echo app on {app_addr}:{app_port}: {e}"))?;
        Ok(Mesh {
            dir: dir.to_owned(),
            workloads,
            ca,
            build,
            delivery,
            proxies: Vec::new(),
            _echo: echo,
        })
    }

    /// Generates the step's bootstraps and (re)starts every proxy on them.
    pub fn apply(&mut self, step: usize, files: &[&str]) -> Result<(), String> {
        self.proxies.clear(); // stops the previous step's Envoys
        let mut res = Resources::default();
        for f in files {
            res.add_file(&guide_dir().join(f)).map_err(|e| e.to_string())?;
        }
        let out = self.dir.join(format!("step{step}"));
        let opts = Options {
            certs_dir: self.dir.join("certs"),
            filter: self.build.filter_build(),
            policy_delivery: self.delivery,
            output_dir: out.clone(),
            deny_warnings: true,
        };
        // As in the guide, the gateway deployment exists only once its Gateway does.
        let mut pods = self.workloads.clone();
        if res.gateways.is_empty() {
            pods.workloads.retain(|w| w.proxy != ProxyRole::Gateway);
        }
        let generated = generate(&res, &pods, &opts).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
        for b in generated.bootstraps {
            let path = b.write(&opts).map_err(|e| e.to_string())?;
            let envoy = Envoy::start(&path, b.admin.into(), &out.join(format!("{}.log", b.workload)))?;
            self.proxies.push(envoy);
        }
        Ok(())
    }

    pub fn address(&self, workload: &str) -> Ipv4Addr {
        self.workloads
            .workloads
            .iter()
            .find(|w| w.name == workload)
            .map_or(Ipv4Addr::LOCALHOST, |w| w.address)
    }

    pub fn spiffe_id(&self, service_account: &str) -> String {
        format!(
            "spiffe://{}/ns/{}/sa/{service_account}",
            self.workloads.trust_domain, self.workloads.namespace
        )
    }

    /// `wget service-test` from the client pod: through its sidecar's interception port.
    pub fn from_client(&self, method: &str) -> crate::CurlResult {
        let client = self.address("client");
        let mut args = vec![format!("--connect-to"), format!("service-test:80:{client}:15001")];
        if method != "GET" {
            args.extend(["-X".into(), method.into(), "-d".into(), String::new()]);
        }
        args.push("http://service-test/get".into());
        curl(&args)
    }

    /// `wget https://mesh-gateway` from a pod without a sidecar (`mesh-gateway:443` -> 8080).
    pub fn to_gateway(&self, scheme: &str, method: &str) -> crate::CurlResult {
        let gw = self.address("mesh-gateway");
        let mut args = vec![
            "-k".to_owned(),
            "--connect-to".into(),
            format!("mesh-gateway:443:{gw}:8080"),
        ];
        if method != "GET" {
            args.extend(["-X".into(), method.into(), "-d".into(), String::new()]);
        }
        args.push(format!("{scheme}://mesh-gateway:443/get"));
        curl(&args)
    }

    /// How to reach the mesh by hand (for `--keep`).
    pub fn instructions(&self) -> String {
        let client = self.address("client");
        let gw = self.address("mesh-gateway");
        format!(
            "the mesh is running (Ctrl-C stops it); from the client pod:\n  curl --connect-to service-test:80:{client}:15001 http://service-test/get\n  curl --connect-to service-test:80:{client}:15001 -X POST -d '' http://service-test/get\nthrough the gateway:\n  curl -k --connect-to mesh-gateway:443:{gw}:8080 https://mesh-gateway/get\nfiles: {}",
            self.dir.display()
        )
    }
}

fn outcome(step: &'static str, check: &str, expected: &str, observed: String, ok: bool) -> Outcome {
    Outcome {
        step,
        check: check.into(),
        expected: expected.into(),
        observed,
        ok,
    }
}

fn status_line(r: &crate::CurlResult) -> String {
    if r.status == 0 {
        format!("no response (curl exit {}: {})", r.exit, r.stderr.trim())
    } else {
        format!("{} {}", r.status, r.body.lines().next().unwrap_or_default())
    }
}

/// Plays the four steps; `after_step` runs after each and returns false to stop early (Ctrl-C).
pub fn play(mesh: &mut Mesh, mut after_step: impl FnMut(usize, &Mesh) -> bool) -> Result<Vec<Outcome>, String> {
    let server_id = mesh.spiffe_id("demo-server");
    let client_id = mesh.spiffe_id("demo-client");
    let xfcc_expected = format!("By={server_id};Hash=...;Subject=\"...\";URI={client_id}");
    // The guide's check 2: the server sidecar's element, its own identity then the client's.
    let xfcc_outcome = |step: &'static str, r: &crate::CurlResult| {
        let seen = r
            .echoed_header("x-forwarded-client-cert")
            .unwrap_or("(none)")
            .to_owned();
        let ok = seen.starts_with(&format!("By={server_id};Hash="))
            && seen.contains(";Subject=\"")
            && seen.ends_with(&format!(";URI={client_id}"));
        outcome(step, "echo: x-forwarded-client-cert", &xfcc_expected, seen, ok)
    };
    let echoed = |step: &'static str, r: &crate::CurlResult, header: &str, want: &str| {
        let seen = r.echoed_header(header).unwrap_or("(none)").to_owned();
        let ok = seen == want;
        outcome(step, &format!("echo: {header}"), want, seen, ok)
    };
    let mut out = Vec::new();
    for (i, (name, files)) in STEPS.iter().enumerate() {
        mesh.apply(i + 1, files)?;
        match i {
            0 => {
                let r = mesh.from_client("GET");
                out.push(outcome(
                    name,
                    "wget service-test",
                    "503 Service Unavailable",
                    status_line(&r),
                    r.status == 503,
                ));
            }
            1 | 2 => {
                let r = mesh.from_client("GET");
                out.push(outcome(
                    name,
                    "wget service-test",
                    "200",
                    status_line(&r),
                    r.status == 200,
                ));
                out.push(xfcc_outcome(name, &r));
                if i == 1 {
                    // The guide shows `http`: its server sidecar trusts the client sidecar's
                    // forwarded headers. meshauthz's HCMs trust no forwarding header
                    // (`xff_num_trusted_hops: 0`, so that `ipBlocks` see the real peer), and
                    // Envoy then sets the scheme of the hop it received: mTLS, `https`.
                    out.push(echoed(name, &r, "x-forwarded-proto", "https"));
                } else {
                    let r = mesh.from_client("POST");
                    let ok = r.status == 403 && r.body == "RBAC: access denied";
                    out.push(outcome(
                        name,
                        "wget --post-data=''",
                        "403 RBAC: access denied",
                        status_line(&r),
                        ok,
                    ));
                }
            }
            _ => {
                let r = mesh.to_gateway("https", "GET");
                out.push(outcome(
                    name,
                    "wget https://mesh-gateway",
                    "200",
                    status_line(&r),
                    r.status == 200,
                ));
                out.push(xfcc_outcome(name, &r));
                out.push(echoed(name, &r, "x-forwarded-proto", "https"));
                let r = mesh.to_gateway("http", "GET");
                let reset = r.status == 0 && (r.exit == 56 || r.exit == 52);
                out.push(outcome(
                    name,
                    "wget http://mesh-gateway:443 (plaintext)",
                    "connection dropped, no HTTP response (the guide's wget: Connection reset by peer)",
                    status_line(&r),
                    reset,
                ));
                let r = mesh.to_gateway("https", "POST");
                out.push(outcome(
                    name,
                    "wget https://mesh-gateway --post-data=''",
                    "403 Forbidden",
                    status_line(&r),
                    r.status == 403,
                ));
                let r = mesh.from_client("GET");
                out.push(outcome(
                    name,
                    "wget service-test (still)",
                    "200",
                    status_line(&r),
                    r.status == 200,
                ));
            }
        }
        if !after_step(i + 1, mesh) {
            return Err(format!("interrupted after step {}", i + 1));
        }
    }
    Ok(out)
}

/// The report, one line per check.
pub fn report(outcomes: &[Outcome]) -> String {
    let mut s = String::new();
    for o in outcomes {
        s.push_str(&format!(
            "{:<4} [{}] {}\n       expected: {}\n       observed: {}\n",
            if o.ok { "ok" } else { "FAIL" },
            o.step,
            o.check,
            o.expected,
            o.observed
        ));
    }
    s
}
