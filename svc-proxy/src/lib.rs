//! svc-proxy: Kubernetes Services on IPVS, a dummy VIP device and ipset-driven hairpin masquerade.
//!
//! Layout (data flows top to bottom):
//! - [`manifest`]: Service / EndpointSlice manifests (YAML, JSON) parsed and validated.
//! - [`attachments`]: cni-bridge attachment records, the pods attached on this node.
//! - [`sources`]: watched inputs, last good state per file; the desired state re-derived per
//!   changed Service, so one change costs the same at any number of Services.
//! - [`desired`]: inputs -> [`model::Desired`] (virtual services, real servers, loop-back entries).
//! - [`model`]: the desired and observed kernel state, and the one ownership rule.
//! - [`plan`]: the pure planner, `plan(desired, observed) -> Vec<Op>`, and `plan_subset` for
//!   the virtual services and loop-back entries one change touched.
//! - [`dataplane`]: the kernel seen through a trait (dump, apply); [`kernel`] implements it over
//!   `nodenet`, a recording fake implements it for tests.
//! - [`controller`]: the reconcile loop (events, resync, backoff, graceful draining).
//! - [`watch`], [`http`], [`metrics`], [`logger`]: file watching, `/healthz` + `/metrics`, logging.

pub mod attachments;
pub mod controller;
pub mod dataplane;
pub mod desired;
pub mod http;
pub mod kernel;
pub mod logger;
pub mod manifest;
pub mod metrics;
pub mod model;
pub mod plan;
#[cfg(test)]
mod scale_tests;
pub mod sources;
pub mod watch;
