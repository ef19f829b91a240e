//! The real dataplane over `nodenet`: the dummy device and its addresses (rtnetlink), virtual
//! services (IPVS generic netlink, pipelined), the loop-back sets (ipset nfnetlink, pipelined),
//! the one nat rule per family (`iptables`/`ip6tables`, checked per resync) and the sysctls.

use crate::dataplane::{Dataplane, DataplaneError, Result};
use crate::model::{
    loopback_set, LoopbackEntry, Observed, ObservedDest, ObservedService, ServiceKey,
    VirtualService, POSTROUTING_CHAIN,
};
use crate::plan::Op;
use ipnetwork::IpNetwork;
use nodenet::ipset::{self, Entry, Ipset, SetSpec, SetType};
use nodenet::ipvs::{self, Destination, Forward, Ipvs};
use nodenet::link::Rtnl;
use nodenet::masquerade::MasqueradeRules;
use nodenet::sysctl::{self, SysctlError};
use nodenet::Family;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// Default name of the dummy device holding the VIPs (`--dummy`).
pub const DEFAULT_DUMMY: &str = "svcproxy0";
/// Room for 10,000 services x 5 endpoints many times over; the kernel default (65536) is tight.
const LOOPBACK_MAXELEM: u32 = 1 << 20;
/// The one rule in [`POSTROUTING_CHAIN`] (masquerade a pod reaching itself through a VIP,
/// `-m set --match-set SET dst,dst,src -j MASQUERADE`) and the plain jump to it from POSTROUTING.
fn loopback_rules(v6: bool) -> MasqueradeRules {
    MasqueradeRules {
        family: if v6 { Family::V6 } else { Family::V4 },
        set: loopback_set(v6).to_string(),
        set_flags: "dst,dst,src",
        chain: POSTROUTING_CHAIN.to_string(),
        from: "POSTROUTING",
        jump_matches_set: false,
        comment: None,
        exempt: Vec::new(),
        except: None,
        rules_match_set: true,
    }
}
/// Sysctls the scenario needs, always (kube-proxy's IPVS-mode settings).
const SYSCTLS: &[(&str, &str)] = &[
    ("net.ipv4.vs.conntrack", "1"),
    ("net.ipv4.vs.expire_nodest_conn", "1"),
    ("net.ipv4.vs.expire_quiescent_template", "1"),
    ("net.ipv4.ip_forward", "1"),
];
/// The same once IPv6 is in use.
const SYSCTLS6: &[(&str, &str)] = &[("net.ipv6.conf.all.forwarding", "1")];
const BRIDGE_NF_CALL_IPTABLES: &str = "net.bridge.bridge-nf-call-iptables";
const BRIDGE_NF_CALL_IP6TABLES: &str = "net.bridge.bridge-nf-call-ip6tables";

/// Kernel state in the calling thread's network namespace.
pub struct Kernel {
    dummy: String,
    /// Drives the rtnetlink connection; every address call blocks on it.
    rt: tokio::runtime::Runtime,
    rtnl: Rtnl,
    /// `None` only for `cleanup` on a kernel without IPVS.
    ipvs: Option<Ipvs>,
    ipset: Ipset,
    /// IPv6 loop-back in use (an IPv6 endpoint was applied, or its set was found): its set,
    /// rule and sysctls are ensured along with the IPv4 ones.
    v6: bool,
    /// Index of the dummy device once ensured or found.
    dummy_index: Option<u32>,
    /// The missing-`br_netfilter` warning is logged once.
    warned_bridge: bool,
    /// The running iptables check of each family (IPv4, IPv6), if any.
    rules_check: [Option<std::thread::JoinHandle<()>>; 2],
}

impl Drop for Kernel {
    /// Lets a started rules check finish (`--once` exits right after its sync).
    fn drop(&mut self) {
        for h in self.rules_check.iter_mut().filter_map(Option::take) {
            let _ = h.join();
        }
    }
}

fn err(context: impl std::fmt::Display) -> impl FnOnce(&dyn std::fmt::Display) -> DataplaneError {
    move |e| DataplaneError::new(context, e)
}

impl Kernel {
    /// Opens the sockets; fails when the kernel has no IPVS.
    pub fn open(dummy: &str) -> Result<Kernel> {
        let k = Self::open_any(dummy)?;
        if k.ipvs.is_none() {
            return Err(DataplaneError(ipvs::Error::NotAvailable.to_string()));
        }
        Ok(k)
    }

    /// Opens the sockets, tolerating a kernel without IPVS (there is nothing of ours in it then).
    pub fn open_for_cleanup(dummy: &str) -> Result<Kernel> {
        Self::open_any(dummy)
    }

    fn open_any(dummy: &str) -> Result<Kernel> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| err("tokio runtime")(&e))?;
        let rtnl = rt
            .block_on(async { Rtnl::new() })
            .map_err(|e| err("rtnetlink")(&e))?;
        let ipvs = match Ipvs::open() {
            Ok(i) => Some(i),
            Err(ipvs::Error::NotAvailable) => None,
            Err(e) => return Err(err("ipvs")(&e)),
        };
        let ipset = Ipset::open().map_err(|e| err("ipset")(&e))?;
        Ok(Kernel {
            dummy: dummy.to_string(),
            rt,
            rtnl,
            ipvs,
            ipset,
            v6: false,
            dummy_index: None,
            warned_bridge: false,
            rules_check: [None, None],
        })
    }

    fn ipvs(&self) -> Result<&Ipvs> {
        self.ipvs
            .as_ref()
            .ok_or_else(|| DataplaneError(ipvs::Error::NotAvailable.to_string()))
    }

    fn find_dummy(&mut self) -> Result<Option<u32>> {
        let link = self
            .rt
            .block_on(self.rtnl.link_by_name(&self.dummy))
            .map_err(|e| err(format!("dummy device {}", self.dummy))(&e))?;
        self.dummy_index = link.map(|l| l.index);
        Ok(self.dummy_index)
    }

    fn dummy_addresses(&mut self) -> Result<BTreeSet<IpAddr>> {
        let Some(index) = self.find_dummy()? else {
            return Ok(BTreeSet::new());
        };
        let nets = self
            .rt
            .block_on(self.rtnl.addresses(index))
            .map_err(|e| err(format!("addresses of {}", self.dummy))(&e))?;
        Ok(nets
            .iter()
            .map(|n| n.ip())
            .filter(|ip| !is_link_local(ip))
            .collect())
    }

    /// The families whose loop-back state is ensured (`true` = IPv6): IPv4 always, IPv6 once
    /// in use.
    fn families(&self) -> &'static [bool] {
        if self.v6 {
            &[false, true]
        } else {
            &[false]
        }
    }

    /// The sysctls one family needs.
    fn ensure_sysctls(&mut self, v6: bool) -> Result<()> {
        let mut first = None;
        let mut set = |key: &str, value: &str| match sysctl::ensure(key, value) {
            Ok(true) => log::info!("set {key}={value}"),
            Ok(false) => {}
            Err(e) => {
                first.get_or_insert(err("sysctl")(&e));
            }
        };
        let bridge_key = if v6 {
            for (key, value) in SYSCTLS6 {
                set(key, value);
            }
            BRIDGE_NF_CALL_IP6TABLES
        } else {
            for (key, value) in SYSCTLS {
                set(key, value);
            }
            match sysctl::read("kernel.osrelease") {
                Ok(release) if needs_conn_reuse_mode_0(&release) => {
                    set("net.ipv4.vs.conn_reuse_mode", "0")
                }
                Ok(_) => {}
                Err(e) => log::warn!(
                    "kernel version unknown ({e}); net.ipv4.vs.conn_reuse_mode left as is"
                ),
            }
            BRIDGE_NF_CALL_IPTABLES
        };
        match sysctl::read(bridge_key) {
            Ok(v) if v == "1" => {}
            Ok(_) => match sysctl::write(bridge_key, "1") {
                Ok(()) => log::info!(
                    "set {bridge_key}=1 (replies from a pod on the same bridge must pass conntrack)"
                ),
                Err(e) => {
                    first.get_or_insert(err("sysctl")(&e));
                }
            },
            Err(SysctlError::NotFound(_)) if !self.warned_bridge => {
                self.warned_bridge = true;
                log::warn!(
                    "{bridge_key} does not exist (br_netfilter not loaded): a pod cannot reach a \
                     VIP served by a pod on the same bridge until it is"
                );
            }
            Err(SysctlError::NotFound(_)) => {}
            Err(e) => {
                first.get_or_insert(err("sysctl")(&e));
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Creates the loop-back set of one family unless it exists.
    fn ensure_set(&mut self, v6: bool) -> Result<()> {
        let name = loopback_set(v6);
        let family = if v6 { Family::V6 } else { Family::V4 };
        let mut spec = SetSpec::new(name, SetType::HashIpPortIp, family);
        spec.maxelem = Some(LOOPBACK_MAXELEM);
        if self
            .ipset
            .create(&spec)
            .map_err(|e| err("loop-back set")(&e))?
        {
            log::info!(
                "created ipset {name} (hash:ip,port,ip, {})",
                family.as_str()
            );
        }
        Ok(())
    }

    /// Turns IPv6 loop-back on: its set, rule and sysctls, now and at every resync.
    fn enable_v6(&mut self) -> Result<()> {
        if self.v6 {
            return Ok(());
        }
        self.ensure_set(true)?;
        self.v6 = true;
        log::info!("IPv6 endpoints: ensuring the IPv6 loop-back set, rule and sysctls too");
        self.check_rules(true);
        if let Err(e) = self.ensure_sysctls(true) {
            log::error!("{e}");
        }
        Ok(())
    }

    /// Starts a check of one family's iptables rules on a thread of its own unless one is
    /// running: each check execs iptables a few times, which must not hold up the reconcile loop.
    fn check_rules(&mut self, v6: bool) {
        let slot = &mut self.rules_check[usize::from(v6)];
        if let Some(h) = slot.take_if(|h| h.is_finished()) {
            let _ = h.join();
        }
        if slot.is_none() {
            *slot = Some(std::thread::spawn(move || {
                if let Err(e) = ensure_rules(&loopback_rules(v6)) {
                    log::error!("{e}");
                }
            }));
        }
    }

    fn apply_addresses(&mut self, ops: &[Op]) -> Vec<Result<()>> {
        let Some(index) = self.dummy_index else {
            let e = DataplaneError(format!("dummy device {} is missing", self.dummy));
            return ops.iter().map(|_| Err(e.clone())).collect();
        };
        let rtnl = &self.rtnl;
        let futures = ops.iter().map(|op| async move {
            let (ip, add) = match op {
                Op::AddAddress(ip) => (*ip, true),
                Op::DelAddress(ip) => (*ip, false),
                _ => unreachable!("only address operations are batched here"),
            };
            let net = IpNetwork::from(ip);
            let r = if add {
                rtnl.add_address(index, net).await
            } else {
                rtnl.del_address(index, net).await
            };
            r.map(|_| ()).map_err(|e| DataplaneError::new(op, e))
        });
        self.rt.block_on(futures::future::join_all(futures))
    }

    fn apply_ipvs(&mut self, ops: &[Op]) -> Vec<Result<()>> {
        let ipvs = match self.ipvs() {
            Ok(i) => i,
            Err(e) => return ops.iter().map(|_| Err(e.clone())).collect(),
        };
        let wire: Vec<ipvs::Op> = ops.iter().map(to_ipvs).collect();
        ipvs.apply(&wire)
            .into_iter()
            .map(|r| r.map_err(|e| DataplaneError(e.to_string())))
            .collect()
    }

    /// One batch per set and direction (adds and deletes of IPv4 and of IPv6 entries).
    fn apply_loopback(&mut self, ops: &[Op]) -> Vec<Result<()>> {
        let entry = |op: &Op| match op {
            Op::AddLoopback(e) => (true, *e),
            Op::DelLoopback(e) => (false, *e),
            _ => unreachable!("only loop-back operations are batched here"),
        };
        let mut batches: BTreeMap<(bool, bool), Vec<Entry>> = BTreeMap::new();
        for op in ops {
            let (add, e) = entry(op);
            batches
                .entry((e.ip.is_ipv6(), add))
                .or_default()
                .push(to_entry(&e));
        }
        let mut done = BTreeMap::new();
        for ((v6, add), entries) in &batches {
            let r = match (v6, add) {
                (true, true) => self
                    .enable_v6()
                    .and_then(|()| ipset_result(self.ipset.add_many(loopback_set(true), entries))),
                (_, true) => ipset_result(self.ipset.add_many(loopback_set(*v6), entries)),
                (_, false) => ipset_result(self.ipset.del_many(loopback_set(*v6), entries)),
            };
            done.insert((*v6, *add), r);
        }
        // A batch reports its first refusal; every entry of a failed batch is retried.
        ops.iter()
            .map(|op| {
                let (add, e) = entry(op);
                done[&(e.ip.is_ipv6(), add)].clone()
            })
            .collect()
    }
}

fn ipset_result(r: std::result::Result<usize, ipset::Error>) -> Result<()> {
    r.map(|_| ()).map_err(|e| DataplaneError(e.to_string()))
}

/// Which batch an operation goes out in.
#[derive(PartialEq, Eq, Clone, Copy)]
enum Batch {
    Address,
    Ipvs,
    Loopback,
}

fn batch(op: &Op) -> Batch {
    match op {
        Op::AddAddress(_) | Op::DelAddress(_) => Batch::Address,
        Op::AddLoopback(_) | Op::DelLoopback(_) => Batch::Loopback,
        _ => Batch::Ipvs,
    }
}

fn to_key(k: &ServiceKey) -> ipvs::ServiceKey {
    ipvs::ServiceKey::new(k.addr, k.protocol, k.port)
}

fn from_key(k: &ipvs::ServiceKey) -> ServiceKey {
    ServiceKey {
        addr: k.addr,
        protocol: k.protocol,
        port: k.port,
    }
}

fn to_service(s: &VirtualService) -> ipvs::Service {
    let mut out = ipvs::Service::new(to_key(&s.key), s.scheduler.clone());
    out.persistence = s.persistence;
    out
}

fn to_ipvs(op: &Op) -> ipvs::Op {
    match op {
        Op::AddService(s) => ipvs::Op::AddService(to_service(s)),
        Op::UpdateService(s) => ipvs::Op::UpdateService(to_service(s)),
        Op::DelService(k) => ipvs::Op::DelService(to_key(k)),
        Op::AddDest {
            service,
            dest,
            weight,
        } => ipvs::Op::AddDest(
            to_key(service),
            Destination::new(dest.ip(), dest.port(), *weight),
        ),
        Op::UpdateDest {
            service,
            dest,
            weight,
        } => ipvs::Op::UpdateDest(
            to_key(service),
            Destination::new(dest.ip(), dest.port(), *weight),
        ),
        Op::DelDest { service, dest } => ipvs::Op::DelDest(to_key(service), dest.ip(), dest.port()),
        Op::AddAddress(_) | Op::DelAddress(_) | Op::AddLoopback(_) | Op::DelLoopback(_) => {
            unreachable!("not an IPVS operation")
        }
    }
}

fn to_entry(e: &LoopbackEntry) -> Entry {
    Entry::IpPortIp {
        ip: e.ip,
        proto: e.protocol,
        port: e.port,
        ip2: e.ip2,
    }
}

fn observed_dests(dests: Vec<Destination>) -> BTreeMap<std::net::SocketAddr, ObservedDest> {
    dests
        .into_iter()
        .map(|d| {
            let o = ObservedDest {
                weight: d.weight,
                masquerade: d.forward == Forward::Masq,
                active_conns: d.active_conns,
                inactive_conns: d.inactive_conns,
            };
            (std::net::SocketAddr::new(d.addr, d.port), o)
        })
        .collect()
}

/// IPv6 link-local addresses: the kernel gives one to every device; they are not VIPs.
fn is_link_local(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local())
}

/// Checks the nat chain, its one rule and the jump from POSTROUTING (`iptables -C` each) and
/// rewrites them when one is missing (`ip6tables` for the IPv6 set).
fn ensure_rules(rules: &MasqueradeRules) -> Result<()> {
    let rule_err = |e: &dyn std::fmt::Display| DataplaneError::new("iptables", e);
    if let Some(missing) = rules.missing().map_err(|e| rule_err(&e))? {
        rules.ensure(None).map_err(|e| rule_err(&e))?;
        log::info!(
            "{missing} was missing: wrote nat chain {POSTROUTING_CHAIN} and its jump ({})",
            rules.command()
        );
    }
    Ok(())
}

/// Whether `conn_reuse_mode` must be 0: kernels 4.1 to 5.8 stall new connections for a second
/// when a port is reused (kubernetes#70747); 5.9 fixed it.
pub fn needs_conn_reuse_mode_0(release: &str) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty());
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (4, 1) <= (major, minor) && (major, minor) < (5, 9)
}

impl Dataplane for Kernel {
    fn ensure_base(&mut self) -> Result<()> {
        let link = self
            .rt
            .block_on(self.rtnl.ensure_dummy(&self.dummy))
            .map_err(|e| err(format!("dummy device {}", self.dummy))(&e))?;
        self.dummy_index = Some(link.index);
        for &v6 in self.families() {
            self.ensure_set(v6)?;
        }
        for &v6 in self.families() {
            self.check_rules(v6);
        }
        let mut result = Ok(());
        for &v6 in self.families() {
            result = result.and(self.ensure_sysctls(v6));
        }
        result
    }

    fn observe(&mut self, claimed: &BTreeSet<IpAddr>) -> Result<Observed> {
        let mut observed = Observed {
            addresses: self.dummy_addresses()?,
            ..Default::default()
        };
        let ipvs = self.ipvs()?;
        for s in ipvs
            .services()
            .map_err(|e| err("listing virtual services")(&e))?
        {
            let key = from_key(&s.key);
            let dests = if observed.owns(&key.addr, claimed) {
                observed_dests(
                    ipvs.destinations(&s.key)
                        .map_err(|e| DataplaneError(e.to_string()))?,
                )
            } else {
                BTreeMap::new()
            };
            let service = VirtualService {
                key,
                scheduler: s.scheduler,
                persistence: s.persistence,
            };
            observed
                .services
                .insert(key, ObservedService { service, dests });
        }
        let entries = self
            .ipset
            .list(loopback_set(false))
            .map_err(|e| err("listing the loop-back set")(&e))?;
        let entries6 = self
            .ipset
            .list(loopback_set(true))
            .map_err(|e| err("listing the IPv6 loop-back set")(&e))?;
        if entries6.is_some() && !self.v6 {
            // Adopted from an earlier run: keep its rule and sysctls ensured too.
            self.enable_v6()?;
        }
        for e in entries.into_iter().chain(entries6).flatten() {
            if let Entry::IpPortIp {
                ip,
                proto,
                port,
                ip2,
            } = e
            {
                observed.loopback.insert(LoopbackEntry {
                    ip,
                    protocol: proto,
                    port,
                    ip2,
                });
            }
        }
        Ok(observed)
    }

    fn observe_service(&mut self, key: &ServiceKey) -> Result<Option<ObservedService>> {
        let ipvs = self.ipvs()?;
        let k = to_key(key);
        let Some(s) = ipvs
            .service(&k)
            .map_err(|e| DataplaneError(e.to_string()))?
        else {
            return Ok(None);
        };
        let dests = observed_dests(
            ipvs.destinations(&k)
                .map_err(|e| DataplaneError(e.to_string()))?,
        );
        let service = VirtualService {
            key: *key,
            scheduler: s.scheduler,
            persistence: s.persistence,
        };
        Ok(Some(ObservedService { service, dests }))
    }

    fn apply(&mut self, ops: &[Op]) -> Vec<Result<()>> {
        let mut results = Vec::with_capacity(ops.len());
        let mut start = 0;
        while start < ops.len() {
            let kind = batch(&ops[start]);
            let end = ops[start..]
                .iter()
                .position(|op| batch(op) != kind)
                .map_or(ops.len(), |n| start + n);
            let run = &ops[start..end];
            results.extend(match kind {
                Batch::Address => self.apply_addresses(run),
                Batch::Ipvs => self.apply_ipvs(run),
                Batch::Loopback => self.apply_loopback(run),
            });
            start = end;
        }
        results
    }

    fn cleanup(&mut self) -> Result<()> {
        let mut first: Option<DataplaneError> = None;
        let mut note = |what: &str, r: std::result::Result<bool, String>| match r {
            Ok(true) => log::info!("removed {what}"),
            Ok(false) => {}
            Err(e) => {
                log::error!("removing {what}: {e}");
                first.get_or_insert(DataplaneError(format!("removing {what}: {e}")));
            }
        };
        for h in self.rules_check.iter_mut().filter_map(Option::take) {
            let _ = h.join();
        }
        for v6 in [false, true] {
            let rules = loopback_rules(v6);
            note(
                &format!(
                    "{} nat chain {POSTROUTING_CHAIN} and its jump from POSTROUTING",
                    rules.command()
                ),
                rules.remove().map_err(|e| e.to_string()),
            );
            let set = loopback_set(v6);
            note(
                &format!("ipset {set}"),
                self.ipset.destroy(set).map_err(|e| e.to_string()),
            );
        }
        match self.dummy_addresses() {
            Ok(addresses) => {
                if let Some(ipvs) = &self.ipvs {
                    match ipvs.services() {
                        Ok(services) => {
                            for s in services.iter().filter(|s| addresses.contains(&s.key.addr)) {
                                note(
                                    &format!("virtual service {}", from_key(&s.key)),
                                    ipvs.del_service(&s.key)
                                        .map(|_| true)
                                        .map_err(|e| e.to_string()),
                                );
                            }
                        }
                        Err(e) => note("virtual services", Err(e.to_string())),
                    }
                }
            }
            Err(e) => note("virtual services", Err(e.to_string())),
        }
        let deleted = self.rt.block_on(self.rtnl.delete_link_by_name(&self.dummy));
        note(
            &format!("dummy device {}", self.dummy),
            deleted.map_err(|e| e.to_string()),
        );
        first.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_link_local_addresses_are_not_vips() {
        assert!(is_link_local(&"fe80::f483:29ff:fe0e:674b".parse().unwrap()));
        assert!(!is_link_local(&"fd00::10".parse().unwrap()));
        assert!(!is_link_local(&"10.100.100.100".parse().unwrap()));
    }

    #[test]
    fn conn_reuse_mode_is_pinned_only_on_affected_kernels() {
        assert!(!needs_conn_reuse_mode_0("4.0.9"));
        assert!(needs_conn_reuse_mode_0("4.1.0"));
        assert!(needs_conn_reuse_mode_0("5.4.0-150-generic"));
        assert!(needs_conn_reuse_mode_0("5.8.18"));
        assert!(!needs_conn_reuse_mode_0("5.9.0"));
        assert!(!needs_conn_reuse_mode_0("6.1.0-40-amd64"));
    }
}
