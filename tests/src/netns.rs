//! Named network namespaces for tests: created with `ip netns add`, removed on drop (also when the
//! test panics), so parallel tests each get their own node, pods and "outside" world.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sched::CloneFlags;

use crate::root::require_root;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace bind-mounted at `/run/netns/<name>` (`ip netns add <name>`).
///
/// The name is unique per process and call (`<tag>-<pid>-<n>`), so tests running in parallel
/// threads never collide. Dropping it runs `ip netns del <name>`.
#[derive(Debug)]
pub struct Netns {
    name: String,
    deleted: bool,
}

impl Netns {
    /// `ip netns add <tag>-<pid>-<n>` then `ip -n <name> link set lo up`.
    ///
    /// `tag` should be short: it only makes failures readable.
    pub fn new(tag: &str) -> Netns {
        require_root();
        let name = format!(
            "{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run_checked(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns {
            name,
            deleted: false,
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// The name as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`: what a runtime passes as `CNI_NETNS`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip netns del <name>` now (e.g. to test a DEL after the pod's netns is gone).
    pub fn delete(&mut self) {
        if !self.deleted {
            run_checked(Command::new("ip").args(["netns", "del", &self.name]));
            self.deleted = true;
        }
    }

    /// Runs `f` on a short-lived thread that has joined this namespace.
    ///
    /// Sockets opened inside `f` stay bound to this namespace wherever they are used later, and
    /// processes spawned inside `f` start in it.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let file = File::open(self.path())
            .unwrap_or_else(|e| panic!("open {}: {e}", self.path().display()));
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("setns into {}: {e}", self.name));
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// `nsenter --net=/run/netns/<name> <program> <args>`, returning its output whatever its status.
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        let net = format!("--net={}", self.path().display());
        let mut cmd = Command::new("nsenter");
        cmd.arg(net).arg("--").arg(program).args(args);
        cmd.output()
            .unwrap_or_else(|e| panic!("spawn nsenter {program}: {e}"))
    }

    /// Like [`Netns::exec`], but panics unless the command succeeds; returns its stdout.
    pub fn exec_ok(&self, program: &str, args: &[&str]) -> String {
        let out = self.exec(program, args);
        assert!(
            out.status.success(),
            "in netns {}: `{program} {}` failed: {}",
            self.name,
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ip -n <name> <args>`, panicking unless it succeeds; returns its stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        run_checked(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Connects this namespace to `peer` with a veth pair and addresses both ends (`ip link add
    /// <local> type veth peer name <remote> netns <peer>`, `ip addr add`, `ip link set up`).
    ///
    /// This is test *environment* (e.g. the node's uplink to an "outside" host), never plugin work.
    pub fn veth_to(&self, local: (&str, &str), peer: &Netns, remote: (&str, &str)) {
        self.ip(&[
            "link", "add", local.0, "type", "veth", "peer", "name", remote.0, "netns", &peer.name,
        ]);
        self.ip(&["addr", "add", local.1, "dev", local.0]);
        self.ip(&["link", "set", local.0, "up"]);
        peer.ip(&["addr", "add", remote.1, "dev", remote.0]);
        peer.ip(&["link", "set", remote.0, "up"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.deleted {
            let status = Command::new("ip")
                .args(["netns", "del", &self.name])
                .status();
            if !matches!(status, Ok(s) if s.success()) {
                eprintln!("warning: could not delete netns {}", self.name);
            }
        }
    }
}

/// Runs `cmd`, panicking with its stderr unless it succeeds; returns its stdout.
pub fn run_checked(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
