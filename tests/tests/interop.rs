//! Petrel peers over eBGP with BIRD 2, GoBGP and FRR, each in its own namespace, over an IPv4
//! and an IPv6 session. Each test checks from the peer's side (birdc, gobgp, vtysh) that the
//! sessions are Established and that the peer holds Petrel's pod CIDRs with AS path 65002
//! and Petrel's address as next hop; and from Petrel's side that it holds, and installed
//! in the kernel, the routes the peer originates.

use std::time::Duration;

use petrel_tests::bird::{self, Bird};
use petrel_tests::frr::Frr;
use petrel_tests::gobgp::Gobgp;
use petrel_tests::petrel::Petrel;
use petrel_tests::{Netns, TestDir, link, wait_until_or};

const T: Duration = Duration::from_secs(30);

/// The node: AS 65002 with one IPv4 and one IPv6 pod CIDR, peering with the router over
/// both address families.
fn petrel_yaml() -> String {
    r#"
node:
  asn: 65002
  router_id: 198.51.100.2
  pod_cidrs: [10.244.2.0/24, "fd00:10:244:2::/64"]
peers:
  - name: tor4
    address: 198.51.100.1
    asn: 65001
    hold_time: 3
    connect_retry: 1
    families: [ipv4]
    import:
      prefixes: [{ prefix: 0.0.0.0/0, le: 32 }]
  - name: tor6
    address: "2001:db8:1::1"
    asn: 65001
    hold_time: 3
    connect_retry: 1
    families: [ipv6]
    import:
      prefixes: [{ prefix: "::/0", le: 128 }]
"#
    .to_string()
}

struct Topo {
    // Field order is drop order: the daemons before their namespaces.
    node: Netns,
    router: Netns,
    dir: TestDir,
}

fn topo(label: &str) -> Topo {
    let dir = TestDir::new(label);
    let router = Netns::new("r");
    let node = Netns::new("n");
    link(
        &router,
        &["198.51.100.1/24", "2001:db8:1::1/64"],
        &node,
        &["198.51.100.2/24", "2001:db8:1::2/64"],
    );
    Topo { node, router, dir }
}

/// Petrel's side: both sessions up, the router's routes learned and in the kernel.
fn check_petrel_side(p: &Petrel, node: &Netns) {
    p.wait_established("tor4", T);
    p.wait_established("tor6", T);
    let r4 = wait_until_or(
        "Petrel learns 203.0.113.0/24",
        T,
        || p.route("203.0.113.0/24"),
        || p.routes().to_string(),
    );
    assert_eq!(r4["paths"][0]["as_path"], "65001");
    assert_eq!(r4["paths"][0]["next_hop"], "198.51.100.1");
    let r6 = wait_until_or(
        "Petrel learns 2001:db8:99::/48",
        T,
        || p.route("2001:db8:99::/48"),
        || p.routes().to_string(),
    );
    assert_eq!(r6["paths"][0]["as_path"], "65001");
    assert!(
        r6["paths"][0]["next_hop"]
            .to_string()
            .contains("2001:db8:1::1"),
        "{r6}"
    );
    // In the kernel, with Petrel's protocol number.
    wait_until_or(
        "routes in the node's FIB",
        T,
        || {
            let v4 = node.routes4("proto 200");
            let v6 = node.routes6("proto 200");
            (v4.contains("203.0.113.0/24 via 198.51.100.1")
                && v6.contains("2001:db8:99::/48 via 2001:db8:1::1"))
            .then_some(())
        },
        || format!("{}{}", node.routes4(""), node.routes6("")),
    );
    // And the blackholes for its own pod CIDRs.
    assert!(
        node.routes4("proto 200")
            .contains("blackhole 10.244.2.0/24")
    );
    assert!(
        node.routes6("proto 200")
            .contains("blackhole fd00:10:244:2::/64")
    );
}

#[test]
fn bird_ipv4_and_ipv6_sessions() {
    let t = topo("bird");
    let conf = format!(
        r#"
router id 198.51.100.1;
protocol device {{}}
protocol static s4 {{ ipv4; route 203.0.113.0/24 blackhole; }}
protocol static s6 {{ ipv6; route 2001:db8:99::/48 blackhole; }}
protocol bgp petrel4 {{
  local 198.51.100.1 as 65001; neighbor 198.51.100.2 as 65002;
  hold time 3; {fast}
  ipv4 {{ import all; export all; }};
}}
protocol bgp petrel6 {{
  local 2001:db8:1::1 as 65001; neighbor 2001:db8:1::2 as 65002;
  hold time 3; {fast}
  ipv6 {{ import all; export all; }};
}}
"#,
        fast = bird::FAST
    );
    let b = Bird::start(&t.router, &t.dir, "bird", &conf);
    let p = Petrel::start(&t.node, &t.dir, "petrel", &petrel_yaml());

    // The peer's side.
    b.wait_established("petrel4", T);
    b.wait_established("petrel6", T);
    let r4 = wait_until_or(
        "BIRD holds 10.244.2.0/24",
        T,
        || Some(b.route("10.244.2.0/24")).filter(|r| r.contains("BGP.as_path")),
        || b.birdc("show route all"),
    );
    assert!(r4.contains("BGP.as_path: 65002"), "{r4}");
    assert!(r4.contains("BGP.next_hop: 198.51.100.2"), "{r4}");
    assert!(r4.contains("BGP.origin: IGP"), "{r4}");
    let r6 = wait_until_or(
        "BIRD holds fd00:10:244:2::/64",
        T,
        || Some(b.route("fd00:10:244:2::/64")).filter(|r| r.contains("BGP.as_path")),
        || b.birdc("show route all"),
    );
    assert!(r6.contains("BGP.as_path: 65002"), "{r6}");
    assert!(r6.contains("BGP.next_hop: 2001:db8:1::2"), "{r6}");
    // The IPv6 pod CIDR goes only over the IPv6 session (no IPv6 next hop on the IPv4 one).
    assert!(!b.route("fd00:10:244:2::/64").contains("petrel4"));

    check_petrel_side(&p, &t.node);
    let st = p.status();
    let tor4 = st["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "tor4")
        .unwrap();
    assert_eq!(tor4["prefixes"]["accepted"], 1);
    assert_eq!(tor4["prefixes"]["advertised"], 1);
    assert_eq!(tor4["graceful_restart"], true);
}

#[test]
fn gobgp_ipv4_and_ipv6_sessions() {
    let t = topo("gobgp");
    let toml = r#"
[global.config]
  as = 65001
  router-id = "198.51.100.1"
  local-address-list = ["198.51.100.1", "2001:db8:1::1"]

[[neighbors]]
  [neighbors.config]
    neighbor-address = "198.51.100.2"
    peer-as = 65002
  [neighbors.timers.config]
    hold-time = 9
    keepalive-interval = 3
    connect-retry = 1
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv4-unicast"

[[neighbors]]
  [neighbors.config]
    neighbor-address = "2001:db8:1::2"
    peer-as = 65002
  [neighbors.timers.config]
    hold-time = 9
    keepalive-interval = 3
    connect-retry = 1
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv6-unicast"
"#;
    let g = Gobgp::start(&t.router, &t.dir, "gobgp", toml);
    g.cli("global rib add 203.0.113.0/24 -a ipv4");
    g.cli("global rib add 2001:db8:99::/48 -a ipv6");
    let p = Petrel::start(&t.node, &t.dir, "petrel", &petrel_yaml());

    for n in ["198.51.100.2", "2001:db8:1::2"] {
        wait_until_or(
            &format!("GoBGP session with {n} established"),
            T,
            || (g.state(n) == "established" || g.state(n) == "6").then_some(()),
            || g.cli(&format!("neighbor {n}")),
        );
    }
    let rib4 = wait_until_or(
        "GoBGP holds 10.244.2.0/24",
        T,
        || {
            let r = g.rib("ipv4");
            r.get("10.244.2.0/24").cloned()
        },
        || g.cli("global rib -a ipv4"),
    );
    let text = rib4.to_string();
    assert!(text.contains("65002"), "AS path: {text}");
    assert!(
        text.contains("\"nexthop\":\"198.51.100.2\""),
        "next hop: {text}"
    );
    let rib6 = wait_until_or(
        "GoBGP holds fd00:10:244:2::/64",
        T,
        || g.rib("ipv6").get("fd00:10:244:2::/64").cloned(),
        || g.cli("global rib -a ipv6"),
    );
    let text = rib6.to_string();
    assert!(text.contains("65002"), "AS path: {text}");
    assert!(text.contains("2001:db8:1::2"), "next hop: {text}");

    check_petrel_side(&p, &t.node);
}

#[test]
fn frr_ipv4_and_ipv6_sessions() {
    let t = topo("frr");
    let conf = r#"
frr defaults traditional
hostname router
router bgp 65001
 bgp router-id 198.51.100.1
 no bgp ebgp-requires-policy
 no bgp network import-check
 no bgp default ipv4-unicast
 timers bgp 1 3
 neighbor 198.51.100.2 remote-as 65002
 neighbor 198.51.100.2 timers connect 1
 neighbor 2001:db8:1::2 remote-as 65002
 neighbor 2001:db8:1::2 timers connect 1
 address-family ipv4 unicast
  network 203.0.113.0/24
  neighbor 198.51.100.2 activate
 exit-address-family
 address-family ipv6 unicast
  network 2001:db8:99::/48
  neighbor 2001:db8:1::2 activate
 exit-address-family
"#;
    let f = Frr::start(&t.router, &t.dir, "frr", conf);
    let p = Petrel::start(&t.node, &t.dir, "petrel", &petrel_yaml());

    for n in ["198.51.100.2", "2001:db8:1::2"] {
        wait_until_or(
            &format!("FRR session with {n} Established"),
            T,
            || (f.state(n) == "Established").then_some(()),
            || f.vtysh("show bgp summary"),
        );
    }
    let r4 = wait_until_or(
        "FRR holds 10.244.2.0/24",
        T,
        || {
            let v: serde_json::Value =
                serde_json::from_str(&f.vtysh("show bgp ipv4 unicast 10.244.2.0/24 json")).ok()?;
            let has = v["paths"].as_array().is_some_and(|a| !a.is_empty());
            has.then_some(v)
        },
        || f.vtysh("show bgp ipv4 unicast"),
    );
    assert_eq!(r4["paths"][0]["aspath"]["string"], "65002", "{r4}");
    assert_eq!(r4["paths"][0]["nexthops"][0]["ip"], "198.51.100.2", "{r4}");
    let r6 = wait_until_or(
        "FRR holds fd00:10:244:2::/64",
        T,
        || {
            let v: serde_json::Value =
                serde_json::from_str(&f.vtysh("show bgp ipv6 unicast fd00:10:244:2::/64 json"))
                    .ok()?;
            let has = v["paths"].as_array().is_some_and(|a| !a.is_empty());
            has.then_some(v)
        },
        || f.vtysh("show bgp ipv6 unicast"),
    );
    assert_eq!(r6["paths"][0]["aspath"]["string"], "65002", "{r6}");
    assert_eq!(r6["paths"][0]["nexthops"][0]["ip"], "2001:db8:1::2", "{r6}");

    check_petrel_side(&p, &t.node);
    // zebra put Petrel's routes in the router's FIB too.
    // (zebra uses nexthop groups: "10.244.2.0/24 nhid N via 198.51.100.2 ... proto bgp")
    wait_until_or(
        "router FIB has the pod CIDR",
        T,
        || {
            let table = t.router.routes4("proto bgp");
            petrel_tests::route_lines(&table, "10.244.2.0/24")
                .iter()
                .any(|l| l.contains("via 198.51.100.2"))
                .then_some(())
        },
        || t.router.routes4(""),
    );
}
