//! One module per CNI verb; each `exec` returns the JSON to print (if any) or a [`CniError`].
//! Shared here: the runtime and the teardown of one attachment (DEL, GC, and ADD's cleanup of a
//! stale record all release the same way).

pub mod add;
pub mod check;
pub mod del;
pub mod gc;
pub mod status;

use std::future::Future;
use std::net::IpAddr;
use std::path::Path;

use nodenet::link::Rtnl;
use nodenet::netns::NetNs;

use crate::config::{IpamConf, NetConf};
use crate::env::Env;
use crate::error::{code, CniError, Result};
use crate::ipam::{self, hostlocal, Owner};
use crate::record::Attachment;
use crate::{masq, names};

/// Runs `f` on a single-threaded runtime with I/O enabled (netlink sockets).
pub fn block_on<F: Future>(f: F) -> Result<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| CniError::new(code::KERNEL, format!("cannot start runtime: {e}")))?;
    Ok(rt.block_on(f))
}

/// Parses the addresses of a record (`10.0.0.11/24` → `10.0.0.11`).
pub fn record_ips(att: &Attachment) -> Vec<IpAddr> {
    att.ips
        .iter()
        .filter_map(|s| s.split('/').next()?.parse().ok())
        .collect()
}

/// What to tear down.
pub struct Teardown<'a> {
    pub container_id: &'a str,
    pub ifname: &'a str,
    /// The attachment's record, if there is one.
    pub record: Option<Attachment>,
    /// The container's namespace, when known and maybe still there.
    pub netns: Option<&'a Path>,
}

impl<'a> Teardown<'a> {
    /// The attachment `env` names (its container ID and interface).
    pub fn of(env: &'a Env, record: Option<Attachment>, netns: Option<&'a Path>) -> Teardown<'a> {
        Teardown {
            container_id: &env.container_id,
            ifname: &env.ifname,
            record,
            netns,
        }
    }
}

/// Releases everything one attachment holds: set entries, host veth (and with it the pod
/// end), IP reservations, then the record. Keeps going past failures and returns the first;
/// the record stays when something failed, so a retry knows what is left.
pub async fn release(conf: &NetConf, env: &Env, host: &Rtnl, t: Teardown<'_>) -> Result<()> {
    let mut first_err: Option<CniError> = None;
    let mut note = |r: Result<()>| {
        if let Err(e) = r {
            log::warn!("teardown of {}/{}: {e}", t.container_id, t.ifname);
            first_err.get_or_insert(e);
        }
    };

    let mut ips = t.record.as_ref().map(record_ips).unwrap_or_default();
    if t.record.is_none() {
        if let IpamConf::Builtin(cfg) = &conf.ipam {
            // No record: the reservation files say which addresses this attachment held.
            match hostlocal::Store::open(&cfg.data_dir, &conf.name).and_then(|s| s.reservations()) {
                Ok(rs) => ips.extend(
                    rs.into_iter()
                        .filter(|r| r.container_id == t.container_id && r.ifname == t.ifname)
                        .map(|r| r.ip),
                ),
                Err(e) => note(Err(e)),
            }
        }
    }

    let masq_used = conf.ip_masq || t.record.as_ref().is_some_and(|r| r.masq_set.is_some());
    if masq_used {
        note(masq::del(&conf.name, &ips));
    }

    let veth = t
        .record
        .as_ref()
        .map(|r| r.host_veth.clone())
        .unwrap_or_else(|| names::host_veth(&conf.name, t.container_id, t.ifname, 0));
    // An empty name: the ADD never got to create a veth of its own.
    let deleted = if veth.is_empty() {
        Ok(false)
    } else {
        host.delete_link_by_name(&veth).await
    };
    match deleted {
        Ok(true) => {}
        Ok(false) => {
            if t.record.is_none() {
                if let Some(ns_path) = t.netns {
                    note(delete_pod_veth(ns_path, t.ifname).await);
                }
            }
        }
        Err(e) => note(Err(e.into())),
    }

    if let Some(ipam) = ipam::for_config(conf, env) {
        note(ipam.del(
            Owner {
                container_id: t.container_id,
                ifname: t.ifname,
            },
            &ips,
        ));
    }

    match first_err {
        Some(e) => Err(e),
        None => Attachment::remove(&conf.state_dir, &conf.name, t.container_id, t.ifname),
    }
}

/// Deletes `ifname` inside the pod namespace if it is a veth (DEL without a record, like the
/// reference plugin). A namespace that is gone is not an error.
async fn delete_pod_veth(ns_path: &Path, ifname: &str) -> Result<()> {
    let ns = match NetNs::from_path(ns_path) {
        Ok(ns) => ns,
        Err(e) => {
            log::info!("DEL: {e}; nothing to delete inside it");
            return Ok(());
        }
    };
    let pod = match Rtnl::in_netns(&ns) {
        Ok(p) => p,
        Err(e) => {
            log::info!("DEL: cannot enter {}: {e}", ns_path.display());
            return Ok(());
        }
    };
    if let Some(l) = pod.link_by_name(ifname).await? {
        if l.kind.as_deref() == Some("veth") {
            pod.delete_link(l.index).await?;
        }
    }
    Ok(())
}
