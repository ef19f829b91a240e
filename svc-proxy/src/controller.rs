//! The reconcile loop: inputs (manifest files, attachment records) -> desired state; kernel dump
//! -> observed state (cached between resyncs and kept in step with what was applied);
//! `plan(desired, observed)` -> operations, applied with per-scope retry and backoff.

use crate::dataplane::Dataplane;
use crate::metrics::Metrics;
use crate::sources::Sources;
use crate::model::{Desired, Observed, ServiceKey};
use crate::plan::{self, Op, Scope};
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// First retry delay after a failed operation; doubled per failure up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
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
    sources: Sources,
    desired: Desired,
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
            desired: Desired::default(),
            observed: None,
            stale: BTreeSet::new(),
            drain_since: HashMap::new(),
            backoff: HashMap::new(),
            errors: 0,
            manifest_errors: 0,
        }
    }

    pub fn desired(&self) -> &Desired {
        &self.desired
    }

    /// Errors (manifest and kernel) since start.
    pub fn errors(&self) -> usize {
        self.errors + self.sources.errors
    }

    /// Reads every input, dumps the kernel and converges: the first step, and every resync.
    pub fn resync(&mut self, now: Instant) {
        self.sources.rescan();
        self.rebuild();
        self.sync(now, true);
        self.next_resync = now + self.cfg.resync;
    }

    /// Handles changed paths: re-reads what they name and converges against the cached kernel state.
    pub fn paths_changed(&mut self, paths: &BTreeSet<PathBuf>, now: Instant) {
        let changed = self.sources.paths_changed(paths);
        self.count_manifest_errors();
        if changed {
            self.rebuild();
            self.sync(now, false);
        }
    }

    /// Runs what is due at `now`: a full resync, a retry after backoff, a drain check.
    pub fn tick(&mut self, now: Instant) {
        if now >= self.next_resync || self.observed.is_none() {
            self.resync(now);
            return;
        }
        if !self.drain_since.is_empty() {
            self.stale.extend(self.drain_since.keys().map(|(k, _)| *k));
        }
        self.sync(now, false);
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

    /// Recomputes the desired state from the last good inputs.
    fn rebuild(&mut self) {
        self.count_manifest_errors();
        self.desired = self.sources.rebuild(&self.cfg.scheduler);
        self.metrics.desired(self.desired.services.len(), self.desired.endpoint_count());
    }

    fn in_backoff(&self, scope: &Scope, now: Instant) -> bool {
        self.backoff.get(scope).is_some_and(|b| b.until > now)
    }

    /// Converges the kernel: dumps it when `full` (or when no cached view exists), refreshes
    /// stale services, plans, and applies what is not held back by backoff.
    fn sync(&mut self, now: Instant, full: bool) {
        let started = Instant::now();
        if full || self.observed.is_none() {
            if let Err(e) = self.dp.ensure_base() {
                log::error!("{e}");
                self.metrics.error("kernel");
                self.errors += 1;
            }
            match self.dp.observe(&self.desired.vips()) {
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
        let Some(observed) = self.observed.as_mut() else { return };

        for key in std::mem::take(&mut self.stale) {
            if self.backoff.get(&Scope::Service(key)).is_some_and(|b| b.until > now) {
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

        self.track_drains(now);
        let observed = self.observed.as_ref().expect("dumped above");
        let timeout = self.cfg.graceful_timeout;
        let since = &self.drain_since;
        let expired = |k: &ServiceKey, d: &SocketAddr| {
            since.get(&(*k, *d)).is_some_and(|t| now.saturating_duration_since(*t) >= timeout)
        };
        let ops: Vec<Op> = plan::plan(&self.desired, observed, &expired)
            .into_iter()
            .filter(|op| !self.in_backoff(&op.scope(), now))
            .collect();

        let mut touched = BTreeSet::new();
        let mut failed = BTreeSet::new();
        if !ops.is_empty() {
            let results = self.dp.apply(&ops);
            let observed = self.observed.as_mut().expect("dumped above");
            for (op, result) in ops.iter().zip(results) {
                let scope = op.scope();
                touched.insert(scope);
                let origin = match scope {
                    Scope::Service(k) => self.desired.services.get(&k).map(|s| s.origin.as_str()),
                    _ => None,
                };
                match result {
                    Ok(()) => {
                        observed.record(op);
                        self.metrics.operation(op.kind());
                        match origin {
                            Some(o) => log::info!("{o}: {op}"),
                            None => log::info!("{op}"),
                        }
                    }
                    Err(e) => {
                        log::error!("{e}");
                        self.metrics.error("kernel");
                        self.errors += 1;
                        failed.insert(scope);
                    }
                }
            }
        }
        for scope in &failed {
            let delay = self.backoff.get(scope).map_or(MIN_BACKOFF, |b| (b.delay * 2).min(MAX_BACKOFF));
            log::warn!("{scope}: retrying in {}s", delay.as_secs());
            self.backoff.insert(*scope, Backoff { until: now + delay, delay });
            if let Scope::Service(k) = scope {
                self.stale.insert(*k);
            }
        }
        self.backoff.retain(|s, b| failed.contains(s) || (!touched.contains(s) && b.until > now));
        self.track_drains(now);
        self.metrics.sync_done(started.elapsed());
    }

    /// Starts the grace timer of real servers newly found draining; forgets finished drains.
    fn track_drains(&mut self, now: Instant) {
        let Some(observed) = &self.observed else { return };
        let draining = plan::draining(&self.desired, observed);
        let draining: BTreeSet<_> = draining.into_iter().collect();
        self.drain_since.retain(|k, _| draining.contains(k));
        for d in draining {
            self.drain_since.entry(d).or_insert(now);
        }
    }

    /// Runs until `Event::Shutdown` or until every sender is gone; changes are applied once the
    /// burst of events they caused has settled for `debounce`. `before_tick` runs before each timed
    /// step (the watcher retries what it could not watch yet).
    pub fn run(
        &mut self,
        events: &std::sync::mpsc::Receiver<Event>,
        debounce: Duration,
        mut before_tick: impl FnMut(),
    ) {
        use std::sync::mpsc::RecvTimeoutError;
        self.resync(Instant::now());
        loop {
            let now = Instant::now();
            let wait = self.deadline(now).saturating_duration_since(now);
            let first = match events.recv_timeout(wait) {
                Ok(ev) => ev,
                Err(RecvTimeoutError::Timeout) => {
                    before_tick();
                    self.tick(Instant::now());
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            };
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
    CheckReport { listing: crate::sources::listing(&desired), errors: sources.errors }
}
