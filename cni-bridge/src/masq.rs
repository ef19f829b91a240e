//! ipset-driven masquerade: pod addresses are members of one set per network and family
//! (`CNIB-<hash>` / `CNIB6-<hash>`, see [`names::masq_set`]), added and removed over netlink;
//! the iptables rules that use the set are a constant handful per network, every one of them
//! matching the set ([`nodenet::masquerade`]):
//!
//! ```text
//! -t nat -A POSTROUTING -m set --match-set SET src -m comment --comment "cni-bridge: NET" -j SET
//! -t nat -A SET -d SUBNET -m set --match-set SET src -m comment ... -j RETURN      (per subnet)
//! -t nat -A SET ! -d 224.0.0.0/4 -m set --match-set SET src -m comment ... -j MASQUERADE
//! ```
//!
//! Every ADD proves them present from the set's kernel reference count (one netlink round trip,
//! no exec) and rewrites them when the count is wrong: a set left without rules by a failed or
//! killed ADD, or rules deleted by hand, heal at the next ADD.

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

/// The rules of one network's set of one family. The previous version's sets keep the rules it
/// wrote (without the set match in the chain), so they are checked as they are.
pub fn rules(
    network: &str,
    family: Family,
    generation: SetGeneration,
    subnets: &[IpNetwork],
) -> MasqueradeRules {
    let set = names::masq_set(network, family, generation);
    MasqueradeRules {
        family,
        chain: set.clone(),
        set,
        set_flags: "src",
        from: "POSTROUTING",
        jump_matches_set: true,
        comment: Some(format!("cni-bridge: {network}")),
        exempt: subnets
            .iter()
            .filter(|s| Family::of_net(s) == family)
            .copied()
            .collect(),
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
/// present and writes them when they are not. Writers of the rules are serialized by the
/// network's masquerade lock.
pub fn add(
    network: &str,
    ips: &[IpAddr],
    subnets: &[IpNetwork],
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
        let rules = rules(network, family, SetGeneration::Current, subnets);
        if rules.proven(&ipset).map_err(err)? {
            continue;
        }
        records
            .lock(Lock::Masquerade, LockKind::Exclusive)
            .map_err(CniError::from)?;
        // A concurrent ADD may have written them while we waited.
        if rules.proven(&ipset).map_err(err)? {
            continue;
        }
        log::info!(
            "masquerade rules of {set} not in place ({} of {} set references): writing them",
            ipset.header(&set).map_err(err)?.map_or(0, |i| i.references),
            rules.expected_references()
        );
        rules.ensure().map_err(err)?;
        if !rules.proven(&ipset).map_err(err)? {
            log::warn!(
                "set {set} is used by rules other than cni-bridge's: its rules will be \
                 rewritten at every ADD until they are removed"
            );
        }
    }
    Ok(())
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

/// CHECK: every address is in its set and every rule is present (exec, one `iptables-save`).
pub fn check(
    network: &str,
    ips: &[IpAddr],
    subnets: &[IpNetwork],
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
        if let Some(rule) = rules(network, family, generation, subnets)
            .missing()
            .map_err(err)?
        {
            return Err(mismatch(format!("iptables rule missing: {rule}")));
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
        let current = rules("podnet", Family::V4, SetGeneration::Current, &subnets);
        let set = names::masq_set("podnet", Family::V4, SetGeneration::Current);
        assert_eq!(current.expected_references(), 3);
        assert!(current
            .rules()
            .iter()
            .all(|(_, r)| r.windows(2).any(|w| w == ["--match-set", set.as_str()])));
        let legacy = rules("podnet", Family::V4, SetGeneration::Legacy, &subnets);
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
        let r6 = rules("podnet", Family::V6, SetGeneration::Current, &subnets);
        assert_eq!(r6.exempt, vec!["fd00::/64".parse::<IpNetwork>().unwrap()]);
        assert_eq!(r6.except, Some("ff00::/8".parse().unwrap()));
    }
}
