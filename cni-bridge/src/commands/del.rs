//! DEL: best effort and idempotent. Releases the set entries, the host veth (taking the pod end
//! with it) and the IP reservations named by the attachment record — or, without a record, the
//! derived veth names and the reservation files — whether or not the namespace still exists.
//! Only what this attachment provably holds is released (see [`super::release`]).

use nodenet::link::Rtnl;

use super::{block_on, lock_attachment, open_pod_netns, release, Teardown};
use crate::config::NetConf;
use crate::env::Env;
use crate::error::{code, Result};

pub fn exec(env: &Env, conf: &NetConf) -> Result<()> {
    // A namespace that is gone is fine for DEL; the plugin's own namespace is refused.
    let netns = match env.netns.as_deref().map(open_pod_netns).transpose() {
        Ok(ns) => ns,
        Err(e) if e.code == code::UNKNOWN_CONTAINER => None,
        Err(e) => return Err(e),
    };
    let records = lock_attachment(conf, env)?;
    let record = match records.load(&env.container_id, &env.ifname) {
        Ok(r) => r,
        Err(e) => {
            log::warn!("DEL: {e}; tearing down without a record");
            None
        }
    };
    block_on(async {
        let host = Rtnl::new()?;
        release(
            conf,
            env,
            &host,
            &records,
            Teardown::of(env, record, netns.as_ref()),
        )
        .await
    })?
}
