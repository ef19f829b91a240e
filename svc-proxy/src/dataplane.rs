//! The kernel as the controller sees it: dump what we own, apply operations. The real
//! implementation is [`crate::kernel::Kernel`]; tests use the recording fake in [`fake`].

use crate::model::{Desired, Observed, ObservedService, ServiceKey};
use crate::plan::Op;
use std::collections::{BTreeMap, BTreeSet};

/// A failed kernel operation, with the object it was about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DataplaneError(pub String);

impl DataplaneError {
    pub fn new(context: impl std::fmt::Display, err: impl std::fmt::Display) -> DataplaneError {
        DataplaneError(format!("{context}: {err}"))
    }
}

pub type Result<T, E = DataplaneError> = std::result::Result<T, E>;

/// Kernel access for the controller.
pub trait Dataplane {
    /// Ensures the static pieces exist: the dummy device (up), the loop-back set, the nat chain with
    /// its one MASQUERADE rule and the jump to it, and the sysctls. Idempotent.
    fn ensure_base(&mut self) -> Result<()>;

    /// Dumps the dummy device's addresses, every virtual service (real servers only for those
    /// [`Observed::owns`] says are ours, given what `desired` claims), our sets and routes, and
    /// the node's addresses.
    fn observe(&mut self, desired: &Desired) -> Result<Observed>;

    /// Dumps one virtual service and its real servers (`ipvsadm -L -n -t VIP:PORT`).
    fn observe_service(&mut self, key: &ServiceKey) -> Result<Option<ObservedService>>;

    /// Applies `ops` in order, batched where the kernel allows; one result per operation.
    fn apply(&mut self, ops: &[Op]) -> Vec<Result<()>>;

    /// Deletes the stale UDP conntrack entries of `services` (virtual service -> its real
    /// servers): an entry whose original destination is one of them and whose reply does not
    /// come from one of its real servers (sent while it had none, or to one that is gone).
    /// Returns how many were deleted. kube-proxy's `CleanStaleEntries`.
    fn clean_udp_conntrack(
        &mut self,
        services: &BTreeMap<ServiceKey, BTreeSet<std::net::SocketAddr>>,
    ) -> Result<usize>;

    /// Removes everything svc-proxy owns (`svc-proxy cleanup`) and nothing else.
    fn cleanup(&mut self) -> Result<()>;
}

/// A dataplane shared with someone who watches it (a test that runs the daemon in-process).
impl<D: Dataplane> Dataplane for std::sync::Arc<std::sync::Mutex<D>> {
    fn ensure_base(&mut self) -> Result<()> {
        self.lock().unwrap_or_else(|p| p.into_inner()).ensure_base()
    }

    fn observe(&mut self, desired: &Desired) -> Result<Observed> {
        self.lock()
            .unwrap_or_else(|p| p.into_inner())
            .observe(desired)
    }

    fn observe_service(&mut self, key: &ServiceKey) -> Result<Option<ObservedService>> {
        self.lock()
            .unwrap_or_else(|p| p.into_inner())
            .observe_service(key)
    }

    fn apply(&mut self, ops: &[Op]) -> Vec<Result<()>> {
        self.lock().unwrap_or_else(|p| p.into_inner()).apply(ops)
    }

    fn clean_udp_conntrack(
        &mut self,
        services: &BTreeMap<ServiceKey, BTreeSet<std::net::SocketAddr>>,
    ) -> Result<usize> {
        self.lock()
            .unwrap_or_else(|p| p.into_inner())
            .clean_udp_conntrack(services)
    }

    fn cleanup(&mut self) -> Result<()> {
        self.lock().unwrap_or_else(|p| p.into_inner()).cleanup()
    }
}

pub mod fake {
    //! A dataplane that keeps kernel state in memory, records every operation, and fails on
    //! demand: the controller's unit tests and the in-process tests against a real API server
    //! (which need no IPVS) drive svc-proxy against it.

    use super::*;
    use crate::plan::Scope;

    #[derive(Default)]
    pub struct Recording {
        /// The "kernel": addresses on the dummy, all virtual services (ours and foreign), the set.
        pub state: Observed,
        /// Every operation applied successfully, in order.
        pub applied: Vec<Op>,
        /// Operations in these scopes fail with "injected failure".
        pub fail: BTreeSet<Scope>,
        pub full_observes: usize,
        pub service_observes: Vec<ServiceKey>,
        pub base_ensured: usize,
        pub cleaned: bool,
        /// The services of each stale-UDP-conntrack cleanup asked for, in order.
        pub conntrack_cleanups: Vec<BTreeMap<ServiceKey, BTreeSet<std::net::SocketAddr>>>,
    }

    impl Recording {
        /// Takes the operations recorded so far.
        pub fn take(&mut self) -> Vec<Op> {
            std::mem::take(&mut self.applied)
        }

        /// Sets the connection counts of a real server, as traffic would.
        pub fn set_conns(&mut self, key: &ServiceKey, dest: std::net::SocketAddr, active: u32) {
            let d = self
                .state
                .services
                .get_mut(key)
                .unwrap()
                .dests
                .get_mut(&dest)
                .unwrap();
            d.active_conns = active;
        }

        fn check(&self, op: &Op) -> Result<()> {
            let s = &self.state;
            let exists = match op {
                Op::AddAddress(ip) | Op::DelAddress(ip) => s.addresses.contains(ip),
                Op::AddService(v) | Op::UpdateService(v) => s.services.contains_key(&v.key),
                Op::DelService(k) => s.services.contains_key(k),
                Op::AddDest { service, dest, .. }
                | Op::UpdateDest { service, dest, .. }
                | Op::DelDest { service, dest } => match s.services.get(service) {
                    None => return Err(DataplaneError::new(op, "No such process")),
                    Some(o) => o.dests.contains_key(dest),
                },
                Op::AddMember { set, member } | Op::DelMember { set, member } => {
                    s.has_member(set, member)
                }
                // `ip route replace`: adding never finds one in the way.
                Op::AddRoute(_) => false,
                Op::DelRoute(r) => s.routes.contains(r),
            };
            let adds = matches!(
                op,
                Op::AddAddress(_)
                    | Op::AddService(_)
                    | Op::AddDest { .. }
                    | Op::AddMember { .. }
                    | Op::AddRoute(_)
            );
            match (adds, exists) {
                (true, true) => Err(DataplaneError::new(op, "File exists")),
                (false, false) => Err(DataplaneError::new(op, "No such file or directory")),
                _ => Ok(()),
            }
        }
    }

    impl Dataplane for Recording {
        fn ensure_base(&mut self) -> Result<()> {
            self.base_ensured += 1;
            Ok(())
        }

        fn observe(&mut self, desired: &Desired) -> Result<Observed> {
            self.full_observes += 1;
            let mut o = self.state.clone();
            let owned = self.state.clone();
            for (key, svc) in o.services.iter_mut() {
                if !owned.owns(key, desired) {
                    svc.dests.clear();
                }
            }
            Ok(o)
        }

        fn observe_service(&mut self, key: &ServiceKey) -> Result<Option<ObservedService>> {
            self.service_observes.push(*key);
            Ok(self.state.services.get(key).cloned())
        }

        fn apply(&mut self, ops: &[Op]) -> Vec<Result<()>> {
            ops.iter()
                .map(|op| {
                    if self.fail.contains(&op.scope()) {
                        return Err(DataplaneError::new(op, "injected failure"));
                    }
                    self.check(op)?;
                    self.state.record(op);
                    self.applied.push(op.clone());
                    Ok(())
                })
                .collect()
        }

        fn clean_udp_conntrack(
            &mut self,
            services: &BTreeMap<ServiceKey, BTreeSet<std::net::SocketAddr>>,
        ) -> Result<usize> {
            self.conntrack_cleanups.push(services.clone());
            Ok(0)
        }

        fn cleanup(&mut self) -> Result<()> {
            let none = Desired::default();
            let ours: Vec<ServiceKey> = self
                .state
                .services
                .keys()
                .filter(|k| self.state.owns(k, &none))
                .copied()
                .collect();
            for k in ours {
                self.state.services.remove(&k);
            }
            self.state.addresses.clear();
            self.state.sets.clear();
            self.state.routes.clear();
            self.cleaned = true;
            Ok(())
        }
    }
}
