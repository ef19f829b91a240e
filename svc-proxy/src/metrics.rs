//! The metrics `/metrics` serves (Prometheus text format, `prometheus-client`): svc-proxy's own
//! `svcproxy_*`, and the `kubeproxy_*` ones operators' dashboards already use, with kube-proxy's
//! names, labels and buckets.

use crate::objects::Kind;
use crate::store::SourceId;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, linear_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabel {
    resource: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FamilyLabel {
    ip_family: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabel {
    traffic_policy: &'static str,
    ip_family: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn sync_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// kube-proxy's buckets for the programming latency: 0.25 s steps to 0.5 s, then 1 s to 59 s,
/// 5 s to 115 s, 30 s to 5 min.
fn programming_buckets() -> Histogram {
    Histogram::new(
        linear_buckets(0.25, 0.25, 2)
            .chain(linear_buckets(1.0, 1.0, 59))
            .chain(linear_buckets(60.0, 5.0, 12))
            .chain(linear_buckets(120.0, 30.0, 7)),
    )
}

/// Shared by the controller, the sources and the HTTP servers.
pub struct Metrics {
    registry: Registry,
    sync_seconds: Histogram,
    last_sync_seconds: Gauge<f64, AtomicU64>,
    operations: Family<OpLabel, Counter>,
    errors: Family<KindLabel, Counter>,
    invalid: Family<SourceLabel, Counter>,
    api_errors: Family<ResourceLabel, Counter>,
    services: Gauge,
    endpoints: Gauge,
    kp_sync: HistogramFamily<FamilyLabel>,
    kp_full_sync: HistogramFamily<FamilyLabel>,
    kp_partial_sync: HistogramFamily<FamilyLabel>,
    kp_last_sync: Family<FamilyLabel, Gauge<f64, AtomicU64>>,
    kp_last_queued: Family<FamilyLabel, Gauge<f64, AtomicU64>>,
    kp_programming: HistogramFamily<FamilyLabel>,
    kp_endpoint_changes: Counter,
    kp_service_changes: Counter,
    kp_endpoint_pending: Gauge,
    kp_service_pending: Gauge,
    kp_no_local: Family<PolicyLabel, Gauge>,
    kp_healthz: Family<CodeLabel, Counter>,
    kp_livez: Family<CodeLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut r = Registry::default();
        let m = Metrics {
            sync_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            last_sync_seconds: Gauge::default(),
            operations: Family::default(),
            errors: Family::default(),
            invalid: Family::default(),
            api_errors: Family::default(),
            services: Gauge::default(),
            endpoints: Gauge::default(),
            kp_sync: Family::new_with_constructor(sync_buckets),
            kp_full_sync: Family::new_with_constructor(sync_buckets),
            kp_partial_sync: Family::new_with_constructor(sync_buckets),
            kp_last_sync: Family::default(),
            kp_last_queued: Family::default(),
            kp_programming: Family::new_with_constructor(programming_buckets),
            kp_endpoint_changes: Counter::default(),
            kp_service_changes: Counter::default(),
            kp_endpoint_pending: Gauge::default(),
            kp_service_pending: Gauge::default(),
            kp_no_local: Family::default(),
            kp_healthz: Family::default(),
            kp_livez: Family::default(),
            registry: Registry::default(),
        };
        r.register(
            "svcproxy_sync_duration_seconds",
            "Time spent reconciling (planning and applying)",
            m.sync_seconds.clone(),
        );
        r.register(
            "svcproxy_last_sync_duration_seconds",
            "Duration of the last reconcile",
            m.last_sync_seconds.clone(),
        );
        r.register(
            "svcproxy_operations",
            "Kernel operations applied successfully",
            m.operations.clone(),
        );
        r.register(
            "svcproxy_errors",
            "Errors by kind (manifest, kernel, observe)",
            m.errors.clone(),
        );
        r.register(
            "svcproxy_invalid_objects",
            "Objects rejected by validation, by source (logged with their name and field)",
            m.invalid.clone(),
        );
        r.register(
            "svcproxy_api_watch_errors",
            "Failed Kubernetes API lists and watches, by resource (retried with backoff)",
            m.api_errors.clone(),
        );
        r.register(
            "svcproxy_services",
            "Virtual services wanted",
            m.services.clone(),
        );
        r.register(
            "svcproxy_endpoints",
            "Real servers wanted",
            m.endpoints.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
            m.kp_sync.clone(),
        );
        r.register(
            "kubeproxy_sync_full_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for full resyncs",
            m.kp_full_sync.clone(),
        );
        r.register(
            "kubeproxy_sync_partial_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for partial resyncs",
            m.kp_partial_sync.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
            m.kp_last_sync.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
            "The last time a sync of proxy rules was queued",
            m.kp_last_queued.clone(),
        );
        r.register(
            "kubeproxy_network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds",
            m.kp_programming.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_endpoint_changes",
            "Cumulative proxy rules Endpoint changes",
            m.kp_endpoint_changes.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_service_changes",
            "Cumulative proxy rules Service changes",
            m.kp_service_changes.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
            "Pending proxy rules Endpoint changes",
            m.kp_endpoint_pending.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_service_changes_pending",
            "Pending proxy rules Service changes",
            m.kp_service_pending.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
            "Number of services with a Local traffic policy and no endpoints",
            m.kp_no_local.clone(),
        );
        r.register(
            "kubeproxy_proxy_healthz",
            "Cumulative proxy healthz HTTP status",
            m.kp_healthz.clone(),
        );
        r.register(
            "kubeproxy_proxy_livez",
            "Cumulative proxy livez HTTP status",
            m.kp_livez.clone(),
        );
        Metrics { registry: r, ..m }
    }
}

fn family_label(v6: bool) -> FamilyLabel {
    FamilyLabel {
        ip_family: if v6 { "IPv6" } else { "IPv4" },
    }
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

impl Metrics {
    /// A sync finished; `families` are the address families it covered (`true` = IPv6), `full`
    /// whether it planned everything. `succeeded`: no operation failed (kube-proxy's "last
    /// successful sync").
    pub fn sync_done(&self, took: Duration, families: &[bool], full: bool, succeeded: bool) {
        let s = took.as_secs_f64();
        self.sync_seconds.observe(s);
        self.last_sync_seconds.set(s);
        for &v6 in families {
            let l = family_label(v6);
            self.kp_sync.get_or_create(&l).observe(s);
            if full {
                self.kp_full_sync.get_or_create(&l).observe(s)
            } else {
                self.kp_partial_sync.get_or_create(&l).observe(s)
            }
            if succeeded {
                self.kp_last_sync
                    .get_or_create(&l)
                    .set(unix_seconds(SystemTime::now()));
            }
        }
    }

    pub fn operation(&self, op: &'static str) {
        self.operations.get_or_create(&OpLabel { op }).inc();
    }

    /// `kind`: `manifest`, `kernel` or `observe`.
    pub fn error(&self, kind: &'static str) {
        self.errors.get_or_create(&KindLabel { kind }).inc();
    }

    /// An object (or a manifest file) was rejected by validation.
    pub fn invalid_object(&self, source: SourceId) {
        let source = match source {
            SourceId::Api => "api",
            SourceId::Files => "files",
            SourceId::Records => "records",
        };
        self.invalid.get_or_create(&SourceLabel { source }).inc();
        if source == "files" {
            self.error("manifest");
        }
    }

    /// A list or watch of the API failed.
    pub fn api_error(&self, kind: Kind) {
        let resource = match kind {
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices",
            Kind::Node => "nodes",
            Kind::Pod => "pods",
        };
        self.api_errors
            .get_or_create(&ResourceLabel { resource })
            .inc();
    }

    pub fn desired(&self, services: usize, endpoints: usize) {
        self.services.set(services as i64);
        self.endpoints.set(endpoints as i64);
    }

    /// Services with a `Local` policy and no local endpoint, per (policy, IPv6); every
    /// combination is published, zero included, as kube-proxy does.
    pub fn no_local_endpoints(
        &self,
        counts: &std::collections::BTreeMap<(crate::desired::TrafficPolicy, bool), usize>,
    ) {
        use crate::desired::TrafficPolicy;
        for policy in [TrafficPolicy::Internal, TrafficPolicy::External] {
            for v6 in [false, true] {
                let label = PolicyLabel {
                    traffic_policy: policy.label(),
                    ip_family: family_label(v6).ip_family,
                };
                let n = counts.get(&(policy, v6)).copied().unwrap_or(0);
                self.kp_no_local.get_or_create(&label).set(n as i64);
            }
        }
    }

    /// Changes arrived and wait for a sync (`pending_*`: how many wait now).
    pub fn queued(
        &self,
        services: u64,
        endpoints: u64,
        pending_services: u64,
        pending_endpoints: u64,
    ) {
        self.kp_service_changes.inc_by(services);
        self.kp_endpoint_changes.inc_by(endpoints);
        self.kp_service_pending.set(pending_services as i64);
        self.kp_endpoint_pending.set(pending_endpoints as i64);
        let now = unix_seconds(SystemTime::now());
        for v6 in [false, true] {
            self.kp_last_queued
                .get_or_create(&family_label(v6))
                .set(now);
        }
    }

    /// The pending changes were programmed.
    pub fn programmed(&self, trigger_times: &[SystemTime], families: &[bool]) {
        self.kp_service_pending.set(0);
        self.kp_endpoint_pending.set(0);
        let now = SystemTime::now();
        for t in trigger_times {
            let latency = now.duration_since(*t).unwrap_or_default().as_secs_f64();
            for &v6 in families {
                self.kp_programming
                    .get_or_create(&family_label(v6))
                    .observe(latency);
            }
        }
    }

    /// A `/healthz` (or, with `live`, `/livez`) answer was given.
    pub fn health_answer(&self, live: bool, ok: bool) {
        let code = CodeLabel {
            code: if ok { "200" } else { "503" },
        };
        if live {
            self.kp_livez.get_or_create(&code).inc();
        } else {
            self.kp_healthz.get_or_create(&code).inc();
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &self.registry)
            .expect("writing to a String cannot fail");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names dashboards look for, with kube-proxy's suffixes and labels.
    #[test]
    fn kube_proxy_names_and_labels() {
        let m = Metrics::default();
        m.sync_done(Duration::from_millis(3), &[false], true, true);
        m.queued(1, 2, 1, 2);
        m.programmed(&[SystemTime::now() - Duration::from_millis(700)], &[false]);
        m.operation("add_service");
        m.error("kernel");
        let text = m.render();
        for want in [
            "kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"0.004\",ip_family=\"IPv4\"} 1",
            "kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"} 1",
            "kubeproxy_sync_full_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"} 1",
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=\"IPv4\"} ",
            "kubeproxy_network_programming_duration_seconds_bucket{le=\"0.5\",ip_family=\"IPv4\"} 0",
            "kubeproxy_network_programming_duration_seconds_bucket{le=\"1.0\",ip_family=\"IPv4\"} 1",
            "kubeproxy_sync_proxy_rules_endpoint_changes_total 2",
            "kubeproxy_sync_proxy_rules_service_changes_total 1",
            "kubeproxy_sync_proxy_rules_endpoint_changes_pending 0",
            "svcproxy_operations_total{op=\"add_service\"} 1",
            "svcproxy_errors_total{kind=\"kernel\"} 1",
            "# TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram",
        ] {
            assert!(text.contains(want), "{want} missing from\n{text}");
        }
    }
}
