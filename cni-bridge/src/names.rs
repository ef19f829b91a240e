//! Names and ownership markers derived from an attachment or a network, so DEL and GC find
//! what an ADD created even without its record and never take another's object for it; and
//! random MACs.
//!
//! Host veth names are short (the kernel allows 15 characters) and may collide; every veth we
//! create therefore carries a marker (`IFLA_IFALIAS`) naming its attachment, checked before
//! anything is deleted. Masquerade set names are long enough (88 bits of SHA-256) that no two
//! network names share one, chosen or not.

use std::io::Read;

use nodenet::Family;
use sha2::{Digest, Sha256};

/// Veth names tried, in order, when the derived one is taken by another attachment.
pub const VETH_ATTEMPTS: u32 = 4;

/// 64-bit FNV-1a: stable across builds and platforms (unlike `DefaultHasher`).
fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            // Hashing a 0 byte (which validated names never contain) between parts keeps
            // ("ab","c") apart from ("a","bc"); XOR with 0 is a no-op, so only the multiply.
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        for b in p.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

fn hex8(h: u64) -> String {
    format!("{:08x}", (h ^ (h >> 32)) as u32)
}

/// SHA-256 of the parts joined by a 0 byte, as lower-case hex, `chars` long.
fn sha256_hex(parts: &[&str], chars: usize) -> String {
    let mut h = Sha256::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h.update([0u8]);
        }
        h.update(p.as_bytes());
    }
    let digest = h.finalize();
    let mut out: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    out.truncate(chars);
    out
}

/// Host-side veth name: `veth` + 8 hex of hash(network, containerID, ifname, attempt).
/// Attempt 0 is what DEL/GC derive first without a record; higher attempts only follow a
/// collision and are recorded.
pub fn host_veth(network: &str, container_id: &str, ifname: &str, attempt: u32) -> String {
    let attempt = attempt.to_string();
    let mut parts = vec![network, container_id, ifname];
    if attempt != "0" {
        parts.push(&attempt);
    }
    format!("veth{}", hex8(fnv1a(&parts)))
}

/// Every name [`host_veth`] may have given this attachment's veth.
pub fn host_veth_candidates(network: &str, container_id: &str, ifname: &str) -> Vec<String> {
    (0..VETH_ATTEMPTS)
        .map(|a| host_veth(network, container_id, ifname, a))
        .collect()
}

/// The ownership marker set as the alias of both ends of an attachment's veth pair:
/// `cni-bridge:` + 32 hex of SHA-256(network, containerID, ifname).
pub fn link_marker(network: &str, container_id: &str, ifname: &str) -> String {
    format!(
        "cni-bridge:{}",
        sha256_hex(&[network, container_id, ifname], 32)
    )
}

/// Which naming of masquerade sets a set belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetGeneration {
    /// `CNIB-` + 22 hex of SHA-256(network): what this version creates.
    Current,
    /// `CNIB-` + 8 hex of FNV-1a(network), written by the previous version; its members and
    /// rules are still read, checked and released, never created.
    Legacy,
}

/// The masquerade ipset (and nat chain) of a network and family: `CNIB-<22 hex>` /
/// `CNIB6-<22 hex>` (at most 28 characters, iptables' limit for a chain name).
pub fn masq_set(network: &str, family: Family, generation: SetGeneration) -> String {
    let prefix = match family {
        Family::V4 => "CNIB-",
        Family::V6 => "CNIB6-",
    };
    match generation {
        SetGeneration::Current => format!("{prefix}{}", sha256_hex(&[network], 22)),
        SetGeneration::Legacy => format!("{prefix}{}", hex8(fnv1a(&[network]))),
    }
}

/// The generation of the set a record names (`masqSet`): legacy only when it is exactly the
/// network's legacy IPv4 name; any other value (including a forged one) means this network's
/// current sets, never the set named.
pub fn generation_of(network: &str, masq_set_field: Option<&str>) -> SetGeneration {
    if masq_set_field == Some(&masq_set(network, Family::V4, SetGeneration::Legacy)) {
        SetGeneration::Legacy
    } else {
        SetGeneration::Current
    }
}

/// Random locally administered unicast MACs (kernel-assigned MACs are random too; choosing
/// them here saves a round trip to read them back).
pub fn random_macs<const N: usize>() -> std::io::Result<[[u8; 6]; N]> {
    let mut bytes = vec![0u8; 6 * N];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let mut out = [[0u8; 6]; N];
    for (i, mac) in out.iter_mut().enumerate() {
        mac.copy_from_slice(&bytes[i * 6..i * 6 + 6]);
        mac[0] = (mac[0] & 0xfe) | 0x02;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_are_stable_and_distinct() {
        let a = host_veth("podnet", "c1", "eth0", 0);
        assert_eq!(a, host_veth("podnet", "c1", "eth0", 0));
        assert_eq!(a.len(), 12);
        assert!(a.starts_with("veth"));
        assert!(a[4..].chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, host_veth("podnet", "c1", "eth1", 0));
        assert_ne!(a, host_veth("podnet", "c1", "eth0", 1));
        assert_ne!(
            host_veth("ab", "c", "eth0", 0),
            host_veth("a", "bc", "eth0", 0)
        );
        // Pinned so a change of the hash (which would orphan veths on upgrade) fails a test.
        assert_eq!(host_veth("podnet", "c1", "eth0", 0), "veth43d3b296");
        assert_eq!(host_veth_candidates("podnet", "c1", "eth0")[0], a);
    }

    #[test]
    fn markers_name_the_attachment() {
        let m = link_marker("podnet", "c1", "eth0");
        assert_eq!(m.len(), "cni-bridge:".len() + 32);
        assert_ne!(m, link_marker("podnet", "c1", "eth1"));
        assert_ne!(m, link_marker("podnet", "c1.eth0", ""));
        assert_ne!(
            link_marker("a.b", "c", "eth0"),
            link_marker("a", "b.c", "eth0")
        );
    }

    #[test]
    fn set_names_fit_ipset_and_iptables_limits() {
        for family in Family::ALL {
            let s = masq_set(&"n".repeat(200), family, SetGeneration::Current);
            assert!(s.len() <= 28, "{s}");
        }
        let s = masq_set("podnet", Family::V4, SetGeneration::Current);
        assert!(s.starts_with("CNIB-") && s.len() == 27);
        let s6 = masq_set("podnet", Family::V6, SetGeneration::Current);
        assert_eq!(&s6["CNIB6-".len()..], &s["CNIB-".len()..]);
        // The previous version's name, pinned: records written by it name this set.
        assert_eq!(
            masq_set("podnet", Family::V4, SetGeneration::Legacy),
            "CNIB-8fe508ed"
        );
    }

    /// Network names whose previous-version set names collide (found by search; the
    /// 32-bit hash made such pairs easy) get distinct sets now.
    #[test]
    fn networks_whose_legacy_sets_collided_get_distinct_sets() {
        for (a, b) in COLLIDING_NETWORKS {
            assert_eq!(
                masq_set(a, Family::V4, SetGeneration::Legacy),
                masq_set(b, Family::V4, SetGeneration::Legacy),
                "{a} / {b} no longer collide under the legacy hash"
            );
            for family in Family::ALL {
                assert_ne!(
                    masq_set(a, family, SetGeneration::Current),
                    masq_set(b, family, SetGeneration::Current)
                );
            }
        }
    }

    /// Pairs of network names with the same legacy set name.
    pub const COLLIDING_NETWORKS: &[(&str, &str)] = &[
        ("net27291", "net72494"),
        ("tenant.8831-net", "tenant.63259-net"),
    ];

    #[test]
    fn forged_set_names_mean_the_current_sets() {
        assert_eq!(
            generation_of("podnet", Some("CNIB-8fe508ed")),
            SetGeneration::Legacy
        );
        assert_eq!(
            generation_of("podnet", Some("SVCPROXY-LOOP-BACK")),
            SetGeneration::Current
        );
        assert_eq!(generation_of("podnet", None), SetGeneration::Current);
    }

    #[test]
    fn macs_are_local_unicast() {
        let [a, b] = random_macs::<2>().unwrap();
        assert_ne!(a, b);
        for m in [a, b] {
            assert_eq!(m[0] & 0x03, 0x02);
        }
    }
}
