//! Network namespaces: a handle on one, and running code inside it.
//!
//! Nothing here switches the namespace of a long-lived thread. [`NetNs::run`] runs a closure on a
//! short-lived thread that has joined the namespace; sockets opened there stay bound to it after
//! the thread ends (netavark's pattern), so callers keep one socket per namespace side by side.
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
    /// The helper thread could not be started or panicked.
    #[error("network namespace {path}: helper thread failed: {reason}")]
    Thread { path: PathBuf, reason: String },
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

    /// The path this namespace was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The raw descriptor, e.g. for `IFLA_NET_NS_FD` (`ip link set ... netns`).
    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Runs `f` on a fresh thread that has joined this namespace (`ip netns exec NAME`), and
    /// returns its result. Sockets and `/proc/sys/net` files opened inside `f` belong to this
    /// namespace for their whole life.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetNsError> {
        let fd = self.file.as_fd();
        std::thread::scope(|scope| {
            let worker = std::thread::Builder::new()
                .name("netns".into())
                .spawn_scoped(scope, move || enter(fd).map(|()| f()))
                .map_err(|e| NetNsError::Thread {
                    path: self.path.clone(),
                    reason: e.to_string(),
                })?;
            match worker.join() {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(source)) => Err(NetNsError::Enter {
                    path: self.path.clone(),
                    source,
                }),
                Err(_) => Err(NetNsError::Thread {
                    path: self.path.clone(),
                    reason: "panicked".into(),
                }),
            }
        })
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
    fn current_namespace_runs_closure() {
        let ns = NetNs::current().unwrap();
        assert_eq!(ns.run(|| 41 + 1).unwrap(), 42);
    }
}
