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

/// `ipset save` prints a host network without its prefix; our entries keep it.
fn as_saved(entries: &[Entry]) -> BTreeSet<String> {
    strings(entries)
        .into_iter()
        .map(|s| {
            s.strip_suffix("/32")
                .or_else(|| s.strip_suffix("/128"))
                .map(str::to_owned)
                .unwrap_or(s)
        })
        .collect()
}

/// The `ipset list -t NAME` header, as the tool prints it.
fn tool_header(name: &str) -> String {
    run("ipset", &["list", "-t", name])
}

/// `count` distinct `hash:ip,port` members of `family`, all three protocols.
fn ip_ports(family: Family, count: u32) -> Vec<Entry> {
    let protos = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];
    (0..count)
        .map(|i| {
            let host = i / 3;
            let ip = match family {
                Family::V4 => IpAddr::from(Ipv4Addr::from(0x0a60_0000 + host)),
                Family::V6 => IpAddr::from(std::net::Ipv6Addr::from(
                    0xfd00_0010_0096_0000_0000_0000_0000_0000u128 + u128::from(host),
                )),
            };
            Entry::IpPort {
                ip,
                proto: protos[(i % 3) as usize],
                port: (i % 50_000) as u16 + 1,
            }
        })
        .collect()
}

#[test]
fn ip_port_sets_round_trip_in_both_families() {
    private_netns();
    let ipset = Ipset::open().unwrap();
    for (family, name) in [(Family::V4, "nlw-ipp"), (Family::V6, "nlw-ipp6")] {
        let spec = SetSpec {
            hashsize: Some(4096),
            maxelem: Some(100_000),
            ..SetSpec::new(name, SetType::HashIpPort, family)
        };
        assert!(ipset.create(&spec).unwrap(), "{name}");
        assert!(!ipset.create(&spec).unwrap(), "{name}: same kind again");
        let header = tool_header(name);
        assert!(header.contains("Type: hash:ip,port\n"), "{header}");
        assert!(
            header.contains(&format!(
                "Header: family {} hashsize 4096 maxelem 100000",
                family.as_str()
            )),
            "{header}"
        );

        let entries = ip_ports(family, 6000);
        let start = Instant::now();
        assert_eq!(ipset.add_many(name, &entries).unwrap(), 6000, "{name}");
        println!("{name}: 6000 adds (pipelined): {:?}", start.elapsed());
        assert_eq!(ipset.add_many(name, &entries).unwrap(), 0, "{name}: again");
        let (info, listed) = ipset.list_with_info(name).unwrap().unwrap();
        assert_eq!(
            (info.set_type(), info.family, info.entries),
            (Some(SetType::HashIpPort), Some(family), 6000)
        );
        assert_eq!(listed.len(), 6000, "{name}: no member twice");
        assert_eq!(strings(&listed), strings(&entries), "{name}");
        assert_eq!(
            saved(name),
            strings(&entries),
            "{name}: ipset sees the same"
        );

        let member = entries[1];
        let Entry::IpPort { ip, port, .. } = member else {
            unreachable!()
        };
        assert!(ipset.test(name, &member).unwrap());
        // Same address and port, another protocol: not a member.
        let other = Entry::IpPort {
            ip,
            proto: Protocol::Sctp,
            port,
        };
        assert!(!entries.contains(&other));
        assert!(!ipset.test(name, &other).unwrap(), "{name} {other}");

        let start = Instant::now();
        assert_eq!(ipset.del_many(name, &entries[..3000]).unwrap(), 3000);
        println!("{name}: 3000 dels (pipelined): {:?}", start.elapsed());
        assert_eq!(ipset.del_many(name, &entries[..3000]).unwrap(), 0);
        assert!(!ipset.test(name, &member).unwrap());
        assert!(ipset.test(name, &entries[5999]).unwrap());
        assert!(ipset.del(name, &entries[5999]).unwrap());
        assert!(!ipset.del(name, &entries[5999]).unwrap());
        assert!(ipset.add(name, &entries[5999]).unwrap());
        let listed = ipset.list(name).unwrap().unwrap();
        assert_eq!(strings(&listed), strings(&entries[3000..]), "{name}");
        assert_eq!(saved(name), strings(&entries[3000..]), "{name}");
    }
}

#[test]
fn ip_port_net_sets_round_trip_in_both_families() {
    private_netns();
    let ipset = Ipset::open().unwrap();
    let mut v4: Vec<Entry> = (0..4000u32)
        .map(|i| Entry::IpPortNet {
            ip: IpAddr::from(Ipv4Addr::from(0xc000_0200 + i / 40)),
            proto: [Protocol::Tcp, Protocol::Udp][(i % 2) as usize],
            port: 80 + (i % 4) as u16,
            // Prefixes /8 to /24 and hosts (/32), networks holding 198.18.x.7.
            net: {
                let prefix = 8 + (i % 10) as u8 * 2 + u8::from(i % 10 == 9) * 6;
                let base = Ipv4Addr::from(0xc612_0000u32 + (i / 10) * 256 + 7);
                ipnetwork::Ipv4Network::new(base, prefix)
                    .map(|n| ipnetwork::Ipv4Network::new(n.network(), prefix).unwrap())
                    .unwrap()
                    .into()
            },
        })
        .collect();
    let mut v6: Vec<Entry> = (0..3000u32)
        .map(|i| Entry::IpPortNet {
            ip: ip("2001:db8::10"),
            proto: Protocol::Sctp,
            port: 9000 + (i % 3) as u16,
            net: {
                let prefix = [48u8, 64, 128][(i % 3) as usize];
                let base = std::net::Ipv6Addr::from(
                    0x2001_0db8_0001_0000_0000_0000_0000_0005u128 + (u128::from(i) << 80),
                );
                let n = ipnetwork::Ipv6Network::new(base, prefix).unwrap();
                ipnetwork::Ipv6Network::new(n.network(), prefix)
                    .unwrap()
                    .into()
            },
        })
        .collect();
    // Masking to the shorter prefixes makes some alike: keep the first of each.
    for entries in [&mut v4, &mut v6] {
        let mut seen = std::collections::HashSet::new();
        entries.retain(|e| seen.insert(*e));
    }
    for (family, name, entries) in [(Family::V4, "nlw-ippn", v4), (Family::V6, "nlw-ippn6", v6)] {
        let spec = SetSpec::new(name, SetType::HashIpPortNet, family);
        assert!(ipset.create(&spec).unwrap(), "{name}");
        assert!(!ipset.create(&spec).unwrap(), "{name}");
        let header = tool_header(name);
        assert!(header.contains("Type: hash:ip,port,net\n"), "{header}");
        assert!(
            header.contains(&format!("family {}", family.as_str())),
            "{header}"
        );
        let n = entries.len();
        assert!(n > 1000, "{name}: {n} distinct entries");
        assert_eq!(ipset.add_many(name, &entries).unwrap(), n, "{name}");
        let (info, listed) = ipset.list_with_info(name).unwrap().unwrap();
        assert_eq!(
            (info.set_type(), info.family, info.entries as usize),
            (Some(SetType::HashIpPortNet), Some(family), n)
        );
        assert_eq!(strings(&listed), strings(&entries), "{name}");
        assert_eq!(
            saved(name),
            as_saved(&entries),
            "{name}: ipset sees the same"
        );
        for e in &entries[..50] {
            assert!(ipset.test(name, e).unwrap(), "{name} {e}");
        }
        assert_eq!(ipset.del_many(name, &entries[..n / 2]).unwrap(), n / 2);
        assert_eq!(
            strings(&ipset.list(name).unwrap().unwrap()),
            strings(&entries[n / 2..])
        );
        assert_eq!(saved(name), as_saved(&entries[n / 2..]), "{name}");
    }

    // Membership in a set of networks: a host inside a member network tests true (as `ipset
    // test` says), a narrower network than the member's does not, and neither is a member
    // that `del` could remove.
    ipset.flush("nlw-ippn").unwrap();
    let member = Entry::IpPortNet {
        ip: ip("192.0.2.10"),
        proto: Protocol::Tcp,
        port: 80,
        net: "198.51.100.0/24".parse().unwrap(),
    };
    assert!(ipset.add("nlw-ippn", &member).unwrap());
    let with_net = |net: &str| Entry::IpPortNet {
        ip: ip("192.0.2.10"),
        proto: Protocol::Tcp,
        port: 80,
        net: net.parse().unwrap(),
    };
    assert!(ipset
        .test("nlw-ippn", &with_net("198.51.100.7/32"))
        .unwrap());
    assert!(!ipset
        .test("nlw-ippn", &with_net("198.51.100.0/25"))
        .unwrap());
    assert!(!ipset
        .test("nlw-ippn", &with_net("198.51.101.7/32"))
        .unwrap());
    assert!(!ipset.del("nlw-ippn", &with_net("198.51.100.7/32")).unwrap());
    assert_eq!(ipset.list("nlw-ippn").unwrap().unwrap(), [member]);

    // Host bits set would be masked by the kernel: refused before sending, nothing changes.
    let host_bits = ipset
        .add("nlw-ippn", &with_net("198.51.100.7/24"))
        .unwrap_err();
    assert!(matches!(host_bits, Error::Invalid(_)), "{host_bits}");
    assert!(
        host_bits.to_string().contains("198.51.100.0/24"),
        "{host_bits}"
    );
    let mixed = Entry::IpPortNet {
        ip: ip("192.0.2.10"),
        proto: Protocol::Tcp,
        port: 80,
        net: "2001:db8::/64".parse().unwrap(),
    };
    let mixed_err = ipset.add_many("nlw-ippn", &[member, mixed]).unwrap_err();
    assert!(matches!(mixed_err, Error::Invalid(_)), "{mixed_err}");
    assert_eq!(saved("nlw-ippn"), as_saved(&[member]));
}

#[test]
fn port_bitmap_round_trip() {
    private_netns();
    let ipset = Ipset::open().unwrap();
    let spec = SetSpec::port_bitmap("nlw-bmp", 0..=65535);
    assert!(ipset.create(&spec).unwrap());
    assert!(!ipset.create(&spec).unwrap(), "same range again");
    let header = tool_header("nlw-bmp");
    assert!(header.contains("Type: bitmap:port\n"), "{header}");
    assert!(header.contains("Header: range 0-65535\n"), "{header}");
    let info = ipset.header("nlw-bmp").unwrap().unwrap();
    assert_eq!(
        (info.set_type(), info.family, info.port_range),
        (Some(SetType::BitmapPort), None, Some(0..=65535))
    );

    // Every port there is: 65536 requests in one pipelined call.
    let all: Vec<Entry> = (0..=65535u16).map(Entry::Port).collect();
    let start = Instant::now();
    assert_eq!(ipset.add_many("nlw-bmp", &all).unwrap(), 65536);
    println!("65536 bitmap:port adds (pipelined): {:?}", start.elapsed());
    assert_eq!(ipset.add_many("nlw-bmp", &all[..1000]).unwrap(), 0);
    let (info, listed) = ipset.list_with_info("nlw-bmp").unwrap().unwrap();
    assert_eq!(info.entries, 65536);
    assert_eq!(listed, all, "a bitmap lists in port order");
    assert_eq!(saved("nlw-bmp").len(), 65536);

    // Keep the NodePort range only.
    let (below, rest) = all.split_at(30000);
    let (node_ports, above) = rest.split_at(2768);
    assert_eq!(ipset.del_many("nlw-bmp", below).unwrap(), 30000);
    assert_eq!(ipset.del_many("nlw-bmp", above).unwrap(), 65536 - 32768);
    assert_eq!(ipset.list("nlw-bmp").unwrap().unwrap(), node_ports);
    assert_eq!(saved("nlw-bmp"), strings(node_ports), "ipset sees the same");
    assert!(ipset.test("nlw-bmp", &Entry::Port(30080)).unwrap());
    assert!(!ipset.test("nlw-bmp", &Entry::Port(80)).unwrap());
    assert!(ipset.del("nlw-bmp", &Entry::Port(30080)).unwrap());
    assert!(!ipset.del("nlw-bmp", &Entry::Port(30080)).unwrap());
    assert!(!ipset.test("nlw-bmp", &Entry::Port(30080)).unwrap());
    assert!(ipset.add("nlw-bmp", &Entry::Port(30080)).unwrap());
    assert!(!ipset.add("nlw-bmp", &Entry::Port(30080)).unwrap());

    // Same type, another range: not the set asked for.
    let narrow = SetSpec::port_bitmap("nlw-bmp", 30000..=32767);
    let err = ipset.create(&narrow).unwrap_err();
    assert!(matches!(err, Error::TypeMismatch { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "ipset nlw-bmp: exists as bitmap:port range 0-65535, not bitmap:port range 30000-32767"
    );

    // Outside a narrower set's range: refused with the range named, by add, del, test and
    // a batch alike, and the batch changes nothing.
    assert!(ipset
        .create(&SetSpec::port_bitmap("nlw-bmpr", 30000..=32767))
        .unwrap());
    assert!(ipset.add("nlw-bmpr", &Entry::Port(30000)).unwrap());
    assert!(ipset.add("nlw-bmpr", &Entry::Port(32767)).unwrap());
    let outside = "port 80 is outside the set's range 30000-32767";
    for (op, r) in [
        ("add", ipset.add("nlw-bmpr", &Entry::Port(80))),
        ("del", ipset.del("nlw-bmpr", &Entry::Port(80))),
        ("test", ipset.test("nlw-bmpr", &Entry::Port(80))),
        (
            "add",
            ipset
                .add_many("nlw-bmpr", &[Entry::Port(31000), Entry::Port(80)])
                .map(|_| true),
        ),
    ] {
        let err = r.unwrap_err();
        assert!(matches!(err, Error::EntryMismatch { .. }), "{op}: {err}");
        assert_eq!(err.code(), Some(nodenet::ipset::wire::errno::TYPE_SPECIFIC));
        assert_eq!(
            err.to_string(),
            format!("ipset {op} nlw-bmpr 80: {outside} (code 4352)")
        );
    }
    assert_eq!(
        saved("nlw-bmpr"),
        BTreeSet::from(["30000".to_owned(), "32767".to_owned()])
    );
}

#[test]
fn create_is_idempotent_and_names_both_kinds() {
    private_netns();
    let ipset = Ipset::open().unwrap();
    let specs = [
        SetSpec::new("s", SetType::HashIp, Family::V4),
        SetSpec::new("s", SetType::HashIpPort, Family::V4),
        SetSpec::new("s", SetType::HashIpPort, Family::V6),
        SetSpec::new("s", SetType::HashIpPortIp, Family::V4),
        SetSpec::new("s", SetType::HashIpPortNet, Family::V4),
        SetSpec::new("s", SetType::HashIpPortNet, Family::V6),
        SetSpec::port_bitmap("s", 0..=65535),
    ];
    let kind = |s: &SetSpec| match s.family {
        Some(f) => format!("{} family {}", s.kind, f.as_str()),
        None => format!("{} range 0-65535", s.kind),
    };
    for existing in &specs {
        assert!(ipset.create(existing).unwrap(), "{}", kind(existing));
        assert!(!ipset.create(existing).unwrap(), "{}", kind(existing));
        for wanted in specs.iter().filter(|w| *w != existing) {
            let err = ipset.create(wanted).unwrap_err();
            assert!(matches!(err, Error::TypeMismatch { .. }), "{err}");
            assert_eq!(
                err.to_string(),
                format!(
                    "ipset s: exists as {}, not {}",
                    kind(existing),
                    kind(wanted)
                )
            );
        }
        // The set found was left as it was.
        let header = tool_header("s");
        assert!(
            header.contains(&format!("Type: {}\n", existing.kind)),
            "{header}"
        );
        assert!(ipset.destroy("s").unwrap());
    }
}

#[test]
fn sets_made_by_the_tool_report_type_family_and_range() {
    private_netns();
    let ipset = Ipset::open().unwrap();
    let script = "\
create KUBE-6-CLUSTER-IP hash:ip,port family inet6
add KUBE-6-CLUSTER-IP fd00:10:96::a,udp:53
add KUBE-6-CLUSTER-IP fd00:10:96::a,tcp:53
create KUBE-NODE-PORT-TCP bitmap:port range 30000-32767
add KUBE-NODE-PORT-TCP 30080
create KUBE-LOAD-BALANCER-SOURCE-CIDR hash:ip,port,net
add KUBE-LOAD-BALANCER-SOURCE-CIDR 192.0.2.10,tcp:80,198.51.100.0/24
add KUBE-LOAD-BALANCER-SOURCE-CIDR 192.0.2.10,tcp:80,203.0.113.7
create NOT-OURS hash:net,port
add NOT-OURS 10.0.0.0/24,tcp:80
";
    let mut restore = std::process::Command::new("ipset")
        .arg("restore")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(restore.stdin.as_mut().unwrap(), script.as_bytes()).unwrap();
    assert!(restore.wait().unwrap().success());

    let (info, entries) = ipset.list_with_info("KUBE-6-CLUSTER-IP").unwrap().unwrap();
    assert_eq!(
        (info.set_type(), info.family, info.entries),
        (Some(SetType::HashIpPort), Some(Family::V6), 2)
    );
    assert_eq!(
        strings(&entries),
        BTreeSet::from([
            "fd00:10:96::a,tcp:53".to_owned(),
            "fd00:10:96::a,udp:53".to_owned()
        ])
    );
    let (info, entries) = ipset.list_with_info("KUBE-NODE-PORT-TCP").unwrap().unwrap();
    assert_eq!(
        (info.set_type(), info.family, info.port_range),
        (Some(SetType::BitmapPort), None, Some(30000..=32767))
    );
    assert_eq!(entries, [Entry::Port(30080)]);
    let info = ipset.info("KUBE-NODE-PORT-TCP").unwrap().unwrap();
    assert_eq!(
        (info.set_type(), info.family),
        (Some(SetType::BitmapPort), None)
    );
    let (info, entries) = ipset
        .list_with_info("KUBE-LOAD-BALANCER-SOURCE-CIDR")
        .unwrap()
        .unwrap();
    assert_eq!(
        (info.set_type(), info.family),
        (Some(SetType::HashIpPortNet), Some(Family::V4))
    );
    assert_eq!(
        strings(&entries),
        BTreeSet::from([
            "192.0.2.10,tcp:80,198.51.100.0/24".to_owned(),
            "192.0.2.10,tcp:80,203.0.113.7/32".to_owned()
        ])
    );
    // What svc-proxy checks before adopting a set it finds under its name.
    let wanted = SetSpec::new("KUBE-6-CLUSTER-IP", SetType::HashIpPort, Family::V4);
    let err = ipset.create(&wanted).unwrap_err();
    assert_eq!(
        err.to_string(),
        "ipset KUBE-6-CLUSTER-IP: exists as hash:ip,port family inet6, not hash:ip,port family inet"
    );
    assert!(!ipset
        .create(&SetSpec::port_bitmap("KUBE-NODE-PORT-TCP", 30000..=32767))
        .unwrap());

    // A type we do not decode: the listing says so by name, the header still reads, create
    // refuses it, and the set is left alone.
    let err = ipset.list("NOT-OURS").unwrap_err();
    assert!(matches!(err, Error::UnsupportedType { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "ipset NOT-OURS: type hash:net,port is not one nodenet reads"
    );
    let info = ipset.header("NOT-OURS").unwrap().unwrap();
    assert_eq!(
        (info.type_name.as_str(), info.set_type(), info.entries),
        ("hash:net,port", None, 1)
    );
    let err = ipset
        .create(&SetSpec::new("NOT-OURS", SetType::HashIpPort, Family::V4))
        .unwrap_err();
    assert!(matches!(err, Error::TypeMismatch { .. }), "{err}");
    assert_eq!(
        saved("NOT-OURS"),
        BTreeSet::from(["10.0.0.0/24,tcp:80".to_owned()])
    );
}

#[test]
fn entries_of_another_family_or_type_are_refused_clearly() {
    private_netns();
    let ipset = Ipset::open().unwrap();
    ipset
        .create(&SetSpec::new("nlw-v4", SetType::HashIpPort, Family::V4))
        .unwrap();
    ipset
        .create(&SetSpec::new("nlw-v6", SetType::HashIpPortNet, Family::V6))
        .unwrap();
    ipset
        .create(&SetSpec::port_bitmap("nlw-bmp", 0..=65535))
        .unwrap();
    let good = Entry::IpPort {
        ip: ip("10.96.0.10"),
        proto: Protocol::Udp,
        port: 53,
    };
    let v6 = Entry::IpPort {
        ip: ip("fd00::a"),
        proto: Protocol::Udp,
        port: 53,
    };
    let cases = [
        (
            "nlw-v4",
            v6,
            "the set is hash:ip,port family inet, the entry is for hash:ip,port family inet6",
        ),
        (
            "nlw-v4",
            Entry::Port(53),
            "the set is hash:ip,port family inet, the entry is for bitmap:port",
        ),
        (
            "nlw-v6",
            Entry::IpPortNet {
                ip: ip("192.0.2.1"),
                proto: Protocol::Tcp,
                port: 80,
                net: "198.51.100.0/24".parse().unwrap(),
            },
            "the set is hash:ip,port,net family inet6, the entry is for hash:ip,port,net family inet",
        ),
        (
            "nlw-bmp",
            good,
            "the set is bitmap:port, the entry is for hash:ip,port family inet",
        ),
    ];
    for (set, e, reason) in cases {
        for (op, r) in [
            ("add", ipset.add(set, &e)),
            ("del", ipset.del(set, &e)),
            // The kernel itself answers "not a member" to a test of such an entry.
            ("test", ipset.test(set, &e)),
            ("add", ipset.add_many(set, &[e]).map(|_| true)),
            ("del", ipset.del_many(set, &[e]).map(|_| true)),
        ] {
            let err = r.unwrap_err();
            assert!(
                matches!(err, Error::EntryMismatch { .. }),
                "{op} {set} {e}: {err}"
            );
            assert_eq!(err.code(), Some(nodenet::ipset::wire::errno::PROTOCOL));
            assert_eq!(
                err.to_string(),
                format!("ipset {op} {set} {e}: {reason} (code 4097)")
            );
        }
    }
    // A batch with one entry of the wrong family changes nothing.
    let err = ipset.add_many("nlw-v4", &[good, v6]).unwrap_err();
    assert!(err.to_string().contains("nlw-v4 fd00::a,udp:53:"), "{err}");
    for set in ["nlw-v4", "nlw-v6", "nlw-bmp"] {
        assert!(saved(set).is_empty(), "{set}");
    }
    // A batch for a set that is not there: not found, before anything is sent.
    assert!(ipset
        .add_many("nlw-none", &[good])
        .unwrap_err()
        .is_not_found());
}

#[test]
fn kernel_refusal_in_a_batch_applies_the_rest() {
    private_netns();
    let ipset = Ipset::open().unwrap();
    let spec = SetSpec {
        maxelem: Some(4),
        ..SetSpec::new("nlw-small", SetType::HashIpPort, Family::V4)
    };
    ipset.create(&spec).unwrap();
    let entries = ip_ports(Family::V4, 6);
    // The hash is full after four: the kernel refuses the fifth and sixth, the error names
    // the fifth, the four before it stay.
    let err = ipset.add_many("nlw-small", &entries).unwrap_err();
    assert_eq!(
        err.code(),
        Some(nodenet::ipset::wire::errno::TYPE_SPECIFIC),
        "{err}"
    );
    assert!(
        err.to_string()
            .starts_with(&format!("ipset add nlw-small {}:", entries[4])),
        "{err}"
    );
    assert_eq!(saved("nlw-small"), strings(&entries[..4]));
}

#[test]
fn invalid_specs_are_refused_before_anything_is_sent() {
    private_netns();
    let ipset = Ipset::open().unwrap();
    let hash_with_range = SetSpec {
        port_range: Some(0..=65535),
        ..SetSpec::new("nlw-bad", SetType::HashIpPort, Family::V4)
    };
    let bitmap_with_size = SetSpec {
        maxelem: Some(10),
        ..SetSpec::port_bitmap("nlw-bad", 0..=65535)
    };
    let bitmap_with_family = SetSpec {
        family: Some(Family::V4),
        ..SetSpec::port_bitmap("nlw-bad", 0..=65535)
    };
    let hash_without_family = SetSpec {
        family: None,
        ..SetSpec::new("nlw-bad", SetType::HashIpPortNet, Family::V4)
    };
    let (first, last) = (32767, 30000);
    let cases = [
        (
            SetSpec::new("nlw-bad", SetType::BitmapPort, Family::V4),
            "set nlw-bad: bitmap:port holds ports only, it takes no family (got inet)",
        ),
        (
            SetSpec {
                family: None,
                ..SetSpec::new("nlw-bad", SetType::BitmapPort, Family::V4)
            },
            "set nlw-bad: bitmap:port needs a port range (SetSpec::port_bitmap)",
        ),
        (
            SetSpec::port_bitmap("nlw-bad", first..=last),
            "set nlw-bad: port range 32767-30000 is empty (first above last)",
        ),
        (
            hash_with_range,
            "set nlw-bad: a port range is for bitmap:port, not hash:ip,port",
        ),
        (
            bitmap_with_size,
            "set nlw-bad: bitmap:port takes no hashsize or maxelem (its size is its range)",
        ),
        (
            bitmap_with_family,
            "set nlw-bad: bitmap:port holds ports only, it takes no family (got inet)",
        ),
        (
            hash_without_family,
            "set nlw-bad: hash:ip,port,net needs a family",
        ),
    ];
    for (spec, message) in cases {
        let err = ipset.create(&spec).unwrap_err();
        assert!(matches!(err, Error::Invalid(_)), "{err}");
        assert_eq!(err.to_string(), format!("ipset: {message}"));
    }
    assert_eq!(run("ipset", &["list", "-n"]), "", "no set was created");
}
