//! The ipset nfnetlink family: create, fill, list and destroy IP sets without exec'ing `ipset`.
//!
//! [`wire`] encodes and decodes the messages (no I/O); [`Ipset`] is the thin request layer over
//! one `NETLINK_NETFILTER` socket, opened in the caller's current network namespace. Bulk
//! changes ([`Ipset::add_many`], [`Ipset::del_many`]) are pipelined: thousands of requests per
//! system call, one ACK each.

pub mod wire;

use std::fmt;
use std::net::IpAddr;

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
    /// `hash:ip,port,ip`: address, protocol:port, address (the loop-back masquerade set).
    HashIpPortIp,
}

impl SetType {
    /// The type name as `ipset` spells it.
    pub fn name(self) -> &'static str {
        match self {
            SetType::HashIp => "hash:ip",
            SetType::HashNet => "hash:net",
            SetType::HashIpPortIp => "hash:ip,port,ip",
        }
    }

    /// The type for an `ipset` type name, if it is one we handle.
    pub fn from_name(name: &str) -> Option<SetType> {
        match name {
            "hash:ip" => Some(SetType::HashIp),
            "hash:net" => Some(SetType::HashNet),
            "hash:ip,port,ip" => Some(SetType::HashIpPortIp),
            _ => None,
        }
    }
}

impl fmt::Display for SetType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What `ipset create NAME TYPE family F hashsize H maxelem M` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetSpec {
    pub name: String,
    pub kind: SetType,
    pub family: Family,
    /// Initial hash size; the kernel's default (1024) when `None`.
    pub hashsize: Option<u32>,
    /// Most elements the set may hold; the kernel's default (65536) when `None`.
    pub maxelem: Option<u32>,
}

impl SetSpec {
    /// A spec with the kernel's default sizes.
    pub fn new(name: impl Into<String>, kind: SetType, family: Family) -> SetSpec {
        SetSpec {
            name: name.into(),
            kind,
            family,
            hashsize: None,
            maxelem: None,
        }
    }
}

/// One member of a set; which variant fits depends on the set type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Entry {
    /// A `hash:ip` member, e.g. `10.0.0.11`.
    Ip(IpAddr),
    /// A `hash:net` member, e.g. `10.0.0.0/24`.
    Net(IpNetwork),
    /// A `hash:ip,port,ip` member, e.g. `10.0.0.11,tcp:8080,10.0.0.11`.
    IpPortIp {
        ip: IpAddr,
        proto: Protocol,
        port: u16,
        ip2: IpAddr,
    },
}

impl Entry {
    /// The set type this entry belongs in.
    pub fn set_type(&self) -> SetType {
        match self {
            Entry::Ip(_) => SetType::HashIp,
            Entry::Net(_) => SetType::HashNet,
            Entry::IpPortIp { .. } => SetType::HashIpPortIp,
        }
    }

    /// The address family of the entry.
    pub fn family(&self) -> Family {
        match self {
            Entry::Ip(ip) | Entry::IpPortIp { ip, .. } => Family::of(*ip),
            Entry::Net(net) => Family::of(net.ip()),
        }
    }

    /// Checks what the kernel would otherwise reject with an opaque code.
    fn check(&self) -> Result<(), String> {
        match self {
            Entry::IpPortIp { ip, ip2, .. } if Family::of(*ip) != Family::of(*ip2) => Err(format!(
                "entry {self}: both addresses must be of the same family"
            )),
            Entry::Net(net) if net.prefix() == 0 => {
                Err(format!("entry {self}: hash:net cannot hold a /0 network"))
            }
            Entry::Net(net) if net.network() != net.ip() => Err(format!(
                "entry {self}: host bits set (the network is {}/{})",
                net.network(),
                net.prefix()
            )),
            _ => Ok(()),
        }
    }
}

/// Formats the entry as `ipset list` prints it (and `ipset add` accepts it).
impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Entry::Ip(ip) => write!(f, "{ip}"),
            Entry::Net(net) => write!(f, "{}/{}", net.ip(), net.prefix()),
            Entry::IpPortIp {
                ip,
                proto,
                port,
                ip2,
            } => write!(f, "{ip},{proto}:{port},{ip2}"),
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
    pub family: Family,
    /// Current hash size (0 when the reply carried none, as in a header-only reply).
    pub hashsize: u32,
    pub maxelem: u32,
    /// Number of members.
    pub entries: u32,
    /// How many kernel objects (iptables rules, other sets) use the set.
    pub references: u32,
    pub memsize: u32,
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
    /// `create` found a set of that name with another type or family.
    #[error("ipset {name}: exists as {existing}, not {wanted}")]
    TypeMismatch {
        name: String,
        existing: String,
        wanted: String,
    },
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
            Error::Kernel { code, .. } => Some(*code),
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

    /// `ipset create NAME TYPE family F [hashsize H] [maxelem M]`: `Ok(true)` when created now,
    /// `Ok(false)` when a set of that name, type and family exists already (its sizes are kept),
    /// [`Error::TypeMismatch`] when one exists with another type or family.
    pub fn create(&self, spec: &SetSpec) -> Result<bool, Error> {
        wire::check_name(&spec.name).map_err(Error::Invalid)?;
        if spec.hashsize == Some(0) || spec.maxelem == Some(0) {
            return Err(Error::Invalid(format!(
                "set {}: hashsize and maxelem must be positive",
                spec.name
            )));
        }
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
                let info = self.info(&spec.name)?.ok_or_else(|| Error::Kernel {
                    op: "create",
                    target: spec.name.clone(),
                    code,
                    message: Some("exists, then vanished".into()),
                })?;
                if info.type_name == spec.kind.name() && info.family == spec.family {
                    Ok(false)
                } else {
                    Err(Error::TypeMismatch {
                        name: spec.name.clone(),
                        existing: format!("{} family {}", info.type_name, info.family.as_str()),
                        wanted: format!("{} family {}", spec.kind, spec.family.as_str()),
                    })
                }
            }
            Err(e) => Err(Error::from_nl("create", &spec.name, e)),
        }
    }

    /// `ipset list -t NAME` (type, family, revision; counters are not in this reply):
    /// `None` when there is no such set.
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
        wire::check_name(set).map_err(Error::Invalid)?;
        e.check().map_err(Error::Invalid)?;
        match self
            .sock
            .request(wire::entry_request(self.protocol, adt, set, e))
        {
            Ok(()) => Ok(true),
            Err(err) if err.code() == Some(wire::errno::EXIST) => Ok(false),
            Err(err) => Err(Error::from_nl(op, format!("{set} {e}"), err)),
        }
    }

    /// `ipset add SET ENTRY`: `Ok(false)` when it was a member already (no error, like `-exist`).
    pub fn add(&self, set: &str, e: &Entry) -> Result<bool, Error> {
        self.adt("add", Adt::Add, set, e)
    }

    /// `ipset del SET ENTRY`: `Ok(false)` when it was not a member (no error, like `-exist`).
    pub fn del(&self, set: &str, e: &Entry) -> Result<bool, Error> {
        self.adt("del", Adt::Del, set, e)
    }

    /// `ipset test SET ENTRY`: whether the entry is a member.
    pub fn test(&self, set: &str, e: &Entry) -> Result<bool, Error> {
        self.adt("test", Adt::Test, set, e)
    }

    /// `ipset list NAME`: the members, or `None` when there is no such set.
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
            Ok(replies) => wire::parse_list(&replies)
                .map(|(info, _)| Some(info))
                .map_err(|e| Error::from_nl("list -t", name, e)),
            Err(e) if e.code() == Some(Errno::ENOENT as i32) => Ok(None),
            Err(e) => Err(Error::from_nl("list -t", name, e)),
        }
    }

    /// `ipset list NAME` with the header (sizes, counters, references): `None` when there is no
    /// such set.
    pub fn list_with_info(&self, name: &str) -> Result<Option<(SetInfo, Vec<Entry>)>, Error> {
        wire::check_name(name).map_err(Error::Invalid)?;
        match self.sock.dump(wire::list_request(self.protocol, name)) {
            Ok(replies) => wire::parse_list(&replies)
                .map(Some)
                .map_err(|e| Error::from_nl("list", name, e)),
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
    /// already present are not counted). On failure the error names the first entry the kernel
    /// refused; the other entries were still applied.
    pub fn add_many(&self, set: &str, entries: &[Entry]) -> Result<usize, Error> {
        self.many("add", Adt::Add, set, entries)
    }

    /// `ipset del -exist SET ENTRY` for every entry, pipelined: the number removed now
    /// (non-members are not counted). Errors as for [`Ipset::add_many`].
    pub fn del_many(&self, set: &str, entries: &[Entry]) -> Result<usize, Error> {
        self.many("del", Adt::Del, set, entries)
    }
}
