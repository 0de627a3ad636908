//! Renderings of a compiled policy set other than the raw table: the filter's plugin
//! configuration and a readable dump.

use base64::Engine;
use meshauthz_table::{Attribute, Condition, Destination, Matcher, Pattern, PolicySet, Source, wire};
use serde_json::{Value, json};

/// What the filter does with a DENY decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Deny with 403.
    Enforce,
    /// Evaluate and count, never deny (dry run).
    Shadow,
}

/// How the filter writes `x-forwarded-client-cert`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
#[clap(rename_all = "snake_case")]
pub enum Xfcc {
    /// Replace whatever the client sent with this hop's element (Envoy's SANITIZE_SET).
    SanitizeSet,
    /// Keep the previous hop's element and append ours with `,`.
    AppendForward,
    /// Leave the header alone.
    Off,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Shadow => "shadow",
        }
    }
}

impl Xfcc {
    pub fn as_str(self) -> &'static str {
        match self {
            Xfcc::SanitizeSet => "sanitize_set",
            Xfcc::AppendForward => "append_forward",
            Xfcc::Off => "off",
        }
    }
}

/// The JSON the Envoy filter takes as its plugin configuration.
pub fn plugin_config(table: &[u8], mode: Mode, xfcc: Xfcc) -> String {
    let config = json!({
        "table": base64::engine::general_purpose::STANDARD.encode(table),
        "mode": mode.as_str(),
        "xfcc": xfcc.as_str(),
    });
    format!("{config:#}\n")
}

/// A readable dump of what a table holds, decoded back from its bytes so the dump shows the
/// table and not the compiler's intent.
pub fn json_dump(table: &[u8]) -> Result<String, wire::DecodeError> {
    let set = wire::decode(table)?;
    let value = json!({
        "format": "meshauthz-table",
        "version": wire::version_of(table),
        "bytes": table.len(),
        "policies": dump_policies(&set),
    });
    Ok(format!("{value:#}\n"))
}

/// A format-2 condition as the dump shows it: `{"principal": [...]}` or `{"not path": [...]}`.
fn dump_condition(c: &Condition) -> Value {
    let attribute = match &c.attribute {
        Attribute::Principal => "principal".to_owned(),
        Attribute::Host => "host".to_owned(),
        Attribute::Method => "method".to_owned(),
        Attribute::Path => "path".to_owned(),
        Attribute::Sni => "sni".to_owned(),
        Attribute::Header(n) => format!("header {n}"),
        Attribute::SourceIp => "sourceIp".to_owned(),
        Attribute::DestinationIp => "destinationIp".to_owned(),
        Attribute::DestinationPort => "destinationPort".to_owned(),
        Attribute::RemoteIp => "remoteIp".to_owned(),
        Attribute::Claim(path) => format!("claim {}", path.join(".")),
        Attribute::RequestPrincipal => "requestPrincipal".to_owned(),
    };
    let matchers: Vec<Value> = c.matchers.iter().map(dump_matcher).collect();
    let key = if c.negated {
        format!("not {attribute}")
    } else {
        attribute
    };
    json!({ key: matchers })
}

fn dump_matcher(m: &Matcher) -> Value {
    match m {
        Matcher::Present => json!({"present": true}),
        Matcher::NonEmpty => json!({"nonEmpty": true}),
        Matcher::Exact(v) => json!({"exact": v}),
        Matcher::Prefix(v) => json!({"prefix": v}),
        Matcher::Suffix(v) => json!({"suffix": v}),
        Matcher::Contains(v) => json!({"contains": v}),
        Matcher::Regex(v) => json!({"regex": v}),
        Matcher::PathTemplate(v) => json!({"template": v}),
        Matcher::Net(n) => json!({"cidr": n.to_string()}),
        Matcher::Port(p) => json!({"port": p}),
        Matcher::IssuerSubject(iss, sub) => json!({"issuer": dump_matcher(iss), "subject": dump_matcher(sub)}),
    }
}

fn dump_policies(set: &PolicySet) -> Value {
    let patterns = |ps: &[Pattern]| ps.iter().map(Pattern::to_source_text).collect::<Vec<_>>();
    let source = |s: &Source| {
        let mut m = serde_json::Map::new();
        if !s.principals.is_empty() {
            m.insert("principals".into(), json!(patterns(&s.principals)));
        }
        if !s.ip_blocks.is_empty() {
            m.insert(
                "ipBlocks".into(),
                json!(s.ip_blocks.iter().map(ToString::to_string).collect::<Vec<_>>()),
            );
        }
        if !s.conditions.is_empty() {
            m.insert("conditions".into(), s.conditions.iter().map(dump_condition).collect());
        }
        Value::Object(m)
    };
    let destination = |d: &Destination| {
        let mut m = serde_json::Map::new();
        if !d.hosts.is_empty() {
            m.insert("hosts".into(), json!(patterns(&d.hosts)));
        }
        if !d.ports.is_empty() {
            m.insert("ports".into(), json!(d.ports));
        }
        if !d.methods.is_empty() {
            m.insert("methods".into(), json!(d.methods));
        }
        if let Some(h) = &d.header {
            m.insert(
                "httpHeaderMatch".into(),
                json!({"headerName": h.name, "regexMatch": h.regex}),
            );
        }
        if !d.conditions.is_empty() {
            m.insert("conditions".into(), d.conditions.iter().map(dump_condition).collect());
        }
        Value::Object(m)
    };
    set.policies
        .iter()
        .map(|p| {
            let mut v = json!({
                "name": p.name,
                "action": p.action.as_str(),
                "rules": p.rules.iter().map(|r| json!({
                    "sources": r.sources.iter().map(source).collect::<Vec<_>>(),
                    "destinations": r.destinations.iter().map(destination).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            });
            if p.dry_run {
                v["dryRun"] = json!(true);
            }
            v
        })
        .collect()
}

/// Which build of the filter an Envoy configuration loads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FilterBuild {
    /// `envoy.filters.http.wasm` (V8) running the `.wasm` at this path.
    Wasm(std::path::PathBuf),
    /// `envoy.filters.http.dynamic_modules` running `lib<NATIVE_MODULE>.so`, found through
    /// `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`.
    Native,
}

/// The name the filter has in Envoy configuration (HCM `http_filters`, ECDS resources).
pub const FILTER_NAME: &str = "meshauthz";
/// The native filter's module name.
pub const NATIVE_MODULE: &str = "meshauthz_filter";

impl FilterBuild {
    /// The filter's `typed_config` for `plugin_config` (the JSON of `--emit plugin-config`):
    /// what an HCM filter entry and an ECDS `TypedExtensionConfig` both carry.
    pub fn typed_config(&self, plugin_config: &str) -> Value {
        let config = json!({"@type": "type.googleapis.com/google.protobuf.StringValue", "value": plugin_config});
        match self {
            FilterBuild::Wasm(path) => json!({
                "@type": self.type_url(),
                "config": {
                    "name": FILTER_NAME,
                    "root_id": FILTER_NAME,
                    // A VM that fails must not let requests through unfiltered.
                    "fail_open": false,
                    "configuration": config,
                    "vm_config": {
                        "vm_id": FILTER_NAME,
                        "runtime": "envoy.wasm.runtime.v8",
                        "code": {"local": {"filename": path.display().to_string()}},
                    },
                },
            }),
            FilterBuild::Native => json!({
                "@type": self.type_url(),
                "dynamic_module_config": {"name": NATIVE_MODULE},
                "filter_name": FILTER_NAME,
                "filter_config": config,
            }),
        }
    }

    /// The `typed_config`'s type URL (ECDS `type_urls`).
    pub fn type_url(&self) -> &'static str {
        match self {
            FilterBuild::Wasm(_) => "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            FilterBuild::Native => {
                "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter"
            }
        }
    }
}

/// The filter's configuration as an xDS discovery response holding one
/// `TypedExtensionConfig` named [`FILTER_NAME`]: what an HCM's `config_discovery` reads (from
/// a file, `path_config_source`, or from a control plane serving the same resource over ECDS).
pub fn ecds_resource(build: &FilterBuild, plugin_config: &str) -> String {
    let resource = json!({
        "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
        "name": FILTER_NAME,
        "typed_config": build.typed_config(plugin_config),
    });
    format!("{:#}\n", json!({ "resources": [resource] }))
}
