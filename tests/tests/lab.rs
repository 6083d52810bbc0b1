//! The lab end to end: `petrel-lab up` builds a rack (a router, nodes running `petrel run`,
//! pods made by `petrel-cni`), and this test checks, with its own probes, the four rules of
//! the Kubernetes network model over IPv4 and IPv6, the routing underneath, what happens
//! when an agent dies and comes back, and what deleting a pod frees.

use std::collections::HashSet;
use std::mem::ManuallyDrop;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use petrel_tests::cni::{Listener, connect};
use petrel_tests::{Netns, TestDir, bin, require_root, require_tool, unique_id, wait_until_or};
use serde_json::Value;

/// The lab's hold time (seconds), from its agents' config.
const HOLD_TIME: u64 = 9;

/// One lab under a unique prefix and state directory; `down` when dropped.
struct Lab {
    prefix: String,
    dir: TestDir,
}

impl Lab {
    fn new() -> Lab {
        require_root();
        // Unique per test run, and short: lowercase letters and digits.
        let prefix = format!("t{}", unique_id());
        Lab {
            prefix,
            dir: TestDir::new("lab"),
        }
    }

    fn state(&self) -> PathBuf {
        self.dir.path.join("state")
    }

    fn cmd(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_petrel-lab"))
            .args(["--prefix", &self.prefix, "--state-dir"])
            .arg(self.state())
            .args(args)
            .output()
            .expect("run petrel-lab")
    }

    /// Run and insist on success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args);
        assert!(
            out.status.success(),
            "petrel-lab {args:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).expect("petrel-lab JSON")
    }

    fn ns(&self, name: &str) -> ManuallyDrop<Netns> {
        // The lab owns its namespaces (and removes them on `down`): no guard of ours.
        ManuallyDrop::new(Netns {
            name: format!("{}-{name}", self.prefix),
        })
    }

    fn node_dir(&self, node: &str) -> PathBuf {
        self.state().join(node)
    }

    fn namespaces(&self) -> Vec<String> {
        petrel_tests::netns_names()
            .into_iter()
            .filter(|n| n.starts_with(&format!("{}-", self.prefix)))
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let out = self.cmd(&["down"]);
        if !out.status.success() {
            eprintln!("petrel-lab down: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
}

/// The global addresses on eth0 of a namespace, read there (IPv4 first).
fn eth0(ns: &Netns) -> Vec<IpAddr> {
    let v: Value = serde_json::from_str(&ns.ip("-j addr show dev eth0")).expect("ip -j addr");
    let mut out: Vec<IpAddr> = v[0]["addr_info"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["scope"] == "global")
        .filter_map(|a| a["local"].as_str()?.parse().ok())
        .collect();
    out.sort_by_key(|a| a.is_ipv6());
    out
}

fn pid(file: &Path) -> i32 {
    std::fs::read_to_string(file)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid")
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, r)| r.trim_start().to_string()))
        .is_some_and(|r| !r.starts_with('Z'))
}

/// Each FIB line of protocol 200 in `ns`, both families.
fn fib(ns: &Netns) -> String {
    format!(
        "{}{}",
        ns.ip("-4 route show proto 200"),
        ns.ip("-6 route show proto 200")
    )
}

fn birdc(lab: &Lab, cmd: &str) -> String {
    let out = Command::new("birdc")
        .arg("-s")
        .arg(lab.state().join("router/bird.ctl"))
        .args(cmd.split_whitespace())
        .output()
        .expect("birdc");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Connect from `from` to a fresh listener in `to` at `dst`; the listener records the
/// peer address. Returns (sender's local address, what the receiver saw).
fn probe(from: &Netns, to: &Netns, dst: IpAddr) -> (IpAddr, IpAddr) {
    let l = Listener::start(to, "[::]:0");
    let (local, said) = connect(from, SocketAddr::new(dst, l.port))
        .unwrap_or_else(|e| panic!("{} -> {dst} ({}): {e}", from.name, to.name));
    let recorded = l.peers.lock().unwrap()[0].ip().to_canonical();
    assert_eq!(said.parse::<IpAddr>().unwrap().to_canonical(), recorded);
    (local.ip().to_canonical(), recorded)
}

#[test]
fn lab_proves_the_network_model_and_the_routing_under_it() {
    require_tool("bird", "bird2");
    let lab = Lab::new();
    let report = lab.json(&[
        "up", "--nodes", "3", "--pods", "2", "--router", "bird", "--json",
    ]);
    assert_eq!(report["ok"], true, "the lab's own matrix: {report:#}");
    assert_eq!(
        report["matrix"].as_array().unwrap().len(),
        2 * (6 * 8 + 3 * 6)
    );

    let nodes: Vec<(String, Vec<IpNet>, Vec<IpAddr>)> = report["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap().to_string(),
                serde_json::from_value(n["pod_cidrs"].clone()).unwrap(),
                serde_json::from_value(n["addresses"].clone()).unwrap(),
            )
        })
        .collect();
    assert_eq!(nodes.len(), 3);
    let pods: Vec<(String, String)> = report["pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["node"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(pods.len(), 6);

    // Rule 1: every pod has its own address per family, unique in the cluster, inside its
    // node's pod CIDR. Read in the pod itself.
    let mut seen = HashSet::new();
    let mut addrs = std::collections::HashMap::new();
    for (pod, node) in &pods {
        let a = eth0(&lab.ns(pod));
        assert_eq!(a.len(), 2, "{pod}: one IPv4 and one IPv6 address: {a:?}");
        let cidrs = &nodes.iter().find(|n| &n.0 == node).unwrap().1;
        for ip in &a {
            assert!(seen.insert(*ip), "{ip} of {pod} is not unique");
            assert!(
                cidrs.iter().any(|c| c.contains(ip)),
                "{ip} of {pod} is outside {node}'s pod CIDRs {cidrs:?}"
            );
        }
        addrs.insert(pod.clone(), a);
    }

    // Rules 2 and 4: pod to pod across nodes, both families, with the receiver seeing the
    // address the sender reads on its own eth0 (no NAT anywhere on the way).
    for (a, an) in &pods {
        for (b, bn) in &pods {
            if an == bn {
                continue;
            }
            for (own, dst) in addrs[a].iter().zip(&addrs[b]) {
                let (local, saw) = probe(&lab.ns(a), &lab.ns(b), *dst);
                assert_eq!(saw, *own, "{a} -> {b} ({dst}): receiver saw {saw}");
                assert_eq!(
                    local, saw,
                    "{a} -> {b}: sender used {local}, receiver saw {saw}"
                );
            }
        }
    }

    // Rule 3: each node reaches every pod and every pod each node, both ways untranslated.
    for (node, _, node_addrs) in &nodes {
        for (pod, _) in &pods {
            for fam in 0..2 {
                let (local, saw) = probe(&lab.ns(node), &lab.ns(pod), addrs[pod][fam]);
                assert_eq!(
                    local, saw,
                    "{node} -> {pod}: sender used {local}, receiver saw {saw}"
                );
                assert_eq!(
                    saw, node_addrs[fam],
                    "{node} -> {pod}: the node's own address"
                );
                let (local, saw) = probe(&lab.ns(pod), &lab.ns(node), node_addrs[fam]);
                assert_eq!(saw, addrs[pod][fam], "{pod} -> {node}: receiver saw {saw}");
                assert_eq!(local, saw);
            }
        }
    }

    // The routing: each node's FIB has the others' pod CIDRs (protocol 200, via the LAN)
    // and a blackhole for its own; the router holds all of them.
    for (node, cidrs, _) in &nodes {
        let f = fib(&lab.ns(node));
        for (other, oc, oaddrs) in &nodes {
            for (c, a) in oc.iter().zip(oaddrs) {
                if other == node {
                    assert!(
                        f.lines().any(|l| l.starts_with(&format!("blackhole {c} "))),
                        "{node}: no blackhole for its own {c}:\n{f}"
                    );
                } else {
                    assert!(
                        f.lines().any(|l| l.starts_with(&format!("{c} via {a} "))),
                        "{node}: no route to {other}'s {c} via {a}:\n{f}"
                    );
                }
            }
        }
        assert_eq!(cidrs.len(), 2);
    }
    let routes = birdc(&lab, "show route");
    for (_, cidrs, _) in &nodes {
        for c in cidrs {
            assert!(
                routes.contains(&c.to_string()),
                "router lacks {c}:\n{routes}"
            );
        }
    }

    // Kill n2's agent (no graceful restart in the lab): its pod CIDRs leave the router and
    // the other nodes within the hold time.
    let n2 = &nodes[1];
    let agent = pid(&lab.node_dir("n2").join("petrel.pid"));
    // SAFETY: kill(2) of the agent the lab started, by its pid.
    unsafe { libc::kill(agent, libc::SIGKILL) };
    let killed = Instant::now();
    let gone = |c: &IpNet| {
        !birdc(&lab, "show route").contains(&c.to_string())
            && ["n1", "n3"]
                .iter()
                .all(|n| !fib(&lab.ns(n)).contains(&format!("{c} ")))
    };
    wait_until_or(
        "n2's pod CIDRs withdrawn from the router and the other nodes",
        Duration::from_secs(HOLD_TIME + 1),
        || n2.1.iter().all(gone).then_some(()),
        || format!("{}\n{}", birdc(&lab, "show route"), fib(&lab.ns("n1"))),
    );
    eprintln!(
        "n2's routes withdrawn everywhere {:.2} s after its agent was killed",
        killed.elapsed().as_secs_f64()
    );
    // Its own pods' host routes and blackhole stay in n2's kernel meanwhile.
    assert!(fib(&lab.ns("n2")).contains("blackhole 10.244.2.0/24"));

    // `up` again restarts what is missing (only the agent) and everything is back.
    let before: Vec<String> = lab.namespaces();
    let report = lab.json(&["up", "--json"]);
    assert_eq!(report["ok"], true, "after the restart: {report:#}");
    let mut after = lab.namespaces();
    let mut b = before.clone();
    b.sort();
    after.sort();
    assert_eq!(b, after, "a second `up` made no new namespace");
    assert_ne!(pid(&lab.node_dir("n2").join("petrel.pid")), agent);
    for n in ["n1", "n3"] {
        let f = fib(&lab.ns(n));
        for c in &n2.1 {
            assert!(f.contains(&format!("{c} via")), "{n} lacks {c} again:\n{f}");
        }
    }

    // Delete a pod: its address is released and its host routes are gone; a new pod can
    // take the same addresses (asked for explicitly: the allocator does not hand a freed
    // address out again at once).
    let victim = addrs["n2-p1"].clone();
    lab.ok(&["del-pod", "n2-p1"]);
    let store = Command::new(bin("petrel-ipam"))
        .args(["list", "--json", "--data-dir"])
        .arg(lab.node_dir("n2").join("ipam"))
        .output()
        .expect("petrel-ipam list");
    let store = String::from_utf8_lossy(&store.stdout).into_owned();
    assert!(
        store.contains(&format!("\"{}\"", addrs["n2-p2"][0])),
        "the listing shows the pod still there: {store}"
    );
    for a in &victim {
        assert!(
            !store.contains(&format!("\"{a}\"")),
            "{a} still allocated: {store}"
        );
        assert!(
            !lab.ns("n2").ip(&format!("route show {a}")).contains("dev"),
            "host route to {a} left on n2"
        );
    }
    assert!(!Path::new(&format!("/var/run/netns/{}-n2-p1", lab.prefix)).exists());
    let want = format!("{},{}", victim[0], victim[1]);
    let name = lab.ok(&["add-pod", "n2", "--ip", &want]);
    let name = name.trim();
    assert_eq!(
        eth0(&lab.ns(name)),
        victim,
        "{name} took the freed addresses"
    );
    for fam in 0..2 {
        let (_, saw) = probe(&lab.ns("n1-p1"), &lab.ns(name), victim[fam]);
        assert_eq!(saw, addrs["n1-p1"][fam]);
    }

    // Down removes everything it made.
    let pids: Vec<i32> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| pid(&lab.node_dir(n).join("petrel.pid")))
        .chain([pid(&lab.state().join("router/bird.pid"))])
        .collect();
    lab.ok(&["down"]);
    assert!(lab.namespaces().is_empty(), "{:?}", lab.namespaces());
    assert!(!lab.state().exists(), "state dir removed");
    for p in pids {
        assert!(!alive(p), "process {p} still runs");
    }
}

/// The same lab with FRR and with GoBGP (a route server) as the router; `up` twice is
/// safe.
#[test]
fn lab_with_frr_and_gobgp_routers() {
    require_tool("/usr/lib/frr/bgpd", "frr");
    require_tool("gobgpd", "gobgpd");
    for router in ["frr", "gobgp"] {
        let lab = Lab::new();
        let r = lab.json(&[
            "up", "--nodes", "2", "--pods", "1", "--router", router, "--json",
        ]);
        assert_eq!(r["ok"], true, "{router}: {r:#}");
        let held: Vec<String> = serde_json::from_value(r["router"]["prefixes"].clone()).unwrap();
        for c in [
            "10.244.1.0/24",
            "10.244.2.0/24",
            "fd00:10:244:1::/64",
            "fd00:10:244:2::/64",
        ] {
            assert!(held.iter().any(|h| h == c), "{router} lacks {c}: {held:?}");
        }
        let again = lab.json(&["up", "--json"]);
        assert_eq!(again["ok"], true);
        assert_eq!(again["pods"].as_array().unwrap().len(), 2, "no new pods");
        assert_eq!(
            again["nodes"][0]["pid"], r["nodes"][0]["pid"],
            "{router}: the running agent was left alone"
        );
        // Text form, as a person reads it.
        let text = lab.ok(&["status"]);
        assert!(text.contains("20/20 cells ok"), "{text}");
        lab.ok(&["down"]);
        assert!(lab.namespaces().is_empty());
    }
}

/// `--topology rr`: no BGP at the router; iBGP in one AS with nodes n1 and n2 as a
/// redundant pair of route reflectors (one cluster id, the rack LAN as their peer ranges)
/// and n3 their client. The reachability matrix passes over IPv4 and IPv6, and n3 holds
/// each reflector's pod CIDRs from the reflector itself and, reflected, from the other.
#[test]
fn lab_with_two_route_reflector_nodes() {
    let lab = Lab::new();
    let r = lab.json(&[
        "up",
        "--nodes",
        "3",
        "--pods",
        "1",
        "--topology",
        "rr",
        "--json",
    ]);
    assert_eq!(r["ok"], true, "{r:#}");
    let text = lab.ok(&["status"]);
    // 3 pods and 3 nodes: each pod to the 2 other pods and the 3 nodes, each node to the
    // 3 pods: 24 cells per family.
    assert!(text.contains("48/48 cells ok"), "{text}");
    // n1 has n3 as a dynamic client over each family, and n2 as a plain iBGP peer.
    let petrel = bin("petrel");
    let status = |node: &str| -> Value {
        let out = Command::new(&petrel)
            .args(["status", "--json", "--socket"])
            .arg(lab.node_dir(node).join("petrel.sock"))
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let n1 = status("n1");
    let names: Vec<&str> = n1["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    for want in [
        "rr4",
        "rr6",
        "clients4/172.30.0.13",
        "clients6/fd00:172:30::13",
    ] {
        assert!(names.contains(&want), "{names:?}");
    }
    let routes = Command::new(&petrel)
        .args(["routes", "--json", "--socket"])
        .arg(lab.node_dir("n3").join("petrel.sock"))
        .output()
        .unwrap();
    let routes: Value = serde_json::from_slice(&routes.stdout).unwrap();
    // n1's pod CIDR reaches n3 twice: from n1 itself, and reflected by n2 with n1 as
    // ORIGINATOR_ID and the cluster id in CLUSTER_LIST.
    for (prefix, owner) in [
        ("10.244.1.0/24", "172.30.0.11"),
        ("fd00:10:244:2::/64", "172.30.0.12"),
    ] {
        let paths = routes["routes"]
            .as_array()
            .and_then(|l| l.iter().find(|r| r["prefix"] == prefix))
            .map(|r| r["paths"].as_array().cloned().unwrap_or_default())
            .unwrap_or_default();
        assert_eq!(paths.len(), 2, "{prefix}: {paths:?}");
        let reflected: Vec<&Value> = paths
            .iter()
            .filter(|p| !p["originator_id"].is_null())
            .collect();
        assert_eq!(reflected.len(), 1, "{prefix}: {paths:?}");
        assert_eq!(reflected[0]["originator_id"], owner, "{prefix}");
        assert_eq!(
            reflected[0]["cluster_list"],
            serde_json::json!(["172.30.0.254"]),
            "{prefix}"
        );
    }
    lab.ok(&["down"]);
    assert!(lab.namespaces().is_empty());
}
