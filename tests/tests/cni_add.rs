//! ADD: the kernel state and the result a runtime gets, per CNI version; VERSION; an interface
//! name already taken in the pod.

use node_tests::cni::{AddResult, Flavor, Node};
use node_tests::observe::{self, Route};
use serde_json::{json, Value};

const NET: &str = "podnet";
const SUBNET: &str = "10.0.0.0/24";

/// The scenario's node: gateway bridge `cnib0` 10.0.0.1/24, MTU 1400, hairpin, ipMasq, DNS.
fn scenario_config(f: &Flavor, node: &Node, version: &str) -> Value {
    let mut c = f.config(node, version, NET, SUBNET);
    c["mtu"] = json!(1400);
    c["hairpinMode"] = json!(true);
    c["ipMasq"] = json!(true);
    c["dns"] = json!({"nameservers": ["10.0.0.53"], "search": ["svc.cluster.local"]});
    c
}

/// Everything ADD must leave in the node and the pod for the scenario config.
fn assert_add_state(f: &Flavor) {
    let node = Node::new("add-node");
    let pod = node.pod("add-pod");
    let config = scenario_config(f, &node, "1.0.0");
    let result = node.add(&f.plugin, &config, &pod).success();
    let r = AddResult::parse(&result, "cnib0");

    // Result: the spec's 1.0.0 shape, IP on the pod interface, routes and DNS.
    assert_eq!(result["cniVersion"], "1.0.0", "{result}");
    assert_eq!(r.container["name"], "eth0", "{result}");
    assert_eq!(
        r.container["sandbox"],
        pod.ns.path().to_str().unwrap(),
        "{result}"
    );
    assert_eq!(
        r.container_index, 2,
        "interfaces = [bridge, host veth, pod]: {result}"
    );
    assert_eq!(r.ip["interface"], json!(r.container_index), "{result}");
    assert_eq!(
        r.address(),
        "10.0.0.2/24",
        "first host-local IP after the gateway: {result}"
    );
    assert_eq!(r.ip["gateway"], "10.0.0.1", "{result}");
    assert!(
        r.ip.get("version").is_none(),
        "1.0.0 results have no ips[].version: {result}"
    );
    let routes = result["routes"].as_array().cloned().unwrap_or_default();
    assert!(
        routes
            .iter()
            .any(|rt| rt["dst"] == "0.0.0.0/0" && rt["gw"] == "10.0.0.1"),
        "isDefaultGateway: result must list the default route: {result}"
    );
    assert_eq!(
        result["dns"]["nameservers"],
        json!(["10.0.0.53"]),
        "{result}"
    );
    assert_eq!(
        result["dns"]["search"],
        json!(["svc.cluster.local"]),
        "{result}"
    );

    // Node: the gateway bridge, up, with the gateway address and the MTU.
    let bridge = observe::link(&node.ns, "cnib0").expect("bridge cnib0 exists");
    assert_eq!(bridge.kind.as_deref(), Some("bridge"));
    assert!(bridge.up, "bridge is up: {bridge:?}");
    assert_eq!(bridge.mtu, 1400, "bridge MTU: {bridge:?}");
    assert_eq!(r.bridge["mac"], bridge.mac, "bridge MAC in result");
    assert_eq!(observe::addresses_of(&node.ns, "cnib0"), ["10.0.0.1/24"]);
    assert_eq!(observe::sysctl(&node.ns, "net/ipv4/ip_forward"), "1");

    // Node: the host veth, a port of the bridge, up, hairpin, MTU.
    let ports = observe::bridge_ports(&node.ns, "cnib0");
    assert_eq!(ports.len(), 1, "one bridge port: {ports:?}");
    let port = &ports[0];
    assert_eq!(
        port.name,
        r.host_veth_name(),
        "host veth named in the result"
    );
    assert_eq!(port.kind.as_deref(), Some("veth"));
    assert!(port.up, "host veth is up: {port:?}");
    assert_eq!(port.mtu, 1400, "host veth MTU");
    assert_eq!(port.hairpin, Some(true), "hairpinMode: {port:?}");
    assert_eq!(r.host_veth["mac"], port.mac, "host veth MAC in result");
    assert!(!bridge.promisc, "no promiscMode asked: {bridge:?}");

    // Pod: eth0 up with the address, MTU and routes.
    let eth0 = observe::link(&pod.ns, "eth0").expect("eth0 in the pod");
    assert_eq!(eth0.kind.as_deref(), Some("veth"));
    assert!(eth0.up, "{eth0:?}");
    assert_eq!(eth0.mtu, 1400);
    assert_eq!(r.container["mac"], eth0.mac, "container MAC in result");
    assert_eq!(observe::addresses_of(&pod.ns, "eth0"), ["10.0.0.2/24"]);
    let pod_routes = observe::routes(&pod.ns);
    let default = Route {
        dst: "default".into(),
        gateway: Some("10.0.0.1".into()),
        dev: "eth0".into(),
    };
    assert!(
        pod_routes.contains(&default),
        "default route via the gateway: {pod_routes:?}"
    );
    assert!(
        pod_routes
            .iter()
            .any(|rt| rt.dst == SUBNET && rt.dev == "eth0"),
        "subnet route: {pod_routes:?}"
    );

    // IPAM: host-local's on-disk layout.
    let reservations = node.reservations(NET);
    assert_eq!(
        reservations.get("10.0.0.2").map(String::as_str),
        Some(format!("{}\r\neth0", pod.id).as_str()),
        "reservation file: {reservations:?}"
    );
}

#[test]
fn add_builds_the_scenario_node_and_pod() {
    assert_add_state(&Flavor::cni_bridge());
}

/// The same expectations hold for the reference plugin: proves the harness and the expectations
/// match what users already run.
#[test]
fn add_reference_plugin_baseline() {
    assert_add_state(&Flavor::reference());
}

#[test]
fn add_records_the_attachment_and_masquerade_set() {
    let f = Flavor::cni_bridge();
    let node = Node::new("rec-node");
    let pod = node.pod("rec-pod");
    let mut config = scenario_config(&f, &node, "1.1.0");
    config["args"] = json!({"cni": {"labels": [{"key": "component", "value": "app"}]}});
    let args = format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=app-1;\
         K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID=0f0e",
        pod.id
    );
    let result = node
        .invoke(&f.plugin, "ADD")
        .pod(&pod)
        .ifname("eth0")
        .args(&args)
        .config(&config)
        .run()
        .success();
    let r = AddResult::parse(&result, "cnib0");

    let records = node.records(NET);
    let name = format!("{}.eth0.json", pod.id);
    let rec = records
        .get(&name)
        .unwrap_or_else(|| panic!("record {name} missing: {records:?}"));
    assert_eq!(rec["network"], NET, "{rec}");
    assert_eq!(rec["containerId"], pod.id.as_str(), "{rec}");
    assert_eq!(rec["ifname"], "eth0", "{rec}");
    assert_eq!(rec["netns"], pod.ns.path().to_str().unwrap(), "{rec}");
    assert_eq!(rec["phase"], "ready", "{rec}");
    assert_eq!(rec["bridge"], "cnib0", "{rec}");
    assert_eq!(rec["hostVeth"], r.host_veth_name().as_str(), "{rec}");
    assert_eq!(rec["podNamespace"], "default", "{rec}");
    assert_eq!(rec["podName"], "app-1", "{rec}");
    assert_eq!(rec["labels"]["component"], "app", "labels as a map: {rec}");
    assert!(
        rec["version"].is_number() || rec["version"].is_string(),
        "{rec}"
    );
    assert!(
        rec["ips"].to_string().contains("10.0.0.2"),
        "record lists the pod IP: {rec}"
    );
    assert!(
        rec["gateways"].to_string().contains("10.0.0.1"),
        "record lists the gateway: {rec}"
    );

    // The masquerade set named in the record exists and holds exactly the pod IP.
    let set = rec["masqSet"]
        .as_str()
        .unwrap_or_else(|| panic!("no masqSet: {rec}"));
    assert!(
        set.starts_with("CNIB-") && set.len() == 27,
        "set name CNIB-<22 hex>: {set}"
    );
    assert!(set[5..].chars().all(|c| c.is_ascii_hexdigit()), "{set}");
    assert!(
        observe::ipset_names(&node.ns).contains(set),
        "ipset {set} exists"
    );
    assert_eq!(
        observe::ipset_members(&node.ns, set),
        ["10.0.0.2".to_string()].into()
    );

    // State directories are root-only.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(node.state_dir().join(NET))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o077,
        0,
        "state dir must be root-only, mode {mode:o}"
    );
}

#[test]
fn promisc_mode_sets_the_bridge_promiscuous_without_hairpin() {
    let f = Flavor::cni_bridge();
    let node = Node::new("prm-node");
    let pod = node.pod("prm-pod");
    let mut config = f.config(&node, "1.0.0", NET, SUBNET);
    config["promiscMode"] = json!(true);
    node.add(&f.plugin, &config, &pod).success();
    let bridge = observe::link(&node.ns, "cnib0").expect("bridge");
    assert!(
        bridge.promisc,
        "promiscMode: bridge must be PROMISC: {bridge:?}"
    );
    let ports = observe::bridge_ports(&node.ns, "cnib0");
    assert_eq!(ports.len(), 1);
    assert_eq!(
        ports[0].hairpin,
        Some(false),
        "no hairpin asked: {:?}",
        ports[0]
    );
}

/// The result follows the requested version's format: `ips[].version` exists before 1.0.0 only,
/// `cniVersion` echoes the request, `ips[].interface` points at the sandbox interface.
#[test]
fn result_format_follows_each_cni_version() {
    let f = Flavor::cni_bridge();
    for version in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        let node = Node::new("ver-node");
        let pod = node.pod("ver-pod");
        let mut config = f.config(&node, version, NET, SUBNET);
        config["mtu"] = json!(1400);
        let result = node.add(&f.plugin, &config, &pod).success();
        let r = AddResult::parse(&result, "cnib0");
        assert_eq!(result["cniVersion"], version, "{result}");
        assert_eq!(
            r.ip["interface"],
            json!(r.container_index),
            "{version}: {result}"
        );
        assert_eq!(r.address(), "10.0.0.2/24", "{version}: {result}");
        if version.starts_with("0.") {
            assert_eq!(
                r.ip["version"], "4",
                "{version} needs ips[].version: {result}"
            );
        } else {
            assert!(
                r.ip.get("version").is_none(),
                "{version} has no ips[].version: {result}"
            );
        }
        // 1.1.0 may carry interfaces[].mtu; when present it must be the kernel's.
        if let Some(mtu) = r.container.get("mtu") {
            assert_eq!(
                version, "1.1.0",
                "interfaces[].mtu is a 1.1.0 field: {result}"
            );
            assert_eq!(mtu, &json!(1400), "{result}");
        }
        node.del(&f.plugin, &config, &pod).success_empty();
    }
}

#[test]
fn version_lists_every_supported_spec_version() {
    let f = Flavor::cni_bridge();
    let out = node_tests::cni::Invocation::new(&f.plugin, "VERSION")
        .config(&json!({"cniVersion": "1.1.0"}))
        .run()
        .success();
    assert_eq!(out["cniVersion"], "1.1.0", "{out}");
    let versions: Vec<&str> = out["supportedVersions"]
        .as_array()
        .unwrap_or_else(|| panic!("no supportedVersions: {out}"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for v in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        assert!(versions.contains(&v), "{v} missing from {versions:?}");
    }
}

/// The spec: ADD must fail when `CNI_IFNAME` already exists in the netns; nothing changes.
#[test]
fn add_fails_when_the_interface_exists_in_the_pod() {
    let f = Flavor::cni_bridge();
    let node = Node::new("dup-node");
    let first = node.pod("dup-a");
    let config = f.config(&node, "1.0.0", NET, SUBNET);
    node.add(&f.plugin, &config, &first).success();

    let pod = node.pod("dup-b");
    pod.ns.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "other0",
    ]);
    let before = node.state();
    let pod_before = observe::links(&pod.ns);
    let err = node.add(&f.plugin, &config, &pod).error();
    assert!(
        err.text().contains("eth0"),
        "error names the interface: {err:?}"
    );
    assert_eq!(node.state(), before, "node changed by a failed ADD");
    assert_eq!(
        observe::links(&pod.ns),
        pod_before,
        "pod's own eth0 touched"
    );
    assert!(
        observe::addresses_of(&pod.ns, "eth0").is_empty(),
        "no address put on it"
    );
}

/// `"ipam": {}`: layer 2 only, an interface without addresses (as the reference plugin).
#[test]
fn l2_only_without_ipam() {
    let f = Flavor::cni_bridge();
    let node = Node::new("l2-node");
    let pod = node.pod("l2-pod");
    let config = json!({
        "cniVersion": "1.0.0", "name": NET, "type": f.plugin_type, "bridge": "cnib0",
        "stateDir": node.state_dir(), "ipam": {},
    });
    let result = node.add(&f.plugin, &config, &pod).success();
    assert!(
        result["ips"].as_array().is_none_or(Vec::is_empty),
        "no IPs: {result}"
    );
    assert!(observe::link(&pod.ns, "eth0").is_some_and(|l| l.up));
    assert!(observe::addresses_of(&pod.ns, "eth0").is_empty());
    assert_eq!(observe::bridge_ports(&node.ns, "cnib0").len(), 1);
    node.del(&f.plugin, &config, &pod).success_empty();
    assert!(observe::veths(&node.ns).is_empty());
}

#[test]
fn port_isolation_isolates_the_host_port() {
    let f = Flavor::cni_bridge();
    let node = Node::new("iso-node");
    let pod = node.pod("iso-pod");
    let mut config = f.config(&node, "1.0.0", NET, SUBNET);
    config["portIsolation"] = json!(true);
    node.add(&f.plugin, &config, &pod).success();
    let ports = observe::bridge_ports(&node.ns, "cnib0");
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].isolated, Some(true), "{:?}", ports[0]);
}

/// A bridge that already has another IPv4 address: refused (103, nothing changed) unless
/// `forceAddress`, which replaces it with the gateway.
#[test]
fn force_address_replaces_a_foreign_bridge_address() {
    let f = Flavor::cni_bridge();
    let node = Node::new("frc-node");
    node.ns.ip(&["link", "add", "cnib0", "type", "bridge"]);
    node.ns.ip(&["addr", "add", "10.9.9.1/24", "dev", "cnib0"]);
    let pod = node.pod("frc-pod");
    let mut config = f.config(&node, "1.0.0", NET, SUBNET);
    let before = node.state();
    node.add(&f.plugin, &config, &pod).error_code(103);
    assert_eq!(
        node.state().without_ipam_bookkeeping(),
        before.without_ipam_bookkeeping(),
        "refused ADD changed the node"
    );

    config["forceAddress"] = json!(true);
    node.add(&f.plugin, &config, &pod).success();
    assert_eq!(observe::addresses_of(&node.ns, "cnib0"), ["10.0.0.1/24"]);
}

/// The spec makes `CNI_PATH` optional for ADD and DEL; the built-in allocator needs no other
/// plugin, so it works without it.
#[test]
fn add_and_del_without_cni_path_with_builtin_ipam() {
    let f = Flavor::cni_bridge();
    let node = Node::new("nopath-node");
    let pod = node.pod("nopath-pod");
    let config = f.config(&node, "1.0.0", NET, SUBNET);
    node.invoke(&f.plugin, "ADD")
        .unset("CNI_PATH")
        .pod(&pod)
        .ifname("eth0")
        .config(&config)
        .run()
        .success();
    node.invoke(&f.plugin, "DEL")
        .unset("CNI_PATH")
        .pod(&pod)
        .ifname("eth0")
        .config(&config)
        .run()
        .success_empty();
    assert!(node.reservations(NET).is_empty());
}
