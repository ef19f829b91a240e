//! The store: every object the sources hold, keyed by [`ObjectRef`], one effective version per
//! reference (the highest-precedence source that holds it), the indexes derivation needs, and
//! which sources have listed everything yet. Sources change it only through [`Delta`]s.

use crate::objects::{EndpointSlice, Kind, NamespacedName, Node, Object, ObjectRef, Pod, Service};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::SystemTime;

/// Where an object comes from. The order is the precedence: when two sources hold the same
/// reference, the earlier one's version is the one in effect (the cluster's API over local
/// manifest files; records hold pods only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SourceId {
    /// The Kubernetes API (Services, EndpointSlices, Nodes).
    Api,
    /// Manifest files (Services, EndpointSlices).
    Files,
    /// cni-bridge attachment records (Pods).
    Records,
}

impl std::fmt::Display for SourceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SourceId::Api => "API",
            SourceId::Files => "manifest files",
            SourceId::Records => "attachment records",
        })
    }
}

/// One change a source reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delta {
    /// This object is new or changed.
    Apply(Object),
    /// This object is gone.
    Delete(ObjectRef),
    /// Everything the source holds of `kind` (its initial list, or a relist): what it held before
    /// and is not listed now is gone, except `kept` — objects whose current version is invalid,
    /// whose last good version stays.
    Replace {
        kind: Kind,
        objects: Vec<Object>,
        kept: Vec<ObjectRef>,
    },
}

/// What a batch of deltas changed, in the terms derivation needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Services to re-derive.
    pub services: BTreeSet<NamespacedName>,
    /// Everything must be re-derived (this node's Node object changed).
    pub all: bool,
    /// Some Node changed (pod routes follow them).
    pub nodes: bool,
    /// Changed Service objects (kube-proxy's service changes).
    pub service_changes: u64,
    /// Changed EndpointSlice objects (kube-proxy's endpoint changes).
    pub endpoint_changes: u64,
    /// The change times of the EndpointSlice versions that arrived, for the programming latency.
    pub trigger_times: Vec<SystemTime>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && !self.all && !self.nodes
    }

    pub fn merge(&mut self, other: Changes) {
        self.services.extend(other.services);
        self.all |= other.all;
        self.nodes |= other.nodes;
        self.service_changes += other.service_changes;
        self.endpoint_changes += other.endpoint_changes;
        self.trigger_times.extend(other.trigger_times);
    }
}

/// A `(namespace, label key, label value)`.
type Label = (String, String, String);

/// The objects of every source, and the effective view over them.
pub struct Store {
    node_name: String,
    held: BTreeMap<SourceId, HashMap<ObjectRef, Object>>,
    /// The (source, kind) pairs whose initial list must arrive before anything is programmed.
    expected: BTreeSet<(SourceId, Kind)>,
    synced: BTreeSet<(SourceId, Kind)>,
    /// Services in effect.
    services: BTreeSet<NamespacedName>,
    /// The EndpointSlices in effect of each Service.
    slices_of: HashMap<NamespacedName, BTreeSet<ObjectRef>>,
    /// Services with a selector, filed under one label of it: a pod can only match the Services
    /// filed under one of its own labels.
    selectors: HashMap<Label, BTreeSet<NamespacedName>>,
    /// Pods in effect, filed under each of their labels.
    pods_by_label: HashMap<Label, BTreeSet<ObjectRef>>,
}

impl Store {
    /// An empty store for node `node_name` (endpoint locality, this node's Node object).
    pub fn new(node_name: impl Into<String>) -> Store {
        Store {
            node_name: node_name.into(),
            held: BTreeMap::new(),
            expected: BTreeSet::new(),
            synced: BTreeSet::new(),
            services: BTreeSet::new(),
            slices_of: HashMap::new(),
            selectors: HashMap::new(),
            pods_by_label: HashMap::new(),
        }
    }

    /// Nothing is programmed until `source` has listed every object of `kind` once.
    pub fn expect(&mut self, source: SourceId, kind: Kind) {
        self.expected.insert((source, kind));
    }

    /// Whether every expected initial list has arrived.
    pub fn synced(&self) -> bool {
        self.expected.is_subset(&self.synced)
    }

    /// The (source, kind) lists still awaited, for log lines.
    pub fn waiting_for(&self) -> Vec<String> {
        self.expected
            .difference(&self.synced)
            .map(|(s, k)| format!("{k}s from the {s}"))
            .collect()
    }

    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// The version in effect of `r`, and its source.
    pub fn get(&self, r: &ObjectRef) -> Option<(SourceId, &Object)> {
        self.held
            .iter()
            .find_map(|(s, objects)| objects.get(r).map(|o| (*s, o)))
    }

    /// The Service `name` in effect, and its source.
    pub fn service(&self, name: &NamespacedName) -> Option<(SourceId, &Service)> {
        let r = ObjectRef {
            kind: Kind::Service,
            key: name.clone(),
        };
        match self.get(&r)? {
            (s, Object::Service(svc)) => Some((s, svc)),
            _ => None,
        }
    }

    /// Every Service in effect, in namespace/name order.
    pub fn service_names(&self) -> impl Iterator<Item = &NamespacedName> + '_ {
        self.services.iter()
    }

    /// The EndpointSlices in effect of Service `name`.
    pub fn slices(&self, name: &NamespacedName) -> Vec<&EndpointSlice> {
        self.slices_of
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|r| match self.get(r) {
                Some((_, Object::EndpointSlice(e))) => Some(e),
                _ => None,
            })
            .collect()
    }

    /// The pods in effect whose labels match `selector` in `namespace`.
    pub fn pods_matching<'a>(
        &'a self,
        namespace: &str,
        selector: &BTreeMap<String, String>,
    ) -> Vec<&'a Pod> {
        let Some((k, v)) = selector.iter().next() else {
            return Vec::new();
        };
        let label = (namespace.to_string(), k.clone(), v.clone());
        self.pods_by_label
            .get(&label)
            .into_iter()
            .flatten()
            .filter_map(|r| match self.get(r) {
                Some((_, Object::Pod(p))) if p.matches(namespace, selector) => Some(p),
                _ => None,
            })
            .collect()
    }

    /// This node's Node object, once listed.
    pub fn node(&self) -> Option<&Node> {
        match self.get(&ObjectRef::new(Kind::Node, "", &self.node_name))? {
            (_, Object::Node(n)) => Some(n),
            _ => None,
        }
    }

    /// Every Node in effect, by name.
    pub fn nodes(&self) -> Vec<&Node> {
        let refs: BTreeSet<&ObjectRef> = self
            .held
            .values()
            .flat_map(|m| m.keys())
            .filter(|r| r.kind == Kind::Node)
            .collect();
        refs.into_iter()
            .filter_map(|r| match self.get(r) {
                Some((_, Object::Node(n))) => Some(n),
                _ => None,
            })
            .collect()
    }

    /// Applies one delta from `source`; returns what changed in effect.
    pub fn apply(&mut self, source: SourceId, delta: Delta) -> Changes {
        let mut changes = Changes::default();
        match delta {
            Delta::Apply(o) => {
                let r = o.reference();
                self.put(source, r, Some(o), &mut changes);
            }
            Delta::Delete(r) => self.put(source, r, None, &mut changes),
            Delta::Replace {
                kind,
                objects,
                kept,
            } => {
                let kept: BTreeSet<ObjectRef> = kept.into_iter().collect();
                let listed: BTreeSet<ObjectRef> = objects.iter().map(Object::reference).collect();
                let gone: Vec<ObjectRef> = self
                    .held
                    .get(&source)
                    .into_iter()
                    .flat_map(|m| m.keys())
                    .filter(|r| r.kind == kind && !listed.contains(*r) && !kept.contains(*r))
                    .cloned()
                    .collect();
                for r in gone {
                    self.put(source, r, None, &mut changes);
                }
                for o in objects {
                    let r = o.reference();
                    self.put(source, r, Some(o), &mut changes);
                }
                self.synced.insert((source, kind));
            }
        }
        changes
    }

    /// Sets (or removes) what `source` holds for `r`, and books the change in effect.
    fn put(&mut self, source: SourceId, r: ObjectRef, o: Option<Object>, changes: &mut Changes) {
        let before = self.get(&r).map(|(_, o)| o.clone());
        let held = self.held.entry(source).or_default();
        let same = match &o {
            Some(new) => held.get(&r) == Some(new),
            None => !held.contains_key(&r),
        };
        if same {
            return;
        }
        match o {
            Some(new) => {
                held.insert(r.clone(), new);
            }
            None => {
                held.remove(&r);
            }
        }
        let after = self.get(&r).map(|(_, o)| o.clone());
        if before == after {
            return;
        }
        self.unindex(&r, before.as_ref(), changes);
        self.index(&r, after.as_ref(), changes);
    }

    fn unindex(&mut self, r: &ObjectRef, o: Option<&Object>, changes: &mut Changes) {
        match o {
            None => {}
            Some(Object::Service(s)) => {
                changes.service_changes += 1;
                self.services.remove(&r.key);
                changes.services.insert(r.key.clone());
                if let Some(label) = selector_label(s) {
                    remove_from(&mut self.selectors, &label, &r.key);
                }
            }
            Some(Object::EndpointSlice(e)) => {
                changes.endpoint_changes += 1;
                let svc = e.service();
                remove_from(&mut self.slices_of, &svc, r);
                changes.services.insert(svc);
            }
            Some(Object::Pod(p)) => {
                changes.services.extend(self.selecting(p));
                for label in pod_labels(p) {
                    remove_from(&mut self.pods_by_label, &label, r);
                }
            }
            Some(Object::Node(n)) => self.node_changed(n, changes),
        }
    }

    fn index(&mut self, r: &ObjectRef, o: Option<&Object>, changes: &mut Changes) {
        match o {
            None => {}
            Some(Object::Service(s)) => {
                changes.service_changes += 1;
                self.services.insert(r.key.clone());
                changes.services.insert(r.key.clone());
                if let Some(label) = selector_label(s) {
                    self.selectors
                        .entry(label)
                        .or_default()
                        .insert(r.key.clone());
                }
            }
            Some(Object::EndpointSlice(e)) => {
                changes.endpoint_changes += 1;
                let svc = e.service();
                self.slices_of
                    .entry(svc.clone())
                    .or_default()
                    .insert(r.clone());
                changes.services.insert(svc);
                changes.trigger_times.extend(e.trigger_time);
            }
            Some(Object::Pod(p)) => {
                for label in pod_labels(p) {
                    self.pods_by_label
                        .entry(label)
                        .or_default()
                        .insert(r.clone());
                }
                changes.services.extend(self.selecting(p));
            }
            Some(Object::Node(n)) => self.node_changed(n, changes),
        }
    }

    fn node_changed(&self, n: &Node, changes: &mut Changes) {
        changes.nodes = true;
        if n.name == self.node_name {
            changes.all = true;
        }
    }

    /// The Services in effect whose selector matches pod `p`.
    fn selecting(&self, p: &Pod) -> BTreeSet<NamespacedName> {
        let mut out = BTreeSet::new();
        for label in pod_labels(p) {
            for name in self.selectors.get(&label).into_iter().flatten() {
                let selects = self
                    .service(name)
                    .and_then(|(_, s)| s.selector.as_ref())
                    .is_some_and(|sel| p.matches(&name.namespace, sel));
                if selects {
                    out.insert(name.clone());
                }
            }
        }
        out
    }
}

fn selector_label(s: &Service) -> Option<Label> {
    let (k, v) = s.selector.as_ref()?.iter().next()?;
    Some((s.namespace.clone(), k.clone(), v.clone()))
}

fn pod_labels(p: &Pod) -> impl Iterator<Item = Label> + '_ {
    p.labels
        .iter()
        .map(|(k, v)| (p.namespace.clone(), k.clone(), v.clone()))
}

fn remove_from<K: std::hash::Hash + Eq, V: Ord>(
    index: &mut HashMap<K, BTreeSet<V>>,
    key: &K,
    value: &V,
) {
    if let Some(set) = index.get_mut(key) {
        set.remove(value);
        if set.is_empty() {
            index.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::{Endpoint, ServicePort, ServiceType, TargetPort};
    use nodenet::Protocol;

    pub(crate) fn service(name: &str, vip: &str, selector: Option<(&str, &str)>) -> Service {
        Service {
            namespace: "default".into(),
            name: name.into(),
            service_type: ServiceType::ClusterIP,
            cluster_ips: vec![vip.parse().unwrap()],
            external_ips: vec![],
            load_balancer_ips: vec![],
            load_balancer_source_ranges: vec![],
            selector: selector.map(|(k, v)| BTreeMap::from([(k.to_string(), v.to_string())])),
            ports: vec![ServicePort {
                name: String::new(),
                protocol: Protocol::Tcp,
                port: 80,
                target_port: TargetPort::Number(8080),
                node_port: None,
            }],
            affinity_timeout: None,
            scheduler: None,
            external_policy_local: false,
            internal_policy_local: false,
            health_check_node_port: None,
        }
    }

    fn slice(name: &str, service: &str, ip: &str) -> EndpointSlice {
        EndpointSlice {
            namespace: "default".into(),
            name: name.into(),
            service_name: service.into(),
            ipv6: false,
            ports: vec![],
            endpoints: vec![Endpoint {
                addresses: vec![ip.parse().unwrap()],
                ready: true,
                serving: true,
                terminating: false,
                node_name: None,
                zone: None,
                zone_hints: vec![],
                node_hints: vec![],
            }],
            trigger_time: None,
        }
    }

    fn name(n: &str) -> NamespacedName {
        NamespacedName::new("default", n)
    }

    #[test]
    fn the_api_wins_over_files_and_its_deletion_uncovers_the_file_version() {
        let mut st = Store::new("n1");
        let file = service("a", "10.0.0.1", None);
        let api = service("a", "10.0.0.2", None);
        let c = st.apply(SourceId::Files, Delta::Apply(Object::Service(file.clone())));
        assert_eq!(c.services, BTreeSet::from([name("a")]));
        let c = st.apply(SourceId::Api, Delta::Apply(Object::Service(api.clone())));
        assert_eq!(c.service_changes, 2, "one version out, one in");
        assert_eq!(st.service(&name("a")), Some((SourceId::Api, &api)));
        // A change to the file version is hidden while the API's is in effect.
        let mut file2 = file.clone();
        file2.cluster_ips = vec!["10.0.0.3".parse().unwrap()];
        let c = st.apply(
            SourceId::Files,
            Delta::Apply(Object::Service(file2.clone())),
        );
        assert!(c.is_empty());
        let c = st.apply(
            SourceId::Api,
            Delta::Delete(ObjectRef::new(Kind::Service, "default", "a")),
        );
        assert_eq!(c.services, BTreeSet::from([name("a")]));
        assert_eq!(st.service(&name("a")), Some((SourceId::Files, &file2)));
    }

    #[test]
    fn replace_removes_what_is_not_listed_but_keeps_invalid_ones() {
        let mut st = Store::new("n1");
        st.expect(SourceId::Api, Kind::Service);
        st.expect(SourceId::Api, Kind::EndpointSlice);
        assert!(!st.synced());
        for n in ["a", "b", "c"] {
            st.apply(
                SourceId::Api,
                Delta::Apply(Object::Service(service(n, "10.0.0.1", None))),
            );
        }
        let c = st.apply(
            SourceId::Api,
            Delta::Replace {
                kind: Kind::Service,
                objects: vec![Object::Service(service("a", "10.0.0.1", None))],
                kept: vec![ObjectRef::new(Kind::Service, "default", "b")],
            },
        );
        assert_eq!(
            c.services,
            BTreeSet::from([name("c")]),
            "a unchanged, b kept"
        );
        assert_eq!(
            st.service_names().cloned().collect::<Vec<_>>(),
            vec![name("a"), name("b")]
        );
        assert!(!st.synced(), "EndpointSlices not listed yet");
        assert_eq!(st.waiting_for(), vec!["EndpointSlices from the API"]);
        st.apply(
            SourceId::Api,
            Delta::Replace {
                kind: Kind::EndpointSlice,
                objects: vec![],
                kept: vec![],
            },
        );
        assert!(st.synced());
    }

    #[test]
    fn slices_and_pods_map_to_the_services_they_feed() {
        let mut st = Store::new("n1");
        st.apply(
            SourceId::Files,
            Delta::Apply(Object::Service(service(
                "a",
                "10.0.0.1",
                Some(("app", "a")),
            ))),
        );
        let c = st.apply(
            SourceId::Files,
            Delta::Apply(Object::EndpointSlice(slice("a-1", "a", "10.1.0.1"))),
        );
        assert_eq!(c.services, BTreeSet::from([name("a")]));
        assert_eq!(c.endpoint_changes, 1);
        // The slice moves to another Service: both are touched.
        let c = st.apply(
            SourceId::Files,
            Delta::Apply(Object::EndpointSlice(slice("a-1", "b", "10.1.0.1"))),
        );
        assert_eq!(c.services, BTreeSet::from([name("a"), name("b")]));
        assert!(st.slices(&name("a")).is_empty());
        assert_eq!(st.slices(&name("b")).len(), 1);

        let pod = |labels: &[(&str, &str)]| Pod {
            namespace: "default".into(),
            name: "home/c1.eth0".into(),
            addresses: vec!["10.0.0.11".parse().unwrap()],
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let c = st.apply(
            SourceId::Records,
            Delta::Apply(Object::Pod(pod(&[("app", "a")]))),
        );
        assert_eq!(c.services, BTreeSet::from([name("a")]));
        let sel = BTreeMap::from([("app".to_string(), "a".to_string())]);
        assert_eq!(st.pods_matching("default", &sel).len(), 1);
        let c = st.apply(
            SourceId::Records,
            Delta::Apply(Object::Pod(pod(&[("app", "z")]))),
        );
        assert_eq!(
            c.services,
            BTreeSet::from([name("a")]),
            "it no longer matches a"
        );
        assert!(st.pods_matching("default", &sel).is_empty());
    }

    #[test]
    fn this_nodes_object_changes_everything_other_nodes_only_routes() {
        let mut st = Store::new("n1");
        let node = |name: &str, zone: &str| Node {
            name: name.into(),
            zone: Some(zone.into()),
            internal_ips: vec![],
            pod_cidrs: vec![],
            eligible: true,
        };
        let c = st.apply(SourceId::Api, Delta::Apply(Object::Node(node("n2", "a"))));
        assert!(c.nodes && !c.all);
        let c = st.apply(SourceId::Api, Delta::Apply(Object::Node(node("n1", "a"))));
        assert!(c.nodes && c.all);
        assert_eq!(st.node().unwrap().zone.as_deref(), Some("a"));
        assert_eq!(st.nodes().len(), 2);
    }
}
