//! Kernel tests of `nodenet::ipvs::Ipvs`, checked against `ipvsadm -Ln` as an independent
//! observer. This machine's kernel has no IPVS, so they are ignored here and run inside the VM:
//!
//! ```sh
//! # as root, from /work/main; PATH carries cargo into the guest (CARGO_TARGET_DIR goes anyway)
//! VM_ENV=PATH tests/vm/run.sh cargo test -p nodenet --test ipvs_kernel -- --ignored
//! # faster: build here, run the test binary in the guest
//! cargo test -p nodenet --test ipvs_kernel --no-run   # prints the binary's path
//! tests/vm/run.sh target/debug/deps/ipvs_kernel-<hash> --ignored
//! ```
//!
//! Each test works in a private network namespace (`unshare(CLONE_NEWNET)` on its own thread)
//! with a dummy device holding the real servers' subnets.

mod common;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Instant;

use common::{private_netns, run};
use nodenet::ipvs::{Destination, Error, Forward, Ipvs, Op, Service, ServiceKey, Timeouts};
use nodenet::Protocol;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A private namespace with `nlw0` (dummy) holding 10.0.0.1/16 and fd00::1/64, so IPVS accepts
/// real servers there.
fn ipvs_netns() -> Ipvs {
    private_netns();
    run("ip", &["link", "add", "nlw0", "type", "dummy"]);
    run("ip", &["addr", "add", "10.0.0.1/16", "dev", "nlw0"]);
    run(
        "ip",
        &["-6", "addr", "add", "fd00::1/64", "dev", "nlw0", "nodad"],
    );
    run("ip", &["link", "set", "nlw0", "up"]);
    Ipvs::open().expect("IPVS in the VM's kernel")
}

/// `ipvsadm -Ln` lines, whitespace-normalised ("TCP 10.100.100.100:8080 rr",
/// "-> 10.0.0.11:8080 Masq 1 0 0").
fn ipvsadm_lines(args: &[&str]) -> Vec<String> {
    let mut all = vec!["-Ln"];
    all.extend_from_slice(args);
    run("ipvsadm", &all)
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| {
            !l.starts_with("IP Virtual Server")
                && !l.starts_with("Prot LocalAddress")
                && !l.starts_with("-> RemoteAddress")
        })
        .collect()
}

fn tcp(addr: &str, port: u16) -> ServiceKey {
    ServiceKey::new(ip(addr), Protocol::Tcp, port)
}

#[test]
fn open_reports_whether_the_kernel_has_ipvs() {
    private_netns();
    let has_ipvs = std::path::Path::new("/proc/thread-self/net/ip_vs").exists();
    match Ipvs::open() {
        Ok(ipvs) => {
            assert!(has_ipvs, "opened although /proc/net/ip_vs is absent");
            assert!(ipvs.info().unwrap().version >= 0x0001_0200);
        }
        Err(Error::NotAvailable) => assert!(!has_ipvs, "NotAvailable although IPVS is loaded"),
        Err(e) => panic!("unexpected error: {e}"),
    }
}

#[test]
#[ignore = "needs IPVS: run in the VM (tests/vm)"]
fn services_match_ipvsadm() {
    let ipvs = ipvs_netns();
    let web = Service::new(tcp("10.100.100.100", 8080), "rr");
    let dns = Service {
        persistence: Some(300),
        ..Service::new(
            ServiceKey::new(ip("10.100.100.100"), Protocol::Udp, 53),
            "wrr",
        )
    };
    let v6 = Service::new(tcp("fd00::100", 80), "rr");
    let sctp = Service::new(
        ServiceKey::new(ip("10.100.100.101"), Protocol::Sctp, 9000),
        "sh",
    );
    for s in [&web, &dns, &v6, &sctp] {
        ipvs.add_service(s).unwrap();
    }
    assert!(ipvs.add_service(&web).unwrap_err().is_exists());

    let listed: BTreeSet<_> = ipvs
        .services()
        .unwrap()
        .into_iter()
        .map(|s| format!("{s:?}"))
        .collect();
    let want: BTreeSet<_> = [&web, &dns, &v6, &sctp]
        .iter()
        .map(|s| format!("{s:?}"))
        .collect();
    assert_eq!(listed, want);
    let seen: BTreeSet<String> = ipvsadm_lines(&[]).into_iter().collect();
    for line in [
        "TCP 10.100.100.100:8080 rr",
        "UDP 10.100.100.100:53 wrr persistent 300",
        "TCP [fd00::100]:80 rr",
        "SCTP 10.100.100.101:9000 sh",
    ] {
        assert!(seen.contains(line), "ipvsadm lacks {line:?}: {seen:?}");
    }

    let edited = Service {
        scheduler: "wrr".into(),
        ..web.clone()
    };
    ipvs.update_service(&edited).unwrap();
    assert_eq!(ipvs.service(&web.key).unwrap(), Some(edited.clone()));
    assert_eq!(
        ipvsadm_lines(&["-t", "10.100.100.100:8080"]),
        ["TCP 10.100.100.100:8080 wrr"]
    );

    let unknown = Service {
        scheduler: "nosuch".into(),
        ..Service::new(tcp("10.100.100.102", 80), "rr")
    };
    assert_eq!(
        ipvs.add_service(&unknown).unwrap_err().errno(),
        Some(nix::errno::Errno::ENOENT)
    );
    let too_long = Service::new(tcp("10.100.100.102", 80), "x".repeat(16));
    assert!(matches!(
        ipvs.add_service(&too_long),
        Err(Error::Invalid(_))
    ));

    ipvs.del_service(&web.key).unwrap();
    assert!(ipvs.del_service(&web.key).unwrap_err().is_not_found());
    assert_eq!(ipvs.service(&web.key).unwrap(), None);
    assert!(!ipvsadm_lines(&[]).iter().any(|l| l.contains(":8080")));
    assert_eq!(ipvs.services().unwrap().len(), 3);
}

#[test]
#[ignore = "needs IPVS: run in the VM (tests/vm)"]
fn destinations_match_ipvsadm() {
    let ipvs = ipvs_netns();
    let key = tcp("10.100.100.100", 8080);
    ipvs.add_service(&Service::new(key, "rr")).unwrap();
    let a = Destination::new(ip("10.0.0.11"), 8080, 1);
    let b = Destination {
        upper_threshold: 100,
        lower_threshold: 10,
        ..Destination::new(ip("10.0.0.21"), 8080, 2)
    };
    ipvs.add_destination(&key, &a).unwrap();
    ipvs.add_destination(&key, &b).unwrap();
    assert!(ipvs.add_destination(&key, &a).unwrap_err().is_exists());

    let mut listed = ipvs.destinations(&key).unwrap();
    listed.sort_by_key(|d| d.addr);
    assert_eq!(listed, vec![a, b]);
    assert_eq!(
        ipvsadm_lines(&["-t", "10.100.100.100:8080"]),
        [
            "TCP 10.100.100.100:8080 rr",
            "-> 10.0.0.11:8080 Masq 1 0 0",
            "-> 10.0.0.21:8080 Masq 2 0 0",
        ]
    );
    let thresholds = ipvsadm_lines(&["-t", "10.100.100.100:8080", "--thresholds"]);
    assert!(
        thresholds
            .iter()
            .any(|l| l.starts_with("-> 10.0.0.21:8080 100 10")),
        "{thresholds:?}"
    );

    let drained = Destination { weight: 0, ..b };
    ipvs.update_destination(&key, &drained).unwrap();
    assert!(ipvsadm_lines(&["-t", "10.100.100.100:8080"])
        .contains(&"-> 10.0.0.21:8080 Masq 0 0 0".to_owned()));

    ipvs.del_destination(&key, b.addr, b.port).unwrap();
    assert!(ipvs
        .del_destination(&key, b.addr, b.port)
        .unwrap_err()
        .is_not_found());
    assert_eq!(ipvs.destinations(&key).unwrap(), vec![a]);

    let missing = tcp("10.100.100.200", 80);
    assert!(ipvs
        .add_destination(&missing, &a)
        .unwrap_err()
        .is_not_found());
    // The kernel's dump does not tell a missing service from one without real servers.
    assert_eq!(ipvs.destinations(&missing).unwrap(), vec![]);

    // Other forwarding methods and IPv6.
    let udp = ServiceKey::new(ip("10.100.100.100"), Protocol::Udp, 53);
    ipvs.add_service(&Service::new(udp, "wrr")).unwrap();
    let routed = Destination {
        forward: Forward::Route,
        ..Destination::new(ip("10.0.0.31"), 53, 1)
    };
    let tunnelled = Destination {
        forward: Forward::Tunnel,
        ..Destination::new(ip("10.0.0.41"), 53, 1)
    };
    ipvs.add_destination(&udp, &routed).unwrap();
    ipvs.add_destination(&udp, &tunnelled).unwrap();
    let mut listed = ipvs.destinations(&udp).unwrap();
    listed.sort_by_key(|d| d.addr);
    assert_eq!(listed, vec![routed, tunnelled]);
    let v6 = tcp("fd00::100", 80);
    ipvs.add_service(&Service::new(v6, "rr")).unwrap();
    let d6 = Destination::new(ip("fd00::11"), 80, 1);
    ipvs.add_destination(&v6, &d6).unwrap();
    assert_eq!(ipvs.destinations(&v6).unwrap(), vec![d6]);
    assert_eq!(
        ipvsadm_lines(&["-t", "[fd00::100]:80"]),
        ["TCP [fd00::100]:80 rr", "-> [fd00::11]:80 Masq 1 0 0"]
    );
}

#[test]
#[ignore = "needs IPVS: run in the VM (tests/vm)"]
fn timeouts_round_trip() {
    let ipvs = ipvs_netns();
    let t = Timeouts {
        tcp: 1800,
        tcp_fin: 60,
        udp: 600,
    };
    ipvs.set_timeouts(&t).unwrap();
    assert_eq!(ipvs.timeouts().unwrap(), t);
    assert_eq!(
        run("ipvsadm", &["-L", "--timeout"]).trim(),
        "Timeout (tcp tcpfin udp): 1800 60 600"
    );
}

#[test]
#[ignore = "needs IPVS: run in the VM (tests/vm)"]
fn apply_pipelines_in_order_and_reports_each_op() {
    let ipvs = ipvs_netns();
    let services = 2000u32;
    let mut ops = Vec::new();
    for i in 0..services {
        let key = tcp(&format!("10.96.{}.{}", i / 250, i % 250 + 1), 80);
        ops.push(Op::AddService(Service::new(key, "rr")));
        for j in 0..5u32 {
            let d = Destination::new(ip(&format!("10.0.{}.{}", j, i % 250 + 1)), 8080, 1);
            ops.push(Op::AddDest(key, d));
        }
    }
    let start = Instant::now();
    let results = ipvs.apply(&ops);
    println!(
        "apply: {} services x 5 real servers ({} ops) in {:?}",
        services,
        ops.len(),
        start.elapsed()
    );
    assert!(
        results.iter().all(Result::is_ok),
        "{:?}",
        results.iter().find(|r| r.is_err())
    );
    let listing = run("ipvsadm", &["-Ln"]);
    assert_eq!(
        listing.lines().filter(|l| l.starts_with("TCP")).count(),
        services as usize
    );
    assert_eq!(
        listing
            .lines()
            .filter(|l| l.trim_start().starts_with("->") && l.contains("Masq"))
            .count(),
        5 * services as usize
    );
    assert_eq!(ipvs.services().unwrap().len(), services as usize);

    // One refused op in the middle: the ones after it still apply, each result in order.
    let key = tcp("10.97.0.1", 80);
    let results = ipvs.apply(&[
        Op::AddService(Service::new(key, "rr")),
        Op::AddService(Service::new(key, "rr")),
        Op::AddDest(key, Destination::new(ip("10.0.0.5"), 80, 3)),
        Op::DelDest(key, ip("10.0.0.6"), 80),
        Op::AddService(Service::new(tcp("10.97.0.2", 80), "x".repeat(16))),
        Op::UpdateDest(key, Destination::new(ip("10.0.0.5"), 80, 7)),
    ]);
    assert!(results[0].is_ok());
    assert!(results[1].as_ref().unwrap_err().is_exists());
    assert!(results[2].is_ok());
    assert!(results[3].as_ref().unwrap_err().is_not_found());
    assert!(matches!(results[4], Err(Error::Invalid(_))));
    assert!(results[5].is_ok());
    assert_eq!(
        ipvsadm_lines(&["-t", "10.97.0.1:80"]),
        ["TCP 10.97.0.1:80 rr", "-> 10.0.0.5:80 Masq 7 0 0"]
    );

    let start = Instant::now();
    let dels: Vec<Op> = (0..services)
        .map(|i| Op::DelService(tcp(&format!("10.96.{}.{}", i / 250, i % 250 + 1), 80)))
        .collect();
    assert!(ipvs.apply(&dels).iter().all(Result::is_ok));
    println!(
        "apply: {} service deletions in {:?}",
        services,
        start.elapsed()
    );
    assert_eq!(ipvs.services().unwrap().len(), 1);
}

#[test]
#[ignore = "needs IPVS: run in the VM (tests/vm)"]
fn flush_removes_everything() {
    let ipvs = ipvs_netns();
    ipvs.add_service(&Service::new(tcp("10.100.100.100", 80), "rr"))
        .unwrap();
    ipvs.flush().unwrap();
    assert!(ipvs.services().unwrap().is_empty());
    assert!(ipvsadm_lines(&[]).is_empty());
}
