//! The control-plane harness against itself: the real kube-apiserver and kube-controller-manager
//! that `tests/k8s/up.sh` starts do what later tiers rely on — node IPAM gives a Node its pod
//! CIDRs, the EndpointSlice controller follows Pod status patched by the test, the dual-stack
//! Service range allocates both families, ServiceAccount tokens authenticate under RBAC, and the
//! API server can be stopped and started again with its objects intact.
//!
//! Needs no root; the binaries come from `tests/k8s/build.sh` (cached) or `K8S_BIN`:
//! `cargo test -p node-tests --test k8s_control_plane`.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;
use node_tests::k8s::{eventually, ControlPlane};
use serde_json::Value;

/// Bound on how long a controller may take to react (generous: the machine is shared).
const REACT: Duration = Duration::from_secs(60);

const OBJECTS: &str = r#"
apiVersion: v1
kind: Node
metadata:
  name: node-a
  labels: { topology.kubernetes.io/zone: zone-a }
---
apiVersion: v1
kind: Pod
metadata:
  name: web-0
  namespace: default
  labels: { app: web }
spec:
  nodeName: node-a
  containers:
  - name: web
    image: registry.invalid/web:1
    ports: [{ name: http, containerPort: 8080 }]
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
spec:
  selector: { app: web }
  ports: [{ name: http, port: 80, targetPort: http }]
---
apiVersion: v1
kind: Service
metadata:
  name: web-dual
  namespace: default
spec:
  ipFamilyPolicy: RequireDualStack
  selector: { app: web }
  ports: [{ port: 80, targetPort: 8080 }]
"#;

/// The endpoints of Service `default/web` over all its EndpointSlices.
fn web_endpoints(cp: &ControlPlane) -> Vec<Value> {
    let slices = cp.kubectl_json(&[
        "get",
        "endpointslices",
        "-n",
        "default",
        "-l",
        "kubernetes.io/service-name=web",
    ]);
    slices["items"]
        .as_array()
        .expect("a list has items")
        .iter()
        .flat_map(|slice| slice["endpoints"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// The single endpoint of `default/web` once its `ready` condition is `ready`.
fn web_endpoint_with_ready(cp: &ControlPlane, ready: bool) -> Value {
    eventually(
        &format!("default/web's endpoint with ready={ready}"),
        REACT,
        || match web_endpoints(cp).as_slice() {
            [one] if one["conditions"]["ready"] == ready => Some(one.clone()),
            _ => None,
        },
    )
}

fn within(cidr: &str, range: &str) -> bool {
    let cidr: IpNetwork = cidr.parse().unwrap_or_else(|e| panic!("{cidr}: {e}"));
    let range: IpNetwork = range.parse().expect("a CIDR");
    range.contains(cidr.network()) && cidr.prefix() >= range.prefix()
}

#[test]
fn real_controllers_follow_objects_and_survive_an_apiserver_restart() {
    let started = Instant::now();
    let cp = ControlPlane::start();
    eprintln!("control plane up in {:.1?}", started.elapsed());

    cp.kubectl_apply(OBJECTS);
    cp.kubectl(&[
        "patch",
        "node",
        "node-a",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"addresses":[{"type":"InternalIP","address":"192.168.200.2"}]}}"#,
    ]);
    let node = cp.kubectl_json(&["get", "node", "node-a"]);
    assert_eq!(
        node["status"]["addresses"],
        serde_json::json!([{ "type": "InternalIP", "address": "192.168.200.2" }]),
        "the Node's address as patched"
    );

    // Node IPAM (--allocate-node-cidrs, dual-stack cluster CIDR): an IPv4 /24 and an IPv6 /64.
    let pod_cidrs = eventually("node-a's spec.podCIDRs", REACT, || {
        let node = cp.kubectl_json(&["get", "node", "node-a"]);
        let cidrs: Vec<String> = node["spec"]["podCIDRs"]
            .as_array()?
            .iter()
            .map(|c| c.as_str().expect("a CIDR string").to_string())
            .collect();
        (!cidrs.is_empty()).then_some(cidrs)
    });
    assert_eq!(pod_cidrs.len(), 2, "one CIDR per family: {pod_cidrs:?}");
    assert!(
        within(&pod_cidrs[0], "10.244.0.0/16") && pod_cidrs[0].ends_with("/24"),
        "IPv4 pod CIDR {} is a /24 of 10.244.0.0/16",
        pod_cidrs[0]
    );
    assert!(
        within(&pod_cidrs[1], "fd00:244::/56") && pod_cidrs[1].ends_with("/64"),
        "IPv6 pod CIDR {} is a /64 of fd00:244::/56",
        pod_cidrs[1]
    );

    // Dual-stack Service range: a ClusterIP from each family's range.
    let dual = cp.kubectl_json(&["get", "service", "web-dual", "-n", "default"]);
    let cluster_ips: Vec<IpAddr> = dual["spec"]["clusterIPs"]
        .as_array()
        .expect("clusterIPs")
        .iter()
        .map(|ip| ip.as_str().expect("an IP").parse().expect("an IP"))
        .collect();
    assert_eq!(
        cluster_ips.len(),
        2,
        "RequireDualStack gets two ClusterIPs: {cluster_ips:?}"
    );
    assert!(
        within(&cluster_ips[0].to_string(), "10.96.0.0/12")
            && within(&cluster_ips[1].to_string(), "fd00:96::/112"),
        "ClusterIPs {cluster_ips:?} come from 10.96.0.0/12 and fd00:96::/112"
    );

    // Before the "kubelet" reports anything, the Pod has no IP: no endpoint.
    eventually("default/web's (empty) EndpointSlice", REACT, || {
        let slices = cp.kubectl_json(&[
            "get",
            "endpointslices",
            "-n",
            "default",
            "-l",
            "kubernetes.io/service-name=web",
        ]);
        (slices["items"].as_array()?.len() == 1).then_some(())
    });
    assert_eq!(
        web_endpoints(&cp),
        Vec::<Value>::new(),
        "no endpoint before the Pod runs"
    );

    let patched = Instant::now();
    cp.patch_pod_status("default", "web-0", true, &["10.244.0.5"]);
    let endpoint = web_endpoint_with_ready(&cp, true);
    eprintln!("Ready=True -> ready endpoint in {:.1?}", patched.elapsed());
    assert_eq!(endpoint["addresses"], serde_json::json!(["10.244.0.5"]));
    assert_eq!(endpoint["nodeName"], "node-a");
    assert_eq!(
        endpoint["zone"], "zone-a",
        "zone from the Node's topology label"
    );
    assert_eq!(endpoint["targetRef"]["name"], "web-0");
    assert_eq!(endpoint["conditions"]["serving"], true);
    let slices = cp.kubectl_json(&[
        "get",
        "endpointslices",
        "-n",
        "default",
        "-l",
        "kubernetes.io/service-name=web",
    ]);
    assert_eq!(
        slices["items"][0]["ports"],
        serde_json::json!([{ "name": "http", "port": 8080, "protocol": "TCP" }]),
        "the named targetPort resolved from the Pod's container port"
    );

    cp.patch_pod_status("default", "web-0", false, &["10.244.0.5"]);
    let endpoint = web_endpoint_with_ready(&cp, false);
    assert_eq!(endpoint["addresses"], serde_json::json!(["10.244.0.5"]));
    assert_eq!(endpoint["conditions"]["serving"], false);
    assert_eq!(endpoint["conditions"]["terminating"], false);

    // A ServiceAccount token authenticates (the error names the account), and RBAC denies what the
    // account was not granted.
    let token = cp.token_for("default", "default");
    let as_default = cp.kubeconfig_with_token("default-sa", &token);
    let denied = cp
        .try_kubectl_as(&as_default, &["get", "nodes"])
        .expect_err("the default ServiceAccount may not list nodes");
    assert!(
        denied.contains(
            r#"User "system:serviceaccount:default:default" cannot list resource "nodes""#
        ),
        "RBAC's Forbidden names the authenticated account: {denied}"
    );

    // The API server stopped: clients are refused. Started again: same port, same objects, and
    // the controller-manager's watches resume (a status change is followed again).
    let before = cp.kubectl_json(&["get", "service", "web", "-n", "default"]);
    cp.stop_apiserver();
    let refused = cp
        .try_kubectl(&["get", "namespaces", "--request-timeout=5s"])
        .expect_err("no API server while it is stopped");
    assert!(
        refused.contains("was refused"),
        "a stopped API server refuses connections: {refused}"
    );
    let restarted = Instant::now();
    cp.start_apiserver();
    eprintln!("API server ready again in {:.1?}", restarted.elapsed());
    let after = cp.kubectl_json(&["get", "service", "web", "-n", "default"]);
    assert_eq!(
        after["metadata"]["uid"], before["metadata"]["uid"],
        "the same Service object"
    );
    assert_eq!(after["spec"]["clusterIP"], before["spec"]["clusterIP"]);
    let node = cp.kubectl_json(&["get", "node", "node-a"]);
    assert_eq!(node["spec"]["podCIDRs"], serde_json::json!(pod_cidrs));
    cp.patch_pod_status("default", "web-0", true, &["10.244.0.5"]);
    web_endpoint_with_ready(&cp, true);
    eprintln!("whole test {:.1?}", started.elapsed());
}
