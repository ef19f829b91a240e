//! cni-bridge vs Debian's reference `bridge` + `host-local`, side by side in one run on the same
//! config (`ipMasq` and `hairpinMode` on), ADDs and DELs interleaved, each plugin on its own
//! "node" namespace. Prints ADD/DEL medians and their ratios, the iptables rule count after 1 and
//! after all pods, and the peak RSS of one ADD.
//!
//! `cargo build --release -p cni-bridge && cargo run --release -p node-bench --bin cni_bench`
//! (as root; everything happens inside namespaces it creates and removes).

use std::io::Write;
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use node_tests::cni::{with_prev_result, Flavor, Node, Pod};
use node_tests::observe;
use serde_json::{json, Value};

const NET: &str = "benchnet";

#[derive(Parser)]
#[command(about = "cni-bridge vs reference bridge+host-local: ADD/DEL latency, rules, RSS")]
struct Args {
    /// Pods attached (then detached) per plugin.
    #[arg(long, default_value_t = 100)]
    pods: usize,
    /// Internal: run one plugin invocation from this process inside the node namespace at this
    /// path, with the CNI_* variables and stdin inherited, and print the peak RSS (KiB) of it.
    #[arg(long, hide = true, num_args = 2, value_names = ["PLUGIN", "NODE_NETNS"])]
    rss_probe: Option<Vec<String>>,
}

/// One plugin under test, with its node and pods.
struct Side {
    name: &'static str,
    flavor: Flavor,
    node: Node,
    config: Value,
    pods: Vec<Pod>,
    results: Vec<Value>,
    add: Vec<Duration>,
    del: Vec<Duration>,
}

impl Side {
    fn new(name: &'static str, flavor: Flavor, pods: usize) -> Side {
        let node = Node::new(&format!("bench-{name}"));
        let mut config = flavor.config(&node, "1.0.0", NET, "10.0.0.0/16");
        config["ipMasq"] = json!(true);
        config["hairpinMode"] = json!(true);
        let pods = (0..pods).map(|_| node.pod("bench-pod")).collect();
        Side {
            name,
            flavor,
            node,
            config,
            pods,
            results: Vec::new(),
            add: Vec::new(),
            del: Vec::new(),
        }
    }

    fn add(&mut self, i: usize) -> Result<()> {
        let start = Instant::now();
        let out = self
            .node
            .add(&self.flavor.plugin, &self.config, &self.pods[i]);
        self.add.push(start.elapsed());
        if out.exit != Some(0) {
            bail!("{} ADD failed:\n{out}", self.name);
        }
        self.results.push(serde_json::from_str(&out.stdout)?);
        Ok(())
    }

    fn del(&mut self, i: usize) -> Result<()> {
        let config = with_prev_result(&self.config, &self.results[i]);
        let start = Instant::now();
        let out = self.node.del(&self.flavor.plugin, &config, &self.pods[i]);
        self.del.push(start.elapsed());
        if out.exit != Some(0) {
            bail!("{} DEL failed:\n{out}", self.name);
        }
        Ok(())
    }

    /// A warm-up ADD+DEL so one-time work (bridge, set, chains) is not in the figures.
    fn warm_up(&self) -> Result<()> {
        let pod = self.node.pod("bench-warm");
        let out = self.node.add(&self.flavor.plugin, &self.config, &pod);
        if out.exit != Some(0) {
            bail!("{} warm-up ADD failed:\n{out}", self.name);
        }
        let out = self.node.del(&self.flavor.plugin, &self.config, &pod);
        if out.exit != Some(0) {
            bail!("{} warm-up DEL failed:\n{out}", self.name);
        }
        Ok(())
    }

    fn rules(&self) -> usize {
        observe::iptables_rules(&self.node.ns).len()
    }

    /// Peak RSS (KiB) of one ADD, measured in a fresh probe process whose only child is the plugin.
    fn peak_rss_kib(&self) -> Result<u64> {
        let pod = self.node.pod("bench-rss");
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .arg("--rss-probe")
            .arg(self.flavor.plugin.path())
            .arg(self.node.ns.path())
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", &pod.id)
            .env("CNI_NETNS", pod.ns.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", self.flavor.plugin.cni_path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .context("probe stdin")?
            .write_all(&serde_json::to_vec(&self.config)?)?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "{} RSS probe failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stdout)
            );
        }
        let kib = String::from_utf8_lossy(&out.stdout).trim().parse()?;
        let del = self.node.del(&self.flavor.plugin, &self.config, &pod);
        if del.exit != Some(0) {
            bail!("{} DEL after RSS probe failed:\n{del}", self.name);
        }
        Ok(kib)
    }
}

/// The probe: join the node namespace, run the plugin once, report the children's peak RSS.
fn rss_probe(plugin: &str, node_netns: &str) -> Result<()> {
    let ns = std::fs::File::open(node_netns).with_context(|| format!("open {node_netns}"))?;
    nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)?;
    let out = Command::new(plugin)
        .stdin(Stdio::inherit())
        .stdout(Stdio::piped())
        .output()?;
    if !out.status.success() {
        bail!("plugin failed: {}", String::from_utf8_lossy(&out.stdout));
    }
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)?;
    println!("{}", usage.max_rss());
    Ok(())
}

/// What deleting a veth pair costs by itself (any DEL pays it): `ip link add`/`ip link del` in
/// a scratch namespace, timing only the deletions.
/// Returns the medians of `ip link del` and, for the exec overhead alone, `ip link show`.
fn veth_delete_floor(n: usize) -> (Duration, Duration) {
    let ns = node_tests::netns::Netns::new("bench-floor");
    let mut del = Vec::new();
    let mut show = Vec::new();
    for _ in 0..n {
        ns.ip(&["link", "add", "fl0", "type", "veth", "peer", "name", "fl1"]);
        let start = Instant::now();
        ns.ip(&["link", "show", "fl0"]);
        show.push(start.elapsed());
        let start = Instant::now();
        ns.ip(&["link", "del", "fl0"]);
        del.push(start.elapsed());
    }
    (median(&del), median(&show))
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn machine() -> String {
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{nproc} CPUs, {cpu}, kernel {}", kernel.trim())
}

/// 1/5/15-minute load averages: the figures are only comparable at similar load.
fn load() -> String {
    let avg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    avg.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(p) = args.rss_probe {
        return rss_probe(&p[0], &p[1]);
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("cni_bench needs root: it creates network namespaces");
    }
    let mut ours = Side::new("cni-bridge", Flavor::cni_bridge(), args.pods);
    let mut reference = Side::new("reference", Flavor::reference(), args.pods);
    let load_before = load();
    ours.warm_up()?;
    reference.warm_up()?;

    let mut rules_after_one = (0, 0);
    for i in 0..args.pods {
        // Alternate who goes first so neither always runs on a warmer cache.
        if i % 2 == 0 {
            ours.add(i)?;
            reference.add(i)?;
        } else {
            reference.add(i)?;
            ours.add(i)?;
        }
        if i == 0 {
            rules_after_one = (ours.rules(), reference.rules());
        }
    }
    let rules_after_all = (ours.rules(), reference.rules());
    for i in 0..args.pods {
        if i % 2 == 0 {
            ours.del(i)?;
            reference.del(i)?;
        } else {
            reference.del(i)?;
            ours.del(i)?;
        }
    }
    let rss = (ours.peak_rss_kib()?, reference.peak_rss_kib()?);
    let floor = veth_delete_floor(20);

    let (oa, ra) = (median(&ours.add), median(&reference.add));
    let (od, rd) = (median(&ours.del), median(&reference.del));
    let add_ratio = oa.as_secs_f64() / ra.as_secs_f64();
    let del_ratio = od.as_secs_f64() / rd.as_secs_f64();
    println!(
        "cni_bench: {} pods per plugin, ipMasq + hairpinMode, interleaved",
        args.pods
    );
    println!("machine: {}", machine());
    println!("load average: {load_before} before, {} after", load());
    println!();
    println!("| | cni-bridge | reference bridge+host-local | ratio | target |");
    println!("|---|---|---|---|---|");
    println!(
        "| ADD median | {:.2} ms | {:.2} ms | {add_ratio:.3} | ≤ 0.2 {} |",
        ms(oa),
        ms(ra),
        verdict(add_ratio <= 0.2)
    );
    println!(
        "| DEL median | {:.2} ms | {:.2} ms | {del_ratio:.3} | ≤ 0.1 {} |",
        ms(od),
        ms(rd),
        verdict(del_ratio <= 0.1)
    );
    println!(
        "| iptables rules after 1 / {} pods | {} / {} | {} / {} | | constant {} |",
        args.pods,
        rules_after_one.0,
        rules_after_all.0,
        rules_after_one.1,
        rules_after_all.1,
        verdict(rules_after_one.0 == rules_after_all.0)
    );
    println!(
        "| peak RSS of one ADD | {:.1} MiB | {:.1} MiB | | |",
        rss.0 as f64 / 1024.0,
        rss.1 as f64 / 1024.0
    );
    println!();
    println!(
        "floor: `ip link del` of one veth pair, median of 20: {:.2} ms \
         (of which exec'ing `ip`, as timed by `ip link show`: {:.2} ms)",
        ms(floor.0),
        ms(floor.1)
    );
    Ok(())
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "(met)"
    } else {
        "(MISSED)"
    }
}
