//! The state svc-proxy reconciles: virtual services and their real servers, the VIPs on the dummy
//! device, the members of its ipsets (the one place per-entry state lives outside IPVS: the
//! iptables rules that match them are a constant handful) and the pod routes to other nodes,
//! both as wanted (`Desired`) and as found (`Observed`).

use ipnetwork::IpNetwork;
use nodenet::Protocol;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// Scheduler used when neither the Service annotation nor `--ipvs-scheduler` names one.
pub const DEFAULT_SCHEDULER: &str = "rr";
/// The nat chain (iptables, and ip6tables once IPv6 is in use) whose rules masquerade what needs
/// it: hairpin traffic (the loop-back set) and packets marked for masquerade.
pub const POSTROUTING_CHAIN: &str = "SVCPROXY-POSTROUTING";
/// Weight of a serving real server; draining ones get 0.
pub const ENDPOINT_WEIGHT: u32 = 1;
/// `IP_VS_SVC_F_SCHED2` (`IP_VS_SVC_F_SCHED_MH_PORT`): the `mh` scheduler hashes the source
/// port too; kube-proxy sets it for `mh` (its `FlagSourceHash`).
pub const FLAG_SOURCE_HASH: u32 = 0x0010;

/// What identifies an IPVS virtual service (`ipvsadm -t|-u|--sctp-service VIP:PORT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub addr: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            SocketAddr::new(self.addr, self.port),
            self.protocol
        )
    }
}

/// The settings of a virtual service that svc-proxy chooses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualService {
    pub key: ServiceKey,
    /// IPVS scheduler name (`ipvsadm -s`).
    pub scheduler: String,
    /// Persistence timeout in seconds for `sessionAffinity: ClientIP` (`ipvsadm -p`).
    pub persistence: Option<u32>,
    /// Other `IP_VS_SVC_F_*` flags ([`FLAG_SOURCE_HASH`] for `mh`).
    pub flags: u32,
}

/// One virtual service as the inputs want it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredService {
    pub service: VirtualService,
    /// Real servers, each wanted with weight [`ENDPOINT_WEIGHT`] and the masquerade method.
    pub endpoints: BTreeSet<SocketAddr>,
    /// The Service port this comes from, for log lines (`default/app-service port 8080/TCP`).
    pub origin: String,
}

/// The ipsets svc-proxy keeps. Each exists per address family (`SVCPROXY-…` for IPv4,
/// `SVCPROXY-6-…` for IPv6), except the port bitmaps, which hold ports only and serve both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SetKind {
    /// `hash:ip,port,ip`: `ep,proto:port,ep` for local endpoints (hairpin masquerade).
    LoopBack,
    /// `hash:ip,port`: every cluster IP:port (off-cluster masquerade, what is a service port).
    ClusterIp,
    /// `hash:ip,port`: external IPs of Services with `externalTrafficPolicy: Cluster`.
    ExternalIp,
    /// `hash:ip,port`: external IPs of Services with `externalTrafficPolicy: Local` (no SNAT).
    ExternalIpLocal,
    /// `hash:ip,port`: every load-balancer IP:port.
    LoadBalancer,
    /// `hash:ip,port`: load-balancer IPs of `Local` Services (no SNAT).
    LoadBalancerLocal,
    /// `hash:ip,port`: load-balancer IPs with `loadBalancerSourceRanges` (filtered).
    LoadBalancerFw,
    /// `hash:ip,port,net`: `lbip,proto:port,range` for each allowed source range.
    LoadBalancerSourceCidr,
    /// `hash:ip,port,ip`: `lbip,proto:port,lbip`: the node itself may reach it (a range holds
    /// the node's IP).
    LoadBalancerSourceIp,
    /// `hash:ip,port`: load-balancer IPs the node may not reach (no range holds its IP).
    LoadBalancerNoNode,
    /// `bitmap:port`: TCP node ports.
    NodePortTcp,
    /// `bitmap:port`: TCP node ports of `Local` Services (no SNAT).
    NodePortLocalTcp,
    /// `bitmap:port`: UDP node ports.
    NodePortUdp,
    /// `bitmap:port`: UDP node ports of `Local` Services.
    NodePortLocalUdp,
    /// `hash:ip,port`: `nodeip,sctp:port` (SCTP ports cannot be told by a bitmap, which has no
    /// protocol; kube-proxy uses the same type).
    NodePortSctp,
    /// `hash:ip,port`: SCTP node ports of `Local` Services.
    NodePortLocalSctp,
    /// `bitmap:port`: health check node ports (accepted through the firewall).
    HealthCheckNodePort,
    /// `hash:ip`: the addresses on the dummy device (connections to any other port of them are
    /// rejected: they are VIPs, not the node).
    VipAddresses,
    /// `hash:ip,port`: virtual services on addresses that are not on the dummy device (node
    /// ports, node-address external IPs): the kernel-side marker that they are ours.
    Owned,
}

/// The ipset type of a set kind (as nodenet encodes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetShape {
    IpPortIp,
    IpPort,
    IpPortNet,
    Port,
    Ip,
}

impl SetKind {
    pub const ALL: [SetKind; 19] = [
        SetKind::LoopBack,
        SetKind::ClusterIp,
        SetKind::ExternalIp,
        SetKind::ExternalIpLocal,
        SetKind::LoadBalancer,
        SetKind::LoadBalancerLocal,
        SetKind::LoadBalancerFw,
        SetKind::LoadBalancerSourceCidr,
        SetKind::LoadBalancerSourceIp,
        SetKind::LoadBalancerNoNode,
        SetKind::NodePortTcp,
        SetKind::NodePortLocalTcp,
        SetKind::NodePortUdp,
        SetKind::NodePortLocalUdp,
        SetKind::NodePortSctp,
        SetKind::NodePortLocalSctp,
        SetKind::HealthCheckNodePort,
        SetKind::VipAddresses,
        SetKind::Owned,
    ];

    /// The name after `SVCPROXY-` (or `SVCPROXY-6-`).
    fn stem(self) -> &'static str {
        match self {
            SetKind::LoopBack => "LOOP-BACK",
            SetKind::ClusterIp => "CLUSTER-IP",
            SetKind::ExternalIp => "EXTERNAL-IP",
            SetKind::ExternalIpLocal => "EXTERNAL-IP-LOCAL",
            SetKind::LoadBalancer => "LOAD-BALANCER",
            SetKind::LoadBalancerLocal => "LOAD-BALANCER-LOCAL",
            SetKind::LoadBalancerFw => "LOAD-BALANCER-FW",
            SetKind::LoadBalancerSourceCidr => "LB-SOURCE-CIDR",
            SetKind::LoadBalancerSourceIp => "LB-SOURCE-IP",
            SetKind::LoadBalancerNoNode => "LB-NO-NODE",
            SetKind::NodePortTcp => "NODE-PORT-TCP",
            SetKind::NodePortLocalTcp => "NODE-PORT-LOCAL-TCP",
            SetKind::NodePortUdp => "NODE-PORT-UDP",
            SetKind::NodePortLocalUdp => "NODE-PORT-LOCAL-UDP",
            SetKind::NodePortSctp => "NODE-PORT-SCTP",
            SetKind::NodePortLocalSctp => "NODE-PORT-LOCAL-SCTP",
            SetKind::HealthCheckNodePort => "HEALTH-CHECK-NODE-PORT",
            SetKind::VipAddresses => "VIPS",
            SetKind::Owned => "OWNED",
        }
    }

    pub fn shape(self) -> SetShape {
        match self {
            SetKind::LoopBack | SetKind::LoadBalancerSourceIp => SetShape::IpPortIp,
            SetKind::LoadBalancerSourceCidr => SetShape::IpPortNet,
            SetKind::NodePortTcp
            | SetKind::NodePortLocalTcp
            | SetKind::NodePortUdp
            | SetKind::NodePortLocalUdp
            | SetKind::HealthCheckNodePort => SetShape::Port,
            SetKind::VipAddresses => SetShape::Ip,
            _ => SetShape::IpPort,
        }
    }

    /// Whether the set holds addresses (one set per family) or only ports (one for both).
    pub fn has_family(self) -> bool {
        self.shape() != SetShape::Port
    }
}

/// One set: its kind and family (`v6` is false for the family-less port bitmaps).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SetId {
    pub kind: SetKind,
    pub v6: bool,
}

impl SetId {
    /// The set of `kind` for addresses of `ip`'s family.
    pub fn of(kind: SetKind, ip: IpAddr) -> SetId {
        SetId {
            kind,
            v6: kind.has_family() && ip.is_ipv6(),
        }
    }

    /// The family-less set of `kind` (a port bitmap).
    pub fn ports(kind: SetKind) -> SetId {
        debug_assert!(!kind.has_family());
        SetId { kind, v6: false }
    }

    /// `SVCPROXY-LOOP-BACK`, `SVCPROXY-6-LOOP-BACK` (at most 31 bytes, the kernel's limit).
    pub fn name(self) -> String {
        if self.v6 {
            format!("SVCPROXY-6-{}", self.kind.stem())
        } else {
            format!("SVCPROXY-{}", self.kind.stem())
        }
    }

    /// Every set svc-proxy keeps for one family (`v6`); the family-less ones with IPv4.
    pub fn family(v6: bool) -> impl Iterator<Item = SetId> {
        SetKind::ALL
            .into_iter()
            .filter(move |k| !v6 || k.has_family())
            .map(move |kind| SetId { kind, v6 })
    }
}

impl fmt::Display for SetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// One member of a set, in the shape of its set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Member {
    /// `ip,proto:port,ip2`.
    IpPortIp {
        ip: IpAddr,
        protocol: Protocol,
        port: u16,
        ip2: IpAddr,
    },
    /// `ip,proto:port`.
    IpPort {
        ip: IpAddr,
        protocol: Protocol,
        port: u16,
    },
    /// `ip,proto:port,net`.
    IpPortNet {
        ip: IpAddr,
        protocol: Protocol,
        port: u16,
        net: IpNetwork,
    },
    /// A port (bitmap sets).
    Port(u16),
    /// An address.
    Ip(IpAddr),
}

impl Member {
    /// The loop-back entry that masquerades `endpoint` reaching itself through a VIP.
    pub fn loopback(endpoint: SocketAddr, protocol: Protocol) -> Member {
        Member::IpPortIp {
            ip: endpoint.ip(),
            protocol,
            port: endpoint.port(),
            ip2: endpoint.ip(),
        }
    }

    /// `ip,proto:port` of a virtual service.
    pub fn service(key: &ServiceKey) -> Member {
        Member::IpPort {
            ip: key.addr,
            protocol: key.protocol,
            port: key.port,
        }
    }
}

impl fmt::Display for Member {
    /// As `ipset` prints it: `10.0.0.11,tcp:8080,10.0.0.11`, `10.96.0.10,udp:53`, `30080`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Member::IpPortIp {
                ip,
                protocol,
                port,
                ip2,
            } => write!(f, "{ip},{protocol}:{port},{ip2}"),
            Member::IpPort { ip, protocol, port } => write!(f, "{ip},{protocol}:{port}"),
            Member::IpPortNet {
                ip,
                protocol,
                port,
                net,
            } => write!(f, "{ip},{protocol}:{port},{net}"),
            Member::Port(p) => write!(f, "{p}"),
            Member::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// A route to another node's pod CIDR via that node's address (host-gw).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodRoute {
    pub dst: IpNetwork,
    pub via: IpAddr,
}

impl fmt::Display for PodRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} via {}", self.dst, self.via)
    }
}

/// Everything the inputs ask for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub services: BTreeMap<ServiceKey, DesiredService>,
    /// Addresses that must sit on the dummy device (cluster IPs, and external and load-balancer
    /// IPs that are not an address of the node).
    pub bound: BTreeSet<IpAddr>,
    pub sets: BTreeMap<SetId, BTreeSet<Member>>,
    /// Routes to other nodes' pod CIDRs (empty unless pod routes are on).
    pub routes: BTreeSet<PodRoute>,
    /// `--ipvs-exclude-cidrs`: virtual services on these addresses are never deleted.
    pub excluded: Vec<IpNetwork>,
}

impl Desired {
    /// Whether `addr` is in an excluded CIDR (its virtual services are left alone).
    pub fn excluded(&self, addr: &IpAddr) -> bool {
        self.excluded.iter().any(|n| n.contains(*addr))
    }

    /// Number of real servers over all services.
    pub fn endpoint_count(&self) -> usize {
        self.services.values().map(|s| s.endpoints.len()).sum()
    }

    /// Whether the set `set` wants `member`.
    pub fn has_member(&self, set: &SetId, member: &Member) -> bool {
        self.sets.get(set).is_some_and(|m| m.contains(member))
    }

    /// Whether any address of the IPv6 family is wanted anywhere (its sets and rules exist).
    pub fn uses_v6(&self) -> bool {
        self.sets.iter().any(|(id, m)| id.v6 && !m.is_empty())
            || self.bound.iter().any(IpAddr::is_ipv6)
    }
}

/// A real server as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObservedDest {
    pub weight: u32,
    /// Whether the forward method is masquerade (the only one svc-proxy sets).
    pub masquerade: bool,
    pub active_conns: u32,
    pub inactive_conns: u32,
}

impl ObservedDest {
    /// A real server as svc-proxy creates it.
    pub fn new(weight: u32) -> ObservedDest {
        ObservedDest {
            weight,
            masquerade: true,
            active_conns: 0,
            inactive_conns: 0,
        }
    }

    pub fn connections(&self) -> u64 {
        u64::from(self.active_conns) + u64::from(self.inactive_conns)
    }
}

/// A virtual service as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedService {
    pub service: VirtualService,
    /// Real servers; left empty for services that are not ours (they are never dumped).
    pub dests: BTreeMap<SocketAddr, ObservedDest>,
}

/// What the kernel holds: the dummy device's addresses, the virtual services, our sets, our
/// routes, and the node's own addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Addresses on our dummy device (all of them are ours).
    pub addresses: BTreeSet<IpAddr>,
    /// Virtual services, ours and others' (see [`Observed::owns`]).
    pub services: BTreeMap<ServiceKey, ObservedService>,
    pub sets: BTreeMap<SetId, BTreeSet<Member>>,
    /// Routes with svc-proxy's route protocol (all of them are ours).
    pub routes: BTreeSet<PodRoute>,
    /// Destinations of the main table's other routes: a pod route is never put over one of them
    /// (it is someone else's: a static route, another network plugin's).
    pub foreign_routes: BTreeSet<IpNetwork>,
    /// The node's addresses on every device but the dummy (node ports listen on them), without
    /// loopback and IPv6 link-local ones (kube-proxy's rule).
    pub node_addresses: BTreeSet<IpAddr>,
    /// The networks those addresses are on (address and prefix): another node's address in one
    /// of them is directly reachable (a pod route may go via it).
    pub node_networks: BTreeSet<IpNetwork>,
}

impl Observed {
    /// The one ownership rule: a virtual service is ours iff its address is on our dummy device,
    /// or it is marked in our `OWNED` set (node ports and other services on node addresses), or
    /// the inputs claim it (it is about to be put there).
    pub fn owns(&self, key: &ServiceKey, desired: &Desired) -> bool {
        self.addresses.contains(&key.addr)
            || desired.bound.contains(&key.addr)
            || self
                .sets
                .get(&SetId::of(SetKind::Owned, key.addr))
                .is_some_and(|m| m.contains(&Member::service(key)))
            || desired.services.contains_key(key)
    }

    /// Whether the set `set` holds `member`.
    pub fn has_member(&self, set: &SetId, member: &Member) -> bool {
        self.sets.get(set).is_some_and(|m| m.contains(member))
    }

    /// The kernel state after `op` succeeded; keeps the controller's cached view in step with
    /// what it applied, and is the behaviour of the recording fake.
    pub fn record(&mut self, op: &crate::plan::Op) {
        use crate::plan::Op;
        match op {
            Op::AddAddress(ip) => {
                self.addresses.insert(*ip);
            }
            Op::DelAddress(ip) => {
                self.addresses.remove(ip);
            }
            Op::AddService(s) | Op::UpdateService(s) => {
                self.services
                    .entry(s.key)
                    .and_modify(|o| o.service = s.clone())
                    .or_insert_with(|| ObservedService {
                        service: s.clone(),
                        dests: BTreeMap::new(),
                    });
            }
            Op::DelService(key) => {
                self.services.remove(key);
            }
            Op::AddDest {
                service,
                dest,
                weight,
            }
            | Op::UpdateDest {
                service,
                dest,
                weight,
            } => {
                if let Some(o) = self.services.get_mut(service) {
                    o.dests
                        .entry(*dest)
                        .and_modify(|d| {
                            d.weight = *weight;
                            d.masquerade = true;
                        })
                        .or_insert_with(|| ObservedDest::new(*weight));
                }
            }
            Op::DelDest { service, dest } => {
                if let Some(o) = self.services.get_mut(service) {
                    o.dests.remove(dest);
                }
            }
            Op::AddMember { set, member } => {
                self.sets.entry(*set).or_default().insert(*member);
            }
            Op::DelMember { set, member } => {
                if let Some(m) = self.sets.get_mut(set) {
                    m.remove(member);
                }
            }
            Op::AddRoute(r) => {
                self.routes.insert(*r);
            }
            Op::DelRoute(r) => {
                self.routes.remove(r);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_set_name_fits_the_kernels_limit() {
        for v6 in [false, true] {
            for set in SetId::family(v6) {
                assert!(set.name().len() <= 31, "{set}");
            }
        }
        assert_eq!(
            SetId::of(SetKind::LoadBalancerSourceCidr, "fd00::1".parse().unwrap()).name(),
            "SVCPROXY-6-LB-SOURCE-CIDR"
        );
        assert_eq!(
            SetId::ports(SetKind::HealthCheckNodePort).name(),
            "SVCPROXY-HEALTH-CHECK-NODE-PORT"
        );
    }
}
