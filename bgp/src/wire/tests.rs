//! Byte fixtures in both directions, one per RFC 4271 section 6 / RFC 7606 case, and property
//! tests: encode/decode round trips, and arbitrary or mutated input never panics.

use super::*;
use proptest::prelude::*;
use std::net::{Ipv4Addr, Ipv6Addr};

const ASN4: Codec = Codec {
    asn4: true,
    extended_message: false,
    ibgp: false,
};
const IBGP: Codec = Codec {
    asn4: true,
    extended_message: false,
    ibgp: true,
};

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// A whole message: marker, length, type, body.
fn msg(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![0xff; 16];
    m.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
    m.push(ty);
    m.extend_from_slice(body);
    m
}

/// An UPDATE from its three fields.
fn update(withdrawn: &[u8], attrs: &[u8], nlri: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&(withdrawn.len() as u16).to_be_bytes());
    b.extend_from_slice(withdrawn);
    b.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    b.extend_from_slice(attrs);
    b.extend_from_slice(nlri);
    msg(2, &b)
}

// ORIGIN IGP, AS_PATH [65001 65010] (4-octet), NEXT_HOP 198.51.100.1
const ORIGIN_IGP: &str = "40 01 01 00";
const AS_PATH_2: &str = "40 02 0a 02 02 0000fde9 0000fdf2";
const NEXT_HOP: &str = "40 03 04 c6336401";

fn attrs(parts: &[&str]) -> Vec<u8> {
    parts.iter().flat_map(|p| hex(p)).collect()
}

fn decode_update(m: &[u8], codec: &Codec) -> UpdateMsg {
    match decode(m, codec) {
        Ok(Message::Update(u)) => u,
        other => panic!("expected an UPDATE, got {other:?}"),
    }
}

fn decode_err(m: &[u8], codec: &Codec) -> (u8, u8, Vec<u8>) {
    let e = match frame(m, codec) {
        Err(e) => e,
        Ok(_) => decode(m, codec).expect_err("expected a decode error"),
    };
    (
        e.notification.code,
        e.notification.subcode,
        e.notification.data,
    )
}

fn net(s: &str) -> ipnet::IpNet {
    s.parse().unwrap()
}

// ---- header (RFC 4271 6.1)

#[test]
fn keepalive_both_ways() {
    let k = hex("ffffffffffffffffffffffffffffffff 0013 04");
    assert_eq!(frame(&k, &ASN4).unwrap(), Some(19));
    assert_eq!(decode(&k, &ASN4).unwrap(), Message::Keepalive);
    assert_eq!(encode(&Message::Keepalive, &ASN4), k);
}

#[test]
fn frame_waits_for_whole_message() {
    let k = msg(4, &[]);
    assert_eq!(frame(&k[..10], &ASN4).unwrap(), None);
    let u = update(&[], &[], &[]);
    assert_eq!(frame(&u[..20], &ASN4).unwrap(), None);
    assert_eq!(frame(&u, &ASN4).unwrap(), Some(23));
}

#[test]
fn bad_marker_is_connection_not_synchronized() {
    let mut k = msg(4, &[]);
    k[3] = 0;
    assert_eq!(decode_err(&k, &ASN4), (1, 1, vec![]));
}

#[test]
fn bad_lengths() {
    // Shorter than a header; a KEEPALIVE with a body; an UPDATE over 4096 without RFC 8654.
    let mut short = msg(4, &[]);
    short[17] = 18;
    assert_eq!(decode_err(&short, &ASN4), (1, 2, vec![0, 18]));
    assert_eq!(decode_err(&msg(4, &[0]), &ASN4), (1, 2, vec![0, 20]));
    // Fill to 4100 bytes with /8 prefixes (two bytes each) and a /0 if one byte is left.
    let a = attrs(&[ORIGIN_IGP, AS_PATH_2, NEXT_HOP]);
    let n = 4100 - 23 - a.len();
    let mut nlri: Vec<u8> = (0..n / 2).flat_map(|_| [8u8, 10]).collect();
    if n % 2 == 1 {
        nlri.push(0);
    }
    let big = update(&[], &a, &nlri);
    assert_eq!(big.len(), 4100);
    assert_eq!(
        decode_err(&big, &ASN4),
        (1, 2, 4100u16.to_be_bytes().to_vec())
    );
    let ext = Codec {
        extended_message: true,
        ..ASN4
    };
    assert!(decode(&big, &ext).is_ok(), "extended messages allow 65535");
}

#[test]
fn bad_type() {
    assert_eq!(decode_err(&msg(9, &[]), &ASN4), (1, 3, vec![9]));
}

// ---- OPEN (RFC 4271 6.2)

/// OPEN as BIRD 2 sends it: AS 65001, hold 3, id 198.51.100.1, capabilities MP ipv4 and ipv6,
/// route refresh, enhanced route refresh, graceful restart (120 s, both families), 4-octet AS.
const BIRD_OPEN: &str = "ffffffffffffffffffffffffffffffff 0041 01 04 fde9 0003 c6336401 24
    02 22 0104 0001 0001 0104 0002 0001 0200 4600 400a 0078 0001 0100 0002 0100 4104 0000fde9";

#[test]
fn open_from_bird() {
    let m = hex(BIRD_OPEN);
    let Message::Open(o) = decode(&m, &Codec::INITIAL).unwrap() else {
        panic!()
    };
    assert_eq!(o.asn(), 65001);
    assert_eq!(o.hold_time, 3);
    assert_eq!(o.router_id, Ipv4Addr::new(198, 51, 100, 1));
    assert_eq!(o.caps.families, vec![Afi::Ipv4, Afi::Ipv6]);
    assert!(o.caps.route_refresh && o.caps.enhanced_route_refresh);
    let gr = o.caps.graceful_restart.as_ref().unwrap();
    assert_eq!(gr.restart_time, 120);
    assert_eq!(gr.families, vec![(Afi::Ipv4, false), (Afi::Ipv6, false)]);
}

#[test]
fn open_round_trip_with_4_octet_as() {
    let caps = Capabilities {
        families: vec![Afi::Ipv4, Afi::Ipv6],
        route_refresh: true,
        graceful_restart: Some(GracefulRestartCap {
            restarting: true,
            notification: false,
            restart_time: 90,
            families: vec![(Afi::Ipv4, true), (Afi::Ipv6, true)],
        }),
        ..Default::default()
    };
    let o = OpenMsg::new(4_200_000_001, 9, Ipv4Addr::new(192, 0, 2, 2), caps);
    assert_eq!(o.my_as, AS_TRANS);
    let bytes = encode(&Message::Open(o.clone()), &Codec::INITIAL);
    let Message::Open(back) = decode(&bytes, &Codec::INITIAL).unwrap() else {
        panic!()
    };
    assert_eq!(back, o);
    assert_eq!(back.asn(), 4_200_000_001);
}

fn open_body(version: u8, hold: u16, id: [u8; 4], params: &[u8]) -> Vec<u8> {
    let mut b = vec![version];
    b.extend_from_slice(&65001u16.to_be_bytes());
    b.extend_from_slice(&hold.to_be_bytes());
    b.extend_from_slice(&id);
    b.push(params.len() as u8);
    b.extend_from_slice(params);
    msg(1, &b)
}

#[test]
fn open_errors() {
    // Version 3: Unsupported Version Number with our version in the data.
    assert_eq!(
        decode_err(&open_body(3, 90, [1, 1, 1, 1], &[]), &Codec::INITIAL),
        (2, 1, vec![0, 4])
    );
    // Hold time 2: Unacceptable Hold Time.
    assert_eq!(
        decode_err(&open_body(4, 2, [1, 1, 1, 1], &[]), &Codec::INITIAL),
        (2, 6, vec![])
    );
    // BGP identifier 0.0.0.0: Bad BGP Identifier.
    assert_eq!(
        decode_err(&open_body(4, 90, [0, 0, 0, 0], &[]), &Codec::INITIAL),
        (2, 3, vec![])
    );
    // Optional parameter type 9: Unsupported Optional Parameter.
    assert_eq!(
        decode_err(&open_body(4, 90, [1, 1, 1, 1], &[9, 1, 0]), &Codec::INITIAL),
        (2, 4, vec![])
    );
    // OPEN shorter than its fixed part: the header check catches it.
    assert_eq!(
        decode_err(&msg(1, &[4, 0, 1]), &Codec::INITIAL),
        (1, 2, vec![0, 22])
    );
}

// ---- UPDATE (RFC 4271 6.3, RFC 7606)

#[test]
fn ipv4_update_both_ways() {
    let m = update(
        &[],
        &attrs(&[ORIGIN_IGP, AS_PATH_2, NEXT_HOP]),
        &hex("18 cb0071 10 c612"),
    );
    let u = decode_update(&m, &ASN4);
    assert!(u.errors.is_empty(), "{:?}", u.errors);
    assert_eq!(u.reach.len(), 1);
    assert_eq!(
        u.reach[0].next_hop,
        NextHop::V4(Ipv4Addr::new(198, 51, 100, 1))
    );
    assert_eq!(
        u.reach[0].prefixes,
        vec![net("203.0.113.0/24"), net("198.18.0.0/16")]
    );
    assert_eq!(u.attrs.as_path.to_string(), "65001 65010");
    assert_eq!(u.attrs.origin, Origin::Igp);
    // Our encoder writes the same bytes (attribute order and flags included), apart from the
    // extended-length bit it always sets.
    let out = encode_updates(&u, &ASN4);
    assert_eq!(out.len(), 1);
    assert_eq!(decode_update(&out[0], &ASN4), u);
}

#[test]
fn host_bits_are_cleared() {
    // 203.0.113.255/25 arrives with host bits set (netgauze would keep them).
    let m = update(
        &[],
        &attrs(&[ORIGIN_IGP, AS_PATH_2, NEXT_HOP]),
        &hex("19 cb0071 ff"),
    );
    let u = decode_update(&m, &ASN4);
    assert_eq!(u.reach[0].prefixes, vec![net("203.0.113.128/25")]);
}

#[test]
fn withdraw_and_end_of_rib() {
    let u = decode_update(&update(&hex("18 cb0071"), &[], &[]), &ASN4);
    assert_eq!(u.withdrawn, vec![net("203.0.113.0/24")]);
    assert_eq!(u.end_of_rib, None);
    let eor4 = update(&[], &[], &[]);
    assert_eq!(decode_update(&eor4, &ASN4).end_of_rib, Some(Afi::Ipv4));
    assert_eq!(
        encode_updates(&UpdateMsg::end_of_rib(Afi::Ipv4), &ASN4),
        vec![eor4]
    );
    // IPv6 End-of-RIB: only an empty MP_UNREACH.
    let eor6 = update(&[], &hex("80 0f 03 0002 01"), &[]);
    assert_eq!(decode_update(&eor6, &ASN4).end_of_rib, Some(Afi::Ipv6));
    let ours = encode_updates(&UpdateMsg::end_of_rib(Afi::Ipv6), &ASN4);
    assert_eq!(decode_update(&ours[0], &ASN4).end_of_rib, Some(Afi::Ipv6));
}

#[test]
fn ipv6_mp_reach_with_link_local() {
    // MP_REACH ipv6 unicast, next hop 2001:db8::1 + fe80::1, NLRI 2001:db8:100::/48.
    let mp = "90 0e 002c 0002 01 20 20010db8000000000000000000000001 fe800000000000000000000000000001 00 30 20010db80100";
    let m = update(&[], &attrs(&[ORIGIN_IGP, AS_PATH_2, mp]), &[]);
    let u = decode_update(&m, &ASN4);
    assert!(u.errors.is_empty(), "{:?}", u.errors);
    assert_eq!(u.reach[0].afi, Afi::Ipv6);
    assert_eq!(
        u.reach[0].next_hop,
        NextHop::V6 {
            global: "2001:db8::1".parse().unwrap(),
            link_local: Some("fe80::1".parse().unwrap())
        }
    );
    assert_eq!(u.reach[0].prefixes, vec![net("2001:db8:100::/48")]);
    let again = decode_update(&encode_updates(&u, &ASN4)[0], &ASN4);
    assert_eq!(again, u);
}

#[test]
fn missing_next_hop_is_treat_as_withdraw() {
    let u = decode_update(
        &update(&[], &attrs(&[ORIGIN_IGP, AS_PATH_2]), &hex("18 cb0071")),
        &ASN4,
    );
    assert!(u.reach.is_empty());
    assert_eq!(u.withdrawn, vec![net("203.0.113.0/24")]);
    assert_eq!(u.errors[0].action, ErrorAction::TreatAsWithdraw);
    assert_eq!(u.errors[0].code, attr::NEXT_HOP);
}

#[test]
fn missing_as_path_and_bad_origin_are_treat_as_withdraw() {
    let u = decode_update(
        &update(&[], &attrs(&[ORIGIN_IGP, NEXT_HOP]), &hex("18 cb0071")),
        &ASN4,
    );
    assert_eq!((u.reach.len(), u.withdrawn.len()), (0, 1));
    let u = decode_update(
        &update(
            &[],
            &attrs(&["40 01 01 07", AS_PATH_2, NEXT_HOP]),
            &hex("18 cb0071"),
        ),
        &ASN4,
    );
    assert_eq!((u.reach.len(), u.withdrawn.len()), (0, 1));
    assert_eq!(u.errors[0].code, attr::ORIGIN);
}

#[test]
fn malformed_communities_withdraw_but_bad_aggregator_is_discarded() {
    // COMMUNITIES of 3 bytes: treat-as-withdraw (RFC 7606 7.8).
    let u = decode_update(
        &update(
            &[],
            &attrs(&[ORIGIN_IGP, AS_PATH_2, NEXT_HOP, "c0 08 03 000102"]),
            &hex("18 cb0071"),
        ),
        &ASN4,
    );
    assert_eq!((u.reach.len(), u.withdrawn.len()), (0, 1));
    // AGGREGATOR of 5 bytes: attribute discard (RFC 7606 7.7), the route stays.
    let u = decode_update(
        &update(
            &[],
            &attrs(&[ORIGIN_IGP, AS_PATH_2, NEXT_HOP, "c0 07 05 0000fde901"]),
            &hex("18 cb0071"),
        ),
        &ASN4,
    );
    assert_eq!(u.reach[0].prefixes, vec![net("203.0.113.0/24")]);
    assert_eq!(u.errors[0].action, ErrorAction::Discard);
    assert_eq!(u.attrs.aggregator, None);
}

#[test]
fn attribute_flags_error_is_treat_as_withdraw() {
    // ORIGIN marked optional.
    let u = decode_update(
        &update(
            &[],
            &attrs(&["c0 01 01 00", AS_PATH_2, NEXT_HOP]),
            &hex("18 cb0071"),
        ),
        &ASN4,
    );
    assert_eq!((u.reach.len(), u.withdrawn.len()), (0, 1));
}

#[test]
fn attribute_overrun_withdraws_nlri() {
    // The last attribute claims 9 bytes, 4 are there.
    let u = decode_update(
        &update(
            &[],
            &attrs(&[ORIGIN_IGP, AS_PATH_2, "40 03 09 c6336401"]),
            &hex("18 cb0071"),
        ),
        &ASN4,
    );
    assert_eq!((u.reach.len(), u.withdrawn.len()), (0, 1));
}

#[test]
fn duplicate_attribute_is_dropped_but_duplicate_mp_reach_resets() {
    let u = decode_update(
        &update(
            &[],
            &attrs(&[ORIGIN_IGP, "40 01 01 02", AS_PATH_2, NEXT_HOP]),
            &hex("18 cb0071"),
        ),
        &ASN4,
    );
    assert_eq!(u.attrs.origin, Origin::Igp, "the first ORIGIN is kept");
    assert_eq!(u.reach.len(), 1);
    let mp = "90 0e 0015 0002 01 10 20010db8000000000000000000000001 00 20 20010db8";
    let m = update(&[], &attrs(&[ORIGIN_IGP, AS_PATH_2, mp, mp]), &[]);
    assert_eq!(decode_err(&m, &ASN4), (3, 1, vec![]));
}

#[test]
fn session_errors() {
    // Withdrawn length past the end: Malformed Attribute List.
    let mut m = update(&hex("18 cb0071"), &[], &[]);
    m[19] = 0x01;
    assert_eq!(decode_err(&m, &ASN4), (3, 1, vec![]));
    // Prefix of length 33 in the NLRI: Invalid Network Field.
    let m = update(
        &[],
        &attrs(&[ORIGIN_IGP, AS_PATH_2, NEXT_HOP]),
        &hex("21 cb007101 01"),
    );
    assert_eq!(decode_err(&m, &ASN4), (3, 10, vec![]));
    // Unrecognized well-known attribute (type 99, not optional): the attribute is the data.
    let m = update(
        &[],
        &attrs(&[ORIGIN_IGP, AS_PATH_2, NEXT_HOP, "40 63 01 00"]),
        &hex("18 cb0071"),
    );
    assert_eq!(decode_err(&m, &ASN4), (3, 2, hex("40 63 01 00")));
    // MP_REACH with a 5-byte next hop: Optional Attribute Error.
    let m = update(
        &[],
        &attrs(&[ORIGIN_IGP, AS_PATH_2, "90 0e 000a 0002 01 05 0102030405 00"]),
        &[],
    );
    assert_eq!(decode_err(&m, &ASN4).1, 9);
}

#[test]
fn unknown_optional_attribute_is_ignored() {
    let u = decode_update(
        &update(
            &[],
            &attrs(&[ORIGIN_IGP, AS_PATH_2, NEXT_HOP, "c0 63 02 abcd"]),
            &hex("18 cb0071"),
        ),
        &ASN4,
    );
    assert!(u.errors.is_empty());
    assert_eq!(u.reach.len(), 1);
}

#[test]
fn ebgp_local_pref_ignored_ibgp_kept() {
    let m = update(
        &[],
        &attrs(&[ORIGIN_IGP, AS_PATH_2, NEXT_HOP, "40 05 04 000000c8"]),
        &hex("18 cb0071"),
    );
    assert_eq!(decode_update(&m, &ASN4).attrs.local_pref, None);
    assert_eq!(decode_update(&m, &IBGP).attrs.local_pref, Some(200));
}

#[test]
fn two_octet_session_merges_as4_path() {
    let two = Codec::INITIAL;
    // AS_PATH [65010 23456 65001] (2-octet), AS4_PATH [4200000001 65001].
    let m = update(
        &[],
        &attrs(&[
            ORIGIN_IGP,
            "40 02 08 02 03 fdf2 5ba0 fde9",
            NEXT_HOP,
            "c0 11 0a 02 02 fa56ea01 0000fde9",
        ]),
        &hex("18 cb0071"),
    );
    let u = decode_update(&m, &two);
    assert_eq!(u.attrs.as_path.to_string(), "65010 4200000001 65001");
}

#[test]
fn route_refresh() {
    let m = msg(5, &hex("0002 00 01"));
    assert_eq!(
        decode(&m, &ASN4).unwrap(),
        Message::RouteRefresh {
            afi: 2,
            safi: 1,
            subtype: 0
        }
    );
    assert_eq!(encode(&decode(&m, &ASN4).unwrap(), &ASN4), m);
    assert_eq!(
        decode_err(&msg(5, &hex("0002 00 01 00")), &ASN4),
        (7, 1, hex("0002000100"))
    );
}

#[test]
fn notification_text() {
    let m = msg(3, &hex("06 02 05 68656c6c6f"));
    let Message::Notification(n) = decode(&m, &ASN4).unwrap() else {
        panic!()
    };
    assert_eq!(
        n.to_string(),
        "Cease: Administrative Shutdown (6/2): \"hello\""
    );
    assert_eq!(
        encode(
            &Message::Notification(NotificationMsg::shutdown("hello")),
            &ASN4
        ),
        m
    );
}

#[test]
fn large_updates_are_split_under_the_limit() {
    let prefixes: Vec<ipnet::IpNet> = (0..3000u32)
        .map(|i| {
            ipnet::IpNet::V4(
                ipnet::Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 + (i << 8)), 24).unwrap(),
            )
        })
        .collect();
    let u = UpdateMsg {
        reach: vec![Reach {
            afi: Afi::Ipv4,
            next_hop: NextHop::V4(Ipv4Addr::new(192, 0, 2, 2)),
            prefixes: prefixes.clone(),
        }],
        attrs: PathAttrs {
            as_path: AsPath::sequence(vec![65002]),
            ..Default::default()
        },
        ..Default::default()
    };
    let msgs = encode_updates(&u, &ASN4);
    assert!(msgs.len() >= 3);
    let mut back = Vec::new();
    for m in &msgs {
        assert!(m.len() <= MAX_LEN);
        back.extend(decode_update(m, &ASN4).reach.remove(0).prefixes);
    }
    assert_eq!(back, prefixes);
}

// ---- properties

fn arb_v4() -> impl Strategy<Value = ipnet::IpNet> {
    // Unicast only: netgauze encodes no prefix from the multicast range.
    (0u32..0xe000_0000, 0u8..=32).prop_map(|(a, l)| {
        ipnet::IpNet::V4(ipnet::Ipv4Net::new(Ipv4Addr::from(a), l).unwrap().trunc())
    })
}

fn arb_v6() -> impl Strategy<Value = ipnet::IpNet> {
    (any::<u128>(), 0u8..=128).prop_map(|(a, l)| {
        // Unicast only: netgauze refuses multicast IPv6 prefixes.
        let a = a & !(0xffu128 << 120);
        ipnet::IpNet::V6(ipnet::Ipv6Net::new(Ipv6Addr::from(a), l).unwrap().trunc())
    })
}

fn arb_attrs() -> impl Strategy<Value = PathAttrs> {
    (
        prop_oneof![
            Just(Origin::Igp),
            Just(Origin::Egp),
            Just(Origin::Incomplete)
        ],
        proptest::collection::vec(1u32..=u32::MAX, 0..6),
        proptest::option::of(any::<u32>()),
        proptest::collection::vec(any::<u32>(), 0..4),
        proptest::collection::vec(any::<[u32; 3]>(), 0..3),
        any::<bool>(),
    )
        .prop_map(
            |(origin, path, med, communities, large, atomic)| PathAttrs {
                origin,
                as_path: AsPath::sequence(path),
                med,
                communities,
                large_communities: large,
                atomic_aggregate: atomic,
                ..Default::default()
            },
        )
}

fn dedup(mut v: Vec<ipnet::IpNet>) -> Vec<ipnet::IpNet> {
    let mut seen = std::collections::HashSet::new();
    v.retain(|n| seen.insert(*n));
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn update_v4_round_trip(attrs in arb_attrs(), nh in any::<u32>().prop_filter("unicast", |a| {
        let a = Ipv4Addr::from(*a); !a.is_unspecified() && !a.is_multicast() && !a.is_broadcast()
    }), prefixes in proptest::collection::vec(arb_v4(), 1..50)) {
        // 0.0.0.0/0 is a valid route but has no bytes; keep it in.
        let u = UpdateMsg {
            reach: vec![Reach { afi: Afi::Ipv4, next_hop: NextHop::V4(Ipv4Addr::from(nh)), prefixes: dedup(prefixes) }],
            attrs,
            ..Default::default()
        };
        let msgs = encode_updates(&u, &ASN4);
        prop_assert_eq!(msgs.len(), 1);
        prop_assert_eq!(decode_update(&msgs[0], &ASN4), u);
    }

    #[test]
    fn update_v6_round_trip(attrs in arb_attrs(), g in any::<u128>(), ll in proptest::option::of(any::<u64>()),
                            prefixes in proptest::collection::vec(arb_v6(), 1..30)) {
        let global = Ipv6Addr::from((g & !(0xffu128 << 120)) | (0x20u128 << 120));
        let link_local = ll.map(|l| Ipv6Addr::from((0xfe80u128 << 112) | l as u128));
        let u = UpdateMsg {
            reach: vec![Reach { afi: Afi::Ipv6, next_hop: NextHop::V6 { global, link_local }, prefixes: dedup(prefixes) }],
            attrs,
            ..Default::default()
        };
        let msgs = encode_updates(&u, &ASN4);
        prop_assert_eq!(msgs.len(), 1);
        prop_assert_eq!(decode_update(&msgs[0], &ASN4), u);
    }

    #[test]
    fn withdraw_round_trip(v4 in proptest::collection::vec(arb_v4(), 0..40), v6 in proptest::collection::vec(arb_v6(), 0..40)) {
        let u = UpdateMsg { withdrawn: dedup([v4.clone(), v6.clone()].concat()), ..Default::default() };
        let mut back = Vec::new();
        for m in encode_updates(&u, &ASN4) {
            back.extend(decode_update(&m, &ASN4).withdrawn);
        }
        prop_assert_eq!(back, u.withdrawn);
    }

    #[test]
    fn split_updates_fit_and_lose_nothing(v4 in proptest::collection::vec(arb_v4(), 0..3000),
                                          v6 in proptest::collection::vec(arb_v6(), 0..1500),
                                          w in proptest::collection::vec(arb_v4(), 0..2000),
                                          path in proptest::collection::vec(1u32..=u32::MAX, 0..300)) {
        let (v4, v6, w) = (dedup(v4), dedup(v6), dedup(w));
        let u = UpdateMsg {
            withdrawn: w.clone(),
            reach: vec![
                Reach { afi: Afi::Ipv4, next_hop: NextHop::V4(Ipv4Addr::new(192, 0, 2, 1)), prefixes: v4.clone() },
                Reach { afi: Afi::Ipv6, next_hop: NextHop::V6 { global: "2001:db8::1".parse().unwrap(), link_local: Some("fe80::1".parse().unwrap()) }, prefixes: v6.clone() },
            ],
            attrs: PathAttrs { as_path: AsPath::sequence(path), ..Default::default() },
            ..Default::default()
        };
        let (mut got4, mut got6, mut gotw) = (Vec::new(), Vec::new(), Vec::new());
        for m in encode_updates(&u, &ASN4) {
            prop_assert!(m.len() <= MAX_LEN, "{} bytes", m.len());
            let d = decode_update(&m, &ASN4);
            gotw.extend(d.withdrawn);
            for r in d.reach {
                match r.afi { Afi::Ipv4 => got4.extend(r.prefixes), Afi::Ipv6 => got6.extend(r.prefixes) }
            }
        }
        prop_assert_eq!(got4, v4);
        prop_assert_eq!(got6, v6);
        prop_assert_eq!(gotw, w);
    }

    #[test]
    fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..300), ty in 1u8..=5) {
        let m = msg(ty, &body);
        for codec in [Codec::INITIAL, ASN4, IBGP] {
            let _ = frame(&m, &codec);
            let _ = decode(&m, &codec);
        }
    }

    #[test]
    fn mutated_updates_never_panic(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let mp = "90 0e 002c 0002 01 20 20010db8000000000000000000000001 fe800000000000000000000000000001 00 30 20010db80100";
        let mut m = update(&hex("18 c63364"), &attrs(&[ORIGIN_IGP, AS_PATH_2, NEXT_HOP, mp, "c0 08 04 fde90001"]), &hex("18 cb0071"));
        for (i, b) in flips {
            let i = 19 + i % (m.len() - 19);
            m[i] = b;
        }
        for codec in [Codec::INITIAL, ASN4, IBGP] {
            if let Ok(Some(len)) = frame(&m, &codec) {
                let _ = decode(&m[..len], &codec);
            }
        }
    }
}

// ---- attributes Petrel keeps without interpreting them (RFC 4271 5, RFC 4360)

#[test]
fn unknown_transitive_attribute_goes_on_marked_partial_and_extended_communities_stay() {
    // An unknown optional transitive attribute (type 250), an unknown optional
    // non-transitive one (251), and EXTENDED_COMMUNITIES with a route target 65000:100.
    let m = update(
        &[],
        &attrs(&[
            ORIGIN_IGP,
            AS_PATH_2,
            NEXT_HOP,
            "c0 fa 03 010203",
            "80 fb 01 04",
            "c0 10 08 0002fde800000064",
        ]),
        &hex("18 cb0071"),
    );
    let u = decode_update(&m, &ASN4);
    assert!(u.errors.is_empty(), "{:?}", u.errors);
    assert_eq!(u.attrs.ext_communities, vec![0x0002_fde8_0000_0064]);
    assert_eq!(
        crate::wire::community::format_ext(u.attrs.ext_communities[0]),
        "rt 65000:100"
    );
    let kept: Vec<(u8, u8)> = u.attrs.unknown.iter().map(|a| (a.code, a.flags)).collect();
    assert_eq!(kept, vec![(250, 0xc0), (251, 0x80)]);
    // Passed on: the transitive one with the Partial bit, the non-transitive one dropped.
    let out = encode_updates(&u, &ASN4);
    let again = decode_update(&out[0], &ASN4);
    let kept: Vec<(u8, u8, Vec<u8>)> = again
        .attrs
        .unknown
        .iter()
        .map(|a| (a.code, a.flags, a.value.to_vec()))
        .collect();
    assert_eq!(kept, vec![(250, 0xe0, vec![1, 2, 3])]);
    assert_eq!(again.attrs.ext_communities, u.attrs.ext_communities);
}

#[test]
fn every_unknown_optional_parameter_type_is_unsupported_optional_parameter() {
    // RFC 4271 6.2: 2/4 for any parameter type other than Capabilities (2), alone or after a
    // valid capability; RFC 9072's 255 is not supported either.
    for params in [
        vec![1u8, 2, 0, 0],
        vec![3, 0],
        vec![0, 0],
        vec![128, 1, 9],
        vec![255, 0],
        vec![2, 6, 1, 4, 0, 1, 0, 1, 9, 1, 0],
    ] {
        assert_eq!(
            decode_err(&open_body(4, 90, [1, 1, 1, 1], &params), &Codec::INITIAL),
            (2, 4, vec![]),
            "{params:?}"
        );
    }
}
