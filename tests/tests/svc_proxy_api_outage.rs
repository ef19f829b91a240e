//! svc-proxy when the API server goes away (host tier, recording dataplane): a node keeps what it
//! has while the API is down or was never reachable, and converges once it answers, deleting
//! nothing that still exists in the API. Each test has a control plane of its own (they stop
//! the API server).
//!
//! `cargo test -p node-tests --test svc_proxy_api_outage`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use node_tests::k8s::{eventually, ControlPlane};
use node_tests::proxy::{addrs, log_mark, logged_since, settings, tcp, Options, Proxy};
use svc_proxy::dataplane::fake::Recording;
use svc_proxy::model::{ObservedDest, ObservedService, VirtualService};
use svc_proxy::plan::Op;

const REACT: Duration = Duration::from_secs(60);

/// The tests run one at a time: their log checks read one shared capture.
static SERIAL: Mutex<()> = Mutex::new(());

fn objects(ns: &str, name: &str, ips: &[&str]) -> String {
    let endpoints: Vec<String> = ips
        .iter()
        .map(|ip| format!("{{addresses: [\"{ip}\"]}}"))
        .collect();
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{ports: [{{name: http, port: 80}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, namespace: {ns}, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints: [{}]\n",
        endpoints.join(", ")
    )
}

fn vip(cp: &ControlPlane, ns: &str, name: &str) -> String {
    cp.kubectl(&[
        "get",
        "service",
        name,
        "-n",
        ns,
        "-o",
        "jsonpath={.spec.clusterIP}",
    ])
}

/// The API server stopped and started again mid-run: while it is down nothing changes (the
/// periodic resyncs repair against the last known state, which is still right); afterwards the
/// watchers relist or resume, and changes made since converge — and a virtual service that still
/// exists in the API is never deleted on the way.
#[test]
fn an_api_server_restart_keeps_state_and_converges() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mark = log_mark();
    let cp = ControlPlane::start();
    cp.kubectl_apply(&objects("keep", "a", &["10.244.1.1"]));
    cp.kubectl_apply(&objects("keep", "b", &["10.244.1.2"]));
    let (a, b) = (
        tcp(&vip(&cp, "keep", "a"), 80),
        tcp(&vip(&cp, "keep", "b"), 80),
    );
    let p = Proxy::start(
        settings(&cp.kubeconfig(), &Options::default()),
        Recording::default(),
    );
    eventually("a and b", REACT, || {
        (p.serving(&a)? == addrs(&["10.244.1.1:8080"])
            && p.serving(&b)? == addrs(&["10.244.1.2:8080"]))
        .then_some(())
    });
    let before = p.applied().len();
    let (_, dumps) = p.kernel_reads();

    cp.stop_apiserver();
    // Several resyncs (2 s each) pass while the API is down.
    eventually("two resyncs without the API", REACT, || {
        (p.kernel_reads().1 >= dumps + 2).then_some(())
    });
    assert_eq!(
        p.applied().len(),
        before,
        "nothing changed while the API was down"
    );
    assert!(
        !logged_since(mark, "API: watching").is_empty(),
        "the watch errors are logged"
    );

    cp.start_apiserver();
    cp.kubectl(&["delete", "service", "b", "-n", "keep"]);
    cp.kubectl_apply(&objects("keep", "c", &["10.244.1.3"]));
    cp.kubectl_apply(&objects("keep", "a", &["10.244.1.1", "10.244.1.4"]));
    let c = tcp(&vip(&cp, "keep", "c"), 80);
    eventually("converged after the restart", REACT, || {
        let s = p.state();
        (p.serving(&a)? == addrs(&["10.244.1.1:8080", "10.244.1.4:8080"])
            && p.serving(&c)? == addrs(&["10.244.1.3:8080"])
            && !s.services.contains_key(&b))
        .then_some(())
    });
    let ops = p.applied();
    assert!(
        !ops.iter()
            .any(|op| matches!(op, Op::DelService(k) if *k == a)),
        "a was never deleted: {ops:?}"
    );
    assert!(
        !ops.iter().any(|op| matches!(op, Op::DelDest { service, .. } | Op::UpdateDest { service, weight: 0, .. } if *service == a)),
        "a's real server was never taken away: {ops:?}"
    );
    assert!(!p.finished());
}

/// A node started while its API server does not answer keeps the kernel state it has (here a
/// virtual service a previous run left, which the API no longer has): nothing is ensured, read or
/// changed until the API answers; then that stale service goes and the API's are programmed.
#[test]
fn nothing_changes_until_the_api_answers() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mark = log_mark();
    let cp = ControlPlane::start();
    cp.kubectl_apply(&objects("late", "web", &["10.244.2.1"]));
    let web = tcp(&vip(&cp, "late", "web"), 80);
    cp.stop_apiserver();

    let stale = tcp("10.96.250.250", 80);
    let mut kernel = Recording::default();
    kernel.state.addresses.insert(stale.addr);
    kernel.state.services.insert(
        stale,
        ObservedService {
            service: VirtualService {
                key: stale,
                scheduler: "rr".into(),
                persistence: None,
                flags: 0,
            },
            dests: BTreeMap::from([("10.244.9.9:8080".parse().unwrap(), ObservedDest::new(1))]),
        },
    );
    let p = Proxy::start(settings(&cp.kubeconfig(), &Options::default()), kernel);
    eventually("the watchers failing", REACT, || {
        (!logged_since(mark, "API: watching").is_empty()).then_some(())
    });
    // Long enough for two resync periods and several watch retries.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        p.applied(),
        vec![],
        "nothing applied before the API answered"
    );
    assert_eq!(p.kernel_reads(), (0, 0), "the kernel not even read");
    assert!(p.state().services.contains_key(&stale));

    cp.start_apiserver();
    eventually("programmed once the API answers", REACT, || {
        let s = p.state();
        (p.serving(&web)? == addrs(&["10.244.2.1:8080"]) && !s.services.contains_key(&stale))
            .then_some(())
    });
}
