//! Graceful restart (RFC 4724) with BIRD, both ways: Petrel restarting with BIRD as the
//! helper, and BIRD restarting with Petrel as the helper; and the agent stalled and
//! restarted with BFD on under traffic through BIRD and FRR, without losing a packet.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use petrel_tests::bird::{self, Bird};
use petrel_tests::petrel::Petrel;
use petrel_tests::{router_and_node, wait_until_or};

const T: Duration = Duration::from_secs(30);

fn bird_conf() -> String {
    bird_conf_with(false)
}

/// With `bfd`: a BFD session beside BGP, and `bfd graceful` (BFD Down starts graceful
/// restart instead of a hard reset).
fn bird_conf_with(bfd: bool) -> String {
    let (proto, opt) = if bfd {
        (
            "protocol bfd { interface \"*\" { min rx interval 300 ms; min tx interval 300 ms; multiplier 3; }; }\n",
            "bfd graceful;",
        )
    } else {
        ("", "")
    };
    format!(
        r#"
router id 198.51.100.1;
protocol device {{}}
{proto}protocol static s4 {{ ipv4; route 203.0.113.0/24 blackhole; }}
protocol bgp petrel {{
  local 198.51.100.1 as 65001; neighbor 198.51.100.2 as 65002;
  hold time 3; graceful restart on; graceful restart time 60; {fast} {opt}
  ipv4 {{ import all; export all; }};
}}
"#,
        fast = bird::FAST
    )
}

fn petrel_yaml(cidrs: &str) -> String {
    petrel_yaml_with(cidrs, "")
}

fn petrel_yaml_with(cidrs: &str, extra: &str) -> String {
    format!(
        "node: {{ asn: 65002, router_id: 198.51.100.2, pod_cidrs: [{cidrs}] }}\npeers:\n  - {{ name: tor, address: 198.51.100.1, asn: 65001, hold_time: 3, connect_retry: 1, connect_retry_max: 2, import: {{ prefixes: [{{ prefix: 0.0.0.0/0, le: 32 }}] }}{extra} }}\nbgp:\n  graceful_restart: {{ restart_time: 60 }}\n"
    )
}

/// Counts, until stopped, the polls in which a condition did not hold.
struct Watch {
    stop: Arc<AtomicBool>,
    misses: Arc<AtomicUsize>,
    polls: Arc<std::sync::Mutex<Vec<Instant>>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Watch {
    fn new(check: impl Fn() -> bool + Send + 'static) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let misses = Arc::new(AtomicUsize::new(0));
        let polls = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, m, p) = (stop.clone(), misses.clone(), polls.clone());
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if !check() {
                    m.fetch_add(1, Ordering::Relaxed);
                }
                p.lock().unwrap().push(Instant::now());
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Watch {
            stop,
            misses,
            polls,
            handle: Some(handle),
        }
    }

    /// (misses, when each poll ended)
    fn finish(mut self) -> (usize, Vec<Instant>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        (
            self.misses.load(Ordering::Relaxed),
            std::mem::take(&mut *self.polls.lock().unwrap()),
        )
    }
}

/// How many polls fell inside [from, to]: the watch covered that window.
/// BFD Up at BIRD and in petrel's status.
fn wait_bfd_up(b: &Bird, p: &Petrel) {
    wait_until_or(
        "BFD Up at BIRD and at petrel",
        T,
        || {
            (b.birdc("show bfd sessions").contains("Up") && p.peer("tor")["bfd"]["state"] == "Up")
                .then_some(())
        },
        || b.birdc("show bfd sessions"),
    );
}

fn polls_within(polls: &[Instant], from: Instant, to: Instant) -> usize {
    polls.iter().filter(|t| **t >= from && **t <= to).count()
}

fn birdc_has(ctl: &std::path::Path, prefix: &str) -> bool {
    Command::new("birdc")
        .arg("-s")
        .arg(ctl)
        .args(["show", "route", prefix])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(prefix))
        .unwrap_or(false)
}

fn fib_has(ns: &str, prefix: &str) -> bool {
    Command::new("ip")
        .args(["-n", ns, "-4", "route", "show", "proto", "200"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(prefix))
        .unwrap_or(false)
}

#[test]
fn petrel_restart_keeps_routes_at_bird_until_end_of_rib() {
    petrel_restart_keeps_routes_at_bird("gr-petrel", false);
}

/// The same with BFD on both sides and BIRD's `bfd graceful`: the agent's exit silences
/// BFD, and that must start graceful restart at the router, not flush the node's routes.
#[test]
fn petrel_restart_with_bfd_keeps_routes_at_bird() {
    petrel_restart_keeps_routes_at_bird("gr-bfd", true);
}

fn petrel_restart_keeps_routes_at_bird(label: &str, bfd: bool) {
    let (dir, r, n) = router_and_node(label);
    if bfd {
        r.sysctl("net.ipv4.ip_local_port_range", "49152 65535");
    }
    let b = Bird::start(&r, &dir, "bird", &bird_conf_with(bfd));
    let extra = if bfd { ", bfd: true" } else { "" };
    let mut p = Petrel::start(
        &n,
        &dir,
        "petrel",
        &petrel_yaml_with("10.244.2.0/24, 10.244.5.0/24", extra),
    );
    b.wait_established("petrel", T);
    if bfd {
        wait_bfd_up(&b, &p);
    }
    wait_until_or(
        "BIRD holds both pod CIDRs",
        T,
        || (b.has_route("10.244.2.0/24") && b.has_route("10.244.5.0/24")).then_some(()),
        || b.birdc("show route all"),
    );
    wait_until_or(
        "BIRD's route in the node's FIB",
        T,
        || fib_has(&n.name, "203.0.113.0/24").then_some(()),
        || n.routes4(""),
    );

    // From here on, neither BIRD's copy of 10.244.2.0/24 nor the node's kernel route to
    // BIRD's prefix may disappear, not even for one poll.
    let ctl = b.ctl.clone();
    let at_bird = Watch::new(move || birdc_has(&ctl, "10.244.2.0/24"));
    let ns = n.name.clone();
    let in_fib = Watch::new(move || fib_has(&ns, "203.0.113.0/24"));

    // Stop: SIGTERM with graceful restart closes the session without a NOTIFICATION.
    let st = p.daemon.stop(Duration::from_secs(10));
    let down_at = Instant::now();
    assert!(
        st.is_some_and(|s| s.success()),
        "petrel exits cleanly: {st:?}"
    );
    wait_until_or(
        "BIRD in graceful restart for the node",
        T,
        || {
            b.birdc("show protocols all petrel")
                .contains("Neighbor graceful restart active")
                .then_some(())
        },
        || b.birdc("show protocols all petrel"),
    );
    assert!(b.has_route("10.244.2.0/24"), "kept while the node is down");
    assert!(b.has_route("10.244.5.0/24"), "kept while the node is down");

    if bfd {
        // Let BFD notice: BIRD's session goes down, and the routes must still be there.
        wait_until_or(
            "BIRD's BFD session down",
            T,
            || (!b.birdc("show bfd sessions").contains("Up")).then_some(()),
            || b.birdc("show bfd sessions"),
        );
        assert!(b.has_route("10.244.2.0/24"), "kept after BFD went down");
    }
    // Come back with one CIDR changed: 10.244.5.0/24 gone, 10.244.6.0/24 new.
    std::fs::write(
        &p.config,
        petrel_yaml_with("10.244.2.0/24, 10.244.6.0/24", extra),
    )
    .unwrap();
    p.restart(&n, &dir);
    p.wait_established("tor", T);
    let up_at = Instant::now();
    assert!(
        p.log_text().contains("restarting gracefully"),
        "the new run found its routes and set the R/F bits"
    );
    // After our End-of-RIB, BIRD drops the stale route we did not send again.
    wait_until_or(
        "BIRD swaps the stale CIDR for the new one",
        T,
        || (b.has_route("10.244.6.0/24") && !b.has_route("10.244.5.0/24")).then_some(()),
        || b.birdc("show route all"),
    );
    assert!(
        !b.birdc("show protocols all petrel")
            .contains("Neighbor graceful restart active")
    );
    let (miss_b, polls_b) = at_bird.finish();
    let (miss_f, polls_f) = in_fib.finish();
    let (in_b, in_f) = (
        polls_within(&polls_b, down_at, up_at),
        polls_within(&polls_f, down_at, up_at),
    );
    assert!(
        in_b > 0 && in_f > 0,
        "watched while petrel was down: {in_b} and {in_f} polls"
    );
    assert_eq!(miss_b, 0, "BIRD lost 10.244.2.0/24 during the restart");
    assert_eq!(
        miss_f, 0,
        "the node's FIB lost BIRD's route during the restart"
    );
    if bfd {
        wait_bfd_up(&b, &p);
    }
    drop((p, b));
}

#[test]
fn bird_restart_keeps_routes_at_petrel_until_end_of_rib() {
    let (dir, r, n) = router_and_node("gr-bird");
    let mut b = Bird::start(&r, &dir, "bird", &bird_conf());
    let p = Petrel::start(&n, &dir, "petrel", &petrel_yaml("10.244.2.0/24"));
    p.wait_established("tor", T);
    wait_until_or(
        "BIRD's route in the node's FIB",
        T,
        || fib_has(&n.name, "203.0.113.0/24").then_some(()),
        || n.routes4(""),
    );
    let ns = n.name.clone();
    let in_fib = Watch::new(move || fib_has(&ns, "203.0.113.0/24"));

    // BIRD restarts gracefully: it closes its sessions and exits.
    b.birdc("graceful restart");
    wait_until("BIRD gone", || !b.daemon.is_running());
    let down_at = Instant::now();
    // Petrel keeps BIRD's route, marked stale, in its RIB and in the kernel.
    let route = wait_until_or(
        "the route marked stale",
        T,
        || {
            p.route("203.0.113.0/24")
                .filter(|r| r["paths"][0]["stale"] == true)
        },
        || p.routes().to_string(),
    );
    assert_eq!(route["in_fib"], true);
    assert_eq!(p.peer("tor")["prefixes"]["stale"], 1);

    // BIRD comes back in recovery mode; after its End-of-RIB the route is fresh again.
    std::fs::write(&b.conf, bird_conf()).unwrap();
    let log = dir.file("bird2.log");
    let ctl = b.ctl.clone();
    let _b2 = r.spawn(
        "bird2",
        &[
            "bird",
            "-f",
            "-R",
            "-c",
            b.conf.to_str().unwrap(),
            "-s",
            ctl.to_str().unwrap(),
        ],
        &log,
    );
    p.wait_established("tor", T);
    wait_until_or(
        "the route fresh again",
        T,
        || {
            p.route("203.0.113.0/24")
                .filter(|r| r["paths"][0]["stale"] == false)
                .map(|_| ())
        },
        || p.routes().to_string(),
    );
    assert_eq!(p.peer("tor")["prefixes"]["stale"], 0);
    let up_at = Instant::now();
    let (miss, polls) = in_fib.finish();
    assert!(
        polls_within(&polls, down_at, up_at) > 0,
        "watched while BIRD was away"
    );
    assert_eq!(
        miss, 0,
        "the node's FIB lost BIRD's route during BIRD's restart"
    );
    drop(p);
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    petrel_tests::wait_until(what, T, || f().then_some(()));
}

/// `ping -i 0.01` from a namespace until stopped; the sequence numbers that came back.
struct Pinger {
    child: std::process::Child,
    out: std::path::PathBuf,
}

impl Pinger {
    fn start(ns: &petrel_tests::Netns, dir: &petrel_tests::TestDir, dst: &str) -> Pinger {
        let out = dir.file(&format!("ping-{dst}.txt"));
        let child = ns
            .cmd("ping")
            .args(["-n", "-i", "0.01", "-W", "1", dst])
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("ping");
        Pinger { child, out }
    }

    fn replies(&self) -> Vec<u64> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split("icmp_seq=").nth(1))
            .filter_map(|s| s.split_whitespace().next()?.parse().ok())
            .collect()
    }

    /// Stop it; (requests answered, the sequence numbers missing below the last answered).
    /// Counting gaps, not sent minus received, leaves out the one request still in flight
    /// when ping is stopped.
    fn finish(mut self) -> (usize, Vec<u64>) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
        let got = self.replies();
        let seen: std::collections::BTreeSet<u64> = got.iter().copied().collect();
        let last = seen.last().copied().unwrap_or(0);
        let missing = (1..last).filter(|s| !seen.contains(s)).collect();
        (seen.len(), missing)
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn kernel_has(ns: &str, prefix: &str) -> bool {
    Command::new("ip")
        .args(["-n", ns, "-4", "route", "show", prefix])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(prefix))
        .unwrap_or(false)
}

/// The issue's proof for BFD with graceful restart: a node with two routers, BIRD with
/// `bfd graceful` and FRR with `bfd check-control-plane-failure`, a pod pinging a host
/// behind each every 10 ms, and the agent restarted in the middle (SIGTERM, both routers'
/// BFD sessions seen Down, start again). Not one ping may be lost, and neither router's
/// kernel may lose its route to the pod CIDR for one poll.
#[test]
fn agent_restart_with_bfd_under_traffic_loses_no_packet() {
    use petrel_tests::frr::Frr;
    use petrel_tests::{Netns, TestDir, link};
    let dir = TestDir::new("gr-traffic");
    let n = Netns::new("n");
    let rb = Netns::new("rb");
    let rf = Netns::new("rf");
    let pod = Netns::new("pod");
    link(&rb, &["198.51.100.1/24"], &n, &["198.51.100.2/24"]);
    link(&rf, &["203.0.113.1/24"], &n, &["203.0.113.2/24"]);
    let (pod_if, host_if) = link(&pod, &["10.244.2.10/32"], &n, &[]);
    rb.ip("addr add 198.18.1.1/32 dev lo");
    rf.ip("addr add 198.18.2.1/32 dev lo");
    // The pod as the CNI plugin wires it: its gateway 169.254.1.1 on the veth, a host
    // route to it on the node.
    pod.ip(&format!("route add 169.254.1.1 dev {pod_if} scope link"));
    pod.ip(&format!("route add default via 169.254.1.1 dev {pod_if}"));
    n.sysctl("net.ipv4.ip_forward", "1");
    let mac = n.sh_ok(&format!("cat /sys/class/net/{host_if}/address"));
    pod.ip(&format!(
        "neigh replace 169.254.1.1 lladdr {} dev {pod_if} nud permanent",
        mac.trim()
    ));
    n.ip(&format!("route add 10.244.2.10/32 dev {host_if}"));
    rb.sysctl("net.ipv4.ip_local_port_range", "49152 65535");

    let b = Bird::start(
        &rb,
        &dir,
        "bird",
        &format!(
            r#"
router id 198.51.100.1;
protocol device {{}}
protocol kernel {{ ipv4 {{ export all; }}; }}
protocol bfd {{ interface "*" {{ min rx interval 300 ms; min tx interval 300 ms; multiplier 3; }}; }}
protocol static {{ ipv4; route 198.18.1.0/24 blackhole; }}
protocol bgp petrel {{
  local 198.51.100.1 as 65001; neighbor 198.51.100.2 as 65002;
  hold time 9; graceful restart on; graceful restart time 60; {fast} bfd graceful;
  ipv4 {{ import all; export where net = 198.18.1.0/24; }};
}}
"#,
            fast = bird::FAST
        ),
    );
    let mut frr = Frr::start(
        &rf,
        &dir,
        "frr",
        "frr defaults traditional\nhostname rf\nrouter bgp 65003\n bgp router-id 203.0.113.1\n no bgp ebgp-requires-policy\n no bgp network import-check\n bgp graceful-restart\n timers bgp 3 9\n neighbor 203.0.113.2 remote-as 65002\n neighbor 203.0.113.2 timers connect 1\n neighbor 203.0.113.2 bfd\n neighbor 203.0.113.2 bfd check-control-plane-failure\n address-family ipv4 unicast\n  network 198.18.2.0/24\n exit-address-family\n!\n",
    );
    frr.start_bfdd(&rf, "bfd\n!\n");
    let import = "import: { prefixes: [{ prefix: 0.0.0.0/0, le: 32 }] }";
    let yaml = format!(
        "node: {{ asn: 65002, router_id: 198.51.100.2, pod_cidrs: [10.244.2.0/24] }}\npeers:\n  - {{ name: bird, address: 198.51.100.1, asn: 65001, hold_time: 9, connect_retry: 1, bfd: true, {import} }}\n  - {{ name: frr, address: 203.0.113.1, asn: 65003, hold_time: 9, connect_retry: 1, bfd: true, {import} }}\nbgp:\n  graceful_restart: {{ restart_time: 60 }}\n"
    );
    let mut p = Petrel::start(&n, &dir, "petrel", &yaml);
    let frr_bfd_up = |f: &Frr| {
        f.try_vtysh("show bfd peers")
            .is_some_and(|o| o.contains("Status: up"))
    };
    let all_up = |p: &Petrel| {
        ["bird", "frr"].iter().all(|peer| {
            let v = p.peer(peer);
            v["state"] == "Established" && v["bfd"]["state"] == "Up"
        })
    };
    wait_until_or(
        "both sessions Established with BFD Up on both sides, routes in every kernel",
        T,
        || {
            (all_up(&p)
                && b.birdc("show bfd sessions").contains("Up")
                && frr_bfd_up(&frr)
                && kernel_has(&rb.name, "10.244.2.0/24")
                && kernel_has(&rf.name, "10.244.2.0/24")
                && fib_has(&n.name, "198.18.1.0/24")
                && fib_has(&n.name, "198.18.2.0/24"))
            .then_some(())
        },
        || {
            format!(
                "{}\n{}\n{}\n{}",
                p.status(),
                b.birdc("show bfd sessions"),
                frr.vtysh("show bfd peers"),
                n.routes4("")
            )
        },
    );
    let to_frr = Pinger::start(&pod, &dir, "198.18.2.1");
    wait_until("pings answered through FRR", || to_frr.replies().len() > 20);
    let watches: Vec<Watch> = [rb.name.clone(), rf.name.clone()]
        .into_iter()
        .map(|ns| Watch::new(move || kernel_has(&ns, "10.244.2.0/24")))
        .collect();

    let bfd_down_at_routers = |b: &Bird, frr: &Frr| {
        wait_until_or(
            "BFD Down at both routers",
            T,
            || (!b.birdc("show bfd sessions").contains("Up") && !frr_bfd_up(frr)).then_some(()),
            || {
                format!(
                    "{}\n{}",
                    b.birdc("show bfd sessions"),
                    frr.vtysh("show bfd peers")
                )
            },
        )
    };

    // First the agent stalls (SIGSTOP) while the kernel goes on forwarding: BFD goes
    // silent with TCP still open. FRR with check-control-plane-failure and graceful
    // restart ignores that BFD Down and keeps the session and its routes (without that
    // line it resets the session and the traffic through it is lost; FRR 8.4 does not
    // look at our C bit here, we set it truthfully all the same). BIRD sends C=0, so once
    // we run again its BFD Down counts as a failure on our side (RFC 5882) and its
    // session is reset: the traffic through BIRD is measured from after the stall.
    let dropped = |f: &Frr| f.neighbor("203.0.113.2")["connectionsDropped"].clone();
    let dropped_before = dropped(&frr);
    let pid = p.daemon.pid().expect("running") as i32;
    // SAFETY: kill(2) on the pid of the agent this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let stall_at = Instant::now();
    bfd_down_at_routers(&b, &frr);
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    // Back, and settled: the reset of BIRD's session that follows the stall comes a moment
    // after the agent runs again, so both sessions must stay up for two seconds in a row
    // (and BIRD's route be in the FIB) before the traffic through BIRD starts.
    let stall = stall_at.elapsed();
    let mut up_since: Option<Instant> = None;
    wait_until_or(
        "both sessions back and steady with BFD Up after the stall",
        T,
        || {
            if all_up(&p) && frr_bfd_up(&frr) && fib_has(&n.name, "198.18.1.0/24") {
                let t = *up_since.get_or_insert_with(Instant::now);
                (t.elapsed() > Duration::from_secs(2)).then_some(())
            } else {
                up_since = None;
                None
            }
        },
        || p.status().to_string(),
    );
    assert_eq!(
        dropped(&frr),
        dropped_before,
        "FRR kept its session through the stall"
    );
    let to_bird = Pinger::start(&pod, &dir, "198.18.1.1");
    wait_until("pings answered through BIRD", || {
        to_bird.replies().len() > 20
    });

    // Then a restart: SIGTERM with graceful restart, and the same binary again.
    let st = p.daemon.stop(Duration::from_secs(10));
    assert!(st.is_some_and(|s| s.success()), "{st:?}");
    let down_at = Instant::now();
    // Both routers saw BFD go Down, and kept the routes.
    bfd_down_at_routers(&b, &frr);
    p.restart(&n, &dir);
    wait_until_or(
        "both sessions back with BFD Up",
        T,
        || (all_up(&p) && frr_bfd_up(&frr)).then_some(()),
        || p.status().to_string(),
    );
    let up_at = Instant::now();
    // A second of traffic after the agent is back.
    let answered = (to_bird.replies().len(), to_frr.replies().len());
    wait_until("a second of pings after the restart", || {
        to_bird.replies().len() > answered.0 + 50 && to_frr.replies().len() > answered.1 + 50
    });
    let (via_bird, lost_bird) = to_bird.finish();
    let (via_frr, lost_frr) = to_frr.finish();
    for (w, at) in watches.into_iter().zip(["BIRD", "FRR"]) {
        let (miss, polls) = w.finish();
        assert!(
            polls_within(&polls, stall_at, stall_at + stall) > 0,
            "watched {at}"
        );
        assert!(polls_within(&polls, down_at, up_at) > 0, "watched {at}");
        assert_eq!(miss, 0, "{at}'s kernel lost the route to the pod CIDR");
    }
    assert!(
        lost_bird.is_empty() && lost_frr.is_empty(),
        "pings lost during the restart: through BIRD {lost_bird:?} of {via_bird}, through FRR {lost_frr:?} of {via_frr}"
    );
    eprintln!(
        "agent stall and restart: {via_bird} pings through BIRD and {via_frr} through FRR, none lost; stalled {stall:?}, away {:?}",
        up_at - down_at
    );
}
