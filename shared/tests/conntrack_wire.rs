//! Byte-exact tests of `nodenet::conntrack::wire` against what `conntrack` 1.4.7 sent and the
//! kernel replied (captured by `tests/fixtures/capture-conntrack.sh`, see
//! `tests/fixtures/README.md`). No root needed.

mod common;

use std::collections::BTreeSet;
use std::net::IpAddr;

use common::{fixture, hex, normalise, nth, split};
use nodenet::conntrack::wire::{self, attr, filter as flag};
use nodenet::conntrack::{Filter, Flow, Status, Tuple};
use nodenet::nl::{self, Message};
use nodenet::Family;
use nodenet::Protocol;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn tuple(src: &str, sport: u16, dst: &str, dport: u16) -> Tuple {
    Tuple::new(ip(src), sport, ip(dst), dport)
}

/// Asserts that our encoding equals the `n`th datagram the tool sent in `name`.
fn assert_sent(name: &str, n: usize, ours: Vec<u8>) {
    let theirs = normalise(&nth(&fixture(name), true, n));
    assert_eq!(
        hex(&ours),
        hex(&theirs),
        "{name}: datagram #{n} differs from what conntrack sent"
    );
}

/// A message without its top-level attributes of the types in `drop`, length fixed up.
fn without_attrs(msg: &[u8], drop: &[u16]) -> Vec<u8> {
    let m = Message::parse(msg).unwrap();
    let mut out = msg[..20].to_vec();
    let mut rest = &m.payload[4..];
    while rest.len() >= 4 {
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let ty = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
        let padded = ((len + 3) & !3).min(rest.len());
        if !drop.contains(&ty) {
            out.extend_from_slice(&rest[..padded]);
        }
        rest = &rest[padded..];
    }
    let len = out.len() as u32;
    out[0..4].copy_from_slice(&len.to_ne_bytes());
    out
}

/// The flows of the kernel's dump in a capture, in the order it sent them.
fn dumped(name: &str) -> Vec<Flow> {
    let f = fixture(name);
    f.iter()
        .filter(|d| !d.sent)
        .flat_map(|d| split(&d.bytes))
        .filter(|m| Message::parse(m).unwrap().nlmsg_type == 0x100)
        .map(|m| {
            wire::parse_flow(&m)
                .unwrap()
                .expect("a TCP, UDP or SCTP flow")
        })
        .collect()
}

/// What identifies a flow and what the kernel tells about it, without the id and timeout that
/// change with every capture.
type Seen = (Protocol, Tuple, Tuple, u16, u32, u32);

fn seen(flows: &[Flow]) -> BTreeSet<Seen> {
    flows
        .iter()
        .map(|f| (f.protocol, f.original, f.reply, f.zone, f.mark, f.status.0))
        .collect()
}

const NATTED: u32 = 0x1a8; // CONFIRMED | DST_NAT | SRC_NAT_DONE | DST_NAT_DONE
const UNNATTED: u32 = 0x188; // CONFIRMED | SRC_NAT_DONE | DST_NAT_DONE

#[test]
fn ipv4_dump_decodes_every_flow() {
    let flows = dumped("conntrack/list-v4");
    let want: BTreeSet<Seen> = [
        (
            Protocol::Udp,
            tuple("10.0.0.1", 40001, "10.96.0.10", 53),
            tuple("10.244.1.5", 5353, "10.0.0.1", 40001),
            0,
            0,
            NATTED,
        ),
        (
            Protocol::Udp,
            tuple("10.0.0.1", 40002, "10.96.0.10", 53),
            tuple("10.244.2.6", 5353, "10.0.0.1", 40002),
            0,
            0,
            NATTED,
        ),
        (
            Protocol::Udp,
            tuple("10.0.0.1", 40003, "10.96.0.10", 53),
            tuple("10.96.0.10", 53, "10.0.0.1", 40003),
            0,
            0,
            UNNATTED,
        ),
        (
            Protocol::Udp,
            tuple("10.0.0.1", 40020, "10.96.0.10", 53),
            tuple("10.96.0.10", 53, "10.0.0.1", 40020),
            7,
            0x4000,
            UNNATTED,
        ),
        (
            Protocol::Tcp,
            tuple("10.0.0.1", 40010, "10.96.0.10", 80),
            tuple("10.244.1.5", 8080, "10.0.0.1", 40010),
            0,
            0,
            NATTED,
        ),
        (
            Protocol::Sctp,
            tuple("10.0.0.1", 40030, "10.96.0.20", 9000),
            tuple("10.244.1.5", 9000, "10.0.0.1", 40030),
            0,
            0,
            NATTED | Status::SEEN_REPLY.0,
        ),
    ]
    .into();
    assert_eq!(flows.len(), 6);
    assert_eq!(seen(&flows), want);
    let zoned = flows.iter().find(|f| f.zone == 7).unwrap();
    assert_eq!(
        zoned.to_string(),
        "udp src=10.0.0.1 dst=10.96.0.10 sport=40020 dport=53 \
         src=10.96.0.10 dst=10.0.0.1 sport=53 dport=40020 zone=7"
    );
    assert!(flows.iter().all(|f| f.family() == Family::V4));
    // Unreplied UDP flows live 30 s, a TCP SYN_SENT 120 s, the inserted SCTP flow 300 s.
    assert!(flows.iter().all(|f| f.timeout > 0 && f.timeout <= 300));
    let ids: BTreeSet<u32> = flows.iter().map(|f| f.id).collect();
    assert_eq!(ids.len(), 6, "every flow has its own id");
}

#[test]
fn ipv6_dump_decodes_every_flow() {
    let flows = dumped("conntrack/list-v6");
    let want: BTreeSet<Seen> = [
        (
            Protocol::Udp,
            tuple("fd00::1", 40001, "fd00:96::10", 53),
            tuple("fd00:244::5", 5353, "fd00::1", 40001),
            0,
            0,
            NATTED,
        ),
        (
            Protocol::Udp,
            tuple("fd00::1", 40003, "fd00:96::10", 53),
            tuple("fd00:96::10", 53, "fd00::1", 40003),
            0,
            0,
            UNNATTED,
        ),
        (
            Protocol::Tcp,
            tuple("fd00::1", 40010, "fd00:96::10", 80),
            tuple("fd00:244::5", 8080, "fd00::1", 40010),
            0,
            0,
            NATTED,
        ),
        (
            Protocol::Sctp,
            tuple("fd00::1", 40030, "fd00:96::20", 9000),
            tuple("fd00:96::20", 9000, "fd00::1", 40030),
            0,
            0,
            (Status::CONFIRMED | Status::SEEN_REPLY).0,
        ),
    ]
    .into();
    assert_eq!(flows.len(), 4);
    assert_eq!(seen(&flows), want);
    assert!(flows.iter().all(|f| f.family() == Family::V6));
}

#[test]
fn dump_request_frames_like_conntrack_list() {
    // `conntrack -L -f F` sends the bare header; ours is the same header and nfgenmsg, then
    // the kernel-side filter the tool does not send.
    for (name, family) in [
        ("conntrack/list-v4", Family::V4),
        ("conntrack/list-v6", Family::V6),
    ] {
        let theirs = normalise(&nth(&fixture(name), true, 0));
        assert_eq!(theirs.len(), 20, "{name}");
        let ours = wire::dump_request(&Filter::new(family, Protocol::Udp));
        assert_eq!(hex(&ours[4..20]), hex(&theirs[4..20]), "{name}");
    }
}

/// The top-level attributes of an encoded request.
fn request_attrs(msg: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let m = Message::parse(msg).unwrap();
    nl::attrs(&m.payload[4..])
        .map(|a| {
            let a = a.unwrap();
            (a.ty, a.payload.to_vec())
        })
        .collect()
}

/// (ORIG_FLAGS, REPLY_FLAGS) of a dump request's `CTA_FILTER`.
fn filter_flags(msg: &[u8]) -> (u32, u32) {
    let attrs = request_attrs(msg);
    let (_, nest) = attrs.iter().find(|(t, _)| *t == attr::FILTER).unwrap();
    let mut flags = (None, None);
    for a in nl::attrs(nest) {
        let a = a.unwrap();
        match a.ty {
            flag::ORIG_FLAGS => flags.0 = Some(a.u32().unwrap()),
            flag::REPLY_FLAGS => flags.1 = Some(a.u32().unwrap()),
            other => panic!("unexpected filter attribute {other}"),
        }
    }
    (flags.0.unwrap(), flags.1.unwrap())
}

fn has(msg: &[u8], ty: u16) -> bool {
    request_attrs(msg).iter().any(|(t, _)| *t == ty)
}

#[test]
fn dump_filter_asks_the_kernel_only_what_it_compares_right() {
    let vip = Filter {
        orig_dst: Some(ip("10.96.0.10")),
        orig_dst_port: Some(53),
        ..Filter::new(Family::V4, Protocol::Udp)
    };
    let msg = wire::dump_request(&vip);
    assert_eq!(
        filter_flags(&msg),
        (flag::PROTO_NUM | flag::IP_DST | flag::PROTO_DST_PORT, 0)
    );
    assert!(has(&msg, attr::TUPLE_ORIG) && !has(&msg, attr::TUPLE_REPLY));
    // The original tuple nest holds exactly the destination address and the protocol and port,
    // encoded as in a lookup.
    assert_eq!(
        hex(&request_attrs(&msg)[0].1),
        "0c000180080002000a60000a1400028005000100110000000600030000350000"
    );

    let endpoint = Filter {
        reply_src: Some(ip("10.244.1.5")),
        reply_src_port: Some(5353),
        ..vip
    };
    assert_eq!(
        filter_flags(&wire::dump_request(&endpoint)),
        (
            flag::PROTO_NUM | flag::IP_DST | flag::PROTO_DST_PORT,
            flag::PROTO_NUM | flag::IP_SRC | flag::PROTO_SRC_PORT
        )
    );

    // IPv6: the kernel's address comparison is inverted, so only protocol and ports go.
    let v6 = Filter {
        orig_dst: Some(ip("fd00:96::10")),
        orig_dst_port: Some(53),
        reply_src: Some(ip("fd00:244::5")),
        reply_src_port: Some(5353),
        ..Filter::new(Family::V6, Protocol::Udp)
    };
    let msg = wire::dump_request(&v6);
    assert_eq!(msg[16], 10, "nfgenmsg family AF_INET6");
    assert_eq!(
        filter_flags(&msg),
        (
            flag::PROTO_NUM | flag::PROTO_DST_PORT,
            flag::PROTO_NUM | flag::PROTO_SRC_PORT
        )
    );
    let v6_addr_only = Filter {
        reply_src: Some(ip("fd00:244::5")),
        ..Filter::new(Family::V6, Protocol::Udp)
    };
    let msg = wire::dump_request(&v6_addr_only);
    assert_eq!(filter_flags(&msg), (flag::PROTO_NUM, 0));
    assert!(!has(&msg, attr::TUPLE_REPLY));

    // A bare filter still narrows by protocol in the kernel.
    assert_eq!(
        filter_flags(&wire::dump_request(&Filter::new(
            Family::V4,
            Protocol::Sctp
        ))),
        (flag::PROTO_NUM, 0)
    );
}

#[test]
fn lookups_by_tuple() {
    let cases = [
        (
            "conntrack/get-udp",
            Protocol::Udp,
            tuple("10.0.0.1", 40001, "10.96.0.10", 53),
        ),
        (
            "conntrack/get-udp-v6",
            Protocol::Udp,
            tuple("fd00::1", 40001, "fd00:96::10", 53),
        ),
        (
            "conntrack/get-tcp-v6",
            Protocol::Tcp,
            tuple("fd00::1", 40010, "fd00:96::10", 80),
        ),
        (
            "conntrack/get-sctp",
            Protocol::Sctp,
            tuple("10.0.0.1", 40030, "10.96.0.20", 9000),
        ),
    ];
    for (name, protocol, original) in cases {
        // With TCP the tool adds the TCP flags it would set (`CTA_PROTOINFO`); a lookup ignores
        // them, everything else is byte-exact.
        let theirs = normalise(&nth(&fixture(name), true, 0));
        assert_eq!(
            hex(&wire::get_request(protocol, &original, 0)),
            hex(&without_attrs(&theirs, &[attr::PROTOINFO])),
            "{name}"
        );
        assert_eq!(
            has(&theirs, attr::PROTOINFO),
            protocol == Protocol::Tcp,
            "{name}"
        );
        let reply = nth(&fixture(name), false, 0);
        let flow = wire::parse_flow(&reply).unwrap().unwrap();
        assert_eq!(
            (flow.protocol, flow.original),
            (protocol, original),
            "{name}"
        );
    }
    let flow = wire::parse_flow(&nth(&fixture("conntrack/get-tcp-v6"), false, 0))
        .unwrap()
        .unwrap();
    assert_eq!(flow.reply, tuple("fd00:244::5", 8080, "fd00::1", 40010));
    assert!(flow.status.contains(Status::DST_NAT | Status::CONFIRMED));
    assert!(!flow.status.contains(Status::SEEN_REPLY));

    let missing = tuple("10.0.0.1", 49999, "10.96.0.10", 53);
    assert_sent(
        "conntrack/get-missing",
        0,
        wire::get_request(Protocol::Udp, &missing, 0),
    );
    let err = Message::parse(&nth(&fixture("conntrack/get-missing"), false, 0))
        .unwrap()
        .error_status()
        .unwrap_err();
    assert_eq!(err.code(), Some(nix::errno::Errno::ENOENT as i32));
}

/// `CTA_SYNPROXY`, which libnetfilter_conntrack sends zeroed with SCTP and TCP flows.
const CTA_SYNPROXY: u16 = 24;

/// `conntrack -D` sends the whole flow it dumped; the kernel reads only the original tuple and
/// the zone (and `CTA_ID`, which the tool leaves out), so those parts must be byte-exact.
const IGNORED_BY_DELETE: [u16; 6] = [
    attr::TUPLE_REPLY,
    attr::STATUS,
    attr::PROTOINFO,
    attr::TIMEOUT,
    attr::MARK,
    CTA_SYNPROXY,
];

#[test]
fn deletions_by_tuple() {
    let cases = [
        (
            "conntrack/delete-udp",
            Protocol::Udp,
            tuple("10.0.0.1", 40002, "10.96.0.10", 53),
            0,
        ),
        (
            "conntrack/delete-zone",
            Protocol::Udp,
            tuple("10.0.0.1", 40020, "10.96.0.10", 53),
            7,
        ),
        (
            "conntrack/delete-sctp-v6",
            Protocol::Sctp,
            tuple("fd00::1", 40030, "fd00:96::20", 9000),
            0,
        ),
    ];
    for (name, protocol, original, zone) in cases {
        let f = fixture(name);
        // Datagram 0 is the dump, 1 the deletion of the one flow that matched.
        let theirs = normalise(&nth(&f, true, 1));
        assert_eq!(
            hex(&wire::delete_request(protocol, &original, zone, None)),
            hex(&without_attrs(&theirs, &IGNORED_BY_DELETE)),
            "{name}"
        );
        assert_eq!(has(&theirs, attr::ZONE), zone != 0, "{name}");
        // Its ACK follows the dumped flows.
        let ack = f.iter().filter(|d| !d.sent).nth(1).unwrap();
        let m = Message::parse(&ack.bytes).unwrap();
        assert_eq!(m.nlmsg_type, nl::NLMSG_ERROR, "{name}");
        assert!(m.error_status().is_ok(), "{name}");
    }
}

#[test]
fn deletion_by_id_appends_cta_id() {
    let original = tuple("10.0.0.1", 40002, "10.96.0.10", 53);
    let plain = wire::delete_request(Protocol::Udp, &original, 0, None);
    let with_id = wire::delete_request(Protocol::Udp, &original, 0, Some(0xcd51_0f64));
    assert_eq!(with_id.len(), plain.len() + 8);
    assert_eq!(hex(&with_id[4..plain.len()]), hex(&plain[4..]));
    assert_eq!(hex(&with_id[plain.len()..]), "08000c00cd510f64");
}

#[test]
fn other_protocols_and_bad_replies() {
    // An ICMP flow (echo request to 10.96.0.10), as the kernel dumps it: skipped.
    let mut b = nl::Builder::new(0x100, 0);
    b.header(&[2, 0, 0, 0]);
    for dir in [attr::TUPLE_ORIG, attr::TUPLE_REPLY] {
        b.begin_nest(dir)
            .begin_nest(1)
            .attr(1, &[10, 0, 0, 1])
            .attr(2, &[10, 96, 0, 10])
            .end_nest()
            .begin_nest(2)
            .u8(1, 1)
            .be16(4, 7)
            .u8(5, 8)
            .u8(6, 0)
            .end_nest()
            .end_nest();
    }
    assert_eq!(wire::parse_flow(&b.finish()).unwrap(), None);

    // A UDP tuple without ports is refused, not taken for port 0.
    let mut b = nl::Builder::new(0x100, 0);
    b.header(&[2, 0, 0, 0]);
    for dir in [attr::TUPLE_ORIG, attr::TUPLE_REPLY] {
        b.begin_nest(dir)
            .begin_nest(1)
            .attr(1, &[10, 0, 0, 1])
            .attr(2, &[10, 96, 0, 10])
            .end_nest()
            .begin_nest(2)
            .u8(1, 17)
            .end_nest()
            .end_nest();
    }
    let err = wire::parse_flow(&b.finish()).unwrap_err();
    assert!(
        err.to_string().contains("udp tuple without a source port"),
        "{err}"
    );

    // An ACK is not a flow.
    let ack = nth(&fixture("conntrack/delete-udp"), false, 1);
    assert!(wire::parse_flow(&split(&ack)[0]).is_err());
}

#[test]
fn filter_matches_what_conntrack_options_select() {
    let flows = dumped("conntrack/list-v4");
    let pick = |f: &Filter| -> BTreeSet<u16> {
        flows
            .iter()
            .filter(|x| f.matches(x))
            .map(|x| x.original.src_port)
            .collect()
    };
    let udp = Filter::new(Family::V4, Protocol::Udp);
    assert_eq!(pick(&udp), [40001, 40002, 40003, 40020].into());
    let vip = Filter {
        orig_dst: Some(ip("10.96.0.10")),
        orig_dst_port: Some(53),
        ..udp
    };
    assert_eq!(pick(&vip), [40001, 40002, 40003, 40020].into());
    assert_eq!(
        vip.to_string(),
        "-f ipv4 -p udp --orig-dst 10.96.0.10 --orig-port-dst 53"
    );
    let endpoint_a = Filter {
        reply_src: Some(ip("10.244.1.5")),
        reply_src_port: Some(5353),
        ..vip
    };
    assert_eq!(pick(&endpoint_a), [40001].into());
    assert_eq!(
        endpoint_a.to_string(),
        "-f ipv4 -p udp --orig-dst 10.96.0.10 --orig-port-dst 53 --reply-src 10.244.1.5 \
         --reply-port-src 5353"
    );
    // The endpoint's address alone also matches the TCP flow, but not under a UDP filter.
    let tcp_to_a = Filter {
        reply_src: Some(ip("10.244.1.5")),
        ..Filter::new(Family::V4, Protocol::Tcp)
    };
    assert_eq!(pick(&tcp_to_a), [40010].into());
    let sctp_port = Filter {
        orig_dst_port: Some(9000),
        ..Filter::new(Family::V4, Protocol::Sctp)
    };
    assert_eq!(pick(&sctp_port), [40030].into());
    let wrong_port = Filter {
        orig_dst_port: Some(9001),
        ..sctp_port
    };
    assert_eq!(pick(&wrong_port), BTreeSet::new());
    assert_eq!(
        pick(&Filter::new(Family::V6, Protocol::Udp)),
        BTreeSet::new()
    );
}

/// svc-proxy shares one handle between threads: it must stay `Send + Sync`.
const _: fn() = || {
    fn shareable<T: Send + Sync>() {}
    shareable::<nodenet::conntrack::Conntrack>();
};
