//! meshauthz's decision table: the compiled form of a set of `AuthorizationPolicy` resources.
//!
//! Three parts, each usable alone:
//! - [`spec`]: the policy set as plain data;
//! - [`wire`]: the versioned binary format, whose decoder validates everything and never panics
//!   (the writer is behind the `encode` feature, so the filter does not link it);
//! - [`Table`]: the evaluator, indexes built once from a policy set, then one
//!   [`Table::evaluate`] per request, allocation-free and sublinear in the number of rules.
//!
//! No I/O, no serde: this crate builds for `wasm32-wasip1` and is the only project crate the
//! Envoy filter links. The semantics it implements are written down in `SEMANTICS.md` at the
//! repository root.

#![forbid(unsafe_code)]

mod eval;
mod hash;
mod request;
pub mod spec;
pub mod spiffe;
pub mod wire;

pub use eval::{BuildError, Table, normalize_host};
pub use request::{Claim, Decision, Observed, Request, RuleRef};
pub use spec::{
    Action, Attribute, Condition, Destination, HeaderMatch, IpNet, Matcher, Pattern, Policy, PolicySet, Rule, Source,
};
pub use wire::{DecodeError, FORMAT_VERSION};

/// Why table bytes could not be loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TableError {
    /// The bytes are not a valid table.
    Decode(DecodeError),
    /// The table is well-formed but names something the evaluator cannot build (a regex).
    Build(BuildError),
}

impl std::fmt::Display for TableError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TableError::Decode(e) => write!(f, "invalid table: {e}"),
            TableError::Build(e) => write!(f, "unusable table: {e}"),
        }
    }
}

impl std::error::Error for TableError {}
