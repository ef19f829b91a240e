//! The desired state derived from the store, kept up to date per changed Service: one change
//! re-derives the Services it touches and says which virtual services and loop-back entries to
//! re-plan, so it costs the same at any number of Services.

use crate::desired;
use crate::model::{Desired, LoopbackEntry, ServiceKey};
use crate::objects::NamespacedName;
use crate::plan::Subset;
use crate::store::Store;
use std::collections::{BTreeSet, HashMap};

/// The desired state and the indexes that let it follow per-Service changes.
pub struct Derived {
    /// Scheduler of Services without the scheduler annotation.
    scheduler: String,
    desired: Desired,
    /// The virtual services each Service contributes to `desired`.
    keys_of: HashMap<NamespacedName, Vec<ServiceKey>>,
    /// How many desired virtual services want each loop-back entry.
    loop_refs: HashMap<LoopbackEntry, usize>,
    endpoints: usize,
    /// No VIP:port claimed twice: per-Service updates equal a full derive.
    exact: bool,
}

impl Derived {
    pub fn new(scheduler: impl Into<String>) -> Derived {
        Derived {
            scheduler: scheduler.into(),
            desired: Desired::default(),
            keys_of: HashMap::new(),
            loop_refs: HashMap::new(),
            endpoints: 0,
            exact: false,
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

    /// Derives everything from the store (a VIP:port claimed twice is logged; the first Service
    /// in namespace/name order keeps it).
    pub fn derive_all(&mut self, store: &Store) {
        let names: Vec<&NamespacedName> = store.service_names().collect();
        let (desired, conflicts) = desired::build(names.iter().copied(), store, &self.scheduler);
        for c in &conflicts {
            log::error!("{c}");
        }
        self.exact = conflicts.is_empty();
        self.keys_of.clear();
        for name in names {
            if let Some((_, svc)) = store.service(name) {
                self.keys_of.insert(name.clone(), service_keys(svc));
            }
        }
        self.loop_refs.clear();
        for (key, s) in &desired.services {
            for ep in &s.endpoints {
                *self
                    .loop_refs
                    .entry(LoopbackEntry::for_endpoint(*ep, key.protocol))
                    .or_default() += 1;
            }
        }
        self.endpoints = desired.endpoint_count();
        self.desired = desired;
    }

    /// Re-derives the Services `names`. Returns what it touched, or `None` when it derived
    /// everything instead (a VIP:port clash to resolve).
    pub fn derive(&mut self, store: &Store, names: &BTreeSet<NamespacedName>) -> Option<Subset> {
        if !self.exact {
            self.derive_all(store);
            return None;
        }
        let (part, conflicts) = desired::build(names, store, &self.scheduler);
        if !conflicts.is_empty() {
            self.derive_all(store);
            return None;
        }
        let mut subset = Subset::default();
        for name in names {
            for key in self.keys_of.remove(name).unwrap_or_default() {
                subset.keys.insert(key);
                let Some(old) = self.desired.services.remove(&key) else {
                    continue;
                };
                self.endpoints -= old.endpoints.len();
                for ep in &old.endpoints {
                    let entry = LoopbackEntry::for_endpoint(*ep, key.protocol);
                    subset.loopback.insert(entry);
                    let refs = self.loop_refs.entry(entry).or_default();
                    *refs = refs.saturating_sub(1);
                    if *refs == 0 {
                        self.loop_refs.remove(&entry);
                        self.desired.loopback.remove(&entry);
                    }
                }
            }
        }
        if part
            .services
            .keys()
            .any(|k| self.desired.services.contains_key(k))
        {
            self.derive_all(store);
            return None;
        }
        for name in names {
            if let Some((_, svc)) = store.service(name) {
                self.keys_of.insert(name.clone(), service_keys(svc));
            }
        }
        for (key, s) in part.services {
            subset.keys.insert(key);
            self.endpoints += s.endpoints.len();
            for ep in &s.endpoints {
                let entry = LoopbackEntry::for_endpoint(*ep, key.protocol);
                subset.loopback.insert(entry);
                *self.loop_refs.entry(entry).or_default() += 1;
                self.desired.loopback.insert(entry);
            }
            self.desired.services.insert(key, s);
        }
        Some(subset)
    }
}

/// The virtual services a Service asks for (as [`desired::build`] derives them).
fn service_keys(s: &crate::objects::Service) -> Vec<ServiceKey> {
    desired::virtual_services(s)
        .into_iter()
        .map(|(_, key)| key)
        .collect()
}

/// The desired state as `ipvsadm -Ln` would list it, with the Service each entry comes from.
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
    for v6 in [false, true] {
        let n = desired
            .loopback
            .iter()
            .filter(|e| e.ip.is_ipv6() == v6)
            .count();
        if n > 0 || !v6 {
            let _ = writeln!(
                out,
                "loop-back set {}: {n} entries",
                crate::model::loopback_set(v6)
            );
        }
    }
    out
}
