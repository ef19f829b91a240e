//! Running a CNI plugin exactly as a runtime does: `CNI_*` variables in a clean environment, the
//! network configuration on stdin, the process started inside a "node" namespace, the result or
//! the spec's error object read from stdout.
//!
//! Generic over the plugin: the same runner drives cni-bridge, Debian's reference `bridge` and
//! `host-local`, or any other binary.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::fs::TempDir;
use crate::netns::Netns;
use crate::observe::NodeState;

/// Where Debian's `containernetworking-plugins` installs the reference plugins.
pub const REFERENCE_DIR: &str = "/usr/lib/cni";

/// The environment a plugin sees besides the `CNI_*` variables: enough to exec `iptables`.
const BASE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A CNI plugin executable.
#[derive(Debug, Clone)]
pub struct Plugin {
    path: PathBuf,
}

impl Plugin {
    /// The `cni-bridge` binary built from this workspace.
    pub fn cni_bridge() -> Plugin {
        Plugin::built("cni-bridge")
    }

    /// A binary of this workspace, found next to the running executable: integration tests run
    /// from `<target>/<profile>/deps/`, benches and other binaries from `<target>/<profile>/`, so
    /// this works with any `CARGO_TARGET_DIR`. Panics (naming the build command) when it is missing.
    pub fn built(name: &str) -> Plugin {
        let exe = std::env::current_exe().expect("current_exe");
        let dir = exe.parent().expect("exe has a parent dir");
        let candidates = [dir.join(name), dir.join("..").join(name)];
        for path in &candidates {
            if path.is_file() {
                let path = path.canonicalize().expect("canonicalize built binary");
                return Plugin { path };
            }
        }
        panic!(
            "binary `{name}` not found at {} or {}: build it first (`cargo build -p {name}`, \
             `--release` for benches, with the same CARGO_TARGET_DIR)",
            candidates[0].display(),
            candidates[1].display()
        );
    }

    /// A reference plugin from Debian's `containernetworking-plugins` (`/usr/lib/cni/<name>`).
    pub fn reference(name: &str) -> Plugin {
        let path = Path::new(REFERENCE_DIR).join(name);
        assert!(
            path.is_file(),
            "{} missing: install Debian's containernetworking-plugins (scripts/setup.sh)",
            path.display()
        );
        Plugin { path }
    }

    /// The executable.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `CNI_PATH` a runtime would pass for this plugin: its own directory, then the reference
    /// plugins' (so a delegated `host-local` is found).
    pub fn cni_path(&self) -> String {
        let dir = self.path.parent().expect("plugin has a dir");
        format!("{}:{REFERENCE_DIR}", dir.display())
    }
}

/// One plugin invocation, built up like a runtime prepares it, then [`Invocation::run`].
///
/// Starts with `CNI_COMMAND` and `CNI_PATH` set; everything else is explicit, so a test can
/// also leave variables out or set them to bad values.
#[derive(Debug, Clone)]
pub struct Invocation {
    program: PathBuf,
    /// A command the plugin is started through (`sh -c 'umask 000; exec "$0"'`, `time`).
    wrapper: Vec<String>,
    node: Option<PathBuf>,
    env: BTreeMap<String, String>,
    stdin: Vec<u8>,
    kill_after: Option<std::time::Duration>,
    deadline: Option<std::time::Duration>,
}

impl Invocation {
    /// `CNI_COMMAND=<command>` and `CNI_PATH` = [`Plugin::cni_path`], empty stdin, no namespace.
    pub fn new(plugin: &Plugin, command: &str) -> Invocation {
        let mut env = BTreeMap::new();
        env.insert("CNI_COMMAND".to_string(), command.to_string());
        env.insert("CNI_PATH".to_string(), plugin.cni_path());
        Invocation {
            program: plugin.path.clone(),
            wrapper: Vec::new(),
            node: None,
            env,
            stdin: Vec::new(),
            kill_after: None,
            deadline: None,
        }
    }

    /// Starts the plugin inside `node` (as `nsenter --net=/run/netns/<node>` would): its "host"
    /// is that namespace.
    pub fn in_node(mut self, node: &Netns) -> Invocation {
        self.node = Some(node.path());
        self
    }

    /// `CNI_CONTAINERID` and `CNI_NETNS` for `pod`.
    pub fn pod(self, pod: &Pod) -> Invocation {
        self.container_id(&pod.id)
            .netns(&pod.ns.path().to_string_lossy())
    }

    /// `CNI_CONTAINERID`.
    pub fn container_id(self, id: &str) -> Invocation {
        self.env("CNI_CONTAINERID", id)
    }

    /// `CNI_NETNS` (may be empty, as containerd's second DEL sends it).
    pub fn netns(self, path: &str) -> Invocation {
        self.env("CNI_NETNS", path)
    }

    /// `CNI_IFNAME`.
    pub fn ifname(self, name: &str) -> Invocation {
        self.env("CNI_IFNAME", name)
    }

    /// `CNI_ARGS` (`K=V;K=V`).
    pub fn args(self, args: &str) -> Invocation {
        self.env("CNI_ARGS", args)
    }

    /// Any variable.
    pub fn env(mut self, key: &str, value: &str) -> Invocation {
        self.env.insert(key.to_string(), value.to_string());
        self
    }

    /// Leaves a variable out entirely.
    pub fn unset(mut self, key: &str) -> Invocation {
        self.env.remove(key);
        self
    }

    /// The network configuration on stdin.
    pub fn config(mut self, config: &Value) -> Invocation {
        self.stdin = serde_json::to_vec(config).expect("serialize config");
        self
    }

    /// Starts the plugin through `wrapper` (its arguments, then the plugin's path), e.g.
    /// `["sh", "-c", "umask 000; exec \"$0\""]` or `["/usr/bin/time", "-f", "%M"]`.
    pub fn via(mut self, wrapper: &[&str]) -> Invocation {
        self.wrapper = wrapper.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Raw stdin bytes (e.g. malformed JSON).
    pub fn stdin(mut self, bytes: &[u8]) -> Invocation {
        self.stdin = bytes.to_vec();
        self
    }

    /// Runs the plugin to completion with only `PATH` and the `CNI_*` variables set.
    pub fn run(&self) -> Outcome {
        match &self.node {
            Some(path) => {
                let file = std::fs::File::open(path)
                    .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
                std::thread::scope(|s| {
                    s.spawn(|| {
                        // The child inherits this thread's network namespace.
                        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                            .unwrap_or_else(|e| panic!("setns {}: {e}", path.display()));
                        self.spawn()
                    })
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p))
                })
            }
            None => self.spawn(),
        }
    }

    /// Like [`Invocation::run`], but SIGKILLs the plugin `after` its start (a runtime or node
    /// dying mid-operation); a plugin that finished earlier is reported normally.
    pub fn run_killed_after(&self, after: std::time::Duration) -> Outcome {
        let mut killing = self.clone();
        killing.kill_after = Some(after);
        killing.run()
    }

    /// Like [`Invocation::run`], but SIGKILLs the plugin if it has not exited `within` its start
    /// (a guard for tests of hangs: a killed plugin's `exit` is `None`).
    pub fn run_within(&self, within: std::time::Duration) -> Outcome {
        let mut guarded = self.clone();
        guarded.deadline = Some(within);
        guarded.run()
    }

    fn spawn(&self) -> Outcome {
        let mut cmd = match self.wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&self.program);
                c
            }
            None => Command::new(&self.program),
        };
        let mut child = cmd
            .env_clear()
            .env("PATH", BASE_PATH)
            .envs(&self.env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.program.display()));
        let mut stdin = child.stdin.take().expect("piped stdin");
        // A plugin that rejects its environment may exit before reading stdin.
        let _ = stdin.write_all(&self.stdin);
        drop(stdin);
        if let Some(after) = self.kill_after {
            std::thread::sleep(after);
            // Fails only when the plugin was already reaped, which cannot happen before wait.
            let _ = child.kill();
        }
        if let Some(within) = self.deadline {
            let start = std::time::Instant::now();
            while child.try_wait().expect("poll plugin").is_none() {
                if start.elapsed() >= within {
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        let out = child.wait_with_output().expect("wait for plugin");
        Outcome {
            invocation: self.describe(),
            exit: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn describe(&self) -> String {
        let env: Vec<String> = self.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!(
            "{} {} <<< {}",
            env.join(" "),
            self.program.display(),
            String::from_utf8_lossy(&self.stdin)
        )
    }
}

/// What a plugin run produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The environment, program and stdin, for failure messages.
    pub invocation: String,
    /// Exit status; `None` when killed by a signal.
    pub exit: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    /// Panics unless the plugin exited 0; returns stdout parsed as JSON (`Null` when empty, as
    /// DEL, CHECK, STATUS and GC answer).
    pub fn success(&self) -> Value {
        assert_eq!(self.exit, Some(0), "plugin failed:\n{self}");
        if self.stdout.trim().is_empty() {
            return Value::Null;
        }
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{self}"))
    }

    /// Panics unless the plugin exited 0 with nothing on stdout.
    pub fn success_empty(&self) {
        assert_eq!(self.exit, Some(0), "plugin failed:\n{self}");
        assert!(
            self.stdout.trim().is_empty(),
            "expected empty stdout:\n{self}"
        );
    }

    /// Panics unless the plugin failed the spec's way: a non-zero exit and exactly one JSON error
    /// object (`code`, `msg`, optional `details`) on stdout. Returns it.
    pub fn error(&self) -> CniError {
        assert!(
            matches!(self.exit, Some(c) if c != 0),
            "expected a failure:\n{self}"
        );
        let v: Value = serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("error output is not one JSON object ({e}):\n{self}"));
        let code = v["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("error has no numeric `code`:\n{self}"));
        let msg = v["msg"]
            .as_str()
            .unwrap_or_else(|| panic!("error has no string `msg`:\n{self}"))
            .to_string();
        assert!(!msg.is_empty(), "error `msg` is empty:\n{self}");
        CniError {
            code,
            msg,
            details: v["details"].as_str().unwrap_or_default().to_string(),
            cni_version: v["cniVersion"].as_str().map(str::to_string),
        }
    }

    /// [`Outcome::error`] with exactly `code`.
    pub fn error_code(&self, code: u64) -> CniError {
        let err = self.error();
        assert_eq!(err.code, code, "wrong CNI error code:\n{self}");
        err
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "  run:    {}\n  exit:   {:?}\n  stdout: {}\n  stderr: {}",
            self.invocation, self.exit, self.stdout, self.stderr
        )
    }
}

/// The spec's error object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u64,
    pub msg: String,
    pub details: String,
    pub cni_version: Option<String>,
}

impl CniError {
    /// `msg` and `details` together, for "names the key/variable" checks.
    pub fn text(&self) -> String {
        format!("{} {}", self.msg, self.details)
    }
}

/// A stand-in for one Kubernetes node: its own network namespace (the "host") and a private
/// directory holding the IPAM `dataDir` and cni-bridge `stateDir`, so nothing touches the machine.
#[derive(Debug)]
pub struct Node {
    pub ns: Netns,
    dir: TempDir,
}

impl Node {
    /// A fresh namespace `<tag>-...` (with `lo` up) and a fresh temp dir.
    pub fn new(tag: &str) -> Node {
        let ns = Netns::new(tag);
        let dir = TempDir::new(tag);
        Node { ns, dir }
    }

    /// IPAM `dataDir` (host-local layout: `<dataDir>/<network>/<ip>`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }

    /// cni-bridge `stateDir` (`<stateDir>/<network>/<containerID>.<ifname>.json`).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// A pod: its own namespace and container ID `<tag>-<pid>-<n>`-derived.
    pub fn pod(&self, tag: &str) -> Pod {
        let ns = Netns::new(tag);
        let id = format!("{}-id", ns.name());
        Pod { ns, id }
    }

    /// An invocation of `plugin` started inside this node.
    pub fn invoke(&self, plugin: &Plugin, command: &str) -> Invocation {
        Invocation::new(plugin, command).in_node(&self.ns)
    }

    /// ADD `pod` as `eth0` with `config`, returning the outcome.
    pub fn add(&self, plugin: &Plugin, config: &Value, pod: &Pod) -> Outcome {
        self.invoke(plugin, "ADD")
            .pod(pod)
            .ifname("eth0")
            .config(config)
            .run()
    }

    /// DEL `pod`'s `eth0` with `config` (which may carry `prevResult`).
    pub fn del(&self, plugin: &Plugin, config: &Value, pod: &Pod) -> Outcome {
        self.invoke(plugin, "DEL")
            .pod(pod)
            .ifname("eth0")
            .config(config)
            .run()
    }

    /// Kernel objects in the node namespace plus every file in the data and state dirs.
    pub fn state(&self) -> NodeState {
        NodeState::capture(&self.ns, &[self.data_dir(), self.state_dir()])
    }

    /// IPAM reservations of `network`: IP → file content (`containerID\r\nifname`).
    pub fn reservations(&self, network: &str) -> BTreeMap<String, String> {
        let dir = self.data_dir().join(network);
        crate::fs::snapshot(&dir)
            .into_iter()
            .filter_map(|(path, content)| {
                let name = path.to_string_lossy().into_owned();
                name.parse::<std::net::IpAddr>()
                    .ok()
                    .map(|_| (name, String::from_utf8_lossy(&content).into_owned()))
            })
            .collect()
    }

    /// cni-bridge attachment records of `network` (file name → parsed JSON): the `*.json` files
    /// not starting with `.`, as readers are told to take them (the lock and temporary files
    /// are not records).
    pub fn records(&self, network: &str) -> BTreeMap<String, Value> {
        crate::fs::snapshot(&self.state_dir().join(network))
            .into_iter()
            .filter(|(path, _)| {
                let name = path.to_string_lossy();
                !name.starts_with('.') && name.ends_with(".json")
            })
            .map(|(path, content)| {
                let value = serde_json::from_slice(&content)
                    .unwrap_or_else(|e| panic!("record {} is not JSON: {e}", path.display()));
                (path.to_string_lossy().into_owned(), value)
            })
            .collect()
    }
}

/// A pod sandbox: the network namespace a runtime created, and its container ID.
#[derive(Debug)]
pub struct Pod {
    pub ns: Netns,
    pub id: String,
}

/// A bridge network configuration as users write it for the reference plugin, with `type`
/// `plugin_type`, gateway on (`isGateway`, `isDefaultGateway`) and host-local-style IPAM
/// (`ipam_type` = `host-local` or `cni-bridge-ipam`) on `subnet` under `node`'s data dir; cni-bridge's
/// `stateDir` points at the node's state dir. Tests add or change keys on the returned value.
pub fn bridge_config(
    node: &Node,
    cni_version: &str,
    plugin_type: &str,
    network: &str,
    ipam_type: &str,
    subnet: &str,
) -> Value {
    serde_json::json!({
        "cniVersion": cni_version,
        "name": network,
        "type": plugin_type,
        "bridge": "cnib0",
        "isGateway": true,
        "isDefaultGateway": true,
        "stateDir": node.state_dir(),
        "ipam": {
            "type": ipam_type,
            "subnet": subnet,
            "dataDir": node.data_dir(),
        },
    })
}

/// `config` with `prevResult` set, as a runtime sends DEL and CHECK after an ADD.
pub fn with_prev_result(config: &Value, prev: &Value) -> Value {
    let mut c = config.clone();
    c["prevResult"] = prev.clone();
    c
}

/// The plugin a test drives plus the `type` and `ipam.type` its configuration names.
#[derive(Debug, Clone)]
pub struct Flavor {
    pub plugin: Plugin,
    pub plugin_type: &'static str,
    pub ipam_type: &'static str,
}

impl Flavor {
    /// cni-bridge with its built-in allocator (`ipam.type` = `cni-bridge-ipam`).
    pub fn cni_bridge() -> Flavor {
        Flavor {
            plugin: Plugin::cni_bridge(),
            plugin_type: "cni-bridge",
            ipam_type: "cni-bridge-ipam",
        }
    }

    /// cni-bridge delegating IPAM to Debian's `host-local` on `CNI_PATH`.
    pub fn cni_bridge_delegating() -> Flavor {
        Flavor {
            plugin: Plugin::cni_bridge(),
            plugin_type: "cni-bridge",
            ipam_type: "host-local",
        }
    }

    /// Debian's reference `bridge` + `host-local`: the baseline, and a check of the harness itself.
    pub fn reference() -> Flavor {
        Flavor {
            plugin: Plugin::reference("bridge"),
            plugin_type: "bridge",
            ipam_type: "host-local",
        }
    }

    /// [`bridge_config`] for this flavor.
    pub fn config(&self, node: &Node, cni_version: &str, network: &str, subnet: &str) -> Value {
        bridge_config(
            node,
            cni_version,
            self.plugin_type,
            network,
            self.ipam_type,
            subnet,
        )
    }
}

/// The parts of an ADD result tests check against the kernel.
#[derive(Debug, Clone)]
pub struct AddResult {
    /// `interfaces[]` entry without `sandbox` that is the bridge (named `bridge` in the config).
    pub bridge: Value,
    /// The other host-side entry: the host end of the veth pair.
    pub host_veth: Value,
    /// The entry with `sandbox` set: the interface inside the pod.
    pub container: Value,
    /// Index of `container` in `interfaces[]`.
    pub container_index: u64,
    /// `ips[0]`.
    pub ip: Value,
}

impl AddResult {
    /// Splits a bridge plugin's ADD result, panicking when it lacks the spec's shape: an
    /// `interfaces` list with exactly one sandbox interface, one bridge and one host veth, and
    /// one `ips` entry.
    pub fn parse(result: &Value, bridge: &str) -> AddResult {
        let ifaces = result["interfaces"]
            .as_array()
            .unwrap_or_else(|| panic!("result has no interfaces[]: {result}"));
        let in_sandbox = |i: &Value| i["sandbox"].as_str().is_some_and(|s| !s.is_empty());
        let (idx, container) = ifaces
            .iter()
            .enumerate()
            .find(|(_, i)| in_sandbox(i))
            .unwrap_or_else(|| panic!("no interface with a sandbox: {result}"));
        let host: Vec<&Value> = ifaces.iter().filter(|i| !in_sandbox(i)).collect();
        assert_eq!(host.len(), 2, "expected bridge + host veth: {result}");
        let (br, veth) = if host[0]["name"] == bridge {
            (host[0], host[1])
        } else {
            (host[1], host[0])
        };
        assert_eq!(
            br["name"], bridge,
            "bridge missing from interfaces: {result}"
        );
        let ips = result["ips"]
            .as_array()
            .unwrap_or_else(|| panic!("result has no ips[]: {result}"));
        assert_eq!(ips.len(), 1, "expected one IP: {result}");
        AddResult {
            bridge: br.clone(),
            host_veth: veth.clone(),
            container: container.clone(),
            container_index: idx as u64,
            ip: ips[0].clone(),
        }
    }

    /// `ips[0].address` (CIDR).
    pub fn address(&self) -> String {
        self.ip["address"].as_str().unwrap_or_default().to_string()
    }

    /// `ips[0].address` without the prefix length.
    pub fn ip_addr(&self) -> std::net::IpAddr {
        let a = self.address();
        let ip = a.split('/').next().unwrap_or_default();
        ip.parse()
            .unwrap_or_else(|e| panic!("bad address {a}: {e}"))
    }

    /// Name of the host end of the veth pair.
    pub fn host_veth_name(&self) -> String {
        self.host_veth["name"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}
