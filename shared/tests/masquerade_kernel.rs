//! Kernel tests of `nodenet::masquerade` and `Ipset::header`: root only, each in a private
//! network namespace, checked against `ipset` and `iptables-save`.
//!
//! Run: `cargo test -p nodenet --test masquerade_kernel` as root.

mod common;

use common::{private_netns, run};
use nodenet::ipset::{Ipset, SetSpec, SetType};
use nodenet::masquerade::MasqueradeRules;
use nodenet::Family;

fn rules(set: &str) -> MasqueradeRules {
    MasqueradeRules {
        family: Family::V4,
        set: set.into(),
        set_flags: "src",
        chain: set.into(),
        from: "POSTROUTING",
        jump_matches_set: true,
        comment: Some("nodenet test: net".into()),
        exempt: vec![
            "10.0.0.0/24".parse().unwrap(),
            "10.1.0.0/24".parse().unwrap(),
        ],
        except: Some(Family::V4.multicast()),
        rules_match_set: true,
    }
}

fn references_by_tool(set: &str) -> u32 {
    run("ipset", &["list", "-t", set])
        .lines()
        .find_map(|l| l.strip_prefix("References:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("References line")
}

fn rules_naming(set: &str) -> usize {
    run("iptables-save", &["-t", "nat"])
        .lines()
        .filter(|l| l.starts_with("-A ") && l.contains(set))
        .count()
}

#[test]
fn the_reference_count_proves_the_rules_and_ensure_repairs_them() {
    private_netns();
    let ipset = Ipset::open().unwrap();
    let set = "nlw-masq";
    ipset
        .create(&SetSpec::new(set, SetType::HashIp, Family::V4))
        .unwrap();
    let r = rules(set);
    // Someone else's rule in the chain we jump from: never touched.
    let foreign = "-A POSTROUTING -s 192.0.2.0/24 -m comment --comment \"not ours\" -j MASQUERADE";
    run(
        "iptables",
        &[
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-s",
            "192.0.2.0/24",
            "-m",
            "comment",
            "--comment",
            "not ours",
            "-j",
            "MASQUERADE",
        ],
    );
    let has_foreign = || {
        run("iptables-save", &["-t", "nat"])
            .lines()
            .any(|l| l == foreign)
    };
    assert!(has_foreign());
    assert_eq!(r.expected_references(), 4);
    assert_eq!(ipset.header(set).unwrap().unwrap().references, 0);
    assert!(!r.proven(&ipset).unwrap(), "no rules yet");
    assert_eq!(r.difference().unwrap().map(|m| m.contains(set)), Some(true));

    assert!(r.ensure().unwrap(), "written");
    assert_eq!(rules_naming(set), 4);
    assert_eq!(ipset.header(set).unwrap().unwrap().references, 4);
    assert_eq!(references_by_tool(set), 4);
    assert!(r.proven(&ipset).unwrap());
    assert_eq!(r.difference().unwrap(), None);

    // Damage: the chain flushed, then a duplicate jump; each is seen and repaired.
    run("iptables", &["-t", "nat", "-F", set]);
    assert!(!r.proven(&ipset).unwrap());
    assert!(r.ensure().unwrap(), "the chain was rewritten");
    assert!(!r.ensure().unwrap(), "nothing left to repair");
    assert!(r.proven(&ipset).unwrap());
    let jump: Vec<String> = r.jump_rule();
    let mut args = vec!["-t", "nat", "-A", "POSTROUTING"];
    args.extend(jump.iter().map(String::as_str));
    run("iptables", &args);
    assert_eq!(ipset.header(set).unwrap().unwrap().references, 5);
    assert!(!r.proven(&ipset).unwrap());
    assert!(r.ensure().unwrap(), "the extra jump was deleted");
    assert!(r.proven(&ipset).unwrap());
    assert_eq!(rules_naming(set), 4);

    assert!(r.remove().unwrap());
    assert_eq!(rules_naming(set), 0);
    assert_eq!(ipset.header(set).unwrap().unwrap().references, 0);
    assert!(!r.remove().unwrap());
    assert!(
        has_foreign(),
        "the foreign rule survived every repair and the removal"
    );
    assert_eq!(ipset.header("nlw-absent").unwrap(), None);
    assert!(!rules("nlw-absent").proven(&ipset).unwrap());
}

/// Another exempt destination in place of one (a changed `nonMasqueradeCIDRs` of the same
/// length) keeps the reference count: the count alone cannot see it, the comparison with
/// `iptables-save` does, and `ensure` rewrites the chain to the new list.
#[test]
fn an_exempt_list_changed_at_the_same_length_is_a_difference_the_count_misses() {
    private_netns();
    let ipset = Ipset::open().unwrap();
    let set = "nlw-masq-cidrs";
    ipset
        .create(&SetSpec::new(set, SetType::HashIp, Family::V4))
        .unwrap();
    let old = rules(set);
    assert!(old.ensure().unwrap());
    let mut new = old.clone();
    new.exempt[1] = "10.244.0.0/16".parse().unwrap();
    assert_eq!(new.expected_references(), old.expected_references());
    assert!(
        new.proven(&ipset).unwrap(),
        "the count cannot tell them apart"
    );
    let difference = new.difference().unwrap().expect("a difference");
    assert!(
        difference.starts_with("missing: ") && difference.contains("10.244.0.0/16"),
        "{difference}"
    );
    assert!(new.ensure().unwrap(), "the chain was rewritten");
    assert_eq!(new.difference().unwrap(), None);
    let saved = run("iptables-save", &["-t", "nat"]);
    assert!(saved.contains("-d 10.244.0.0/16 "), "{saved}");
    assert!(!saved.contains("-d 10.1.0.0/24 "), "{saved}");
    assert_eq!(
        old.difference()
            .unwrap()
            .map(|d| d.starts_with("missing: ")),
        Some(true)
    );

    // Shorter: written exactly; an older list's rule put back by hand is a difference too.
    let mut shorter = new.clone();
    shorter.exempt.truncate(1);
    assert!(shorter.ensure().unwrap());
    assert_eq!(shorter.difference().unwrap(), None);
    let leftover = new.chain_rules()[1].clone();
    let mut args = vec!["-t", "nat", "-A", set];
    args.extend(leftover.iter().map(String::as_str));
    run("iptables", &args);
    assert_eq!(
        shorter
            .difference()
            .unwrap()
            .map(|d| d.starts_with("unexpected: ") && d.contains("10.244.0.0/16")),
        Some(true)
    );
    assert!(shorter.ensure().unwrap());
    assert_eq!(shorter.difference().unwrap(), None);
    assert_eq!(
        ipset.header(set).unwrap().unwrap().references,
        shorter.expected_references()
    );
    assert!(shorter.remove().unwrap());
}
