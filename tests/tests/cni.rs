//! petrel-cni and petrel-ipam executed directly, as a runtime does, in a "node" namespace
//! with pods in namespaces of their own: connectivity and the network model (the address a
//! pod has is the one others see), CHECK, DEL twice and without a namespace, dual stack,
//! 200 pods at once, crashes in the middle of IPAM, bad input, GC and STATUS, chaining with
//! the reference plugins, and the install path.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use petrel_tests::cni::{self, Listener, connect, netns_path, ping};
use petrel_tests::{Netns, TestDir, bin, link};
use serde_json::{Value, json};

fn cni_bin() -> String {
    bin("petrel-cni").display().to_string()
}

fn ipam_bin() -> String {
    bin("petrel-ipam").display().to_string()
}

/// A node namespace with an uplink (a default route: proxy ARP for 169.254.1.1 needs one),
/// forwarding on, and the network configuration for it.
struct Node {
    conf: String,
    dir: TestDir,
    node: Netns,
    _up: Netns,
}

fn node(label: &str, cidrs: &[&str]) -> Node {
    let dir = TestDir::new(label);
    let up = Netns::new("up");
    let node = Netns::new("node");
    link(
        &up,
        &["203.0.113.1/24", "2001:db8:ff::1/64"],
        &node,
        &["203.0.113.2/24", "2001:db8:ff::2/64"],
    );
    node.ip("route add default via 203.0.113.1");
    node.ip("-6 route add default via 2001:db8:ff::1");
    node.sysctl("net.ipv4.ip_forward", "1");
    node.sysctl("net.ipv6.conf.all.forwarding", "1");
    let conf = json!({
        "cniVersion": "1.1.0",
        "name": "testnet",
        "type": "petrel-cni",
        "ipam": { "type": "petrel-ipam", "pod_cidrs": cidrs, "data_dir": dir.file("ipam") },
    })
    .to_string();
    Node {
        conf,
        dir,
        node,
        _up: up,
    }
}

fn add(n: &Node, id: &str, pod: &Netns) -> Value {
    let c = cni::run(
        &n.node,
        &cni_bin(),
        "ADD",
        id,
        &netns_path(pod),
        "eth0",
        &n.conf,
    );
    assert!(c.ok, "ADD {id} failed: {} {}", c.stdout, c.stderr);
    c.json()
}

fn del(n: &Node, id: &str, netns: &str) {
    let c = cni::run(&n.node, &cni_bin(), "DEL", id, netns, "eth0", &n.conf);
    assert!(c.ok, "DEL {id} failed: {} {}", c.stdout, c.stderr);
    assert!(
        c.stdout.trim().is_empty(),
        "DEL prints nothing on success: {}",
        c.stdout
    );
}

fn pod_addr(r: &Value, v4: bool) -> IpAddr {
    r["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            i["address"]
                .as_str()
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .parse::<IpAddr>()
                .unwrap()
        })
        .find(|a| a.is_ipv4() == v4)
        .unwrap()
}

fn allocations(n: &Node) -> Vec<Value> {
    let out = std::process::Command::new(ipam_bin())
        .args(["list", "--json", "--data-dir"])
        .arg(n.dir.file("ipam"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap()
        .as_array()
        .cloned()
        .unwrap()
}

/// Wait (DEL deletes the veth in the background: ~20 ms of kernel work) until `n` has
/// exactly `count` veths of ours, retired ones included.
fn wait_veths(n: &Node, count: usize) {
    petrel_tests::wait_until_or(
        &format!("{count} veth(s) of ours on the node"),
        Duration::from_secs(10),
        || (our_veths(n).len() == count).then_some(()),
        || format!("{:?}", our_veths(n)),
    );
}

fn our_veths(n: &Node) -> Vec<String> {
    n.node
        .ip("-o link show type veth")
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|s| s.split('@').next().unwrap().to_string())
        .filter(|s| s.starts_with("pet"))
        .collect()
}

#[test]
fn two_pods_talk_with_their_own_addresses() {
    let n = node("cni-v4", &["10.244.7.0/24"]);
    let a = Netns::new("pa");
    let b = Netns::new("pb");
    let ra = add(&n, "container-a", &a);
    let rb = add(&n, "container-b", &b);
    // The result: the pod's /32 with the link-local gateway, both interfaces.
    assert_eq!(ra["cniVersion"], "1.1.0");
    assert_eq!(ra["ips"][0]["address"], "10.244.7.2/32");
    assert_eq!(ra["ips"][0]["gateway"], "169.254.1.1");
    assert_eq!(ra["ips"][0]["interface"], 1);
    assert_eq!(ra["interfaces"][1]["name"], "eth0");
    assert_eq!(ra["interfaces"][1]["sandbox"], netns_path(&a));
    assert_eq!(ra["interfaces"][0]["mac"], "ee:ee:ee:ee:ee:ee");
    assert_eq!(
        ra["routes"][0],
        json!({"dst": "0.0.0.0/0", "gw": "169.254.1.1"})
    );
    let (ia, ib) = (pod_addr(&ra, true), pod_addr(&rb, true));
    assert_ne!(ia, ib);
    // Inside the pod: exactly the /32, the gateway route and the default route.
    let addrs = a.ip("-4 -o addr show dev eth0");
    assert!(addrs.contains(&format!("inet {ia}/32")), "{addrs}");
    let routes = a.routes4("");
    assert!(
        routes.contains("default via 169.254.1.1 dev eth0"),
        "{routes}"
    );
    assert!(routes.contains("169.254.1.1 dev eth0"), "{routes}");
    // On the node: a /32 to each pod through its veth.
    assert!(
        n.node.routes4("").contains(&format!("{ia} dev pet")),
        "{}",
        n.node.routes4("")
    );

    // Pod to pod, pod to node, node to pod.
    assert!(ping(&a, &ib.to_string()), "a -> b");
    assert!(ping(&b, &ia.to_string()), "b -> a");
    assert!(ping(&a, "203.0.113.2"), "a -> node");
    assert!(ping(&n.node, &ia.to_string()), "node -> a");
    // What b sees as a's address is the address a has on eth0: no NAT anywhere.
    let l = Listener::start(&b, "0.0.0.0:0");
    let (local, seen) = connect(&a, SocketAddr::new(ib, l.port)).unwrap();
    assert_eq!(local.ip(), ia);
    assert_eq!(seen, ia.to_string());
    assert_eq!(l.peers.lock().unwrap()[0].ip(), ia);

    // CHECK passes, then says what is wrong once the pod's default route is gone.
    let prev = json!({
        "cniVersion": "1.1.0", "name": "testnet", "type": "petrel-cni",
        "ipam": serde_json::from_str::<Value>(&n.conf).unwrap()["ipam"],
        "prevResult": ra,
    })
    .to_string();
    let c = cni::run(
        &n.node,
        &cni_bin(),
        "CHECK",
        "container-a",
        &netns_path(&a),
        "eth0",
        &prev,
    );
    assert!(c.ok, "CHECK: {} {}", c.stdout, c.stderr);
    a.ip("route del default");
    let c = cni::run(
        &n.node,
        &cni_bin(),
        "CHECK",
        "container-a",
        &netns_path(&a),
        "eth0",
        &prev,
    );
    assert_eq!(c.code(), Some(101));
    assert!(
        c.json()["details"]
            .as_str()
            .unwrap()
            .contains("pod has no default route via 169.254.1.1"),
        "{}",
        c.stdout
    );

    // DEL twice; DEL without a namespace (the runtime's second DEL).
    del(&n, "container-a", &netns_path(&a));
    del(&n, "container-a", &netns_path(&a));
    del(&n, "container-b", "");
    del(&n, "container-b", "");
    assert!(our_veths(&n).is_empty(), "{:?}", our_veths(&n));
    assert!(
        !n.node.routes4("").contains("10.244.7."),
        "{}",
        n.node.routes4("")
    );
    assert!(allocations(&n).is_empty());
}

#[test]
fn dual_stack_pods_ping6() {
    let n = node("cni-ds", &["10.244.8.0/24", "fd00:10:244:8::/64"]);
    let a = Netns::new("pa");
    let b = Netns::new("pb");
    let ra = add(&n, "a", &a);
    let rb = add(&n, "b", &b);
    assert_eq!(ra["ips"].as_array().unwrap().len(), 2);
    assert_eq!(ra["ips"][1]["address"], "fd00:10:244:8::2/128");
    assert_eq!(ra["ips"][1]["gateway"], "fe80::1");
    let (a6, b6) = (pod_addr(&ra, false), pod_addr(&rb, false));
    let r6 = a.routes6("");
    assert!(r6.contains("default via fe80::1 dev eth0"), "{r6}");
    // No DAD delay: the pod's address is usable at once.
    assert!(!a.ip("-6 addr show dev eth0").contains("tentative"));
    assert!(ping(&a, &b6.to_string()), "a -> b over IPv6");
    assert!(ping(&b, &a6.to_string()), "b -> a over IPv6");
    assert!(
        ping(&a, &pod_addr(&rb, true).to_string()),
        "a -> b over IPv4"
    );
    assert!(ping(&a, "2001:db8:ff::2"), "a -> node over IPv6");
    let l = Listener::start(&b, "[::]:0");
    let (local, seen) = connect(&a, SocketAddr::new(b6, l.port)).unwrap();
    assert_eq!((local.ip(), seen), (a6, a6.to_string()));
    // The host side: /128 routes, fe80::1 on each veth.
    let host6 = n.node.routes6("");
    assert!(host6.contains(&format!("{a6} dev pet")), "{host6}");
    del(&n, "a", &netns_path(&a));
    del(&n, "b", &netns_path(&b));
    assert!(allocations(&n).is_empty());
    // Traffic to a deleted pod stops at once (routes gone), before the veth itself is.
    assert!(!n.node.routes6("").contains(&a6.to_string()));
    wait_veths(&n, 0);
}

#[test]
fn two_hundred_pods_in_parallel() {
    let n = node("cni-200", &["10.244.9.0/24"]);
    let pods: Vec<Netns> = (0..200).map(|i| Netns::new(&format!("p{i}"))).collect();
    let results: Vec<Value> = std::thread::scope(|s| {
        let hs: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let n = &n;
                s.spawn(move || add(n, &format!("c{i:03}"), p))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let addrs: HashSet<IpAddr> = results.iter().map(|r| pod_addr(r, true)).collect();
    assert_eq!(addrs.len(), 200, "200 distinct addresses");
    assert_eq!(allocations(&n).len(), 200);
    assert_eq!(our_veths(&n).len(), 200);
    std::thread::scope(|s| {
        for (i, p) in pods.iter().enumerate() {
            let n = &n;
            s.spawn(move || del(n, &format!("c{i:03}"), &netns_path(p)));
        }
    });
    assert!(allocations(&n).is_empty(), "store empty");
    wait_veths(&n, 0);
}

#[test]
fn ipam_survives_kill_9_at_random_points() {
    let n = node("cni-crash", &["10.244.10.0/26"]);
    let ipam = ipam_bin();
    let call = |cmd: &str, id: &str| -> std::process::Child {
        let mut c = std::process::Command::new(&ipam);
        c.env_clear()
            .env("CNI_COMMAND", cmd)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", "/var/run/netns/none")
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/nonexistent")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().unwrap();
        use std::io::Write;
        let _ = child.stdin.take().unwrap().write_all(n.conf.as_bytes());
        child
    };
    // xorshift, seeded from the clock: different kill points on each run; the seed is
    // printed for a replay.
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("seed {seed}");
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut live: HashSet<String> = HashSet::new();
    let mut kills = 0;
    for round in 0..100 {
        let id = format!("c{}", rnd() % 30);
        let cmd = if live.contains(&id) && rnd() % 2 == 0 {
            "DEL"
        } else {
            "ADD"
        };
        let mut child = call(cmd, &id);
        let kill = rnd() % 3 == 0;
        if kill {
            // Somewhere between "not started" and "done": 0 to 4 ms.
            std::thread::sleep(Duration::from_micros(rnd() % 4000));
            let _ = child.kill();
            let _ = child.wait();
            kills += 1;
            // Uncertain outcome: not live by our account (GC will settle it).
            live.remove(&id);
        } else {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "round {round} {cmd} {id}: {}",
                String::from_utf8_lossy(&out.stdout)
            );
            if cmd == "ADD" {
                live.insert(id);
            } else {
                live.remove(&id);
            }
        }
    }
    eprintln!("{kills} kills in 100 rounds");
    // The store loads and holds no address twice.
    let all = allocations(&n);
    let addrs: Vec<&str> = all.iter().map(|a| a["address"].as_str().unwrap()).collect();
    let uniq: HashSet<&&str> = addrs.iter().collect();
    assert_eq!(uniq.len(), addrs.len(), "an address held twice: {addrs:?}");
    // GC with the live attachments brings it back to exactly them.
    let mut conf: Value = serde_json::from_str(&n.conf).unwrap();
    conf["cni.dev/valid-attachments"] = live
        .iter()
        .map(|id| json!({"containerID": id, "ifname": "eth0"}))
        .collect();
    let c = cni::call(
        &n.node,
        &ipam,
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/nonexistent")],
        &conf.to_string(),
    );
    assert!(c.ok, "GC: {} {}", c.stdout, c.stderr);
    let after: HashSet<String> = allocations(&n)
        .iter()
        .map(|a| a["container_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(after, live);
    // No temporary file lingers as a second source of truth.
    let names: Vec<String> = std::fs::read_dir(n.dir.file("ipam"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names
            .iter()
            .all(|f| f == "testnet.json" || f == "testnet.lock" || f == "testnet.json.tmp"),
        "{names:?}"
    );
}

#[test]
fn bad_input_gets_the_right_error_and_changes_nothing() {
    let n = node("cni-bad", &["10.244.11.0/30"]);
    let pod = Netns::new("pod");
    let p = netns_path(&pod);
    let before_links = n.node.ip("-o link show");
    let run = |conf: &str, id: &str, ifname: &str| {
        cni::run(&n.node, &cni_bin(), "ADD", id, &p, ifname, conf)
    };
    // Malformed JSON: 6.
    let c = run("{ not json", "x", "eth0");
    assert_eq!(c.code(), Some(6), "{}", c.stdout);
    // Unknown cniVersion: 1.
    let c = run(&n.conf.replace("1.1.0", "9.9.9"), "x", "eth0");
    assert_eq!(c.code(), Some(1), "{}", c.stdout);
    // Missing environment: 4, and the message names the variable.
    let c = cni::call(
        &n.node,
        &cni_bin(),
        &[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "x"),
            ("CNI_IFNAME", "eth0"),
        ],
        &n.conf,
    );
    assert_eq!(c.code(), Some(4));
    assert!(
        c.json()["msg"].as_str().unwrap().contains("CNI_NETNS"),
        "{}",
        c.stdout
    );
    let c = cni::call(&n.node, &cni_bin(), &[], &n.conf);
    assert_eq!(c.code(), Some(4));
    // An interface name that already exists in the pod: 4, nothing allocated.
    pod.ip("link add eth0 type veth peer name eth0peer");
    let c = run(&n.conf, "x", "eth0");
    assert_eq!(c.code(), Some(4), "{}", c.stdout);
    assert!(c.json()["msg"].as_str().unwrap().contains("already exists"));
    assert!(allocations(&n).is_empty());
    // An exhausted pool (a /30 has one address to give): 11, and the failed ADD leaves
    // no veth behind.
    let p2 = Netns::new("p2");
    let p3 = Netns::new("p3");
    let ok = cni::run(
        &n.node,
        &cni_bin(),
        "ADD",
        "first",
        &netns_path(&p2),
        "eth0",
        &n.conf,
    );
    assert!(ok.ok, "{}", ok.stdout);
    let c = cni::run(
        &n.node,
        &cni_bin(),
        "ADD",
        "second",
        &netns_path(&p3),
        "eth0",
        &n.conf,
    );
    assert_eq!(c.code(), Some(11), "{}", c.stdout);
    assert!(
        c.json()["details"]
            .as_str()
            .unwrap()
            .contains("no free address in 10.244.11.0/30")
    );
    assert_eq!(allocations(&n).len(), 1);
    wait_veths(&n, 1);
    assert!(
        p3.ip("-o link show").lines().count() == 1,
        "nothing in the failed pod but lo"
    );
    // Every error went to stdout as the spec's JSON, with the config's version.
    assert_eq!(c.json()["cniVersion"], "1.1.0");
    let _ = before_links;
}

#[test]
fn cni_netns_of_the_node_or_not_a_namespace_is_refused_with_error_4() {
    let n = node("cni-netns", &["10.244.12.0/24"]);
    // Addresses other than the kernel's own link-local ones (whose DAD may end meanwhile).
    let addrs = || -> Vec<String> {
        n.node
            .ip("-o addr show")
            .lines()
            .filter(|l| !l.contains("scope link"))
            .map(String::from)
            .collect()
    };
    let addrs_before = addrs();
    let routes_before = n.node.ip("route show");
    let links_before = n.node.ip("-o link show");
    let file = n.dir.write("not-a-netns", "");
    let dir = n.dir.file("ipam-dir-as-netns");
    std::fs::create_dir_all(&dir).unwrap();
    let cases: [(String, &str); 4] = [
        // The plugin runs in the node's namespace: both names for it are refused.
        (netns_path(&n.node), "node's own network namespace"),
        (
            "/proc/self/ns/net".to_string(),
            "node's own network namespace",
        ),
        (file.display().to_string(), "not a network namespace"),
        (dir.display().to_string(), "not a network namespace"),
    ];
    for (netns, why) in &cases {
        let c = cni::run(
            &n.node,
            &cni_bin(),
            "ADD",
            "host-ns",
            netns,
            "eth0",
            &n.conf,
        );
        assert_eq!(c.code(), Some(4), "{netns}: {}", c.stdout);
        let msg = c.json()["msg"].as_str().unwrap().to_string();
        assert!(msg.contains(why), "{netns}: {msg}");
    }
    // A user namespace file is a namespace, but not a network one.
    let c = cni::run(
        &n.node,
        &cni_bin(),
        "ADD",
        "user-ns",
        "/proc/self/ns/user",
        "eth0",
        &n.conf,
    );
    assert_eq!(c.code(), Some(4), "{}", c.stdout);
    assert!(
        c.json()["msg"]
            .as_str()
            .unwrap()
            .contains("not a network namespace"),
        "{}",
        c.stdout
    );
    // Nothing was taken or changed: no address allocated, the node as it was.
    assert!(allocations(&n).is_empty());
    assert_eq!(addrs(), addrs_before);
    assert_eq!(n.node.ip("route show"), routes_before);
    assert_eq!(n.node.ip("-o link show"), links_before);
}

#[test]
fn a_pod_reaches_its_gateway_on_a_node_without_a_default_route() {
    // A bare node: no uplink, no default route, its address on loopback.
    let dir = TestDir::new("cni-noroute");
    let node = Netns::new("node");
    node.ip("addr add 192.0.2.7/32 dev lo");
    node.sysctl("net.ipv4.ip_forward", "1");
    let conf = json!({
        "cniVersion": "1.1.0",
        "name": "testnet",
        "type": "petrel-cni",
        "ipam": { "type": "petrel-ipam", "pod_cidrs": ["10.244.13.0/24"], "data_dir": dir.file("ipam") },
    })
    .to_string();
    let pod = Netns::new("pod");
    let c = cni::run(
        &node,
        &cni_bin(),
        "ADD",
        "bare",
        &netns_path(&pod),
        "eth0",
        &conf,
    );
    assert!(c.ok, "ADD: {} {}", c.stdout, c.stderr);
    let neigh = pod.ip("neigh show 169.254.1.1 dev eth0");
    assert!(
        neigh.contains("ee:ee:ee:ee:ee:ee") && neigh.contains("PERMANENT"),
        "{neigh}"
    );
    // The pod reaches the node (and the node the pod) with no ARP for the gateway at all.
    assert!(cni::ping(&pod, "192.0.2.7"), "pod to node");
    let ia = c.json()["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    assert!(cni::ping(&node, &ia), "node to pod");
    // CHECK verifies the entry.
    let prev = json!({
        "cniVersion": "1.1.0", "name": "testnet", "type": "petrel-cni",
        "ipam": serde_json::from_str::<Value>(&conf).unwrap()["ipam"],
        "prevResult": c.json(),
    })
    .to_string();
    let check = || {
        cni::run(
            &node,
            &cni_bin(),
            "CHECK",
            "bare",
            &netns_path(&pod),
            "eth0",
            &prev,
        )
    };
    let ok = check();
    assert!(ok.ok, "CHECK: {} {}", ok.stdout, ok.stderr);
    pod.ip("neigh del 169.254.1.1 dev eth0");
    let bad = check();
    assert_eq!(bad.code(), Some(101), "{}", bad.stdout);
    assert!(
        bad.json()["details"]
            .as_str()
            .unwrap()
            .contains("no permanent neighbour 169.254.1.1 lladdr ee:ee:ee:ee:ee:ee"),
        "{}",
        bad.stdout
    );
    let c = cni::run(
        &node,
        &cni_bin(),
        "DEL",
        "bare",
        &netns_path(&pod),
        "eth0",
        &conf,
    );
    assert!(c.ok, "DEL: {}", c.stdout);
}

#[test]
fn a_failed_add_releases_its_address_and_veth() {
    let n = node("cni-rollback", &["10.244.12.0/24"]);
    let pod = Netns::new("pod");
    // Make the pod's side fail after the IPAM allocated and the veth exists: the pod has
    // no IPv6 at all, but we ask for an IPv6 address.
    pod.sysctl("net.ipv6.conf.all.disable_ipv6", "1");
    pod.sysctl("net.ipv6.conf.default.disable_ipv6", "1");
    let conf = n
        .conf
        .replace("\"10.244.12.0/24\"", "\"10.244.12.0/24\",\"fd00:12::/64\"");
    let c = cni::run(
        &n.node,
        &cni_bin(),
        "ADD",
        "doomed",
        &netns_path(&pod),
        "eth0",
        &conf,
    );
    assert!(!c.ok);
    assert_eq!(c.code(), Some(100), "{}", c.stdout);
    assert!(allocations(&n).is_empty(), "the IP was released");
    wait_veths(&n, 0);
}

#[test]
fn version_status_and_gc_by_direct_exec() {
    let n = node("cni-gc", &["10.244.13.0/24"]);
    let c = cni::call(
        &n.node,
        &cni_bin(),
        &[("CNI_COMMAND", "VERSION")],
        r#"{"cniVersion":"0.4.0"}"#,
    );
    assert!(c.ok);
    let v = c.json();
    assert_eq!(v["cniVersion"], "0.4.0");
    assert!(
        v["supportedVersions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x == "1.1.0")
    );
    let path = cni::cni_path();
    let c = cni::call(
        &n.node,
        &cni_bin(),
        &[("CNI_COMMAND", "STATUS"), ("CNI_PATH", &path)],
        &n.conf,
    );
    assert!(c.ok, "STATUS: {} {}", c.stdout, c.stderr);
    let pods: Vec<Netns> = (0..3).map(|i| Netns::new(&format!("g{i}"))).collect();
    for (i, p) in pods.iter().enumerate() {
        add(&n, &format!("g{i}"), p);
    }
    // The runtime only knows g1 now: g0 and g2 are released, their veths removed.
    let mut conf: Value = serde_json::from_str(&n.conf).unwrap();
    conf["cni.dev/valid-attachments"] = json!([{ "containerID": "g1", "ifname": "eth0" }]);
    let c = cni::call(
        &n.node,
        &cni_bin(),
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", &path)],
        &conf.to_string(),
    );
    assert!(c.ok, "GC: {} {}", c.stdout, c.stderr);
    let left: Vec<String> = allocations(&n)
        .iter()
        .map(|a| a["container_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left, vec!["g1"]);
    wait_veths(&n, 1);
    // STATUS says when the pool is full.
    let full = n.conf.replace("10.244.13.0/24", "10.244.13.0/30");
    let c = cni::call(
        &n.node,
        &cni_bin(),
        &[("CNI_COMMAND", "STATUS"), ("CNI_PATH", &path)],
        &full,
    );
    assert_eq!(c.code(), Some(50), "{}", c.stdout);
}

#[test]
fn chained_with_portmap_bandwidth_and_tuning() {
    petrel_tests::require_tool("/usr/lib/cni/portmap", "containernetworking-plugins");
    let n = node("cni-chain", &["10.244.14.0/24"]);
    let pod = Netns::new("pod");
    let ipam: Value = serde_json::from_str::<Value>(&n.conf).unwrap()["ipam"].clone();
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": "chain",
        "plugins": [
            { "type": "petrel-cni", "ipam": ipam },
            { "type": "tuning", "sysctl": { "net.core.somaxconn": "512" } },
            { "type": "bandwidth", "ingressRate": 1000000, "ingressBurst": 100000, "egressRate": 1000000, "egressBurst": 100000 },
            { "type": "portmap", "capabilities": { "portMappings": true }, "runtimeConfig": { "portMappings": [ { "hostPort": 8080, "containerPort": 80, "protocol": "tcp" } ] } },
        ],
    });
    let result = cni::chain(
        &n.node,
        &conflist,
        "ADD",
        "chained",
        &netns_path(&pod),
        "eth0",
        None,
    )
    .unwrap();
    // Every plugin got and passed on the result: the pod address is still there at the end.
    assert_eq!(result["ips"][0]["address"], "10.244.14.2/32");
    // tuning applied its sysctl inside the pod.
    assert_eq!(pod.sh_ok("sysctl -n net.core.somaxconn").trim(), "512");
    // bandwidth shaped the host veth (it found it in prevResult.interfaces).
    let host = result["interfaces"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let qdisc = n.node.sh_ok(&format!("tc qdisc show dev {host}"));
    assert!(qdisc.contains("tbf"), "{qdisc}");
    // portmap added its NAT rules on the node.
    let nat = n
        .node
        .sh("iptables-save -t nat 2>/dev/null || iptables -t nat -S");
    assert!(
        String::from_utf8_lossy(&nat.stdout).contains("8080"),
        "{}",
        String::from_utf8_lossy(&nat.stdout)
    );
    // DEL in reverse order, with the result as prevResult, twice.
    cni::chain(
        &n.node,
        &conflist,
        "DEL",
        "chained",
        &netns_path(&pod),
        "eth0",
        Some(&result),
    )
    .unwrap();
    cni::chain(&n.node, &conflist, "DEL", "chained", "", "eth0", None).unwrap();
    assert!(allocations(&n).is_empty());
    wait_veths(&n, 0);
}

#[test]
fn install_copies_the_plugins_and_writes_the_conflist() {
    let dir = TestDir::new("install");
    let out = std::process::Command::new(cni_bin())
        .args(["install", "--bin-dir"])
        .arg(dir.file("bin"))
        .arg("--conf-dir")
        .arg(dir.file("net.d"))
        .args(["--mtu", "1450"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for b in ["petrel-cni", "petrel-ipam"] {
        let p = dir.file("bin").join(b);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert_eq!(std::fs::read(&p).unwrap(), std::fs::read(bin(b)).unwrap());
    }
    let conf: Value = serde_json::from_slice(
        &std::fs::read(dir.file("net.d").join("10-petrel.conflist")).unwrap(),
    )
    .unwrap();
    assert_eq!(conf["plugins"][0]["type"], "petrel-cni");
    assert_eq!(conf["plugins"][0]["mtu"], 1450);
    assert_eq!(
        conf["plugins"][0]["ipam"]["config"],
        "/etc/petrel/petrel.yaml"
    );
    assert_eq!(conf["plugins"][1]["type"], "portmap");
    // Nothing half-written left around.
    assert_eq!(std::fs::read_dir(dir.file("net.d")).unwrap().count(), 1);
}
