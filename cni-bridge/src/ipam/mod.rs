//! Address management: one trait, two implementations — the built-in host-local-compatible
//! allocator ([`hostlocal`], `ipam.type` = `cni-bridge-ipam`) and delegation to any IPAM plugin
//! binary on `CNI_PATH` ([`delegate`]).

pub mod delegate;
pub mod hostlocal;

use std::net::IpAddr;

use crate::config::{GcAttachment, IpamConf, NetConf};
use crate::env::Env;
use crate::error::Result;
use crate::result::{Dns, IpConfig, RouteConf};

/// What IPAM hands to the bridge: addresses (with gateways), routes and DNS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpamResult {
    pub ips: Vec<IpConfig>,
    pub routes: Vec<RouteConf>,
    pub dns: Dns,
    /// How to put the built-in allocator's round-robin position back if the ADD fails.
    pub rewind: Rewind,
}

/// The built-in allocator's `last_reserved_ip.<set>` files as an allocation found them:
/// (range set index, previous content, what the allocation wrote).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rewind(pub Vec<(usize, Option<IpAddr>, IpAddr)>);

/// After a failed ADD: restores each `last_reserved_ip` the ADD advanced, unless another
/// allocation has moved it since (then the position is that allocation's, and stays).
pub fn rewind(conf: &NetConf, rewind: &Rewind) -> Result<()> {
    match &conf.ipam {
        IpamConf::Builtin(cfg) if !rewind.0.is_empty() => {
            hostlocal::Store::open(&cfg.data_dir, &conf.name)?.rewind(rewind)
        }
        _ => Ok(()),
    }
}

/// One attachment, as IPAM identifies it.
#[derive(Debug, Clone, Copy)]
pub struct Owner<'a> {
    pub container_id: &'a str,
    pub ifname: &'a str,
}

/// An address GC released, with its former owner (so the caller can clean the set entry and
/// the derived veth name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    pub ip: IpAddr,
    pub container_id: String,
    pub ifname: String,
}

/// The operations each IPAM implementation provides.
pub trait Ipam {
    /// Reserves addresses for an attachment (`requested` are `args.cni.ips`,
    /// `runtimeConfig.ips` and `CNI_ARGS IP=`).
    fn add(&self, owner: Owner<'_>, requested: &[IpAddr]) -> Result<IpamResult>;
    /// Releases the attachment's addresses; `known` are the ones its record names (empty when
    /// there is no record). Releasing nothing is success.
    fn del(&self, owner: Owner<'_>, known: &[IpAddr]) -> Result<()>;
    /// Verifies the attachment still holds `ips`.
    fn check(&self, owner: Owner<'_>, ips: &[IpAddr]) -> Result<()>;
    /// Releases every reservation not owned by one of `valid`.
    fn gc(&self, valid: &[GcAttachment]) -> Result<Vec<Released>>;
    /// Fails when no ADD could get an address now.
    fn status(&self) -> Result<()>;
}

/// The implementation a config selects; `None` for `"ipam": {}`.
pub fn for_config<'a>(conf: &'a NetConf, env: &'a Env) -> Option<Box<dyn Ipam + 'a>> {
    match &conf.ipam {
        IpamConf::None => None,
        IpamConf::Builtin(cfg) => Some(Box::new(hostlocal::Builtin {
            cfg,
            network: &conf.name,
        })),
        IpamConf::Delegated { plugin } => Some(Box::new(delegate::Delegated { plugin, conf, env })),
    }
}
