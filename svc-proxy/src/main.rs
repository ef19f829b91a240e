//! `svc-proxy`: parse the command line (kube-proxy's flags where they apply, and a
//! `KubeProxyConfiguration` file), then run the daemon, `check` or `cleanup`.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use log::LevelFilter;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;
use svc_proxy::config::{self, parse_go_duration, FileSettings};
use svc_proxy::daemon::Settings;
use svc_proxy::kernel::{Kernel, DEFAULT_DUMMY};
use svc_proxy::source::kube::ApiOptions;
use svc_proxy::source::records::DEFAULT_STATE_DIR;
use svc_proxy::validate::{Filter, SCHEDULERS};

#[derive(Parser)]
#[command(
    name = "svc-proxy",
    version,
    about = "Kubernetes Services on IPVS: virtual services per VIP:port, the VIPs on a dummy device, \
             hairpin masquerade through one ipset-driven rule. Takes Services and EndpointSlices from \
             the Kubernetes API (in place of kube-proxy --proxy-mode=ipvs) and/or from watched \
             manifest files, and the pods cni-bridge attached; reconciles incrementally.",
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
    /// Remove everything svc-proxy created (the dummy device with its VIPs, the virtual services
    /// on those VIPs, the SVCPROXY-* sets, chains and jumps), and nothing else.
    Cleanup {
        /// Name of the dummy device holding the VIPs.
        #[arg(long, value_name = "NAME", default_value = DEFAULT_DUMMY)]
        dummy: String,
    },
    /// After switching a node from kube-proxy --proxy-mode=ipvs (svc-proxy started with
    /// --dummy kube-ipvs0 adopts its VIPs and virtual services): remove what kube-proxy left
    /// that svc-proxy does not use — its iptables chains and the jumps to them (IPv4 and IPv6)
    /// and its KUBE-* ipsets, by kube-proxy's exact names. Never the IPVS services or
    /// kube-ipvs0. Refuses while kube-proxy runs in this network namespace; can run twice.
    RemoveKubeProxyLeftovers {
        /// Print what would be removed; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Read the sources once (the cluster, manifests, records) and print the virtual services
    /// they define (ipvsadm -Ln style); touches no kernel state. Exits 1 when an object is
    /// invalid or two Services claim one VIP:port.
    Check {
        #[command(flatten)]
        sources: SourceArgs,
        /// IPVS scheduler for Services without the `svc-proxy/scheduler` annotation.
        #[arg(long = "ipvs-scheduler", alias = "scheduler", value_name = "NAME")]
        scheduler: Option<String>,
    },
}

#[derive(Args)]
struct SourceArgs {
    /// Service / EndpointSlice manifest files or directories (*.yaml, *.yml, *.json in them),
    /// YAML or JSON, several documents per file. Without any, the Kubernetes API is the source.
    #[arg(value_name = "MANIFEST")]
    manifests: Vec<PathBuf>,
    /// cni-bridge state directory (<DIR>/<network>/<id>.<ifname>.json): the pods attached on
    /// this node, endpoints of manifest Services with a selector and no EndpointSlice. Default
    /// /var/lib/cni/cni-bridge when the API is not a source.
    #[arg(long, value_name = "DIR")]
    attachments: Option<PathBuf>,
    /// kubeconfig of the Kubernetes API (kube-proxy's --kubeconfig).
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// Address of the Kubernetes API server (overrides the kubeconfig's).
    #[arg(long, value_name = "URL")]
    master: Option<String>,
    /// This node's name, used for its Node object and for endpoint locality (default: the
    /// hostname).
    #[arg(long, value_name = "NAME")]
    hostname_override: Option<String>,
    /// Also take Services labelled service.kubernetes.io/service-proxy-name=NAME (others with
    /// that label belong to other proxies and are skipped).
    #[arg(long, value_name = "NAME")]
    service_proxy_name: Option<String>,
    /// A KubeProxyConfiguration (kubeproxy.config.k8s.io/v1alpha1) file; flags given on the
    /// command line override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    sources: SourceArgs,
    /// Name of the dummy device holding the VIPs (its addresses and their services are ours).
    #[arg(long, value_name = "NAME", default_value = DEFAULT_DUMMY)]
    dummy: String,
    /// IPVS scheduler for Services without the `svc-proxy/scheduler` annotation [default: rr].
    #[arg(long = "ipvs-scheduler", alias = "scheduler", value_name = "NAME")]
    scheduler: Option<String>,
    /// Full resync period (kernel dump, everything planned, inputs rescanned) [default: 30s].
    #[arg(long = "ipvs-sync-period", alias = "resync-period", value_name = "DURATION", value_parser = parse_go_duration)]
    sync_period: Option<Duration>,
    /// Least time between two syncs that changes trigger [default: 0s].
    #[arg(long = "ipvs-min-sync-period", value_name = "DURATION", value_parser = parse_go_duration)]
    min_sync_period: Option<Duration>,
    /// Address for /healthz and /livez (kube-proxy's meaning); "off" disables
    /// [default: 0.0.0.0:10256].
    #[arg(long, value_name = "ADDR")]
    healthz_bind_address: Option<String>,
    /// Address for /metrics; "off" disables [default: 127.0.0.1:10249].
    #[arg(long, alias = "metrics-address", value_name = "ADDR")]
    metrics_bind_address: Option<String>,
    /// Sets the default healthz and metrics addresses' family (kube-proxy's --bind-address).
    #[arg(long, value_name = "IP")]
    bind_address: Option<IpAddr>,
    /// A port that cannot be bound is fatal (else logged and skipped).
    #[arg(long)]
    bind_address_hard_fail: bool,
    /// The cluster's pod CIDRs (comma-separated, one per family): traffic to a cluster IP from
    /// outside them is masqueraded.
    #[arg(long, value_name = "CIDRS")]
    cluster_cidr: Option<String>,
    /// Masquerade every connection to a cluster IP.
    #[arg(long)]
    masquerade_all: bool,
    /// Which node addresses NodePorts listen on: CIDRs and/or `primary` (the node's own IPs),
    /// comma-separated [default: every address of the node].
    #[arg(long, value_name = "CIDRS")]
    nodeport_addresses: Option<String>,
    /// arp_ignore=1, arp_announce=2: the node answers ARP only for the receiving interface's
    /// addresses (MetalLB's layer 2 mode needs it).
    #[arg(long)]
    ipvs_strict_arp: bool,
    /// IPVS TCP session timeout (0: the kernel's).
    #[arg(long, value_name = "DURATION", value_parser = parse_go_duration)]
    ipvs_tcp_timeout: Option<Duration>,
    /// IPVS timeout of TCP sessions after FIN (0: the kernel's).
    #[arg(long, value_name = "DURATION", value_parser = parse_go_duration)]
    ipvs_tcpfin_timeout: Option<Duration>,
    /// IPVS UDP timeout (0: the kernel's).
    #[arg(long, value_name = "DURATION", value_parser = parse_go_duration)]
    ipvs_udp_timeout: Option<Duration>,
    /// Virtual services on addresses in these CIDRs (comma-separated) are never deleted: another
    /// program's.
    #[arg(long, value_name = "CIDRS")]
    ipvs_exclude_cidrs: Option<String>,
    /// Route the other nodes' pod CIDRs via their InternalIPs (host-gw), for Nodes on a network
    /// this node is directly on. Needs list and watch on all Nodes.
    #[arg(long)]
    pod_routes: bool,
    /// Must be "ipvs" (or empty): kube-proxy's other modes are not svc-proxy.
    #[arg(long, value_name = "MODE")]
    proxy_mode: Option<String>,
    /// How long a removed TCP real server drains at weight 0 before it is deleted even with
    /// connections left (UDP ones are deleted at once).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_go_duration)]
    graceful_timeout: Duration,
    /// Sync once and exit (status 1 if anything was invalid or failed); no watching, no HTTP.
    #[arg(long)]
    once: bool,
    /// Remove everything svc-proxy created and exit (kube-proxy's --cleanup; only ours is removed).
    #[arg(long)]
    cleanup: bool,
    /// Written to /proc/self/oom_score_adj at start (-1000..1000).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    oom_score_adj: Option<i32>,
    /// error, warn, info (one line per kernel change), debug or trace [default: info].
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<LevelFilter>,
    /// kube-proxy's log verbosity: 0-3 info, 4-5 debug, 6+ trace.
    #[arg(short = 'v', long = "v", value_name = "N")]
    verbosity: Option<u32>,
    #[command(flatten)]
    refused: Unimplemented,
}

/// kube-proxy flags svc-proxy does not implement: accepted only at their defaults, so a
/// command line written for kube-proxy fails by name instead of being half obeyed.
#[derive(Args)]
struct Unimplemented {
    #[arg(long, hide = true, value_name = "GATES")]
    feature_gates: Option<String>,
    #[arg(long, hide = true)]
    profiling: bool,
    #[arg(long, hide = true, value_name = "MODE")]
    detect_local_mode: Option<String>,
}

impl Unimplemented {
    /// The first flag set to a value other than kube-proxy's default.
    fn check(&self) -> Result<()> {
        let refused: &[(&str, bool, &str)] = &[
            (
                "--feature-gates",
                self.feature_gates.as_deref().is_some_and(|s| !s.is_empty()),
                "feature gates are not supported",
            ),
            (
                "--profiling",
                self.profiling,
                "svc-proxy serves no profiling endpoints",
            ),
            (
                "--detect-local-mode",
                self.detect_local_mode
                    .as_deref()
                    .is_some_and(|m| !m.is_empty() && m != "ClusterCIDR"),
                "local traffic is detected by --cluster-cidr only",
            ),
        ];
        match refused.iter().find(|(_, set, _)| *set) {
            Some((flag, _, why)) => bail!("{flag} is not supported: {why}"),
            None => Ok(()),
        }
    }
}

fn main() {
    let cli = Cli::parse();
    let level = cli
        .run
        .log_level
        .or(cli.run.verbosity.map(verbosity_level))
        .unwrap_or(LevelFilter::Info);
    svc_proxy::logger::init(level);
    let result = match cli.command {
        Some(Command::Cleanup { dummy }) => cleanup(&dummy),
        Some(Command::Check { sources, scheduler }) => check(sources, scheduler),
        Some(Command::RemoveKubeProxyLeftovers { dry_run }) => remove_kube_proxy_leftovers(dry_run),
        None if cli.run.cleanup => cleanup(&cli.run.dummy),
        None => run(cli.run),
    };
    if let Err(e) = result {
        log::error!("{e:#}");
        std::process::exit(1);
    }
}

fn verbosity_level(v: u32) -> LevelFilter {
    match v {
        0..=3 => LevelFilter::Info,
        4..=5 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    }
}

fn cleanup(dummy: &str) -> Result<()> {
    if let Some(running) = svc_proxy::instance::Instance::running(dummy) {
        bail!("not cleaning up: {running}");
    }
    let mut kernel = Kernel::open_for_cleanup(dummy)?;
    svc_proxy::dataplane::Dataplane::cleanup(&mut kernel)?;
    log::info!("removed everything svc-proxy owned (dummy device {dummy})");
    Ok(())
}

fn remove_kube_proxy_leftovers(dry_run: bool) -> Result<()> {
    let removed = svc_proxy::takeover::remove_leftovers(dry_run)?;
    let verb = if dry_run { "would remove" } else { "removed" };
    for line in &removed.rules {
        println!("{verb} {line}");
    }
    for set in &removed.sets {
        println!("{verb} ipset {set}");
    }
    if removed.rules.is_empty() && removed.sets.is_empty() {
        log::info!("nothing of kube-proxy's is left (chains, jumps, sets)");
    } else {
        log::info!(
            "{verb} {} iptables rule(s) and chain(s), {} ipset(s) of kube-proxy's",
            removed.rules.len(),
            removed.sets.len()
        );
    }
    if svc_proxy::instance::Instance::running("kube-ipvs0").is_none() {
        log::warn!(
            "no svc-proxy manages kube-ipvs0 here: kube-proxy's virtual services on it are \
             nobody's until `svc-proxy --dummy kube-ipvs0` runs"
        );
    }
    Ok(())
}

fn scheduler(flag: Option<String>, file: &FileSettings) -> Result<String> {
    let s = flag
        .or(file.scheduler.clone())
        .unwrap_or_else(|| svc_proxy::model::DEFAULT_SCHEDULER.to_string());
    if !SCHEDULERS.contains(&s.as_str()) {
        bail!(
            "IPVS scheduler {s:?} is unknown (expected one of {})",
            SCHEDULERS.join(", ")
        );
    }
    Ok(s)
}

fn read_config(path: Option<&Path>) -> Result<FileSettings> {
    let Some(path) = path else {
        return Ok(FileSettings::default());
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("--config {}", path.display()))?;
    Ok(config::parse(&path.display().to_string(), &text)?)
}

/// The sources and node identity the flags and the configuration file name.
struct Sources {
    manifests: Vec<PathBuf>,
    attachments: Option<PathBuf>,
    api: Option<ApiOptions>,
    node_name: String,
    filter: Filter,
}

fn sources(a: SourceArgs, file: &FileSettings) -> Result<Sources> {
    let mut manifests = Vec::new();
    for m in &a.manifests {
        let abs =
            std::path::absolute(m).with_context(|| format!("manifest path {}", m.display()))?;
        if !abs.exists() {
            bail!("manifest path {}: no such file or directory", m.display());
        }
        manifests.push(abs);
    }
    let node_name = match a.hostname_override.or(file.hostname_override.clone()) {
        Some(n) if n.trim().is_empty() => bail!("--hostname-override: empty node name"),
        Some(n) => n.trim().to_lowercase(),
        None => nix::unistd::gethostname()
            .context("reading the hostname (give --hostname-override)")?
            .to_string_lossy()
            .trim()
            .to_lowercase(),
    };
    let filter = Filter {
        proxy_name: a.service_proxy_name,
    };
    let kubeconfig = a.kubeconfig.or(file.kubeconfig.clone().map(PathBuf::from));
    let use_api = kubeconfig.is_some() || a.master.is_some() || manifests.is_empty();
    let api = use_api.then(|| ApiOptions {
        kubeconfig,
        master: a.master,
        node_name: node_name.clone(),
        filter: filter.clone(),
        all_nodes: false,
    });
    let attachments = match a.attachments {
        Some(dir) => Some(std::path::absolute(&dir).context("--attachments")?),
        None if api.is_none() => Some(PathBuf::from(DEFAULT_STATE_DIR)),
        None => None,
    };
    Ok(Sources {
        manifests,
        attachments,
        api,
        node_name,
        filter,
    })
}

fn check(a: SourceArgs, scheduler_flag: Option<String>) -> Result<()> {
    let file = read_config(a.config.as_deref())?;
    let scheduler = scheduler(scheduler_flag, &file)?;
    let src = sources(a, &file)?;
    let settings = Settings {
        manifests: src.manifests,
        attachments: src.attachments,
        api: src.api,
        node_name: src.node_name,
        filter: src.filter,
        dummy: DEFAULT_DUMMY.into(),
        controller: svc_proxy::controller::Config {
            scheduler,
            resync: Duration::ZERO,
            min_sync: Duration::ZERO,
            graceful_timeout: Duration::ZERO,
            nodeport_addresses: Default::default(),
            pod_routes: false,
            excluded: Vec::new(),
        },
        healthz_address: None,
        metrics_address: None,
        bind_hard_fail: false,
        once: true,
        oom_score_adj: None,
        kernel: Default::default(),
    };
    let (listing, problems) = svc_proxy::daemon::check(&settings)?;
    print!("{listing}");
    if problems > 0 {
        bail!("{problems} problem(s): invalid objects or clashing virtual services (see above)");
    }
    Ok(())
}

/// A comma-separated list of CIDRs (`what` names the flag or field in errors).
fn cidr_list(what: &str, list: Option<&str>) -> Result<Vec<ipnetwork::IpNetwork>> {
    let mut out = Vec::new();
    for c in list
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
    {
        out.push(
            c.parse::<ipnetwork::IpNetwork>()
                .with_context(|| format!("{what}: {c:?} is not a CIDR"))?,
        );
    }
    Ok(out)
}

/// `--nodeport-addresses`: CIDRs and the keyword `primary`.
fn nodeport_addresses(what: &str, list: &str) -> Result<svc_proxy::controller::NodePortAddresses> {
    let mut out = svc_proxy::controller::NodePortAddresses::default();
    for c in list.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        if c == "primary" {
            out.primary = true;
        } else {
            out.cidrs.push(
                c.parse()
                    .with_context(|| format!("{what}: {c:?} is neither a CIDR nor \"primary\""))?,
            );
        }
    }
    Ok(out)
}

/// `ADDR` with kube-proxy's defaults: "off" disables; a bare IP takes `port`.
fn bind_address(
    flag: Option<String>,
    file: Option<String>,
    default: SocketAddr,
    port: u16,
    what: &str,
) -> Result<Option<SocketAddr>> {
    let Some(s) = flag.or(file).filter(|s| !s.is_empty()) else {
        return Ok(Some(default));
    };
    if s == "off" {
        return Ok(None);
    }
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(Some(addr));
    }
    match s.trim_matches(|c| c == '[' || c == ']').parse::<IpAddr>() {
        Ok(ip) => Ok(Some(SocketAddr::new(ip, port))),
        Err(_) => bail!("{what} {s:?} is neither IP:PORT nor an IP"),
    }
}

fn run(a: RunArgs) -> Result<()> {
    a.refused.check()?;
    if let Some(m) = a
        .proxy_mode
        .as_deref()
        .filter(|m| !m.is_empty() && *m != "ipvs")
    {
        bail!("--proxy-mode {m}: svc-proxy is an IPVS proxy (mode must be \"ipvs\" or empty)");
    }
    let file = read_config(a.sources.config.as_deref())?;
    let scheduler = scheduler(a.scheduler, &file)?;
    let cluster_cidrs = cidr_list(
        "--cluster-cidr",
        a.cluster_cidr.as_deref().or(file.cluster_cidr.as_deref()),
    )?;
    let excluded = match &a.ipvs_exclude_cidrs {
        Some(list) => cidr_list("--ipvs-exclude-cidrs", Some(list))?,
        None => cidr_list("ipvs.excludeCIDRs", Some(&file.exclude_cidrs.join(",")))?,
    };
    let nodeport_addresses = match &a.nodeport_addresses {
        Some(list) => nodeport_addresses("--nodeport-addresses", list)?,
        None => nodeport_addresses("nodePortAddresses", &file.nodeport_addresses.join(","))?,
    };
    let seconds = |flag: Option<Duration>, file: Option<Duration>| {
        flag.or(file).map_or(0, |d| d.as_secs() as u32)
    };
    let timeouts = nodenet::ipvs::Timeouts {
        tcp: seconds(a.ipvs_tcp_timeout, file.tcp_timeout),
        tcp_fin: seconds(a.ipvs_tcpfin_timeout, file.tcp_fin_timeout),
        udp: seconds(a.ipvs_udp_timeout, file.udp_timeout),
    };
    let kernel = svc_proxy::kernel::KernelOptions {
        rules: svc_proxy::rules::RuleOptions {
            cluster_cidrs,
            masquerade_all: a.masquerade_all || file.masquerade_all == Some(true),
        },
        strict_arp: a.ipvs_strict_arp || file.strict_arp == Some(true),
        timeouts: (timeouts.tcp > 0 || timeouts.tcp_fin > 0 || timeouts.udp > 0)
            .then_some(timeouts),
    };
    let bind_ip = match a.bind_address {
        Some(ip) => Some(ip),
        None => file
            .bind_address
            .as_deref()
            .map(|s| {
                s.parse::<IpAddr>()
                    .with_context(|| format!("bindAddress {s:?}"))
            })
            .transpose()?,
    };
    let v6 = bind_ip.is_some_and(|ip| ip.is_ipv6());
    let (any, local): (IpAddr, IpAddr) = if v6 {
        ("::".parse()?, "::1".parse()?)
    } else {
        ("0.0.0.0".parse()?, "127.0.0.1".parse()?)
    };
    let healthz_address = bind_address(
        a.healthz_bind_address,
        file.healthz_bind_address.clone(),
        SocketAddr::new(any, 10256),
        10256,
        "--healthz-bind-address",
    )?;
    let metrics_address = bind_address(
        a.metrics_bind_address,
        file.metrics_bind_address.clone(),
        SocketAddr::new(local, 10249),
        10249,
        "--metrics-bind-address",
    )?;
    let resync = a
        .sync_period
        .or(file.sync_period)
        .unwrap_or(Duration::from_secs(30));
    if resync.is_zero() {
        bail!("--ipvs-sync-period must be more than 0");
    }
    let mut src = sources(a.sources, &file)?;
    if let Some(api) = src.api.as_mut() {
        api.all_nodes = a.pod_routes;
    }
    let settings = Settings {
        manifests: src.manifests,
        attachments: src.attachments,
        api: src.api,
        node_name: src.node_name,
        filter: src.filter,
        dummy: a.dummy,
        controller: svc_proxy::controller::Config {
            scheduler,
            resync,
            min_sync: a
                .min_sync_period
                .or(file.min_sync_period)
                .unwrap_or_default(),
            graceful_timeout: a.graceful_timeout,
            nodeport_addresses,
            pod_routes: a.pod_routes,
            excluded,
        },
        healthz_address,
        metrics_address,
        bind_hard_fail: a.bind_address_hard_fail || file.bind_address_hard_fail == Some(true),
        once: a.once,
        oom_score_adj: a.oom_score_adj.or(file.oom_score_adj),
        kernel,
    };
    if a.log_level.is_none() && a.verbosity.is_none() {
        if let Some(v) = file.verbosity {
            log::set_max_level(verbosity_level(v));
        }
    }
    log::info!(
        "svc-proxy {} on node {}: sources {}",
        env!("CARGO_PKG_VERSION"),
        settings.node_name,
        describe_sources(&settings)
    );
    svc_proxy::daemon::run(settings, shutdown_signal())
}

fn describe_sources(s: &Settings) -> String {
    let mut out = Vec::new();
    if let Some(api) = &s.api {
        out.push(match (&api.kubeconfig, &api.master) {
            (Some(k), _) => format!("the Kubernetes API (kubeconfig {})", k.display()),
            (None, Some(m)) => format!("the Kubernetes API at {m}"),
            (None, None) => "the Kubernetes API (inferred configuration)".to_string(),
        });
    }
    if !s.manifests.is_empty() {
        out.push(format!("{} manifest path(s)", s.manifests.len()));
    }
    if let Some(dir) = &s.attachments {
        out.push(format!("attachment records in {}", dir.display()));
    }
    out.join(", ")
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        log::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => log::info!("SIGTERM: shutting down (kernel state stays in place)"),
        _ = int.recv() => log::info!("SIGINT: shutting down (kernel state stays in place)"),
    }
}
