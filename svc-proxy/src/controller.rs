//! The reconcile loop: inputs (manifest files, attachment records) -> desired state; kernel dump
//! -> observed state (cached between resyncs and kept in step with what was applied);
//! `plan(desired, observed)` -> operations, applied with per-scope retry and backoff.

use crate::dataplane::Dataplane;
use crate::metrics::Metrics;
use crate::model::{Desired, Observed, ServiceKey};
use crate::plan::{self, Op, Scope, Subset};
use crate::sources::{Change, Sources};
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// First retry delay after a failed operation; doubled per failure up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Largest batch whose operations are logged one line each (info level).
const LOG_EACH_MAX: usize = 100;
/// How often draining real servers are checked for remaining connections.
pub const DRAIN_POLL: Duration = Duration::from_secs(1);

/// What the controller is told on start.
#[derive(Debug, Clone)]
pub struct Config {
    /// Manifest files and directories (directories: their `*.yaml`, `*.yml`, `*.json`).
    pub manifests: Vec<PathBuf>,
    /// cni-bridge state directory holding attachment records.
    pub attachments: PathBuf,
    /// Scheduler for Services without the scheduler annotation.
    pub scheduler: String,
    /// Full resync period (kernel dump, input rescan).
    pub resync: Duration,
    /// How long a removed TCP/SCTP real server may drain at weight 0 before it is deleted.
    pub graceful_timeout: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Backoff {
    until: Instant,
    delay: Duration,
}

/// The reconcile state machine; [`Controller::run`] drives it from events and timers, tests drive
/// its steps directly with chosen instants.
pub struct Controller<D: Dataplane> {
    cfg: Config,
    pub(crate) dp: D,
    metrics: Arc<Metrics>,
    /// The inputs and the desired state derived from them.
    sources: Sources,
    /// The kernel as last dumped, updated with every operation that succeeded; `None` forces a dump.
    observed: Option<Observed>,
    /// Services whose cached state is doubtful (an operation on them failed): re-dumped first.
    stale: BTreeSet<ServiceKey>,
    /// When each draining real server was first seen at weight 0.
    drain_since: HashMap<(ServiceKey, SocketAddr), Instant>,
    backoff: HashMap<Scope, Backoff>,
    next_resync: Instant,
    /// Kernel errors since start, for `--once`'s exit status.
    errors: usize,
    /// Manifest errors already counted in the metrics.
    manifest_errors: usize,
}

/// What wakes the loop.
#[derive(Debug)]
pub enum Event {
    /// Something changed at this path (a manifest, a record, or a directory holding them).
    Path(PathBuf),
    Shutdown,
}

impl<D: Dataplane> Controller<D> {
    pub fn new(cfg: Config, dp: D, metrics: Arc<Metrics>, now: Instant) -> Controller<D> {
        Controller {
            next_resync: now + cfg.resync,
            sources: Sources::new(cfg.manifests.clone(), cfg.attachments.clone()),
            cfg,
            dp,
            metrics,
            observed: None,
            stale: BTreeSet::new(),
            drain_since: HashMap::new(),
            backoff: HashMap::new(),
            errors: 0,
            manifest_errors: 0,
        }
    }

    pub fn desired(&self) -> &Desired {
        self.sources.desired()
    }

    /// Errors (manifest and kernel) since start.
    pub fn errors(&self) -> usize {
        self.errors + self.sources.errors
    }

    /// Reads every input, dumps the kernel and converges: the first step, and every resync.
    pub fn resync(&mut self, now: Instant) {
        self.sources.rescan();
        self.sources.derive_all(&self.cfg.scheduler);
        self.derived();
        self.sync(now, true, None);
        self.next_resync = now + self.cfg.resync;
    }

    /// Handles changed paths: re-reads what they name, re-derives only the Services they touch
    /// and converges those against the cached kernel state.
    pub fn paths_changed(&mut self, paths: &BTreeSet<PathBuf>, now: Instant) {
        let started = Instant::now();
        let change = self.sources.paths_changed(paths);
        self.count_manifest_errors();
        let read = started.elapsed();
        if change != Change::None {
            let subset = self.sources.derive(&change, &self.cfg.scheduler);
            self.derived();
            let derived = started.elapsed();
            self.sync(now, false, subset.as_ref());
            log::debug!(
                "{} changed path(s): read {read:?}, derived {} in {:?}, synced in {:?}",
                paths.len(),
                subset.map_or("everything".to_string(), |s| {
                    format!("{} virtual service(s)", s.keys.len())
                }),
                derived - read,
                started.elapsed() - derived
            );
        }
    }

    /// Runs what is due at `now`: a full resync, a retry after backoff, a drain check.
    pub fn tick(&mut self, now: Instant) {
        if now >= self.next_resync || self.observed.is_none() {
            self.resync(now);
            return;
        }
        // Only what is waiting is re-planned: draining real servers (re-read for their
        // connection counts) and retries that are due, so a tick costs the same at any size.
        let mut subset = Subset::default();
        subset.keys.extend(self.drain_since.keys().map(|(k, _)| *k));
        self.stale.extend(subset.keys.iter().copied());
        self.sync(now, false, Some(&subset));
    }

    /// When [`Controller::tick`] has work next.
    pub fn deadline(&self, now: Instant) -> Instant {
        let mut at = self.next_resync;
        if self.observed.is_none() {
            at = at.min(now + MIN_BACKOFF);
        }
        if !self.drain_since.is_empty() {
            at = at.min(now + DRAIN_POLL);
        }
        for b in self.backoff.values().filter(|b| b.until > now) {
            at = at.min(b.until);
        }
        at
    }

    /// Removes everything svc-proxy owns from the kernel.
    pub fn cleanup(&mut self) -> crate::dataplane::Result<()> {
        self.observed = None;
        self.dp.cleanup()
    }

    fn count_manifest_errors(&mut self) {
        for _ in self.manifest_errors..self.sources.errors {
            self.metrics.error("manifest");
        }
        self.manifest_errors = self.sources.errors;
    }

    /// Publishes the counts of a newly derived desired state.
    fn derived(&mut self) {
        self.count_manifest_errors();
        self.metrics.desired(
            self.sources.desired().services.len(),
            self.sources.endpoint_count(),
        );
    }

    fn in_backoff(&self, scope: &Scope, now: Instant) -> bool {
        self.backoff.get(scope).is_some_and(|b| b.until > now)
    }

    /// `subset` widened by the retries that are due (services whose backoff is over, services
    /// whose cached state is doubtful), so a change never swallows a retry; `None` (plan
    /// everything) when a retry is not per service (an address or the loop-back set).
    fn with_retries(&self, subset: &Subset, now: Instant) -> Option<Subset> {
        let mut out = subset.clone();
        for (scope, b) in &self.backoff {
            match scope {
                _ if b.until > now => {}
                Scope::Service(k) => {
                    out.keys.insert(*k);
                }
                Scope::Address(_) | Scope::Loopback => return None,
            }
        }
        out.keys.extend(
            self.stale
                .iter()
                .filter(|k| !self.in_backoff(&Scope::Service(**k), now)),
        );
        Some(out)
    }

    /// Converges the kernel: dumps it when `full` (or when no cached view exists), refreshes
    /// stale services, plans (only `subset` and the retries that are due, when given), and
    /// applies what is not held back by backoff.
    fn sync(&mut self, now: Instant, full: bool, subset: Option<&Subset>) {
        let subset = match subset {
            Some(s) if !full && self.observed.is_some() => self.with_retries(s, now),
            _ => None,
        };
        let subset = subset.as_ref();
        let started = Instant::now();
        if full || self.observed.is_none() {
            if let Err(e) = self.dp.ensure_base() {
                log::error!("{e}");
                self.metrics.error("kernel");
                self.errors += 1;
            }
            match self.dp.observe(&self.sources.desired().vips()) {
                Ok(o) => {
                    self.observed = Some(o);
                    self.stale.clear();
                    self.metrics.observed(now);
                }
                Err(e) => {
                    log::error!("reading kernel state: {e}");
                    self.metrics.error("observe");
                    self.errors += 1;
                    self.observed = None;
                    return;
                }
            }
        }
        let Some(observed) = self.observed.as_mut() else {
            return;
        };

        for key in std::mem::take(&mut self.stale) {
            if self
                .backoff
                .get(&Scope::Service(key))
                .is_some_and(|b| b.until > now)
            {
                self.stale.insert(key);
                continue;
            }
            match self.dp.observe_service(&key) {
                Ok(Some(s)) => {
                    observed.services.insert(key, s);
                }
                Ok(None) => {
                    observed.services.remove(&key);
                }
                Err(e) => {
                    log::warn!("reading {key}: {e}");
                    self.stale.insert(key);
                }
            }
        }

        let desired = self.sources.desired();
        let observed = self.observed.as_ref().expect("dumped above");
        let timeout = self.cfg.graceful_timeout;
        let since = &self.drain_since;
        // A drain not tracked yet starts now (tracked after the apply, with the others).
        let expired = |k: &ServiceKey, d: &SocketAddr| {
            since.get(&(*k, *d)).map_or(timeout.is_zero(), |t| {
                now.saturating_duration_since(*t) >= timeout
            })
        };
        let ops = match subset {
            Some(s) => plan::plan_subset(desired, observed, s, &expired),
            None => plan::plan(desired, observed, &expired),
        };
        let ops: Vec<Op> = ops
            .into_iter()
            .filter(|op| !self.in_backoff(&op.scope(), now))
            .collect();
        let planned = started.elapsed();

        let mut touched = BTreeSet::new();
        let mut failed = BTreeSet::new();
        // One line per operation, except in a large batch (a first sync, a new input
        // directory): one line with the count per kind, the operations at debug level.
        let each = if ops.len() <= LOG_EACH_MAX {
            log::Level::Info
        } else {
            log::Level::Debug
        };
        let mut applied = std::collections::BTreeMap::new();
        if !ops.is_empty() {
            let results = self.dp.apply(&ops);
            let observed = self.observed.as_mut().expect("dumped above");
            for (op, result) in ops.iter().zip(results) {
                let scope = op.scope();
                touched.insert(scope);
                let origin = match scope {
                    Scope::Service(k) => desired.services.get(&k).map(|s| s.origin.as_str()),
                    _ => None,
                };
                match result {
                    Ok(()) => {
                        observed.record(op);
                        self.metrics.operation(op.kind());
                        *applied.entry(op.kind()).or_insert(0usize) += 1;
                        match origin {
                            Some(o) => log::log!(each, "{o}: {op}"),
                            None => log::log!(each, "{op}"),
                        }
                    }
                    // Later operations of a failed scope usually fail for the same reason.
                    Err(e) if failed.insert(scope) => {
                        log::error!("{e}");
                        self.metrics.error("kernel");
                        self.errors += 1;
                    }
                    Err(e) => log::debug!("{e}"),
                }
            }
        }
        if each != log::Level::Info && !applied.is_empty() {
            let counts: Vec<String> = applied.iter().map(|(k, n)| format!("{n} {k}")).collect();
            log::info!("applied {}", counts.join(", "));
        }
        for scope in &failed {
            let delay = self
                .backoff
                .get(scope)
                .map_or(MIN_BACKOFF, |b| (b.delay * 2).min(MAX_BACKOFF));
            log::warn!("{scope}: retrying in {}s", delay.as_secs());
            self.backoff.insert(
                *scope,
                Backoff {
                    until: now + delay,
                    delay,
                },
            );
            if let Scope::Service(k) = scope {
                self.stale.insert(*k);
            }
        }
        self.backoff
            .retain(|s, b| failed.contains(s) || (!touched.contains(s) && b.until > now));
        self.track_drains(now, subset);
        self.metrics.sync_done(started.elapsed());
        log::debug!(
            "sync ({}): {} operation(s), planned in {planned:?}, done in {:?}",
            match subset {
                Some(s) => format!("{} virtual service(s)", s.keys.len()),
                None if full => "full, kernel dumped".to_string(),
                None => "full".to_string(),
            },
            ops.len(),
            started.elapsed()
        );
    }

    /// Starts the grace timer of real servers newly found draining; forgets finished drains.
    /// With `subset`, only its virtual services are looked at.
    fn track_drains(&mut self, now: Instant, subset: Option<&Subset>) {
        let Some(observed) = &self.observed else {
            return;
        };
        let desired = self.sources.desired();
        let draining: BTreeSet<_> = match subset {
            Some(s) => plan::draining_of(desired, observed, &s.keys),
            None => plan::draining(desired, observed),
        }
        .into_iter()
        .collect();
        self.drain_since
            .retain(|k, _| draining.contains(k) || subset.is_some_and(|s| !s.keys.contains(&k.0)));
        for d in draining {
            self.drain_since.entry(d).or_insert(now);
        }
    }

    /// Runs until `Event::Shutdown` or until every sender is gone; changes are applied once the
    /// burst of events they caused has settled for `debounce`. `watch_records` runs before each
    /// step (the watcher retries watching the records directory, which may not exist yet); when
    /// it says the directory has just become watched, the records are rescanned.
    pub fn run(
        &mut self,
        events: &std::sync::mpsc::Receiver<Event>,
        debounce: Duration,
        mut watch_records: impl FnMut() -> bool,
    ) {
        use std::sync::mpsc::RecvTimeoutError;
        self.resync(Instant::now());
        loop {
            let now = Instant::now();
            let wait = self.deadline(now).saturating_duration_since(now);
            let first = match events.recv_timeout(wait) {
                Ok(ev) => ev,
                Err(RecvTimeoutError::Timeout) => {
                    if watch_records() {
                        let records = BTreeSet::from([self.cfg.attachments.clone()]);
                        self.paths_changed(&records, Instant::now());
                    }
                    self.tick(Instant::now());
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let woke = Instant::now();
            let mut paths = BTreeSet::new();
            let mut next = Some(first);
            while let Some(ev) = next {
                match ev {
                    Event::Shutdown => return,
                    Event::Path(p) => {
                        paths.insert(p);
                    }
                }
                next = match events.recv_timeout(debounce) {
                    Ok(ev) => Some(ev),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return,
                };
            }
            log::debug!("events settled after {:?}", woke.elapsed());
            if watch_records() {
                paths.insert(self.cfg.attachments.clone());
            }
            self.paths_changed(&paths, Instant::now());
        }
    }
}

/// What `svc-proxy check` prints and how many manifests were invalid.
pub struct CheckReport {
    pub listing: String,
    pub errors: usize,
}

/// Reads and validates the inputs of `cfg` without touching the kernel.
pub fn check(cfg: &Config) -> CheckReport {
    let mut sources = Sources::new(cfg.manifests.clone(), cfg.attachments.clone());
    sources.rescan();
    let desired = sources.rebuild(&cfg.scheduler);
    CheckReport {
        listing: crate::sources::listing(&desired),
        errors: sources.errors,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::fake::Recording;
    use crate::model::{LoopbackEntry, ObservedDest, ObservedService, VirtualService};
    use nodenet::Protocol::{Tcp, Udp};
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A scratch directory removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new() -> Scratch {
            static N: AtomicUsize = AtomicUsize::new(0);
            let p = std::env::temp_dir().join(format!(
                "svc-proxy-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            std::fs::create_dir_all(p.join("manifests")).unwrap();
            std::fs::create_dir_all(p.join("state/home")).unwrap();
            Scratch(p)
        }

        fn write(&self, rel: &str, text: &str) -> PathBuf {
            let p = self.0.join(rel);
            std::fs::write(&p, text).unwrap();
            p
        }

        fn record(&self, id: &str, ip: &str, phase: &str) -> PathBuf {
            self.write(
                &format!("state/home/{id}.eth0.json"),
                &format!(
                    r#"{{"version":1,"network":"home","containerId":"{id}","ifname":"eth0","phase":"{phase}","ips":["{ip}/24"],"labels":{{"component":"app"}}}}"#
                ),
            )
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const SCENARIO: &str = include_str!("../../conf/services/app-service.yaml");
    const RESYNC: Duration = Duration::from_secs(30);
    const GRACE: Duration = Duration::from_secs(60);

    fn controller(s: &Scratch, kernel: Recording, now: Instant) -> Controller<Recording> {
        let cfg = Config {
            manifests: vec![s.0.join("manifests")],
            attachments: s.0.join("state"),
            scheduler: "rr".into(),
            resync: RESYNC,
            graceful_timeout: GRACE,
        };
        Controller::new(cfg, kernel, Arc::new(Metrics::default()), now)
    }

    /// The scenario's Service with pod c1 (10.0.0.11), synced; the recording starts empty.
    fn synced_scenario(s: &Scratch) -> (Controller<Recording>, Instant, PathBuf) {
        let f = s.write("manifests/app.yaml", SCENARIO);
        s.record("c1", "10.0.0.11", "ready");
        let t0 = Instant::now();
        let mut c = controller(s, Recording::default(), t0);
        c.resync(t0);
        c.dp.take();
        (c, t0, f)
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

    fn changed(c: &mut Controller<Recording>, paths: &[&Path], now: Instant) {
        let set = paths.iter().map(|p| p.to_path_buf()).collect();
        c.paths_changed(&set, now);
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
        let s = Scratch::new();
        s.write("manifests/app-service.yaml", SCENARIO);
        s.record("c1", "10.0.0.11", "ready");
        s.record("c9", "10.0.0.99", "adding");
        let t0 = Instant::now();
        let mut c = controller(&s, Recording::default(), t0);
        c.resync(t0);
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
                persistence: None
            }
        );
        assert_eq!(weights(&c, &k), vec![("10.0.0.11:8080".into(), 1)]);
        c.dp.take();

        let r2 = s.record("c2", "10.0.0.21", "ready");
        changed(&mut c, &[&r2], t0);
        assert_eq!(
            c.dp.take(),
            vec![
                Op::AddDest {
                    service: k,
                    dest: sa("10.0.0.21:8080"),
                    weight: 1
                },
                Op::AddLoopback(LoopbackEntry::for_endpoint(sa("10.0.0.21:8080"), Tcp)),
            ]
        );
        assert_eq!(
            c.dp.full_observes, 1,
            "an event syncs against the cached kernel view"
        );

        std::fs::remove_file(&r2).unwrap();
        changed(&mut c, &[&r2], t0);
        assert_eq!(
            c.dp.take(),
            vec![
                Op::UpdateDest {
                    service: k,
                    dest: sa("10.0.0.21:8080"),
                    weight: 0
                },
                Op::DelLoopback(LoopbackEntry::for_endpoint(sa("10.0.0.21:8080"), Tcp)),
            ]
        );
    }

    #[test]
    fn a_broken_edit_keeps_the_last_good_state_then_a_fix_applies() {
        let s = Scratch::new();
        let (mut c, t0, f) = synced_scenario(&s);
        let good = c.desired().clone();

        // An editor's truncate before its write: an empty file does not remove the Service.
        s.write("manifests/app.yaml", "");
        changed(&mut c, &[&f], t0);
        assert_eq!(c.dp.take(), vec![]);
        assert_eq!(c.desired(), &good);

        s.write(
            "manifests/app.yaml",
            &SCENARIO.replace("port: 8080\n", "port: 80800\n"),
        );
        changed(&mut c, &[&f], t0);
        assert_eq!(
            c.dp.take(),
            vec![],
            "nothing from the broken file is applied"
        );
        assert_eq!(c.desired(), &good);
        assert_eq!(c.errors(), 1);

        // Another file still applies while this one is broken; a resync does not re-report it.
        let u = s.write(
            "manifests/udp.yaml",
            &udp_service("10.100.100.101", 53, &["10.0.0.11"]),
        );
        changed(&mut c, &[&u], t0);
        assert!(c
            .dp
            .state
            .services
            .contains_key(&key("10.100.100.101", Udp, 53)));
        c.dp.take();
        c.tick(t0 + RESYNC);
        assert_eq!(c.errors(), 1);
        assert_eq!(c.dp.take(), vec![]);

        s.write(
            "manifests/app.yaml",
            &SCENARIO.replace("targetPort: 8080", "targetPort: 9090"),
        );
        changed(&mut c, &[&f], t0 + RESYNC);
        let ops = c.dp.take();
        assert!(
            ops.contains(&Op::AddDest {
                service: app(),
                dest: sa("10.0.0.11:9090"),
                weight: 1
            }),
            "{ops:?}"
        );
        assert!(
            ops.contains(&Op::UpdateDest {
                service: app(),
                dest: sa("10.0.0.11:8080"),
                weight: 0
            }),
            "{ops:?}"
        );
    }

    #[test]
    fn a_failing_service_backs_off_without_holding_back_the_others() {
        let s = Scratch::new();
        s.write("manifests/app.yaml", SCENARIO);
        s.write(
            "manifests/udp.yaml",
            &udp_service("10.100.100.101", 53, &["10.0.0.5"]),
        );
        s.record("c1", "10.0.0.11", "ready");
        let t0 = Instant::now();
        let mut kernel = Recording::default();
        kernel.fail.insert(Scope::Service(app()));
        let mut c = controller(&s, kernel, t0);
        c.resync(t0);
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
        std::fs::write(
            s.0.join("manifests/udp.yaml"),
            udp_service("10.100.100.101", 53, &["10.0.0.6"]),
        )
        .unwrap();
        let t1 = t0 + Duration::from_secs(2);
        changed(&mut c, &[&s.0.join("manifests/udp.yaml")], t1);
        assert_eq!(c.deadline(t1), t1 + MIN_BACKOFF);
        c.tick(t1 + MIN_BACKOFF);
        assert_eq!(c.deadline(t1 + MIN_BACKOFF), t1 + MIN_BACKOFF * 3);
        assert_eq!(c.errors(), 3);
    }

    #[test]
    fn a_change_after_a_backoff_expired_also_retries_the_failed_service() {
        let s = Scratch::new();
        s.write("manifests/app.yaml", SCENARIO);
        let udp_file = s.write(
            "manifests/udp.yaml",
            &udp_service("10.100.100.101", 53, &["10.0.0.5"]),
        );
        s.record("c1", "10.0.0.11", "ready");
        let t0 = Instant::now();
        let mut kernel = Recording::default();
        kernel.fail.insert(Scope::Service(app()));
        let mut c = controller(&s, kernel, t0);
        c.resync(t0);
        c.dp.fail.clear();
        c.dp.take();
        std::fs::write(&udp_file, udp_service("10.100.100.101", 53, &["10.0.0.6"])).unwrap();
        let udp = key("10.100.100.101", Udp, 53);

        changed(&mut c, &[&udp_file], t0 + MIN_BACKOFF / 2);
        assert_eq!(weights(&c, &udp), vec![("10.0.0.6:53".into(), 1)]);
        assert!(
            !c.dp.state.services.contains_key(&app()),
            "still backing off"
        );

        std::fs::write(&udp_file, udp_service("10.100.100.101", 53, &["10.0.0.7"])).unwrap();
        changed(&mut c, &[&udp_file], t0 + MIN_BACKOFF);
        assert_eq!(weights(&c, &udp), vec![("10.0.0.7:53".into(), 1)]);
        assert_eq!(weights(&c, &app()), vec![("10.0.0.11:8080".into(), 1)]);
    }

    #[test]
    fn tcp_removal_drains_at_weight_zero_then_deletes_udp_at_once() {
        let s = Scratch::new();
        s.write("manifests/app.yaml", SCENARIO);
        s.write(
            "manifests/udp.yaml",
            &udp_service("10.100.100.101", 53, &["10.0.0.5", "10.0.0.6"]),
        );
        let r1 = s.record("c1", "10.0.0.11", "ready");
        s.record("c2", "10.0.0.21", "ready");
        let t0 = Instant::now();
        let mut c = controller(&s, Recording::default(), t0);
        c.resync(t0);
        c.dp.set_conns(&app(), sa("10.0.0.11:8080"), 3);
        c.dp.take();

        std::fs::remove_file(&r1).unwrap();
        changed(&mut c, &[&r1], t0);
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
        let u = s.write(
            "manifests/udp.yaml",
            &udp_service("10.100.100.101", 53, &["10.0.0.5"]),
        );
        changed(&mut c, &[&u], t0 + DRAIN_POLL * 2);
        assert!(c.dp.take().contains(&Op::DelDest {
            service: udp,
            dest: sa("10.0.0.6:53")
        }));
    }

    #[test]
    fn a_drain_with_connections_ends_at_the_graceful_timeout() {
        let s = Scratch::new();
        s.write("manifests/app.yaml", SCENARIO);
        let r1 = s.record("c1", "10.0.0.11", "ready");
        let t0 = Instant::now();
        let mut c = controller(&s, Recording::default(), t0);
        c.resync(t0);
        c.dp.set_conns(&app(), sa("10.0.0.11:8080"), 3);
        std::fs::remove_file(&r1).unwrap();
        changed(&mut c, &[&r1], t0);
        c.tick(t0 + GRACE - Duration::from_secs(1));
        assert_eq!(weights(&c, &app()), vec![("10.0.0.11:8080".into(), 0)]);
        c.tick(t0 + GRACE);
        assert_eq!(weights(&c, &app()), vec![]);
    }

    #[test]
    fn restart_adopts_kernel_state_and_repairs_only_what_differs() {
        let s = Scratch::new();
        s.write("manifests/app.yaml", SCENARIO);
        s.record("c1", "10.0.0.11", "ready");
        s.record("c2", "10.0.0.21", "ready");
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
                },
                dests: BTreeMap::new(),
            },
        );
        kernel
            .state
            .loopback
            .insert(LoopbackEntry::for_endpoint(sa("10.0.0.11:8080"), Tcp));
        kernel
            .state
            .loopback
            .insert(LoopbackEntry::for_endpoint(sa("10.0.0.21:8080"), Tcp));
        let t0 = Instant::now();
        let mut c = controller(&s, kernel, t0);
        c.resync(t0);
        assert_eq!(
            c.dp.take(),
            vec![Op::UpdateDest { service: k, dest: sa("10.0.0.21:8080"), weight: 1 }],
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
        let s = Scratch::new();
        let (mut c, t0, _) = synced_scenario(&s);
        c.dp.state.services.remove(&app());
        c.dp.state.loopback.clear();
        c.tick(t0 + RESYNC / 2);
        assert_eq!(c.dp.take(), vec![], "between resyncs the cache is trusted");
        assert_eq!(c.deadline(t0 + RESYNC / 2), t0 + RESYNC);
        c.tick(t0 + RESYNC);
        let ops = c.dp.take();
        assert_eq!(ops.len(), 3, "{ops:?}");
        assert_eq!(weights(&c, &app()), vec![("10.0.0.11:8080".into(), 1)]);
        assert_eq!(c.dp.state.loopback.len(), 1);
        assert_eq!(c.dp.base_ensured, 2);
    }

    #[test]
    fn removing_the_manifest_removes_only_our_state_and_cleanup_the_rest() {
        let s = Scratch::new();
        let (mut c, t0, f) = synced_scenario(&s);
        std::fs::remove_file(&f).unwrap();
        changed(&mut c, &[&f], t0);
        assert_eq!(
            c.dp.take(),
            vec![
                Op::DelService(app()),
                Op::DelLoopback(LoopbackEntry::for_endpoint(sa("10.0.0.11:8080"), Tcp)),
                Op::DelAddress(app().addr),
            ]
        );
        c.cleanup().unwrap();
        assert!(c.dp.cleaned);
    }

    #[test]
    fn check_lists_what_would_be_programmed() {
        let s = Scratch::new();
        s.write("manifests/app.yaml", SCENARIO);
        s.write("manifests/bad.yaml", "kind: Pod\n");
        s.record("c1", "10.0.0.11", "ready");
        let cfg = controller(&s, Recording::default(), Instant::now()).cfg;
        let report = check(&cfg);
        assert_eq!(report.errors, 1);
        assert_eq!(
            report.listing,
            "TCP  10.100.100.100:8080 rr  # default/app-service port 8080/TCP\n  -> 10.0.0.11:8080           Masq    1\nloop-back set SVCPROXY-LOOP-BACK: 1 entries\n"
        );
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
                "9.0".to_string()
            } else {
                format!("{file}.{}", (base + i) % 5)
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

    #[test]
    fn incremental_changes_yield_the_ops_of_a_full_plan() {
        let s = Scratch::new();
        let t0 = Instant::now();
        let mut c = controller(&s, Recording::default(), t0);
        c.resync(t0);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let never = |_: &ServiceKey, _: &SocketAddr| false;
        let mut partial = 0;
        for step in 0..400 {
            let path = if rng.below(10) < 7 {
                let file = rng.below(6);
                let p = s.0.join(format!("manifests/f{file}.yaml"));
                if rng.below(5) == 0 {
                    let _ = std::fs::remove_file(&p);
                } else {
                    std::fs::write(&p, random_manifest(&mut rng, file, step)).unwrap();
                }
                p
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
                p
            };
            let before = c.dp.state.clone();
            let change = c.sources.paths_changed(&BTreeSet::from([path.clone()]));
            let subset = c.sources.derive(&change, "rr");
            partial += usize::from(subset.is_some());
            c.derived();
            c.sync(t0, false, subset.as_ref());
            let incremental = c.dp.take();
            assert_eq!(c.errors(), 0, "step {step}: every generated input is valid");

            let mut fresh = Sources::new(c.cfg.manifests.clone(), c.cfg.attachments.clone());
            fresh.rescan();
            let full = fresh.rebuild("rr");
            assert_eq!(c.desired(), &full, "step {step}: {}", path.display());
            assert_eq!(
                incremental,
                plan::plan(&full, &before, &never),
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
            assert_eq!(plan::plan(&full, &c.dp.state, &never), vec![]);
        }
        println!("{partial} of 400 changes were incremental");
        assert!(
            partial > 200,
            "only {partial} of 400 changes were incremental"
        );
    }
}
