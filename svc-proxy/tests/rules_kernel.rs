//! svc-proxy's iptables rules against the real iptables and kernel (root; this machine's kernel
//! has iptables, ipset and every match the rules use), each test in a private network
//! namespace: the rules are written in the exact form `iptables-save` prints them (so the drift
//! check compares line for line and finds nothing to repair), the sets' reference counts are
//! what the exec-free proof expects, a change by hand is repaired, and removal leaves nothing.

use nodenet::ipset::Ipset;
use nodenet::iptables::Iptables;
use nodenet::Family;
use svc_proxy::kernel::{expected_references, spec};
use svc_proxy::model::SetId;
use svc_proxy::rules::{ruleset, RuleOptions};

fn private_netns() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this kernel test needs root (it creates a private network namespace); run it as root"
    );
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .expect("unshare(CLONE_NEWNET) for a private test namespace");
}

fn save(ipt: &Iptables, table: &str) -> String {
    ipt.save(table).unwrap()
}

fn check_family(v6: bool) {
    private_netns();
    let ipset = Ipset::open().unwrap();
    for set in SetId::family(false).chain(SetId::family(v6)) {
        ipset.create(&spec(set)).unwrap();
    }
    let family = if v6 { Family::V6 } else { Family::V4 };
    let ipt = Iptables::new(family);
    let options = RuleOptions {
        cluster_cidrs: vec![
            "10.244.0.0/16".parse().unwrap(),
            "fd00:244::/56".parse().unwrap(),
        ],
        masquerade_all: false,
    };
    let rules = ruleset(v6, &options);
    let written = rules.ensure(&ipt).unwrap();
    assert_eq!(written, vec!["filter", "nat", "raw"]);
    for table in rules.tables() {
        assert_eq!(
            rules.repair(table, &save(&ipt, table)),
            None,
            "{table}: iptables-save prints the rules as written:\n{}",
            save(&ipt, table)
        );
    }
    assert_eq!(
        rules.ensure(&ipt).unwrap(),
        Vec::<&str>::new(),
        "nothing to repair"
    );
    for (set, n) in expected_references(&rules, v6) {
        let refs = ipset.header(&set.name()).unwrap().unwrap().references;
        assert_eq!(refs, n, "{set}: references");
    }

    // Drift by hand: a rule deleted, a jump deleted. The next check puts both back.
    let vips = SetId::of(
        svc_proxy::model::SetKind::VipAddresses,
        if v6 {
            "::1".parse().unwrap()
        } else {
            "10.0.0.1".parse().unwrap()
        },
    );
    let reject = if v6 {
        "icmp6-port-unreachable"
    } else {
        "icmp-port-unreachable"
    };
    let out = std::process::Command::new(ipt.command())
        .args([
            "-w",
            "-t",
            "filter",
            "-D",
            "SVCPROXY-IPVS-FILTER",
            "-m",
            "conntrack",
            "--ctstate",
            "NEW",
            "-m",
            "set",
            "--match-set",
            &vips.name(),
            "dst",
            "-j",
            "REJECT",
            "--reject-with",
            reject,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(ipt
        .delete_rule("nat", "PREROUTING", &["-j", "SVCPROXY-SERVICES"])
        .unwrap());
    assert_eq!(
        ipset.header(&vips.name()).unwrap().unwrap().references,
        0,
        "the reference count shows the deleted rule"
    );
    assert_eq!(rules.ensure(&ipt).unwrap(), vec!["filter", "nat"]);
    for table in rules.tables() {
        assert_eq!(
            rules.repair(table, &save(&ipt, table)),
            None,
            "{table} repaired"
        );
    }

    // Removal: no chain, no jump of ours left; the built-in chains stay.
    assert!(rules.remove(&ipt).unwrap());
    for table in rules.tables() {
        let text = save(&ipt, table);
        assert!(!text.contains("SVCPROXY"), "{table}:\n{text}");
    }
    assert!(
        !rules.remove(&ipt).unwrap(),
        "a second removal finds nothing"
    );
}

#[test]
fn ipv4_rules_round_trip_are_proven_repaired_and_removed() {
    check_family(false);
}

#[test]
fn ipv6_rules_round_trip_are_proven_repaired_and_removed() {
    check_family(true);
}
