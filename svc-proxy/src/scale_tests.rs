//! Timing of one endpoint change, and of the drain tick that follows it, at 100 and 10,000
//! Services against the recording fake; run with
//! `cargo test --release -p svc-proxy one_change_timing -- --ignored --nocapture`.

use crate::controller::{Config, Controller};
use crate::dataplane::fake::Recording;
use crate::metrics::Metrics;
use crate::plan::Op;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
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

fn median_max(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[v.len() - 1])
}

fn measure(n: usize) {
    let dir = std::env::temp_dir().join(format!("svc-proxy-scale-{}-{n}", std::process::id()));
    std::fs::create_dir_all(dir.join("m")).unwrap();
    std::fs::create_dir_all(dir.join("state")).unwrap();
    for i in 0..n {
        std::fs::write(dir.join(format!("m/s{i}.yaml")), manifest(i, 0)).unwrap();
    }
    let cfg = Config {
        manifests: vec![dir.join("m")],
        attachments: dir.join("state"),
        scheduler: "rr".into(),
        resync: Duration::from_secs(3600),
        graceful_timeout: Duration::from_secs(60),
    };
    let t0 = Instant::now();
    let mut c = Controller::new(cfg, Recording::default(), Arc::new(Metrics::default()), t0);
    c.resync(t0);
    let converged = t0.elapsed();
    let mut changes = Vec::new();
    let mut ticks = Vec::new();
    for trial in 0..21 {
        // Replace one endpoint: one real server added, one drained at weight 0 ...
        let i = (trial * 7919) % n;
        let p: PathBuf = dir.join(format!("m/s{i}.yaml"));
        std::fs::write(&p, manifest(i, 1 + trial)).unwrap();
        let started = Instant::now();
        c.paths_changed(&BTreeSet::from([p]), Instant::now());
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
        "{n} services: full resync {converged:?}; one change: median {change:?}, max \
         {change_max:?}; drain tick: median {tick:?}, max {tick_max:?}"
    );
    let _ = std::fs::remove_dir_all(Path::new(&dir));
}

#[test]
#[ignore = "timing figures, not an assertion; run with --ignored --nocapture"]
fn one_change_timing() {
    measure(100);
    measure(10_000);
}
