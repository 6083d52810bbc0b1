//! The lab: a routed cluster in network namespaces, made and unmade by `petrel-lab`.
//!
//! ```text
//!                       router ns  (BIRD | FRR | GoBGP, AS 65000)
//!                       br0 172.30.0.1/24  fd00:172:30::1/64
//!              ┌──────────────┼──────────────┐          one shared rack LAN
//!   node n1 (AS 65101)   node n2 (AS 65102)   node n3 ...  eth0 172.30.0.1N, petrel run
//!   pods 10.244.1.0/24   pods 10.244.2.0/24                eBGP to the router: tor4 + tor6
//!   fd00:10:244:1::/64   fd00:10:244:2::/64
//!    ├ pod n1-p1          ├ pod n2-p1                      petrel-cni ADD, one veth each
//!    └ pod n1-p2          └ pod n2-p2
//! ```
//!
//! Every node runs the real agent (`petrel run`) with its own YAML file and pod CIDRs, and
//! every pod is made by the real CNI plugin, invoked the way a runtime invokes it. A small
//! echo listener in every pod and node answers a TCP connection with the address it saw,
//! which is how the lab shows that nobody's address is translated.
//!
//! Everything the lab makes is named after its prefix (namespaces `PREFIX-rtr`,
//! `PREFIX-nI`, `PREFIX-nI-pJ`) and recorded under its state directory, so `down` removes
//! exactly that and several labs (tests) can run side by side.

mod report;
mod router;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

pub use report::{Report, render};
pub use router::RouterKind;

/// TCP port of the echo listeners in pods and nodes.
pub const ECHO_PORT: u16 = 7777;
/// The router's AS; node `i` (from 1) is AS 65100 + i.
pub const ROUTER_ASN: u32 = 65000;
/// rtm_protocol of the agents' routes.
pub const FIB_PROTOCOL: u8 = 200;
/// Hold time of every session in the lab (keepalive a third of it).
pub const HOLD_TIME: u16 = 9;

/// How the nodes learn each other's pod CIDRs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// eBGP from every node to the top-of-rack router (`--router`).
    Tor,
    /// iBGP in one AS: nodes n1 and n2 are route reflectors (one cluster id, peer ranges
    /// for the rack LAN), the others their clients; the router only forwards.
    Rr,
}

impl std::str::FromStr for Topology {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tor" => Ok(Topology::Tor),
            "rr" => Ok(Topology::Rr),
            o => Err(format!("topology {o:?}: tor or rr")),
        }
    }
}

impl std::fmt::Display for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Topology::Tor => "tor",
            Topology::Rr => "rr",
        })
    }
}

/// The reflectors' cluster id in the `rr` topology.
pub const CLUSTER_ID: &str = "172.30.0.254";

/// What to build.
#[derive(Debug, Clone)]
pub struct Settings {
    pub prefix: String,
    pub state_dir: PathBuf,
    /// Where `petrel`, `petrel-cni` and `petrel-ipam` are.
    pub bin_dir: PathBuf,
    pub nodes: usize,
    pub pods: usize,
    pub router: RouterKind,
    pub topology: Topology,
}

impl Settings {
    pub fn default_state_dir(prefix: &str) -> PathBuf {
        PathBuf::from("/run/petrel-lab").join(prefix)
    }

    fn validate(&self) -> Result<()> {
        let ok = !self.prefix.is_empty()
            && self.prefix.len() <= 12
            && self
                .prefix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if !ok {
            bail!(
                "prefix {:?}: use 1 to 12 lowercase letters and digits",
                self.prefix
            );
        }
        if !(1..=50).contains(&self.nodes) {
            bail!("--nodes {}: from 1 to 50", self.nodes);
        }
        if !(1..=50).contains(&self.pods) {
            bail!("--pods {}: from 1 to 50 per node", self.pods);
        }
        if self.topology == Topology::Rr && self.nodes < 2 {
            bail!("--topology rr: at least 2 nodes (n1 and n2 are the reflectors)");
        }
        Ok(())
    }
}

/// One node of the lab, by its index from 1.
#[derive(Debug, Clone)]
pub struct Node {
    pub index: usize,
    pub name: String,
    pub ns: String,
    pub asn: u32,
    pub addr4: IpAddr,
    pub addr6: IpAddr,
    pub pod_cidrs: [String; 2],
    pub dir: PathBuf,
}

/// One pod: its node, its namespace and its CNI container id.
#[derive(Debug, Clone)]
pub struct Pod {
    pub name: String,
    pub node: usize,
    pub ns: String,
    pub container_id: String,
}

/// A lab as described by its settings; the running parts are found by name and pid files.
pub struct Lab {
    pub s: Settings,
}

pub const ROUTER_ADDR4: &str = "172.30.0.1";
pub const ROUTER_ADDR6: &str = "fd00:172:30::1";

impl Lab {
    /// A lab with these settings. The sizes and router must match a lab already up under
    /// the same state directory.
    pub fn new(s: Settings) -> Result<Lab> {
        s.validate()?;
        Ok(Lab { s })
    }

    /// The lab recorded under `state_dir` (for `down`, `status`, pods).
    pub fn open(state_dir: &Path, bin_dir: PathBuf) -> Result<Lab> {
        let f = state_dir.join("lab.json");
        let text = std::fs::read_to_string(&f)
            .with_context(|| format!("no lab at {} (run `up` first)", state_dir.display()))?;
        let v: Value = serde_json::from_str(&text).with_context(|| f.display().to_string())?;
        let get = |k: &str| v[k].as_u64().unwrap_or(0) as usize;
        Ok(Lab {
            s: Settings {
                prefix: v["prefix"].as_str().unwrap_or_default().to_string(),
                state_dir: state_dir.to_path_buf(),
                bin_dir,
                nodes: get("nodes"),
                pods: get("pods"),
                router: v["router"]
                    .as_str()
                    .unwrap_or("bird")
                    .parse()
                    .map_err(|e: String| anyhow!(e))?,
                topology: v["topology"]
                    .as_str()
                    .unwrap_or("tor")
                    .parse()
                    .map_err(|e: String| anyhow!(e))?,
            },
        })
    }

    fn save(&self) -> Result<()> {
        std::fs::create_dir_all(&self.s.state_dir)?;
        let v = json!({
            "prefix": self.s.prefix,
            "nodes": self.s.nodes,
            "pods": self.s.pods,
            "router": self.s.router.to_string(),
            "topology": self.s.topology.to_string(),
        });
        std::fs::write(
            self.s.state_dir.join("lab.json"),
            serde_json::to_string_pretty(&v)?,
        )?;
        Ok(())
    }

    pub fn router_ns(&self) -> String {
        format!("{}-rtr", self.s.prefix)
    }

    pub fn node(&self, i: usize) -> Node {
        let name = format!("n{i}");
        Node {
            index: i,
            ns: format!("{}-{name}", self.s.prefix),
            asn: match self.s.topology {
                Topology::Tor => 65100 + i as u32,
                Topology::Rr => ROUTER_ASN,
            },
            addr4: format!("172.30.0.{}", 10 + i).parse().unwrap(),
            addr6: format!("fd00:172:30::{}", 10 + i).parse().unwrap(),
            pod_cidrs: [format!("10.244.{i}.0/24"), format!("fd00:10:244:{i}::/64")],
            dir: self.s.state_dir.join(&name),
            name,
        }
    }

    pub fn nodes(&self) -> Vec<Node> {
        (1..=self.s.nodes).map(|i| self.node(i)).collect()
    }

    pub fn pod(&self, node: usize, j: usize) -> Pod {
        let name = format!("n{node}-p{j}");
        Pod {
            ns: format!("{}-{name}", self.s.prefix),
            container_id: format!("{}-{name}", self.s.prefix),
            name,
            node,
        }
    }

    /// The pods that exist (their namespaces), in node order.
    pub fn pods(&self) -> Vec<Pod> {
        let have = crate::netns_names();
        let mut out = Vec::new();
        for n in 1..=self.s.nodes {
            let mut js: Vec<usize> = have
                .iter()
                .filter_map(|ns| {
                    ns.strip_prefix(&format!("{}-n{n}-p", self.s.prefix))
                        .and_then(|j| j.parse().ok())
                })
                .collect();
            js.sort();
            out.extend(js.into_iter().map(|j| self.pod(n, j)));
        }
        out
    }

    /// Whether `ns` is one of this lab's namespaces.
    fn owns_ns(&self, ns: &str) -> bool {
        let Some(rest) = ns.strip_prefix(&format!("{}-", self.s.prefix)) else {
            return false;
        };
        if rest == "rtr" {
            return true;
        }
        let Some(rest) = rest.strip_prefix('n') else {
            return false;
        };
        let mut parts = rest.splitn(2, "-p");
        let node_ok = parts
            .next()
            .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
        let pod_ok = parts
            .next()
            .is_none_or(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
        node_ok && pod_ok
    }

    fn bin(&self, name: &str) -> Result<PathBuf> {
        let p = self.s.bin_dir.join(name);
        if !p.exists() {
            bail!(
                "{} not found (build with `cargo build --release --workspace`, or give --bin-dir)",
                p.display()
            );
        }
        Ok(p)
    }

    // ---------------------------------------------------------------- up

    /// Build whatever is missing; leaves what already runs alone.
    pub fn up(&self, log: &mut dyn FnMut(&str)) -> Result<()> {
        if unsafe { libc::geteuid() } != 0 {
            bail!("the lab makes network namespaces: run it as root");
        }
        for tool in ["ip", "ping"] {
            need_tool(tool, "iproute2 / iputils-ping")?;
        }
        self.s.router.check_tools()?;
        for b in ["petrel", "petrel-cni", "petrel-ipam"] {
            self.bin(b)?;
        }
        if let Ok(old) = Lab::open(&self.s.state_dir, self.s.bin_dir.clone()) {
            let (o, n) = (&old.s, &self.s);
            if (o.nodes, o.pods, o.router, o.topology) != (n.nodes, n.pods, n.router, n.topology) {
                bail!(
                    "a lab with {} nodes, {} pods per node, {} and topology {} is up at {}: run `down` first",
                    o.nodes,
                    o.pods,
                    o.router,
                    o.topology,
                    n.state_dir.display()
                );
            }
        }
        std::fs::create_dir_all(&self.s.state_dir)?;
        self.save()?;

        let started = Instant::now();
        self.router_up(log)?;
        for n in self.nodes() {
            self.node_up(&n, log)?;
        }
        log("waiting for the BGP sessions");
        for n in self.nodes() {
            self.wait_established(&n)?;
        }
        for n in 1..=self.s.nodes {
            for j in 1..=self.s.pods {
                self.pod_up(&self.pod(n, j), None, log)?;
            }
        }
        log("waiting for every node to learn every other node's pod CIDRs");
        self.wait_converged(Duration::from_secs(60))?;
        log(&format!(
            "lab up in {:.1} s",
            started.elapsed().as_secs_f64()
        ));
        Ok(())
    }

    fn router_up(&self, log: &mut dyn FnMut(&str)) -> Result<()> {
        let ns = self.router_ns();
        let dir = self.s.state_dir.join("router");
        std::fs::create_dir_all(&dir)?;
        if !netns_exists(&ns) {
            log(&format!("router namespace {ns}"));
            netns_add(&ns)?;
            ip(&ns, "link add br0 type bridge")?;
            ip(&ns, "link set br0 up")?;
            ip(&ns, &format!("addr add {ROUTER_ADDR4}/24 dev br0"))?;
            ip(&ns, &format!("addr add {ROUTER_ADDR6}/64 dev br0 nodad"))?;
            // The router forwards (BIRD and FRR install what they learn); these sysctls are
            // the router namespace's own.
            sysctl(&ns, "net.ipv4.ip_forward", "1")?;
            sysctl(&ns, "net.ipv6.conf.all.forwarding", "1")?;
        }
        if self.s.topology == Topology::Rr {
            // No BGP at the router: the nodes reflect among themselves.
            return Ok(());
        }
        router::start(self, &ns, &dir, log)
    }

    fn node_up(&self, n: &Node, log: &mut dyn FnMut(&str)) -> Result<()> {
        std::fs::create_dir_all(&n.dir)?;
        if !netns_exists(&n.ns) {
            log(&format!(
                "node {} in {}: {} {} AS {}, pods {} {}",
                n.name, n.ns, n.addr4, n.addr6, n.asn, n.pod_cidrs[0], n.pod_cidrs[1]
            ));
            netns_add(&n.ns)?;
            let rtr = self.router_ns();
            // One end on the router's bridge, the other is the node's eth0.
            ip(
                &rtr,
                &format!(
                    "link add {} type veth peer name eth0 netns {}",
                    n.name, n.ns
                ),
            )?;
            ip(&rtr, &format!("link set {} master br0 up", n.name))?;
            ip(&n.ns, &format!("addr add {}/24 dev eth0", n.addr4))?;
            ip(&n.ns, &format!("addr add {}/64 dev eth0 nodad", n.addr6))?;
            ip(&n.ns, "link set eth0 up")?;
            // The router is the rack's default gateway; pod gateways (169.254.1.1) are
            // answered by proxy ARP only for addresses the node has a route to.
            ip(&n.ns, &format!("route add default via {ROUTER_ADDR4}"))?;
            ip(&n.ns, &format!("-6 route add default via {ROUTER_ADDR6}"))?;
        }
        let conf = n.dir.join("petrel.yaml");
        std::fs::write(&conf, self.agent_yaml(n))?;
        if !alive(&n.dir.join("petrel.pid")) {
            log(&format!("petrel run on {}", n.name));
            let petrel = self.bin("petrel")?;
            spawn(
                &n.ns,
                &[
                    petrel.to_str().unwrap(),
                    "run",
                    "--config",
                    conf.to_str().unwrap(),
                ],
                &n.dir.join("petrel.log"),
                &n.dir.join("petrel.pid"),
            )?;
        }
        self.echo_up(&n.ns, &n.dir)?;
        Ok(())
    }

    /// The agent's config for node `n`.
    pub fn agent_yaml(&self, n: &Node) -> String {
        if self.s.topology == Topology::Rr {
            return self.agent_yaml_rr(n);
        }
        // A route server (GoBGP here) passes routes on without its own AS first.
        let first_as = if self.s.router.is_route_server() {
            "    enforce_first_as: false\n"
        } else {
            ""
        };
        format!(
            "# petrel-lab node {name}: eBGP to the rack router over IPv4 and IPv6\n\
             node:\n  asn: {asn}\n  router_id: {a4}\n  pod_cidrs: [{c4}, \"{c6}\"]\n\
             peers:\n\
             \x20 - name: tor4\n    address: {r4}\n    asn: {rasn}\n    hold_time: {hold}\n    connect_retry: 1\n    families: [ipv4]\n{first_as}\
             \x20   import:\n      prefixes: [{{ prefix: 10.244.0.0/16, le: 32 }}]\n\
             \x20 - name: tor6\n    address: \"{r6}\"\n    asn: {rasn}\n    hold_time: {hold}\n    connect_retry: 1\n    families: [ipv6]\n{first_as}\
             \x20   import:\n      prefixes: [{{ prefix: \"fd00:10:244::/48\", le: 128 }}]\n\
             bgp:\n  graceful_restart:\n    enabled: false\n\
             fib:\n  protocol: {proto}\n  enable_forwarding: true\n\
             control:\n  socket: {sock}\n",
            name = n.name,
            asn = n.asn,
            a4 = n.addr4,
            c4 = n.pod_cidrs[0],
            c6 = n.pod_cidrs[1],
            r4 = ROUTER_ADDR4,
            r6 = ROUTER_ADDR6,
            rasn = ROUTER_ASN,
            hold = HOLD_TIME,
            proto = FIB_PROTOCOL,
            sock = n.dir.join("petrel.sock").display(),
        )
    }

    /// Whether node `n` is one of the `rr` topology's two reflectors.
    pub fn is_reflector(&self, n: &Node) -> bool {
        self.s.topology == Topology::Rr && n.index <= 2
    }

    /// The `rr` topology: iBGP in AS 65000 over IPv4 and IPv6. The reflectors (n1, n2)
    /// peer with each other and take every other node of the rack LAN as a client through
    /// peer ranges; a client peers with both reflectors.
    fn agent_yaml_rr(&self, n: &Node) -> String {
        // One entry of `peers` or `peer_ranges`; `at` is `address: ...` or `range: ...`.
        let entry = |name: &str, at: String, v6: bool, extra: &str| {
            let (fam, import) = if v6 {
                ("ipv6", "\"fd00:10:244::/48\", le: 128")
            } else {
                ("ipv4", "10.244.0.0/16, le: 32")
            };
            format!(
                "  - {{ name: {name}, {at}, asn: {ROUTER_ASN}, hold_time: {HOLD_TIME}, connect_retry: 1, families: [{fam}]{extra}, import: {{ prefixes: [{{ prefix: {import} }}] }} }}\n"
            )
        };
        let peer =
            |name: &str, a: IpAddr| entry(name, format!("address: \"{a}\""), a.is_ipv6(), "");
        let mut peers = String::new();
        let mut ranges = String::new();
        if self.is_reflector(n) {
            let other = self.node(3 - n.index);
            peers.push_str(&peer("rr4", other.addr4));
            peers.push_str(&peer("rr6", other.addr6));
            let clients = ", route_reflector_client: true, max_peers: 100";
            ranges.push_str("peer_ranges:\n");
            ranges.push_str(&entry(
                "clients4",
                "range: 172.30.0.0/24".into(),
                false,
                clients,
            ));
            ranges.push_str(&entry(
                "clients6",
                "range: \"fd00:172:30::/64\"".into(),
                true,
                clients,
            ));
        } else {
            for r in [self.node(1), self.node(2)] {
                peers.push_str(&peer(&format!("{}-4", r.name), r.addr4));
                peers.push_str(&peer(&format!("{}-6", r.name), r.addr6));
            }
        }
        format!(
            "# petrel-lab node {name}: iBGP, {role}\n\
             node:\n  asn: {asn}\n  router_id: {a4}\n  pod_cidrs: [{c4}, \"{c6}\"]\n\
             peers:\n{peers}{ranges}\
             bgp:\n  cluster_id: {CLUSTER_ID}\n  graceful_restart:\n    enabled: false\n\
             fib:\n  protocol: {proto}\n  enable_forwarding: true\n\
             control:\n  socket: {sock}\n",
            name = n.name,
            role = if self.is_reflector(n) {
                "a route reflector"
            } else {
                "a client of the reflectors n1 and n2"
            },
            asn = n.asn,
            a4 = n.addr4,
            c4 = n.pod_cidrs[0],
            c6 = n.pod_cidrs[1],
            proto = FIB_PROTOCOL,
            sock = n.dir.join("petrel.sock").display(),
        )
    }

    /// Sessions node `n` has once the lab is up.
    fn sessions_of(&self, n: &Node) -> usize {
        match self.s.topology {
            Topology::Tor => 2,
            Topology::Rr if self.is_reflector(n) => 2 + 2 * (self.s.nodes - 2),
            Topology::Rr => 4,
        }
    }

    fn echo_up(&self, ns: &str, dir: &Path) -> Result<()> {
        let pid = dir.join("echo.pid");
        if alive(&pid) {
            return Ok(());
        }
        let me = std::env::current_exe()?;
        spawn(
            ns,
            &[
                me.to_str().unwrap(),
                "echo",
                "--port",
                &ECHO_PORT.to_string(),
            ],
            &dir.join("echo.log"),
            &pid,
        )?;
        // Ready when it accepts.
        wait_for(
            &format!("echo listener in {ns}"),
            Duration::from_secs(10),
            || {
                in_netns(ns, || {
                    TcpStream::connect_timeout(
                        &SocketAddr::from(([127, 0, 0, 1], ECHO_PORT)),
                        Duration::from_secs(1),
                    )
                    .is_ok()
                })
                .unwrap_or(false)
                .then_some(())
            },
        )
    }

    /// The node's agent status (`petrel status --json`), if it answers.
    pub fn agent_status(&self, n: &Node) -> Option<Value> {
        let petrel = self.bin("petrel").ok()?;
        let out = Command::new(petrel)
            .args(["status", "--json", "--socket"])
            .arg(n.dir.join("petrel.sock"))
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// `petrel status` as the table an operator reads.
    pub fn agent_table(&self, n: &Node) -> String {
        let Ok(petrel) = self.bin("petrel") else {
            return String::new();
        };
        match Command::new(petrel)
            .args(["status", "--socket"])
            .arg(n.dir.join("petrel.sock"))
            .output()
        {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
            Ok(o) => format!("(no answer: {})", String::from_utf8_lossy(&o.stderr).trim()),
            Err(e) => format!("(no answer: {e})"),
        }
    }

    fn wait_established(&self, n: &Node) -> Result<()> {
        let deadline = Duration::from_secs(60);
        let r = wait_for(
            &format!("{}'s sessions to the router", n.name),
            deadline,
            || {
                let st = self.agent_status(n)?;
                let peers = st["peers"].as_array()?;
                (peers.len() == self.sessions_of(n)
                    && peers.iter().all(|p| p["state"] == "Established"))
                .then_some(())
            },
        );
        r.with_context(|| {
            format!(
                "agent log {}:\n{}",
                n.dir.join("petrel.log").display(),
                tail(&n.dir.join("petrel.log"), 15)
            )
        })
    }

    /// Every node has every other node's pod CIDRs in its FIB (and the router has them all).
    pub fn wait_converged(&self, timeout: Duration) -> Result<()> {
        wait_for("routes to converge", timeout, || {
            let nodes = self.nodes();
            for n in &nodes {
                let fib = fib(&n.ns);
                for other in nodes.iter().filter(|o| o.index != n.index) {
                    for c in &other.pod_cidrs {
                        if !fib.iter().any(|l| l.starts_with(&format!("{c} "))) {
                            return None;
                        }
                    }
                }
            }
            if self.s.topology == Topology::Rr {
                return Some(());
            }
            let have = router::prefixes(self);
            nodes
                .iter()
                .all(|n| n.pod_cidrs.iter().all(|c| have.contains(c)))
                .then_some(())
        })
    }

    // ---------------------------------------------------------------- pods

    /// The CNI network config the lab's "runtime" passes for pods of node `n`.
    pub fn cni_conf(&self, n: &Node) -> Value {
        json!({
            "cniVersion": "1.1.0",
            "name": "petrel-lab",
            "type": "petrel-cni",
            "ipam": {
                "type": "petrel-ipam",
                "config": n.dir.join("petrel.yaml"),
                "data_dir": n.dir.join("ipam"),
            }
        })
    }

    /// Run the CNI plugin on node `n` for `pod` the way a runtime does.
    pub fn cni(&self, n: &Node, pod: &Pod, cmd: &str, args: &str) -> Result<Value> {
        let plugin = self.bin("petrel-cni")?;
        let netns = if netns_exists(&pod.ns) {
            format!("/var/run/netns/{}", pod.ns)
        } else {
            String::new()
        };
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &n.ns])
            .arg(&plugin)
            .env("CNI_COMMAND", cmd)
            .env("CNI_CONTAINERID", &pod.container_id)
            .env("CNI_NETNS", &netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", &self.s.bin_dir)
            .env(
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE=lab;K8S_POD_NAME={}{args}",
                    pod.name
                ),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().context("run petrel-cni")?;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(self.cni_conf(n).to_string().as_bytes())?;
        let out = child.wait_with_output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "petrel-cni {cmd} for {}: {} {}",
                pod.name,
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(serde_json::from_str(&stdout).unwrap_or(Value::Null))
    }

    /// Create pod `pod` (namespace, CNI ADD, echo listener) unless it is there already.
    /// `ip`: ask for these addresses (CNI_ARGS IP=...).
    pub fn pod_up(&self, pod: &Pod, ip: Option<&str>, log: &mut dyn FnMut(&str)) -> Result<()> {
        let n = self.node(pod.node);
        let dir = self.pod_dir(pod);
        std::fs::create_dir_all(&dir)?;
        let fresh = !netns_exists(&pod.ns);
        if fresh {
            netns_add(&pod.ns)?;
        }
        if fresh || pod_addrs(&pod.ns).is_empty() {
            let args = ip.map(|a| format!(";IP={a}")).unwrap_or_default();
            match self.cni(&n, pod, "ADD", &args) {
                Ok(r) => {
                    std::fs::write(dir.join("result.json"), r.to_string())?;
                    let ips: Vec<&str> = r["ips"]
                        .as_array()
                        .map(|a| a.iter().filter_map(|i| i["address"].as_str()).collect())
                        .unwrap_or_default();
                    log(&format!(
                        "pod {} on {}: {}",
                        pod.name,
                        n.name,
                        ips.join(" ")
                    ));
                }
                Err(e) => {
                    let _ = netns_del(&pod.ns);
                    return Err(e);
                }
            }
        }
        self.echo_up(&pod.ns, &dir)
    }

    /// Delete a pod the way a runtime does: CNI DEL, then its namespace.
    pub fn pod_down(&self, pod: &Pod) -> Result<()> {
        let n = self.node(pod.node);
        let dir = self.pod_dir(pod);
        stop(&dir.join("echo.pid"));
        let r = self.cni(&n, pod, "DEL", "");
        netns_del(&pod.ns)?;
        let _ = std::fs::remove_dir_all(&dir);
        r.map(|_| ())
    }

    fn pod_dir(&self, pod: &Pod) -> PathBuf {
        self.s.state_dir.join("pods").join(&pod.name)
    }

    // ---------------------------------------------------------------- down

    /// Remove every namespace, process and file of the lab. Best effort: goes on past
    /// errors and reports the first.
    pub fn down(&self, log: &mut dyn FnMut(&str)) -> Result<()> {
        let mut first_err: Option<anyhow::Error> = None;
        let mut note = |r: Result<()>| {
            if let Err(e) = r
                && first_err.is_none()
            {
                first_err = Some(e);
            }
        };
        for pod in self.pods() {
            log(&format!("pod {}: CNI DEL", pod.name));
            note(self.pod_down(&pod));
        }
        for n in self.nodes() {
            log(&format!("node {}: stopping petrel", n.name));
            stop(&n.dir.join("petrel.pid"));
            stop(&n.dir.join("echo.pid"));
        }
        router::stop_router(self);
        // Whatever is left in the lab's namespaces (a daemon whose pid file was lost), then
        // the namespaces themselves.
        for ns in crate::netns_names()
            .into_iter()
            .filter(|ns| self.owns_ns(ns))
        {
            for pid in netns_pids(&ns) {
                // SAFETY: kill(2) of a process inside a namespace the lab made.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            log(&format!("namespace {ns}: deleted"));
            note(netns_del(&ns));
        }
        if self.s.state_dir.join("lab.json").exists() {
            note(
                std::fs::remove_dir_all(&self.s.state_dir)
                    .with_context(|| self.s.state_dir.display().to_string()),
            );
        }
        first_err.map_or(Ok(()), Err)
    }

    // ---------------------------------------------------------------- views

    /// Everything `status` prints, measured now.
    pub fn report(&self) -> Report {
        report::collect(self)
    }
}

// -------------------------------------------------------------------- helpers

pub(crate) use crate::host::{
    alive, need_tool, netns_add, netns_del, netns_exists, netns_pids, run_ok,
    spawn_daemon as spawn, stop, sysctl, tail,
};
pub use crate::host::{in_netns, ip, running_pid, wait_for};

/// The node's routes of protocol [`FIB_PROTOCOL`], IPv4 then IPv6, one per line.
pub fn fib(ns: &str) -> Vec<String> {
    let mut out = Vec::new();
    for fam in ["-4", "-6"] {
        if let Ok(t) = ip(ns, &format!("{fam} route show proto {FIB_PROTOCOL}")) {
            // Multipath routes continue on indented lines.
            for l in t.lines() {
                if l.starts_with([' ', '\t']) {
                    if let Some(last) = out.last_mut() {
                        let last: &mut String = last;
                        last.push(' ');
                        last.push_str(l.trim());
                    }
                } else {
                    out.push(l.to_string());
                }
            }
        }
    }
    out
}

/// The global addresses on a pod's eth0, as it reads them itself (IPv4 first).
pub fn pod_addrs(ns: &str) -> Vec<IpAddr> {
    let Ok(out) = run_ok(Command::new("ip").args(["-n", ns, "-j", "addr", "show", "dev", "eth0"]))
    else {
        return Vec::new();
    };
    let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    let mut addrs: Vec<IpAddr> = v
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|i| i["addr_info"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["scope"] == "global")
        .filter_map(|a| a["local"].as_str()?.parse().ok())
        .collect();
    addrs.sort_by_key(|a| a.is_ipv6());
    addrs
}

/// The echo listener: answers each TCP connection with the address it saw the connection
/// come from, and logs it. Dual stack (IPv4 peers arrive as mapped addresses and are shown
/// as plain IPv4).
pub fn echo_serve(port: u16) -> Result<()> {
    let l = TcpListener::bind(("::", port)).with_context(|| format!("bind [::]:{port}"))?;
    for s in l.incoming() {
        let Ok(mut s) = s else { continue };
        std::thread::spawn(move || {
            let Ok(peer) = s.peer_addr() else { return };
            let seen = peer.ip().to_canonical();
            let _ = s.write_all(format!("{seen}\n").as_bytes());
            println!("{seen}");
        });
    }
    Ok(())
}

/// Connect from inside `ns` to an echo listener; returns (our local address, the address
/// the listener saw).
pub fn echo_probe(ns: &str, dst: IpAddr) -> Result<(IpAddr, IpAddr)> {
    in_netns(ns, move || -> Result<(IpAddr, IpAddr)> {
        let mut s =
            TcpStream::connect_timeout(&SocketAddr::new(dst, ECHO_PORT), Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        let local = s.local_addr()?.ip().to_canonical();
        let mut seen = String::new();
        s.read_to_string(&mut seen)?;
        let seen: IpAddr = seen
            .trim()
            .parse()
            .map_err(|_| anyhow!("echo answered {seen:?}"))?;
        Ok((local, seen))
    })?
}

/// One ICMP echo from `ns` to `dst` (`ping -c 1 -W 2`).
pub fn ping(ns: &str, dst: IpAddr) -> bool {
    Command::new("ip")
        .args([
            "netns", "exec", ns, "ping", "-n", "-q", "-c", "1", "-W", "2",
        ])
        .arg(dst.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}
