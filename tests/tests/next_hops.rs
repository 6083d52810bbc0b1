//! Next hops resolved through the table (issue 11): iBGP between loopback addresses over a
//! routed underlay, the overlay route installed with the underlay's gateway, followed as
//! the underlay changes, and not installed (with the reason in `petrel routes`) while no
//! usable route covers its next hop.

use std::time::{Duration, Instant};

use petrel_tests::bird::{Bird, FAST};
use petrel_tests::petrel::{Petrel, Poller};
use petrel_tests::{Netns, TestDir, kernel_route, link, wait_gateways, wait_until_or};

const T: Duration = Duration::from_secs(30);
const OVERLAY: &str = "203.0.113.0/24";

/// The path's `unresolved` reason as `petrel routes` shows it (None when resolved or gone).
fn unresolved(p: &Petrel) -> Option<String> {
    p.route(OVERLAY)?["paths"][0]["unresolved"]
        .as_str()
        .map(String::from)
}

fn ping(ns: &Netns) -> bool {
    ns.sh("ping -c 1 -W 1 -I 10.255.0.1 203.0.113.1")
        .status
        .success()
}

/// ```text
///            ┌─ r1 (198.51.100.0/24 | 192.0.2.0/24) ─┐
///   a: Petrel                                        b: BIRD
///   lo 10.255.0.1                                    lo 10.255.0.2, 203.0.113.1
///            └─ r2 (198.51.101.0/24 | 192.0.3.0/24) ─┘
/// ```
/// iBGP between the loopbacks; b announces 203.0.113.0/24 (and `extra` static routes) with
/// next hop 10.255.0.2, which a reaches only through static routes two hops long: via r1
/// (metric 10) and via r2 (metric 20). Returns once both ends are Established.
fn setup(label: &str, extra: &str) -> Setup {
    let dir = TestDir::new(label);
    let a = Netns::new("a");
    let b = Netns::new("b");
    let r1 = Netns::new("r1");
    let r2 = Netns::new("r2");
    link(&r1, &["198.51.100.1/24"], &a, &["198.51.100.2/24"]);
    link(&r2, &["198.51.101.1/24"], &a, &["198.51.101.2/24"]);
    link(&r1, &["192.0.2.1/24"], &b, &["192.0.2.2/24"]);
    link(&r2, &["192.0.3.1/24"], &b, &["192.0.3.2/24"]);
    a.ip("addr add 10.255.0.1/32 dev lo");
    b.ip("addr add 10.255.0.2/32 dev lo");
    b.ip("addr add 203.0.113.1/32 dev lo");
    for (r, to_a, to_b) in [
        (&r1, "198.51.100.2", "192.0.2.2"),
        (&r2, "198.51.101.2", "192.0.3.2"),
    ] {
        r.sysctl("net.ipv4.ip_forward", "1");
        r.ip(&format!("route add 10.255.0.1/32 via {to_a}"));
        r.ip(&format!("route add 10.255.0.2/32 via {to_b}"));
        r.ip(&format!("route add 203.0.113.0/24 via {to_b}"));
    }
    b.ip("route add 10.255.0.1/32 via 192.0.2.1 metric 10");
    b.ip("route add 10.255.0.1/32 via 192.0.3.1 metric 20");
    a.ip("route add 10.255.0.2/32 via 198.51.100.1 metric 10");
    a.ip("route add 10.255.0.2/32 via 198.51.101.1 metric 20");

    let bird = Bird::start(
        &b,
        &dir,
        "bird",
        &format!(
            "router id 10.255.0.2;\nprotocol device {{}}\nprotocol static {{ ipv4; route {OVERLAY} blackhole; }}\n{extra}\nprotocol bgp a {{\n  local 10.255.0.2 as 65000; neighbor 10.255.0.1 as 65000; multihop; {FAST} hold time 9;\n  ipv4 {{ import none; export all; next hop self; }};\n}}\n"
        ),
    );
    let p = Petrel::start(
        &a,
        &dir,
        "petrel",
        "node: { asn: 65000, router_id: 10.255.0.1, pod_cidrs: [10.244.1.0/24] }\npeers:\n  - { name: b, address: 10.255.0.2, asn: 65000, local_address: 10.255.0.1, hold_time: 9, connect_retry: 1, import: { prefixes: [{ prefix: 0.0.0.0/0, le: 32 }] } }\nbgp: { graceful_restart: { enabled: false } }\n",
    );
    p.wait_established("b", T);
    bird.wait_established("a", T);
    Setup {
        _dir: dir,
        a,
        _b: b,
        _r: (r1, r2),
        bird,
        p,
    }
}

struct Setup {
    _dir: TestDir,
    a: Netns,
    _b: Netns,
    _r: (Netns, Netns),
    bird: Bird,
    p: Petrel,
}

/// Resolution follows the static routes one at a time; traffic flows each time.
#[test]
fn ibgp_between_loopbacks_resolves_through_static_routes_and_follows_them() {
    let s = setup("nht", "");
    let (a, p) = (&s.a, &s.p);

    // Resolved through the lower-metric static route: installed via r1, traffic flows.
    wait_gateways(a, OVERLAY, &["198.51.100.1"], T);
    let path = &p.route(OVERLAY).unwrap()["paths"][0];
    assert_eq!(path["next_hop"], "10.255.0.2", "{path}");
    assert_eq!(path["resolved_via"], "10.255.0.2/32", "{path}");
    assert_eq!(path["gateways"][0], "198.51.100.1", "{path}");
    assert_eq!(path["igp_cost"], 10, "{path}");
    assert!(ping(a), "no traffic through r1");

    // The route through r1 goes: re-resolved through r2 within a second.
    a.ip("route del 10.255.0.2/32 via 198.51.100.1 metric 10");
    let took = wait_gateways(a, OVERLAY, &["198.51.101.1"], Duration::from_secs(1));
    eprintln!("re-resolved through r2 in {took:?}");
    assert!(ping(a), "no traffic through r2");

    // No route to the next hop at all: the overlay route leaves the kernel within a second,
    // and `petrel routes` says why.
    a.ip("route del 10.255.0.2/32 via 198.51.101.1 metric 20");
    let gone = Instant::now();
    wait_until_or(
        "the overlay route out of the kernel",
        Duration::from_secs(1),
        || kernel_route(a, OVERLAY).is_none().then_some(()),
        || a.routes4(""),
    );
    eprintln!("removed {:?} after its underlay", gone.elapsed());
    wait_until_or(
        "the reason in petrel routes",
        Duration::from_secs(5),
        || (unresolved(p).as_deref() == Some("no route to the next hop")).then_some(()),
        || p.routes().to_string(),
    );
    assert_eq!(p.route(OVERLAY).unwrap()["in_fib"], false);

    // A default route does not count for resolution.
    a.ip("route add default via 198.51.100.1");
    wait_until_or(
        "the default-route reason",
        Duration::from_secs(5),
        || {
            (unresolved(p).as_deref() == Some("only the default route covers the next hop"))
                .then_some(())
        },
        || p.routes().to_string(),
    );
    assert!(kernel_route(a, OVERLAY).is_none());

    // A covering static route back (a /24, not the /32): installed again before BGP's
    // hold time could have noticed anything, the session never dropped.
    a.ip("route add 10.255.0.0/24 via 198.51.101.1");
    let took = wait_gateways(a, OVERLAY, &["198.51.101.1"], Duration::from_secs(1));
    eprintln!("resolved again in {took:?}");
    assert!(ping(a), "no traffic after the underlay came back");
    assert_eq!(p.peer("b")["state"], "Established");
    assert_eq!(p.peer("b")["established_count"], 1, "{}", p.peer("b"));
}

const STORM: usize = 200_000;

/// 200,000 routes behind one recursive next hop: announced, re-resolved as the underlay
/// moves from r1 to r2 and back, withdrawn and announced again, with `petrel status` asked
/// every 100 ms throughout (each answer within a second).
#[test]
fn storm_of_200k_routes_behind_a_recursive_next_hop() {
    let routes: String = (0..STORM)
        .map(|i| {
            let a = 0x0a00_0000u32 + (i as u32) * 16;
            format!("route {}/28 blackhole;\n", std::net::Ipv4Addr::from(a))
        })
        .collect();
    let s = setup(
        "nht-storm",
        &format!("protocol static flap {{ ipv4; {routes} }}"),
    );
    let (a, p, bird) = (&s.a, &s.p, &s.bird);
    let poller = Poller::start(&p.socket);
    // (routes via r1, routes via r2) in the kernel.
    let counts = || {
        let t = a.routes4("proto 200");
        (
            t.lines()
                .filter(|l| l.contains("via 198.51.100.1 "))
                .count(),
            t.lines()
                .filter(|l| l.contains("via 198.51.101.1 "))
                .count(),
        )
    };
    let expect = |what: &str, want: (usize, usize)| {
        let start = Instant::now();
        wait_until_or(
            what,
            Duration::from_secs(120),
            || (counts() == want).then_some(()),
            || format!("kernel {:?}\n{}", counts(), p.daemon.log_tail(20)),
        );
        eprintln!("{what}: {:?}", start.elapsed());
    };
    let all = STORM + 1;
    expect("announced, via r1", (all, 0));
    a.ip("route del 10.255.0.2/32 via 198.51.100.1 metric 10");
    expect("re-resolved via r2", (0, all));
    a.ip("route add 10.255.0.2/32 via 198.51.100.1 metric 10");
    expect("back via r1", (all, 0));
    bird.birdc("disable flap");
    expect("withdrawn", (1, 0));
    a.ip("route del 10.255.0.2/32 via 198.51.100.1 metric 10");
    bird.birdc("enable flap");
    expect("announced again, via r2", (0, all));
    let (worst, asked, failed) = poller.finish();
    eprintln!("status asked {asked} times, slowest answer {worst:?}, {failed} late or failed");
    assert!(asked > 10, "status was asked {asked} times");
    assert_eq!(
        failed, 0,
        "status answers late or failed (slowest {worst:?})"
    );
    assert_eq!(p.peer("b")["established_count"], 1, "{}", p.peer("b"));
}
