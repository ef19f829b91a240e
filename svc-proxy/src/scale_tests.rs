//! Timing of one endpoint change, and of the drain tick that follows it, at 100 and 10,000
//! Services against the recording fake (deltas fed directly); run with
//! `cargo test --release -p svc-proxy one_change_timing -- --ignored --nocapture`.

use crate::controller::{Config, Controller};
use crate::dataplane::fake::Recording;
use crate::health::Health;
use crate::manifest::parse;
use crate::metrics::Metrics;
use crate::objects::{Kind, Object};
use crate::plan::Op;
use crate::store::{Delta, SourceId, Store};
use crate::validate::Filter;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Service `i` with two endpoints, hosts `first + 1` and `first + 2` of its /24.
fn manifest(i: usize, first: usize) -> String {
    let vip = format!("10.96.{}.{}", i / 250, i % 250 + 1);
    let mut y = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}}}\nspec: {{clusterIP: {vip}, ports: [{{port: 80}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: s{i}-1, labels: {{kubernetes.io/service-name: s{i}}}}}\naddressType: IPv4\nports: [{{port: 8080}}]\nendpoints:\n"
    );
    for e in first..first + 2 {
        y.push_str(&format!(
            "- addresses: [10.{}.{}.{}]\n",
            1 + i / 62500,
            (i / 250) % 250,
            e + 1
        ));
    }
    y
}

fn objects(i: usize, first: usize) -> Vec<Object> {
    parse("t", &manifest(i, first), false, &Filter::default()).unwrap()
}

fn median_max(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[v.len() - 1])
}

fn measure(n: usize) {
    let cfg = Config {
        scheduler: "rr".into(),
        resync: Duration::from_secs(3600),
        min_sync: Duration::ZERO,
        graceful_timeout: Duration::from_secs(60),
        nodeport_addresses: Default::default(),
        pod_routes: false,
        excluded: Vec::new(),
    };
    let mut store = Store::new("n1");
    store.expect(SourceId::Api, Kind::Service);
    store.expect(SourceId::Api, Kind::EndpointSlice);
    let health = Arc::new(Health::new(Duration::from_secs(60), false));
    let t0 = Instant::now();
    let mut c = Controller::new(
        cfg,
        store,
        Recording::default(),
        Arc::new(Metrics::default()),
        health,
        t0,
    );
    let all: Vec<Object> = (0..n).flat_map(|i| objects(i, 0)).collect();
    for kind in [Kind::Service, Kind::EndpointSlice] {
        let objects = all.iter().filter(|o| o.kind() == kind).cloned().collect();
        c.receive(
            SourceId::Api,
            Delta::Replace {
                kind,
                objects,
                kept: vec![],
            },
            t0,
        );
    }
    let started = Instant::now();
    c.step(Instant::now());
    let converged = started.elapsed();
    let mut changes = Vec::new();
    let mut ticks = Vec::new();
    for trial in 0..21 {
        // Replace one endpoint: one real server added, one drained at weight 0 ...
        let i = (trial * 7919) % n;
        let slice = objects(i, 1 + trial)
            .into_iter()
            .find(|o| o.kind() == Kind::EndpointSlice)
            .unwrap();
        let started = Instant::now();
        c.receive(SourceId::Api, Delta::Apply(slice), Instant::now());
        c.step(Instant::now());
        changes.push(started.elapsed());
        assert!(!c.dp.take().is_empty());
        // ... and deleted by the next drain tick (no connections).
        let started = Instant::now();
        c.tick(Instant::now());
        ticks.push(started.elapsed());
        let ops = c.dp.take();
        assert!(
            !ops.is_empty() && ops.iter().all(|op| matches!(op, Op::DelDest { .. })),
            "the tick deletes the drained real servers: {ops:?}"
        );
    }
    let (change, change_max) = median_max(changes);
    let (tick, tick_max) = median_max(ticks);
    println!(
        "{n} services: first sync {converged:?}; one change: median {change:?}, max \
         {change_max:?}; drain tick: median {tick:?}, max {tick_max:?}"
    );
}

#[test]
#[ignore = "timing figures, not an assertion; run with --ignored --nocapture"]
fn one_change_timing() {
    measure(100);
    measure(10_000);
}
