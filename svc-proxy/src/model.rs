//! The state svc-proxy reconciles: virtual services, their real servers, the VIPs on the dummy
//! device and the loop-back set entries, both as wanted (`Desired`) and as found (`Observed`).

use nodenet::Protocol;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// Scheduler used when neither the Service annotation nor `--scheduler` names one.
pub const DEFAULT_SCHEDULER: &str = "rr";
/// The loop-back set: `podIP,proto:port,podIP` for every IPv4 endpoint (hairpin masquerade).
pub const LOOPBACK_SET: &str = "SVCPROXY-LOOP-BACK";
/// The loop-back set of IPv6 endpoints (a set holds one address family); created with the first
/// IPv6 endpoint, so an IPv4-only node never gets IPv6 state.
pub const LOOPBACK_SET6: &str = "SVCPROXY-6-LOOP-BACK";
/// The nat chain (iptables, and ip6tables once IPv6 is in use) holding the one MASQUERADE rule
/// that matches the family's loop-back set.
pub const POSTROUTING_CHAIN: &str = "SVCPROXY-POSTROUTING";
/// Weight of a serving real server; draining ones get 0.
pub const ENDPOINT_WEIGHT: u32 = 1;

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

/// One entry of the loop-back set, `ip,proto:port,ip2` (`ipset add SET ip,proto:port,ip2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LoopbackEntry {
    pub ip: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
    pub ip2: IpAddr,
}

impl LoopbackEntry {
    /// The entry that masquerades `endpoint` reaching itself through a VIP.
    pub fn for_endpoint(endpoint: SocketAddr, protocol: Protocol) -> LoopbackEntry {
        LoopbackEntry {
            ip: endpoint.ip(),
            protocol,
            port: endpoint.port(),
            ip2: endpoint.ip(),
        }
    }

    /// The set this entry belongs in.
    pub fn set(&self) -> &'static str {
        loopback_set(self.ip.is_ipv6())
    }
}

/// The loop-back set of one address family.
pub fn loopback_set(v6: bool) -> &'static str {
    if v6 {
        LOOPBACK_SET6
    } else {
        LOOPBACK_SET
    }
}

impl fmt::Display for LoopbackEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{},{}:{},{}",
            self.ip, self.protocol, self.port, self.ip2
        )
    }
}

/// Everything the inputs ask for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub services: BTreeMap<ServiceKey, DesiredService>,
    pub loopback: BTreeSet<LoopbackEntry>,
}

impl Desired {
    /// The addresses that must sit on the dummy device.
    pub fn vips(&self) -> BTreeSet<IpAddr> {
        self.services.keys().map(|k| k.addr).collect()
    }

    /// Whether some wanted virtual service has address `addr` (a range lookup, not a scan).
    pub fn has_vip(&self, addr: &IpAddr) -> bool {
        let first = ServiceKey {
            addr: *addr,
            protocol: Protocol::Tcp,
            port: 0,
        };
        self.services
            .range(first..)
            .next()
            .is_some_and(|(k, _)| k.addr == *addr)
    }

    /// Number of real servers over all services.
    pub fn endpoint_count(&self) -> usize {
        self.services.values().map(|s| s.endpoints.len()).sum()
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

/// What the kernel holds: the dummy device's addresses, the virtual services, the loop-back set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Addresses on our dummy device (all of them are ours).
    pub addresses: BTreeSet<IpAddr>,
    /// Virtual services, ours and others' (see [`Observed::owns`]).
    pub services: BTreeMap<ServiceKey, ObservedService>,
    pub loopback: BTreeSet<LoopbackEntry>,
}

impl Observed {
    /// The one ownership rule: a virtual service is ours iff its address is on our dummy device,
    /// or is a VIP the inputs claim (it is about to be put there).
    pub fn owns(&self, addr: &IpAddr, claimed: &BTreeSet<IpAddr>) -> bool {
        self.addresses.contains(addr) || claimed.contains(addr)
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
            Op::AddLoopback(e) => {
                self.loopback.insert(*e);
            }
            Op::DelLoopback(e) => {
                self.loopback.remove(e);
            }
        }
    }
}
