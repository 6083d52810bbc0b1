//! Policy tables: each row a route, a policy and the expected outcome.

use super::*;
use std::net::IpAddr;

use crate::wire::{AsPath, NextHop};

fn attrs(path: &[u32], communities: &[u32], large: &[[u32; 3]]) -> RouteAttrs {
    RouteAttrs::new(
        PathAttrs {
            as_path: AsPath::sequence(path.to_vec()),
            communities: communities.to_vec(),
            large_communities: large.to_vec(),
            ..Default::default()
        },
        NextHop::V4("198.51.100.1".parse().unwrap()),
    )
}

fn list(prefix: &str, ge: u8, le: u8) -> Vec<PrefixRule> {
    vec![PrefixRule {
        prefix: prefix.parse().unwrap(),
        ge,
        le,
    }]
}

fn ctx<'a>(policy: &'a ImportPolicy, own: &'a [IpNet], ebgp: bool) -> ImportContext<'a> {
    ImportContext {
        local_asn: 65002,
        router_id: "192.0.2.2".parse().unwrap(),
        cluster_id: "192.0.2.99".parse().unwrap(),
        ebgp,
        own_prefixes: own,
        local_addresses: &[],
        node_addresses: &[],
        peer_address: "198.51.100.1".parse().unwrap(),
        policy,
    }
}

fn c(s: &str) -> u32 {
    let (a, b) = s.split_once(':').unwrap();
    (a.parse::<u32>().unwrap() << 16) | b.parse::<u32>().unwrap()
}

#[test]
fn rfc8212_ebgp_default_deny_ibgp_default_accept() {
    let p = ImportPolicy::default();
    let n: IpNet = "203.0.113.0/24".parse().unwrap();
    assert_eq!(
        ctx(&p, &[], true).import(&n, &attrs(&[65001], &[], &[])),
        Imported::Refused(Refusal::NoPolicyOnEbgp)
    );
    assert_eq!(
        ctx(&p, &[], false).import(&n, &attrs(&[], &[], &[])),
        Imported::Accepted
    );
}

#[test]
fn prefix_list_with_ge_le() {
    let p = ImportPolicy {
        prefixes: Some(list("10.0.0.0/8", 16, 24)),
        ..Default::default()
    };
    let cx = ctx(&p, &[], true);
    let a = attrs(&[65001], &[], &[]);
    for (net, ok) in [
        ("10.1.0.0/16", true),
        ("10.1.2.0/24", true),
        ("10.0.0.0/8", false),
        ("10.1.2.128/25", false),
        ("11.0.0.0/16", false),
    ] {
        assert_eq!(cx.accept(&net.parse().unwrap(), &a), ok, "{net}");
    }
}

#[test]
fn own_pod_cidr_never_accepted() {
    let p = ImportPolicy {
        prefixes: Some(list("0.0.0.0/0", 0, 32)),
        ..Default::default()
    };
    let own: Vec<IpNet> = vec!["10.244.2.0/24".parse().unwrap()];
    let cx = ctx(&p, &own, true);
    let a = attrs(&[65001], &[], &[]);
    for refused in [
        "10.244.2.0/24",
        "10.244.2.7/32",
        "10.244.0.0/16",
        "0.0.0.0/0",
    ] {
        assert_eq!(
            cx.import(&refused.parse().unwrap(), &a),
            Imported::Refused(Refusal::OwnPodCidr),
            "{refused}"
        );
    }
    assert!(cx.accept(&"10.244.3.0/24".parse().unwrap(), &a));
}

#[test]
fn loops_refused() {
    let p = ImportPolicy {
        prefixes: Some(list("0.0.0.0/0", 0, 32)),
        ..Default::default()
    };
    let cx = ctx(&p, &[], true);
    assert_eq!(
        cx.check_attrs(&attrs(&[65001, 65002, 65003], &[], &[])),
        Err(Refusal::AsLoop)
    );
    let mut r = attrs(&[], &[], &[]);
    r.attrs.originator_id = Some("192.0.2.2".parse().unwrap());
    assert_eq!(
        ctx(&p, &[], false).check_attrs(&r),
        Err(Refusal::OriginatorIsUs)
    );
}

/// The example: a prefix list, a reject by community, a local preference by large
/// community with a wildcard.
fn example() -> ImportPolicy {
    ImportPolicy {
        prefixes: Some(list("0.0.0.0/0", 0, 32)),
        rules: vec![
            Rule {
                matches: Match {
                    communities: vec![CommunityPattern::exact(c("65001:666"))],
                    ..Default::default()
                },
                action: Action::Reject,
                set: Set::default(),
            },
            Rule {
                matches: Match {
                    large_communities: vec![LargePattern([Some(65001), Some(10), None])],
                    ..Default::default()
                },
                action: Action::Accept,
                set: Set {
                    local_pref: Some(200),
                    ..Default::default()
                },
            },
        ],
        max_prefixes: None,
        filter_martians: true,
    }
}

#[test]
fn import_rules_table() {
    let p = example();
    let cx = ctx(&p, &[], true);
    let n: IpNet = "203.0.113.0/24".parse().unwrap();
    let lp = |r: Imported| match r {
        Imported::Changed(a) => Some(a.attrs.local_pref),
        Imported::Accepted => None,
        Imported::Refused(why) => panic!("refused: {why:?}"),
    };
    // (communities, large communities) -> outcome
    assert_eq!(
        cx.import(&n, &attrs(&[65001], &[c("65001:666")], &[])),
        Imported::Refused(Refusal::RejectedByRule)
    );
    assert_eq!(
        lp(cx.import(&n, &attrs(&[65001], &[], &[[65001, 10, 7]]))),
        Some(Some(200))
    );
    // Reject comes first even with the large community.
    assert_eq!(
        cx.import(&n, &attrs(&[65001], &[c("65001:666")], &[[65001, 10, 7]])),
        Imported::Refused(Refusal::RejectedByRule)
    );
    // Neither: accepted as received.
    assert_eq!(
        cx.import(&n, &attrs(&[65001], &[c("65001:1")], &[[65001, 11, 7]])),
        Imported::Accepted
    );
    // The prefix list still gates what a rule would accept.
    let v6: IpNet = "2001:db8::/32".parse().unwrap();
    assert_eq!(
        cx.import(&v6, &attrs(&[65001], &[], &[[65001, 10, 7]])),
        Imported::Refused(Refusal::NotInPrefixList)
    );
}

#[test]
fn graceful_shutdown_lowers_local_preference_to_zero() {
    let p = example();
    let cx = ctx(&p, &[], true);
    let n: IpNet = "203.0.113.0/24".parse().unwrap();
    for large in [vec![], vec![[65001, 10, 1]]] {
        match cx.import(
            &n,
            &attrs(&[65001], &[community::GRACEFUL_SHUTDOWN], &large),
        ) {
            Imported::Changed(a) => assert_eq!(a.attrs.local_pref, Some(0), "{large:?}"),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn ebgp_rules_without_prefix_list_accept_only_what_they_match() {
    let p = ImportPolicy {
        rules: vec![Rule {
            matches: Match {
                prefixes: Some(list("198.18.0.0/15", 15, 32)),
                ..Default::default()
            },
            ..Default::default()
        }],
        ..Default::default()
    };
    let cx = ctx(&p, &[], true);
    let a = attrs(&[65001], &[], &[]);
    assert!(cx.accept(&"198.18.7.0/24".parse().unwrap(), &a));
    assert_eq!(
        cx.import(&"203.0.113.0/24".parse().unwrap(), &a),
        Imported::Refused(Refusal::NoPolicyOnEbgp)
    );
}

fn exp(ebgp: bool, policy: &ExportPolicy) -> ExportContext<'_> {
    ExportContext {
        local_asn: 65002,
        ebgp,
        rr_client: false,
        cluster_id: "192.0.2.99".parse().unwrap(),
        policy,
    }
}

fn local(source: Source, a: &RouteAttrs) -> Candidate<'_> {
    Candidate {
        source,
        attrs: a,
        from: None,
    }
}

fn learned(a: &RouteAttrs, peer: u32, ibgp: bool) -> Candidate<'_> {
    Candidate {
        source: Source::Learned,
        attrs: a,
        from: Some(LearnedFrom {
            peer,
            ibgp,
            rr_client: false,
            router_id: std::net::Ipv4Addr::from(0xC000_0200 + peer),
        }),
    }
}

/// Whether member 7 of the group (router id 192.0.2.7) gets what export gave for `c`.
fn for_seven(out: Option<OutRoute>, c: &Candidate<'_>) -> bool {
    out.is_some_and(|r| {
        crate::rib::adj_out::GroupRoute {
            route: std::sync::Arc::new(r),
            source: c.source,
            from: c.from.map(|f| f.peer),
        }
        .for_member(7, Some("192.0.2.7".parse().unwrap()))
    })
}

fn from_client(a: &RouteAttrs, peer: u32, client: bool) -> Candidate<'_> {
    let mut c = learned(a, peer, true);
    if let Some(f) = &mut c.from {
        f.rr_client = client;
    }
    c
}

/// RFC 4456 6: a client's route goes to every iBGP peer; a non-client's only to clients;
/// never back to where it came from; ORIGINATOR_ID set once, our cluster id prepended,
/// next hop unchanged; to eBGP as a plain route.
#[test]
fn route_reflection() {
    let all = ExportPolicy {
        rules: vec![Rule {
            matches: Match {
                sources: Some(vec![Source::Learned]),
                ..Default::default()
            },
            action: Action::Accept,
            set: Default::default(),
        }],
    };
    let n: IpNet = "10.244.3.0/24".parse().unwrap();
    let a = attrs(&[], &[], &[]);
    let to = |client: bool| {
        let mut cx = exp(false, &all);
        cx.rr_client = client;
        cx
    };
    // Without reflection, iBGP to iBGP stays split horizon.
    assert!(to(false).export(&n, &from_client(&a, 3, false)).is_none());
    // A reflector needs no export rule to reflect.
    let none = ExportPolicy::default();
    let mut cx = exp(false, &none);
    cx.rr_client = true;
    assert!(cx.export(&n, &from_client(&a, 3, false)).is_some());
    assert!(
        exp(false, &none)
            .export(&n, &from_client(&a, 3, false))
            .is_none()
    );
    // Non-client to client, client to non-client, client to client.
    for (from, dest) in [(false, true), (true, false), (true, true)] {
        let r = to(dest)
            .export(&n, &from_client(&a, 3, from))
            .unwrap_or_else(|| panic!("{from} -> {dest} reflected"));
        assert_eq!(r.attrs.originator_id, Some("192.0.2.3".parse().unwrap()));
        assert_eq!(
            r.attrs.cluster_list,
            vec!["192.0.2.99".parse::<std::net::Ipv4Addr>().unwrap()]
        );
        assert_eq!(r.next_hop, OutNextHop::Unchanged(a.next_hop));
    }
    // Reflected again: the first ORIGINATOR_ID stays, our cluster goes in front.
    let mut twice = a.clone();
    twice.attrs.originator_id = Some("192.0.2.50".parse().unwrap());
    twice.attrs.cluster_list = vec!["192.0.2.60".parse().unwrap()];
    let r = to(true).export(&n, &from_client(&twice, 3, false)).unwrap();
    assert_eq!(r.attrs.originator_id, Some("192.0.2.50".parse().unwrap()));
    assert_eq!(
        r.attrs.cluster_list,
        ["192.0.2.99", "192.0.2.60"].map(|x| x.parse::<std::net::Ipv4Addr>().unwrap())
    );
    // Not to the peer it came from, nor to its originator.
    let c = from_client(&a, 7, true);
    assert!(!for_seven(to(true).export(&n, &c), &c));
    let mut from_seven = a.clone();
    from_seven.attrs.originator_id = Some("192.0.2.7".parse().unwrap());
    let c = from_client(&from_seven, 3, true);
    assert!(!for_seven(to(true).export(&n, &c), &c));
    let c = from_client(&a, 3, true);
    assert!(for_seven(to(true).export(&n, &c), &c), "to everyone else");
    // To eBGP: no reflection attributes.
    let r = exp(true, &all)
        .export(&n, &from_client(&twice, 3, true))
        .unwrap();
    assert_eq!(r.attrs.originator_id, None);
    assert!(r.attrs.cluster_list.is_empty());
    // Our own routes to a client are not reflected.
    let r = to(true).export(&n, &local(Source::PodCidrs, &a)).unwrap();
    assert_eq!(r.attrs.originator_id, None);
}

#[test]
fn a_route_with_our_cluster_id_is_refused() {
    let p = ImportPolicy::default();
    let cx = ctx(&p, &[], false);
    let mut a = attrs(&[], &[], &[]);
    a.attrs.cluster_list = vec!["192.0.2.1".parse().unwrap(), "192.0.2.99".parse().unwrap()];
    assert_eq!(
        cx.import(&"198.18.7.0/24".parse().unwrap(), &a),
        Imported::Refused(Refusal::ClusterLoop)
    );
}

#[test]
fn default_export_is_own_routes_only() {
    let none = ExportPolicy::default();
    let n: IpNet = "10.244.2.0/24".parse().unwrap();
    let own = attrs(&[], &[], &[]);
    let ext = attrs(&[65001], &[], &[]);
    for ebgp in [true, false] {
        let cx = exp(ebgp, &none);
        for s in Source::LOCAL {
            let out = cx.export(&n, &local(s, &own)).expect("own routes go out");
            assert_eq!(out.next_hop, OutNextHop::Local);
            assert_eq!(out.attrs.origin, Origin::Igp);
            if ebgp {
                assert_eq!(out.attrs.as_path, AsPath::sequence(vec![65002]));
                assert_eq!(out.attrs.local_pref, None);
            } else {
                assert_eq!(out.attrs.as_path, AsPath::default());
                assert_eq!(out.attrs.local_pref, Some(100));
            }
        }
        assert_eq!(cx.export(&n, &learned(&ext, 1, false)), None, "ebgp={ebgp}");
    }
}

/// The export rule: on the pod CIDRs, communities, a large community, MED 50 and
/// two more copies of our AS.
fn tagging() -> ExportPolicy {
    ExportPolicy {
        rules: vec![Rule {
            matches: Match {
                sources: Some(vec![Source::PodCidrs]),
                ..Default::default()
            },
            action: Action::Accept,
            set: Set {
                communities: vec![c("65000:100")],
                large_communities: vec![[65000, 1, 2]],
                med: Some(50),
                prepend: 2,
                local_pref: None,
            },
        }],
    }
}

#[test]
fn export_rules_table() {
    let p = tagging();
    let cx = exp(true, &p);
    let n: IpNet = "10.244.2.0/24".parse().unwrap();
    let own = attrs(&[], &[c("65000:300")], &[]);
    let out = cx.export(&n, &local(Source::PodCidrs, &own)).unwrap();
    assert_eq!(out.attrs.communities, vec![c("65000:300"), c("65000:100")]);
    assert_eq!(out.attrs.large_communities, vec![[65000, 1, 2]]);
    assert_eq!(out.attrs.med, Some(50));
    assert_eq!(
        out.attrs.as_path,
        AsPath::sequence(vec![65002, 65002, 65002])
    );
    // Another source: not matched, default (own routes go out untouched).
    let out = cx.export(&n, &local(Source::Originate, &own)).unwrap();
    assert_eq!(out.attrs.communities, vec![c("65000:300")]);
    assert_eq!(out.attrs.med, None);
    assert_eq!(out.attrs.as_path, AsPath::sequence(vec![65002]));
}

#[test]
fn learned_routes_go_out_only_when_a_rule_says_so_and_the_rfcs_allow() {
    let p = ExportPolicy {
        rules: vec![Rule {
            matches: Match {
                sources: Some(vec![Source::Learned]),
                ..Default::default()
            },
            ..Default::default()
        }],
    };
    let n: IpNet = "203.0.113.0/24".parse().unwrap();
    let mut a = attrs(&[65001], &[], &[]);
    a.attrs.med = Some(7);
    a.attrs.local_pref = Some(300);
    // To eBGP: our AS first, next hop self, the received MED and LOCAL_PREF stay behind.
    let out = exp(true, &p).export(&n, &learned(&a, 1, false)).unwrap();
    assert_eq!(out.attrs.as_path, AsPath::sequence(vec![65002, 65001]));
    assert_eq!(out.next_hop, OutNextHop::Local);
    assert_eq!((out.attrs.med, out.attrs.local_pref), (None, None));
    // eBGP-learned to iBGP: next hop and MED unchanged, local preference carried.
    let out = exp(false, &p).export(&n, &learned(&a, 1, false)).unwrap();
    assert_eq!(out.next_hop, OutNextHop::Unchanged(a.next_hop));
    assert_eq!((out.attrs.med, out.attrs.local_pref), (Some(7), Some(300)));
    // iBGP-learned to iBGP: never without route reflection; to eBGP: fine.
    assert_eq!(exp(false, &p).export(&n, &learned(&a, 1, true)), None);
    assert!(exp(true, &p).export(&n, &learned(&a, 1, true)).is_some());
    // Never back to the peer it came from.
    let c = learned(&a, 7, false);
    assert!(!for_seven(exp(true, &p).export(&n, &c), &c));
}

#[test]
fn well_known_communities_on_export() {
    let p = ExportPolicy {
        rules: vec![Rule {
            matches: Match {
                sources: None,
                ..Default::default()
            },
            ..Default::default()
        }],
    };
    let n: IpNet = "203.0.113.0/24".parse().unwrap();
    // (community, to eBGP?, goes out?)
    for (comm, ebgp, goes) in [
        (community::NO_EXPORT, true, false),
        (community::NO_EXPORT, false, true),
        (community::NO_EXPORT_SUBCONFED, true, false),
        (community::NO_EXPORT_SUBCONFED, false, true),
        (community::NO_ADVERTISE, true, false),
        (community::NO_ADVERTISE, false, false),
        (c("65000:1"), true, true),
    ] {
        let a = attrs(&[65001], &[comm], &[]);
        assert_eq!(
            exp(ebgp, &p).export(&n, &learned(&a, 1, false)).is_some(),
            goes,
            "{} to {}",
            community::format(comm),
            if ebgp { "eBGP" } else { "iBGP" }
        );
    }
}

#[test]
fn reject_rule_and_unknown_attributes() {
    let p = ExportPolicy {
        rules: vec![
            Rule {
                matches: Match {
                    prefixes: Some(list("10.244.0.0/16", 16, 32)),
                    ..Default::default()
                },
                action: Action::Reject,
                set: Set::default(),
            },
            Rule {
                matches: Match {
                    sources: Some(vec![Source::Learned]),
                    ..Default::default()
                },
                ..Default::default()
            },
        ],
    };
    let own = attrs(&[], &[], &[]);
    assert_eq!(
        exp(true, &p).export(
            &"10.244.2.0/24".parse().unwrap(),
            &local(Source::PodCidrs, &own)
        ),
        None
    );
    let mut a = attrs(&[65001], &[], &[]);
    a.attrs.unknown = vec![
        crate::wire::RawAttr {
            flags: 0xc0,
            code: 250,
            value: vec![1, 2, 3].into(),
        },
        crate::wire::RawAttr {
            flags: 0x80,
            code: 251,
            value: vec![4].into(),
        },
    ];
    a.attrs.ext_communities = vec![0x0002_fde8_0000_0064, 0x4300_0000_0000_0001];
    let out = exp(true, &p)
        .export(&"203.0.113.0/24".parse().unwrap(), &learned(&a, 1, false))
        .unwrap();
    // Unknown attributes travel in the route; the encoder passes only transitive ones on.
    assert_eq!(out.attrs.unknown.len(), 2);
    // The non-transitive extended community (0x43: high bit 0x40) stays in the AS.
    assert_eq!(out.attrs.ext_communities, vec![0x0002_fde8_0000_0064]);
}

#[test]
fn martians_next_hops_and_connected_subnets_table() {
    let p = ImportPolicy {
        prefixes: Some(vec![
            PrefixRule {
                prefix: "0.0.0.0/0".parse().unwrap(),
                ge: 0,
                le: 32,
            },
            PrefixRule {
                prefix: "::/0".parse().unwrap(),
                ge: 0,
                le: 128,
            },
        ]),
        ..Default::default()
    };
    let node: Vec<IpNet> = vec![
        "198.51.100.2/24".parse().unwrap(),
        "2001:db8:2::2/64".parse().unwrap(),
        "127.0.0.1/8".parse().unwrap(),
    ];
    let mut cx = ctx(&p, &[], true);
    cx.node_addresses = &node;
    cx.peer_address = "192.0.2.1".parse().unwrap();
    let via = |nh: &str| {
        let mut a = attrs(&[65001], &[], &[]);
        a.next_hop = match nh.parse::<IpAddr>().unwrap() {
            IpAddr::V4(v) => NextHop::V4(v),
            IpAddr::V6(g) => NextHop::V6 {
                global: g,
                link_local: None,
            },
        };
        a
    };
    let r = |net: &str, nh: &str| cx.decide(&net.parse().unwrap(), &via(nh));
    let ok = Decision::Accept {
        rule: None,
        graceful_shutdown: false,
    };
    use Refusal::*;
    for (net, nh, want) in [
        ("203.0.113.0/24", "198.51.100.1", ok),
        ("0.0.0.0/0", "198.51.100.1", ok),
        ("::/0", "2001:db8:1::1", ok),
        ("127.0.0.0/8", "198.51.100.1", Decision::Refused(Martian)),
        ("127.1.0.0/16", "198.51.100.1", Decision::Refused(Martian)),
        ("224.0.0.0/4", "198.51.100.1", Decision::Refused(Martian)),
        (
            "255.255.255.255/32",
            "198.51.100.1",
            Decision::Refused(Martian),
        ),
        ("fe80::/64", "2001:db8:1::1", Decision::Refused(Martian)),
        ("ff02::/16", "2001:db8:1::1", Decision::Refused(Martian)),
        ("203.0.113.0/24", "127.0.0.1", Decision::Refused(BadNextHop)),
        ("203.0.113.0/24", "0.0.0.0", Decision::Refused(BadNextHop)),
        (
            "203.0.113.0/24",
            "169.254.1.1",
            Decision::Refused(BadNextHop),
        ),
        ("203.0.113.0/24", "240.0.0.1", Decision::Refused(BadNextHop)),
        ("2001:db8:9::/48", "fe80::1", Decision::Refused(BadNextHop)),
        (
            "2001:db8:9::/48",
            "::ffff:127.0.0.1",
            Decision::Refused(BadNextHop),
        ),
        (
            "203.0.113.0/24",
            "198.51.100.2",
            Decision::Refused(NextHopIsUs),
        ),
        (
            "2001:db8:9::/48",
            "2001:db8:2::2",
            Decision::Refused(NextHopIsUs),
        ),
        (
            "198.51.100.0/24",
            "198.51.100.1",
            Decision::Refused(InsideConnectedSubnet),
        ),
        (
            "198.51.100.128/25",
            "198.51.100.1",
            Decision::Refused(InsideConnectedSubnet),
        ),
        (
            "2001:db8:2::/64",
            "2001:db8:1::1",
            Decision::Refused(InsideConnectedSubnet),
        ),
        // The peer's own address (a multihop peer): a host route for it would take the
        // session elsewhere.
        (
            "192.0.2.1/32",
            "198.51.100.1",
            Decision::Refused(InsideConnectedSubnet),
        ),
        // Covering the peering subnet is harmless: the connected route is more specific.
        ("198.51.100.0/23", "198.51.100.1", ok),
    ] {
        assert_eq!(r(net, nh), want, "{net} via {nh}");
    }
    // Turned off for the peer: only the always-on checks remain.
    let off = ImportPolicy {
        filter_martians: false,
        ..p.clone()
    };
    let mut cx = ctx(&off, &[], true);
    cx.node_addresses = &node;
    assert_eq!(
        cx.decide(&"127.0.0.0/8".parse().unwrap(), &via("198.51.100.1")),
        ok
    );
    assert_eq!(
        cx.decide(&"203.0.113.0/24".parse().unwrap(), &via("198.51.100.2")),
        Decision::Refused(NextHopIsUs)
    );
}
