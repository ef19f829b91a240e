//! `nodenet`: the one place where cni-bridge and svc-proxy talk to the kernel.
//!
//! Layout:
//! - [`family`]: the address family ([`Family`]) every other module speaks.
//! - [`netns`]: entering network namespaces (the only module that calls `setns`).
//! - [`link`]: links, addresses and routes over rtnetlink (`ip link`/`ip addr`/`ip route`).
//! - [`sysctl`]: per-namespace `/proc/sys` knobs.
//! - [`iptables`]: the few static rules, ensured by exec'ing `iptables -w` (never per entry).
//! - [`ruleset`]: a daemon's own chains and jumps, compared with `iptables-save` and repaired
//!   in one `iptables-restore` transaction.
//! - [`ipset`]: the ipset nfnetlink family, encoded here (`ipset create/add/del/list`).
//! - [`ipvs`]: the IPVS generic-netlink family, encoded here (`ipvsadm -A/-a/-D/-d/-L`).
//! - [`conntrack`]: connection tracking over ctnetlink, encoded here (`conntrack -L/-G/-D`).
//! - [`nl`]: the small synchronous netlink request/ack/dump layer `ipset`, `ipvs` and
//!   `conntrack` share.
//! - [`masquerade`]: a nat chain of masquerade rules keyed on an ipset, proven present by the
//!   set's kernel reference count (no exec) and rewritten atomically when it is not.
//! - [`files`]: private state directories, opened without following symlinks, reads bounded.
//! - [`attachment`]: cni-bridge's attachment records, the one definition of their format, for
//!   the plugin that writes them and svc-proxy that reads them.

pub mod attachment;
pub mod conntrack;
pub mod family;
pub mod files;
pub mod ipset;
pub mod iptables;
pub mod ipvs;
pub mod link;
pub mod masquerade;
pub mod netns;
pub mod nl;
pub mod protocol;
pub mod ruleset;
pub mod sysctl;

pub use family::Family;
pub use protocol::Protocol;
