//! CHECK: the kernel state still matches `prevResult` and the config.

use ipnetwork::IpNetwork;
use nodenet::attachment::{Attachment, Phase};
use nodenet::link::Rtnl;
use nodenet::netns::NetNs;
use nodenet::Family;

use super::{block_on, lock_attachment, open_pod_netns};
use crate::config::NetConf;
use crate::env::Env;
use crate::error::{code, CniError, Result};
use crate::ipam::{self, Owner};
use crate::result::CniResult;
use crate::version::Version;
use crate::{masq, names};

fn mismatch(msg: impl Into<String>) -> CniError {
    CniError::new(code::CHECK_MISMATCH, msg)
}

pub fn exec(env: &Env, conf: &NetConf) -> Result<()> {
    conf.version.require(Version::V040, "CHECK")?;
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::new(code::INVALID_CONFIG, "CHECK requires prevResult"))?;
    let prev = CniResult::from_value(prev, "prevResult")?;
    let ns_path = env
        .netns
        .as_ref()
        .ok_or_else(|| CniError::new(code::INVALID_ENV, "CNI_NETNS is required for CHECK"))?;
    let netns = open_pod_netns(ns_path)?;
    let records = lock_attachment(conf, env)?;
    let record = records
        .load(&env.container_id, &env.ifname)?
        .ok_or_else(|| {
            CniError::new(
                code::UNKNOWN_CONTAINER,
                format!(
                    "no attachment {}/{} on network {}",
                    env.container_id, env.ifname, conf.name
                ),
            )
        })?;
    if record.phase != Phase::Ready {
        return Err(mismatch("the ADD of this attachment did not complete"));
    }
    block_on(check_kernel(env, conf, &netns, &prev, &record))??;

    let ips = record.addresses();
    if let Some(i) = ipam::for_config(conf, env) {
        i.check(
            Owner {
                container_id: &env.container_id,
                ifname: &env.ifname,
            },
            &ips,
        )?;
    }
    if conf.ip_masq && !ips.is_empty() {
        let subnets = masq::subnets(&conf.ipam, &prev.ips);
        let generation = names::generation_of(&conf.name, record.masq_set.as_deref());
        masq::check(&conf.name, &ips, &subnets, &conf.non_masquerade, generation)?;
    }
    Ok(())
}

async fn check_kernel(
    env: &Env,
    conf: &NetConf,
    netns: &NetNs,
    prev: &CniResult,
    record: &Attachment,
) -> Result<()> {
    let host = Rtnl::new()?;
    let pod = Rtnl::in_netns(netns)?;
    let pod_index = prev
        .interfaces
        .iter()
        .position(|i| i.name == env.ifname && i.sandbox.is_some())
        .ok_or_else(|| {
            mismatch(format!(
                "prevResult has no interface {:?} in a sandbox",
                env.ifname
            ))
        })?;
    let want = &prev.interfaces[pod_index];
    let pv = pod.link_by_name(&env.ifname).await?.ok_or_else(|| {
        mismatch(format!(
            "interface {:?} is missing from the container",
            env.ifname
        ))
    })?;
    if pv.kind.as_deref() != Some("veth") {
        return Err(mismatch(format!(
            "interface {:?} is not a veth",
            env.ifname
        )));
    }
    if !want.mac.is_empty() && !pv.mac_string().eq_ignore_ascii_case(&want.mac) {
        return Err(mismatch(format!(
            "interface {:?} has MAC {}, prevResult says {}",
            env.ifname,
            pv.mac_string(),
            want.mac
        )));
    }
    if conf.mtu != 0 && pv.mtu != conf.mtu {
        return Err(mismatch(format!(
            "interface {:?} has MTU {}, config says {}",
            env.ifname, pv.mtu, conf.mtu
        )));
    }
    let addrs = pod.addresses(pv.index).await?;
    for ip in prev
        .ips
        .iter()
        .filter(|i| i.interface.is_none_or(|n| n == pod_index))
    {
        if !addrs.contains(&ip.address) {
            return Err(mismatch(format!(
                "address {} is missing from {:?}",
                ip.address, env.ifname
            )));
        }
    }
    for family in Family::ALL {
        let want_routes: Vec<_> = prev
            .routes
            .iter()
            .filter(|r| Family::of_net(&r.dst) == family)
            .collect();
        if want_routes.is_empty() {
            continue;
        }
        let have = pod.routes(family).await?;
        for r in want_routes {
            let found = have.iter().any(|h| {
                h.dst == r.dst
                    && h.oif == Some(pv.index)
                    && r.gw.is_none_or(|g| h.gateway == Some(g))
            });
            if !found {
                return Err(mismatch(format!(
                    "route {} is missing from the container",
                    r.dst
                )));
            }
        }
    }

    let br = host
        .link_by_name(&conf.bridge)
        .await?
        .filter(|b| b.kind.as_deref() == Some("bridge"))
        .ok_or_else(|| mismatch(format!("bridge {:?} is missing", conf.bridge)))?;
    let hv = host
        .link_by_name(&record.host_veth)
        .await?
        .ok_or_else(|| mismatch(format!("host veth {:?} is missing", record.host_veth)))?;
    let marker = names::link_marker(&conf.name, &env.container_id, &env.ifname);
    // The previous version marked nothing; a marker of another attachment is not ours.
    if hv.alias != marker && !hv.alias.is_empty() {
        return Err(mismatch(format!(
            "host veth {:?} carries another owner's marker {:?}",
            hv.name, hv.alias
        )));
    }
    if hv.master != Some(br.index) {
        return Err(mismatch(format!(
            "host veth {:?} is not a port of {:?}",
            hv.name, conf.bridge
        )));
    }
    let port = hv.port.unwrap_or_default();
    if port.hairpin != conf.hairpin {
        return Err(mismatch(format!(
            "hairpin on {:?} is {}, config says {}",
            hv.name, port.hairpin, conf.hairpin
        )));
    }
    if port.isolated != conf.port_isolation {
        return Err(mismatch(format!(
            "isolation on {:?} is {}, config says {}",
            hv.name, port.isolated, conf.port_isolation
        )));
    }
    if conf.promisc && !br.promisc {
        return Err(mismatch(format!(
            "bridge {:?} is not promiscuous",
            conf.bridge
        )));
    }
    if conf.is_gateway {
        let have = host.addresses(br.index).await?;
        for ip in &prev.ips {
            if let Some(gw) = ip.gateway {
                let want =
                    IpNetwork::new(gw, ip.address.prefix()).map_err(|e| mismatch(e.to_string()))?;
                if !have.contains(&want) {
                    return Err(mismatch(format!(
                        "gateway {want} is missing from bridge {:?}",
                        conf.bridge
                    )));
                }
            }
        }
    }
    Ok(())
}
