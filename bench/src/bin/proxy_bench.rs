//! svc-proxy vs the kube-proxy way, side by side in one run, on a kernel with IPVS (the VM):
//!
//! 1. N services x 5 endpoints from empty, N = 1,000 and 10,000: `svc-proxy --once` on manifests
//!    (VIPs, IPVS, loop-back set, rules: everything) and its pipelined IPVS applier alone
//!    (`nodenet::ipvs::Ipvs::apply`), vs `ipvsadm --restore` of the same table;
//! 2. the loop-back set entries of that table: one pipelined batch (`nodenet::ipset`) vs one
//!    `ipset add` process per entry (kube-proxy);
//! 3. one endpoint change in a manifest -> kernel state, with the daemon running on N = 100 and
//!    N = 10,000 services; and the daemon's RSS.
//!
//! Run it inside a network namespace of its own (everything in it is flushed between cases):
//! `bench/proxy/run.sh` builds release binaries and runs this in the VM.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use nodenet::ipset::{Entry, Ipset, SetSpec, SetType};
use nodenet::ipvs::{self, Destination, Ipvs, ServiceKey};
use nodenet::Protocol;

const ENDPOINTS: usize = 5;
const SET: &str = "SVCPROXY-LOOP-BACK";

#[derive(Parser)]
#[command(
    about = "svc-proxy vs ipvsadm --restore and ipset exec per entry; one-change latency; RSS"
)]
struct Args {
    /// Service counts for the from-empty programming comparison.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    sizes: Vec<usize>,
    /// Service counts for the one-change latency.
    #[arg(long, value_delimiter = ',', default_value = "100,10000")]
    latency_sizes: Vec<usize>,
    /// Most `ipset add` processes run per size; beyond it the per-entry cost is extrapolated
    /// (and the table says so).
    #[arg(long, default_value_t = 1000)]
    exec_sample: usize,
    /// Endpoint changes timed per latency size.
    #[arg(long, default_value_t = 10)]
    trials: usize,
    /// Seconds to wait after moving to a fresh namespace, so the kernel's deferred teardown of
    /// the previous one does not run during the next measurement.
    #[arg(long, default_value_t = 10)]
    settle: u64,
    /// The daemon's log level in the latency cases; at `debug` or `trace` the last lines of its
    /// log (the trials' timings) are printed after them.
    #[arg(long, default_value = "warn")]
    daemon_log_level: String,
    /// The svc-proxy binary.
    #[arg(long, default_value = "target/release/svc-proxy")]
    svc_proxy: PathBuf,
    /// Scratch directory for manifests.
    #[arg(long, default_value = "/tmp/proxy-bench")]
    work: PathBuf,
}

fn vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 1)) + i as u32)
}

/// Endpoint `j` of service `i`: unique over the table, inside `pods0`'s 10.128.0.0/10.
fn pod(i: usize, j: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 2)) + (i * ENDPOINTS + j) as u32)
}

/// A replacement endpoint address for latency trial `t`.
fn fresh_pod(t: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 160, 0, 2)) + t as u32)
}

fn key(i: usize) -> ServiceKey {
    ServiceKey::new(IpAddr::V4(vip(i)), Protocol::Tcp, 80)
}

fn sh(cmd: &str, args: &[&str]) -> Result<()> {
    node_bench::run(cmd, args).map(drop)
}

/// Moves the benchmark into a fresh network namespace (with the routable pod range) and returns
/// an IPVS handle bound to it. A flushed namespace would not do: IPVS keeps deleted real servers
/// on a per-namespace trash list for 2-3 minutes, and every add walks it, so the next case would
/// measure the previous one's leftovers.
fn reset(args: &Args) -> Result<Ipvs> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
    sh("ip", &["link", "set", "lo", "up"])?;
    // Real servers must be routable for IPVS to accept them.
    sh("ip", &["link", "add", "pods0", "type", "dummy"])?;
    sh("ip", &["addr", "add", "10.128.0.1/10", "dev", "pods0"])?;
    sh("ip", &["link", "set", "pods0", "up"])?;
    std::thread::sleep(Duration::from_secs(args.settle));
    Ok(Ipvs::open()?)
}

/// Service `i` and its EndpointSlice, with endpoint 0 replaced by `first` when given.
fn manifest(i: usize, first: Option<Ipv4Addr>) -> String {
    let mut s = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: svc-{i}\nspec:\n  clusterIP: {}\n  ports:\n    - {{name: http, protocol: TCP, port: 80, targetPort: 8080}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: svc-{i}-1\n  labels: {{kubernetes.io/service-name: svc-{i}}}\naddressType: IPv4\nports:\n  - {{name: http, protocol: TCP, port: 8080}}\nendpoints:\n",
        vip(i)
    );
    for j in 0..ENDPOINTS {
        let ip = if j == 0 {
            first.unwrap_or(pod(i, 0))
        } else {
            pod(i, j)
        };
        let _ = writeln!(s, "  - addresses: [{ip}]");
    }
    s
}

/// One manifest file per Service (as a directory of `kubectl apply -f` files would be).
fn write_manifests(dir: &Path, n: usize) -> Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    for i in 0..n {
        std::fs::write(dir.join(format!("svc-{i}.yaml")), manifest(i, None))?;
    }
    Ok(())
}

/// Replaces a manifest the way editors and tools do: a hidden temp file renamed over it.
fn replace_manifest(dir: &Path, i: usize, first: Ipv4Addr) -> Result<()> {
    let tmp = dir.join(format!(".svc-{i}.tmp"));
    std::fs::write(&tmp, manifest(i, Some(first)))?;
    std::fs::rename(&tmp, dir.join(format!("svc-{i}.yaml")))?;
    Ok(())
}

fn restore_text(n: usize) -> String {
    let mut s = String::with_capacity(n * 300);
    for i in 0..n {
        let _ = writeln!(s, "-A -t {}:80 -s rr", vip(i));
        for j in 0..ENDPOINTS {
            let _ = writeln!(s, "-a -t {}:80 -r {}:8080 -m -w 1", vip(i), pod(i, j));
        }
    }
    s
}

fn ipvs_ops(n: usize) -> Vec<ipvs::Op> {
    let mut ops = Vec::with_capacity(n * (ENDPOINTS + 1));
    for i in 0..n {
        ops.push(ipvs::Op::AddService(ipvs::Service::new(key(i), "rr")));
        for j in 0..ENDPOINTS {
            ops.push(ipvs::Op::AddDest(
                key(i),
                Destination::new(IpAddr::V4(pod(i, j)), 8080, 1),
            ));
        }
    }
    ops
}

/// The loop-back entry of endpoint `j` of service `i`.
fn entry(i: usize, j: usize) -> Entry {
    Entry::IpPortIp {
        ip: IpAddr::V4(pod(i, j)),
        proto: Protocol::Tcp,
        port: 8080,
        ip2: IpAddr::V4(pod(i, j)),
    }
}

fn entries(n: usize) -> Vec<Entry> {
    (0..n)
        .flat_map(|i| (0..ENDPOINTS).map(move |j| entry(i, j)))
        .collect()
}

/// Checks the kernel holds `n` services with 5 real servers each.
fn verify_table(ipvs: &Ipvs, n: usize) -> Result<()> {
    let services = ipvs.services()?;
    if services.len() != n {
        bail!("expected {n} virtual services, found {}", services.len());
    }
    for i in [0, n / 2, n - 1] {
        let d = ipvs.destinations(&key(i))?;
        if d.len() != ENDPOINTS {
            bail!(
                "service {i}: expected {ENDPOINTS} real servers, found {}",
                d.len()
            );
        }
    }
    Ok(())
}

fn set_spec() -> SetSpec {
    let mut spec = SetSpec::new(SET, SetType::HashIpPortIp, nodenet::Family::V4);
    spec.maxelem = Some(1 << 20);
    spec
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

struct Programming {
    n: usize,
    restore: Duration,
    pipelined: Duration,
    svc_proxy: Duration,
    set_batch: Duration,
    set_exec: Duration,
    set_exec_measured: usize,
}

fn programming(args: &Args, n: usize) -> Result<Programming> {
    eprintln!("== {n} services x {ENDPOINTS} endpoints from empty");
    let dir = args.work.join(format!("m{n}"));
    write_manifests(&dir, n)?;

    let ipvs = reset(args)?;
    let text = restore_text(n);
    let t = Instant::now();
    let mut child = Command::new("ipvsadm")
        .arg("--restore")
        .stdin(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(text.as_bytes())?;
    if !child.wait()?.success() {
        bail!("ipvsadm --restore failed");
    }
    let restore = t.elapsed();
    verify_table(&ipvs, n).context("after ipvsadm --restore")?;

    let ipvs = reset(args)?;
    let ops = ipvs_ops(n);
    let t = Instant::now();
    let failed = ipvs.apply(&ops).into_iter().filter(|r| r.is_err()).count();
    let pipelined = t.elapsed();
    if failed > 0 {
        bail!("{failed} pipelined IPVS operations failed");
    }
    verify_table(&ipvs, n).context("after the pipelined apply")?;

    let ipvs = reset(args)?;
    let t = Instant::now();
    let out = Command::new(&args.svc_proxy)
        .args([
            "--once",
            "--log-level",
            "warn",
            "--attachments",
            "/nonexistent",
        ])
        .arg(&dir)
        .output()?;
    let svc_proxy = t.elapsed();
    if !out.status.success() {
        bail!(
            "svc-proxy --once failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    verify_table(&ipvs, n).context("after svc-proxy --once")?;

    reset(args)?;
    let set = Ipset::open()?;
    let all = entries(n);
    set.create(&set_spec())?;
    let t = Instant::now();
    let added = set.add_many(SET, &all)?;
    let set_batch = t.elapsed();
    if added != all.len() {
        bail!("pipelined ipset add: {added} of {} added", all.len());
    }
    set.destroy(SET)?;
    set.create(&set_spec())?;
    let measured = all.len().min(args.exec_sample);
    let t = Instant::now();
    for e in &all[..measured] {
        sh("ipset", &["add", SET, &e.to_string()])?;
    }
    let per_entry = t.elapsed() / measured as u32;
    let set_exec = per_entry * all.len() as u32;
    set.destroy(SET)?;
    eprintln!(
        "   ipvsadm --restore {}, svc-proxy --once {}, pipelined IPVS {}, ipset batch {}, ipset exec {} ({measured} measured)",
        secs(restore),
        secs(svc_proxy),
        secs(pipelined),
        secs(set_batch),
        secs(set_exec)
    );
    Ok(Programming {
        n,
        restore,
        pipelined,
        svc_proxy,
        set_batch,
        set_exec,
        set_exec_measured: measured,
    })
}

struct Latency {
    n: usize,
    converged: Duration,
    median: Duration,
    max: Duration,
    rss_kib: u64,
}

/// Stops the daemon (SIGTERM) when dropped.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let _ = self.0.wait();
    }
}

fn latency(args: &Args, n: usize) -> Result<Latency> {
    eprintln!("== one-change latency at {n} services");
    let dir = args.work.join(format!("l{n}"));
    write_manifests(&dir, n)?;
    let ipvs = reset(args)?;
    let log = std::fs::File::create(args.work.join(format!("svc-proxy-{n}.log")))?;
    let t = Instant::now();
    let daemon = Daemon(
        Command::new(&args.svc_proxy)
            .args([
                "--resync-period",
                "1h",
                "--metrics-address",
                "off",
                "--log-level",
                &args.daemon_log_level,
            ])
            .args(["--attachments", "/nonexistent"])
            .arg(&dir)
            .stderr(log)
            .spawn()?,
    );
    // Converged: the last virtual service has its real servers (IPVS goes in address order, after
    // the set entries), and the loop-back set has its last entry.
    let last = key(n - 1);
    let set = Ipset::open()?;
    while ipvs.destinations(&last).map(|d| d.len()).unwrap_or(0) < ENDPOINTS
        || !set.test(SET, &entry(n - 1, ENDPOINTS - 1)).unwrap_or(false)
    {
        std::thread::sleep(Duration::from_millis(5));
        if t.elapsed() > Duration::from_secs(1800) {
            bail!("svc-proxy did not converge on {n} services");
        }
    }
    let converged = t.elapsed();
    eprintln!("   daemon converged on {n} services in {}", secs(converged));
    let mut samples = Vec::new();
    for trial in 0..args.trials {
        let i = (trial * 7919) % n;
        let new = SocketAddr::new(IpAddr::V4(fresh_pod(n + trial)), 8080);
        let t = Instant::now();
        replace_manifest(&dir, i, fresh_pod(n + trial))?;
        loop {
            let d = ipvs.destinations(&key(i))?;
            if d.iter()
                .any(|d| SocketAddr::new(d.addr, d.port) == new && d.weight == 1)
            {
                break;
            }
            if t.elapsed() > Duration::from_secs(120) {
                bail!("change to service {i} never reached the kernel");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        samples.push(t.elapsed());
    }
    let rss_kib = rss_kib(daemon.0.id())?;
    eprintln!(
        "   converged {}, one-change latencies {samples:?}, RSS {rss_kib} KiB",
        secs(converged)
    );
    drop(daemon);
    if matches!(args.daemon_log_level.as_str(), "debug" | "trace") {
        let log = std::fs::read_to_string(args.work.join(format!("svc-proxy-{n}.log")))?;
        let lines: Vec<&str> = log.lines().collect();
        for line in &lines[lines.len().saturating_sub(8 * args.trials)..] {
            eprintln!("   | {line}");
        }
    }
    let max = *samples.iter().max().context("no trials")?;
    Ok(Latency {
        n,
        converged,
        median: median(samples),
        max,
        rss_kib,
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.work)?;

    let mut rows = Vec::new();
    for &n in &args.sizes {
        rows.push(programming(&args, n)?);
    }
    let mut lat = Vec::new();
    for &n in &args.latency_sizes {
        lat.push(latency(&args, n)?);
    }

    println!("## Programming N services x {ENDPOINTS} endpoints from empty\n");
    println!("| N | ipvsadm --restore | svc-proxy --once (all state) | ratio | pipelined IPVS apply | ratio |");
    println!("|---|---|---|---|---|---|");
    for r in &rows {
        let ratio = |d: Duration| d.as_secs_f64() / r.restore.as_secs_f64();
        println!(
            "| {} | {} | {} | {:.2}x | {} | {:.2}x |",
            r.n,
            secs(r.restore),
            secs(r.svc_proxy),
            ratio(r.svc_proxy),
            secs(r.pipelined),
            ratio(r.pipelined)
        );
    }
    println!("\n## Loop-back set: N x {ENDPOINTS} entries\n");
    println!("| entries | one `ipset add` per entry | pipelined batch | speed-up |");
    println!("|---|---|---|---|");
    for r in &rows {
        let entries = r.n * ENDPOINTS;
        let exec = if r.set_exec_measured < entries {
            format!(
                "{} (extrapolated from {} processes)",
                secs(r.set_exec),
                r.set_exec_measured
            )
        } else {
            secs(r.set_exec)
        };
        println!(
            "| {entries} | {exec} | {} | {:.0}x |",
            secs(r.set_batch),
            r.set_exec.as_secs_f64() / r.set_batch.as_secs_f64()
        );
    }
    println!(
        "\n## One endpoint change: manifest rename -> real server in the kernel ({} trials)\n",
        args.trials
    );
    println!("| services | daemon start -> converged | median | max | RSS |");
    println!("|---|---|---|---|---|");
    for l in &lat {
        println!(
            "| {} | {} | {:.1} ms | {:.1} ms | {:.1} MiB |",
            l.n,
            secs(l.converged),
            l.median.as_secs_f64() * 1000.0,
            l.max.as_secs_f64() * 1000.0,
            l.rss_kib as f64 / 1024.0
        );
    }
    if let (Some(a), Some(b)) = (lat.first(), lat.last()) {
        println!(
            "\nlatency at {} vs {} services: {:.2}x",
            b.n,
            a.n,
            b.median.as_secs_f64() / a.median.as_secs_f64()
        );
    }
    Ok(())
}
