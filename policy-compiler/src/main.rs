//! `policy-compiler`: compile, check and validate AuthorizationPolicy YAML.
//!
//! Exit status: 0 success (`check`: ALLOW), 1 `check`: DENY, 2 any error.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use meshauthz_policy_compiler::emit::{self, Mode, Xfcc};
use meshauthz_policy_compiler::{CompileOptions, Compiled, IstioOptions, compile_files_with, write_atomically};
use meshauthz_table::{Claim, PolicySet, Request, Table};

/// The workload Istio `AuthorizationPolicy` input is compiled for (ignored by the guide's
/// format, which has no selectors).
#[derive(Args, Debug, Clone)]
struct Workload {
    /// Istio: the workload's namespace (policies in it and in the root namespace apply).
    #[arg(long)]
    namespace: Option<String>,
    /// Istio: the workload's labels, k=v[,k=v]; a policy's selector.matchLabels must be a subset.
    #[arg(long, value_name = "K=V[,K=V]")]
    labels: Option<String>,
    /// Istio: the mesh's root namespace, whose policies apply mesh-wide.
    #[arg(long, default_value = "istio-system")]
    root_namespace: String,
    /// Istio: the mesh's trust domain (principals `cluster.local/...` are rewritten to it).
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Istio: another trust domain the mesh accepts as its own; repeatable.
    #[arg(long = "trust-domain-alias", value_name = "TD")]
    trust_domain_aliases: Vec<String>,
    /// Istio: leave CUSTOM (ext_authz) policies to Envoy's ext_authz instead of failing.
    #[arg(long)]
    ignore_custom: bool,
}

impl Workload {
    fn options(&self, deny_warnings: bool) -> Result<CompileOptions, String> {
        let mut labels = Vec::new();
        for kv in self
            .labels
            .iter()
            .flat_map(|l| l.split(','))
            .filter(|kv| !kv.is_empty())
        {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("--labels: `{kv}` is not k=v"))?;
            labels.push((k.to_owned(), v.to_owned()));
        }
        Ok(CompileOptions {
            deny_warnings,
            istio: IstioOptions {
                namespace: self.namespace.clone(),
                labels,
                root_namespace: self.root_namespace.clone(),
                trust_domain: self.trust_domain.clone(),
                trust_domain_aliases: self.trust_domain_aliases.clone(),
                ignore_custom: self.ignore_custom,
            },
        })
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "policy-compiler",
    version,
    about = "Compile AuthorizationPolicy YAML into meshauthz decision tables"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
#[clap(rename_all = "kebab-case")]
enum Emit {
    /// The binary decision table.
    Table,
    /// The Envoy filter's plugin configuration (JSON, table embedded as base64).
    PluginConfig,
    /// A readable JSON dump of the table.
    Json,
    /// Envoy's native RBAC HTTP filters (JSON) for the same policies.
    EnvoyRbac,
    /// Envoy's native RBAC in its matcher form (a tree keyed on `:authority`), the fastest
    /// Envoy offers, for the same policies.
    EnvoyRbacMatcher,
    /// The filter's whole configuration as an ECDS resource (a `TypedExtensionConfig` named
    /// `meshauthz`), for an HCM's `config_discovery`; `--filter` says which build.
    Ecds,
}

/// Which build of the filter an `--emit ecds` resource configures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum FilterArg {
    /// The proxy-wasm filter (`--wasm PATH` names the `.wasm` Envoy loads).
    Wasm,
    /// The dynamic module (`libmeshauthz_filter.so` on `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`).
    Native,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Compile policies into a table, a plugin configuration or a readable dump.
    Compile {
        #[arg(long, value_enum, default_value = "table")]
        emit: Emit,
        /// Output file (`-` for standard output). Written atomically.
        #[arg(short, long)]
        output: PathBuf,
        /// plugin-config and envoy-rbac: enforce decisions, or only count them (envoy-rbac:
        /// `shadow_rules`).
        /// (default enforce)
        #[arg(long, value_enum)]
        mode: Option<Mode>,
        /// plugin-config: how the filter writes x-forwarded-client-cert (default sanitize_set).
        #[arg(long, value_enum)]
        xfcc: Option<Xfcc>,
        /// ecds: the filter build the resource configures.
        #[arg(long, value_enum)]
        filter: Option<FilterArg>,
        /// ecds with `--filter wasm`: the `.wasm` file Envoy loads.
        #[arg(long)]
        wasm: Option<PathBuf>,
        /// Treat warnings as errors.
        #[arg(long)]
        deny_warnings: bool,
        #[command(flatten)]
        workload: Workload,
        #[arg(required = true)]
        policies: Vec<PathBuf>,
    },
    /// Decide one request through the compiled table, as the filter would.
    Check {
        /// Policy files to compile (or use --table).
        policies: Vec<PathBuf>,
        /// A compiled table instead of policy files.
        #[arg(long, conflicts_with = "policies")]
        table: Option<PathBuf>,
        /// The request's Host / `:authority`. For the guide's format, as the HCM that
        /// envoy-config generates (and the README documents) does, a `:port` and one trailing
        /// dot are stripped before the policies see it (`strip_any_host_port`,
        /// `strip_trailing_host_dot`). For Istio policies nothing is stripped, as in Istio's
        /// sidecar HCM: `example.com:8080` does not match a policy host `example.com`.
        #[arg(long)]
        host: String,
        /// The request's `:path` (the query and fragment are not part of what policies match).
        #[arg(long, default_value = "/")]
        path: String,
        /// The TLS SNI the client sent.
        #[arg(long)]
        sni: Option<String>,
        /// The connection's local address.
        #[arg(long)]
        destination_ip: Option<IpAddr>,
        /// Istio `remoteIpBlocks`: the original client address as the HCM computes it from
        /// `x-forwarded-for` (default: `--source-ip`).
        #[arg(long)]
        remote_ip: Option<IpAddr>,
        /// Istio JWT fields: the verified token's payload (a JSON object), as jwt_authn would put
        /// it in the metadata; absent means no token.
        #[arg(long, value_name = "FILE")]
        jwt_claims: Option<PathBuf>,
        #[arg(long)]
        port: u16,
        #[arg(long)]
        method: String,
        /// The peer's SPIFFE ID; absent means a plaintext connection.
        #[arg(long)]
        principal: Option<String>,
        #[arg(long)]
        source_ip: Option<IpAddr>,
        /// A request header, NAME:VALUE; repeat for more (a repeated name is one header with
        /// several values: a DENY matches any of them, or the `,`-joined whole).
        #[arg(long = "header", value_name = "NAME:VALUE")]
        headers: Vec<String>,
        #[command(flatten)]
        workload: Workload,
    },
    /// Validate policies without writing anything.
    Validate {
        #[arg(long)]
        deny_warnings: bool,
        #[command(flatten)]
        workload: Workload,
        #[arg(required = true)]
        policies: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(cli.command) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("{message}");
            ExitCode::from(2)
        }
    }
}

fn compile(policies: &[PathBuf], workload: &Workload, deny_warnings: bool) -> Result<Compiled, String> {
    let compiled = compile_files_with(policies, &workload.options(deny_warnings)?).map_err(|e| e.to_string())?;
    for w in &compiled.warnings {
        eprintln!("{w}");
    }
    for n in &compiled.notes {
        eprintln!("note: {n}");
    }
    Ok(compiled)
}

/// What the RBAC matcher-tree emitter cannot express yet: the table's format-2 constructs.
fn rbac_unsupported(set: &PolicySet) -> Option<String> {
    let p = set.policies.iter().find(|p| meshauthz_table::wire::needs_format_2(p))?;
    Some(format!(
        "policy {}: --emit envoy-rbac-matcher cannot carry Istio's AUDIT, dry-run, not-lists, namespaces, \
         paths or conditions yet; use --emit envoy-rbac (the rules form) for Envoy's RBAC",
        p.name
    ))
}

fn run(command: Command) -> Result<ExitCode, String> {
    match command {
        Command::Compile {
            emit,
            output,
            mode,
            xfcc,
            filter,
            wasm,
            deny_warnings,
            workload,
            policies,
        } => {
            // An option the output cannot carry is an error, never silently dropped.
            let takes_mode = matches!(
                emit,
                Emit::PluginConfig | Emit::EnvoyRbac | Emit::EnvoyRbacMatcher | Emit::Ecds
            );
            if mode.is_some() && !takes_mode {
                return Err("--mode applies to --emit plugin-config, envoy-rbac and ecds only".into());
            }
            if xfcc.is_some() && !matches!(emit, Emit::PluginConfig | Emit::Ecds) {
                return Err("--xfcc applies to --emit plugin-config and ecds only".into());
            }
            let build = match (emit, filter, wasm) {
                (Emit::Ecds, Some(FilterArg::Wasm), Some(path)) => Some(emit::FilterBuild::Wasm(path)),
                (Emit::Ecds, Some(FilterArg::Wasm), None) => {
                    return Err("--emit ecds --filter wasm needs --wasm PATH (the .wasm Envoy loads)".into());
                }
                (Emit::Ecds, Some(FilterArg::Native), None) => Some(emit::FilterBuild::Native),
                (Emit::Ecds, Some(FilterArg::Native), Some(_)) => {
                    return Err("--wasm applies to --filter wasm only".into());
                }
                (Emit::Ecds, None, _) => return Err("--emit ecds needs --filter wasm|native".into()),
                (_, Some(_), _) | (_, _, Some(_)) => {
                    return Err("--filter and --wasm apply to --emit ecds only".into());
                }
                _ => None,
            };
            let mode = mode.unwrap_or(Mode::Enforce);
            let xfcc = xfcc.unwrap_or(Xfcc::SanitizeSet);
            let compiled = compile(&policies, &workload, deny_warnings)?;
            if emit == Emit::EnvoyRbacMatcher {
                if let Some(why) = rbac_unsupported(&compiled.set) {
                    return Err(why);
                }
            }
            let table = compiled.table_bytes();
            let bytes = match emit {
                Emit::Table => table,
                Emit::PluginConfig => emit::plugin_config(&table, mode, xfcc).into_bytes(),
                Emit::Json => emit::json_dump(&table)
                    .map_err(|e| format!("internal error: {e}"))?
                    .into_bytes(),
                Emit::EnvoyRbac => {
                    meshauthz_policy_compiler::rbac::envoy_rbac(&compiled.set, mode == Mode::Shadow)?.into_bytes()
                }
                Emit::EnvoyRbacMatcher => {
                    meshauthz_policy_compiler::rbac_matcher::envoy_rbac_matcher(&compiled.set, mode == Mode::Shadow)
                        .into_bytes()
                }
                Emit::Ecds => {
                    let build = build.ok_or("internal error: no filter build")?;
                    emit::ecds_resource(&build, &emit::plugin_config(&table, mode, xfcc)).into_bytes()
                }
            };
            if output == Path::new("-") {
                use std::io::Write;
                std::io::stdout()
                    .write_all(&bytes)
                    .map_err(|e| format!("stdout: {e}"))?;
            } else {
                write_atomically(&output, &bytes).map_err(|e| format!("{}: cannot write: {e}", output.display()))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate {
            deny_warnings,
            workload,
            policies,
        } => {
            let compiled = compile(&policies, &workload, deny_warnings)?;
            println!("ok: {} policies", compiled.set.policies.len());
            Ok(ExitCode::SUCCESS)
        }
        Command::Check {
            policies,
            table,
            host,
            port,
            method,
            principal,
            source_ip,
            headers,
            path,
            sni,
            destination_ip,
            remote_ip,
            jwt_claims,
            workload,
        } => {
            let (bytes, istio) = match (&table, policies.is_empty()) {
                (Some(path), _) => (
                    std::fs::read(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?,
                    false,
                ),
                (None, false) => {
                    let c = compile(&policies, &workload, false)?;
                    (c.table_bytes(), c.istio)
                }
                (None, true) => return Err("check needs policy files or --table FILE".into()),
            };
            let table = Table::from_bytes(&bytes).map_err(|e| e.to_string())?;
            let mut values: Vec<Vec<&str>> = vec![Vec::new(); table.header_names().len()];
            for h in &headers {
                let (name, value) = h
                    .split_once(':')
                    .ok_or_else(|| format!("--header {h}: expected NAME:VALUE"))?;
                let name = name.trim().to_ascii_lowercase();
                if let Some(i) = table.header_names().iter().position(|n| *n == name) {
                    values[i].push(value.trim_start());
                }
            }
            if let Some(i) = table.header_names().iter().position(|n| n == ":path") {
                values[i] = vec![path.as_str()];
            }
            let slots: Vec<&[&str]> = values.iter().map(Vec::as_slice).collect();
            let host = if istio {
                host.as_str()
            } else {
                meshauthz_policy_compiler::hcm_host(&host)
            };
            let payload: Option<serde_json::Value> = match &jwt_claims {
                None => None,
                Some(path) => {
                    let text =
                        std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
                    let v: serde_json::Value =
                        serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
                    if !v.is_object() {
                        return Err(format!("{}: a JWT payload is a JSON object", path.display()));
                    }
                    Some(v)
                }
            };
            // Each claim the table looks at: a string, or a list's string elements.
            let found: Vec<Option<&serde_json::Value>> = table
                .claim_paths()
                .iter()
                .map(|p| p.iter().try_fold(payload.as_ref()?, |v, k| v.get(k)))
                .collect();
            let lists: Vec<Vec<&str>> = found
                .iter()
                .map(|v| {
                    v.and_then(|v| v.as_array())
                        .map(|a| a.iter().filter_map(|e| e.as_str()).collect())
                        .unwrap_or_default()
                })
                .collect();
            let claims: Vec<Claim<'_>> = found
                .iter()
                .zip(&lists)
                .map(|(v, list)| match v {
                    Some(serde_json::Value::String(s)) => Claim::Str(s),
                    Some(serde_json::Value::Array(_)) => Claim::List(list),
                    _ => Claim::Absent,
                })
                .collect();
            let request = Request {
                sni: sni.as_deref(),
                destination_ip,
                // Without proxies in front, the original client is the peer.
                remote_ip: remote_ip.or(source_ip),
                claims: &claims,
                principal: principal.as_deref(),
                source_ip,
                authority: host,
                port,
                method: &method,
                headers: &slots,
            };
            let decision = table.evaluate(&request);
            println!("{}", if decision.allowed { "ALLOW" } else { "DENY" });
            match decision.by {
                None => println!("policy=none"),
                Some(by) => {
                    let rule = by.rule.map_or("none".to_owned(), |r| r.to_string());
                    println!("policy={} rule={rule}", table.policy_name(by.policy));
                }
            }
            let observed = table.observe(&request, &|| port);
            if let Some(a) = observed.audit {
                println!("audit={}", table.policy_name(a.policy));
            }
            if let Some(d) = observed.dry_run {
                println!("dry_run={}", if d.allowed { "ALLOW" } else { "DENY" });
            }
            Ok(if decision.allowed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}
