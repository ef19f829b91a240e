//! Byte-exact tests of `nodenet::ipset::wire` against what `ipset` 7.17 sent and the kernel
//! replied (captured by `tests/fixtures/capture-ipset.sh`, see `tests/fixtures/README.md`).
//! No root needed.

mod common;

use std::collections::HashSet;
use std::net::IpAddr;

use common::{fixture, hex, normalise, nth, split};
use nodenet::ipset::wire::{self, Adt};
use nodenet::ipset::{Entry, SetSpec, SetType};
use nodenet::nl::Message;
use nodenet::Family;
use nodenet::Protocol;

const P: u8 = 7;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Asserts that our encoding equals the `n`th datagram the tool sent in `name`.
fn assert_sent(name: &str, n: usize, ours: Vec<u8>) {
    let theirs = normalise(&nth(&fixture(name), true, n));
    assert_eq!(
        hex(&ours),
        hex(&theirs),
        "{name}: datagram #{n} differs from what ipset sent"
    );
}

/// The kernel's answer (ACK or error) to the `n`th request of `name`.
fn status(name: &str, n: usize) -> Result<(), nodenet::nl::Error> {
    Message::parse(&nth(&fixture(name), false, n))
        .unwrap()
        .error_status()
}

fn kernel_code(name: &str, n: usize) -> i32 {
    status(name, n)
        .expect_err("the capture holds an error here")
        .code()
        .expect("a kernel error")
}

/// The LIST reply messages of a captured `ipset list`, without the `NLMSG_DONE`.
fn listing(name: &str) -> Vec<Vec<u8>> {
    let f = fixture(name);
    f.iter()
        .filter(|d| !d.sent)
        .skip(1)
        .flat_map(|d| split(&d.bytes))
        .filter(|m| Message::parse(m).unwrap().nlmsg_type == (6 << 8) | 7)
        .collect()
}

#[test]
fn protocol_negotiation() {
    assert_sent("ipset/add-ip", 0, wire::protocol_request(P));
    let reply = nth(&fixture("ipset/add-ip"), false, 0);
    assert_eq!(wire::parse_protocol(&reply).unwrap(), (7, Some(6)));
}

#[test]
fn type_query_and_reply() {
    assert_sent(
        "ipset/create-hash-ip",
        1,
        wire::type_request(P, SetType::HashIp, Some(Family::V4)),
    );
    assert_sent(
        "ipset/create-hash-ipportip",
        1,
        wire::type_request(P, SetType::HashIpPortIp, Some(Family::V4)),
    );
    // This kernel: hash:ip revisions 0..=6, hash:net 0..=7, hash:ip,port,ip 0..=6.
    let rev = |name| wire::parse_type(&nth(&fixture(name), false, 1)).unwrap();
    assert_eq!(rev("ipset/create-hash-ip"), (6, 0));
    assert_eq!(rev("ipset/create-hash-net"), (7, 0));
    assert_eq!(rev("ipset/create-hash-ipportip"), (6, 0));
}

#[test]
fn create_requests() {
    let spec = SetSpec {
        hashsize: Some(1024),
        maxelem: Some(65536),
        ..SetSpec::new("nlw-ip", SetType::HashIp, Family::V4)
    };
    assert_sent(
        "ipset/create-hash-ip",
        2,
        wire::create_request(P, &spec, 6, true),
    );
    assert_sent(
        "ipset/create-hash-ip-exist-flag",
        2,
        wire::create_request(P, &spec, 6, false),
    );
    assert_sent(
        "ipset/create-hash-net",
        2,
        wire::create_request(
            P,
            &SetSpec::new("nlw-net", SetType::HashNet, Family::V4),
            7,
            true,
        ),
    );
    assert_sent(
        "ipset/create-hash-net-v6",
        2,
        wire::create_request(
            P,
            &SetSpec::new("nlw-net6", SetType::HashNet, Family::V6),
            7,
            true,
        ),
    );
    assert_sent(
        "ipset/create-hash-ipportip",
        2,
        wire::create_request(
            P,
            &SetSpec::new("nlw-ipi", SetType::HashIpPortIp, Family::V4),
            6,
            true,
        ),
    );
    assert_sent(
        "ipset/create-hash-ipportip-v6",
        2,
        wire::create_request(
            P,
            &SetSpec::new("nlw-ipi6", SetType::HashIpPortIp, Family::V6),
            6,
            true,
        ),
    );
}

#[test]
fn create_replies() {
    assert!(status("ipset/create-hash-ip", 2).is_ok());
    assert!(status("ipset/create-hash-ip-exist-flag", 2).is_ok());
    assert_eq!(kernel_code("ipset/create-hash-ip-exists", 2), libc_eexist());
}

fn libc_eexist() -> i32 {
    nix::errno::Errno::EEXIST as i32
}

fn libc_enoent() -> i32 {
    nix::errno::Errno::ENOENT as i32
}

#[test]
fn header_query_and_reply() {
    // `ipset add` asks for the set header before adding; we use the same query in `info`.
    assert_sent("ipset/add-ip", 1, wire::header_request(P, "nlw-ip"));
    let info = wire::parse_header(&nth(&fixture("ipset/add-ipportip-v6"), false, 1)).unwrap();
    assert_eq!(info.name, "nlw-ipi6");
    assert_eq!(info.type_name, "hash:ip,port,ip");
    assert_eq!(info.family, Some(Family::V6));
    assert_eq!(info.revision, 6);
}

#[test]
fn element_requests() {
    let e = Entry::Ip(ip("10.0.0.11"));
    assert_sent(
        "ipset/add-ip",
        2,
        wire::entry_request(P, Adt::Add, "nlw-ip", &e),
    );
    assert_sent(
        "ipset/del-ip",
        2,
        wire::entry_request(P, Adt::Del, "nlw-ip", &e),
    );
    assert_sent(
        "ipset/test-ip-member",
        2,
        wire::entry_request(P, Adt::Test, "nlw-ip", &e),
    );
    assert_sent(
        "ipset/test-ip-absent",
        2,
        wire::entry_request(P, Adt::Test, "nlw-ip", &Entry::Ip(ip("10.0.0.12"))),
    );
    assert_sent(
        "ipset/add-net",
        2,
        wire::entry_request(
            P,
            Adt::Add,
            "nlw-net",
            &Entry::Net("10.0.0.0/24".parse().unwrap()),
        ),
    );
    assert_sent(
        "ipset/add-net-v6",
        2,
        wire::entry_request(
            P,
            Adt::Add,
            "nlw-net6",
            &Entry::Net("2001:db8::/64".parse().unwrap()),
        ),
    );
    assert_sent(
        "ipset/add-ipportip",
        2,
        wire::entry_request(
            P,
            Adt::Add,
            "nlw-ipi",
            &Entry::IpPortIp {
                ip: ip("10.0.0.11"),
                proto: Protocol::Tcp,
                port: 8080,
                ip2: ip("10.0.0.11"),
            },
        ),
    );
    assert_sent(
        "ipset/add-ipportip-udp",
        2,
        wire::entry_request(
            P,
            Adt::Add,
            "nlw-ipi",
            &Entry::IpPortIp {
                ip: ip("10.0.0.21"),
                proto: Protocol::Udp,
                port: 53,
                ip2: ip("10.0.0.21"),
            },
        ),
    );
    assert_sent(
        "ipset/add-ipportip-v6",
        2,
        wire::entry_request(
            P,
            Adt::Add,
            "nlw-ipi6",
            &Entry::IpPortIp {
                ip: ip("fd00::11"),
                proto: Protocol::Sctp,
                port: 9000,
                ip2: ip("fd00::11"),
            },
        ),
    );
}

#[test]
fn element_replies() {
    assert!(status("ipset/add-ip", 2).is_ok());
    assert_eq!(kernel_code("ipset/add-ip-again", 2), wire::errno::EXIST);
    assert!(status("ipset/test-ip-member", 2).is_ok());
    assert_eq!(kernel_code("ipset/test-ip-absent", 2), wire::errno::EXIST);
    assert!(status("ipset/del-ip", 2).is_ok());
    assert_eq!(kernel_code("ipset/del-ip-absent", 2), wire::errno::EXIST);
}

#[test]
fn set_requests_and_replies() {
    assert_sent("ipset/flush", 1, wire::flush_request(P, "nlw-net"));
    assert!(status("ipset/flush", 1).is_ok());
    assert_sent("ipset/destroy", 1, wire::destroy_request(P, "nlw-net"));
    assert!(status("ipset/destroy", 1).is_ok());
    assert_sent(
        "ipset/destroy-missing",
        1,
        wire::destroy_request(P, "nlw-net"),
    );
    assert_eq!(kernel_code("ipset/destroy-missing", 1), libc_enoent());
    assert_sent(
        "ipset/list-missing",
        1,
        wire::list_request(P, "nlw-missing"),
    );
    assert_eq!(kernel_code("ipset/list-missing", 1), libc_enoent());
}

#[test]
fn list_requests_and_dumps() {
    assert_sent("ipset/list-hash-ip", 1, wire::list_request(P, "nlw-ip"));

    let (info, entries) = wire::parse_list(&listing("ipset/list-hash-ip")).unwrap();
    assert_eq!(
        (info.name.as_str(), info.type_name.as_str(), info.family),
        ("nlw-ip", "hash:ip", Some(Family::V4))
    );
    assert_eq!(
        (info.hashsize, info.maxelem, info.entries),
        (1024, 65536, 1)
    );
    assert_eq!(entries, vec![Entry::Ip(ip("10.0.0.11"))]);

    let (_, entries) = wire::parse_list(&listing("ipset/list-hash-net")).unwrap();
    assert_eq!(entries, vec![Entry::Net("10.0.0.0/24".parse().unwrap())]);

    let (info, entries) = wire::parse_list(&listing("ipset/list-hash-net-v6")).unwrap();
    assert_eq!(info.family, Some(Family::V6));
    assert_eq!(entries, vec![Entry::Net("2001:db8::/64".parse().unwrap())]);

    let (_, mut entries) = wire::parse_list(&listing("ipset/list-hash-ipportip")).unwrap();
    entries.sort_by_key(|e| e.to_string());
    assert_eq!(
        entries.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["10.0.0.11,tcp:8080,10.0.0.11", "10.0.0.21,udp:53,10.0.0.21"]
    );

    let (_, entries) = wire::parse_list(&listing("ipset/list-hash-ipportip-v6")).unwrap();
    assert_eq!(
        entries,
        vec![Entry::IpPortIp {
            ip: ip("fd00::11"),
            proto: Protocol::Sctp,
            port: 9000,
            ip2: ip("fd00::11"),
        }]
    );
}

#[test]
fn multi_part_dump() {
    let msgs = listing("ipset/list-big");
    assert!(msgs.len() > 1, "the capture should span several messages");
    let (info, entries) = wire::parse_list(&msgs).unwrap();
    assert_eq!(info.entries, 1500);
    let mut got: Vec<IpAddr> = entries
        .iter()
        .map(|e| match e {
            Entry::Ip(a) => *a,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    got.sort();
    let mut want: Vec<IpAddr> = (0..1500)
        .map(|i| IpAddr::from([10, 1, (i / 250) as u8, (i % 250 + 1) as u8]))
        .collect();
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn names_are_checked() {
    assert!(wire::check_name("KUBE-LOOP-BACK").is_ok());
    assert!(wire::check_name("").is_err());
    assert!(wire::check_name(&"x".repeat(32)).is_err());
    assert!(wire::check_name(&"x".repeat(31)).is_ok());
}

#[test]
fn entries_round_trip_through_the_encoding() {
    let entries = [
        (SetType::HashIp, Entry::Ip(ip("192.0.2.1"))),
        (SetType::HashIp, Entry::Ip(ip("2001:db8::1"))),
        (
            SetType::HashNet,
            Entry::Net("198.51.100.0/25".parse().unwrap()),
        ),
        (
            SetType::HashNet,
            Entry::Net("203.0.113.7/32".parse().unwrap()),
        ),
        (
            SetType::HashNet,
            Entry::Net("2001:db8:1::/48".parse().unwrap()),
        ),
        (
            SetType::HashIpPortIp,
            Entry::IpPortIp {
                ip: ip("10.0.0.11"),
                proto: Protocol::Udp,
                port: 65535,
                ip2: ip("10.0.0.12"),
            },
        ),
        (
            SetType::HashIpPortIp,
            Entry::IpPortIp {
                ip: ip("fd00::1"),
                proto: Protocol::Sctp,
                port: 0,
                ip2: ip("fd00::2"),
            },
        ),
        (
            SetType::HashIpPort,
            Entry::IpPort {
                ip: ip("10.96.0.10"),
                proto: Protocol::Udp,
                port: 53,
            },
        ),
        (
            SetType::HashIpPort,
            Entry::IpPort {
                ip: ip("fd00::10"),
                proto: Protocol::Sctp,
                port: 65535,
            },
        ),
        (
            SetType::HashIpPortNet,
            Entry::IpPortNet {
                ip: ip("192.0.2.10"),
                proto: Protocol::Tcp,
                port: 80,
                net: "198.51.100.0/24".parse().unwrap(),
            },
        ),
        (
            SetType::HashIpPortNet,
            Entry::IpPortNet {
                ip: ip("192.0.2.10"),
                proto: Protocol::Udp,
                port: 0,
                net: "203.0.113.7/32".parse().unwrap(),
            },
        ),
        (
            SetType::HashIpPortNet,
            Entry::IpPortNet {
                ip: ip("2001:db8::10"),
                proto: Protocol::Sctp,
                port: 9000,
                net: "2001:db8:1::5/128".parse().unwrap(),
            },
        ),
        (SetType::BitmapPort, Entry::Port(0)),
        (SetType::BitmapPort, Entry::Port(30080)),
        (SetType::BitmapPort, Entry::Port(65535)),
    ];
    for (kind, e) in entries {
        assert_eq!(e.set_type(), kind);
        for adt in [Adt::Add, Adt::Del, Adt::Test] {
            let msg = wire::entry_request(P, adt, "s", &e);
            let m = Message::parse(&msg).unwrap();
            let data = nodenet::nl::attrs(&m.payload[4..])
                .map(Result::unwrap)
                .find(|a| a.ty == 7)
                .expect("a DATA nest");
            assert_eq!(
                wire::parse_entry(kind, data.payload).unwrap(),
                e,
                "{adt:?} {e}"
            );
        }
    }
}

fn net(s: &str) -> ipnetwork::IpNetwork {
    s.parse().unwrap()
}

fn ip_port(a: &str, proto: Protocol, port: u16) -> Entry {
    Entry::IpPort {
        ip: ip(a),
        proto,
        port,
    }
}

fn ip_port_net(a: &str, proto: Protocol, port: u16, n: &str) -> Entry {
    Entry::IpPortNet {
        ip: ip(a),
        proto,
        port,
        net: net(n),
    }
}

/// The `DATA` nest of the `n`th request the tool sent in `name`, decoded as a member of `kind`.
fn sent_entry(name: &str, n: usize, kind: SetType) -> Entry {
    let msg = nth(&fixture(name), true, n);
    let m = Message::parse(&msg).unwrap();
    let data = nodenet::nl::attrs(&m.payload[4..])
        .map(Result::unwrap)
        .find(|a| a.ty == 7)
        .expect("a DATA nest");
    wire::parse_entry(kind, data.payload).unwrap()
}

#[test]
fn set_type_names() {
    for (kind, name) in [
        (SetType::HashIp, "hash:ip"),
        (SetType::HashNet, "hash:net"),
        (SetType::HashIpPort, "hash:ip,port"),
        (SetType::HashIpPortIp, "hash:ip,port,ip"),
        (SetType::HashIpPortNet, "hash:ip,port,net"),
        (SetType::BitmapPort, "bitmap:port"),
    ] {
        assert_eq!(kind.name(), name);
        assert_eq!(SetType::from_name(name), Some(kind));
        assert_eq!(kind.has_family(), kind != SetType::BitmapPort, "{name}");
    }
    assert_eq!(SetType::from_name("hash:net,port"), None);
}

#[test]
fn new_types_type_queries_and_replies() {
    assert_sent(
        "ipset/create-hash-ipport",
        1,
        wire::type_request(P, SetType::HashIpPort, Some(Family::V4)),
    );
    assert_sent(
        "ipset/create-hash-ipportnet",
        1,
        wire::type_request(P, SetType::HashIpPortNet, Some(Family::V4)),
    );
    // For an inet6 set ipset asks with family inet (it has not read `family inet6` yet); we
    // ask with the set's own family, the only byte that differs. The kernel's hash types
    // answer alike for both.
    for (name, kind) in [
        ("ipset/create-hash-ipport-v6", SetType::HashIpPort),
        ("ipset/create-hash-ipportnet-v6", SetType::HashIpPortNet),
        ("ipset/create-hash-ipportip-v6", SetType::HashIpPortIp),
        ("ipset/create-hash-net-v6", SetType::HashNet),
    ] {
        let mut theirs = normalise(&nth(&fixture(name), true, 1));
        let family = theirs.len() - 4;
        assert_eq!(theirs[family - 4..family + 1], [5, 0, 5, 0, 2], "{name}");
        theirs[family] = 10;
        assert_eq!(
            hex(&wire::type_request(P, kind, Some(Family::V6))),
            hex(&theirs),
            "{name}"
        );
    }
    // A bitmap:port has no family: ipset asks with NFPROTO_UNSPEC.
    assert_sent(
        "ipset/create-bitmap-port",
        1,
        wire::type_request(P, SetType::BitmapPort, None),
    );
    // This kernel: hash:ip,port revisions 0..=7, hash:ip,port,net 0..=8, bitmap:port 0..=3.
    let rev = |name| wire::parse_type(&nth(&fixture(name), false, 1)).unwrap();
    assert_eq!(rev("ipset/create-hash-ipport"), (7, 0));
    assert_eq!(rev("ipset/create-hash-ipport-v6"), (7, 0));
    assert_eq!(rev("ipset/create-hash-ipportnet"), (8, 0));
    assert_eq!(rev("ipset/create-hash-ipportnet-v6"), (8, 0));
    assert_eq!(rev("ipset/create-bitmap-port"), (3, 0));
}

#[test]
fn new_types_create_requests_and_replies() {
    let cases = [
        (
            "ipset/create-hash-ipport",
            SetSpec::new("nlw-ipp", SetType::HashIpPort, Family::V4),
            7,
        ),
        (
            "ipset/create-hash-ipport-v6",
            SetSpec::new("nlw-ipp6", SetType::HashIpPort, Family::V6),
            7,
        ),
        (
            "ipset/create-hash-ipportnet",
            SetSpec::new("nlw-ippn", SetType::HashIpPortNet, Family::V4),
            8,
        ),
        (
            "ipset/create-hash-ipportnet-v6",
            SetSpec::new("nlw-ippn6", SetType::HashIpPortNet, Family::V6),
            8,
        ),
        (
            "ipset/create-bitmap-port",
            SetSpec::port_bitmap("nlw-bmp", 0..=65535),
            3,
        ),
        (
            "ipset/create-bitmap-port-range",
            SetSpec::port_bitmap("nlw-bmpr", 30000..=32767),
            3,
        ),
        (
            "ipset/create-bitmap-port-exists",
            SetSpec::port_bitmap("nlw-bmpr", 0..=65535),
            3,
        ),
    ];
    for (name, spec, revision) in &cases {
        assert_sent(name, 2, wire::create_request(P, spec, *revision, true));
    }
    for (name, ..) in &cases[..6] {
        assert!(status(name, 2).is_ok(), "{name}");
    }
    assert_eq!(
        kernel_code("ipset/create-bitmap-port-exists", 2),
        libc_eexist()
    );
}

#[test]
fn new_types_header_replies() {
    // What `ipset add` asks first; a bitmap:port reports family NFPROTO_UNSPEC.
    assert_sent("ipset/add-port", 1, wire::header_request(P, "nlw-bmp"));
    let header = |name| wire::parse_header(&nth(&fixture(name), false, 1)).unwrap();
    let bmp = header("ipset/add-port");
    assert_eq!(
        (bmp.name.as_str(), bmp.type_name.as_str(), bmp.family),
        ("nlw-bmp", "bitmap:port", None)
    );
    assert_eq!((bmp.revision, &bmp.port_range), (3, &None));
    assert_eq!(bmp.set_type(), Some(SetType::BitmapPort));
    let ipp = header("ipset/add-ipport-v6");
    assert_eq!(
        (ipp.type_name.as_str(), ipp.family, ipp.revision),
        ("hash:ip,port", Some(Family::V6), 7)
    );
    assert_eq!(ipp.set_type(), Some(SetType::HashIpPort));
    let ippn = header("ipset/add-ipportnet");
    assert_eq!(
        (ippn.type_name.as_str(), ippn.family, ippn.revision),
        ("hash:ip,port,net", Some(Family::V4), 8)
    );
}

#[test]
fn new_types_element_requests() {
    let cases = [
        (
            "ipset/add-ipport",
            Adt::Add,
            "nlw-ipp",
            ip_port("10.96.0.10", Protocol::Udp, 53),
        ),
        (
            "ipset/add-ipport-tcp",
            Adt::Add,
            "nlw-ipp",
            ip_port("10.96.0.1", Protocol::Tcp, 443),
        ),
        (
            "ipset/add-ipport-sctp",
            Adt::Add,
            "nlw-ipp",
            ip_port("10.96.0.20", Protocol::Sctp, 9000),
        ),
        (
            "ipset/add-ipport-v6",
            Adt::Add,
            "nlw-ipp6",
            ip_port("fd00:10:96::a", Protocol::Tcp, 443),
        ),
        (
            "ipset/test-ipport-member",
            Adt::Test,
            "nlw-ipp",
            ip_port("10.96.0.10", Protocol::Udp, 53),
        ),
        (
            "ipset/test-ipport-absent",
            Adt::Test,
            "nlw-ipp",
            ip_port("10.96.0.10", Protocol::Tcp, 53),
        ),
        (
            "ipset/del-ipport",
            Adt::Del,
            "nlw-ipp",
            ip_port("10.96.0.1", Protocol::Tcp, 443),
        ),
        (
            "ipset/add-ipportnet",
            Adt::Add,
            "nlw-ippn",
            ip_port_net("192.0.2.10", Protocol::Tcp, 80, "198.51.100.0/24"),
        ),
        (
            "ipset/add-ipportnet-host",
            Adt::Add,
            "nlw-ippn",
            ip_port_net("192.0.2.10", Protocol::Udp, 53, "203.0.113.7/32"),
        ),
        (
            "ipset/add-ipportnet-v6",
            Adt::Add,
            "nlw-ippn6",
            ip_port_net("2001:db8::10", Protocol::Sctp, 9000, "2001:db8:1::/48"),
        ),
        (
            "ipset/test-ipportnet-member",
            Adt::Test,
            "nlw-ippn",
            ip_port_net("192.0.2.10", Protocol::Tcp, 80, "198.51.100.0/24"),
        ),
        (
            "ipset/test-ipportnet-absent",
            Adt::Test,
            "nlw-ippn",
            ip_port_net("192.0.2.10", Protocol::Tcp, 81, "198.51.100.0/24"),
        ),
        (
            "ipset/del-ipportnet",
            Adt::Del,
            "nlw-ippn",
            ip_port_net("192.0.2.10", Protocol::Tcp, 80, "198.51.100.0/24"),
        ),
        ("ipset/add-port", Adt::Add, "nlw-bmp", Entry::Port(30080)),
        (
            "ipset/add-port-first",
            Adt::Add,
            "nlw-bmpr",
            Entry::Port(30000),
        ),
        (
            "ipset/add-port-last",
            Adt::Add,
            "nlw-bmpr",
            Entry::Port(32767),
        ),
        (
            "ipset/test-port-member",
            Adt::Test,
            "nlw-bmp",
            Entry::Port(30080),
        ),
        (
            "ipset/test-port-absent",
            Adt::Test,
            "nlw-bmp",
            Entry::Port(30081),
        ),
        ("ipset/del-port", Adt::Del, "nlw-bmp", Entry::Port(30080)),
    ];
    for (name, adt, set, e) in &cases {
        assert_sent(name, 2, wire::entry_request(P, *adt, set, e));
        // The tool's own bytes decode to the same entry.
        assert_eq!(&sent_entry(name, 2, e.set_type()), e, "{name}");
    }
}

#[test]
fn host_network_with_and_without_its_prefix() {
    // `2001:db8:1::5` (no prefix): ipset leaves CIDR2 out and the kernel takes the host mask;
    // we always send the prefix, as ipset does for `203.0.113.7/32`. Both decode alike.
    let written = sent_entry("ipset/add-ipportnet-v6-host", 2, SetType::HashIpPortNet);
    assert_eq!(
        written,
        ip_port_net("2001:db8::10", Protocol::Tcp, 81, "2001:db8:1::5/128")
    );
    let ours = wire::entry_request(P, Adt::Add, "nlw-ippn6", &written);
    let theirs = normalise(&nth(&fixture("ipset/add-ipportnet-v6-host"), true, 2));
    assert_eq!(
        ours.len(),
        theirs.len() + 8,
        "ours adds one CIDR2 attribute"
    );
    // The listing proves the kernel stored both the same way: as /128 with CIDR2 128.
    let (_, entries) = wire::parse_list(&listing("ipset/list-hash-ipportnet-v6")).unwrap();
    assert!(entries.contains(&written), "{entries:?}");
}

#[test]
fn new_types_element_replies() {
    for name in [
        "ipset/add-ipport",
        "ipset/add-ipport-v6",
        "ipset/test-ipport-member",
        "ipset/del-ipport",
        "ipset/add-ipportnet",
        "ipset/add-ipportnet-host",
        "ipset/add-ipportnet-v6",
        "ipset/add-ipportnet-v6-host",
        "ipset/test-ipportnet-member",
        "ipset/del-ipportnet",
        "ipset/add-port",
        "ipset/add-port-first",
        "ipset/add-port-last",
        "ipset/test-port-member",
        "ipset/del-port",
    ] {
        assert!(status(name, 2).is_ok(), "{name}: {:?}", status(name, 2));
    }
    for name in [
        "ipset/add-ipport-again",
        "ipset/test-ipport-absent",
        "ipset/test-ipportnet-absent",
        "ipset/add-port-again",
        "ipset/test-port-absent",
        "ipset/del-port-absent",
    ] {
        assert_eq!(kernel_code(name, 2), wire::errno::EXIST, "{name}");
    }
    // A host tested against a set of networks matches the member network holding it.
    assert!(status("ipset/test-ipportnet-inside", 2).is_ok());
    // A port outside a bitmap's range: the bitmap's first private code.
    assert_eq!(
        kernel_code("ipset/add-port-out-of-range", 2),
        wire::errno::TYPE_SPECIFIC
    );
}

#[test]
fn new_types_list_dumps() {
    assert_sent(
        "ipset/list-hash-ipport",
        1,
        wire::list_request(P, "nlw-ipp"),
    );
    let (info, entries) = wire::parse_list(&listing("ipset/list-hash-ipport")).unwrap();
    assert_eq!(
        (info.name.as_str(), info.type_name.as_str(), info.family),
        ("nlw-ipp", "hash:ip,port", Some(Family::V4))
    );
    assert_eq!(
        (info.revision, info.hashsize, info.maxelem, info.entries),
        (7, 1024, 65536, 3)
    );
    assert_eq!(info.port_range, None);
    let mut got: Vec<String> = entries.iter().map(ToString::to_string).collect();
    got.sort();
    assert_eq!(
        got,
        [
            "10.96.0.1,tcp:443",
            "10.96.0.10,udp:53",
            "10.96.0.20,sctp:9000"
        ]
    );

    let (info, entries) = wire::parse_list(&listing("ipset/list-hash-ipport-v6")).unwrap();
    assert_eq!(info.family, Some(Family::V6));
    assert_eq!(entries, [ip_port("fd00:10:96::a", Protocol::Tcp, 443)]);

    let (info, mut entries) = wire::parse_list(&listing("ipset/list-hash-ipportnet")).unwrap();
    assert_eq!(
        (info.type_name.as_str(), info.family, info.entries),
        ("hash:ip,port,net", Some(Family::V4), 2)
    );
    entries.sort_by_key(ToString::to_string);
    assert_eq!(
        entries,
        [
            ip_port_net("192.0.2.10", Protocol::Tcp, 80, "198.51.100.0/24"),
            ip_port_net("192.0.2.10", Protocol::Udp, 53, "203.0.113.7/32"),
        ]
    );

    let (info, mut entries) = wire::parse_list(&listing("ipset/list-hash-ipportnet-v6")).unwrap();
    assert_eq!(info.family, Some(Family::V6));
    entries.sort_by_key(ToString::to_string);
    assert_eq!(
        entries,
        [
            ip_port_net("2001:db8::10", Protocol::Sctp, 9000, "2001:db8:1::/48"),
            ip_port_net("2001:db8::10", Protocol::Tcp, 81, "2001:db8:1::5/128"),
        ]
    );

    let (info, entries) = wire::parse_list(&listing("ipset/list-bitmap-port")).unwrap();
    assert_eq!(
        (info.name.as_str(), info.type_name.as_str(), info.family),
        ("nlw-bmp", "bitmap:port", None)
    );
    assert_eq!((info.revision, info.entries), (3, 1));
    assert_eq!((info.hashsize, info.maxelem), (0, 0));
    assert_eq!(info.port_range, Some(0..=65535));
    assert_eq!(entries, [Entry::Port(30080)]);

    let (info, entries) = wire::parse_list(&listing("ipset/list-bitmap-port-range")).unwrap();
    assert_eq!(info.port_range, Some(30000..=32767));
    assert_eq!(entries, [Entry::Port(30000), Entry::Port(32767)]);
}

#[test]
fn header_only_listing_of_a_bitmap() {
    assert_sent(
        "ipset/list-header-bitmap-port-range",
        1,
        wire::list_header_request(P, "nlw-bmpr"),
    );
    let msgs = listing("ipset/list-header-bitmap-port-range");
    let info = wire::parse_list_header(&msgs).unwrap();
    assert_eq!(
        (info.type_name.as_str(), info.family, info.port_range),
        ("bitmap:port", None, Some(30000..=32767))
    );
    assert_eq!((info.entries, info.references), (2, 0));
    // A header-only listing carries no members.
    assert_eq!(wire::parse_list(&msgs).unwrap().1, []);
}

#[test]
fn new_types_multi_part_dumps() {
    let msgs = listing("ipset/list-big-ipport");
    assert!(msgs.len() > 1, "the capture should span several messages");
    let (info, entries) = wire::parse_list(&msgs).unwrap();
    assert_eq!(
        (info.type_name.as_str(), info.entries),
        ("hash:ip,port", 1500)
    );
    let got: HashSet<Entry> = entries.iter().copied().collect();
    assert_eq!(got.len(), 1500, "no member twice");
    let want: HashSet<Entry> = (0..1500u16)
        .map(|i| Entry::IpPort {
            ip: IpAddr::from([10, 2, (i / 250) as u8, (i % 250 + 1) as u8]),
            proto: Protocol::Tcp,
            port: i % 7 + 8080,
        })
        .collect();
    assert_eq!(got, want);

    let msgs = listing("ipset/list-big-bitmap-port");
    assert!(msgs.len() > 1, "the capture should span several messages");
    let (info, entries) = wire::parse_list(&msgs).unwrap();
    assert_eq!(
        (info.type_name.as_str(), info.entries, info.port_range),
        ("bitmap:port", 2000, Some(0..=65535))
    );
    // A bitmap lists in port order.
    let want: Vec<Entry> = (30000..32000).map(Entry::Port).collect();
    assert_eq!(entries, want);
}

#[test]
fn listing_of_an_unknown_type_is_refused_but_its_header_reads() {
    // A captured hash:ip listing with its type name rewritten to one we do not decode.
    let msgs: Vec<Vec<u8>> = listing("ipset/list-hash-ip")
        .into_iter()
        .map(|m| {
            let at = m.windows(8).position(|w| w == b"hash:ip\0").unwrap();
            let mut m = m;
            m[at..at + 7].copy_from_slice(b"hash:xx");
            m
        })
        .collect();
    let info = wire::parse_list_header(&msgs).unwrap();
    assert_eq!(
        (info.type_name.as_str(), info.set_type()),
        ("hash:xx", None)
    );
    let err = wire::parse_list(&msgs).unwrap_err();
    assert!(err.to_string().contains("hash:xx"), "{err}");
}

#[test]
fn entries_print_as_ipset_does() {
    assert_eq!(
        ip_port("10.96.0.10", Protocol::Udp, 53).to_string(),
        "10.96.0.10,udp:53"
    );
    assert_eq!(
        ip_port("fd00::a", Protocol::Sctp, 9).to_string(),
        "fd00::a,sctp:9"
    );
    assert_eq!(
        ip_port_net("192.0.2.10", Protocol::Tcp, 80, "198.51.100.0/24").to_string(),
        "192.0.2.10,tcp:80,198.51.100.0/24"
    );
    assert_eq!(Entry::Port(30080).to_string(), "30080");
    assert_eq!(Entry::Port(30080).family(), None);
    assert_eq!(
        ip_port("fd00::a", Protocol::Tcp, 1).family(),
        Some(Family::V6)
    );
    assert_eq!(
        ip_port_net("192.0.2.10", Protocol::Tcp, 80, "198.51.100.0/24").set_type(),
        SetType::HashIpPortNet
    );
}

/// svc-proxy shares one handle between threads: both handles must stay `Send + Sync`.
const _: fn() = || {
    fn shareable<T: Send + Sync>() {}
    shareable::<nodenet::ipset::Ipset>();
    shareable::<nodenet::ipvs::Ipvs>();
};
