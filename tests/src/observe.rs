//! Read-only views of a namespace's kernel state, taken with the operator's tools (`ip -j -d`,
//! `ipset list`, `iptables-save`) so they are independent of the code under test.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::netns::Netns;

/// One link as `ip -j -d link show` reports it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Link {
    pub name: String,
    pub index: u64,
    /// `linkinfo.info_kind` (`bridge`, `veth`, ...); `None` for `lo`.
    pub kind: Option<String>,
    /// The bridge this link is a port of.
    pub master: Option<String>,
    pub mtu: u64,
    pub mac: String,
    /// `UP` in the flags (administratively up).
    pub up: bool,
    /// `PROMISC` in the flags.
    pub promisc: bool,
    /// Bridge port hairpin (`info_slave_data.hairpin`), for ports only.
    pub hairpin: Option<bool>,
    /// Bridge port isolation (`info_slave_data.isolated`), for ports only.
    pub isolated: Option<bool>,
}

/// `ip -n <ns> -j -d link show`.
pub fn links(ns: &Netns) -> Vec<Link> {
    let v = json(&ns.ip(&["-j", "-d", "link", "show"]));
    v.as_array()
        .expect("ip -j link: array")
        .iter()
        .map(|l| {
            let flags: Vec<&str> = l["flags"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            Link {
                name: l["ifname"].as_str().unwrap_or_default().to_string(),
                index: l["ifindex"].as_u64().unwrap_or_default(),
                kind: l["linkinfo"]["info_kind"].as_str().map(str::to_string),
                master: l["master"].as_str().map(str::to_string),
                mtu: l["mtu"].as_u64().unwrap_or_default(),
                mac: l["address"].as_str().unwrap_or_default().to_string(),
                up: flags.contains(&"UP"),
                promisc: flags.contains(&"PROMISC"),
                hairpin: l["linkinfo"]["info_slave_data"]["hairpin"].as_bool(),
                isolated: l["linkinfo"]["info_slave_data"]["isolated"].as_bool(),
            }
        })
        .collect()
}

/// The link named `name`, if present (`ip link show <name>`).
pub fn link(ns: &Netns, name: &str) -> Option<Link> {
    links(ns).into_iter().find(|l| l.name == name)
}

/// Names of the ports of bridge `bridge` (`ip link show master <bridge>`).
pub fn bridge_ports(ns: &Netns, bridge: &str) -> Vec<Link> {
    links(ns)
        .into_iter()
        .filter(|l| l.master.as_deref() == Some(bridge))
        .collect()
}

/// Links of kind `veth` (`ip link show type veth`).
pub fn veths(ns: &Netns) -> Vec<Link> {
    links(ns)
        .into_iter()
        .filter(|l| l.kind.as_deref() == Some("veth"))
        .collect()
}

/// Global-scope addresses per device as `ip -j addr show` reports them: `(dev, "a.b.c.d/len")`.
pub fn addresses(ns: &Netns) -> BTreeSet<(String, String)> {
    let v = json(&ns.ip(&["-j", "addr", "show"]));
    let mut out = BTreeSet::new();
    for l in v.as_array().expect("ip -j addr: array") {
        let dev = l["ifname"].as_str().unwrap_or_default();
        for a in l["addr_info"].as_array().into_iter().flatten() {
            if a["scope"] == "global" {
                let cidr = format!(
                    "{}/{}",
                    a["local"].as_str().unwrap_or_default(),
                    a["prefixlen"]
                );
                out.insert((dev.to_string(), cidr));
            }
        }
    }
    out
}

/// Global addresses of one device (`ip addr show dev <dev>`), as CIDR strings.
pub fn addresses_of(ns: &Netns, dev: &str) -> Vec<String> {
    addresses(ns)
        .into_iter()
        .filter(|(d, _)| d == dev)
        .map(|(_, a)| a)
        .collect()
}

/// One IPv4 route of the main table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    /// `default` or a CIDR (`ip` prints host routes without `/32`).
    pub dst: String,
    pub gateway: Option<String>,
    pub dev: String,
}

/// `ip -n <ns> -j -4 route show table main`.
pub fn routes(ns: &Netns) -> Vec<Route> {
    routes_family(ns, "-4")
}

/// `ip -n <ns> -j -6 route show table main` (includes link-local `fe80::/64` routes).
pub fn routes6(ns: &Netns) -> Vec<Route> {
    routes_family(ns, "-6")
}

fn routes_family(ns: &Netns, family: &str) -> Vec<Route> {
    let v = json(&ns.ip(&["-j", family, "route", "show", "table", "main"]));
    v.as_array()
        .expect("ip -j route: array")
        .iter()
        .map(|r| Route {
            dst: r["dst"].as_str().unwrap_or_default().to_string(),
            gateway: r["gateway"].as_str().map(str::to_string),
            dev: r["dev"].as_str().unwrap_or_default().to_string(),
        })
        .collect()
}

/// `/proc/sys/<key>` as seen from inside `ns` (e.g. `net/ipv4/ip_forward`), trimmed.
pub fn sysctl(ns: &Netns, key: &str) -> String {
    let path = Path::new("/proc/sys").join(key);
    ns.exec_ok("cat", &[&path.to_string_lossy()])
        .trim()
        .to_string()
}

/// Names of all ipsets in `ns` (`ipset list -n`).
pub fn ipset_names(ns: &Netns) -> BTreeSet<String> {
    ns.exec_ok("ipset", &["list", "-n"])
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Members of ipset `set` (`ipset list <set>`, the lines after `Members:`), without options such
/// as timeouts.
pub fn ipset_members(ns: &Netns, set: &str) -> BTreeSet<String> {
    let out = ns.exec_ok("ipset", &["list", set]);
    out.lines()
        .skip_while(|l| !l.starts_with("Members:"))
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().next().unwrap_or_default().to_string())
        .collect()
}

/// The ipset type (`Type:` line of `ipset list <set>`), e.g. `hash:ip`.
pub fn ipset_type(ns: &Netns, set: &str) -> String {
    let out = ns.exec_ok("ipset", &["list", set]);
    out.lines()
        .find_map(|l| l.strip_prefix("Type:"))
        .map(|t| t.trim().to_string())
        .unwrap_or_default()
}

/// Every rule of every table, IPv4 and IPv6, as `<iptables|ip6tables> <table> -A ...` lines from
/// `iptables-save` / `ip6tables-save`.
pub fn iptables_rules(ns: &Netns) -> Vec<String> {
    let mut rules = Vec::new();
    for tool in ["iptables", "ip6tables"] {
        let save = ns.exec_ok(&format!("{tool}-save"), &[]);
        let mut table = String::new();
        for line in save.lines() {
            if let Some(t) = line.strip_prefix('*') {
                table = t.to_string();
            } else if line.starts_with("-A ") {
                rules.push(format!("{tool} {table} {line}"));
            }
        }
    }
    rules
}

/// Everything a plugin may change on a node, for "nothing changed" comparisons: links (without
/// indexes and MACs of pod ends, which are not on the node), global addresses, IPv4 routes,
/// ipsets with members, iptables rules, `ip_forward`, and the files below some directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    pub links: Vec<Link>,
    pub addresses: BTreeSet<(String, String)>,
    pub routes: Vec<Route>,
    pub ipsets: BTreeMap<String, BTreeSet<String>>,
    pub iptables: Vec<String>,
    pub ip_forward: String,
    /// Path → content (lossy UTF-8, so a failed comparison prints readable JSON records).
    pub files: BTreeMap<PathBuf, String>,
}

impl NodeState {
    /// Captures `ns` and the files under `dirs` (keyed by their full path).
    pub fn capture(ns: &Netns, dirs: &[PathBuf]) -> NodeState {
        let mut links = links(ns);
        links.sort();
        let ipsets = ipset_names(ns)
            .into_iter()
            .map(|s| {
                let members = ipset_members(ns, &s);
                (s, members)
            })
            .collect();
        let mut files = BTreeMap::new();
        for dir in dirs {
            for (rel, content) in crate::fs::snapshot(dir) {
                files.insert(
                    dir.join(rel),
                    String::from_utf8_lossy(&content).into_owned(),
                );
            }
        }
        NodeState {
            links,
            addresses: addresses(ns),
            routes: routes(ns),
            ipsets,
            iptables: iptables_rules(ns),
            ip_forward: sysctl(ns, "net/ipv4/ip_forward"),
            files,
        }
    }
}

impl NodeState {
    /// This state without the allocator's bookkeeping files (`lock`, `last_reserved_ip.*`),
    /// which host-local itself creates and advances even for an allocation it later releases.
    pub fn without_ipam_bookkeeping(mut self) -> NodeState {
        self.files.retain(|path, _| {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default();
            name != "lock" && !name.starts_with("last_reserved_ip.")
        });
        self
    }
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}
