//! The storm: one router announces 300,000 IPv4 prefixes and another 30,000 IPv6 ones, then
//! both withdraw everything and announce it again, twice, as a top-of-rack router does when
//! its upstream flaps. Throughout, `petrel status` is asked every 100 ms and must answer each
//! time within a second; after each phase the kernel must hold exactly the routes it should;
//! afterwards SIGTERM must stop the agent within 5 seconds. With graceful restart on and off.
//!
//! This was the agent's lock-up (the FIB asked the speaker back for routes while the speaker
//! waited on the FIB): these tests are its proof of absence.

use std::process::Command;
use std::time::{Duration, Instant};

use petrel_tests::bird::{self, Bird};
use petrel_tests::petrel::{Petrel, Poller};
use petrel_tests::{Netns, TestDir, link, wait_until_or};

const V4: usize = 300_000;
const V6: usize = 30_000;

/// The i-th IPv4 prefix: /28s counted up from 10.0.0.0 (10.0.0.0 to 10.73.62.240).
fn v4(i: usize) -> String {
    let a = 0x0a00_0000u32 + (i as u32) * 16;
    format!("{}/28", std::net::Ipv4Addr::from(a))
}

/// The i-th IPv6 prefix: /48s in 2001:db8::/32.
fn v6(i: usize) -> String {
    format!("2001:db8:{:x}::/48", i)
}

fn bird_conf(id: &str, local: &str, peer: &str, fam: &str, routes: &str, gr: &str) -> String {
    format!(
        "router id {id};\nprotocol device {{}}\nprotocol static flap {{ {fam}; {routes} }}\n\
         protocol bgp petrel {{ local {local} as 65001; neighbor {peer} as 65002; hold time 9; \
         graceful restart {gr}; {fast} {fam} {{ import none; export all; }}; }}\n",
        fast = bird::FAST
    )
}

/// Our routes in the kernel of `ns` for one family: (learned, own blackholes).
fn kernel_counts(ns: &Netns, fam: &str) -> (usize, usize) {
    let out = Command::new("ip")
        .args(["-n", &ns.name, fam, "route", "show", "proto", "200"])
        .output()
        .expect("ip route");
    let text = String::from_utf8_lossy(&out.stdout);
    let own = text.lines().filter(|l| l.starts_with("blackhole")).count();
    (text.lines().count() - own, own)
}

fn storm(label: &str, gr: bool) {
    let dir = TestDir::new(label);
    let n = Netns::new("n");
    let r4 = Netns::new("r4");
    let r6 = Netns::new("r6");
    link(&r4, &["198.51.100.1/24"], &n, &["198.51.100.2/24"]);
    link(&r6, &["2001:db8:ffff::1/64"], &n, &["2001:db8:ffff::2/64"]);
    let gr_word = if gr { "on" } else { "off" };
    let routes4: String = (0..V4)
        .map(|i| format!("route {} blackhole;\n", v4(i)))
        .collect();
    let routes6: String = (0..V6)
        .map(|i| format!("route {} blackhole;\n", v6(i)))
        .collect();
    let b4 = Bird::start(
        &r4,
        &dir,
        "bird4",
        &bird_conf(
            "198.51.100.1",
            "198.51.100.1",
            "198.51.100.2",
            "ipv4",
            &routes4,
            gr_word,
        ),
    );
    let b6 = Bird::start(
        &r6,
        &dir,
        "bird6",
        &bird_conf(
            "198.51.100.3",
            "2001:db8:ffff::1",
            "2001:db8:ffff::2",
            "ipv6",
            &routes6,
            gr_word,
        ),
    );
    let yaml = format!(
        "node: {{ asn: 65002, router_id: 198.51.100.2, pod_cidrs: [10.244.2.0/24, \"fd00:10:244:2::/64\"] }}\n\
         peers:\n\
         \x20 - {{ name: r4, address: 198.51.100.1, asn: 65001, hold_time: 9, connect_retry: 1, families: [ipv4], import: {{ prefixes: [{{ prefix: 0.0.0.0/0, le: 32 }}] }} }}\n\
         \x20 - {{ name: r6, address: \"2001:db8:ffff::1\", asn: 65001, hold_time: 9, connect_retry: 1, families: [ipv6], import: {{ prefixes: [{{ prefix: \"::/0\", le: 128 }}] }} }}\n\
         bgp: {{ graceful_restart: {{ enabled: {gr} }} }}\n"
    );
    let mut p = Petrel::start(&n, &dir, "petrel", &yaml);
    let poller = Poller::start(&p.socket);
    let t = Duration::from_secs(120);
    let expect = |what: &str, want4: usize, want6: usize| {
        let start = Instant::now();
        wait_until_or(
            what,
            t,
            || {
                (kernel_counts(&n, "-4") == (want4, 1) && kernel_counts(&n, "-6") == (want6, 1))
                    .then_some(())
            },
            || {
                format!(
                    "kernel v4 {:?} v6 {:?}\n{}",
                    kernel_counts(&n, "-4"),
                    kernel_counts(&n, "-6"),
                    p.daemon.log_tail(20)
                )
            },
        );
        eprintln!("{what}: {:?}", start.elapsed());
    };
    expect("first announcement in the kernel", V4, V6);
    for round in 1..=2 {
        b4.birdc("disable flap");
        b6.birdc("disable flap");
        expect(&format!("round {round}: everything withdrawn"), 0, 0);
        b4.birdc("enable flap");
        b6.birdc("enable flap");
        expect(
            &format!("round {round}: everything announced again"),
            V4,
            V6,
        );
    }
    let (worst, asked, failed) = poller.finish();
    eprintln!("status asked {asked} times, slowest answer {worst:?}, {failed} late or failed");
    assert!(asked > 10, "status was asked {asked} times");
    assert_eq!(
        failed, 0,
        "status answers late or failed (slowest {worst:?})"
    );
    // Both sessions stayed up through it all.
    let st = p.status();
    for peer in st["peers"].as_array().unwrap() {
        assert_eq!(peer["state"], "Established", "{peer}");
        assert_eq!(peer["established_count"], 1, "{peer}");
    }
    let start = Instant::now();
    let exit = p.daemon.stop(Duration::from_secs(5));
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(5) && exit.is_some_and(|s| s.success()),
        "SIGTERM took {took:?}, exit {exit:?}"
    );
    eprintln!("stopped {took:?} after SIGTERM");
    drop((b4, b6));
}

#[test]
fn storm_of_330k_routes_with_graceful_restart() {
    storm("storm-gr", true);
}

#[test]
fn storm_of_330k_routes_without_graceful_restart() {
    storm("storm-nogr", false);
}
