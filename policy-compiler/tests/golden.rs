//! Golden tests: `testdata/<case>.yaml` -> `testdata/<case>.json` (the table's readable dump) and
//! `testdata/<case>.rbac.json` (the native Envoy RBAC equivalent),
//! `testdata/errors/<case>.yaml` -> `testdata/errors/<case>.err` (the CLI's diagnostics, exit 2).
//! `UPDATE_GOLDEN=1 cargo test -p meshauthz-policy-compiler` rewrites the expected files; a
//! mismatch is shown as a line diff.

use std::path::{Path, PathBuf};
use std::process::Command;

use meshauthz_policy_compiler::{compile_files, emit};

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

fn cases(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("testdata exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no cases in {}", dir.display());
    v
}

/// A minimal LCS line diff, enough to read a golden mismatch.
fn diff(expected: &str, actual: &str) -> String {
    let a: Vec<&str> = expected.lines().collect();
    let b: Vec<&str> = actual.lines().collect();
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::from("--- expected\n+++ actual\n"));
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out += &format!("  {}\n", a[i]);
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out += &format!("+ {}\n", b[j]);
            j += 1;
        } else {
            out += &format!("- {}\n", a[i]);
            i += 1;
        }
    }
    out
}

/// Compares `actual` with the golden file, or rewrites it under UPDATE_GOLDEN=1.
fn check_golden(golden: &Path, actual: &str) -> Result<(), String> {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(golden, actual).expect("golden file writable");
        return Ok(());
    }
    let expected = std::fs::read_to_string(golden)
        .map_err(|e| format!("{}: {e} (run with UPDATE_GOLDEN=1 to create it)", golden.display()))?;
    if expected == actual {
        Ok(())
    } else {
        Err(format!(
            "{} differs (UPDATE_GOLDEN=1 to accept):\n{}",
            golden.display(),
            diff(&expected, actual)
        ))
    }
}

fn cli() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_policy-compiler"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

#[test]
fn dumps_match_golden_files() {
    let mut failures = Vec::new();
    for case in cases(&testdata()) {
        // Warnings allowed: `deny-and-allow.yaml` (the source of the kept v1 artifact) has one.
        let compiled = compile_files(&[&case], false).unwrap_or_else(|e| panic!("{}:\n{e}", case.display()));
        let dump = emit::json_dump(&compiled.table_bytes()).expect("own table decodes");
        if let Err(e) = check_golden(&case.with_extension("json"), &dump) {
            failures.push(e);
        }
        let rbac = meshauthz_policy_compiler::rbac::envoy_rbac(&compiled.set, false).expect("format-1 sets convert");
        if let Err(e) = check_golden(&case.with_extension("rbac.json"), &rbac) {
            failures.push(e);
        }
        let matcher = meshauthz_policy_compiler::rbac_matcher::envoy_rbac_matcher(&compiled.set, false);
        if let Err(e) = check_golden(&case.with_extension("rbac-matcher.json"), &matcher) {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every case in `dir` fails `validate` (with `args`) with exit 2, one `FILE:LINE:COL` line
/// per problem, matching its golden `.err`. Returns the failures.
fn error_cases(dir: &Path, args: &[&str]) -> Vec<String> {
    let mut failures = Vec::new();
    for case in cases(dir) {
        let rel = case.strip_prefix(env!("CARGO_MANIFEST_DIR")).expect("inside the crate");
        let out = cli()
            .arg("validate")
            .args(args)
            .arg(rel)
            .output()
            .expect("policy-compiler runs");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.code() != Some(2) {
            failures.push(format!(
                "{}: exit {:?}, want 2\n{stderr}",
                rel.display(),
                out.status.code()
            ));
        }
        let prefix = format!("{}:", rel.display());
        if !stderr.lines().all(|l| l.starts_with(&prefix)) {
            failures.push(format!(
                "{}: every line should start with FILE:LINE:COL\n{stderr}",
                rel.display()
            ));
        }
        if let Err(e) = check_golden(&case.with_extension("err"), &stderr) {
            failures.push(e);
        }
    }
    failures
}

#[test]
fn bad_inputs_give_located_errors_and_exit_2() {
    let failures = error_cases(&testdata().join("errors"), &[]);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn failed_compile_writes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bad = testdata().join("errors/ports.yaml");
    let existing = dir.path().join("existing.table");
    std::fs::write(&existing, b"previous").expect("write");
    for (out, emit) in [(&existing, "table"), (&dir.path().join("new.json"), "plugin-config")] {
        let status = cli()
            .args(["compile", "--emit", emit, "-o"])
            .arg(out)
            .arg(&bad)
            .output()
            .expect("runs")
            .status;
        assert_eq!(status.code(), Some(2));
    }
    assert_eq!(std::fs::read(&existing).expect("still there"), b"previous");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(
        left,
        vec![std::ffi::OsString::from("existing.table")],
        "no new or temporary files"
    );
}

#[test]
fn warnings_pass_unless_denied() {
    let case = "testdata/warnings/lowercase-method.yaml";
    let out = cli().args(["validate", case]).output().expect("runs");
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{case}:7:15: warning: rules[0].destinations[0].methods[0]:")),
        "{stderr}"
    );
    assert!(stderr.contains("did you mean `GET`?"), "{stderr}");
    let out = cli()
        .args(["validate", "--deny-warnings", case])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(": error: rules[0].destinations[0].methods[0]:"));
}

/// Each `warnings/` case passes with its warnings (golden `.warn`), and fails with
/// `--deny-warnings`.
#[test]
fn warnings_match_golden_files() {
    let mut failures = Vec::new();
    for case in cases(&testdata().join("warnings")) {
        let rel = case.strip_prefix(env!("CARGO_MANIFEST_DIR")).expect("inside the crate");
        let out = cli().arg("validate").arg(rel).output().expect("runs");
        if out.status.code() != Some(0) {
            failures.push(format!("{}: exit {:?}, want 0", rel.display(), out.status.code()));
        }
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if let Err(e) = check_golden(&case.with_extension("warn"), &stderr) {
            failures.push(e);
        }
        let denied = cli()
            .args(["validate", "--deny-warnings"])
            .arg(rel)
            .output()
            .expect("runs");
        if denied.status.code() != Some(2) {
            failures.push(format!(
                "{} --deny-warnings: exit {:?}, want 2",
                rel.display(),
                denied.status.code()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn duplicate_names_across_files() {
    let a = "testdata/guide-authz-policy.yaml";
    let b = "testdata/guide-gateway-policy.yaml";
    let out = cli().args(["validate", a, b]).output().expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!(
            "{b}:3:7: error: name: duplicate policy name `authz-policy` (first defined at {a}:3:7)"
        )),
        "{stderr}"
    );
}

/// The format is versioned: a table written by an earlier build must keep loading, and the
/// compiler must keep writing those exact bytes until the version changes.
#[test]
fn v1_artifact_still_decodes_and_matches_compiler_output() {
    let artifact = testdata().join("artifacts/deny-and-allow.v1.table");
    let compiled = compile_files(&[testdata().join("deny-and-allow.yaml")], false).expect("compiles");
    if std::env::var_os("UPDATE_ARTIFACTS").is_some() {
        std::fs::write(&artifact, compiled.table_bytes()).expect("write artifact");
    }
    let bytes = std::fs::read(&artifact).expect("artifact present");
    let table = meshauthz_table::Table::from_bytes(&bytes).expect("v1 table loads");
    assert_eq!(table.policy_count(), 3);
    assert_eq!(
        emit::json_dump(&bytes).expect("decodes"),
        std::fs::read_to_string(testdata().join("deny-and-allow.json")).expect("golden dump"),
    );
    assert_eq!(
        bytes,
        compiled.table_bytes(),
        "the encoder changed: bump FORMAT_VERSION and keep this artifact"
    );
}

/// The workload `testdata/istio/` is compiled for.
const ISTIO_WORKLOAD: &[&str] = &["--namespace", "foo", "--labels", "app=httpbin,version=v1"];

fn istio_options() -> meshauthz_policy_compiler::CompileOptions {
    meshauthz_policy_compiler::CompileOptions {
        deny_warnings: false,
        istio: meshauthz_policy_compiler::IstioOptions {
            namespace: Some("foo".into()),
            labels: vec![("app".into(), "httpbin".into()), ("version".into(), "v1".into())],
            ..Default::default()
        },
    }
}

/// Istio input: `testdata/istio/<case>.yaml` -> the table's dump and `--emit envoy-rbac`.
#[test]
fn istio_dumps_match_golden_files() {
    let mut failures = Vec::new();
    for case in cases(&testdata().join("istio")) {
        let compiled = meshauthz_policy_compiler::compile_files_with(&[&case], &istio_options())
            .unwrap_or_else(|e| panic!("{}:\n{e}", case.display()));
        let dump = emit::json_dump(&compiled.table_bytes()).expect("own table decodes");
        if let Err(e) = check_golden(&case.with_extension("json"), &dump) {
            failures.push(e);
        }
        let rbac = meshauthz_policy_compiler::rbac::envoy_rbac(&compiled.set, false).expect("envoy-rbac");
        if let Err(e) = check_golden(&case.with_extension("rbac.json"), &rbac) {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Rejected Istio input: the CLI's diagnostics for the workload, exit 2.
#[test]
fn istio_bad_inputs_give_located_errors() {
    let failures = error_cases(&testdata().join("istio/errors"), ISTIO_WORKLOAD);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `--ignore-custom` compiles the rest and says what it left to ext_authz; without it the
/// CUSTOM policy is an error.
#[test]
fn istio_ignore_custom_says_what_it_left_out() {
    let case = "testdata/istio/ignore-custom/custom.yaml";
    let run = |extra: &[&str]| {
        let out = cli()
            .arg("validate")
            .args(extra)
            .args(ISTIO_WORKLOAD)
            .arg(case)
            .output()
            .expect("runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, stderr, stdout) = run(&["--ignore-custom"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout.trim(), "ok: 1 policies");
    assert_eq!(
        stderr.trim(),
        format!("note: {case}: CUSTOM policy foo/ext left to Envoy's ext_authz (--ignore-custom)")
    );
    let (code, stderr, _) = run(&[]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.starts_with(&format!("{case}:14:11: error: spec.action: CUSTOM")),
        "{stderr}"
    );
}

/// `check` for Istio input: the JWT payload from `--jwt-claims`, and Istio's host model (the
/// port is part of the host).
#[test]
fn check_reads_jwt_claims_and_keeps_the_istio_host_port() {
    let dir = tempfile::tempdir().expect("temp dir");
    let claims = |name: &str, json: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, json).expect("write");
        p
    };
    let alice = claims(
        "alice.json",
        r#"{"iss": "https://issuer.example", "sub": "alice", "aud": ["x", "httpbin"]}"#,
    );
    let bob = claims(
        "bob.json",
        r#"{"iss": "https://issuer.example", "sub": "bob", "aud": "httpbin"}"#,
    );
    let run = |host: &str, jwt: Option<&Path>| {
        let mut c = cli();
        c.args(["check", "--namespace", "foo", "testdata/istio/check/jwt-users.yaml"])
            .args(["--host", host, "--port", "8000", "--method", "GET"]);
        if let Some(j) = jwt {
            c.arg("--jwt-claims").arg(j);
        }
        let out = c.output().expect("runs");
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    assert_eq!(run("httpbin", Some(&alice)).0, Some(0), "alice, audience in a list");
    assert_eq!(run("httpbin", Some(&bob)).0, Some(1), "bob");
    assert_eq!(run("httpbin", None).0, Some(1), "no token");
    assert_eq!(
        run("httpbin:8000", Some(&alice)).0,
        Some(1),
        "Istio hosts keep the port"
    );
    let bad = claims("bad.json", "[1]");
    assert_eq!(run("httpbin", Some(&bad)).0, Some(2), "a payload is an object");
}
