//! ipset-driven masquerade: pod addresses are members of one set per network and family
//! (`CNIB-<hash>` / `CNIB6-<hash>`, see [`names::masq_set`]), added and removed over netlink;
//! the iptables rules that use the set are a constant handful per network, every one of them
//! matching the set ([`nodenet::masquerade`]):
//!
//! ```text
//! -t nat -A POSTROUTING -m set --match-set SET src -m comment --comment "cni-bridge: NET" -j SET
//! -t nat -A SET -d SUBNET -m set --match-set SET src -m comment ... -j RETURN      (per subnet)
//! -t nat -A SET -d CIDR -m set --match-set SET src -m comment ... -j RETURN (per nonMasqueradeCIDRs entry)
//! -t nat -A SET ! -d 224.0.0.0/4 -m set --match-set SET src -m comment ... -j MASQUERADE
//! ```
//!
//! Every ADD proves them present from the set's kernel reference count (one netlink round trip,
//! no exec) and rewrites them when the count is wrong: a set left without rules by a failed or
//! killed ADD, or rules deleted by hand, heal at the next ADD. The count says how many rules use
//! the set, not which destinations they exempt, so the rules last written are also kept beside
//! the attachment records (`<set>.masquerade`, one small file read per ADD): a configuration
//! whose exempt list differs from them (another `nonMasqueradeCIDRs`, even of the same length)
//! makes the next ADD rewrite the chain.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use nodenet::attachment::{Lock, Records};
use nodenet::files::LockKind;
use nodenet::ipset::{Entry, Ipset, SetSpec, SetType};
use nodenet::masquerade::MasqueradeRules;
use nodenet::Family;

use crate::config::IpamConf;
use crate::error::{code, CniError, Result};
use crate::names::{self, SetGeneration};
use crate::result::IpConfig;

fn err(e: impl std::fmt::Display) -> CniError {
    CniError::new(code::MASQUERADE, format!("masquerade: {e}"))
}

fn open() -> Result<Ipset> {
    Ipset::open().map_err(err)
}

/// The rules of one network's set of one family: the network's subnets, then the
/// `nonMasqueradeCIDRs` not among them, exempt. The previous version's sets keep the rules it
/// wrote (subnets only, without the set match in the chain), so they are checked as they are.
pub fn rules(
    network: &str,
    family: Family,
    generation: SetGeneration,
    subnets: &[IpNetwork],
    non_masquerade: &[IpNetwork],
) -> MasqueradeRules {
    let set = names::masq_set(network, family, generation);
    let mut exempt: Vec<IpNetwork> = subnets
        .iter()
        .filter(|s| Family::of_net(s) == family)
        .map(|s| IpNetwork::new(s.network(), s.prefix()).unwrap_or(*s))
        .collect();
    if generation == SetGeneration::Current {
        for net in non_masquerade
            .iter()
            .filter(|n| Family::of_net(n) == family)
        {
            // A listed subnet already has its rule: one rule per destination.
            if !exempt.contains(net) {
                exempt.push(*net);
            }
        }
    }
    MasqueradeRules {
        family,
        chain: set.clone(),
        set,
        set_flags: "src",
        from: "POSTROUTING",
        jump_matches_set: true,
        comment: Some(format!("cni-bridge: {network}")),
        exempt,
        except: Some(family.multicast()),
        rules_match_set: generation == SetGeneration::Current,
    }
}

/// The subnets whose traffic is not masqueraded: the built-in IPAM's ranges, or else the
/// networks of the attachment's addresses.
pub fn subnets(ipam: &IpamConf, ips: &[IpConfig]) -> Vec<IpNetwork> {
    match ipam {
        IpamConf::Builtin(cfg) => cfg.subnets(),
        _ => ips
            .iter()
            .filter_map(|i| IpNetwork::new(i.address.network(), i.address.prefix()).ok())
            .collect(),
    }
}

fn families(ips: &[IpAddr]) -> Vec<Family> {
    Family::ALL
        .into_iter()
        .filter(|f| ips.iter().any(|ip| Family::of(*ip) == *f))
        .collect()
}

/// Adds the addresses to their family's set (created when absent), then proves the set's rules
/// present and as the config asks, and writes them when they are not. Writers of the rules are
/// serialized by the network's masquerade lock.
pub fn add(
    network: &str,
    ips: &[IpAddr],
    subnets: &[IpNetwork],
    non_masquerade: &[IpNetwork],
    records: &mut Records,
) -> Result<()> {
    if ips.is_empty() {
        return Ok(());
    }
    let ipset = open()?;
    for family in families(ips) {
        let set = names::masq_set(network, family, SetGeneration::Current);
        for ip in ips.iter().filter(|ip| Family::of(**ip) == family) {
            let entry = Entry::Ip(*ip);
            match ipset.add(&set, &entry) {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {
                    ipset
                        .create(&SetSpec::new(set.clone(), SetType::HashIp, family))
                        .map_err(err)?;
                    ipset.add(&set, &entry).map_err(err)?;
                }
                Err(e) => return Err(err(e)),
            }
        }
        let rules = rules(
            network,
            family,
            SetGeneration::Current,
            subnets,
            non_masquerade,
        );
        let wanted = rules.restore_input().map_err(err)?;
        if in_place(&rules, &wanted, &ipset, records)?.is_none() {
            continue;
        }
        records
            .lock(Lock::Masquerade, LockKind::Exclusive)
            .map_err(CniError::from)?;
        // A concurrent ADD may have written them while we waited.
        let Some(why) = in_place(&rules, &wanted, &ipset, records)? else {
            continue;
        };
        log::info!("masquerade rules of {set} {why}: writing them");
        rules.ensure().map_err(err)?;
        records
            .save_masquerade_rules(&set, wanted.as_bytes())
            .map_err(CniError::from)?;
        if !rules.proven(&ipset).map_err(err)? {
            log::warn!(
                "set {set} is used by rules other than cni-bridge's: its rules will be \
                 rewritten at every ADD until they are removed"
            );
        }
    }
    Ok(())
}

/// Why `rules` must be written (`None`: they are in place): the set's reference count differs
/// from their number, or the rules last written for the set were not `wanted` (the config's
/// exempt destinations changed). No exec: one netlink read and one small file read.
fn in_place(
    rules: &MasqueradeRules,
    wanted: &str,
    ipset: &Ipset,
    records: &Records,
) -> Result<Option<String>> {
    let references = ipset
        .header(&rules.set)
        .map_err(err)?
        .map_or(0, |i| i.references);
    if references != rules.expected_references() {
        return Ok(Some(format!(
            "not in place ({references} of {} set references)",
            rules.expected_references()
        )));
    }
    let written = records.masquerade_rules(&rules.set).unwrap_or_else(|e| {
        log::warn!("{e}; the masquerade rules are rewritten and it is replaced");
        None
    });
    Ok(match written {
        Some(w) if w == wanted.as_bytes() => None,
        Some(_) => Some("written for another configuration".to_string()),
        None => Some("not recorded as written".to_string()),
    })
}

/// Removes the addresses from the sets of `generations`; absent sets and members are fine.
pub fn del(network: &str, ips: &[IpAddr], generations: &[SetGeneration]) -> Result<()> {
    if ips.is_empty() {
        return Ok(());
    }
    let ipset = open()?;
    for generation in generations {
        for ip in ips {
            let set = names::masq_set(network, Family::of(*ip), *generation);
            match ipset.del(&set, &Entry::Ip(*ip)) {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(err(e)),
            }
        }
    }
    Ok(())
}

/// CHECK: every address is in its set and the set's rules are exactly the config's (exec, one
/// `iptables-save`): none missing, none left over from another configuration.
pub fn check(
    network: &str,
    ips: &[IpAddr],
    subnets: &[IpNetwork],
    non_masquerade: &[IpNetwork],
    generation: SetGeneration,
) -> Result<()> {
    let ipset = open()?;
    let mismatch = |m: String| CniError::new(code::CHECK_MISMATCH, m);
    for family in families(ips) {
        let set = names::masq_set(network, family, generation);
        for ip in ips.iter().filter(|ip| Family::of(**ip) == family) {
            match ipset.test(&set, &Entry::Ip(*ip)) {
                Ok(true) => {}
                Ok(false) => return Err(mismatch(format!("{ip} is not in ipset {set}"))),
                Err(e) if e.is_not_found() => {
                    return Err(mismatch(format!("ipset {set} does not exist")))
                }
                Err(e) => return Err(err(e)),
            }
        }
        let rules = rules(network, family, generation, subnets, non_masquerade);
        if let Some(difference) = rules.difference().map_err(err)? {
            return Err(mismatch(format!(
                "{} rules of {set} differ from the config: {difference}",
                rules.command()
            )));
        }
    }
    Ok(())
}

/// GC: removes every member of this network's sets (both generations) that is not in `keep`;
/// returns them.
pub fn retain(network: &str, keep: &[IpAddr]) -> Result<Vec<IpAddr>> {
    let ipset = open()?;
    let mut removed = Vec::new();
    for generation in [SetGeneration::Current, SetGeneration::Legacy] {
        for family in Family::ALL {
            let set = names::masq_set(network, family, generation);
            let Some(members) = ipset.list(&set).map_err(err)? else {
                continue;
            };
            for m in members {
                if let Entry::Ip(ip) = m {
                    if !keep.contains(&ip) && ipset.del(&set, &m).map_err(err)? {
                        removed.push(ip);
                    }
                }
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_rules_are_counted_legacy_rules_are_as_written() {
        let subnets: Vec<IpNetwork> =
            vec!["10.0.0.0/24".parse().unwrap(), "fd00::/64".parse().unwrap()];
        // The previous version knew no exempt list: its rules stay as it wrote them.
        let cluster: Vec<IpNetwork> = vec!["10.244.0.0/16".parse().unwrap()];
        let current = rules("podnet", Family::V4, SetGeneration::Current, &subnets, &[]);
        let set = names::masq_set("podnet", Family::V4, SetGeneration::Current);
        assert_eq!(current.expected_references(), 3);
        assert!(current
            .rules()
            .iter()
            .all(|(_, r)| r.windows(2).any(|w| w == ["--match-set", set.as_str()])));
        let legacy = rules(
            "podnet",
            Family::V4,
            SetGeneration::Legacy,
            &subnets,
            &cluster,
        );
        let text: Vec<String> = legacy
            .rules()
            .iter()
            .map(|(c, a)| format!("{c} {}", a.join(" ")))
            .collect();
        // Exactly what the previous version wrote.
        assert_eq!(
            text,
            vec![
                "CNIB-8fe508ed -d 10.0.0.0/24 -m comment --comment cni-bridge: podnet -j RETURN",
                "CNIB-8fe508ed ! -d 224.0.0.0/4 -m comment --comment cni-bridge: podnet -j MASQUERADE",
                "POSTROUTING -m set --match-set CNIB-8fe508ed src -m comment --comment cni-bridge: podnet -j CNIB-8fe508ed",
            ]
        );
        let r6 = rules("podnet", Family::V6, SetGeneration::Current, &subnets, &[]);
        assert_eq!(r6.exempt, vec!["fd00::/64".parse::<IpNetwork>().unwrap()]);
        assert_eq!(r6.except, Some("ff00::/8".parse().unwrap()));
    }

    /// The listed CIDRs follow the subnets in the family's chain, each once, every rule still
    /// matching the set, so the count grows by one per listed destination of the family.
    #[test]
    fn non_masquerade_cidrs_are_exempt_after_the_subnets() {
        let subnets: Vec<IpNetwork> = vec![
            "10.244.1.0/24".parse().unwrap(),
            "fd00:10:244:1::/64".parse().unwrap(),
        ];
        let cluster: Vec<IpNetwork> = [
            "10.244.0.0/16",
            "fd00:10:244::/56",
            "10.244.1.0/24",
            "100.64.0.0/10",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let v4 = rules(
            "podnet",
            Family::V4,
            SetGeneration::Current,
            &subnets,
            &cluster,
        );
        let set = names::masq_set("podnet", Family::V4, SetGeneration::Current);
        let text: Vec<String> = v4
            .rules()
            .iter()
            .map(|(c, a)| format!("{c} {}", a.join(" ")))
            .collect();
        let m = format!("-m set --match-set {set} src -m comment --comment cni-bridge: podnet");
        assert_eq!(
            text,
            vec![
                format!("{set} -d 10.244.1.0/24 {m} -j RETURN"),
                format!("{set} -d 10.244.0.0/16 {m} -j RETURN"),
                format!("{set} -d 100.64.0.0/10 {m} -j RETURN"),
                format!("{set} ! -d 224.0.0.0/4 {m} -j MASQUERADE"),
                format!("POSTROUTING {m} -j {set}"),
            ]
        );
        assert_eq!(v4.expected_references(), 5);
        let v6 = rules(
            "podnet",
            Family::V6,
            SetGeneration::Current,
            &subnets,
            &cluster,
        );
        assert_eq!(
            v6.exempt,
            ["fd00:10:244:1::/64", "fd00:10:244::/56"]
                .map(|s| s.parse::<IpNetwork>().unwrap())
                .to_vec()
        );
        assert_eq!(v6.expected_references(), 4);
        // Same length, other destinations: the count cannot tell them apart, the rules can.
        let other: Vec<IpNetwork> = vec!["10.96.0.0/12".parse().unwrap()];
        let one = rules(
            "podnet",
            Family::V4,
            SetGeneration::Current,
            &subnets,
            &cluster[..1],
        );
        let two = rules(
            "podnet",
            Family::V4,
            SetGeneration::Current,
            &subnets,
            &other,
        );
        assert_eq!(one.expected_references(), two.expected_references());
        assert_ne!(one.restore_input().unwrap(), two.restore_input().unwrap());
    }
}
