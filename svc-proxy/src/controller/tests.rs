//! The controller fed deltas directly (no files, no API), against the recording dataplane.

use super::*;
use crate::dataplane::fake::Recording;
use crate::manifest::parse;
use crate::model::{Member, ObservedDest, ObservedService, SetId, SetKind, VirtualService};
use crate::objects::{Kind, Object, ObjectRef, Pod};
use crate::source::files::FileSource;
use crate::source::records::RecordSource;
use crate::validate::Filter;
use nodenet::Protocol::{Tcp, Udp};
use std::path::PathBuf;

const SCENARIO: &str = include_str!("../../../conf/services/app-service.yaml");
const RESYNC: Duration = Duration::from_secs(30);
const GRACE: Duration = Duration::from_secs(60);

fn config(min_sync: Duration) -> Config {
    Config {
        scheduler: "rr".into(),
        resync: RESYNC,
        min_sync,
        graceful_timeout: GRACE,
        nodeport_addresses: Default::default(),
        pod_routes: false,
        excluded: Vec::new(),
    }
}

/// A controller over the recording kernel whose store waits for the files' and records'
/// initial lists.
fn controller(kernel: Recording, now: Instant) -> Controller<Recording> {
    controller_with(kernel, now, Duration::ZERO)
}

fn controller_with(kernel: Recording, now: Instant, min_sync: Duration) -> Controller<Recording> {
    let mut store = Store::new("n1");
    store.expect(SourceId::Files, Kind::Service);
    store.expect(SourceId::Files, Kind::EndpointSlice);
    store.expect(SourceId::Records, Kind::Pod);
    Controller::new(
        config(min_sync),
        store,
        kernel,
        Arc::new(Metrics::default()),
        Arc::new(Health::new(RESYNC * 2, false)),
        now,
    )
}

fn objects(yaml: &str) -> Vec<Object> {
    parse("t.yaml", yaml, false, &Filter::default()).unwrap()
}

fn pod(id: &str, ip: &str) -> Pod {
    Pod {
        namespace: "default".into(),
        name: format!("home/{id}.eth0"),
        addresses: vec![ip.parse().unwrap()],
        labels: BTreeMap::from([("component".to_string(), "app".to_string())]),
    }
}

fn pod_ref(id: &str) -> ObjectRef {
    ObjectRef::new(Kind::Pod, "default", format!("home/{id}.eth0"))
}

/// The initial lists: `yaml`'s objects from the files, `pods` from the records.
fn list(c: &mut Controller<Recording>, yaml: &str, pods: &[Pod], now: Instant) {
    let objs = objects(yaml);
    for kind in [Kind::Service, Kind::EndpointSlice] {
        let objects = objs.iter().filter(|o| o.kind() == kind).cloned().collect();
        c.receive(
            SourceId::Files,
            Delta::Replace {
                kind,
                objects,
                kept: vec![],
            },
            now,
        );
    }
    c.receive(
        SourceId::Records,
        Delta::Replace {
            kind: Kind::Pod,
            objects: pods.iter().cloned().map(Object::Pod).collect(),
            kept: vec![],
        },
        now,
    );
}

/// `yaml`'s objects changed in the files.
fn apply(c: &mut Controller<Recording>, yaml: &str, now: Instant) {
    for o in objects(yaml) {
        c.receive(SourceId::Files, Delta::Apply(o), now);
    }
    c.step(now);
}

fn send(c: &mut Controller<Recording>, source: SourceId, delta: Delta, now: Instant) {
    c.receive(source, delta, now);
    c.step(now);
}

/// The scenario's Service with pod c1 (10.0.0.11), synced; the recording starts empty.
fn synced_scenario() -> (Controller<Recording>, Instant) {
    let t0 = Instant::now();
    let mut c = controller(Recording::default(), t0);
    list(&mut c, SCENARIO, &[pod("c1", "10.0.0.11")], t0);
    c.step(t0);
    c.dp.take();
    (c, t0)
}

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

fn lb_set() -> SetId {
    SetId {
        kind: SetKind::LoopBack,
        v6: false,
    }
}

fn add_lb(ep: SocketAddr, p: nodenet::Protocol) -> Op {
    Op::AddMember {
        set: lb_set(),
        member: Member::loopback(ep, p),
    }
}

fn del_lb(ep: SocketAddr, p: nodenet::Protocol) -> Op {
    Op::DelMember {
        set: lb_set(),
        member: Member::loopback(ep, p),
    }
}

/// The set-member operations of a virtual service's removal (its cluster-IP entry, its VIP).
fn del_vs_members(k: ServiceKey) -> Vec<Op> {
    vec![
        Op::DelMember {
            set: SetId::of(SetKind::ClusterIp, k.addr),
            member: Member::service(&k),
        },
        Op::DelMember {
            set: SetId::of(SetKind::VipAddresses, k.addr),
            member: Member::Ip(k.addr),
        },
    ]
}

fn app() -> ServiceKey {
    key("10.100.100.100", Tcp, 8080)
}

fn weights(c: &Controller<Recording>, k: &ServiceKey) -> Vec<(String, u32)> {
    c.dp.state.services[k]
        .dests
        .iter()
        .map(|(a, d)| (a.to_string(), d.weight))
        .collect()
}

fn udp_service(ip: &str, port: u16, eps: &[&str]) -> String {
    let mut y = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: u}}\nspec: {{clusterIP: {ip}, ports: [{{protocol: UDP, port: {port}}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: u-1, labels: {{kubernetes.io/service-name: u}}}}\naddressType: IPv4\nports: [{{protocol: UDP, port: {port}}}]\nendpoints:\n"
    );
    for e in eps {
        y.push_str(&format!("- addresses: [{e}]\n"));
    }
    y
}

#[test]
fn scenario_from_pods_is_programmed_and_follows_pod_add_and_del() {
    let t0 = Instant::now();
    let mut c = controller(Recording::default(), t0);
    list(&mut c, SCENARIO, &[pod("c1", "10.0.0.11")], t0);
    c.step(t0);
    let k = app();
    assert_eq!(
        c.dp.state.addresses,
        BTreeSet::from(["10.100.100.100".parse().unwrap()])
    );
    assert_eq!(
        c.dp.state.services[&k].service,
        VirtualService {
            key: k,
            scheduler: "rr".into(),
            persistence: None,
            flags: 0
        }
    );
    assert_eq!(weights(&c, &k), vec![("10.0.0.11:8080".into(), 1)]);
    c.dp.take();

    send(
        &mut c,
        SourceId::Records,
        Delta::Apply(Object::Pod(pod("c2", "10.0.0.21"))),
        t0,
    );
    assert_eq!(
        c.dp.take(),
        vec![
            add_lb(sa("10.0.0.21:8080"), Tcp),
            Op::AddDest {
                service: k,
                dest: sa("10.0.0.21:8080"),
                weight: 1
            },
        ]
    );
    assert_eq!(
        c.dp.full_observes, 1,
        "a change syncs against the cached kernel view"
    );

    send(&mut c, SourceId::Records, Delta::Delete(pod_ref("c2")), t0);
    assert_eq!(
        c.dp.take(),
        vec![
            Op::UpdateDest {
                service: k,
                dest: sa("10.0.0.21:8080"),
                weight: 0
            },
            del_lb(sa("10.0.0.21:8080"), Tcp),
        ]
    );
}

/// A node whose sources have not all listed (the API unreachable at start) keeps its kernel
/// state as it is: nothing is ensured, dumped, planned or applied, also at resync time.
#[test]
fn nothing_is_touched_until_every_source_has_listed() {
    let t0 = Instant::now();
    let mut c = controller(Recording::default(), t0);
    for o in objects(SCENARIO) {
        c.receive(SourceId::Files, Delta::Apply(o), t0);
    }
    c.receive(
        SourceId::Records,
        Delta::Replace {
            kind: Kind::Pod,
            objects: vec![Object::Pod(pod("c1", "10.0.0.11"))],
            kept: vec![],
        },
        t0,
    );
    c.step(t0);
    c.tick(t0 + RESYNC);
    c.resync(t0 + RESYNC * 2);
    assert_eq!(c.dp.take(), vec![]);
    assert_eq!((c.dp.base_ensured, c.dp.full_observes), (0, 0));
    assert!(!c.started());

    for kind in [Kind::Service, Kind::EndpointSlice] {
        let objects = objects(SCENARIO)
            .into_iter()
            .filter(|o| o.kind() == kind)
            .collect();
        c.receive(
            SourceId::Files,
            Delta::Replace {
                kind,
                objects,
                kept: vec![],
            },
            t0,
        );
    }
    c.step(t0 + RESYNC * 2);
    assert!(c.started());
    assert_eq!(weights(&c, &app()), vec![("10.0.0.11:8080".into(), 1)]);
    assert_eq!((c.dp.base_ensured, c.dp.full_observes), (1, 1));
}

/// A relist (after a watch error or an API server restart) that lists what is already there
/// changes nothing; one that misses an object removes only that object.
#[test]
fn a_relist_of_the_same_objects_changes_nothing() {
    let (mut c, t0) = synced_scenario();
    let udp = udp_service("10.100.100.101", 53, &["10.0.0.5"]);
    apply(&mut c, &udp, t0);
    c.dp.take();
    let all = objects(&format!("{SCENARIO}---\n{udp}"));
    let relist = |c: &mut Controller<Recording>, objs: &[Object]| {
        for kind in [Kind::Service, Kind::EndpointSlice] {
            let objects = objs.iter().filter(|o| o.kind() == kind).cloned().collect();
            c.receive(
                SourceId::Files,
                Delta::Replace {
                    kind,
                    objects,
                    kept: vec![],
                },
                t0,
            );
        }
        c.step(t0);
    };
    relist(&mut c, &all);
    assert_eq!(c.dp.take(), vec![]);
    relist(&mut c, &objects(SCENARIO));
    let udp_key = key("10.100.100.101", Udp, 53);
    let mut want = vec![Op::DelService(udp_key), del_lb(sa("10.0.0.5:53"), Udp)];
    want.extend(del_vs_members(udp_key));
    want.push(Op::DelAddress(udp_key.addr));
    assert_eq!(c.dp.take(), want);
    assert!(c.dp.state.services.contains_key(&app()));
}

#[test]
fn the_minimum_sync_period_holds_a_second_change_back() {
    let t0 = Instant::now();
    let mut c = controller_with(Recording::default(), t0, Duration::from_secs(1));
    list(&mut c, SCENARIO, &[pod("c1", "10.0.0.11")], t0);
    c.step(t0);
    c.dp.take();
    let t1 = t0 + Duration::from_millis(100);
    send(
        &mut c,
        SourceId::Records,
        Delta::Apply(Object::Pod(pod("c2", "10.0.0.21"))),
        t1,
    );
    assert_eq!(c.dp.take(), vec![], "held back");
    let due = c.deadline(t1);
    assert!(due <= c.last_sync.unwrap() + Duration::from_secs(1) && due > t1);
    c.step(c.last_sync.unwrap() + Duration::from_secs(1));
    assert_eq!(c.dp.take().len(), 2, "synced when the period is over");
}

#[test]
fn a_failing_service_backs_off_without_holding_back_the_others() {
    let t0 = Instant::now();
    let mut kernel = Recording::default();
    kernel.fail.insert(Scope::Service(app()));
    let mut c = controller(kernel, t0);
    let udp_yaml = udp_service("10.100.100.101", 53, &["10.0.0.5"]);
    list(
        &mut c,
        &format!("{SCENARIO}---\n{udp_yaml}"),
        &[pod("c1", "10.0.0.11")],
        t0,
    );
    c.step(t0);
    let udp = key("10.100.100.101", Udp, 53);
    assert_eq!(
        weights(&c, &udp),
        vec![("10.0.0.5:53".into(), 1)],
        "the healthy service is synced"
    );
    assert!(!c.dp.state.services.contains_key(&app()));
    assert_eq!(c.errors(), 1);
    assert_eq!(c.deadline(t0), t0 + MIN_BACKOFF);

    c.dp.fail.clear();
    c.dp.take();
    c.tick(t0 + MIN_BACKOFF / 2);
    assert_eq!(c.dp.take(), vec![], "still backing off");
    c.tick(t0 + MIN_BACKOFF);
    assert_eq!(
        c.dp.service_observes,
        vec![app()],
        "re-read before retrying"
    );
    assert_eq!(weights(&c, &app()), vec![("10.0.0.11:8080".into(), 1)]);

    // A failure that persists doubles the delay.
    c.dp.fail.insert(Scope::Service(udp));
    let t1 = t0 + Duration::from_secs(2);
    apply(
        &mut c,
        &udp_service("10.100.100.101", 53, &["10.0.0.6"]),
        t1,
    );
    assert_eq!(c.deadline(t1), t1 + MIN_BACKOFF);
    c.tick(t1 + MIN_BACKOFF);
    assert_eq!(c.deadline(t1 + MIN_BACKOFF), t1 + MIN_BACKOFF * 3);
    assert_eq!(c.errors(), 3);
}

#[test]
fn a_change_after_a_backoff_expired_also_retries_the_failed_service() {
    let t0 = Instant::now();
    let mut kernel = Recording::default();
    kernel.fail.insert(Scope::Service(app()));
    let mut c = controller(kernel, t0);
    let udp_yaml = udp_service("10.100.100.101", 53, &["10.0.0.5"]);
    list(
        &mut c,
        &format!("{SCENARIO}---\n{udp_yaml}"),
        &[pod("c1", "10.0.0.11")],
        t0,
    );
    c.step(t0);
    c.dp.fail.clear();
    c.dp.take();
    let udp = key("10.100.100.101", Udp, 53);

    apply(
        &mut c,
        &udp_service("10.100.100.101", 53, &["10.0.0.6"]),
        t0 + MIN_BACKOFF / 2,
    );
    assert_eq!(weights(&c, &udp), vec![("10.0.0.6:53".into(), 1)]);
    assert!(
        !c.dp.state.services.contains_key(&app()),
        "still backing off"
    );

    apply(
        &mut c,
        &udp_service("10.100.100.101", 53, &["10.0.0.7"]),
        t0 + MIN_BACKOFF,
    );
    assert_eq!(weights(&c, &udp), vec![("10.0.0.7:53".into(), 1)]);
    assert_eq!(weights(&c, &app()), vec![("10.0.0.11:8080".into(), 1)]);
}

#[test]
fn tcp_removal_drains_at_weight_zero_then_deletes_udp_at_once() {
    let t0 = Instant::now();
    let mut c = controller(Recording::default(), t0);
    let udp_yaml = udp_service("10.100.100.101", 53, &["10.0.0.5", "10.0.0.6"]);
    list(
        &mut c,
        &format!("{SCENARIO}---\n{udp_yaml}"),
        &[pod("c1", "10.0.0.11"), pod("c2", "10.0.0.21")],
        t0,
    );
    c.step(t0);
    c.dp.set_conns(&app(), sa("10.0.0.11:8080"), 3);
    c.dp.take();

    send(&mut c, SourceId::Records, Delta::Delete(pod_ref("c1")), t0);
    assert_eq!(
        weights(&c, &app()),
        vec![("10.0.0.11:8080".into(), 0), ("10.0.0.21:8080".into(), 1)]
    );
    assert_eq!(c.deadline(t0), t0 + DRAIN_POLL);
    c.tick(t0 + DRAIN_POLL);
    assert_eq!(
        weights(&c, &app()).len(),
        2,
        "connections left: still draining"
    );
    c.dp.set_conns(&app(), sa("10.0.0.11:8080"), 0);
    c.tick(t0 + DRAIN_POLL * 2);
    assert_eq!(
        weights(&c, &app()),
        vec![("10.0.0.21:8080".into(), 1)],
        "idle: deleted"
    );

    let udp = key("10.100.100.101", Udp, 53);
    c.dp.set_conns(&udp, sa("10.0.0.6:53"), 4);
    c.dp.take();
    apply(
        &mut c,
        &udp_service("10.100.100.101", 53, &["10.0.0.5"]),
        t0 + DRAIN_POLL * 2,
    );
    assert!(c.dp.take().contains(&Op::DelDest {
        service: udp,
        dest: sa("10.0.0.6:53")
    }));
}

#[test]
fn a_drain_with_connections_ends_at_the_graceful_timeout() {
    let (mut c, t0) = synced_scenario();
    c.dp.set_conns(&app(), sa("10.0.0.11:8080"), 3);
    send(&mut c, SourceId::Records, Delta::Delete(pod_ref("c1")), t0);
    c.tick(t0 + GRACE - Duration::from_secs(1));
    assert_eq!(weights(&c, &app()), vec![("10.0.0.11:8080".into(), 0)]);
    c.tick(t0 + GRACE);
    assert_eq!(weights(&c, &app()), vec![]);
}

#[test]
fn restart_adopts_kernel_state_and_repairs_only_what_differs() {
    let mut kernel = Recording::default();
    let k = app();
    kernel.state.addresses.insert(k.addr);
    let mut d11 = ObservedDest::new(1);
    d11.active_conns = 9;
    let foreign = key("192.168.0.1", Tcp, 80);
    kernel.state.services.insert(
        k,
        ObservedService {
            service: VirtualService {
                key: k,
                scheduler: "rr".into(),
                persistence: None,
                flags: 0,
            },
            dests: BTreeMap::from([
                (sa("10.0.0.11:8080"), d11),
                (sa("10.0.0.21:8080"), ObservedDest::new(0)),
            ]),
        },
    );
    kernel.state.services.insert(
        foreign,
        ObservedService {
            service: VirtualService {
                key: foreign,
                scheduler: "wlc".into(),
                persistence: None,
                flags: 0,
            },
            dests: BTreeMap::new(),
        },
    );
    for ep in ["10.0.0.11:8080", "10.0.0.21:8080"] {
        kernel
            .state
            .sets
            .entry(lb_set())
            .or_default()
            .insert(Member::loopback(sa(ep), Tcp));
    }
    kernel
        .state
        .sets
        .entry(SetId::of(SetKind::ClusterIp, k.addr))
        .or_default()
        .insert(Member::service(&k));
    kernel
        .state
        .sets
        .entry(SetId::of(SetKind::VipAddresses, k.addr))
        .or_default()
        .insert(Member::Ip(k.addr));
    let t0 = Instant::now();
    let mut c = controller(kernel, t0);
    list(
        &mut c,
        SCENARIO,
        &[pod("c1", "10.0.0.11"), pod("c2", "10.0.0.21")],
        t0,
    );
    c.step(t0);
    assert_eq!(
        c.dp.take(),
        vec![Op::UpdateDest {
            service: k,
            dest: sa("10.0.0.21:8080"),
            weight: 1
        }],
        "nothing flushed or recreated; the stuck weight is fixed; the foreign service untouched"
    );
    assert_eq!(
        c.dp.state.services[&k].dests[&sa("10.0.0.11:8080")].active_conns,
        9
    );
    assert!(c.dp.state.services.contains_key(&foreign));
}

#[test]
fn resync_repairs_drift() {
    let (mut c, t0) = synced_scenario();
    c.dp.state.services.remove(&app());
    c.dp.state.sets.clear();
    c.tick(t0 + RESYNC / 2);
    assert_eq!(c.dp.take(), vec![], "between resyncs the cache is trusted");
    assert_eq!(c.deadline(t0 + RESYNC / 2), t0 + RESYNC);
    c.tick(t0 + RESYNC);
    let ops = c.dp.take();
    assert_eq!(ops.len(), 5, "{ops:?}");
    assert_eq!(weights(&c, &app()), vec![("10.0.0.11:8080".into(), 1)]);
    assert_eq!(c.dp.state.sets[&lb_set()].len(), 1);
    assert_eq!(c.dp.base_ensured, 2);
}

#[test]
fn removing_the_service_removes_only_our_state_and_cleanup_the_rest() {
    let (mut c, t0) = synced_scenario();
    send(
        &mut c,
        SourceId::Files,
        Delta::Delete(ObjectRef::new(Kind::Service, "default", "app-service")),
        t0,
    );
    let mut want = vec![Op::DelService(app()), del_lb(sa("10.0.0.11:8080"), Tcp)];
    want.extend(del_vs_members(app()));
    want.push(Op::DelAddress(app().addr));
    assert_eq!(c.dp.take(), want);
    c.cleanup().unwrap();
    assert!(c.dp.cleaned);
}

#[test]
fn check_lists_what_would_be_programmed_and_counts_clashes() {
    let (c, _) = synced_scenario();
    let report = check(c.store(), "rr");
    assert_eq!(report.conflicts, 0);
    assert_eq!(
        report.listing,
        "TCP  10.100.100.100:8080 rr  # default/app-service port 8080/TCP\n  -> 10.0.0.11:8080           Masq    1\nloop-back set SVCPROXY-LOOP-BACK: 1 entries\nset SVCPROXY-CLUSTER-IP: 1 entries\nset SVCPROXY-VIPS: 1 entries\n"
    );
    let mut st = Store::new("n1");
    let twice = format!(
        "{SCENARIO}---\n{}",
        SCENARIO.replace("name: app-service", "name: other")
    );
    for o in objects(&twice) {
        st.apply(SourceId::Files, Delta::Apply(o));
    }
    assert_eq!(check(&st, "rr").conflicts, 1);
}

/// A small deterministic generator (xorshift) for the random-edit test.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// One to three Services from small pools of names, VIPs, ports and endpoints, so random
/// edits also produce duplicate objects, VIP:port clashes, shared endpoints and selectors.
fn random_manifest(rng: &mut Rng, file: u64, step: usize) -> String {
    let mut y = format!("# step {step}\n");
    // Names are distinct within a file (a duplicate there makes the file invalid); now and
    // then a name or VIP shared by all files makes a duplicate or a clash.
    let base = rng.below(5);
    for i in 0..1 + rng.below(3) {
        let name = if i == 0 && rng.below(20) == 0 {
            "shared".to_string()
        } else {
            format!("f{file}n{}", (base + i) % 5)
        };
        let vip = if rng.below(20) == 0 {
            "9.9".to_string()
        } else {
            format!("{file}.{}", (base + i) % 5 + 1)
        };
        let ports = [
            "{name: p80, port: 80, targetPort: 8080}",
            "{name: p53, protocol: UDP, port: 53}",
            "{name: p443, port: 443}",
        ];
        let first = rng.below(3) as usize;
        let mut spec_ports = vec![ports[first]];
        if rng.below(2) == 0 {
            spec_ports.push(ports[(first + 1) % 3]);
        }
        let selector = if rng.below(3) == 0 {
            String::new()
        } else {
            format!(", selector: {{app: a{}}}", rng.below(2))
        };
        y.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{name}}}\nspec: {{clusterIP: 10.96.{vip}{selector}, ports: [{}]}}\n",
            spec_ports.join(", ")
        ));
        if rng.below(2) == 0 {
            y.push_str(&format!(
                "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: s{name}-{}, labels: {{kubernetes.io/service-name: s{name}}}}}\naddressType: IPv4\nports: [{{name: p80, port: 8080}}, {{name: p53, protocol: UDP, port: 5353}}, {{name: p443, port: 8443}}]\nendpoints:\n",
                rng.below(2)
            ));
            for _ in 0..rng.below(4) {
                let ready = if rng.below(4) == 0 { "false" } else { "true" };
                y.push_str(&format!(
                    "- {{addresses: [10.1.0.{}], conditions: {{ready: {ready}, serving: true, terminating: true}}}}\n",
                    rng.below(6) + 1
                ));
            }
        }
    }
    y
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let p = std::env::temp_dir().join(format!("svc-proxy-ctl-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(p.join("manifests")).unwrap();
        std::fs::create_dir_all(p.join("state/home")).unwrap();
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The whole pipeline on random edits of files and records: the sources' deltas, the store and
/// the per-Service derive yield exactly the operations of a full plan from freshly read inputs.
#[test]
fn incremental_changes_yield_the_ops_of_a_full_plan() {
    let s = Scratch::new();
    let metrics = Arc::new(Metrics::default());
    let fresh_sources = || {
        (
            FileSource::new(
                vec![s.0.join("manifests")],
                Filter::default(),
                metrics.clone(),
            ),
            RecordSource::new(s.0.join("state"), metrics.clone()),
        )
    };
    let (mut files, mut records) = fresh_sources();
    let t0 = Instant::now();
    let mut c = controller(Recording::default(), t0);
    for d in files.rescan().into_iter().chain(records.rescan()) {
        let source = if matches!(
            &d,
            Delta::Replace {
                kind: Kind::Pod,
                ..
            }
        ) {
            SourceId::Records
        } else {
            SourceId::Files
        };
        c.receive(source, d, t0);
    }
    c.step(t0);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let never = |_: &ServiceKey, _: &SocketAddr| false;
    for step in 0..400 {
        let (path, is_record) = if rng.below(10) < 7 {
            let file = rng.below(6);
            let p = s.0.join(format!("manifests/f{file}.yaml"));
            if rng.below(5) == 0 {
                let _ = std::fs::remove_file(&p);
            } else {
                std::fs::write(&p, random_manifest(&mut rng, file, step)).unwrap();
            }
            (p, false)
        } else {
            let id = rng.below(6);
            let p = s.0.join(format!("state/home/p{id}.eth0.json"));
            if rng.below(3) == 0 {
                let _ = std::fs::remove_file(&p);
            } else {
                std::fs::write(
                    &p,
                    format!(
                        r#"{{"version":1,"network":"home","containerId":"p{id}","ifname":"eth0","phase":"ready","ips":["10.1.0.{}/24"],"labels":{{"app":"a{}"}}}}"#,
                        id + 1,
                        rng.below(2)
                    ),
                )
                .unwrap();
            }
            (p, true)
        };
        let before = c.dp.state.clone();
        let paths = BTreeSet::from([path.clone()]);
        let (source, deltas) = if is_record {
            (SourceId::Records, records.paths_changed(&paths))
        } else {
            (SourceId::Files, files.paths_changed(&paths))
        };
        for d in deltas {
            c.receive(source, d, t0);
        }
        c.step(t0);
        let incremental = c.dp.take();
        assert_eq!(c.errors, 0, "step {step}: no kernel error");

        let (mut f2, mut r2) = fresh_sources();
        let mut st = Store::new("n1");
        for d in f2.rescan() {
            st.apply(SourceId::Files, d);
        }
        for d in r2.rescan() {
            st.apply(SourceId::Records, d);
        }
        let mut full = Derived::new("rr", Vec::new());
        full.derive_all(&st);
        assert_eq!(
            c.desired(),
            full.desired(),
            "step {step}: {}",
            path.display()
        );
        assert_eq!(
            incremental,
            plan::plan(full.desired(), &before, &never),
            "step {step}: {}",
            path.display()
        );
        // Drained TCP real servers without connections go at the next tick, nothing else.
        c.tick(t0);
        let settled = c.dp.take();
        assert!(
            settled.iter().all(|op| matches!(op, Op::DelDest { .. })),
            "step {step}: {settled:?}"
        );
        assert_eq!(plan::plan(full.desired(), &c.dp.state, &never), vec![]);
    }
}
