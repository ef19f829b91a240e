//! Network namespaces: a handle on one, and running code inside it.
//!
//! [`NetNs::run`] runs a synchronous closure inside the namespace and returns to the caller's
//! namespace before it returns (also when the closure panics). Sockets and `/proc/sys/net` files
//! opened in the closure stay bound to the namespace for their whole life (netavark's pattern),
//! so callers keep one socket per namespace side by side instead of switching around awaits.
//! This module needs no `unsafe`: `setns(2)` goes through `nix`.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};

/// Errors from opening or entering a namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetNsError {
    /// The path does not exist (the namespace is gone or was never there).
    #[error("network namespace {path}: does not exist")]
    NotFound { path: PathBuf },
    /// The path exists but could not be opened.
    #[error("network namespace {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not a network namespace (or the kernel refused to join it).
    #[error("cannot enter network namespace {path}: {source}")]
    Enter { path: PathBuf, source: nix::Error },
}

/// An open network namespace (`ip netns exec`'s target), held by file descriptor so it cannot
/// be swapped under us between checks and use.
#[derive(Debug)]
pub struct NetNs {
    file: File,
    /// Where it was opened from, for messages.
    path: PathBuf,
}

impl NetNs {
    /// Opens the namespace at `path` (`/run/netns/NAME`, `/proc/PID/ns/net`, ...).
    pub fn from_path(path: &Path) -> Result<NetNs, NetNsError> {
        let file = File::open(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                NetNsError::NotFound {
                    path: path.to_path_buf(),
                }
            } else {
                NetNsError::Open {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        Ok(NetNs {
            file,
            path: path.to_path_buf(),
        })
    }

    /// The namespace of the calling thread.
    pub fn current() -> Result<NetNs, NetNsError> {
        NetNs::from_path(Path::new("/proc/thread-self/ns/net"))
    }

    /// Whether both handles are the same namespace (the same nsfs inode), however each was
    /// reached (`/run/netns/NAME`, `/proc/PID/ns/net`, a symlink to either).
    pub fn same_as(&self, other: &NetNs) -> Result<bool, NetNsError> {
        use std::os::unix::fs::MetadataExt;
        let id = |ns: &NetNs| {
            ns.file
                .metadata()
                .map(|m| (m.dev(), m.ino()))
                .map_err(|source| NetNsError::Open {
                    path: ns.path.clone(),
                    source,
                })
        };
        Ok(id(self)? == id(other)?)
    }

    /// The path this namespace was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The raw descriptor, e.g. for `IFLA_NET_NS_FD` (`ip link set ... netns`).
    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Runs `f` inside this namespace (`ip netns exec NAME`) and returns its result. The calling
    /// thread joins the namespace for the duration of `f` only (two `setns` calls are cheaper
    /// than starting a thread, which an ADD would do twice), so `f` must not wait for other
    /// tasks of the same thread. Sockets and `/proc/sys/net` files opened inside `f` belong to this
    /// namespace for their whole life.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetNsError> {
        let home = NetNs::current()?;
        enter(self.file.as_fd()).map_err(|source| NetNsError::Enter {
            path: self.path.clone(),
            source,
        })?;
        let _back = Return(home);
        Ok(f())
    }
}

/// Rejoins the namespace it holds when dropped, so a panic in the closure cannot leave the
/// thread elsewhere.
struct Return(NetNs);

impl Drop for Return {
    fn drop(&mut self) {
        if let Err(e) = enter(self.0.file.as_fd()) {
            // Carrying on in the wrong namespace would change the wrong node's network.
            eprintln!(
                "fatal: cannot return to network namespace {}: {e}",
                self.0.path.display()
            );
            std::process::abort();
        }
    }
}

/// Joins the calling thread to the namespace behind `fd`.
fn enter(fd: BorrowedFd<'_>) -> Result<(), nix::Error> {
    setns(fd, CloneFlags::CLONE_NEWNET)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_namespace_is_not_found() {
        let err = NetNs::from_path(Path::new("/nonexistent/netns/x")).unwrap_err();
        assert!(matches!(err, NetNsError::NotFound { .. }), "{err}");
    }

    #[test]
    fn a_regular_file_cannot_be_entered() {
        let ns = NetNs::from_path(Path::new("/proc/self/status")).unwrap();
        let err = ns.run(|| ()).unwrap_err();
        assert!(matches!(err, NetNsError::Enter { .. }), "{err}");
    }

    #[test]
    fn the_own_namespace_is_recognized_through_any_path() {
        let own = NetNs::current().unwrap();
        let via_pid =
            NetNs::from_path(Path::new(&format!("/proc/{}/ns/net", std::process::id()))).unwrap();
        assert!(via_pid.same_as(&own).unwrap());
        let other = NetNs::from_path(Path::new("/proc/self/ns/uts")).unwrap();
        assert!(!other.same_as(&own).unwrap());
    }

    #[test]
    fn current_namespace_runs_closure() {
        let ns = NetNs::current().unwrap();
        assert_eq!(ns.run(|| 41 + 1).unwrap(), 42);
    }

    #[test]
    fn closure_runs_inside_and_caller_returns() {
        let ino = |p: &str| std::fs::metadata(p).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
        let before = ino("/proc/thread-self/ns/net").unwrap();
        // A namespace of our own: the test needs root (CAP_SYS_ADMIN), like every netns test.
        let name = format!("nodenet-test-{}", std::process::id());
        let status = std::process::Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("run ip netns add (root required)");
        assert!(
            status.success(),
            "ip netns add {name} failed: root required"
        );
        let path = PathBuf::from(format!("/run/netns/{name}"));
        let ns = NetNs::from_path(&path).unwrap();
        let inside = ns.run(|| ino("/proc/thread-self/ns/net").unwrap()).unwrap();
        let after = ino("/proc/thread-self/ns/net").unwrap();
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &name])
            .status();
        assert_ne!(inside, before);
        assert_eq!(after, before);
    }
}
