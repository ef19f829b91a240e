//! ipset-driven masquerade: pod addresses are members of one set per network and family
//! (`CNIB-<hash8>` / `CNIB6-<hash8>`), added and removed over netlink; the iptables rules that
//! use the set are a constant handful, added only when the set is created:
//!
//! ```text
//! -t nat -A POSTROUTING -m set --match-set SET src -m comment --comment "cni-bridge: NET" -j SET
//! -t nat -A SET -d SUBNET -m comment --comment "cni-bridge: NET" -j RETURN      (per subnet)
//! -t nat -A SET ! -d 224.0.0.0/4 -m comment --comment "cni-bridge: NET" -j MASQUERADE
//! ```

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use nodenet::ipset::{Entry, Family, Ipset, SetSpec, SetType};
use nodenet::iptables::{self, Iptables, Position};

use crate::config::IpamConf;
use crate::error::{code, CniError, Result};
use crate::names;
use crate::result::IpConfig;

fn err(e: impl std::fmt::Display) -> CniError {
    CniError::new(code::MASQUERADE, format!("masquerade: {e}"))
}

fn open() -> Result<Ipset> {
    Ipset::open().map_err(err)
}

/// The rules of one network's set, in the order they are added: (chain, rule).
pub fn rules(
    network: &str,
    set: &str,
    v6: bool,
    subnets: &[IpNetwork],
) -> Vec<(String, Vec<String>)> {
    let comment = format!("cni-bridge: {network}");
    let tagged = |mut r: Vec<String>| {
        let mut out = Vec::with_capacity(r.len() + 4);
        let target = r.split_off(r.len() - 2);
        out.append(&mut r);
        out.extend(["-m", "comment", "--comment", &comment].map(String::from));
        out.extend(target);
        out
    };
    let mut out = Vec::new();
    for s in subnets.iter().filter(|s| s.is_ipv6() == v6) {
        let net = IpNetwork::new(s.network(), s.prefix()).unwrap_or(*s);
        out.push((
            set.to_string(),
            tagged(vec![
                "-d".into(),
                net.to_string(),
                "-j".into(),
                "RETURN".into(),
            ]),
        ));
    }
    let multicast = if v6 { "ff00::/8" } else { "224.0.0.0/4" };
    out.push((
        set.to_string(),
        tagged(vec![
            "!".into(),
            "-d".into(),
            multicast.into(),
            "-j".into(),
            "MASQUERADE".into(),
        ]),
    ));
    out.push((
        "POSTROUTING".to_string(),
        tagged(vec![
            "-m".into(),
            "set".into(),
            "--match-set".into(),
            set.into(),
            "src".into(),
            "-j".into(),
            set.into(),
        ]),
    ));
    out
}

fn iptables_for(v6: bool) -> Iptables {
    Iptables::new(if v6 {
        iptables::Family::V6
    } else {
        iptables::Family::V4
    })
}

fn ensure_rules(network: &str, set: &str, v6: bool, subnets: &[IpNetwork]) -> Result<()> {
    let ipt = iptables_for(v6);
    ipt.ensure_chain("nat", set).map_err(err)?;
    for (chain, rule) in rules(network, set, v6, subnets) {
        let args: Vec<&str> = rule.iter().map(String::as_str).collect();
        ipt.ensure_rule("nat", &chain, &args, Position::Append)
            .map_err(err)?;
    }
    Ok(())
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

/// Adds the addresses to their family's set; creates the set and its rules when the set does
/// not exist yet.
pub fn add(network: &str, ips: &[IpAddr], subnets: &[IpNetwork]) -> Result<()> {
    if ips.is_empty() {
        return Ok(());
    }
    let ipset = open()?;
    for ip in ips {
        let v6 = ip.is_ipv6();
        let set = names::masq_set(network, v6);
        let entry = Entry::Ip(*ip);
        match ipset.add(&set, &entry) {
            Ok(_) => {}
            Err(e) if e.is_not_found() => {
                let created = ipset
                    .create(&SetSpec::new(set.clone(), SetType::HashIp, Family::of(*ip)))
                    .map_err(err)?;
                ipset.add(&set, &entry).map_err(err)?;
                if created {
                    ensure_rules(network, &set, v6, subnets)?;
                }
            }
            Err(e) => return Err(err(e)),
        }
    }
    Ok(())
}

/// Removes the addresses from their sets; absent sets and members are fine.
pub fn del(network: &str, ips: &[IpAddr]) -> Result<()> {
    if ips.is_empty() {
        return Ok(());
    }
    let ipset = open()?;
    for ip in ips {
        let set = names::masq_set(network, ip.is_ipv6());
        match ipset.del(&set, &Entry::Ip(*ip)) {
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(err(e)),
        }
    }
    Ok(())
}

/// CHECK: every address is in its set and every rule is present.
pub fn check(network: &str, ips: &[IpAddr], subnets: &[IpNetwork]) -> Result<()> {
    let ipset = open()?;
    let mismatch = |m: String| CniError::new(code::CHECK_MISMATCH, m);
    for v6 in [false, true] {
        let fam_ips: Vec<&IpAddr> = ips.iter().filter(|i| i.is_ipv6() == v6).collect();
        if fam_ips.is_empty() {
            continue;
        }
        let set = names::masq_set(network, v6);
        for ip in fam_ips {
            match ipset.test(&set, &Entry::Ip(*ip)) {
                Ok(true) => {}
                Ok(false) => return Err(mismatch(format!("{ip} is not in ipset {set}"))),
                Err(e) if e.is_not_found() => {
                    return Err(mismatch(format!("ipset {set} does not exist")))
                }
                Err(e) => return Err(err(e)),
            }
        }
        let ipt = iptables_for(v6);
        for (chain, rule) in rules(network, &set, v6, subnets) {
            let args: Vec<&str> = rule.iter().map(String::as_str).collect();
            if !ipt.rule_exists("nat", &chain, &args).map_err(err)? {
                return Err(mismatch(format!(
                    "iptables rule missing: -t nat -A {chain} {}",
                    rule.join(" ")
                )));
            }
        }
    }
    Ok(())
}

/// GC: removes every member of this network's sets that is not in `keep`; returns them.
pub fn retain(network: &str, keep: &[IpAddr]) -> Result<Vec<IpAddr>> {
    let ipset = open()?;
    let mut removed = Vec::new();
    for v6 in [false, true] {
        let set = names::masq_set(network, v6);
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
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_constant_and_tagged() {
        let subnets: Vec<IpNetwork> =
            vec!["10.0.0.0/24".parse().unwrap(), "fd00::/64".parse().unwrap()];
        let r = rules("podnet", "CNIB-01234567", false, &subnets);
        let text: Vec<String> = r
            .iter()
            .map(|(c, a)| format!("{c} {}", a.join(" ")))
            .collect();
        assert_eq!(
            text,
            vec![
                "CNIB-01234567 -d 10.0.0.0/24 -m comment --comment cni-bridge: podnet -j RETURN",
                "CNIB-01234567 ! -d 224.0.0.0/4 -m comment --comment cni-bridge: podnet -j MASQUERADE",
                "POSTROUTING -m set --match-set CNIB-01234567 src -m comment --comment cni-bridge: podnet -j CNIB-01234567",
            ]
        );
        let r6 = rules("podnet", "CNIB6-01234567", true, &subnets);
        assert_eq!(r6.len(), 3);
        assert!(r6[0].1.contains(&"fd00::/64".to_string()));
        assert!(r6[1].1.contains(&"ff00::/8".to_string()));
    }
}
