//! The ipset nfnetlink messages, encoded and decoded without I/O, byte for byte as `ipset` 7.17
//! sends them (`include/uapi/linux/netfilter/ipset/ip_set.h`), but for the family byte of the
//! type query of an `inet6` set (see [`type_request`]).
//!
//! Every request is `nlmsghdr` with type `(NFNL_SUBSYS_IPSET << 8) | cmd`, an `nfgenmsg`
//! (family `AF_INET`, version 0, res_id 0) and the protocol attribute first.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::{Entry, SetInfo, SetSpec, SetType};
use crate::nl::{self, Builder, Error, NLA_F_NESTED, NLA_F_NET_BYTEORDER, NLM_F_ACK, NLM_F_CREATE};
use crate::nl::{NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST};
use crate::{Family, Protocol};

/// The nfnetlink subsystem id of ipset.
pub const NFNL_SUBSYS_IPSET: u16 = 6;
/// The newest protocol we speak; the kernel may answer with an older one.
pub const PROTOCOL: u8 = 7;
/// The oldest protocol we speak (kernels since 2.6.39).
pub const PROTOCOL_MIN: u8 = 6;
/// Longest set name, without the NUL (`IPSET_MAXNAMELEN - 1`).
pub const MAX_NAME_LEN: usize = 31;

/// `enum ipset_cmd`.
pub mod cmd {
    pub const PROTOCOL: u8 = 1;
    pub const CREATE: u8 = 2;
    pub const DESTROY: u8 = 3;
    pub const FLUSH: u8 = 4;
    pub const LIST: u8 = 7;
    pub const ADD: u8 = 9;
    pub const DEL: u8 = 10;
    pub const TEST: u8 = 11;
    pub const HEADER: u8 = 12;
    pub const TYPE: u8 = 13;
}

/// Command-level attributes.
mod attr {
    pub const PROTOCOL: u16 = 1;
    pub const SETNAME: u16 = 2;
    pub const TYPENAME: u16 = 3;
    pub const REVISION: u16 = 4;
    pub const FAMILY: u16 = 5;
    pub const FLAGS: u16 = 6;
    pub const DATA: u16 = 7;
    pub const ADT: u16 = 8;
    pub const PROTOCOL_MIN: u16 = 10;
}

/// Attributes inside `IPSET_ATTR_DATA`.
mod data {
    pub const IP: u16 = 1;
    pub const CIDR: u16 = 3;
    pub const PORT: u16 = 4;
    pub const PORT_TO: u16 = 5;
    pub const PROTO: u16 = 7;
    pub const LINENO: u16 = 9;
    pub const HASHSIZE: u16 = 18;
    pub const MAXELEM: u16 = 19;
    pub const IP2: u16 = 20;
    pub const CIDR2: u16 = 21;
    pub const ELEMENTS: u16 = 24;
    pub const REFERENCES: u16 = 25;
    pub const MEMSIZE: u16 = 26;
    pub const IPADDR_IPV4: u16 = 1;
    pub const IPADDR_IPV6: u16 = 2;
}

/// `enum ipset_errno`: the private error codes above 4096.
pub mod errno {
    pub const PROTOCOL: i32 = 4097;
    pub const FIND_TYPE: i32 = 4098;
    pub const MAX_SETS: i32 = 4099;
    pub const BUSY: i32 = 4100;
    pub const EXIST_SETNAME2: i32 = 4101;
    pub const TYPE_MISMATCH: i32 = 4102;
    /// Element already added (ADD with `NLM_F_EXCL`), or not a member (DEL, TEST).
    pub const EXIST: i32 = 4103;
    pub const INVALID_CIDR: i32 = 4104;
    pub const INVALID_NETMASK: i32 = 4105;
    pub const INVALID_FAMILY: i32 = 4106;
    pub const TIMEOUT: i32 = 4107;
    pub const REFERENCED: i32 = 4108;
    pub const IPADDR_IPV4: i32 = 4109;
    pub const IPADDR_IPV6: i32 = 4110;
    /// First of the set-type-specific codes: "hash is full" for a hash set, "outside the
    /// range" for a bitmap.
    pub const TYPE_SPECIFIC: i32 = 4352;
}

/// What `ipset` prints for a private error code, when it is one.
pub fn describe(code: i32) -> Option<&'static str> {
    Some(match code {
        errno::PROTOCOL => {
            "kernel rejected the message (protocol error: e.g. an entry of the wrong family or type for the set)"
        }
        errno::FIND_TYPE => "set type not supported by the kernel",
        errno::MAX_SETS => "kernel cannot hold more sets",
        errno::BUSY => "set is in use by a kernel component (e.g. an iptables rule)",
        errno::EXIST_SETNAME2 => "the second set exists already",
        errno::TYPE_MISMATCH => "the sets have different types",
        errno::EXIST => "element already added, or not a member",
        errno::INVALID_CIDR => "invalid prefix length",
        errno::INVALID_NETMASK => "invalid netmask",
        errno::INVALID_FAMILY => "invalid family",
        errno::TIMEOUT => "timeout parameter not supported by this set",
        errno::REFERENCED => "set is referenced by another set",
        errno::IPADDR_IPV4 => "address is not IPv4 while the set is",
        errno::IPADDR_IPV6 => "address is not IPv6 while the set is",
        c if c == errno::TYPE_SPECIFIC => {
            "the set is full (hash), or the element is outside the set's range (bitmap)"
        }
        _ => return None,
    })
}

/// Which element command [`entry_request`] encodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adt {
    /// `ipset add` (`NLM_F_EXCL`: the kernel reports an existing member).
    Add,
    /// `ipset del` (`NLM_F_EXCL`: the kernel reports a non-member).
    Del,
    /// `ipset test`.
    Test,
}

/// Checks a set name is something the kernel will store: 1 to 31 bytes, no NUL.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN || name.contains('\0') {
        return Err(format!(
            "set name {name:?} must be 1 to {MAX_NAME_LEN} bytes without NUL"
        ));
    }
    Ok(())
}

fn start(command: u8, flags: u16, protocol: u8) -> Builder {
    let mut b = Builder::new((NFNL_SUBSYS_IPSET << 8) | u16::from(command), flags);
    // nfgenmsg: AF_INET, NFNETLINK_V0, res_id 0, as ipset sends for every command.
    b.header(&[2, 0, 0, 0]);
    b.u8(attr::PROTOCOL, protocol);
    b
}

/// `IPSET_CMD_PROTOCOL`: asks which protocol the kernel speaks.
pub fn protocol_request(protocol: u8) -> Vec<u8> {
    start(cmd::PROTOCOL, NLM_F_REQUEST, protocol).finish()
}

/// `NFPROTO_UNSPEC`: the family `ipset` sends for a type without one (`bitmap:port`).
const NFPROTO_UNSPEC: u8 = 0;

fn nfproto(family: Option<Family>) -> u8 {
    family.map_or(NFPROTO_UNSPEC, Family::nfproto)
}

/// `IPSET_CMD_TYPE`: asks which revisions of a set type the kernel has for `family` (`None`
/// for `bitmap:port`). `ipset` asks with `inet` even for an `inet6` set (it has not read the
/// family option yet); the kernel's type lookup is keyed on the family, so we ask with the
/// set's own (every hash type we create answers alike for both).
pub fn type_request(protocol: u8, kind: SetType, family: Option<Family>) -> Vec<u8> {
    let mut b = start(cmd::TYPE, NLM_F_REQUEST, protocol);
    b.str(attr::TYPENAME, kind.name())
        .u8(attr::FAMILY, nfproto(family));
    b.finish()
}

/// `IPSET_CMD_CREATE` (`ipset create`); `exclusive` = fail if the name exists (no `-exist`).
pub fn create_request(protocol: u8, spec: &SetSpec, revision: u8, exclusive: bool) -> Vec<u8> {
    let excl = if exclusive { NLM_F_EXCL } else { 0 };
    let mut b = start(
        cmd::CREATE,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | excl,
        protocol,
    );
    b.str(attr::SETNAME, &spec.name)
        .str(attr::TYPENAME, spec.kind.name())
        .u8(attr::REVISION, revision)
        .u8(attr::FAMILY, nfproto(spec.family))
        .begin_nest(attr::DATA | NLA_F_NESTED);
    if let Some(r) = &spec.port_range {
        b.be16(data::PORT | NLA_F_NET_BYTEORDER, *r.start())
            .be16(data::PORT_TO | NLA_F_NET_BYTEORDER, *r.end());
    }
    if let Some(h) = spec.hashsize {
        b.be32(data::HASHSIZE | NLA_F_NET_BYTEORDER, h);
    }
    if let Some(m) = spec.maxelem {
        b.be32(data::MAXELEM | NLA_F_NET_BYTEORDER, m);
    }
    b.end_nest();
    b.finish()
}

fn named(command: u8, flags: u16, protocol: u8, name: &str) -> Vec<u8> {
    let mut b = start(command, flags, protocol);
    b.str(attr::SETNAME, name);
    b.finish()
}

/// `IPSET_CMD_DESTROY` (`ipset destroy NAME`).
pub fn destroy_request(protocol: u8, name: &str) -> Vec<u8> {
    named(
        cmd::DESTROY,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_EXCL,
        protocol,
        name,
    )
}

/// `IPSET_CMD_FLUSH` (`ipset flush NAME`).
pub fn flush_request(protocol: u8, name: &str) -> Vec<u8> {
    named(cmd::FLUSH, NLM_F_REQUEST | NLM_F_ACK, protocol, name)
}

/// `IPSET_CMD_HEADER` (`ipset list -t NAME` without the counters): type, family, revision.
pub fn header_request(protocol: u8, name: &str) -> Vec<u8> {
    named(cmd::HEADER, NLM_F_REQUEST, protocol, name)
}

/// `IPSET_CMD_LIST` dump of one set (`ipset list NAME`).
pub fn list_request(protocol: u8, name: &str) -> Vec<u8> {
    named(
        cmd::LIST,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_DUMP,
        protocol,
        name,
    )
}

/// `IPSET_FLAG_LIST_HEADER`: a listing without the members.
const FLAG_LIST_HEADER: u32 = 1 << 2;

/// `IPSET_CMD_LIST` dump of one set's header only (`ipset list -t NAME`): type, family, sizes,
/// number of members and the kernel's reference count, without the members.
pub fn list_header_request(protocol: u8, name: &str) -> Vec<u8> {
    let mut b = start(cmd::LIST, NLM_F_REQUEST | NLM_F_ACK | NLM_F_DUMP, protocol);
    b.str(attr::SETNAME, name)
        .be32(attr::FLAGS | NLA_F_NET_BYTEORDER, FLAG_LIST_HEADER);
    b.finish()
}

/// `IPSET_CMD_ADD`/`DEL`/`TEST` of one element (`ipset add|del|test SET ENTRY`).
pub fn entry_request(protocol: u8, adt: Adt, set: &str, entry: &Entry) -> Vec<u8> {
    let (command, flags) = match adt {
        Adt::Add => (cmd::ADD, NLM_F_REQUEST | NLM_F_ACK | NLM_F_EXCL),
        Adt::Del => (cmd::DEL, NLM_F_REQUEST | NLM_F_ACK | NLM_F_EXCL),
        Adt::Test => (cmd::TEST, NLM_F_REQUEST | NLM_F_ACK),
    };
    let mut b = start(command, flags, protocol);
    b.str(attr::SETNAME, set)
        .begin_nest(attr::DATA | NLA_F_NESTED);
    match entry {
        Entry::Ip(ip) => {
            put_ip(&mut b, data::IP, *ip);
        }
        Entry::Net(net) => {
            put_ip(&mut b, data::IP, net.network());
            b.u8(data::CIDR, net.prefix());
        }
        Entry::IpPort { ip, proto, port } => {
            put_ip(&mut b, data::IP, *ip);
            b.be16(data::PORT | NLA_F_NET_BYTEORDER, *port)
                .u8(data::PROTO, proto.number());
        }
        Entry::IpPortIp {
            ip,
            proto,
            port,
            ip2,
        } => {
            put_ip(&mut b, data::IP, *ip);
            b.be16(data::PORT | NLA_F_NET_BYTEORDER, *port)
                .u8(data::PROTO, proto.number());
            put_ip(&mut b, data::IP2, *ip2);
        }
        Entry::IpPortNet {
            ip,
            proto,
            port,
            net,
        } => {
            put_ip(&mut b, data::IP, *ip);
            b.be16(data::PORT | NLA_F_NET_BYTEORDER, *port)
                .u8(data::PROTO, proto.number());
            put_ip(&mut b, data::IP2, net.network());
            // Always sent, as ipset does when the prefix is written (`/32` too); without it
            // the kernel takes the host mask, so a bare address means the same.
            b.u8(data::CIDR2, net.prefix());
        }
        Entry::Port(port) => {
            b.be16(data::PORT | NLA_F_NET_BYTEORDER, *port);
        }
    }
    // ipset sends the restore line number (0 outside `ipset restore`) with ADD and DEL.
    if adt != Adt::Test {
        b.be32(data::LINENO | NLA_F_NET_BYTEORDER, 0);
    }
    b.end_nest();
    b.finish()
}

/// 32 or 128: the prefix of a single address.
fn host_prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

fn put_ip(b: &mut Builder, ty: u16, ip: IpAddr) {
    b.begin_nest(ty | NLA_F_NESTED);
    match ip {
        IpAddr::V4(v4) => b.attr(data::IPADDR_IPV4 | NLA_F_NET_BYTEORDER, &v4.octets()),
        IpAddr::V6(v6) => b.attr(data::IPADDR_IPV6 | NLA_F_NET_BYTEORDER, &v6.octets()),
    };
    b.end_nest();
}

fn malformed(what: impl Into<String>) -> Error {
    Error::Malformed(what.into())
}

/// The attributes of an ipset reply (after `nfgenmsg`), checking it is the command expected.
fn reply_attrs(msg: &[u8], command: u8) -> Result<nl::Message<'_>, Error> {
    let m = nl::Message::parse(msg)?;
    if m.nlmsg_type != (NFNL_SUBSYS_IPSET << 8) | u16::from(command) {
        return Err(malformed(format!(
            "reply type {:#06x}, expected ipset command {command}",
            m.nlmsg_type
        )));
    }
    if m.payload.len() < 4 {
        return Err(malformed("reply without nfgenmsg"));
    }
    Ok(m)
}

/// Decodes the `IPSET_CMD_PROTOCOL` reply: (protocol, oldest protocol) of the kernel.
pub fn parse_protocol(msg: &[u8]) -> Result<(u8, Option<u8>), Error> {
    let m = reply_attrs(msg, cmd::PROTOCOL)?;
    let mut proto = None;
    let mut min = None;
    for a in nl::attrs(&m.payload[4..]) {
        let a = a?;
        match a.ty {
            attr::PROTOCOL => proto = Some(a.u8()?),
            attr::PROTOCOL_MIN => min = Some(a.u8()?),
            _ => {}
        }
    }
    Ok((
        proto.ok_or_else(|| malformed("no protocol attribute"))?,
        min,
    ))
}

/// Decodes the `IPSET_CMD_TYPE` reply: (newest, oldest) revision of the type in the kernel.
pub fn parse_type(msg: &[u8]) -> Result<(u8, u8), Error> {
    let m = reply_attrs(msg, cmd::TYPE)?;
    let mut max = None;
    let mut min = 0;
    for a in nl::attrs(&m.payload[4..]) {
        let a = a?;
        match a.ty {
            attr::REVISION => max = Some(a.u8()?),
            attr::PROTOCOL_MIN => min = a.u8()?,
            _ => {}
        }
    }
    Ok((max.ok_or_else(|| malformed("no revision attribute"))?, min))
}

/// Decodes the `IPSET_CMD_HEADER` reply (name, type, family, revision).
pub fn parse_header(msg: &[u8]) -> Result<SetInfo, Error> {
    let m = reply_attrs(msg, cmd::HEADER)?;
    let mut info = SetInfo::default();
    apply_set_attrs(&mut info, &m.payload[4..], None)?;
    Ok(info)
}

/// Decodes the messages of an `IPSET_CMD_LIST` dump of one set: its header and every member.
/// The kernel splits a large set over several messages, each repeating the set name.
pub fn parse_list<M: AsRef<[u8]>>(msgs: &[M]) -> Result<(SetInfo, Vec<Entry>), Error> {
    let mut info = SetInfo::default();
    let mut entries = Vec::new();
    for msg in msgs {
        let m = reply_attrs(msg.as_ref(), cmd::LIST)?;
        apply_set_attrs(&mut info, &m.payload[4..], Some(&mut entries))?;
    }
    if info.type_name.is_empty() {
        return Err(malformed("listing without a set type"));
    }
    Ok((info, entries))
}

/// Decodes the header of an `IPSET_CMD_LIST` dump of one set (all of it for `ipset list -t`),
/// leaving the members aside: it reads a set of any type.
pub fn parse_list_header<M: AsRef<[u8]>>(msgs: &[M]) -> Result<SetInfo, Error> {
    let mut info = SetInfo::default();
    for msg in msgs {
        let m = reply_attrs(msg.as_ref(), cmd::LIST)?;
        apply_set_attrs(&mut info, &m.payload[4..], None)?;
    }
    if info.type_name.is_empty() {
        return Err(malformed("listing without a set type"));
    }
    Ok(info)
}

fn apply_set_attrs(
    info: &mut SetInfo,
    attrs: &[u8],
    mut entries: Option<&mut Vec<Entry>>,
) -> Result<(), Error> {
    for a in nl::attrs(attrs) {
        let a = a?;
        match a.ty {
            attr::SETNAME => info.name = a.str()?.to_owned(),
            attr::TYPENAME => info.type_name = a.str()?.to_owned(),
            attr::REVISION => info.revision = a.u8()?,
            attr::FAMILY => {
                info.family = match a.u8()? {
                    NFPROTO_UNSPEC => None,
                    v => Some(
                        Family::from_nfproto(v)
                            .ok_or_else(|| malformed(format!("unknown set family {v}")))?,
                    ),
                }
            }
            attr::DATA => {
                let (mut first, mut last) = (None, None);
                for d in a.nested() {
                    let d = d?;
                    match d.ty {
                        data::PORT => first = Some(d.be16()?),
                        data::PORT_TO => last = Some(d.be16()?),
                        data::HASHSIZE => info.hashsize = d.be32()?,
                        data::MAXELEM => info.maxelem = d.be32()?,
                        data::ELEMENTS => info.entries = d.be32()?,
                        data::REFERENCES => info.references = d.be32()?,
                        data::MEMSIZE => info.memsize = d.be32()?,
                        _ => {}
                    }
                }
                if let (Some(first), Some(last)) = (first, last) {
                    info.port_range = Some(first..=last);
                }
            }
            attr::ADT => {
                if let Some(out) = entries.as_deref_mut() {
                    let kind = SetType::from_name(&info.type_name).ok_or_else(|| {
                        malformed(format!("set type {:?} is not supported", info.type_name))
                    })?;
                    for d in a.nested() {
                        out.push(parse_entry(kind, d?.payload)?);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Decodes one `IPSET_ATTR_DATA` element of a set of type `kind`.
pub fn parse_entry(kind: SetType, payload: &[u8]) -> Result<Entry, Error> {
    let (mut ip, mut ip2, mut cidr, mut cidr2, mut port, mut proto) =
        (None, None, None, None, None, None);
    for d in nl::attrs(payload) {
        let d = d?;
        match d.ty {
            data::IP => ip = Some(parse_ip(d.payload)?),
            data::IP2 => ip2 = Some(parse_ip(d.payload)?),
            data::CIDR => cidr = Some(d.u8()?),
            data::CIDR2 => cidr2 = Some(d.u8()?),
            data::PORT => port = Some(d.be16()?),
            data::PROTO => proto = Some(d.u8()?),
            _ => {}
        }
    }
    let ip = || ip.ok_or_else(|| malformed("set element without an address"));
    let port = || port.ok_or_else(|| malformed("set element without a port"));
    let proto = || {
        let number = proto.ok_or_else(|| malformed("set element without a protocol"))?;
        Protocol::from_number(number).ok_or_else(|| {
            malformed(format!(
                "set element protocol {number} is not tcp, udp or sctp"
            ))
        })
    };
    let net = |ip: IpAddr, prefix: Option<u8>| {
        let prefix = prefix.unwrap_or(host_prefix(ip));
        IpNetwork::new(ip, prefix).map_err(|e| malformed(format!("set element {ip}/{prefix}: {e}")))
    };
    Ok(match kind {
        SetType::HashIp => Entry::Ip(ip()?),
        SetType::HashNet => Entry::Net(net(ip()?, cidr)?),
        SetType::HashIpPort => Entry::IpPort {
            ip: ip()?,
            proto: proto()?,
            port: port()?,
        },
        SetType::HashIpPortIp => Entry::IpPortIp {
            ip: ip()?,
            proto: proto()?,
            port: port()?,
            ip2: ip2.ok_or_else(|| malformed("set element without a second address"))?,
        },
        SetType::HashIpPortNet => Entry::IpPortNet {
            ip: ip()?,
            proto: proto()?,
            port: port()?,
            net: net(
                ip2.ok_or_else(|| malformed("set element without a network"))?,
                cidr2,
            )?,
        },
        SetType::BitmapPort => Entry::Port(port()?),
    })
}

fn parse_ip(nest: &[u8]) -> Result<IpAddr, Error> {
    for a in nl::attrs(nest) {
        let a = a?;
        match a.ty {
            data::IPADDR_IPV4 => {
                let o: [u8; 4] = a
                    .payload
                    .try_into()
                    .map_err(|_| malformed("IPv4 address not 4 bytes"))?;
                return Ok(IpAddr::from(o));
            }
            data::IPADDR_IPV6 => {
                let o: [u8; 16] = a
                    .payload
                    .try_into()
                    .map_err(|_| malformed("IPv6 address not 16 bytes"))?;
                return Ok(IpAddr::from(o));
            }
            _ => {}
        }
    }
    Err(malformed("address nest without an address"))
}
