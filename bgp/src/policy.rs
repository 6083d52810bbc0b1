//! Import policy: which learned routes a peer may put in the Loc-RIB. Pure.
//!
//! Applied to every prefix of every UPDATE, in this order: routes that would loop (our AS in
//! the path, our router id as ORIGINATOR_ID) and routes that touch the node's own pod CIDRs
//! are always refused; then the peer's prefix list decides, and with no list eBGP refuses
//! everything (RFC 8212) while iBGP accepts everything.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;

use crate::rib::RouteAttrs;

/// `prefix` with bounds on the length, as in a router's prefix list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixRule {
    pub prefix: IpNet,
    pub ge: u8,
    pub le: u8,
}

impl PrefixRule {
    pub fn matches(&self, net: &IpNet) -> bool {
        let len = net.prefix_len();
        len >= self.ge && len <= self.le && self.prefix.contains(net)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImportPolicy {
    /// `None`: no list configured (eBGP refuses all, iBGP accepts all).
    pub rules: Option<Vec<PrefixRule>>,
    /// Most accepted prefixes before the session is torn down (RFC 4486 Cease subcode 1).
    pub max_prefixes: Option<u32>,
}

/// Why a route was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    AsLoop,
    OriginatorIsUs,
    OwnPodCidr,
    NextHopIsUs,
    NotInPrefixList,
    NoPolicyOnEbgp,
}

/// Everything the decision needs besides the route.
#[derive(Debug, Clone)]
pub struct ImportContext<'a> {
    pub local_asn: u32,
    pub router_id: Ipv4Addr,
    pub ebgp: bool,
    pub own_prefixes: &'a [IpNet],
    pub local_addresses: &'a [IpAddr],
    pub policy: &'a ImportPolicy,
}

impl ImportContext<'_> {
    /// Whether attributes shared by all the prefixes of an UPDATE refuse them all.
    pub fn check_attrs(&self, r: &RouteAttrs) -> Result<(), Refusal> {
        if self.ebgp && r.attrs.as_path.contains(self.local_asn) {
            return Err(Refusal::AsLoop);
        }
        if r.attrs.originator_id == Some(self.router_id) {
            return Err(Refusal::OriginatorIsUs);
        }
        if self.local_addresses.contains(&r.next_hop.addr()) {
            return Err(Refusal::NextHopIsUs);
        }
        Ok(())
    }

    /// The per-prefix part of the decision.
    pub fn check_prefix(&self, net: &IpNet) -> Result<(), Refusal> {
        // A route covering or inside one of our pod CIDRs would steal our own pods' traffic.
        if self
            .own_prefixes
            .iter()
            .any(|own| own.contains(net) || net.contains(own))
        {
            return Err(Refusal::OwnPodCidr);
        }
        match &self.policy.rules {
            Some(rules) if rules.iter().any(|r| r.matches(net)) => Ok(()),
            Some(_) => Err(Refusal::NotInPrefixList),
            None if self.ebgp => Err(Refusal::NoPolicyOnEbgp),
            None => Ok(()),
        }
    }

    pub fn accept(&self, net: &IpNet, r: &RouteAttrs) -> bool {
        self.check_attrs(r).is_ok() && self.check_prefix(net).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{AsPath, NextHop, PathAttrs};

    fn attrs(path: &[u32]) -> RouteAttrs {
        RouteAttrs {
            attrs: PathAttrs {
                as_path: AsPath::sequence(path.to_vec()),
                ..Default::default()
            },
            next_hop: NextHop::V4("198.51.100.1".parse().unwrap()),
        }
    }

    /// A policy of one prefix-list entry.
    fn list(prefix: &str, ge: u8, le: u8) -> ImportPolicy {
        ImportPolicy {
            rules: Some(vec![PrefixRule {
                prefix: prefix.parse().unwrap(),
                ge,
                le,
            }]),
            max_prefixes: None,
        }
    }

    fn ctx<'a>(policy: &'a ImportPolicy, own: &'a [IpNet], ebgp: bool) -> ImportContext<'a> {
        ImportContext {
            local_asn: 65002,
            router_id: "192.0.2.2".parse().unwrap(),
            ebgp,
            own_prefixes: own,
            local_addresses: &[],
            policy,
        }
    }

    #[test]
    fn rfc8212_ebgp_default_deny_ibgp_default_accept() {
        let p = ImportPolicy::default();
        let n: IpNet = "203.0.113.0/24".parse().unwrap();
        assert!(!ctx(&p, &[], true).accept(&n, &attrs(&[65001])));
        assert!(ctx(&p, &[], false).accept(&n, &attrs(&[])));
    }

    #[test]
    fn prefix_list_with_ge_le() {
        let p = list("10.0.0.0/8", 16, 24);
        let c = ctx(&p, &[], true);
        let a = attrs(&[65001]);
        assert!(c.accept(&"10.1.0.0/16".parse().unwrap(), &a));
        assert!(c.accept(&"10.1.2.0/24".parse().unwrap(), &a));
        assert!(!c.accept(&"10.0.0.0/8".parse().unwrap(), &a));
        assert!(!c.accept(&"10.1.2.128/25".parse().unwrap(), &a));
        assert!(!c.accept(&"11.0.0.0/16".parse().unwrap(), &a));
    }

    #[test]
    fn own_pod_cidr_never_accepted() {
        let p = list("0.0.0.0/0", 0, 32);
        let own: Vec<IpNet> = vec!["10.244.2.0/24".parse().unwrap()];
        let c = ctx(&p, &own, true);
        let a = attrs(&[65001]);
        for refused in [
            "10.244.2.0/24",
            "10.244.2.7/32",
            "10.244.0.0/16",
            "0.0.0.0/0",
        ] {
            assert_eq!(
                c.check_prefix(&refused.parse().unwrap()),
                Err(Refusal::OwnPodCidr),
                "{refused}"
            );
        }
        assert!(c.accept(&"10.244.3.0/24".parse().unwrap(), &a));
    }

    #[test]
    fn loops_refused() {
        let p = list("0.0.0.0/0", 0, 32);
        let c = ctx(&p, &[], true);
        assert_eq!(
            c.check_attrs(&attrs(&[65001, 65002, 65003])),
            Err(Refusal::AsLoop)
        );
        let mut r = attrs(&[]);
        r.attrs.originator_id = Some("192.0.2.2".parse().unwrap());
        assert_eq!(
            ctx(&p, &[], false).check_attrs(&r),
            Err(Refusal::OriginatorIsUs)
        );
    }
}
