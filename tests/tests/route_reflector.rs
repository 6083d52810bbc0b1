//! Petrel as a route reflector (RFC 4456) for BIRD, FRR and GoBGP clients on one LAN, as a
//! redundant pair of reflectors with one cluster id: every client holds the others'
//! prefixes with ORIGINATOR_ID and CLUSTER_LIST (seen with the clients' own CLIs), each
//! reflector drops what the other reflects back into the cluster, and the clients keep
//! every route while one reflector is killed.

use std::time::Duration;

use petrel_tests::bird::{self, Bird};
use petrel_tests::frr::Frr;
use petrel_tests::gobgp::Gobgp;
use petrel_tests::petrel::Petrel;
use petrel_tests::{Netns, TestDir, bridge, plug, wait_until_or};

const T: Duration = Duration::from_secs(30);
const CLUSTER: &str = "198.18.0.1";
/// (name, address, the /24 it originates)
const CLIENTS: [(&str, &str, &str); 3] = [
    ("bird", "192.0.2.2", "10.10.2.0/24"),
    ("frr", "192.0.2.3", "10.10.3.0/24"),
    ("gobgp", "192.0.2.4", "10.10.4.0/24"),
];
const RR: [(&str, &str, &str); 2] = [
    ("rr1", "192.0.2.1", "10.244.1.0/24"),
    ("rr2", "192.0.2.5", "10.244.5.0/24"),
];

fn reflector_yaml(me: usize) -> String {
    let (_, addr, cidr) = RR[me];
    let (other, other_addr, _) = RR[1 - me];
    let mut y = format!(
        "node: {{ asn: 65000, router_id: {addr}, pod_cidrs: [{cidr}] }}\nbgp: {{ cluster_id: {CLUSTER}, graceful_restart: {{ enabled: false }} }}\npeers:\n"
    );
    for (name, a, _) in CLIENTS {
        y.push_str(&format!(
            "  - {{ name: {name}, address: {a}, asn: 65000, route_reflector_client: true, hold_time: 9, connect_retry: 1 }}\n"
        ));
    }
    y.push_str(&format!(
        "  - {{ name: {other}, address: {other_addr}, asn: 65000, hold_time: 9, connect_retry: 1 }}\n"
    ));
    y
}

fn bird_conf() -> String {
    let mut c = format!(
        "router id 192.0.2.2;\nprotocol device {{}}\nprotocol static {{ ipv4; route 10.10.2.0/24 blackhole; }}\ntemplate bgp tpl {{ local as 65000; direct; hold time 9; {} ipv4 {{ import all; export where source = RTS_STATIC; }}; }}\n",
        bird::FAST
    );
    for (name, a, _) in RR {
        c.push_str(&format!(
            "protocol bgp {name} from tpl {{ neighbor {a} as 65000; }}\n"
        ));
    }
    c
}

fn frr_conf() -> String {
    let mut c = String::from(
        "frr defaults traditional\nhostname frr\nrouter bgp 65000\n bgp router-id 192.0.2.3\n no bgp ebgp-requires-policy\n no bgp network import-check\n timers bgp 3 9\n",
    );
    for (_, a, _) in RR {
        c.push_str(&format!(
            " neighbor {a} remote-as 65000\n neighbor {a} timers connect 1\n"
        ));
    }
    c.push_str(" address-family ipv4 unicast\n  network 10.10.3.0/24\n exit-address-family\n!\n");
    c
}

fn gobgp_toml() -> String {
    let mut t = String::from(
        "[global.config]\n  as = 65000\n  router-id = \"192.0.2.4\"\n  local-address-list = [\"192.0.2.4\"]\n",
    );
    for (_, a, _) in RR {
        t.push_str(&format!(
            "\n[[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{a}\"\n    peer-as = 65000\n  [neighbors.timers.config]\n    hold-time = 9\n    keepalive-interval = 3\n    connect-retry = 1\n  [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"ipv4-unicast\"\n"
        ));
    }
    t
}

/// What one client sees of a prefix: (paths, every path's ORIGINATOR_ID, every path's
/// CLUSTER_LIST), from its own CLI.
struct Seen {
    paths: usize,
    originators: Vec<String>,
    cluster_lists: Vec<Vec<String>>,
}

fn bird_sees(b: &Bird, prefix: &str) -> Seen {
    let out = b
        .try_birdc(&format!("show route {prefix} all"))
        .unwrap_or_default();
    let field = |name: &str| -> Vec<String> {
        out.lines()
            .filter_map(|l| l.trim().strip_prefix(name))
            .map(|v| v.trim().to_string())
            .collect()
    };
    Seen {
        paths: out.matches("[rr").count(),
        originators: field("BGP.originator_id:"),
        cluster_lists: field("BGP.cluster_list:")
            .into_iter()
            .map(|l| l.split_whitespace().map(str::to_string).collect())
            .collect(),
    }
}

/// The strings of a JSON array (none if it is not one).
fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|l| {
            l.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn frr_sees(f: &Frr, prefix: &str) -> Seen {
    let v: serde_json::Value = f
        .try_vtysh(&format!("show bgp ipv4 unicast {prefix} json"))
        .and_then(|o| serde_json::from_str(&o).ok())
        .unwrap_or_default();
    let paths = v["paths"].as_array().cloned().unwrap_or_default();
    Seen {
        paths: paths.len(),
        originators: paths
            .iter()
            .filter_map(|p| p["originatorId"].as_str().map(str::to_string))
            .collect(),
        cluster_lists: paths
            .iter()
            .map(|p| strings(&p["clusterList"]["list"]))
            .collect(),
    }
}

fn gobgp_sees(g: &Gobgp, prefix: &str) -> Seen {
    let rib = g.rib("ipv4");
    let paths = rib[prefix].as_array().cloned().unwrap_or_default();
    let attr = |p: &serde_json::Value, ty: u64| -> Option<serde_json::Value> {
        p["attrs"]
            .as_array()?
            .iter()
            .find(|a| a["type"].as_u64() == Some(ty))
            .cloned()
    };
    Seen {
        paths: paths.len(),
        originators: paths
            .iter()
            .filter_map(|p| attr(p, 9))
            .filter_map(|a| a["value"].as_str().map(str::to_string))
            .collect(),
        cluster_lists: paths
            .iter()
            .filter_map(|p| attr(p, 10))
            .map(|a| strings(&a["value"]))
            .collect(),
    }
}

#[test]
fn petrel_reflects_between_bird_frr_and_gobgp_as_a_redundant_pair() {
    let dir = TestDir::new("rr");
    let lan = Netns::new("lan");
    bridge(&lan, "br0", &[]);
    let ns: Vec<Netns> = ["rr1", "rr2", "bird", "frr", "gobgp"]
        .iter()
        .map(|n| Netns::new(n))
        .collect();
    let addrs = [RR[0].1, RR[1].1, CLIENTS[0].1, CLIENTS[1].1, CLIENTS[2].1];
    for (n, a) in ns.iter().zip(addrs) {
        plug(&lan, "br0", n, &[&format!("{a}/24")]);
    }
    let b = Bird::start(&ns[2], &dir, "bird", &bird_conf());
    let f = Frr::start(&ns[3], &dir, "frr", &frr_conf());
    let g = Gobgp::start(&ns[4], &dir, "gobgp", &gobgp_toml());
    g.cli("global rib add 10.10.4.0/24 -a ipv4");
    let mut rr1 = Petrel::start(&ns[0], &dir, "rr1", &reflector_yaml(0));
    let rr2 = Petrel::start(&ns[1], &dir, "rr2", &reflector_yaml(1));
    for p in [&rr1, &rr2] {
        for peer in ["bird", "frr", "gobgp"] {
            p.wait_established(peer, T);
        }
    }
    rr1.wait_established("rr2", T);

    // Every client holds every other client's prefix, once through each reflector, with
    // the originating client's router id and our cluster id.
    let check = |want_paths: usize| {
        for (client, _, _) in CLIENTS {
            for (other, other_addr, prefix) in CLIENTS {
                if other == client {
                    continue;
                }
                let what =
                    format!("{client} holds {other}'s {prefix} through {want_paths} reflector(s)");
                let seen = || match client {
                    "bird" => bird_sees(&b, prefix),
                    "frr" => frr_sees(&f, prefix),
                    _ => gobgp_sees(&g, prefix),
                };
                wait_until_or(
                    &what,
                    T,
                    || {
                        let s = seen();
                        (s.paths == want_paths
                            && s.originators.len() == want_paths
                            && s.originators.iter().all(|o| o == other_addr)
                            && s.cluster_lists.len() == want_paths
                            && s.cluster_lists.iter().all(|l| l == &[CLUSTER.to_string()]))
                        .then_some(())
                    },
                    || {
                        let s = seen();
                        format!(
                            "paths {} originators {:?} cluster lists {:?}\nbird:\n{}\nfrr:\n{}\ngobgp:\n{}",
                            s.paths,
                            s.originators,
                            s.cluster_lists,
                            b.birdc(&format!("show route {prefix} all")),
                            f.vtysh(&format!("show bgp ipv4 unicast {prefix}")),
                            g.cli("global rib -a ipv4"),
                        )
                    },
                );
            }
        }
    };
    check(2);
    // A reflector's own pod CIDR reaches each client from that reflector as its own
    // route, and from the other one reflected (non-client to client), with the owner as
    // ORIGINATOR_ID.
    for (client, _, _) in CLIENTS {
        for (_, rr_addr, cidr) in RR {
            let s = match client {
                "bird" => bird_sees(&b, cidr),
                "frr" => frr_sees(&f, cidr),
                _ => gobgp_sees(&g, cidr),
            };
            assert_eq!(
                (s.paths, s.originators.clone()),
                (2, vec![rr_addr.to_string()]),
                "{client}: {cidr}"
            );
        }
    }

    // What each reflector sends the other carries our cluster id: dropped on arrival
    // (RFC 4456 8), counted as such; only the other reflector's own pod CIDR is taken.
    for (p, other) in [(&rr1, "rr2"), (&rr2, "rr1")] {
        wait_until_or(
            &format!("the client routes from {other} refused as a cluster loop"),
            T,
            || {
                let v = p.peer(other);
                (v["prefixes"]["refused"]["cluster_loop"] == 3 && v["prefixes"]["accepted"] == 1)
                    .then_some(())
            },
            || p.peer(other).to_string(),
        );
    }

    // One reflector dies: every client keeps every route, through the other.
    rr1.daemon.kill();
    check(1);
    drop(rr2);
}

/// Dynamic peers: four BIRD clients on a LAN connect to a Petrel reflector that knows
/// only their range (`peer_ranges`, max 3). Three are taken, each appears in status as
/// `clients/ADDRESS`, and each holds the other two's prefixes; the fourth is refused.
/// When one client stops, its peer disappears with its routes, and the fourth gets in.
/// The reflector runs no pods: `pod_cidrs: []`.
#[test]
fn dynamic_peers_from_a_range_with_a_cap() {
    let dir = TestDir::new("rr-dyn");
    let lan = Netns::new("lan");
    bridge(&lan, "br0", &[]);
    let rr = Netns::new("rr");
    plug(&lan, "br0", &rr, &["198.18.0.1/15"]);
    let mut birds = Vec::new();
    for i in 2..6u8 {
        let ns = Netns::new(&format!("c{i}"));
        plug(&lan, "br0", &ns, &[&format!("198.18.0.{i}/15")]);
        let conf = format!(
            "router id 198.18.0.{i};\nprotocol device {{}}\nprotocol static {{ ipv4; route 10.20.{i}.0/24 blackhole; }}\nprotocol bgp refl {{ local as 65000; neighbor 198.18.0.1 as 65000; direct; hold time 9; {} ipv4 {{ import all; export where source = RTS_STATIC; }}; }}\n",
            bird::FAST
        );
        let b = Bird::start(&ns, &dir, &format!("bird{i}"), &conf);
        birds.push((i, ns, Some(b)));
    }
    let p = Petrel::start(
        &rr,
        &dir,
        "petrel",
        "node: { asn: 65000, router_id: 198.18.0.1, pod_cidrs: [] }\nbgp:\n  cluster_id: 198.18.0.1\n  graceful_restart: { enabled: false }\npeer_ranges:\n  - { name: clients, range: 198.18.0.0/15, asn: 65000, route_reflector_client: true, max_peers: 3, hold_time: 30 }\n",
    );
    let established = |p: &Petrel| -> Vec<String> {
        p.status()["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| v["state"] == "Established")
            .filter_map(|v| v["name"].as_str().map(str::to_string))
            .collect()
    };
    let three = wait_until_or(
        "three dynamic peers Established",
        T,
        || {
            let e = established(&p);
            (e.len() == 3).then_some(e)
        },
        || p.status().to_string(),
    );
    assert!(
        three.iter().all(|n| n.starts_with("clients/198.18.0.")),
        "{three:?}"
    );
    assert_eq!(p.peer(&three[0])["route_reflector_client"], true);
    wait_until_or(
        "the fourth refused",
        T,
        || {
            p.log_text()
                .contains("connection refused: the range has its maximum of peers")
                .then_some(())
        },
        || p.status().to_string(),
    );
    let inside = |i: &u8| three.contains(&format!("clients/198.18.0.{i}"));
    let (ins, out): (Vec<u8>, Vec<u8>) = (2..6u8).partition(inside);
    let holds = |b: &Bird, i: u8| b.has_route(&format!("10.20.{i}.0/24"));
    for (i, _, b) in &birds {
        if !ins.contains(i) {
            continue;
        }
        let b = b.as_ref().unwrap();
        for j in &ins {
            if j != i {
                wait_until_or(
                    &format!("client {i} holds client {j}'s prefix"),
                    T,
                    || holds(b, *j).then_some(()),
                    || b.birdc("show route all"),
                );
            }
        }
        assert!(!holds(b, out[0]), "nothing from the refused client");
    }

    // One client stops: its peer and its prefix go, and the refused one comes in.
    let gone = ins[0];
    let idx = birds.iter().position(|(i, _, _)| *i == gone).unwrap();
    birds[idx].2 = None;
    let name = format!("clients/198.18.0.{gone}");
    wait_until_or(
        "the stopped client's peer gone from status",
        T,
        || {
            let s = p.status();
            let names: Vec<&str> = s["peers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v["name"].as_str())
                .collect();
            (!names.contains(&name.as_str())).then_some(())
        },
        || p.status().to_string(),
    );
    assert!(
        p.route(&format!("10.20.{gone}.0/24")).is_none(),
        "its routes went with it"
    );
    let fourth = format!("clients/198.18.0.{}", out[0]);
    wait_until_or(
        "the fourth client taken once there is room",
        T,
        || established(&p).contains(&fourth).then_some(()),
        || p.status().to_string(),
    );
    let other = ins[1];
    let b = birds
        .iter()
        .find(|(i, _, _)| *i == other)
        .unwrap()
        .2
        .as_ref()
        .unwrap();
    wait_until_or(
        "a remaining client holds the newcomer's prefix and not the gone one's",
        T,
        || (holds(b, out[0]) && !holds(b, gone)).then_some(()),
        || b.birdc("show route all"),
    );
}
