//! The objects svc-proxy programs from, validated and reduced to what it uses: Services,
//! EndpointSlices and Nodes (from manifest files or the Kubernetes API) and the pods cni-bridge
//! attached (from its records). Every source produces them through [`crate::validate`], so an
//! object is judged the same whichever way it arrives.

use ipnetwork::IpNetwork;
use nodenet::Protocol;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::time::SystemTime;

/// The kinds of object the store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Service,
    EndpointSlice,
    Node,
    /// A pod cni-bridge attached on this node (from its attachment record).
    Pod,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Node => "Node",
            Kind::Pod => "Pod",
        })
    }
}

/// A namespace and a name: how Services are named, and what an EndpointSlice points at.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NamespacedName {
    pub namespace: String,
    pub name: String,
}

impl NamespacedName {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> NamespacedName {
        NamespacedName {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for NamespacedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What identifies an object in the store: its kind, namespace (empty for Nodes) and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub kind: Kind,
    pub key: NamespacedName,
}

impl ObjectRef {
    pub fn new(kind: Kind, namespace: impl Into<String>, name: impl Into<String>) -> ObjectRef {
        ObjectRef {
            kind,
            key: NamespacedName::new(namespace, name),
        }
    }
}

impl fmt::Display for ObjectRef {
    /// `Service default/app`, `Node node-1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.key.name)
        } else {
            write!(f, "{} {}", self.kind, self.key)
        }
    }
}

/// One validated object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    Service(Service),
    EndpointSlice(EndpointSlice),
    Node(Node),
    Pod(Pod),
}

impl Object {
    pub fn reference(&self) -> ObjectRef {
        match self {
            Object::Service(s) => ObjectRef::new(Kind::Service, &s.namespace, &s.name),
            Object::EndpointSlice(e) => ObjectRef::new(Kind::EndpointSlice, &e.namespace, &e.name),
            Object::Node(n) => ObjectRef::new(Kind::Node, "", &n.name),
            Object::Pod(p) => ObjectRef::new(Kind::Pod, &p.namespace, &p.name),
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::Node(_) => Kind::Node,
            Object::Pod(_) => Kind::Pod,
        }
    }
}

/// `spec.type` of a Service that svc-proxy programs (ExternalName Services are skipped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceType {
    ClusterIP,
    NodePort,
    LoadBalancer,
}

/// A `Service`, reduced to what svc-proxy programs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub service_type: ServiceType,
    /// `spec.clusterIPs` (or `spec.clusterIP`), at most one per family.
    pub cluster_ips: Vec<IpAddr>,
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip` (`ipMode: Proxy` ones excluded, as kube-proxy does: the
    /// load balancer itself sends to the nodes).
    pub load_balancer_ips: Vec<IpAddr>,
    /// `spec.loadBalancerSourceRanges`; empty means every source.
    pub load_balancer_source_ranges: Vec<IpNetwork>,
    /// `spec.selector`; `None` when absent or empty (endpoints then come from EndpointSlices only).
    pub selector: Option<BTreeMap<String, String>>,
    pub ports: Vec<ServicePort>,
    /// Persistence timeout in seconds when `sessionAffinity: ClientIP`.
    pub affinity_timeout: Option<u32>,
    /// From the `svc-proxy/scheduler` annotation.
    pub scheduler: Option<String>,
    /// `spec.externalTrafficPolicy: Local` on a Service reachable from outside (node ports,
    /// load-balancer or external IPs).
    pub external_policy_local: bool,
    /// `spec.internalTrafficPolicy: Local`.
    pub internal_policy_local: bool,
    pub health_check_node_port: Option<u16>,
}

/// One entry of `spec.ports`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// `name`, "" when unnamed; EndpointSlice ports are matched by it.
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    /// `targetPort`, defaulting to `port`.
    pub target_port: TargetPort,
    /// `nodePort` (NodePort and LoadBalancer Services).
    pub node_port: Option<u16>,
}

/// A Service port's `targetPort`. EndpointSlices carry the real port, so it matters only for
/// endpoints taken from attachment records, where a named port cannot be resolved (the records
/// do not list container ports).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    /// A container port name (`IANA_SVC_NAME`).
    Named(String),
}

impl fmt::Display for TargetPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetPort::Number(n) => write!(f, "{n}"),
            TargetPort::Named(name) => write!(f, "{name:?}"),
        }
    }
}

/// An `EndpointSlice`, reduced to what svc-proxy programs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSlice {
    pub namespace: String,
    pub name: String,
    /// From the `kubernetes.io/service-name` label.
    pub service_name: String,
    /// `addressType: IPv6` (else IPv4).
    pub ipv6: bool,
    pub ports: Vec<SlicePort>,
    pub endpoints: Vec<Endpoint>,
    /// The `endpoints.kubernetes.io/last-change-trigger-time` annotation (or a manifest file's
    /// modification time): when the change this version carries happened, for the network
    /// programming latency metric.
    pub trigger_time: Option<SystemTime>,
}

impl EndpointSlice {
    /// The Service this slice belongs to.
    pub fn service(&self) -> NamespacedName {
        NamespacedName::new(&self.namespace, &self.service_name)
    }
}

/// One entry of an EndpointSlice's `ports`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlicePort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// One entry of an EndpointSlice's `endpoints`, with its conditions defaulted the way Kubernetes
/// defines them (unknown `ready` means ready; unknown `serving` means `ready`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub addresses: Vec<IpAddr>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// `nodeName`: where the endpoint runs (local when it is this node).
    pub node_name: Option<String>,
    pub zone: Option<String>,
    /// `hints.forZones[].name`.
    pub zone_hints: Vec<String>,
    /// `hints.forNodes[].name`.
    pub node_hints: Vec<String>,
}

/// A `Node`, reduced to what svc-proxy uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    /// The `topology.kubernetes.io/zone` label.
    pub zone: Option<String>,
    /// `status.addresses` of type InternalIP.
    pub internal_ips: Vec<IpAddr>,
    /// `spec.podCIDRs` (or `spec.podCIDR`).
    pub pod_cidrs: Vec<IpNetwork>,
    /// Not being deleted and not tainted `ToBeDeletedByClusterAutoscaler`: what `/healthz`
    /// reports as `nodeEligible`.
    pub eligible: bool,
}

/// A pod cni-bridge attached on this node, as far as svc-proxy cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    /// The pod's namespace, "default" when the record has none.
    pub namespace: String,
    /// The record's identity on this node: `<network>/<containerId>.<ifname>`.
    pub name: String,
    pub addresses: Vec<IpAddr>,
    pub labels: BTreeMap<String, String>,
}

impl Pod {
    /// Whether every `key: value` of `selector` is among the pod's labels.
    pub fn matches(&self, namespace: &str, selector: &BTreeMap<String, String>) -> bool {
        self.namespace == namespace && selector.iter().all(|(k, v)| self.labels.get(k) == Some(v))
    }
}
