//! `envoy-config`: Envoy bootstraps from the guide's resources, the mesh CA, the doctor.
//!
//! Exit status: 0 success, 1 the doctor found a problem, 2 any error.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use meshauthz_envoy_config::ca::{self, LeafSpec, MeshCa, WorkloadCertificateConfig};
use meshauthz_envoy_config::doctor::{self, Expectations};
use meshauthz_envoy_config::generate::{self, Options, PolicyDelivery};
use meshauthz_envoy_config::resources::Resources;
use meshauthz_envoy_config::workloads::WorkloadsFile;
use meshauthz_policy_compiler::emit::FilterBuild;
use time::OffsetDateTime;

#[derive(Parser, Debug)]
#[command(
    name = "envoy-config",
    version,
    about = "Envoy bootstraps, mesh CA and certificate doctor for the guide's mesh"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Write one Envoy bootstrap per workload (OUT/<workload>.yaml) from the guide's resources.
    Generate {
        /// This project's workloads file (pods, labels, service accounts, addresses).
        #[arg(long)]
        workloads: PathBuf,
        /// Credentials directories live at CERTS_DIR/<workload>/ (GKE layout).
        #[arg(long)]
        certs_dir: PathBuf,
        /// Which build of the meshauthz filter the bootstraps load.
        #[arg(long, value_enum, default_value = "wasm")]
        filter: FilterArg,
        /// With `--filter wasm`: the `.wasm` Envoy loads.
        #[arg(long, required_if_eq("filter", "wasm"))]
        wasm: Option<PathBuf>,
        /// `static`: the policy inline in each bootstrap; `ecds`: each sidecar's filter watches
        /// `OUT/<workload>.ecds/meshauthz.yaml` (replace that file to update the policy).
        #[arg(long, value_enum, default_value = "static")]
        policy_delivery: DeliveryArg,
        #[arg(short, long)]
        output: PathBuf,
        /// Fail on the policy compiler's warnings (which are printed either way).
        #[arg(long)]
        deny_warnings: bool,
        /// Resource files: mesh, routes, TLS policies, endpoint policy, gateway, backend
        /// service, authorization policies.
        #[arg(required = true)]
        resources: Vec<PathBuf>,
    },
    /// The mesh CA.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Check a credentials directory (certificates.pem, private_key.pem, ca_certificates.pem).
    Doctor {
        dir: PathBuf,
        #[arg(long)]
        trust_domain: Option<String>,
        /// A WorkloadCertificateConfig: check key algorithm and rotation window against it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// One JSON object instead of lines: `{"ok": bool, "checks": [{"name", "ok", "detail"}]}`.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum FilterArg {
    /// The proxy-wasm filter (V8).
    Wasm,
    /// The dynamic module `libmeshauthz_filter.so` (Envoy finds it on `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`).
    Native,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum DeliveryArg {
    Static,
    Ecds,
}

#[derive(Subcommand, Debug)]
enum CaCommand {
    /// Create the guide's hierarchy: a root (path length 1) and an issuing CA (path length 0).
    Init {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "TestCorpLLC")]
        organization: String,
        /// Replace a CA already in DIR; its files are kept as `<name>.<unix time>.bak`.
        #[arg(long)]
        force: bool,
    },
    /// Issue workload credentials in the GKE layout.
    Issue {
        #[arg(long)]
        ca: PathBuf,
        /// WorkloadCertificateConfig (key algorithm, validity); GKE's defaults without it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Issue for every workload of this file, into CERTS_DIR/<workload>/.
        #[arg(long, requires = "certs_dir", conflicts_with_all = ["spiffe_id", "out"])]
        workloads: Option<PathBuf>,
        #[arg(long)]
        certs_dir: Option<PathBuf>,
        /// Issue one certificate with this SPIFFE ID into --out.
        #[arg(long, requires = "out")]
        spiffe_id: Option<String>,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Re-issue the credentials that have entered their rotation window.
    Rotate {
        #[arg(long)]
        ca: PathBuf,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
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
            eprintln!("envoy-config: {message}");
            ExitCode::from(2)
        }
    }
}

fn load_config(path: Option<&Path>) -> Result<WorkloadCertificateConfig, String> {
    match path {
        None => Ok(WorkloadCertificateConfig::default()),
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
            WorkloadCertificateConfig::parse(&text).map_err(|e| format!("{}: {e}", p.display()))
        }
    }
}

fn run(command: Command) -> Result<ExitCode, String> {
    match command {
        Command::Generate {
            workloads,
            certs_dir,
            filter,
            wasm,
            policy_delivery,
            output,
            deny_warnings,
            resources,
        } => {
            let wl = WorkloadsFile::load(&workloads).map_err(|e| e.to_string())?;
            let mut res = Resources::default();
            for r in &resources {
                res.add_file(r).map_err(|e| e.to_string())?;
            }
            let abs = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
            let opts = Options {
                output_dir: abs(output.clone()),
                certs_dir: abs(certs_dir),
                filter: match (filter, wasm) {
                    (FilterArg::Wasm, Some(w)) => FilterBuild::Wasm(abs(w)),
                    (FilterArg::Wasm, None) => return Err("--filter wasm needs --wasm PATH".into()),
                    (FilterArg::Native, None) => FilterBuild::Native,
                    (FilterArg::Native, Some(_)) => return Err("--wasm applies to --filter wasm only".into()),
                },
                policy_delivery: match policy_delivery {
                    DeliveryArg::Static => PolicyDelivery::Static,
                    DeliveryArg::Ecds => PolicyDelivery::Ecds,
                },
                deny_warnings,
            };
            // Everything is generated before anything is written.
            let generated = generate::generate(&res, &wl, &opts).map_err(|e| e.to_string())?;
            for w in &generated.warnings {
                eprintln!("{w}");
            }
            std::fs::create_dir_all(&output).map_err(|e| format!("{}: {e}", output.display()))?;
            for b in &generated.bootstraps {
                let path = b.write(&opts).map_err(|e| e.to_string())?;
                println!("{}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Ca { command } => ca_command(command),
        Command::Doctor {
            dir,
            trust_domain,
            config,
            json,
        } => {
            let config = config.as_deref().map(|p| load_config(Some(p))).transpose()?;
            let checks = doctor::examine(
                &dir,
                &Expectations {
                    trust_domain,
                    config,
                    now: None,
                },
            );
            let ok = checks.iter().all(|c| c.ok);
            if json {
                let checks: Vec<serde_json::Value> = checks.iter().map(doctor::Check::to_json).collect();
                println!("{:#}", serde_json::json!({"ok": ok, "checks": checks}));
            } else {
                for c in &checks {
                    println!("{c}");
                }
            }
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
    }
}

fn ca_command(command: CaCommand) -> Result<ExitCode, String> {
    match command {
        CaCommand::Init {
            dir,
            organization,
            force,
        } => {
            let ca = MeshCa::generate(&organization).map_err(|e| e.to_string())?;
            ca.save(&dir, force).map_err(|e| e.to_string())?;
            println!(
                "{}: root CN=pkcs2-ca and issuing CN=td-ca, O={organization}",
                dir.display()
            );
        }
        CaCommand::Issue {
            ca,
            config,
            workloads,
            certs_dir,
            spiffe_id,
            out,
        } => {
            let config = load_config(config.as_deref())?;
            let ca = MeshCa::load(&ca).map_err(|e| e.to_string())?;
            let mut jobs = Vec::new();
            if let (Some(w), Some(dir)) = (workloads, certs_dir) {
                let wl = WorkloadsFile::load(&w).map_err(|e| e.to_string())?;
                jobs.extend(wl.workloads.iter().map(|x| (x.spiffe_id(&wl), dir.join(&x.name))));
            } else if let (Some(id), Some(out)) = (spiffe_id, out) {
                meshauthz_table::spiffe::validate(&id).map_err(|e| format!("--spiffe-id {id}: {e}"))?;
                jobs.push((id, out));
            } else {
                return Err("give --workloads FILE --certs-dir DIR, or --spiffe-id ID --out DIR".into());
            }
            for (id, dir) in jobs {
                let creds = ca
                    .issue(&LeafSpec::svid_with(&id, &config))
                    .map_err(|e| e.to_string())?;
                creds.write_to(&dir).map_err(|e| e.to_string())?;
                println!("{}: {id} ({})", dir.display(), config.key.describe());
            }
        }
        CaCommand::Rotate { ca, config, dirs } => {
            let config = load_config(config.as_deref())?;
            let ca = MeshCa::load(&ca).map_err(|e| e.to_string())?;
            let now = OffsetDateTime::now_utc();
            for dir in dirs {
                let (id, not_before, not_after) = ca::read_leaf(&dir).map_err(|e| e.to_string())?;
                let due = config.rotation_time(not_before, not_after);
                if now >= due {
                    let creds = ca
                        .issue(&LeafSpec::svid_with(&id, &config))
                        .map_err(|e| e.to_string())?;
                    creds.write_to(&dir).map_err(|e| e.to_string())?;
                    println!("{}: rotated {id}", dir.display());
                } else {
                    println!("{}: not due until {due}", dir.display());
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
