//! The address family, one type for every layer: rtnetlink dumps, ipset sets, iptables or
//! ip6tables, and the callers' per-family loops.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

/// IPv4 or IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Family {
    #[default]
    V4,
    V6,
}

impl Family {
    /// Both families, IPv4 first (the order per-family work is done in).
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// The family of an address.
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The family of a network.
    pub fn of_net(net: &IpNetwork) -> Family {
        Family::of(net.ip())
    }

    /// `NFPROTO_IPV4` / `NFPROTO_IPV6` (the same numbers as `AF_INET` / `AF_INET6`).
    pub fn nfproto(self) -> u8 {
        match self {
            Family::V4 => 2,
            Family::V6 => 10,
        }
    }

    /// The family for an `NFPROTO_*` / `AF_*` value.
    pub fn from_nfproto(v: u8) -> Option<Family> {
        match v {
            2 => Some(Family::V4),
            10 => Some(Family::V6),
            _ => None,
        }
    }

    /// `inet` / `inet6`, as `ipset` and `ip` print it.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::V4 => "inet",
            Family::V6 => "inet6",
        }
    }

    /// The default route's destination: `0.0.0.0/0` or `::/0`.
    pub fn any(self) -> IpNetwork {
        let ip = match self {
            Family::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            Family::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        IpNetwork::new(ip, 0).expect("a /0 is valid")
    }

    /// The multicast range: `224.0.0.0/4` or `ff00::/8`.
    pub fn multicast(self) -> IpNetwork {
        match self {
            Family::V4 => IpNetwork::new(IpAddr::V4(Ipv4Addr::new(224, 0, 0, 0)), 4),
            Family::V6 => IpNetwork::new(IpAddr::V6(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0)), 8),
        }
        .expect("valid prefix")
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn family_of_addresses_and_networks() {
        assert_eq!(Family::of("10.0.0.1".parse().unwrap()), Family::V4);
        assert_eq!(Family::of("fd00::1".parse().unwrap()), Family::V6);
        assert_eq!(Family::of_net(&"fd00::/64".parse().unwrap()), Family::V6);
        assert_eq!(Family::from_nfproto(Family::V6.nfproto()), Some(Family::V6));
        assert_eq!(Family::from_nfproto(7), None);
        assert_eq!(Family::V4.any().to_string(), "0.0.0.0/0");
        assert_eq!(Family::V6.multicast().to_string(), "ff00::/8");
    }
}
