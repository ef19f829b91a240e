//! The ipset nfnetlink family: create, fill, list and destroy IP sets without exec'ing `ipset`.
//!
//! [`wire`] encodes and decodes the messages (no I/O); [`Ipset`] is the thin request layer over
//! one `NETLINK_NETFILTER` socket, opened in the caller's current network namespace. Bulk
//! changes ([`Ipset::add_many`], [`Ipset::del_many`]) are pipelined: thousands of requests per
//! system call, one ACK each.
//!
//! The set types are those kube-proxy's IPVS mode uses ([`SetType`]): `hash:ip`, `hash:net`,
//! `hash:ip,port`, `hash:ip,port,ip`, `hash:ip,port,net` in either family, and `bitmap:port`,
//! which has a port range instead of a family. Listings report the type, family and range a
//! set really has, so a caller can tell a set of its name but another kind from its own.

pub mod wire;

use std::fmt;
use std::net::IpAddr;
use std::ops::RangeInclusive;

use ipnetwork::IpNetwork;
use nix::errno::Errno;

use crate::nl;
use crate::{Family, Protocol};

use wire::Adt;

/// The set types we create and read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SetType {
    /// `hash:ip`: single addresses.
    HashIp,
    /// `hash:net`: networks (a host is a /32 or /128 network).
    HashNet,
    /// `hash:ip,port`: address and protocol:port (kube-proxy's `KUBE-CLUSTER-IP`).
    HashIpPort,
    /// `hash:ip,port,ip`: address, protocol:port, address (the loop-back masquerade set).
    HashIpPortIp,
    /// `hash:ip,port,net`: address, protocol:port, network (kube-proxy's
    /// `KUBE-LOAD-BALANCER-SOURCE-CIDR`).
    HashIpPortNet,
    /// `bitmap:port`: ports of a fixed range, whatever the protocol or family (kube-proxy's
    /// `KUBE-NODE-PORT-TCP`).
    BitmapPort,
}

impl SetType {
    /// The type name as `ipset` spells it.
    pub fn name(self) -> &'static str {
        match self {
            SetType::HashIp => "hash:ip",
            SetType::HashNet => "hash:net",
            SetType::HashIpPort => "hash:ip,port",
            SetType::HashIpPortIp => "hash:ip,port,ip",
            SetType::HashIpPortNet => "hash:ip,port,net",
            SetType::BitmapPort => "bitmap:port",
        }
    }

    /// The type for an `ipset` type name, if it is one we handle.
    pub fn from_name(name: &str) -> Option<SetType> {
        match name {
            "hash:ip" => Some(SetType::HashIp),
            "hash:net" => Some(SetType::HashNet),
            "hash:ip,port" => Some(SetType::HashIpPort),
            "hash:ip,port,ip" => Some(SetType::HashIpPortIp),
            "hash:ip,port,net" => Some(SetType::HashIpPortNet),
            "bitmap:port" => Some(SetType::BitmapPort),
            _ => None,
        }
    }

    /// Whether sets of this type hold addresses of one family (every hash type); a
    /// `bitmap:port` holds ports only and the kernel stores it without a family.
    pub fn has_family(self) -> bool {
        self != SetType::BitmapPort
    }
}

impl fmt::Display for SetType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What `ipset create NAME TYPE ...` asks for: `family F [hashsize H] [maxelem M]` for the hash
/// types ([`SetSpec::new`]), `range FIRST-LAST` for `bitmap:port` ([`SetSpec::port_bitmap`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetSpec {
    pub name: String,
    pub kind: SetType,
    /// The family of the members; `None` for `bitmap:port`, which has none.
    pub family: Option<Family>,
    /// Initial hash size (hash types only); the kernel's default (1024) when `None`.
    pub hashsize: Option<u32>,
    /// Most elements the set may hold (hash types only); the kernel's default (65536) when
    /// `None`.
    pub maxelem: Option<u32>,
    /// The ports a `bitmap:port` set can hold (required for it, refused for the others).
    pub port_range: Option<RangeInclusive<u16>>,
}

impl SetSpec {
    /// A hash set of `family` with the kernel's default sizes.
    pub fn new(name: impl Into<String>, kind: SetType, family: Family) -> SetSpec {
        SetSpec {
            name: name.into(),
            kind,
            family: Some(family),
            hashsize: None,
            maxelem: None,
            port_range: None,
        }
    }

    /// A `bitmap:port` set holding the ports of `range` (`ipset create NAME bitmap:port range
    /// FIRST-LAST`).
    pub fn port_bitmap(name: impl Into<String>, range: RangeInclusive<u16>) -> SetSpec {
        SetSpec {
            name: name.into(),
            kind: SetType::BitmapPort,
            family: None,
            hashsize: None,
            maxelem: None,
            port_range: Some(range),
        }
    }

    /// Checks the options fit the type, so the kernel never silently ignores or swaps one.
    fn check(&self) -> Result<(), String> {
        wire::check_name(&self.name)?;
        let name = &self.name;
        let kind = self.kind;
        if kind.has_family() {
            if self.family.is_none() {
                return Err(format!("set {name}: {kind} needs a family"));
            }
            if self.port_range.is_some() {
                return Err(format!(
                    "set {name}: a port range is for bitmap:port, not {kind}"
                ));
            }
            if self.hashsize == Some(0) || self.maxelem == Some(0) {
                return Err(format!("set {name}: hashsize and maxelem must be positive"));
            }
            return Ok(());
        }
        if let Some(f) = self.family {
            return Err(format!(
                "set {name}: {kind} holds ports only, it takes no family (got {})",
                f.as_str()
            ));
        }
        if self.hashsize.is_some() || self.maxelem.is_some() {
            return Err(format!(
                "set {name}: {kind} takes no hashsize or maxelem (its size is its range)"
            ));
        }
        match &self.port_range {
            None => Err(format!(
                "set {name}: {kind} needs a port range (SetSpec::port_bitmap)"
            )),
            Some(r) if r.is_empty() => Err(format!(
                "set {name}: port range {}-{} is empty (first above last)",
                r.start(),
                r.end()
            )),
            Some(_) => Ok(()),
        }
    }

    /// What decides whether an existing set is this one: type, family, range (not sizes).
    fn kind_text(&self) -> String {
        kind_text(self.kind.name(), self.family, self.port_range.as_ref())
    }
}

/// `hash:ip,port family inet`, `bitmap:port range 0-65535`: a set's kind as `ipset` prints it.
fn kind_text(
    type_name: &str,
    family: Option<Family>,
    range: Option<&RangeInclusive<u16>>,
) -> String {
    let mut s = type_name.to_owned();
    if let Some(f) = family {
        s.push_str(" family ");
        s.push_str(f.as_str());
    }
    if let Some(r) = range {
        s.push_str(&format!(" range {}-{}", r.start(), r.end()));
    }
    s
}

/// One member of a set; which variant fits depends on the set type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Entry {
    /// A `hash:ip` member, e.g. `10.0.0.11`.
    Ip(IpAddr),
    /// A `hash:net` member, e.g. `10.0.0.0/24`.
    Net(IpNetwork),
    /// A `hash:ip,port` member, e.g. `10.96.0.10,udp:53`.
    IpPort {
        ip: IpAddr,
        proto: Protocol,
        port: u16,
    },
    /// A `hash:ip,port,ip` member, e.g. `10.0.0.11,tcp:8080,10.0.0.11`.
    IpPortIp {
        ip: IpAddr,
        proto: Protocol,
        port: u16,
        ip2: IpAddr,
    },
    /// A `hash:ip,port,net` member, e.g. `192.0.2.10,tcp:80,198.51.100.0/24` (a host is a
    /// /32 or /128 network).
    IpPortNet {
        ip: IpAddr,
        proto: Protocol,
        port: u16,
        net: IpNetwork,
    },
    /// A `bitmap:port` member, e.g. `30080`: the port alone, the kernel keeps no protocol.
    Port(u16),
}

impl Entry {
    /// The set type this entry belongs in.
    pub fn set_type(&self) -> SetType {
        match self {
            Entry::Ip(_) => SetType::HashIp,
            Entry::Net(_) => SetType::HashNet,
            Entry::IpPort { .. } => SetType::HashIpPort,
            Entry::IpPortIp { .. } => SetType::HashIpPortIp,
            Entry::IpPortNet { .. } => SetType::HashIpPortNet,
            Entry::Port(_) => SetType::BitmapPort,
        }
    }

    /// The address family of the entry; `None` for a port, which has none.
    pub fn family(&self) -> Option<Family> {
        match self {
            Entry::Ip(ip)
            | Entry::IpPort { ip, .. }
            | Entry::IpPortIp { ip, .. }
            | Entry::IpPortNet { ip, .. } => Some(Family::of(*ip)),
            Entry::Net(net) => Some(Family::of(net.ip())),
            Entry::Port(_) => None,
        }
    }

    /// Checks what the kernel would otherwise reject with an opaque code, or silently change.
    fn check(&self) -> Result<(), String> {
        match self {
            Entry::IpPortIp { ip, ip2, .. } if Family::of(*ip) != Family::of(*ip2) => Err(format!(
                "entry {self}: both addresses must be of the same family"
            )),
            Entry::IpPortNet { ip, net, .. } if Family::of(*ip) != Family::of(net.ip()) => Err(
                format!("entry {self}: the address and the network must be of the same family"),
            ),
            Entry::Net(net) | Entry::IpPortNet { net, .. } if net.prefix() == 0 => Err(format!(
                "entry {self}: {} cannot hold a /0 network",
                self.set_type()
            )),
            // The kernel would mask the host bits away: the member listed would not be the one
            // added.
            Entry::Net(net) | Entry::IpPortNet { net, .. } if net.network() != net.ip() => {
                Err(format!(
                    "entry {self}: host bits set (the network is {}/{})",
                    net.network(),
                    net.prefix()
                ))
            }
            _ => Ok(()),
        }
    }

    /// `hash:ip,port family inet6`, `bitmap:port`: the kind of set the entry fits.
    fn kind_text(&self) -> String {
        kind_text(self.set_type().name(), self.family(), None)
    }
}

/// Why `e` cannot be a member of the set `info` describes, if it cannot: the code the kernel
/// answers such an entry with, and the reason naming both sides.
fn misfit(info: &SetInfo, e: &Entry) -> Option<(i32, String)> {
    if info.type_name != e.set_type().name() || info.family != e.family() {
        return Some((
            wire::errno::PROTOCOL,
            format!(
                "the set is {}, the entry is for {}",
                kind_text(&info.type_name, info.family, None),
                e.kind_text()
            ),
        ));
    }
    match (e, &info.port_range) {
        (Entry::Port(p), Some(r)) if !r.contains(p) => Some((
            wire::errno::TYPE_SPECIFIC,
            format!(
                "port {p} is outside the set's range {}-{}",
                r.start(),
                r.end()
            ),
        )),
        _ => None,
    }
}

/// Formats the entry as `ipset list` prints it (and `ipset add` accepts it), except that a
/// host network keeps its `/32` or `/128`.
impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Entry::Ip(ip) => write!(f, "{ip}"),
            Entry::Net(net) => write!(f, "{}/{}", net.ip(), net.prefix()),
            Entry::IpPort { ip, proto, port } => write!(f, "{ip},{proto}:{port}"),
            Entry::IpPortIp {
                ip,
                proto,
                port,
                ip2,
            } => write!(f, "{ip},{proto}:{port},{ip2}"),
            Entry::IpPortNet {
                ip,
                proto,
                port,
                net,
            } => write!(f, "{ip},{proto}:{port},{}/{}", net.ip(), net.prefix()),
            Entry::Port(port) => write!(f, "{port}"),
        }
    }
}

/// A set's header as the kernel reports it (`ipset list -t NAME`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SetInfo {
    pub name: String,
    /// The type name as the kernel reports it (`hash:ip`, ... or a type we do not handle).
    pub type_name: String,
    pub revision: u8,
    /// The members' family; `None` for a set kept without one (`bitmap:port`).
    pub family: Option<Family>,
    /// Current hash size (0 for a bitmap, or when the reply carried none, as in a
    /// header-only reply).
    pub hashsize: u32,
    /// Most elements (0 for a bitmap: its range bounds it).
    pub maxelem: u32,
    /// The ports a `bitmap:port` set holds; `None` for the other types and in the reply of
    /// [`Ipset::info`].
    pub port_range: Option<RangeInclusive<u16>>,
    /// Number of members.
    pub entries: u32,
    /// How many kernel objects (iptables rules, other sets) use the set.
    pub references: u32,
    pub memsize: u32,
}

impl SetInfo {
    /// The set's type, when it is one we handle (a caller compares it with the one it wants
    /// before trusting a set it finds under its name).
    pub fn set_type(&self) -> Option<SetType> {
        SetType::from_name(&self.type_name)
    }

    fn kind_text(&self) -> String {
        kind_text(&self.type_name, self.family, self.port_range.as_ref())
    }
}

/// An ipset failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel refused a request; `code` is an errno or one of ipset's private codes
    /// ([`wire::errno`]).
    #[error("ipset {op} {target}: {}", describe(*.code, .message.as_deref()))]
    Kernel {
        op: &'static str,
        /// The set, and the entry when there is one (`SET ENTRY`).
        target: String,
        code: i32,
        message: Option<String>,
    },
    /// The socket failed (e.g. `NETLINK_NETFILTER` is missing).
    #[error("ipset: netlink socket: {0}")]
    Io(#[from] std::io::Error),
    /// The kernel's reply did not parse.
    #[error("ipset {op}: malformed kernel reply: {detail}")]
    Malformed { op: &'static str, detail: String },
    /// Bad input, refused before anything was sent.
    #[error("ipset: {0}")]
    Invalid(String),
    /// `create` found a set of that name with another type, family or (`bitmap:port`) range.
    #[error("ipset {name}: exists as {existing}, not {wanted}")]
    TypeMismatch {
        name: String,
        /// What the kernel holds, e.g. `hash:ip family inet6`.
        existing: String,
        /// What was asked for, e.g. `hash:ip,port family inet`.
        wanted: String,
    },
    /// The kernel refused an entry that does not fit the set: another type or family, or a
    /// port outside a `bitmap:port` set's range.
    #[error("ipset {op} {set} {entry}: {reason} (code {code})")]
    EntryMismatch {
        op: &'static str,
        set: String,
        entry: String,
        /// The code the kernel refuses such an entry with when adding it
        /// ([`wire::errno::PROTOCOL`], or [`wire::errno::TYPE_SPECIFIC`] for a port out of
        /// range).
        code: i32,
        /// What does not fit, naming both sides.
        reason: String,
    },
    /// The set exists with a type whose members we do not decode (e.g. `hash:mac`).
    #[error("ipset {name}: type {type_name} is not one nodenet reads")]
    UnsupportedType { name: String, type_name: String },
    /// The kernel speaks no protocol version we know.
    #[error("ipset: kernel speaks protocol {0}, this program needs 6 or 7")]
    Protocol(u8),
}

fn describe(code: i32, message: Option<&str>) -> String {
    let text = wire::describe(code)
        .map(str::to_owned)
        .unwrap_or_else(|| Errno::from_raw(code).desc().to_owned());
    match message {
        Some(m) => format!("{text} ({m}, code {code})"),
        None => format!("{text} (code {code})"),
    }
}

impl Error {
    /// The kernel's error code, when the kernel refused.
    pub fn code(&self) -> Option<i32> {
        match self {
            Error::Kernel { code, .. } | Error::EntryMismatch { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The errno, when the kernel refused with a standard one (not an ipset-private code).
    pub fn errno(&self) -> Option<Errno> {
        self.code().filter(|c| *c < 4096).map(Errno::from_raw)
    }

    /// The set (`EEXIST`) or element (`IPSET_ERR_EXIST`) exists already.
    pub fn is_exists(&self) -> bool {
        matches!(self.code(), Some(c) if c == Errno::EEXIST as i32 || c == wire::errno::EXIST)
    }

    /// The set does not exist (`ENOENT`).
    pub fn is_not_found(&self) -> bool {
        self.code() == Some(Errno::ENOENT as i32)
    }

    /// The set is in use by an iptables rule or another set, so it cannot be destroyed.
    pub fn is_busy(&self) -> bool {
        matches!(
            self.code(),
            Some(wire::errno::BUSY) | Some(wire::errno::REFERENCED)
        )
    }

    fn from_nl(op: &'static str, target: impl Into<String>, e: nl::Error) -> Error {
        match e {
            nl::Error::Io(e) => Error::Io(e),
            nl::Error::Kernel { code, message } => Error::Kernel {
                op,
                target: target.into(),
                code,
                message,
            },
            nl::Error::Malformed(detail) => Error::Malformed { op, detail },
        }
    }
}

/// A handle on the kernel's ipsets in the network namespace it was opened in.
#[derive(Debug)]
pub struct Ipset {
    sock: nl::Socket,
    /// The protocol version agreed with the kernel (7, or 6 on old kernels).
    protocol: u8,
}

impl Ipset {
    /// Opens an nfnetlink socket in the current network namespace and agrees on the protocol
    /// version with the kernel (what every `ipset` command does first).
    pub fn open() -> Result<Ipset, Error> {
        let sock = nl::Socket::open(netlink_sys::protocols::NETLINK_NETFILTER)?;
        let replies = sock
            .request_replies(wire::protocol_request(wire::PROTOCOL))
            .map_err(|e| Error::from_nl("protocol", "", e))?;
        let first = replies.first().ok_or(Error::Malformed {
            op: "protocol",
            detail: "no reply".into(),
        })?;
        let (kernel, _) =
            wire::parse_protocol(first).map_err(|e| Error::from_nl("protocol", "", e))?;
        let protocol = kernel.min(wire::PROTOCOL);
        if protocol < wire::PROTOCOL_MIN {
            return Err(Error::Protocol(kernel));
        }
        Ok(Ipset { sock, protocol })
    }

    /// The protocol version in use.
    pub fn protocol(&self) -> u8 {
        self.protocol
    }

    /// `ipset create NAME TYPE family F [hashsize H] [maxelem M]` for a hash type,
    /// `ipset create NAME bitmap:port range FIRST-LAST` for a port bitmap: `Ok(true)` when created
    /// now, `Ok(false)` when a set of that name, type, family and range exists already (its
    /// sizes are kept), [`Error::TypeMismatch`] naming both kinds when one exists with another
    /// type, family or range. Options that do not fit the type are refused before anything is
    /// sent ([`Error::Invalid`]).
    pub fn create(&self, spec: &SetSpec) -> Result<bool, Error> {
        spec.check().map_err(Error::Invalid)?;
        let replies = self
            .sock
            .request_replies(wire::type_request(self.protocol, spec.kind, spec.family))
            .map_err(|e| Error::from_nl("create", spec.kind.name(), e))?;
        let (revision, _) = replies
            .first()
            .ok_or_else(|| nl::Error::Malformed("no reply to the type query".into()))
            .and_then(|r| wire::parse_type(r))
            .map_err(|e| Error::from_nl("create", &spec.name, e))?;
        match self
            .sock
            .request(wire::create_request(self.protocol, spec, revision, true))
        {
            Ok(()) => Ok(true),
            Err(nl::Error::Kernel { code, .. }) if code == Errno::EEXIST as i32 => {
                // The listing header, unlike IPSET_CMD_HEADER, carries a bitmap's range.
                let info = self.header(&spec.name)?.ok_or_else(|| Error::Kernel {
                    op: "create",
                    target: spec.name.clone(),
                    code,
                    message: Some("exists, then vanished".into()),
                })?;
                if info.type_name == spec.kind.name()
                    && info.family == spec.family
                    && info.port_range == spec.port_range
                {
                    Ok(false)
                } else {
                    Err(Error::TypeMismatch {
                        name: spec.name.clone(),
                        existing: info.kind_text(),
                        wanted: spec.kind_text(),
                    })
                }
            }
            Err(e) => Err(Error::from_nl("create", &spec.name, e)),
        }
    }

    /// `IPSET_CMD_HEADER`, what `ipset add` asks first: name, type, family, revision (no
    /// counters and no bitmap range in this reply; [`Ipset::header`] has them). `None` when
    /// there is no such set.
    pub fn info(&self, name: &str) -> Result<Option<SetInfo>, Error> {
        wire::check_name(name).map_err(Error::Invalid)?;
        match self
            .sock
            .request_replies(wire::header_request(self.protocol, name))
        {
            Ok(replies) => {
                let first = replies.first().ok_or(Error::Malformed {
                    op: "header",
                    detail: "no reply".into(),
                })?;
                wire::parse_header(first)
                    .map(Some)
                    .map_err(|e| Error::from_nl("header", name, e))
            }
            Err(e) if e.code() == Some(Errno::ENOENT as i32) => Ok(None),
            Err(e) => Err(Error::from_nl("header", name, e)),
        }
    }

    /// `ipset destroy NAME`: `Ok(false)` when there was no such set. A set still used by an
    /// iptables rule fails with [`Error::is_busy`].
    pub fn destroy(&self, name: &str) -> Result<bool, Error> {
        wire::check_name(name).map_err(Error::Invalid)?;
        match self
            .sock
            .request(wire::destroy_request(self.protocol, name))
        {
            Ok(()) => Ok(true),
            Err(e) if e.code() == Some(Errno::ENOENT as i32) => Ok(false),
            Err(e) => Err(Error::from_nl("destroy", name, e)),
        }
    }

    /// `ipset flush NAME`: removes every member.
    pub fn flush(&self, name: &str) -> Result<(), Error> {
        wire::check_name(name).map_err(Error::Invalid)?;
        self.sock
            .request(wire::flush_request(self.protocol, name))
            .map_err(|e| Error::from_nl("flush", name, e))
    }

    fn adt(&self, op: &'static str, adt: Adt, set: &str, e: &Entry) -> Result<bool, Error> {
        use wire::errno::{EXIST, IPADDR_IPV4, IPADDR_IPV6, PROTOCOL, TYPE_SPECIFIC};
        wire::check_name(set).map_err(Error::Invalid)?;
        e.check().map_err(Error::Invalid)?;
        match self
            .sock
            .request(wire::entry_request(self.protocol, adt, set, e))
        {
            Ok(()) => Ok(true),
            // The kernel answers a test of an entry that cannot be a member with "not a
            // member" as well: only then is the set looked at.
            Err(err) if err.code() == Some(EXIST) && adt == Adt::Test => {
                self.mismatch(op, set, e).map_or(Ok(false), Err)
            }
            Err(err) if err.code() == Some(EXIST) => Ok(false),
            Err(err) => match err.code() {
                Some(PROTOCOL | IPADDR_IPV4 | IPADDR_IPV6 | TYPE_SPECIFIC) => Err(self
                    .mismatch(op, set, e)
                    .unwrap_or_else(|| Error::from_nl(op, format!("{set} {e}"), err))),
                _ => Err(Error::from_nl(op, format!("{set} {e}"), err)),
            },
        }
    }

    /// [`Error::EntryMismatch`] naming the set's kind and the entry's when `e` does not fit the
    /// set (another type or family, a port outside the range). Asked only after the kernel
    /// refused, so the common path stays one round trip.
    fn mismatch(&self, op: &'static str, set: &str, e: &Entry) -> Option<Error> {
        let info = self.header(set).ok()??;
        let (code, reason) = misfit(&info, e)?;
        Some(Error::EntryMismatch {
            op,
            set: set.to_owned(),
            entry: e.to_string(),
            code,
            reason,
        })
    }

    /// `ipset add SET ENTRY`: `Ok(false)` when it was a member already (no error, like `-exist`).
    pub fn add(&self, set: &str, e: &Entry) -> Result<bool, Error> {
        self.adt("add", Adt::Add, set, e)
    }

    /// `ipset del SET ENTRY`: `Ok(false)` when it was not a member (no error, like `-exist`).
    pub fn del(&self, set: &str, e: &Entry) -> Result<bool, Error> {
        self.adt("del", Adt::Del, set, e)
    }

    /// `ipset test SET ENTRY`: whether the entry is a member. An entry that cannot be one (of
    /// another type or family, a port outside the range) is [`Error::EntryMismatch`], not
    /// `false`. In a set of networks (`hash:net`, `hash:ip,port,net`) a host entry (/32,
    /// /128) tests whether any member network holds that address, as `ipset test` does.
    pub fn test(&self, set: &str, e: &Entry) -> Result<bool, Error> {
        self.adt("test", Adt::Test, set, e)
    }

    /// `ipset list NAME`: the members, or `None` when there is no such set (errors as for
    /// [`Ipset::list_with_info`]).
    pub fn list(&self, name: &str) -> Result<Option<Vec<Entry>>, Error> {
        Ok(self.list_with_info(name)?.map(|(_, entries)| entries))
    }

    /// `ipset list -t NAME`: the header with the member count and the number of kernel objects
    /// (iptables rules, other sets) using the set, without the members; `None` when there is
    /// no such set. One round trip whatever the set's size.
    pub fn header(&self, name: &str) -> Result<Option<SetInfo>, Error> {
        wire::check_name(name).map_err(Error::Invalid)?;
        match self
            .sock
            .dump(wire::list_header_request(self.protocol, name))
        {
            Ok(replies) => wire::parse_list_header(&replies)
                .map(Some)
                .map_err(|e| Error::from_nl("list -t", name, e)),
            Err(e) if e.code() == Some(Errno::ENOENT as i32) => Ok(None),
            Err(e) => Err(Error::from_nl("list -t", name, e)),
        }
    }

    /// `ipset list NAME` with the header (type, family, bitmap range, sizes, counters,
    /// references): `None` when there is no such set. A set under that name of a type we do
    /// not decode fails with [`Error::UnsupportedType`]; one of another type we decode is
    /// listed, and [`SetInfo::set_type`] and [`SetInfo::family`] tell it apart.
    pub fn list_with_info(&self, name: &str) -> Result<Option<(SetInfo, Vec<Entry>)>, Error> {
        wire::check_name(name).map_err(Error::Invalid)?;
        match self.sock.dump(wire::list_request(self.protocol, name)) {
            Ok(replies) => {
                let info = wire::parse_list_header(&replies)
                    .map_err(|e| Error::from_nl("list", name, e))?;
                if info.set_type().is_none() {
                    return Err(Error::UnsupportedType {
                        name: name.to_owned(),
                        type_name: info.type_name,
                    });
                }
                wire::parse_list(&replies)
                    .map(Some)
                    .map_err(|e| Error::from_nl("list", name, e))
            }
            Err(e) if e.code() == Some(Errno::ENOENT as i32) => Ok(None),
            Err(e) => Err(Error::from_nl("list", name, e)),
        }
    }

    fn many(
        &self,
        op: &'static str,
        adt: Adt,
        set: &str,
        entries: &[Entry],
    ) -> Result<usize, Error> {
        wire::check_name(set).map_err(Error::Invalid)?;
        for e in entries {
            e.check().map_err(Error::Invalid)?;
        }
        if entries.is_empty() {
            return Ok(0);
        }
        // One look at the set per batch, so a batch holding an entry of another type, family
        // or range is refused before anything changes.
        let info = self.header(set)?.ok_or_else(|| Error::Kernel {
            op,
            target: set.to_owned(),
            code: Errno::ENOENT as i32,
            message: None,
        })?;
        for e in entries {
            if let Some((code, reason)) = misfit(&info, e) {
                return Err(Error::EntryMismatch {
                    op,
                    set: set.to_owned(),
                    entry: e.to_string(),
                    code,
                    reason,
                });
            }
        }
        let results = self.sock.pipeline(
            entries
                .iter()
                .map(|e| wire::entry_request(self.protocol, adt, set, e)),
        );
        let mut changed = 0;
        let mut first_error = None;
        for (r, e) in results.into_iter().zip(entries) {
            match r {
                Ok(()) => changed += 1,
                Err(err) if err.code() == Some(wire::errno::EXIST) => {}
                Err(err) => {
                    first_error
                        .get_or_insert_with(|| Error::from_nl(op, format!("{set} {e}"), err));
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(changed),
        }
    }

    /// `ipset add -exist SET ENTRY` for every entry, pipelined: the number added now (members
    /// already present are not counted).
    ///
    /// Every entry must be of the set's type and family (and, for `bitmap:port`, in its range):
    /// one that is not fails the whole batch with [`Error::EntryMismatch`] before anything is
    /// sent (one header query per batch). When the kernel refuses an entry (e.g. a full hash),
    /// the error names the first entry refused; the other entries were still applied.
    pub fn add_many(&self, set: &str, entries: &[Entry]) -> Result<usize, Error> {
        self.many("add", Adt::Add, set, entries)
    }

    /// `ipset del -exist SET ENTRY` for every entry, pipelined: the number removed now
    /// (non-members are not counted). Errors as for [`Ipset::add_many`].
    pub fn del_many(&self, set: &str, entries: &[Entry]) -> Result<usize, Error> {
        self.many("del", Adt::Del, set, entries)
    }
}
