//! DEL (idempotent, without netns, without prevResult), rollback of failed ADDs, and parallel
//! ADD/DEL on one network.

use std::collections::BTreeSet;

use node_tests::cni::{with_prev_result, AddResult, Flavor, Node, Pod};
use node_tests::observe;
use serde_json::{json, Value};

const NET: &str = "podnet";
const SUBNET: &str = "10.0.0.0/24";

fn config(f: &Flavor, node: &Node) -> Value {
    let mut c = f.config(node, "1.0.0", NET, SUBNET);
    c["ipMasq"] = json!(true);
    c["hairpinMode"] = json!(true);
    c
}

/// Members of the network's masquerade set (the only `CNIB-` set on the node).
fn set_members(node: &Node) -> BTreeSet<String> {
    let sets: Vec<String> = observe::ipset_names(&node.ns)
        .into_iter()
        .filter(|s| s.starts_with("CNIB-"))
        .collect();
    assert_eq!(sets.len(), 1, "one masquerade set: {sets:?}");
    observe::ipset_members(&node.ns, &sets[0])
}

/// After DEL: no IP reservation, set entry, host veth, pod interface or record is left.
fn assert_released(node: &Node, pod: Option<&Pod>, r: &AddResult) {
    let ip = r.ip_addr().to_string();
    let reservations = node.reservations(NET);
    assert!(
        !reservations.contains_key(&ip),
        "IP still reserved: {reservations:?}"
    );
    assert!(
        !set_members(node).contains(&ip),
        "IP still in the masquerade set"
    );
    let veth = r.host_veth_name();
    assert!(
        observe::link(&node.ns, &veth).is_none(),
        "host veth {veth} left behind"
    );
    if let Some(pod) = pod {
        assert!(
            observe::link(&pod.ns, "eth0").is_none(),
            "pod eth0 left behind"
        );
    }
    let records = node.records(NET);
    assert!(
        records.is_empty(),
        "attachment record left behind: {records:?}"
    );
}

fn add(f: &Flavor, node: &Node, config: &Value, pod: &Pod) -> (Value, AddResult) {
    let result = node.add(&f.plugin, config, pod).success();
    let r = AddResult::parse(&result, "cnib0");
    (result, r)
}

/// A node with one pod ADDed (fields in drop order: the pod's namespace goes before the node's).
struct Added {
    result: Value,
    r: AddResult,
    config: Value,
    pod: Pod,
    node: Node,
    f: Flavor,
}

fn added(tag: &str) -> Added {
    let f = Flavor::cni_bridge();
    let node = Node::new(&format!("{tag}-node"));
    let pod = node.pod(&format!("{tag}-pod"));
    let config = config(&f, &node);
    let (result, r) = add(&f, &node, &config, &pod);
    Added {
        result,
        r,
        config,
        pod,
        node,
        f,
    }
}

impl Added {
    /// DEL with the previous result, as containerd's CRI sends it first.
    fn del_with_prev_result(&self) {
        self.node
            .del(
                &self.f.plugin,
                &with_prev_result(&self.config, &self.result),
                &self.pod,
            )
            .success_empty();
    }

    /// DEL with an empty CNI_NETNS, as containerd sends it once the sandbox is gone.
    fn del_without_netns(&self) {
        self.node
            .invoke(&self.f.plugin, "DEL")
            .container_id(&self.pod.id)
            .netns("")
            .ifname("eth0")
            .config(&self.config)
            .run()
            .success_empty();
    }
}

/// containerd's CRI: DEL with netns and prevResult, then again with neither.
#[test]
fn del_twice_as_cri_sends_it() {
    let a = added("del2");
    a.del_with_prev_result();
    assert_released(&a.node, Some(&a.pod), &a.r);
    a.del_without_netns();
    assert_released(&a.node, Some(&a.pod), &a.r);
}

#[test]
fn del_after_the_netns_is_gone() {
    let mut a = added("delgone");
    a.pod.ns.delete();
    a.del_with_prev_result();
    assert_released(&a.node, None, &a.r);
}

#[test]
fn del_with_empty_netns_first() {
    let a = added("delempty");
    a.del_without_netns();
    assert_released(&a.node, Some(&a.pod), &a.r);
}

#[test]
fn del_without_prev_result() {
    let a = added("delnoprev");
    a.node.del(&a.f.plugin, &a.config, &a.pod).success_empty();
    assert_released(&a.node, Some(&a.pod), &a.r);
}

/// DEL of a container that never was ADDed succeeds and changes nothing.
#[test]
fn del_of_an_unknown_container_is_a_no_op() {
    let a = added("delnone");
    let stranger = a.node.pod("delnone-x");
    let before = a.node.state();
    a.node
        .del(&a.f.plugin, &a.config, &stranger)
        .success_empty();
    assert_eq!(a.node.state(), before);
}

/// Only the DELed attachment goes; its neighbours keep IP, set entry, veth and record.
#[test]
fn del_leaves_other_pods_alone() {
    let f = Flavor::cni_bridge();
    let node = Node::new("delone-node");
    let config = config(&f, &node);
    let a = node.pod("delone-a");
    let b = node.pod("delone-b");
    let (_, ra) = add(&f, &node, &config, &a);
    let (_, rb) = add(&f, &node, &config, &b);
    node.del(&f.plugin, &config, &a).success_empty();
    let ip_b = rb.ip_addr().to_string();
    assert!(node.reservations(NET).contains_key(&ip_b));
    assert_eq!(set_members(&node), [ip_b].into_iter().collect());
    assert!(observe::link(&node.ns, &rb.host_veth_name()).is_some());
    assert!(observe::link(&node.ns, &ra.host_veth_name()).is_none());
    assert_eq!(node.records(NET).len(), 1);
    assert_eq!(observe::addresses_of(&b.ns, "eth0"), [rb.address()]);
}

/// Runs `failing_add` (an ADD of `pod` that must fail) and checks it changed nothing, on the
/// node or in the pod.
fn assert_rolled_back(node: &Node, pod: &Pod, failing_add: impl FnOnce()) {
    let before = node.state();
    let pod_before = observe::links(&pod.ns);
    failing_add();
    assert_eq!(
        node.state(),
        before,
        "failed ADD must roll back on the node"
    );
    assert_eq!(
        observe::links(&pod.ns),
        pod_before,
        "failed ADD must roll back in the pod"
    );
}

/// An exhausted range fails the ADD with nothing left behind (no veth, no record, no entry).
#[test]
fn failed_add_on_exhausted_range_rolls_back() {
    let f = Flavor::cni_bridge();
    let node = Node::new("exh-node");
    let mut config = config(&f, &node);
    config["ipam"]["rangeStart"] = json!("10.0.0.2");
    config["ipam"]["rangeEnd"] = json!("10.0.0.2");
    let a = node.pod("exh-a");
    add(&f, &node, &config, &a);
    let b = node.pod("exh-b");
    assert_rolled_back(&node, &b, || {
        node.add(&f.plugin, &config, &b).error();
    });
}

/// A delegated IPAM plugin that fails (here: not on CNI_PATH) leaves nothing behind.
#[test]
fn failed_delegated_ipam_rolls_back() {
    let f = Flavor::cni_bridge();
    let node = Node::new("ipamfail-node");
    let config = config(&f, &node);
    let a = node.pod("ipamfail-a");
    add(&f, &node, &config, &a);
    let mut broken = config.clone();
    broken["ipam"]["type"] = json!("no-such-ipam-plugin");
    let b = node.pod("ipamfail-b");
    assert_rolled_back(&node, &b, || {
        // Plugin-specific code (docs/CNI-BRIDGE.md): 106, IPAM binary not on CNI_PATH.
        node.add(&f.plugin, &broken, &b).error_code(106);
    });
}

/// 50 ADDs racing on one fresh network (also racing to create the bridge): all succeed with 50
/// distinct IPs; 50 racing DELs then leave a clean node.
#[test]
fn fifty_parallel_adds_then_dels() {
    const N: usize = 50;
    let f = Flavor::cni_bridge();
    let node = Node::new("par-node");
    let config = config(&f, &node);
    let pods: Vec<Pod> = (0..N).map(|_| node.pod("par")).collect();

    let results: Vec<AddResult> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .map(|pod| {
                let (f, node, config) = (&f, &node, &config);
                s.spawn(move || add(f, node, config, pod).1)
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    let ips: BTreeSet<String> = results.iter().map(|r| r.ip_addr().to_string()).collect();
    assert_eq!(ips.len(), N, "IPs handed out twice");
    let reserved: BTreeSet<String> = node.reservations(NET).into_keys().collect();
    assert_eq!(reserved, ips, "reservations = result IPs");
    assert_eq!(set_members(&node), ips, "set = result IPs");
    assert_eq!(observe::bridge_ports(&node.ns, "cnib0").len(), N);
    assert_eq!(node.records(NET).len(), N);
    for (pod, r) in pods.iter().zip(&results) {
        assert_eq!(observe::addresses_of(&pod.ns, "eth0"), [r.address()]);
    }

    std::thread::scope(|s| {
        for pod in &pods {
            let (f, node, config) = (&f, &node, &config);
            s.spawn(move || node.del(&f.plugin, config, pod).success_empty());
        }
    });

    assert!(
        observe::veths(&node.ns).is_empty(),
        "veths left on the node"
    );
    assert!(node.reservations(NET).is_empty(), "reservations left");
    assert!(set_members(&node).is_empty(), "set entries left");
    assert!(node.records(NET).is_empty(), "records left");
    for pod in &pods {
        assert!(observe::link(&pod.ns, "eth0").is_none());
    }
}

/// Node state that must be gone once no pod is attached: veths, reservations, set entries,
/// records (the bridge, the set and the constant rules may stay).
fn assert_no_attachments(node: &Node) {
    assert!(
        observe::veths(&node.ns).is_empty(),
        "veths left: {:?}",
        observe::veths(&node.ns)
    );
    assert!(
        node.reservations(NET).is_empty(),
        "reservations left: {:?}",
        node.reservations(NET)
    );
    let sets: Vec<String> = observe::ipset_names(&node.ns)
        .into_iter()
        .filter(|s| s.starts_with("CNIB-"))
        .collect();
    for set in sets {
        let members = observe::ipset_members(&node.ns, &set);
        assert!(members.is_empty(), "set {set} still holds {members:?}");
    }
    assert!(
        node.records(NET).is_empty(),
        "records left: {:?}",
        node.records(NET)
    );
}

/// ADD killed at various points, then the runtime's DEL (no prevResult, as after a crash):
/// nothing of the attachment survives, wherever the kill landed.
#[test]
fn add_killed_midway_is_cleaned_by_del() {
    let f = Flavor::cni_bridge();
    let node = Node::new("kill-node");
    let config = config(&f, &node);
    for ms in [0u64, 1, 2, 3, 4, 6, 8, 12, 20, 40] {
        let pod = node.pod("kill-pod");
        node.invoke(&f.plugin, "ADD")
            .pod(&pod)
            .ifname("eth0")
            .config(&config)
            .run_killed_after(std::time::Duration::from_millis(ms));
        node.del(&f.plugin, &config, &pod).success_empty();
        assert_no_attachments(&node);
        assert!(
            observe::link(&pod.ns, "eth0").is_none(),
            "pod eth0 left (kill at {ms} ms)"
        );
    }
}

/// ADD killed at various points, then GC with no valid attachment: the node is clean.
#[test]
fn add_killed_midway_is_cleaned_by_gc() {
    let f = Flavor::cni_bridge();
    let node = Node::new("killgc-node");
    let mut config = config(&f, &node);
    config["cniVersion"] = json!("1.1.0");
    let pods: Vec<Pod> = [0u64, 1, 2, 4, 8, 16]
        .iter()
        .map(|&ms| {
            let pod = node.pod("killgc-pod");
            node.invoke(&f.plugin, "ADD")
                .pod(&pod)
                .ifname("eth0")
                .config(&config)
                .run_killed_after(std::time::Duration::from_millis(ms));
            pod
        })
        .collect();
    let mut gc = config.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    node.invoke(&f.plugin, "GC")
        .config(&gc)
        .run()
        .success_empty();
    assert_no_attachments(&node);
    for pod in &pods {
        assert!(
            observe::link(&pod.ns, "eth0").is_none(),
            "pod eth0 left after GC"
        );
    }
}

/// The built-in allocator and host-local share the lock file: ADDs racing through both on one
/// network still never hand out an IP twice.
#[test]
fn builtin_and_host_local_racing_on_one_network_never_share_an_ip() {
    const N: usize = 20;
    let builtin = Flavor::cni_bridge();
    let delegated = Flavor::cni_bridge_delegating();
    let node = Node::new("mix-node");
    let configs = [config(&builtin, &node), config(&delegated, &node)];
    let pods: Vec<Pod> = (0..N).map(|_| node.pod("mix")).collect();
    let ips: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, pod)| {
                let (f, config) = if i % 2 == 0 {
                    (&builtin, &configs[0])
                } else {
                    (&delegated, &configs[1])
                };
                let node = &node;
                s.spawn(move || add(f, node, config, pod).1.ip_addr().to_string())
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let unique: BTreeSet<String> = ips.iter().cloned().collect();
    assert_eq!(unique.len(), N, "IP handed out twice: {ips:?}");
    let reserved: BTreeSet<String> = node.reservations(NET).into_keys().collect();
    assert_eq!(reserved, unique);
}
