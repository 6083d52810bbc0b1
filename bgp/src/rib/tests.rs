//! Deterministic decision-process cases.

use super::*;
use crate::wire::{AsPath, Origin};

fn peer(name: &str, addr: &str, id: [u8; 4], ebgp: bool) -> PeerInfo {
    PeerInfo {
        name: name.into(),
        address: addr.parse().unwrap(),
        router_id: Ipv4Addr::from(id),
        ebgp,
    }
}

fn route(nh: &str, path: &[u32]) -> Arc<RouteAttrs> {
    Arc::new(RouteAttrs::new(
        PathAttrs {
            as_path: AsPath::sequence(path.to_vec()),
            ..Default::default()
        },
        NextHop::V4(nh.parse().unwrap()),
    ))
}

/// An accepted path.
fn ok(a: Arc<RouteAttrs>) -> Verdict {
    Verdict {
        attrs: a,
        refusal: None,
    }
}

/// A path import policy refused.
fn refused(a: Arc<RouteAttrs>) -> Verdict {
    Verdict {
        attrs: a,
        refusal: Some(Refusal::NotInPrefixList),
    }
}

/// (prefix, next hops) of each change.
fn hops(out: &[RibChange]) -> Vec<(IpNet, Vec<NextHop>)> {
    out.iter().map(|c| (c.prefix, c.next_hops())).collect()
}

fn with(f: impl FnOnce(&mut PathAttrs), nh: &str, path: &[u32]) -> Arc<RouteAttrs> {
    let mut r = (*route(nh, path)).clone();
    f(&mut r.attrs);
    Arc::new(r)
}

fn nh(s: &str) -> NextHop {
    NextHop::V4(s.parse().unwrap())
}

const P: &str = "203.0.113.0/24";

fn rib() -> Rib {
    let mut r = Rib::new(8);
    r.set_peer(0, peer("bird", "198.51.100.1", [1, 1, 1, 1], true));
    r.set_peer(1, peer("frr", "198.51.100.3", [3, 3, 3, 3], true));
    r.set_peer(2, peer("node3", "198.51.100.4", [4, 4, 4, 4], false));
    r
}

#[test]
fn announce_withdraw_reports_changes() {
    let mut r = rib();
    let mut out = Vec::new();
    r.announce(
        0,
        P.parse().unwrap(),
        ok(route("198.51.100.1", &[65001])),
        &mut out,
    );
    assert_eq!(
        hops(&out),
        vec![(P.parse().unwrap(), vec![nh("198.51.100.1")])]
    );
    out.clear();
    // The same route again changes nothing.
    r.announce(
        0,
        P.parse().unwrap(),
        ok(route("198.51.100.1", &[65001])),
        &mut out,
    );
    assert!(out.is_empty());
    r.withdraw(0, P.parse().unwrap(), &mut out);
    assert_eq!(hops(&out), vec![(P.parse().unwrap(), vec![])]);
    assert!(r.is_empty());
    assert_eq!(r.counts(0), PeerCounts::default());
}

#[test]
fn equal_paths_from_two_peers_make_ecmp() {
    let mut r = rib();
    let mut out = Vec::new();
    r.announce(
        0,
        P.parse().unwrap(),
        ok(route("198.51.100.1", &[65001, 65100])),
        &mut out,
    );
    r.announce(
        1,
        P.parse().unwrap(),
        ok(route("198.51.100.3", &[65003, 65100])),
        &mut out,
    );
    assert_eq!(
        out.last().unwrap().next_hops(),
        vec![nh("198.51.100.1"), nh("198.51.100.3")]
    );
    out.clear();
    r.withdraw(0, P.parse().unwrap(), &mut out);
    assert_eq!(
        hops(&out),
        vec![(P.parse().unwrap(), vec![nh("198.51.100.3")])]
    );
}

#[test]
fn max_paths_limits_ecmp() {
    let mut r = rib();
    r.set_max_paths(1);
    let mut out = Vec::new();
    r.announce(
        0,
        P.parse().unwrap(),
        ok(route("198.51.100.1", &[65001])),
        &mut out,
    );
    r.announce(
        1,
        P.parse().unwrap(),
        ok(route("198.51.100.3", &[65003])),
        &mut out,
    );
    // Tie broken on router id: 1.1.1.1 < 3.3.3.3.
    assert_eq!(r.next_hops(&P.parse().unwrap()), vec![nh("198.51.100.1")]);
}

#[test]
fn decision_steps_in_order() {
    let p: IpNet = P.parse().unwrap();
    let cases: Vec<(Arc<RouteAttrs>, Arc<RouteAttrs>, &str)> = vec![
        // Local preference beats a shorter path.
        (
            with(|a| a.local_pref = Some(200), "198.51.100.1", &[1, 2, 3]),
            route("198.51.100.3", &[1]),
            "higher local preference",
        ),
        (
            route("198.51.100.1", &[1]),
            route("198.51.100.3", &[1, 2]),
            "shorter AS path",
        ),
        (
            route("198.51.100.1", &[1]),
            with(|a| a.origin = Origin::Incomplete, "198.51.100.3", &[2]),
            "lower origin",
        ),
        // Same neighbour AS: MED decides.
        (
            with(|a| a.med = Some(5), "198.51.100.1", &[7]),
            with(|a| a.med = Some(10), "198.51.100.3", &[7]),
            "lower MED",
        ),
    ];
    for (win, lose, why) in cases {
        let mut r = rib();
        r.set_max_paths(1);
        let mut out = Vec::new();
        // Give the loser the better router id so that only the step under test decides.
        r.announce(1, p, ok(win.clone()), &mut out);
        r.announce(0, p, ok(lose), &mut out);
        assert_eq!(r.next_hops(&p), vec![win.next_hop], "{why}");
        let v = &r.view()[0];
        assert_eq!(v.paths[1].lost_on, Some(why));
    }
}

#[test]
fn med_from_different_neighbours_is_not_compared() {
    let p: IpNet = P.parse().unwrap();
    let mut r = rib();
    let mut out = Vec::new();
    r.announce(
        0,
        p,
        ok(with(|a| a.med = Some(50), "198.51.100.1", &[7])),
        &mut out,
    );
    r.announce(
        1,
        p,
        ok(with(|a| a.med = Some(10), "198.51.100.3", &[8])),
        &mut out,
    );
    // Not comparable: both stay in the ECMP set.
    assert_eq!(r.next_hops(&p).len(), 2);
}

#[test]
fn ebgp_over_ibgp() {
    let p: IpNet = P.parse().unwrap();
    let mut r = rib();
    let mut out = Vec::new();
    r.announce(
        2,
        p,
        ok(with(|a| a.local_pref = Some(100), "198.51.100.4", &[9])),
        &mut out,
    );
    r.announce(1, p, ok(route("198.51.100.3", &[9])), &mut out);
    assert_eq!(r.next_hops(&p), vec![nh("198.51.100.3")]);
}

#[test]
fn refused_paths_are_kept_but_never_selected() {
    let p: IpNet = P.parse().unwrap();
    let mut r = rib();
    let mut out = Vec::new();
    r.announce(0, p, refused(route("198.51.100.1", &[1])), &mut out);
    assert!(out.is_empty());
    let c = r.counts(0);
    assert_eq!((c.received, c.accepted, c.stale), (1, 0, 0));
    assert_eq!(c.refused[Refusal::NotInPrefixList.code() as usize - 1], 1);
    assert_eq!(
        r.view()[0].paths[0].refused,
        Some(Refusal::NotInPrefixList.describe())
    );
    // Policy changes: re-evaluate without asking the peer.
    r.reevaluate(0, |_, a| ok(a.clone()), &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(r.counts(0).accepted, 1);
}

#[test]
fn graceful_restart_keeps_stale_until_end_of_rib() {
    let a: IpNet = "203.0.113.0/24".parse().unwrap();
    let b: IpNet = "198.18.0.0/16".parse().unwrap();
    let v6: IpNet = "2001:db8:1::/48".parse().unwrap();
    let mut r = rib();
    let mut out = Vec::new();
    r.announce(0, a, ok(route("198.51.100.1", &[1])), &mut out);
    r.announce(0, b, ok(route("198.51.100.1", &[1])), &mut out);
    let six = Arc::new(RouteAttrs::new(
        PathAttrs::default(),
        NextHop::V6 {
            global: "2001:db8::1".parse().unwrap(),
            link_local: None,
        },
    ));
    r.announce(0, v6, ok(six), &mut out);
    out.clear();
    // Down, IPv4 kept over the restart, IPv6 not.
    r.peer_down(0, &[Afi::Ipv4], &mut out);
    assert_eq!(hops(&out), vec![(v6, vec![])], "only IPv6 left the Loc-RIB");
    assert_eq!(r.counts(0).stale, 2);
    out.clear();
    // The peer comes back and sends one of the two again: it is fresh, the other still stale.
    r.announce(0, a, ok(route("198.51.100.1", &[1])), &mut out);
    assert!(out.is_empty(), "the same path again: no change");
    assert_eq!(r.counts(0).stale, 1);
    r.sweep_stale(0, Some(Afi::Ipv4), &mut out);
    assert_eq!(hops(&out), vec![(b, vec![])]);
    let c = r.counts(0);
    assert_eq!((c.received, c.accepted, c.stale), (1, 1, 0));
}

#[test]
fn peer_down_without_graceful_restart_removes_everything() {
    let mut r = rib();
    let mut out = Vec::new();
    for i in 0..100u32 {
        let p = IpNet::V4(Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 + (i << 8)), 24).unwrap());
        r.announce(0, p, ok(route("198.51.100.1", &[1])), &mut out);
        r.announce(1, p, ok(route("198.51.100.3", &[3])), &mut out);
    }
    out.clear();
    r.peer_down(0, &[], &mut out);
    assert_eq!(out.len(), 100);
    assert!(
        out.iter()
            .all(|c| c.next_hops() == vec![nh("198.51.100.3")])
    );
    r.peer_down(1, &[], &mut out);
    assert!(r.is_empty());
}

#[test]
fn a_prefix_with_one_path_needs_no_allocation_of_its_own() {
    // Memory per route is a product requirement (bench/fib-convergence.sh): keep the entry
    // of a single-path prefix inline in the table.
    assert!(std::mem::size_of::<Path>() <= 16);
    assert!(std::mem::size_of::<Dest>() <= 32);
    assert!(!Dest::default().paths.spilled());
}

fn under(dst: &str, gws: &[&str], metric: u32) -> UnderlayRoute {
    UnderlayRoute {
        dst: dst.parse().unwrap(),
        gateways: gws.iter().map(|g| g.parse().unwrap()).collect(),
        metric,
        reachable: true,
    }
}

fn ips(v: &[&str]) -> Vec<IpAddr> {
    v.iter().map(|a| a.parse().unwrap()).collect()
}

/// The iBGP peer's routes carry its loopback 10.255.0.2 as next hop, two hops away.
#[test]
fn next_hops_resolve_through_the_underlay_and_follow_it() {
    let mut r = rib();
    let mut out = Vec::new();
    let connected = under("198.51.100.0/24", &[], 0);
    r.set_underlay(vec![connected.clone()], &mut out);
    assert!(out.is_empty());
    r.announce(
        2,
        P.parse().unwrap(),
        ok(route("10.255.0.2", &[])),
        &mut out,
    );
    assert!(out.is_empty(), "no route to the next hop: not selected");
    let v = r.view();
    assert_eq!(v[0].paths[0].unresolved, Some("no route to the next hop"));
    assert_eq!(v[0].paths[0].lost_on, Some("next hop unresolvable"));
    assert!(v[0].gateways.is_empty());

    // A static route to the loopback: selected, forwarded to the route's gateway.
    let static_route = under("10.255.0.0/24", &["198.51.100.9"], 20);
    r.set_underlay(vec![connected.clone(), static_route.clone()], &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].next_hops(), vec![nh("10.255.0.2")]);
    assert_eq!(out[0].gateways(), ips(&["198.51.100.9"]));
    let v = r.view();
    assert_eq!(
        v[0].paths[0].resolved_via,
        Some("10.255.0.0/24".parse().unwrap())
    );
    assert_eq!(v[0].paths[0].igp_cost, 20);
    out.clear();

    // The same underlay again: nothing changes.
    r.set_underlay(vec![static_route.clone(), connected.clone()], &mut out);
    assert!(out.is_empty());

    // The covering route moves to two gateways: re-resolved, the selection stays.
    r.set_underlay(
        vec![
            connected.clone(),
            under("10.255.0.0/16", &["198.51.100.7", "198.51.100.8"], 20),
        ],
        &mut out,
    );
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].gateways(), ips(&["198.51.100.7", "198.51.100.8"]));
    out.clear();

    // Only the default route left: the prefix leaves the Loc-RIB.
    r.set_underlay(
        vec![connected, under("0.0.0.0/0", &["198.51.100.9"], 0)],
        &mut out,
    );
    assert_eq!(hops(&out), vec![(P.parse().unwrap(), vec![])]);
    assert_eq!(
        r.view()[0].paths[0].unresolved,
        Some("only the default route covers the next hop")
    );
}

#[test]
fn lower_igp_cost_wins_and_equal_cost_shares_the_load() {
    let mut r = rib();
    r.set_peer(3, peer("node4", "198.51.100.5", [5, 5, 5, 5], false));
    let mut out = Vec::new();
    let base = vec![
        under("198.51.100.0/24", &[], 0),
        under("10.255.0.2/32", &["198.51.100.9"], 10),
        under("10.255.0.3/32", &["198.51.100.10"], 30),
    ];
    r.set_underlay(base.clone(), &mut out);
    r.announce(
        2,
        P.parse().unwrap(),
        ok(route("10.255.0.2", &[])),
        &mut out,
    );
    r.announce(
        3,
        P.parse().unwrap(),
        ok(route("10.255.0.3", &[])),
        &mut out,
    );
    // node3 (router id 4.4.4.4) wins on IGP cost before router id could decide.
    assert_eq!(out.last().unwrap().gateways(), ips(&["198.51.100.9"]));
    let v = r.view();
    let lost = v[0].paths.iter().find(|p| !p.best).unwrap();
    assert_eq!(lost.lost_on, Some("lower IGP cost to the next hop"));
    out.clear();
    // The far loopback gets closer: costs now equal, both share the load.
    let mut nearer = base.clone();
    nearer[2].metric = 10;
    r.set_underlay(nearer, &mut out);
    assert_eq!(
        out.last().unwrap().gateways(),
        ips(&["198.51.100.9", "198.51.100.10"])
    );
}

#[test]
fn without_an_underlay_every_next_hop_counts_as_connected() {
    let mut r = rib();
    let mut out = Vec::new();
    r.announce(
        2,
        P.parse().unwrap(),
        ok(route("10.255.0.2", &[])),
        &mut out,
    );
    assert_eq!(out[0].gateways(), ips(&["10.255.0.2"]));
    assert!(out[0].selected[0].resolution.is_none());
    assert_eq!(r.underlay_len(), None);
}
