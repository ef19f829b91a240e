//! ADD: bridge, veth pair, addresses, routes, gateway, hairpin/promisc, masquerade.
//!
//! Order: refuse the plugin's own namespace, take the network (shared) and attachment
//! (exclusive) locks, validate against the kernel without changing it (interface free in the
//! pod, bridge name not taken by another kind) → IPAM → record (`adding`, naming the addresses
//! and the veth to be created) → kernel objects, each veth end marked as this attachment's →
//! masquerade (rules proven or rewritten) → record `ready`. Any failure after IPAM rolls back
//! everything the record names, and the allocator's round-robin position. (An ADD killed between
//! IPAM and the record leaves only a reservation file, which DEL and GC find by its owner.)

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use nodenet::attachment::{Attachment, Phase, Records, RECORD_VERSION};
use nodenet::link::{BridgePort, BridgeSpec, Link, Route, Rtnl, VethSpec};
use nodenet::netns::NetNs;
use nodenet::{sysctl, Family};
use serde_json::Value;

use super::{block_on, lock_attachment, open_pod_netns, release, Teardown};
use crate::config::{parse_mac_arg, parse_requested_ip, IpamConf, NetConf};
use crate::env::Env;
use crate::error::{code, CniError, Result};
use crate::ipam::{self, IpamResult, Owner};
use crate::masq;
use crate::names::{self, SetGeneration, VETH_ATTEMPTS};
use crate::result::{CniResult, Interface, IpConfig, RouteConf};

pub fn exec(env: &Env, conf: &NetConf) -> Result<Value> {
    let ns_path = env
        .netns
        .as_ref()
        .ok_or_else(|| CniError::new(code::INVALID_ENV, "CNI_NETNS is required for ADD"))?;
    let netns = open_pod_netns(ns_path)?;
    block_on(run(env, conf, &netns))?
}

async fn run(env: &Env, conf: &NetConf, netns: &NetNs) -> Result<Value> {
    let host = Rtnl::new()?;
    let pod = Rtnl::in_netns(netns)?;
    let (existing, bridge) = futures::join!(
        pod.link_by_name(&env.ifname),
        host.link_by_name(&conf.bridge)
    );
    if existing?.is_some() {
        return Err(CniError::new(
            code::IFNAME_EXISTS,
            format!(
                "interface {:?} already exists in {}",
                env.ifname,
                netns.path().display()
            ),
        ));
    }
    let bridge = bridge?;
    if let Some(b) = &bridge {
        if b.kind.as_deref() != Some("bridge") {
            return Err(CniError::new(
                code::NOT_A_BRIDGE,
                format!(
                    "link {:?} exists but is a {}, not a bridge",
                    conf.bridge,
                    b.kind.as_deref().unwrap_or("device without a kind")
                ),
            ));
        }
    }
    let requested = requested_ips(env, conf)?;
    let pod_mac = match conf.mac {
        Some(m) => Some(m),
        None => env.arg("MAC").map(parse_mac_arg).transpose()?,
    };
    // Everything above only reads: a refused ADD leaves no file behind, not even a lock.
    let mut locked = lock_attachment(conf, env)?;
    let records = &mut locked;

    // A record left for this attachment belongs to an ADD that died or a container whose
    // namespace was replaced without a DEL: release what it names first.
    // A file under the record's name that is no record of ours (a symlink, a FIFO, an
    // oversized file) is replaced when the record is written, never followed.
    let stale = records
        .load(&env.container_id, &env.ifname)
        .unwrap_or_else(|e| {
            log::warn!("ADD: {e}; replaced by this ADD's record");
            None
        });
    if let Some(stale) = stale {
        // An ADD of the same attachment that finished while this one waited for the lock: the
        // interface checked free above exists now, and is not ours to replace.
        if pod.link_by_name(&env.ifname).await?.is_some() {
            return Err(CniError::new(
                code::IFNAME_EXISTS,
                format!(
                    "interface {:?} already exists in {} (a concurrent ADD of this attachment)",
                    env.ifname,
                    netns.path().display()
                ),
            ));
        }
        log::info!(
            "ADD: releasing stale attachment record of {}/{}",
            env.container_id,
            env.ifname
        );
        release(
            conf,
            env,
            &host,
            records,
            Teardown::of(env, Some(stale), None),
        )
        .await?;
    }

    let mut record = Attachment {
        version: RECORD_VERSION,
        network: conf.name.clone(),
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
        netns: netns.path().display().to_string(),
        phase: Phase::Adding,
        bridge: conf.bridge.clone(),
        host_veth: names::host_veth(&conf.name, &env.container_id, &env.ifname, 0),
        ips: Vec::new(),
        gateways: Vec::new(),
        pod_namespace: env.arg("K8S_POD_NAMESPACE").map(str::to_string),
        pod_name: env.arg("K8S_POD_NAME").map(str::to_string),
        labels: conf.labels.clone(),
        masq_set: conf
            .ip_masq
            .then(|| names::masq_set(&conf.name, Family::V4, SetGeneration::Current)),
        ipam: conf.ipam.type_name().to_string(),
    };

    let plan = Plan {
        env,
        conf,
        netns,
        host: &host,
        pod: &pod,
        requested: &requested,
        pod_mac,
    };
    let mut rewind = ipam::Rewind::default();
    let outcome = match plan.apply(bridge, &mut record, records, &mut rewind).await {
        Ok(result) => {
            record.phase = Phase::Ready;
            records.save(&record).map(|()| result).map_err(Into::into)
        }
        Err(e) => Err(e),
    };
    match outcome {
        Ok(result) => Ok(result.to_value(conf.version)),
        Err(e) => {
            log::warn!(
                "ADD {}/{} failed, rolling back: {e}",
                env.container_id,
                env.ifname
            );
            let teardown = Teardown::of(env, Some(record), None);
            if let Err(re) = release(conf, env, &host, records, teardown).await {
                log::warn!("rollback incomplete: {re}");
            }
            // A failed ADD leaves the allocator where it found it.
            if let Err(re) = ipam::rewind(conf, &rewind) {
                log::warn!("rollback of the round-robin position: {re}");
            }
            Err(e)
        }
    }
}

/// Requested addresses for the built-in IPAM: config (`args.cni.ips`, `runtimeConfig.ips`)
/// and `CNI_ARGS IP=a,b`.
fn requested_ips(env: &Env, conf: &NetConf) -> Result<Vec<IpAddr>> {
    let mut out = conf.requested_ips.clone();
    if let Some(list) = env.arg("IP") {
        for s in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            out.push(parse_requested_ip(s)?);
        }
    }
    if !out.is_empty() && !matches!(conf.ipam, IpamConf::Builtin(_)) {
        log::info!("requested IPs are left to the delegated IPAM plugin");
    }
    Ok(out)
}

/// The first host address of a network (the reference plugin's default gateway).
fn first_host(net: &IpNetwork) -> IpAddr {
    match net.network() {
        IpAddr::V4(v4) => IpAddr::V4((u32::from(v4) + 1).into()),
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) + 1).into()),
    }
}

/// IPAM's routes plus, with `isDefaultGateway`, a default route per address family via
/// that family's gateway.
fn result_routes(conf: &NetConf, res: &IpamResult) -> Result<Vec<RouteConf>> {
    let mut routes = res.routes.clone();
    if !conf.is_default_gateway {
        return Ok(routes);
    }
    let mut done_families = Vec::new();
    for ip in &res.ips {
        let family = Family::of(ip.address.ip());
        if done_families.contains(&family) {
            continue;
        }
        done_families.push(family);
        let dst = family.any();
        if let Some(existing) = routes.iter().find(|r| r.dst == dst) {
            match existing.gw {
                Some(gw) if Some(gw) != ip.gateway => {
                    return Err(CniError::new(
                        code::INVALID_CONFIG,
                        format!(
                            "isDefaultGateway ineffective because IPAM sets default route via {gw}"
                        ),
                    ))
                }
                _ => {
                    routes.retain(|r| r.dst != dst);
                }
            }
        }
        routes.push(RouteConf {
            dst,
            gw: ip.gateway,
        });
    }
    Ok(routes)
}

/// The gateway addresses to put on the bridge, with the prefix of their pod address.
fn gateway_addresses(ips: &[IpConfig]) -> Vec<IpNetwork> {
    ips.iter()
        .filter_map(|i| IpNetwork::new(i.gateway?, i.address.prefix()).ok())
        .collect()
}

/// Bridge addresses that conflict with gateway `gw`, as the reference plugin decides: any
/// other IPv4 address; an IPv6 address only when the two share a subnet.
fn conflicting<'a>(
    existing: &'a [IpNetwork],
    mine: &'a [IpNetwork],
    gw: &'a IpNetwork,
) -> impl Iterator<Item = &'a IpNetwork> + 'a {
    existing.iter().filter(move |a| {
        !mine.contains(a) && (!gw.is_ipv6() || a.contains(gw.ip()) || gw.contains(a.ip()))
    })
}

/// One address family with a gateway: the family, its gateway addresses, and the bridge's
/// current addresses of that family.
type GatewayFamily = (Family, Vec<IpNetwork>, Vec<IpNetwork>);

/// Refuses a gateway that an existing bridge's addresses conflict with (without `forceAddress`).
fn check_bridge_addresses(br: &Link, families: &[GatewayFamily]) -> Result<()> {
    for (_, mine, existing) in families {
        for gw in mine.iter().filter(|gw| !existing.contains(gw)) {
            if let Some(a) = conflicting(existing, mine, gw).next() {
                return Err(address_conflict(br, gw, a));
            }
        }
    }
    Ok(())
}

fn address_conflict(br: &Link, gw: &IpNetwork, a: &IpNetwork) -> CniError {
    CniError::new(
        code::BRIDGE_ADDRESS_CONFLICT,
        format!(
            "{:?} already has an IP address different from {gw} ({a}); set forceAddress to replace it",
            br.name
        ),
    )
}

struct Plan<'a> {
    env: &'a Env,
    conf: &'a NetConf,
    netns: &'a NetNs,
    host: &'a Rtnl,
    pod: &'a Rtnl,
    requested: &'a [IpAddr],
    pod_mac: Option<[u8; 6]>,
}

impl Plan<'_> {
    async fn apply(
        &self,
        bridge: Option<Link>,
        record: &mut Attachment,
        records: &mut Records,
        rewind: &mut ipam::Rewind,
    ) -> Result<CniResult> {
        let conf = self.conf;
        let owner = Owner {
            container_id: &self.env.container_id,
            ifname: &self.env.ifname,
        };
        let mut ipam_res = match ipam::for_config(conf, self.env) {
            Some(i) => i.add(owner, self.requested)?,
            None => IpamResult::default(),
        };
        *rewind = std::mem::take(&mut ipam_res.rewind);
        for ip in &mut ipam_res.ips {
            ip.interface = Some(2);
            if ip.gateway.is_none() && conf.is_gateway {
                ip.gateway = Some(first_host(&ip.address));
            }
        }
        record.ips = ipam_res.ips.iter().map(|i| i.address).collect();
        record.gateways = ipam_res.ips.iter().filter_map(|i| i.gateway).collect();
        records.save(record)?;

        let routes = result_routes(conf, &ipam_res)?;
        // An existing bridge's addresses, read once: checked before anything on the node is
        // touched (a refused ADD leaves the bridge as it was), then completed with the gateways.
        let families = match (&bridge, conf.is_gateway) {
            (Some(b), true) => Some(self.gateways_by_family(b, &ipam_res.ips).await?),
            _ => None,
        };
        if let (Some(b), Some(f), false) = (&bridge, &families, conf.force_address) {
            check_bridge_addresses(b, f)?;
        }
        let br = self.bridge(bridge).await?;
        let [host_mac, random_pod_mac] = names::random_macs::<2>()
            .map_err(|e| CniError::new(code::KERNEL, format!("reading /dev/urandom: {e}")))?;
        let pod_mac = self.pod_mac.unwrap_or(random_pod_mac);
        self.create_veth(&br, host_mac, pod_mac, record, records)
            .await?;
        let marker = self.marker();
        let pv = self.pod.require_link(&self.env.ifname).await?;
        // The host end is marked as ours in the same request that sets its port flags.
        if conf.hairpin || conf.port_isolation {
            let port = BridgePort {
                hairpin: conf.hairpin,
                isolated: conf.port_isolation,
            };
            self.host
                .set_bridge_port(&record.host_veth, &marker, port)
                .await?;
        } else {
            self.host.set_alias(&record.host_veth, &marker).await?;
        }
        // As the reference plugin: we own the routes of the host end, not router adverts.
        let _ = sysctl::write(
            &format!("net/ipv6/conf/{}/accept_ra", record.host_veth),
            "0",
        );

        if conf.is_gateway {
            let families = match families {
                Some(f) => f,
                None => self.gateways_by_family(&br, &ipam_res.ips).await?,
            };
            self.gateways(&br, families).await?;
        }
        self.pod_side(&pv, &ipam_res.ips, &routes, &marker).await?;

        let ips: Vec<IpAddr> = ipam_res.ips.iter().map(|i| i.address.ip()).collect();
        if conf.ip_masq && !ips.is_empty() {
            let subnets = masq::subnets(&conf.ipam, &ipam_res.ips);
            masq::add(&conf.name, &ips, &subnets, &conf.non_masquerade, records)?;
        }

        let dns = if conf.dns.is_empty() {
            ipam_res.dns
        } else {
            conf.dns.clone()
        };
        Ok(CniResult {
            interfaces: vec![
                Interface {
                    name: br.name.clone(),
                    mac: br.mac_string(),
                    sandbox: None,
                },
                Interface {
                    name: record.host_veth.clone(),
                    mac: nodenet::link::format_mac(&host_mac),
                    sandbox: None,
                },
                Interface {
                    name: self.env.ifname.clone(),
                    mac: nodenet::link::format_mac(&pod_mac),
                    sandbox: Some(self.netns.path().display().to_string()),
                },
            ],
            ips: ipam_res.ips,
            routes,
            dns,
        })
    }

    /// Gets or creates the bridge and applies `promiscMode` and a raised `mtu`.
    async fn bridge(&self, found: Option<Link>) -> Result<Link> {
        let conf = self.conf;
        let mut br = match found {
            Some(b) => b,
            None => {
                let [mac] = names::random_macs::<1>().map_err(|e| {
                    CniError::new(code::KERNEL, format!("reading /dev/urandom: {e}"))
                })?;
                let (link, created) = self
                    .host
                    .ensure_bridge(&BridgeSpec {
                        name: conf.bridge.clone(),
                        mtu: conf.mtu,
                        mac: Some(mac),
                    })
                    .await?;
                if created {
                    // As the reference plugin: the bridge's routes are ours, not from adverts.
                    let _ = sysctl::write(&format!("net/ipv6/conf/{}/accept_ra", conf.bridge), "0");
                }
                link
            }
        };
        if !br.up {
            self.host.set_up(br.index).await?;
            br.up = true;
        }
        if conf.promisc && !br.promisc {
            self.host.set_promisc(br.index, true).await?;
            br.promisc = true;
        }
        // A bridge created with a smaller MTU is raised (the reference plugin cannot, cni#356).
        if conf.mtu != 0 && br.mtu < conf.mtu {
            self.host.set_mtu(br.index, conf.mtu).await?;
            br.mtu = conf.mtu;
        }
        Ok(br)
    }

    /// This attachment's ownership marker (the alias of both veth ends).
    fn marker(&self) -> String {
        names::link_marker(&self.conf.name, &self.env.container_id, &self.env.ifname)
    }

    /// Creates the veth pair under the first derived name free for this attachment (recorded
    /// before it is created). A link under a derived name is replaced only when it carries
    /// this attachment's marker (an orphan of its own whose record was lost); any other, of
    /// whatever network or origin, is left alone and the next name tried.
    async fn create_veth(
        &self,
        br: &Link,
        host_mac: [u8; 6],
        pod_mac: [u8; 6],
        record: &mut Attachment,
        records: &Records,
    ) -> Result<()> {
        let marker = self.marker();
        for attempt in 0..VETH_ATTEMPTS {
            let name = names::host_veth(
                &self.conf.name,
                &self.env.container_id,
                &self.env.ifname,
                attempt,
            );
            if record.host_veth != name {
                record.host_veth = name.clone();
                records.save(record)?;
            }
            let spec = VethSpec {
                name: name.clone(),
                mac: Some(host_mac),
                mtu: self.conf.mtu,
                // What the reference plugin's veths get (its netlink library sends 0).
                txqlen: Some(0),
                master: Some(br.index),
                peer_name: self.env.ifname.clone(),
                peer_mac: Some(pod_mac),
                peer_netns: self.netns,
            };
            let err = match self.host.create_veth(&spec).await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_exists() => e,
                Err(e) => return Err(e.into()),
            };
            let Some(existing) = self.host.link_by_name(&name).await? else {
                // The pod end's name is what exists: a runtime's or another plugin's interface.
                record.host_veth.clear();
                return Err(CniError::new(
                    code::IFNAME_EXISTS,
                    format!(
                        "interface {:?} already exists in the container namespace ({err})",
                        self.env.ifname
                    ),
                ));
            };
            if existing.alias != marker || existing.kind.as_deref() != Some("veth") {
                log::info!(
                    "ADD: host veth name {name} is taken by another link (alias {:?}); trying the next",
                    existing.alias
                );
                continue;
            }
            // Our own orphan (its record was lost): replace it.
            self.host.delete_link(existing.index).await?;
            self.host.create_veth(&spec).await?;
            return Ok(());
        }
        // Never delete a veth we did not create.
        record.host_veth.clear();
        records.save(record)?;
        Err(CniError::new(
            code::KERNEL,
            format!("no free host veth name after {VETH_ATTEMPTS} attempts"),
        ))
    }

    /// Puts each family's gateway on the bridge (as the reference plugin's `ensureAddr`) and
    /// turns on forwarding; `families` as [`Self::gateways_by_family`] read them.
    async fn gateways(&self, br: &Link, families: Vec<GatewayFamily>) -> Result<()> {
        for (family, mine, existing) in families {
            for gw in mine.iter().filter(|gw| !existing.contains(gw)) {
                for a in conflicting(&existing, &mine, gw) {
                    if !self.conf.force_address {
                        return Err(address_conflict(br, gw, a));
                    }
                    self.host.del_address(br.index, *a).await?;
                }
                self.host.add_address(br.index, *gw).await?;
            }
            let key = match family {
                Family::V6 => "net.ipv6.conf.all.forwarding",
                Family::V4 => "net.ipv4.ip_forward",
            };
            sysctl::ensure(key, "1").map_err(|e| CniError::new(code::KERNEL, e.to_string()))?;
        }
        Ok(())
    }

    /// For each address family that has a gateway: see [`GatewayFamily`].
    async fn gateways_by_family(&self, br: &Link, ips: &[IpConfig]) -> Result<Vec<GatewayFamily>> {
        let gws = gateway_addresses(ips);
        let mut out = Vec::new();
        for family in Family::ALL {
            let mine: Vec<IpNetwork> = gws
                .iter()
                .filter(|g| Family::of_net(g) == family)
                .copied()
                .collect();
            if !mine.is_empty() {
                let existing = self.host.addresses_of_family(br.index, family).await?;
                out.push((family, mine, existing));
            }
        }
        Ok(out)
    }

    /// Sysctls, addresses, link up, routes on the pod interface — the reference plugin's
    /// order, so the kernel announces the addresses (`arp_notify`) when the link comes up.
    async fn pod_side(
        &self,
        pv: &Link,
        ips: &[IpConfig],
        routes: &[RouteConf],
        marker: &str,
    ) -> Result<()> {
        let ifname = self.env.ifname.clone();
        let enable_dad = self.conf.enable_dad;
        // As the reference plugin: gratuitous ARP on link up, and no IPv6 DAD on the pod end
        // (hairpin echoes would fail it). Failures (e.g. IPv6 off) are not fatal, as there.
        let _ = self.netns.run(move || {
            let _ = sysctl::write(&format!("net/ipv4/conf/{ifname}/arp_notify"), "1");
            if !enable_dad {
                let _ = sysctl::write(&format!("net/ipv6/conf/{ifname}/accept_dad"), "0");
            }
        });
        for ip in ips {
            self.pod.add_address(pv.index, ip.address).await?;
        }
        self.pod.set_up_with_alias(pv.index, marker).await?;
        let gw_of = |family: Family| {
            ips.iter()
                .find(|i| Family::of(i.address.ip()) == family)
                .and_then(|i| i.gateway)
        };
        for r in routes {
            let route = Route {
                dst: r.dst,
                gateway: r.gw.or_else(|| gw_of(Family::of_net(&r.dst))),
                oif: Some(pv.index),
                protocol: nodenet::link::PROTO_BOOT,
            };
            self.pod.add_route(&route).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conf(default_gw: bool) -> NetConf {
        let v =
            json!({"cniVersion": "1.0.0", "name": "n", "isDefaultGateway": default_gw, "ipam": {}});
        NetConf::parse(v.to_string().as_bytes()).unwrap()
    }

    fn res(routes: Value) -> IpamResult {
        IpamResult {
            ips: vec![
                IpConfig {
                    address: "10.0.0.11/24".parse().unwrap(),
                    gateway: Some("10.0.0.1".parse().unwrap()),
                    interface: Some(2),
                },
                IpConfig {
                    address: "fd00::b/64".parse().unwrap(),
                    gateway: Some("fd00::1".parse().unwrap()),
                    interface: Some(2),
                },
            ],
            routes: serde_json::from_value(routes).unwrap(),
            dns: Default::default(),
            rewind: Default::default(),
        }
    }

    #[test]
    fn default_gateway_adds_one_default_route_per_family() {
        let r = result_routes(&conf(true), &res(json!([{"dst": "0.0.0.0/0"}]))).unwrap();
        let text: Vec<String> = r.iter().map(|r| format!("{} {:?}", r.dst, r.gw)).collect();
        assert_eq!(text, vec!["0.0.0.0/0 Some(10.0.0.1)", "::/0 Some(fd00::1)"]);
        let plain = result_routes(&conf(false), &res(json!([{"dst": "0.0.0.0/0"}]))).unwrap();
        assert_eq!(plain.len(), 1);
        assert_eq!(plain[0].gw, None);
    }

    #[test]
    fn ipam_default_route_via_another_gateway_is_code_7() {
        let e = result_routes(
            &conf(true),
            &res(json!([{"dst": "0.0.0.0/0", "gw": "10.0.0.254"}])),
        )
        .unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
    }

    #[test]
    fn first_host_is_network_plus_one() {
        assert_eq!(
            first_host(&"10.0.0.11/24".parse().unwrap()),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            first_host(&"fd00::b/64".parse().unwrap()),
            "fd00::1".parse::<IpAddr>().unwrap()
        );
    }
}
