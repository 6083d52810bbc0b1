//! What `petrel-lab status` shows: each node's agent, the router's routes, the pods, and
//! the reachability matrix with the address each receiver saw.

use std::fmt::Write as _;
use std::net::IpAddr;

use serde_json::{Value, json};

use super::{Lab, echo_probe, fib, ping, pod_addrs, router, running_pid};

/// One endpoint of the matrix: a pod or a node.
#[derive(Debug, Clone)]
struct Endpoint {
    name: String,
    ns: String,
    is_pod: bool,
    v4: Option<IpAddr>,
    v6: Option<IpAddr>,
}

impl Endpoint {
    fn addr(&self, v6: bool) -> Option<IpAddr> {
        if v6 { self.v6 } else { self.v4 }
    }
}

/// One cell: `from` reaching `to` over one family.
#[derive(Debug, Clone)]
pub struct Cell {
    pub family: &'static str,
    pub from: String,
    pub to: String,
    pub dst: IpAddr,
    /// The ICMP echo was answered.
    pub ping: bool,
    /// The sender's own address for the connection (its socket's local address).
    pub local: Option<IpAddr>,
    /// The address the receiver saw the connection come from.
    pub seen: Option<IpAddr>,
    /// What the sender reads on its eth0 (pods) or LAN interface (nodes).
    pub own: Option<IpAddr>,
    pub error: Option<String>,
}

impl Cell {
    /// Answered, and the receiver saw exactly the sender's own address.
    pub fn ok(&self) -> bool {
        self.ping && self.seen.is_some() && self.seen == self.local && self.seen == self.own
    }
}

/// Everything measured for one `status`.
pub struct Report {
    pub json: Value,
    pub cells: Vec<Cell>,
    text: String,
}

impl Report {
    pub fn all_ok(&self) -> bool {
        !self.cells.is_empty() && self.cells.iter().all(Cell::ok)
    }
}

/// Measure everything now.
pub fn collect(lab: &Lab) -> Report {
    let mut text = String::new();
    let s = &lab.s;
    let _ = writeln!(
        text,
        "Petrel lab {:?}: router {} (AS {}), {} nodes, {} pods per node; files in {}\n",
        s.prefix,
        s.router.title(),
        super::ROUTER_ASN,
        s.nodes,
        s.pods,
        s.state_dir.display()
    );

    // Nodes: the agent's own view, then the kernel's.
    let mut nodes_json = Vec::new();
    let mut endpoints = Vec::new();
    for n in lab.nodes() {
        let pid = running_pid(&n.dir.join("petrel.pid"));
        let _ = writeln!(
            text,
            "── node {} ── namespace {} ── {} {} ── AS {} ── pods {} {} ── petrel pid {}",
            n.name,
            n.ns,
            n.addr4,
            n.addr6,
            n.asn,
            n.pod_cidrs[0],
            n.pod_cidrs[1],
            pid.map_or("(not running)".to_string(), |p| p.to_string())
        );
        let _ = writeln!(text, "$ petrel status");
        text.push_str(&lab.agent_table(&n));
        let routes = fib(&n.ns);
        let _ = writeln!(
            text,
            "$ ip route show proto {} (IPv4 and IPv6)",
            super::FIB_PROTOCOL
        );
        for r in &routes {
            let _ = writeln!(text, "{r}");
        }
        text.push('\n');
        nodes_json.push(json!({
            "name": n.name,
            "namespace": n.ns,
            "asn": n.asn,
            "addresses": [n.addr4, n.addr6],
            "pod_cidrs": n.pod_cidrs,
            "pid": pid,
            "config": n.dir.join("petrel.yaml"),
            "socket": n.dir.join("petrel.sock"),
            "status": lab.agent_status(&n),
            "fib": routes,
        }));
        endpoints.push(Endpoint {
            name: n.name.clone(),
            ns: n.ns.clone(),
            is_pod: false,
            v4: Some(n.addr4),
            v6: Some(n.addr6),
        });
    }

    // The router.
    let views = router::route_views(lab);
    let _ = writeln!(
        text,
        "── router ── namespace {} ── {} ── AS {}",
        lab.router_ns(),
        s.router.title(),
        super::ROUTER_ASN
    );
    for (cmd, out) in &views {
        let _ = writeln!(text, "$ {cmd}\n{}", out.trim_end());
    }
    text.push('\n');
    let router_prefixes = router::prefixes_in(&views);

    // Pods.
    let _ = writeln!(
        text,
        "── pods (addresses as each pod reads them on its eth0)"
    );
    let _ = writeln!(
        text,
        "{:<8} {:<5} {:<18} {:<15} {:<22} host veth",
        "POD", "NODE", "NAMESPACE", "IPV4", "IPV6"
    );
    let mut pods_json = Vec::new();
    let mut pod_eps = Vec::new();
    for p in lab.pods() {
        let addrs = pod_addrs(&p.ns);
        let v4 = addrs.iter().find(|a| a.is_ipv4()).copied();
        let v6 = addrs.iter().find(|a| a.is_ipv6()).copied();
        let result: Value =
            std::fs::read_to_string(s.state_dir.join("pods").join(&p.name).join("result.json"))
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or(Value::Null);
        let veth = result["interfaces"][0]["name"]
            .as_str()
            .unwrap_or("?")
            .to_string();
        let show = |a: Option<IpAddr>| a.map_or("-".to_string(), |a| a.to_string());
        let _ = writeln!(
            text,
            "{:<8} {:<5} {:<18} {:<15} {:<22} {}",
            p.name,
            format!("n{}", p.node),
            p.ns,
            show(v4),
            show(v6),
            veth
        );
        pods_json.push(json!({
            "name": p.name,
            "node": format!("n{}", p.node),
            "namespace": p.ns,
            "container_id": p.container_id,
            "addresses": addrs,
            "host_veth": veth,
        }));
        pod_eps.push(Endpoint {
            name: p.name.clone(),
            ns: p.ns.clone(),
            is_pod: true,
            v4,
            v6,
        });
    }
    text.push('\n');
    pod_eps.extend(endpoints);
    let endpoints = pod_eps;

    // The matrix: every pod to every other pod and node, every node to every pod.
    let cells = probe_all(&endpoints);
    for (fam, v6) in [("IPv4", false), ("IPv6", true)] {
        render_matrix(&mut text, fam, v6, &endpoints, &cells);
    }
    let total = cells.len();
    let ok = cells.iter().filter(|c| c.ok()).count();
    let _ = writeln!(
        text,
        "{ok}/{total} cells ok{}",
        if ok == total && total > 0 {
            ": every pod reaches every pod and node, every node every pod, and each receiver saw the sender's own address (no NAT)"
        } else {
            ": FAILURES above"
        }
    );

    let json = json!({
        "prefix": s.prefix,
        "state_dir": s.state_dir,
        "router": {
            "kind": s.router.to_string(),
            "namespace": lab.router_ns(),
            "asn": super::ROUTER_ASN,
            "addresses": [super::ROUTER_ADDR4, super::ROUTER_ADDR6],
            "prefixes": router_prefixes,
        },
        "nodes": nodes_json,
        "pods": pods_json,
        "matrix": cells.iter().map(|c| json!({
            "family": c.family,
            "from": c.from,
            "to": c.to,
            "dst": c.dst,
            "ping": c.ping,
            "local": c.local,
            "seen": c.seen,
            "own": c.own,
            "error": c.error,
            "ok": c.ok(),
        })).collect::<Vec<_>>(),
        "ok": !cells.is_empty() && ok == total,
    });
    Report { json, cells, text }
}

/// Probe every (from, to, family) pair; one thread per sender.
fn probe_all(eps: &[Endpoint]) -> Vec<Cell> {
    std::thread::scope(|s| {
        let handles: Vec<_> = eps
            .iter()
            .map(|from| {
                s.spawn(move || {
                    let mut out = Vec::new();
                    for v6 in [false, true] {
                        for to in eps {
                            // Node to node is the rack LAN, not the pod network.
                            if to.name == from.name || (!from.is_pod && !to.is_pod) {
                                continue;
                            }
                            let Some(dst) = to.addr(v6) else { continue };
                            out.push(probe(from, to, dst, v6));
                        }
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

fn probe(from: &Endpoint, to: &Endpoint, dst: IpAddr, v6: bool) -> Cell {
    let ping = ping(&from.ns, dst);
    let (local, seen, error) = match echo_probe(&from.ns, dst) {
        Ok((l, s)) => (Some(l), Some(s), None),
        Err(e) => (None, None, Some(e.to_string())),
    };
    Cell {
        family: if v6 { "ipv6" } else { "ipv4" },
        from: from.name.clone(),
        to: to.name.clone(),
        dst,
        ping,
        local,
        seen,
        own: from.addr(v6),
        error,
    }
}

fn render_matrix(text: &mut String, fam: &str, v6: bool, eps: &[Endpoint], cells: &[Cell]) {
    let w = eps.iter().map(|e| e.name.len()).max().unwrap_or(4).max(4) + 1;
    let _ = writeln!(
        text,
        "── {fam} reachability: ICMP echo + TCP to an echo listener that answers with the source address it saw"
    );
    let _ = writeln!(
        text,
        "   ok = answered, and the receiver saw the sender's own address; · = not probed"
    );
    let mut head = format!("{:<w$}", "from \\ to");
    for e in eps {
        let _ = write!(head, "{:>w$}", e.name);
    }
    let _ = writeln!(text, "{head}   receivers saw");
    for from in eps {
        let mut row = format!("{:<w$}", from.name);
        let mut seen: Vec<(IpAddr, usize)> = Vec::new();
        let mut n = 0;
        for to in eps {
            let c = cells
                .iter()
                .find(|c| c.from == from.name && c.to == to.name && (c.family == "ipv6") == v6);
            let mark = match c {
                None => "·".to_string(),
                Some(c) => {
                    n += 1;
                    if let Some(s) = c.seen {
                        match seen.iter_mut().find(|(a, _)| *a == s) {
                            Some((_, k)) => *k += 1,
                            None => seen.push((s, 1)),
                        }
                    }
                    if c.ok() {
                        "ok".to_string()
                    } else if !c.ping && c.seen.is_none() {
                        "FAIL".to_string()
                    } else if c.seen.is_some() && c.seen != c.own {
                        "NAT?".to_string()
                    } else if !c.ping {
                        "noping".to_string()
                    } else {
                        "notcp".to_string()
                    }
                }
            };
            let _ = write!(row, "{mark:>w$}");
        }
        let own = from.addr(v6);
        let saw: Vec<String> = seen
            .iter()
            .map(|(a, k)| {
                let tag = if Some(*a) == own {
                    if from.is_pod {
                        " (its eth0)"
                    } else {
                        " (its own)"
                    }
                } else {
                    " (NOT its address)"
                };
                format!("{a}{tag} by {k}/{n}")
            })
            .collect();
        let _ = writeln!(
            text,
            "{row}   {}",
            if saw.is_empty() {
                "nothing".to_string()
            } else {
                saw.join(", ")
            }
        );
    }
    for c in cells
        .iter()
        .filter(|c| (c.family == "ipv6") == v6 && !c.ok())
    {
        let _ = writeln!(
            text,
            "   {} -> {} {}: ping {}, {}",
            c.from,
            c.to,
            c.dst,
            if c.ping { "answered" } else { "no answer" },
            match (&c.seen, &c.error) {
                (Some(s), _) => format!(
                    "receiver saw {s}, sender used {:?}, eth0 {:?}",
                    c.local, c.own
                ),
                (None, Some(e)) => format!("tcp: {e}"),
                _ => "tcp: no answer".into(),
            }
        );
    }
    text.push('\n');
}

/// The report as text.
pub fn render(r: &Report) -> &str {
    &r.text
}
