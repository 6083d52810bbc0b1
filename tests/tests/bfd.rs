//! Petrel's BFD runtime against FRR's bfdd in namespaces: the session comes up on both sides
//! with the configured intervals, a link that silently drops everything is detected within
//! the detection time, the session recovers, and a changed interval at FRR is taken over by
//! Poll/Final without a flap.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use petrel_bfd::runtime::{Key, Status, spawn};
use petrel_bfd::session::Config;
use petrel_bfd::{Diag, State};
use petrel_tests::frr::Frr;
use petrel_tests::{Netns, TestDir, link, wait_until_or};

const T: Duration = Duration::from_secs(20);

/// Our BFD runtime on a thread of its own inside `ns`, with one session; every status it
/// publishes, timestamped.
struct Ours {
    log: Arc<Mutex<Vec<(Instant, Status)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Ours {
    fn start(ns: &Netns, key: Key, cfg: Config) -> Ours {
        let log: Arc<Mutex<Vec<(Instant, Status)>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (l2, s2) = (log.clone(), stop.clone());
        let path = format!("/var/run/netns/{}", ns.name);
        let thread = std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            let f = std::fs::File::open(&path).expect("netns");
            // SAFETY: setns on this thread only.
            assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let h = spawn();
                let mut w = h.add(key, cfg).await;
                while !s2.load(Ordering::Relaxed) {
                    if let Ok(Ok(())) =
                        tokio::time::timeout(Duration::from_millis(100), w.changed()).await
                    {
                        l2.lock()
                            .unwrap()
                            .push((Instant::now(), w.borrow().clone()));
                    }
                }
                h.remove(key).await;
            });
        });
        Ours {
            log,
            stop,
            thread: Some(thread),
        }
    }

    fn last(&self) -> Option<Status> {
        self.log.lock().unwrap().last().map(|(_, s)| s.clone())
    }

    fn wait(&self, what: &str, f: impl Fn(&Status) -> bool) -> Instant {
        wait_until_or(
            what,
            T,
            || {
                // The time of the first status of the current run of statuses that hold.
                let log = self.log.lock().unwrap();
                if !log.last().is_some_and(|(_, s)| f(s)) {
                    return None;
                }
                let from = log.iter().rposition(|(_, s)| !f(s)).map_or(0, |i| i + 1);
                Some(log[from].0)
            },
            || format!("{:?}", self.last()),
        )
    }
}

impl Drop for Ours {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Make the link `ifname` of `ns` silent (everything in or out dropped; the interface stays
/// up, TCP is not closed) or speak again.
fn silence(ns: &Netns, ifname: &str, on: bool) {
    let op = if on { "-A" } else { "-D" };
    ns.sh_ok(&format!("iptables {op} INPUT -i {ifname} -j DROP"));
    ns.sh_ok(&format!("iptables {op} OUTPUT -o {ifname} -j DROP"));
}

/// Our single-hop or multihop session from 198.51.100.2 to 198.51.100.1.
fn v4_key(multihop: bool) -> Key {
    Key {
        local: "198.51.100.2".parse().unwrap(),
        remote: "198.51.100.1".parse().unwrap(),
        multihop,
    }
}

/// A router namespace running FRR's bfdd with `bfd` (its config block) on a link to a node
/// namespace; the router's interface name.
fn frr_bfdd(
    label: &str,
    r_addr: &str,
    n_addr: &str,
    bfd: &str,
) -> (TestDir, Netns, Netns, String, Frr) {
    let dir = TestDir::new(label);
    let r = Netns::new("r");
    let n = Netns::new("n");
    let (ri, _) = link(&r, &[r_addr], &n, &[n_addr]);
    let mut frr = Frr::start(&r, &dir, "frr", "frr defaults traditional\nhostname r\n!\n");
    frr.start_bfdd(&r, &bfd.replace("{ri}", &ri));
    (dir, r, n, ri, frr)
}

/// Wait until FRR's `show bfd peers` has a line saying so (and `also`, if given).
fn wait_frr_bfd_up(frr: &Frr, also: &str) {
    wait_until_or(
        "FRR sees the BFD session up",
        T,
        || {
            frr.try_vtysh("show bfd peers")
                .filter(|o| o.contains("Status: up") && o.contains(also))
                .map(|_| ())
        },
        || frr.vtysh("show bfd peers"),
    );
}

#[test]
fn bfd_with_frr_comes_up_detects_a_silent_link_and_renegotiates() {
    let (_dir, r, n, ri, frr) = frr_bfdd(
        "bfd-frr",
        "198.51.100.1/24",
        "198.51.100.2/24",
        "bfd\n peer 198.51.100.2\n  receive-interval 300\n  transmit-interval 300\n  detect-multiplier 3\n !\n!\n",
    );
    let ours = Ours::start(&n, v4_key(false), Config::default());
    ours.wait("our session Up", |s| s.state == State::Up);
    wait_frr_bfd_up(&frr, "");
    // Settled on the configured intervals (after the slow-to-fast Poll).
    ours.wait("300 ms both ways, 900 ms detection", |s| {
        s.tx_us == 300_000 && s.rx_us == 300_000 && s.detection_us == 900_000
    });
    let peers = frr.vtysh("show bfd peers");
    assert!(peers.contains("Remote timers:"), "{peers}");

    // The link goes silent: everything FRR's side receives or sends vanishes; the
    // interface stays up, nothing tells us.
    silence(&r, &ri, true);
    let silent = Instant::now();
    let down_at = ours.wait("our session Down", |s| s.state == State::Down);
    let took = down_at.duration_since(silent);
    eprintln!("silent link detected after {took:?}");
    // 900 ms after the last packet heard at most; slack for a busy machine.
    assert!(
        took < Duration::from_millis(1500),
        "detected after {took:?}"
    );
    let st = ours.last().unwrap();
    assert_eq!(st.last_down, Diag::DetectionTimeExpired);
    assert_eq!(st.flaps, 1);

    silence(&r, &ri, false);
    ours.wait("Up again", |s| s.state == State::Up);

    // FRR asks for packets every 600 ms: we follow by Poll/Final, without a flap.
    frr.vtysh_conf(&["bfd", "peer 198.51.100.2", "receive-interval 600"]);
    ours.wait("our transmit interval 600 ms", |s| s.tx_us == 600_000);
    assert_eq!(ours.last().unwrap().flaps, 1, "no flap while renegotiating");
    assert_eq!(ours.last().unwrap().state, State::Up);
}

#[test]
fn bfd_with_bird_comes_up_and_detects_a_silent_link() {
    use petrel_tests::bird::Bird;
    let dir = TestDir::new("bfd-bird");
    let r = Netns::new("r");
    let n = Netns::new("n");
    let (ri, _) = link(&r, &["198.51.100.1/24"], &n, &["198.51.100.2/24"]);
    // RFC 5881 source ports for BIRD's sessions.
    r.sysctl("net.ipv4.ip_local_port_range", "49152 65535");
    let bird = Bird::start(
        &r,
        &dir,
        "bird",
        "router id 198.51.100.1;\nprotocol device {}\nprotocol bfd {\n  interface \"*\" { min rx interval 300 ms; min tx interval 300 ms; multiplier 3; };\n  neighbor 198.51.100.2;\n}\n",
    );
    let ours = Ours::start(&n, v4_key(false), Config::default());
    ours.wait("our session Up", |s| s.state == State::Up);
    wait_until_or(
        "BIRD sees the session Up",
        T,
        || {
            bird.try_birdc("show bfd sessions")
                .filter(|o| {
                    o.lines()
                        .any(|l| l.contains("198.51.100.2") && l.contains("Up"))
                })
                .map(|_| ())
        },
        || bird.birdc("show bfd sessions"),
    );
    ours.wait("300 ms both ways", |s| {
        s.tx_us == 300_000 && s.detection_us == 900_000
    });
    silence(&r, &ri, true);
    let silent = Instant::now();
    let down_at = ours.wait("our session Down", |s| s.state == State::Down);
    let took = down_at.duration_since(silent);
    eprintln!("silent link detected after {took:?}");
    assert!(
        took < Duration::from_millis(1500),
        "detected after {took:?}"
    );
    assert_eq!(ours.last().unwrap().last_down, Diag::DetectionTimeExpired);
    silence(&r, &ri, false);
    ours.wait("Up again", |s| s.state == State::Up);
}

#[test]
fn bfd_over_ipv6_with_frr() {
    let (_dir, _r, n, _ri, frr) = frr_bfdd(
        "bfd-frr6",
        "2001:db8:5::1/64",
        "2001:db8:5::2/64",
        "bfd\n peer 2001:db8:5::2 interface {ri}\n  receive-interval 300\n  transmit-interval 300\n !\n!\n",
    );
    let ours = Ours::start(
        &n,
        Key {
            local: "2001:db8:5::2".parse().unwrap(),
            remote: "2001:db8:5::1".parse().unwrap(),
            multihop: false,
        },
        Config::default(),
    );
    ours.wait("our session Up", |s| s.state == State::Up);
    wait_frr_bfd_up(&frr, "");
    ours.wait("300 ms both ways", |s| {
        s.tx_us == 300_000 && s.detection_us == 900_000
    });
}

/// FRR (bgpd with `neighbor X bfd`, bfdd) and Petrel with `bfd:` on the session.
fn agent_and_frr(
    label: &str,
    bfd: &str,
) -> (
    TestDir,
    Netns,
    Netns,
    String,
    Frr,
    petrel_tests::petrel::Petrel,
) {
    let dir = TestDir::new(label);
    let r = Netns::new("r");
    let n = Netns::new("n");
    let (ri, _) = link(&r, &["198.51.100.1/24"], &n, &["198.51.100.2/24"]);
    let mut frr = Frr::start(
        &r,
        &dir,
        "frr",
        "frr defaults traditional\nhostname r\nrouter bgp 65001\n bgp router-id 198.51.100.1\n no bgp ebgp-requires-policy\n no bgp network import-check\n bgp graceful-restart-disable\n timers bgp 3 9\n neighbor 198.51.100.2 remote-as 65002\n neighbor 198.51.100.2 timers connect 1\n neighbor 198.51.100.2 bfd\n address-family ipv4 unicast\n  network 198.18.0.0/16\n exit-address-family\n!\n",
    );
    frr.start_bfdd(&r, "bfd\n!\n");
    let yaml = format!(
        "node: {{ asn: 65002, router_id: 198.51.100.2, pod_cidrs: [10.244.2.0/24] }}\npeers:\n  - name: tor\n    address: 198.51.100.1\n    asn: 65001\n    hold_time: 9\n    connect_retry: 1\n    import: {{ prefixes: [{{ prefix: 0.0.0.0/0, le: 32 }}] }}\n    {bfd}\nbgp: {{ graceful_restart: {{ enabled: false }} }}\nmetrics: {{ address: \"127.0.0.1:9179\" }}\n"
    );
    let p = petrel_tests::petrel::Petrel::start(&n, &dir, "petrel", &yaml);
    (dir, r, n, ri, frr, p)
}

fn bfd_state(p: &petrel_tests::petrel::Petrel) -> String {
    p.peer("tor")["bfd"]["state"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// Wait until the agent's BFD session with peer `tor` is Up, as its status says.
fn wait_our_bfd_up(p: &petrel_tests::petrel::Petrel, what: &str) {
    wait_until_or(
        what,
        T,
        || (bfd_state(p) == "Up").then_some(()),
        || p.peer("tor").to_string(),
    );
}

#[test]
fn bfd_down_ends_the_bgp_session_at_once_and_it_comes_back() {
    let (_dir, r, n, ri, frr, p) = agent_and_frr(
        "bfd-bgp",
        "bfd: { enabled: true, min_rx: 300, min_tx: 300, multiplier: 3, strict: false }",
    );
    p.wait_established("tor", T);
    petrel_tests::wait_gateways(&n, "198.18.0.0/16", &["198.51.100.1"], T);
    wait_our_bfd_up(&p, "BFD Up in petrel status");
    wait_frr_bfd_up(&frr, "");
    let b = &p.peer("tor")["bfd"];
    assert_eq!(
        (b["tx_ms"].as_u64(), b["detection_ms"].as_u64()),
        (Some(300), Some(900)),
        "{b}"
    );

    // The link goes silent. With a hold time of 9 s BGP alone would take that long.
    silence(&r, &ri, true);
    let silent = Instant::now();
    wait_until_or(
        "the learned route out of the kernel",
        T,
        || {
            petrel_tests::kernel_route(&n, "198.18.0.0/16")
                .is_none()
                .then_some(())
        },
        || p.peer("tor").to_string(),
    );
    let took = silent.elapsed();
    eprintln!("route removed {took:?} after the link went silent (hold time 9 s)");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let peer = p.peer("tor");
    assert_ne!(peer["state"], "Established", "{peer}");
    assert_eq!(peer["last_error"], "sent Cease: BFD Down (6/10)", "{peer}");
    assert_eq!(peer["bfd"]["flaps"], 1, "{peer}");
    assert_eq!(
        peer["bfd"]["last_down"], "control detection time expired",
        "{peer}"
    );

    silence(&r, &ri, false);
    p.wait_established("tor", T);
    petrel_tests::wait_gateways(&n, "198.18.0.0/16", &["198.51.100.1"], T);
    wait_our_bfd_up(&p, "BFD Up again");
}

#[test]
fn strict_bfd_holds_the_session_until_bfd_is_up() {
    let (_dir, r, _n, ri, frr, p) = agent_and_frr(
        "bfd-strict",
        "bfd: { enabled: true, min_rx: 300, min_tx: 300, multiplier: 3, strict: true }",
    );
    // BFD's packets dropped from the start (BGP's TCP would pass): the session stays Idle.
    let rule = format!("iptables -A INPUT -i {ri} -p udp --dport 3784 -j DROP");
    r.sh_ok(&rule);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        let peer = p.peer("tor");
        assert_eq!(peer["state"], "Idle", "{peer}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(frr.state("198.51.100.2") != "Established");
    r.sh_ok(&rule.replace(" -A ", " -D "));
    p.wait_established("tor", T);
    // BGP's state and BFD's view reach status separately: the view may be a poll behind.
    wait_our_bfd_up(&p, "BFD Up with the session Established");
}

#[test]
fn a_peer_that_stops_answering_bfd_while_tcp_is_healthy_is_torn_down_with_cease_10() {
    let (_dir, r, n, ri, frr, p) = agent_and_frr("bfd-cease", "bfd: true");
    p.wait_established("tor", T);
    wait_our_bfd_up(&p, "BFD Up");
    let established_before = p.peer("tor")["established_count"].as_u64().unwrap();
    // FRR's BFD packets stop reaching us; BGP's TCP still flows both ways.
    let rule = format!("iptables -A OUTPUT -o {ri} -p udp --dport 3784 -j DROP");
    r.sh_ok(&rule);
    let silent = Instant::now();
    wait_until_or(
        "the session torn down",
        T,
        || {
            (p.peer("tor")["established_count"].as_u64() != Some(established_before)
                || p.peer("tor")["state"] != "Established")
                .then_some(())
        },
        || p.peer("tor").to_string(),
    );
    let took = silent.elapsed();
    eprintln!("session torn down {took:?} after BFD went quiet");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let peer = p.peer("tor");
    assert_eq!(peer["last_error"], "sent Cease: BFD Down (6/10)", "{peer}");
    let reason = frr.neighbor("198.51.100.2")["lastResetDueTo"].to_string();
    assert!(reason.contains("Notification received"), "FRR: {reason}");
    // BGP itself is healthy: without strict, the session comes back at once, and BFD with
    // it once its packets pass again.
    r.sh_ok(&rule.replace(" -A ", " -D "));
    p.wait_established("tor", T);
    petrel_tests::wait_gateways(&n, "198.18.0.0/16", &["198.51.100.1"], T);
    wait_our_bfd_up(&p, "BFD Up again");
}

/// Petrel restarts with graceful restart and BFD on; FRR trusts the C bit
/// (`check-control-plane-failure`): the BFD session going silent with the agent must not
/// make FRR drop the node's routes; they stay (stale) until Petrel is back.
#[test]
fn petrel_restart_with_bfd_keeps_its_routes_at_frr() {
    let dir = TestDir::new("bfd-gr-frr");
    let r = Netns::new("r");
    let n = Netns::new("n");
    link(&r, &["198.51.100.1/24"], &n, &["198.51.100.2/24"]);
    let mut frr = Frr::start(
        &r,
        &dir,
        "frr",
        "frr defaults traditional\nhostname r\nrouter bgp 65001\n bgp router-id 198.51.100.1\n no bgp ebgp-requires-policy\n bgp graceful-restart\n timers bgp 3 9\n neighbor 198.51.100.2 remote-as 65002\n neighbor 198.51.100.2 timers connect 1\n neighbor 198.51.100.2 bfd\n neighbor 198.51.100.2 bfd check-control-plane-failure\n!\n",
    );
    frr.start_bfdd(&r, "bfd\n!\n");
    let yaml = "node: { asn: 65002, router_id: 198.51.100.2, pod_cidrs: [10.244.2.0/24] }\npeers:\n  - { name: tor, address: 198.51.100.1, asn: 65001, hold_time: 9, connect_retry: 1, connect_retry_max: 2, bfd: true }\nbgp:\n  graceful_restart: { restart_time: 60 }\n";
    let mut p = petrel_tests::petrel::Petrel::start(&n, &dir, "petrel", yaml);
    p.wait_established("tor", T);
    let has = |f: &Frr| {
        f.try_vtysh("show bgp ipv4 unicast 10.244.2.0/24 json")
            .and_then(|o| serde_json::from_str::<serde_json::Value>(&o).ok())
            .is_some_and(|v| v["paths"].as_array().is_some_and(|a| !a.is_empty()))
    };
    wait_until_or(
        "FRR has the pod CIDR",
        T,
        || has(&frr).then_some(()),
        || frr.vtysh("show bgp ipv4 unicast"),
    );
    wait_until_or(
        "BFD up on both sides",
        T,
        || {
            (bfd_state(&p) == "Up"
                && frr
                    .try_vtysh("show bfd peers")
                    .is_some_and(|o| o.contains("Status: up")))
            .then_some(())
        },
        || frr.vtysh("show bfd peers"),
    );
    assert_eq!(p.peer("tor")["graceful_restart"], true);
    let st = p.daemon.stop(Duration::from_secs(10));
    assert!(st.is_some_and(|s| s.success()), "{st:?}");
    // Well past BFD's detection time (0.9 s): still there.
    let down = Instant::now();
    let mut polls = 0;
    while down.elapsed() < Duration::from_secs(3) {
        assert!(
            has(&frr),
            "FRR dropped the node's route {:?} after the agent stopped",
            down.elapsed()
        );
        polls += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(polls > 10);
    assert!(
        !frr.vtysh("show bfd peers").contains("Status: up"),
        "FRR's BFD session went down with the agent"
    );
    p.restart(&n, &dir);
    p.wait_established("tor", T);
    assert!(has(&frr));
    wait_our_bfd_up(&p, "BFD Up again");
}

#[test]
fn a_reload_with_new_bfd_intervals_renegotiates_without_a_flap() {
    let (_dir, _r, _n, _ri, frr, p) = agent_and_frr("bfd-reload", "bfd: { min_rx: 300 }");
    p.wait_established("tor", T);
    wait_our_bfd_up(&p, "BFD Up");
    let yaml = std::fs::read_to_string(&p.config).unwrap();
    std::fs::write(
        &p.config,
        yaml.replace("bfd: { min_rx: 300 }", "bfd: { min_rx: 600 }"),
    )
    .unwrap();
    p.daemon.hup();
    // FRR now sends every 600 ms, and we wait 3 x 600 ms.
    wait_until_or(
        "the new receive interval in force",
        T,
        || {
            let b = p.peer("tor")["bfd"].clone();
            (b["rx_ms"] == 600 && b["detection_ms"] == 1800).then_some(())
        },
        || p.peer("tor").to_string(),
    );
    let peer = p.peer("tor");
    assert_eq!(peer["bfd"]["flaps"], 0, "{peer}");
    assert_eq!(peer["bfd"]["state"], "Up", "{peer}");
    assert_eq!(peer["state"], "Established", "{peer}");
    assert!(frr.vtysh("show bfd peers").contains("Status: up"));
}

#[test]
fn multihop_bfd_with_frr() {
    let (_dir, _r, n, _ri, frr) = frr_bfdd(
        "bfd-mh",
        "198.51.100.1/24",
        "198.51.100.2/24",
        "bfd\n peer 198.51.100.2 multihop local-address 198.51.100.1\n  receive-interval 300\n  transmit-interval 300\n !\n!\n",
    );
    let ours = Ours::start(&n, v4_key(true), Config::default());
    ours.wait("our multihop session Up", |s| s.state == State::Up);
    wait_frr_bfd_up(&frr, "multihop");
    ours.wait("300 ms both ways", |s| {
        s.tx_us == 300_000 && s.detection_us == 900_000
    });
}

/// Five minutes at 300 ms x 3 beside two busy loops (one per core here): no false Down on
/// either side. Not in the default run, it takes five minutes (BFD_SOAK_SECS to change):
/// `cargo nextest run -p petrel-tests --test bfd --run-ignored only`.
#[test]
#[ignore]
fn five_minutes_beside_two_busy_loops_without_a_false_down() {
    let secs: u64 = std::env::var("BFD_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let dir = TestDir::new("bfd-soak");
    let r = Netns::new("r");
    let n = Netns::new("n");
    link(&r, &["198.51.100.1/24"], &n, &["198.51.100.2/24"]);
    let mut frr = Frr::start(&r, &dir, "frr", "frr defaults traditional\nhostname r\n!\n");
    frr.start_bfdd(
        &r,
        "bfd\n peer 198.51.100.2\n  receive-interval 300\n  transmit-interval 300\n  detect-multiplier 3\n !\n!\n",
    );
    let ours = Ours::start(&n, v4_key(false), Config::default());
    ours.wait("300 ms both ways", |s| {
        s.state == State::Up && s.detection_us == 900_000
    });
    let stop = Arc::new(AtomicBool::new(false));
    let spinners: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                    std::hint::black_box(x);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    for s in spinners {
        let _ = s.join();
    }
    let st = ours.last().unwrap();
    let counters = frr.vtysh("show bfd peers counters");
    eprintln!("after {secs} s: ours {st:?}\nFRR:\n{counters}");
    assert_eq!(st.state, State::Up);
    assert_eq!(st.flaps, 0, "false Down on our side");
    assert!(
        counters.contains("Session down events: 0"),
        "false Down at FRR:\n{counters}"
    );
}

/// eBGP multihop with BFD across a router in between (RFC 5883, port 4784): FRR's bgpd
/// makes a multihop BFD session of its own for the multihop neighbour, ours comes up
/// against it, and a silent link behind the middle router (ours is still up) ends the
/// BGP session within BFD's detection time.
#[test]
fn multihop_bfd_through_a_router_ends_the_session_when_the_far_link_goes_silent() {
    multihop_across_a_router("bfd-mh-bgp", false);
}

/// The same over iBGP with no `multihop:` set (iBGP between addresses a router apart, as
/// between loopbacks): the peer is on none of the node's subnets, so the session is
/// multihop by itself, as FRR's is.
#[test]
fn ibgp_across_a_router_gets_multihop_bfd_without_being_told() {
    multihop_across_a_router("bfd-mh-ibgp", true);
}

fn multihop_across_a_router(label: &str, ibgp: bool) {
    let dir = TestDir::new(label);
    let n = Netns::new("n");
    let m = Netns::new("m");
    let r = Netns::new("r");
    link(&m, &["198.51.100.1/24"], &n, &["198.51.100.2/24"]);
    let (_, ri) = link(&m, &["192.0.2.1/24"], &r, &["192.0.2.2/24"]);
    m.sysctl("net.ipv4.ip_forward", "1");
    n.ip("route add 192.0.2.0/24 via 198.51.100.1");
    r.ip("route add 198.51.100.0/24 via 192.0.2.1");
    let mut frr = Frr::start(
        &r,
        &dir,
        "frr",
        &format!(
            "frr defaults traditional\nhostname r\nrouter bgp 65001\n bgp router-id 192.0.2.2\n no bgp ebgp-requires-policy\n no bgp network import-check\n bgp graceful-restart-disable\n timers bgp 3 9\n neighbor 198.51.100.2 remote-as {}\n{} neighbor 198.51.100.2 timers connect 1\n neighbor 198.51.100.2 bfd\n address-family ipv4 unicast\n  network 198.18.0.0/16\n exit-address-family\n!\n",
            if ibgp { 65001 } else { 65002 },
            if ibgp {
                ""
            } else {
                " neighbor 198.51.100.2 ebgp-multihop 2\n"
            },
        ),
    );
    frr.start_bfdd(&r, "bfd\n!\n");
    let p = petrel_tests::petrel::Petrel::start(
        &n,
        &dir,
        "petrel",
        &format!(
            "node: {{ asn: {}, router_id: 198.51.100.2, pod_cidrs: [10.244.2.0/24] }}\npeers:\n  - {{ name: tor, address: 192.0.2.2, asn: 65001, {}hold_time: 9, connect_retry: 1, import: {{ prefixes: [{{ prefix: 0.0.0.0/0, le: 32 }}] }}, bfd: true }}\nbgp: {{ graceful_restart: {{ enabled: false }} }}\n",
            if ibgp { 65001 } else { 65002 },
            if ibgp { "" } else { "multihop: 2, " },
        ),
    );
    p.wait_established("tor", T);
    // The route's next hop 192.0.2.2 is not on a connected subnet: the kernel takes it
    // only once next hops resolve through the table (issue 11); the Loc-RIB has it.
    wait_until_or(
        "FRR's route in the Loc-RIB",
        T,
        || p.route("198.18.0.0/16").map(|_| ()),
        || p.routes().to_string(),
    );
    wait_our_bfd_up(&p, "BFD Up in petrel status");
    wait_frr_bfd_up(&frr, "multihop");
    let b = &p.peer("tor")["bfd"];
    assert_eq!(b["multihop"], true, "{b}");
    assert_eq!(b["detection_ms"], 900, "{b}");

    // Silence the router's own link, one hop away from the node: the node's link stays
    // up and quiet, only BFD can tell.
    silence(&r, &ri, true);
    let silent = Instant::now();
    wait_until_or(
        "the learned route out of the Loc-RIB",
        T,
        || p.route("198.18.0.0/16").is_none().then_some(()),
        || p.peer("tor").to_string(),
    );
    let took = silent.elapsed();
    eprintln!("multihop: route removed {took:?} after the far link went silent (hold 9 s)");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_eq!(p.peer("tor")["last_error"], "sent Cease: BFD Down (6/10)");
    silence(&r, &ri, false);
    p.wait_established("tor", T);
    wait_our_bfd_up(&p, "BFD Up again");
}
