//! Byte-exact tests of `nodenet::ipvs::wire` against what `ipvsadm` 1.31 sent and an IPVS
//! kernel (Debian's, in the VM) replied, captured by `tests/fixtures/capture-ipvs.sh` (see
//! `tests/fixtures/README.md`). No root, no IPVS needed.

mod common;

use std::net::IpAddr;

use common::{fixture, hex, normalise, split, Datagram};
use nodenet::ipvs::wire::{self, cmd};
use nodenet::ipvs::{Destination, Forward, Info, Service, ServiceKey, Timeouts};
use nodenet::nl::Message;
use nodenet::Protocol;

/// The generic-netlink id the VM's kernel gave the IPVS family (checked in `family`).
const FAMILY: u16 = 0x20;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn tcp(addr: &str, port: u16) -> ServiceKey {
    ServiceKey::new(ip(addr), Protocol::Tcp, port)
}

/// One request `ipvsadm` sent with an IPVS command, and every message the kernel answered it
/// with (data, then the ACK/error or `NLMSG_DONE`).
struct Exchange {
    sent: Vec<u8>,
    replies: Vec<Vec<u8>>,
}

/// The `n`th IPVS request with genl command `command` in fixture `name`, and its replies.
fn exchange(name: &str, command: u8, n: usize) -> Exchange {
    let f: Vec<Datagram> = fixture(&format!("ipvs/{name}"));
    let (pos, sent) = f
        .iter()
        .enumerate()
        .filter(|(_, d)| {
            d.sent && {
                let m = Message::parse(&d.bytes).unwrap();
                m.nlmsg_type == FAMILY && m.payload[0] == command
            }
        })
        .nth(n)
        .unwrap_or_else(|| panic!("{name}: no request #{n} of command {command}"));
    let seq = Message::parse(&sent.bytes).unwrap().seq;
    let replies = f[pos + 1..]
        .iter()
        .take_while(|d| !d.sent)
        .flat_map(|d| split(&d.bytes))
        .filter(|m| Message::parse(m).unwrap().seq == seq)
        .collect();
    Exchange {
        sent: normalise(&sent.bytes),
        replies,
    }
}

impl Exchange {
    fn assert_sent(&self, ours: Vec<u8>) {
        assert_eq!(
            hex(&ours),
            hex(&self.sent),
            "differs from what ipvsadm sent"
        );
    }

    /// The final ACK/error of the exchange.
    fn status(&self) -> Result<(), nodenet::nl::Error> {
        let last = self.replies.last().expect("a reply");
        Message::parse(last).unwrap().error_status()
    }

    fn errno(&self) -> nix::errno::Errno {
        nix::errno::Errno::from_raw(self.status().unwrap_err().code().unwrap())
    }

    /// The data messages (no ACK, no `NLMSG_DONE`).
    fn data(&self) -> Vec<Vec<u8>> {
        self.replies
            .iter()
            .filter(|m| Message::parse(m).unwrap().nlmsg_type == FAMILY)
            .cloned()
            .collect()
    }
}

#[test]
fn family() {
    let f = fixture("ipvs/add-service");
    let sent = f.iter().find(|d| d.sent).unwrap();
    assert_eq!(
        hex(&wire::family_request("IPVS")),
        hex(&normalise(&sent.bytes))
    );
    let reply = f.iter().find(|d| !d.sent).unwrap();
    assert_eq!(wire::parse_family(&split(&reply.bytes)[0]).unwrap(), FAMILY);
}

#[test]
fn info() {
    let x = exchange("add-service", cmd::GET_INFO, 0);
    x.assert_sent(wire::info_request(FAMILY));
    assert_eq!(
        wire::parse_info(&x.data()[0]).unwrap(),
        Info {
            version: 0x0001_0201,
            conn_table_size: 4096
        }
    );
}

#[test]
fn add_services() {
    let web = Service::new(tcp("10.100.100.100", 8080), "rr");
    let x = exchange("add-service", cmd::NEW_SERVICE, 0);
    x.assert_sent(wire::service_request(FAMILY, cmd::NEW_SERVICE, &web));
    assert!(x.status().is_ok());
    let x = exchange("add-service-exists", cmd::NEW_SERVICE, 0);
    x.assert_sent(wire::service_request(FAMILY, cmd::NEW_SERVICE, &web));
    assert_eq!(x.errno(), nix::errno::Errno::EEXIST);

    let dns = Service {
        persistence: Some(300),
        ..Service::new(
            ServiceKey::new(ip("10.100.100.100"), Protocol::Udp, 53),
            "wrr",
        )
    };
    exchange("add-service-udp-persistent", cmd::NEW_SERVICE, 0).assert_sent(wire::service_request(
        FAMILY,
        cmd::NEW_SERVICE,
        &dns,
    ));
    exchange("add-service-v6", cmd::NEW_SERVICE, 0).assert_sent(wire::service_request(
        FAMILY,
        cmd::NEW_SERVICE,
        &Service::new(tcp("fd00::100", 80), "rr"),
    ));
    exchange("add-service-sctp", cmd::NEW_SERVICE, 0).assert_sent(wire::service_request(
        FAMILY,
        cmd::NEW_SERVICE,
        &Service::new(
            ServiceKey::new(ip("10.100.100.101"), Protocol::Sctp, 9000),
            "sh",
        ),
    ));
    exchange("edit-service", cmd::SET_SERVICE, 0).assert_sent(wire::service_request(
        FAMILY,
        cmd::SET_SERVICE,
        &Service::new(tcp("10.100.100.100", 8080), "wrr"),
    ));
}

#[test]
fn delete_services() {
    let key = tcp("10.100.100.100", 8080);
    let x = exchange("del-service", cmd::DEL_SERVICE, 0);
    x.assert_sent(wire::del_service_request(FAMILY, &key));
    assert!(x.status().is_ok());
    let x = exchange("del-service-missing", cmd::DEL_SERVICE, 0);
    x.assert_sent(wire::del_service_request(FAMILY, &key));
    assert_eq!(x.errno(), nix::errno::Errno::ESRCH);
}

#[test]
fn destinations() {
    let web = tcp("10.100.100.100", 8080);
    let dns = ServiceKey::new(ip("10.100.100.100"), Protocol::Udp, 53);
    let a = Destination::new(ip("10.0.0.11"), 8080, 1);
    let x = exchange("add-dest", cmd::NEW_DEST, 0);
    x.assert_sent(wire::dest_request(FAMILY, cmd::NEW_DEST, &web, &a));
    assert!(x.status().is_ok());
    let x = exchange("add-dest-exists", cmd::NEW_DEST, 0);
    x.assert_sent(wire::dest_request(FAMILY, cmd::NEW_DEST, &web, &a));
    assert_eq!(x.errno(), nix::errno::Errno::EEXIST);

    let b = Destination {
        upper_threshold: 100,
        lower_threshold: 10,
        ..Destination::new(ip("10.0.0.21"), 8080, 2)
    };
    exchange("add-dest-thresholds", cmd::NEW_DEST, 0).assert_sent(wire::dest_request(
        FAMILY,
        cmd::NEW_DEST,
        &web,
        &b,
    ));
    let routed = Destination {
        forward: Forward::Route,
        ..Destination::new(ip("10.0.0.31"), 53, 1)
    };
    exchange("add-dest-route", cmd::NEW_DEST, 0).assert_sent(wire::dest_request(
        FAMILY,
        cmd::NEW_DEST,
        &dns,
        &routed,
    ));
    let tunnelled = Destination {
        forward: Forward::Tunnel,
        ..Destination::new(ip("10.0.0.41"), 53, 1)
    };
    exchange("add-dest-tunnel", cmd::NEW_DEST, 0).assert_sent(wire::dest_request(
        FAMILY,
        cmd::NEW_DEST,
        &dns,
        &tunnelled,
    ));
    exchange("add-dest-v6", cmd::NEW_DEST, 0).assert_sent(wire::dest_request(
        FAMILY,
        cmd::NEW_DEST,
        &tcp("fd00::100", 80),
        &Destination::new(ip("fd00::11"), 80, 1),
    ));
    let x = exchange("add-dest-missing-service", cmd::NEW_DEST, 0);
    x.assert_sent(wire::dest_request(
        FAMILY,
        cmd::NEW_DEST,
        &tcp("10.100.100.200", 80),
        &Destination::new(ip("10.0.0.11"), 80, 1),
    ));
    assert_eq!(x.errno(), nix::errno::Errno::ESRCH);

    // `ipvsadm -e` without -x/-y sets the thresholds back to 0.
    exchange("edit-dest", cmd::SET_DEST, 0).assert_sent(wire::dest_request(
        FAMILY,
        cmd::SET_DEST,
        &web,
        &Destination::new(ip("10.0.0.21"), 8080, 0),
    ));
    let x = exchange("del-dest", cmd::DEL_DEST, 0);
    x.assert_sent(wire::del_dest_request(FAMILY, &web, ip("10.0.0.21"), 8080));
    assert!(x.status().is_ok());
    let x = exchange("del-dest-missing", cmd::DEL_DEST, 0);
    x.assert_sent(wire::del_dest_request(FAMILY, &web, ip("10.0.0.21"), 8080));
    assert_eq!(x.errno(), nix::errno::Errno::ENOENT);
}

#[test]
fn list_dumps() {
    let x = exchange("list", cmd::GET_SERVICE, 0);
    x.assert_sent(wire::services_dump_request(FAMILY));
    let mut services: Vec<Service> = x
        .data()
        .iter()
        .map(|m| {
            wire::parse_service(m)
                .unwrap()
                .expect("not a fwmark service")
        })
        .collect();
    services.sort_by_key(|s| s.key);
    let web = Service::new(tcp("10.100.100.100", 8080), "wrr");
    let dns = Service {
        persistence: Some(300),
        ..Service::new(
            ServiceKey::new(ip("10.100.100.100"), Protocol::Udp, 53),
            "wrr",
        )
    };
    let sctp = Service::new(
        ServiceKey::new(ip("10.100.100.101"), Protocol::Sctp, 9000),
        "sh",
    );
    let v6 = Service::new(tcp("fd00::100", 80), "rr");
    let mut want = vec![web.clone(), dns.clone(), sctp.clone(), v6.clone()];
    want.sort_by_key(|s| s.key);
    assert_eq!(services, want);

    // ipvsadm then dumps each service's real servers, in its own sort order: each request must
    // be our encoding of exactly one of the listed services.
    let mut dests = std::collections::BTreeMap::new();
    for n in 0..4 {
        let x = exchange("list", cmd::GET_DEST, n);
        let matching: Vec<ServiceKey> = services
            .iter()
            .map(|s| s.key)
            .filter(|k| normalise(&wire::dests_dump_request(FAMILY, k)) == x.sent)
            .collect();
        assert_eq!(matching.len(), 1, "request #{n}: {}", hex(&x.sent));
        let key = matching[0];
        let mut ds: Vec<Destination> = x
            .data()
            .iter()
            .map(|m| wire::parse_destination(m, &key).unwrap())
            .collect();
        ds.sort_by_key(|d| d.addr);
        dests.insert(key, ds);
    }
    assert_eq!(
        dests[&web.key],
        vec![
            Destination::new(ip("10.0.0.11"), 8080, 1),
            Destination::new(ip("10.0.0.21"), 8080, 0),
        ]
    );
    assert_eq!(
        dests[&dns.key],
        vec![
            Destination {
                forward: Forward::Route,
                ..Destination::new(ip("10.0.0.31"), 53, 1)
            },
            Destination {
                forward: Forward::Tunnel,
                ..Destination::new(ip("10.0.0.41"), 53, 1)
            },
        ]
    );
    assert_eq!(dests[&sctp.key], vec![]);
    assert_eq!(
        dests[&v6.key],
        vec![Destination::new(ip("fd00::11"), 80, 1)]
    );
}

#[test]
fn get_one_service() {
    let key = tcp("10.100.100.100", 8080);
    let x = exchange("list-service", cmd::GET_SERVICE, 0);
    x.assert_sent(wire::get_service_request(FAMILY, &key));
    // ipvsadm (libnl) stops reading at the data reply, so the capture holds no ACK.
    assert_eq!(x.replies.len(), 1);
    assert_eq!(
        wire::parse_service(&x.data()[0]).unwrap(),
        Some(Service::new(key, "wrr"))
    );
}

#[test]
fn timeouts() {
    let t = Timeouts {
        tcp: 1800,
        tcp_fin: 60,
        udp: 600,
    };
    let x = exchange("set-timeouts", cmd::SET_CONFIG, 0);
    x.assert_sent(wire::set_config_request(FAMILY, &t));
    assert!(x.status().is_ok());
    let x = exchange("timeouts", cmd::GET_CONFIG, 0);
    x.assert_sent(wire::get_config_request(FAMILY));
    assert_eq!(wire::parse_timeouts(&x.data()[0]).unwrap(), t);
}

#[test]
fn flush() {
    let x = exchange("flush", cmd::FLUSH, 0);
    x.assert_sent(wire::flush_request(FAMILY));
    assert!(x.status().is_ok());
}

#[test]
fn services_and_destinations_round_trip_through_the_encoding() {
    let services = [
        Service::new(tcp("192.0.2.1", 443), "mh"),
        Service {
            persistence: Some(10800),
            netmask: 0xffff_ff00,
            ..Service::new(tcp("192.0.2.2", 80), "wlc")
        },
        Service {
            flags: nodenet::ipvs::SVC_F_ONEPACKET,
            ..Service::new(ServiceKey::new(ip("2001:db8::1"), Protocol::Udp, 53), "rr")
        },
        Service {
            persistence: Some(60),
            netmask: 64,
            ..Service::new(tcp("2001:db8::2", 8443), "sh")
        },
    ];
    for s in &services {
        let msg = wire::service_request(FAMILY, cmd::NEW_SERVICE, s);
        assert_eq!(wire::parse_service(&msg).unwrap().as_ref(), Some(s));
    }
    let dests = [
        Destination::new(ip("10.0.0.1"), 1, 0),
        Destination {
            forward: Forward::Local,
            upper_threshold: 7,
            lower_threshold: 3,
            ..Destination::new(ip("10.0.0.2"), 65535, 100)
        },
        Destination {
            forward: Forward::Route,
            ..Destination::new(ip("2001:db8::5"), 80, 1)
        },
    ];
    for d in &dests {
        for s in &services {
            let msg = wire::dest_request(FAMILY, cmd::NEW_DEST, &s.key, d);
            assert_eq!(&wire::parse_destination(&msg, &s.key).unwrap(), d);
        }
    }
}
