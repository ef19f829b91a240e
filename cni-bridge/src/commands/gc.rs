//! GC: releases every attachment of this network that `cni.dev/valid-attachments` does not list
//! — records, reservation files (ours and host-local's), set entries, leftover veths.

use std::net::IpAddr;

use nodenet::link::Rtnl;

use super::{block_on, record_ips, release, Teardown};
use crate::config::{IpamConf, NetConf};
use crate::env::Env;
use crate::error::{code, CniError, Result};
use crate::ipam::{self, hostlocal};
use crate::record::Attachment;
use crate::version::Version;
use crate::{masq, names};

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
    block_on(async {
        let host = Rtnl::new()?;
        let mut first_err: Option<CniError> = None;
        let mut note = |r: Result<()>| {
            if let Err(e) = r {
                log::warn!("GC: {e}");
                first_err.get_or_insert(e);
            }
        };

        Attachment::sweep_temp_files(&conf.state_dir, &conf.name, None);
        let records = Attachment::list(&conf.state_dir, &conf.name)?;
        let mut keep: Vec<IpAddr> = Vec::new();
        for rec in records {
            if is_valid(&rec.container_id, &rec.ifname) {
                keep.extend(record_ips(&rec));
                continue;
            }
            log::info!("GC: releasing {}/{}", rec.container_id, rec.ifname);
            let (id, ifname) = (rec.container_id.clone(), rec.ifname.clone());
            note(
                release(
                    conf,
                    env,
                    &host,
                    Teardown {
                        container_id: &id,
                        ifname: &ifname,
                        record: Some(rec),
                        netns: None,
                    },
                )
                .await,
            );
        }

        // Reservations without a record (host-local's, or an ADD that died before writing one).
        if let Some(ipam) = ipam::for_config(conf, env) {
            match ipam.gc(&valid) {
                Ok(released) => {
                    for r in released {
                        if conf.ip_masq {
                            note(masq::del(&conf.name, &[r.ip]));
                        }
                        let veth = names::host_veth(&conf.name, &r.container_id, &r.ifname, 0);
                        if let Err(e) = host.delete_link_by_name(&veth).await {
                            note(Err(e.into()));
                        }
                    }
                }
                Err(e) => note(Err(e)),
            }
        }

        if conf.ip_masq {
            if let IpamConf::Builtin(cfg) = &conf.ipam {
                match hostlocal::Store::open(&cfg.data_dir, &conf.name)
                    .and_then(|s| s.reservations())
                {
                    Ok(rs) => keep.extend(rs.into_iter().map(|r| r.ip)),
                    Err(e) => note(Err(e)),
                }
            }
            match masq::retain(&conf.name, &keep) {
                Ok(removed) if !removed.is_empty() => {
                    log::info!("GC: removed {} stale masquerade entries", removed.len())
                }
                Ok(_) => {}
                Err(e) => note(Err(e)),
            }
        }
        first_err.map_or(Ok(()), Err)
    })?
}
