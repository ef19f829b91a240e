//! Counters and gauges the controller updates and `/metrics` renders (Prometheus text format).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Default)]
struct Inner {
    syncs: u64,
    sync_seconds_sum: f64,
    last_sync_seconds: f64,
    operations: BTreeMap<&'static str, u64>,
    errors: BTreeMap<&'static str, u64>,
    services: usize,
    endpoints: usize,
    /// When the kernel state was last dumped successfully; `/healthz` is based on it.
    last_observe: Option<Instant>,
}

/// Shared between the controller thread and the HTTP responder.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn sync_done(&self, took: Duration) {
        self.with(|m| {
            m.syncs += 1;
            m.sync_seconds_sum += took.as_secs_f64();
            m.last_sync_seconds = took.as_secs_f64();
        })
    }

    pub fn operation(&self, kind: &'static str) {
        self.with(|m| *m.operations.entry(kind).or_default() += 1)
    }

    /// `kind`: `manifest`, `kernel` or `observe`.
    pub fn error(&self, kind: &'static str) {
        self.with(|m| *m.errors.entry(kind).or_default() += 1)
    }

    pub fn desired(&self, services: usize, endpoints: usize) {
        self.with(|m| {
            m.services = services;
            m.endpoints = endpoints;
        })
    }

    pub fn observed(&self, at: Instant) {
        self.with(|m| m.last_observe = Some(at))
    }

    /// Healthy when the kernel was dumped successfully within `window`.
    pub fn healthy(&self, now: Instant, window: Duration) -> bool {
        self.with(|m| {
            m.last_observe
                .is_some_and(|t| now.saturating_duration_since(t) <= window)
        })
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.with(|m| {
            let mut s = String::new();
            let _ = writeln!(s, "# HELP svcproxy_sync_duration_seconds Time spent reconciling (planning and applying).");
            let _ = writeln!(s, "# TYPE svcproxy_sync_duration_seconds summary");
            let _ = writeln!(s, "svcproxy_sync_duration_seconds_sum {}", m.sync_seconds_sum);
            let _ = writeln!(s, "svcproxy_sync_duration_seconds_count {}", m.syncs);
            let _ = writeln!(s, "# HELP svcproxy_last_sync_duration_seconds Duration of the last reconcile.");
            let _ = writeln!(s, "# TYPE svcproxy_last_sync_duration_seconds gauge");
            let _ = writeln!(s, "svcproxy_last_sync_duration_seconds {}", m.last_sync_seconds);
            let _ = writeln!(s, "# HELP svcproxy_operations_total Kernel operations applied successfully.");
            let _ = writeln!(s, "# TYPE svcproxy_operations_total counter");
            for (k, v) in &m.operations {
                let _ = writeln!(s, "svcproxy_operations_total{{op=\"{k}\"}} {v}");
            }
            let _ = writeln!(s, "# HELP svcproxy_errors_total Errors by kind (manifest, kernel, observe).");
            let _ = writeln!(s, "# TYPE svcproxy_errors_total counter");
            for (k, v) in &m.errors {
                let _ = writeln!(s, "svcproxy_errors_total{{kind=\"{k}\"}} {v}");
            }
            let _ = writeln!(s, "# HELP svcproxy_services Virtual services wanted.");
            let _ = writeln!(s, "# TYPE svcproxy_services gauge");
            let _ = writeln!(s, "svcproxy_services {}", m.services);
            let _ = writeln!(s, "# HELP svcproxy_endpoints Real servers wanted.");
            let _ = writeln!(s, "# TYPE svcproxy_endpoints gauge");
            let _ = writeln!(s, "svcproxy_endpoints {}", m.endpoints);
            s
        })
    }
}
