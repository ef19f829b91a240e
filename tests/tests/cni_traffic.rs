//! Traffic through what ADD built: pod↔pod and node↔pod unNATed, pod→outside SNATed to the node
//! (as a server in a third "outside" namespace sees it); the masquerade ipset and its constant
//! rule count.

use std::net::{IpAddr, SocketAddr};

use node_tests::cni::{AddResult, Flavor, Node, Pod};
use node_tests::netns::Netns;
use node_tests::observe;
use node_tests::traffic::{who_am_i, WhoServer};
use serde_json::{json, Value};

const NET: &str = "podnet";
const SUBNET: &str = "10.0.0.0/24";
const NODE_UPLINK: &str = "192.168.200.1";
const OUTSIDE: &str = "192.168.200.2";

fn masq_config(f: &Flavor, node: &Node) -> Value {
    let mut c = f.config(node, "1.0.0", NET, SUBNET);
    c["ipMasq"] = json!(true);
    c["hairpinMode"] = json!(true);
    c
}

fn sock(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

fn add(f: &Flavor, node: &Node, config: &Value, pod: &Pod) -> IpAddr {
    AddResult::parse(&node.add(&f.plugin, config, pod).success(), "cnib0").ip_addr()
}

fn assert_traffic(f: &Flavor) {
    let node = Node::new("trf-node");
    // The environment: an "outside" host on the node's uplink, with no route to the pod subnet,
    // so only SNATed pod traffic can get an answer.
    let outside = Netns::new("trf-out");
    node.ns.veth_to(
        ("uplink0", &format!("{NODE_UPLINK}/24")),
        &outside,
        ("eth0", &format!("{OUTSIDE}/24")),
    );
    let config = masq_config(f, &node);
    let a = node.pod("trf-a");
    let b = node.pod("trf-b");
    let ip_a = add(f, &node, &config, &a);
    let ip_b = add(f, &node, &config, &b);
    let gateway: IpAddr = "10.0.0.1".parse().unwrap();

    let srv_a = WhoServer::start(&a.ns, sock(ip_a, 8080));
    let srv_b = WhoServer::start(&b.ns, sock(ip_b, 8080));
    let srv_node = WhoServer::start(&node.ns, sock(gateway, 8081));
    let srv_out = WhoServer::start(&outside, sock(OUTSIDE.parse().unwrap(), 8082));

    // pod ↔ pod, not SNATed.
    assert_eq!(who_am_i(&b.ns, srv_a.addr()).expect("pod b -> pod a"), ip_b);
    assert_eq!(who_am_i(&a.ns, srv_b.addr()).expect("pod a -> pod b"), ip_a);
    // node → pod, from the node's address on the bridge.
    assert_eq!(
        who_am_i(&node.ns, srv_a.addr()).expect("node -> pod a"),
        gateway
    );
    // pod → node, not SNATed.
    assert_eq!(
        who_am_i(&a.ns, srv_node.addr()).expect("pod a -> node"),
        ip_a
    );
    // pod → outside, SNATed to the node's uplink address.
    let nat: IpAddr = NODE_UPLINK.parse().unwrap();
    assert_eq!(
        who_am_i(&a.ns, srv_out.addr()).expect("pod a -> outside"),
        nat
    );
    assert_eq!(
        who_am_i(&b.ns, srv_out.addr()).expect("pod b -> outside"),
        nat
    );
}

#[test]
fn traffic_pod_pod_node_and_snat_to_outside() {
    assert_traffic(&Flavor::cni_bridge());
}

#[test]
fn traffic_with_delegated_host_local_ipam() {
    assert_traffic(&Flavor::cni_bridge_delegating());
}

/// The reference plugin passes the same checks: the harness measures what it claims to.
#[test]
fn traffic_reference_plugin_baseline() {
    assert_traffic(&Flavor::reference());
}

/// Pods are set members, one per pod; the rules referencing the set do not grow with pods.
#[test]
fn masquerade_set_tracks_pods_with_a_constant_rule_count() {
    let f = Flavor::cni_bridge();
    let node = Node::new("set-node");
    let config = masq_config(&f, &node);
    let pods: Vec<Pod> = (0..6).map(|_| node.pod("set-pod")).collect();
    let mut ips = Vec::new();

    ips.push(add(&f, &node, &config, &pods[0]).to_string());
    let rules_one = observe::iptables_rules(&node.ns);
    let sets: Vec<String> = observe::ipset_names(&node.ns)
        .into_iter()
        .filter(|s| s.starts_with("CNIB-"))
        .collect();
    assert_eq!(sets.len(), 1, "one masquerade set per network: {sets:?}");
    let set = &sets[0];
    assert_eq!(observe::ipset_type(&node.ns, set), "hash:ip");
    assert!(
        rules_one
            .iter()
            .any(|r| r.contains(&format!("--match-set {set} src"))),
        "a rule matches the set: {rules_one:#?}"
    );
    assert!(
        rules_one.iter().any(|r| r.contains("MASQUERADE")),
        "{rules_one:#?}"
    );

    for pod in &pods[1..] {
        ips.push(add(&f, &node, &config, pod).to_string());
    }
    let members = observe::ipset_members(&node.ns, set);
    assert_eq!(members, ips.iter().cloned().collect(), "set = pod IPs");
    assert_eq!(
        observe::iptables_rules(&node.ns),
        rules_one,
        "rules must not change with the pod count"
    );

    for pod in &pods[..2] {
        node.del(&f.plugin, &config, pod).success();
    }
    let members = observe::ipset_members(&node.ns, set);
    assert_eq!(
        members,
        ips[2..].iter().cloned().collect(),
        "DEL removes set entries"
    );
    assert_eq!(
        observe::iptables_rules(&node.ns),
        rules_one,
        "DEL leaves the rules"
    );
}

/// Two networks on one node get separate sets, and each keeps its own constant rules.
#[test]
fn each_network_has_its_own_set() {
    let f = Flavor::cni_bridge();
    let node = Node::new("two-node");
    let one = masq_config(&f, &node);
    let mut two = f.config(&node, "1.0.0", "othernet", "10.1.0.0/24");
    two["bridge"] = json!("cnib1");
    two["ipMasq"] = json!(true);
    let a = node.pod("two-a");
    let b = node.pod("two-b");
    let ip_a = add(&f, &node, &one, &a);
    let ip_b = AddResult::parse(&node.add(&f.plugin, &two, &b).success(), "cnib1").ip_addr();
    let sets: Vec<String> = observe::ipset_names(&node.ns)
        .into_iter()
        .filter(|s| s.starts_with("CNIB-"))
        .collect();
    assert_eq!(sets.len(), 2, "{sets:?}");
    let mut all: Vec<_> = sets
        .iter()
        .map(|s| observe::ipset_members(&node.ns, s))
        .collect();
    all.sort();
    let mut want = vec![
        [ip_a.to_string()].into_iter().collect(),
        [ip_b.to_string()].into_iter().collect(),
    ];
    want.sort();
    assert_eq!(all, want);
}

/// Dual stack with the built-in allocator: one address per range set, both gateways on the
/// bridge, IPv6 pod↔pod traffic, one masquerade set per family, DEL releasing both.
#[test]
fn dual_stack_pods_get_both_families() {
    let f = Flavor::cni_bridge();
    let node = Node::new("ds-node");
    let mut config = masq_config(&f, &node);
    config["ipam"] = json!({
        "type": f.ipam_type,
        "dataDir": node.data_dir(),
        "ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "fd00:10::/64"}]],
    });
    let a = node.pod("ds-a");
    let b = node.pod("ds-b");
    let ra = node.add(&f.plugin, &config, &a).success();
    node.add(&f.plugin, &config, &b).success();

    let ips: Vec<&str> = ra["ips"]
        .as_array()
        .unwrap_or_else(|| panic!("no ips: {ra}"))
        .iter()
        .filter_map(|ip| ip["address"].as_str())
        .collect();
    assert_eq!(ips, ["10.0.0.2/24", "fd00:10::2/64"], "{ra}");
    let bridge = observe::addresses_of(&node.ns, "cnib0");
    assert!(bridge.contains(&"10.0.0.1/24".to_string()), "{bridge:?}");
    assert!(bridge.contains(&"fd00:10::1/64".to_string()), "{bridge:?}");
    assert_eq!(
        observe::addresses_of(&a.ns, "eth0"),
        ["10.0.0.2/24", "fd00:10::2/64"]
    );
    let v6_default = observe::routes6(&a.ns)
        .into_iter()
        .any(|r| r.dst == "default" && r.gateway.as_deref() == Some("fd00:10::1"));
    assert!(v6_default, "IPv6 default route via the gateway");

    let srv = WhoServer::start(&a.ns, sock("fd00:10::2".parse().unwrap(), 8080));
    let seen = who_am_i(&b.ns, srv.addr()).expect("pod b -> pod a over IPv6");
    assert_eq!(seen, "fd00:10::3".parse::<IpAddr>().unwrap());

    let sets = observe::ipset_names(&node.ns);
    let v6: Vec<&String> = sets.iter().filter(|s| s.starts_with("CNIB6-")).collect();
    assert_eq!(v6.len(), 1, "{sets:?}");
    let members = observe::ipset_members(&node.ns, v6[0]);
    assert_eq!(
        members,
        ["fd00:10::2", "fd00:10::3"].map(String::from).into()
    );

    node.del(&f.plugin, &config, &a).success_empty();
    let left: Vec<String> = node.reservations(NET).into_keys().collect();
    assert_eq!(
        left,
        ["10.0.0.3", "fd00:10::3"],
        "DEL releases both families"
    );
    assert_eq!(
        observe::ipset_members(&node.ns, v6[0]),
        ["fd00:10::3".to_string()].into()
    );
}
