//! `cargo xtask demo`: the guide's walkthrough on one machine. Exits non-zero if any check
//! differs from what the guide expects; `--keep` leaves the mesh running until Ctrl-C;
//! `--filter native` runs the dynamic-module build instead of the Wasm one, and
//! `--policy-delivery ecds` delivers the policy over ECDS instead of inline.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use meshauthz_envoy_config::generate::PolicyDelivery;
use meshauthz_tests::Build;
use meshauthz_tests::demo::{Mesh, pick_block, play, report};

/// `--keep`, `--filter wasm|native`, `--policy-delivery static|ecds`.
fn options() -> Result<(bool, Build, PolicyDelivery), String> {
    let (mut keep, mut build, mut delivery) = (false, Build::Wasm, PolicyDelivery::Static);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--keep" => keep = true,
            "--filter" => {
                build = match args.next().as_deref() {
                    Some("wasm") => Build::Wasm,
                    Some("native") => Build::Native,
                    other => return Err(format!("--filter wasm|native, not {other:?}")),
                }
            }
            "--policy-delivery" => {
                delivery = match args.next().as_deref() {
                    Some("static") => PolicyDelivery::Static,
                    Some("ecds") => PolicyDelivery::Ecds,
                    other => return Err(format!("--policy-delivery static|ecds, not {other:?}")),
                }
            }
            other => {
                return Err(format!(
                    "unknown argument `{other}` (--keep, --filter wasm|native, --policy-delivery static|ecds)"
                ));
            }
        }
    }
    Ok((keep, build, delivery))
}

fn main() -> ExitCode {
    let (keep, build, delivery) = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("demo: {e}");
            return ExitCode::from(2);
        }
    };
    // Ctrl-C only raises a flag: the demo then returns normally, and dropping the mesh stops and
    // reaps every proxy it started.
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&interrupted);
    if let Err(e) = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)) {
        eprintln!("demo: cannot handle Ctrl-C: {e}");
    }
    let started = Instant::now();
    let dir = match tempfile::Builder::new().prefix("meshauthz-demo-").tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("demo: temp dir: {e}");
            return ExitCode::from(2);
        }
    };
    let mut mesh = match Mesh::with_filter(dir.path(), pick_block(), build, delivery) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("demo: {e}");
            return ExitCode::from(2);
        }
    };
    println!(
        "meshauthz demo: the guide's mesh on loopback, {build:?} filter, {delivery:?} policy (files in {})",
        dir.path().display()
    );
    let outcomes = match play(&mut mesh, |step, _| {
        println!("step {step} applied");
        !interrupted.load(Ordering::SeqCst)
    }) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("demo: {e}");
            return ExitCode::from(1);
        }
    };
    print!("{}", report(&outcomes));
    let failed = outcomes.iter().filter(|o| !o.ok).count();
    println!(
        "demo: {} passed, {} failed ({:.1} s)",
        outcomes.len() - failed,
        failed,
        started.elapsed().as_secs_f64()
    );
    if keep {
        println!("{}", mesh.instructions());
        while !interrupted.load(Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        println!("demo: stopping the mesh");
        return ExitCode::SUCCESS;
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
