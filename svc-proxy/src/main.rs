//! `svc-proxy`: parse the command line, then run the daemon, `cleanup` or `check`.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use log::LevelFilter;
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use svc_proxy::attachments::DEFAULT_STATE_DIR;
use svc_proxy::controller::{Config, Controller, Event};
use svc_proxy::kernel::{Kernel, DEFAULT_DUMMY};
use svc_proxy::manifest::SCHEDULERS;
use svc_proxy::metrics::Metrics;

/// How long a burst of file events must settle before it is applied.
const DEBOUNCE: Duration = Duration::from_millis(50);

#[derive(Parser)]
#[command(
    name = "svc-proxy",
    version,
    about = "Kubernetes Services on IPVS: virtual services per VIP:port, the VIPs on a dummy device, \
             hairpin masquerade through one ipset-driven rule. Reconciles incrementally from watched \
             Service/EndpointSlice manifests and cni-bridge attachment records.",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Remove everything svc-proxy created (the dummy device with its VIPs, the virtual services on
    /// those VIPs, the SVCPROXY-LOOP-BACK set, the SVCPROXY-POSTROUTING chain and its jump), and
    /// nothing else.
    Cleanup {
        /// Name of the dummy device holding the VIPs.
        #[arg(long, value_name = "NAME", default_value = DEFAULT_DUMMY)]
        dummy: String,
    },
    /// Parse and validate manifests and print the virtual services they define (ipvsadm -Ln
    /// style); touches no kernel state. Exits 1 when a manifest is invalid.
    Check {
        #[command(flatten)]
        inputs: Inputs,
    },
}

#[derive(Args)]
struct Inputs {
    /// Service / EndpointSlice manifest files or directories (*.yaml, *.yml, *.json in them),
    /// YAML or JSON, several documents per file.
    #[arg(value_name = "MANIFEST", required = true)]
    manifests: Vec<PathBuf>,
    /// cni-bridge state directory with attachment records (<DIR>/<network>/<id>.<ifname>.json),
    /// the endpoints of Services that have a selector and no EndpointSlice.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    attachments: PathBuf,
    /// IPVS scheduler for Services without the `svc-proxy/scheduler` annotation.
    #[arg(long, value_name = "NAME", default_value = svc_proxy::model::DEFAULT_SCHEDULER, value_parser = parse_scheduler)]
    scheduler: String,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    inputs: Inputs,
    /// Name of the dummy device holding the VIPs (its addresses and their services are ours).
    #[arg(long, value_name = "NAME", default_value = DEFAULT_DUMMY)]
    dummy: String,
    /// Address for GET /healthz and /metrics; "off" disables them.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:10249")]
    metrics_address: String,
    /// Full resync period (kernel dump, inputs rescanned): e.g. 30s, 2m.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    resync_period: Duration,
    /// How long a removed TCP/SCTP real server drains at weight 0 before it is deleted even with
    /// connections left (UDP ones are deleted at once).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    graceful_timeout: Duration,
    /// Sync once and exit (status 1 if anything failed); no watching, no HTTP.
    #[arg(long)]
    once: bool,
    /// error, warn, info (one line per kernel change) or debug.
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    log_level: LevelFilter,
}

fn parse_scheduler(s: &str) -> Result<String, String> {
    if SCHEDULERS.contains(&s) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "unknown IPVS scheduler (expected one of {})",
            SCHEDULERS.join(", ")
        ))
    }
}

/// `500ms`, `30s`, `5m`, `1h`, or plain seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 30s, 5m, 500ms)"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    }
}

fn main() {
    let cli = Cli::parse();
    let level = cli.run.log_level;
    svc_proxy::logger::init(level);
    let result = match cli.command {
        Some(Command::Cleanup { dummy }) => cleanup(&dummy),
        Some(Command::Check { inputs }) => check(inputs),
        None => run(cli.run),
    };
    if let Err(e) = result {
        log::error!("{e:#}");
        std::process::exit(1);
    }
}

fn config(inputs: Inputs, resync: Duration, graceful_timeout: Duration) -> Result<Config> {
    let mut manifests = Vec::new();
    for m in inputs.manifests {
        let abs =
            std::path::absolute(&m).with_context(|| format!("manifest path {}", m.display()))?;
        if !abs.exists() {
            bail!("manifest path {}: no such file or directory", m.display());
        }
        manifests.push(abs);
    }
    Ok(Config {
        manifests,
        attachments: std::path::absolute(&inputs.attachments).context("--attachments")?,
        scheduler: inputs.scheduler,
        resync,
        graceful_timeout,
    })
}

fn cleanup(dummy: &str) -> Result<()> {
    let mut kernel = Kernel::open_for_cleanup(dummy)?;
    svc_proxy::dataplane::Dataplane::cleanup(&mut kernel)?;
    log::info!("removed everything svc-proxy owned (dummy device {dummy})");
    Ok(())
}

fn check(inputs: Inputs) -> Result<()> {
    let cfg = config(inputs, Duration::ZERO, Duration::ZERO)?;
    let report = svc_proxy::controller::check(&cfg);
    print!("{}", report.listing);
    if report.errors > 0 {
        bail!("{} invalid manifest(s)", report.errors);
    }
    Ok(())
}

fn run(args: RunArgs) -> Result<()> {
    let cfg = config(args.inputs, args.resync_period, args.graceful_timeout)?;
    let metrics = Arc::new(Metrics::default());
    let kernel = Kernel::open(&args.dummy)?;
    let mut controller = Controller::new(cfg.clone(), kernel, metrics.clone(), Instant::now());
    if args.once {
        controller.resync(Instant::now());
        if controller.errors() > 0 {
            bail!("{} error(s) while syncing", controller.errors());
        }
        return Ok(());
    }

    // Signals are taken by one thread with sigwait; every thread started
    // later inherits the mask (the kernel handle's runtime is single-threaded).
    let signals = {
        use nix::sys::signal::{SigSet, Signal};
        let mut set = SigSet::empty();
        for s in [Signal::SIGTERM, Signal::SIGINT] {
            set.add(s);
        }
        set.thread_block().context("blocking signals")?;
        set
    };
    let (tx, rx) = mpsc::channel();
    let signal_tx = tx.clone();
    std::thread::spawn(move || {
        if let Ok(sig) = signals.wait() {
            log::info!("{sig}: shutting down (kernel state stays in place)");
        }
        let _ = signal_tx.send(Event::Shutdown);
    });

    if args.metrics_address != "off" {
        let listener = std::net::TcpListener::bind(&args.metrics_address)
            .with_context(|| format!("--metrics-address {}", args.metrics_address))?;
        log::info!(
            "serving /healthz and /metrics on http://{}",
            listener.local_addr()?
        );
        let window = cfg.resync * 3;
        let metrics = metrics.clone();
        std::thread::spawn(move || svc_proxy::http::serve(listener, metrics, window));
    }

    let mut watches = svc_proxy::watch::Watches::start(&cfg.manifests, &cfg.attachments, tx)
        .context("watching the manifests")?;
    controller.run(&rx, DEBOUNCE, || watches.retry_attachments());
    Ok(())
}
