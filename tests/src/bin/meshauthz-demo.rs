//! `cargo xtask demo`: the guide's walkthrough on one machine. Exits non-zero if any check
//! differs from what the guide expects; `--keep` leaves the mesh running until Ctrl-C.

use std::process::ExitCode;
use std::time::Instant;

use meshauthz_tests::demo::{Mesh, pick_block, play, report};

fn main() -> ExitCode {
    let keep = std::env::args().any(|a| a == "--keep");
    let started = Instant::now();
    let dir = match tempfile::Builder::new().prefix("meshauthz-demo-").tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("demo: temp dir: {e}");
            return ExitCode::from(2);
        }
    };
    let mut mesh = match Mesh::new(dir.path(), pick_block()) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("demo: {e}");
            return ExitCode::from(2);
        }
    };
    println!(
        "meshauthz demo: the guide's mesh on loopback (files in {})",
        dir.path().display()
    );
    let outcomes = match play(&mut mesh, |step, _| println!("step {step} applied")) {
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
        // Ctrl-C ends this process and, with it, every proxy (they share its process group).
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
