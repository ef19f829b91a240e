//! Links, addresses, routes and bridge ports over rtnetlink (`ip link`/`ip addr`/`ip route`).
//!
//! [`Rtnl`] owns one rtnetlink socket, bound to the namespace it was opened in for its whole
//! life; open one per namespace and use them side by side. Every "ensure"/"add" call treats
//! "already exists" from a racing peer as success, and every delete treats "gone" as success.

use std::net::IpAddr;

use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoPortData, InfoVeth, LinkAttribute, LinkFlags, LinkInfo,
    LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::AddressFamily;
use rtnetlink::{
    Handle, LinkBridge, LinkBridgePort, LinkDummy, LinkMessageBuilder, LinkUnspec, LinkVeth,
};

use nix::errno::Errno;

use crate::netns::{NetNs, NetNsError};
use crate::Family;

/// Errors from link, address and route calls.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The kernel refused a request.
    #[error("{op}: {source}")]
    Netlink {
        op: String,
        source: rtnetlink::Error,
    },
    /// The rtnetlink socket could not be opened.
    #[error("cannot open rtnetlink socket: {0}")]
    Socket(std::io::Error),
    /// The namespace could not be entered to open a socket there.
    #[error(transparent)]
    NetNs(#[from] NetNsError),
    /// A link of that name exists with another type.
    #[error("link {name:?} exists but is a {found}, not a {expected}")]
    WrongKind {
        name: String,
        expected: &'static str,
        found: String,
    },
    /// A link that was just created or named could not be found.
    #[error("link {0:?} not found")]
    NotFound(String),
}

impl LinkError {
    /// The errno the kernel answered with, if this is a kernel refusal.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            LinkError::Netlink {
                source: rtnetlink::Error::NetlinkError(msg),
                ..
            } => Some(Errno::from_raw(msg.raw_code().abs())),
            _ => None,
        }
    }

    /// The kernel refused because the object exists already (`EEXIST`).
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(Errno::EEXIST)
    }
}

type Result<T> = std::result::Result<T, LinkError>;

fn nl_err(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> LinkError {
    let op = op.into();
    move |source| LinkError::Netlink { op, source }
}

/// The outcome of a request that asks for a state: `Ok(true)` when the kernel made the change,
/// `Ok(false)` when it answered one of `tolerated` (the state was already there: "exists" for a
/// create, "gone" for a delete), the error otherwise.
fn tolerate(
    outcome: std::result::Result<(), rtnetlink::Error>,
    op: impl Into<String>,
    tolerated: &[Errno],
) -> Result<bool> {
    match outcome {
        Ok(()) => Ok(true),
        Err(e) => {
            let err = nl_err(op)(e);
            match err.errno() {
                Some(errno) if tolerated.contains(&errno) => Ok(false),
                _ => Err(err),
            }
        }
    }
}

/// One network interface as `ip -d link show` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `IFLA_INFO_KIND` (`bridge`, `veth`, `dummy`, ...); `None` for kind-less devices (`lo`).
    pub kind: Option<String>,
    pub mtu: u32,
    /// The hardware address; empty for devices without one.
    pub mac: Vec<u8>,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Promiscuous (`IFF_PROMISC`).
    pub promisc: bool,
    /// Index of the bridge (or other controller) this link is a port of.
    pub master: Option<u32>,
    /// Bridge-port settings, when this link is a bridge port.
    pub port: Option<BridgePort>,
    /// `IFLA_IFALIAS` (`ip link set dev NAME alias TEXT`): where cni-bridge writes the ownership
    /// marker of a link it created; empty when unset.
    pub alias: String,
}

/// The bridge-port flags we manage (`bridge link show`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BridgePort {
    /// `hairpin on`: frames may leave through the port they came in on.
    pub hairpin: bool,
    /// `isolated on`: no traffic to other isolated ports.
    pub isolated: bool,
}

impl Link {
    fn from_message(msg: LinkMessage) -> Link {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            kind: None,
            mtu: 0,
            mac: Vec::new(),
            up: msg.header.flags.contains(LinkFlags::Up),
            promisc: msg.header.flags.contains(LinkFlags::Promisc),
            master: None,
            port: None,
            alias: String::new(),
        };
        for attr in msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n,
                LinkAttribute::Mtu(m) => link.mtu = m,
                LinkAttribute::Address(a) => link.mac = a,
                LinkAttribute::Controller(c) => link.master = Some(c),
                LinkAttribute::IfAlias(a) => link.alias = a,
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            LinkInfo::Kind(k) => link.kind = Some(k.to_string()),
                            LinkInfo::PortData(InfoPortData::BridgePort(opts)) => {
                                let mut port = BridgePort::default();
                                for o in opts {
                                    match o {
                                        InfoBridgePort::HairpinMode(v) => port.hairpin = v,
                                        InfoBridgePort::Isolated(v) => port.isolated = v,
                                        _ => {}
                                    }
                                }
                                link.port = Some(port);
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }

    /// The MAC formatted `aa:bb:cc:dd:ee:ff`, as CNI results carry it.
    pub fn mac_string(&self) -> String {
        format_mac(&self.mac)
    }
}

/// Formats a hardware address as lower-case colon-separated hex.
pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff` (or `-` separated) into 6 bytes.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 {
            return None;
        }
        mac[i] = u8::from_str_radix(p, 16).ok()?;
    }
    Some(mac)
}

/// What [`Rtnl::ensure_bridge`] creates when the bridge is absent.
#[derive(Debug, Clone, Default)]
pub struct BridgeSpec {
    pub name: String,
    /// MTU at creation (`0`: kernel default).
    pub mtu: u32,
    /// Fixed MAC at creation, so the bridge does not take over its ports' addresses as they
    /// come and go.
    pub mac: Option<[u8; 6]>,
}

/// A veth pair whose second end is created directly inside another namespace
/// (`ip link add NAME ... type veth peer name PEER netns NS`).
#[derive(Debug)]
pub struct VethSpec<'a> {
    /// Name of the end that stays in this socket's namespace.
    pub name: String,
    pub mac: Option<[u8; 6]>,
    /// MTU of both ends (`0`: kernel default).
    pub mtu: u32,
    /// Transmit queue length of both ends (`txqueuelen`); `None`: kernel default (1000).
    pub txqlen: Option<u32>,
    /// Bridge the local end is enslaved to at creation (`master`).
    pub master: Option<u32>,
    /// Name of the end created in `peer_netns`.
    pub peer_name: String,
    pub peer_mac: Option<[u8; 6]>,
    pub peer_netns: &'a NetNs,
}

/// One route as `ip route` shows it (main table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNetwork,
    pub gateway: Option<IpAddr>,
    /// Output interface index.
    pub oif: Option<u32>,
    /// Who installed it (`ip route ... proto N`): [`PROTO_BOOT`] is what `ip route add` uses;
    /// a daemon marks the routes it owns with a number of its own.
    pub protocol: u8,
}

/// `proto boot`: the route protocol `ip route add` sets when none is named.
pub const PROTO_BOOT: u8 = 3;

/// An rtnetlink socket bound to one namespace, with its connection task on the current tokio
/// runtime.
#[derive(Clone)]
pub struct Rtnl {
    handle: Handle,
}

impl Rtnl {
    /// A socket in the calling thread's namespace. Must be called inside a tokio runtime.
    pub fn new() -> Result<Rtnl> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(LinkError::Socket)?;
        tokio::spawn(conn);
        Ok(Rtnl { handle })
    }

    /// A socket opened inside `ns` (it stays bound there), driven by the current runtime.
    pub fn in_netns(ns: &NetNs) -> Result<Rtnl> {
        let runtime = tokio::runtime::Handle::current();
        let socket = ns
            .run(move || {
                // Registering with the runtime's reactor works from any thread once entered.
                let _guard = runtime.enter();
                <netlink_sys::TokioSocket as netlink_sys::AsyncSocket>::new(
                    netlink_sys::protocols::NETLINK_ROUTE,
                )
            })?
            .map_err(LinkError::Socket)?;
        let (conn, handle, _) = rtnetlink::from_socket(socket);
        tokio::spawn(conn);
        Ok(Rtnl { handle })
    }

    /// The link of that name (`ip -d link show NAME`), if any.
    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>> {
        let req = self.handle.link().get().match_name(name.to_string());
        Self::one_link(req.execute(), format!("get link {name}")).await
    }

    async fn one_link(
        stream: impl futures::Stream<Item = std::result::Result<LinkMessage, rtnetlink::Error>>,
        op: String,
    ) -> Result<Option<Link>> {
        let mut stream = std::pin::pin!(stream);
        match stream.try_next().await {
            Ok(Some(msg)) => Ok(Some(Link::from_message(msg))),
            Ok(None) => Ok(None),
            Err(e) => tolerate(Err(e), op, &[Errno::ENODEV]).map(|_| None),
        }
    }

    /// Returns the link named `name` if it is of `kind`, `None` if absent, else `WrongKind`.
    async fn existing_of_kind(&self, name: &str, kind: &'static str) -> Result<Option<Link>> {
        match self.link_by_name(name).await? {
            Some(l) if l.kind.as_deref() == Some(kind) => Ok(Some(l)),
            Some(l) => Err(LinkError::WrongKind {
                name: name.to_string(),
                expected: kind,
                found: l.kind.unwrap_or_else(|| "device without a kind".into()),
            }),
            None => Ok(None),
        }
    }

    /// Creates `msg` with `NLM_F_EXCL`; returns `false` when it already existed.
    async fn create(&self, msg: LinkMessage, op: String) -> Result<bool> {
        let outcome = self.handle.link().add(msg).execute().await;
        tolerate(outcome, op, &[Errno::EEXIST])
    }

    /// Gets or creates a `dummy` link, up (`ip link add NAME type dummy; ip link set NAME up`).
    /// Fails with [`LinkError::WrongKind`] if the name is taken by another kind.
    pub async fn ensure_dummy(&self, name: &str) -> Result<Link> {
        let mut link = match self.existing_of_kind(name, "dummy").await? {
            Some(l) => l,
            None => {
                let msg = LinkDummy::new(name).up().build();
                self.create(msg, format!("create dummy {name}")).await?;
                match self.existing_of_kind(name, "dummy").await? {
                    Some(l) => l,
                    None => return Err(LinkError::NotFound(name.to_string())),
                }
            }
        };
        if !link.up {
            self.set_up(link.index).await?;
            link.up = true;
        }
        Ok(link)
    }

    /// Gets or creates a bridge, up (`ip link add NAME [mtu M] [address MAC] type bridge;
    /// ip link set NAME up`). Returns the link and whether this call created it. A racing
    /// creator's bridge counts as found; another kind of link under that name is
    /// [`LinkError::WrongKind`].
    pub async fn ensure_bridge(&self, spec: &BridgeSpec) -> Result<(Link, bool)> {
        if let Some(l) = self.existing_of_kind(&spec.name, "bridge").await? {
            if !l.up {
                self.set_up(l.index).await?;
            }
            return Ok((Link { up: true, ..l }, false));
        }
        let mut b = LinkBridge::new(&spec.name);
        if spec.mtu != 0 {
            b = b.mtu(spec.mtu);
        }
        if let Some(mac) = spec.mac {
            b = b.address(mac.to_vec());
        }
        let created = self
            .create(b.build(), format!("create bridge {}", spec.name))
            .await?;
        let mut link = self
            .existing_of_kind(&spec.name, "bridge")
            .await?
            .ok_or_else(|| LinkError::NotFound(spec.name.clone()))?;
        if !link.up {
            self.set_up(link.index).await?;
            link.up = true;
        }
        Ok((link, created))
    }

    /// Creates a veth pair with the local end up, optionally on a bridge, and the peer
    /// directly in another namespace, in one request (`ip link add NAME [address MAC] [mtu M]
    /// [master BR] up type veth peer name PEER netns NS [address MAC] [mtu M]`). The peer
    /// stays down (the kernel cannot open it before the pair is linked): set it up from a
    /// socket in its namespace. An existing link named like either end fails with `EEXIST`.
    pub async fn create_veth(&self, spec: &VethSpec<'_>) -> Result<()> {
        let mut peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(spec.peer_name.clone())
            .setns_by_fd(spec.peer_netns.raw_fd());
        if spec.mtu != 0 {
            peer = peer.mtu(spec.mtu);
        }
        if let Some(mac) = spec.peer_mac {
            peer = peer.address(mac.to_vec());
        }
        if let Some(q) = spec.txqlen {
            peer = peer.txqueuelen(q);
        }
        let mut local = LinkVeth::new(&spec.name, &spec.peer_name)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())))
            .up();
        if spec.mtu != 0 {
            local = local.mtu(spec.mtu);
        }
        if let Some(mac) = spec.mac {
            local = local.address(mac.to_vec());
        }
        if let Some(master) = spec.master {
            local = local.controller(master);
        }
        if let Some(q) = spec.txqlen {
            local = local.txqueuelen(q);
        }
        self.handle
            .link()
            .add(local.build())
            .execute()
            .await
            .map_err(nl_err(format!(
                "create veth {} (peer {})",
                spec.name, spec.peer_name
            )))
    }

    /// Deletes a link (`ip link del dev NAME` by index); `false` if it was already gone.
    pub async fn delete_link(&self, index: u32) -> Result<bool> {
        let outcome = self.handle.link().del(index).execute().await;
        tolerate(outcome, format!("delete link #{index}"), &[Errno::ENODEV])
    }

    /// Deletes the link of that name if present (`ip link del NAME`), in one request; `false`
    /// if absent. Only for links whose name alone proves they are the caller's (e.g. a dummy
    /// device named by config); anything else is looked up and its marker checked first.
    pub async fn delete_link_by_name(&self, name: &str) -> Result<bool> {
        let msg = LinkUnspec::new_with_name(name).build();
        let outcome = self.handle.link().del_with_message(msg).execute().await;
        tolerate(outcome, format!("delete link {name}"), &[Errno::ENODEV])
    }

    async fn set(&self, msg: LinkMessage, op: String) -> Result<()> {
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(nl_err(op))
    }

    /// `ip link set dev IFACE up`.
    pub async fn set_up(&self, index: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.set(msg, format!("set link #{index} up")).await
    }

    /// `ip link set dev IFACE alias ALIAS up`: one request that marks the link (see
    /// [`Link::alias`]) and brings it up.
    pub async fn set_up_with_alias(&self, index: u32, alias: &str) -> Result<()> {
        let mut msg = LinkUnspec::new_with_index(index).up().build();
        msg.attributes
            .push(LinkAttribute::IfAlias(alias.to_string()));
        self.set(msg, format!("set link #{index} alias {alias:?} up"))
            .await
    }

    /// `ip link set dev IFACE promisc on|off`.
    pub async fn set_promisc(&self, index: u32, on: bool) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).promiscuous(on).build();
        self.set(msg, format!("set link #{index} promisc {on}"))
            .await
    }

    /// `ip link set dev IFACE mtu MTU`.
    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).mtu(mtu).build();
        self.set(msg, format!("set link #{index} mtu {mtu}")).await
    }

    /// Marks a bridge port and sets its flags in one request, addressing it by name
    /// (`ip link set dev NAME alias ALIAS type bridge_slave hairpin on|off isolated on|off`).
    pub async fn set_bridge_port(&self, name: &str, alias: &str, port: BridgePort) -> Result<()> {
        let mut msg = LinkBridgePort::new(0)
            .hairpin(port.hairpin)
            .isolated(port.isolated)
            .build();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes
            .push(LinkAttribute::IfAlias(alias.to_string()));
        self.handle
            .link()
            .set_port(msg)
            .execute()
            .await
            .map_err(nl_err(format!("set bridge port {name} {port:?}")))
    }

    /// `ip link set dev NAME alias ALIAS`, addressing the link by name.
    pub async fn set_alias(&self, name: &str, alias: &str) -> Result<()> {
        let mut msg = LinkUnspec::new_with_name(name).build();
        msg.attributes
            .push(LinkAttribute::IfAlias(alias.to_string()));
        self.set(msg, format!("set link {name} alias {alias:?}"))
            .await
    }

    /// The addresses on a link (`ip addr show dev IFACE`).
    pub async fn addresses(&self, index: u32) -> Result<Vec<IpNetwork>> {
        self.list_addresses(index, AddressFamily::Unspec).await
    }

    /// The addresses of one family on a link (`ip -4|-6 addr show dev IFACE`); the kernel
    /// dumps only that family.
    pub async fn addresses_of_family(&self, index: u32, family: Family) -> Result<Vec<IpNetwork>> {
        self.list_addresses(index, address_family(family)).await
    }

    async fn list_addresses(&self, index: u32, family: AddressFamily) -> Result<Vec<IpNetwork>> {
        let mut req = self.handle.address().get().set_link_index_filter(index);
        req.message_mut().header.family = family;
        let msgs: Vec<_> = req
            .execute()
            .try_collect()
            .await
            .map_err(nl_err(format!("list addresses of #{index}")))?;
        let mut out = Vec::new();
        for msg in msgs {
            let prefix = msg.header.prefix_len;
            // IFA_LOCAL is the interface's own address on point-to-point links; else IFA_ADDRESS.
            let mut addr = None;
            for attr in &msg.attributes {
                match attr {
                    AddressAttribute::Local(a) => addr = Some(*a),
                    AddressAttribute::Address(a) if addr.is_none() => addr = Some(*a),
                    _ => {}
                }
            }
            if let Some(a) = addr {
                if let Ok(n) = IpNetwork::new(a, prefix) {
                    out.push(n);
                }
            }
        }
        Ok(out)
    }

    /// `ip addr add ADDR/PREFIX dev IFACE`; `false` when it was already there.
    pub async fn add_address(&self, index: u32, addr: IpNetwork) -> Result<bool> {
        let req = self.handle.address().add(index, addr.ip(), addr.prefix());
        let outcome = req.execute().await;
        tolerate(
            outcome,
            format!("add address {addr} to #{index}"),
            &[Errno::EEXIST],
        )
    }

    /// `ip addr del ADDR/PREFIX dev IFACE`; `false` when it was not there.
    pub async fn del_address(&self, index: u32, addr: IpNetwork) -> Result<bool> {
        let mut msg = netlink_packet_route::address::AddressMessage::default();
        msg.header.index = index;
        msg.header.prefix_len = addr.prefix();
        msg.header.family = family_of(addr.ip());
        msg.attributes.push(AddressAttribute::Local(addr.ip()));
        if addr.is_ipv6() {
            msg.attributes.push(AddressAttribute::Address(addr.ip()));
        }
        let outcome = self.handle.address().del(msg).execute().await;
        tolerate(
            outcome,
            format!("delete address {addr} from #{index}"),
            &[Errno::EADDRNOTAVAIL, Errno::ENODEV],
        )
    }

    /// The main-table unicast routes of one family (`ip [-6] route show`).
    pub async fn routes(&self, family: Family) -> Result<Vec<Route>> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = address_family(family);
        let msgs: Vec<RouteMessage> = self
            .handle
            .route()
            .get(msg)
            .execute()
            .try_collect()
            .await
            .map_err(nl_err("dump routes"))?;
        let mut out = Vec::new();
        for m in msgs {
            if m.header.kind != RouteType::Unicast {
                continue;
            }
            let mut table = u32::from(m.header.table);
            let protocol = u8::from(m.header.protocol);
            let mut dst = None;
            let mut gateway = None;
            let mut oif = None;
            for attr in &m.attributes {
                match attr {
                    RouteAttribute::Destination(a) => dst = route_addr(a),
                    RouteAttribute::Gateway(a) => gateway = route_addr(a),
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::Table(t) => table = *t,
                    _ => {}
                }
            }
            if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
                continue;
            }
            let dst_ip = dst.unwrap_or_else(|| family.any().ip());
            if let Ok(dst) = IpNetwork::new(dst_ip, m.header.destination_prefix_length) {
                out.push(Route {
                    dst,
                    gateway,
                    oif,
                    protocol,
                });
            }
        }
        Ok(out)
    }

    fn route_message(route: &Route) -> RouteMessage {
        let mut msg = RouteMessage::default();
        msg.header.address_family = family_of(route.dst.ip());
        msg.header.destination_prefix_length = route.dst.prefix();
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::from(route.protocol);
        msg.header.scope = if route.gateway.is_none() && route.oif.is_some() {
            RouteScope::Link
        } else {
            RouteScope::Universe
        };
        msg.header.kind = RouteType::Unicast;
        if route.dst.prefix() != 0 {
            msg.attributes
                .push(RouteAttribute::Destination(to_route_addr(
                    route.dst.network(),
                )));
        }
        if let Some(gw) = route.gateway {
            msg.attributes
                .push(RouteAttribute::Gateway(to_route_addr(gw)));
        }
        if let Some(oif) = route.oif {
            msg.attributes.push(RouteAttribute::Oif(oif));
        }
        msg
    }

    /// `ip route add DST [via GW] [dev IFACE]`; `false` when it was already there.
    pub async fn add_route(&self, route: &Route) -> Result<bool> {
        let msg = Self::route_message(route);
        let outcome = self.handle.route().add(msg).execute().await;
        tolerate(outcome, format!("add route {route:?}"), &[Errno::EEXIST])
    }

    /// `ip route del DST [via GW] proto N`; `false` when it was not there.
    pub async fn del_route(&self, route: &Route) -> Result<bool> {
        let msg = Self::route_message(route);
        let outcome = self.handle.route().del(msg).execute().await;
        tolerate(
            outcome,
            format!("delete route {route:?}"),
            &[Errno::ESRCH, Errno::ENOENT],
        )
    }

    /// Every address of every link but `except` (`ip addr` less one device), with its link index.
    pub async fn all_addresses(&self, except: Option<u32>) -> Result<Vec<(u32, IpNetwork)>> {
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(nl_err("list addresses"))?;
        let mut out = Vec::new();
        for msg in msgs {
            let index = msg.header.index;
            if Some(index) == except {
                continue;
            }
            let mut addr = None;
            for attr in &msg.attributes {
                match attr {
                    AddressAttribute::Local(a) => addr = Some(*a),
                    AddressAttribute::Address(a) if addr.is_none() => addr = Some(*a),
                    _ => {}
                }
            }
            if let Some(n) = addr.and_then(|a| IpNetwork::new(a, msg.header.prefix_len).ok()) {
                out.push((index, n));
            }
        }
        Ok(out)
    }

    /// Gets a link that must exist (e.g. right after creating it).
    pub async fn require_link(&self, name: &str) -> Result<Link> {
        self.link_by_name(name)
            .await?
            .ok_or_else(|| LinkError::NotFound(name.to_string()))
    }
}

fn address_family(family: Family) -> AddressFamily {
    match family {
        Family::V4 => AddressFamily::Inet,
        Family::V6 => AddressFamily::Inet6,
    }
}

fn family_of(ip: IpAddr) -> AddressFamily {
    address_family(Family::of(ip))
}

fn route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn to_route_addr(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(v4) => RouteAddress::Inet(v4),
        IpAddr::V6(v6) => RouteAddress::Inet6(v6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip() {
        let mac = parse_mac("0A:58:0a:00:00:0b").unwrap();
        assert_eq!(mac, [0x0a, 0x58, 0x0a, 0, 0, 0x0b]);
        assert_eq!(format_mac(&mac), "0a:58:0a:00:00:0b");
        assert_eq!(parse_mac("0a:58:0a:00:00"), None);
        assert_eq!(parse_mac("0a:58:0a:00:00:zz"), None);
    }

    #[test]
    fn default_route_message_has_no_destination_attribute() {
        let msg = Rtnl::route_message(&Route {
            dst: "0.0.0.0/0".parse().unwrap(),
            gateway: Some("10.0.0.1".parse().unwrap()),
            oif: Some(3),
            protocol: PROTO_BOOT,
        });
        assert_eq!(msg.header.destination_prefix_length, 0);
        assert_eq!(msg.header.protocol, RouteProtocol::Boot);
        assert!(!msg
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Destination(_))));
        assert!(msg
            .attributes
            .contains(&RouteAttribute::Gateway(RouteAddress::Inet(
                "10.0.0.1".parse().unwrap()
            ))));
    }
}
