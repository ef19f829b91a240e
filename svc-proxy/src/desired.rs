//! What one Service asks of the kernel, with kube-proxy's IPVS-mode rules: a virtual service per
//! cluster IP, external IP, load-balancer IP and node address (node ports) of each port, the
//! endpoints each of them takes (ready ones, else serving terminating ones; traffic policies;
//! topology hints), and the set members that tell the constant iptables rules what to
//! masquerade, accept, filter or reject. Pure: reads the store, touches nothing.

use crate::model::{
    DesiredService, Member, ServiceKey, SetId, SetKind, VirtualService, FLAG_SOURCE_HASH,
};
use crate::objects::{EndpointSlice, NamespacedName, Service, ServicePort, TargetPort};
use crate::store::{SourceId, Store};
use nodenet::Protocol;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

/// What the derivation needs to know of this node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    /// Its zone (`topology.kubernetes.io/zone` of its Node), for topology hints.
    pub zone: Option<String>,
    /// The addresses node ports listen on (the node's addresses, as `--nodeport-addresses`
    /// selects them).
    pub nodeport_addresses: BTreeSet<IpAddr>,
    /// Every address of the node but the dummy's: an external or load-balancer IP that is one of
    /// them is not put on the dummy device.
    pub addresses: BTreeSet<IpAddr>,
    /// The node's own IPs (its Node's InternalIPs): a load balancer's source ranges that hold one
    /// let the node reach it.
    pub ips: Vec<IpAddr>,
}

/// What one virtual service needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsPlan {
    pub service: DesiredService,
    /// The address to put on the dummy device, if any.
    pub bound: Option<IpAddr>,
    pub members: Vec<(SetId, Member)>,
}

/// What one Service needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServicePlan {
    pub virtual_services: Vec<VsPlan>,
    /// Members that belong to the Service rather than one virtual service.
    pub members: Vec<(SetId, Member)>,
    /// Its health check node port and how many local ready endpoints it has
    /// (`externalTrafficPolicy: Local` load balancers).
    pub health: Option<(u16, usize)>,
    /// The `Local` policies it has no local endpoint for while the cluster has some, per family
    /// (`true` = IPv6): kube-proxy's `sync_proxy_rules_no_local_endpoints_total`.
    pub no_local: BTreeSet<(TrafficPolicy, bool)>,
}

/// Which traffic a policy governs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TrafficPolicy {
    /// `internalTrafficPolicy`: traffic to the cluster IPs.
    Internal,
    /// `externalTrafficPolicy`: traffic to node ports, external and load-balancer IPs.
    External,
}

impl TrafficPolicy {
    pub fn label(self) -> &'static str {
        match self {
            TrafficPolicy::Internal => "internal",
            TrafficPolicy::External => "external",
        }
    }
}

/// An endpoint of one Service port, one address family, with what its slice says of it.
#[derive(Debug, Clone)]
struct Candidate {
    addr: SocketAddr,
    ready: bool,
    serving: bool,
    terminating: bool,
    local: bool,
    zone_hints: Vec<String>,
    node_hints: Vec<String>,
}

/// The plan of Service `name` as the store holds it (`None`: no such Service).
pub fn service(
    name: &NamespacedName,
    store: &Store,
    node: &NodeView,
    default_scheduler: &str,
) -> Option<ServicePlan> {
    let (source, svc) = store.service(name)?;
    let slices = store.slices(name);
    let scheduler = svc
        .scheduler
        .clone()
        .unwrap_or_else(|| default_scheduler.to_string());
    let flags = if scheduler == "mh" {
        FLAG_SOURCE_HASH
    } else {
        0
    };
    let mut plan = ServicePlan::default();
    let mut local_ready = BTreeSet::new();
    for port in &svc.ports {
        let externally_accessible = port.node_port.is_some()
            || !svc.load_balancer_ips.is_empty()
            || !svc.external_ips.is_empty();
        let uses_cluster = !svc.internal_policy_local || externally_accessible;
        let uses_local =
            svc.internal_policy_local || (svc.external_policy_local && externally_accessible);
        let proto_name = port.protocol.as_str().to_uppercase();
        for v4 in [true, false] {
            let candidates = if !slices.is_empty() {
                slice_candidates(&slices, port, v4, node, source)
            } else if source != SourceId::Api {
                pod_candidates(svc, store, port, v4, name)
            } else {
                // The API's EndpointSlice controller speaks for the Services it knows; pods
                // attached on this node are no stand-in for their endpoints.
                Vec::new()
            };
            local_ready.extend(
                candidates
                    .iter()
                    .filter(|c| c.local && c.ready)
                    .map(|c| c.addr.ip()),
            );
            let (cluster, local) = categorize(&candidates, uses_cluster, uses_local, node);
            let usable = candidates
                .iter()
                .any(|c| c.ready || (c.serving && c.terminating));
            if local.is_empty() && usable {
                if svc.internal_policy_local {
                    plan.no_local.insert((TrafficPolicy::Internal, !v4));
                }
                if svc.external_policy_local && externally_accessible {
                    plan.no_local.insert((TrafficPolicy::External, !v4));
                }
            }
            let internal = if svc.internal_policy_local && !local.is_empty() {
                local.clone()
            } else {
                cluster.clone()
            };
            let external = if svc.external_policy_local && !local.is_empty() {
                local.clone()
            } else {
                cluster.clone()
            };
            let loopback: Vec<(SetId, Member)> = candidates
                .iter()
                .filter(|c| c.local && (cluster.contains(&c.addr) || local.contains(&c.addr)))
                .map(|c| {
                    (
                        SetId::of(SetKind::LoopBack, c.addr.ip()),
                        Member::loopback(c.addr, port.protocol),
                    )
                })
                .collect();
            let vs = |addr: IpAddr, vs_port: u16, what: &str, endpoints: &BTreeSet<SocketAddr>| {
                let key = ServiceKey {
                    addr,
                    protocol: port.protocol,
                    port: vs_port,
                };
                DesiredService {
                    service: VirtualService {
                        key,
                        scheduler: scheduler.clone(),
                        persistence: svc.affinity_timeout,
                        flags,
                    },
                    endpoints: endpoints.clone(),
                    origin: format!("{name} port {}/{proto_name}{what}", port.port),
                }
            };
            let family = |ip: &&IpAddr| ip.is_ipv4() == v4;

            for &vip in svc.cluster_ips.iter().filter(family) {
                let s = vs(vip, port.port, "", &internal);
                let key = s.service.key;
                let mut members = loopback.clone();
                members.push((SetId::of(SetKind::ClusterIp, vip), Member::service(&key)));
                members.push((SetId::of(SetKind::VipAddresses, vip), Member::Ip(vip)));
                plan.virtual_services.push(VsPlan {
                    service: s,
                    bound: Some(vip),
                    members,
                });
            }
            for &ip in svc.external_ips.iter().filter(family) {
                let s = vs(ip, port.port, " external IP", &external);
                let key = s.service.key;
                let kind = if svc.external_policy_local {
                    SetKind::ExternalIpLocal
                } else {
                    SetKind::ExternalIp
                };
                let mut members = loopback.clone();
                members.push((SetId::of(kind, ip), Member::service(&key)));
                plan.virtual_services.push(placed(s, members, node));
            }
            for &ip in svc.load_balancer_ips.iter().filter(family) {
                let s = vs(ip, port.port, " load balancer", &external);
                let key = s.service.key;
                let entry = Member::service(&key);
                let mut members = loopback.clone();
                members.push((SetId::of(SetKind::LoadBalancer, ip), entry));
                if svc.external_policy_local {
                    members.push((SetId::of(SetKind::LoadBalancerLocal, ip), entry));
                }
                let ranges: Vec<_> = svc
                    .load_balancer_source_ranges
                    .iter()
                    .filter(|n| n.ip().is_ipv4() == v4)
                    .collect();
                // A zero-length range means every source: no filter at all (kube-proxy's rule).
                if !ranges.is_empty() && !ranges.iter().any(|n| n.prefix() == 0) {
                    members.push((SetId::of(SetKind::LoadBalancerFw, ip), entry));
                    for net in &ranges {
                        members.push((
                            SetId::of(SetKind::LoadBalancerSourceCidr, ip),
                            Member::IpPortNet {
                                ip,
                                protocol: port.protocol,
                                port: port.port,
                                net: **net,
                            },
                        ));
                    }
                    let node_allowed = node
                        .ips
                        .iter()
                        .any(|n| ranges.iter().any(|r| r.contains(*n)));
                    if node_allowed {
                        members.push((
                            SetId::of(SetKind::LoadBalancerSourceIp, ip),
                            Member::IpPortIp {
                                ip,
                                protocol: port.protocol,
                                port: port.port,
                                ip2: ip,
                            },
                        ));
                    } else {
                        members.push((SetId::of(SetKind::LoadBalancerNoNode, ip), entry));
                    }
                }
                plan.virtual_services.push(placed(s, members, node));
            }
            // Node ports only in the Service's own families (kube-proxy runs one proxier per
            // family, each with the Services of its family).
            let in_family = svc.cluster_ips.iter().any(|ip| ip.is_ipv4() == v4);
            if let (Some(np), true) = (port.node_port, in_family) {
                for &ip in node
                    .nodeport_addresses
                    .iter()
                    .filter(|ip| ip.is_ipv4() == v4)
                {
                    let s = vs(ip, np, " node port", &external);
                    let key = s.service.key;
                    let mut members = loopback.clone();
                    members.push((SetId::of(SetKind::Owned, ip), Member::service(&key)));
                    members.extend(node_port_members(
                        port.protocol,
                        ip,
                        np,
                        svc.external_policy_local,
                    ));
                    plan.virtual_services.push(VsPlan {
                        service: s,
                        bound: None,
                        members,
                    });
                }
            }
        }
    }
    if let Some(hc) = svc.health_check_node_port {
        plan.members
            .push((SetId::ports(SetKind::HealthCheckNodePort), Member::Port(hc)));
        plan.health = Some((hc, local_ready.len()));
    }
    Some(plan)
}

/// A virtual service on an external or load-balancer IP: on the dummy device, unless the
/// address is the node's own (then it is marked ours in the `OWNED` set instead).
fn placed(service: DesiredService, mut members: Vec<(SetId, Member)>, node: &NodeView) -> VsPlan {
    let key = service.service.key;
    let bound = if node.addresses.contains(&key.addr) {
        members.push((SetId::of(SetKind::Owned, key.addr), Member::service(&key)));
        None
    } else {
        members.push((
            SetId::of(SetKind::VipAddresses, key.addr),
            Member::Ip(key.addr),
        ));
        Some(key.addr)
    };
    VsPlan {
        service,
        bound,
        members,
    }
}

/// The node-port set members of one node port: a port bitmap per protocol for TCP and UDP, and
/// `nodeip,sctp:port` for SCTP; the `LOCAL` sets too for `externalTrafficPolicy: Local`.
fn node_port_members(
    protocol: Protocol,
    ip: IpAddr,
    port: u16,
    local: bool,
) -> Vec<(SetId, Member)> {
    let (all, only_local) = match protocol {
        Protocol::Tcp => (SetKind::NodePortTcp, SetKind::NodePortLocalTcp),
        Protocol::Udp => (SetKind::NodePortUdp, SetKind::NodePortLocalUdp),
        Protocol::Sctp => (SetKind::NodePortSctp, SetKind::NodePortLocalSctp),
    };
    let member = if protocol == Protocol::Sctp {
        Member::IpPort { ip, protocol, port }
    } else {
        Member::Port(port)
    };
    let set = |kind| {
        if protocol == Protocol::Sctp {
            SetId::of(kind, ip)
        } else {
            SetId::ports(kind)
        }
    };
    let mut out = vec![(set(all), member)];
    if local {
        out.push((set(only_local), member));
    }
    out
}

/// The endpoints of one Service port and family from its EndpointSlices. An address listed
/// twice (two slices during a controller's update) counts once, ready if either says so.
fn slice_candidates(
    slices: &[&EndpointSlice],
    port: &ServicePort,
    v4: bool,
    node: &NodeView,
    source: SourceId,
) -> Vec<Candidate> {
    let mut by_addr: BTreeMap<SocketAddr, Candidate> = BTreeMap::new();
    for slice in slices.iter().filter(|s| s.ipv6 != v4) {
        let Some(sp) = slice
            .ports
            .iter()
            .find(|p| p.name == port.name && p.protocol == port.protocol)
        else {
            continue;
        };
        for ep in &slice.endpoints {
            // An endpoint without a node is local only for a Service from this node's files
            // (their slices are written for this node); the API's are local by `nodeName`.
            let local = match &ep.node_name {
                Some(n) => *n == node.name,
                None => source != SourceId::Api,
            };
            for addr in &ep.addresses {
                let c = Candidate {
                    addr: SocketAddr::new(*addr, sp.port),
                    ready: ep.ready,
                    serving: ep.serving,
                    terminating: ep.terminating,
                    local,
                    zone_hints: ep.zone_hints.clone(),
                    node_hints: ep.node_hints.clone(),
                };
                by_addr
                    .entry(c.addr)
                    .and_modify(|old| {
                        if c.ready && !old.ready {
                            *old = c.clone();
                        }
                    })
                    .or_insert(c);
            }
        }
    }
    by_addr.into_values().collect()
}

/// The endpoints of one Service port and family from the pods cni-bridge attached whose labels
/// match (ready, local).
fn pod_candidates(
    svc: &Service,
    store: &Store,
    port: &ServicePort,
    v4: bool,
    name: &NamespacedName,
) -> Vec<Candidate> {
    let Some(selector) = &svc.selector else {
        return Vec::new();
    };
    let selected = store.pods_matching(&svc.namespace, selector);
    let target = match &port.target_port {
        TargetPort::Number(n) => *n,
        TargetPort::Named(t) => {
            if !selected.is_empty() {
                log::warn!(
                    "{name} port {}/{}: targetPort {t:?} is a port name, which pods from \
                     attachment records cannot resolve (they do not list container ports); give \
                     an EndpointSlice or a port number",
                    port.port,
                    port.protocol.as_str().to_uppercase()
                );
            }
            return Vec::new();
        }
    };
    let addrs: BTreeSet<SocketAddr> = selected
        .iter()
        .flat_map(|p| p.addresses.iter())
        .filter(|a| a.is_ipv4() == v4)
        .map(|a| SocketAddr::new(*a, target))
        .collect();
    addrs
        .into_iter()
        .map(|addr| Candidate {
            addr,
            ready: true,
            serving: true,
            terminating: false,
            local: true,
            zone_hints: Vec::new(),
            node_hints: Vec::new(),
        })
        .collect()
}

/// kube-proxy's `CategorizeEndpoints`: the cluster endpoints (ready ones the topology hints
/// allow; else the serving terminating ones) and the local endpoints (local ready ones; else
/// local serving terminating ones), each only when the traffic policies use them.
fn categorize(
    eps: &[Candidate],
    uses_cluster: bool,
    uses_local: bool,
    node: &NodeView,
) -> (BTreeSet<SocketAddr>, BTreeSet<SocketAddr>) {
    let mut cluster = BTreeSet::new();
    if uses_cluster {
        let mode = topology_mode(eps, node);
        cluster = eps
            .iter()
            .filter(|e| e.ready && available(e, mode, node))
            .map(|e| e.addr)
            .collect();
        if cluster.is_empty() {
            cluster = eps
                .iter()
                .filter(|e| e.serving && e.terminating)
                .map(|e| e.addr)
                .collect();
        }
    }
    let mut local = BTreeSet::new();
    if uses_local {
        local = eps
            .iter()
            .filter(|e| e.local && e.ready)
            .map(|e| e.addr)
            .collect();
        if local.is_empty() {
            local = eps
                .iter()
                .filter(|e| e.local && e.serving && e.terminating)
                .map(|e| e.addr)
                .collect();
        }
    }
    (cluster, local)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Topology {
    Any,
    SameNode,
    SameZone,
}

/// Which topology the hints ask for: same node when every ready endpoint has node hints and
/// one names this node; else same zone when every ready endpoint has zone hints and one names
/// this node's zone; else none.
fn topology_mode(eps: &[Candidate], node: &NodeView) -> Topology {
    let ready: Vec<&Candidate> = eps.iter().filter(|e| e.ready).collect();
    if ready.is_empty() {
        return Topology::Any;
    }
    if ready.iter().all(|e| !e.node_hints.is_empty())
        && ready.iter().any(|e| e.node_hints.contains(&node.name))
    {
        return Topology::SameNode;
    }
    if let Some(zone) = &node.zone {
        if ready.iter().all(|e| !e.zone_hints.is_empty())
            && ready.iter().any(|e| e.zone_hints.contains(zone))
        {
            return Topology::SameZone;
        }
    }
    Topology::Any
}

fn available(e: &Candidate, mode: Topology, node: &NodeView) -> bool {
    match mode {
        Topology::Any => true,
        Topology::SameNode => e.node_hints.contains(&node.name),
        Topology::SameZone => node.zone.as_ref().is_some_and(|z| e.zone_hints.contains(z)),
    }
}

#[cfg(test)]
mod tests;
