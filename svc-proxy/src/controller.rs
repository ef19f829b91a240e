//! The reconcile loop: deltas from the sources go into the store; once every source has listed
//! everything, the desired state is derived (per changed Service), planned against the observed
//! kernel state (dumped at each resync, kept in step with what was applied in between) and
//! applied, with per-scope retry and backoff and graceful draining of removed real servers.

use crate::dataplane::Dataplane;
use crate::derive::Derived;
use crate::desired::NodeView;
use crate::health::Health;
use crate::healthcheck::HealthChecks;
use crate::metrics::Metrics;
use crate::model::{Desired, Observed, ServiceKey};
use crate::plan::{self, Op, Scope, Subset};
use crate::source::Event;
use crate::store::{Changes, Delta, SourceId, Store};
use ipnetwork::IpNetwork;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
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
    /// Scheduler for Services without the scheduler annotation.
    pub scheduler: String,
    /// Full resync period: kernel dump, everything planned (`--ipvs-sync-period`).
    pub resync: Duration,
    /// Least time between two syncs that changes trigger (`--ipvs-min-sync-period`).
    pub min_sync: Duration,
    /// How long a removed TCP/SCTP real server may drain at weight 0 before it is deleted.
    pub graceful_timeout: Duration,
    /// Which node addresses node ports listen on (`--nodeport-addresses`).
    pub nodeport_addresses: NodePortAddresses,
    /// Program routes to the other nodes' pod CIDRs (`--pod-routes`).
    pub pod_routes: bool,
    /// `--ipvs-exclude-cidrs`: virtual services there are never deleted.
    pub excluded: Vec<IpNetwork>,
}

/// `--nodeport-addresses`: CIDRs, and/or `primary` (the node's own IPs from its Node object);
/// neither means every address of the node, kube-proxy's default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodePortAddresses {
    pub cidrs: Vec<IpNetwork>,
    pub primary: bool,
}

impl NodePortAddresses {
    /// Whether node ports listen on `ip` of a node whose own IPs are `node_ips`.
    pub fn selects(&self, ip: &std::net::IpAddr, node_ips: &[std::net::IpAddr]) -> bool {
        let family_cidrs: Vec<&IpNetwork> = self
            .cidrs
            .iter()
            .filter(|c| c.is_ipv4() == ip.is_ipv4())
            .collect();
        if family_cidrs.is_empty() && !self.primary {
            // kube-proxy: a family without a CIDR of its own matches every address of it.
            return true;
        }
        family_cidrs.iter().any(|c| c.contains(*ip)) || (self.primary && node_ips.contains(ip))
    }

    /// Whether every address of every family is selected (no CIDR, no `primary`).
    pub fn matches_all(&self) -> bool {
        self.cidrs.is_empty() && !self.primary
    }
}

#[derive(Debug, Clone, Copy)]
struct Backoff {
    until: Instant,
    delay: Duration,
}

/// What one apply did.
#[derive(Default)]
struct Applied {
    /// Scopes with at least one operation.
    touched: BTreeSet<Scope>,
    /// Scopes with a failed operation.
    failed: BTreeSet<Scope>,
    /// A UDP virtual service or real server was added or removed: stale conntrack entries may
    /// hold traffic to the wrong place.
    udp_changed: bool,
}

/// The reconcile state machine; [`Controller::run`] drives it from events and timers, tests drive
/// its steps directly with chosen instants.
pub struct Controller<D: Dataplane> {
    cfg: Config,
    pub(crate) dp: D,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    store: Store,
    derived: Derived,
    /// The health check node ports of `Local` load balancers.
    health_checks: HealthChecks,
    /// Changes received and not synced yet.
    pending: Changes,
    /// The first sync (after every source listed everything) has happened.
    started: bool,
    /// When a sync that changes triggered last ran (for the minimum sync period).
    last_sync: Option<Instant>,
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
    /// The sources still awaited were logged.
    told_waiting: bool,
}

impl<D: Dataplane> Controller<D> {
    pub fn new(
        cfg: Config,
        store: Store,
        dp: D,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
        now: Instant,
    ) -> Controller<D> {
        Controller {
            next_resync: now + cfg.resync,
            derived: Derived::new(cfg.scheduler.clone(), cfg.excluded.clone()),
            health_checks: HealthChecks::new(None, health.clone()),
            cfg,
            dp,
            metrics,
            health,
            store,
            pending: Changes::default(),
            started: false,
            last_sync: None,
            observed: None,
            stale: BTreeSet::new(),
            drain_since: HashMap::new(),
            backoff: HashMap::new(),
            errors: 0,
            told_waiting: false,
        }
    }

    /// Serves the health check node ports on `rt` (without it they are only tracked).
    pub fn serve_health_checks(&mut self, rt: tokio::runtime::Handle) {
        self.health_checks = HealthChecks::new(Some(rt), self.health.clone());
    }

    pub fn desired(&self) -> &Desired {
        self.derived.desired()
    }

    /// The health check node ports wanted: port -> (Service, local ready endpoints).
    pub fn health_checks(&self) -> &BTreeMap<u16, (crate::objects::NamespacedName, usize)> {
        self.health_checks.wanted()
    }

    /// This node as the derivation sees it: its Node (zone, IPs) from the store, its addresses
    /// from the last kernel dump. With pod routes on, also the routes the other Nodes need.
    fn refresh_node(&mut self) -> bool {
        let node = self.store.node();
        let ips = node.map(|n| n.internal_ips.clone()).unwrap_or_default();
        let observed = self.observed.as_ref();
        let addresses = observed
            .map(|o| o.node_addresses.clone())
            .unwrap_or_default();
        let nodeport_addresses: BTreeSet<std::net::IpAddr> = addresses
            .iter()
            .filter(|a| self.cfg.nodeport_addresses.selects(a, &ips))
            .copied()
            .collect();
        if !self.cfg.nodeport_addresses.matches_all() {
            self.health_checks
                .listen_on(Some(nodeport_addresses.iter().copied().collect()));
        }
        let view = NodeView {
            name: self.store.node_name().to_string(),
            zone: node.and_then(|n| n.zone.clone()),
            nodeport_addresses,
            addresses,
            ips,
        };
        let mut changed = self.derived.set_node(view);
        if self.cfg.pod_routes {
            let networks = observed
                .map(|o| o.node_networks.clone())
                .unwrap_or_default();
            let routes =
                crate::routes::pod_routes(&self.store.nodes(), self.store.node_name(), &networks);
            changed |= self.derived.set_routes(routes);
        }
        changed
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Kernel errors since start, and the VIP:port clashes of the last full derive.
    pub fn errors(&self) -> usize {
        self.errors + self.derived.conflicts()
    }

    /// Whether the first sync has happened.
    pub fn started(&self) -> bool {
        self.started
    }

    /// Takes one delta into the store; what it changed waits for [`Controller::step`].
    pub fn receive(&mut self, source: SourceId, delta: Delta, now: Instant) {
        let changes = self.store.apply(source, delta);
        if changes.is_empty() {
            return;
        }
        if changes.nodes {
            self.health.node(self.store.node().map(|n| n.eligible));
        }
        self.pending.merge(changes);
        self.metrics.queued(
            0,
            0,
            self.pending.service_changes,
            self.pending.endpoint_changes,
        );
        self.health.queued(now);
    }

    /// Syncs what is pending, once every source has listed everything (the first time: all of
    /// it, against a fresh kernel dump) and the minimum sync period allows.
    pub fn step(&mut self, now: Instant) {
        if !self.store.synced() {
            if !self.told_waiting {
                log::info!(
                    "waiting for the initial list of {} before changing anything",
                    self.store.waiting_for().join(", ")
                );
                self.told_waiting = true;
            }
            return;
        }
        if !self.started {
            self.started = true;
            let pending = std::mem::take(&mut self.pending);
            self.count_changes(&pending);
            log::info!(
                "every source listed: {} Service(s); first sync",
                self.store.service_names().count()
            );
            if !self.observe(now, true) {
                return;
            }
            self.refresh_node();
            self.derived.derive_all(&self.store);
            self.publish_desired();
            self.sync(now, false, None);
            self.programmed(&pending, now);
            self.next_resync = now + self.cfg.resync;
            return;
        }
        if self.pending.is_empty() || self.throttled(now) {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        self.count_changes(&pending);
        let started = Instant::now();
        let node_changed = pending.nodes && self.refresh_node();
        let subset = if pending.all || node_changed {
            self.derived.derive_all(&self.store);
            None
        } else {
            self.derived.derive(&self.store, &pending.services)
        };
        self.publish_desired();
        let derived = started.elapsed();
        self.sync(now, false, subset.as_ref());
        self.programmed(&pending, now);
        log::debug!(
            "{} changed Service(s): derived {} in {derived:?}, synced in {:?}",
            pending.services.len(),
            subset
                .as_ref()
                .map_or("everything".to_string(), |s| format!(
                    "{} virtual service(s)",
                    s.keys.len()
                )),
            started.elapsed() - derived
        );
    }

    fn throttled(&self, now: Instant) -> bool {
        self.last_sync.is_some_and(|t| now < t + self.cfg.min_sync)
    }

    fn count_changes(&self, pending: &Changes) {
        self.metrics
            .queued(pending.service_changes, pending.endpoint_changes, 0, 0);
    }

    /// Books the end-to-end latency of what was pending, now programmed.
    fn programmed(&mut self, pending: &Changes, now: Instant) {
        self.last_sync = Some(now);
        self.metrics
            .programmed(&pending.trigger_times, &self.families());
    }

    /// The address families the desired state uses (`true` = IPv6): IPv4 always.
    fn families(&self) -> Vec<bool> {
        let v6 = self
            .derived
            .desired()
            .services
            .keys()
            .next_back()
            .is_some_and(|k| k.addr.is_ipv6());
        if v6 {
            vec![false, true]
        } else {
            vec![false]
        }
    }

    /// Runs what is due at `now`: a full resync, a retry after backoff, a drain check, a sync
    /// the minimum period held back.
    pub fn tick(&mut self, now: Instant) {
        if !self.started {
            return;
        }
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

    /// Dumps the kernel and converges everything.
    pub fn resync(&mut self, now: Instant) {
        if !self.started {
            return;
        }
        self.sync(now, true, None);
        self.next_resync = now + self.cfg.resync;
    }

    /// When [`Controller::tick`] or [`Controller::step`] has work next.
    pub fn deadline(&self, now: Instant) -> Instant {
        let mut at = self.next_resync;
        if !self.started {
            return at;
        }
        if self.observed.is_none() {
            at = at.min(now + MIN_BACKOFF);
        }
        if !self.drain_since.is_empty() {
            at = at.min(now + DRAIN_POLL);
        }
        if !self.pending.is_empty() {
            if let Some(t) = self.last_sync {
                at = at.min(t + self.cfg.min_sync);
            }
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

    /// Publishes the counts of a newly derived desired state.
    fn publish_desired(&mut self) {
        self.metrics.desired(
            self.derived.desired().services.len(),
            self.derived.endpoint_count(),
        );
        self.metrics
            .no_local_endpoints(&self.derived.no_local_endpoints());
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
                Scope::Address(_) | Scope::Set(_) | Scope::Route(_) => return None,
            }
        }
        out.keys.extend(
            self.stale
                .iter()
                .filter(|k| !self.in_backoff(&Scope::Service(**k), now)),
        );
        Some(out)
    }

    /// Converges the kernel: refreshes the observed state (a full dump when `full`), plans
    /// (only `subset` and the retries that are due, when given), applies what backoff does not
    /// hold back, and books failures and drains.
    fn sync(&mut self, now: Instant, full: bool, subset: Option<&Subset>) {
        let subset = match subset {
            Some(s) if !full && self.observed.is_some() => self.with_retries(s, now),
            _ => None,
        };
        let subset = subset.as_ref();
        let started = Instant::now();
        if !self.observe(now, full) {
            return;
        }
        if full && self.refresh_node() {
            // The node's addresses moved: node ports and which addresses go on the dummy follow.
            log::info!("this node's addresses or Node changed; deriving everything");
            self.derived.derive_all(&self.store);
            self.publish_desired();
        }
        let ops = self.plan(now, subset);
        let planned = started.elapsed();
        let applied = self.apply(&ops);
        self.book_failures(&applied, now);
        self.track_drains(now, subset);
        if applied.udp_changed {
            self.clean_udp_conntrack();
        }
        self.health_checks.sync(self.derived.health());
        self.metrics
            .sync_done(started.elapsed(), &self.families(), subset.is_none(), true);
        self.health.updated();
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

    /// Makes the observed state current: with `full` (or no cached view), ensures the static
    /// pieces and dumps the kernel; always re-reads the services whose cached state is doubtful.
    /// False when the kernel could not be read (nothing is planned then).
    fn observe(&mut self, now: Instant, full: bool) -> bool {
        if full || self.observed.is_none() {
            if let Err(e) = self.dp.ensure_base() {
                log::error!("{e}");
                self.metrics.error("kernel");
                self.errors += 1;
            }
            match self.dp.observe(self.derived.desired()) {
                Ok(o) => {
                    self.observed = Some(o);
                    self.stale.clear();
                }
                Err(e) => {
                    log::error!("reading kernel state: {e}");
                    self.metrics.error("observe");
                    self.errors += 1;
                    self.observed = None;
                    return false;
                }
            }
        }
        let Some(observed) = self.observed.as_mut() else {
            return false;
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
        true
    }

    /// The operations that converge `subset` (everything when `None`), less those in backoff.
    fn plan(&self, now: Instant, subset: Option<&Subset>) -> Vec<Op> {
        let desired = self.derived.desired();
        let observed = self.observed.as_ref().expect("observed before planning");
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
        ops.into_iter()
            .filter(|op| !self.in_backoff(&op.scope(), now))
            .collect()
    }

    /// Applies `ops`, keeps the cached kernel view in step with what succeeded, logs and counts.
    fn apply(&mut self, ops: &[Op]) -> Applied {
        let mut applied = Applied::default();
        if ops.is_empty() {
            return applied;
        }
        // One line per operation, except in a large batch (a first sync, a new input
        // directory): one line with the count per kind, the operations at debug level.
        let each = if ops.len() <= LOG_EACH_MAX {
            log::Level::Info
        } else {
            log::Level::Debug
        };
        let mut counts = BTreeMap::new();
        let results = self.dp.apply(ops);
        let desired = self.derived.desired();
        let observed = self.observed.as_mut().expect("observed before applying");
        for (op, result) in ops.iter().zip(results) {
            let scope = op.scope();
            applied.touched.insert(scope);
            let origin = match scope {
                Scope::Service(k) => desired.services.get(&k).map(|s| s.origin.as_str()),
                _ => None,
            };
            match result {
                Ok(()) => {
                    applied.udp_changed |= touches_udp(op);
                    observed.record(op);
                    self.metrics.operation(op.kind());
                    *counts.entry(op.kind()).or_insert(0usize) += 1;
                    match origin {
                        Some(o) => log::log!(each, "{o}: {op}"),
                        None => log::log!(each, "{op}"),
                    }
                }
                // Later operations of a failed scope usually fail for the same reason.
                Err(e) if applied.failed.insert(scope) => {
                    log::error!("{e}");
                    self.metrics.error("kernel");
                    self.errors += 1;
                }
                Err(e) => log::debug!("{e}"),
            }
        }
        if each != log::Level::Info && !counts.is_empty() {
            let counts: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
            log::info!("applied {}", counts.join(", "));
        }
        applied
    }

    /// Deletes the UDP conntrack entries no virtual service's real server answers any more.
    fn clean_udp_conntrack(&mut self) {
        let udp: BTreeMap<ServiceKey, BTreeSet<SocketAddr>> = self
            .derived
            .desired()
            .services
            .iter()
            .filter(|(k, _)| k.protocol == nodenet::Protocol::Udp)
            .map(|(k, s)| (*k, s.endpoints.clone()))
            .collect();
        match self.dp.clean_udp_conntrack(&udp) {
            Ok(0) => {}
            Ok(n) => log::info!("deleted {n} stale UDP conntrack entries"),
            Err(e) => {
                log::error!("cleaning stale UDP conntrack entries: {e}");
                self.metrics.error("kernel");
            }
        }
    }

    /// Backs off the failed scopes (doubling their delay) and forgets the backoff of scopes that
    /// succeeded.
    fn book_failures(&mut self, applied: &Applied, now: Instant) {
        for scope in &applied.failed {
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
        self.backoff.retain(|s, b| {
            applied.failed.contains(s) || (!applied.touched.contains(s) && b.until > now)
        });
    }

    /// Starts the grace timer of real servers newly found draining; forgets finished drains.
    /// With `subset`, only its virtual services are looked at.
    fn track_drains(&mut self, now: Instant, subset: Option<&Subset>) {
        let Some(observed) = &self.observed else {
            return;
        };
        let desired = self.derived.desired();
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

    /// Runs until `Event::Shutdown` or until every sender is gone. Deltas that arrive together
    /// are taken as one batch before a sync.
    pub fn run(&mut self, events: &Receiver<Event>) {
        // kube-proxy counts the start as an update, in case no sync ever succeeds.
        self.health.updated();
        loop {
            let now = Instant::now();
            let wait = self.deadline(now).saturating_duration_since(now);
            match events.recv_timeout(wait) {
                Ok(Event::Shutdown) => return,
                Ok(Event::Delta(source, delta)) => {
                    self.receive(source, *delta, Instant::now());
                    loop {
                        match events.try_recv() {
                            Ok(Event::Shutdown) => return,
                            Ok(Event::Delta(source, delta)) => {
                                self.receive(source, *delta, Instant::now())
                            }
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => self.tick(Instant::now()),
                Err(RecvTimeoutError::Disconnected) => return,
            }
            self.step(Instant::now());
        }
    }
}

/// Whether `op` adds or removes a UDP virtual service or real server.
fn touches_udp(op: &Op) -> bool {
    let key = match op {
        Op::AddService(s) => &s.key,
        Op::DelService(k) => k,
        Op::AddDest { service, .. } | Op::DelDest { service, .. } => service,
        _ => return false,
    };
    key.protocol == nodenet::Protocol::Udp
}

/// What `svc-proxy check` prints, and how many problems it found.
pub struct CheckReport {
    pub listing: String,
    /// VIP:port clashes (each skips a Service port).
    pub conflicts: usize,
}

/// The desired state of everything `store` holds, without touching the kernel.
pub fn check(store: &Store, scheduler: &str) -> CheckReport {
    let mut d = Derived::new(scheduler, Vec::new());
    d.derive_all(store);
    CheckReport {
        listing: crate::derive::listing(d.desired()),
        conflicts: d.conflicts(),
    }
}

#[cfg(test)]
mod tests;
