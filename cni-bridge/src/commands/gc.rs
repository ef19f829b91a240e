//! GC: releases every attachment of this network that `cni.dev/valid-attachments` does not list
//! — records, reservation files (ours and host-local's), set entries, leftover veths. It holds
//! the network's lock exclusively, so no ADD, DEL or CHECK of the network runs meanwhile: an ADD
//! either finished before (and is judged by the list) or starts after; none ends `ready` for an
//! attachment GC is tearing down. Every failure is reported, not only the first.

use std::net::IpAddr;

use nodenet::attachment::{Lock, Records};
use nodenet::files::LockKind;
use nodenet::link::Rtnl;

use super::{block_on, release, Teardown};
use crate::config::{IpamConf, NetConf};
use crate::env::Env;
use crate::error::{code, CniError, Errors, Result};
use crate::ipam::{self, hostlocal};
use crate::masq;
use crate::version::Version;

pub fn exec(env: &Env, conf: &NetConf) -> Result<()> {
    conf.version.require(Version::V110, "GC")?;
    let valid = conf.valid_attachments.clone().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "GC needs \"cni.dev/valid-attachments\" (an empty list releases everything)",
        )
    })?;
    let is_valid = |id: &str, ifname: &str| {
        valid
            .iter()
            .any(|v| v.container_id == id && v.ifname == ifname)
    };
    let mut records = Records::open(&conf.state_dir, &conf.name)?;
    records.lock(Lock::Network, LockKind::Exclusive)?;
    block_on(async {
        let host = Rtnl::new()?;
        let mut errors = Errors::default();

        records.sweep_temp_files(None);
        let mut keep: Vec<IpAddr> = Vec::new();
        for rec in records.list()? {
            if is_valid(&rec.container_id, &rec.ifname) {
                keep.extend(rec.addresses());
                continue;
            }
            log::info!("GC: releasing {}/{}", rec.container_id, rec.ifname);
            let (id, ifname) = (rec.container_id.clone(), rec.ifname.clone());
            let teardown = Teardown {
                container_id: &id,
                ifname: &ifname,
                record: Some(rec),
                netns: None,
            };
            errors.note(
                &format!("GC of {id}/{ifname}"),
                release(conf, env, &host, &records, teardown).await,
            );
        }

        // Reservations without a record (host-local's, or an ADD that died before writing one):
        // released as a record-less DEL of their owner would.
        if let Some(ipam) = ipam::for_config(conf, env) {
            if let Some(released) = errors.note("GC of reservations", ipam.gc(&valid)) {
                for r in released {
                    let teardown = Teardown {
                        container_id: &r.container_id,
                        ifname: &r.ifname,
                        record: None,
                        netns: None,
                    };
                    errors.note(
                        &format!("GC of {}/{}", r.container_id, r.ifname),
                        release(conf, env, &host, &records, teardown).await,
                    );
                    if conf.ip_masq {
                        errors.note(
                            "GC of a set entry",
                            masq::del(
                                &conf.name,
                                &[r.ip],
                                &[
                                    crate::names::SetGeneration::Current,
                                    crate::names::SetGeneration::Legacy,
                                ],
                            ),
                        );
                    }
                }
            }
        }

        if conf.ip_masq {
            if let IpamConf::Builtin(cfg) = &conf.ipam {
                let reserved = hostlocal::Store::open(&cfg.data_dir, &conf.name)
                    .and_then(|s| s.reservations());
                if let Some(rs) = errors.note("GC: reading reservations", reserved) {
                    keep.extend(rs.into_iter().map(|r| r.ip));
                }
            }
            match errors.note("GC of set entries", masq::retain(&conf.name, &keep)) {
                Some(removed) if !removed.is_empty() => {
                    log::info!("GC: removed {} stale masquerade entries", removed.len())
                }
                _ => {}
            }
        }
        errors.into_result()
    })?
}
