//! One module per CNI verb; each `exec` returns the JSON to print (if any) or a [`CniError`].
//! Shared here: the runtime, the checks and locks every per-attachment verb starts with, and
//! the teardown of one attachment (DEL, GC, and ADD's cleanup of a stale record all release the
//! same way).
//!
//! Teardown trusts no record blindly: a record names what an ADD may have created, but a link is
//! deleted only when it carries this attachment's marker (or is a marker-less veth of the
//! previous version under one of this attachment's derived names, on its bridge), and an address
//! is released (set entry, reservation) only when this attachment holds it.

pub mod add;
pub mod check;
pub mod del;
pub mod gc;
pub mod status;

use std::future::Future;
use std::net::IpAddr;

use nodenet::attachment::{Attachment, Lock, Records};
use nodenet::files::LockKind;
use nodenet::link::Rtnl;
use nodenet::netns::NetNs;

use crate::config::{IpamConf, NetConf};
use crate::env::Env;
use crate::error::{code, CniError, Errors, Result};
use crate::ipam::{self, hostlocal, Owner};
use crate::masq;
use crate::names::{self, SetGeneration};

/// Runs `f` on a single-threaded runtime with I/O enabled (netlink sockets).
pub fn block_on<F: Future>(f: F) -> Result<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| CniError::new(code::KERNEL, format!("cannot start runtime: {e}")))?;
    Ok(rt.block_on(f))
}

/// Opens `CNI_NETNS` and refuses the plugin's own namespace (directly or through a symlink such
/// as `/proc/PID/ns/net` of a process of the node): an attachment there would put the "pod"
/// interface into the node and tear the node's links down. Checked before anything changes.
pub fn open_pod_netns(path: &std::path::Path) -> Result<NetNs> {
    let ns = NetNs::from_path(path)?;
    let own = NetNs::current()?;
    if ns.same_as(&own)? {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!(
                "CNI_NETNS {} is the plugin's own network namespace, not a container's",
                path.display()
            ),
        ));
    }
    Ok(ns)
}

/// The network's records with the locks a per-attachment verb holds for its whole run: the
/// network shared (GC takes it exclusively, so it never runs beside an ADD, DEL or CHECK) and
/// the attachment exclusively (an ADD and a DEL of one container never interleave).
pub fn lock_attachment(conf: &NetConf, env: &Env) -> Result<Records> {
    let mut records = Records::open(&conf.state_dir, &conf.name)?;
    records.lock(Lock::Network, LockKind::Shared)?;
    records.lock(
        Lock::Attachment(&env.container_id, &env.ifname),
        LockKind::Exclusive,
    )?;
    Ok(records)
}

/// What to tear down.
pub struct Teardown<'a> {
    pub container_id: &'a str,
    pub ifname: &'a str,
    /// The attachment's record, if there is one.
    pub record: Option<Attachment>,
    /// The container's namespace, when known and still there.
    pub netns: Option<&'a NetNs>,
}

impl<'a> Teardown<'a> {
    /// The attachment `env` names (its container ID and interface).
    pub fn of(env: &'a Env, record: Option<Attachment>, netns: Option<&'a NetNs>) -> Teardown<'a> {
        Teardown {
            container_id: &env.container_id,
            ifname: &env.ifname,
            record,
            netns,
        }
    }

    fn owner(&self) -> Owner<'a> {
        Owner {
            container_id: self.container_id,
            ifname: self.ifname,
        }
    }
}

/// The addresses this attachment holds, as far as something other than its record proves it:
/// the built-in IPAM's reservation files (the record's addresses that are reserved for it, or
/// without a record every address reserved for it); with a delegated IPAM, the record's
/// addresses that no other record of the network claims.
fn held_addresses(
    conf: &NetConf,
    records: &Records,
    t: &Teardown<'_>,
    errors: &mut Errors,
) -> Vec<IpAddr> {
    let recorded: Vec<IpAddr> = t
        .record
        .as_ref()
        .map(Attachment::addresses)
        .unwrap_or_default();
    match &conf.ipam {
        IpamConf::None => Vec::new(),
        IpamConf::Builtin(cfg) => {
            let held = hostlocal::Store::open(&cfg.data_dir, &conf.name).and_then(|s| {
                let mine: Vec<IpAddr> = s
                    .reservations()?
                    .into_iter()
                    .filter(|r| r.container_id == t.container_id && r.ifname == t.ifname)
                    .map(|r| r.ip)
                    .collect();
                Ok(mine)
            });
            let Some(mine) = errors.note("reading reservations", held) else {
                return Vec::new();
            };
            if t.record.is_none() {
                return mine;
            }
            for ip in recorded.iter().filter(|ip| !mine.contains(ip)) {
                log::warn!(
                    "record of {}/{} names {ip}, which is not reserved for it: left alone",
                    t.container_id,
                    t.ifname
                );
            }
            recorded
                .into_iter()
                .filter(|ip| mine.contains(ip))
                .collect()
        }
        IpamConf::Delegated { .. } => {
            if recorded.is_empty() {
                return Vec::new();
            }
            let Some(all) = errors.note("listing records", records.list().map_err(Into::into))
            else {
                return Vec::new();
            };
            let claimed: Vec<IpAddr> = all
                .iter()
                .filter(|a| a.container_id != t.container_id || a.ifname != t.ifname)
                .flat_map(Attachment::addresses)
                .collect();
            recorded
                .into_iter()
                .filter(|ip| {
                    let other = claimed.contains(ip);
                    if other {
                        log::warn!(
                            "record of {}/{} names {ip}, which another record claims: left alone",
                            t.container_id,
                            t.ifname
                        );
                    }
                    !other
                })
                .collect()
        }
    }
}

/// Whether `link` is this attachment's veth: it carries the attachment's marker, or (the
/// previous version set none) it is a marker-less veth under one of the attachment's derived
/// names that is a port of `bridge_index`.
fn is_own_veth(
    link: &nodenet::link::Link,
    marker: &str,
    candidates: &[String],
    bridge_index: Option<u32>,
) -> bool {
    if link.kind.as_deref() != Some("veth") {
        return false;
    }
    if link.alias == marker {
        return true;
    }
    link.alias.is_empty()
        && candidates.contains(&link.name)
        && bridge_index.is_some()
        && link.master == bridge_index
}

/// Deletes the host veth `name` if it is this attachment's (see [`is_own_veth`]); `false` when
/// there is none of ours under that name.
async fn delete_own_veth(
    host: &Rtnl,
    name: &str,
    marker: &str,
    candidates: &[String],
    bridge: &str,
) -> Result<bool> {
    let Some(link) = host.link_by_name(name).await? else {
        return Ok(false);
    };
    let bridge_index = if link.alias.is_empty() {
        host.link_by_name(bridge).await?.map(|b| b.index)
    } else {
        None
    };
    if !is_own_veth(&link, marker, candidates, bridge_index) {
        log::warn!(
            "link {name:?} ({}, alias {:?}) is not this attachment's veth: left alone",
            link.kind.as_deref().unwrap_or("no kind"),
            link.alias
        );
        return Ok(false);
    }
    host.delete_link(link.index).await.map_err(Into::into)
}

/// Releases everything one attachment holds: set entries, host veth (and with it the pod
/// end), IP reservations, then the record. Keeps going past failures and reports every one;
/// the record stays when something failed, so a retry knows what is left, and the addresses
/// stay reserved while their set entries could not be removed (so the retry still finds them
/// held). `records` must hold the attachment's lock (or the network's exclusively).
pub async fn release(
    conf: &NetConf,
    env: &Env,
    host: &Rtnl,
    records: &Records,
    t: Teardown<'_>,
) -> Result<()> {
    let mut errors = Errors::default();
    let context = format!("teardown of {}/{}", t.container_id, t.ifname);
    let marker = names::link_marker(&conf.name, t.container_id, t.ifname);
    let candidates = names::host_veth_candidates(&conf.name, t.container_id, t.ifname);
    let ips = held_addresses(conf, records, &t, &mut errors);

    let generations: &[SetGeneration] = match &t.record {
        Some(r) => match names::generation_of(&conf.name, r.masq_set.as_deref()) {
            SetGeneration::Legacy => &[SetGeneration::Legacy],
            SetGeneration::Current => &[SetGeneration::Current],
        },
        None => &[SetGeneration::Current, SetGeneration::Legacy],
    };
    let masq_used = conf.ip_masq || t.record.as_ref().is_some_and(|r| r.masq_set.is_some());
    let sets_clear = !masq_used
        || errors
            .note(&context, masq::del(&conf.name, &ips, generations))
            .is_some();

    let (veths, bridge) = match &t.record {
        Some(r) if r.host_veth.is_empty() => (Vec::new(), r.bridge.clone()),
        Some(r) if candidates.contains(&r.host_veth) => {
            (vec![r.host_veth.clone()], r.bridge.clone())
        }
        Some(r) => {
            log::warn!(
                "record of {}/{} names host veth {:?}, not a name of this attachment: left alone",
                t.container_id,
                t.ifname,
                r.host_veth
            );
            (Vec::new(), r.bridge.clone())
        }
        None => (candidates.clone(), conf.bridge.clone()),
    };
    let mut deleted = false;
    for name in &veths {
        let r = delete_own_veth(host, name, &marker, &candidates, &bridge).await;
        deleted |= errors.note(&context, r).unwrap_or(false);
    }
    if !deleted && t.record.is_none() {
        if let Some(ns) = t.netns {
            errors.note(&context, delete_pod_veth(ns, t.ifname, &marker).await);
        }
    }

    if sets_clear {
        if let Some(ipam) = ipam::for_config(conf, env) {
            errors.note(&context, ipam.del(t.owner(), &ips));
        }
    }

    if errors.is_empty() {
        errors.note(
            &context,
            records
                .remove(t.container_id, t.ifname)
                .map_err(CniError::from),
        );
    }
    errors.into_result()
}

/// Deletes `ifname` inside the pod namespace if it is this attachment's veth (marked, or a
/// marker-less veth of the previous version): DEL without a record, like the reference plugin.
async fn delete_pod_veth(ns: &NetNs, ifname: &str, marker: &str) -> Result<()> {
    let pod = match Rtnl::in_netns(ns) {
        Ok(p) => p,
        Err(e) => {
            log::info!("DEL: cannot enter {}: {e}", ns.path().display());
            return Ok(());
        }
    };
    if let Some(l) = pod.link_by_name(ifname).await? {
        if l.kind.as_deref() == Some("veth") && (l.alias == marker || l.alias.is_empty()) {
            pod.delete_link(l.index).await?;
        } else {
            log::warn!(
                "{ifname:?} in {} is not this attachment's veth: left alone",
                ns.path().display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodenet::link::Link;

    fn link(name: &str, kind: &str, alias: &str, master: Option<u32>) -> Link {
        Link {
            index: 7,
            name: name.into(),
            kind: Some(kind.into()),
            mtu: 1500,
            mac: Vec::new(),
            up: true,
            promisc: false,
            master,
            port: None,
            alias: alias.into(),
        }
    }

    #[test]
    fn only_marked_veths_or_legacy_ones_on_our_bridge_are_ours() {
        let marker = names::link_marker("podnet", "c1", "eth0");
        let candidates = names::host_veth_candidates("podnet", "c1", "eth0");
        let name = candidates[0].as_str();
        assert!(is_own_veth(
            &link("anything", "veth", &marker, None),
            &marker,
            &candidates,
            None
        ));
        // Previous version: no marker, a derived name, a port of our bridge.
        assert!(is_own_veth(
            &link(name, "veth", "", Some(3)),
            &marker,
            &candidates,
            Some(3)
        ));
        for (l, bridge) in [
            // Another network's attachment (its marker), under our derived name.
            (
                link(
                    name,
                    "veth",
                    &names::link_marker("other", "c9", "eth0"),
                    Some(3),
                ),
                Some(3),
            ),
            // A bridge or an uplink a forged record names.
            (link("cnib0", "bridge", "", None), Some(3)),
            (link(name, "dummy", "", Some(3)), Some(3)),
            // Marker-less but on another bridge, or under a name not derived from us.
            (link(name, "veth", "", Some(4)), Some(3)),
            (link("veth0", "veth", "", Some(3)), Some(3)),
            (link(name, "veth", "", None), None),
        ] {
            assert!(!is_own_veth(&l, &marker, &candidates, bridge), "{l:?}");
        }
    }
}
