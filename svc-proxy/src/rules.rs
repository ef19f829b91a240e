//! svc-proxy's iptables rules: a constant handful per family, whatever the number of Services —
//! everything per Service, port or endpoint lives in the ipsets they match. kube-proxy's IPVS
//! mode rules, with `SVCPROXY-` chains and sets: off-cluster and external traffic to a VIP is
//! marked for masquerade (except `externalTrafficPolicy: Local`), marked traffic and hairpin
//! traffic are masqueraded, marked forwarded traffic is accepted, load-balancer source ranges
//! are enforced, and a new connection to a VIP's other ports is rejected. Written in the form
//! `iptables-save` prints, so what the kernel holds compares line for line.

use crate::model::{SetId, SetKind};
use ipnetwork::IpNetwork;
use nodenet::ruleset::{Chain, Jump, Ruleset};

/// The mark bit of traffic to masquerade (kube-proxy's default `masqueradeBit` 14).
pub const MASQ_MARK: &str = "0x4000";

/// What the rules depend on besides the family.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleOptions {
    /// `--cluster-cidr`: traffic to a cluster IP from outside these is masqueraded.
    pub cluster_cidrs: Vec<IpNetwork>,
    /// `--masquerade-all`: every cluster IP connection is masqueraded.
    pub masquerade_all: bool,
}

fn set(kind: SetKind, v6: bool) -> String {
    SetId {
        kind,
        v6: v6 && kind.has_family(),
    }
    .name()
}

fn rule(parts: &[&str]) -> String {
    parts.join(" ")
}

/// The rules of one family (`v6`).
pub fn ruleset(v6: bool, o: &RuleOptions) -> Ruleset {
    use SetKind::*;
    let s = |k| set(k, v6);
    let loopback_net = if v6 { "::1/128" } else { "127.0.0.0/8" };
    let reject = if v6 {
        "icmp6-port-unreachable"
    } else {
        "icmp-port-unreachable"
    };
    let mark = format!("{MASQ_MARK}/{MASQ_MARK}");

    let mut services = vec![rule(&["-s", loopback_net, "-j", "RETURN"])];
    let cluster = s(ClusterIp);
    let cidr = o.cluster_cidrs.iter().find(|c| c.is_ipv6() == v6).map(|c| {
        IpNetwork::new(c.network(), c.prefix())
            .unwrap_or(*c)
            .to_string()
    });
    services.push(match (o.masquerade_all, cidr) {
        (true, _) => rule(&[
            "-m set --match-set",
            &cluster,
            "dst,dst -j SVCPROXY-MARK-MASQ",
        ]),
        // Off-cluster traffic to a cluster IP may have come from another node: masquerade it so
        // the reply comes back through this node.
        (false, Some(c)) => rule(&[
            "!",
            "-s",
            &c,
            "-m set --match-set",
            &cluster,
            "dst,dst -j SVCPROXY-MARK-MASQ",
        ]),
        // Without the cluster's CIDR: the node's own traffic to a VIP (its source is the VIP,
        // the dummy device being local) is masqueraded.
        (false, None) => rule(&[
            "-m set --match-set",
            &cluster,
            "src,dst -j SVCPROXY-MARK-MASQ",
        ]),
    });
    let external = s(ExternalIp);
    let external_local = s(ExternalIpLocal);
    services.push(rule(&[
        "-m set --match-set",
        &external,
        "dst,dst -j SVCPROXY-MARK-MASQ",
    ]));
    for set in [&external, &external_local] {
        // Off-machine traffic (not from a bridge port, not from this host) and traffic to an
        // address that is local anyway may reach the external IP's service.
        services.push(rule(&[
            "-m set --match-set",
            set,
            "dst,dst -m physdev ! --physdev-is-in -m addrtype ! --src-type LOCAL -j ACCEPT",
        ]));
        services.push(rule(&[
            "-m set --match-set",
            set,
            "dst,dst -m addrtype --dst-type LOCAL -j ACCEPT",
        ]));
    }
    let lb = s(LoadBalancer);
    services.push(rule(&[
        "-m set --match-set",
        &lb,
        "dst,dst -j SVCPROXY-LOAD-BALANCER",
    ]));
    services.push("-m addrtype --dst-type LOCAL -j SVCPROXY-NODE-PORT".to_string());
    services.push(rule(&["-m set --match-set", &cluster, "dst,dst -j ACCEPT"]));
    services.push(rule(&["-m set --match-set", &lb, "dst,dst -j ACCEPT"]));

    let load_balancer = vec![
        rule(&[
            "-m set --match-set",
            &s(LoadBalancerLocal),
            "dst,dst -j RETURN",
        ]),
        "-j SVCPROXY-MARK-MASQ".to_string(),
    ];
    let mut node_port = Vec::new();
    for (proto, local, all, dirs) in [
        ("tcp", NodePortLocalTcp, NodePortTcp, "dst"),
        ("udp", NodePortLocalUdp, NodePortUdp, "dst"),
        ("sctp", NodePortLocalSctp, NodePortSctp, "dst,dst"),
    ] {
        node_port.push(rule(&[
            "-p",
            proto,
            "-m set --match-set",
            &s(local),
            dirs,
            "-j RETURN",
        ]));
        node_port.push(rule(&[
            "-p",
            proto,
            "-m set --match-set",
            &s(all),
            dirs,
            "-j SVCPROXY-MARK-MASQ",
        ]));
    }
    let postrouting = vec![
        rule(&[
            "-m set --match-set",
            &s(LoopBack),
            "dst,dst,src -j MASQUERADE",
        ]),
        rule(&["-m mark ! --mark", &mark, "-j RETURN"]),
        // Unmark, so a packet that goes through the stack again is not masqueraded twice.
        rule(&["-j MARK --set-xmark", &format!("{MASQ_MARK}/0x0")]),
        "-j MASQUERADE --random-fully".to_string(),
    ];
    let mark_masq = vec![rule(&["-j MARK --set-xmark", &mark])];

    let forward = vec![
        rule(&["-m mark --mark", &mark, "-j ACCEPT"]),
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT".to_string(),
    ];
    let hc = s(HealthCheckNodePort);
    let filter_node_port = vec![rule(&["-m set --match-set", &hc, "dst -j ACCEPT"])];
    let firewall = vec![rule(&[
        "-m set --match-set",
        &s(LoadBalancerFw),
        "dst,dst -j SVCPROXY-SOURCE-RANGES",
    ])];
    let source_ranges = vec![
        rule(&[
            "-m set --match-set",
            &s(LoadBalancerSourceCidr),
            "dst,dst,src -j RETURN",
        ]),
        rule(&[
            "-m set --match-set",
            &s(LoadBalancerSourceIp),
            "dst,dst,src -j RETURN",
        ]),
        "-j DROP".to_string(),
    ];
    // A connection to a VIP on a port that is none of its services' is refused at once
    // (kube-proxy #72236): the VIPs are not the node.
    let ipvs_filter = vec![
        rule(&["-m set --match-set", &lb, "dst,dst -j RETURN"]),
        rule(&["-m set --match-set", &cluster, "dst,dst -j RETURN"]),
        rule(&["-m set --match-set", &external, "dst,dst -j RETURN"]),
        rule(&["-m set --match-set", &external_local, "dst,dst -j RETURN"]),
        rule(&["-m set --match-set", &hc, "dst -j RETURN"]),
        rule(&[
            "-m conntrack --ctstate NEW -m set --match-set",
            &s(VipAddresses),
            "dst -j REJECT --reject-with",
            reject,
        ]),
    ];
    // The node itself may not reach a load balancer whose source ranges leave it out
    // (kube-proxy #119656); dropped before IPVS takes the connection.
    let out_filter = vec![rule(&[
        "-m set --match-set",
        &s(LoadBalancerNoNode),
        "dst,dst -j DROP",
    ])];

    let chain = |table: &'static str, name: &str, rules: Vec<String>| Chain {
        table,
        name: name.to_string(),
        rules,
    };
    let jump = Jump::to;
    Ruleset {
        chains: vec![
            chain("nat", "SVCPROXY-SERVICES", services),
            chain("nat", "SVCPROXY-LOAD-BALANCER", load_balancer),
            chain("nat", "SVCPROXY-NODE-PORT", node_port),
            chain("nat", crate::model::POSTROUTING_CHAIN, postrouting),
            chain("nat", "SVCPROXY-MARK-MASQ", mark_masq),
            chain("filter", "SVCPROXY-FORWARD", forward),
            chain("filter", "SVCPROXY-NODE-PORT", filter_node_port),
            chain("filter", "SVCPROXY-FIREWALL", firewall),
            chain("filter", "SVCPROXY-SOURCE-RANGES", source_ranges),
            chain("filter", "SVCPROXY-IPVS-FILTER", ipvs_filter),
            chain("raw", "SVCPROXY-OUT-FILTER", out_filter),
        ],
        jumps: vec![
            jump("nat", "PREROUTING", "SVCPROXY-SERVICES"),
            jump("nat", "OUTPUT", "SVCPROXY-SERVICES"),
            jump("nat", "POSTROUTING", crate::model::POSTROUTING_CHAIN),
            jump("filter", "FORWARD", "SVCPROXY-FORWARD"),
            jump("filter", "FORWARD", "SVCPROXY-FIREWALL"),
            jump("filter", "INPUT", "SVCPROXY-NODE-PORT"),
            jump("filter", "INPUT", "SVCPROXY-FIREWALL"),
            jump("filter", "INPUT", "SVCPROXY-IPVS-FILTER"),
            jump("raw", "OUTPUT", "SVCPROXY-OUT-FILTER"),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rule count is the same at any number of Services: nothing in it depends on them.
    #[test]
    fn a_constant_handful_per_family() {
        let v4 = ruleset(false, &RuleOptions::default());
        let v6 = ruleset(true, &RuleOptions::default());
        let count = |r: &Ruleset| r.chains.iter().map(|c| c.rules.len()).sum::<usize>();
        assert_eq!((count(&v4), v4.jumps.len()), (38, 9));
        assert_eq!(count(&v6), count(&v4));
        let all: Vec<&String> = v6.chains.iter().flat_map(|c| &c.rules).collect();
        assert!(all.iter().any(|r| r.contains("SVCPROXY-6-CLUSTER-IP")));
        assert!(all.iter().any(|r| r.contains("icmp6-port-unreachable")));
        // Port bitmaps serve both families.
        assert!(all.iter().any(|r| r.contains("SVCPROXY-NODE-PORT-TCP ")));
    }

    #[test]
    fn the_cluster_cidr_decides_what_is_masqueraded() {
        let services = |o: &RuleOptions| ruleset(false, o).chains[0].rules[1].clone();
        assert_eq!(
            services(&RuleOptions::default()),
            "-m set --match-set SVCPROXY-CLUSTER-IP src,dst -j SVCPROXY-MARK-MASQ"
        );
        let cidr = RuleOptions {
            cluster_cidrs: vec![
                "fd00:244::/56".parse().unwrap(),
                "10.244.0.7/16".parse().unwrap(),
            ],
            masquerade_all: false,
        };
        assert_eq!(
            services(&cidr),
            "! -s 10.244.0.0/16 -m set --match-set SVCPROXY-CLUSTER-IP dst,dst -j SVCPROXY-MARK-MASQ"
        );
        let all = RuleOptions {
            masquerade_all: true,
            ..cidr
        };
        assert_eq!(
            services(&all),
            "-m set --match-set SVCPROXY-CLUSTER-IP dst,dst -j SVCPROXY-MARK-MASQ"
        );
    }
}
