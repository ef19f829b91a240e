//! Kernel tests of `nodenet::ipset::Ipset`: root only, each in a private network namespace
//! (`unshare(CLONE_NEWNET)` on the test's own thread), checked against `ipset` itself.
//!
//! Run: `cargo test -p nodenet --test ipset_kernel` as root.

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use common::{private_netns, run};
use nodenet::ipset::{Entry, Error, Ipset, SetSpec, SetType};
use nodenet::Family;
use nodenet::Protocol;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The members `ipset save NAME` reports, as the strings it prints after `add NAME `.
fn saved(name: &str) -> BTreeSet<String> {
    run("ipset", &["save", name])
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("add {name} ")))
        .map(str::to_owned)
        .collect()
}

fn strings(entries: &[Entry]) -> BTreeSet<String> {
    entries.iter().map(ToString::to_string).collect()
}

#[test]
fn set_lifecycle_matches_ipset_tool() {
    private_netns();
    let ipset = Ipset::open().unwrap();
    assert_eq!(ipset.protocol(), 7);
    let spec = SetSpec {
        hashsize: Some(2048),
        maxelem: Some(1000),
        ..SetSpec::new("nlw-life", SetType::HashIp, Family::V4)
    };

    assert!(ipset.create(&spec).unwrap(), "first create creates");
    let header = run("ipset", &["list", "-t", "nlw-life"]);
    assert!(header.contains("Type: hash:ip"), "{header}");
    assert!(
        header.contains("Header: family inet hashsize 2048 maxelem 1000"),
        "{header}"
    );
    assert!(
        !ipset.create(&spec).unwrap(),
        "same type again is not an error"
    );
    let other = SetSpec::new("nlw-life", SetType::HashNet, Family::V4);
    assert!(matches!(
        ipset.create(&other),
        Err(Error::TypeMismatch { .. })
    ));
    let v6 = SetSpec::new("nlw-life", SetType::HashIp, Family::V6);
    assert!(matches!(ipset.create(&v6), Err(Error::TypeMismatch { .. })));

    let e = Entry::Ip(ip("10.0.0.11"));
    assert!(ipset.add("nlw-life", &e).unwrap());
    assert!(!ipset.add("nlw-life", &e).unwrap(), "a member already");
    assert_eq!(saved("nlw-life"), BTreeSet::from(["10.0.0.11".to_owned()]));
    assert!(ipset.test("nlw-life", &e).unwrap());
    assert!(!ipset.test("nlw-life", &Entry::Ip(ip("10.0.0.12"))).unwrap());
    assert_eq!(ipset.list("nlw-life").unwrap(), Some(vec![e]));

    let info = ipset.info("nlw-life").unwrap().unwrap();
    assert_eq!(
        (info.type_name.as_str(), info.family),
        ("hash:ip", Some(Family::V4))
    );

    assert!(ipset.del("nlw-life", &e).unwrap());
    assert!(!ipset.del("nlw-life", &e).unwrap(), "not a member any more");
    assert!(!ipset.test("nlw-life", &e).unwrap());
    assert_eq!(saved("nlw-life"), BTreeSet::new());

    ipset.add("nlw-life", &e).unwrap();
    ipset.flush("nlw-life").unwrap();
    assert_eq!(ipset.list("nlw-life").unwrap(), Some(vec![]));

    assert!(ipset.destroy("nlw-life").unwrap());
    assert!(!ipset.destroy("nlw-life").unwrap(), "gone already");
    assert_eq!(ipset.list("nlw-life").unwrap(), None);
    assert_eq!(ipset.info("nlw-life").unwrap(), None);
    let out = std::process::Command::new("ipset")
        .args(["list", "nlw-life"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "ipset still sees the set");
}

#[test]
fn set_types_and_families_round_trip() {
    private_netns();
    let ipset = Ipset::open().unwrap();
    let cases: Vec<(SetSpec, Vec<Entry>)> = vec![
        (
            SetSpec::new("nlw-ipi", SetType::HashIpPortIp, Family::V4),
            vec![
                Entry::IpPortIp {
                    ip: ip("10.0.0.11"),
                    proto: Protocol::Tcp,
                    port: 8080,
                    ip2: ip("10.0.0.11"),
                },
                Entry::IpPortIp {
                    ip: ip("10.0.0.21"),
                    proto: Protocol::Udp,
                    port: 53,
                    ip2: ip("10.0.0.21"),
                },
                Entry::IpPortIp {
                    ip: ip("10.0.0.31"),
                    proto: Protocol::Sctp,
                    port: 9000,
                    ip2: ip("10.0.0.31"),
                },
            ],
        ),
        (
            SetSpec::new("nlw-ipi6", SetType::HashIpPortIp, Family::V6),
            vec![Entry::IpPortIp {
                ip: ip("fd00::11"),
                proto: Protocol::Tcp,
                port: 443,
                ip2: ip("fd00::11"),
            }],
        ),
        (
            SetSpec::new("nlw-net", SetType::HashNet, Family::V4),
            vec![
                Entry::Net("10.0.0.0/24".parse().unwrap()),
                Entry::Net("192.168.7.5/32".parse().unwrap()),
            ],
        ),
        (
            SetSpec::new("nlw-net6", SetType::HashNet, Family::V6),
            vec![Entry::Net("2001:db8::/64".parse().unwrap())],
        ),
        (
            SetSpec::new("nlw-ip6", SetType::HashIp, Family::V6),
            vec![Entry::Ip(ip("fd00::1")), Entry::Ip(ip("2001:db8::2"))],
        ),
    ];
    for (spec, entries) in &cases {
        assert!(ipset.create(spec).unwrap(), "{}", spec.name);
        for e in entries {
            assert!(ipset.add(&spec.name, e).unwrap(), "{} {e}", spec.name);
            assert!(ipset.test(&spec.name, e).unwrap(), "{} {e}", spec.name);
        }
        // `ipset save` prints a /32 hash:net member without the prefix.
        let want: BTreeSet<String> = strings(entries)
            .into_iter()
            .map(|s| s.strip_suffix("/32").map(str::to_owned).unwrap_or(s))
            .collect();
        assert_eq!(saved(&spec.name), want, "{}", spec.name);
        let listed = ipset.list(&spec.name).unwrap().unwrap();
        assert_eq!(strings(&listed), strings(entries), "{}", spec.name);
    }
}

#[test]
fn refusals_carry_the_kernel_code() {
    private_netns();
    let ipset = Ipset::open().unwrap();
    let missing = ipset
        .add("nlw-none", &Entry::Ip(ip("10.0.0.1")))
        .unwrap_err();
    assert!(missing.is_not_found(), "{missing}");
    assert!(ipset.flush("nlw-none").unwrap_err().is_not_found());

    ipset
        .create(&SetSpec::new("nlw-v4", SetType::HashIp, Family::V4))
        .unwrap();
    // The kernel refuses an IPv6 member of an IPv4 set as a protocol error.
    let wrong = ipset.add("nlw-v4", &Entry::Ip(ip("fd00::1"))).unwrap_err();
    assert_eq!(
        wrong.code(),
        Some(nodenet::ipset::wire::errno::PROTOCOL),
        "{wrong}"
    );
    assert!(saved("nlw-v4").is_empty());

    let bad_name = ipset
        .create(&SetSpec::new("x".repeat(32), SetType::HashIp, Family::V4))
        .unwrap_err();
    assert!(matches!(bad_name, Error::Invalid(_)), "{bad_name}");
    let host_bits = ipset
        .add("nlw-v4", &Entry::Net("10.0.0.1/24".parse().unwrap()))
        .unwrap_err();
    assert!(matches!(host_bits, Error::Invalid(_)), "{host_bits}");
}

#[test]
fn referenced_set_is_busy() {
    private_netns();
    let ipset = Ipset::open().unwrap();
    ipset
        .create(&SetSpec::new("nlw-ref", SetType::HashNet, Family::V4))
        .unwrap();
    let rule = [
        "-w",
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-m",
        "set",
        "--match-set",
        "nlw-ref",
        "src",
        "-j",
        "MASQUERADE",
    ];
    run("iptables", &rule);
    let busy = ipset.destroy("nlw-ref").unwrap_err();
    assert!(busy.is_busy(), "{busy}");
    assert!(ipset.info("nlw-ref").unwrap().is_some());
    let mut delete = rule;
    delete[3] = "-D";
    run("iptables", &delete);
    assert!(ipset.destroy("nlw-ref").unwrap());
}

#[test]
fn bulk_add_and_delete_50000() {
    private_netns();
    let ipset = Ipset::open().unwrap();
    let spec = SetSpec {
        maxelem: Some(131072),
        ..SetSpec::new("nlw-bulk", SetType::HashIpPortIp, Family::V4)
    };
    ipset.create(&spec).unwrap();
    let entries: Vec<Entry> = (0..50_000u32)
        .map(|i| {
            let a = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            Entry::IpPortIp {
                ip: a,
                proto: Protocol::Tcp,
                port: 8080,
                ip2: a,
            }
        })
        .collect();

    let start = Instant::now();
    assert_eq!(ipset.add_many("nlw-bulk", &entries).unwrap(), 50_000);
    println!("50000 ipset adds (pipelined): {:?}", start.elapsed());

    // Adding again changes nothing and is not an error.
    assert_eq!(ipset.add_many("nlw-bulk", &entries[..1000]).unwrap(), 0);
    let header = run("ipset", &["list", "-t", "nlw-bulk"]);
    assert!(header.contains("Number of entries: 50000"), "{header}");

    let start = Instant::now();
    let (info, listed) = ipset.list_with_info("nlw-bulk").unwrap().unwrap();
    println!("listing 50000 members: {:?}", start.elapsed());
    assert_eq!(info.entries, 50_000);
    assert_eq!(strings(&listed), strings(&entries));

    let start = Instant::now();
    assert_eq!(
        ipset.del_many("nlw-bulk", &entries[..25_000]).unwrap(),
        25_000
    );
    println!("25000 ipset dels (pipelined): {:?}", start.elapsed());
    assert_eq!(ipset.del_many("nlw-bulk", &entries[..25_000]).unwrap(), 0);
    assert_eq!(saved("nlw-bulk").len(), 25_000);
    assert!(ipset.test("nlw-bulk", &entries[30_000]).unwrap());
    assert!(!ipset.test("nlw-bulk", &entries[10]).unwrap());

    // A batch holding an entry of another type is refused whole, naming it, before anything
    // is sent (a kernel refusal of a fitting entry is in `kernel_refusal_in_a_batch_...`).
    let mixed = vec![
        Entry::IpPortIp {
            ip: ip("10.9.9.9"),
            proto: Protocol::Tcp,
            port: 1,
            ip2: ip("10.9.9.9"),
        },
        Entry::Ip(ip("10.9.9.9")),
    ];
    let err = ipset.add_many("nlw-bulk", &mixed).unwrap_err();
    assert!(matches!(err, Error::EntryMismatch { .. }), "{err}");
    assert!(err.to_string().contains("nlw-bulk 10.9.9.9:"), "{err}");
    assert!(!ipset.test("nlw-bulk", &mixed[0]).unwrap());
    assert_eq!(saved("nlw-bulk").len(), 25_000);
}
