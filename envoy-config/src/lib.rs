//! meshauthz envoy-config: turns the guide's Cloud Service Mesh resources into Envoy
//! bootstraps, runs a local SPIFFE mesh CA, and checks workload credentials.

#![forbid(unsafe_code)]

pub mod ca;
