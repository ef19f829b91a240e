//! One svc-proxy per node: a daemon holds an abstract unix socket named after its dummy device.
//! Abstract sockets belong to the network namespace, so two nodes in two namespaces do not
//! clash, and the kernel releases the name when the holder dies (even by `kill -9`). A second
//! daemon for the same device (a systemd unit beside a DaemonSet, say) refuses to start and
//! names the first by its PID.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};

/// Held for the life of the daemon.
pub struct Instance {
    _socket: UnixListener,
}

/// Why this daemon may not run.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error(
        "another svc-proxy (pid {pid}) already manages dummy device {dummy} in this network \
         namespace; two would undo each other's work (stop it first)"
    )]
    Running { pid: i32, dummy: String },
    #[error(
        "another svc-proxy already manages dummy device {dummy} in this network namespace (its \
         pid could not be read: {reason})"
    )]
    RunningUnknown { dummy: String, reason: String },
    #[error("claiming dummy device {dummy}: {source}")]
    Io {
        dummy: String,
        source: std::io::Error,
    },
}

fn name(dummy: &str) -> String {
    format!("svc-proxy/{dummy}")
}

impl Instance {
    /// Claims `dummy` in the calling thread's network namespace.
    pub fn claim(dummy: &str) -> Result<Instance, InstanceError> {
        let addr = SocketAddr::from_abstract_name(name(dummy).as_bytes()).map_err(|source| {
            InstanceError::Io {
                dummy: dummy.to_string(),
                source,
            }
        })?;
        match UnixListener::bind_addr(&addr) {
            Ok(socket) => Ok(Instance { _socket: socket }),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(holder(&addr, dummy)),
            Err(source) => Err(InstanceError::Io {
                dummy: dummy.to_string(),
                source,
            }),
        }
    }

    /// Whether a daemon holds `dummy` now (for `cleanup`, which must not pull its state away).
    pub fn running(dummy: &str) -> Option<InstanceError> {
        let addr = SocketAddr::from_abstract_name(name(dummy).as_bytes()).ok()?;
        UnixStream::connect_addr(&addr).ok()?;
        Some(holder(&addr, dummy))
    }
}

/// Names the daemon holding `addr`, by the credentials of its socket.
fn holder(addr: &SocketAddr, dummy: &str) -> InstanceError {
    let unknown = |reason: String| InstanceError::RunningUnknown {
        dummy: dummy.to_string(),
        reason,
    };
    match UnixStream::connect_addr(addr) {
        Ok(s) => match nix::sys::socket::getsockopt(&s, nix::sys::socket::sockopt::PeerCredentials)
        {
            Ok(cred) => InstanceError::Running {
                pid: cred.pid(),
                dummy: dummy.to_string(),
            },
            Err(e) => unknown(e.to_string()),
        },
        Err(e) => unknown(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_claim_names_the_first_and_the_name_frees_on_drop() {
        let dummy = format!("t{}", std::process::id());
        let first = Instance::claim(&dummy).unwrap();
        let err = Instance::claim(&dummy).err().unwrap();
        let me = std::process::id() as i32;
        assert!(
            matches!(&err, InstanceError::Running { pid, .. } if *pid == me),
            "{err}"
        );
        assert!(err.to_string().contains(&format!("pid {me}")), "{err}");
        assert!(Instance::running(&dummy).is_some());
        // Another device is another claim.
        let other = Instance::claim(&format!("{dummy}x")).unwrap();
        drop(first);
        assert!(Instance::running(&dummy).is_none());
        let _again = Instance::claim(&dummy).unwrap();
        drop(other);
    }
}
