//! Session behaviour against real peers: iBGP between two Petrel speakers, Petrel as a
//! route-reflector client of BIRD, TCP MD5 with BIRD, hold-timer expiry when a peer vanishes.

use std::time::Duration;

use petrel_tests::bird::{self, Bird};
use petrel_tests::petrel::Petrel;
use petrel_tests::{Netns, TestDir, bridge, link, plug, router_and_node, wait_until_or};

const T: Duration = Duration::from_secs(30);

fn node_yaml(asn: u32, id: &str, cidr: &str, peers: &str) -> String {
    format!("node:\n  asn: {asn}\n  router_id: {id}\n  pod_cidrs: [{cidr}]\npeers:\n{peers}")
}

fn route_via(p: &Petrel, prefix: &str, via: &str) -> serde_json::Value {
    wait_until_or(
        &format!("{prefix} via {via} in Petrel's RIB"),
        T,
        || {
            p.route(prefix)
                .filter(|r| r["next_hops"].to_string().contains(via))
        },
        || p.routes().to_string(),
    )
}

fn in_fib(ns: &Netns, prefix: &str, via: &str) {
    wait_until_or(
        &format!("{prefix} via {via} in the FIB"),
        T,
        || {
            ns.routes4("proto 200")
                .contains(&format!("{prefix} via {via}"))
                .then_some(())
        },
        || ns.routes4(""),
    );
}

#[test]
fn ibgp_between_two_petrel_speakers() {
    let dir = TestDir::new("ibgp");
    let a_ns = Netns::new("a");
    let b_ns = Netns::new("b");
    link(&a_ns, &["198.51.100.2/24"], &b_ns, &["198.51.100.3/24"]);
    let peer = |name: &str, addr: &str| {
        format!(
            "  - {{ name: {name}, address: {addr}, asn: 65002, hold_time: 3, connect_retry: 1 }}\n"
        )
    };
    let a = Petrel::start(
        &a_ns,
        &dir,
        "a",
        &node_yaml(
            65002,
            "198.51.100.2",
            "10.244.2.0/24",
            &peer("b", "198.51.100.3"),
        ),
    );
    let b = Petrel::start(
        &b_ns,
        &dir,
        "b",
        &node_yaml(
            65002,
            "198.51.100.3",
            "10.244.3.0/24",
            &peer("a", "198.51.100.2"),
        ),
    );
    a.wait_established("b", T);
    b.wait_established("a", T);
    // iBGP with no import policy accepts; the route carries LOCAL_PREF and an empty path.
    let r = route_via(&a, "10.244.3.0/24", "198.51.100.3");
    assert_eq!(r["paths"][0]["as_path"], "");
    assert_eq!(r["paths"][0]["local_pref"], 100);
    route_via(&b, "10.244.2.0/24", "198.51.100.2");
    in_fib(&a_ns, "10.244.3.0/24", "198.51.100.3");
    in_fib(&b_ns, "10.244.2.0/24", "198.51.100.2");
    // Both sides collided (each connects to the other) and kept exactly one session.
    assert_eq!(a.peer("b")["established_count"], 1);
    drop((a, b));
}

#[test]
fn route_reflector_client_of_bird() {
    let dir = TestDir::new("rr");
    let rr_ns = Netns::new("rr");
    let a_ns = Netns::new("a");
    let b_ns = Netns::new("b");
    // One LAN, as in a rack: the reflector and both nodes on a bridge.
    bridge(&rr_ns, "lan", &["198.51.100.1/24"]);
    plug(&rr_ns, "lan", &a_ns, &["198.51.100.2/24"]);
    plug(&rr_ns, "lan", &b_ns, &["198.51.100.3/24"]);
    let conf = format!(
        r#"
router id 198.51.100.1;
protocol device {{}}
template bgp nodes {{
  local as 65002; rr client; rr cluster id 10.0.0.1;
  hold time 3; {fast}
  ipv4 {{ import all; export all; }};
}}
protocol bgp node_a from nodes {{ neighbor 198.51.100.2 as 65002; }}
protocol bgp node_b from nodes {{ neighbor 198.51.100.3 as 65002; }}
"#,
        fast = bird::FAST
    );
    let rr = Bird::start(&rr_ns, &dir, "rr", &conf);
    let peer = |addr: &str| {
        format!("  - {{ name: rr, address: {addr}, asn: 65002, hold_time: 3, connect_retry: 1 }}\n")
    };
    let a = Petrel::start(
        &a_ns,
        &dir,
        "a",
        &node_yaml(
            65002,
            "198.51.100.2",
            "10.244.2.0/24",
            &peer("198.51.100.1"),
        ),
    );
    let b = Petrel::start(
        &b_ns,
        &dir,
        "b",
        &node_yaml(
            65002,
            "198.51.100.3",
            "10.244.3.0/24",
            &peer("198.51.100.1"),
        ),
    );
    rr.wait_established("node_a", T);
    rr.wait_established("node_b", T);
    // A learns B's pod CIDR reflected by BIRD: B's next hop, B as originator, BIRD's cluster.
    let r = route_via(&a, "10.244.3.0/24", "198.51.100.3");
    let path = &r["paths"][0];
    assert_eq!(path["peer"], "rr");
    assert_eq!(path["originator_id"], "198.51.100.3", "{r}");
    assert_eq!(path["cluster_list"][0], "10.0.0.1", "{r}");
    in_fib(&a_ns, "10.244.3.0/24", "198.51.100.3");
    let r = route_via(&b, "10.244.2.0/24", "198.51.100.2");
    assert_eq!(r["paths"][0]["originator_id"], "198.51.100.2");
    // A gets exactly B's route from the reflector (its own is not sent back to it).
    let st = a.peer("rr");
    assert_eq!(st["prefixes"]["accepted"], 1, "{st}");
    drop((a, b, rr));
}

fn md5_setup(label: &str, petrel_key: &str) -> (TestDir, Netns, Netns, Bird, Petrel) {
    let (dir, r, n) = router_and_node(label);
    let conf = format!(
        r#"
router id 198.51.100.1;
protocol device {{}}
protocol static s4 {{ ipv4; route 203.0.113.0/24 blackhole; }}
protocol bgp petrel {{
  local 198.51.100.1 as 65001; neighbor 198.51.100.2 as 65002;
  password "right-key-41"; hold time 3; {fast}
  ipv4 {{ import all; export all; }};
}}
"#,
        fast = bird::FAST
    );
    let b = Bird::start(&r, &dir, "bird", &conf);
    // The key file ends with a newline, as editors leave it.
    let key = dir.write("tor.key", &format!("{petrel_key}\n"));
    let yaml = format!(
        "node: {{ asn: 65002, router_id: 198.51.100.2, pod_cidrs: [10.244.2.0/24] }}\npeers:\n  - name: tor\n    address: 198.51.100.1\n    asn: 65001\n    hold_time: 3\n    connect_retry: 1\n    connect_retry_max: 2\n    password_file: {}\n    import: {{ prefixes: [{{ prefix: 0.0.0.0/0, le: 32 }}] }}\n",
        key.display()
    );
    let p = Petrel::start(&n, &dir, "petrel", &yaml);
    (dir, n, r, b, p)
}

#[test]
fn md5_session_with_the_right_key() {
    let (_dir, n, _r, b, p) = md5_setup("md5ok", "right-key-41");
    b.wait_established("petrel", T);
    p.wait_established("tor", T);
    in_fib(&n, "203.0.113.0/24", "198.51.100.1");
    // The secret is nowhere in what Petrel prints.
    assert!(!p.log_text().contains("right-key-41"));
    assert!(!p.status().to_string().contains("right-key-41"));
    drop((p, b));
}

#[test]
fn md5_session_stays_down_with_a_wrong_key() {
    let (_dir, _n, _r, b, p) = md5_setup("md5bad", "wrong-key-42");
    // Give it several connect attempts from both sides: the kernel drops every segment
    // whose signature does not match, so no session can form.
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(6) {
        assert_ne!(b.bgp_state("petrel"), "Established");
        assert_ne!(p.peer_state("tor"), "Established");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!p.log_text().contains("wrong-key-42"));
    drop((p, b));
}

#[test]
fn hold_timer_expiry_withdraws_and_the_session_comes_back() {
    let (dir, r, n) = router_and_node("hold");
    // No graceful restart on the router: a lost session must withdraw at once.
    let conf = format!(
        r#"
router id 198.51.100.1;
protocol device {{}}
protocol static s4 {{ ipv4; route 203.0.113.0/24 blackhole; }}
protocol bgp petrel {{
  local 198.51.100.1 as 65001; neighbor 198.51.100.2 as 65002;
  hold time 3; graceful restart off; {fast}
  ipv4 {{ import all; export all; }};
}}
"#,
        fast = bird::FAST
    );
    let mut b = Bird::start(&r, &dir, "bird", &conf);
    let yaml = "node: { asn: 65002, router_id: 198.51.100.2, pod_cidrs: [10.244.2.0/24] }\npeers:\n  - { name: tor, address: 198.51.100.1, asn: 65001, hold_time: 3, connect_retry: 1, connect_retry_max: 2, import: { prefixes: [{ prefix: 0.0.0.0/0, le: 32 }] } }\n";
    let p = Petrel::start(&n, &dir, "petrel", yaml);
    p.wait_established("tor", T);
    in_fib(&n, "203.0.113.0/24", "198.51.100.1");

    // The router vanishes: frozen, its TCP connection open but silent.
    let pid = b.daemon.pid().expect("bird pid") as i32;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let frozen = std::time::Instant::now();
    wait_until_or(
        "hold timer expiry",
        Duration::from_secs(10),
        || {
            let peer = p.peer("tor");
            (peer["state"] != "Established"
                && peer["last_error"]
                    .to_string()
                    .contains("hold timer expired"))
            .then_some(())
        },
        || p.peer("tor").to_string(),
    );
    let took = frozen.elapsed();
    assert!(
        took >= Duration::from_millis(2500),
        "expired too early: {took:?}"
    );
    // Its routes are withdrawn from the RIB and the kernel.
    wait_until_or(
        "routes withdrawn",
        Duration::from_secs(5),
        || {
            (p.route("203.0.113.0/24").is_none()
                && !n.routes4("proto 200").contains("203.0.113.0/24"))
            .then_some(())
        },
        || n.routes4(""),
    );
    // The router comes back (a fresh process): the session re-establishes by itself.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    b.daemon.kill();
    let b = Bird::start(&r, &dir, "bird2", &conf);
    b.wait_established("petrel", T);
    p.wait_established("tor", T);
    in_fib(&n, "203.0.113.0/24", "198.51.100.1");
    assert!(p.peer("tor")["established_count"].as_u64() >= Some(2));
    drop((p, b));
}

#[test]
fn passive_gtsm_session_with_bird_and_gtsm_refusing_a_ttl_1_peer() {
    let (dir, r, n) = router_and_node("gtsm");
    let conf = |ttl_security: &str| {
        format!(
            r#"
router id 198.51.100.1;
protocol device {{}}
protocol static s4 {{ ipv4; route 203.0.113.0/24 blackhole; }}
protocol bgp petrel {{
  local 198.51.100.1 as 65001; neighbor 198.51.100.2 as 65002;
  hold time 3; ttl security {ttl_security}; {fast}
  ipv4 {{ import all; export all; }};
}}
"#,
            fast = bird::FAST
        )
    };
    let b = Bird::start(&r, &dir, "bird", &conf("on"));
    // Petrel only listens (passive) and requires TTL 255 (GTSM).
    let yaml = "node: { asn: 65002, router_id: 198.51.100.2, pod_cidrs: [10.244.2.0/24] }\npeers:\n  - { name: tor, address: 198.51.100.1, asn: 65001, hold_time: 3, passive: true, gtsm: true, import: { prefixes: [{ prefix: 0.0.0.0/0, le: 32 }] } }\n";
    let p = Petrel::start(&n, &dir, "petrel", yaml);
    p.wait_established("tor", T);
    b.wait_established("petrel", T);
    in_fib(&n, "203.0.113.0/24", "198.51.100.1");

    // BIRD without TTL security sends with TTL 1: Petrel's kernel drops it all.
    b.reconfigure(&conf("off"));
    b.birdc("restart petrel");
    let start = std::time::Instant::now();
    wait_until_or(
        "the session to drop",
        T,
        || (p.peer_state("tor") != "Established").then_some(()),
        || p.peer("tor").to_string(),
    );
    while start.elapsed() < Duration::from_secs(6) {
        assert_ne!(
            p.peer_state("tor"),
            "Established",
            "a TTL-1 peer got through GTSM"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop((p, b));
}

#[test]
fn connections_from_unknown_addresses_are_refused() {
    let dir = TestDir::new("unknown");
    let n = Netns::new("n");
    let x = Netns::new("x");
    link(&x, &["198.51.100.9/24"], &n, &["198.51.100.2/24"]);
    let yaml = "node: { asn: 65002, router_id: 198.51.100.2, pod_cidrs: [10.244.2.0/24] }\npeers:\n  - { name: tor, address: 198.51.100.1, asn: 65001, passive: true }\n";
    let p = Petrel::start(&n, &dir, "petrel", yaml);
    // A stranger connects to port 179 and gets nothing but the closed connection: not one
    // byte of BGP (no OPEN, no NOTIFICATION).
    let out = x
        .cmd("bash")
        .arg("-c")
        .arg("exec 3<>/dev/tcp/198.51.100.2/179 && timeout 3 cat <&3 | wc -c")
        .output()
        .expect("bash");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(
        text,
        "0",
        "stdout {text:?} stderr {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until_or(
        "the refusal in the log",
        T,
        || {
            p.log_text()
                .contains("unknown address refused")
                .then_some(())
        },
        || p.log_text(),
    );
    assert_eq!(p.peer_state("tor"), "Active");
    drop(p);
}

#[test]
fn max_prefixes_tears_the_session_down_with_cease_1() {
    let (dir, r, n) = router_and_node("maxpfx");
    let conf = format!(
        r#"
router id 198.51.100.1;
protocol device {{}}
protocol static s4 {{ ipv4;
  route 203.0.113.0/26 blackhole; route 203.0.113.64/26 blackhole;
  route 203.0.113.128/26 blackhole; route 203.0.113.192/26 blackhole;
}}
protocol bgp petrel {{
  local 198.51.100.1 as 65001; neighbor 198.51.100.2 as 65002;
  hold time 3; {fast}
  ipv4 {{ import all; export all; }};
}}
"#,
        fast = bird::FAST
    );
    let b = Bird::start(&r, &dir, "bird", &conf);
    let yaml = "node: { asn: 65002, router_id: 198.51.100.2, pod_cidrs: [10.244.2.0/24] }\npeers:\n  - { name: tor, address: 198.51.100.1, asn: 65001, hold_time: 3, connect_retry: 5, import: { prefixes: [{ prefix: 0.0.0.0/0, le: 32 }], max_prefixes: 3 } }\n";
    let p = Petrel::start(&n, &dir, "petrel", yaml);
    // BIRD sees the Cease with subcode 1 (RFC 4486).
    wait_until_or(
        "BIRD to receive Cease: maximum number of prefixes",
        T,
        || {
            b.birdc("show protocols all petrel")
                .to_lowercase()
                .contains("maximum number of prefixes")
                .then_some(())
        },
        || b.birdc("show protocols all petrel"),
    );
    let peer = p.peer("tor");
    assert!(
        peer["last_error"]
            .to_string()
            .contains("Maximum Number of Prefixes Reached"),
        "{peer}"
    );
    // And nothing of that peer stays in the FIB.
    wait_until_or(
        "routes gone",
        T,
        || (!n.routes4("proto 200").contains("203.0.113.")).then_some(()),
        || n.routes4(""),
    );
    drop((p, b));
}
