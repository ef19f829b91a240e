//! The real dataplane over `nodenet`: the dummy device and its addresses, the node's addresses
//! and the pod routes (rtnetlink), virtual services (IPVS generic netlink, pipelined), the sets
//! (ipset nfnetlink, pipelined), stale UDP conntrack entries (ctnetlink), the constant iptables
//! rules of each family (checked at each resync on a thread of their own) and the sysctls.

use crate::dataplane::{Dataplane, DataplaneError, Result};
use crate::model::{
    Desired, Member, Observed, ObservedDest, ObservedService, PodRoute, ServiceKey, SetId, SetKind,
    SetShape, VirtualService,
};
use crate::plan::Op;
use crate::rules::{self, RuleOptions};
use ipnetwork::IpNetwork;
use nodenet::conntrack::{self, Conntrack};
use nodenet::ipset::{Entry, Ipset, SetSpec, SetType};
use nodenet::iptables::Iptables;
use nodenet::ipvs::{self, Destination, Forward, Ipvs};
use nodenet::link::{Route, Rtnl};
use nodenet::ruleset::Ruleset;
use nodenet::sysctl::{self, SysctlError};
use nodenet::{Family, Protocol};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

/// Default name of the dummy device holding the VIPs (`--dummy`).
pub const DEFAULT_DUMMY: &str = "svcproxy0";
/// The route protocol number that marks svc-proxy's pod routes (`ip route ... proto 201`).
pub const ROUTE_PROTOCOL: u8 = 201;
/// Room for 10,000 services x 5 endpoints many times over; the kernel default (65536) is tight
/// (kubernetes#129389).
const SET_MAXELEM: u32 = 1 << 20;
/// Every resync proves the rules by the sets' reference counts (no exec); every this many, they
/// are also read back with `iptables-save` (a deleted jump changes no reference count).
const RULES_READ_EVERY: u32 = 10;
/// Sysctls IPVS mode needs, always (kube-proxy's).
const SYSCTLS: &[(&str, &str)] = &[
    ("net.ipv4.vs.conntrack", "1"),
    ("net.ipv4.vs.expire_nodest_conn", "1"),
    ("net.ipv4.vs.expire_quiescent_template", "1"),
    ("net.ipv4.ip_forward", "1"),
];
/// The same once IPv6 is in use.
const SYSCTLS6: &[(&str, &str)] = &[("net.ipv6.conf.all.forwarding", "1")];
/// `--ipvs-strict-arp`: a node answers ARP only for addresses on the receiving interface (not
/// the dummy's VIPs), which MetalLB's layer-2 mode needs.
const STRICT_ARP: &[(&str, &str)] = &[
    ("net.ipv4.conf.all.arp_ignore", "1"),
    ("net.ipv4.conf.all.arp_announce", "2"),
];
const BRIDGE_NF_CALL_IPTABLES: &str = "net.bridge.bridge-nf-call-iptables";
const BRIDGE_NF_CALL_IP6TABLES: &str = "net.bridge.bridge-nf-call-ip6tables";

/// How the kernel is set up besides what the planner asks.
#[derive(Debug, Clone, Default)]
pub struct KernelOptions {
    pub rules: RuleOptions,
    /// `--ipvs-strict-arp`.
    pub strict_arp: bool,
    /// `--ipvs-{tcp,tcpfin,udp}-timeout` in seconds (0 keeps the kernel's), set once at start.
    pub timeouts: Option<ipvs::Timeouts>,
}

/// Kernel state in the calling thread's network namespace.
pub struct Kernel {
    dummy: String,
    opts: KernelOptions,
    /// Drives the rtnetlink connection; every address and route call blocks on it.
    rt: tokio::runtime::Runtime,
    rtnl: Rtnl,
    /// `None` only for `cleanup` on a kernel without IPVS.
    ipvs: Option<Ipvs>,
    ipset: Ipset,
    /// IPv6 in use (an IPv6 member was applied, or an IPv6 set was found): its sets, rules and
    /// sysctls are ensured along with the IPv4 ones.
    v6: bool,
    /// Index of the dummy device once ensured or found.
    dummy_index: Option<u32>,
    /// The missing-`br_netfilter` warning is logged once.
    warned_bridge: bool,
    /// The running rules check of each family (IPv4, IPv6), if any.
    rules_check: [Option<std::thread::JoinHandle<()>>; 2],
    /// Resyncs since the rules were last read back.
    since_read: [u32; 2],
    /// Reference counts of our sets at the last dump, to prove the rules without exec.
    references: BTreeMap<SetId, u32>,
    timeouts_set: bool,
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

fn family(v6: bool) -> Family {
    if v6 {
        Family::V6
    } else {
        Family::V4
    }
}

/// The ipset spec of one of our sets.
pub fn spec(set: SetId) -> SetSpec {
    let name = set.name();
    let kind = match set.kind.shape() {
        SetShape::IpPortIp => SetType::HashIpPortIp,
        SetShape::IpPort => SetType::HashIpPort,
        SetShape::IpPortNet => SetType::HashIpPortNet,
        SetShape::Ip => SetType::HashIp,
        SetShape::Port => return SetSpec::port_bitmap(name, 0..=65535),
    };
    let mut s = SetSpec::new(name, kind, family(set.v6));
    s.maxelem = Some(SET_MAXELEM);
    s
}

/// The sets one family's rules use, and how many rules reference each (the kernel's count when
/// every rule is in place).
pub fn expected_references(ruleset: &Ruleset, v6: bool) -> BTreeMap<SetId, u32> {
    let mut out = BTreeMap::new();
    for set in SetId::family(v6) {
        out.insert(set, ruleset.set_references(&set.name()));
    }
    out
}

impl Kernel {
    /// Opens the sockets; fails when the kernel has no IPVS.
    pub fn open(dummy: &str, opts: KernelOptions) -> Result<Kernel> {
        let k = Self::open_any(dummy, opts)?;
        if k.ipvs.is_none() {
            return Err(DataplaneError(ipvs::Error::NotAvailable.to_string()));
        }
        Ok(k)
    }

    /// Opens the sockets, tolerating a kernel without IPVS (there is nothing of ours in it then).
    pub fn open_for_cleanup(dummy: &str) -> Result<Kernel> {
        Self::open_any(dummy, KernelOptions::default())
    }

    fn open_any(dummy: &str, opts: KernelOptions) -> Result<Kernel> {
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
            opts,
            rt,
            rtnl,
            ipvs,
            ipset,
            v6: false,
            dummy_index: None,
            warned_bridge: false,
            rules_check: [None, None],
            since_read: [RULES_READ_EVERY; 2],
            references: BTreeMap::new(),
            timeouts_set: false,
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

    /// The families whose state is ensured (`true` = IPv6): IPv4 always, IPv6 once in use.
    fn families(&self) -> &'static [bool] {
        if self.v6 {
            &[false, true]
        } else {
            &[false]
        }
    }

    fn ruleset(&self, v6: bool) -> Ruleset {
        rules::ruleset(v6, &self.opts.rules)
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
            if self.opts.strict_arp {
                for (key, value) in STRICT_ARP {
                    set(key, value);
                }
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

    /// Creates the sets of one family unless they exist.
    fn ensure_sets(&mut self, v6: bool) -> Result<()> {
        let mut first = None;
        for set in SetId::family(v6) {
            match self.ipset.create(&spec(set)) {
                Ok(true) => log::info!("created ipset {set}"),
                Ok(false) => {}
                Err(e) => {
                    log::error!("ipset {set}: {e}");
                    first.get_or_insert(err(format!("ipset {set}"))(&e));
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Turns IPv6 on: its sets, rules and sysctls, now and at every resync.
    fn enable_v6(&mut self) -> Result<()> {
        if self.v6 {
            return Ok(());
        }
        self.ensure_sets(true)?;
        self.v6 = true;
        log::info!("IPv6 in use: ensuring the IPv6 sets, rules and sysctls too");
        self.check_rules(true, true);
        if let Err(e) = self.ensure_sysctls(true) {
            log::error!("{e}");
        }
        Ok(())
    }

    /// Starts a check of one family's rules on a thread of its own unless one is running: it
    /// execs iptables, which must not hold up the reconcile loop. With `read`, the rules are
    /// read back (`iptables-save`) and repaired; else they are taken as proven by the sets'
    /// reference counts unless those differ from what the rules make.
    fn check_rules(&mut self, v6: bool, read: bool) {
        let i = usize::from(v6);
        let ruleset = self.ruleset(v6);
        let proven = expected_references(&ruleset, v6)
            .iter()
            .all(|(set, n)| self.references.get(set) == Some(n));
        self.since_read[i] += 1;
        if proven && !read && self.since_read[i] < RULES_READ_EVERY {
            return;
        }
        let slot = &mut self.rules_check[i];
        if let Some(h) = slot.take_if(|h| h.is_finished()) {
            let _ = h.join();
        }
        if slot.is_some() {
            return;
        }
        self.since_read[i] = 0;
        let ipt = Iptables::new(family(v6));
        *slot = Some(std::thread::spawn(move || match ruleset.ensure(&ipt) {
            Ok(tables) if tables.is_empty() => {}
            Ok(tables) => log::info!(
                "{}: wrote svc-proxy's rules in table(s) {}",
                ipt.command(),
                tables.join(", ")
            ),
            Err(e) => log::error!("{}: {e}", ipt.command()),
        }));
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

    /// The node's addresses and their networks, on every device but the dummy, without
    /// loopback and IPv6 link-local ones.
    fn node_addresses(&mut self) -> Result<(BTreeSet<IpAddr>, BTreeSet<IpNetwork>)> {
        let all = self
            .rt
            .block_on(self.rtnl.all_addresses(self.dummy_index))
            .map_err(|e| err("node addresses")(&e))?;
        let mut ips = BTreeSet::new();
        let mut nets = BTreeSet::new();
        for (_, n) in all {
            if n.ip().is_loopback() || is_link_local(&n.ip()) {
                continue;
            }
            ips.insert(n.ip());
            nets.insert(n);
        }
        Ok((ips, nets))
    }

    /// Our pod routes (those with [`ROUTE_PROTOCOL`]), and the destinations of every other route
    /// of the main table.
    fn pod_routes(&mut self) -> Result<(BTreeSet<PodRoute>, BTreeSet<IpNetwork>)> {
        let mut ours = BTreeSet::new();
        let mut foreign = BTreeSet::new();
        for &v6 in self.families() {
            let routes = self
                .rt
                .block_on(self.rtnl.routes(family(v6)))
                .map_err(|e| err("routes")(&e))?;
            for r in routes {
                match (r.protocol == ROUTE_PROTOCOL, r.gateway) {
                    (true, Some(via)) => {
                        ours.insert(PodRoute { dst: r.dst, via });
                    }
                    (true, None) => {}
                    (false, _) => {
                        foreign.insert(r.dst);
                    }
                }
            }
        }
        Ok((ours, foreign))
    }

    /// Lists our sets of the families in use, and books their reference counts.
    fn observe_sets(&mut self) -> Result<BTreeMap<SetId, BTreeSet<Member>>> {
        let mut out = BTreeMap::new();
        if !self.v6
            && self
                .ipset
                .header(&SetId::of(SetKind::LoopBack, "::".parse().expect("an address")).name())
                .map_err(|e| err("ipset")(&e))?
                .is_some()
        {
            // Adopted from an earlier run: keep its rules and sysctls ensured too.
            self.enable_v6()?;
        }
        self.references.clear();
        for &v6 in self.families() {
            for set in SetId::family(v6) {
                let listed = self
                    .ipset
                    .list_with_info(&set.name())
                    .map_err(|e| err(format!("listing ipset {set}"))(&e))?;
                let Some((info, entries)) = listed else {
                    continue;
                };
                self.references.insert(set, info.references);
                let members = entries.iter().filter_map(from_entry).collect();
                out.insert(set, members);
            }
        }
        Ok(out)
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

    fn apply_routes(&mut self, ops: &[Op]) -> Vec<Result<()>> {
        let rtnl = &self.rtnl;
        let futures = ops.iter().map(|op| async move {
            let (r, add) = match op {
                Op::AddRoute(r) => (r, true),
                Op::DelRoute(r) => (r, false),
                _ => unreachable!("only route operations are batched here"),
            };
            let route = Route {
                dst: IpNetwork::new(r.dst.network(), r.dst.prefix()).unwrap_or(r.dst),
                gateway: Some(r.via),
                oif: None,
                protocol: ROUTE_PROTOCOL,
            };
            // Never a replace: that would take over another route to the same destination. A
            // gateway change is planned as the old route's delete before the new one's add.
            let done = if add {
                match rtnl.add_route(&route).await {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(format!("another route to {} exists", route.dst)),
                    Err(e) => Err(e.to_string()),
                }
            } else {
                rtnl.del_route(&route)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            };
            done.map_err(|e| DataplaneError::new(op, e))
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

    /// One batch per set and direction.
    fn apply_members(&mut self, ops: &[Op]) -> Vec<Result<()>> {
        let member = |op: &Op| match op {
            Op::AddMember { set, member } => (*set, true, *member),
            Op::DelMember { set, member } => (*set, false, *member),
            _ => unreachable!("only set operations are batched here"),
        };
        let mut batches: BTreeMap<(SetId, bool), Vec<Entry>> = BTreeMap::new();
        for op in ops {
            let (set, add, m) = member(op);
            batches.entry((set, add)).or_default().push(to_entry(&m));
        }
        let mut done = BTreeMap::new();
        for ((set, add), entries) in &batches {
            let r = if *add && set.v6 {
                self.enable_v6()
            } else {
                Ok(())
            };
            let r = r.and_then(|()| {
                let name = set.name();
                let n = if *add {
                    self.ipset.add_many(&name, entries)
                } else {
                    self.ipset.del_many(&name, entries)
                };
                n.map(|_| ()).map_err(|e| DataplaneError(e.to_string()))
            });
            done.insert((*set, *add), r);
        }
        // A batch reports its first refusal; every entry of a failed batch is retried.
        ops.iter()
            .map(|op| {
                let (set, add, _) = member(op);
                done[&(set, add)].clone()
            })
            .collect()
    }
}

/// Which batch an operation goes out in.
#[derive(PartialEq, Eq, Clone, Copy)]
enum Batch {
    Address,
    Ipvs,
    Members,
    Routes,
}

impl Batch {
    fn name(self) -> &'static str {
        match self {
            Batch::Address => "VIP addresses",
            Batch::Ipvs => "IPVS",
            Batch::Members => "set members",
            Batch::Routes => "routes",
        }
    }
}

fn batch(op: &Op) -> Batch {
    match op {
        Op::AddAddress(_) | Op::DelAddress(_) => Batch::Address,
        Op::AddMember { .. } | Op::DelMember { .. } => Batch::Members,
        Op::AddRoute(_) | Op::DelRoute(_) => Batch::Routes,
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
    out.flags = s.flags;
    out
}

fn from_service(s: ipvs::Service) -> VirtualService {
    VirtualService {
        key: from_key(&s.key),
        scheduler: s.scheduler,
        persistence: s.persistence,
        flags: s.flags,
    }
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
        _ => unreachable!("not an IPVS operation"),
    }
}

fn to_entry(m: &Member) -> Entry {
    match *m {
        Member::IpPortIp {
            ip,
            protocol,
            port,
            ip2,
        } => Entry::IpPortIp {
            ip,
            proto: protocol,
            port,
            ip2,
        },
        Member::IpPort { ip, protocol, port } => Entry::IpPort {
            ip,
            proto: protocol,
            port,
        },
        Member::IpPortNet {
            ip,
            protocol,
            port,
            net,
        } => Entry::IpPortNet {
            ip,
            proto: protocol,
            port,
            net,
        },
        Member::Port(p) => Entry::Port(p),
        Member::Ip(ip) => Entry::Ip(ip),
    }
}

fn from_entry(e: &Entry) -> Option<Member> {
    Some(match *e {
        Entry::IpPortIp {
            ip,
            proto,
            port,
            ip2,
        } => Member::IpPortIp {
            ip,
            protocol: proto,
            port,
            ip2,
        },
        Entry::IpPort { ip, proto, port } => Member::IpPort {
            ip,
            protocol: proto,
            port,
        },
        Entry::IpPortNet {
            ip,
            proto,
            port,
            net,
        } => Member::IpPortNet {
            ip,
            protocol: proto,
            port,
            net,
        },
        Entry::Port(p) => Member::Port(p),
        Entry::Ip(ip) => Member::Ip(ip),
        Entry::Net(_) => return None,
    })
}

fn observed_dests(dests: Vec<Destination>) -> BTreeMap<SocketAddr, ObservedDest> {
    dests
        .into_iter()
        .map(|d| {
            let o = ObservedDest {
                weight: d.weight,
                masquerade: d.forward == Forward::Masq,
                active_conns: d.active_conns,
                inactive_conns: d.inactive_conns,
            };
            (SocketAddr::new(d.addr, d.port), o)
        })
        .collect()
}

/// IPv6 link-local addresses: the kernel gives one to every device; they are not VIPs.
fn is_link_local(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local())
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
        let mut result = Ok(());
        for &v6 in self.families() {
            result = result.and(self.ensure_sets(v6));
        }
        for &v6 in self.families() {
            self.check_rules(v6, false);
        }
        for &v6 in self.families() {
            result = result.and(self.ensure_sysctls(v6));
        }
        if let (Some(t), false) = (&self.opts.timeouts, self.timeouts_set) {
            let ipvs = self.ipvs()?;
            ipvs.set_timeouts(t).map_err(|e| err("IPVS timeouts")(&e))?;
            log::info!(
                "set IPVS timeouts tcp {} s, tcpfin {} s, udp {} s (0: unchanged)",
                t.tcp,
                t.tcp_fin,
                t.udp
            );
            self.timeouts_set = true;
        }
        result
    }

    fn observe(&mut self, desired: &Desired) -> Result<Observed> {
        let mut observed = Observed {
            addresses: self.dummy_addresses()?,
            ..Default::default()
        };
        let (ips, nets) = self.node_addresses()?;
        observed.node_addresses = ips;
        observed.node_networks = nets;
        observed.sets = self.observe_sets()?;
        (observed.routes, observed.foreign_routes) = self.pod_routes()?;
        let ipvs = self.ipvs()?;
        for s in ipvs
            .services()
            .map_err(|e| err("listing virtual services")(&e))?
        {
            let key = from_key(&s.key);
            let dests = if observed.owns(&key, desired) {
                observed_dests(
                    ipvs.destinations(&s.key)
                        .map_err(|e| DataplaneError(e.to_string()))?,
                )
            } else {
                BTreeMap::new()
            };
            let service = from_service(s);
            observed
                .services
                .insert(key, ObservedService { service, dests });
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
        Ok(Some(ObservedService {
            service: from_service(s),
            dests,
        }))
    }

    fn apply(&mut self, ops: &[Op]) -> Vec<Result<()>> {
        let mut results = Vec::with_capacity(ops.len());
        // Where a sync's time goes, per kind of kernel state (logged at debug).
        let mut spent: BTreeMap<&str, (usize, std::time::Duration)> = BTreeMap::new();
        let mut start = 0;
        while start < ops.len() {
            let kind = batch(&ops[start]);
            let end = ops[start..]
                .iter()
                .position(|op| batch(op) != kind)
                .map_or(ops.len(), |n| start + n);
            let run = &ops[start..end];
            let t = std::time::Instant::now();
            results.extend(match kind {
                Batch::Address => self.apply_addresses(run),
                Batch::Ipvs => self.apply_ipvs(run),
                Batch::Members => self.apply_members(run),
                Batch::Routes => self.apply_routes(run),
            });
            let e = spent.entry(kind.name()).or_default();
            e.0 += run.len();
            e.1 += t.elapsed();
            start = end;
        }
        if log::log_enabled!(log::Level::Debug) && !spent.is_empty() {
            let parts: Vec<String> = spent
                .iter()
                .map(|(k, (n, d))| format!("{k} {n} in {d:?}"))
                .collect();
            log::debug!("applied: {}", parts.join(", "));
        }
        results
    }

    fn clean_udp_conntrack(
        &mut self,
        services: &BTreeMap<ServiceKey, BTreeSet<SocketAddr>>,
    ) -> Result<usize> {
        let ct = Conntrack::open().map_err(|e| err("conntrack")(&e))?;
        let mut stale = Vec::new();
        for v6 in [false, true] {
            if !services.keys().any(|k| k.addr.is_ipv6() == v6) {
                continue;
            }
            let flows = ct
                .list(&conntrack::Filter::new(family(v6), Protocol::Udp))
                .map_err(|e| err("listing UDP conntrack entries")(&e))?;
            for f in flows {
                let key = ServiceKey {
                    addr: f.original.dst,
                    protocol: Protocol::Udp,
                    port: f.original.dst_port,
                };
                let Some(endpoints) = services.get(&key) else {
                    continue;
                };
                let from = SocketAddr::new(f.reply.src, f.reply.src_port);
                if !endpoints.contains(&from) {
                    stale.push(f);
                }
            }
        }
        let mut deleted = 0;
        let mut first = None;
        for r in ct.delete_many(&stale) {
            match r {
                Ok(true) => deleted += 1,
                Ok(false) => {}
                Err(e) => {
                    first.get_or_insert(err("deleting a UDP conntrack entry")(&e));
                }
            }
        }
        first.map_or(Ok(deleted), Err)
    }

    fn cleanup(&mut self) -> Result<()> {
        let mut errors: Vec<String> = Vec::new();
        let mut note = |what: &str, r: std::result::Result<bool, String>| match r {
            Ok(true) => log::info!("removed {what}"),
            Ok(false) => {}
            Err(e) => {
                log::error!("removing {what}: {e}");
                errors.push(format!("removing {what}: {e}"));
            }
        };
        for h in self.rules_check.iter_mut().filter_map(Option::take) {
            let _ = h.join();
        }
        for v6 in [false, true] {
            let ipt = Iptables::new(family(v6));
            note(
                &format!("{} rules", ipt.command()),
                self.ruleset(v6).remove(&ipt).map_err(|e| e.to_string()),
            );
        }
        // The services go before the sets: OWNED tells which services on node addresses are ours.
        let mut ours: BTreeSet<ServiceKey> = BTreeSet::new();
        let dummy = self.dummy_addresses();
        let owned_sets: Vec<(SetId, Vec<Entry>)> = [false, true]
            .into_iter()
            .map(|v6| SetId {
                kind: SetKind::Owned,
                v6,
            })
            .filter_map(|set| match self.ipset.list(&set.name()) {
                Ok(Some(e)) => Some((set, e)),
                _ => None,
            })
            .collect();
        if let Some(ipvs) = &self.ipvs {
            match (ipvs.services(), &dummy) {
                (Ok(services), Ok(addresses)) => {
                    for s in services {
                        let key = from_key(&s.key);
                        let marked = owned_sets.iter().any(|(_, entries)| {
                            entries
                                .iter()
                                .filter_map(from_entry)
                                .any(|m| m == Member::service(&key))
                        });
                        if addresses.contains(&key.addr) || marked {
                            ours.insert(key);
                        }
                    }
                }
                (Err(e), _) => note("virtual services", Err(e.to_string())),
                (_, Err(e)) => note("virtual services", Err(e.to_string())),
            }
            for key in &ours {
                note(
                    &format!("virtual service {key}"),
                    ipvs.del_service(&to_key(key))
                        .map(|_| true)
                        .map_err(|e| e.to_string()),
                );
            }
        }
        for v6 in [false, true] {
            for set in SetId::family(v6) {
                note(
                    &format!("ipset {set}"),
                    self.ipset.destroy(&set.name()).map_err(|e| e.to_string()),
                );
            }
        }
        let routes: Vec<PodRoute> = match self.pod_routes() {
            Ok((ours, _)) => ours.into_iter().collect(),
            Err(e) => {
                note("pod routes", Err(e.to_string()));
                Vec::new()
            }
        };
        for r in routes {
            let route = Route {
                dst: r.dst,
                gateway: Some(r.via),
                oif: None,
                protocol: ROUTE_PROTOCOL,
            };
            let done = self.rt.block_on(self.rtnl.del_route(&route));
            note(&format!("route {r}"), done.map_err(|e| e.to_string()));
        }
        let deleted = self.rt.block_on(self.rtnl.delete_link_by_name(&self.dummy));
        note(
            &format!("dummy device {}", self.dummy),
            deleted.map_err(|e| e.to_string()),
        );
        if errors.is_empty() {
            Ok(())
        } else {
            Err(DataplaneError(errors.join("; ")))
        }
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

    #[test]
    fn every_set_has_its_spec_and_members_round_trip_through_entries() {
        for v6 in [false, true] {
            for set in SetId::family(v6) {
                let s = spec(set);
                assert_eq!(
                    s.kind == SetType::BitmapPort,
                    !set.kind.has_family(),
                    "{set}"
                );
            }
        }
        let members = [
            Member::loopback("10.0.0.1:80".parse().unwrap(), Protocol::Tcp),
            Member::IpPort {
                ip: "fd00::1".parse().unwrap(),
                protocol: Protocol::Sctp,
                port: 9,
            },
            Member::IpPortNet {
                ip: "192.0.2.1".parse().unwrap(),
                protocol: Protocol::Udp,
                port: 53,
                net: "198.51.100.0/24".parse().unwrap(),
            },
            Member::Port(30080),
            Member::Ip("10.96.0.1".parse().unwrap()),
        ];
        for m in members {
            assert_eq!(from_entry(&to_entry(&m)), Some(m));
        }
    }

    /// Each set the rules match is counted by the rules that match it: the reference counts the
    /// kernel reports when the rules are in place.
    #[test]
    fn expected_references_count_the_rules_of_each_set() {
        let refs = expected_references(&rules::ruleset(false, &RuleOptions::default()), false);
        let get = |k| refs[&SetId { kind: k, v6: false }];
        assert_eq!(get(SetKind::ClusterIp), 3);
        assert_eq!(get(SetKind::LoopBack), 1);
        assert_eq!(get(SetKind::VipAddresses), 1);
        assert_eq!(get(SetKind::Owned), 0, "a marker, matched by no rule");
    }
}
