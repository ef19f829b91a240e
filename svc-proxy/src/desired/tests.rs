//! The derivation of single Services, table by table against kube-proxy's IPVS-mode rules.

use super::*;
use crate::derive::Derived;
use crate::manifest::parse;
use crate::objects::{Object, Pod};
use crate::store::Delta;
use crate::validate::Filter;

const SCENARIO: &str = include_str!("../../../conf/services/app-service.yaml");
const NODE_IP: &str = "192.168.1.2";

fn node() -> NodeView {
    NodeView {
        name: "n1".into(),
        zone: Some("a".into()),
        nodeport_addresses: BTreeSet::from([NODE_IP.parse().unwrap()]),
        addresses: BTreeSet::from([NODE_IP.parse().unwrap()]),
        ips: vec![NODE_IP.parse().unwrap()],
    }
}

/// A store holding `yaml`'s objects from `source`, and `pods` from records.
fn store(yaml: &str, source: SourceId, pods: &[Pod]) -> Store {
    let mut st = Store::new("n1");
    for o in parse("t.yaml", yaml, false, &Filter::default()).unwrap() {
        st.apply(source, Delta::Apply(o));
    }
    for p in pods {
        st.apply(SourceId::Records, Delta::Apply(Object::Pod(p.clone())));
    }
    st
}

fn derived(st: &Store) -> Derived {
    let mut d = Derived::new("rr", vec![]);
    d.set_node(node());
    d.derive_all(st);
    d
}

fn run(yaml: &str, pods: &[Pod]) -> Derived {
    derived(&store(yaml, SourceId::Files, pods))
}

fn api(yaml: &str) -> Derived {
    derived(&store(yaml, SourceId::Api, &[]))
}

fn pod(ns: &str, name: &str, ip: &str, labels: &[(&str, &str)]) -> Pod {
    Pod {
        namespace: ns.into(),
        name: name.into(),
        addresses: vec![ip.parse().unwrap()],
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

/// The real servers of `"ADDR PORT/proto"`; panics when there is no such virtual service.
fn eps(d: &Derived, key: &str) -> Vec<String> {
    let k = parse_key(key);
    d.desired()
        .services
        .get(&k)
        .unwrap_or_else(|| {
            panic!(
                "no virtual service {key}; have {:?}",
                d.desired().services.keys().collect::<Vec<_>>()
            )
        })
        .endpoints
        .iter()
        .map(|e| e.to_string())
        .collect()
}

fn parse_key(key: &str) -> ServiceKey {
    let (addr, rest) = key.rsplit_once(' ').unwrap();
    let (port, proto) = rest.split_once('/').unwrap();
    ServiceKey {
        addr: addr.parse().unwrap(),
        port: port.parse().unwrap(),
        protocol: proto.parse().unwrap(),
    }
}

/// `SET: member` lines for every set member wanted.
fn members(d: &Derived) -> Vec<String> {
    d.desired()
        .sets
        .iter()
        .flat_map(|(set, m)| m.iter().map(move |m| format!("{set}: {m}")))
        .collect()
}

#[test]
fn selector_takes_matching_pods_of_the_same_namespace() {
    let pods = [
        pod("default", "p1", "10.0.0.11", &[("component", "app")]),
        pod(
            "default",
            "p2",
            "10.0.0.21",
            &[("component", "app"), ("tier", "x")],
        ),
        pod("other", "p3", "10.0.0.31", &[("component", "app")]),
        pod("default", "p4", "10.0.0.41", &[("component", "db")]),
    ];
    let d = run(SCENARIO, &pods);
    assert_eq!(d.conflicts(), 0);
    assert_eq!(
        eps(&d, "10.100.100.100 8080/tcp"),
        vec!["10.0.0.11:8080", "10.0.0.21:8080"]
    );
    assert_eq!(
        members(&d),
        vec![
            "SVCPROXY-LOOP-BACK: 10.0.0.11,tcp:8080,10.0.0.11",
            "SVCPROXY-LOOP-BACK: 10.0.0.21,tcp:8080,10.0.0.21",
            "SVCPROXY-CLUSTER-IP: 10.100.100.100,tcp:8080",
            "SVCPROXY-VIPS: 10.100.100.100",
        ]
    );
    let vs = &d.desired().services[&parse_key("10.100.100.100 8080/tcp")];
    assert_eq!((vs.service.scheduler.as_str(), vs.service.flags), ("rr", 0));
    assert_eq!(
        d.desired().bound,
        BTreeSet::from(["10.100.100.100".parse().unwrap()])
    );
}

/// Records stand in for EndpointSlices only for Services from files: the API's
/// EndpointSlice controller speaks for the API's Services.
#[test]
fn pods_from_records_never_feed_a_service_from_the_api() {
    let pods = [pod("default", "p1", "10.0.0.11", &[("component", "app")])];
    let d = derived(&store(SCENARIO, SourceId::Api, &pods));
    assert_eq!(eps(&d, "10.100.100.100 8080/tcp"), Vec::<String>::new());
}

/// A named targetPort is fine with EndpointSlices (they carry the port); pods from records
/// cannot resolve it, so that port gets no endpoints from them (and a warning).
#[test]
fn a_named_target_port_needs_an_endpoint_slice() {
    let named = SCENARIO.replace("targetPort: 8080", "targetPort: web");
    assert_ne!(named, SCENARIO, "the scenario names its targetPort");
    let pods = [pod("default", "p1", "10.0.0.11", &[("component", "app")])];
    assert_eq!(
        eps(&run(&named, &pods), "10.100.100.100 8080/tcp"),
        Vec::<String>::new()
    );
    let with_slice = format!(
        "{named}---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: a1, labels: {{kubernetes.io/service-name: app-service}}}}\naddressType: IPv4\nports: [{{port: 9376}}]\nendpoints: [{{addresses: [10.0.0.11]}}]\n"
    );
    assert_eq!(
        eps(&run(&with_slice, &pods), "10.100.100.100 8080/tcp"),
        vec!["10.0.0.11:9376"]
    );
}

const SLICE: &str = "---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: a1, labels: {kubernetes.io/service-name: app-service}}
addressType: IPv4
ports: [{port: 9090}]
endpoints:
- {addresses: [10.1.0.1]}
- {addresses: [10.1.0.2], conditions: {ready: false, serving: true, terminating: true}}
- {addresses: [10.1.0.3], conditions: {ready: false, serving: false}}
";

#[test]
fn endpoint_slices_win_over_pods_and_fall_back_to_terminating() {
    let yaml = format!("{SCENARIO}{SLICE}");
    let pods = [pod("default", "p1", "10.0.0.11", &[("component", "app")])];
    assert_eq!(
        eps(&run(&yaml, &pods), "10.100.100.100 8080/tcp"),
        vec!["10.1.0.1:9090"]
    );
    let only_terminating = yaml.replace("- {addresses: [10.1.0.1]}\n", "");
    assert_eq!(
        eps(&run(&only_terminating, &pods), "10.100.100.100 8080/tcp"),
        vec!["10.1.0.2:9090"]
    );
}

#[test]
fn cluster_and_external_ips_get_every_port_and_family_matched_endpoints() {
    let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: s, annotations: {svc-proxy/scheduler: mh}}\nspec:\n  clusterIPs: [10.96.0.5, \"fd00::5\"]\n  externalIPs: [192.0.2.5]\n  selector: {app: s}\n  sessionAffinity: ClientIP\n  ports: [{name: a, port: 80, targetPort: 8080}, {name: b, port: 53, protocol: UDP}]\n";
    let mut p = pod("default", "p1", "10.0.0.11", &[("app", "s")]);
    p.addresses.push("fd00::11".parse().unwrap());
    let d = run(yaml, &[p]);
    assert_eq!(d.desired().services.len(), 6);
    assert_eq!(eps(&d, "fd00::5 80/tcp"), vec!["[fd00::11]:8080"]);
    assert_eq!(eps(&d, "192.0.2.5 53/udp"), vec!["10.0.0.11:53"]);
    assert!(d
        .desired()
        .services
        .values()
        .all(|s| s.service.scheduler == "mh"
            && s.service.flags == FLAG_SOURCE_HASH
            && s.service.persistence == Some(10800)));
    let m = members(&d);
    for want in [
        "SVCPROXY-LOOP-BACK: 10.0.0.11,tcp:8080,10.0.0.11",
        "SVCPROXY-LOOP-BACK: 10.0.0.11,udp:53,10.0.0.11",
        "SVCPROXY-6-LOOP-BACK: fd00::11,tcp:8080,fd00::11",
        "SVCPROXY-EXTERNAL-IP: 192.0.2.5,tcp:80",
        "SVCPROXY-VIPS: 192.0.2.5",
        "SVCPROXY-6-CLUSTER-IP: fd00::5,udp:53",
        "SVCPROXY-6-VIPS: fd00::5",
    ] {
        assert!(m.contains(&want.to_string()), "{want} missing from {m:?}");
    }
    assert!(!m.iter().any(|l| l.contains("EXTERNAL-IP-LOCAL")));
}

#[test]
fn a_vip_port_claimed_twice_goes_to_the_first_service() {
    let yaml = format!(
        "{SCENARIO}---\n{}",
        SCENARIO.replace("name: app-service", "name: aaa")
    );
    let d = run(&yaml, &[]);
    assert_eq!(d.desired().services.len(), 1);
    assert_eq!(
        d.desired().services.values().next().unwrap().origin,
        "default/aaa port 8080/TCP"
    );
    assert_eq!(d.conflicts(), 1);
}

/// A NodePort Service gets a virtual service on each node-port address, marked ours in the
/// OWNED set (it is not on the dummy device), and its port in the protocol's node-port bitmap.
#[test]
fn node_ports_listen_on_the_node_addresses() {
    let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: np}\nspec:\n  type: NodePort\n  clusterIP: 10.96.0.7\n  ports: [{name: t, port: 80, nodePort: 30080}, {name: u, port: 53, protocol: UDP, nodePort: 30053}, {name: s, port: 9, protocol: SCTP, nodePort: 30009}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: np-1, labels: {kubernetes.io/service-name: np}}\naddressType: IPv4\nports: [{name: t, port: 8080}, {name: u, port: 5353, protocol: UDP}, {name: s, port: 9999, protocol: SCTP}]\nendpoints:\n- {addresses: [10.244.1.5], nodeName: n1}\n- {addresses: [10.244.2.5], nodeName: n2}\n";
    let d = api(yaml);
    assert_eq!(
        eps(&d, "192.168.1.2 30080/tcp"),
        vec!["10.244.1.5:8080", "10.244.2.5:8080"]
    );
    assert_eq!(eps(&d, "192.168.1.2 30053/udp").len(), 2);
    assert_eq!(eps(&d, "192.168.1.2 30009/sctp").len(), 2);
    assert!(
        !d.desired().bound.contains(&NODE_IP.parse().unwrap()),
        "a node address is never put on the dummy device"
    );
    let m = members(&d);
    for want in [
        "SVCPROXY-OWNED: 192.168.1.2,tcp:30080",
        "SVCPROXY-OWNED: 192.168.1.2,udp:30053",
        "SVCPROXY-OWNED: 192.168.1.2,sctp:30009",
        "SVCPROXY-NODE-PORT-TCP: 30080",
        "SVCPROXY-NODE-PORT-UDP: 30053",
        "SVCPROXY-NODE-PORT-SCTP: 192.168.1.2,sctp:30009",
        // Hairpin only for this node's endpoint.
        "SVCPROXY-LOOP-BACK: 10.244.1.5,tcp:8080,10.244.1.5",
    ] {
        assert!(m.contains(&want.to_string()), "{want} missing from {m:?}");
    }
    assert!(!m.iter().any(|l| l.contains("10.244.2.5")), "{m:?}");
    assert!(!m.iter().any(|l| l.contains("LOCAL")), "{m:?}");
}

/// On a dual-stack node, a single-stack Service's node ports are on the addresses of its own
/// family only (kube-proxy's `node-port-other-family` difference, found by the differential test).
#[test]
fn node_ports_stay_in_the_services_families() {
    let v6: IpAddr = "fd00:50::10".parse().unwrap();
    let mut view = node();
    view.nodeport_addresses.insert(v6);
    view.addresses.insert(v6);
    let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: np}\nspec:\n  type: NodePort\n  clusterIP: 10.96.0.7\n  ports: [{name: t, port: 80, nodePort: 30080}, {name: s, port: 9, protocol: SCTP, nodePort: 30009}]\n";
    let mut d = Derived::new("rr", vec![]);
    d.set_node(view.clone());
    d.derive_all(&store(yaml, SourceId::Api, &[]));
    let keys: Vec<String> = d.desired().services.keys().map(|k| k.to_string()).collect();
    assert!(keys.iter().all(|k| !k.contains("fd00")), "{keys:?}");
    assert!(keys.iter().any(|k| k.contains("192.168.1.2")), "{keys:?}");
    assert!(
        !members(&d).iter().any(|m| m.contains("fd00")),
        "{:?}",
        members(&d)
    );
    // A dual-stack Service gets them in both.
    let dual = yaml.replace("clusterIP: 10.96.0.7", "clusterIP: 10.96.0.7\n  clusterIPs: [10.96.0.7, \"fd00:96::7\"]\n  ipFamilyPolicy: RequireDualStack");
    let mut d = Derived::new("rr", vec![]);
    d.set_node(view);
    d.derive_all(&store(&dual, SourceId::Api, &[]));
    let keys: Vec<String> = d.desired().services.keys().map(|k| k.to_string()).collect();
    assert!(keys.iter().any(|k| k.contains("fd00:50::10")), "{keys:?}");
}

const LOCAL_LB: &str = "apiVersion: v1
kind: Service
metadata: {name: lb}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.8
  externalTrafficPolicy: Local
  healthCheckNodePort: 32000
  loadBalancerSourceRanges: [198.51.100.0/24]
  ports: [{port: 80, nodePort: 30081}]
status: {loadBalancer: {ingress: [{ip: 192.0.2.80}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: lb-1, labels: {kubernetes.io/service-name: lb}}
addressType: IPv4
ports: [{port: 8080}]
endpoints:
- {addresses: [10.244.1.6], nodeName: n1}
- {addresses: [10.244.2.6], nodeName: n2}
";

/// externalTrafficPolicy Local: external traffic (node port, load balancer) only to local
/// endpoints, no SNAT (the LOCAL sets), and the health check port; cluster traffic to all.
#[test]
fn external_traffic_policy_local_keeps_external_traffic_on_the_node() {
    let d = api(LOCAL_LB);
    assert_eq!(eps(&d, "192.168.1.2 30081/tcp"), vec!["10.244.1.6:8080"]);
    assert_eq!(eps(&d, "192.0.2.80 80/tcp"), vec!["10.244.1.6:8080"]);
    assert_eq!(
        eps(&d, "10.96.0.8 80/tcp"),
        vec!["10.244.1.6:8080", "10.244.2.6:8080"]
    );
    let m = members(&d);
    for want in [
        "SVCPROXY-NODE-PORT-LOCAL-TCP: 30081",
        "SVCPROXY-LOAD-BALANCER: 192.0.2.80,tcp:80",
        "SVCPROXY-LOAD-BALANCER-LOCAL: 192.0.2.80,tcp:80",
        "SVCPROXY-LOAD-BALANCER-FW: 192.0.2.80,tcp:80",
        "SVCPROXY-LB-SOURCE-CIDR: 192.0.2.80,tcp:80,198.51.100.0/24",
        // The node's own IP is in no range: the node may not reach it either.
        "SVCPROXY-LB-NO-NODE: 192.0.2.80,tcp:80",
        "SVCPROXY-HEALTH-CHECK-NODE-PORT: 32000",
        "SVCPROXY-VIPS: 192.0.2.80",
    ] {
        assert!(m.contains(&want.to_string()), "{want} missing from {m:?}");
    }
    assert_eq!(
        d.health().get(&32000),
        Some(&(NamespacedName::new("default", "lb"), 1))
    );

    // On a node without a local endpoint: kube-proxy's IPVS fallback to the cluster's for
    // external traffic (#97081), and the health check reports none (503).
    let mut other = Derived::new("rr", vec![]);
    other.set_node(NodeView {
        name: "n3".into(),
        ..node()
    });
    other.derive_all(&store(LOCAL_LB, SourceId::Api, &[]));
    assert_eq!(eps(&other, "192.168.1.2 30081/tcp").len(), 2);
    assert_eq!(other.health().get(&32000).map(|h| h.1), Some(0));
    // kube-proxy's no_local_endpoints gauge: one Service, external policy, IPv4; none on n1.
    assert_eq!(
        other.no_local_endpoints(),
        BTreeMap::from([((TrafficPolicy::External, false), 1)])
    );
    assert!(d.no_local_endpoints().is_empty());

    // A range that holds the node's IP lets the node reach the load balancer.
    let near = LOCAL_LB.replace("198.51.100.0/24", "192.168.1.0/24");
    let m = members(&api(&near));
    assert!(m.contains(&"SVCPROXY-LB-SOURCE-IP: 192.0.2.80,tcp:80,192.0.2.80".to_string()));
    assert!(!m.iter().any(|l| l.contains("NO-NODE")), "{m:?}");
    // 0.0.0.0/0 means every source: no filter.
    let open = LOCAL_LB.replace("198.51.100.0/24", "0.0.0.0/0");
    assert!(!members(&api(&open))
        .iter()
        .any(|l| l.contains("-FW") || l.contains("SOURCE")));
}

/// internalTrafficPolicy Local: cluster traffic only to local endpoints, none when there are
/// none (a ClusterIP Service is not reachable from outside, so it has no fallback).
#[test]
fn internal_traffic_policy_local_has_no_fallback() {
    let yaml = LOCAL_LB
        .replace("type: LoadBalancer", "type: ClusterIP")
        .replace(
            "externalTrafficPolicy: Local",
            "internalTrafficPolicy: Local",
        )
        .replace("  healthCheckNodePort: 32000\n", "")
        .replace(", nodePort: 30081", "")
        .replace(
            "status: {loadBalancer: {ingress: [{ip: 192.0.2.80}]}}\n",
            "",
        );
    assert!(!yaml.contains("ingress"));
    let d = api(&yaml);
    assert_eq!(eps(&d, "10.96.0.8 80/tcp"), vec!["10.244.1.6:8080"]);
    let mut other = Derived::new("rr", vec![]);
    other.set_node(NodeView {
        name: "n3".into(),
        ..node()
    });
    other.derive_all(&store(&yaml, SourceId::Api, &[]));
    assert_eq!(eps(&other, "10.96.0.8 80/tcp"), Vec::<String>::new());
    assert_eq!(
        other.no_local_endpoints(),
        BTreeMap::from([((TrafficPolicy::Internal, false), 1)])
    );
    // Without any endpoint at all, kube-proxy counts nothing.
    let empty = yaml.replace(
        "- {addresses: [10.244.1.6], nodeName: n1}\n- {addresses: [10.244.2.6], nodeName: n2}\n",
        "",
    );
    assert_ne!(empty, yaml);
    other.derive_all(&store(&empty, SourceId::Api, &[]));
    assert!(other.no_local_endpoints().is_empty());
}

/// Terminating endpoints for Local policies: a local serving terminating endpoint is used when
/// no local one is ready.
#[test]
fn local_policies_fall_back_to_local_terminating_endpoints() {
    let yaml = LOCAL_LB.replace(
        "- {addresses: [10.244.1.6], nodeName: n1}",
        "- {addresses: [10.244.1.6], nodeName: n1, conditions: {ready: false, serving: true, terminating: true}}",
    );
    let d = api(&yaml);
    assert_eq!(eps(&d, "192.0.2.80 80/tcp"), vec!["10.244.1.6:8080"]);
    assert_eq!(
        eps(&d, "10.96.0.8 80/tcp"),
        vec!["10.244.2.6:8080"],
        "cluster traffic takes the ready one"
    );
}

const HINTED: &str = "apiVersion: v1
kind: Service
metadata: {name: h}
spec: {clusterIP: 10.96.0.9, ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: h-1, labels: {kubernetes.io/service-name: h}}
addressType: IPv4
ports: [{port: 8080}]
endpoints:
- {addresses: [10.244.1.7], zone: a, hints: {forZones: [{name: a}]}}
- {addresses: [10.244.2.7], zone: b, hints: {forZones: [{name: b}]}}
";

#[test]
fn topology_hints_keep_traffic_in_the_zone_when_every_endpoint_has_one() {
    assert_eq!(
        eps(&api(HINTED), "10.96.0.9 80/tcp"),
        vec!["10.244.1.7:8080"]
    );
    let partial = HINTED.replace(", hints: {forZones: [{name: b}]}", "");
    assert_eq!(
        eps(&api(&partial), "10.96.0.9 80/tcp").len(),
        2,
        "one unhinted: all"
    );
    let elsewhere = HINTED.replace("{name: a}", "{name: c}");
    assert_eq!(
        eps(&api(&elsewhere), "10.96.0.9 80/tcp").len(),
        2,
        "none for our zone: all"
    );
    let by_node = HINTED
        .replace(
            "hints: {forZones: [{name: a}]}",
            "hints: {forZones: [{name: a}], forNodes: [{name: n9}]}",
        )
        .replace(
            "hints: {forZones: [{name: b}]}",
            "hints: {forZones: [{name: b}], forNodes: [{name: n1}]}",
        );
    assert_eq!(
        eps(&api(&by_node), "10.96.0.9 80/tcp"),
        vec!["10.244.2.7:8080"],
        "node hints win over zone hints"
    );
}

/// An external IP that is one of the node's own addresses is not put on the dummy device;
/// its virtual service is marked ours instead.
#[test]
fn an_external_ip_on_the_node_is_marked_not_bound() {
    let yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: e}}\nspec: {{clusterIP: 10.96.0.10, externalIPs: [{NODE_IP}, 192.0.2.10], externalTrafficPolicy: Local, ports: [{{port: 80}}]}}\n"
    );
    let d = api(&yaml);
    assert_eq!(
        d.desired().bound,
        BTreeSet::from(["10.96.0.10".parse().unwrap(), "192.0.2.10".parse().unwrap()])
    );
    let m = members(&d);
    assert!(
        m.contains(&format!("SVCPROXY-OWNED: {NODE_IP},tcp:80")),
        "{m:?}"
    );
    assert!(
        m.contains(&format!("SVCPROXY-EXTERNAL-IP-LOCAL: {NODE_IP},tcp:80")),
        "{m:?}"
    );
    assert!(!m.contains(&format!("SVCPROXY-VIPS: {NODE_IP}")), "{m:?}");
}
