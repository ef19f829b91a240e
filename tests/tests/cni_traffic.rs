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

/// The cluster's pod CIDRs, as `--cluster-cidr` (conf/kubernetes/config.yaml) and its IPv6 twin.
const CLUSTER_CIDR: &str = "10.244.0.0/16";
const CLUSTER_CIDR6: &str = "fd00:10:244::/56";
/// The underlay (node LAN) and the address standing for "the internet" on it.
const UNDERLAY: [(&str, &str); 2] = [
    ("192.168.50.1", "fd00:50::1"),
    ("192.168.50.2", "fd00:50::2"),
];
const INTERNET: (&str, &str) = ("192.168.50.100", "fd00:50::100");

/// One node of a [`Cluster`]: its namespace, its pod CIDRs and its underlay addresses.
struct ClusterNode {
    node: Node,
    subnet: (String, String),
    underlay: (IpAddr, IpAddr),
}

/// Two nodes and "the internet" on one underlay (a bridge in a LAN namespace), each node with
/// cni-bridge pods on its own pod CIDR (`10.244.<n>.0/24`, `fd00:10:244:<n>::/64`) and host-gw
/// routes (added here, as svc-proxy's pod routes would) to the other node's pod CIDRs via its
/// underlay address. "The internet" has no route to any pod CIDR: only SNATed traffic gets an
/// answer from it.
struct Cluster {
    nodes: Vec<ClusterNode>,
    internet: Netns,
    _lan: Netns,
}

impl Cluster {
    fn new(tag: &str) -> Cluster {
        let lan = Netns::new(&format!("{tag}-lan"));
        lan.ip(&["link", "add", "lan0", "type", "bridge"]);
        lan.ip(&["link", "set", "lan0", "up"]);
        let attach = |ns: &Netns, port: &str, (v4, v6): (&str, &str)| {
            lan.ip(&[
                "link",
                "add",
                port,
                "type",
                "veth",
                "peer",
                "name",
                "uplink0",
                "netns",
                ns.name(),
            ]);
            lan.ip(&["link", "set", port, "master", "lan0", "up"]);
            ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", "uplink0"]);
            // No duplicate address detection: the address is usable at once.
            ns.ip(&[
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                "uplink0",
                "nodad",
            ]);
            ns.ip(&["link", "set", "uplink0", "up"]);
        };
        let internet = Netns::new(&format!("{tag}-inet"));
        attach(&internet, "inet", INTERNET);
        let nodes: Vec<ClusterNode> = UNDERLAY
            .iter()
            .enumerate()
            .map(|(i, addrs)| {
                let node = Node::new(&format!("{tag}-n{}", i + 1));
                attach(&node.ns, &format!("node{}", i + 1), *addrs);
                ClusterNode {
                    node,
                    subnet: (
                        format!("10.244.{}.0/24", i + 1),
                        format!("fd00:10:244:{}::/64", i + 1),
                    ),
                    underlay: (addrs.0.parse().unwrap(), addrs.1.parse().unwrap()),
                }
            })
            .collect();
        for (i, me) in nodes.iter().enumerate() {
            let other = &nodes[1 - i];
            let ns = &me.node.ns;
            ns.ip(&[
                "route",
                "add",
                &other.subnet.0,
                "via",
                &other.underlay.0.to_string(),
            ]);
            ns.ip(&[
                "-6",
                "route",
                "add",
                &other.subnet.1,
                "via",
                &other.underlay.1.to_string(),
            ]);
        }
        Cluster {
            nodes,
            internet,
            _lan: lan,
        }
    }

    /// cni-bridge with `ipMasq`, dual-stack built-in IPAM on node `i`'s pod CIDRs (IPv4 only
    /// unless `dual`), and `nonMasqueradeCIDRs` when given.
    fn config(&self, i: usize, dual: bool, non_masquerade: Option<&[&str]>) -> Value {
        let f = Flavor::cni_bridge();
        let me = &self.nodes[i];
        let mut c = f.config(&me.node, "1.0.0", NET, &me.subnet.0);
        c["ipMasq"] = json!(true);
        if dual {
            c["ipam"] = json!({
                "type": f.ipam_type,
                "dataDir": me.node.data_dir(),
                "ranges": [[{"subnet": me.subnet.0}], [{"subnet": me.subnet.1}]],
            });
        }
        if let Some(list) = non_masquerade {
            c["nonMasqueradeCIDRs"] = json!(list);
        }
        c
    }

    /// ADDs one pod on every node; returns each pod with its addresses (IPv4, then IPv6 if any).
    fn pods(&self, dual: bool, non_masquerade: Option<&[&str]>) -> Vec<(Pod, Vec<IpAddr>)> {
        let f = Flavor::cni_bridge();
        (0..self.nodes.len())
            .map(|i| {
                let node = &self.nodes[i].node;
                let pod = node.pod(&format!("k8s-p{}", i + 1));
                let result = node
                    .add(&f.plugin, &self.config(i, dual, non_masquerade), &pod)
                    .success();
                let ips: Vec<IpAddr> = result["ips"]
                    .as_array()
                    .unwrap_or_else(|| panic!("no ips: {result}"))
                    .iter()
                    .map(|ip| {
                        let a = ip["address"].as_str().expect("address");
                        a.split('/').next().unwrap().parse().expect("IP")
                    })
                    .collect();
                (pod, ips)
            })
            .collect()
    }
}

/// What a server in `to` on `(to_ip, port)` sees of a connection from `from`.
fn seen(from: &Netns, to: &Netns, to_ip: IpAddr, port: u16) -> IpAddr {
    let srv = WhoServer::start(to, sock(to_ip, port));
    who_am_i(from, srv.addr()).unwrap_or_else(|e| panic!("{} -> {to_ip}:{port}: {e}", from.name()))
}

/// The Kubernetes network model across nodes (issue 12): with the cluster CIDR in
/// `nonMasqueradeCIDRs`, a pod on node 2 sees a connection from a pod on node 1 coming from that
/// pod's own address (and back), while both pods still reach "the internet" SNATed to their
/// node's underlay address. One set and a constant four rules per node: subnet and cluster
/// CIDR exempt, masquerade, jump.
#[test]
fn pods_on_different_nodes_see_each_other_unnated_and_the_internet_snated() {
    let cluster = Cluster::new("k8s");
    let pods = cluster.pods(false, Some(&[CLUSTER_CIDR, CLUSTER_CIDR6]));
    let (p1, p2) = (&pods[0], &pods[1]);
    assert!(p1.1[0].to_string().starts_with("10.244.1."), "{:?}", p1.1);
    assert!(p2.1[0].to_string().starts_with("10.244.2."), "{:?}", p2.1);
    assert_eq!(
        seen(&p1.0.ns, &p2.0.ns, p2.1[0], 8080),
        p1.1[0],
        "pod 1 -> pod 2"
    );
    assert_eq!(
        seen(&p2.0.ns, &p1.0.ns, p1.1[0], 8080),
        p2.1[0],
        "pod 2 -> pod 1"
    );
    let internet: IpAddr = INTERNET.0.parse().unwrap();
    for (i, (pod, _)) in pods.iter().enumerate() {
        assert_eq!(
            seen(&pod.ns, &cluster.internet, internet, 8081 + i as u16),
            cluster.nodes[i].underlay.0,
            "pod {} -> the internet is SNATed to its node",
            i + 1
        );
    }
    for n in &cluster.nodes {
        let sets: Vec<String> = observe::ipset_names(&n.node.ns)
            .into_iter()
            .filter(|s| s.starts_with("CNIB"))
            .collect();
        assert_eq!(sets.len(), 1, "one set, IPv4 only: {sets:?}");
        let rules: Vec<String> = observe::iptables_rules(&n.node.ns)
            .into_iter()
            .filter(|r| r.contains(&sets[0]))
            .collect();
        assert_eq!(rules.len(), 4, "{rules:#?}");
        assert!(
            rules
                .iter()
                .any(|r| r.contains(&format!("-d {CLUSTER_CIDR} ")) && r.ends_with("-j RETURN")),
            "{rules:#?}"
        );
        assert!(
            !rules.iter().any(|r| r.contains(CLUSTER_CIDR6)),
            "the IPv6 entry has no place in the IPv4 chain: {rules:#?}"
        );
    }
}

/// The same cluster without `nonMasqueradeCIDRs`: the masquerade exempts only the local pod
/// subnet, so the pod on node 2 sees node 1's underlay address (what issue 12 measured; the
/// reference plugin does the same). Shows the test above tells the two apart.
#[test]
fn without_non_masquerade_cidrs_pods_on_other_nodes_see_the_node_address() {
    let cluster = Cluster::new("k8s0");
    let pods = cluster.pods(false, None);
    let (p1, p2) = (&pods[0], &pods[1]);
    assert_eq!(
        seen(&p1.0.ns, &p2.0.ns, p2.1[0], 8080),
        cluster.nodes[0].underlay.0,
        "pod 1 -> pod 2 is SNATed to node 1"
    );
    assert_eq!(
        seen(&p2.0.ns, &p1.0.ns, p1.1[0], 8080),
        cluster.nodes[1].underlay.0,
        "pod 2 -> pod 1 is SNATed to node 2"
    );
}

/// Dual stack: the IPv6 cluster CIDR is exempt in the IPv6 chain, so pod → pod across nodes
/// keeps the sender's address in both families, and pod → the internet is SNATed in both.
#[test]
fn dual_stack_pods_on_different_nodes_are_unnated_in_both_families() {
    let cluster = Cluster::new("k8s6");
    let pods = cluster.pods(true, Some(&[CLUSTER_CIDR, CLUSTER_CIDR6]));
    let (p1, p2) = (&pods[0], &pods[1]);
    assert_eq!(p1.1.len(), 2, "{:?}", p1.1);
    assert!(
        p1.1[1].to_string().starts_with("fd00:10:244:1::"),
        "{:?}",
        p1.1
    );
    assert!(
        p2.1[1].to_string().starts_with("fd00:10:244:2::"),
        "{:?}",
        p2.1
    );
    for family in 0..2 {
        assert_eq!(
            seen(&p1.0.ns, &p2.0.ns, p2.1[family], 8080),
            p1.1[family],
            "pod 1 -> pod 2 ({})",
            p2.1[family]
        );
        assert_eq!(
            seen(&p2.0.ns, &p1.0.ns, p1.1[family], 8080),
            p2.1[family],
            "pod 2 -> pod 1 ({})",
            p1.1[family]
        );
    }
    let internet: [IpAddr; 2] = [INTERNET.0.parse().unwrap(), INTERNET.1.parse().unwrap()];
    for (i, (pod, _)) in pods.iter().enumerate() {
        let node = &cluster.nodes[i];
        assert_eq!(
            seen(&pod.ns, &cluster.internet, internet[0], 8081),
            node.underlay.0
        );
        assert_eq!(
            seen(&pod.ns, &cluster.internet, internet[1], 8082),
            node.underlay.1,
            "pod {} -> the internet over IPv6 is SNATed to its node",
            i + 1
        );
        let v6_rules: Vec<String> = observe::iptables_rules(&node.node.ns)
            .into_iter()
            .filter(|r| r.starts_with("ip6tables nat") && r.contains("CNIB6-"))
            .collect();
        assert_eq!(v6_rules.len(), 4, "{v6_rules:#?}");
        assert!(
            v6_rules
                .iter()
                .any(|r| r.contains(&format!("-d {CLUSTER_CIDR6} "))),
            "{v6_rules:#?}"
        );
    }
}
