//! The `check` command decides through the compiled table, as the filter does.

use std::process::Command;

const CLIENT: &str = "spiffe://my-project.svc.id.goog/ns/default/sa/demo-client";

fn check(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_policy-compiler"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("check")
        .args(args)
        .output()
        .expect("policy-compiler runs");
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn guide_policy_through_the_cli() {
    let p = "testdata/guide-authz-policy.yaml";
    let allowed = (Some(0), "ALLOW\npolicy=authz-policy rule=0\n".to_owned());
    let denied = (Some(1), "DENY\npolicy=none\n".to_owned());
    let base = ["--port", "8000", "--method", "GET", "--principal", CLIENT];
    assert_eq!(check(&[&[p, "--host", "service-test"][..], &base].concat()), allowed);
    assert_eq!(
        check(&[&[p, "--host", "SERVICE-TEST:8000"][..], &base].concat()),
        allowed
    );
    assert_eq!(
        check(&[
            p,
            "--host",
            "service-test",
            "--port",
            "8000",
            "--method",
            "POST",
            "--principal",
            CLIENT
        ]),
        denied
    );
    assert_eq!(
        check(&[
            p,
            "--host",
            "service-test",
            "--port",
            "8000",
            "--method",
            "HEAD",
            "--principal",
            CLIENT
        ]),
        denied
    );
    assert_eq!(
        check(&[
            p,
            "--host",
            "service-test",
            "--port",
            "8001",
            "--method",
            "GET",
            "--principal",
            CLIENT
        ]),
        denied
    );
    assert_eq!(
        check(&[p, "--host", "service-test", "--port", "8000", "--method", "GET"]),
        denied,
        "plaintext"
    );
}

#[test]
fn deny_wins_and_names_its_rule() {
    let p = "testdata/deny-and-allow.yaml";
    let legacy = "spiffe://my-project.svc.id.goog/ns/legacy/sa/frontend";
    let (code, out) = check(&[
        p,
        "--host",
        "api.example.com",
        "--port",
        "443",
        "--method",
        "GET",
        "--principal",
        legacy,
    ]);
    assert_eq!((code, out.as_str()), (Some(1), "DENY\npolicy=block-legacy rule=0\n"));
    let web = "spiffe://my-project.svc.id.goog/ns/web/sa/x";
    let (code, out) = check(&[
        p,
        "--host",
        "Api.Example.com.",
        "--port",
        "443",
        "--method",
        "HEAD",
        "--principal",
        web,
    ]);
    assert_eq!((code, out.as_str()), (Some(0), "ALLOW\npolicy=frontends rule=0\n"));
    let (code, _) = check(&[
        p,
        "--host",
        "api.example.com",
        "--port",
        "443",
        "--method",
        "GET",
        "--principal",
        web,
        "--source-ip",
        "192.0.2.7",
    ]);
    assert_eq!(code, Some(1), "ip block denies");
    let mut args = vec![
        p,
        "--host",
        "x",
        "--port",
        "8080",
        "--method",
        "PUT",
        "--principal",
        web,
        "--source-ip",
        "10.1.2.3",
    ];
    assert_eq!(check(&args).0, Some(1), "header missing");
    args.extend(["--header", "x-env: prod"]);
    assert_eq!(check(&args), (Some(0), "ALLOW\npolicy=frontends rule=1\n".into()));
    let (code, out) = check(&[p, "--host", "healthz", "--port", "15021", "--method", "GET"]);
    assert_eq!((code, out.as_str()), (Some(0), "ALLOW\npolicy=health rule=0\n"));
}

#[test]
fn compiled_table_file_and_rule_less_policy() {
    let dir = tempfile::tempdir().expect("temp dir");
    let table = dir.path().join("lockdown.table");
    let status = Command::new(env!("CARGO_BIN_EXE_policy-compiler"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["compile", "-o"])
        .arg(&table)
        .arg("testdata/lockdown.yaml")
        .status()
        .expect("runs");
    assert!(status.success());
    let t = table.to_str().expect("utf-8 path");
    assert_eq!(
        check(&["--table", t, "--host", "a", "--port", "1", "--method", "GET"]),
        (Some(1), "DENY\npolicy=lockdown rule=none\n".into())
    );
    std::fs::write(&table, b"MZAUTHZ\0garbage").expect("write");
    assert_eq!(
        check(&["--table", t, "--host", "a", "--port", "1", "--method", "GET"]).0,
        Some(2)
    );
}

/// Compiled tables and plugin configurations are readable by the Envoy that loads them, which
/// may run as another user.
#[cfg(unix)]
#[test]
fn outputs_are_world_readable() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tmp");
    for emit in ["table", "plugin-config", "envoy-rbac"] {
        let out = dir.path().join(format!("out.{emit}"));
        let status = Command::new(env!("CARGO_BIN_EXE_policy-compiler"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["compile", "--emit", emit, "-o"])
            .arg(&out)
            .arg("testdata/guide-authz-policy.yaml")
            .status()
            .expect("runs");
        assert!(status.success());
        let mode = std::fs::metadata(&out).expect("written").permissions().mode() & 0o777;
        assert_eq!(mode, 0o644, "{emit}");
    }
}

/// Options the output cannot carry are errors, never silently dropped.
#[test]
fn mode_and_xfcc_only_where_they_apply() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_policy-compiler"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(args)
            .output()
            .expect("runs")
    };
    let p = "testdata/guide-authz-policy.yaml";
    let table = run(&["compile", "--mode", "shadow", "-o", "-", p]);
    assert_eq!(table.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&table.stderr).contains("--mode applies to"));
    let rbac = run(&["compile", "--emit", "envoy-rbac", "--xfcc", "off", "-o", "-", p]);
    assert_eq!(rbac.status.code(), Some(2));
    let shadow = run(&["compile", "--emit", "envoy-rbac", "--mode", "shadow", "-o", "-", p]);
    assert!(shadow.status.success());
    let json: serde_json::Value = serde_json::from_slice(&shadow.stdout).expect("JSON");
    let config = &json[0]["typed_config"];
    assert!(config.get("rules").is_none(), "shadow never enforces: {config}");
    assert_eq!(config["shadow_rules"]["action"], "ALLOW");
}
