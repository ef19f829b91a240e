//! DEL: best effort and idempotent. Releases the set entries, the host veth (taking the pod end
//! with it) and the IP reservations named by the attachment record — or, without a record, the
//! derived veth name and the reservation files — whether or not the namespace still exists.

use nodenet::link::Rtnl;

use super::{block_on, release, Teardown};
use crate::config::NetConf;
use crate::env::Env;
use crate::error::Result;
use crate::record::Attachment;

pub fn exec(env: &Env, conf: &NetConf) -> Result<()> {
    block_on(async {
        let host = Rtnl::new()?;
        let record = Attachment::load(&conf.state_dir, &conf.name, &env.container_id, &env.ifname);
        release(
            conf,
            env,
            &host,
            Teardown::of(env, record, env.netns.as_deref()),
        )
        .await
    })?
}
