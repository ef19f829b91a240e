//! What Service types cost svc-proxy, on a kernel with IPVS (the VM):
//!
//! 1. the iptables rules and ipset entries it programs for N NodePort Services × 5 endpoints
//!    (N = 10 and 1,000): the rules must stay a constant handful per family, the per-Service
//!    state lives in ipset entries and IPVS;
//! 2. the first sync (`svc-proxy --once`, everything programmed) at 10,000 Services × 5
//!    endpoints, ClusterIP only beside the same Services with a NodePort each.
//!
//! Each case runs in a fresh network namespace holding a node address (`eth0`) and the routable
//! pod range. Node ports are 20000 + i: 10,000 of them need a wider `--service-node-port-range`
//! than the default 30000-32767, as a cluster of that size has.
//! `bench/types/run.sh` builds release binaries and runs this in the VM.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use node_bench::run as sh;
use nodenet::ipvs::Ipvs;

const ENDPOINTS: usize = 5;
const NODE_IP: &str = "192.168.1.10";

#[derive(Parser)]
#[command(about = "svc-proxy: rules and set entries per Service type; first sync with NodePorts")]
struct Args {
    /// Service counts for the rule and set-entry census.
    #[arg(long, value_delimiter = ',', default_value = "10,1000")]
    census: Vec<usize>,
    /// Service count for the first-sync comparison.
    #[arg(long, default_value_t = 10000)]
    first_sync: usize,
    /// Seconds to wait after moving to a fresh namespace (the previous one's deferred teardown).
    #[arg(long, default_value_t = 10)]
    settle: u64,
    /// The svc-proxy binary.
    #[arg(long, default_value = "target/release/svc-proxy")]
    svc_proxy: PathBuf,
    /// Scratch directory for manifests.
    #[arg(long, default_value = "/tmp/types-bench")]
    work: PathBuf,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    ClusterIp,
    NodePort,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::ClusterIp => "ClusterIP",
            Kind::NodePort => "NodePort",
        }
    }
}

fn vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 1)) + i as u32)
}

fn pod(i: usize, j: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 2)) + (i * ENDPOINTS + j) as u32)
}

/// Moves into a fresh network namespace with a node address and the routable pod range.
fn reset(args: &Args) -> Result<Ipvs> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
    sh("ip", &["link", "set", "lo", "up"])?;
    sh("ip", &["link", "add", "eth0", "type", "dummy"])?;
    sh(
        "ip",
        &["addr", "add", &format!("{NODE_IP}/24"), "dev", "eth0"],
    )?;
    sh("ip", &["link", "set", "eth0", "up"])?;
    sh("ip", &["link", "add", "pods0", "type", "dummy"])?;
    sh("ip", &["addr", "add", "10.128.0.1/10", "dev", "pods0"])?;
    sh("ip", &["link", "set", "pods0", "up"])?;
    std::thread::sleep(Duration::from_secs(args.settle));
    Ok(Ipvs::open()?)
}

fn manifest(i: usize, kind: Kind) -> String {
    let (ty, node_port) = match kind {
        Kind::ClusterIp => ("ClusterIP", String::new()),
        Kind::NodePort => ("NodePort", format!(", nodePort: {}", 20000 + i)),
    };
    let mut s = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: svc-{i}\nspec:\n  type: {ty}\n  clusterIP: {}\n  ports:\n    - {{name: http, protocol: TCP, port: 80, targetPort: 8080{node_port}}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: svc-{i}-1\n  labels: {{kubernetes.io/service-name: svc-{i}}}\naddressType: IPv4\nports:\n  - {{name: http, protocol: TCP, port: 8080}}\nendpoints:\n",
        vip(i)
    );
    for j in 0..ENDPOINTS {
        let _ = writeln!(s, "  - addresses: [{}]", pod(i, j));
    }
    s
}

fn write_manifests(dir: &Path, n: usize, kind: Kind) -> Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    for i in 0..n {
        std::fs::write(dir.join(format!("svc-{i}.yaml")), manifest(i, kind))?;
    }
    Ok(())
}

/// `svc-proxy --once` on the manifests: the time to program everything.
fn once(args: &Args, dir: &Path) -> Result<Duration> {
    let t = Instant::now();
    let out = Command::new(&args.svc_proxy)
        .args([
            "--once",
            "--log-level",
            "warn",
            "--attachments",
            "/nonexistent",
        ])
        .arg(dir)
        .output()?;
    let took = t.elapsed();
    if !out.status.success() {
        bail!(
            "svc-proxy --once failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(took)
}

/// What svc-proxy programmed in this namespace.
struct Census {
    /// Rules in our chains plus the jumps to them, IPv4 and IPv6, every table.
    rules: [usize; 2],
    chains: [usize; 2],
    /// Entries over every SVCPROXY set, and the number of sets.
    entries: usize,
    sets: usize,
    virtual_services: usize,
}

fn count_rules(save: &str) -> Result<(usize, usize)> {
    let text = sh(save, &[])?;
    let mut rules = 0;
    let mut chains = 0;
    for line in text.lines() {
        if line.starts_with(":SVCPROXY-") {
            chains += 1;
        } else if line.starts_with("-A ") && line.contains("SVCPROXY-") {
            // Our chains' rules, and the jumps (or set matches) naming ours from built-in chains.
            rules += 1;
        }
    }
    Ok((rules, chains))
}

fn census(ipvs: &Ipvs) -> Result<Census> {
    let (r4, c4) = count_rules("iptables-save")?;
    let (r6, c6) = count_rules("ip6tables-save")?;
    let mut entries = 0;
    let mut sets = 0;
    let mut name = String::new();
    for line in sh("ipset", &["list", "-t"])?.lines() {
        if let Some(n) = line.strip_prefix("Name: ") {
            name = n.to_string();
        } else if let Some(n) = line.strip_prefix("Number of entries: ") {
            if name.starts_with("SVCPROXY-") {
                sets += 1;
                entries += n.trim().parse::<usize>()?;
            }
        }
    }
    Ok(Census {
        rules: [r4, r6],
        chains: [c4, c6],
        entries,
        sets,
        virtual_services: ipvs.services()?.len(),
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.work)?;

    let mut rows = Vec::new();
    for &n in &args.census {
        for kind in [Kind::ClusterIp, Kind::NodePort] {
            eprintln!("== census: {n} {} services", kind.label());
            let dir = args.work.join(format!("c{n}-{}", kind.label()));
            write_manifests(&dir, n, kind)?;
            let ipvs = reset(&args)?;
            once(&args, &dir)?;
            rows.push((n, kind, census(&ipvs)?));
        }
    }

    let n = args.first_sync;
    let mut sync = Vec::new();
    for kind in [Kind::ClusterIp, Kind::NodePort] {
        eprintln!("== first sync: {n} {} services", kind.label());
        let dir = args.work.join(format!("s{n}-{}", kind.label()));
        write_manifests(&dir, n, kind)?;
        let ipvs = reset(&args)?;
        let took = once(&args, &dir)?;
        let c = census(&ipvs)?;
        eprintln!("   {} in {:.3} s", kind.label(), took.as_secs_f64());
        sync.push((kind, took, c));
    }

    println!("## iptables rules and ipset entries for N Services x {ENDPOINTS} endpoints\n");
    println!("| N | type | rules IPv4 | rules IPv6 | chains IPv4/IPv6 | SVCPROXY sets | set entries | IPVS virtual services |");
    println!("|---|---|---|---|---|---|---|---|");
    for (n, kind, c) in &rows {
        println!(
            "| {n} | {} | {} | {} | {}/{} | {} | {} | {} |",
            kind.label(),
            c.rules[0],
            c.rules[1],
            c.chains[0],
            c.chains[1],
            c.sets,
            c.entries,
            c.virtual_services
        );
    }
    println!("\n## First sync (`svc-proxy --once`, everything programmed) at {n} Services x {ENDPOINTS} endpoints\n");
    println!("| type | time | ratio | set entries | IPVS virtual services |");
    println!("|---|---|---|---|---|");
    let base = sync[0].1.as_secs_f64();
    for (kind, took, c) in &sync {
        println!(
            "| {} | {:.3} s | {:.2}x | {} | {} |",
            kind.label(),
            took.as_secs_f64(),
            took.as_secs_f64() / base,
            c.entries,
            c.virtual_services
        );
    }
    let rules: Vec<[usize; 2]> = rows.iter().map(|(_, _, c)| c.rules).collect();
    let constant = rules.windows(2).all(|w| w[0] == w[1]);
    println!(
        "\nrules constant across N and type: {}",
        if constant { "yes" } else { "NO" }
    );
    Ok(())
}
