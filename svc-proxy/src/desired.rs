//! Turns the Services in the store, with their EndpointSlices (or attached pods), into the desired
//! kernel state. Pure: reads the store, touches nothing.

use crate::model::{Desired, DesiredService, LoopbackEntry, ServiceKey, VirtualService};
use crate::objects::{EndpointSlice, NamespacedName, Service, ServicePort, TargetPort};
use crate::store::{SourceId, Store};
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

/// Builds the desired state of the Services `names` (taken in the order given; callers pass
/// namespace/name order). A VIP:port/protocol that an earlier Service already claims is skipped
/// and reported in the returned list.
pub fn build<'a>(
    names: impl IntoIterator<Item = &'a NamespacedName>,
    store: &Store,
    default_scheduler: &str,
) -> (Desired, Vec<String>) {
    let mut desired = Desired::default();
    let mut conflicts = Vec::new();
    for name in names {
        let Some((source, svc)) = store.service(name) else {
            continue;
        };
        let slices = store.slices(name);
        for (port, key) in virtual_services(svc) {
            let v4 = key.addr.is_ipv4();
            let origin = format!(
                "{name} port {}/{}",
                port.port,
                port.protocol.as_str().to_uppercase()
            );
            let endpoints = if !slices.is_empty() {
                slice_endpoints(&slices, port, v4)
            } else if source != SourceId::Api {
                pod_endpoints(svc, store, port, v4, &origin)
            } else {
                // The API's EndpointSlice controller speaks for the Services it knows; pods
                // attached on this node are no stand-in for their endpoints.
                BTreeSet::new()
            };
            if let Some(other) = desired.services.get(&key) {
                conflicts.push(format!(
                    "{origin}: {key} is already used by {}; skipped",
                    other.origin
                ));
                continue;
            }
            for ep in &endpoints {
                desired
                    .loopback
                    .insert(LoopbackEntry::for_endpoint(*ep, port.protocol));
            }
            let service = VirtualService {
                key,
                scheduler: svc
                    .scheduler
                    .clone()
                    .unwrap_or_else(|| default_scheduler.to_string()),
                persistence: svc.affinity_timeout,
            };
            desired.services.insert(
                key,
                DesiredService {
                    service,
                    endpoints,
                    origin,
                },
            );
        }
    }
    (desired, conflicts)
}

/// The virtual services a Service asks for: each of its ports on each of its distinct VIPs
/// (cluster IPs, then external IPs), port by port.
pub fn virtual_services(svc: &Service) -> Vec<(&ServicePort, ServiceKey)> {
    let mut vips: Vec<IpAddr> = Vec::new();
    for ip in svc.cluster_ips.iter().chain(&svc.external_ips) {
        if !vips.contains(ip) {
            vips.push(*ip);
        }
    }
    svc.ports
        .iter()
        .flat_map(|port| {
            vips.iter().map(move |vip| {
                let key = ServiceKey {
                    addr: *vip,
                    protocol: port.protocol,
                    port: port.port,
                };
                (port, key)
            })
        })
        .collect()
}

/// Endpoints of one Service port from its EndpointSlices: the ready ones, or, when none is ready,
/// the serving ones that are terminating (Kubernetes' fallback so traffic is not dropped).
fn slice_endpoints(
    slices: &[&EndpointSlice],
    port: &ServicePort,
    v4: bool,
) -> BTreeSet<SocketAddr> {
    let mut ready = BTreeSet::new();
    let mut terminating = BTreeSet::new();
    for slice in slices.iter().filter(|s| s.ipv6 != v4) {
        let Some(sp) = slice
            .ports
            .iter()
            .find(|p| p.name == port.name && p.protocol == port.protocol)
        else {
            continue;
        };
        for ep in &slice.endpoints {
            let into = if ep.ready {
                &mut ready
            } else if ep.serving && ep.terminating {
                &mut terminating
            } else {
                continue;
            };
            for addr in &ep.addresses {
                into.insert(SocketAddr::new(*addr, sp.port));
            }
        }
    }
    if ready.is_empty() {
        terminating
    } else {
        ready
    }
}

/// Endpoints of one Service port from the pods cni-bridge attached whose labels match.
fn pod_endpoints(
    svc: &Service,
    store: &Store,
    port: &ServicePort,
    v4: bool,
    origin: &str,
) -> BTreeSet<SocketAddr> {
    let Some(selector) = &svc.selector else {
        return BTreeSet::new();
    };
    let selected = store.pods_matching(&svc.namespace, selector);
    let target = match &port.target_port {
        TargetPort::Number(n) => *n,
        TargetPort::Named(name) => {
            if !selected.is_empty() {
                log::warn!(
                    "{origin}: targetPort {name:?} is a port name, which pods from attachment \
                     records cannot resolve (they do not list container ports); give an \
                     EndpointSlice or a port number"
                );
            }
            return BTreeSet::new();
        }
    };
    selected
        .iter()
        .flat_map(|p| p.addresses.iter())
        .filter(|a| a.is_ipv4() == v4)
        .map(|a| SocketAddr::new(*a, target))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::parse;
    use crate::objects::{Object, Pod};
    use crate::store::Delta;
    use crate::validate::Filter;

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

    fn run(yaml: &str, pods: &[Pod]) -> (Desired, Vec<String>) {
        let st = store(yaml, SourceId::Files, pods);
        let names: Vec<NamespacedName> = st.service_names().cloned().collect();
        build(&names, &st, "rr")
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

    fn eps(d: &Desired, key: &str) -> Vec<String> {
        let (addr, rest) = key.rsplit_once(' ').unwrap();
        let (port, proto) = rest.split_once('/').unwrap();
        let k = ServiceKey {
            addr: addr.parse().unwrap(),
            port: port.parse().unwrap(),
            protocol: proto.parse().unwrap(),
        };
        d.services[&k]
            .endpoints
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    const SCENARIO: &str = include_str!("../../conf/services/app-service.yaml");

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
        let (d, conflicts) = run(SCENARIO, &pods);
        assert!(conflicts.is_empty());
        assert_eq!(
            eps(&d, "10.100.100.100 8080/tcp"),
            vec!["10.0.0.11:8080", "10.0.0.21:8080"]
        );
        assert_eq!(
            d.loopback.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
            vec![
                "10.0.0.11,tcp:8080,10.0.0.11",
                "10.0.0.21,tcp:8080,10.0.0.21"
            ]
        );
        assert_eq!(d.services.values().next().unwrap().service.scheduler, "rr");
    }

    /// Records stand in for EndpointSlices only for Services from files: the API's
    /// EndpointSlice controller speaks for the API's Services.
    #[test]
    fn pods_from_records_never_feed_a_service_from_the_api() {
        let pods = [pod("default", "p1", "10.0.0.11", &[("component", "app")])];
        let st = store(SCENARIO, SourceId::Api, &pods);
        let names: Vec<NamespacedName> = st.service_names().cloned().collect();
        let (d, _) = build(&names, &st, "rr");
        assert_eq!(eps(&d, "10.100.100.100 8080/tcp"), Vec::<String>::new());
    }

    /// A named targetPort is fine with EndpointSlices (they carry the port); pods from records
    /// cannot resolve it, so that port gets no endpoints from them (and a warning).
    #[test]
    fn a_named_target_port_needs_an_endpoint_slice() {
        let named = SCENARIO.replace("targetPort: 8080", "targetPort: web");
        assert_ne!(named, SCENARIO, "the scenario names its targetPort");
        let pods = [pod("default", "p1", "10.0.0.11", &[("component", "app")])];
        let (d, _) = run(&named, &pods);
        assert_eq!(eps(&d, "10.100.100.100 8080/tcp"), Vec::<String>::new());
        let with_slice = format!(
            "{named}---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: a1, labels: {{kubernetes.io/service-name: app-service}}}}\naddressType: IPv4\nports: [{{port: 9376}}]\nendpoints: [{{addresses: [10.0.0.11]}}]\n"
        );
        let (d, _) = run(&with_slice, &pods);
        assert_eq!(eps(&d, "10.100.100.100 8080/tcp"), vec!["10.0.0.11:9376"]);
    }

    #[test]
    fn endpoint_slices_win_over_pods_and_fall_back_to_terminating() {
        let yaml = format!(
            "{SCENARIO}---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: a1, labels: {{kubernetes.io/service-name: app-service}}}}
addressType: IPv4
ports: [{{port: 9090}}]
endpoints:
- {{addresses: [10.1.0.1]}}
- {{addresses: [10.1.0.2], conditions: {{ready: false, serving: true, terminating: true}}}}
- {{addresses: [10.1.0.3], conditions: {{ready: false, serving: false}}}}
"
        );
        let pods = [pod("default", "p1", "10.0.0.11", &[("component", "app")])];
        let (d, _) = run(&yaml, &pods);
        assert_eq!(eps(&d, "10.100.100.100 8080/tcp"), vec!["10.1.0.1:9090"]);

        let only_terminating = yaml.replace("- {addresses: [10.1.0.1]}\n", "");
        let (d, _) = run(&only_terminating, &pods);
        assert_eq!(eps(&d, "10.100.100.100 8080/tcp"), vec!["10.1.0.2:9090"]);
    }

    #[test]
    fn cluster_and_external_ips_get_every_port_and_family_matched_endpoints() {
        let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: s, annotations: {svc-proxy/scheduler: sh}}\nspec:\n  clusterIPs: [10.96.0.5, \"fd00::5\"]\n  externalIPs: [192.0.2.5]\n  selector: {app: s}\n  sessionAffinity: ClientIP\n  ports: [{name: a, port: 80, targetPort: 8080}, {name: b, port: 53, protocol: UDP}]\n";
        let mut p = pod("default", "p1", "10.0.0.11", &[("app", "s")]);
        p.addresses.push("fd00::11".parse().unwrap());
        let (d, _) = run(yaml, &[p]);
        assert_eq!(d.services.len(), 6);
        assert_eq!(eps(&d, "fd00::5 80/tcp"), vec!["[fd00::11]:8080"]);
        assert_eq!(eps(&d, "192.0.2.5 53/udp"), vec!["10.0.0.11:53"]);
        assert!(d
            .services
            .values()
            .all(|s| s.service.scheduler == "sh" && s.service.persistence == Some(10800)));
        // One loop-back entry per endpoint and protocol:port, in the set of its family.
        let entries: Vec<(String, &str)> = d
            .loopback
            .iter()
            .map(|e| (e.to_string(), e.set()))
            .collect();
        assert_eq!(
            entries,
            vec![
                ("10.0.0.11,tcp:8080,10.0.0.11".into(), "SVCPROXY-LOOP-BACK"),
                ("10.0.0.11,udp:53,10.0.0.11".into(), "SVCPROXY-LOOP-BACK"),
                ("fd00::11,tcp:8080,fd00::11".into(), "SVCPROXY-6-LOOP-BACK"),
                ("fd00::11,udp:53,fd00::11".into(), "SVCPROXY-6-LOOP-BACK"),
            ]
        );
    }

    #[test]
    fn a_vip_port_claimed_twice_goes_to_the_first_service() {
        let yaml = format!(
            "{SCENARIO}---\n{}",
            SCENARIO.replace("name: app-service", "name: aaa")
        );
        let (d, conflicts) = run(&yaml, &[]);
        assert_eq!(d.services.len(), 1);
        assert_eq!(
            d.services.values().next().unwrap().origin,
            "default/aaa port 8080/TCP"
        );
        assert_eq!(
            conflicts,
            vec!["default/app-service port 8080/TCP: 10.100.100.100:8080/tcp is already used by default/aaa port 8080/TCP; skipped"]
        );
    }
}
