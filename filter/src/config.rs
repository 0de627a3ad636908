//! The plugin configuration: the JSON `policy-compiler compile --emit plugin-config` writes.
//!
//! ```json
//! {"table": "<base64 table>", "mode": "enforce" | "shadow",
//!  "xfcc": "sanitize_set" | "append_forward" | "off"}
//! ```
//! Unknown keys are rejected: a misspelt `mode` must not silently leave a filter enforcing (or
//! worse, not enforcing) something other than what the operator wrote.

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
}

/// A validated configuration, ready for requests.
#[derive(Debug)]
pub struct FilterConfig {
    pub table: Table,
    pub mode: Mode,
    pub xfcc: XfccMode,
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
        Ok(FilterConfig {
            table,
            mode: raw.mode,
            xfcc: raw.xfcc,
        })
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
    }
}
