//! The IPVS generic-netlink family: virtual services and their real servers, without exec'ing
//! `ipvsadm`.
//!
//! [`wire`] encodes and decodes the messages (no I/O); [`Ipvs`] is the thin request layer over
//! one `NETLINK_GENERIC` socket, opened in the caller's current network namespace, with the
//! family id resolved once. [`Ipvs::apply`] pipelines any number of changes: thousands of
//! requests per system call, one ACK each.

pub mod wire;

use std::fmt;
use std::net::IpAddr;

use nix::errno::Errno;

use crate::nl;
use crate::Protocol;

/// `IP_VS_SVC_F_PERSISTENT`: the service is persistent (`ipvsadm -p`).
pub const SVC_F_PERSISTENT: u32 = 0x1;
/// `IP_VS_SVC_F_HASHED`: set by the kernel on every listed service; never ours to set.
pub const SVC_F_HASHED: u32 = 0x2;
/// `IP_VS_SVC_F_ONEPACKET`: one-packet scheduling (`ipvsadm -o`, UDP only).
pub const SVC_F_ONEPACKET: u32 = 0x4;
/// `IP_VS_SVC_F_SCHED_SH_FALLBACK`: `sh` scheduler falls back on unavailable servers.
pub const SVC_F_SCHED_SH_FALLBACK: u32 = 0x8;
/// `IP_VS_SVC_F_SCHED_SH_PORT`: `sh` scheduler hashes the source port too.
pub const SVC_F_SCHED_SH_PORT: u32 = 0x10;

/// What identifies a virtual service: `-t|-u|--sctp-service ADDR:PORT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub addr: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
}

impl ServiceKey {
    pub fn new(addr: IpAddr, protocol: Protocol, port: u16) -> ServiceKey {
        ServiceKey {
            addr,
            protocol,
            port,
        }
    }
}

/// Formats as `ipvsadm -Ln` prints a service: `TCP  10.100.100.100:8080`, `[fd00::1]:80`.
impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}",
            self.protocol.as_str().to_ascii_uppercase(),
            host_port(self.addr, self.port)
        )
    }
}

fn host_port(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// A virtual service (`ipvsadm -A|-E -t ADDR:PORT -s SCHED [-p SECS] [-M MASK]`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Service {
    pub key: ServiceKey,
    /// Scheduler name: `rr`, `wrr`, `lc`, `sh`, `mh`, ...
    pub scheduler: String,
    /// Persistence timeout in seconds; `Some` sets `IP_VS_SVC_F_PERSISTENT` (`ipvsadm -p`).
    pub persistence: Option<u32>,
    /// Persistence netmask, as the kernel (and moby/ipvs) holds it: for IPv4 the mask as a
    /// number (`0xffff_ffff` = /32), for IPv6 the prefix length (128). See [`Service::new`].
    pub netmask: u32,
    /// Other `IP_VS_SVC_F_*` flags (`SVC_F_ONEPACKET`, `SVC_F_SCHED_SH_*`); persistence is in
    /// `persistence`, and the kernel's own `HASHED` flag is dropped when listing.
    pub flags: u32,
}

impl Service {
    /// A non-persistent service with the default netmask of its family (what `ipvsadm -A`
    /// without `-p`/`-M` creates).
    pub fn new(key: ServiceKey, scheduler: impl Into<String>) -> Service {
        Service {
            key,
            scheduler: scheduler.into(),
            persistence: None,
            netmask: default_netmask(key.addr),
            flags: 0,
        }
    }
}

/// `ipvsadm`'s default persistence netmask: all ones for IPv4, prefix length 128 for IPv6.
pub fn default_netmask(addr: IpAddr) -> u32 {
    match addr {
        IpAddr::V4(_) => u32::MAX,
        IpAddr::V6(_) => 128,
    }
}

/// How packets reach a real server (`ipvsadm -m|-g|-i`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Forward {
    /// NAT (`-m`, masquerading): what kube-proxy and svc-proxy use.
    #[default]
    Masq,
    /// The real server is this host (the kernel reports it for local addresses).
    Local,
    /// IP-in-IP tunnel (`-i`).
    Tunnel,
    /// Direct routing (`-g`, gatewaying).
    Route,
}

impl Forward {
    /// `IP_VS_CONN_F_MASQ|LOCALNODE|TUNNEL|DROUTE`.
    pub fn code(self) -> u32 {
        match self {
            Forward::Masq => 0,
            Forward::Local => 1,
            Forward::Tunnel => 2,
            Forward::Route => 3,
        }
    }

    /// The method for an `IP_VS_CONN_F_FWD_MASK` value.
    pub fn from_code(c: u32) -> Option<Forward> {
        match c & 0x7 {
            0 => Some(Forward::Masq),
            1 => Some(Forward::Local),
            2 => Some(Forward::Tunnel),
            3 => Some(Forward::Route),
            _ => None,
        }
    }

    /// As `ipvsadm -Ln` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Forward::Masq => "Masq",
            Forward::Local => "Local",
            Forward::Tunnel => "Tunnel",
            Forward::Route => "Route",
        }
    }
}

/// A real server of a virtual service (`ipvsadm -a|-e ... -r ADDR:PORT -m -w W -x U -y L`).
/// The connection counters are reported by the kernel when listing and ignored when sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Destination {
    pub addr: IpAddr,
    pub port: u16,
    pub forward: Forward,
    pub weight: u32,
    /// Upper connection threshold (`-x`; 0 = none).
    pub upper_threshold: u32,
    /// Lower connection threshold (`-y`; 0 = none).
    pub lower_threshold: u32,
    pub active_conns: u32,
    pub inactive_conns: u32,
    pub persist_conns: u32,
}

impl Destination {
    /// A masquerading real server of `weight` without thresholds.
    pub fn new(addr: IpAddr, port: u16, weight: u32) -> Destination {
        Destination {
            addr,
            port,
            forward: Forward::Masq,
            weight,
            upper_threshold: 0,
            lower_threshold: 0,
            active_conns: 0,
            inactive_conns: 0,
            persist_conns: 0,
        }
    }
}

/// `ipvsadm --version` data (`IPVS_CMD_GET_INFO`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Info {
    /// Packed as `major << 16 | minor << 8 | patch` (`0x010201` = 1.2.1).
    pub version: u32,
    /// Size of the connection hash table.
    pub conn_table_size: u32,
}

/// Connection timeouts in seconds (`ipvsadm --set TCP TCPFIN UDP`; 0 = leave unchanged).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Timeouts {
    pub tcp: u32,
    pub tcp_fin: u32,
    pub udp: u32,
}

/// One change for [`Ipvs::apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `ipvsadm -A`
    AddService(Service),
    /// `ipvsadm -E`
    UpdateService(Service),
    /// `ipvsadm -D`
    DelService(ServiceKey),
    /// `ipvsadm -a`
    AddDest(ServiceKey, Destination),
    /// `ipvsadm -e`
    UpdateDest(ServiceKey, Destination),
    /// `ipvsadm -d`
    DelDest(ServiceKey, IpAddr, u16),
}

impl Op {
    fn name(&self) -> &'static str {
        match self {
            Op::AddService(_) => "add-service",
            Op::UpdateService(_) => "update-service",
            Op::DelService(_) => "del-service",
            Op::AddDest(..) => "add-destination",
            Op::UpdateDest(..) => "update-destination",
            Op::DelDest(..) => "del-destination",
        }
    }

    fn target(&self) -> String {
        match self {
            Op::AddService(s) | Op::UpdateService(s) => s.key.to_string(),
            Op::DelService(k) => k.to_string(),
            Op::AddDest(k, d) | Op::UpdateDest(k, d) => {
                format!("{k} -> {}", host_port(d.addr, d.port))
            }
            Op::DelDest(k, a, p) => format!("{k} -> {}", host_port(*a, *p)),
        }
    }

    fn check(&self) -> Result<(), Error> {
        match self {
            Op::AddService(s) | Op::UpdateService(s) => check_service(s),
            Op::AddDest(_, d) | Op::UpdateDest(_, d) if d.weight > i32::MAX as u32 => Err(
                Error::Invalid(format!("{}: weight {} too large", self.target(), d.weight)),
            ),
            _ => Ok(()),
        }
    }
}

fn check_service(s: &Service) -> Result<(), Error> {
    if s.scheduler.is_empty() || s.scheduler.len() > wire::MAX_SCHED_NAME_LEN {
        return Err(Error::Invalid(format!(
            "{}: scheduler name {:?} must be 1 to {} bytes",
            s.key,
            s.scheduler,
            wire::MAX_SCHED_NAME_LEN
        )));
    }
    if s.key.addr.is_ipv6() && !(1..=128).contains(&s.netmask) {
        return Err(Error::Invalid(format!(
            "{}: an IPv6 netmask is a prefix length 1..=128, not {}",
            s.key, s.netmask
        )));
    }
    Ok(())
}

/// An IPVS failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel has no IPVS (`ipvsadm`: "Protocol not available"): no generic-netlink family
    /// `IPVS`, as on a kernel built without `CONFIG_IP_VS` or without the module.
    #[error(
        "IPVS is not available in this kernel (no generic netlink family \"IPVS\"; load ip_vs)"
    )]
    NotAvailable,
    /// The kernel refused a request.
    #[error("ipvs {op} {target}: {}{}", errno.desc(), message.as_ref().map(|m| format!(" ({m})")).unwrap_or_default())]
    Kernel {
        op: &'static str,
        /// The service (and real server) concerned.
        target: String,
        errno: Errno,
        message: Option<String>,
    },
    /// The socket failed.
    #[error("ipvs: netlink socket: {0}")]
    Io(#[from] std::io::Error),
    /// The kernel's reply did not parse.
    #[error("ipvs {op}: malformed kernel reply: {detail}")]
    Malformed { op: &'static str, detail: String },
    /// Bad input, refused before anything was sent.
    #[error("ipvs: {0}")]
    Invalid(String),
}

impl Error {
    /// The errno, when the kernel refused.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Error::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// The service or real server exists already (`EEXIST`).
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(Errno::EEXIST)
    }

    /// The service (`ESRCH`) or real server (`ENOENT`) does not exist. Note the kernel also
    /// answers `ENOENT` to an unknown scheduler name on add/update of a service.
    pub fn is_not_found(&self) -> bool {
        matches!(self.errno(), Some(Errno::ESRCH) | Some(Errno::ENOENT))
    }

    fn from_nl(op: &'static str, target: impl Into<String>, e: nl::Error) -> Error {
        match e {
            nl::Error::Io(e) => Error::Io(e),
            nl::Error::Kernel { code, message } => Error::Kernel {
                op,
                target: target.into(),
                errno: Errno::from_raw(code),
                message,
            },
            nl::Error::Malformed(detail) => Error::Malformed { op, detail },
        }
    }
}

/// A handle on IPVS in the network namespace it was opened in.
#[derive(Debug)]
pub struct Ipvs {
    sock: nl::Socket,
    /// The generic-netlink id of family `IPVS` in this kernel.
    family: u16,
}

impl Ipvs {
    /// Opens a generic-netlink socket in the current network namespace and resolves the `IPVS`
    /// family; [`Error::NotAvailable`] when the kernel has no IPVS.
    pub fn open() -> Result<Ipvs, Error> {
        let sock = nl::Socket::open(netlink_sys::protocols::NETLINK_GENERIC)?;
        let replies = match sock.request_replies(wire::family_request(wire::GENL_NAME)) {
            Ok(r) => r,
            Err(e) if e.code() == Some(Errno::ENOENT as i32) => return Err(Error::NotAvailable),
            Err(e) => return Err(Error::from_nl("resolve-family", wire::GENL_NAME, e)),
        };
        let family = replies
            .first()
            .ok_or_else(|| nl::Error::Malformed("no reply to the family query".into()))
            .and_then(|r| wire::parse_family(r))
            .map_err(|e| Error::from_nl("resolve-family", wire::GENL_NAME, e))?;
        Ok(Ipvs { sock, family })
    }

    /// `ipvsadm --version`: the kernel's IPVS version and connection table size.
    pub fn info(&self) -> Result<Info, Error> {
        let replies = self
            .sock
            .request_replies(wire::info_request(self.family))
            .map_err(|e| Error::from_nl("info", "", e))?;
        replies
            .first()
            .ok_or_else(|| nl::Error::Malformed("no reply".into()))
            .and_then(|r| wire::parse_info(r))
            .map_err(|e| Error::from_nl("info", "", e))
    }

    /// `ipvsadm -L --timeout`.
    pub fn timeouts(&self) -> Result<Timeouts, Error> {
        let replies = self
            .sock
            .request_replies(wire::get_config_request(self.family))
            .map_err(|e| Error::from_nl("timeouts", "", e))?;
        replies
            .first()
            .ok_or_else(|| nl::Error::Malformed("no reply".into()))
            .and_then(|r| wire::parse_timeouts(r))
            .map_err(|e| Error::from_nl("timeouts", "", e))
    }

    /// `ipvsadm --set TCP TCPFIN UDP` (a 0 leaves that timeout unchanged).
    pub fn set_timeouts(&self, t: &Timeouts) -> Result<(), Error> {
        self.sock
            .request(wire::set_config_request(self.family, t))
            .map_err(|e| Error::from_nl("set-timeouts", "", e))
    }

    /// `ipvsadm -Ln` (services only): every virtual service addressed by IP, protocol and port.
    /// Firewall-mark services, which a [`ServiceKey`] cannot name, are left out.
    pub fn services(&self) -> Result<Vec<Service>, Error> {
        let replies = self
            .sock
            .dump(wire::services_dump_request(self.family))
            .map_err(|e| Error::from_nl("list-services", "", e))?;
        let mut out = Vec::with_capacity(replies.len());
        for r in &replies {
            if let Some(s) =
                wire::parse_service(r).map_err(|e| Error::from_nl("list-services", "", e))?
            {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// `ipvsadm -Ln -t ADDR:PORT` (the service line): `None` when there is no such service.
    pub fn service(&self, key: &ServiceKey) -> Result<Option<Service>, Error> {
        match self
            .sock
            .request_replies(wire::get_service_request(self.family, key))
        {
            Ok(replies) => match replies.first() {
                Some(r) => wire::parse_service(r)
                    .map_err(|e| Error::from_nl("get-service", key.to_string(), e)),
                None => Ok(None),
            },
            Err(e) if e.code() == Some(Errno::ESRCH as i32) => Ok(None),
            Err(e) => Err(Error::from_nl("get-service", key.to_string(), e)),
        }
    }

    /// `ipvsadm -A -t|-u ADDR:PORT -s SCHED [-p SECS]`.
    pub fn add_service(&self, s: &Service) -> Result<(), Error> {
        self.one(Op::AddService(s.clone()))
    }

    /// `ipvsadm -E -t|-u ADDR:PORT -s SCHED [-p SECS]`.
    pub fn update_service(&self, s: &Service) -> Result<(), Error> {
        self.one(Op::UpdateService(s.clone()))
    }

    /// `ipvsadm -D -t|-u ADDR:PORT` (its real servers go with it).
    pub fn del_service(&self, key: &ServiceKey) -> Result<(), Error> {
        self.one(Op::DelService(*key))
    }

    /// `ipvsadm -Ln -t|-u ADDR:PORT` (the real server lines). Empty for a service that does not
    /// exist: the kernel's dump does not tell it apart (use [`Ipvs::service`] for that).
    pub fn destinations(&self, key: &ServiceKey) -> Result<Vec<Destination>, Error> {
        let replies = self
            .sock
            .dump(wire::dests_dump_request(self.family, key))
            .map_err(|e| Error::from_nl("list-destinations", key.to_string(), e))?;
        replies
            .iter()
            .map(|r| wire::parse_destination(r, key))
            .collect::<Result<_, _>>()
            .map_err(|e| Error::from_nl("list-destinations", key.to_string(), e))
    }

    /// `ipvsadm -a -t|-u ADDR:PORT -r RADDR:RPORT -m -w W`.
    pub fn add_destination(&self, key: &ServiceKey, d: &Destination) -> Result<(), Error> {
        self.one(Op::AddDest(*key, *d))
    }

    /// `ipvsadm -e -t|-u ADDR:PORT -r RADDR:RPORT -m -w W`.
    pub fn update_destination(&self, key: &ServiceKey, d: &Destination) -> Result<(), Error> {
        self.one(Op::UpdateDest(*key, *d))
    }

    /// `ipvsadm -d -t|-u ADDR:PORT -r RADDR:RPORT`.
    pub fn del_destination(&self, key: &ServiceKey, addr: IpAddr, port: u16) -> Result<(), Error> {
        self.one(Op::DelDest(*key, addr, port))
    }

    /// `ipvsadm -C`: removes EVERY virtual service in this namespace, not only ours. Their real
    /// servers stay in the kernel's trash for 2-3 minutes and slow every add-destination until
    /// then (see [`Ipvs::apply`]).
    pub fn flush(&self) -> Result<(), Error> {
        self.sock
            .request(wire::flush_request(self.family))
            .map_err(|e| Error::from_nl("flush", "", e))
    }

    fn one(&self, op: Op) -> Result<(), Error> {
        self.apply(std::slice::from_ref(&op))
            .pop()
            .expect("one result per op")
    }

    /// Applies many changes pipelined (like `ipvsadm --restore`, without the process): one
    /// result per op, in order. Ops are sent in order and the kernel applies them in order; a
    /// refused op does not stop the following ones. Invalid ops are refused without being sent.
    ///
    /// Cost is linear in `ops` in a namespace without recent deletions. The kernel keeps every
    /// deleted real server in a per-namespace trash list for 2-3 minutes
    /// (`IP_VS_DEST_TRASH_PERIOD`) and every add-destination scans that list, so re-adding a
    /// large table right after deleting or flushing it is quadratic, as it is for `ipvsadm`.
    pub fn apply(&self, ops: &[Op]) -> Vec<Result<(), Error>> {
        let checks: Vec<Result<(), Error>> = ops.iter().map(Op::check).collect();
        let msgs = ops
            .iter()
            .zip(&checks)
            .filter(|(_, c)| c.is_ok())
            .map(|(op, _)| wire::op_request(self.family, op));
        let mut sent = self.sock.pipeline(msgs).into_iter();
        ops.iter()
            .zip(checks)
            .map(|(op, check)| {
                check?;
                sent.next()
                    .expect("one ACK result per sent op")
                    .map_err(|e| Error::from_nl(op.name(), op.target(), e))
            })
            .collect()
    }
}
