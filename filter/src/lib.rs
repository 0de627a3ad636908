//! meshauthz's Envoy filter: enforces a compiled decision table on every inbound request.
//!
//! The request logic lives once, in [`decide`], written against the [`host::Host`] trait. Two
//! thin host layers carry it into Envoy, and are the crate's only `unsafe` code:
//! - [`wasm`] with [`abi`]: a proxy-wasm module (`meshauthz_filter.wasm`, V8);
//! - `native` (native targets): an Envoy dynamic module (`libmeshauthz_filter.so`, ABI
//!   `v0.2.0`), running at the speed of a built-in filter.
//!
//! Fail closed: without a valid table the configuration is rejected, and any request that
//! still reaches the filter is denied; every error path denies ([`decide`]).

// The proxy-wasm layer is built for the `.wasm` (and compiled natively for its unit tests,
// against stand-ins for the host); the dynamic-module layer for native targets.
#[cfg(any(target_arch = "wasm32", test))]
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
pub mod abi;
mod claims;
pub mod config;
pub mod decide;
pub mod host;
pub mod identity;
#[cfg(not(target_arch = "wasm32"))]
mod native;
pub mod pairs;
#[cfg(any(target_arch = "wasm32", test))]
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
mod roots;
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
mod stats;
#[cfg(any(target_arch = "wasm32", test))]
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
pub mod wasm;
pub mod xfcc;

/// The deny reply, byte for byte what Envoy's RBAC filter sends.
pub const DENY_STATUS: u32 = 403;
pub const DENY_BODY: &[u8] = b"RBAC: access denied";
/// What Envoy's `%RESPONSE_CODE_DETAILS%` shows for a request this filter denied.
pub const DENY_DETAILS: &str = "meshauthz_access_denied";
