//! Bad input: each case gets the spec's error code on stdout (non-zero exit) and leaves the node
//! exactly as it was — no bridge, veth, reservation, record, set or rule appears.

use node_tests::cni::{Flavor, Invocation, Node, Pod};
use node_tests::observe;
use serde_json::{json, Value};

const NET: &str = "podnet";

struct Case {
    node: Node,
    pod: Pod,
    flavor: Flavor,
    config: Value,
}

impl Case {
    fn new() -> Case {
        let flavor = Flavor::cni_bridge();
        let node = Node::new("err-node");
        let pod = node.pod("err-pod");
        let mut config = flavor.config(&node, "1.0.0", NET, "10.0.0.0/24");
        config["ipMasq"] = json!(true);
        Case {
            node,
            pod,
            flavor,
            config,
        }
    }

    /// A well-formed ADD for this case's pod; tests spoil one thing.
    fn add(&self) -> Invocation {
        self.node
            .invoke(&self.flavor.plugin, "ADD")
            .pod(&self.pod)
            .ifname("eth0")
            .config(&self.config)
    }

    /// Runs `inv`, expects exactly `code` with `needle` in the message, and an unchanged node/pod.
    fn rejects(&self, inv: Invocation, code: u64, needle: &str) {
        let before = self.node.state();
        let pod_before = observe::links(&self.pod.ns);
        let out = inv.run();
        let err = out.error_code(code);
        assert!(
            err.text().contains(needle),
            "error should name `{needle}`: {err:?}\n{out}"
        );
        assert_eq!(
            self.node.state(),
            before,
            "node changed by rejected input:\n{out}"
        );
        assert_eq!(
            observe::links(&self.pod.ns),
            pod_before,
            "pod changed:\n{out}"
        );
    }

    fn with(&self, key: &str, value: Value) -> Value {
        let mut c = self.config.clone();
        c[key] = value;
        c
    }
}

#[test]
fn bad_json_is_6() {
    let c = Case::new();
    c.rejects(
        c.add().stdin(b"{\"cniVersion\": \"1.0.0\", \"name\":"),
        6,
        "",
    );
}

#[test]
fn wrongly_typed_key_is_6() {
    let c = Case::new();
    let config = c.with("mtu", json!("big"));
    c.rejects(c.add().config(&config), 6, "mtu");
}

#[test]
fn missing_cni_command_is_4() {
    let c = Case::new();
    c.rejects(c.add().unset("CNI_COMMAND"), 4, "CNI_COMMAND");
}

#[test]
fn unknown_cni_command_is_4() {
    let c = Case::new();
    c.rejects(c.add().env("CNI_COMMAND", "FROB"), 4, "CNI_COMMAND");
}

#[test]
fn missing_container_id_is_4() {
    let c = Case::new();
    c.rejects(c.add().unset("CNI_CONTAINERID"), 4, "CNI_CONTAINERID");
}

#[test]
fn missing_netns_on_add_is_4() {
    let c = Case::new();
    c.rejects(c.add().unset("CNI_NETNS"), 4, "CNI_NETNS");
}

#[test]
fn missing_ifname_on_add_is_4() {
    let c = Case::new();
    c.rejects(c.add().unset("CNI_IFNAME"), 4, "CNI_IFNAME");
}

/// The spec: container IDs are alphanumeric first, then alphanumerics, `_`, `.`, `-`.
#[test]
fn container_id_with_path_characters_is_4() {
    let c = Case::new();
    for id in ["../../etc/passwd", "a/b", ".hidden", "..", "a b"] {
        c.rejects(c.add().container_id(id), 4, "CNI_CONTAINERID");
    }
}

/// The spec: interface names are 1-15 chars, not `.`/`..`, no `/`, `:` or whitespace.
#[test]
fn bad_interface_names_are_4() {
    let c = Case::new();
    for name in ["a/b", "..", ".", "eth:0", "eth 0", "abcdefghijklmnop"] {
        c.rejects(c.add().ifname(name), 4, "CNI_IFNAME");
    }
}

/// The spec: network names follow the container-ID rule; a bad one is invalid config.
#[test]
fn bad_network_names_are_7() {
    let c = Case::new();
    for name in ["a/b", "..", "../etc", "-x"] {
        let config = c.with("name", json!(name));
        c.rejects(c.add().config(&config), 7, "name");
    }
}

#[test]
fn missing_network_name_is_7() {
    let c = Case::new();
    let mut config = c.config.clone();
    config.as_object_mut().unwrap().remove("name");
    c.rejects(c.add().config(&config), 7, "name");
}

#[test]
fn unsupported_cni_versions_are_1() {
    let c = Case::new();
    for v in ["0.2.0", "0.1.0", "9.9.9"] {
        let config = c.with("cniVersion", json!(v));
        c.rejects(c.add().config(&config), 1, v);
    }
}

/// Known reference-plugin keys this plugin does not implement: an error naming the key when set
/// to a non-default value, never silently ignored.
#[test]
fn unimplemented_keys_are_2_naming_the_key() {
    let c = Case::new();
    for (key, value) in [
        ("vlanTrunk", json!([{"id": 5}])),
        ("macspoofchk", json!(true)),
        ("disableContainerInterface", json!(true)),
    ] {
        let config = c.with(key, value);
        c.rejects(c.add().config(&config), 2, key);
    }
}

/// The same keys at their default values are accepted.
#[test]
fn unimplemented_keys_at_default_values_are_accepted() {
    let c = Case::new();
    let mut config = c.config.clone();
    config["macspoofchk"] = json!(false);
    config["disableContainerInterface"] = json!(false);
    config["vlanTrunk"] = json!([]);
    c.add().config(&config).run().success();
}

#[test]
fn invalid_subnets_are_7() {
    let c = Case::new();
    for subnet in ["10.0.0.0/33", "banana", "10.0.0.300/24"] {
        let mut config = c.config.clone();
        config["ipam"]["subnet"] = json!(subnet);
        c.rejects(c.add().config(&config), 7, "subnet");
    }
}

#[test]
fn range_outside_subnet_is_7() {
    let c = Case::new();
    let mut config = c.config.clone();
    config["ipam"]["rangeStart"] = json!("10.9.0.2");
    c.rejects(c.add().config(&config), 7, "rangeStart");
}

#[test]
fn hairpin_with_promisc_is_7() {
    let c = Case::new();
    let mut config = c.config.clone();
    config["hairpinMode"] = json!(true);
    config["promiscMode"] = json!(true);
    c.rejects(c.add().config(&config), 7, "promiscMode");
}

/// A netns path that does not exist: the container is unknown (3).
#[test]
fn missing_netns_path_is_3() {
    let c = Case::new();
    c.rejects(
        c.add().netns("/run/netns/does-not-exist-here"),
        3,
        "does-not-exist-here",
    );
}

/// An existing link named like the bridge that is not a bridge: a clear error, nothing touched.
#[test]
fn bridge_name_taken_by_a_non_bridge_fails() {
    let c = Case::new();
    c.node.ns.ip(&[
        "link", "add", "cnib0", "type", "veth", "peer", "name", "cnib0p",
    ]);
    let before = c.node.state();
    let out = c.add().run();
    // Plugin-specific code (docs/CNI-BRIDGE.md): 102.
    let err = out.error_code(102);
    assert!(err.text().contains("cnib0"), "{err:?}");
    assert_eq!(c.node.state(), before, "{out}");
}

/// `nonMasqueradeCIDRs`: a bare address, host bits, a bad prefix or a repeated entry is invalid
/// config naming the key; a list of the wrong JSON type is a decoding failure naming it.
#[test]
fn bad_non_masquerade_cidrs_are_7_naming_the_key() {
    let c = Case::new();
    for list in [
        json!(["10.244.0.0"]),
        json!(["10.244.1.0/16"]),
        json!(["10.244.0.0/33"]),
        json!(["fd00::1/56"]),
        json!(["10.244.0.0/16", "10.244.0.0/16"]),
    ] {
        let config = c.with("nonMasqueradeCIDRs", list);
        c.rejects(c.add().config(&config), 7, "nonMasqueradeCIDRs");
    }
    let config = c.with("nonMasqueradeCIDRs", json!("10.244.0.0/16"));
    c.rejects(c.add().config(&config), 6, "nonMasqueradeCIDRs");
}
