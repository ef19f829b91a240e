//! The IPVS generic-netlink messages, encoded and decoded without I/O, byte for byte as
//! `ipvsadm` 1.31 (libnl) sends them (`include/uapi/linux/ip_vs.h`).
//!
//! Every request is `nlmsghdr` (type = the family id resolved at open), `genlmsghdr`
//! (cmd, version 1) and attributes. Like `ipvsadm`, commands on a real server or on a service
//! by key carry a full service nest with an empty scheduler name, which the kernel ignores.

use std::net::IpAddr;

use super::{default_netmask, Destination, Forward, Info, Op, Service, ServiceKey, Timeouts};
use super::{SVC_F_HASHED, SVC_F_PERSISTENT};
use crate::nl::{self, Builder, Error, NLA_F_NESTED, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use crate::Protocol;

/// The generic-netlink family name of IPVS.
pub const GENL_NAME: &str = "IPVS";
/// `IPVS_GENL_VERSION`.
pub const GENL_VERSION: u8 = 1;
/// Longest scheduler name, without the NUL (`IP_VS_SCHEDNAME_MAXLEN - 1`).
pub const MAX_SCHED_NAME_LEN: usize = 15;

/// `GENL_ID_CTRL`, the generic-netlink controller that resolves family names.
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_CMD_NEWFAMILY: u8 = 1;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;

/// `IPVS_CMD_*`.
pub mod cmd {
    pub const NEW_SERVICE: u8 = 1;
    pub const SET_SERVICE: u8 = 2;
    pub const DEL_SERVICE: u8 = 3;
    pub const GET_SERVICE: u8 = 4;
    pub const NEW_DEST: u8 = 5;
    pub const SET_DEST: u8 = 6;
    pub const DEL_DEST: u8 = 7;
    pub const GET_DEST: u8 = 8;
    pub const SET_CONFIG: u8 = 12;
    pub const GET_CONFIG: u8 = 13;
    pub const SET_INFO: u8 = 14;
    pub const GET_INFO: u8 = 15;
    pub const FLUSH: u8 = 17;
}

/// `IPVS_CMD_ATTR_*`.
mod attr {
    pub const SERVICE: u16 = 1;
    pub const DEST: u16 = 2;
    pub const TIMEOUT_TCP: u16 = 4;
    pub const TIMEOUT_TCP_FIN: u16 = 5;
    pub const TIMEOUT_UDP: u16 = 6;
}

/// `IPVS_SVC_ATTR_*`.
mod svc {
    pub const AF: u16 = 1;
    pub const PROTOCOL: u16 = 2;
    pub const ADDR: u16 = 3;
    pub const PORT: u16 = 4;
    pub const FWMARK: u16 = 5;
    pub const SCHED_NAME: u16 = 6;
    pub const FLAGS: u16 = 7;
    pub const TIMEOUT: u16 = 8;
    pub const NETMASK: u16 = 9;
}

/// `IPVS_DEST_ATTR_*`.
mod dest {
    pub const ADDR: u16 = 1;
    pub const PORT: u16 = 2;
    pub const FWD_METHOD: u16 = 3;
    pub const WEIGHT: u16 = 4;
    pub const U_THRESH: u16 = 5;
    pub const L_THRESH: u16 = 6;
    pub const ACTIVE_CONNS: u16 = 7;
    pub const INACT_CONNS: u16 = 8;
    pub const PERSIST_CONNS: u16 = 9;
    pub const ADDR_FAMILY: u16 = 11;
    pub const TUN_TYPE: u16 = 13;
    pub const TUN_PORT: u16 = 14;
    pub const TUN_FLAGS: u16 = 15;
}

/// `IPVS_INFO_ATTR_*`.
mod info {
    pub const VERSION: u16 = 1;
    pub const CONN_TAB_SIZE: u16 = 2;
}

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

fn af(addr: IpAddr) -> u16 {
    match addr {
        IpAddr::V4(_) => AF_INET,
        IpAddr::V6(_) => AF_INET6,
    }
}

/// `union nf_inet_addr`: 16 bytes, an IPv4 address in the first 4.
fn inet_addr(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V4(a) => {
            let mut b = [0; 16];
            b[..4].copy_from_slice(&a.octets());
            b
        }
        IpAddr::V6(a) => a.octets(),
    }
}

/// The netmask as the kernel reads it: a be32 mask for IPv4, a host-order prefix for IPv6.
fn netmask_bytes(addr: IpAddr, netmask: u32) -> [u8; 4] {
    match addr {
        IpAddr::V4(_) => netmask.to_be_bytes(),
        IpAddr::V6(_) => netmask.to_ne_bytes(),
    }
}

fn start(family: u16, command: u8, flags: u16) -> Builder {
    let mut b = Builder::new(family, flags);
    b.header(&[command, GENL_VERSION, 0, 0]);
    b
}

/// `CTRL_CMD_GETFAMILY` for `name`: what resolves `IPVS` to this kernel's family id.
pub fn family_request(name: &str) -> Vec<u8> {
    let mut b = Builder::new(GENL_ID_CTRL, NLM_F_REQUEST | NLM_F_ACK);
    b.header(&[CTRL_CMD_GETFAMILY, 1, 0, 0])
        .str(CTRL_ATTR_FAMILY_NAME, name);
    b.finish()
}

/// The family id in the controller's `CTRL_CMD_NEWFAMILY` reply.
pub fn parse_family(msg: &[u8]) -> Result<u16, Error> {
    let attrs = genl_attrs(msg, GENL_ID_CTRL, CTRL_CMD_NEWFAMILY)?;
    for a in nl::attrs(attrs) {
        let a = a?;
        if a.ty == CTRL_ATTR_FAMILY_ID {
            return a.u16();
        }
    }
    Err(malformed("no family id in the controller's reply"))
}

/// `IPVS_CMD_GET_INFO` (`ipvsadm --version`).
pub fn info_request(family: u16) -> Vec<u8> {
    start(family, cmd::GET_INFO, NLM_F_REQUEST | NLM_F_ACK).finish()
}

/// Decodes the `IPVS_CMD_SET_INFO` reply to `GET_INFO`.
pub fn parse_info(msg: &[u8]) -> Result<Info, Error> {
    let mut out = Info {
        version: 0,
        conn_table_size: 0,
    };
    for a in nl::attrs(genl_attrs(msg, 0, cmd::SET_INFO)?) {
        let a = a?;
        match a.ty {
            info::VERSION => out.version = a.u32()?,
            info::CONN_TAB_SIZE => out.conn_table_size = a.u32()?,
            _ => {}
        }
    }
    Ok(out)
}

/// `IPVS_CMD_GET_CONFIG` (`ipvsadm -L --timeout`).
pub fn get_config_request(family: u16) -> Vec<u8> {
    start(family, cmd::GET_CONFIG, NLM_F_REQUEST | NLM_F_ACK).finish()
}

/// `IPVS_CMD_SET_CONFIG` (`ipvsadm --set TCP TCPFIN UDP`).
pub fn set_config_request(family: u16, t: &Timeouts) -> Vec<u8> {
    let mut b = start(family, cmd::SET_CONFIG, NLM_F_REQUEST | NLM_F_ACK);
    b.u32(attr::TIMEOUT_TCP, t.tcp)
        .u32(attr::TIMEOUT_TCP_FIN, t.tcp_fin)
        .u32(attr::TIMEOUT_UDP, t.udp);
    b.finish()
}

/// Decodes the `IPVS_CMD_SET_CONFIG` reply to `GET_CONFIG`.
pub fn parse_timeouts(msg: &[u8]) -> Result<Timeouts, Error> {
    let mut t = Timeouts::default();
    for a in nl::attrs(genl_attrs(msg, 0, cmd::SET_CONFIG)?) {
        let a = a?;
        match a.ty {
            attr::TIMEOUT_TCP => t.tcp = a.u32()?,
            attr::TIMEOUT_TCP_FIN => t.tcp_fin = a.u32()?,
            attr::TIMEOUT_UDP => t.udp = a.u32()?,
            _ => {}
        }
    }
    Ok(t)
}

/// `IPVS_CMD_FLUSH` (`ipvsadm -C`).
pub fn flush_request(family: u16) -> Vec<u8> {
    start(family, cmd::FLUSH, NLM_F_REQUEST | NLM_F_ACK).finish()
}

fn put_key(b: &mut Builder, key: &ServiceKey) {
    b.u16(svc::AF, af(key.addr))
        .u16(svc::PROTOCOL, u16::from(key.protocol.number()))
        .attr(svc::ADDR, &inet_addr(key.addr))
        .be16(svc::PORT, key.port);
}

/// The service nest of a full service (`-A`/`-E`).
fn put_service(b: &mut Builder, s: &Service) {
    let mut flags = s.flags & !(SVC_F_PERSISTENT | SVC_F_HASHED);
    if s.persistence.is_some() {
        flags |= SVC_F_PERSISTENT;
    }
    let mut flag_pair = [0u8; 8];
    flag_pair[..4].copy_from_slice(&flags.to_ne_bytes());
    flag_pair[4..].copy_from_slice(&u32::MAX.to_ne_bytes());
    b.begin_nest(attr::SERVICE | NLA_F_NESTED);
    put_key(b, &s.key);
    b.str(svc::SCHED_NAME, &s.scheduler)
        .attr(svc::FLAGS, &flag_pair)
        .u32(svc::TIMEOUT, s.persistence.unwrap_or(0))
        .attr(svc::NETMASK, &netmask_bytes(s.key.addr, s.netmask))
        .end_nest();
}

/// The service nest `ipvsadm` sends when a command names a service by key.
fn put_service_by_key(b: &mut Builder, key: &ServiceKey, netmask: u32) {
    put_service(
        b,
        &Service {
            key: *key,
            scheduler: String::new(),
            persistence: None,
            netmask,
            flags: 0,
        },
    );
}

fn put_dest(b: &mut Builder, d: &Destination) {
    b.begin_nest(attr::DEST | NLA_F_NESTED)
        .u16(dest::ADDR_FAMILY, af(d.addr))
        .attr(dest::ADDR, &inet_addr(d.addr))
        .be16(dest::PORT, d.port)
        .u32(dest::FWD_METHOD, d.forward.code())
        .u32(dest::WEIGHT, d.weight)
        .u8(dest::TUN_TYPE, 0)
        .u16(dest::TUN_PORT, 0)
        .u16(dest::TUN_FLAGS, 0)
        .u32(dest::U_THRESH, d.upper_threshold)
        .u32(dest::L_THRESH, d.lower_threshold)
        .end_nest();
}

/// `NEW_SERVICE`/`SET_SERVICE` with a full service (`ipvsadm -A|-E`).
pub fn service_request(family: u16, command: u8, s: &Service) -> Vec<u8> {
    let mut b = start(family, command, NLM_F_REQUEST | NLM_F_ACK);
    put_service(&mut b, s);
    b.finish()
}

/// `IPVS_CMD_DEL_SERVICE` (`ipvsadm -D`).
pub fn del_service_request(family: u16, key: &ServiceKey) -> Vec<u8> {
    let mut b = start(family, cmd::DEL_SERVICE, NLM_F_REQUEST | NLM_F_ACK);
    put_service_by_key(&mut b, key, default_netmask(key.addr));
    b.finish()
}

/// `IPVS_CMD_GET_SERVICE` of one service (`ipvsadm -Ln -t ADDR:PORT`).
pub fn get_service_request(family: u16, key: &ServiceKey) -> Vec<u8> {
    let mut b = start(family, cmd::GET_SERVICE, NLM_F_REQUEST | NLM_F_ACK);
    put_service_by_key(&mut b, key, 0);
    b.finish()
}

/// `IPVS_CMD_GET_SERVICE` dump of every service (`ipvsadm -Ln`).
pub fn services_dump_request(family: u16) -> Vec<u8> {
    start(
        family,
        cmd::GET_SERVICE,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_DUMP,
    )
    .finish()
}

/// `IPVS_CMD_GET_DEST` dump of one service's real servers.
pub fn dests_dump_request(family: u16, key: &ServiceKey) -> Vec<u8> {
    let mut b = start(
        family,
        cmd::GET_DEST,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_DUMP,
    );
    b.begin_nest(attr::SERVICE | NLA_F_NESTED);
    put_key(&mut b, key);
    b.end_nest();
    b.finish()
}

/// `NEW_DEST`/`SET_DEST` (`ipvsadm -a|-e`).
pub fn dest_request(family: u16, command: u8, key: &ServiceKey, d: &Destination) -> Vec<u8> {
    let mut b = start(family, command, NLM_F_REQUEST | NLM_F_ACK);
    put_service_by_key(&mut b, key, default_netmask(key.addr));
    put_dest(&mut b, d);
    b.finish()
}

/// `IPVS_CMD_DEL_DEST` (`ipvsadm -d`); like `ipvsadm`, the ignored method and weight are its
/// defaults (gatewaying, 1).
pub fn del_dest_request(family: u16, key: &ServiceKey, addr: IpAddr, port: u16) -> Vec<u8> {
    let d = Destination {
        forward: Forward::Route,
        ..Destination::new(addr, port, 1)
    };
    dest_request(family, cmd::DEL_DEST, key, &d)
}

/// The request for one [`Op`].
pub fn op_request(family: u16, op: &Op) -> Vec<u8> {
    match op {
        Op::AddService(s) => service_request(family, cmd::NEW_SERVICE, s),
        Op::UpdateService(s) => service_request(family, cmd::SET_SERVICE, s),
        Op::DelService(k) => del_service_request(family, k),
        Op::AddDest(k, d) => dest_request(family, cmd::NEW_DEST, k, d),
        Op::UpdateDest(k, d) => dest_request(family, cmd::SET_DEST, k, d),
        Op::DelDest(k, a, p) => del_dest_request(family, k, *a, *p),
    }
}

fn malformed(what: impl Into<String>) -> Error {
    Error::Malformed(what.into())
}

/// The attributes of a generic-netlink reply after checking its command (and its family id,
/// unless `family` is 0).
fn genl_attrs(msg: &[u8], family: u16, command: u8) -> Result<&[u8], Error> {
    let m = nl::Message::parse(msg)?;
    if family != 0 && m.nlmsg_type != family {
        return Err(malformed(format!(
            "reply of family {}, expected {family}",
            m.nlmsg_type
        )));
    }
    let p = m.payload;
    if p.len() < 4 {
        return Err(malformed("reply without genlmsghdr"));
    }
    if p[0] != command {
        return Err(malformed(format!(
            "reply command {}, expected {command}",
            p[0]
        )));
    }
    Ok(&m.bytes[nl::HEADER_LEN + 4..])
}

fn parse_addr(family: u16, raw: &[u8]) -> Result<IpAddr, Error> {
    match family {
        AF_INET => {
            let o: [u8; 4] = raw
                .get(..4)
                .and_then(|s| s.try_into().ok())
                .ok_or_else(|| malformed("IPv4 address shorter than 4 bytes"))?;
            Ok(IpAddr::from(o))
        }
        AF_INET6 => {
            let o: [u8; 16] = raw
                .get(..16)
                .and_then(|s| s.try_into().ok())
                .ok_or_else(|| malformed("IPv6 address shorter than 16 bytes"))?;
            Ok(IpAddr::from(o))
        }
        other => Err(malformed(format!("unknown address family {other}"))),
    }
}

/// Decodes one `IPVS_CMD_NEW_SERVICE` message of a service listing: `None` for a
/// firewall-mark service.
pub fn parse_service(msg: &[u8]) -> Result<Option<Service>, Error> {
    let attrs = genl_attrs(msg, 0, cmd::NEW_SERVICE)?;
    let nest = nl::attrs(attrs)
        .filter_map(Result::ok)
        .find(|a| a.ty == attr::SERVICE)
        .ok_or_else(|| malformed("no service nest"))?;
    let (mut family, mut proto, mut addr, mut port) = (None, None, None, None);
    let (mut sched, mut flags, mut timeout, mut netmask_raw) = (None, 0, 0, None);
    let mut fwmark = false;
    for a in nest.nested() {
        let a = a?;
        match a.ty {
            svc::AF => family = Some(a.u16()?),
            svc::PROTOCOL => proto = Some(a.u16()?),
            svc::ADDR => addr = Some(a.payload),
            svc::PORT => port = Some(a.be16()?),
            svc::FWMARK => fwmark = a.u32()? != 0,
            svc::SCHED_NAME => sched = Some(a.str()?.to_owned()),
            svc::FLAGS => {
                let raw = a
                    .payload
                    .get(..4)
                    .ok_or_else(|| malformed("service flags shorter than 4 bytes"))?;
                flags = u32::from_ne_bytes(raw.try_into().expect("4 bytes"));
            }
            svc::TIMEOUT => timeout = a.u32()?,
            svc::NETMASK => netmask_raw = Some(a.bytes::<4>()?),
            _ => {}
        }
    }
    if fwmark {
        return Ok(None);
    }
    let family = family.ok_or_else(|| malformed("service without address family"))?;
    let addr = parse_addr(
        family,
        addr.ok_or_else(|| malformed("service without address"))?,
    )?;
    let number = proto.ok_or_else(|| malformed("service without protocol"))?;
    let protocol = u8::try_from(number)
        .ok()
        .and_then(Protocol::from_number)
        .ok_or_else(|| malformed(format!("service protocol {number} is not tcp, udp or sctp")))?;
    let netmask = match (addr, netmask_raw) {
        (IpAddr::V4(_), Some(b)) => u32::from_be_bytes(b),
        (IpAddr::V6(_), Some(b)) => u32::from_ne_bytes(b),
        (_, None) => default_netmask(addr),
    };
    Ok(Some(Service {
        key: ServiceKey {
            addr,
            protocol,
            port: port.ok_or_else(|| malformed("service without port"))?,
        },
        scheduler: sched.ok_or_else(|| malformed("service without scheduler"))?,
        persistence: (flags & SVC_F_PERSISTENT != 0).then_some(timeout),
        netmask,
        flags: flags & !(SVC_F_PERSISTENT | SVC_F_HASHED),
    }))
}

/// Decodes one `IPVS_CMD_NEW_DEST` message of the listing of `key`'s real servers.
pub fn parse_destination(msg: &[u8], key: &ServiceKey) -> Result<Destination, Error> {
    let attrs = genl_attrs(msg, 0, cmd::NEW_DEST)?;
    let nest = nl::attrs(attrs)
        .filter_map(Result::ok)
        .find(|a| a.ty == attr::DEST)
        .ok_or_else(|| malformed("no destination nest"))?;
    let mut d = Destination::new(IpAddr::from([0, 0, 0, 0]), 0, 0);
    let (mut family, mut addr, mut port) = (None, None, None);
    for a in nest.nested() {
        let a = a?;
        match a.ty {
            dest::ADDR => addr = Some(a.payload),
            dest::ADDR_FAMILY => family = Some(a.u16()?),
            dest::PORT => port = Some(a.be16()?),
            dest::FWD_METHOD => {
                let code = a.u32()?;
                d.forward = Forward::from_code(code)
                    .ok_or_else(|| malformed(format!("unknown forwarding method {code}")))?;
            }
            dest::WEIGHT => d.weight = a.u32()?,
            dest::U_THRESH => d.upper_threshold = a.u32()?,
            dest::L_THRESH => d.lower_threshold = a.u32()?,
            dest::ACTIVE_CONNS => d.active_conns = a.u32()?,
            dest::INACT_CONNS => d.inactive_conns = a.u32()?,
            dest::PERSIST_CONNS => d.persist_conns = a.u32()?,
            _ => {}
        }
    }
    let raw = addr.ok_or_else(|| malformed("destination without address"))?;
    // Kernels before 4.3 send no ADDR_FAMILY: the real server then has the service's family.
    let family = family.unwrap_or(af(key.addr));
    d.addr = parse_addr(family, raw)?;
    d.port = port.ok_or_else(|| malformed("destination without port"))?;
    Ok(d)
}
