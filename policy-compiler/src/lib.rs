//! meshauthz policy compiler: `AuthorizationPolicy` YAML -> validated policy set -> table bytes.
//!
//! [`compile_sources`] reads and validates every document of every input, rejecting the whole
//! set on any error (a skipped DENY rule would fail open). The result encodes to the binary table
//! the Envoy filter loads ([`meshauthz_table::wire`]), and renders as the filter's plugin
//! configuration or a readable JSON dump ([`emit`]).

#![forbid(unsafe_code)]

mod check;
pub mod diag;
pub mod emit;
mod parse;
pub mod rbac;
mod rbac_cond;
pub mod rbac_matcher;

use std::path::Path;

use meshauthz_table::{PolicySet, Table};

pub use diag::{CompileError, Diagnostic, Severity};
pub use parse::istio::IstioOptions;

/// How to compile: the warnings policy and, for Istio input, the workload.
#[derive(Clone, Debug, Default)]
pub struct CompileOptions {
    /// Warnings count as errors.
    pub deny_warnings: bool,
    pub istio: IstioOptions,
}

/// A policy set that compiled, with the warnings met on the way.
#[derive(Debug)]
pub struct Compiled {
    pub set: PolicySet,
    pub warnings: Vec<Diagnostic>,
    /// What was left out on purpose and should be said (CUSTOM policies under
    /// `--ignore-custom`).
    pub notes: Vec<String>,
    /// Whether any input was Istio's format (for `check`'s host model).
    pub istio: bool,
}

impl Compiled {
    /// The binary table.
    pub fn table_bytes(&self) -> Vec<u8> {
        meshauthz_table::wire::encode(&self.set)
    }
}

/// Compiles `(file name, text)` pairs. With `deny_warnings`, warnings count as errors.
pub fn compile_sources(inputs: &[(String, String)], deny_warnings: bool) -> Result<Compiled, CompileError> {
    compile_sources_with(
        inputs,
        &CompileOptions {
            deny_warnings,
            ..CompileOptions::default()
        },
    )
}

/// Compiles `(file name, text)` pairs with the given options.
pub fn compile_sources_with(inputs: &[(String, String)], options: &CompileOptions) -> Result<Compiled, CompileError> {
    let deny_warnings = options.deny_warnings;
    let mut diags = Vec::new();
    let mut notes = Vec::new();
    let mut parsed = Vec::new();
    for (file, text) in inputs {
        let before = diags.len();
        for p in parse::parse_file(file, text, &options.istio, &mut diags, &mut notes) {
            parsed.push((file.as_str(), p));
        }
        diags[before..].iter_mut().for_each(|d| {
            if deny_warnings {
                d.severity = Severity::Error;
            }
        });
    }
    for (i, (file, p)) in parsed.iter().enumerate() {
        if let Some((first_file, first)) = parsed[..i].iter().find(|(_, q)| q.policy.name == p.policy.name) {
            diags.push(Diagnostic {
                severity: Severity::Error,
                file: (*file).to_owned(),
                line: p.line,
                col: p.col,
                path: "name".into(),
                message: format!(
                    "duplicate policy name `{}` (first defined at {}:{}:{})",
                    p.policy.name, first_file, first.line, first.col
                ),
            });
        }
    }
    // Stable: diagnostics of one file stay together, in source order.
    diags.sort_by_key(|d| (d.line, d.col));
    let order: Vec<&str> = inputs.iter().map(|(f, _)| f.as_str()).collect();
    diags.sort_by_key(|d| order.iter().position(|f| *f == d.file));
    if diags.iter().any(|d| d.severity == Severity::Error) {
        return Err(CompileError { diagnostics: diags });
    }
    let istio = parsed.iter().any(|(_, p)| p.istio);
    let set = PolicySet {
        policies: parsed.into_iter().map(|(_, p)| p.policy).collect(),
    };
    // The evaluator must accept what we emit; this also proves every regex builds there.
    Table::new(&set).map_err(|e| CompileError {
        diagnostics: vec![Diagnostic {
            severity: Severity::Error,
            file: inputs.first().map(|(f, _)| f.clone()).unwrap_or_default(),
            line: 1,
            col: 1,
            path: String::new(),
            message: e.to_string(),
        }],
    })?;
    Ok(Compiled {
        set,
        warnings: diags,
        notes,
        istio,
    })
}

/// The host as the documented HCM hands it to the filter and the router:
/// `strip_any_host_port` drops a `:port` (also after `[v6]`), `strip_trailing_host_dot` one
/// trailing dot. `policy-compiler check` applies it to `--host`, as Envoy would.
pub fn hcm_host(raw: &str) -> &str {
    let mut host = raw;
    let port_start = if host.starts_with('[') {
        host.find(']').map(|i| i + 1).filter(|&i| host[i..].starts_with(':'))
    } else {
        host.rfind(':').filter(|&i| !host[..i].contains(':'))
    };
    if let Some(i) = port_start {
        if host[i + 1..].bytes().all(|b| b.is_ascii_digit()) {
            host = &host[..i];
        }
    }
    host.strip_suffix('.').unwrap_or(host)
}

/// Reads and compiles policy files.
pub fn compile_files(paths: &[impl AsRef<Path>], deny_warnings: bool) -> Result<Compiled, CompileError> {
    compile_files_with(
        paths,
        &CompileOptions {
            deny_warnings,
            ..CompileOptions::default()
        },
    )
}

/// Reads and compiles policy files with the given options.
pub fn compile_files_with(paths: &[impl AsRef<Path>], options: &CompileOptions) -> Result<Compiled, CompileError> {
    let mut inputs = Vec::new();
    let mut diags = Vec::new();
    for path in paths {
        let name = path.as_ref().display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => inputs.push((name, text)),
            Err(e) => diags.push(Diagnostic {
                severity: Severity::Error,
                file: name,
                line: 1,
                col: 1,
                path: String::new(),
                message: format!("cannot read: {e}"),
            }),
        }
    }
    if !diags.is_empty() {
        return Err(CompileError { diagnostics: diags });
    }
    compile_sources_with(&inputs, options)
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, then a rename, so a
/// failure leaves the previous content (or no file) in place.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomically_mode(path, bytes, 0o644)
}

/// [`write_atomically`] with the file's permission bits (compiled tables and plugin
/// configurations are 0644: the Envoy that loads them may run as another user).
pub fn write_atomically_mode(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file().set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    #[cfg(not(unix))]
    let _ = mode;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
