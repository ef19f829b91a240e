//! The daemon: wires the sources, the store, the controller, the dataplane and the HTTP servers
//! together from resolved [`Settings`], and runs until `shutdown` resolves (or syncs once).

use crate::controller::{self, Controller};
use crate::dataplane::Dataplane;
use crate::health::Health;
use crate::instance::Instance;
use crate::kernel::{Kernel, KernelOptions};
use crate::metrics::Metrics;
use crate::objects::Kind;
use crate::source::files::FileSource;
use crate::source::kube::{self as api, ApiOptions};
use crate::source::records::RecordSource;
use crate::source::{Event, Outbox};
use crate::store::{Delta, SourceId, Store};
use crate::validate::Filter;
use anyhow::{bail, Context, Result};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Everything the daemon needs, resolved from flags, the configuration file and defaults.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Manifest files and directories (absolute); none: no file source.
    pub manifests: Vec<PathBuf>,
    /// cni-bridge's state directory; `None`: no record source.
    pub attachments: Option<PathBuf>,
    /// The Kubernetes API; `None`: no API source.
    pub api: Option<ApiOptions>,
    /// This node's name (endpoint locality, its Node object).
    pub node_name: String,
    pub filter: Filter,
    pub dummy: String,
    pub controller: controller::Config,
    /// `/healthz` and `/livez`; `None`: not served.
    pub healthz_address: Option<SocketAddr>,
    /// `/metrics`; `None`: not served.
    pub metrics_address: Option<SocketAddr>,
    /// A port that cannot be bound is fatal (else logged, and the daemon runs without it).
    pub bind_hard_fail: bool,
    /// Sync once and exit.
    pub once: bool,
    /// Written to `/proc/self/oom_score_adj` at start.
    pub oom_score_adj: Option<i32>,
    /// The kernel set-up besides the planned state (rules, strict ARP, IPVS timeouts).
    pub kernel: KernelOptions,
}

/// The store, told which initial lists to wait for.
fn store(s: &Settings) -> Store {
    let mut store = Store::new(&s.node_name);
    if !s.manifests.is_empty() {
        store.expect(SourceId::Files, Kind::Service);
        store.expect(SourceId::Files, Kind::EndpointSlice);
    }
    if s.attachments.is_some() {
        store.expect(SourceId::Records, Kind::Pod);
    }
    if s.api.is_some() {
        for kind in [Kind::Service, Kind::EndpointSlice, Kind::Node] {
            store.expect(SourceId::Api, kind);
        }
    }
    store
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("svc-proxy-io")
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

/// Runs the daemon on this node's kernel until `shutdown` resolves (or syncs once, with
/// `once`). Kernel state stays in place at exit.
pub fn run(s: Settings, shutdown: impl Future<Output = ()>) -> Result<()> {
    let _instance = Instance::claim(&s.dummy)?;
    if let Some(adj) = s.oom_score_adj {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string())
            .with_context(|| format!("setting oom_score_adj to {adj}"))?;
    }
    let kernel = Kernel::open(&s.dummy, s.kernel.clone())?;
    run_with(s, kernel, Arc::new(Metrics::default()), shutdown)
}

/// Runs the daemon on dataplane `dp` (the kernel, or a recording one in tests), publishing into
/// `metrics`, until `shutdown` resolves.
pub fn run_with<D: Dataplane + Send + 'static>(
    s: Settings,
    dp: D,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let rt = runtime()?;
    let health = Arc::new(Health::new(s.controller.resync * 2, s.api.is_some()));
    let store = store(&s);
    if s.once {
        return once(&s, &rt, store, dp, metrics, health);
    }

    let (tx, rx) = std::sync::mpsc::channel();
    let rescan = s.controller.resync;
    if !s.manifests.is_empty() {
        FileSource::new(s.manifests.clone(), s.filter.clone(), metrics.clone())
            .spawn(Outbox::new(SourceId::Files, tx.clone()), rescan)
            .context("watching the manifests")?;
    }
    if let Some(dir) = &s.attachments {
        RecordSource::new(dir.clone(), metrics.clone())
            .spawn(Outbox::new(SourceId::Records, tx.clone()), rescan)
            .context("watching the attachment records")?;
    }
    if let Some(opts) = &s.api {
        let client = rt.block_on(api::client(opts))?;
        api::spawn(
            rt.handle(),
            client,
            opts,
            Outbox::new(SourceId::Api, tx.clone()),
            metrics.clone(),
        );
    }
    serve(&s, &rt, &health, &metrics)?;

    let cfg = s.controller.clone();
    let (m, h) = (metrics.clone(), health.clone());
    let handle = rt.handle().clone();
    let controller = std::thread::Builder::new()
        .name("controller".into())
        .spawn(move || {
            let mut c = Controller::new(cfg, store, dp, m, h, Instant::now());
            c.serve_health_checks(handle);
            c.run(&rx);
        })
        .context("starting the controller")?;
    rt.block_on(shutdown);
    let _ = tx.send(Event::Shutdown);
    let _ = controller.join();
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// Binds the HTTP servers and runs them on `rt`.
fn serve(
    s: &Settings,
    rt: &tokio::runtime::Runtime,
    health: &Arc<Health>,
    metrics: &Arc<Metrics>,
) -> Result<()> {
    let _guard = rt.enter();
    let bind = |what: &str, addr: SocketAddr| -> Result<Option<tokio::net::TcpListener>> {
        let bound = std::net::TcpListener::bind(addr).and_then(|l| {
            l.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(l)
        });
        match bound {
            Ok(l) => {
                log::info!("serving {what} on http://{}", l.local_addr()?);
                Ok(Some(l))
            }
            Err(e) if s.bind_hard_fail => bail!("binding {what} to {addr}: {e}"),
            Err(e) => {
                log::error!("binding {what} to {addr}: {e}; running without it");
                Ok(None)
            }
        }
    };
    if let Some(addr) = s.healthz_address {
        if let Some(l) = bind("/healthz and /livez", addr)? {
            let (h, m) = (health.clone(), metrics.clone());
            rt.spawn(async move {
                if let Err(e) = crate::http::serve_health(l, h, m).await {
                    log::error!("healthz server: {e}");
                }
            });
        }
    }
    if let Some(addr) = s.metrics_address {
        if let Some(l) = bind("/metrics", addr)? {
            let (h, m) = (health.clone(), metrics.clone());
            rt.spawn(async move {
                if let Err(e) = crate::http::serve_metrics(l, h, m).await {
                    log::error!("metrics server: {e}");
                }
            });
        }
    }
    Ok(())
}

/// `--once`: reads every source once, syncs, and fails if anything was invalid or failed.
fn once<D: Dataplane>(
    s: &Settings,
    rt: &tokio::runtime::Runtime,
    store: Store,
    dp: D,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> Result<()> {
    let now = Instant::now();
    let mut c = Controller::new(
        s.controller.clone(),
        store,
        dp,
        metrics.clone(),
        health,
        now,
    );
    let mut invalid = 0;
    if !s.manifests.is_empty() {
        let mut files = FileSource::new(s.manifests.clone(), s.filter.clone(), metrics.clone());
        for d in files.rescan() {
            c.receive(SourceId::Files, d, now);
        }
        invalid += files.errors;
    }
    if let Some(dir) = &s.attachments {
        for d in RecordSource::new(dir.clone(), metrics.clone()).rescan() {
            c.receive(SourceId::Records, d, now);
        }
    }
    if let Some(opts) = &s.api {
        for d in rt.block_on(async { api::list_once(api::client(opts).await?, opts).await })? {
            invalid += replace_kept(&d);
            c.receive(SourceId::Api, d, now);
        }
    }
    c.step(now);
    let errors = c.errors() + invalid;
    if errors > 0 {
        bail!("{errors} error(s) while syncing");
    }
    Ok(())
}

/// How many objects a listing rejected.
fn replace_kept(d: &Delta) -> usize {
    match d {
        Delta::Replace { kept, .. } => kept.len(),
        _ => 0,
    }
}

/// `svc-proxy check`: reads every source once and returns the listing of what would be
/// programmed and the number of problems (invalid objects, VIP:port clashes). No kernel state
/// is touched.
pub fn check(s: &Settings) -> Result<(String, usize)> {
    let metrics = Arc::new(Metrics::default());
    let mut store = Store::new(&s.node_name);
    let mut problems = 0;
    if !s.manifests.is_empty() {
        let mut files = FileSource::once(s.manifests.clone(), s.filter.clone(), metrics.clone());
        for d in files.rescan() {
            store.apply(SourceId::Files, d);
        }
        problems += files.errors;
    }
    if let Some(dir) = &s.attachments {
        for d in RecordSource::new(dir.clone(), metrics).rescan() {
            store.apply(SourceId::Records, d);
        }
    }
    if let Some(opts) = &s.api {
        let rt = runtime()?;
        for d in rt.block_on(async { api::list_once(api::client(opts).await?, opts).await })? {
            problems += replace_kept(&d);
            store.apply(SourceId::Api, d);
        }
    }
    let report = controller::check(&store, &s.controller.scheduler);
    Ok((report.listing, problems + report.conflicts))
}
