//! What an attacker or an unlucky operator found: each test here failed before its fix.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use petrel_tests::petrel::Petrel;
use petrel_tests::{host, router_and_node};

const T: Duration = Duration::from_secs(30);

/// An OPEN from AS 65001, id 198.51.100.1, hold 90, with these optional parameters.
fn open(params: &[u8]) -> Vec<u8> {
    let mut body = vec![4, 0xfd, 0xe9, 0, 90, 198, 51, 100, 1, params.len() as u8];
    body.extend_from_slice(params);
    let mut m = vec![0xff; 16];
    m.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
    m.push(1);
    m.extend_from_slice(&body);
    m
}

/// Connect from `ns` to `addr`:179, send `msg`, and return the first message answered
/// (header and body).
fn exchange(ns: &str, addr: &str, msg: Vec<u8>) -> Vec<u8> {
    let addr = format!("{addr}:179");
    host::in_netns(ns, move || {
        let mut s = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(5))
            .expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&msg).unwrap();
        // Our OPEN first, then the NOTIFICATION: read until a NOTIFICATION or the end.
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
            let mut off = 0;
            while off + 19 <= all.len() {
                let len = u16::from_be_bytes([all[off + 16], all[off + 17]]) as usize;
                if off + len > all.len() || len < 19 {
                    break;
                }
                if all[off + 18] == 3 {
                    return all[off..off + len].to_vec();
                }
                off += len;
            }
        }
        all
    })
    .unwrap()
}

#[test]
fn open_with_an_unknown_optional_parameter_gets_2_4() {
    let (dir, r, n) = router_and_node("open-param");
    // Passive: the test's raw speaker connects.
    let p = Petrel::start(
        &n,
        &dir,
        "petrel",
        "node: { asn: 65002, router_id: 198.51.100.2, pod_cidrs: [10.244.2.0/24] }\npeers:\n  - { name: tor, address: 198.51.100.1, asn: 65001, passive: true }\n",
    );
    for params in [vec![9u8, 1, 0], vec![1, 2, 0, 0]] {
        let n = exchange(&r.name, "198.51.100.2", open(&params));
        assert!(n.len() >= 21 && n[18] == 3, "a NOTIFICATION: {n:?}");
        assert_eq!(
            (n[19], n[20]),
            (2, 4),
            "RFC 4271 6.2: Unsupported Optional Parameter for {params:?}"
        );
    }
    let _ = T;
    drop(p);
}

/// A peer offers, besides one good route, every kind of nonsense: martian prefixes, next
/// hops on loopback, link-local or reserved addresses or on our own addresses, routes inside
/// the peering subnet, a host route for the peer itself via another host (which, installed,
/// sends the session's own packets elsewhere), and IPv6 routes over the IPv4 session whose
/// next hop is our own IPv6 address. Only the good route may reach the kernel, the session
/// must stay up, and each other route shows why it was refused.
#[test]
fn martians_and_bad_next_hops_are_refused_with_the_reason_shown() {
    use petrel_bgp::wire::{AsPath, NextHop, PathAttrs, Reach, UpdateMsg};
    use petrel_tests::raw_peer::RawPeer;
    let (dir, r, n) = router_and_node("martians");
    // The node has an IPv6 address on another link: routes via it are routes via us.
    n.ip("addr add 2001:db8:2::2/64 dev lo");
    let v4 = |nh: &str, prefixes: &[&str]| Reach {
        afi: petrel_bgp::wire::Afi::Ipv4,
        next_hop: NextHop::V4(nh.parse().unwrap()),
        prefixes: prefixes.iter().map(|p| p.parse().unwrap()).collect(),
    };
    let v6 = |nh: &str, prefixes: &[&str]| Reach {
        afi: petrel_bgp::wire::Afi::Ipv6,
        next_hop: NextHop::V6 {
            global: nh.parse().unwrap(),
            link_local: None,
        },
        prefixes: prefixes.iter().map(|p| p.parse().unwrap()).collect(),
    };
    let update = |reach: Reach| UpdateMsg {
        reach: vec![reach],
        attrs: PathAttrs {
            as_path: AsPath::sequence(vec![65001]),
            ..Default::default()
        },
        ..Default::default()
    };
    let updates = vec![
        update(v4("198.51.100.1", &["198.18.0.0/16"])),
        update(v4(
            "198.51.100.1",
            &[
                "127.0.0.0/8",
                "224.0.0.0/4",
                "255.255.255.255/32",
                "169.254.0.0/16",
                "240.0.0.0/4",
                "0.0.0.0/8",
                "198.51.100.0/25",
                "198.51.100.0/24",
            ],
        )),
        update(v4("198.51.100.3", &["198.51.100.1/32"])),
        update(v4("127.0.0.1", &["203.0.113.0/24"])),
        update(v4("169.254.0.1", &["203.0.116.0/24"])),
        update(v4("240.0.0.1", &["203.0.117.0/24"])),
        update(v4("198.51.100.2", &["203.0.115.0/24"])),
        update(v6("2001:db8:2::2", &["2001:db8:99::/48"])),
        update(v6("::1", &["2001:db8:98::/48"])),
        update(v6("fe80::1", &["2001:db8:97::/48"])),
        update(v6("2001:db8:1::1", &["fe80::/64", "ff02::/16", "::1/128"])),
    ];
    use petrel_tests::raw_peer::raw_update;
    let ff02: [u8; 16] = "ff02::".parse::<std::net::Ipv6Addr>().unwrap().octets();
    let nh6: [u8; 16] = "2001:db8:1::1"
        .parse::<std::net::Ipv6Addr>()
        .unwrap()
        .octets();
    let raw = vec![
        raw_update(
            65001,
            Some([198, 51, 100, 1]),
            None,
            &[(&[224, 0, 0, 0], 4), (&[255, 255, 255, 255], 32)],
        ),
        raw_update(65001, None, Some(nh6), &[(&ff02, 16)]),
    ];
    let _peer = RawPeer::start(
        &r.name,
        "198.51.100.1:179".parse().unwrap(),
        65001,
        [198, 51, 100, 1],
        updates,
        raw,
    );
    let yaml = "node: { asn: 65002, router_id: 198.51.100.2, pod_cidrs: [10.244.2.0/24] }\npeers:\n  - { name: tor, address: 198.51.100.1, asn: 65001, hold_time: 3, connect_retry: 1, families: [ipv4, ipv6], import: { prefixes: [{ prefix: 0.0.0.0/0, le: 32 }, { prefix: \"::/0\", le: 128 }] } }\n";
    let p = Petrel::start(&n, &dir, "petrel", yaml);
    p.wait_established("tor", T);
    petrel_tests::wait_gateways(&n, "198.18.0.0/16", &["198.51.100.1"], T);
    let bad: &[(&str, &str)] = &[
        ("127.0.0.0/8", "martian"),
        ("224.0.0.0/4", "martian"),
        ("255.255.255.255/32", "martian"),
        ("169.254.0.0/16", "martian"),
        ("240.0.0.0/4", "martian"),
        ("0.0.0.0/8", "martian"),
        ("fe80::/64", "martian"),
        ("ff02::/16", "martian"),
        ("::1/128", "martian"),
        ("198.51.100.0/25", "connected"),
        ("198.51.100.0/24", "connected"),
        ("198.51.100.1/32", "connected"),
        ("203.0.113.0/24", "unusable next hop"),
        ("203.0.116.0/24", "unusable next hop"),
        ("203.0.117.0/24", "unusable next hop"),
        ("2001:db8:98::/48", "unusable next hop"),
        ("2001:db8:97::/48", "unusable next hop"),
        ("203.0.115.0/24", "our addresses"),
        ("2001:db8:99::/48", "our addresses"),
    ];
    petrel_tests::wait_until_or(
        "every offered route in the RIB",
        T,
        || {
            bad.iter()
                .all(|(pfx, _)| p.route(pfx).is_some())
                .then_some(())
        },
        || p.routes().to_string(),
    );
    for (pfx, why) in bad {
        let route = p.route(pfx).unwrap();
        let path = &route["paths"][0];
        assert_eq!(path["accepted"], false, "{pfx}: {route}");
        assert!(
            path["refused"].as_str().unwrap_or("").contains(why),
            "{pfx} refused for {why:?}: {route}"
        );
        assert_eq!(route["in_fib"], false, "{pfx}");
    }
    // Several hold times later the session is still the first one: nothing rerouted it.
    std::thread::sleep(Duration::from_secs(7));
    let tor = p.peer("tor");
    assert_eq!(tor["state"], "Established", "{tor}");
    assert_eq!(tor["established_count"], 1, "{tor}");
    // The kernel has the good route and nothing else from the peer.
    let learned: Vec<String> = n
        .routes4("proto 200")
        .lines()
        .chain(n.routes6("proto 200").lines())
        .filter(|l| !l.starts_with("blackhole"))
        .map(String::from)
        .collect();
    assert_eq!(learned.len(), 1, "{learned:?}");
    let refused = tor["prefixes"]["refused"].clone();
    assert_eq!(refused["martian"], 9, "{refused}");
    assert_eq!(refused["inside_connected_subnet"], 3, "{refused}");
    assert_eq!(refused["bad_next_hop"], 5, "{refused}");
    assert_eq!(refused["next_hop_is_us"], 2, "{refused}");
    drop(p);
}

fn node_yaml(socket: &std::path::Path) -> String {
    format!(
        "node: {{ asn: 65002, router_id: 198.51.100.2, pod_cidrs: [10.244.2.0/24] }}\npeers:\n  - {{ name: tor, address: 198.51.100.1, asn: 65001, passive: true }}\ncontrol: {{ socket: {} }}\nbgp: {{ graceful_restart: {{ enabled: false }} }}\n",
        socket.display()
    )
}

/// Start `petrel run` with `yaml` in `ns` and wait for it to exit; its status and output.
fn run_to_exit(
    ns: &petrel_tests::Netns,
    dir: &petrel_tests::TestDir,
    name: &str,
    yaml: &str,
) -> (Option<i32>, String) {
    let cfg = dir.write(&format!("{name}.yaml"), yaml);
    let log = dir.file(&format!("{name}.log"));
    let mut d = ns.spawn(
        name,
        &[
            petrel_tests::bin("petrel").to_str().unwrap(),
            "run",
            "--config",
            cfg.to_str().unwrap(),
        ],
        &log,
    );
    petrel_tests::wait_until("the agent to exit", T, || (!d.is_running()).then_some(()));
    let code = d.stop(Duration::from_secs(1)).and_then(|s| s.code());
    (code, std::fs::read_to_string(&log).unwrap_or_default())
}

#[test]
fn the_control_socket_is_never_taken_from_a_running_agent_nor_a_file_deleted() {
    let (dir, _r, n) = router_and_node("ctl-sock");
    // The harness gives the first agent its own `--socket`; the second is pointed at it.
    let first = Petrel::start(&n, &dir, "first", &node_yaml(&dir.file("unused.sock")));
    let sock = first.socket.clone();
    let before = first.status();
    // A second agent given the same socket path refuses to start and leaves the first one
    // (its socket, its routes) alone.
    let (code, log) = run_to_exit(&n, &dir, "second", &node_yaml(&sock));
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("another agent answers on"), "{log}");
    let after = first.status();
    assert_eq!(after["node"], before["node"]);
    assert!(n.routes4("proto 200").contains("blackhole 10.244.2.0/24"));
    // A regular file where the socket should be is not deleted.
    let file = dir.write("not-a-socket", "precious\n");
    let (code, log) = run_to_exit(&n, &dir, "third", &node_yaml(&file));
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("is not a socket"), "{log}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious\n");
    drop(first);
    // A stale socket (its agent gone) is replaced.
    let stale = dir.file("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let p = Petrel::start(&n, &dir, "fourth", &node_yaml(&stale));
    assert_eq!(p.status()["node"]["asn"], 65002);
}

#[test]
fn a_failed_start_leaves_no_route_behind() {
    let (dir, _r, n) = router_and_node("failed-start");
    // The metrics address is not the node's: the agent has installed its blackholes and
    // started its speaker when binding it fails.
    let yaml = node_yaml(&dir.file("a.sock")) + "metrics: { address: \"192.0.2.99:9179\" }\n";
    let (code, log) = run_to_exit(&n, &dir, "agent", &yaml);
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("metrics endpoint on 192.0.2.99:9179"), "{log}");
    let left = n.routes4("proto 200") + &n.routes6("proto 200");
    assert!(left.trim().is_empty(), "routes left behind:\n{left}\n{log}");
}

#[test]
fn a_pod_cidr_on_a_subnet_of_the_node_is_refused_at_start() {
    let (dir, _r, n) = router_and_node("pod-overlap");
    // 198.51.100.0/24 is the node's own link.
    let yaml = node_yaml(&dir.file("a.sock")).replace("10.244.2.0/24", "198.51.100.128/25");
    let (code, log) = run_to_exit(&n, &dir, "agent", &yaml);
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("pod CIDR 198.51.100.128/25 overlaps 198.51.100.2/24"),
        "{log}"
    );
    assert!(n.routes4("proto 200").trim().is_empty());
}

#[test]
fn a_failed_reload_is_shown_until_a_good_one() {
    let (dir, _r, n) = router_and_node("reload");
    let sock = dir.file("agent.sock");
    let p = Petrel::start(&n, &dir, "agent", &node_yaml(&sock));
    // A peer whose key file is missing: the reload fails, the old config runs.
    let bad = node_yaml(&sock).replace(
        "passive: true }",
        &format!(
            "passive: true, password_file: {} }}",
            dir.file("missing.key").display()
        ),
    );
    std::fs::write(&p.config, &bad).unwrap();
    p.daemon.hup();
    let w = petrel_tests::wait_until_or(
        "the failed reload in status",
        T,
        || {
            let st = p.status();
            st["warnings"].as_array().and_then(|w| {
                w.iter()
                    .find(|x| x.as_str().unwrap_or("").contains("the last reload failed"))
                    .cloned()
            })
        },
        || p.status().to_string(),
    );
    // The whole chain: where, and what.
    assert!(w.as_str().unwrap().contains("missing.key"), "{w}");
    assert!(p.log_text().contains("missing.key"), "{}", p.log_text());
    std::fs::write(&p.config, node_yaml(&sock)).unwrap();
    p.daemon.hup();
    petrel_tests::wait_until_or(
        "the warning gone after a good reload",
        T,
        || (!p.status()["warnings"].to_string().contains("reload failed")).then_some(()),
        || p.status().to_string(),
    );
}

/// Raise this process's soft descriptor limit to the hard one (the flood needs thousands).
fn raise_own_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain struct in and out.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn a_flood_of_idle_connections_starves_neither_bgp_nor_health_nor_status() {
    use petrel_tests::{Netns, TestDir, link, wait_until_or};
    raise_own_fd_limit();
    let dir = TestDir::new("fd-flood");
    let r = Netns::new("r");
    let n = Netns::new("n");
    let (ri, _) = link(&r, &["198.51.100.1/24"], &n, &["198.51.100.2/24"]);
    // Twenty attackers beside the router.
    let sources: Vec<String> = (10..30).map(|i| format!("198.51.100.{i}")).collect();
    for s in &sources {
        r.ip(&format!("addr add {s}/24 dev {ri}"));
    }
    let yaml = "node: { asn: 65002, router_id: 198.51.100.2, pod_cidrs: [10.244.2.0/24] }\npeers:\n  - { name: tor, address: 198.51.100.1, asn: 65001, hold_time: 3, passive: true, import: { prefixes: [{ prefix: 0.0.0.0/0, le: 32 }] } }\nmetrics: { address: \"0.0.0.0:9179\" }\n";
    // The agent gets a small descriptor limit it cannot raise: 512.
    let p = Petrel::start_wrapped(
        &n,
        &dir,
        "petrel",
        yaml,
        &["prlimit", "--nofile=512:512", "--"],
    );
    let pid = p.daemon.pid().expect("agent pid");
    let baseline = open_fds(pid);

    // 2,000 idle TCP connections to the metrics port from the network (100 from each
    // source), 1,000 idle connections to the control socket, all held.
    let metrics_flood: Vec<std::net::TcpStream> = host::in_netns(&r.name, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut held = Vec::new();
            for s in &sources {
                for _ in 0..100 {
                    let sock = tokio::net::TcpSocket::new_v4().unwrap();
                    sock.bind(format!("{s}:0").parse().unwrap()).unwrap();
                    if let Ok(Ok(c)) = tokio::time::timeout(
                        Duration::from_secs(2),
                        sock.connect("198.51.100.2:9179".parse().unwrap()),
                    )
                    .await
                    {
                        held.push(c.into_std().unwrap());
                    }
                }
            }
            held
        })
    })
    .unwrap();
    let control_flood: Vec<std::os::unix::net::UnixStream> = (0..1000)
        .filter_map(|_| std::os::unix::net::UnixStream::connect(&p.socket).ok())
        .collect();
    eprintln!(
        "holding {} metrics and {} control connections; agent fds {baseline} before, {} now",
        metrics_flood.len(),
        control_flood.len(),
        open_fds(pid)
    );
    assert!(metrics_flood.len() > 1000, "the flood itself failed");

    // The configured peer comes now, and establishes.
    let bird = petrel_tests::bird::Bird::start(
        &r,
        &dir,
        "bird",
        "router id 198.51.100.1;\nprotocol device {}\nprotocol static { ipv4; route 203.0.113.0/24 blackhole; }\nprotocol bgp tor {\n  local 198.51.100.1 as 65001;\n  neighbor 198.51.100.2 as 65002;\n  connect delay time 1;\n  connect retry time 1;\n  hold time 3;\n  ipv4 { import all; export all; };\n}\n",
    );
    bird.wait_established("tor", T);
    p.wait_established("tor", T);
    petrel_tests::wait_gateways(&n, "203.0.113.0/24", &["198.51.100.1"], T);
    // The node's own health check still answers during the flood.
    let health = petrel_tests::http_get(&n, "127.0.0.1", 9179, "/healthz");
    assert!(health.contains("200 OK"), "{health}");
    let fds = open_fds(pid);
    assert!(
        fds < 250,
        "the agent holds {fds} descriptors under the flood"
    );
    let metrics = petrel_tests::http_get(&n, "127.0.0.1", 9179, "/metrics");
    let refused: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("petrel_http_connections_refused_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no refusal counter in {metrics}"));
    assert!(refused >= 1000.0, "refused {refused}");

    // The flood gives up; status answers again at once.
    drop(control_flood);
    drop(metrics_flood);
    wait_until_or(
        "status after the flood",
        T,
        || p.try_status().map(|_| ()),
        || p.daemon.log_tail(30),
    );
    assert!(
        !p.log_text().contains("Too many open files"),
        "{}",
        p.daemon.log_tail(30)
    );
}
