//! svc-proxy: Kubernetes Services on IPVS, a dummy VIP device and ipset-driven hairpin masquerade.
//!
//! Layers, data flowing top to bottom (see docs/ARCHITECTURE.md):
//! - **sources** ([`source`]): pluggable watchers — manifest files ([`source::files`]),
//!   cni-bridge attachment records ([`source::records`]), the Kubernetes API ([`source::kube`]) —
//!   that report typed deltas ([`store::Delta`]). Every object is judged by [`validate`] (and
//!   manifests are decoded by [`manifest`]) into the [`objects`] svc-proxy programs.
//! - **store** ([`store`]): every source's objects by reference, one effective version each (a
//!   defined precedence), the indexes derivation needs, and whether every source has listed.
//! - **derive** ([`derive`], [`desired`]): store -> [`model::Desired`], per changed Service.
//! - **plan** ([`plan`]): the pure planner, `plan(desired, observed) -> Vec<Op>`.
//! - **apply** ([`dataplane`]): the kernel behind a trait; [`kernel`] implements it over
//!   `nodenet`, a recording fake implements it for tests.
//!
//! [`controller`] runs the loop (batching, min/full sync periods, backoff, draining);
//! [`daemon`] wires it all from [`config`]-resolved settings; [`http`], [`health`],
//! [`metrics`], [`instance`] and [`logger`] are the operator-facing parts; [`takeover`] removes
//! kube-proxy's leftovers once svc-proxy has taken a node over.

pub mod config;
pub mod controller;
pub mod daemon;
pub mod dataplane;
pub mod derive;
pub mod desired;
pub mod health;
pub mod healthcheck;
pub mod http;
pub mod instance;
pub mod kernel;
pub mod logger;
pub mod manifest;
pub mod metrics;
pub mod model;
pub mod objects;
pub mod plan;
pub mod routes;
pub mod rules;
#[cfg(test)]
mod scale_tests;
pub mod source;
pub mod store;
pub mod takeover;
pub mod validate;
