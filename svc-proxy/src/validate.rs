//! Validation: Kubernetes objects (k8s-openapi types, from manifest files or the API) to the
//! [`crate::objects`] svc-proxy programs. One set of rules for every source, so an object is
//! judged the same whichever way it arrives; an error names the field and what is wrong with it.

use crate::objects::{
    Endpoint, EndpointSlice, Node, Pod, Service, ServicePort, ServiceType, SlicePort, TargetPort,
};
use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use nodenet::Protocol;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::SystemTime;

/// Annotation that picks the IPVS scheduler of one Service (kube-proxy has one for all).
pub const SCHEDULER_ANNOTATION: &str = "svc-proxy/scheduler";
/// Label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Label that hands a Service to another proxy (kube-proxy skips these too).
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// Label the EndpointSlice controller puts on the slices of headless Services.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// Annotation the EndpointSlice controller sets to when the change a slice carries happened.
pub const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";
/// The Node label that names its zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// The taint the cluster autoscaler puts on a node it is about to delete.
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";
/// Schedulers the Debian kernel ships (`ip_vs_<name>` modules).
pub const SCHEDULERS: &[&str] = &[
    "rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh", "twos",
];
/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds`.
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;

/// Why an object is rejected: the field (a path such as `spec.ports[0].port`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// What validation makes of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<T> {
    /// Programmed.
    Accept(T),
    /// Valid, but not for svc-proxy (headless, ExternalName, another proxy's): the reason.
    Skip(String),
}

type Result<T, E = Invalid> = std::result::Result<T, E>;

/// Which Services this proxy takes: kube-proxy's rule for the
/// `service.kubernetes.io/service-proxy-name` label, with an optional name of our own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// `--service-proxy-name`: Services labelled with this name are ours too.
    pub proxy_name: Option<String>,
}

impl Filter {
    /// Whether a Service with these labels is ours (unlabelled, or labelled with our name).
    pub fn takes(&self, labels: Option<&BTreeMap<String, String>>) -> bool {
        match labels.and_then(|l| l.get(SERVICE_PROXY_NAME_LABEL)) {
            None => true,
            Some(name) => self.proxy_name.as_deref() == Some(name.as_str()),
        }
    }
}

/// Why `ip` cannot be a virtual service address or a real server, if it cannot: addresses that
/// are not one host's unicast address (kube-proxy and the API server refuse the same classes).
pub fn special_address(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => Some("the unspecified address"),
        IpAddr::V4(v4) if v4.octets()[0] == 0 => Some("in 0.0.0.0/8 (this network)"),
        IpAddr::V4(v4) if v4.is_loopback() => Some("a loopback address"),
        IpAddr::V4(v4) if v4.is_multicast() => Some("a multicast address"),
        IpAddr::V4(v4) if v4.is_broadcast() => Some("the broadcast address"),
        IpAddr::V4(v4) if v4.is_link_local() => Some("a link-local address"),
        IpAddr::V6(v6) if v6.is_unspecified() => Some("the unspecified address"),
        IpAddr::V6(v6) if v6.is_loopback() => Some("a loopback address"),
        IpAddr::V6(v6) if v6.is_multicast() => Some("a multicast address"),
        IpAddr::V6(v6) if v6.is_unicast_link_local() => Some("a link-local address"),
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => Some("an IPv4-mapped IPv6 address"),
        _ => None,
    }
}

/// Parses an address that must be usable as `what` (a virtual service address, a real server).
fn address(s: &str, field: &str, what: &str) -> Result<IpAddr> {
    let ip: IpAddr = s
        .parse()
        .map_err(|_| invalid(field, format!("{s:?} is not an IP address")))?;
    match special_address(ip) {
        Some(class) => Err(invalid(
            field,
            format!("{ip} is {class}, which cannot be {what}"),
        )),
        None => Ok(ip),
    }
}

const VIP: &str = "a virtual service address";
const REAL_SERVER: &str = "a real server";

fn port(n: i32, field: &str) -> Result<u16> {
    match u16::try_from(n) {
        Ok(p) if p != 0 => Ok(p),
        _ if n == 0 => Err(invalid(field, "required (a port number 1-65535)")),
        _ => Err(invalid(field, format!("{n} is out of range 1-65535"))),
    }
}

fn protocol(p: Option<&str>, field: &str) -> Result<Protocol> {
    match p {
        None => Ok(Protocol::Tcp),
        Some(p @ ("TCP" | "UDP" | "SCTP")) => Ok(p.parse().expect("a listed protocol")),
        Some(p) => Err(invalid(
            field,
            format!("unknown protocol {p:?} (expected TCP, UDP or SCTP)"),
        )),
    }
}

/// Kubernetes' `IANA_SVC_NAME`: 1-15 lowercase letters, digits and inner single hyphens, with at
/// least one letter.
fn is_port_name(s: &str) -> bool {
    (1..=15).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

fn name_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Result<String> {
    match meta.name.as_deref() {
        Some(n) if !n.is_empty() => Ok(n.to_string()),
        _ => Err(invalid("metadata.name", "required")),
    }
}

/// The namespace of an object; manifests without one mean `default`, as kubectl does.
pub fn namespace_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    match meta.namespace.as_deref() {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => "default".to_string(),
    }
}

/// Validates a Service. ExternalName and headless Services, and those labelled for another
/// proxy, are skipped (as kube-proxy does).
pub fn service(svc: &core::Service, filter: &Filter) -> Result<Verdict<Service>> {
    let name = name_of(&svc.metadata)?;
    let namespace = namespace_of(&svc.metadata);
    if !filter.takes(svc.metadata.labels.as_ref()) {
        return Ok(Verdict::Skip(format!(
            "labelled {SERVICE_PROXY_NAME_LABEL}={}",
            svc.metadata.labels.as_ref().expect("labelled")[SERVICE_PROXY_NAME_LABEL]
        )));
    }
    let annotations = svc.metadata.annotations.as_ref();
    let scheduler = match annotations.and_then(|a| a.get(SCHEDULER_ANNOTATION)) {
        None => None,
        Some(s) if SCHEDULERS.contains(&s.as_str()) => Some(s.clone()),
        Some(s) => {
            return Err(invalid(
                format!("metadata.annotations.{SCHEDULER_ANNOTATION}"),
                format!(
                    "unknown IPVS scheduler {s:?} (expected one of {})",
                    SCHEDULERS.join(", ")
                ),
            ))
        }
    };
    let default_spec = core::ServiceSpec::default();
    let spec = svc.spec.as_ref().unwrap_or(&default_spec);
    let service_type = match spec.type_.as_deref().unwrap_or("ClusterIP") {
        "ClusterIP" => ServiceType::ClusterIP,
        "NodePort" => ServiceType::NodePort,
        "LoadBalancer" => ServiceType::LoadBalancer,
        "ExternalName" => return Ok(Verdict::Skip("type ExternalName".into())),
        other => {
            return Err(invalid(
                "spec.type",
                format!("unknown Service type {other:?} (expected ClusterIP, NodePort, LoadBalancer or ExternalName)"),
            ))
        }
    };
    if spec.cluster_ip.as_deref() == Some("None") {
        return Ok(Verdict::Skip("headless (clusterIP None)".into()));
    }
    let cluster_ips = cluster_ips(spec)?;
    let selector = spec.selector.clone().filter(|s| !s.is_empty());

    let mut external_ips = Vec::new();
    for (i, s) in spec.external_ips.iter().flatten().enumerate() {
        let ip = address(s, &format!("spec.externalIPs[{i}]"), VIP)?;
        if !external_ips.contains(&ip) {
            external_ips.push(ip);
        }
    }
    // Read whatever the type: kube-proxy programs the status it finds (in practice only
    // LoadBalancer Services have one).
    let mut load_balancer_ips = Vec::new();
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref());
    for (i, ing) in ingress.into_iter().flatten().enumerate() {
        // `ipMode: Proxy`: the load balancer proxies to the nodes, so kube-proxy does not
        // capture traffic to its IP.
        if ing.ip_mode.as_deref() == Some("Proxy") {
            continue;
        }
        if let Some(s) = ing.ip.as_deref().filter(|s| !s.is_empty()) {
            let ip = address(s, &format!("status.loadBalancer.ingress[{i}].ip"), VIP)?;
            if !load_balancer_ips.contains(&ip) {
                load_balancer_ips.push(ip);
            }
        }
    }
    let mut load_balancer_source_ranges = Vec::new();
    for (i, s) in spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .enumerate()
    {
        let field = format!("spec.loadBalancerSourceRanges[{i}]");
        let net: IpNetwork = s
            .trim()
            .parse()
            .map_err(|_| invalid(&field, format!("{s:?} is not a CIDR (e.g. 192.0.2.0/24)")))?;
        load_balancer_source_ranges.push(net);
    }

    let ports = service_ports(spec, service_type)?;
    let affinity_timeout = match spec.session_affinity.as_deref().unwrap_or("None") {
        "None" => None,
        "ClientIP" => Some(affinity_timeout(spec)?),
        other => {
            return Err(invalid(
                "spec.sessionAffinity",
                format!("unknown session affinity {other:?} (expected None or ClientIP)"),
            ))
        }
    };
    let policy = |field: &str, value: Option<&str>| match value {
        None | Some("Cluster") => Ok(false),
        Some("Local") => Ok(true),
        Some(other) => Err(invalid(
            field,
            format!("unknown traffic policy {other:?} (expected Cluster or Local)"),
        )),
    };
    // kube-proxy's ExternalPolicyLocal: only for a Service reachable from outside (a node port,
    // a load balancer, or external IPs).
    let externally_accessible = service_type != ServiceType::ClusterIP || !external_ips.is_empty();
    let external_policy_local = policy(
        "spec.externalTrafficPolicy",
        spec.external_traffic_policy.as_deref(),
    )? && externally_accessible;
    let internal_policy_local = policy(
        "spec.internalTrafficPolicy",
        spec.internal_traffic_policy.as_deref(),
    )?;
    let health_check_node_port = match spec.health_check_node_port {
        Some(n) if external_policy_local && service_type == ServiceType::LoadBalancer => {
            Some(port(n, "spec.healthCheckNodePort")?)
        }
        _ => None,
    };
    Ok(Verdict::Accept(Service {
        namespace,
        name,
        service_type,
        cluster_ips,
        external_ips,
        load_balancer_ips,
        load_balancer_source_ranges,
        selector,
        ports,
        affinity_timeout,
        scheduler,
        external_policy_local,
        internal_policy_local,
        health_check_node_port,
    }))
}

/// `spec.clusterIPs`, agreeing with `spec.clusterIP`, at most one per family.
fn cluster_ips(spec: &core::ServiceSpec) -> Result<Vec<IpAddr>> {
    let mut ips: Vec<IpAddr> = Vec::new();
    for (i, s) in spec.cluster_ips.iter().flatten().enumerate() {
        let field = format!("spec.clusterIPs[{i}]");
        let ip = address(s, &field, VIP)?;
        if ips.iter().any(|c| c.is_ipv4() == ip.is_ipv4()) {
            return Err(invalid(field, "at most one address per IP family"));
        }
        ips.push(ip);
    }
    match spec.cluster_ip.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => {
            let ip = address(s, "spec.clusterIP", VIP)?;
            match ips.first() {
                None => ips.push(ip),
                Some(first) if *first == ip => {}
                Some(first) => {
                    return Err(invalid(
                        "spec.clusterIP",
                        format!("{ip} differs from spec.clusterIPs[0] {first}"),
                    ))
                }
            }
        }
        None if ips.is_empty() => {
            return Err(invalid(
                "spec.clusterIP",
                "required (svc-proxy does not allocate cluster IPs)",
            ))
        }
        None => {}
    }
    Ok(ips)
}

fn service_ports(spec: &core::ServiceSpec, service_type: ServiceType) -> Result<Vec<ServicePort>> {
    let mut ports: Vec<ServicePort> = Vec::new();
    let list = spec.ports.as_deref().unwrap_or_default();
    for (i, p) in list.iter().enumerate() {
        let field = format!("spec.ports[{i}]");
        let port_name = p.name.clone().unwrap_or_default();
        let protocol = protocol(p.protocol.as_deref(), &format!("{field}.protocol"))?;
        let number = port(p.port, &format!("{field}.port"))?;
        let target_field = format!("{field}.targetPort");
        let target_port = match &p.target_port {
            None => TargetPort::Number(number),
            // 0 and "" mean "unset" in the API (it defaults them to `port`).
            Some(IntOrString::Int(0)) => TargetPort::Number(number),
            Some(IntOrString::Int(n)) => TargetPort::Number(port(*n, &target_field)?),
            Some(IntOrString::String(s)) if s.is_empty() => TargetPort::Number(number),
            Some(IntOrString::String(s)) => match s.parse::<i32>() {
                Ok(n) => TargetPort::Number(port(n, &target_field)?),
                Err(_) if is_port_name(s) => TargetPort::Named(s.clone()),
                Err(_) => {
                    return Err(invalid(
                        target_field,
                        format!(
                            "{s:?} is neither a port number nor a port name (1-15 lowercase \
                             letters, digits and inner hyphens)"
                        ),
                    ))
                }
            },
        };
        let node_port = match p.node_port {
            Some(n) if n != 0 && service_type != ServiceType::ClusterIP => {
                Some(port(n, &format!("{field}.nodePort"))?)
            }
            _ => None,
        };
        if let Some(j) = ports
            .iter()
            .position(|q| q.port == number && q.protocol == protocol)
        {
            return Err(invalid(
                format!("{field}.port"),
                format!(
                    "duplicate port {number}/{} (also spec.ports[{j}])",
                    protocol.as_str().to_uppercase()
                ),
            ));
        }
        if !ports.is_empty() {
            let unnamed = if port_name.is_empty() {
                Some(i)
            } else {
                ports.iter().position(|q| q.name.is_empty())
            };
            if let Some(j) = unnamed {
                return Err(invalid(
                    format!("spec.ports[{j}].name"),
                    "required when a Service has more than one port",
                ));
            }
        }
        if let Some(j) = ports.iter().position(|q| q.name == port_name) {
            return Err(invalid(
                format!("{field}.name"),
                format!("duplicate port name {port_name:?} (also spec.ports[{j}])"),
            ));
        }
        ports.push(ServicePort {
            name: port_name,
            protocol,
            port: number,
            target_port,
            node_port,
        });
    }
    if ports.is_empty() {
        return Err(invalid("spec.ports", "required (at least one port)"));
    }
    Ok(ports)
}

fn affinity_timeout(spec: &core::ServiceSpec) -> Result<u32> {
    let t = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds);
    match t {
        None => Ok(DEFAULT_AFFINITY_TIMEOUT),
        Some(n) if (1..=86400).contains(&n) => Ok(n as u32),
        Some(n) => Err(invalid(
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
            format!("{n} is out of range 1-86400"),
        )),
    }
}

/// Validates an EndpointSlice. FQDN slices (nothing IPVS can forward to) and the slices of
/// headless Services are skipped, as kube-proxy does.
pub fn endpoint_slice(slice: &discovery::EndpointSlice) -> Result<Verdict<EndpointSlice>> {
    let name = name_of(&slice.metadata)?;
    let namespace = namespace_of(&slice.metadata);
    let labels = slice.metadata.labels.as_ref();
    if labels.is_some_and(|l| l.contains_key(HEADLESS_LABEL)) {
        return Ok(Verdict::Skip(format!("labelled {HEADLESS_LABEL}")));
    }
    let service_name = labels
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            invalid(
                format!("metadata.labels.{SERVICE_NAME_LABEL}"),
                "required (names the Service)",
            )
        })?
        .clone();
    let ipv6 = match slice.address_type.as_str() {
        "IPv4" => false,
        "IPv6" => true,
        "FQDN" => return Ok(Verdict::Skip("addressType FQDN".into())),
        "" => return Err(invalid("addressType", "required")),
        other => {
            return Err(invalid(
                "addressType",
                format!("unsupported address type {other:?} (expected IPv4, IPv6 or FQDN)"),
            ))
        }
    };
    let mut ports: Vec<SlicePort> = Vec::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        let field = format!("ports[{i}]");
        let port_name = p.name.clone().unwrap_or_default();
        let protocol = protocol(p.protocol.as_deref(), &format!("{field}.protocol"))?;
        let number = match p.port {
            None => return Err(invalid(format!("{field}.port"), "required")),
            Some(n) => port(n, &format!("{field}.port"))?,
        };
        if let Some(j) = ports
            .iter()
            .position(|q| q.name == port_name && q.protocol == protocol)
        {
            return Err(invalid(
                format!("{field}.name"),
                format!("duplicate port name {port_name:?} (also ports[{j}])"),
            ));
        }
        ports.push(SlicePort {
            name: port_name,
            protocol,
            port: number,
        });
    }
    let mut endpoints = Vec::new();
    for (i, e) in slice.endpoints.iter().enumerate() {
        let field = format!("endpoints[{i}]");
        let mut addresses = Vec::new();
        for (j, a) in e.addresses.iter().enumerate() {
            let f = format!("{field}.addresses[{j}]");
            let ip = address(a, &f, REAL_SERVER)?;
            if ip.is_ipv6() != ipv6 {
                return Err(invalid(
                    f,
                    format!("{ip} does not match addressType {}", slice.address_type),
                ));
            }
            addresses.push(ip);
        }
        if addresses.is_empty() {
            return Err(invalid(
                format!("{field}.addresses"),
                "required (at least one address)",
            ));
        }
        let c = e.conditions.clone().unwrap_or_default();
        let ready = c.ready.unwrap_or(true);
        let hints = e.hints.as_ref();
        endpoints.push(Endpoint {
            addresses,
            ready,
            serving: c.serving.unwrap_or(ready),
            terminating: c.terminating.unwrap_or(false),
            node_name: e.node_name.clone().filter(|n| !n.is_empty()),
            zone: e.zone.clone().filter(|z| !z.is_empty()),
            zone_hints: hints
                .and_then(|h| h.for_zones.as_ref())
                .map(|z| z.iter().map(|z| z.name.clone()).collect())
                .unwrap_or_default(),
            node_hints: hints
                .and_then(|h| h.for_nodes.as_ref())
                .map(|n| n.iter().map(|n| n.name.clone()).collect())
                .unwrap_or_default(),
        });
    }
    let trigger_time = slice
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(TRIGGER_TIME_ANNOTATION))
        .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
        .map(SystemTime::from);
    Ok(Verdict::Accept(EndpointSlice {
        namespace,
        name,
        service_name,
        ipv6,
        ports,
        endpoints,
        trigger_time,
    }))
}

/// Validates a Node: its zone, InternalIPs, pod CIDRs and whether it is eligible for traffic.
pub fn node(n: &core::Node) -> Result<Node> {
    let name = name_of(&n.metadata)?;
    let zone = n
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(ZONE_LABEL))
        .filter(|z| !z.is_empty())
        .cloned();
    let mut internal_ips = Vec::new();
    let addresses = n.status.as_ref().and_then(|s| s.addresses.as_ref());
    for (i, a) in addresses.into_iter().flatten().enumerate() {
        if a.type_ == "InternalIP" {
            let ip: IpAddr = a.address.parse().map_err(|_| {
                invalid(
                    format!("status.addresses[{i}].address"),
                    format!("{:?} is not an IP address", a.address),
                )
            })?;
            internal_ips.push(ip);
        }
    }
    let mut pod_cidrs = Vec::new();
    let spec = n.spec.as_ref();
    let listed = spec.and_then(|s| s.pod_cidrs.clone()).unwrap_or_default();
    let single = spec.and_then(|s| s.pod_cidr.clone());
    let cidrs: Vec<(String, String)> = if listed.is_empty() {
        single
            .into_iter()
            .filter(|c| !c.is_empty())
            .map(|c| ("spec.podCIDR".to_string(), c))
            .collect()
    } else {
        listed
            .into_iter()
            .enumerate()
            .map(|(i, c)| (format!("spec.podCIDRs[{i}]"), c))
            .collect()
    };
    for (field, c) in cidrs {
        let net: IpNetwork = c
            .parse()
            .map_err(|_| invalid(field, format!("{c:?} is not a CIDR")))?;
        pod_cidrs.push(net);
    }
    let tainted = spec
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| t.iter().any(|t| t.key == TO_BE_DELETED_TAINT));
    Ok(Node {
        name,
        zone,
        internal_ips,
        pod_cidrs,
        eligible: n.metadata.deletion_timestamp.is_none() && !tainted,
    })
}

/// The pod of a cni-bridge attachment record (`network/containerId.ifname` names it), if the
/// record counts (`ready`).
pub fn pod(
    name: String,
    namespace: Option<&str>,
    addresses: Vec<IpAddr>,
    labels: BTreeMap<String, String>,
) -> Pod {
    Pod {
        namespace: namespace
            .filter(|n| !n.is_empty())
            .unwrap_or("default")
            .to_string(),
        name,
        addresses,
        labels,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(json: serde_json::Value) -> core::Service {
        serde_json::from_value(json).unwrap()
    }

    fn base(spec: serde_json::Value) -> core::Service {
        svc(serde_json::json!({"metadata": {"name": "s"}, "spec": spec}))
    }

    fn err(s: &core::Service) -> String {
        service(s, &Filter::default()).unwrap_err().to_string()
    }

    #[test]
    fn special_addresses_are_refused_as_vips_and_real_servers() {
        for (ip, class) in [
            ("0.0.0.0", "the unspecified address"),
            ("0.1.2.3", "in 0.0.0.0/8 (this network)"),
            ("127.0.0.1", "a loopback address"),
            ("127.3.2.1", "a loopback address"),
            ("224.0.0.5", "a multicast address"),
            ("239.1.1.1", "a multicast address"),
            ("255.255.255.255", "the broadcast address"),
            ("169.254.1.1", "a link-local address"),
            ("::", "the unspecified address"),
            ("::1", "a loopback address"),
            ("ff02::1", "a multicast address"),
            ("fe80::1", "a link-local address"),
            ("::ffff:10.0.0.1", "an IPv4-mapped IPv6 address"),
        ] {
            let s = base(serde_json::json!({"clusterIP": ip, "ports": [{"port": 80}]}));
            assert_eq!(
                err(&s),
                format!(
                    "spec.clusterIP: {ip} is {class}, which cannot be a virtual service address"
                )
            );
        }
        let s = base(
            serde_json::json!({"clusterIP": "10.0.0.1", "externalIPs": ["192.0.2.1", "224.1.1.1"], "ports": [{"port": 80}]}),
        );
        assert_eq!(
            err(&s),
            "spec.externalIPs[1]: 224.1.1.1 is a multicast address, which cannot be a virtual service address"
        );
        for ip in [
            "10.0.0.1",
            "192.0.2.1",
            "fd00::1",
            "2001:db8::1",
            "100.64.0.1",
        ] {
            assert_eq!(special_address(ip.parse().unwrap()), None, "{ip}");
        }
        let slice: discovery::EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "e", "labels": {SERVICE_NAME_LABEL: "s"}},
            "addressType": "IPv6",
            "endpoints": [{"addresses": ["fd00::1"]}, {"addresses": ["::1"]}]
        }))
        .unwrap();
        assert_eq!(
            endpoint_slice(&slice).unwrap_err().to_string(),
            "endpoints[1].addresses[0]: ::1 is a loopback address, which cannot be a real server"
        );
    }

    #[test]
    fn the_proxy_name_label_hands_a_service_to_another_proxy() {
        let labelled = svc(serde_json::json!({
            "metadata": {"name": "s", "labels": {SERVICE_PROXY_NAME_LABEL: "other"}},
            "spec": {"clusterIP": "10.0.0.1", "ports": [{"port": 80}]}
        }));
        assert_eq!(
            service(&labelled, &Filter::default()).unwrap(),
            Verdict::Skip(format!("labelled {SERVICE_PROXY_NAME_LABEL}=other"))
        );
        let ours = Filter {
            proxy_name: Some("other".into()),
        };
        assert!(matches!(
            service(&labelled, &ours).unwrap(),
            Verdict::Accept(_)
        ));
        let unlabelled =
            base(serde_json::json!({"clusterIP": "10.0.0.1", "ports": [{"port": 80}]}));
        assert!(matches!(
            service(&unlabelled, &ours).unwrap(),
            Verdict::Accept(_)
        ));
    }

    #[test]
    fn headless_and_external_name_services_are_skipped() {
        let h = base(serde_json::json!({"clusterIP": "None", "selector": {"a": "b"}}));
        assert!(matches!(
            service(&h, &Filter::default()).unwrap(),
            Verdict::Skip(_)
        ));
        let e = base(serde_json::json!({"type": "ExternalName", "externalName": "x.example"}));
        assert!(matches!(
            service(&e, &Filter::default()).unwrap(),
            Verdict::Skip(_)
        ));
    }

    #[test]
    fn load_balancer_status_and_policies() {
        let s = svc(serde_json::json!({
            "metadata": {"name": "lb"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.0.0.1", "externalTrafficPolicy": "Local",
                     "healthCheckNodePort": 30999, "loadBalancerSourceRanges": ["192.0.2.0/24", " 198.51.100.7/32"],
                     "ports": [{"port": 80, "nodePort": 30080}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}, {"ip": "192.0.2.11", "ipMode": "Proxy"}, {"hostname": "lb.example"}]}}
        }));
        let Verdict::Accept(s) = service(&s, &Filter::default()).unwrap() else {
            panic!("skipped")
        };
        assert_eq!(
            s.load_balancer_ips,
            vec!["192.0.2.10".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(s.load_balancer_source_ranges.len(), 2);
        assert!(s.external_policy_local && !s.internal_policy_local);
        assert_eq!(s.health_check_node_port, Some(30999));
        assert_eq!(s.ports[0].node_port, Some(30080));
    }

    #[test]
    fn endpoint_conditions_hints_and_locality() {
        let slice: discovery::EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "e", "labels": {SERVICE_NAME_LABEL: "s"},
                         "annotations": {TRIGGER_TIME_ANNOTATION: "2026-12-02T02:40:01.5Z"}},
            "addressType": "IPv4",
            "ports": [{"port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.0.0.11"], "nodeName": "n1", "zone": "a",
                 "hints": {"forZones": [{"name": "a"}], "forNodes": [{"name": "n1"}]}},
                {"addresses": ["10.0.0.12"], "conditions": {"ready": false, "serving": true, "terminating": true}}
            ]
        }))
        .unwrap();
        let Verdict::Accept(e) = endpoint_slice(&slice).unwrap() else {
            panic!("skipped")
        };
        assert_eq!(e.endpoints[0].node_name.as_deref(), Some("n1"));
        assert_eq!(e.endpoints[0].zone_hints, vec!["a".to_string()]);
        assert_eq!(e.endpoints[0].node_hints, vec!["n1".to_string()]);
        assert!(e.endpoints[0].ready && e.endpoints[0].serving && !e.endpoints[0].terminating);
        assert!(!e.endpoints[1].ready && e.endpoints[1].serving && e.endpoints[1].terminating);
        let t = e.trigger_time.unwrap();
        assert_eq!(
            t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis(),
            1_796_179_201_500
        );
    }

    #[test]
    fn an_endpoint_slice_port_out_of_range_names_its_field() {
        for (port, message) in [
            (70000, "70000 is out of range 1-65535"),
            (-1, "-1 is out of range 1-65535"),
            (0, "required (a port number 1-65535)"),
        ] {
            let slice: discovery::EndpointSlice = serde_json::from_value(serde_json::json!({
                "metadata": {"name": "e", "labels": {SERVICE_NAME_LABEL: "s"}},
                "addressType": "IPv4",
                "ports": [{"port": 80}, {"name": "b", "port": port}],
                "endpoints": []
            }))
            .unwrap();
            assert_eq!(
                endpoint_slice(&slice).unwrap_err().to_string(),
                format!("ports[1].port: {message}")
            );
        }
    }

    #[test]
    fn nodes_report_zone_addresses_cidrs_and_eligibility() {
        let n: core::Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1", "labels": {ZONE_LABEL: "a"}},
            "spec": {"podCIDRs": ["10.244.1.0/24", "fd00:244:0:1::/64"],
                     "taints": [{"key": TO_BE_DELETED_TAINT, "effect": "NoSchedule"}]},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.168.1.2"},
                                     {"type": "Hostname", "address": "n1"}]}
        }))
        .unwrap();
        let n = node(&n).unwrap();
        assert_eq!(n.zone.as_deref(), Some("a"));
        assert_eq!(
            n.internal_ips,
            vec!["192.168.1.2".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(n.pod_cidrs.len(), 2);
        assert!(!n.eligible);
    }
}
