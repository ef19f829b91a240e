//! containerd 1.6 (`ctr`, the CRI) and libcni's `cnitool` as real clients of cni-bridge, installed
//! the way `conf/containerd/INSTALL.md` says: the binary in `/opt/cni/bin`, the conflist from
//! `conf/` in `/etc/cni/net.d`. containerd and ctr run inside a "node" namespace each test creates.
//!
//! Needs root, the Debian packages containerd, runc, busybox-static, golang-go, dpkg-dev and
//! containernetworking-plugins, and the binaries built first:
//! `cargo build -p cni-bridge -p cri-client && cargo test -p node-tests --test containerd`.

use std::net::Ipv4Addr;
use std::process::Command;

use ipnetwork::Ipv4Network;
use node_tests::cni::Plugin;
use node_tests::containerd::{
    checked, cnitool, exclusive, parse_inet, repo_root, CniInstall, Containerd, Foreground,
};
use node_tests::netns::Netns;
use node_tests::observe;
use serde_json::{json, Value};

/// The network as the project ships it: the one `conf/*.conflist` whose first plugin is
/// cni-bridge.
fn shipped_conflist() -> Value {
    let dir = repo_root().join("conf");
    let conflists: Vec<(std::path::PathBuf, Value)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "conflist"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("read conflist");
            let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, v)
        })
        .filter(|(_, v): &(_, Value)| v["plugins"][0]["type"] == "cni-bridge")
        .collect();
    assert_eq!(
        conflists.len(),
        1,
        "expected one cni-bridge conflist in {}: {conflists:?}",
        dir.display()
    );
    conflists.into_iter().next().expect("one").1
}

/// What the tests need to know about a conflist's addressing and bridge.
struct Addressing {
    subnet: Ipv4Network,
    gateway: Ipv4Addr,
    bridge: String,
    /// `hairpinMode`: each host veth reflects a pod's traffic back to itself (SCENARIO step 12).
    hairpin: bool,
}

fn addressing(conflist: &Value) -> Addressing {
    let plugin = &conflist["plugins"][0];
    let ipam = &plugin["ipam"];
    let range = if ipam["ranges"].is_array() {
        &ipam["ranges"][0][0]
    } else {
        ipam
    };
    let subnet: Ipv4Network = range["subnet"]
        .as_str()
        .expect("ipam subnet")
        .parse()
        .expect("IPv4 subnet");
    let gateway = range["gateway"]
        .as_str()
        .map(|g| g.parse().expect("gateway"))
        .unwrap_or_else(|| Ipv4Addr::from(u32::from(subnet.network()) + 1));
    Addressing {
        subnet,
        gateway,
        bridge: plugin["bridge"].as_str().unwrap_or("cni0").to_string(),
        hairpin: plugin["hairpinMode"].as_bool().unwrap_or(false),
    }
}

/// The masquerade ipset cni-bridge created in the node (`CNIB-<hash>`), with its members.
fn masquerade_set(node: &Netns) -> (String, Vec<String>) {
    let sets: Vec<String> = observe::ipset_names(node)
        .into_iter()
        .filter(|s| s.starts_with("CNIB-"))
        .collect();
    assert_eq!(sets.len(), 1, "expected one CNIB-* ipset, found {sets:?}");
    let members = observe::ipset_members(node, &sets[0]).into_iter().collect();
    (sets[0].clone(), members)
}

fn bridge_ports(node: &Netns, bridge: &str) -> Vec<String> {
    observe::bridge_ports(node, bridge)
        .into_iter()
        .map(|l| l.name)
        .collect()
}

/// The string at `pointer` in an attachment record (format: `docs/ATTACHMENTS.md`).
fn record_str<'a>(record: &'a Value, pointer: &str) -> &'a str {
    record
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("record has no string at {pointer}: {record}"))
}

/// Everything the node holds for one attachment while it exists, from cni-bridge's own record.
struct Held {
    ip: Ipv4Addr,
    host_veth: String,
}

/// Asserts the node holds `ip` for `container_id` (reservation, record, set entry, veth on the
/// bridge) and returns what it holds.
fn assert_held(
    node: &Netns,
    install: &CniInstall,
    net: &Addressing,
    container_id: &str,
    ip: Ipv4Addr,
) -> Held {
    let reservations = install.reservations();
    assert!(
        reservations.contains(&(ip.to_string(), format!("{container_id}\r\neth0"))),
        "no reservation of {ip} for {container_id}: {reservations:?}"
    );
    let record = install
        .record(container_id, "eth0")
        .unwrap_or_else(|| panic!("no attachment record for {container_id}.eth0"));
    assert_eq!(
        record_str(&record, "/containerId"),
        container_id,
        "{record}"
    );
    assert_eq!(record_str(&record, "/ifname"), "eth0", "{record}");
    assert_eq!(record_str(&record, "/phase"), "ready", "{record}");
    assert_eq!(
        record["ips"],
        json!([format!("{ip}/{}", net.subnet.prefix())]),
        "{record}"
    );
    let host_veth = record_str(&record, "/hostVeth").to_string();
    let port = observe::bridge_ports(node, &net.bridge)
        .into_iter()
        .find(|l| l.name == host_veth)
        .unwrap_or_else(|| {
            panic!(
                "host veth {host_veth} of {container_id} is not a port of {}",
                net.bridge
            )
        });
    assert!(port.up, "host veth {host_veth} is down");
    assert_eq!(port.hairpin, Some(net.hairpin), "hairpin on {host_veth}");
    let (set, members) = masquerade_set(node);
    assert_eq!(record_str(&record, "/masqSet"), set, "{record}");
    assert!(
        members.contains(&ip.to_string()),
        "{ip} not in masquerade set {set}: {members:?}"
    );
    Held { ip, host_veth }
}

/// Asserts nothing of `held` is left: no reservation, record, set entry or host veth.
fn assert_released(node: &Netns, install: &CniInstall, container_id: &str, held: &Held) {
    let reservations = install.reservations();
    assert!(
        !reservations
            .iter()
            .any(|(ip, _)| *ip == held.ip.to_string()),
        "{} still reserved after release of {container_id}: {reservations:?}",
        held.ip
    );
    assert!(
        install.record(container_id, "eth0").is_none(),
        "attachment record of {container_id} still present"
    );
    assert!(
        observe::link(node, &held.host_veth).is_none(),
        "host veth {} of {container_id} still present",
        held.host_veth
    );
    let (set, members) = masquerade_set(node);
    assert!(
        !members.contains(&held.ip.to_string()),
        "{} still in {set} after release of {container_id}",
        held.ip
    );
}

/// The node holds nothing for any pod: no reservation, record, set member, bridge port, and
/// libcni's result cache is back to what it was.
fn assert_node_empty(node: &Netns, install: &CniInstall, net: &Addressing) {
    assert_eq!(install.reservations(), vec![], "reservations left");
    assert!(
        install.record_files().is_empty(),
        "records left: {:?}",
        install.record_files()
    );
    assert_eq!(
        masquerade_set(node).1,
        Vec::<String>::new(),
        "set members left"
    );
    assert_eq!(
        bridge_ports(node, &net.bridge),
        Vec::<String>::new(),
        "bridge ports left"
    );
    assert!(
        install.libcni_cache_added().is_empty(),
        "libcni result cache entries left: {:?}",
        install.libcni_cache_added()
    );
}

/// A container that serves `hello-from-<id>` on :8080, prints its address, then waits for its
/// stdin to close.
fn server(containerd: &Containerd, id: &str) -> (Foreground, Ipv4Addr) {
    let script = format!(
        "mkdir -p /tmp/www && echo hello-from-{id} >/tmp/www/index.html && \
         httpd -p 8080 -h /tmp/www && ip -4 -o addr show eth0 && read _ || :"
    );
    let mut fg = Foreground::start(containerd, id, &["sh", "-c", &script]);
    let (ip, _) = parse_inet(&fg.line());
    (fg, ip)
}

fn install_cni_bridge(conflist: &Value) -> CniInstall {
    let plugin = Plugin::cni_bridge();
    let loopback = Plugin::reference("loopback");
    CniInstall::new(
        conflist,
        &[
            ("cni-bridge", plugin.path()),
            // The CRI brings the pod's `lo` up with the `loopback` plugin from its bin_dir.
            ("loopback", loopback.path()),
        ],
        Some("cni-bridge"),
    )
}

/// Each container of `ids` saw exactly ADD then DEL, both successful; the DEL came with an
/// empty `CNI_NETNS` (ctr 1.6 removes the network after the task is gone).
fn assert_add_then_del(install: &CniInstall, ids: &[&str]) {
    let calls = install.calls();
    for id in ids {
        assert_eq!(calls.verbs(id), ["ADD", "DEL"], "calls:\n{calls}");
        for call in calls.for_container(id) {
            assert_eq!(call.exit, Some(0), "failed call:\n{calls}");
            assert_eq!(call.ifname, "eth0");
        }
        assert_eq!(calls.for_container(id)[1].netns, "", "calls:\n{calls}");
    }
}

/// Starts container `client` and checks from inside it: an address in the subnet (not the peer's),
/// the default route via the gateway, the gateway answering ping, and the peer's HTTP server.
/// The container stays up until [`Foreground::finish`].
fn client_reaching(
    containerd: &Containerd,
    net: &Addressing,
    peer_ip: Ipv4Addr,
) -> (Foreground, Ipv4Addr) {
    let mut client = Foreground::start(
        containerd,
        "client",
        &[
            "sh",
            "-c",
            &format!(
                "ip -4 -o addr show eth0; ip route | grep ^default; \
                 ping -c1 -W5 {gw} >/dev/null && echo gateway-ok; \
                 wget -qO- http://{peer_ip}:8080/; read _ || :",
                gw = net.gateway
            ),
        ],
    );
    let (ip, prefix) = parse_inet(&client.line());
    assert!(net.subnet.contains(ip), "{ip} outside {}", net.subnet);
    assert_eq!(prefix, net.subnet.prefix());
    assert_ne!(ip, peer_ip);
    assert!(
        client
            .line()
            .starts_with(&format!("default via {}", net.gateway)),
        "default route not via the gateway"
    );
    assert_eq!(client.line(), "gateway-ok");
    assert_eq!(client.line(), "hello-from-peer");
    (client, ip)
}

#[test]
fn ctr_run_cni_address_gateway_peer_then_everything_released() {
    let _serial = exclusive();
    let conflist = shipped_conflist();
    let net = addressing(&conflist);
    let node = Netns::new("ctrd");
    let install = install_cni_bridge(&conflist);
    let containerd = Containerd::start(&node);
    containerd.import_image("default");

    let (peer, peer_ip) = server(&containerd, "peer");
    let (client, ip) = client_reaching(&containerd, &net, peer_ip);

    let held_client = assert_held(&node, &install, &net, "default-client", ip);
    let held_peer = assert_held(&node, &install, &net, "default-peer", peer_ip);
    assert_eq!(install.calls().verbs("default-client"), ["ADD"]);

    client.finish();
    assert_released(&node, &install, "default-client", &held_client);
    assert_held(&node, &install, &net, "default-peer", peer_ip);

    peer.finish();
    assert_released(&node, &install, "default-peer", &held_peer);
    assert_add_then_del(&install, &["default-client", "default-peer"]);
    assert_node_empty(&node, &install, &net);
}

#[test]
fn cri_pod_sandbox_gets_ip_record_names_pod_and_both_dels_release_it() {
    let _serial = exclusive();
    let conflist = shipped_conflist();
    let net = addressing(&conflist);
    let node = Netns::new("cri");
    let install = install_cni_bridge(&conflist);
    let containerd = Containerd::start(&node);
    containerd.import_image("k8s.io");

    let run = containerd.cri(&[
        "run-pod",
        "--name",
        "web-0",
        "--namespace",
        "demo",
        "--uid",
        "0c1e7a2e-web-0",
    ]);
    let id = run["pod_sandbox_id"]
        .as_str()
        .expect("pod_sandbox_id")
        .to_string();
    let status = containerd.cri(&["pod-status", &id]);
    let ip: Ipv4Addr = status["status"]["network"]["ip"]
        .as_str()
        .unwrap_or_else(|| panic!("no pod IP in {status}"))
        .parse()
        .expect("pod IP");
    assert!(
        net.subnet.contains(ip),
        "pod IP {ip} outside {}",
        net.subnet
    );

    let held = assert_held(&node, &install, &net, &id, ip);
    let record = install.record(&id, "eth0").expect("record");
    assert_eq!(record_str(&record, "/podNamespace"), "demo", "{record}");
    assert_eq!(record_str(&record, "/podName"), "web-0", "{record}");
    let calls = install.calls();
    assert_eq!(calls.verbs(&id), ["ADD"], "calls:\n{calls}");
    let add = &calls.for_container(&id)[0];
    assert!(
        add.args.contains("K8S_POD_NAMESPACE=demo") && add.args.contains("K8S_POD_NAME=web-0"),
        "CNI_ARGS: {}",
        add.args
    );
    // The node reaches the pod through the bridge.
    node.exec_ok("busybox", &["ping", "-c1", "-W5", &ip.to_string()]);

    containerd.cri(&["stop-pod", &id]);
    containerd.cri(&["remove-pod", &id]);
    let calls = install.calls();
    assert_eq!(calls.verbs(&id), ["ADD", "DEL", "DEL"], "calls:\n{calls}");
    let dels = &calls.for_container(&id)[1..];
    for del in dels {
        assert_eq!(del.exit, Some(0), "a DEL failed:\n{calls}");
    }
    assert!(
        !dels[0].netns.is_empty() && !dels[0].config["prevResult"].is_null(),
        "first DEL should carry the netns and prevResult:\n{calls}"
    );
    assert!(
        dels[1].netns.is_empty() && dels[1].config["prevResult"].is_null(),
        "second DEL should come without netns and prevResult:\n{calls}"
    );
    assert_released(&node, &install, &id, &held);
    assert_node_empty(&node, &install, &net);
}

/// `nsenter --net=<node> cnitool <verb> <network> <pod netns>` with the installed paths.
fn cnitool_run(node: &Netns, verb: &str, network: &str, pod: &Netns) -> String {
    checked(
        &format!("cnitool {verb}"),
        Command::new("nsenter")
            .arg(format!("--net={}", node.path().display()))
            .arg(cnitool())
            .args([verb, network, &pod.path().display().to_string()])
            .env("NETCONFPATH", "/etc/cni/net.d")
            .env("CNI_PATH", "/opt/cni/bin")
            .env("CNI_IFNAME", "eth0")
            .env("CNI_ARGS", "K8S_POD_NAMESPACE=tools;K8S_POD_NAME=probe")
            .output(),
    )
}

#[test]
fn cnitool_add_check_del_against_the_conflist() {
    let _serial = exclusive();
    let conflist = shipped_conflist();
    let net = addressing(&conflist);
    let node = Netns::new("cnitool");
    let pod = Netns::new("cnitool-pod");
    let install = install_cni_bridge(&conflist);

    let result: Value = serde_json::from_str(&cnitool_run(&node, "add", &install.network, &pod))
        .expect("cnitool add prints the result");
    let address = result["ips"][0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("no ips[0].address in {result}"));
    let (ip, prefix) = parse_inet(&format!("inet {address}"));
    assert!(net.subnet.contains(ip), "{ip} outside {}", net.subnet);
    assert_eq!(
        observe::addresses_of(&pod, "eth0"),
        vec![format!("{ip}/{prefix}")]
    );
    let id = install.calls().0[0].container_id.clone();
    let held = assert_held(&node, &install, &net, &id, ip);
    pod.exec_ok("busybox", &["ping", "-c1", "-W5", &net.gateway.to_string()]);

    cnitool_run(&node, "check", &install.network, &pod);
    cnitool_run(&node, "del", &install.network, &pod);
    let calls = install.calls();
    assert_eq!(calls.verbs(&id), ["ADD", "CHECK", "DEL"], "calls:\n{calls}");
    for call in &calls.for_container(&id)[1..] {
        assert_eq!(call.exit, Some(0), "calls:\n{calls}");
        assert!(
            !call.config["prevResult"].is_null(),
            "{} without prevResult:\n{calls}",
            call.command
        );
    }
    assert!(
        observe::link(&pod, "eth0").is_none(),
        "eth0 left in the pod"
    );
    assert_released(&node, &install, &id, &held);
    assert_node_empty(&node, &install, &net);
}

/// `conf/containerd/cni-bridge-gc` (the documented maintenance command) run in the node against
/// this containerd; asserts the GC it sent named exactly `valid` and succeeded.
fn gc(node: &Netns, containerd: &Containerd, install: &CniInstall, valid: &[&str]) {
    let script = repo_root().join("conf/containerd/cni-bridge-gc");
    checked(
        "cni-bridge-gc",
        Command::new("nsenter")
            .arg(format!("--net={}", node.path().display()))
            .arg(&script)
            .arg("--address")
            .arg(containerd.socket())
            .output(),
    );
    let calls = install.calls();
    let last = calls.0.last().expect("a call");
    assert_eq!(last.command, "GC", "calls:\n{calls}");
    assert_eq!(last.exit, Some(0), "calls:\n{calls}");
    assert_eq!(last.config["cniVersion"], "1.1.0");
    let expected: Value = valid
        .iter()
        .map(|id| json!({ "containerID": id, "ifname": "eth0" }))
        .collect();
    assert_eq!(last.config["cni.dev/valid-attachments"], expected);
}

#[test]
fn ctr_run_detached_killed_without_del_then_gc_releases_only_the_dead() {
    let _serial = exclusive();
    let conflist = shipped_conflist();
    let net = addressing(&conflist);
    let node = Netns::new("ctrd-gc");
    let install = install_cni_bridge(&conflist);
    let containerd = Containerd::start(&node);
    containerd.import_image("default");

    for id in ["keep", "leak"] {
        containerd.ctr_ok(
            "default",
            &[
                "run",
                "-d",
                "--cni",
                node_tests::containerd::IMAGE,
                id,
                "sleep",
                "3600",
            ],
        );
    }
    let ip_of = |id: &str| -> Ipv4Addr {
        let owner = format!("default-{id}\r\neth0");
        install
            .reservations()
            .into_iter()
            .find(|(_, o)| *o == owner)
            .unwrap_or_else(|| panic!("no reservation for {id}: {:?}", install.reservations()))
            .0
            .parse()
            .expect("reserved IP")
    };
    let keep = assert_held(&node, &install, &net, "default-keep", ip_of("keep"));
    let leak = assert_held(&node, &install, &net, "default-leak", ip_of("leak"));

    containerd.kill_and_remove("default", "leak");
    // No DEL was sent: the plugin still holds the dead container's IP, record and set entry.
    assert_eq!(install.calls().verbs("default-leak"), ["ADD"]);
    assert!(install.record("default-leak", "eth0").is_some());
    assert!(install
        .reservations()
        .contains(&(leak.ip.to_string(), "default-leak\r\neth0".to_string())));
    assert!(masquerade_set(&node).1.contains(&leak.ip.to_string()));

    let alive = containerd.ctr_ok("default", &["containers", "ls", "-q"]);
    assert_eq!(alive.split_whitespace().collect::<Vec<_>>(), ["keep"]);
    let cached = |id: &str| std::ffi::OsString::from(format!("{}-{id}-eth0", install.network));
    assert_eq!(
        install.libcni_cache_added(),
        [cached("default-keep"), cached("default-leak")].into()
    );
    gc(&node, &containerd, &install, &["default-keep"]);
    assert_released(&node, &install, "default-leak", &leak);
    assert_held(&node, &install, &net, "default-keep", keep.ip);
    assert_eq!(
        install.libcni_cache_added(),
        [cached("default-keep")].into()
    );

    containerd.kill_and_remove("default", "keep");
    gc(&node, &containerd, &install, &[]);
    assert_released(&node, &install, "default-keep", &keep);
    assert_eq!(install.calls().verbs("default-keep"), ["ADD"]);
    assert_node_empty(&node, &install, &net);
}

/// The same `ctr run --cni` flow with Debian's reference `bridge` + `host-local` on the scenario's
/// addressing: a check of the harness itself (image, containerd, install/restore, tap), so a
/// failure of the cni-bridge tests above points at cni-bridge.
#[test]
fn ctr_run_cni_harness_baseline_with_reference_plugins() {
    let _serial = exclusive();
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": "node-tests-reference",
        "plugins": [{
            "type": "bridge",
            "bridge": "bridge_home",
            "isGateway": true,
            "isDefaultGateway": true,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": "10.0.0.0/24", "gateway": "10.0.0.1" }]],
            },
        }],
    });
    let net = addressing(&conflist);
    let node = Netns::new("ctrd-ref");
    let bridge = Plugin::reference("bridge");
    let host_local = Plugin::reference("host-local");
    let install = CniInstall::new(
        &conflist,
        &[("bridge", bridge.path()), ("host-local", host_local.path())],
        Some("bridge"),
    );
    let containerd = Containerd::start(&node);
    containerd.import_image("default");

    let (peer, peer_ip) = server(&containerd, "peer");
    let (client, ip) = client_reaching(&containerd, &net, peer_ip);
    let mut expected = vec![
        (peer_ip.to_string(), "default-peer\r\neth0".to_string()),
        (ip.to_string(), "default-client\r\neth0".to_string()),
    ];
    expected.sort();
    assert_eq!(install.reservations(), expected);
    assert_eq!(bridge_ports(&node, &net.bridge).len(), 2);

    client.finish();
    peer.finish();
    assert_add_then_del(&install, &["default-client", "default-peer"]);
    assert_eq!(install.reservations(), vec![]);
    assert_eq!(bridge_ports(&node, &net.bridge), Vec::<String>::new());
    assert!(install.libcni_cache_added().is_empty());
}

/// The shipped template containerd renders the pod network from (`conf_template`).
fn shipped_template() -> std::path::PathBuf {
    repo_root().join("conf/containerd/cni-bridge.conflist.template")
}

/// The file containerd 1.6 renders `conf_template` into (`cniConfigFileName` in its CRI).
const RENDERED: &str = "/etc/cni/net.d/10-containerd-net.conflist";

/// `ip -o addr show dev eth0` inside the pod's namespace (at `netns`): its global addresses.
fn pod_addresses(netns: &str) -> Vec<String> {
    let out = checked(
        &format!("ip addr in {netns}"),
        Command::new("nsenter")
            .arg(format!("--net={netns}"))
            .args(["ip", "-o", "addr", "show", "dev", "eth0", "scope", "global"])
            .output(),
    );
    out.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace().skip_while(|w| !w.starts_with("inet"));
            words.next()?;
            words.next().map(str::to_string)
        })
        .collect()
}

/// `NetworkReady` from the CRI's `Status`: whether it has a network config loaded.
fn network_ready(containerd: &Containerd) -> bool {
    let status = containerd.cri(&["status"]);
    status["status"]["conditions"]
        .as_array()
        .unwrap_or_else(|| panic!("no conditions in {status}"))
        .iter()
        .find(|c| c["type"] == "NetworkReady")
        .unwrap_or_else(|| panic!("no NetworkReady condition in {status}"))["status"]
        .as_bool()
        .unwrap_or(false)
}

/// kubelet's path to a pod network on a node without a CNI config: containerd started with the
/// shipped `conf_template` and an empty `conf_dir` is not network-ready; `UpdateRuntimeConfig`
/// with the node's pod CIDR(s) (comma-separated, as kubelet sends them) renders the template into
/// `conf_dir`, the CRI loads it, and the next `RunPodSandbox` gets its addresses from those CIDRs
/// through cni-bridge (seen in the CRI's pod status and in the pod's namespace). Stopping and
/// removing the sandbox sends the DELs, which release everything.
fn rendered_template_gives_the_pod_its_address(tag: &str, pod_cidrs: &[&str]) {
    let _serial = exclusive();
    let node = Netns::new(tag);
    let plugin = Plugin::cni_bridge();
    let loopback = Plugin::reference("loopback");
    let install = CniInstall::without_conflist(
        "podnet",
        &[("cni-bridge", plugin.path()), ("loopback", loopback.path())],
        Some("cni-bridge"),
    );
    let containerd = Containerd::start_with_conf_template(&node, &shipped_template());
    containerd.import_image("k8s.io");
    assert!(
        std::fs::read_dir("/etc/cni/net.d")
            .expect("conf_dir")
            .next()
            .is_none(),
        "conf_dir starts empty"
    );
    assert!(!network_ready(&containerd), "no network config yet");

    let pod_cidr = pod_cidrs.join(",");
    assert_eq!(
        containerd.cri(&["update-runtime-config", "--pod-cidr", &pod_cidr]),
        json!({})
    );
    let text = std::fs::read_to_string(RENDERED)
        .unwrap_or_else(|e| panic!("{RENDERED} not rendered ({e}):\n{}", containerd.log()));
    let rendered: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{RENDERED} is not JSON ({e}):\n{text}"));
    assert_eq!(rendered["name"], install.network);
    assert_eq!(rendered["plugins"][0]["type"], "cni-bridge");
    let ranges: Value = pod_cidrs.iter().map(|c| json!([{ "subnet": c }])).collect();
    assert_eq!(rendered["plugins"][0]["ipam"]["ranges"], ranges, "{text}");
    // The CRI reloads conf_dir on the write (fsnotify): wait for it, as kubelet waits for
    // NetworkReady before it starts pods.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !network_ready(&containerd) {
        assert!(
            std::time::Instant::now() < deadline,
            "the rendered config was not loaded:\n{}",
            containerd.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    let run = containerd.cri(&[
        "run-pod",
        "--name",
        "web-0",
        "--namespace",
        "demo",
        "--uid",
        "7a1c-web-0",
    ]);
    let id = run["pod_sandbox_id"]
        .as_str()
        .expect("pod_sandbox_id")
        .to_string();
    let status = containerd.cri(&["pod-status", &id]);
    let network = &status["status"]["network"];
    let mut cri_ips = vec![network["ip"].as_str().unwrap_or_default().to_string()];
    if let Some(more) = network["additional_ips"].as_array() {
        cri_ips.extend(
            more.iter()
                .filter_map(|i| i["ip"].as_str())
                .map(str::to_string),
        );
    }
    assert_eq!(cri_ips.len(), pod_cidrs.len(), "{status}");
    let calls = install.calls();
    assert_eq!(calls.verbs(&id), ["ADD"], "calls:\n{calls}");
    let add = &calls.for_container(&id)[0];
    assert_eq!(
        add.config["ipam"]["ranges"], ranges,
        "the ADD got the rendered config"
    );
    let in_pod = pod_addresses(&add.netns);
    assert_eq!(in_pod.len(), pod_cidrs.len(), "{in_pod:?}");
    let mut held = Vec::new();
    for (cidr, ip) in pod_cidrs.iter().zip(&cri_ips) {
        let net: ipnetwork::IpNetwork = cidr.parse().unwrap();
        let ip: std::net::IpAddr = ip.parse().unwrap_or_else(|e| panic!("{ip}: {e}"));
        assert!(net.contains(ip), "pod IP {ip} outside {cidr}: {status}");
        assert!(
            in_pod.contains(&format!("{ip}/{}", net.prefix())),
            "{ip}/{} not on the pod's eth0: {in_pod:?}",
            net.prefix()
        );
        held.push(ip.to_string());
    }
    let mut reserved: Vec<String> = install.reservations().into_iter().map(|r| r.0).collect();
    reserved.sort();
    let mut want = held.clone();
    want.sort();
    assert_eq!(reserved, want);
    let record = install.record(&id, "eth0").expect("record");
    assert_eq!(record_str(&record, "/podName"), "web-0", "{record}");
    let host_veth = record_str(&record, "/hostVeth").to_string();
    assert_eq!(bridge_ports(&node, "cni0"), vec![host_veth.clone()]);
    // The node reaches the pod through the bridge, from the gateway of the rendered subnet.
    node.exec_ok("busybox", &["ping", "-c1", "-W5", &cri_ips[0]]);

    containerd.cri(&["stop-pod", &id]);
    containerd.cri(&["remove-pod", &id]);
    let calls = install.calls();
    assert_eq!(calls.verbs(&id), ["ADD", "DEL", "DEL"], "calls:\n{calls}");
    assert!(
        calls.for_container(&id).iter().all(|c| c.exit == Some(0)),
        "calls:\n{calls}"
    );
    assert_eq!(install.reservations(), vec![], "addresses released");
    assert!(install.record(&id, "eth0").is_none(), "record left");
    assert!(observe::link(&node, &host_veth).is_none(), "host veth left");
    assert_eq!(bridge_ports(&node, "cni0"), Vec::<String>::new());
    let (set, members) = masquerade_set(&node);
    assert_eq!(members, Vec::<String>::new(), "members left in {set}");
    assert!(
        install.libcni_cache_added().is_empty(),
        "libcni result cache entries left: {:?}",
        install.libcni_cache_added()
    );
}

#[test]
fn cri_update_runtime_config_renders_the_template_and_the_pod_gets_its_address() {
    rendered_template_gives_the_pod_its_address("tmpl", &["10.244.7.0/24"]);
}

/// Dual stack: both CIDRs kubelet sends become range sets (`{{.PodCIDRRanges}}`), and the pod
/// gets one address of each.
#[test]
fn cri_update_runtime_config_with_dual_stack_pod_cidrs_gives_both_families() {
    rendered_template_gives_the_pod_its_address("tmpl6", &["10.244.7.0/24", "fd00:10:244:7::/64"]);
}
