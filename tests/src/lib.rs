//! Test harness for the namespace tier: the built binaries driven exactly as a runtime drives them,
//! inside network namespaces each test creates, with the kernel state read back by the same tools an
//! operator would use (`ip -j`, `ipset`, `iptables-save`).
//!
//! Layout:
//! - [`root`]: the loud "must run as root" guard every fixture calls.
//! - [`netns`]: [`netns::Netns`], a named network namespace removed on drop, plus running a closure
//!   or a command inside it and wiring two of them with a veth.
//! - [`fs`]: [`fs::TempDir`], a private directory removed on drop, and a recursive file snapshot.
//! - [`cni`]: [`cni::Plugin`] and [`cni::Invocation`], a CNI plugin run with the `CNI_*` variables
//!   and its config on stdin from inside a "node" namespace, and the parsed outcome.
//! - [`observe`]: read-only kernel observers (links, addresses, routes, bridge ports, ipset members,
//!   iptables rules, sysctls) and [`observe::NodeState`], the snapshot "node unchanged" compares.
//! - [`k8s`]: [`k8s::ControlPlane`], a real etcd + kube-apiserver + kube-controller-manager on
//!   loopback (`tests/k8s/up.sh`), driven with kubectl, stopped on drop.
//! - [`proxy`]: [`proxy::Proxy`], svc-proxy's daemon in-process on the recording dataplane, fed
//!   by a real API server, with its log lines captured.
//! - [`traffic`]: [`traffic::WhoServer`], a TCP server that answers each connection with the source
//!   address it saw, and [`traffic::who_am_i`], its client; together they prove reachability and SNAT.

pub mod cni;
pub mod containerd;
pub mod fs;
pub mod k8s;
pub mod netns;
pub mod observe;
pub mod proxy;
pub mod root;
pub mod traffic;
