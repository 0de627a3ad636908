//! meshauthz envoy-config: turns the guide's Cloud Service Mesh resources into Envoy
//! bootstraps ([`generate`]), runs a local SPIFFE mesh CA ([`ca`]), and checks workload
//! credentials the way the guide's troubleshooting section does ([`doctor`]).

#![forbid(unsafe_code)]

pub mod bootstrap;
pub mod ca;
pub mod doctor;
pub mod generate;
pub mod guide;
pub mod hcm;
mod model;
pub mod resources;
pub mod workloads;
