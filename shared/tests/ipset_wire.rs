//! Byte-exact tests of `nodenet::ipset::wire` against what `ipset` 7.17 sent and the kernel
//! replied (captured by `tests/fixtures/capture-ipset.sh`, see `tests/fixtures/README.md`).
//! No root needed.

mod common;

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
        wire::type_request(P, SetType::HashIp, Family::V4),
    );
    assert_sent(
        "ipset/create-hash-ipportip",
        1,
        wire::type_request(P, SetType::HashIpPortIp, Family::V4),
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
    assert_eq!(info.family, Family::V6);
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
        ("nlw-ip", "hash:ip", Family::V4)
    );
    assert_eq!(
        (info.hashsize, info.maxelem, info.entries),
        (1024, 65536, 1)
    );
    assert_eq!(entries, vec![Entry::Ip(ip("10.0.0.11"))]);

    let (_, entries) = wire::parse_list(&listing("ipset/list-hash-net")).unwrap();
    assert_eq!(entries, vec![Entry::Net("10.0.0.0/24".parse().unwrap())]);

    let (info, entries) = wire::parse_list(&listing("ipset/list-hash-net-v6")).unwrap();
    assert_eq!(info.family, Family::V6);
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

/// svc-proxy shares one handle between threads: both handles must stay `Send + Sync`.
const _: fn() = || {
    fn shareable<T: Send + Sync>() {}
    shareable::<nodenet::ipset::Ipset>();
    shareable::<nodenet::ipvs::Ipvs>();
};
