//! Adversarial inputs (issue 11): masquerade rules that heal, names that do not alias or
//! collide, nothing deleted that is not the attachment's, the node's own namespace refused,
//! planted files never followed or waited on, a failed ADD that leaves the allocator as it was,
//! private files under any umask, bounded stdin, and ADD/DEL/GC races that never leave a live
//! address unreserved or a `ready` attachment torn down.

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use node_tests::cni::{with_prev_result, AddResult, Flavor, Node, Outcome, Pod};
use node_tests::fs::TempDir;
use node_tests::observe;
use serde_json::{json, Value};

const NET: &str = "podnet";
const SUBNET: &str = "10.0.0.0/24";
/// Long enough for any verb on this machine; a plugin still running then is hung.
const HANG: Duration = Duration::from_secs(20);

fn config(f: &Flavor, node: &Node, net: &str, subnet: &str, bridge: &str) -> Value {
    let mut c = f.config(node, "1.1.0", net, subnet);
    c["ipMasq"] = json!(true);
    c["hairpinMode"] = json!(true);
    c["bridge"] = json!(bridge);
    c
}

/// One attachment: its pod namespace, container ID and interface.
struct Att<'a> {
    pod: &'a Pod,
    id: &'a str,
    ifname: &'a str,
}

fn run(node: &Node, f: &Flavor, verb: &str, config: &Value, a: &Att<'_>) -> Outcome {
    node.invoke(&f.plugin, verb)
        .container_id(a.id)
        .netns(&a.pod.ns.path().to_string_lossy())
        .ifname(a.ifname)
        .config(config)
        .run()
}

fn add(node: &Node, f: &Flavor, config: &Value, a: &Att<'_>) -> Value {
    run(node, f, "ADD", config, a).success()
}

fn check(node: &Node, f: &Flavor, config: &Value, a: &Att<'_>, result: &Value) {
    run(node, f, "CHECK", &with_prev_result(config, result), a).success_empty();
}

/// DEL without a namespace (as a runtime sends it once the sandbox is gone).
fn del_without_netns(node: &Node, f: &Flavor, config: &Value, id: &str, ifname: &str) -> Outcome {
    node.invoke(&f.plugin, "DEL")
        .container_id(id)
        .netns("")
        .ifname(ifname)
        .config(config)
        .run()
}

fn gc(node: &Node, f: &Flavor, config: &Value, valid: &[(&str, &str)]) -> Outcome {
    let mut c = config.clone();
    c["cni.dev/valid-attachments"] = valid
        .iter()
        .map(|(id, ifname)| json!({"containerID": id, "ifname": ifname}))
        .collect();
    node.invoke(&f.plugin, "GC").config(&c).run()
}

/// The masquerade sets of a family on the node (`CNIB-` / `CNIB6-`).
fn masq_sets(node: &Node) -> BTreeSet<String> {
    observe::ipset_names(&node.ns)
        .into_iter()
        .filter(|s| s.starts_with("CNIB-"))
        .collect()
}

/// nat rules (iptables-save lines) that name `set`.
fn rules_naming(node: &Node, set: &str) -> Vec<String> {
    observe::iptables_rules(&node.ns)
        .into_iter()
        .filter(|r| r.contains(set))
        .collect()
}

fn host_veth(result: &Value, bridge: &str) -> String {
    AddResult::parse(result, bridge).host_veth_name()
}

fn pod_ip(result: &Value, bridge: &str) -> String {
    AddResult::parse(result, bridge).ip_addr().to_string()
}

/// Class 1: an ADD that created the set but could not write the rules (no iptables on its
/// PATH) left a set without rules that no later ADD repaired.
#[test]
fn masquerade_rules_missing_after_a_failed_add_are_written_by_the_next() {
    let f = Flavor::cni_bridge();
    let node = Node::new("heal-node");
    let c = config(&f, &node, NET, SUBNET, "cnib0");
    let (p1, p2) = (node.pod("heal-p1"), node.pod("heal-p2"));
    node.invoke(&f.plugin, "ADD")
        .pod(&p1)
        .ifname("eth0")
        .config(&c)
        .env("PATH", "/nonexistent")
        .run()
        .error_code(107);
    let sets = masq_sets(&node);
    assert_eq!(sets.len(), 1, "{sets:?}");
    let set = sets.iter().next().unwrap().clone();
    assert_eq!(rules_naming(&node, &set), Vec::<String>::new());

    let a2 = Att {
        pod: &p2,
        id: &p2.id,
        ifname: "eth0",
    };
    let r2 = add(&node, &f, &c, &a2);
    assert_eq!(
        rules_naming(&node, &set).len(),
        3,
        "{:?}",
        observe::iptables_rules(&node.ns)
    );
    check(&node, &f, &c, &a2, &r2);
}

/// Class 1, variants: rules deleted by hand (the chain flushed; the jump deleted) are back
/// after the next ADD, and CHECK of the earlier pod passes again.
#[test]
fn masquerade_rules_deleted_by_hand_are_back_after_the_next_add() {
    let f = Flavor::cni_bridge();
    let node = Node::new("heal2-node");
    let c = config(&f, &node, NET, SUBNET, "cnib0");
    let pods: Vec<Pod> = (0..3).map(|i| node.pod(&format!("heal2-p{i}"))).collect();
    let a0 = Att {
        pod: &pods[0],
        id: &pods[0].id,
        ifname: "eth0",
    };
    let r0 = add(&node, &f, &c, &a0);
    let set = masq_sets(&node).into_iter().next().unwrap();
    let full = rules_naming(&node, &set);
    assert_eq!(full.len(), 3, "{full:?}");
    let damage: [&[&str]; 2] = [
        &["-t", "nat", "-F", &set],
        &["-t", "nat", "-D", "POSTROUTING", "1"],
    ];
    for (i, cmd) in damage.iter().enumerate() {
        node.ns.exec_ok("iptables", cmd);
        assert!(rules_naming(&node, &set).len() < 3);
        let p = &pods[i + 1];
        add(
            &node,
            &f,
            &c,
            &Att {
                pod: p,
                id: &p.id,
                ifname: "eth0",
            },
        );
        assert_eq!(rules_naming(&node, &set), full, "after `iptables {cmd:?}`");
        check(&node, &f, &c, &a0, &r0);
    }
}

/// Class 2: attachments whose container IDs and interface names split the same dotted string
/// differently each keep their own record; a DEL of one leaves the others whole.
#[test]
fn dotted_ids_and_interface_names_never_share_a_record() {
    let f = Flavor::cni_bridge();
    let shapes: [&[(&str, &str)]; 2] = [
        &[("web.x", "eth0"), ("web", "x.eth0")],
        &[("a.b.c", "d"), ("a.b", "c.d"), ("a", "b.c.d")],
    ];
    for (n, shape) in shapes.iter().enumerate() {
        let node = Node::new(&format!("alias{n}-node"));
        let c = config(&f, &node, NET, SUBNET, "cnib0");
        let pods: Vec<Pod> = shape
            .iter()
            .map(|_| node.pod(&format!("alias{n}-p")))
            .collect();
        let atts: Vec<Att> = shape
            .iter()
            .zip(&pods)
            .map(|((id, ifname), pod)| Att { pod, id, ifname })
            .collect();
        let results: Vec<Value> = atts.iter().map(|a| add(&node, &f, &c, a)).collect();
        let records = node.records(NET);
        assert_eq!(records.len(), shape.len(), "{records:?}");
        for a in &atts {
            assert!(
                records
                    .values()
                    .any(|r| r["containerId"] == a.id && r["ifname"] == a.ifname),
                "no record of {}/{}: {records:?}",
                a.id,
                a.ifname
            );
        }
        del_without_netns(&node, &f, &c, atts[0].id, atts[0].ifname).success_empty();
        assert!(observe::link(&node.ns, &host_veth(&results[0], "cnib0")).is_none());
        for (a, r) in atts.iter().zip(&results).skip(1) {
            assert!(
                observe::link(&node.ns, &host_veth(r, "cnib0")).is_some(),
                "DEL of {}/{} deleted {}/{}'s veth",
                atts[0].id,
                atts[0].ifname,
                a.id,
                a.ifname
            );
            assert!(node.reservations(NET).contains_key(&pod_ip(r, "cnib0")));
            check(&node, &f, &c, a, r);
        }
        assert_eq!(node.records(NET).len(), shape.len() - 1);
    }
}

/// Container IDs whose derived host veth names collide across two networks (the 32-bit hash:
/// found by search): (network, ID) pairs, the first ADDed first.
type NetworkAndId = (&'static str, &'static str);
const COLLIDING_VETHS: [(NetworkAndId, NetworkAndId); 2] = [
    (("netb", "ctr-2303"), ("neta", "ctr-62200")),
    (("neta", "ctr-718"), ("netb", "ctr-73019")),
];

fn net_config(f: &Flavor, node: &Node, net: &str) -> Value {
    let (subnet, bridge) = if net == "neta" {
        ("10.1.0.0/24", "cnia0")
    } else {
        ("10.2.0.0/24", "cnibb0")
    };
    config(f, node, net, subnet, bridge)
}

fn bridge_of(net: &str) -> &'static str {
    if net == "neta" {
        "cnia0"
    } else {
        "cnibb0"
    }
}

/// Class 3: another network's pod whose veth name collides with ours keeps its veth through
/// our ADD, our DEL without a record, and our GC.
#[test]
fn a_veth_name_taken_by_another_network_is_never_deleted() {
    let f = Flavor::cni_bridge();
    for (n, ((net1, id1), (net2, id2))) in COLLIDING_VETHS.iter().enumerate() {
        let node = Node::new(&format!("vcol{n}-node"));
        let (c1, c2) = (net_config(&f, &node, net1), net_config(&f, &node, net2));
        let (p1, p2) = (node.pod("vcol-p1"), node.pod("vcol-p2"));
        let a1 = Att {
            pod: &p1,
            id: id1,
            ifname: "eth0",
        };
        let r1 = add(&node, &f, &c1, &a1);
        let v1 = host_veth(&r1, bridge_of(net1));
        let still_there = |what: &str| {
            let l = observe::link(&node.ns, &v1)
                .unwrap_or_else(|| panic!("{what} deleted {net1}/{id1}'s veth {v1}"));
            assert_eq!(l.master.as_deref(), Some(bridge_of(net1)), "{what}: {l:?}");
            assert!(observe::link(&p1.ns, "eth0").is_some(), "{what}");
        };
        // A DEL without a record derives the colliding name first.
        del_without_netns(&node, &f, &c2, id2, "eth0").success_empty();
        still_there("a record-less DEL of the other network");

        let a2 = Att {
            pod: &p2,
            id: id2,
            ifname: "eth0",
        };
        let r2 = add(&node, &f, &c2, &a2);
        still_there("an ADD of the other network");
        let v2 = host_veth(&r2, bridge_of(net2));
        assert_ne!(v1, v2);
        check(&node, &f, &c1, &a1, &r1);
        check(&node, &f, &c2, &a2, &r2);

        gc(&node, &f, &c2, &[]).success_empty();
        still_there("GC of the other network");
        assert!(
            observe::link(&node.ns, &v2).is_none(),
            "GC released its own"
        );
        check(&node, &f, &c1, &a1, &r1);
    }
}

/// Class 4: the node's own namespace as CNI_NETNS, directly, through a symlink, or as
/// `/proc/PID/ns/net` of a process on the node, is refused (code 4) by ADD, CHECK and DEL
/// before anything changes; a link of the node named CNI_IFNAME survives.
#[test]
fn the_nodes_own_namespace_is_refused_as_cni_netns() {
    let f = Flavor::cni_bridge();
    let node = Node::new("ownns-node");
    node.ns.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
    ]);
    node.ns.ip(&["link", "set", "eth0", "up"]);
    let c = config(&f, &node, NET, SUBNET, "cnib0");
    let links = TempDir::new("ownns-links");
    let symlink = links.path().join("netns");
    std::os::unix::fs::symlink(node.ns.path(), &symlink).unwrap();
    // A process of the node: its /proc/PID/ns/net is the node's namespace.
    let mut sleeper = std::process::Command::new("nsenter")
        .arg(format!("--net={}", node.ns.path().display()))
        .args(["--", "sleep", "60"])
        .spawn()
        .unwrap();
    let proc_path = PathBuf::from(format!("/proc/{}/ns/net", sleeper.id()));
    let node_ino = std::fs::metadata(node.ns.path()).unwrap().ino();
    for _ in 0..200 {
        if std::fs::metadata(&proc_path).is_ok_and(|m| m.ino() == node_ino) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let before = node.state();
    let prev =
        json!({"cniVersion": "1.1.0", "interfaces": [{"name": "eth0", "sandbox": "x"}], "ips": []});
    for path in [node.ns.path(), symlink.clone(), proc_path.clone()] {
        let path = path.to_string_lossy().into_owned();
        for (verb, ifname, conf) in [
            ("ADD", "net9", c.clone()),
            ("CHECK", "eth0", with_prev_result(&c, &prev)),
            ("DEL", "eth0", c.clone()),
        ] {
            let e = node
                .invoke(&f.plugin, verb)
                .container_id("ownns")
                .netns(&path)
                .ifname(ifname)
                .config(&conf)
                .run()
                .error_code(4);
            assert!(
                e.msg.contains("own network namespace"),
                "{verb} {path}: {e:?}"
            );
        }
    }
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert_eq!(node.state(), before, "a refused verb changed the node");
    assert!(observe::link(&node.ns, "eth0").is_some());
}

fn file_mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

/// Class 5: symlinks planted under names the plugin writes (`last_reserved_ip.0`, a record)
/// are replaced, never written through; their targets stay as they were.
#[test]
fn planted_symlinks_are_never_written_through() {
    let f = Flavor::cni_bridge();
    let node = Node::new("plant-node");
    let c = config(&f, &node, NET, SUBNET, "cnib0");
    let pod = node.pod("plant-pod");
    let outside = TempDir::new("plant-victims");
    let (data, state) = (node.data_dir().join(NET), node.state_dir().join(NET));
    for d in [&data, &state] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let planted = [
        (data.join("last_reserved_ip.0"), outside.path().join("a")),
        (
            state.join(format!("{}.eth0.json", pod.id)),
            outside.path().join("b"),
        ),
    ];
    for (link, victim) in &planted {
        std::fs::write(victim, b"precious").unwrap();
        std::os::unix::fs::symlink(victim, link).unwrap();
    }
    let a = Att {
        pod: &pod,
        id: &pod.id,
        ifname: "eth0",
    };
    let r = add(&node, &f, &c, &a);
    for (link, victim) in &planted {
        assert_eq!(
            std::fs::read(victim).unwrap(),
            b"precious",
            "{}",
            link.display()
        );
        assert!(!std::fs::symlink_metadata(link).unwrap().is_symlink());
    }
    assert_eq!(
        std::fs::read_to_string(data.join("last_reserved_ip.0")).unwrap(),
        pod_ip(&r, "cnib0")
    );
    check(&node, &f, &c, &a, &r);
}

/// Class 5, variants: a network directory that is a symlink, or writable by others, or owned by
/// another user, is refused (code 5) and nothing is written through it.
#[test]
fn unsafe_network_directories_are_refused() {
    let f = Flavor::cni_bridge();
    type Make = fn(&Path, &Path);
    let cases: [(&str, Make); 3] = [
        ("symlink", |dir, elsewhere| {
            std::os::unix::fs::symlink(elsewhere, dir).unwrap();
        }),
        ("mode 0777", |dir, _| {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        }),
        ("owned by nobody", |dir, _| {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
            nix::unistd::chown(dir, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        }),
    ];
    for (n, (what, make)) in cases.iter().enumerate() {
        for in_data_dir in [false, true] {
            let node = Node::new(&format!("udir{n}-node"));
            let c = config(&f, &node, NET, SUBNET, "cnib0");
            let pod = node.pod("udir-pod");
            let elsewhere = TempDir::new("udir-elsewhere");
            let base = if in_data_dir {
                node.data_dir()
            } else {
                node.state_dir()
            };
            std::fs::create_dir_all(&base).unwrap();
            make(&base.join(NET), elsewhere.path());
            let e = node.add(&f.plugin, &c, &pod).error_code(5);
            assert!(e.msg.contains(NET), "{what}: {e:?}");
            assert!(
                std::fs::read_dir(elsewhere.path())
                    .unwrap()
                    .next()
                    .is_none(),
                "{what}: something was written through the link"
            );
            assert!(observe::link(&pod.ns, "eth0").is_none(), "{what}");
        }
    }
}

/// Class 5: a FIFO or a device named like an address in the data directory, a FIFO or
/// `/dev/zero` as `resolvConf`, and a huge record neither hang a verb nor exhaust memory.
#[test]
fn special_and_huge_files_never_hang_a_verb() {
    let f = Flavor::cni_bridge();
    let node = Node::new("fifo-node");
    let c = config(&f, &node, NET, SUBNET, "cnib0");
    let data = node.data_dir().join(NET);
    std::fs::create_dir_all(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    nix::unistd::mkfifo(
        &data.join("10.0.0.7"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    nix::sys::stat::mknod(
        &data.join("10.0.0.8"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        nix::sys::stat::makedev(1, 5),
    )
    .unwrap();
    let state = node.state_dir().join(NET);
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("huge.eth0.json"), vec![b' '; 8 << 20]).unwrap();

    let status = node.invoke(&f.plugin, "STATUS").config(&c).run_within(HANG);
    status.success_empty();
    let gc = {
        let mut g = c.clone();
        g["cni.dev/valid-attachments"] = json!([]);
        node.invoke(&f.plugin, "GC").config(&g).run_within(HANG)
    };
    gc.success_empty();
    for id in ["gone", "huge"] {
        node.invoke(&f.plugin, "DEL")
            .container_id(id)
            .netns("")
            .ifname("eth0")
            .config(&c)
            .run_within(HANG)
            .success_empty();
    }
    let pod = node.pod("fifo-pod");
    let r = node.add(&f.plugin, &c, &pod).success();
    assert_eq!(pod_ip(&r, "cnib0"), "10.0.0.2");

    // A FIFO nobody reads as the log file: skipped, the ADD completes.
    let logs = TempDir::new("fifo-log");
    let log_fifo = logs.path().join("cni.log");
    nix::unistd::mkfifo(&log_fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let mut logged = c.clone();
    logged["logFile"] = json!(log_fifo);
    let lpod = node.pod("fifo-lpod");
    node.invoke(&f.plugin, "ADD")
        .pod(&lpod)
        .ifname("eth0")
        .config(&logged)
        .run_within(HANG)
        .success();

    let resolv = TempDir::new("fifo-resolv");
    let fifo = resolv.path().join("resolv.conf");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    for path in [PathBuf::from("/dev/zero"), fifo] {
        let mut c2 = c.clone();
        c2["ipam"]["resolvConf"] = json!(path);
        let pod = node.pod("fifo-rpod");
        let out = node
            .invoke(&f.plugin, "ADD")
            .pod(&pod)
            .ifname("eth0")
            .config(&c2)
            .run_within(HANG);
        let e = out.error_code(5);
        assert!(e.msg.contains("resolvConf"), "{e:?}");
    }
}

/// Class 6: two networks whose set names collided under the previous hash each get a set
/// and rules of their own; GC of one leaves the other's members.
#[test]
fn networks_whose_old_set_names_collided_each_get_their_own() {
    let f = Flavor::cni_bridge();
    for (n, (net_a, net_b)) in [
        ("net27291", "net72494"),
        ("tenant.8831-net", "tenant.63259-net"),
    ]
    .iter()
    .enumerate()
    {
        let node = Node::new(&format!("setcol{n}-node"));
        let ca = config(&f, &node, net_a, "10.1.0.0/24", "cnia0");
        let cb = config(&f, &node, net_b, "10.2.0.0/24", "cnibb0");
        let (pa, pb) = (node.pod("setcol-a"), node.pod("setcol-b"));
        let aa = Att {
            pod: &pa,
            id: &pa.id,
            ifname: "eth0",
        };
        let ab = Att {
            pod: &pb,
            id: &pb.id,
            ifname: "eth0",
        };
        let ra = add(&node, &f, &ca, &aa);
        let rb = add(&node, &f, &cb, &ab);
        let sets = masq_sets(&node);
        assert_eq!(sets.len(), 2, "{sets:?}");
        for set in &sets {
            assert_eq!(rules_naming(&node, set).len(), 3, "{set}");
        }
        check(&node, &f, &ca, &aa, &ra);
        check(&node, &f, &cb, &ab, &rb);
        gc(&node, &f, &ca, &[]).success_empty();
        let ip_b = pod_ip(&rb, "cnibb0");
        assert!(
            sets.iter()
                .any(|s| observe::ipset_members(&node.ns, s).contains(&ip_b)),
            "GC of {net_a} removed {net_b}'s member"
        );
        check(&node, &f, &cb, &ab, &rb);
    }
}

/// Class 7: a forged record naming the bridge, another pod's veth or a node link as its host
/// veth, and another pod's address, makes DEL and GC delete none of them.
#[test]
fn a_forged_record_makes_del_and_gc_delete_nothing_of_others() {
    let f = Flavor::cni_bridge();
    let node = Node::new("forge-node");
    node.ns.ip(&[
        "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink0p",
    ]);
    let c = config(&f, &node, NET, SUBNET, "cnib0");
    let pod = node.pod("forge-pod");
    let a = Att {
        pod: &pod,
        id: &pod.id,
        ifname: "eth0",
    };
    let r = add(&node, &f, &c, &a);
    let victim_veth = host_veth(&r, "cnib0");
    let victim_ip = pod_ip(&r, "cnib0");
    let (_, real) = node.records(NET).into_iter().next().unwrap();
    let set = real["masqSet"].as_str().unwrap().to_string();
    let state = node.state_dir().join(NET);
    for (n, named) in ["cnib0", victim_veth.as_str(), "uplink0"]
        .iter()
        .enumerate()
    {
        for verb in ["DEL", "GC"] {
            let mut forged = real.clone();
            let id = format!("evil{n}");
            forged["containerId"] = json!(id);
            forged["hostVeth"] = json!(named);
            forged["masqSet"] = json!(set);
            std::fs::write(state.join(format!("{id}.eth0.json")), forged.to_string()).unwrap();
            match verb {
                "DEL" => del_without_netns(&node, &f, &c, &id, "eth0").success_empty(),
                _ => gc(&node, &f, &c, &[(&pod.id, "eth0")]).success_empty(),
            }
            for link in ["cnib0", victim_veth.as_str(), "uplink0"] {
                assert!(
                    observe::link(&node.ns, link).is_some(),
                    "{verb} of a record naming {named} deleted {link}"
                );
            }
            assert!(
                observe::ipset_members(&node.ns, &set).contains(&victim_ip),
                "{verb}"
            );
            assert!(node.reservations(NET).contains_key(&victim_ip), "{verb}");
            assert_eq!(node.records(NET).len(), 1, "the forged record is gone");
            check(&node, &f, &c, &a, &r);
        }
    }
}

/// Class 9: a failed ADD leaves `last_reserved_ip` as it found it.
#[test]
fn a_failed_add_leaves_the_round_robin_position() {
    let f = Flavor::cni_bridge();
    let node = Node::new("rr-node");
    let c = config(&f, &node, NET, SUBNET, "cnib0");
    let last = node.data_dir().join(NET).join("last_reserved_ip.0");
    let p1 = node.pod("rr-p1");
    node.add(&f.plugin, &c, &p1).success();
    assert_eq!(std::fs::read_to_string(&last).unwrap(), "10.0.0.2");
    // Another bridge of the network, with a foreign address: refused (103) after IPAM ran.
    node.ns.ip(&["link", "add", "cnib9", "type", "bridge"]);
    node.ns.ip(&["addr", "add", "10.9.9.1/24", "dev", "cnib9"]);
    let mut refused = c.clone();
    refused["bridge"] = json!("cnib9");
    let p2 = node.pod("rr-p2");
    node.add(&f.plugin, &refused, &p2).error_code(103);
    assert_eq!(std::fs::read_to_string(&last).unwrap(), "10.0.0.2");
    // Variant: a failure of the masquerade step (no iptables), the position never having been
    // written on a fresh network.
    let node2 = Node::new("rr2-node");
    let c2 = config(&f, &node2, NET, SUBNET, "cnib0");
    let p3 = node2.pod("rr2-p");
    node2
        .invoke(&f.plugin, "ADD")
        .pod(&p3)
        .ifname("eth0")
        .config(&c2)
        .env("PATH", "/nonexistent")
        .run()
        .error_code(107);
    assert!(!node2
        .data_dir()
        .join(NET)
        .join("last_reserved_ip.0")
        .exists());
}

/// Class 9: under umask 000 every file the plugin creates is still private (0600, directories
/// 0700), the log file included.
#[test]
fn files_are_private_under_umask_000() {
    let f = Flavor::cni_bridge();
    let node = Node::new("umask-node");
    let mut c = config(&f, &node, NET, SUBNET, "cnib0");
    let log = node.state_dir().join("cni.log");
    c["logFile"] = json!(log);
    let pod = node.pod("umask-pod");
    node.invoke(&f.plugin, "ADD")
        .pod(&pod)
        .ifname("eth0")
        .config(&c)
        .via(&["sh", "-c", "umask 000; exec \"$0\""])
        .run()
        .success();
    let mut seen = 0;
    let mut walk = vec![node.data_dir(), node.state_dir()];
    while let Some(dir) = walk.pop() {
        assert_eq!(file_mode(&dir) & 0o077, 0, "{} is open", dir.display());
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk.push(p);
            } else {
                seen += 1;
                assert_eq!(file_mode(&p), 0o600, "{}", p.display());
            }
        }
    }
    assert!(
        seen >= 4,
        "reservation, last_reserved_ip, record, lock, log"
    );
}

/// Peak RSS (KiB) of a STATUS with `stdin`, measured by GNU time.
fn status_rss(node: &Node, f: &Flavor, stdin: &[u8]) -> u64 {
    let out = node
        .invoke(&f.plugin, "STATUS")
        .stdin(stdin)
        .via(&["/usr/bin/time", "-f", "maxrss=%M"])
        .run_within(HANG);
    assert_eq!(out.exit, Some(0), "{out}");
    out.stderr
        .lines()
        .find_map(|l| l.strip_prefix("maxrss="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no maxrss: {out}"))
}

/// Class 9: stdin is bounded (a config over 16 MiB is refused, code 6) and held about twice
/// (the bytes, then the one parsed value), not three or four times.
#[test]
fn stdin_is_bounded_and_held_once() {
    let f = Flavor::cni_bridge();
    let node = Node::new("stdin-node");
    let mut c = json!({"cniVersion": "1.1.0", "name": NET, "type": "cni-bridge", "bridge": "cnib0", "ipam": {}});
    let small = status_rss(&node, &f, c.to_string().as_bytes());
    let size = 15 << 20;
    c["padding"] = json!("x".repeat(size));
    let big = status_rss(&node, &f, c.to_string().as_bytes());
    let per_byte = (big.saturating_sub(small) * 1024) as f64 / size as f64;
    assert!(
        per_byte < 2.5,
        "stdin held {per_byte:.2} times ({small} KiB small, {big} KiB big)"
    );
    c["padding"] = json!("x".repeat(17 << 20));
    let e = node
        .invoke(&f.plugin, "STATUS")
        .config(&c)
        .run_within(HANG)
        .error_code(6);
    assert!(e.msg.contains("MiB"), "{e:?}");
}

/// The kernel and file state of one attachment agree: either it is whole (record `ready`,
/// reservation of its address, pod interface with that address, host veth, set member) or
/// nothing of it is left.
fn assert_whole_or_gone(node: &Node, pod: &Pod, id: &str) {
    let records: Vec<Value> = node
        .records(NET)
        .into_values()
        .filter(|r| r["containerId"] == id)
        .collect();
    let reserved: Vec<String> = node
        .reservations(NET)
        .into_iter()
        .filter(|(_, owner)| *owner == format!("{id}\r\neth0"))
        .map(|(ip, _)| ip)
        .collect();
    let pod_addrs = observe::addresses_of(&pod.ns, "eth0");
    let members: BTreeSet<String> = masq_sets(node)
        .iter()
        .flat_map(|s| observe::ipset_members(&node.ns, s))
        .collect();
    match records.as_slice() {
        [] => {
            assert!(
                reserved.is_empty(),
                "{id}: reservation without record: {reserved:?}"
            );
            assert!(
                pod_addrs.is_empty(),
                "{id}: live address without record: {pod_addrs:?}"
            );
        }
        [r] => {
            assert_eq!(r["phase"], "ready", "{id}: {r}");
            assert_eq!(reserved.len(), 1, "{id}: {r} {reserved:?}");
            let ip = &reserved[0];
            assert!(
                pod_addrs.iter().any(|a| a.starts_with(&format!("{ip}/"))),
                "{id}: reserved {ip}, pod has {pod_addrs:?}"
            );
            assert!(members.contains(ip), "{id}: {ip} not masqueraded");
            let veth = r["hostVeth"].as_str().unwrap();
            assert!(observe::link(&node.ns, veth).is_some(), "{id}: {veth} gone");
        }
        more => panic!("{id}: several records {more:?}"),
    }
}

/// Class 10: ADD and DEL of one container racing (as runtimes do) never leave an address on a
/// live pod unreserved, so a requested address is never handed out twice.
#[test]
fn racing_add_and_del_of_one_container_agree_with_the_kernel() {
    let f = Flavor::cni_bridge();
    let node = Node::new("race-node");
    let c = config(&f, &node, NET, SUBNET, "cnib0");
    let pod = node.pod("race-pod");
    let other = node.pod("race-other");
    for round in 0..16u64 {
        let add = || {
            node.invoke(&f.plugin, "ADD")
                .pod(&pod)
                .ifname("eth0")
                .config(&c)
                .run()
        };
        let del = || {
            std::thread::sleep(Duration::from_millis(round % 8));
            node.invoke(&f.plugin, "DEL")
                .pod(&pod)
                .ifname("eth0")
                .config(&c)
                .run()
        };
        let (added, deleted) = std::thread::scope(|s| {
            let a = s.spawn(add);
            let d = s.spawn(del);
            (a.join().unwrap(), d.join().unwrap())
        });
        deleted.success_empty();
        assert_whole_or_gone(&node, &pod, &pod.id);
        if added.exit == Some(0) {
            let live = observe::addresses_of(&pod.ns, "eth0");
            if let Some(addr) = live.first() {
                let ip = addr.split('/').next().unwrap();
                node.invoke(&f.plugin, "ADD")
                    .pod(&other)
                    .ifname("eth0")
                    .args(&format!("IP={ip}"))
                    .config(&c)
                    .run()
                    .error_code(104);
            }
        }
        node.del(&f.plugin, &c, &pod).success_empty();
        assert_whole_or_gone(&node, &pod, &pod.id);
    }
}

/// Class 10: a GC (keeping nothing) racing ADDs never lets an ADD end `ready` for an
/// attachment GC tore down: each attachment is whole or gone.
#[test]
fn gc_racing_adds_leaves_no_ready_attachment_torn_down() {
    let f = Flavor::cni_bridge();
    let node = Node::new("gcrace-node");
    let c = config(&f, &node, NET, SUBNET, "cnib0");
    let pods: Vec<Pod> = (0..6).map(|_| node.pod("gcrace-p")).collect();
    for round in 0..4u64 {
        std::thread::scope(|s| {
            for p in &pods {
                s.spawn(|| node.add(&f.plugin, &c, p));
            }
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(5 + 5 * round));
                gc(&node, &f, &c, &[]).success_empty();
            });
        });
        for p in &pods {
            assert_whole_or_gone(&node, p, &p.id);
        }
        gc(&node, &f, &c, &[]).success_empty();
        for p in &pods {
            assert_whole_or_gone(&node, p, &p.id);
            assert!(
                observe::link(&p.ns, "eth0").is_none(),
                "GC left {}'s eth0",
                p.id
            );
        }
    }
}

/// Teardown keeps every error (netavark's error list): a GC whose releases fail names each
/// attachment it could not release, keeps their records for a retry, and the retry succeeds.
#[test]
fn gc_reports_every_release_that_failed() {
    let f = Flavor::cni_bridge_delegating();
    let node = Node::new("errlist-node");
    let c = config(&f, &node, NET, SUBNET, "cnib0");
    let pods: Vec<Pod> = (0..2).map(|_| node.pod("errlist-p")).collect();
    for p in &pods {
        node.add(&f.plugin, &c, p).success();
    }
    let mut g = c.clone();
    g["cni.dev/valid-attachments"] = json!([]);
    let own_dir = f
        .plugin
        .path()
        .parent()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let e = node
        .invoke(&f.plugin, "GC")
        .env("CNI_PATH", &own_dir)
        .config(&g)
        .run()
        .error_code(106);
    for p in &pods {
        assert!(e.msg.contains(&p.id), "{} not named: {}", p.id, e.msg);
    }
    assert_eq!(node.records(NET).len(), 2, "records kept for the retry");
    gc(&node, &f, &c, &[]).success_empty();
    assert!(node.records(NET).is_empty());
    for p in &pods {
        assert!(observe::link(&p.ns, "eth0").is_none());
    }
}

/// Class 10: two ADDs of one attachment at once (a runtime's retry): one succeeds, the other is
/// refused (101) instead of replacing it, and the pod has the address the success reported.
#[test]
fn concurrent_adds_of_one_attachment_do_not_replace_each_other() {
    let f = Flavor::cni_bridge();
    let node = Node::new("dup-node");
    let c = config(&f, &node, NET, SUBNET, "cnib0");
    for round in 0..6 {
        let pod = node.pod("dup-pod");
        let outcomes: Vec<Outcome> = std::thread::scope(|s| {
            let a = s.spawn(|| node.add(&f.plugin, &c, &pod));
            let b = s.spawn(|| node.add(&f.plugin, &c, &pod));
            vec![a.join().unwrap(), b.join().unwrap()]
        });
        let ok: Vec<&Outcome> = outcomes.iter().filter(|o| o.exit == Some(0)).collect();
        assert_eq!(ok.len(), 1, "round {round}: {outcomes:?}");
        let refused = outcomes.iter().find(|o| o.exit != Some(0)).unwrap();
        refused.error_code(101);
        let result = ok[0].success();
        let addr = AddResult::parse(&result, "cnib0").address();
        assert_eq!(
            observe::addresses_of(&pod.ns, "eth0"),
            vec![addr],
            "round {round}"
        );
        assert_whole_or_gone(&node, &pod, &pod.id);
        node.del(&f.plugin, &c, &pod).success_empty();
    }
}

/// The exempt RETURN rules of `set` (their destinations, in chain order).
fn exempt_destinations(node: &Node, set: &str) -> Vec<String> {
    rules_naming(node, set)
        .into_iter()
        .filter(|r| r.contains(&format!("-A {set} ")) && r.ends_with("-j RETURN"))
        .map(|r| {
            r.split_whitespace()
                .skip_while(|w| *w != "-d")
                .nth(1)
                .expect("-d NET")
                .to_string()
        })
        .collect()
}

/// `nonMasqueradeCIDRs` changed for a network that already has its rules: the next ADD sees
/// the rules are not what the config asks (a list of another length changes the set's reference
/// count; one of the same length does not, and is seen from the rules last written), rewrites
/// the chain, and CHECK verifies the exact chain: a CHECK with the other list fails naming the
/// rule. An ADD whose rules are in place runs no iptables at all (no PATH to find it on).
#[test]
fn a_changed_non_masquerade_list_is_rewritten_by_the_next_add_and_checked() {
    let f = Flavor::cni_bridge();
    let node = Node::new("nmasq-node");
    let base = config(&f, &node, NET, SUBNET, "cnib0");
    let with_list = |list: &[&str]| {
        let mut c = base.clone();
        c["nonMasqueradeCIDRs"] = json!(list);
        c
    };
    let pods: Vec<Pod> = (0..6).map(|i| node.pod(&format!("nmasq-p{i}"))).collect();
    let att = |i: usize| Att {
        pod: &pods[i],
        id: &pods[i].id,
        ifname: "eth0",
    };
    let no_iptables = |c: &Value, i: usize| {
        node.invoke(&f.plugin, "ADD")
            .pod(&pods[i])
            .ifname("eth0")
            .config(c)
            .env("PATH", "/nonexistent")
            .run()
    };

    let first = with_list(&["10.244.0.0/16"]);
    let r0 = add(&node, &f, &first, &att(0));
    let set = masq_sets(&node).into_iter().next().unwrap();
    assert_eq!(exempt_destinations(&node, &set), [SUBNET, "10.244.0.0/16"]);
    assert_eq!(rules_naming(&node, &set).len(), 4);
    // In place: no exec needed, so none is attempted.
    let r1 = no_iptables(&first, 1).success();
    check(&node, &f, &first, &att(0), &r0);

    // Same length, another destination: the reference count is unchanged, yet the ADD must
    // rewrite, which it cannot do without iptables...
    let same_length = with_list(&["100.64.0.0/10"]);
    let err = no_iptables(&same_length, 2).error_code(107);
    assert!(err.text().contains("iptables"), "{err:?}");
    assert_eq!(exempt_destinations(&node, &set), [SUBNET, "10.244.0.0/16"]);
    // ...and does with it.
    let r2 = add(&node, &f, &same_length, &att(2));
    assert_eq!(exempt_destinations(&node, &set), [SUBNET, "100.64.0.0/10"]);
    assert_eq!(rules_naming(&node, &set).len(), 4);
    check(&node, &f, &same_length, &att(0), &r0);
    check(&node, &f, &same_length, &att(2), &r2);
    let stale = run(&node, &f, "CHECK", &with_prev_result(&first, &r1), &att(1)).error_code(105);
    assert!(
        stale.text().contains("10.244.0.0/16") && stale.text().contains(&set),
        "{stale:?}"
    );

    // Longer, then empty: the count changes, the chain follows.
    let longer = with_list(&["10.244.0.0/16", "100.64.0.0/10", "fd00:10:244::/56"]);
    let r3 = add(&node, &f, &longer, &att(3));
    assert_eq!(
        exempt_destinations(&node, &set),
        [SUBNET, "10.244.0.0/16", "100.64.0.0/10"]
    );
    check(&node, &f, &longer, &att(3), &r3);
    // A CHECK with the shorter list sees the rule it does not ask for.
    let extra = run(
        &node,
        &f,
        "CHECK",
        &with_prev_result(&same_length, &r2),
        &att(2),
    )
    .error_code(105);
    assert!(extra.text().contains("unexpected"), "{extra:?}");
    let r4 = add(&node, &f, &base, &att(4));
    assert_eq!(exempt_destinations(&node, &set), [SUBNET]);
    assert_eq!(rules_naming(&node, &set).len(), 3);
    check(&node, &f, &base, &att(4), &r4);

    // Bad input changes nothing: the rules, the set and every file stay.
    let before = node.state();
    let bad = run(&node, &f, "ADD", &with_list(&["10.244.1.0/16"]), &att(5)).error_code(7);
    assert!(
        bad.text().contains("nonMasqueradeCIDRs") && bad.text().contains("10.244.1.0/16"),
        "{bad:?}"
    );
    assert_eq!(node.state(), before);

    // The record of what was written removed by hand: the next ADD writes it again (the
    // rules it compares with iptables-save are already right, so nothing else changes).
    let written = node.state_dir().join(NET).join(format!("{set}.masquerade"));
    let content = std::fs::read_to_string(&written).expect("rules recorded");
    assert!(
        content.contains(&format!("-A {set} -d {SUBNET} ")),
        "{content}"
    );
    std::fs::remove_file(&written).unwrap();
    no_iptables(&base, 5).error_code(107);
    let rules_before = rules_naming(&node, &set);
    add(&node, &f, &base, &att(5));
    assert_eq!(rules_naming(&node, &set), rules_before);
    assert_eq!(std::fs::read_to_string(&written).unwrap(), content);
}
