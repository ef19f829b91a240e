//! A real Kubernetes control plane for the tests: etcd, kube-apiserver (TLS, RBAC) and
//! kube-controller-manager (EndpointSlice, ServiceAccount, node IPAM controllers, ...) started by
//! `tests/k8s/up.sh` on free loopback ports in a private temp dir, driven with the matching
//! `kubectl`, and stopped by `tests/k8s/down.sh` when the [`ControlPlane`] is dropped (also when
//! the test panics; a watchdog stops it if the test process is killed before that).
//!
//! There is no kubelet: tests create Nodes and Pods as plain objects and play the kubelet's part
//! by patching a Pod's status ([`ControlPlane::patch_pod_status`]); the real controllers react.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::containerd::repo_root;
use crate::fs::TempDir;

/// A running control plane; dropping it stops every process and removes its directory.
#[derive(Debug)]
pub struct ControlPlane {
    bin: PathBuf,
    apiserver_port: u16,
    dir: TempDir,
}

impl ControlPlane {
    /// Builds (or finds cached) the binaries with `tests/k8s/build.sh` unless `K8S_BIN` names
    /// them, then runs `tests/k8s/up.sh` into a fresh temp dir; panics with the scripts' output
    /// (which includes the failing component's log tail) if either fails.
    pub fn start() -> ControlPlane {
        let scripts = repo_root().join("tests/k8s");
        let bin = match std::env::var_os("K8S_BIN") {
            Some(bin) => PathBuf::from(bin),
            None => {
                // Its progress goes straight to the terminal: a first build takes many minutes.
                let out = Command::new(scripts.join("build.sh"))
                    .stdin(Stdio::null())
                    .stderr(Stdio::inherit())
                    .output();
                PathBuf::from(checked("tests/k8s/build.sh", out).trim())
            }
        };
        let dir = TempDir::new("k8s");
        let out = Command::new(scripts.join("up.sh"))
            .arg("--owner")
            .arg(std::process::id().to_string())
            .arg(dir.path())
            .env("K8S_BIN", &bin)
            .stdin(Stdio::null())
            .output();
        checked("tests/k8s/up.sh", out);
        let apiserver_port = env_value(dir.path(), "APISERVER_PORT")
            .parse()
            .expect("up.sh records APISERVER_PORT as a number");
        ControlPlane {
            bin,
            apiserver_port,
            dir,
        }
    }

    /// The control plane's directory (PKI, kubeconfigs, `env`, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Where kube-apiserver, kube-controller-manager, kube-proxy, kubectl and etcd are.
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// The cluster admin's kubeconfig, server `https://127.0.0.1:<port>`.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir().join("kubeconfig")
    }

    /// The same credentials with server `https://10.0.2.100:6443`, for the VM guest.
    pub fn kubeconfig_vm(&self) -> PathBuf {
        self.dir().join("kubeconfig-vm")
    }

    /// The API server's loopback port (stays the same across [`Self::start_apiserver`]).
    pub fn apiserver_port(&self) -> u16 {
        self.apiserver_port
    }

    /// `https://127.0.0.1:<port>`.
    pub fn apiserver_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.apiserver_port)
    }

    /// kubectl with the admin kubeconfig (its discovery cache inside the control plane's dir, not
    /// in `~/.kube`).
    pub fn kubectl_command(&self) -> Command {
        self.kubectl_command_as(&self.kubeconfig())
    }

    /// kubectl with another identity's kubeconfig (e.g. [`Self::kubeconfig_with_token`]).
    pub fn kubectl_command_as(&self, kubeconfig: &Path) -> Command {
        let mut cmd = Command::new(self.bin.join("kubectl"));
        cmd.arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--cache-dir")
            .arg(self.dir().join("kubectl-cache"))
            .stdin(Stdio::null());
        cmd
    }

    /// `kubectl ARGS` as the cluster admin: its stdout; panics with stderr if it fails.
    pub fn kubectl(&self, args: &[&str]) -> String {
        self.try_kubectl(args).unwrap_or_else(|err| panic!("{err}"))
    }

    /// `kubectl ARGS` as the cluster admin: stdout, or an error naming the command and its stderr
    /// (for steps that are expected to fail, or to be retried).
    pub fn try_kubectl(&self, args: &[&str]) -> Result<String, String> {
        outcome(
            &format!("kubectl {}", args.join(" ")),
            self.kubectl_command().args(args).output(),
        )
    }

    /// `kubectl ARGS` as the identity of `kubeconfig`: stdout, or an error with stderr.
    pub fn try_kubectl_as(&self, kubeconfig: &Path, args: &[&str]) -> Result<String, String> {
        outcome(
            &format!(
                "kubectl --kubeconfig {} {}",
                kubeconfig.display(),
                args.join(" ")
            ),
            self.kubectl_command_as(kubeconfig).args(args).output(),
        )
    }

    /// `kubectl ARGS -o json`, parsed.
    pub fn kubectl_json(&self, args: &[&str]) -> Value {
        let out = self.kubectl(&[args, &["-o", "json"]].concat());
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("kubectl {} -o json: {e}: {out}", args.join(" ")))
    }

    /// `kubectl apply -f -` with `yaml` (one or more documents) on stdin; panics if it fails.
    pub fn kubectl_apply(&self, yaml: &str) -> String {
        let what = "kubectl apply -f -";
        let mut child = self
            .kubectl_command()
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(yaml.as_bytes())
            .unwrap_or_else(|e| panic!("{what}: write stdin: {e}"));
        outcome(what, child.wait_with_output())
            .unwrap_or_else(|err| panic!("{err}\nmanifest:\n{yaml}"))
    }

    /// Plays the kubelet for a Pod: sets its status (subresource) to phase Running with `ips` as
    /// `podIP`/`podIPs` (the first is `podIP`) and the Ready and ContainersReady conditions to
    /// `ready` — what the EndpointSlice controller turns into a (not) ready endpoint.
    pub fn patch_pod_status(&self, namespace: &str, name: &str, ready: bool, ips: &[&str]) {
        assert!(!ips.is_empty(), "a running Pod has at least one IP");
        let ready = if ready { "True" } else { "False" };
        let status = json!({
            "status": {
                "phase": "Running",
                "podIP": ips[0],
                "podIPs": ips.iter().map(|ip| json!({ "ip": ip })).collect::<Vec<_>>(),
                "conditions": [
                    { "type": "PodScheduled", "status": "True" },
                    { "type": "Initialized", "status": "True" },
                    { "type": "ContainersReady", "status": ready },
                    { "type": "Ready", "status": ready },
                ],
            }
        });
        self.kubectl(&[
            "patch",
            "pod",
            name,
            "-n",
            namespace,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status.to_string(),
        ]);
    }

    /// A token for ServiceAccount `namespace/service_account` from the TokenRequest API
    /// (`kubectl create token`), valid for an hour.
    pub fn token_for(&self, service_account: &str, namespace: &str) -> String {
        self.kubectl(&["create", "token", service_account, "-n", namespace])
            .trim()
            .to_string()
    }

    /// Writes `<dir>/kubeconfig-<name>`: the host's API server with `token` as the credentials
    /// (e.g. from [`Self::token_for`]), for a client that must run as that identity.
    pub fn kubeconfig_with_token(&self, name: &str, token: &str) -> PathBuf {
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
            "kubeconfig name '{name}' must be letters, digits and '-'"
        );
        let path = self.dir().join(format!("kubeconfig-{name}"));
        let config = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{ "name": "nodenet-test", "cluster": {
                "server": self.apiserver_url(),
                "certificate-authority": self.dir().join("pki/ca.crt"),
            }}],
            "users": [{ "name": name, "user": { "token": token } }],
            "contexts": [{ "name": name, "context": { "cluster": "nodenet-test", "user": name } }],
            "current-context": name,
        });
        std::fs::write(&path, config.to_string())
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// Stops only kube-apiserver (`tests/k8s/apiserver.sh DIR stop`); etcd and the
    /// controller-manager keep running.
    pub fn stop_apiserver(&self) {
        self.apiserver("stop");
    }

    /// Starts kube-apiserver again with the same port and flags and waits for `/readyz`.
    pub fn start_apiserver(&self) {
        self.apiserver("start");
    }

    fn apiserver(&self, action: &str) {
        let script = repo_root().join("tests/k8s/apiserver.sh");
        let out = Command::new(&script)
            .arg(self.dir())
            .arg(action)
            .stdin(Stdio::null())
            .output();
        checked(&format!("tests/k8s/apiserver.sh {action}"), out);
    }

    /// The last `lines` lines of a component's log (`etcd`, `kube-apiserver`,
    /// `kube-controller-manager`).
    pub fn log_tail(&self, component: &str, lines: usize) -> String {
        let path = self.dir().join(format!("{component}.log"));
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Runs [`Self::vm_command`] to its end and returns its output, one VM at a time in this
    /// test binary: two guests emulated at once on a 2-core machine each take twice as long, and
    /// their timeouts would be the ones hit.
    pub fn vm_output(&self, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
        static ONE_VM: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _turn = ONE_VM.lock().unwrap_or_else(|e| e.into_inner());
        self.vm_command(args, env)
            .output()
            .expect("spawn tests/vm/run.sh")
    }

    /// `tests/vm/run.sh ARGS` with the guest's forward to this API server
    /// (`VM_APISERVER_PORT`); `K8S_DIR` (this dir: `$K8S_DIR/kubeconfig-vm`, `$K8S_DIR/env`,
    /// `$K8S_DIR/pki`), `K8S_BIN` and each of `env` are set and passed into the guest (`VM_ENV`).
    pub fn vm_command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(repo_root().join("tests/vm/run.sh"));
        let mut names = vec!["K8S_DIR", "K8S_BIN"];
        names.extend(env.iter().map(|(name, _)| *name));
        let inherited = std::env::var("VM_ENV").unwrap_or_default();
        names.extend(inherited.split_whitespace());
        cmd.args(args)
            .env("VM_APISERVER_PORT", self.apiserver_port.to_string())
            .env("K8S_DIR", self.dir())
            .env("K8S_BIN", &self.bin)
            .envs(env.iter().copied())
            .env("VM_ENV", names.join(" "))
            .current_dir(repo_root())
            .stdin(Stdio::null());
        cmd
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for component in ["kube-apiserver", "kube-controller-manager", "etcd"] {
                eprintln!(
                    "--- {component}.log (tail)\n{}",
                    self.log_tail(component, 15)
                );
            }
        }
        let script = repo_root().join("tests/k8s/down.sh");
        match Command::new(&script)
            .arg(self.dir())
            .stdin(Stdio::null())
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "warning: {} {} failed ({}): {}",
                script.display(),
                self.dir().display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("warning: spawn {}: {e}", script.display()),
        }
    }
}

/// Polls `probe` every 100 ms until it returns `Some`, and returns that; panics naming `what` once
/// `timeout` has passed. A bound on how long a broken controller can stall the test, not a timed
/// assertion: pick it generously.
pub fn eventually<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            Instant::now() < end,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One `NAME=VALUE` line of `<dir>/env` (up.sh writes plain values for ports and PIDs).
fn env_value(dir: &Path, name: &str) -> String {
    let path = dir.join("env");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("{} has no {name}", path.display()))
        .to_string()
}

fn checked(what: &str, out: std::io::Result<Output>) -> String {
    outcome(what, out).unwrap_or_else(|err| panic!("{err}"))
}

fn outcome(what: &str, out: std::io::Result<Output>) -> Result<String, String> {
    let out = out.map_err(|e| format!("spawn {what}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{what} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
