//! CHECK, STATUS and GC (cniVersion 1.1.0), both IPAM paths for every verb, and switching a
//! node from the reference plugin to cni-bridge by changing `type`.

use std::collections::BTreeSet;

use node_tests::cni::{with_prev_result, AddResult, Flavor, Node, Pod};
use node_tests::observe::{self, Link};
use serde_json::{json, Value};

const NET: &str = "podnet";
const SUBNET: &str = "10.0.0.0/24";

fn config(f: &Flavor, node: &Node) -> Value {
    let mut c = f.config(node, "1.1.0", NET, SUBNET);
    c["ipMasq"] = json!(true);
    c["hairpinMode"] = json!(true);
    c
}

fn add(f: &Flavor, node: &Node, config: &Value, pod: &Pod) -> (Value, AddResult) {
    let result = node.add(&f.plugin, config, pod).success();
    let r = AddResult::parse(&result, "cnib0");
    (result, r)
}

fn masq_set(node: &Node) -> String {
    let sets: Vec<String> = observe::ipset_names(&node.ns)
        .into_iter()
        .filter(|s| s.starts_with("CNIB-"))
        .collect();
    assert_eq!(sets.len(), 1, "one masquerade set: {sets:?}");
    sets[0].clone()
}

fn check(
    f: &Flavor,
    node: &Node,
    config: &Value,
    prev: &Value,
    pod: &Pod,
) -> node_tests::cni::Outcome {
    node.invoke(&f.plugin, "CHECK")
        .pod(pod)
        .ifname("eth0")
        .config(&with_prev_result(config, prev))
        .run()
}

fn assert_check(f: &Flavor) {
    let node = Node::new("chk-node");
    let pod = node.pod("chk-pod");
    let config = config(f, &node);
    let (result, r) = add(f, &node, &config, &pod);
    check(f, &node, &config, &result, &pod).success_empty();

    // Break the pod's state: its address disappears.
    pod.ns.ip(&["addr", "del", &r.address(), "dev", "eth0"]);
    let out = check(f, &node, &config, &result, &pod);
    // Plugin-specific code (docs/CNI-BRIDGE.md): 105, kernel state differs.
    let err = out.error_code(105);
    assert!(
        err.text().contains(&r.ip_addr().to_string()),
        "names the address: {err:?}"
    );

    // CHECK without prevResult is invalid config (7).
    node.invoke(&f.plugin, "CHECK")
        .pod(&pod)
        .ifname("eth0")
        .config(&config)
        .run()
        .error_code(7);
}

#[test]
fn check_passes_on_good_state_and_fails_on_broken() {
    assert_check(&Flavor::cni_bridge());
}

#[test]
fn check_with_delegated_ipam() {
    assert_check(&Flavor::cni_bridge_delegating());
}

/// CHECK also notices a host veth taken off the bridge.
#[test]
fn check_fails_when_host_veth_leaves_the_bridge() {
    let f = Flavor::cni_bridge();
    let node = Node::new("chkbr-node");
    let pod = node.pod("chkbr-pod");
    let config = config(&f, &node);
    let (result, r) = add(&f, &node, &config, &pod);
    node.ns
        .ip(&["link", "set", &r.host_veth_name(), "nomaster"]);
    check(&f, &node, &config, &result, &pod).error_code(105);
}

fn status(f: &Flavor, node: &Node, config: &Value) -> node_tests::cni::Outcome {
    node.invoke(&f.plugin, "STATUS").config(config).run()
}

#[test]
fn status_ready_then_exhausted_is_50() {
    let f = Flavor::cni_bridge();
    let node = Node::new("st-node");
    let mut config = config(&f, &node);
    config["ipam"]["rangeStart"] = json!("10.0.0.2");
    config["ipam"]["rangeEnd"] = json!("10.0.0.2");
    status(&f, &node, &config).success_empty();
    let before = node.state();
    status(&f, &node, &config).success_empty();
    assert_eq!(node.state(), before, "STATUS changes nothing");

    let pod = node.pod("st-pod");
    add(&f, &node, &config, &pod);
    status(&f, &node, &config).error_code(50);
    node.del(&f.plugin, &config, &pod).success_empty();
    status(&f, &node, &config).success_empty();
}

#[test]
fn status_with_delegated_ipam() {
    let f = Flavor::cni_bridge_delegating();
    let node = Node::new("std-node");
    let config = config(&f, &node);
    status(&f, &node, &config).success_empty();
}

/// Everything one attachment holds on the node.
struct Held {
    ip: String,
    veth: String,
    record: String,
}

fn held(pod: &Pod, r: &AddResult) -> Held {
    Held {
        ip: r.ip_addr().to_string(),
        veth: r.host_veth_name(),
        record: format!("{}.eth0.json", pod.id),
    }
}

fn assert_holds(node: &Node, h: &Held, yes: bool) {
    let set = masq_set(node);
    assert_eq!(
        node.reservations(NET).contains_key(&h.ip),
        yes,
        "reservation {}",
        h.ip
    );
    assert_eq!(
        observe::ipset_members(&node.ns, &set).contains(&h.ip),
        yes,
        "set {}",
        h.ip
    );
    assert_eq!(
        observe::link(&node.ns, &h.veth).is_some(),
        yes,
        "veth {}",
        h.veth
    );
    assert_eq!(
        node.records(NET).contains_key(&h.record),
        yes,
        "record {}",
        h.record
    );
}

fn assert_gc(f: &Flavor, key: &str) {
    let node = Node::new("gc-node");
    let config = config(f, &node);
    let pods: Vec<Pod> = (0..3).map(|_| node.pod("gc-pod")).collect();
    let held: Vec<Held> = pods
        .iter()
        .map(|p| held(p, &add(f, &node, &config, p).1))
        .collect();
    let mut gc = config.clone();
    gc[key] = json!([{"containerID": pods[0].id, "ifname": "eth0"}]);
    node.invoke(&f.plugin, "GC")
        .config(&gc)
        .run()
        .success_empty();
    assert_holds(&node, &held[0], true);
    assert_holds(&node, &held[1], false);
    assert_holds(&node, &held[2], false);
    assert!(
        observe::link(&pods[1].ns, "eth0").is_none(),
        "GCed pod interface"
    );
    assert_eq!(
        observe::addresses_of(&pods[0].ns, "eth0").len(),
        1,
        "kept pod untouched"
    );

    // GC again is a no-op.
    let before = node.state();
    node.invoke(&f.plugin, "GC")
        .config(&gc)
        .run()
        .success_empty();
    assert_eq!(node.state(), before);
}

#[test]
fn gc_releases_attachments_not_in_valid_attachments() {
    assert_gc(&Flavor::cni_bridge(), "cni.dev/valid-attachments");
}

#[test]
fn gc_accepts_the_older_attachments_key() {
    assert_gc(&Flavor::cni_bridge(), "cni.dev/attachments");
}

#[test]
fn gc_with_delegated_ipam() {
    assert_gc(
        &Flavor::cni_bridge_delegating(),
        "cni.dev/valid-attachments",
    );
}

/// Every verb through the delegated `host-local`: its files hold the reservation, DEL releases it.
#[test]
fn delegated_host_local_add_del() {
    let f = Flavor::cni_bridge_delegating();
    let node = Node::new("dlg-node");
    let pod = node.pod("dlg-pod");
    let config = config(&f, &node);
    let (result, r) = add(&f, &node, &config, &pod);
    assert_eq!(r.address(), "10.0.0.2/24");
    let res = node.reservations(NET);
    assert_eq!(
        res.get("10.0.0.2").map(String::as_str),
        Some(format!("{}\r\neth0", pod.id).as_str())
    );
    assert!(node
        .data_dir()
        .join(NET)
        .join("last_reserved_ip.0")
        .is_file());
    assert_eq!(observe::addresses_of(&pod.ns, "eth0"), ["10.0.0.2/24"]);
    node.del(&f.plugin, &with_prev_result(&config, &result), &pod)
        .success_empty();
    assert!(node.reservations(NET).is_empty());
    assert!(node.records(NET).is_empty());
}

/// One allocation sequence (plain, `args.cni.ips`, `CNI_ARGS IP=`, `runtimeConfig.ips`,
/// release and reuse, a changed `rangeStart`) on a fresh node; returns the IPs handed out.
fn allocation_sequence(f: &Flavor) -> Vec<String> {
    let node = Node::new("seq-node");
    let config = config(f, &node);
    let step = |config: &Value, args: &str| {
        let pod = node.pod("seq-pod");
        let inv = node
            .invoke(&f.plugin, "ADD")
            .pod(&pod)
            .ifname("eth0")
            .args(args);
        let r = AddResult::parse(&inv.config(config).run().success(), "cnib0");
        (r.address(), pod)
    };
    let mut args_ips = config.clone();
    args_ips["args"] = json!({"cni": {"ips": ["10.0.0.77"]}});
    let mut runtime_ips = config.clone();
    runtime_ips["runtimeConfig"] = json!({"ips": ["10.0.0.40/24"]});
    let mut narrowed = config.clone();
    narrowed["ipam"]["rangeStart"] = json!("10.0.0.100");

    let (first, first_pod) = step(&config, "");
    let mut ips = vec![first];
    let mut pods = vec![first_pod];
    for (c, args) in [
        (&args_ips, ""),
        (&config, "IgnoreUnknown=1;IP=10.0.0.78"),
        (&runtime_ips, ""),
        (&config, ""),
    ] {
        let (ip, pod) = step(c, args);
        ips.push(ip);
        pods.push(pod);
    }
    node.del(&f.plugin, &config, &pods[0]).success_empty();
    for c in [&narrowed, &config] {
        let (ip, pod) = step(c, "");
        ips.push(ip);
        pods.push(pod);
    }

    // A requested IP already taken is refused, with nothing left behind.
    let before = node.state();
    let pod = node.pod("seq-taken");
    node.add(&f.plugin, &args_ips, &pod).error();
    assert_eq!(node.state(), before, "{}", f.ipam_type);
    ips
}

/// The built-in allocator hands out exactly what host-local hands out, step by step.
#[test]
fn builtin_ipam_allocates_like_host_local() {
    let builtin = allocation_sequence(&Flavor::cni_bridge());
    let host_local = allocation_sequence(&Flavor::cni_bridge_delegating());
    assert_eq!(builtin, host_local);
    assert_eq!(
        &builtin[..4],
        [
            "10.0.0.2/24",
            "10.0.0.77/24",
            "10.0.0.78/24",
            "10.0.0.40/24"
        ]
    );
}

/// Link shape compared across plugins: everything but names, indexes and MACs (random per ADD).
fn shape(
    l: &Link,
) -> (
    Option<String>,
    Option<String>,
    u64,
    bool,
    bool,
    Option<bool>,
) {
    (
        l.kind.clone(),
        l.master.clone(),
        l.mtu,
        l.up,
        l.promisc,
        l.hairpin,
    )
}

/// Kernel state both plugins must agree on after one ADD of `pod` on `node`.
fn kernel_view(node: &Node, pod: &Pod) -> Vec<String> {
    let mut v = Vec::new();
    for l in observe::links(&node.ns) {
        let name = if l.kind.as_deref() == Some("veth") {
            "<veth>".into()
        } else {
            l.name.clone()
        };
        v.push(format!("node link {name} {:?}", shape(&l)));
    }
    for (dev, a) in observe::addresses(&node.ns) {
        if !dev.starts_with("veth") {
            v.push(format!("node addr {dev} {a}"));
        }
    }
    for r in observe::routes(&node.ns) {
        v.push(format!("node route {r:?}"));
    }
    v.push(format!(
        "node ip_forward {}",
        observe::sysctl(&node.ns, "net/ipv4/ip_forward")
    ));
    for l in observe::links(&pod.ns) {
        v.push(format!("pod link {} {:?}", l.name, shape(&l)));
    }
    for (dev, a) in observe::addresses(&pod.ns) {
        v.push(format!("pod addr {dev} {a}"));
    }
    for r in observe::routes(&pod.ns) {
        v.push(format!("pod route {r:?}"));
    }
    v.sort();
    v
}

/// Changing `type` from the reference `bridge` to `cni-bridge` (and host-local to the built-in
/// allocator) on a live node: same kernel state for the same options, the built-in allocator
/// sees host-local's reservations (no duplicate IP), and cni-bridge can DEL the old pod.
#[test]
fn switching_from_reference_bridge_keeps_state_and_reservations() {
    let reference = Flavor::reference();
    let ours = Flavor::cni_bridge();

    // Same options on two fresh nodes, one pod each.
    let node_ref = Node::new("sw-ref");
    let node_new = Node::new("sw-new");
    let conf_for = |f: &Flavor, node: &Node| {
        let mut c = config(f, node);
        c["mtu"] = json!(1400);
        c["cniVersion"] = json!("1.0.0");
        c
    };
    let pod_ref = node_ref.pod("sw-rp");
    let pod_new = node_new.pod("sw-np");
    let (_, r_ref) = add(
        &reference,
        &node_ref,
        &conf_for(&reference, &node_ref),
        &pod_ref,
    );
    add(&ours, &node_new, &conf_for(&ours, &node_new), &pod_new);
    assert_eq!(
        kernel_view(&node_new, &pod_new),
        kernel_view(&node_ref, &pod_ref)
    );

    // On the reference node, switch `type` and `ipam.type` only; reuse its dataDir.
    let switched = conf_for(&ours, &node_ref);
    let pod2 = node_ref.pod("sw-p2");
    let (_, r2) = add(&ours, &node_ref, &switched, &pod2);
    assert_ne!(
        r2.ip_addr(),
        r_ref.ip_addr(),
        "duplicate IP after switching"
    );
    let reserved: BTreeSet<String> = node_ref.reservations(NET).into_keys().collect();
    let want: BTreeSet<String> = [r_ref.ip_addr().to_string(), r2.ip_addr().to_string()].into();
    assert_eq!(reserved, want);
    assert_eq!(
        observe::bridge_ports(&node_ref.ns, "cnib0").len(),
        2,
        "cni-bridge reuses the reference plugin's bridge"
    );

    // cni-bridge DEL of the pod the reference plugin added releases its IP and interface.
    node_ref
        .del(&ours.plugin, &switched, &pod_ref)
        .success_empty();
    assert!(!node_ref
        .reservations(NET)
        .contains_key(&r_ref.ip_addr().to_string()));
    assert!(observe::link(&pod_ref.ns, "eth0").is_none());
}

/// Verbs newer than the config's `cniVersion` are refused with code 1 (CHECK came with 0.4.0,
/// STATUS and GC with 1.1.0); GC without its attachment list is invalid config (7).
#[test]
fn verbs_need_their_spec_version() {
    let f = Flavor::cni_bridge();
    let node = Node::new("vv-node");
    let pod = node.pod("vv-pod");
    let config = config(&f, &node);
    let (result, _) = add(&f, &node, &config, &pod);
    let before = node.state();

    let mut old = config.clone();
    old["cniVersion"] = json!("1.0.0");
    status(&f, &node, &old).error_code(1);
    let mut gc_old = old.clone();
    gc_old["cni.dev/valid-attachments"] = json!([]);
    node.invoke(&f.plugin, "GC")
        .config(&gc_old)
        .run()
        .error_code(1);
    let mut ancient = with_prev_result(&config, &result);
    ancient["cniVersion"] = json!("0.3.1");
    node.invoke(&f.plugin, "CHECK")
        .pod(&pod)
        .ifname("eth0")
        .config(&ancient)
        .run()
        .error_code(1);
    node.invoke(&f.plugin, "GC")
        .config(&config)
        .run()
        .error_code(7);
    assert_eq!(node.state(), before, "refused verbs changed the node");
}

/// STATUS answers 50 when the bridge name is taken by a link that is not a bridge.
#[test]
fn status_is_50_when_the_bridge_name_is_taken() {
    let f = Flavor::cni_bridge();
    let node = Node::new("stbr-node");
    node.ns.ip(&[
        "link", "add", "cnib0", "type", "veth", "peer", "name", "cnib0p",
    ]);
    status(&f, &node, &config(&f, &node)).error_code(50);
}

/// After switching from the reference plugin, GC also releases host-local's reservations of
/// attachments the runtime no longer knows (the IP leak of a missed DEL), and keeps valid ones.
#[test]
fn gc_after_switching_releases_stale_host_local_reservations() {
    let reference = Flavor::reference();
    let ours = Flavor::cni_bridge();
    let node = Node::new("gcsw-node");
    let mut old = config(&reference, &node);
    old["cniVersion"] = json!("1.0.0");
    let stale = node.pod("gcsw-stale");
    let kept = node.pod("gcsw-kept");
    let (_, r_stale) = add(&reference, &node, &old, &stale);
    let (_, r_kept) = add(&reference, &node, &old, &kept);

    let mut gc = config(&ours, &node);
    gc["cni.dev/valid-attachments"] = json!([{"containerID": kept.id, "ifname": "eth0"}]);
    node.invoke(&ours.plugin, "GC")
        .config(&gc)
        .run()
        .success_empty();
    let reserved: BTreeSet<String> = node.reservations(NET).into_keys().collect();
    assert_eq!(reserved, [r_kept.ip_addr().to_string()].into());
    assert!(!reserved.contains(&r_stale.ip_addr().to_string()));
}
