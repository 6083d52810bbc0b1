//! Which addresses of a pod CIDR may be handed out, and finding the next free one.
//!
//! Reserved: the network address (IPv4: also the first host, the conventional gateway, and
//! the broadcast address; IPv6: the subnet-router anycast address `::0` and `::1`). Point to
//! point sizes (/31, /32, /127, /128) reserve nothing. The search is round robin: it starts
//! after the last address handed out, so a released address is not reused at once (a late
//! packet for a deleted pod must not reach its successor).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// First and last assignable addresses of `pool`, as integers.
fn bounds(pool: &IpNet) -> (u128, u128) {
    match pool {
        IpNet::V4(n) => {
            let lo = u32::from(n.network()) as u128;
            let hi = u32::from(n.broadcast()) as u128;
            if n.prefix_len() >= 31 {
                (lo, hi)
            } else {
                // network, gateway-like first host, broadcast
                (lo + 2, hi - 1)
            }
        }
        IpNet::V6(n) => {
            let lo = u128::from(n.network());
            let hi = u128::from(n.broadcast());
            if n.prefix_len() >= 127 {
                (lo, hi)
            } else {
                (lo + 2, hi)
            }
        }
    }
}

fn to_addr(pool: &IpNet, v: u128) -> IpAddr {
    match pool {
        IpNet::V4(_) => IpAddr::V4(Ipv4Addr::from(v as u32)),
        IpNet::V6(_) => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

fn to_int(a: &IpAddr) -> u128 {
    match a {
        IpAddr::V4(a) => u32::from(*a) as u128,
        IpAddr::V6(a) => u128::from(*a),
    }
}

/// How many addresses of `pool` can be handed out (saturating for huge IPv6 pools).
pub fn capacity(pool: &IpNet) -> u128 {
    let (lo, hi) = bounds(pool);
    if hi < lo {
        0
    } else {
        (hi - lo).saturating_add(1)
    }
}

/// Whether `a` is an assignable address of `pool`.
pub fn assignable(pool: &IpNet, a: &IpAddr) -> bool {
    if !pool.contains(a) {
        return false;
    }
    let (lo, hi) = bounds(pool);
    let v = to_int(a);
    v >= lo && v <= hi
}

/// The next free address of `pool` after `after` (round robin), or `None` when full.
pub fn next_free(pool: &IpNet, used: &HashSet<IpAddr>, after: Option<IpAddr>) -> Option<IpAddr> {
    let (lo, hi) = bounds(pool);
    if hi < lo {
        return None;
    }
    let start = match after {
        Some(a) if assignable(pool, &a) => {
            let v = to_int(&a);
            if v >= hi { lo } else { v + 1 }
        }
        _ => lo,
    };
    // Only as many steps as there are used addresses (plus one) can be needed: the search
    // stops at the first gap, and huge IPv6 pools are never walked.
    let steps = (used.len() as u128 + 1).min(hi - lo + 1);
    let mut v = start;
    for _ in 0..steps {
        let a = to_addr(pool, v);
        if !used.contains(&a) {
            return Some(a);
        }
        v = if v >= hi { lo } else { v + 1 };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv4_skips_network_gateway_and_broadcast() {
        let p = net("10.244.7.0/24");
        assert_eq!(capacity(&p), 253);
        assert_eq!(next_free(&p, &HashSet::new(), None), Some(ip("10.244.7.2")));
        assert!(!assignable(&p, &ip("10.244.7.0")));
        assert!(!assignable(&p, &ip("10.244.7.1")));
        assert!(!assignable(&p, &ip("10.244.7.255")));
        assert!(assignable(&p, &ip("10.244.7.254")));
        // Wraps after the last one, skipping the reserved ones.
        assert_eq!(
            next_free(&p, &HashSet::new(), Some(ip("10.244.7.254"))),
            Some(ip("10.244.7.2"))
        );
    }

    #[test]
    fn ipv6_skips_anycast_and_one() {
        let p = net("fd00:10:244:7::/64");
        assert_eq!(
            next_free(&p, &HashSet::new(), None),
            Some(ip("fd00:10:244:7::2"))
        );
        assert!(assignable(&p, &ip("fd00:10:244:7:ffff:ffff:ffff:ffff")));
    }

    #[test]
    fn round_robin_and_full() {
        let p = net("10.0.0.0/29"); // .2 to .6
        let mut used = HashSet::new();
        let mut last = None;
        for want in ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"] {
            let a = next_free(&p, &used, last).unwrap();
            assert_eq!(a, ip(want));
            used.insert(a);
            last = Some(a);
        }
        assert_eq!(next_free(&p, &used, last), None);
        // Free .3: the next one is .3 even though the cursor is at .6.
        used.remove(&ip("10.0.0.3"));
        assert_eq!(next_free(&p, &used, last), Some(ip("10.0.0.3")));
        // A released address is not the very next one when others are free.
        used.remove(&ip("10.0.0.5"));
        assert_eq!(
            next_free(&p, &used, Some(ip("10.0.0.3"))),
            Some(ip("10.0.0.5"))
        );
    }

    #[test]
    fn point_to_point_sizes_use_everything() {
        assert_eq!(capacity(&net("10.0.0.0/31")), 2);
        assert_eq!(capacity(&net("10.0.0.7/32")), 1);
        assert_eq!(
            next_free(&net("10.0.0.7/32"), &HashSet::new(), None),
            Some(ip("10.0.0.7"))
        );
        assert_eq!(capacity(&net("fd00::/127")), 2);
    }
}
