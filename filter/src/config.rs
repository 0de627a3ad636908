//! The plugin configuration: the JSON `policy-compiler compile --emit plugin-config` writes.
//!
//! ```json
//! {"table": "<base64 table>", "mode": "enforce" | "shadow",
//!  "xfcc": "sanitize_set" | "append_forward" | "off"}
//! ```
//! Unknown keys are rejected: a misspelt `mode` must not silently leave a filter enforcing (or
//! worse, not enforcing) something other than what the operator wrote.
//!
//! Builds with the test-only `fault-injection` feature also take `"fail_host_calls": [...]`,
//! host call names ([`crate::host::Property`] names, `request_headers`, `set_request_header`,
//! `remove_request_header`) that then fail, to prove that every failure denies. Release builds
//! reject the key like any other unknown key.

use base64::Engine;
use meshauthz_table::Table;
use serde::Deserialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Enforce,
    Shadow,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum XfccMode {
    #[default]
    SanitizeSet,
    AppendForward,
    Off,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    table: String,
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    xfcc: XfccMode,
    #[cfg(feature = "fault-injection")]
    #[serde(default)]
    fail_host_calls: Vec<String>,
}

/// Host calls names that a `fault-injection` build fails on purpose.
pub const FAULTABLE_CALLS: &[&str] = &["request_headers", "set_request_header", "remove_request_header"];

/// A validated configuration, ready for requests.
#[derive(Debug)]
pub struct FilterConfig {
    pub table: Table,
    pub mode: Mode,
    pub xfcc: XfccMode,
    /// Host calls to fail (only ever non-empty in `fault-injection` builds).
    pub fail_host_calls: Vec<String>,
}

/// Why a configuration was refused (logged by `on_configure`, which then returns false).
#[derive(Debug, PartialEq, Eq)]
pub enum ConfigError {
    Missing,
    Json(String),
    Base64(String),
    Table(String),
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::Missing => f.write_str(
                "no plugin configuration (expected the JSON from `policy-compiler compile --emit plugin-config`)",
            ),
            ConfigError::Json(e) => write!(f, "plugin configuration is not valid JSON for this filter: {e}"),
            ConfigError::Base64(e) => write!(f, "plugin configuration `table` is not base64: {e}"),
            ConfigError::Table(e) => write!(f, "plugin configuration `table`: {e}"),
        }
    }
}

impl FilterConfig {
    pub fn parse(bytes: Option<&[u8]>) -> Result<FilterConfig, ConfigError> {
        let bytes = bytes.filter(|b| !b.is_empty()).ok_or(ConfigError::Missing)?;
        let raw: RawConfig = serde_json::from_slice(bytes).map_err(|e| ConfigError::Json(e.to_string()))?;
        let table_bytes = base64::engine::general_purpose::STANDARD
            .decode(raw.table.as_bytes())
            .map_err(|e| ConfigError::Base64(e.to_string()))?;
        let table = Table::from_bytes(&table_bytes).map_err(|e| ConfigError::Table(e.to_string()))?;
        #[cfg(feature = "fault-injection")]
        let fail_host_calls = {
            for name in &raw.fail_host_calls {
                if crate::host::Property::from_name(name).is_none() && !FAULTABLE_CALLS.contains(&name.as_str()) {
                    return Err(ConfigError::Json(format!(
                        "fail_host_calls: unknown host call `{name}`"
                    )));
                }
            }
            raw.fail_host_calls
        };
        #[cfg(not(feature = "fault-injection"))]
        let fail_host_calls = Vec::new();
        Ok(FilterConfig {
            table,
            mode: raw.mode,
            xfcc: raw.xfcc,
            fail_host_calls,
        })
    }

    /// The line both host layers log once a configuration is accepted (`envoy-load` reads its
    /// `configure_ms`).
    pub fn summary(&self, configure_ms: f64) -> String {
        format!(
            "meshauthz: configured policies={} rules={} mode={:?} xfcc={:?} configure_ms={configure_ms:.3}",
            self.table.policy_count(),
            self.table.rule_count(),
            self.mode,
            self.xfcc,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_configurations() {
        assert_eq!(FilterConfig::parse(None).err(), Some(ConfigError::Missing));
        assert!(matches!(FilterConfig::parse(Some(b"{")), Err(ConfigError::Json(_))));
        assert!(matches!(
            FilterConfig::parse(Some(br#"{"table":"","mood":"x"}"#)),
            Err(ConfigError::Json(_))
        ));
        assert!(matches!(
            FilterConfig::parse(Some(br#"{"table":"!!"}"#)),
            Err(ConfigError::Base64(_))
        ));
        assert!(matches!(
            FilterConfig::parse(Some(br#"{"table":"AAAA"}"#)),
            Err(ConfigError::Table(_))
        ));
        assert!(matches!(
            FilterConfig::parse(Some(br#"{"table":"","mode":"audit"}"#)),
            Err(ConfigError::Json(_))
        ));
        // Only a fault-injection build knows the key.
        #[cfg(not(feature = "fault-injection"))]
        assert!(matches!(
            FilterConfig::parse(Some(br#"{"table":"","fail_host_calls":["source.address"]}"#)),
            Err(ConfigError::Json(_))
        ));
    }
}
