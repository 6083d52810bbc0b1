//! The node agent against real routers: ECMP and failover in the kernel FIB, routes put back
//! when deleted by hand, stale routes swept after a restart, status that agrees with BIRD,
//! reload on SIGHUP, a clean stop on SIGTERM, forwarding, and the metrics endpoint.

use std::time::{Duration, Instant};

use petrel_tests::bird::{self, Bird};
use petrel_tests::frr::Frr;
use petrel_tests::petrel::Petrel;
use petrel_tests::{
    Netns, TestDir, kernel_route, link, router_and_node, wait_gateways, wait_until_or,
};

const T: Duration = Duration::from_secs(30);

fn bird_conf(id: &str, local: &str, peer: &str, extra_static: &str, gr: &str) -> String {
    format!(
        r#"
router id {id};
protocol device {{}}
protocol static s4 {{ ipv4; route 198.18.0.0/16 blackhole; {extra_static} }}
protocol bgp petrel {{
  local {local} as 65001; neighbor {peer} as 65002;
  hold time 3; graceful restart {gr}; {fast}
  ipv4 {{ import all; export all; }};
}}
"#,
        fast = bird::FAST
    )
}

#[test]
fn ecmp_across_bird_and_frr_then_failover() {
    let dir = TestDir::new("ecmp");
    let n = Netns::new("n");
    let rb = Netns::new("bird");
    let rf = Netns::new("frr");
    link(&rb, &["198.51.100.1/24"], &n, &["198.51.100.2/24"]);
    link(&rf, &["203.0.113.1/24"], &n, &["203.0.113.2/24"]);
    let mut b = Bird::start(
        &rb,
        &dir,
        "bird",
        &bird_conf("198.51.100.1", "198.51.100.1", "198.51.100.2", "", "off"),
    );
    let frr_conf = r#"
frr defaults traditional
hostname frr
router bgp 65003
 bgp router-id 203.0.113.1
 no bgp ebgp-requires-policy
 no bgp network import-check
 no bgp graceful-restart notification
 bgp graceful-restart-disable
 timers bgp 1 3
 neighbor 203.0.113.2 remote-as 65002
 neighbor 203.0.113.2 timers connect 1
 address-family ipv4 unicast
  network 198.18.0.0/16
 exit-address-family
"#;
    let mut f = Frr::start(&rf, &dir, "frr", frr_conf);
    let yaml = r#"
node: { asn: 65002, router_id: 198.51.100.2, pod_cidrs: [10.244.2.0/24] }
peers:
  - { name: bird, address: 198.51.100.1, asn: 65001, hold_time: 3, connect_retry: 1, import: { prefixes: [{ prefix: 0.0.0.0/0, le: 32 }] } }
  - { name: frr, address: 203.0.113.1, asn: 65003, hold_time: 3, connect_retry: 1, import: { prefixes: [{ prefix: 0.0.0.0/0, le: 32 }] } }
"#;
    let p = Petrel::start(&n, &dir, "petrel", yaml);
    p.wait_established("bird", T);
    p.wait_established("frr", T);
    // One route, two next hops (RTA_MULTIPATH).
    wait_gateways(&n, "198.18.0.0/16", &["198.51.100.1", "203.0.113.1"], T);
    let st = p.status();
    assert_eq!(st["fib"]["ecmp"], 1, "{}", st["fib"]);
    let r = p.route("198.18.0.0/16").unwrap();
    assert_eq!(r["next_hops"].as_array().unwrap().len(), 2, "{r}");

    // Kill one router: one next hop left, within the hold time.
    b.daemon.kill();
    let took = wait_gateways(
        &n,
        "198.18.0.0/16",
        &["203.0.113.1"],
        Duration::from_secs(3),
    );
    eprintln!("one next hop left after {took:?}");
    // Kill the other: the route is gone.
    f.bgpd.kill();
    let start = Instant::now();
    wait_until_or(
        "the route gone",
        Duration::from_secs(3),
        || kernel_route(&n, "198.18.0.0/16").is_none().then_some(()),
        || n.routes4(""),
    );
    eprintln!("route gone after {:?}", start.elapsed());
    assert_eq!(p.status()["fib"]["installed"], 0);
    drop(p);
}

fn one_router(label: &str, gr: &str, petrel_gr: bool) -> (TestDir, Netns, Netns, Bird, Petrel) {
    let (dir, r, n) = router_and_node(label);
    let b = Bird::start(
        &r,
        &dir,
        "bird",
        &bird_conf(
            "198.51.100.1",
            "198.51.100.1",
            "198.51.100.2",
            "route 203.0.113.0/24 blackhole;",
            gr,
        ),
    );
    let yaml = format!(
        "node: {{ asn: 65002, router_id: 198.51.100.2, pod_cidrs: [10.244.2.0/24] }}\npeers:\n  - {{ name: tor, address: 198.51.100.1, asn: 65001, hold_time: 3, connect_retry: 1, connect_retry_max: 2, import: {{ prefixes: [{{ prefix: 0.0.0.0/0, le: 32 }}] }} }}\nbgp: {{ graceful_restart: {{ enabled: {petrel_gr}, restart_time: 60 }} }}\nmetrics: {{ address: \"127.0.0.1:9179\" }}\n"
    );
    let p = Petrel::start(&n, &dir, "petrel", &yaml);
    p.wait_established("tor", T);
    wait_gateways(&n, "198.18.0.0/16", &["198.51.100.1"], T);
    wait_gateways(&n, "203.0.113.0/24", &["198.51.100.1"], T);
    (dir, n, r, b, p)
}

#[test]
fn a_route_deleted_by_hand_is_back_within_a_second() {
    let (_dir, n, _r, b, p) = one_router("restore", "on", true);
    for _ in 0..3 {
        n.ip("route del 198.18.0.0/16 proto 200");
        let start = Instant::now();
        wait_gateways(
            &n,
            "198.18.0.0/16",
            &["198.51.100.1"],
            Duration::from_secs(1),
        );
        eprintln!("restored after {:?}", start.elapsed());
    }
    // The blackhole for the node's own pod CIDR too.
    n.ip("route del blackhole 10.244.2.0/24 proto 200");
    wait_until_or(
        "blackhole restored",
        Duration::from_secs(1),
        || {
            n.routes4("proto 200")
                .contains("blackhole 10.244.2.0/24")
                .then_some(())
        },
        || n.routes4(""),
    );
    assert!(p.status()["fib"]["restored"].as_u64() >= Some(4));
    // Routes of other protocols are never touched.
    n.ip("route add 192.0.2.0/24 via 198.51.100.1 proto static");
    std::thread::sleep(Duration::from_millis(300));
    assert!(n.routes4("proto static").contains("192.0.2.0/24"));
    drop((p, b));
}

#[test]
fn restart_keeps_fib_and_sweeps_what_the_router_withdrew_meanwhile() {
    let (dir, n, _r, b, mut p) = one_router("sweep", "on", true);
    let watch_ns = n.name.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let misses = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (s2, m2) = (stop.clone(), misses.clone());
    let watcher = std::thread::spawn(move || {
        while !s2.load(std::sync::atomic::Ordering::Relaxed) {
            let out = std::process::Command::new("ip")
                .args(["-n", &watch_ns, "-4", "route", "show", "proto", "200"])
                .output()
                .unwrap();
            if !String::from_utf8_lossy(&out.stdout).contains("198.18.0.0/16") {
                m2.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    p.daemon.stop(Duration::from_secs(10));
    // While the agent is down, the router stops announcing 203.0.113.0/24.
    b.reconfigure(&bird_conf(
        "198.51.100.1",
        "198.51.100.1",
        "198.51.100.2",
        "",
        "on",
    ));
    assert!(
        kernel_route(&n, "203.0.113.0/24").is_some(),
        "left in place while down"
    );
    p.restart(&n, &dir);
    p.wait_established("tor", T);
    // After the router's End-of-RIB, the route nobody announces any more is swept.
    wait_until_or(
        "the stale route swept",
        T,
        || kernel_route(&n, "203.0.113.0/24").is_none().then_some(()),
        || n.routes4(""),
    );
    let st = p.status();
    assert_eq!(st["fib"]["synced"], true);
    assert_eq!(st["fib"]["stale"], 0);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    watcher.join().unwrap();
    assert_eq!(
        misses.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "198.18.0.0/16 blinked"
    );
    drop((p, b));
}

#[test]
fn status_json_agrees_with_birdc() {
    let (_dir, _n, _r, b, p) = one_router("status", "on", true);
    let proto = b.birdc("show protocols all petrel");
    let peer = p.peer("tor");
    assert_eq!(peer["state"], "Established");
    assert!(proto.contains("Established"));
    // Who is who.
    assert!(proto.contains(&format!("Neighbor AS:      {}", 65002)));
    assert!(proto.contains(&format!("Neighbor ID:      {}", "198.51.100.2")));
    assert_eq!(peer["asn"], 65001);
    assert_eq!(peer["remote_router_id"], "198.51.100.1");
    // Hold time: both use the negotiated 3 s.
    assert!(
        proto.contains("Hold timer:") && proto.contains("/3"),
        "{proto}"
    );
    assert_eq!(peer["hold_time"], 3);
    // Routes: what BIRD exported is what we received; what we advertised BIRD imported.
    let routes_line = proto
        .lines()
        .find(|l| l.trim_start().starts_with("Routes:"))
        .unwrap();
    // "Routes:         1 imported, 2 exported, 1 preferred"
    let nums: Vec<u64> = routes_line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|x| x.parse().ok())
        .collect();
    assert_eq!(
        peer["prefixes"]["received"].as_u64(),
        Some(nums[1]),
        "{routes_line}"
    );
    assert_eq!(
        peer["prefixes"]["advertised"].as_u64(),
        Some(nums[0]),
        "{routes_line}"
    );
    // Graceful restart negotiated on both sides.
    assert!(proto.contains("Graceful restart"));
    assert_eq!(peer["graceful_restart"], true);
    // The human table says the same.
    let table = std::process::Command::new(petrel_tests::bin("petrel"))
        .args(["status", "--socket"])
        .arg(&p.socket)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("tor   198.51.100.1  65001  Established  2/2/1"),
        "{text}"
    );
    drop((p, b));
}

#[test]
fn metrics_and_health_endpoint() {
    let (_dir, n, _r, b, p) = one_router("metrics", "on", true);
    let get = |path: &str| petrel_tests::http_get(&n, "127.0.0.1", 9179, path);
    let m = wait_until_or(
        "metrics with the peer up",
        T,
        || {
            Some(get("/metrics"))
                .filter(|m| m.contains("petrel_peer_up{peer=\"tor\",address=\"198.51.100.1\"} 1"))
        },
        || get("/metrics"),
    );
    assert!(
        m.contains("petrel_peer_prefixes_accepted{peer=\"tor\",address=\"198.51.100.1\"} 2"),
        "{m}"
    );
    assert!(m.contains("petrel_fib_routes{kind=\"installed\"} 2"), "{m}");
    assert!(m.contains("petrel_fib_batch_seconds_bucket"), "{m}");
    assert!(
        m.contains("petrel_peer_state{peer=\"tor\",state=\"Established\"} 1"),
        "{m}"
    );
    assert!(get("/healthz").starts_with("HTTP/1.0 200"));
    let ready = wait_until_or(
        "ready",
        T,
        || Some(get("/readyz")).filter(|r| r.starts_with("HTTP/1.0 200")),
        || get("/readyz"),
    );
    assert!(ready.contains("ready"));
    drop((p, b));
}

#[test]
fn sigterm_without_graceful_restart_ceases_and_cleans_the_fib() {
    let (_dir, n, _r, b, mut p) = one_router("sigterm", "on", false);
    let st = p.daemon.stop(Duration::from_secs(10));
    assert!(st.is_some_and(|s| s.success()), "{st:?}");
    wait_until_or(
        "BIRD to see the Cease",
        T,
        || {
            b.birdc("show protocols all petrel")
                .contains("Administrative shutdown")
                .then_some(())
        },
        || b.birdc("show protocols all petrel"),
    );
    assert_eq!(
        n.routes4("proto 200").trim(),
        "",
        "every route of ours removed"
    );
    // And BIRD dropped the node's pod CIDR at once (no graceful restart).
    assert!(!b.has_route("10.244.2.0/24"));
}

#[test]
fn sighup_adds_removes_and_changes_peers_without_touching_the_others() {
    let dir = TestDir::new("reload");
    let n = Netns::new("n");
    let r1 = Netns::new("r1");
    let r2 = Netns::new("r2");
    let r3 = Netns::new("r3");
    link(&r1, &["198.51.100.1/24"], &n, &["198.51.100.2/24"]);
    link(&r2, &["198.51.101.1/24"], &n, &["198.51.101.2/24"]);
    link(&r3, &["198.51.102.1/24"], &n, &["198.51.102.2/24"]);
    let conf = |id: &str, peer: &str| bird_conf(id, id, peer, "", "on");
    let b1 = Bird::start(&r1, &dir, "b1", &conf("198.51.100.1", "198.51.100.2"));
    let b2 = Bird::start(&r2, &dir, "b2", &conf("198.51.101.1", "198.51.101.2"));
    let b3 = Bird::start(&r3, &dir, "b3", &conf("198.51.102.1", "198.51.102.2"));
    let peer = |name: &str, addr: &str, hold: u32| {
        format!(
            "  - {{ name: {name}, address: {addr}, asn: 65001, hold_time: {hold}, connect_retry: 1, import: {{ prefixes: [{{ prefix: 0.0.0.0/0, le: 32 }}] }} }}\n"
        )
    };
    let head =
        "node: { asn: 65002, router_id: 198.51.100.2, pod_cidrs: [10.244.2.0/24] }\npeers:\n";
    let p = Petrel::start(
        &n,
        &dir,
        "petrel",
        &format!(
            "{head}{}{}",
            peer("one", "198.51.100.1", 3),
            peer("two", "198.51.101.1", 3)
        ),
    );
    p.wait_established("one", T);
    p.wait_established("two", T);
    b1.wait_established("petrel", T);
    // BIRD's "Since" column changes whenever the session is reset.
    let since = |b: &Bird| {
        b.birdc("show protocols petrel")
            .lines()
            .find(|l| l.starts_with("petrel"))
            .and_then(|l| l.split_whitespace().nth(4))
            .unwrap_or("")
            .to_string()
    };
    let one_since = since(&b1);

    // Remove two, add three, keep one as it was.
    std::fs::write(
        &p.config,
        format!(
            "{head}{}{}",
            peer("one", "198.51.100.1", 3),
            peer("three", "198.51.102.1", 3)
        ),
    )
    .unwrap();
    p.daemon.hup();
    p.wait_established("three", T);
    wait_until_or(
        "two gone from status",
        T,
        || p.peer("two").is_null().then_some(()),
        || p.status().to_string(),
    );
    wait_until_or(
        "b2 told the peer was de-configured",
        T,
        || {
            b2.birdc("show protocols all petrel")
                .contains("Peer de-configured")
                .then_some(())
        },
        || b2.birdc("show protocols all petrel"),
    );
    let one = p.peer("one");
    assert_eq!(one["state"], "Established");
    assert_eq!(one["established_count"], 1);
    assert_eq!(since(&b1), one_since, "one's session was not reset");

    // Change one (its hold time): only its session restarts.
    b3.wait_established("petrel", T);
    let three_since = since(&b3);
    // BIRD's "Since" has a resolution of a millisecond; make sure a reset would show.
    std::thread::sleep(Duration::from_millis(5));
    std::fs::write(
        &p.config,
        format!(
            "{head}{}{}",
            peer("one", "198.51.100.1", 6),
            peer("three", "198.51.102.1", 3)
        ),
    )
    .unwrap();
    p.daemon.hup();
    wait_until_or(
        "one reset and re-established",
        T,
        || {
            (since(&b1) != one_since
                && b1.bgp_state("petrel") == "Established"
                && p.peer_state("one") == "Established")
                .then_some(())
        },
        || b1.birdc("show protocols all petrel"),
    );
    assert!(
        p.log_text()
            .contains("sent Cease: Other Configuration Change (6/6)"),
        "the reset was a Cease, subcode 6"
    );
    assert_eq!(since(&b3), three_since, "three's session was not reset");
    // A broken file is refused and the running config stays.
    std::fs::write(&p.config, "node: {").unwrap();
    p.daemon.hup();
    wait_until_or(
        "the refusal in the log",
        T,
        || p.log_text().contains("reload failed").then_some(()),
        || p.log_text(),
    );
    assert_eq!(p.peer("three")["state"], "Established");
    drop((p, b1, b2, b3));
}

#[test]
fn forwarding_is_enabled_only_when_asked_and_warned_about_otherwise() {
    let dir = TestDir::new("fwd");
    let a = Netns::new("a");
    let b = Netns::new("b");
    let yaml = |fwd: bool| {
        format!(
            "node: {{ asn: 65002, router_id: 198.51.100.2, pod_cidrs: [10.244.2.0/24] }}\nfib: {{ enable_forwarding: {fwd} }}\n"
        )
    };
    let pa = Petrel::start(&a, &dir, "pa", &yaml(false));
    let st = pa.status();
    assert_eq!(st["fib"]["forwarding_ipv4"], false);
    assert!(
        st["warnings"]
            .to_string()
            .contains("IPv4 forwarding is off"),
        "{st}"
    );
    assert_eq!(a.sh_ok("cat /proc/sys/net/ipv4/ip_forward").trim(), "0");
    let pb = Petrel::start(&b, &dir, "pb", &yaml(true));
    assert_eq!(b.sh_ok("cat /proc/sys/net/ipv4/ip_forward").trim(), "1");
    assert_eq!(pb.status()["fib"]["forwarding_ipv4"], true);
    assert!(
        !pb.status()["warnings"]
            .to_string()
            .contains("forwarding is off")
    );
    drop((pa, pb));
}
