//! Pod routes between nodes (host-gw): for every other Node with pod CIDRs and an InternalIP on
//! a network this node is directly on, a route to each of its pod CIDRs via that address. Pure:
//! the wanted routes from the Nodes and this node's networks.

use crate::model::PodRoute;
use crate::objects::Node;
use ipnetwork::IpNetwork;
use std::collections::BTreeSet;

/// The routes node `me` needs to the other `nodes`' pods. A Node whose InternalIP of a pod
/// CIDR's family is on none of `networks` gets none (it needs an overlay or a router, which
/// host-gw is not); nor does a pod CIDR that overlaps one of this node's networks.
pub fn pod_routes(nodes: &[&Node], me: &str, networks: &BTreeSet<IpNetwork>) -> BTreeSet<PodRoute> {
    let mut out = BTreeSet::new();
    for n in nodes.iter().filter(|n| n.name != me) {
        for cidr in &n.pod_cidrs {
            let via = n.internal_ips.iter().find(|ip| {
                ip.is_ipv4() == cidr.is_ipv4()
                    && networks
                        .iter()
                        .any(|net| net.contains(**ip) && net.ip() != **ip)
            });
            let overlaps = networks
                .iter()
                .any(|net| net.contains(cidr.ip()) || cidr.contains(net.ip()));
            match via {
                Some(via) if !overlaps => {
                    out.insert(PodRoute {
                        dst: *cidr,
                        via: *via,
                    });
                }
                Some(_) => log::debug!(
                    "node {}: pod CIDR {cidr} overlaps a local network; no route",
                    n.name
                ),
                None => log::debug!(
                    "node {}: no InternalIP on a local network for {cidr}; no route",
                    n.name
                ),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ips: &[&str], cidrs: &[&str]) -> Node {
        Node {
            name: name.into(),
            zone: None,
            internal_ips: ips.iter().map(|i| i.parse().unwrap()).collect(),
            pod_cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
            eligible: true,
        }
    }

    #[test]
    fn routes_go_via_directly_reachable_internal_ips_per_family() {
        let me = node("n1", &["192.168.50.11"], &["10.244.1.0/24"]);
        let n2 = node(
            "n2",
            &["192.168.50.12", "fd00:50::12"],
            &["10.244.2.0/24", "fd00:244:0:2::/64"],
        );
        let far = node("n3", &["172.16.0.3"], &["10.244.3.0/24"]);
        let bare = node("n4", &["192.168.50.14"], &[]);
        let networks = BTreeSet::from([
            "192.168.50.11/24".parse().unwrap(),
            "10.244.1.1/24".parse().unwrap(),
            "fd00:50::11/64".parse().unwrap(),
        ]);
        let got = pod_routes(&[&me, &n2, &far, &bare], "n1", &networks);
        let got: Vec<String> = got.iter().map(|r| r.to_string()).collect();
        assert_eq!(
            got,
            vec![
                "10.244.2.0/24 via 192.168.50.12",
                "fd00:244:0:2::/64 via fd00:50::12"
            ]
        );
        // A pod CIDR that overlaps one of this node's networks (its own bridge) gets no route.
        let clash = node("n5", &["192.168.50.15"], &["10.244.1.0/24"]);
        assert!(pod_routes(&[&clash], "n1", &networks).is_empty());
    }
}
