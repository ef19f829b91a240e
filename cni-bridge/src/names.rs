//! Names derived from stable hashes, so DEL and GC find what an ADD created even without its
//! record, and random MACs.

use std::io::Read;

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

/// Host-side veth name: `veth` + 8 hex of hash(network, containerID, ifname, attempt).
/// Attempt 0 is what DEL/GC derive without a record; higher attempts only follow a collision
/// and are recorded.
pub fn host_veth(network: &str, container_id: &str, ifname: &str, attempt: u32) -> String {
    let attempt = attempt.to_string();
    let mut parts = vec![network, container_id, ifname];
    if attempt != "0" {
        parts.push(&attempt);
    }
    format!("veth{}", hex8(fnv1a(&parts)))
}

/// The masquerade ipset (and nat chain) of a network: `CNIB-` + 8 hex of hash(network);
/// `CNIB6-...` for IPv6.
pub fn masq_set(network: &str, v6: bool) -> String {
    let prefix = if v6 { "CNIB6-" } else { "CNIB-" };
    format!("{prefix}{}", hex8(fnv1a(&[network])))
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
    }

    #[test]
    fn set_names_fit_ipset_limits() {
        let s = masq_set("podnet", false);
        assert!(s.starts_with("CNIB-") && s.len() == 13);
        assert!(masq_set("podnet", true).starts_with("CNIB6-"));
        assert!(masq_set(&"n".repeat(200), true).len() <= 31);
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
