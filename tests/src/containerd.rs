//! The containerd tier: containerd 1.6 (`ctr` and the CRI) and libcni's `cnitool` as real clients of
//! a CNI plugin, the way a node runs them.
//!
//! - [`Containerd`]: a containerd started inside a test's "node" namespace with its own root, state
//!   and socket under a temp dir; dropping it removes its tasks, stops it by PID, kills the shims it
//!   started (found by its socket), unmounts everything under its dir, removes the pod netns the
//!   CRI left in `/run/netns` and the empty parent cgroups runc created.
//! - [`CniInstall`]: the plugin binaries in `/opt/cni/bin` and one conflist in `/etc/cni/net.d`
//!   (fixed paths for `ctr` 1.6), plus the plugin's state directories, each moved aside while the
//!   test runs and put back on drop, also when the test panics.
//! - [`Calls`]: the plugin invocations a client made, recorded by a tap installed in front of the
//!   real binary (environment, stdin, exit code), so tests can assert which verbs were sent.
//! - [`image`] and [`cnitool`]: the busybox OCI image and cnitool, built once by the scripts in
//!   `tests/containerd/` and cached in `<repo>/.cache/`.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::fs::TempDir;
use crate::netns::Netns;

/// The image name `tests/containerd/build-image.sh` writes into the `io.containerd.image.name`
/// annotation; also the CRI sandbox ("pause") image.
pub const IMAGE: &str = "localhost/node-tests/busybox:1";

/// Where libcni (ctr, the CRI, cnitool) caches ADD results: outside any plugin's control.
const LIBCNI_CACHE: &str = "/var/lib/cni/results";

/// Where the CRI bind-mounts the pod network namespaces it creates (`cni-<uuid>`).
const RUN_NETNS: &str = "/run/netns";

/// The parent cgroups runc creates in every hierarchy for ctr's (`default`) and the CRI's
/// (`k8s.io`) containers, and leaves behind empty.
const RUNTIME_CGROUPS: [&str; 2] = ["default", "k8s.io"];

static GLOBAL_PATHS: Mutex<()> = Mutex::new(());

/// Serialises the tests of this tier: they all own `/etc/cni/net.d` and `/opt/cni/bin` while
/// they run. A panicking test poisons nothing: its guards have restored the paths.
pub fn exclusive() -> MutexGuard<'static, ()> {
    GLOBAL_PATHS.lock().unwrap_or_else(|e| e.into_inner())
}

/// The workspace root (`tests/..`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The busybox OCI image-layout tar, built by `tests/containerd/build-image.sh` on first use.
pub fn image() -> PathBuf {
    cached("busybox-oci.tar", "build-image.sh", &[IMAGE])
}

/// cnitool built from Debian's `golang-github-appc-cni` by `tests/containerd/build-cnitool.sh`.
pub fn cnitool() -> PathBuf {
    cached("cnitool", "build-cnitool.sh", &[])
}

fn cached(name: &str, script: &str, args: &[&str]) -> PathBuf {
    let path = repo_root().join(".cache").join(name);
    if !path.is_file() {
        let script = repo_root().join("tests/containerd").join(script);
        let out = Command::new(&script)
            .arg(&path)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", script.display()));
        assert!(
            out.status.success() && path.is_file(),
            "{} failed:\n{}{}",
            script.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    path
}

/// Output of a command that must succeed; panics with its stderr otherwise.
pub fn checked(what: &str, out: std::io::Result<Output>) -> String {
    let out = out.unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A global path the test owns for a while: whatever was there is renamed to
/// `<path>.node-tests-saved`; on drop whatever the test left there is removed and the original
/// renamed back (ancestors that did not exist before are removed too, when empty).
#[derive(Debug)]
pub struct Displaced {
    path: PathBuf,
    saved: Option<PathBuf>,
    created: Vec<PathBuf>,
}

impl Displaced {
    /// Moves `path` aside (if present); creates it empty when `create`, else leaves it absent
    /// for the code under test to create.
    pub fn take(path: &Path, create: bool) -> Displaced {
        let saved_path = PathBuf::from(format!("{}.node-tests-saved", path.display()));
        assert!(
            saved_path.symlink_metadata().is_err(),
            "{} exists: an earlier containerd-tier run was killed before restoring {}; \
             move it back by hand",
            saved_path.display(),
            path.display()
        );
        let saved = path.symlink_metadata().is_ok().then(|| {
            std::fs::rename(path, &saved_path)
                .unwrap_or_else(|e| panic!("move {} aside: {e}", path.display()));
            saved_path
        });
        let displaced = Displaced {
            path: path.to_path_buf(),
            saved,
            created: missing_ancestors(path),
        };
        if create {
            std::fs::create_dir_all(path)
                .unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        }
        displaced
    }
}

impl Drop for Displaced {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("warning: remove {}: {e}", self.path.display());
            }
        }
        if let Some(saved) = &self.saved {
            if let Err(e) = std::fs::rename(saved, &self.path) {
                eprintln!(
                    "warning: could not restore {} from {}: {e}",
                    self.path.display(),
                    saved.display()
                );
            }
        }
        for dir in &self.created {
            // Fails harmlessly when someone else put something there meanwhile.
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// The parents of `path` that do not exist yet, nearest first.
fn missing_ancestors(path: &Path) -> Vec<PathBuf> {
    path.ancestors()
        .skip(1)
        .take_while(|a| !a.exists())
        .map(Path::to_path_buf)
        .collect()
}

/// Entries a test adds to a shared directory (libcni's result cache): removed on drop, everything
/// that was there before is left alone; the directory and its parents go if they were absent.
#[derive(Debug)]
pub struct AddedEntries {
    dir: PathBuf,
    before: BTreeSet<OsString>,
    created: Vec<PathBuf>,
}

impl AddedEntries {
    /// Remembers what `dir` holds now.
    pub fn track(dir: &Path) -> AddedEntries {
        let mut created = missing_ancestors(dir);
        if !dir.exists() {
            created.insert(0, dir.to_path_buf());
        }
        AddedEntries {
            dir: dir.to_path_buf(),
            before: entries(dir),
            created,
        }
    }

    /// Names added since [`AddedEntries::track`].
    pub fn added(&self) -> BTreeSet<OsString> {
        entries(&self.dir)
            .difference(&self.before)
            .cloned()
            .collect()
    }
}

impl Drop for AddedEntries {
    fn drop(&mut self) {
        for name in self.added() {
            let _ = std::fs::remove_file(self.dir.join(name));
        }
        for dir in &self.created {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn entries(dir: &Path) -> BTreeSet<OsString> {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default()
}

/// A CNI network installed where containerd 1.6 looks for it: `conflist` as the only file in
/// `/etc/cni/net.d` (or none, for containerd to render), plugin binaries as the only files in
/// `/opt/cni/bin`; the network's IPAM `dataDir/<name>` and cni-bridge `stateDir/<name>` start
/// empty. All restored on drop.
#[derive(Debug)]
pub struct CniInstall {
    /// The conflist's `name`.
    pub network: String,
    /// `<dataDir>/<network>`: the IPAM reservations.
    reservations_dir: PathBuf,
    /// `<stateDir>/<network>`: cni-bridge's attachment records.
    records_dir: PathBuf,
    /// Where the tap (if any) writes [`Calls`].
    calls_dir: Option<TempDir>,
    // Field order is drop order: the libcni cache goes before the directories it sits beside.
    libcni_cache: AddedEntries,
    _paths: Vec<Displaced>,
}

/// Where containerd 1.6 (`conf_dir`, as `conf/containerd/cri-cni.toml` sets it) and `ctr` read
/// the network configuration.
pub const CONF_DIR: &str = "/etc/cni/net.d";
/// The IPAM `dataDir` host-local and cni-bridge's allocator default to.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";
/// cni-bridge's default `stateDir`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/cni/cni-bridge";

impl CniInstall {
    /// Installs `conflist` and `plugins` (name in `/opt/cni/bin` → source binary). A plugin
    /// named in `tapped` is installed behind a tap recording every invocation (see [`Calls`]).
    pub fn new(conflist: &Value, plugins: &[(&str, &Path)], tapped: Option<&str>) -> CniInstall {
        let network = conflist["name"].as_str().expect("conflist has a name");
        let first = &conflist["plugins"][0];
        let data_dir = first["ipam"]["dataDir"]
            .as_str()
            .unwrap_or(DEFAULT_DATA_DIR);
        let state_dir = first["stateDir"].as_str().unwrap_or(DEFAULT_STATE_DIR);
        let install = CniInstall::install(network, data_dir, state_dir, plugins, tapped);
        let conf_path = Path::new(CONF_DIR).join(format!("10-{network}.conflist"));
        std::fs::write(
            &conf_path,
            serde_json::to_vec_pretty(conflist).expect("json"),
        )
        .unwrap_or_else(|e| panic!("write {}: {e}", conf_path.display()));
        install
    }

    /// Like [`CniInstall::new`] with `/etc/cni/net.d` left empty, for the conflist containerd
    /// renders from its `conf_template` (network `network`, default `dataDir` and `stateDir`).
    pub fn without_conflist(
        network: &str,
        plugins: &[(&str, &Path)],
        tapped: Option<&str>,
    ) -> CniInstall {
        CniInstall::install(
            network,
            DEFAULT_DATA_DIR,
            DEFAULT_STATE_DIR,
            plugins,
            tapped,
        )
    }

    fn install(
        network: &str,
        data_dir: &str,
        state_dir: &str,
        plugins: &[(&str, &Path)],
        tapped: Option<&str>,
    ) -> CniInstall {
        crate::root::require_root();
        let network = network.to_string();
        let reservations_dir = Path::new(data_dir).join(&network);
        let records_dir = Path::new(state_dir).join(&network);

        let paths = vec![
            Displaced::take(Path::new(CONF_DIR), true),
            Displaced::take(Path::new("/opt/cni/bin"), true),
            Displaced::take(&reservations_dir, false),
            Displaced::take(&records_dir, false),
        ];
        let libcni_cache = AddedEntries::track(Path::new(LIBCNI_CACHE));

        let calls_dir = tapped.map(|_| TempDir::new("cni-calls"));
        for (name, source) in plugins {
            let dest = Path::new("/opt/cni/bin").join(name);
            match (&calls_dir, tapped == Some(*name)) {
                (Some(calls), true) => {
                    let real = calls.path().join(format!("{name}.real"));
                    copy_executable(source, &real);
                    let tap = TAP
                        .replace("@CALLS@", &calls.path().display().to_string())
                        .replace("@REAL@", &real.display().to_string());
                    std::fs::write(&dest, tap).expect("write tap");
                    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755))
                        .expect("chmod tap");
                }
                _ => copy_executable(source, &dest),
            }
        }
        CniInstall {
            network,
            reservations_dir,
            records_dir,
            calls_dir,
            libcni_cache,
            _paths: paths,
        }
    }

    /// IPs reserved in the network's IPAM directory, with their file content
    /// (`containerID\r\nifname`).
    pub fn reservations(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = std::fs::read_dir(&self.reservations_dir)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        name.parse::<std::net::IpAddr>().ok()?;
                        let content = std::fs::read_to_string(e.path()).ok()?;
                        Some((name, content))
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// The attachment record of `container_id`/`ifname`, if present.
    pub fn record(&self, container_id: &str, ifname: &str) -> Option<Value> {
        let path = self
            .records_dir
            .join(format!("{container_id}.{ifname}.json"));
        let text = std::fs::read_to_string(&path).ok()?;
        Some(
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not JSON ({e}): {text}", path.display())),
        )
    }

    /// Names of the record files in the records directory (`*.json` not starting with `.`, as
    /// readers take them; the lock file is not a record).
    pub fn record_files(&self) -> BTreeSet<String> {
        entries(&self.records_dir)
            .into_iter()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.') && n.ends_with(".json"))
            .collect()
    }

    /// Names libcni added to its result cache since the install.
    pub fn libcni_cache_added(&self) -> BTreeSet<OsString> {
        self.libcni_cache.added()
    }

    /// Every invocation of the tapped plugin so far, in order.
    pub fn calls(&self) -> Calls {
        let dir = self
            .calls_dir
            .as_ref()
            .expect("CniInstall::new was given a tapped plugin");
        Calls::read(dir.path())
    }
}

fn copy_executable(source: &Path, dest: &Path) {
    std::fs::copy(source, dest)
        .unwrap_or_else(|e| panic!("install {} as {}: {e}", source.display(), dest.display()));
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// Installed in place of a plugin: records the `CNI_*` variables, stdin and exit code of each
/// invocation under a sequence number, and passes stdin/stdout/exit through unchanged.
const TAP: &str = r#"#!/bin/sh
calls=@CALLS@
n=$(date +%s%N)
env | grep '^CNI_' >"$calls/$n.env"
tee "$calls/$n.stdin" | @REAL@ "$@"
rc=$?
echo "$rc" >"$calls/$n.rc"
exit "$rc"
"#;

/// One plugin invocation seen by the tap.
#[derive(Debug, Clone)]
pub struct Call {
    /// `CNI_COMMAND`.
    pub command: String,
    pub container_id: String,
    /// `CNI_NETNS`; empty when the client sent it empty or not at all.
    pub netns: String,
    pub ifname: String,
    /// `CNI_ARGS`.
    pub args: String,
    /// The configuration on stdin.
    pub config: Value,
    /// Exit code; `None` while the plugin is still running.
    pub exit: Option<i32>,
}

/// The invocations of a tapped plugin, oldest first.
#[derive(Debug, Clone)]
pub struct Calls(pub Vec<Call>);

impl Calls {
    fn read(dir: &Path) -> Calls {
        let mut seqs: Vec<String> = entries(dir)
            .into_iter()
            .filter_map(|n| n.to_string_lossy().strip_suffix(".env").map(str::to_string))
            .collect();
        seqs.sort_by_key(|s| s.parse::<u128>().unwrap_or_default());
        let calls = seqs
            .iter()
            .map(|seq| {
                let env =
                    std::fs::read_to_string(dir.join(format!("{seq}.env"))).unwrap_or_default();
                let var = |k: &str| {
                    env.lines()
                        .find_map(|l| l.strip_prefix(&format!("{k}=")))
                        .unwrap_or_default()
                        .to_string()
                };
                let stdin = std::fs::read(dir.join(format!("{seq}.stdin"))).unwrap_or_default();
                Call {
                    command: var("CNI_COMMAND"),
                    container_id: var("CNI_CONTAINERID"),
                    netns: var("CNI_NETNS"),
                    ifname: var("CNI_IFNAME"),
                    args: var("CNI_ARGS"),
                    config: serde_json::from_slice(&stdin).unwrap_or(Value::Null),
                    exit: std::fs::read_to_string(dir.join(format!("{seq}.rc")))
                        .ok()
                        .and_then(|s| s.trim().parse().ok()),
                }
            })
            .collect();
        Calls(calls)
    }

    /// The calls for `container_id`, oldest first.
    pub fn for_container(&self, container_id: &str) -> Vec<Call> {
        self.0
            .iter()
            .filter(|c| c.container_id == container_id)
            .cloned()
            .collect()
    }

    /// `COMMAND` per call of `container_id`, for exact sequence assertions.
    pub fn verbs(&self, container_id: &str) -> Vec<String> {
        self.for_container(container_id)
            .into_iter()
            .map(|c| c.command)
            .collect()
    }
}

impl std::fmt::Display for Calls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in &self.0 {
            writeln!(
                f,
                "  {} id={} netns={:?} ifname={} args={:?} exit={:?} prevResult={}",
                c.command,
                c.container_id,
                c.netns,
                c.ifname,
                c.args,
                c.exit,
                !c.config["prevResult"].is_null()
            )?;
        }
        Ok(())
    }
}

/// A containerd daemon inside `node`'s network namespace, private to one test.
pub struct Containerd {
    node: PathBuf,
    dir: TempDir,
    daemon: Child,
    netns_before: BTreeSet<OsString>,
    cgroups_before: BTreeSet<PathBuf>,
}

impl Containerd {
    /// Writes the config from `tests/containerd/config.toml.in`, starts
    /// `nsenter --net=<node> containerd --config <dir>/config.toml` and waits until it answers.
    pub fn start(node: &Netns) -> Containerd {
        Containerd::start_with(node, None)
    }

    /// [`Containerd::start`] with the CRI's CNI `conf_template` set to `template`: on
    /// `UpdateRuntimeConfig` with a pod CIDR, while no network config is loaded, containerd
    /// renders it into `conf_dir` as `10-containerd-net.conflist`.
    pub fn start_with_conf_template(node: &Netns, template: &Path) -> Containerd {
        Containerd::start_with(node, Some(template))
    }

    fn start_with(node: &Netns, conf_template: Option<&Path>) -> Containerd {
        crate::root::require_root();
        let dir = TempDir::new("containerd");
        let template = std::fs::read_to_string(repo_root().join("tests/containerd/config.toml.in"))
            .expect("read tests/containerd/config.toml.in");
        let conf_template = conf_template
            .map(|t| format!("conf_template = {:?}", t.display().to_string()))
            .unwrap_or_default();
        let config = template
            .replace("@DIR@", &dir.path().display().to_string())
            .replace("@IMAGE@", IMAGE)
            .replace("@CONF_TEMPLATE@", &conf_template);
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, config).expect("write containerd config");
        let log = std::fs::File::create(dir.path().join("containerd.log")).expect("create log");
        let daemon = Command::new("nsenter")
            .arg(format!("--net={}", node.path().display()))
            .arg("containerd")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn nsenter containerd");
        let mut containerd = Containerd {
            node: node.path(),
            dir,
            daemon,
            netns_before: entries(Path::new(RUN_NETNS)),
            cgroups_before: runtime_cgroups(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = containerd.daemon.try_wait() {
                panic!(
                    "containerd exited ({status}) at start:\n{}",
                    containerd.log()
                );
            }
            let ready = containerd
                .ctr("default")
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success());
            if ready {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not answer within 60 s:\n{}",
                containerd.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        containerd
    }

    /// The gRPC socket (also the CRI endpoint).
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// containerd's own log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// `nsenter --net=<node> ctr --address <socket> -n <namespace>`: ctr runs CNI plugins itself,
    /// so it must run in the node namespace too.
    pub fn ctr(&self, namespace: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.node.display()))
            .arg("ctr")
            .arg("--address")
            .arg(self.socket())
            .arg("-n")
            .arg(namespace);
        cmd
    }

    /// Runs `ctr -n <namespace> <args>`, panicking unless it succeeds; returns stdout.
    pub fn ctr_ok(&self, namespace: &str, args: &[&str]) -> String {
        checked(
            &format!("ctr -n {namespace} {}", args.join(" ")),
            self.ctr(namespace).args(args).output(),
        )
    }

    /// `ctr -n <namespace> images import <image tar>`.
    pub fn import_image(&self, namespace: &str) {
        let tar = image();
        self.ctr_ok(namespace, &["images", "import", &tar.display().to_string()]);
    }

    /// Status of task `id` as `ctr tasks ls` shows it (`RUNNING`, `STOPPED`), if it exists.
    pub fn task_status(&self, namespace: &str, id: &str) -> Option<String> {
        self.ctr_ok(namespace, &["tasks", "ls"])
            .lines()
            .skip(1)
            .find_map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                (cols.first() == Some(&id)).then(|| cols.last().unwrap_or(&"").to_string())
            })
    }

    /// `ctr tasks kill -s SIGKILL`, wait for the exit, `ctr tasks delete`, `ctr containers
    /// delete`: what happens to a `ctr run -d` container whose client is long gone. No CNI DEL.
    pub fn kill_and_remove(&self, namespace: &str, id: &str) {
        self.ctr_ok(namespace, &["tasks", "kill", "-s", "SIGKILL", id]);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.task_status(namespace, id).as_deref() == Some("RUNNING") {
            assert!(Instant::now() < deadline, "task {id} survived SIGKILL");
            std::thread::sleep(Duration::from_millis(50));
        }
        self.ctr_ok(namespace, &["tasks", "delete", id]);
        self.ctr_ok(namespace, &["containers", "delete", id]);
    }

    /// `cri-client --socket <socket> <args>` (the CRI as kubelet speaks it); returns its JSON.
    pub fn cri(&self, args: &[&str]) -> Value {
        let client = crate::cni::Plugin::built("cri-client");
        let out = checked(
            &format!("cri-client {}", args.join(" ")),
            Command::new(client.path())
                .arg("--socket")
                .arg(self.socket())
                .args(args)
                .env("RUST_BACKTRACE", "0")
                .output(),
        );
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("cri-client output ({e}): {out}"))
    }

    fn remove_everything(&self) {
        for ns in ["default", "k8s.io"] {
            let Ok(out) = self.ctr(ns).args(["containers", "ls", "-q"]).output() else {
                continue;
            };
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = self
                    .ctr(ns)
                    .args(["tasks", "kill", "-s", "SIGKILL", id])
                    .output();
                let _ = self.ctr(ns).args(["tasks", "delete", "-f", id]).output();
                let _ = self.ctr(ns).args(["containers", "delete", id]).output();
            }
        }
    }

    /// PIDs of shims whose command line names this daemon's socket (`-address <socket>`).
    fn shims(&self) -> Vec<Pid> {
        let socket = self.socket().into_os_string();
        std::fs::read_dir("/proc")
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| {
                        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
                        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
                        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
                        let ours = args.first()?.ends_with(b"containerd-shim-runc-v2")
                            && args.iter().any(|a| *a == socket.as_encoded_bytes());
                        ours.then_some(Pid::from_raw(pid))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.remove_everything();
        let pid = Pid::from_raw(self.daemon.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.daemon.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if matches!(self.daemon.try_wait(), Ok(None)) {
            let _ = self.daemon.kill();
            let _ = self.daemon.wait();
        }
        for shim in self.shims() {
            let _ = kill(shim, Signal::SIGKILL);
        }
        unmount_below(self.dir.path());
        for cgroup in runtime_cgroups().difference(&self.cgroups_before) {
            // rmdir only succeeds on an empty cgroup, so anything still in use stays.
            let _ = std::fs::remove_dir(cgroup);
        }
        for name in entries(Path::new(RUN_NETNS)).difference(&self.netns_before) {
            if is_cri_netns_name(&name.to_string_lossy()) {
                let path = Path::new(RUN_NETNS).join(name);
                let _ = nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH);
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

/// `cni-<uuid>`, the CRI's pod netns names; other tests' namespaces never match.
fn is_cri_netns_name(name: &str) -> bool {
    let Some(uuid) = name.strip_prefix("cni-") else {
        return false;
    };
    let groups: Vec<&str> = uuid.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups
            .iter()
            .all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The [`RUNTIME_CGROUPS`] that exist now, in every cgroup hierarchy.
fn runtime_cgroups() -> BTreeSet<PathBuf> {
    std::fs::read_dir("/sys/fs/cgroup")
        .map(|rd| {
            rd.flatten()
                .flat_map(|h| RUNTIME_CGROUPS.map(|name| h.path().join(name)))
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default()
}

/// Lazily unmounts every mount point at or below `dir`, deepest first (containerd's rootfs and
/// shm mounts), so the directory can be removed.
fn unmount_below(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    for p in points {
        let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// How long [`Foreground::line`] waits for a container's next line before calling it hung, so a
/// stuck ADD fails the test instead of stalling the whole run.
const LINE_PATIENCE: Duration = Duration::from_secs(120);

/// A `ctr run` in the foreground (no `-d`), left running: ctr sends ADD before the command starts
/// and DEL after it exits. Its stdout is read line by line.
pub struct Foreground {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    what: String,
}

impl Foreground {
    /// `ctr -n default run --rm --cni <IMAGE> <id> <cmd...>` in the node namespace.
    pub fn start(containerd: &Containerd, id: &str, cmd: &[&str]) -> Foreground {
        let mut child = containerd
            .ctr("default")
            .args(["run", "--rm", "--cni", IMAGE, id])
            .args(cmd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ctr run");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Foreground {
            child,
            lines,
            what: format!("ctr run --rm --cni {id} {}", cmd.join(" ")),
        }
    }

    /// The next line the container prints; panics if it exits (or hangs) first.
    pub fn line(&mut self) -> String {
        match self.lines.recv_timeout(LINE_PATIENCE) {
            Ok(line) => line,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                panic!("`{}` printed nothing for {LINE_PATIENCE:?}", self.what)
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let _ = self.child.wait();
                let mut stderr = String::new();
                if let Some(mut pipe) = self.child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
                }
                panic!(
                    "`{}` ended before printing the expected line: {stderr}",
                    self.what
                );
            }
        }
    }

    /// Closes the container's stdin and waits for ctr to exit (after its DEL); panics unless it
    /// exits 0.
    pub fn finish(mut self) {
        drop(self.child.stdin.take());
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
        }
        let status = self.child.wait().expect("wait for ctr run");
        assert!(
            status.success(),
            "`{}` failed ({status}): {stderr}",
            self.what
        );
    }
}

impl Drop for Foreground {
    fn drop(&mut self) {
        // Only reached with the child still running when the test panicked: Containerd's drop
        // kills the task, which makes this ctr exit.
        drop(self.child.stdin.take());
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The IPv4 address (without prefix) on `eth0` from a line of
/// `ip -4 -o addr show eth0`: `2: eth0    inet 10.0.0.2/24 brd ...`.
pub fn parse_inet(line: &str) -> (std::net::Ipv4Addr, u8) {
    let cidr = line
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .unwrap_or_else(|| panic!("no `inet` in {line:?}"));
    let (ip, len) = cidr.split_once('/').expect("CIDR");
    (
        ip.parse().expect("IPv4 address"),
        len.parse().expect("prefix length"),
    )
}
