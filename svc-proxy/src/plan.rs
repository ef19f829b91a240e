//! The pure planner: desired state + observed kernel state -> the minimal list of operations.

use crate::model::{
    Desired, DesiredService, Member, Observed, ObservedService, PodRoute, ServiceKey, SetId,
    VirtualService, ENDPOINT_WEIGHT,
};
use ipnetwork::IpNetwork;
use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// One change to kernel state; the applier is the only code that turns these into netlink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `ip addr add VIP/32 dev svcproxy0`
    AddAddress(IpAddr),
    /// `ip addr del VIP/32 dev svcproxy0`
    DelAddress(IpAddr),
    /// `ipvsadm -A -t VIP:PORT -s SCHED [-p TIMEOUT]`
    AddService(VirtualService),
    /// `ipvsadm -E -t VIP:PORT -s SCHED [-p TIMEOUT]`
    UpdateService(VirtualService),
    /// `ipvsadm -D -t VIP:PORT`
    DelService(ServiceKey),
    /// `ipvsadm -a -t VIP:PORT -r IP:PORT -m -w WEIGHT`
    AddDest {
        service: ServiceKey,
        dest: SocketAddr,
        weight: u32,
    },
    /// `ipvsadm -e -t VIP:PORT -r IP:PORT -m -w WEIGHT`
    UpdateDest {
        service: ServiceKey,
        dest: SocketAddr,
        weight: u32,
    },
    /// `ipvsadm -d -t VIP:PORT -r IP:PORT`
    DelDest {
        service: ServiceKey,
        dest: SocketAddr,
    },
    /// `ipset add SET MEMBER`
    AddMember { set: SetId, member: Member },
    /// `ipset del SET MEMBER`
    DelMember { set: SetId, member: Member },
    /// `ip route replace CIDR via IP proto svcproxy`
    AddRoute(PodRoute),
    /// `ip route del CIDR via IP proto svcproxy`
    DelRoute(PodRoute),
}

/// What an operation's failure holds back: retries and backoff are per scope, so one failing
/// service never delays the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Address(IpAddr),
    Service(ServiceKey),
    Set(SetId),
    Route(IpNetwork),
}

impl Op {
    pub fn scope(&self) -> Scope {
        match self {
            Op::AddAddress(ip) | Op::DelAddress(ip) => Scope::Address(*ip),
            Op::AddService(s) | Op::UpdateService(s) => Scope::Service(s.key),
            Op::DelService(key) => Scope::Service(*key),
            Op::AddDest { service, .. }
            | Op::UpdateDest { service, .. }
            | Op::DelDest { service, .. } => Scope::Service(*service),
            Op::AddMember { set, .. } | Op::DelMember { set, .. } => Scope::Set(*set),
            Op::AddRoute(r) | Op::DelRoute(r) => Scope::Route(r.dst),
        }
    }

    /// Metric label for this kind of operation.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::AddAddress(_) => "add_address",
            Op::DelAddress(_) => "del_address",
            Op::AddService(_) => "add_service",
            Op::UpdateService(_) => "update_service",
            Op::DelService(_) => "del_service",
            Op::AddDest { .. } => "add_dest",
            Op::UpdateDest { .. } => "update_dest",
            Op::DelDest { .. } => "del_dest",
            Op::AddMember { .. } => "add_set_member",
            Op::DelMember { .. } => "del_set_member",
            Op::AddRoute(_) => "add_route",
            Op::DelRoute(_) => "del_route",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Address(ip) => write!(f, "address {ip}"),
            Scope::Service(key) => write!(f, "service {key}"),
            Scope::Set(set) => write!(f, "set {set}"),
            Scope::Route(dst) => write!(f, "route to {dst}"),
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn service(f: &mut fmt::Formatter<'_>, verb: &str, s: &VirtualService) -> fmt::Result {
            write!(f, "{verb} service {} scheduler {}", s.key, s.scheduler)?;
            if let Some(t) = s.persistence {
                write!(f, " persistent {t}s")?;
            }
            if s.flags != 0 {
                write!(f, " flags {:#x}", s.flags)?;
            }
            Ok(())
        }
        match self {
            Op::AddAddress(ip) => write!(f, "add address {ip}"),
            Op::DelAddress(ip) => write!(f, "delete address {ip}"),
            Op::AddService(s) => service(f, "add", s),
            Op::UpdateService(s) => service(f, "update", s),
            Op::DelService(key) => write!(f, "delete service {key}"),
            Op::AddDest {
                service,
                dest,
                weight,
            } => {
                write!(f, "add real server {dest} to {service} weight {weight}")
            }
            Op::UpdateDest {
                service,
                dest,
                weight,
            } => {
                write!(f, "set real server {dest} of {service} to weight {weight}")
            }
            Op::DelDest { service, dest } => write!(f, "delete real server {dest} from {service}"),
            Op::AddMember { set, member } => write!(f, "add {member} to {set}"),
            Op::DelMember { set, member } => write!(f, "delete {member} from {set}"),
            Op::AddRoute(r) => write!(f, "add route {r}"),
            Op::DelRoute(r) => write!(f, "delete route {r}"),
        }
    }
}

/// Computes the operations that turn `observed` into `desired`, touching only what is ours:
/// [`plan_subset`] over every virtual service, set member, dummy-device address and route.
///
/// Order: VIP addresses first, then the set members wanted (ownership marks before their
/// services, hairpin entries before their real servers), per service the service and its real
/// servers, then services that are no longer wanted, set members removed (so a mark goes only
/// after its service), routes, and last the addresses no longer wanted. A real server that is no
/// longer wanted is deleted at once for UDP and SCTP; for TCP it is first set to weight 0 and
/// deleted once it has no connections
/// or `drain_expired(service, dest)` says its grace period is over. A wanted real server found at
/// weight 0 (a drain interrupted by a restart, or a pod that came back) gets its weight back.
pub fn plan(
    desired: &Desired,
    observed: &Observed,
    drain_expired: &dyn Fn(&ServiceKey, &SocketAddr) -> bool,
) -> Vec<Op> {
    let mut members = BTreeSet::new();
    for sets in [&desired.sets, &observed.sets] {
        for (set, m) in sets {
            members.extend(m.iter().map(|m| (*set, *m)));
        }
    }
    let everything = Subset {
        keys: desired
            .services
            .keys()
            .chain(observed.services.keys())
            .copied()
            .collect(),
        members,
        addresses: desired.bound.union(&observed.addresses).copied().collect(),
        routes: true,
    };
    plan_subset(desired, observed, &everything, drain_expired)
}

/// What an incremental change touched: the virtual services, set members and addresses to
/// re-plan, and whether routes are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subset {
    pub keys: BTreeSet<ServiceKey>,
    pub members: BTreeSet<(SetId, Member)>,
    /// Dummy-device addresses to re-plan.
    pub addresses: BTreeSet<IpAddr>,
    /// Re-plan the pod routes (few: all of them).
    pub routes: bool,
}

impl Subset {
    pub fn merge(&mut self, other: &Subset) {
        self.keys.extend(other.keys.iter().copied());
        self.members.extend(other.members.iter().copied());
        self.addresses.extend(other.addresses.iter().copied());
        self.routes |= other.routes;
    }
}

/// [`plan`] restricted to `subset`. Yields exactly the operations of [`plan`] when everything
/// outside `subset` already matches; its cost grows with the subset, not with the number of
/// services.
pub fn plan_subset(
    desired: &Desired,
    observed: &Observed,
    subset: &Subset,
    drain_expired: &dyn Fn(&ServiceKey, &SocketAddr) -> bool,
) -> Vec<Op> {
    let mut ops = Vec::new();
    for addr in &subset.addresses {
        if desired.bound.contains(addr) && !observed.addresses.contains(addr) {
            ops.push(Op::AddAddress(*addr));
        }
    }
    // Members go in before the services they describe: an ownership mark before its service
    // exists, a hairpin entry before its real server takes connections.
    for (set, member) in &subset.members {
        if desired.has_member(set, member) && !observed.has_member(set, member) {
            ops.push(Op::AddMember {
                set: *set,
                member: *member,
            });
        }
    }
    for key in &subset.keys {
        if let Some(want) = desired.services.get(key) {
            plan_service(key, want, observed, drain_expired, &mut ops);
        }
    }
    for key in &subset.keys {
        if observed.services.contains_key(key)
            && !desired.services.contains_key(key)
            && observed.owns(key, desired)
            && !desired.excluded(&key.addr)
        {
            ops.push(Op::DelService(*key));
        }
    }
    for (set, member) in &subset.members {
        if !desired.has_member(set, member) && observed.has_member(set, member) {
            ops.push(Op::DelMember {
                set: *set,
                member: *member,
            });
        }
    }
    if subset.routes {
        // Deletes first: a changed gateway is the old route's delete, then the new one's add.
        for r in observed.routes.difference(&desired.routes) {
            ops.push(Op::DelRoute(*r));
        }
        for r in desired.routes.difference(&observed.routes) {
            if !observed.foreign_routes.contains(&r.dst) {
                ops.push(Op::AddRoute(*r));
            }
        }
    }
    for addr in &subset.addresses {
        if !desired.bound.contains(addr) && observed.addresses.contains(addr) {
            ops.push(Op::DelAddress(*addr));
        }
    }
    ops
}

/// The operations for one wanted virtual service: create it, fix its settings and real servers.
fn plan_service(
    key: &ServiceKey,
    want: &DesiredService,
    observed: &Observed,
    drain_expired: &dyn Fn(&ServiceKey, &SocketAddr) -> bool,
    ops: &mut Vec<Op>,
) {
    match observed.services.get(key) {
        None => {
            ops.push(Op::AddService(want.service.clone()));
            for dest in &want.endpoints {
                ops.push(Op::AddDest {
                    service: *key,
                    dest: *dest,
                    weight: ENDPOINT_WEIGHT,
                });
            }
        }
        Some(have) => {
            if have.service != want.service {
                ops.push(Op::UpdateService(want.service.clone()));
            }
            for dest in &want.endpoints {
                match have.dests.get(dest) {
                    None => ops.push(Op::AddDest {
                        service: *key,
                        dest: *dest,
                        weight: ENDPOINT_WEIGHT,
                    }),
                    Some(d) if d.weight != ENDPOINT_WEIGHT || !d.masquerade => {
                        ops.push(Op::UpdateDest {
                            service: *key,
                            dest: *dest,
                            weight: ENDPOINT_WEIGHT,
                        })
                    }
                    Some(_) => {}
                }
            }
            plan_removed_dests(
                key,
                have,
                |d| want.endpoints.contains(d),
                drain_expired,
                ops,
            );
        }
    }
}

fn plan_removed_dests(
    key: &ServiceKey,
    have: &ObservedService,
    wanted: impl Fn(&SocketAddr) -> bool,
    drain_expired: &dyn Fn(&ServiceKey, &SocketAddr) -> bool,
    ops: &mut Vec<Op>,
) {
    for (dest, d) in &have.dests {
        if wanted(dest) {
            continue;
        }
        let graceful = drains(key.protocol);
        if !graceful || (d.weight == 0 && (d.connections() == 0 || drain_expired(key, dest))) {
            ops.push(Op::DelDest {
                service: *key,
                dest: *dest,
            });
        } else if d.weight != 0 {
            ops.push(Op::UpdateDest {
                service: *key,
                dest: *dest,
                weight: 0,
            });
        }
    }
}

/// Whether a removed real server of `protocol` drains at weight 0 before it is deleted: TCP only.
/// UDP and SCTP ones go at once (kube-proxy's rule): `expire_nodest_conn` ends their flows on
/// the next packet, and their conntrack entries are cleaned.
fn drains(protocol: nodenet::Protocol) -> bool {
    protocol == nodenet::Protocol::Tcp
}

/// The real servers that are draining in `observed`: ours, unwanted, at weight 0.
pub fn draining(desired: &Desired, observed: &Observed) -> Vec<(ServiceKey, SocketAddr)> {
    draining_of(desired, observed, desired.services.keys())
}

/// [`draining`] among the virtual services `keys`.
pub fn draining_of<'a>(
    desired: &Desired,
    observed: &Observed,
    keys: impl IntoIterator<Item = &'a ServiceKey>,
) -> Vec<(ServiceKey, SocketAddr)> {
    let mut out = Vec::new();
    for key in keys {
        let Some(want) = desired.services.get(key) else {
            continue;
        };
        if !drains(key.protocol) {
            continue;
        }
        if let Some(have) = observed.services.get(key) {
            for (dest, d) in &have.dests {
                if d.weight == 0 && !want.endpoints.contains(dest) {
                    out.push((*key, *dest));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SetKind;
    use crate::model::{DesiredService, ObservedDest};
    use nodenet::Protocol::{Tcp, Udp};
    use std::collections::{BTreeMap, BTreeSet};

    fn key(addr: &str, protocol: nodenet::Protocol, port: u16) -> ServiceKey {
        ServiceKey {
            addr: addr.parse().unwrap(),
            protocol,
            port,
        }
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn vs(k: ServiceKey, scheduler: &str, persistence: Option<u32>) -> VirtualService {
        VirtualService {
            key: k,
            scheduler: scheduler.into(),
            persistence,
            flags: 0,
        }
    }

    fn desired(services: &[(ServiceKey, &str, &[&str])]) -> Desired {
        let mut d = Desired::default();
        for (k, sched, eps) in services {
            let endpoints: BTreeSet<SocketAddr> = eps.iter().map(|e| sa(e)).collect();
            for e in &endpoints {
                d.sets
                    .entry(SetId::of(SetKind::LoopBack, e.ip()))
                    .or_default()
                    .insert(Member::loopback(*e, k.protocol));
            }
            d.bound.insert(k.addr);
            d.services.insert(
                *k,
                DesiredService {
                    service: vs(*k, sched, None),
                    endpoints,
                    origin: "t".into(),
                },
            );
        }
        d
    }

    /// The kernel exactly as `d` wants it (VIPs on the dummy, weights 1, set filled).
    fn in_sync(d: &Desired) -> Observed {
        let mut o = Observed {
            addresses: d.bound.clone(),
            sets: d.sets.clone(),
            ..Default::default()
        };
        for (k, s) in &d.services {
            let dests = s
                .endpoints
                .iter()
                .map(|e| (*e, ObservedDest::new(1)))
                .collect();
            o.services.insert(
                *k,
                ObservedService {
                    service: s.service.clone(),
                    dests,
                },
            );
        }
        o
    }

    fn never(_: &ServiceKey, _: &SocketAddr) -> bool {
        false
    }

    fn lb(ep: &str, p: nodenet::Protocol) -> Member {
        Member::loopback(sa(ep), p)
    }

    fn add_lb(ep: &str, p: nodenet::Protocol) -> Op {
        Op::AddMember {
            set: SetId::of(SetKind::LoopBack, sa(ep).ip()),
            member: lb(ep, p),
        }
    }

    fn del_lb(ep: &str, p: nodenet::Protocol) -> Op {
        Op::DelMember {
            set: SetId::of(SetKind::LoopBack, sa(ep).ip()),
            member: lb(ep, p),
        }
    }

    const VIP: &str = "10.100.100.100";

    fn stray_ip() -> IpAddr {
        "10.0.0.11".parse().unwrap()
    }

    #[test]
    fn scenario_from_empty_adds_address_loopback_service_and_dests_in_order() {
        let k = key(VIP, Tcp, 8080);
        let d = desired(&[(k, "rr", &["10.0.0.11:8080", "10.0.0.21:8080"])]);
        let ops = plan(&d, &Observed::default(), &never);
        assert_eq!(
            ops,
            vec![
                Op::AddAddress(VIP.parse().unwrap()),
                // Hairpin entries before the real servers that may take a pod's own connection.
                add_lb("10.0.0.11:8080", Tcp),
                add_lb("10.0.0.21:8080", Tcp),
                Op::AddService(vs(k, "rr", None)),
                Op::AddDest {
                    service: k,
                    dest: sa("10.0.0.11:8080"),
                    weight: 1
                },
                Op::AddDest {
                    service: k,
                    dest: sa("10.0.0.21:8080"),
                    weight: 1
                },
            ]
        );
    }

    #[test]
    fn pod_routes_never_go_over_another_route_and_a_new_gateway_deletes_the_old_first() {
        let route = |dst: &str, via: &str| PodRoute {
            dst: dst.parse().unwrap(),
            via: via.parse().unwrap(),
        };
        let mut d = Desired::default();
        d.routes.insert(route("10.244.1.0/24", "192.168.60.12"));
        d.routes.insert(route("10.244.2.0/24", "192.168.60.13"));
        let mut o = Observed::default();
        o.routes.insert(route("10.244.1.0/24", "192.168.60.99"));
        // An administrator's static route to the second node's pods.
        o.foreign_routes.insert("10.244.2.0/24".parse().unwrap());
        assert_eq!(
            plan(&d, &o, &never),
            vec![
                Op::DelRoute(route("10.244.1.0/24", "192.168.60.99")),
                Op::AddRoute(route("10.244.1.0/24", "192.168.60.12")),
            ]
        );
    }

    #[test]
    fn converged_state_needs_no_operations() {
        let d = desired(&[
            (
                key(VIP, Tcp, 8080),
                "rr",
                &["10.0.0.11:8080", "10.0.0.21:8080"],
            ),
            (key(VIP, Udp, 53), "wrr", &["10.0.0.11:53"]),
        ]);
        assert_eq!(plan(&d, &in_sync(&d), &never), vec![]);
    }

    #[test]
    fn adding_an_endpoint_touches_only_that_endpoint() {
        let k = key(VIP, Tcp, 8080);
        let before = desired(&[
            (k, "rr", &["10.0.0.11:8080"]),
            (key("10.100.0.2", Tcp, 80), "rr", &["10.0.0.5:80"]),
        ]);
        let after = desired(&[
            (k, "rr", &["10.0.0.11:8080", "10.0.0.21:8080"]),
            (key("10.100.0.2", Tcp, 80), "rr", &["10.0.0.5:80"]),
        ]);
        assert_eq!(
            plan(&after, &in_sync(&before), &never),
            vec![
                add_lb("10.0.0.21:8080", Tcp),
                Op::AddDest {
                    service: k,
                    dest: sa("10.0.0.21:8080"),
                    weight: 1
                },
            ]
        );
    }

    #[test]
    fn removing_a_tcp_endpoint_drains_it_at_weight_zero_first() {
        let k = key(VIP, Tcp, 8080);
        let before = desired(&[(k, "rr", &["10.0.0.11:8080", "10.0.0.21:8080"])]);
        let after = desired(&[(k, "rr", &["10.0.0.11:8080"])]);
        assert_eq!(
            plan(&after, &in_sync(&before), &never),
            vec![
                Op::UpdateDest {
                    service: k,
                    dest: sa("10.0.0.21:8080"),
                    weight: 0
                },
                del_lb("10.0.0.21:8080", Tcp),
            ]
        );
    }

    #[test]
    fn a_draining_tcp_endpoint_is_deleted_when_idle_or_expired() {
        let k = key(VIP, Tcp, 8080);
        let gone = sa("10.0.0.21:8080");
        let before = desired(&[(k, "rr", &["10.0.0.11:8080", "10.0.0.21:8080"])]);
        let after = desired(&[(k, "rr", &["10.0.0.11:8080"])]);
        let mut o = in_sync(&before);
        o.sets = after.sets.clone();
        let d = o
            .services
            .get_mut(&k)
            .unwrap()
            .dests
            .get_mut(&gone)
            .unwrap();
        d.weight = 0;
        d.active_conns = 2;
        d.inactive_conns = 1;
        assert_eq!(
            plan(&after, &o, &never),
            vec![],
            "connections left, not expired"
        );
        assert_eq!(
            plan(&after, &o, &|s, d| *s == k && *d == gone),
            vec![Op::DelDest {
                service: k,
                dest: gone
            }],
            "grace period over"
        );
        let d = o
            .services
            .get_mut(&k)
            .unwrap()
            .dests
            .get_mut(&gone)
            .unwrap();
        d.active_conns = 0;
        d.inactive_conns = 0;
        assert_eq!(
            plan(&after, &o, &never),
            vec![Op::DelDest {
                service: k,
                dest: gone
            }],
            "idle"
        );
        assert_eq!(draining(&after, &o), vec![(k, gone)]);
    }

    #[test]
    fn removing_a_udp_or_sctp_endpoint_deletes_it_at_once() {
        for p in [Udp, nodenet::Protocol::Sctp] {
            let k = key(VIP, p, 53);
            let before = desired(&[(k, "rr", &["10.0.0.11:53", "10.0.0.21:53"])]);
            let after = desired(&[(k, "rr", &["10.0.0.11:53"])]);
            let mut o = in_sync(&before);
            o.services
                .get_mut(&k)
                .unwrap()
                .dests
                .get_mut(&sa("10.0.0.21:53"))
                .unwrap()
                .active_conns = 5;
            assert_eq!(
                plan(&after, &o, &never),
                vec![
                    Op::DelDest {
                        service: k,
                        dest: sa("10.0.0.21:53")
                    },
                    del_lb("10.0.0.21:53", p),
                ],
                "{p:?}"
            );
            assert_eq!(draining(&after, &o), vec![], "{p:?}");
        }
    }

    #[test]
    fn scheduler_and_affinity_changes_update_the_service_in_place() {
        let k = key(VIP, Tcp, 8080);
        let before = desired(&[(k, "rr", &["10.0.0.11:8080"])]);
        let mut after = desired(&[(k, "wlc", &["10.0.0.11:8080"])]);
        assert_eq!(
            plan(&after, &in_sync(&before), &never),
            vec![Op::UpdateService(vs(k, "wlc", None))]
        );
        after.services.get_mut(&k).unwrap().service.persistence = Some(10800);
        assert_eq!(
            plan(&after, &in_sync(&before), &never),
            vec![Op::UpdateService(vs(k, "wlc", Some(10800)))]
        );
    }

    #[test]
    fn adoption_keeps_matching_state_and_repairs_weights_and_forwarding() {
        let k = key(VIP, Tcp, 8080);
        let d = desired(&[(
            k,
            "rr",
            &["10.0.0.11:8080", "10.0.0.21:8080", "10.0.0.31:8080"],
        )]);
        let mut o = in_sync(&d);
        let dests = &mut o.services.get_mut(&k).unwrap().dests;
        dests.get_mut(&sa("10.0.0.11:8080")).unwrap().active_conns = 7;
        dests.get_mut(&sa("10.0.0.21:8080")).unwrap().weight = 0;
        dests.get_mut(&sa("10.0.0.31:8080")).unwrap().masquerade = false;
        assert_eq!(
            plan(&d, &o, &never),
            vec![
                Op::UpdateDest {
                    service: k,
                    dest: sa("10.0.0.21:8080"),
                    weight: 1
                },
                Op::UpdateDest {
                    service: k,
                    dest: sa("10.0.0.31:8080"),
                    weight: 1
                },
            ]
        );
    }

    #[test]
    fn foreign_services_sets_entries_and_addresses_are_untouched() {
        let ours = key(VIP, Tcp, 8080);
        let d = desired(&[(ours, "rr", &["10.0.0.11:8080"])]);
        let mut o = in_sync(&d);
        let foreign = key("192.168.1.10", Tcp, 80);
        o.services.insert(
            foreign,
            ObservedService {
                service: vs(foreign, "wlc", None),
                dests: BTreeMap::from([(sa("192.168.1.20:80"), ObservedDest::new(3))]),
            },
        );
        assert_eq!(plan(&d, &o, &never), vec![]);
        // Even with no desired services at all, only our own state goes.
        assert_eq!(
            plan(&Desired::default(), &o, &never),
            vec![
                Op::DelService(ours),
                del_lb("10.0.0.11:8080", Tcp),
                Op::DelAddress(VIP.parse().unwrap()),
            ]
        );
    }

    #[test]
    fn a_stray_address_on_the_dummy_device_goes() {
        let d = desired(&[(key(VIP, Tcp, 8080), "rr", &["10.0.0.11:8080"])]);
        let mut o = in_sync(&d);
        let stray: IpAddr = "10.100.100.200".parse().unwrap();
        o.addresses.insert(stray);
        assert_eq!(plan(&d, &o, &never), vec![Op::DelAddress(stray)]);
    }

    #[test]
    fn a_service_at_a_claimed_vip_is_adopted_not_recreated() {
        let k = key(VIP, Tcp, 8080);
        let d = desired(&[(k, "rr", &["10.0.0.11:8080"])]);
        let mut o = in_sync(&d);
        o.addresses.clear();
        o.services.get_mut(&k).unwrap().service.scheduler = "wlc".into();
        assert_eq!(
            plan(&d, &o, &never),
            vec![
                Op::AddAddress(VIP.parse().unwrap()),
                Op::UpdateService(vs(k, "rr", None))
            ]
        );
    }

    #[test]
    fn removing_one_port_keeps_the_vip_for_the_other() {
        let tcp = key(VIP, Tcp, 8080);
        let udp = key(VIP, Udp, 8080);
        let before = desired(&[
            (tcp, "rr", &["10.0.0.11:8080"]),
            (udp, "rr", &["10.0.0.11:8080"]),
        ]);
        let after = desired(&[(tcp, "rr", &["10.0.0.11:8080"])]);
        assert_eq!(
            plan(&after, &in_sync(&before), &never),
            vec![Op::DelService(udp), del_lb("10.0.0.11:8080", Udp)]
        );
    }

    #[test]
    fn drift_is_repaired_and_stray_set_entries_removed() {
        let k = key(VIP, Tcp, 8080);
        let d = desired(&[(k, "rr", &["10.0.0.11:8080"])]);
        let mut o = in_sync(&d);
        o.services.clear();
        let stray = Member::IpPortIp {
            ip: "10.0.0.11".parse().unwrap(),
            protocol: Tcp,
            port: 8080,
            ip2: "10.0.0.99".parse().unwrap(),
        };
        let set = SetId::of(SetKind::LoopBack, stray_ip());
        o.sets.entry(set).or_default().insert(stray);
        assert_eq!(
            plan(&d, &o, &never),
            vec![
                Op::AddService(vs(k, "rr", None)),
                Op::AddDest {
                    service: k,
                    dest: sa("10.0.0.11:8080"),
                    weight: 1
                },
                Op::DelMember { set, member: stray },
            ]
        );
    }

    #[test]
    fn a_subset_plans_only_its_services_entries_and_vips() {
        let a = key("10.96.0.1", Tcp, 80);
        let b = key("10.96.0.2", Udp, 53);
        let gone = key("10.96.0.3", Tcp, 80);
        let before = desired(&[
            (a, "rr", &["10.0.0.1:80", "10.0.0.9:80"]),
            (b, "rr", &["10.0.0.2:53"]),
            (gone, "rr", &["10.0.0.9:80"]),
        ]);
        let mut observed = in_sync(&before);
        // Drift outside the subset is left for the full resync.
        observed.services.get_mut(&b).unwrap().dests.clear();
        let after = desired(&[
            (a, "rr", &["10.0.0.1:80", "10.0.0.4:80"]),
            (b, "rr", &["10.0.0.2:53"]),
        ]);
        let lbset = SetId::of(SetKind::LoopBack, a.addr);
        let subset = Subset {
            keys: BTreeSet::from([a, gone]),
            members: BTreeSet::from([
                (lbset, lb("10.0.0.4:80", Tcp)),
                (lbset, lb("10.0.0.9:80", Tcp)),
            ]),
            addresses: BTreeSet::from([a.addr, gone.addr]),
            routes: false,
        };
        let ops = plan_subset(&after, &observed, &subset, &never);
        assert_eq!(
            ops,
            vec![
                add_lb("10.0.0.4:80", Tcp),
                Op::AddDest {
                    service: a,
                    dest: sa("10.0.0.4:80"),
                    weight: 1
                },
                Op::UpdateDest {
                    service: a,
                    dest: sa("10.0.0.9:80"),
                    weight: 0
                },
                Op::DelService(gone),
                del_lb("10.0.0.9:80", Tcp),
                Op::DelAddress(gone.addr),
            ]
        );
        let full = plan(&after, &observed, &never);
        assert!(full
            .iter()
            .all(|op| ops.contains(op) || op.scope() == Scope::Service(b)));
    }
}
