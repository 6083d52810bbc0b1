//! Next-hop tracking (RFC 4271 9.1.2.1): how each path's NEXT_HOP is reached through the
//! underlay, the kernel's own routes (connected, static, other daemons'; not Petrel's).
//!
//! Plain data: the agent feeds the underlay in ([`UnderlayRoute`]s), the RIB asks for the
//! [`Resolution`] of a next hop. A next hop on a connected subnet forwards to itself; one
//! behind a route with gateways forwards to those gateways, at that route's metric (the
//! interior cost the decision process compares); one with no route, only the default
//! route, or an unreachable/blackhole route is unresolvable, and its paths are not
//! selected. Until the underlay is known (or when nobody feeds one: a speaker without an
//! agent) every next hop counts as connected.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use crate::wire::NextHop;

/// A kernel route the underlay offers for resolving next hops.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UnderlayRoute {
    pub dst: IpNet,
    /// Empty: on-link (a connected subnet, or a route to an interface).
    pub gateways: Vec<IpAddr>,
    /// The route's priority: the interior cost of next hops it resolves.
    pub metric: u32,
    /// False for blackhole, unreachable and prohibit routes.
    pub reachable: bool,
}

/// Why a next hop cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unresolved {
    NoRoute,
    /// Only the default route covers it: not used for resolution (as FRR does unless told).
    DefaultOnly,
    /// The covering route is a blackhole, unreachable or prohibit route.
    Unreachable,
}

impl Unresolved {
    pub fn describe(self) -> &'static str {
        match self {
            Unresolved::NoRoute => "no route to the next hop",
            Unresolved::DefaultOnly => "only the default route covers the next hop",
            Unresolved::Unreachable => "the next hop is covered by an unreachable route",
        }
    }
}

/// How a next hop is reached.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    /// On a connected subnet (or nothing is known of the underlay): forward to it.
    Connected,
    /// Through the underlay route `via`, to its gateways.
    Recursive {
        via: IpNet,
        gateways: Vec<IpAddr>,
        metric: u32,
    },
    Unresolved(Unresolved),
}

impl Resolution {
    pub fn usable(&self) -> bool {
        !matches!(self, Resolution::Unresolved(_))
    }

    /// The interior cost to the next hop (RFC 4271 9.1.2.2 e).
    pub fn cost(&self) -> u32 {
        match self {
            Resolution::Recursive { metric, .. } => *metric,
            _ => 0,
        }
    }
}

/// The best underlay route of each destination.
#[derive(Debug, Default)]
struct Underlay {
    routes: HashMap<IpNet, UnderlayRoute>,
    /// Prefix lengths present, longest first, per family (0: IPv4, 1: IPv6).
    lengths: [Vec<u8>; 2],
}

impl Underlay {
    fn new(list: Vec<UnderlayRoute>) -> Underlay {
        let mut routes: HashMap<IpNet, UnderlayRoute> = HashMap::new();
        for r in list {
            let dst = r.dst.trunc();
            match routes.get(&dst) {
                // The kernel forwards by the lowest metric; reachable first on a tie.
                Some(o) if (o.metric, !o.reachable) <= (r.metric, !r.reachable) => {}
                _ => {
                    routes.insert(dst, UnderlayRoute { dst, ..r });
                }
            }
        }
        let mut lengths: [Vec<u8>; 2] = Default::default();
        for dst in routes.keys() {
            let f = usize::from(matches!(dst, IpNet::V6(_)));
            lengths[f].push(dst.prefix_len());
        }
        for l in &mut lengths {
            l.sort_unstable_by(|a, b| b.cmp(a));
            l.dedup();
        }
        Underlay { routes, lengths }
    }

    fn lookup(&self, a: IpAddr) -> Option<&UnderlayRoute> {
        let f = usize::from(a.is_ipv6());
        self.lengths[f].iter().find_map(|len| {
            let net = IpNet::new(a, *len).ok()?.trunc();
            self.routes.get(&net)
        })
    }

    fn resolve(&self, a: IpAddr) -> Resolution {
        match self.lookup(a) {
            None => Resolution::Unresolved(Unresolved::NoRoute),
            Some(r) if r.dst.prefix_len() == 0 => Resolution::Unresolved(Unresolved::DefaultOnly),
            Some(r) if !r.reachable => Resolution::Unresolved(Unresolved::Unreachable),
            Some(r) if r.gateways.is_empty() => Resolution::Connected,
            Some(r) => Resolution::Recursive {
                via: r.dst,
                gateways: r.gateways.clone(),
                metric: r.metric,
            },
        }
    }
}

/// A new underlay, resolved, not yet in use.
#[derive(Debug)]
pub(crate) struct Plan {
    underlay: Underlay,
    cache: HashMap<IpAddr, Arc<Resolution>>,
    /// The next hops whose resolution changes.
    pub(crate) changed: HashSet<IpAddr>,
}

/// The resolution of every next hop in use.
#[derive(Debug, Default)]
pub(crate) struct NextHops {
    underlay: Option<Underlay>,
    cache: HashMap<IpAddr, Arc<Resolution>>,
    connected: Option<Arc<Resolution>>,
}

/// The address to resolve, or none: an IPv6 next hop with a link-local part is on-link.
fn key(nh: &NextHop) -> Option<IpAddr> {
    match nh {
        NextHop::V6 {
            link_local: Some(_),
            ..
        } => None,
        n => Some(n.addr()),
    }
}

impl NextHops {
    fn connected(&self) -> Arc<Resolution> {
        self.connected
            .clone()
            .unwrap_or_else(|| Arc::new(Resolution::Connected))
    }

    /// Make sure `nh` has a resolution (before paths with it are selected).
    pub(crate) fn track(&mut self, nh: &NextHop) {
        let (Some(u), Some(a)) = (&self.underlay, key(nh)) else {
            return;
        };
        self.cache
            .entry(a)
            .or_insert_with(|| Arc::new(u.resolve(a)));
    }

    /// The resolution of `nh` (tracked before).
    pub(crate) fn get(&self, nh: &NextHop) -> Arc<Resolution> {
        match (&self.underlay, key(nh)) {
            (Some(_), Some(a)) => self
                .cache
                .get(&a)
                .cloned()
                .unwrap_or_else(|| Arc::new(Resolution::Unresolved(Unresolved::NoRoute))),
            _ => self.connected(),
        }
    }

    /// What a new underlay would change: every resolution recomputed for the next hops
    /// `in_use` (the rest are forgotten). Nothing changes until [`NextHops::commit`].
    pub(crate) fn plan(
        &self,
        routes: Vec<UnderlayRoute>,
        in_use: impl Iterator<Item = NextHop>,
    ) -> Plan {
        let u = Underlay::new(routes);
        let mut cache = HashMap::new();
        let mut changed = HashSet::new();
        for nh in in_use {
            let Some(a) = key(&nh) else { continue };
            if cache.contains_key(&a) {
                continue;
            }
            let r = u.resolve(a);
            let old = self.get(&nh);
            let r = if *old == r {
                old
            } else {
                changed.insert(a);
                Arc::new(r)
            };
            cache.insert(a, r);
        }
        Plan {
            underlay: u,
            cache,
            changed,
        }
    }

    pub(crate) fn commit(&mut self, plan: Plan) {
        self.underlay = Some(plan.underlay);
        self.cache = plan.cache;
        if self.connected.is_none() {
            self.connected = Some(Arc::new(Resolution::Connected));
        }
    }

    /// Whether `nh`'s address is among `changed`.
    pub(crate) fn is_in(nh: &NextHop, changed: &HashSet<IpAddr>) -> bool {
        key(nh).is_some_and(|a| changed.contains(&a))
    }

    /// Number of underlay routes known.
    pub(crate) fn underlay_len(&self) -> Option<usize> {
        self.underlay.as_ref().map(|u| u.routes.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(dst: &str, gws: &[&str], metric: u32) -> UnderlayRoute {
        UnderlayRoute {
            dst: dst.parse().unwrap(),
            gateways: gws.iter().map(|g| g.parse().unwrap()).collect(),
            metric,
            reachable: true,
        }
    }

    fn res(u: &Underlay, a: &str) -> Resolution {
        u.resolve(a.parse().unwrap())
    }

    #[test]
    fn longest_match_lowest_metric_wins() {
        let u = Underlay::new(vec![
            r("10.0.0.0/8", &["192.0.2.1"], 10),
            r("10.1.0.0/16", &["192.0.2.2"], 20),
            r("10.1.0.0/16", &["192.0.2.3", "192.0.2.4"], 5),
            r("192.0.2.0/24", &[], 0),
            r("0.0.0.0/0", &["192.0.2.9"], 0),
        ]);
        assert_eq!(
            res(&u, "10.1.2.3"),
            Resolution::Recursive {
                via: "10.1.0.0/16".parse().unwrap(),
                gateways: vec!["192.0.2.3".parse().unwrap(), "192.0.2.4".parse().unwrap()],
                metric: 5
            }
        );
        assert_eq!(res(&u, "10.2.0.1").cost(), 10);
        assert_eq!(res(&u, "192.0.2.77"), Resolution::Connected);
        assert_eq!(
            res(&u, "198.51.100.1"),
            Resolution::Unresolved(Unresolved::DefaultOnly)
        );
        assert_eq!(
            res(&u, "2001:db8::1"),
            Resolution::Unresolved(Unresolved::NoRoute)
        );
    }

    #[test]
    fn unreachable_routes_do_not_resolve() {
        let mut b = r("10.9.0.0/16", &[], 0);
        b.reachable = false;
        let u = Underlay::new(vec![r("10.0.0.0/8", &["192.0.2.1"], 0), b]);
        assert_eq!(
            res(&u, "10.9.0.1"),
            Resolution::Unresolved(Unresolved::Unreachable)
        );
    }

    #[test]
    fn changes_are_reported_for_next_hops_in_use_only() {
        let mut n = NextHops::default();
        let a = NextHop::V4("10.1.2.3".parse().unwrap());
        let b = NextHop::V4("192.0.2.7".parse().unwrap());
        assert_eq!(*n.get(&a), Resolution::Connected, "no underlay yet");
        let plan = n.plan(vec![r("192.0.2.0/24", &[], 0)], [a, b].into_iter());
        let ch = plan.changed.clone();
        n.commit(plan);
        // a was taken as connected before the underlay was known; now it has no route.
        assert_eq!(ch.len(), 1);
        assert!(NextHops::is_in(&a, &ch));
        assert!(!n.get(&a).usable());
        let plan = n.plan(
            vec![
                r("192.0.2.0/24", &[], 0),
                r("10.1.0.0/16", &["192.0.2.1"], 3),
            ],
            [a, b].into_iter(),
        );
        let ch = plan.changed.clone();
        n.commit(plan);
        assert!(NextHops::is_in(&a, &ch) && !NextHops::is_in(&b, &ch));
        assert_eq!(n.get(&a).cost(), 3);
        let ll = NextHop::V6 {
            global: "2001:db8::1".parse().unwrap(),
            link_local: Some("fe80::1".parse().unwrap()),
        };
        assert_eq!(*n.get(&ll), Resolution::Connected, "link-local is on-link");
    }
}
