//! The desired state derived from the store, kept up to date per changed Service: one change
//! re-derives the Services it touches ([`crate::desired::service`]) and says which virtual
//! services, set members and addresses to re-plan, so it costs the same at any number of
//! Services. Members and addresses that several virtual services want are counted.

use crate::desired::{self, NodeView, ServicePlan, TrafficPolicy};
use crate::model::{Desired, Member, PodRoute, ServiceKey, SetId};
use crate::objects::NamespacedName;
use crate::plan::Subset;
use crate::store::Store;
use ipnetwork::IpNetwork;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

/// What one Service contributes to the desired state, as last derived.
#[derive(Debug, Clone, Default)]
struct Contribution {
    keys: Vec<ServiceKey>,
    bound: Vec<IpAddr>,
    members: Vec<(SetId, Member)>,
}

/// The desired state and the bookkeeping that lets it follow per-Service changes.
pub struct Derived {
    /// Scheduler of Services without the scheduler annotation.
    scheduler: String,
    node: NodeView,
    desired: Desired,
    contributions: HashMap<NamespacedName, Contribution>,
    bound_refs: HashMap<IpAddr, usize>,
    member_refs: HashMap<(SetId, Member), usize>,
    /// Health check node ports of `Local` load balancers: port -> (Service, local endpoints).
    health: BTreeMap<u16, (NamespacedName, usize)>,
    /// Services with a `Local` policy and no local endpoint, by policy and family.
    no_local: BTreeMap<NamespacedName, BTreeSet<(TrafficPolicy, bool)>>,
    endpoints: usize,
    /// No VIP:port claimed twice: per-Service updates equal a full derive.
    exact: bool,
    /// VIP:port clashes found by the last full derive.
    conflicts: usize,
}

impl Derived {
    pub fn new(scheduler: impl Into<String>, excluded: Vec<IpNetwork>) -> Derived {
        Derived {
            scheduler: scheduler.into(),
            node: NodeView::default(),
            desired: Desired {
                excluded,
                ..Desired::default()
            },
            contributions: HashMap::new(),
            bound_refs: HashMap::new(),
            member_refs: HashMap::new(),
            health: BTreeMap::new(),
            no_local: BTreeMap::new(),
            endpoints: 0,
            exact: false,
            conflicts: 0,
        }
    }

    /// The desired state as last derived.
    pub fn desired(&self) -> &Desired {
        &self.desired
    }

    /// Number of real servers over all desired services.
    pub fn endpoint_count(&self) -> usize {
        self.endpoints
    }

    /// VIP:port clashes found by the last full derive (each skips one virtual service).
    pub fn conflicts(&self) -> usize {
        self.conflicts
    }

    /// Health check node ports wanted: port -> (Service, local ready endpoints).
    pub fn health(&self) -> &BTreeMap<u16, (NamespacedName, usize)> {
        &self.health
    }

    /// How many Services have a `Local` policy and no local endpoint, per (policy, IPv6).
    pub fn no_local_endpoints(&self) -> BTreeMap<(TrafficPolicy, bool), usize> {
        let mut out = BTreeMap::new();
        for key in self.no_local.values().flatten() {
            *out.entry(*key).or_default() += 1;
        }
        out
    }

    pub fn node(&self) -> &NodeView {
        &self.node
    }

    /// Takes a new view of the node; true when it differs (everything must be re-derived then:
    /// node ports, which addresses go on the dummy, zones all depend on it).
    pub fn set_node(&mut self, node: NodeView) -> bool {
        if node == self.node {
            return false;
        }
        self.node = node;
        true
    }

    /// Sets the pod routes wanted; true when they changed.
    pub fn set_routes(&mut self, routes: BTreeSet<PodRoute>) -> bool {
        if routes == self.desired.routes {
            return false;
        }
        self.desired.routes = routes;
        true
    }

    /// Derives everything from the store (a VIP:port claimed twice is logged; the first Service
    /// in namespace/name order keeps it).
    pub fn derive_all(&mut self, store: &Store) {
        let routes = std::mem::take(&mut self.desired.routes);
        let excluded = std::mem::take(&mut self.desired.excluded);
        self.desired = Desired {
            routes,
            excluded,
            ..Desired::default()
        };
        self.contributions.clear();
        self.bound_refs.clear();
        self.member_refs.clear();
        self.health.clear();
        self.no_local.clear();
        self.endpoints = 0;
        let names: Vec<NamespacedName> = store.service_names().cloned().collect();
        let mut conflicts = Vec::new();
        for name in &names {
            if let Some(plan) = desired::service(name, store, &self.node, &self.scheduler) {
                conflicts.extend(self.add(name, plan));
            }
        }
        for c in &conflicts {
            log::error!("{c}");
        }
        self.conflicts = conflicts.len();
        self.exact = conflicts.is_empty();
    }

    /// Re-derives the Services `names`. Returns what it touched, or `None` when it derived
    /// everything instead (a VIP:port clash to resolve).
    pub fn derive(&mut self, store: &Store, names: &BTreeSet<NamespacedName>) -> Option<Subset> {
        if !self.exact {
            self.derive_all(store);
            return None;
        }
        let mut subset = Subset::default();
        let plans: Vec<(NamespacedName, Option<ServicePlan>)> = names
            .iter()
            .map(|n| {
                (
                    n.clone(),
                    desired::service(n, store, &self.node, &self.scheduler),
                )
            })
            .collect();
        for name in names {
            self.remove(name, &mut subset);
        }
        for (name, plan) in plans {
            let Some(plan) = plan else { continue };
            if plan
                .virtual_services
                .iter()
                .any(|v| self.desired.services.contains_key(&v.service.service.key))
            {
                self.derive_all(store);
                return None;
            }
            let before = subset.keys.len();
            let clashes = self.add(&name, plan);
            if !clashes.is_empty() {
                self.derive_all(store);
                return None;
            }
            debug_assert!(subset.keys.len() >= before);
            let c = &self.contributions[&name];
            subset.keys.extend(c.keys.iter().copied());
            subset.addresses.extend(c.bound.iter().copied());
            subset.members.extend(c.members.iter().copied());
        }
        Some(subset)
    }

    /// Adds one Service's plan; returns the clashes it found (virtual services another Service
    /// already claims: skipped, with their members).
    fn add(&mut self, name: &NamespacedName, plan: ServicePlan) -> Vec<String> {
        let mut c = Contribution::default();
        let mut clashes = Vec::new();
        for vs in plan.virtual_services {
            let key = vs.service.service.key;
            if let Some(other) = self.desired.services.get(&key) {
                clashes.push(format!(
                    "{}: {key} is already used by {}; skipped",
                    vs.service.origin, other.origin
                ));
                continue;
            }
            self.endpoints += vs.service.endpoints.len();
            self.desired.services.insert(key, vs.service);
            c.keys.push(key);
            if let Some(ip) = vs.bound {
                c.bound.push(ip);
            }
            c.members.extend(vs.members);
        }
        c.members.extend(plan.members);
        for ip in &c.bound {
            *self.bound_refs.entry(*ip).or_default() += 1;
            self.desired.bound.insert(*ip);
        }
        for m in &c.members {
            *self.member_refs.entry(*m).or_default() += 1;
            self.desired.sets.entry(m.0).or_default().insert(m.1);
        }
        if let Some((port, count)) = plan.health {
            self.health.insert(port, (name.clone(), count));
        }
        if !plan.no_local.is_empty() {
            self.no_local.insert(name.clone(), plan.no_local);
        }
        self.contributions.insert(name.clone(), c);
        clashes
    }

    /// Takes one Service's contribution out, booking what it touched in `subset`.
    fn remove(&mut self, name: &NamespacedName, subset: &mut Subset) {
        let Some(c) = self.contributions.remove(name) else {
            return;
        };
        for key in &c.keys {
            subset.keys.insert(*key);
            if let Some(old) = self.desired.services.remove(key) {
                self.endpoints -= old.endpoints.len();
            }
        }
        for ip in &c.bound {
            subset.addresses.insert(*ip);
            if release(&mut self.bound_refs, ip) {
                self.desired.bound.remove(ip);
            }
        }
        for m in &c.members {
            subset.members.insert(*m);
            if release(&mut self.member_refs, m) {
                if let Some(set) = self.desired.sets.get_mut(&m.0) {
                    set.remove(&m.1);
                    if set.is_empty() {
                        self.desired.sets.remove(&m.0);
                    }
                }
            }
        }
        self.health.retain(|_, (n, _)| n != name);
        self.no_local.remove(name);
    }
}

/// Drops one reference; true when it was the last.
fn release<K: std::hash::Hash + Eq>(refs: &mut HashMap<K, usize>, k: &K) -> bool {
    match refs.get_mut(k) {
        Some(n) if *n > 1 => {
            *n -= 1;
            false
        }
        Some(_) => {
            refs.remove(k);
            true
        }
        None => true,
    }
}

/// The desired state as `ipvsadm -Ln` would list it, with the Service each entry comes from,
/// then the size of each set that has members.
pub fn listing(desired: &Desired) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for (key, s) in &desired.services {
        let proto = key.protocol.as_str().to_uppercase();
        let _ = write!(
            out,
            "{proto:<5}{} {}",
            std::net::SocketAddr::new(key.addr, key.port),
            s.service.scheduler
        );
        if let Some(t) = s.service.persistence {
            let _ = write!(out, " persistent {t}");
        }
        let _ = writeln!(out, "  # {}", s.origin);
        for ep in &s.endpoints {
            let _ = writeln!(
                out,
                "  -> {ep:<24} Masq    {}",
                crate::model::ENDPOINT_WEIGHT
            );
        }
    }
    let loopback = SetId {
        kind: crate::model::SetKind::LoopBack,
        v6: false,
    };
    let _ = writeln!(
        out,
        "loop-back set {}: {} entries",
        loopback.name(),
        desired.sets.get(&loopback).map_or(0, |m| m.len())
    );
    for (set, members) in &desired.sets {
        if *set != loopback && !members.is_empty() {
            let _ = writeln!(out, "set {set}: {} entries", members.len());
        }
    }
    for r in &desired.routes {
        let _ = writeln!(out, "route {r}");
    }
    out
}
