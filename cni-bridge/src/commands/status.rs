//! STATUS: whether the network can take ADDs now (IPAM has addresses left, the bridge name is
//! free or a bridge).

use nodenet::link::Rtnl;

use super::block_on;
use crate::config::NetConf;
use crate::env::Env;
use crate::error::{code, CniError, Result};
use crate::ipam;
use crate::version::Version;

pub fn exec(env: &Env, conf: &NetConf) -> Result<()> {
    conf.version.require(Version::V110, "STATUS")?;
    block_on(async {
        let host = Rtnl::new()?;
        if let Some(l) = host.link_by_name(&conf.bridge).await? {
            if l.kind.as_deref() != Some("bridge") {
                return Err(CniError::new(
                    code::NOT_AVAILABLE,
                    format!("link {:?} exists and is not a bridge", conf.bridge),
                ));
            }
        }
        Ok(())
    })??;
    if let Some(i) = ipam::for_config(conf, env) {
        i.status().map_err(|e| {
            if e.code == code::NOT_AVAILABLE {
                e
            } else {
                CniError::new(code::NOT_AVAILABLE, e.msg)
            }
        })?;
    }
    Ok(())
}
