//! The ctnetlink messages (nfnetlink subsystem `NFNL_SUBSYS_CTNETLINK`), encoded and decoded
//! without I/O (`include/uapi/linux/netfilter/nfnetlink_conntrack.h`). Lookups and deletions by
//! tuple are byte for byte what `conntrack` 1.4.7 (libnetfilter_conntrack 1.0.9) sends, less the
//! attributes the kernel ignores there (the tool's TCP flags on a lookup, the rest of the dumped
//! flow on a deletion).
//!
//! Every request is `nlmsghdr` with type `(NFNL_SUBSYS_CTNETLINK << 8) | msg`, an `nfgenmsg`
//! whose family is the flows' (`AF_INET`/`AF_INET6`, version 0, res_id 0), and attributes.
//! Addresses, ports, status, mark, id and zone travel in network byte order, without the
//! `NLA_F_NET_BYTEORDER` flag; the kernel dumps each flow as an `IPCTNL_MSG_CT_NEW` message.

use std::net::IpAddr;

use super::{Filter, Flow, Status, Tuple};
use crate::nl::{self, Builder, Error, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use crate::Family;
use crate::Protocol;

/// The nfnetlink subsystem id of connection tracking.
pub const NFNL_SUBSYS_CTNETLINK: u16 = 1;

/// `enum cntl_msg_types`.
pub mod msg {
    /// A flow, as the kernel dumps it (and `conntrack -I` creates one).
    pub const NEW: u8 = 0;
    /// A dump (`NLM_F_DUMP`) or the lookup of one flow by tuple (`conntrack -L`, `-G`).
    pub const GET: u8 = 1;
    /// The deletion of one flow by tuple (`conntrack -D`).
    pub const DELETE: u8 = 2;
}

/// `enum ctattr_type`: the top-level attributes.
pub mod attr {
    pub const TUPLE_ORIG: u16 = 1;
    pub const TUPLE_REPLY: u16 = 2;
    pub const STATUS: u16 = 3;
    pub const PROTOINFO: u16 = 4;
    pub const TIMEOUT: u16 = 7;
    pub const MARK: u16 = 8;
    pub const USE: u16 = 11;
    pub const ID: u16 = 12;
    pub const ZONE: u16 = 18;
    pub const FILTER: u16 = 25;
}

/// `enum ctattr_tuple`, `enum ctattr_ip`, `enum ctattr_l4proto`: inside a tuple nest.
pub mod tuple {
    pub const IP: u16 = 1;
    pub const PROTO: u16 = 2;
    /// A zone that applies to one direction only.
    pub const ZONE: u16 = 3;
    pub const IP_V4_SRC: u16 = 1;
    pub const IP_V4_DST: u16 = 2;
    pub const IP_V6_SRC: u16 = 3;
    pub const IP_V6_DST: u16 = 4;
    pub const PROTO_NUM: u16 = 1;
    pub const PROTO_SRC_PORT: u16 = 2;
    pub const PROTO_DST_PORT: u16 = 3;
}

/// `enum ctattr_filter` and the `CTA_FILTER_FLAG_*` bits: which fields of the tuples sent with
/// a dump the kernel compares (kernel 5.8 and later; older kernels ignore the attribute).
pub mod filter {
    pub const ORIG_FLAGS: u16 = 1;
    pub const REPLY_FLAGS: u16 = 2;
    pub const IP_SRC: u32 = 1 << 0;
    pub const IP_DST: u32 = 1 << 1;
    pub const PROTO_NUM: u32 = 1 << 3;
    pub const PROTO_SRC_PORT: u32 = 1 << 4;
    pub const PROTO_DST_PORT: u32 = 1 << 5;
}

fn start(message: u8, flags: u16, family: Family) -> Builder {
    let mut b = Builder::new((NFNL_SUBSYS_CTNETLINK << 8) | u16::from(message), flags);
    b.header(&[family.nfproto(), 0, 0, 0]);
    b
}

/// One direction's tuple nest with the fields `flags` selects (`CTA_FILTER_FLAG_*`): a lookup or
/// deletion sends all of them, a filtered dump only those it compares.
fn put_tuple(b: &mut Builder, ty: u16, protocol: Protocol, t: &Tuple, flags: u32) {
    b.begin_nest(ty);
    if flags & (filter::IP_SRC | filter::IP_DST) != 0 {
        b.begin_nest(tuple::IP);
        let (src, dst) = match t.src {
            IpAddr::V4(_) => (tuple::IP_V4_SRC, tuple::IP_V4_DST),
            IpAddr::V6(_) => (tuple::IP_V6_SRC, tuple::IP_V6_DST),
        };
        if flags & filter::IP_SRC != 0 {
            put_ip(b, src, t.src);
        }
        if flags & filter::IP_DST != 0 {
            put_ip(b, dst, t.dst);
        }
        b.end_nest();
    }
    b.begin_nest(tuple::PROTO)
        .u8(tuple::PROTO_NUM, protocol.number());
    if flags & filter::PROTO_SRC_PORT != 0 {
        b.be16(tuple::PROTO_SRC_PORT, t.src_port);
    }
    if flags & filter::PROTO_DST_PORT != 0 {
        b.be16(tuple::PROTO_DST_PORT, t.dst_port);
    }
    b.end_nest().end_nest();
}

fn put_ip(b: &mut Builder, ty: u16, ip: IpAddr) {
    match ip {
        IpAddr::V4(a) => b.attr(ty, &a.octets()),
        IpAddr::V6(a) => b.attr(ty, &a.octets()),
    };
}

const WHOLE_TUPLE: u32 = filter::IP_SRC
    | filter::IP_DST
    | filter::PROTO_NUM
    | filter::PROTO_SRC_PORT
    | filter::PROTO_DST_PORT;

/// A lookup or deletion of the flow whose original tuple is `original` in `zone`.
fn by_tuple(message: u8, protocol: Protocol, original: &Tuple, zone: u16) -> Builder {
    let mut b = start(message, NLM_F_REQUEST | NLM_F_ACK, Family::of(original.src));
    put_tuple(&mut b, attr::TUPLE_ORIG, protocol, original, WHOLE_TUPLE);
    // The default zone 0 is what the kernel assumes without the attribute, as `conntrack` does.
    if zone != 0 {
        b.be16(attr::ZONE, zone);
    }
    b
}

/// `IPCTNL_MSG_CT_GET` of one flow by its original tuple (`conntrack -G -p udp -s SRC -d DST
/// --sport SPORT --dport DPORT`): the kernel answers with the flow, or `ENOENT`.
pub fn get_request(protocol: Protocol, original: &Tuple, zone: u16) -> Vec<u8> {
    by_tuple(msg::GET, protocol, original, zone).finish()
}

/// `IPCTNL_MSG_CT_DELETE` of one flow by its original tuple (what `conntrack -D` sends for each
/// flow it matched). With `id` (`CTA_ID`, from a dump) the kernel deletes the flow only if it is
/// still that one: a new flow that reuses the tuple since is answered `ENOENT` and kept.
pub fn delete_request(protocol: Protocol, original: &Tuple, zone: u16, id: Option<u32>) -> Vec<u8> {
    let mut b = by_tuple(msg::DELETE, protocol, original, zone);
    if let Some(id) = id {
        b.be32(attr::ID, id);
    }
    b.finish()
}

/// The `CTA_FILTER_FLAG_*` bits of one direction the kernel can be trusted to compare.
///
/// The kernel compares ports for TCP and UDP only (an SCTP port filter passes every SCTP flow),
/// and its IPv6 address comparison is inverted since filtering came in 5.8 (seen on 6.18: a dump
/// filtered on an IPv6 address returns exactly the flows whose address differs), so IPv6
/// addresses are never sent as a filter. What the kernel
/// does not filter, [`Filter::matches`] does.
fn kernel_flags(
    f: &Filter,
    addr: Option<IpAddr>,
    port: Option<u16>,
    ip: u32,
    port_bit: u32,
) -> u32 {
    let mut flags = 0;
    if addr.is_some() && f.family == Family::V4 {
        flags |= ip;
    }
    if port.is_some() {
        flags |= port_bit;
    }
    if flags != 0 {
        flags |= filter::PROTO_NUM;
    }
    flags
}

/// `IPCTNL_MSG_CT_GET` dump (`NLM_F_DUMP`) of the flows of `f.family`, narrowed in the kernel
/// (`CTA_FILTER`) by protocol and by what it can compare of the original destination and reply
/// source. `conntrack -L` sends only the family and filters the rest itself.
pub fn dump_request(f: &Filter) -> Vec<u8> {
    let mut b = start(msg::GET, NLM_F_REQUEST | NLM_F_DUMP, f.family);
    let orig_flags = filter::PROTO_NUM
        | kernel_flags(
            f,
            f.orig_dst,
            f.orig_dst_port,
            filter::IP_DST,
            filter::PROTO_DST_PORT,
        );
    let reply_flags = kernel_flags(
        f,
        f.reply_src,
        f.reply_src_port,
        filter::IP_SRC,
        filter::PROTO_SRC_PORT,
    );
    let unspecified = match f.family {
        Family::V4 => IpAddr::from([0u8; 4]),
        Family::V6 => IpAddr::from([0u8; 16]),
    };
    let original = Tuple {
        src: unspecified,
        dst: f.orig_dst.unwrap_or(unspecified),
        src_port: 0,
        dst_port: f.orig_dst_port.unwrap_or(0),
    };
    put_tuple(&mut b, attr::TUPLE_ORIG, f.protocol, &original, orig_flags);
    if reply_flags != 0 {
        let reply = Tuple {
            src: f.reply_src.unwrap_or(unspecified),
            dst: unspecified,
            src_port: f.reply_src_port.unwrap_or(0),
            dst_port: 0,
        };
        put_tuple(&mut b, attr::TUPLE_REPLY, f.protocol, &reply, reply_flags);
    }
    b.begin_nest(attr::FILTER)
        .u32(filter::ORIG_FLAGS, orig_flags)
        .u32(filter::REPLY_FLAGS, reply_flags)
        .end_nest();
    b.finish()
}

fn malformed(what: impl Into<String>) -> Error {
    Error::Malformed(what.into())
}

/// Decodes one flow of a dump or of a lookup reply (`IPCTNL_MSG_CT_NEW`): `None` for a flow of a
/// protocol other than TCP, UDP and SCTP (ICMP, GRE, ...), whose tuples carry no ports.
pub fn parse_flow(msg: &[u8]) -> Result<Option<Flow>, Error> {
    let m = nl::Message::parse(msg)?;
    let expected = (NFNL_SUBSYS_CTNETLINK << 8) | u16::from(msg::NEW);
    if m.nlmsg_type != expected {
        return Err(malformed(format!(
            "reply type {:#06x}, expected a conntrack flow ({expected:#06x})",
            m.nlmsg_type
        )));
    }
    let family = m
        .payload
        .first()
        .and_then(|f| Family::from_nfproto(*f))
        .ok_or_else(|| malformed("flow without an IPv4 or IPv6 nfgenmsg"))?;
    let (mut original, mut reply) = (None, None);
    let (mut status, mut mark, mut id, mut timeout, mut zone) = (0, 0, 0, 0, None);
    for a in nl::attrs(m.payload.get(4..).unwrap_or_default()) {
        let a = a?;
        match a.ty {
            attr::TUPLE_ORIG => original = Some(a.payload),
            attr::TUPLE_REPLY => reply = Some(a.payload),
            attr::STATUS => status = a.be32()?,
            attr::MARK => mark = a.be32()?,
            attr::ID => id = a.be32()?,
            attr::TIMEOUT => timeout = a.be32()?,
            attr::ZONE => zone = Some(a.be16()?),
            _ => {}
        }
    }
    let original = original.ok_or_else(|| malformed("flow without an original tuple"))?;
    let reply = reply.ok_or_else(|| malformed("flow without a reply tuple"))?;
    let Some((protocol, original, orig_zone)) = parse_tuple(family, original)? else {
        return Ok(None);
    };
    let Some((reply_protocol, reply, _)) = parse_tuple(family, reply)? else {
        return Err(malformed(
            "reply tuple of another protocol than the original",
        ));
    };
    if reply_protocol != protocol {
        return Err(malformed(
            "reply tuple of another protocol than the original",
        ));
    }
    Ok(Some(Flow {
        protocol,
        original,
        reply,
        // A zone for the original direction only comes inside its tuple.
        zone: zone.or(orig_zone).unwrap_or(0),
        mark,
        status: Status(status),
        id,
        timeout,
    }))
}

/// Decodes one tuple nest: its protocol, the tuple and the zone it carries, or `None` for a
/// protocol we do not handle.
fn parse_tuple(
    family: Family,
    nest: &[u8],
) -> Result<Option<(Protocol, Tuple, Option<u16>)>, Error> {
    let (mut src, mut dst, mut number, mut src_port, mut dst_port, mut zone) =
        (None, None, None, None, None, None);
    for a in nl::attrs(nest) {
        let a = a?;
        match a.ty {
            tuple::IP => {
                for ip in a.nested() {
                    let ip = ip?;
                    match (family, ip.ty) {
                        (Family::V4, tuple::IP_V4_SRC) => {
                            src = Some(IpAddr::from(ip.bytes::<4>()?))
                        }
                        (Family::V4, tuple::IP_V4_DST) => {
                            dst = Some(IpAddr::from(ip.bytes::<4>()?))
                        }
                        (Family::V6, tuple::IP_V6_SRC) => {
                            src = Some(IpAddr::from(ip.bytes::<16>()?))
                        }
                        (Family::V6, tuple::IP_V6_DST) => {
                            dst = Some(IpAddr::from(ip.bytes::<16>()?))
                        }
                        _ => {}
                    }
                }
            }
            tuple::PROTO => {
                for p in a.nested() {
                    let p = p?;
                    match p.ty {
                        tuple::PROTO_NUM => number = Some(p.u8()?),
                        tuple::PROTO_SRC_PORT => src_port = Some(p.be16()?),
                        tuple::PROTO_DST_PORT => dst_port = Some(p.be16()?),
                        _ => {}
                    }
                }
            }
            tuple::ZONE => zone = Some(a.be16()?),
            _ => {}
        }
    }
    let number = number.ok_or_else(|| malformed("tuple without a protocol number"))?;
    let Some(protocol) = Protocol::from_number(number) else {
        return Ok(None);
    };
    let what = |field: &str| malformed(format!("{protocol} tuple without {field}"));
    let tuple = Tuple {
        src: src.ok_or_else(|| what("a source address"))?,
        dst: dst.ok_or_else(|| what("a destination address"))?,
        src_port: src_port.ok_or_else(|| what("a source port"))?,
        dst_port: dst_port.ok_or_else(|| what("a destination port"))?,
    };
    Ok(Some((protocol, tuple, zone)))
}
