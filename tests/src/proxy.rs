//! svc-proxy's daemon run in-process against a real API server, on the recording dataplane (the
//! host tier has no IPVS): what it would program is read back from the recording, every
//! operation it applied is kept, and its log lines are captured.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use svc_proxy::controller::Config;
use svc_proxy::daemon::Settings;
use svc_proxy::dataplane::fake::Recording;
use svc_proxy::metrics::Metrics;
use svc_proxy::model::{Observed, ServiceKey};
use svc_proxy::plan::Op;
use svc_proxy::source::kube::ApiOptions;
use svc_proxy::validate::Filter;

/// A daemon running on a thread of its own; stopped (and joined) on drop.
pub struct Proxy {
    pub dp: Arc<Mutex<Recording>>,
    pub metrics: Arc<Metrics>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

/// What a test changes in the default settings.
pub struct Options {
    pub node_name: String,
    pub proxy_name: Option<String>,
    pub resync: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            node_name: "node-1".into(),
            proxy_name: None,
            resync: Duration::from_secs(2),
        }
    }
}

/// The settings of a daemon fed only by the API at `kubeconfig`.
pub fn settings(kubeconfig: &Path, o: &Options) -> Settings {
    let filter = Filter {
        proxy_name: o.proxy_name.clone(),
    };
    Settings {
        manifests: vec![],
        attachments: None,
        api: Some(ApiOptions {
            kubeconfig: Some(kubeconfig.to_path_buf()),
            master: None,
            node_name: o.node_name.clone(),
            filter: filter.clone(),
            all_nodes: false,
        }),
        node_name: o.node_name.clone(),
        filter,
        dummy: "svcproxy0".into(),
        controller: Config {
            scheduler: "rr".into(),
            resync: o.resync,
            min_sync: Duration::ZERO,
            graceful_timeout: Duration::from_secs(60),
            nodeport_addresses: Default::default(),
            pod_routes: false,
            excluded: Vec::new(),
        },
        healthz_address: None,
        metrics_address: None,
        bind_hard_fail: false,
        once: false,
        oom_score_adj: None,
        kernel: Default::default(),
    }
}

impl Proxy {
    /// Starts the daemon with `settings` on `dp` (a fresh recording, or one holding "adopted"
    /// kernel state).
    pub fn start(settings: Settings, dp: Recording) -> Proxy {
        capture_logs();
        let dp = Arc::new(Mutex::new(dp));
        let metrics = Arc::new(Metrics::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (d, m) = (dp.clone(), metrics.clone());
        let thread = std::thread::spawn(move || {
            svc_proxy::daemon::run_with(settings, d, m, async move {
                let _ = stopped.await;
            })
        });
        Proxy {
            dp,
            metrics,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The kernel as the recording holds it now.
    pub fn state(&self) -> Observed {
        self.dp.lock().unwrap().state.clone()
    }

    /// Every operation applied so far (kept; not taken).
    pub fn applied(&self) -> Vec<Op> {
        self.dp.lock().unwrap().applied.clone()
    }

    /// How often the daemon ensured its base state and dumped the kernel.
    pub fn kernel_reads(&self) -> (usize, usize) {
        let dp = self.dp.lock().unwrap();
        (dp.base_ensured, dp.full_observes)
    }

    /// The real servers and weights of virtual service `key`, `None` when there is none.
    pub fn real_servers(&self, key: &ServiceKey) -> Option<Vec<(SocketAddr, u32)>> {
        let dp = self.dp.lock().unwrap();
        dp.state
            .services
            .get(key)
            .map(|s| s.dests.iter().map(|(a, d)| (*a, d.weight)).collect())
    }

    /// The real servers of `key` that take new connections (weight above 0).
    pub fn serving(&self, key: &ServiceKey) -> Option<Vec<SocketAddr>> {
        self.real_servers(key).map(|v| {
            v.into_iter()
                .filter(|(_, w)| *w > 0)
                .map(|(a, _)| a)
                .collect()
        })
    }

    /// Whether the daemon thread has ended (it should not before drop).
    pub fn finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("svc-proxy (in-process) ended with: {e:#}"),
                Err(_) => eprintln!("svc-proxy (in-process) panicked"),
            }
        }
    }
}

/// A TCP virtual service key.
pub fn tcp(addr: &str, port: u16) -> ServiceKey {
    ServiceKey {
        addr: addr.parse::<IpAddr>().expect("an address"),
        protocol: nodenet::Protocol::Tcp,
        port,
    }
}

/// Socket addresses from `"ip:port"` strings, sorted.
pub fn addrs(list: &[&str]) -> Vec<SocketAddr> {
    let mut v: Vec<SocketAddr> = list.iter().map(|s| s.parse().expect("ip:port")).collect();
    v.sort();
    v
}

struct Capture;

static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Info
    }

    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            let line = format!("{} {}", r.level(), r.args());
            eprintln!("svc-proxy: {line}");
            LINES.lock().unwrap_or_else(|p| p.into_inner()).push(line);
        }
    }

    fn flush(&self) {}
}

/// Installs the capturing logger once per test process (svc-proxy logs through `log`).
fn capture_logs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        if log::set_logger(&Capture).is_ok() {
            log::set_max_level(log::LevelFilter::Info);
        }
    });
}

/// The log lines captured so far that contain `needle`.
pub fn logged(needle: &str) -> Vec<String> {
    logged_since(0, needle)
}

/// Where the captured log ends now (see [`logged_since`]).
pub fn log_mark() -> usize {
    LINES.lock().unwrap_or_else(|p| p.into_inner()).len()
}

/// The log lines captured after `mark` that contain `needle`.
pub fn logged_since(mark: usize, needle: &str) -> Vec<String> {
    LINES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .skip(mark)
        .filter(|l| l.contains(needle))
        .cloned()
        .collect()
}
