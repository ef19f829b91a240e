//! svc-proxy's Kubernetes API source against the real kube-apiserver and
//! kube-controller-manager (host tier, no IPVS needed): the daemon runs in-process on the
//! recording dataplane, objects are changed with kubectl, and what it would program is read back.
//! One control plane serves every test here; each test works in a namespace of its own.
//!
//! `cargo test -p node-tests --test svc_proxy_api` (needs the binaries of tests/k8s/build.sh,
//! built and cached on first use; `cargo build -p svc-proxy` for the `check` tests).

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use node_tests::cni::Plugin;
use node_tests::k8s::{eventually, ControlPlane};
use node_tests::proxy::{addrs, logged, settings, tcp, Options, Proxy};
use svc_proxy::dataplane::fake::Recording;

/// Bound on how long the daemon and the controllers may take to react (generous: the machine
/// is shared); never a measurement.
const REACT: Duration = Duration::from_secs(60);

const NODES: &str = r#"
apiVersion: v1
kind: Node
metadata: { name: node-1, labels: { topology.kubernetes.io/zone: zone-a } }
---
apiVersion: v1
kind: Node
metadata: { name: node-2, labels: { topology.kubernetes.io/zone: zone-b } }
"#;

fn cluster() -> &'static ControlPlane {
    static CP: OnceLock<ControlPlane> = OnceLock::new();
    CP.get_or_init(|| {
        let cp = ControlPlane::start();
        cp.kubectl_apply(NODES);
        cp
    })
}

fn namespace(cp: &ControlPlane, ns: &str) {
    cp.kubectl_apply(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n"
    ));
}

/// The ClusterIP the API allocated to `ns/name`.
fn cluster_ip(cp: &ControlPlane, ns: &str, name: &str) -> String {
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

/// A selector-less Service with one named port 80.
fn service(ns: &str, name: &str, labels: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}, labels: {{{labels}}}}}\nspec: {{ports: [{{name: http, port: 80}}]}}\n"
    )
}

/// An EndpointSlice of `service` with port `port` and ready endpoints `ips`.
fn slice(ns: &str, name: &str, service: &str, port: i64, ips: &[&str]) -> String {
    let endpoints: Vec<String> = ips
        .iter()
        .map(|ip| format!("{{addresses: [\"{ip}\"]}}"))
        .collect();
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: {ns}, labels: {{kubernetes.io/service-name: {service}}}}}\naddressType: IPv4\nports: [{{name: http, port: {port}, protocol: TCP}}]\nendpoints: [{}]\n",
        endpoints.join(", ")
    )
}

fn proxy(cp: &ControlPlane) -> Proxy {
    Proxy::start(
        settings(&cp.kubeconfig(), &Options::default()),
        Recording::default(),
    )
}

#[test]
fn kubectl_changes_to_services_and_slices_are_followed() {
    let cp = cluster();
    namespace(cp, "crud");
    cp.kubectl_apply(&service("crud", "web", ""));
    cp.kubectl_apply(&slice(
        "crud",
        "web-1",
        "web",
        8080,
        &["10.244.1.10", "10.244.1.11"],
    ));
    let vip = cluster_ip(cp, "crud", "web");
    let p = proxy(cp);
    let key = tcp(&vip, 80);
    eventually("both endpoints", REACT, || {
        (p.serving(&key)? == addrs(&["10.244.1.10:8080", "10.244.1.11:8080"])).then_some(())
    });
    assert!(p.state().addresses.contains(&key.addr), "VIP on the dummy");

    // An endpoint replaced: the new one serves, the old one drains and goes.
    cp.kubectl_apply(&slice(
        "crud",
        "web-1",
        "web",
        8080,
        &["10.244.1.10", "10.244.1.12"],
    ));
    eventually("the replacement endpoint", REACT, || {
        (p.real_servers(&key)?
            == vec![
                ("10.244.1.10:8080".parse().unwrap(), 1),
                ("10.244.1.12:8080".parse().unwrap(), 1),
            ])
        .then_some(())
    });

    // A second port: its own virtual service, without endpoints (the slice has none for it).
    cp.kubectl(&[
        "patch",
        "service",
        "web",
        "-n",
        "crud",
        "--type=json",
        "-p",
        r#"[{"op": "add", "path": "/spec/ports/-", "value": {"name": "https", "port": 443}}]"#,
    ]);
    let https = tcp(&vip, 443);
    eventually("the new port's virtual service", REACT, || {
        p.real_servers(&https)?.is_empty().then_some(())
    });

    cp.kubectl(&["delete", "endpointslice", "web-1", "-n", "crud"]);
    eventually("no real servers without the slice", REACT, || {
        p.real_servers(&key)?.is_empty().then_some(())
    });
    cp.kubectl(&["delete", "service", "web", "-n", "crud"]);
    eventually("the virtual services and the VIP gone", REACT, || {
        let s = p.state();
        (!s.services.contains_key(&key)
            && !s.services.contains_key(&https)
            && !s.addresses.contains(&key.addr))
        .then_some(())
    });
}

const PODS: &str = r#"
apiVersion: v1
kind: Service
metadata: { name: app, namespace: ctl }
spec:
  selector: { app: ctl }
  ports: [{ name: http, port: 80, targetPort: http }]
"#;

fn pod(name: &str, node: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: ctl, labels: {{app: ctl}}, finalizers: [svc-proxy.test/hold]}}\nspec:\n  nodeName: {node}\n  containers: [{{name: c, image: registry.invalid/app:1, ports: [{{name: http, containerPort: 8080}}]}}]\n"
    )
}

/// EndpointSlices made by the real EndpointSlice controller from Pods whose status the test sets
/// (playing the kubelet): ready ones serve, a not-ready one is taken out, terminating ones are
/// used only when nothing else is ready (Kubernetes' fallback).
#[test]
fn the_endpointslice_controller_turns_pod_readiness_into_real_servers() {
    let cp = cluster();
    namespace(cp, "ctl");
    cp.kubectl_apply(PODS);
    let pods = [
        ("a", "node-1", "10.244.1.21"),
        ("b", "node-1", "10.244.1.22"),
        ("c", "node-2", "10.244.2.23"),
    ];
    for (name, node, _) in pods {
        cp.kubectl_apply(&pod(name, node));
    }
    for (name, _, ip) in pods {
        cp.patch_pod_status("ctl", name, true, &[ip]);
    }
    let key = tcp(&cluster_ip(cp, "ctl", "app"), 80);
    let p = proxy(cp);
    eventually("three ready pods", REACT, || {
        (p.serving(&key)? == addrs(&["10.244.1.21:8080", "10.244.1.22:8080", "10.244.2.23:8080"]))
            .then_some(())
    });

    cp.patch_pod_status("ctl", "b", false, &["10.244.1.22"]);
    eventually("b out of rotation", REACT, || {
        (p.serving(&key)? == addrs(&["10.244.1.21:8080", "10.244.2.23:8080"])).then_some(())
    });

    // a terminates (its finalizer holds it): not ready any more, but still serving.
    cp.kubectl(&["delete", "pod", "a", "-n", "ctl", "--wait=false"]);
    eventually("a terminating, c still ready", REACT, || {
        (p.serving(&key)? == addrs(&["10.244.2.23:8080"])).then_some(())
    });
    cp.kubectl(&["delete", "pod", "c", "-n", "ctl", "--wait=false"]);
    eventually("only terminating ones left: they serve", REACT, || {
        (p.serving(&key)? == addrs(&["10.244.1.21:8080", "10.244.2.23:8080"])).then_some(())
    });
    for name in ["a", "b", "c"] {
        let _ = cp.try_kubectl(&[
            "patch",
            "pod",
            name,
            "-n",
            "ctl",
            "--type=merge",
            "-p",
            r#"{"metadata":{"finalizers":null}}"#,
        ]);
    }
}

#[test]
fn a_service_labelled_for_another_proxy_is_ignored() {
    let cp = cluster();
    namespace(cp, "label");
    cp.kubectl_apply(&service("label", "mine", ""));
    cp.kubectl_apply(&slice("label", "mine-1", "mine", 8080, &["10.244.3.1"]));
    cp.kubectl_apply(&service(
        "label",
        "theirs",
        "service.kubernetes.io/service-proxy-name: other",
    ));
    cp.kubectl_apply(&slice("label", "theirs-1", "theirs", 8080, &["10.244.3.2"]));
    let mine = tcp(&cluster_ip(cp, "label", "mine"), 80);
    let theirs = tcp(&cluster_ip(cp, "label", "theirs"), 80);

    let p = proxy(cp);
    eventually("the unlabelled Service", REACT, || p.serving(&mine));
    assert_eq!(p.real_servers(&theirs), None, "another proxy's Service");
    assert!(!p.state().addresses.contains(&theirs.addr));
    drop(p);

    // A proxy named `other` takes both (unlabelled ones, and those labelled with its name).
    let named = Options {
        proxy_name: Some("other".into()),
        ..Options::default()
    };
    let p = Proxy::start(settings(&cp.kubeconfig(), &named), Recording::default());
    eventually("both Services", REACT, || {
        (p.serving(&mine)? == addrs(&["10.244.3.1:8080"])
            && p.serving(&theirs)? == addrs(&["10.244.3.2:8080"]))
        .then_some(())
    });
}

/// An EndpointSlice with a port out of range (the API server does not check slice ports): logged
/// with its namespace/name and field, counted, skipped; everything else is programmed, and a bad
/// update of a good slice keeps its last good version.
#[test]
fn a_malformed_endpoint_slice_is_logged_counted_and_skipped() {
    // A control plane of its own: the bad objects would fail the other tests' `check` runs.
    let own = ControlPlane::start();
    let cp = &own;
    namespace(cp, "bad");
    cp.kubectl_apply(&service("bad", "good", ""));
    cp.kubectl_apply(&slice("bad", "good-1", "good", 8080, &["10.244.4.1"]));
    cp.kubectl_apply(&service("bad", "broken", ""));
    cp.kubectl_apply(&slice("bad", "broken-1", "broken", 70000, &["10.244.4.2"]));
    let good = tcp(&cluster_ip(cp, "bad", "good"), 80);
    let broken = tcp(&cluster_ip(cp, "bad", "broken"), 80);

    let p = proxy(cp);
    eventually("the good Service", REACT, || {
        (p.serving(&good)? == addrs(&["10.244.4.1:8080"])).then_some(())
    });
    assert_eq!(
        p.real_servers(&broken),
        Some(vec![]),
        "the Service without its bad slice"
    );
    let lines = logged("EndpointSlice bad/broken-1: ports[0].port: 70000 is out of range 1-65535");
    assert!(
        !lines.is_empty(),
        "the rejection is logged with object and field"
    );
    let counted = |text: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix("svcproxy_invalid_objects_total{source=\"api\"} "))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    assert!(
        counted(&p.metrics.render()) >= 1.0,
        "{}",
        p.metrics.render()
    );

    cp.kubectl_apply(&slice("bad", "good-1", "good", -5, &["10.244.4.9"]));
    eventually("the bad update rejected", REACT, || {
        (!logged("EndpointSlice bad/good-1: ports[0].port: -5 is out of range").is_empty())
            .then_some(())
    });
    assert_eq!(
        p.serving(&good),
        Some(addrs(&["10.244.4.1:8080"])),
        "last good version kept"
    );
}

fn svc_proxy_bin() -> PathBuf {
    Plugin::built("svc-proxy").path().to_path_buf()
}

/// `svc-proxy check --kubeconfig`: the cluster listed once, printed as it would be programmed.
#[test]
fn check_lists_the_cluster_without_touching_the_kernel() {
    let cp = cluster();
    namespace(cp, "check");
    cp.kubectl_apply(&service("check", "listed", ""));
    cp.kubectl_apply(&slice(
        "check",
        "listed-1",
        "listed",
        9090,
        &["10.244.5.1", "10.244.5.2"],
    ));
    let vip = cluster_ip(cp, "check", "listed");
    let out = Command::new(svc_proxy_bin())
        .args(["check", "--kubeconfig"])
        .arg(cp.kubeconfig())
        .args(["--hostname-override", "node-1"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = format!(
        "TCP  {vip}:80 rr  # check/listed port 80/TCP\n  -> {:<24} Masq    1\n  -> {:<24} Masq    1\n",
        "10.244.5.1:9090", "10.244.5.2:9090"
    );
    assert!(stdout.contains(&want), "{stdout}");
}

fn repo_file(rel: &str) -> String {
    let path = node_tests::containerd::repo_root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The shipped ServiceAccount and least-privilege ClusterRole are enough; with one verb removed,
/// svc-proxy fails with the API server's error naming the missing permission.
#[test]
fn the_shipped_role_is_enough_and_a_missing_verb_is_named() {
    let cp = cluster();
    cp.kubectl_apply(&repo_file("conf/kubernetes/rbac.yaml"));
    // The DaemonSet and its configuration are valid objects for this API server.
    for f in [
        "conf/kubernetes/config.yaml",
        "conf/kubernetes/daemonset.yaml",
    ] {
        cp.kubectl(&[
            "apply",
            "--dry-run=server",
            "-f",
            node_tests::containerd::repo_root()
                .join(f)
                .to_str()
                .unwrap(),
        ]);
    }
    namespace(cp, "rbac");
    cp.kubectl_apply(&service("rbac", "web", ""));
    cp.kubectl_apply(&slice("rbac", "web-1", "web", 8080, &["10.244.6.1"]));
    let key = tcp(&cluster_ip(cp, "rbac", "web"), 80);
    let token = cp.token_for("svc-proxy", "kube-system");
    let kc = cp.kubeconfig_with_token("svc-proxy", &token);

    let p = Proxy::start(settings(&kc, &Options::default()), Recording::default());
    eventually("programmed as the ServiceAccount", REACT, || {
        (p.serving(&key)? == addrs(&["10.244.6.1:8080"])).then_some(())
    });
    drop(p);

    let remove_verb = |verb: &str| {
        let role = cp.kubectl_json(&["get", "clusterrole", "svc-proxy"]);
        let rules = role["rules"].as_array().unwrap();
        let i = rules
            .iter()
            .position(|r| r["resources"][0] == "endpointslices")
            .expect("the endpointslices rule");
        let j = rules[i]["verbs"]
            .as_array()
            .unwrap()
            .iter()
            .position(|v| v == verb)
            .expect("the verb");
        cp.kubectl(&[
            "patch",
            "clusterrole",
            "svc-proxy",
            "--type=json",
            "-p",
            &format!(r#"[{{"op": "remove", "path": "/rules/{i}/verbs/{j}"}}]"#),
        ]);
    };
    remove_verb("watch");
    let p = Proxy::start(settings(&kc, &Options::default()), Recording::default());
    let line = eventually("the watch refused", REACT, || {
        logged("cannot watch resource \"endpointslices\" in API group \"discovery.k8s.io\"")
            .into_iter()
            .next()
    });
    assert!(
        line.contains("system:serviceaccount:kube-system:svc-proxy"),
        "{line}"
    );
    drop(p);

    remove_verb("list");
    let out = Command::new(svc_proxy_bin())
        .args(["check", "--kubeconfig"])
        .arg(&kc)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr
            .contains("cannot list resource \"endpointslices\" in API group \"discovery.k8s.io\""),
        "{stderr}"
    );
    cp.kubectl_apply(&repo_file("conf/kubernetes/rbac.yaml"));
}

/// kube-proxy's own configuration file: accepted with its IPVS settings, refused by name for
/// another mode or a field svc-proxy does not implement, before anything is touched.
#[test]
fn a_kube_proxy_configuration_file_is_accepted_or_refused_by_name() {
    let cp = cluster();
    let dir = node_tests::fs::TempDir::new("kpconfig");
    let write = |name: &str, body: &str| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nclientConnection:\n  kubeconfig: {}\n{body}",
                cp.kubeconfig().display()
            ),
        )
        .unwrap();
        path
    };
    let good = write(
        "good.yaml",
        "mode: ipvs\nipvs:\n  scheduler: wrr\n  syncPeriod: 10s\n  minSyncPeriod: 1s\n",
    );
    namespace(cp, "conf");
    cp.kubectl_apply(&service("conf", "web", ""));
    let vip = cluster_ip(cp, "conf", "web");
    let out = Command::new(svc_proxy_bin())
        .arg("check")
        .arg("--config")
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains(&format!("TCP  {vip}:80 wrr  # conf/web port 80/TCP")),
        "the scheduler from the file"
    );
    for (body, named) in [
        (
            "mode: iptables\n",
            "mode: \"iptables\": svc-proxy is an IPVS proxy",
        ),
        (
            "enableProfiling: true\n",
            "enableProfiling: true is not supported",
        ),
        (
            "conntrack:\n  maxPerCore: 1\n",
            "conntrack.maxPerCore: 1 is not supported",
        ),
        ("ipvs:\n  sheduler: rr\n", "ipvs.sheduler: unknown field"),
    ] {
        let bad = write("bad.yaml", body);
        // The daemon refuses it at start, before opening the kernel.
        let out = Command::new(svc_proxy_bin())
            .arg("--config")
            .arg(&bad)
            .args([
                "--healthz-bind-address",
                "off",
                "--metrics-bind-address",
                "off",
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{body}: {stderr}");
        assert!(stderr.contains(named), "{body}: {stderr}");
    }
}
