//! Connection tracking over ctnetlink: list the kernel's flows and delete stale ones without
//! exec'ing `conntrack`, for kube-proxy's UDP cleanup.
//!
//! [`wire`] encodes and decodes the messages (no I/O); [`Conntrack`] is the thin request layer
//! over one `NETLINK_NETFILTER` socket, opened in the caller's current network namespace.
//! [`Conntrack::list`] narrows the dump in the kernel as far as the kernel filters correctly and
//! checks every flow again here ([`Filter::matches`]); deletions are pipelined
//! ([`Conntrack::delete_many`]): thousands of requests per system call, one ACK each.
//!
//! The address family is the crate's nfnetlink one ([`crate::crate::Family`]): conntrack's
//! `nfgenmsg` family takes the same `NFPROTO_*` values.

pub mod wire;

use std::fmt;
use std::net::IpAddr;
use std::ops::BitOr;

use nix::errno::Errno;

use crate::nl;
use crate::Family;
use crate::Protocol;

/// One direction of a flow, as `conntrack -L` prints it: `src=A dst=B sport=P dport=Q`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
}

impl Tuple {
    pub fn new(src: IpAddr, src_port: u16, dst: IpAddr, dst_port: u16) -> Tuple {
        Tuple {
            src,
            dst,
            src_port,
            dst_port,
        }
    }

    /// The family of both addresses, `None` when they differ (no flow has such a tuple).
    pub fn family(&self) -> Option<Family> {
        let family = Family::of(self.src);
        (Family::of(self.dst) == family).then_some(family)
    }
}

impl fmt::Display for Tuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "src={} dst={} sport={} dport={}",
            self.src, self.dst, self.src_port, self.dst_port
        )
    }
}

/// The `IPS_*` status bits of a flow (`[UNREPLIED]` is the absence of `SEEN_REPLY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Status(pub u32);

impl Status {
    /// A packet was seen in the reply direction.
    pub const SEEN_REPLY: Status = Status(0x2);
    /// `[ASSURED]`: the flow is kept when the table is full.
    pub const ASSURED: Status = Status(0x4);
    /// The flow is in the table (every listed flow).
    pub const CONFIRMED: Status = Status(0x8);
    /// The source is translated (SNAT, MASQUERADE).
    pub const SRC_NAT: Status = Status(0x10);
    /// The destination is translated (DNAT): the reply comes from an endpoint.
    pub const DST_NAT: Status = Status(0x20);
    /// The source NAT decision is made (set or not).
    pub const SRC_NAT_DONE: Status = Status(0x80);
    /// The destination NAT decision is made (set or not).
    pub const DST_NAT_DONE: Status = Status(0x100);

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: Status) -> bool {
        self.0 & other.0 == other.0
    }
}

impl BitOr for Status {
    type Output = Status;

    fn bitor(self, rhs: Status) -> Status {
        Status(self.0 | rhs.0)
    }
}

/// One tracked connection, as the kernel lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow {
    pub protocol: Protocol,
    /// The tuple of the first packet: for service traffic, client to VIP:port.
    pub original: Tuple,
    /// The tuple replies must carry: after DNAT, from the endpoint back to the client.
    pub reply: Tuple,
    /// The conntrack zone (`zone=`; 0 is the default zone).
    pub zone: u16,
    /// The connection mark (`mark=`).
    pub mark: u32,
    pub status: Status,
    /// The kernel's id of this entry (`CTA_ID`): a later flow that reuses the tuple has another,
    /// so a deletion carrying it never removes a flow that was not listed.
    pub id: u32,
    /// Seconds left before the kernel expires the flow.
    pub timeout: u32,
}

impl Flow {
    /// The flow's address family.
    pub fn family(&self) -> Family {
        Family::of(self.original.src)
    }
}

/// Formats as `conntrack -L` prints the flow's identity: `udp src=.. dst=.. sport=.. dport=..
/// src=.. dst=.. sport=.. dport=..`, then `zone=N` outside the default zone.
impl fmt::Display for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.protocol, self.original, self.reply)?;
        if self.zone != 0 {
            write!(f, " zone={}", self.zone)?;
        }
        Ok(())
    }
}

/// Which flows to list or delete: those of one family and protocol, optionally with a given
/// original destination and reply source, in every zone.
///
/// kube-proxy's UDP cleanup, written as `conntrack` options:
/// - a Service gets its first endpoint: flows stuck on "no destination" are those to its VIP,
///   `-p udp --orig-dst VIP --orig-port-dst PORT` (`orig_dst`, `orig_dst_port`);
/// - an endpoint goes: flows DNATed to it, `-p udp --orig-dst VIP --orig-port-dst PORT
///   --reply-src EP --reply-port-src EPPORT` (adding `reply_src`, `reply_src_port`);
/// - the same for a NodePort, reached on any node address: `-p udp --orig-port-dst NODEPORT
///   --reply-src EP --reply-port-src EPPORT` (no `orig_dst`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Filter {
    pub family: Family,
    pub protocol: Protocol,
    /// `--orig-dst`: the address the client sent to (a VIP).
    pub orig_dst: Option<IpAddr>,
    /// `--orig-port-dst`: the port the client sent to (service port or node port).
    pub orig_dst_port: Option<u16>,
    /// `--reply-src`: where replies come from (after DNAT, the endpoint).
    pub reply_src: Option<IpAddr>,
    /// `--reply-port-src`: the port replies come from (the endpoint's port).
    pub reply_src_port: Option<u16>,
}

impl Filter {
    /// Every flow of `family` and `protocol` (`conntrack -L -f ipv4 -p udp`).
    pub fn new(family: Family, protocol: Protocol) -> Filter {
        Filter {
            family,
            protocol,
            orig_dst: None,
            orig_dst_port: None,
            reply_src: None,
            reply_src_port: None,
        }
    }

    /// Whether `flow` is one this filter selects.
    pub fn matches(&self, flow: &Flow) -> bool {
        flow.family() == self.family
            && flow.protocol == self.protocol
            && self.orig_dst.is_none_or(|a| flow.original.dst == a)
            && self
                .orig_dst_port
                .is_none_or(|p| flow.original.dst_port == p)
            && self.reply_src.is_none_or(|a| flow.reply.src == a)
            && self.reply_src_port.is_none_or(|p| flow.reply.src_port == p)
    }

    /// Refuses addresses of another family than the filter's, which would select nothing.
    fn check(&self) -> Result<(), Error> {
        for addr in [self.orig_dst, self.reply_src].into_iter().flatten() {
            if Family::of(addr) != self.family {
                return Err(Error::Invalid(format!(
                    "filter {self}: address {addr} is not of family {}",
                    family_name(self.family)
                )));
            }
        }
        Ok(())
    }
}

fn family_name(family: Family) -> &'static str {
    match family {
        Family::V4 => "ipv4",
        Family::V6 => "ipv6",
    }
}

/// Formats as the `conntrack` options that select the same flows: `-f ipv4 -p udp --orig-dst
/// 10.96.0.10 --orig-port-dst 53`.
impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "-f {} -p {}", family_name(self.family), self.protocol)?;
        if let Some(a) = self.orig_dst {
            write!(f, " --orig-dst {a}")?;
        }
        if let Some(p) = self.orig_dst_port {
            write!(f, " --orig-port-dst {p}")?;
        }
        if let Some(a) = self.reply_src {
            write!(f, " --reply-src {a}")?;
        }
        if let Some(p) = self.reply_src_port {
            write!(f, " --reply-port-src {p}")?;
        }
        Ok(())
    }
}

/// A conntrack failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel refused a request.
    #[error("conntrack {op} {target}: {}{}", errno.desc(), message.as_ref().map(|m| format!(" ({m})")).unwrap_or_default())]
    Kernel {
        op: &'static str,
        /// The flow, or the filter (as `conntrack` options), concerned.
        target: String,
        errno: Errno,
        message: Option<String>,
    },
    /// The socket failed (e.g. `NETLINK_NETFILTER` is missing).
    #[error("conntrack: netlink socket: {0}")]
    Io(#[from] std::io::Error),
    /// The kernel's reply did not parse.
    #[error("conntrack {op}: malformed kernel reply: {detail}")]
    Malformed { op: &'static str, detail: String },
    /// Bad input, refused before anything was sent.
    #[error("conntrack: {0}")]
    Invalid(String),
    /// [`Conntrack::delete_matching`] deleted some flows and failed on others; every failure
    /// is kept.
    #[error("conntrack -D {filter}: {deleted} deleted, {} failed: {}", errors.len(), first(errors))]
    Incomplete {
        filter: String,
        deleted: usize,
        errors: Vec<Error>,
    },
}

fn first(errors: &[Error]) -> String {
    errors.first().map(ToString::to_string).unwrap_or_default()
}

impl Error {
    /// The errno, when the kernel refused.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Error::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
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

fn check_tuple(protocol: Protocol, t: &Tuple) -> Result<(), Error> {
    match t.family() {
        Some(_) => Ok(()),
        None => Err(Error::Invalid(format!(
            "{protocol} {t}: source and destination must be of the same family"
        ))),
    }
}

/// A handle on the connection tracking table of the network namespace it was opened in.
#[derive(Debug)]
pub struct Conntrack {
    sock: nl::Socket,
}

impl Conntrack {
    /// Opens an nfnetlink socket in the current network namespace.
    pub fn open() -> Result<Conntrack, Error> {
        Ok(Conntrack {
            sock: nl::Socket::open(netlink_sys::protocols::NETLINK_NETFILTER)?,
        })
    }

    /// `conntrack -L -f F -p P [--orig-dst A] [--orig-port-dst P] [--reply-src A]
    /// [--reply-port-src P]`: the flows `filter` selects, in every zone.
    pub fn list(&self, filter: &Filter) -> Result<Vec<Flow>, Error> {
        filter.check()?;
        let fail = |e| Error::from_nl("list", filter.to_string(), e);
        let replies = self.sock.dump(wire::dump_request(filter)).map_err(fail)?;
        let mut flows = Vec::new();
        for r in &replies {
            // The kernel's filter is a first cut (see `wire::dump_request`): check every flow.
            match wire::parse_flow(r).map_err(fail)? {
                Some(flow) if filter.matches(&flow) => flows.push(flow),
                _ => {}
            }
        }
        Ok(flows)
    }

    /// `conntrack -G -p P -s SRC -d DST --sport SPORT --dport DPORT` (in `zone`): the flow whose
    /// original tuple is `original`, `None` when there is none.
    pub fn get(
        &self,
        protocol: Protocol,
        original: &Tuple,
        zone: u16,
    ) -> Result<Option<Flow>, Error> {
        check_tuple(protocol, original)?;
        let target = || format!("{protocol} {original}");
        match self
            .sock
            .request_replies(wire::get_request(protocol, original, zone))
        {
            Ok(replies) => match replies.first() {
                Some(r) => wire::parse_flow(r).map_err(|e| Error::from_nl("get", target(), e)),
                None => Ok(None),
            },
            Err(e) if e.code() == Some(Errno::ENOENT as i32) => Ok(None),
            Err(e) => Err(Error::from_nl("get", target(), e)),
        }
    }

    /// `conntrack -D` of one listed flow, by its original tuple, zone and id: `Ok(false)` when
    /// it is gone already (expired, deleted by someone else, or replaced by a new flow on the
    /// same tuple, which is kept).
    pub fn delete(&self, flow: &Flow) -> Result<bool, Error> {
        self.delete_many(std::slice::from_ref(flow))
            .pop()
            .expect("one result per flow")
    }

    /// [`Conntrack::delete`] for every flow, pipelined (where one `conntrack -D` process per
    /// flow would dump the whole table each time): one result per flow, in order; `Ok(true)`
    /// deleted now, `Ok(false)` gone already. A refused deletion does not stop the others.
    pub fn delete_many(&self, flows: &[Flow]) -> Vec<Result<bool, Error>> {
        let checks: Vec<Result<(), Error>> = flows
            .iter()
            .map(|f| check_tuple(f.protocol, &f.original))
            .collect();
        let msgs = flows
            .iter()
            .zip(&checks)
            .filter(|(_, c)| c.is_ok())
            .map(|(f, _)| wire::delete_request(f.protocol, &f.original, f.zone, Some(f.id)));
        let mut sent = self.sock.pipeline(msgs).into_iter();
        flows
            .iter()
            .zip(checks)
            .map(|(flow, check)| {
                check?;
                match sent.next().expect("one ACK result per sent deletion") {
                    Ok(()) => Ok(true),
                    Err(e) if e.code() == Some(Errno::ENOENT as i32) => Ok(false),
                    Err(e) => Err(Error::from_nl("delete", flow.to_string(), e)),
                }
            })
            .collect()
    }

    /// `conntrack -D -f F -p P [--orig-dst A] [--orig-port-dst P] [--reply-src A]
    /// [--reply-port-src P]`: lists the flows `filter` selects and deletes them, pipelined. The
    /// number deleted now (flows that went meanwhile are not counted); when some deletions are
    /// refused, [`Error::Incomplete`] keeps every failure and the others are still done.
    pub fn delete_matching(&self, filter: &Filter) -> Result<usize, Error> {
        let flows = self.list(filter)?;
        let mut deleted = 0;
        let mut errors = Vec::new();
        for r in self.delete_many(&flows) {
            match r {
                Ok(true) => deleted += 1,
                Ok(false) => {}
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(deleted)
        } else {
            Err(Error::Incomplete {
                filter: filter.to_string(),
                deleted,
                errors,
            })
        }
    }
}
