//! svc-proxy beside kube-proxy (`--proxy-mode=ipvs` and `--proxy-mode=nftables`) on a real API
//! server: the measuring side of `bench/kube-proxy/` (issue 10, and issue 9's API-vs-files
//! figures). Subcommands:
//!
//! - `populate` (host): N Services × 5 endpoints in one API namespace, with EndpointSlices of
//!   their own (selector-less Services, so the EndpointSlice controller leaves them alone), plus
//!   the `conn` Service whose one endpoint is the connection benchmark's server;
//! - `manifests` (guest): the same Services and slices as manifest files, for svc-proxy's file
//!   source (the "from files" column);
//! - `measure` (guest, inside the node namespace): lists what the API holds, starts one proxy and
//!   times it against the kernel — start → every virtual service with its real servers (IPVS) or
//!   every service in kube-proxy's `service-ips` map (nftables, one atomic transaction per sync);
//!   start → the proxy reports its first sync over (kube-proxy's IPVS mode has its virtual
//!   services in the kernel long before: its ipsets, one process per entry, come after); then,
//!   against a proxy done with its first sync, one EndpointSlice change → kernel over T trials
//!   (or as many as fit in a time budget); CPU over an idle window; peak RSS; new
//!   connections per second through one ClusterIP from a client namespace; writes one JSON record;
//! - `serve` / `connect`: the connection benchmark's server and client;
//! - `report`: the records side by side, ratios against kube-proxy's IPVS mode, and the last line
//!   `svc-proxy/kube-proxy: first-sync R1, one-change R2, idle-cpu R3, rss R4`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::Client;
use nodenet::ipvs::{Ipvs, ServiceKey};
use nodenet::Protocol;
use serde::{Deserialize, Serialize};

const ENDPOINTS: usize = 5;
const PORT: u16 = 80;
const TARGET_PORT: u16 = 8080;
const MANAGED_BY: &str = "bench.nodenet.test";
/// USER_HZ, the unit of /proc/PID/stat's CPU times (100 on every Linux architecture we run).
const CLOCK_TICKS: f64 = 100.0;

#[derive(Parser)]
#[command(about = "svc-proxy beside kube-proxy on a real API server (bench/kube-proxy)")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// N Services × 5 endpoints (and the `conn` Service) in NAMESPACE, replacing what was there.
    Populate {
        #[arg(long)]
        kubeconfig: PathBuf,
        #[arg(long)]
        services: usize,
        #[arg(long, default_value = "bench")]
        namespace: String,
        /// The connection benchmark's server, the `conn` Service's one endpoint.
        #[arg(long, default_value = "10.250.0.2")]
        conn_backend: Ipv4Addr,
        /// API requests in flight.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
    /// What the API holds in NAMESPACE as manifest files (one per Service, with its slices).
    Manifests {
        #[arg(long)]
        kubeconfig: PathBuf,
        #[arg(long, default_value = "bench")]
        namespace: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Starts the proxy command after `--` and measures it; appends one JSON record to --out.
    Measure(Box<MeasureArgs>),
    /// Accepts connections, answers each with one line and closes it.
    Serve {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Opens, reads and closes connections to --to for --seconds; prints the count.
    Connect {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    /// Prints the records of FILEs side by side.
    Report { files: Vec<PathBuf> },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize, Debug)]
enum Dataplane {
    Ipvs,
    Nftables,
}

#[derive(Parser)]
struct MeasureArgs {
    /// The column's name in the report (svc-proxy, svc-proxy-files, kube-proxy-ipvs, ...).
    #[arg(long)]
    name: String,
    #[arg(long, value_enum)]
    dataplane: Dataplane,
    #[arg(long)]
    kubeconfig: PathBuf,
    #[arg(long, default_value = "bench")]
    namespace: String,
    /// EndpointSlice changes timed, one after the other.
    #[arg(long, default_value_t = 20)]
    trials: usize,
    /// Offset of the trials' fresh endpoint addresses (unique per proxy of one run).
    #[arg(long, default_value_t = 0)]
    trial_base: u32,
    /// Seconds of steady state over which the daemon's CPU time is counted (0: skipped).
    #[arg(long, default_value_t = 120)]
    idle: u64,
    /// Network namespace of the connection benchmark's client (none: skipped).
    #[arg(long)]
    conn_client: Option<String>,
    #[arg(long, default_value_t = 10)]
    conn_seconds: u64,
    /// This binary, for the client run in --conn-client.
    #[arg(long)]
    self_bin: Option<PathBuf>,
    /// The proxy's metrics address (kubeproxy_* families: both proxies serve them).
    #[arg(long, default_value = "127.0.0.1:10249")]
    metrics: SocketAddr,
    /// Give up converging (and waiting for the first sync to end) after this many seconds.
    #[arg(long, default_value_t = 1800)]
    timeout: u64,
    /// Give up one trial after this many seconds.
    #[arg(long, default_value_t = 900)]
    trial_timeout: u64,
    /// Start no trial after this many seconds of trials (0: no limit): for a proxy whose one
    /// change takes minutes, fewer trials rather than none; the report says how many ran.
    #[arg(long, default_value_t = 0)]
    trials_within: u64,
    /// The proxy's output.
    #[arg(long)]
    log: PathBuf,
    /// JSON records are appended here.
    #[arg(long)]
    out: PathBuf,
    /// The proxy's command line.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug)]
struct Record {
    name: String,
    dataplane: Dataplane,
    services: usize,
    /// Start → converged in the kernel, seconds.
    first_sync: f64,
    /// How long the convergence check that saw everything took (the figure's resolution).
    check: f64,
    /// Start → the proxy reports its first sync over (kubeproxy_sync_proxy_rules_last_timestamp_seconds).
    #[serde(default)]
    first_complete: Option<f64>,
    /// Peak RSS right after convergence, KiB.
    rss_converged: u64,
    /// One change → kernel, milliseconds.
    trials: Vec<f64>,
    /// How long one kernel poll took during the trials (their resolution; for nftables, one look
    /// at the monitor's lines), milliseconds.
    poll: f64,
    idle_seconds: u64,
    /// CPU seconds (the daemon and the children it waited for) over the idle window.
    idle_cpu: Option<f64>,
    /// Peak RSS at the end, KiB.
    rss_peak: u64,
    conn_per_second: Option<f64>,
    /// kubeproxy_sync_proxy_rules_duration_seconds: syncs and their total, as the proxy counts.
    syncs: Option<(f64, f64)>,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Populate {
            kubeconfig,
            services,
            namespace,
            conn_backend,
            concurrency,
        } => runtime()?.block_on(populate(
            &kubeconfig,
            services,
            &namespace,
            conn_backend,
            concurrency,
        )),
        Cmd::Manifests {
            kubeconfig,
            namespace,
            out,
        } => runtime()?.block_on(manifests(&kubeconfig, &namespace, &out)),
        Cmd::Measure(a) => measure(&a),
        Cmd::Serve { listen } => serve(listen),
        Cmd::Connect {
            to,
            seconds,
            threads,
        } => {
            println!("{}", connect(to, Duration::from_secs(seconds), threads)?);
            Ok(())
        }
        Cmd::Report { files } => report(&files),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

async fn client(kubeconfig: &Path) -> Result<Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    Ok(Client::try_from(cfg)?)
}

/// Endpoint `j` of Service `i`: unique over the population, inside 10.128.0.0/10.
fn pod(i: usize, j: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 2)) + (i * ENDPOINTS + j) as u32)
}

fn service(name: &str, namespace: &str) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                protocol: Some("TCP".into()),
                port: PORT.into(),
                target_port: Some(IntOrString::Int(TARGET_PORT.into())),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn endpoint(ip: IpAddr) -> Endpoint {
    Endpoint {
        addresses: vec![ip.to_string()],
        conditions: Some(EndpointConditions {
            ready: Some(true),
            serving: Some(true),
            terminating: Some(false),
        }),
        ..Default::default()
    }
}

fn slice(service: &str, namespace: &str, ips: &[IpAddr]) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(format!("{service}-1")),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([
                ("kubernetes.io/service-name".into(), service.into()),
                (
                    "endpointslice.kubernetes.io/managed-by".into(),
                    MANAGED_BY.into(),
                ),
            ])),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: ips.iter().map(|ip| endpoint(*ip)).collect(),
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            protocol: Some("TCP".into()),
            port: Some(TARGET_PORT.into()),
            ..Default::default()
        }]),
    }
}

async fn populate(
    kubeconfig: &Path,
    n: usize,
    ns: &str,
    conn_backend: Ipv4Addr,
    concurrency: usize,
) -> Result<()> {
    let c = client(kubeconfig).await?;
    let namespaces: Api<Namespace> = Api::all(c.clone());
    let started = Instant::now();
    if namespaces.get_opt(ns).await?.is_some() {
        namespaces.delete(ns, &DeleteParams::default()).await?;
        while namespaces.get_opt(ns).await?.is_some() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        eprintln!(
            "populate: namespace {ns} deleted in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    let started = Instant::now();
    let mut meta = Namespace::default();
    meta.metadata.name = Some(ns.into());
    namespaces.create(&PostParams::default(), &meta).await?;
    let services: Api<Service> = Api::namespaced(c.clone(), ns);
    let slices: Api<EndpointSlice> = Api::namespaced(c.clone(), ns);
    let mut objects: Vec<(String, Vec<IpAddr>)> = (0..n)
        .map(|i| {
            let ips = (0..ENDPOINTS).map(|j| IpAddr::V4(pod(i, j))).collect();
            (format!("svc-{i}"), ips)
        })
        .collect();
    objects.push(("conn".into(), vec![IpAddr::V4(conn_backend)]));
    let pp = PostParams::default();
    futures::stream::iter(objects.iter().map(|(name, ips)| {
        let (services, slices, pp) = (&services, &slices, &pp);
        async move {
            services
                .create(pp, &service(name, ns))
                .await
                .with_context(|| format!("creating Service {ns}/{name}"))?;
            slices
                .create(pp, &slice(name, ns, ips))
                .await
                .with_context(|| format!("creating the EndpointSlice of {ns}/{name}"))?;
            anyhow::Ok(())
        }
    }))
    .buffer_unordered(concurrency.max(1))
    .try_collect::<Vec<()>>()
    .await?;
    eprintln!(
        "populate: {} Services and EndpointSlices created in {:.1} s",
        objects.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// What the API holds in the namespace: each Service's virtual service and its endpoints.
struct Expected {
    services: BTreeMap<ServiceKey, BTreeSet<SocketAddr>>,
    /// Service name → its key and its slice's name.
    by_name: BTreeMap<String, (ServiceKey, String)>,
}

async fn list(c: &Client, ns: &str) -> Result<(Vec<Service>, Vec<EndpointSlice>)> {
    let lp = ListParams::default();
    let services = Api::<Service>::namespaced(c.clone(), ns).list(&lp).await?;
    let slices = Api::<EndpointSlice>::namespaced(c.clone(), ns)
        .list(&lp)
        .await?;
    Ok((services.items, slices.items))
}

fn expected(services: &[Service], slices: &[EndpointSlice]) -> Result<Expected> {
    let mut by_slice: BTreeMap<String, (String, BTreeSet<SocketAddr>)> = BTreeMap::new();
    for s in slices {
        let Some(owner) = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name"))
        else {
            continue;
        };
        let mut eps = BTreeSet::new();
        for e in &s.endpoints {
            for a in &e.addresses {
                eps.insert(SocketAddr::new(a.parse()?, TARGET_PORT));
            }
        }
        by_slice.insert(
            owner.clone(),
            (s.metadata.name.clone().unwrap_or_default(), eps),
        );
    }
    let mut out = Expected {
        services: BTreeMap::new(),
        by_name: BTreeMap::new(),
    };
    for s in services {
        let name = s.metadata.name.clone().unwrap_or_default();
        let ip = s
            .spec
            .as_ref()
            .and_then(|sp| sp.cluster_ip.as_deref())
            .with_context(|| format!("Service {name} has no clusterIP"))?;
        let key = ServiceKey::new(ip.parse()?, Protocol::Tcp, PORT);
        let (slice_name, eps) = by_slice
            .remove(&name)
            .with_context(|| format!("Service {name} has no EndpointSlice"))?;
        out.services.insert(key, eps);
        out.by_name.insert(name, (key, slice_name));
    }
    Ok(out)
}

async fn manifests(kubeconfig: &Path, ns: &str, out: &Path) -> Result<()> {
    let c = client(kubeconfig).await?;
    let (services, slices) = list(&c, ns).await?;
    let want = expected(&services, &slices)?;
    fs::create_dir_all(out)?;
    for (name, (key, _)) in &want.by_name {
        let mut svc = service(name, ns);
        if let Some(spec) = svc.spec.as_mut() {
            spec.cluster_ip = Some(key.addr.to_string());
        }
        let ips: Vec<IpAddr> = want.services[key].iter().map(|a| a.ip()).collect();
        let text = format!(
            "{}\n---\n{}\n",
            serde_json::to_string(&svc)?,
            serde_json::to_string(&slice(name, ns, &ips))?
        );
        fs::write(out.join(format!("{name}.yaml")), text)?;
    }
    eprintln!(
        "manifests: {} Services into {}",
        want.by_name.len(),
        out.display()
    );
    Ok(())
}

/// What one proxy programmed, read from the kernel.
trait Probe {
    /// Whether every expected virtual service has exactly its endpoints (IPVS), or is in
    /// kube-proxy's service map (nftables).
    fn converged(&mut self, want: &Expected) -> Result<bool>;
    /// Called once before the trials.
    fn prepare(&mut self) -> Result<()> {
        Ok(())
    }
    /// When `service` was first seen sending to `endpoint`, if it does yet.
    fn seen(
        &mut self,
        want: &Expected,
        name: &str,
        endpoint: SocketAddr,
    ) -> Result<Option<Instant>>;
    /// For a trial that waits long: what the kernel holds for `service` now, read the slow way.
    fn describe(&mut self, want: &Expected, name: &str, endpoint: SocketAddr) -> String;
}

struct IpvsProbe(Ipvs);

impl Probe for IpvsProbe {
    fn converged(&mut self, want: &Expected) -> Result<bool> {
        let present: BTreeSet<ServiceKey> = self.0.services()?.into_iter().map(|s| s.key).collect();
        if want.services.keys().any(|k| !present.contains(k)) {
            return Ok(false);
        }
        for (key, eps) in &want.services {
            let got: BTreeSet<SocketAddr> = self
                .0
                .destinations(key)?
                .into_iter()
                .filter(|d| d.weight > 0)
                .map(|d| SocketAddr::new(d.addr, d.port))
                .collect();
            if &got != eps {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn seen(
        &mut self,
        want: &Expected,
        name: &str,
        endpoint: SocketAddr,
    ) -> Result<Option<Instant>> {
        let key = want.by_name[name].0;
        let there = self
            .0
            .destinations(&key)?
            .iter()
            .any(|d| d.weight > 0 && SocketAddr::new(d.addr, d.port) == endpoint);
        Ok(there.then(Instant::now))
    }

    fn describe(&mut self, want: &Expected, name: &str, _endpoint: SocketAddr) -> String {
        let key = want.by_name[name].0;
        match self.0.destinations(&key) {
            Ok(d) => format!(
                "the kernel's real servers of {name}: {:?}",
                d.iter()
                    .map(|d| format!("{}:{} w{}", d.addr, d.port, d.weight))
                    .collect::<Vec<_>>()
            ),
            Err(e) => format!("reading {name}'s real servers: {e:#}"),
        }
    }
}

/// kube-proxy's nftables mode: table `ip kube-proxy`, map `service-ips` (ClusterIP . proto .
/// port : goto the service's chain), whose chain DNATs to its endpoints through a numgen map.
/// Listing a chain takes ~150 ms under emulation, so the trials read `nft monitor` instead: the
/// kernel announces each committed transaction's rules, and a reader thread stamps every line as
/// it arrives.
#[derive(Default)]
struct NftProbe {
    chains: BTreeMap<ServiceKey, String>,
    monitor: Option<Child>,
    lines: Arc<std::sync::Mutex<Vec<(Instant, String)>>>,
    /// Lines before this one have been looked at (a trial's address is new, so an earlier line
    /// never names it).
    scanned: usize,
    /// The monitor never went live: the trials list the service's chain instead (resolution:
    /// one listing, the record's `poll`).
    listing: bool,
}

impl NftProbe {
    fn stop_monitor(&mut self) {
        if let Some(mut m) = self.monitor.take() {
            let _ = m.kill();
            let _ = m.wait();
        }
    }
}

impl Drop for NftProbe {
    fn drop(&mut self) {
        self.stop_monitor();
    }
}

fn nft(args: &[&str]) -> Result<String> {
    node_bench::run("nft", args)
}

/// The table the nftables probe adds and deletes to see its monitor live.
const SENTINEL: &str = "kube-bench-sentinel";

/// `nft -f -` with SCRIPT: one transaction.
fn nft_batch(script: &str) -> Result<()> {
    node_bench::run_with_input("nft", &["-f", "-"], script).map(drop)
}

/// `10.96.0.10 . tcp . 80 : goto service-XXXXXXXX-ns/name/tcp/http` elements of a map listing.
fn parse_service_map(text: &str) -> BTreeMap<ServiceKey, String> {
    let mut out = BTreeMap::new();
    let words: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || c == ',' || c == '{' || c == '}')
        .filter(|w| !w.is_empty())
        .collect();
    for w in words.windows(8) {
        if let [ip, ".", proto, ".", port, ":", "goto", chain] = w {
            let (Ok(ip), Ok(port)) = (ip.parse::<IpAddr>(), port.parse::<u16>()) else {
                continue;
            };
            let Ok(protocol) = proto.parse::<Protocol>() else {
                continue;
            };
            out.insert(
                ServiceKey::new(ip, protocol, port),
                chain.trim_matches('"').to_string(),
            );
        }
    }
    out
}

impl Probe for NftProbe {
    fn converged(&mut self, want: &Expected) -> Result<bool> {
        let Ok(text) = nft(&["list", "map", "ip", "kube-proxy", "service-ips"]) else {
            return Ok(false);
        };
        self.chains = parse_service_map(&text);
        Ok(want.services.keys().all(|k| self.chains.contains_key(k)))
    }

    fn prepare(&mut self) -> Result<()> {
        let mut child = Command::new("nft")
            .args(["monitor", "rules"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nft monitor")?;
        let out = child.stdout.take().context("nft monitor's output")?;
        let lines = self.lines.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines().map_while(|l| l.ok()) {
                let stamp = Instant::now();
                if let Ok(mut v) = lines.lock() {
                    v.push((stamp, line));
                }
            }
        });
        self.monitor = Some(child);
        // nft monitor loads its cache of the whole ruleset before it prints anything (minutes
        // with kube-proxy's 10,000-Service table under emulation): it is live once it prints
        // a rule of a table of our own, added and deleted again.
        let started = Instant::now();
        loop {
            nft_batch(&format!(
                "add table ip {SENTINEL}\nadd chain ip {SENTINEL} c\nadd rule ip {SENTINEL} c counter\ndelete table ip {SENTINEL}\n"
            ))?;
            std::thread::sleep(Duration::from_secs(2));
            let live = self
                .lines
                .lock()
                .map_err(|_| anyhow::anyhow!("monitor lock"))?
                .iter()
                .any(|(_, l)| l.contains(SENTINEL));
            if live {
                break;
            }
            if let Some(Ok(Some(status))) = self.monitor.as_mut().map(|m| m.try_wait()) {
                bail!("nft monitor exited ({status}) before it printed anything");
            }
            if started.elapsed() > Duration::from_secs(120) {
                // Seen with kube-proxy's 10,000-Service table: the monitor runs and prints
                // nothing at all, while `nft list` answers.
                eprintln!(
                    "measure: nft monitor printed nothing in 120 s; the trials list the service's chain instead"
                );
                self.stop_monitor();
                self.listing = true;
                return Ok(());
            }
        }
        eprintln!(
            "measure: nft monitor live after {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    fn seen(
        &mut self,
        want: &Expected,
        name: &str,
        endpoint: SocketAddr,
    ) -> Result<Option<Instant>> {
        let key = want.by_name[name].0;
        let chain = self
            .chains
            .get(&key)
            .with_context(|| format!("no chain for {name} in service-ips"))?
            .clone();
        // `dnat ip addr . port to numgen random mod 5 map { 0 : 10.128.0.2 . 8080, ... }`, or
        // `dnat to 10.250.0.2:8080` for a single endpoint.
        let (ip, port) = (endpoint.ip(), endpoint.port());
        let (many, one) = (format!(": {ip} . {port}"), format!("dnat to {endpoint}"));
        if self.listing {
            // Stamped when the listing that shows it returns: late by up to one listing.
            let text = nft(&["list", "chain", "ip", "kube-proxy", &chain])?;
            return Ok((text.contains(&many) || text.contains(&one)).then(Instant::now));
        }
        let lines = self
            .lines
            .lock()
            .map_err(|_| anyhow::anyhow!("monitor lock"))?;
        let from = self.scanned.min(lines.len());
        self.scanned = lines.len();
        Ok(lines[from..]
            .iter()
            .find(|(_, l)| {
                l.starts_with("add rule")
                    && l.contains(chain.as_str())
                    && (l.contains(&many) || l.contains(&one))
            })
            .map(|(t, _)| *t))
    }

    fn describe(&mut self, want: &Expected, name: &str, endpoint: SocketAddr) -> String {
        let key = want.by_name[name].0;
        let monitor = match self.monitor.as_mut().map(|m| m.try_wait()) {
            Some(Ok(None)) => "running".to_string(),
            Some(Ok(Some(status))) => format!("exited ({status})"),
            Some(Err(e)) => format!("unknown ({e})"),
            None => "not started".to_string(),
        };
        let (count, last) = self.lines.lock().map_or((0, String::new()), |l| {
            (
                l.len(),
                l.last().map(|(_, s)| s.clone()).unwrap_or_default(),
            )
        });
        let ip = endpoint.ip().to_string();
        let ruleset = match nft(&["list", "table", "ip", "kube-proxy"]) {
            Ok(text) => {
                let mentions: Vec<&str> = text
                    .lines()
                    .filter(|l| l.contains(&ip))
                    .map(str::trim)
                    .take(4)
                    .collect();
                format!(
                    "the table names {ip} in {} line(s) {mentions:?}; service chain {:?}",
                    mentions.len(),
                    self.chains.get(&key)
                )
            }
            Err(e) => format!("listing the table: {e:#}"),
        };
        format!("nft monitor {monitor}, {count} lines (last {last:?}); {ruleset}")
    }
}

/// utime + stime + cutime + cstime of PID, in seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("/proc/PID/stat without a command")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11..15]
        .iter()
        .map(|v| v.parse::<u64>().unwrap_or(0))
        .sum();
    Ok(ticks as f64 / CLOCK_TICKS)
}

/// VmHWM of PID in KiB.
fn peak_rss(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/PID/status")
}

/// The proxy's /metrics samples: (name, labels, value).
struct Metrics(Vec<(String, String, f64)>);

impl Metrics {
    fn scrape(at: SocketAddr) -> Option<Metrics> {
        let mut s = TcpStream::connect_timeout(&at, Duration::from_secs(3)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(
            s,
            "GET /metrics HTTP/1.0\r\nHost: {at}\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        Some(Metrics::parse(&body))
    }

    /// The samples of a Prometheus text exposition (an HTTP response's headers are no samples).
    fn parse(body: &str) -> Metrics {
        let mut samples = Vec::new();
        for l in body.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = l.rsplit_once(' ') else {
                continue;
            };
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            if let Ok(v) = value.parse::<f64>() {
                samples.push((name.to_string(), labels.to_string(), v));
            }
        }
        Metrics(samples)
    }

    /// The values of NAME whose labels contain LABEL ("" for all).
    fn values<'a>(&'a self, name: &'a str, label: &'a str) -> impl Iterator<Item = f64> + 'a {
        self.0
            .iter()
            .filter(move |(n, l, _)| n == name && l.contains(label))
            .map(|(_, _, v)| *v)
    }

    /// NAME summed over its label sets (kube-proxy and svc-proxy label the sync metrics by IP
    /// family), if the proxy exports it.
    fn sum(&self, name: &str) -> Option<f64> {
        self.values(name, "").reduce(|a, b| a + b)
    }
}

/// The count and sum of kubeproxy_sync_proxy_rules_duration_seconds, over every family.
fn sync_durations(metrics: SocketAddr) -> Option<(f64, f64)> {
    let m = Metrics::scrape(metrics)?;
    let count = m.sum("kubeproxy_sync_proxy_rules_duration_seconds_count")?;
    let sum = m
        .sum("kubeproxy_sync_proxy_rules_duration_seconds_sum")
        .unwrap_or(0.0);
    Some((count, sum))
}

/// The proxy says it has finished a sync of its IPv4 rules (kube-proxy sets
/// kubeproxy_sync_proxy_rules_last_timestamp_seconds at the end of a successful sync; kube-proxy's
/// IPVS mode puts virtual services in the kernel well before its sync ends: the ipsets, one
/// `ipset add` process per entry, and the iptables rules come after).
fn sync_complete(metrics: SocketAddr) -> bool {
    Metrics::scrape(metrics).is_some_and(|m| {
        m.values("kubeproxy_sync_proxy_rules_last_timestamp_seconds", "IPv4")
            .any(|v| v > 0.0)
    })
}

/// What a trial that waits long reports: has the proxy seen the change, is it syncing, how
/// busy is it (kube-proxy's own sync metrics, svc-proxy exports the same names).
fn progress(metrics: SocketAddr) -> String {
    let Some(m) = Metrics::scrape(metrics) else {
        return "metrics unreachable".into();
    };
    let get = |k: &str| m.sum(k).map_or("-".to_string(), |v| format!("{v:.0}"));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    // A timestamp per family: the newest one.
    let age = |k: &str| {
        m.values(k, "")
            .filter(|v| *v > 0.0)
            .reduce(f64::max)
            .map_or("-".to_string(), |v| format!("{:.0} s ago", now - v))
    };
    format!(
        "syncs {} ({} s in them), endpoint changes seen {} (pending {}), service changes pending {}, \
         last sync {}, last queued {}",
        get("kubeproxy_sync_proxy_rules_duration_seconds_count"),
        get("kubeproxy_sync_proxy_rules_duration_seconds_sum"),
        get("kubeproxy_sync_proxy_rules_endpoint_changes_total"),
        get("kubeproxy_sync_proxy_rules_endpoint_changes_pending"),
        get("kubeproxy_sync_proxy_rules_service_changes_pending"),
        age("kubeproxy_sync_proxy_rules_last_timestamp_seconds"),
        age("kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds"),
    )
}

struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..300 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The last 20 lines of the proxy's log, for an error that says why it stopped.
fn log_tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

impl Proxy {
    fn alive(&mut self, log: &Path) -> Result<()> {
        if let Some(status) = self.0.try_wait()? {
            bail!(
                "the proxy exited ({status}); its log ends:\n{}",
                log_tail(log)
            );
        }
        Ok(())
    }
}

fn measure(a: &MeasureArgs) -> Result<()> {
    let rt = runtime()?;
    let c = rt.block_on(client(&a.kubeconfig))?;
    let (services, slices) = rt.block_on(list(&c, &a.namespace))?;
    let mut want = expected(&services, &slices)?;
    let n = want.services.len();
    eprintln!("measure {}: {n} Services in the API", a.name);
    let mut probe: Box<dyn Probe> = match a.dataplane {
        Dataplane::Ipvs => Box::new(IpvsProbe(Ipvs::open()?)),
        Dataplane::Nftables => Box::new(NftProbe::default()),
    };

    let log = fs::File::create(&a.log)?;
    let started = Instant::now();
    let mut proxy = Proxy(
        Command::new(&a.command[0])
            .args(&a.command[1..])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", a.command[0]))?,
    );
    let pid = proxy.0.id();
    let deadline = started + Duration::from_secs(a.timeout);
    let (first_sync, check) = loop {
        proxy.alive(&a.log)?;
        let t = Instant::now();
        if probe.converged(&want)? {
            break (started.elapsed().as_secs_f64(), t.elapsed().as_secs_f64());
        }
        if Instant::now() > deadline {
            bail!(
                "{}: not converged after {} s; the proxy's log ends:\n{}",
                a.name,
                a.timeout,
                log_tail(&a.log)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let rss_converged = peak_rss(pid)?;
    eprintln!(
        "measure {}: converged after {first_sync:.2} s (check {check:.2} s), RSS {} MiB",
        a.name,
        rss_converged / 1024
    );
    // The kernel can hold every virtual service before the proxy's sync is over (see
    // sync_complete); the trials time a change against a proxy that has finished its first sync.
    let mut next_report = started.elapsed() + Duration::from_secs(60);
    let first_complete = loop {
        proxy.alive(&a.log)?;
        if sync_complete(a.metrics) {
            break started.elapsed().as_secs_f64();
        }
        if started.elapsed() > next_report {
            eprintln!(
                "measure {}: {} s after start, first sync not over: {}",
                a.name,
                next_report.as_secs(),
                progress(a.metrics)
            );
            next_report += Duration::from_secs(60);
        }
        if Instant::now() > deadline {
            bail!(
                "{}: converged in the kernel, but its first sync not over after {} s: {}",
                a.name,
                a.timeout,
                progress(a.metrics)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!(
        "measure {}: first sync over (self-reported) after {first_complete:.2} s",
        a.name
    );

    // One change at a time: endpoint 0 of a Service replaced by a fresh address; timed from
    // just before the PATCH to the kernel sending to the new address.
    let names: Vec<String> = want
        .by_name
        .keys()
        .filter(|n| n.starts_with("svc-"))
        .cloned()
        .collect();
    let slices_api: Api<EndpointSlice> = Api::namespaced(c.clone(), &a.namespace);
    let mut trials = Vec::new();
    let mut polls = (0u32, Duration::ZERO);
    let trial_count = if names.is_empty() { 0 } else { a.trials };
    if trial_count > 0 {
        // Let a first sync's tail (kube-proxy's resyncs, svc-proxy's first check) pass.
        std::thread::sleep(Duration::from_secs(3));
        probe.prepare()?;
    }
    let trials_started = Instant::now();
    for t in 0..trial_count {
        if a.trials_within > 0 && trials_started.elapsed() > Duration::from_secs(a.trials_within) {
            eprintln!(
                "measure {}: {t} of {trial_count} trials within {} s; no more",
                a.name, a.trials_within
            );
            break;
        }
        let name = &names[(t * 7919 + 13) % names.len()];
        let (key, slice_name) = want.by_name[name].clone();
        let fresh = SocketAddr::new(
            IpAddr::V4(Ipv4Addr::from(
                u32::from(Ipv4Addr::new(10, 160, 0, 2)) + a.trial_base + t as u32,
            )),
            TARGET_PORT,
        );
        let mut eps: Vec<SocketAddr> = want.services[&key].iter().copied().collect();
        eps[0] = fresh;
        let body = serde_json::json!({
            "endpoints": eps.iter().map(|e| endpoint(e.ip())).collect::<Vec<_>>()
        });
        proxy.alive(&a.log)?;
        let cpu_at_patch = cpu_seconds(pid)?;
        let t0 = Instant::now();
        rt.block_on(slices_api.patch(&slice_name, &PatchParams::default(), &Patch::Merge(&body)))
            .with_context(|| format!("patching EndpointSlice {slice_name}"))?;
        let mut next_report = Duration::from_secs(60);
        let at = loop {
            let p = Instant::now();
            let seen = probe.seen(&want, name, fresh)?;
            polls.0 += 1;
            polls.1 += p.elapsed();
            if let Some(at) = seen {
                break at;
            }
            if polls.0.is_multiple_of(500) {
                proxy.alive(&a.log)?;
            }
            if t0.elapsed() > next_report {
                eprintln!(
                    "measure {}: trial {t}: waited {} s; the proxy used {:.1} CPU-s meanwhile; {}",
                    a.name,
                    next_report.as_secs(),
                    cpu_seconds(pid)? - cpu_at_patch,
                    progress(a.metrics)
                );
                eprintln!(
                    "measure {}: trial {t}: {}",
                    a.name,
                    probe.describe(&want, name, fresh)
                );
                next_report += Duration::from_secs(60);
            }
            if t0.elapsed() > Duration::from_secs(a.trial_timeout) {
                bail!(
                    "{}: trial {t}: {fresh} not in the kernel after {} s; the proxy's log ends:\n{}",
                    a.name,
                    a.trial_timeout,
                    log_tail(&a.log)
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let ms = at.saturating_duration_since(t0).as_secs_f64() * 1000.0;
        trials.push(ms);
        want.services.insert(key, eps.into_iter().collect());
        // Past kube-proxy's minimum sync period (1 s), so no trial waits on the one before.
        std::thread::sleep(Duration::from_millis(1500));
    }
    if !trials.is_empty() {
        eprintln!(
            "measure {}: one change, median {:.1} ms over {} trials",
            a.name,
            percentile(&trials, 50.0),
            trials.len()
        );
    }

    // The nftables probe's monitor would compete with the daemon for the CPU from here on.
    drop(probe);
    let idle_cpu = if a.idle > 0 {
        std::thread::sleep(Duration::from_secs(5));
        proxy.alive(&a.log)?;
        let before = cpu_seconds(pid)?;
        std::thread::sleep(Duration::from_secs(a.idle));
        proxy.alive(&a.log)?;
        Some(cpu_seconds(pid)? - before)
    } else {
        None
    };

    let conn_per_second = match (&a.conn_client, want.by_name.get("conn")) {
        (Some(ns), Some((key, _))) => {
            let bin = a
                .self_bin
                .clone()
                .unwrap_or(std::env::current_exe().context("this binary's path")?);
            let to = SocketAddr::new(key.addr, key.port);
            let out = Command::new("ip")
                .args(["netns", "exec", ns])
                .arg(bin)
                .args(["connect", "--to", &to.to_string(), "--seconds"])
                .arg(a.conn_seconds.to_string())
                .output()?;
            if !out.status.success() {
                bail!(
                    "{}: the connection client failed: {}",
                    a.name,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            let count: f64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
            Some(count / a.conn_seconds as f64)
        }
        _ => None,
    };

    proxy.alive(&a.log)?;
    let syncs = sync_durations(a.metrics);
    let rss_peak = peak_rss(pid)?;
    drop(proxy);
    let record = Record {
        name: a.name.clone(),
        dataplane: a.dataplane,
        services: n,
        first_sync,
        check,
        first_complete: Some(first_complete),
        rss_converged,
        poll: if polls.0 > 0 {
            polls.1.as_secs_f64() * 1000.0 / polls.0 as f64
        } else {
            0.0
        },
        trials,
        idle_seconds: a.idle,
        idle_cpu,
        rss_peak,
        conn_per_second,
        syncs,
    };
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&a.out)?;
    writeln!(f, "{}", serde_json::to_string(&record)?)?;
    Ok(())
}

fn serve(listen: SocketAddr) -> Result<()> {
    let l = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    let l = Arc::new(l);
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let l = l.clone();
            std::thread::spawn(move || {
                while let Ok((mut s, _)) = l.accept() {
                    let _ = s.write_all(b"ok\n");
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    Ok(())
}

fn connect(to: SocketAddr, duration: Duration, threads: usize) -> Result<u64> {
    let done = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..threads.max(1))
        .map(|_| {
            let (done, count, failed) = (done.clone(), count.clone(), failed.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 16];
                while !done.load(Ordering::Relaxed) {
                    let ok = TcpStream::connect_timeout(&to, Duration::from_secs(2))
                        .and_then(|mut s| {
                            s.set_read_timeout(Some(Duration::from_secs(2)))?;
                            let n = s.read(&mut buf)?;
                            Ok(n > 0)
                        })
                        .unwrap_or(false);
                    if ok {
                        count.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(duration);
    done.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    let (ok, bad) = (
        count.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    );
    if ok == 0 {
        bail!("no connection to {to} succeeded ({bad} failed)");
    }
    if bad > 0 {
        eprintln!("connect: {bad} connection(s) to {to} failed");
    }
    Ok(ok)
}

fn percentile(values: &[f64], p: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

fn report(files: &[PathBuf]) -> Result<()> {
    let mut records: Vec<Record> = Vec::new();
    for f in files {
        for line in fs::read_to_string(f)?
            .lines()
            .filter(|l| !l.trim().is_empty())
        {
            records.push(serde_json::from_str(line).with_context(|| f.display().to_string())?);
        }
    }
    let sizes: BTreeSet<usize> = records.iter().map(|r| r.services).collect();
    let mut last = None;
    for n in &sizes {
        let rows: Vec<&Record> = records.iter().filter(|r| r.services == *n).collect();
        let base = rows.iter().find(|r| r.name == "kube-proxy-ipvs").copied();
        println!("\n#### {n} Services × {ENDPOINTS} endpoints (with the `conn` Service)\n");
        print!("| |");
        for r in &rows {
            print!(" {} |", r.name);
        }
        println!();
        println!("|---|{}", "---|".repeat(rows.len()));
        let ratio = |v: Option<f64>, b: Option<f64>| match (v, b) {
            (Some(v), Some(b)) if b > 0.0 => format!(" ({:.2}x)", v / b),
            _ => String::new(),
        };
        // A row of figures; `compare`: with the ratio to kube-proxy's IPVS mode.
        let row = |label: &str,
                   f: &dyn Fn(&Record) -> Option<f64>,
                   unit: &str,
                   prec: usize,
                   compare: bool| {
            print!("| {label} |");
            for r in &rows {
                match f(r) {
                    Some(v) if compare => {
                        print!(" {v:.prec$} {unit}{} |", ratio(Some(v), base.and_then(f)))
                    }
                    Some(v) => print!(" {v:.prec$} {unit} |"),
                    None => print!(" – |"),
                }
            }
            println!();
        };
        let line = |label: &str, f: &dyn Fn(&Record) -> Option<f64>, unit: &str, prec: usize| {
            row(label, f, unit, prec, true)
        };
        line("start → converged", &|r| Some(r.first_sync), "s", 2);
        line("(its last check took)", &|r| Some(r.check), "s", 2);
        line(
            "start → first sync over (self-reported)",
            &|r| r.first_complete,
            "s",
            2,
        );
        row(
            "one change: trials",
            &|r| (!r.trials.is_empty()).then_some(r.trials.len() as f64),
            "trials",
            0,
            false,
        );
        line(
            "one change → kernel, median",
            &|r| (!r.trials.is_empty()).then(|| percentile(&r.trials, 50.0)),
            "ms",
            1,
        );
        line(
            "one change, p95",
            &|r| (!r.trials.is_empty()).then(|| percentile(&r.trials, 95.0)),
            "ms",
            1,
        );
        line(
            "one change, max",
            &|r| r.trials.iter().copied().reduce(f64::max),
            "ms",
            1,
        );
        line(
            "(one kernel poll)",
            &|r| (!r.trials.is_empty()).then_some(r.poll),
            "ms",
            1,
        );
        line(
            "CPU over the idle window",
            &|r| r.idle_cpu,
            &format!("s/{} s", rows[0].idle_seconds),
            2,
        );
        line(
            "RSS at convergence",
            &|r| Some(r.rss_converged as f64 / 1024.0),
            "MiB",
            1,
        );
        line("peak RSS", &|r| Some(r.rss_peak as f64 / 1024.0), "MiB", 1);
        line(
            "new connections/s via one ClusterIP",
            &|r| r.conn_per_second,
            "",
            0,
        );
        line("syncs (self-reported)", &|r| r.syncs.map(|s| s.0), "", 0);
        line(
            "time in syncs (self-reported)",
            &|r| r.syncs.map(|s| s.1),
            "s",
            2,
        );
        let ours = rows.iter().find(|r| r.name == "svc-proxy").copied();
        if let (Some(o), Some(b)) = (ours, base) {
            let r = |v: Option<f64>, w: Option<f64>| match (v, w) {
                (Some(v), Some(w)) if w > 0.0 => format!("{:.3}", v / w),
                _ => "n/a".into(),
            };
            let med = |x: &Record| (!x.trials.is_empty()).then(|| percentile(&x.trials, 50.0));
            last = Some(format!(
                "svc-proxy/kube-proxy: first-sync {}, one-change {}, idle-cpu {}, rss {}",
                r(Some(o.first_sync), Some(b.first_sync)),
                r(med(o), med(b)),
                r(o.idle_cpu, b.idle_cpu),
                r(Some(o.rss_peak as f64), Some(b.rss_peak as f64)),
            ));
            println!("\n(at {n}) {}", last.as_ref().unwrap());
        }
    }
    if let Some(l) = last {
        println!("\n{l}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sync_metrics_per_family() {
        let body = "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n\
            # HELP kubeproxy_sync_proxy_rules_duration_seconds x\n\
            kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"} 3\n\
            kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family=\"IPv6\"} 2\n\
            kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=\"IPv4\"} 0\n\
            kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=\"IPv6\"} 1.7e9\n\
            kubeproxy_sync_proxy_rules_endpoint_changes_total 10002\n";
        let m = Metrics::parse(body);
        assert_eq!(
            m.sum("kubeproxy_sync_proxy_rules_duration_seconds_count"),
            Some(5.0)
        );
        assert_eq!(
            m.sum("kubeproxy_sync_proxy_rules_endpoint_changes_total"),
            Some(10002.0)
        );
        assert_eq!(
            m.sum("kubeproxy_sync_proxy_rules_duration_seconds_sum"),
            None
        );
        // IPv6 synced, IPv4 not yet: no first sync of the IPv4 rules.
        let ipv4: Vec<f64> = m
            .values("kubeproxy_sync_proxy_rules_last_timestamp_seconds", "IPv4")
            .collect();
        assert_eq!(ipv4, [0.0]);
    }

    #[test]
    fn parses_kube_proxys_service_map() {
        let text = "table ip kube-proxy {\n\tmap service-ips {\n\t\ttype ipv4_addr . inet_proto . inet_service : verdict\n\t\telements = { 10.96.0.10 . tcp . 80 : goto service-ABCDEFGH-bench/svc-1/tcp/http,\n\t\t\t     10.96.0.11 . udp . 53 : goto \"service-X-kube-system/dns/udp/dns\" }\n\t}\n}\n";
        let m = parse_service_map(text);
        assert_eq!(m.len(), 2);
        let k = ServiceKey::new("10.96.0.10".parse().unwrap(), Protocol::Tcp, 80);
        assert_eq!(m[&k], "service-ABCDEFGH-bench/svc-1/tcp/http");
        let k = ServiceKey::new("10.96.0.11".parse().unwrap(), Protocol::Udp, 53);
        assert_eq!(m[&k], "service-X-kube-system/dns/udp/dns");
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 10.0);
        assert_eq!(percentile(&v, 95.0), 19.0);
        assert_eq!(percentile(&v, 100.0), 20.0);
    }
}
