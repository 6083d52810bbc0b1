//! From the file as written ([`crate::raw`]) to a validated [`Config`], collecting every problem
//! with its location.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ipnet::IpNet;
use serde_saphyr::{Location, Spanned};

use crate::raw::*;
use crate::*;

struct Ctx<'a> {
    file: &'a str,
    problems: Vec<Problem>,
    warnings: Vec<Problem>,
}

impl Ctx<'_> {
    fn warn(&mut self, at: Location, message: impl Into<String>) {
        self.warnings.push(Problem {
            file: self.file.to_string(),
            line: at.line(),
            column: at.column(),
            message: format!("warning: {}", message.into()),
        });
    }

    fn err(&mut self, at: Location, message: impl Into<String>) {
        self.problems.push(Problem {
            file: self.file.to_string(),
            line: at.line(),
            column: at.column(),
            message: message.into(),
        });
    }

    /// An integer within `lo..=hi`, or a problem at its location.
    fn int<T: TryFrom<i64>>(
        &mut self,
        v: &Spanned<i64>,
        lo: i64,
        hi: i64,
        what: &str,
    ) -> Option<T> {
        if v.value < lo || v.value > hi {
            self.err(
                v.referenced,
                format!("{what} {} out of range ({lo}..={hi})", v.value),
            );
            return None;
        }
        T::try_from(v.value).ok()
    }

    fn opt_int<T: TryFrom<i64>>(
        &mut self,
        v: &Option<Spanned<i64>>,
        lo: i64,
        hi: i64,
        what: &str,
        default: T,
    ) -> T {
        match v {
            Some(v) => self.int(v, lo, hi, what).unwrap_or(default),
            None => default,
        }
    }

    fn parse<T: FromStr>(&mut self, v: &Spanned<String>, what: &str) -> Option<T> {
        match v.value.trim().parse() {
            Ok(x) => Some(x),
            Err(_) => {
                self.err(v.referenced, format!("invalid {what} {:?}", v.value));
                None
            }
        }
    }

    /// A CIDR whose host bits are all zero.
    fn cidr(&mut self, v: &Spanned<String>, what: &str) -> Option<IpNet> {
        let net: IpNet = self.parse(v, what)?;
        if net.trunc() != net {
            self.err(
                v.referenced,
                format!(
                    "{what} {net} has host bits set (did you mean {}?)",
                    net.trunc()
                ),
            );
            return None;
        }
        Some(net)
    }
}

/// The message of a decoder error, without the location prefix and snippet it renders.
fn decoder_message(e: &serde_saphyr::Error) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or("").trim();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    // "line L column C: message"
    if let Some(rest) = first.strip_prefix("line ")
        && let Some((_, msg)) = rest.split_once(": ")
    {
        return msg.to_string();
    }
    first.to_string()
}

/// Validate a config given as text. `file` names it in problems; `base` resolves relative paths.
pub fn parse_str(text: &str, file: &str, base: Option<&Path>) -> Result<Config, Error> {
    let raw: RawConfig = match serde_saphyr::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let (line, column) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((1, 1));
            return Err(Error::Invalid {
                problems: vec![Problem {
                    file: file.to_string(),
                    line: line.max(1),
                    column: column.max(1),
                    message: decoder_message(&e),
                }],
            });
        }
    };
    let mut cx = Ctx {
        file,
        problems: Vec::new(),
        warnings: Vec::new(),
    };
    let mut cfg = build(&mut cx, raw, base);
    if cx.problems.is_empty() {
        cx.warnings.sort_by_key(|p| (p.line, p.column));
        cfg.warnings = cx.warnings;
        Ok(cfg)
    } else {
        cx.problems.sort_by_key(|p| (p.line, p.column));
        Err(Error::Invalid {
            problems: cx.problems,
        })
    }
}

fn build(cx: &mut Ctx<'_>, raw: RawConfig, base: Option<&Path>) -> Config {
    let node = node(cx, &raw.node);
    let bgp = bgp(cx, raw.bgp.as_ref());
    let pod_cidrs = node.pod_cidrs.static_list().to_vec();
    let mut peers = Vec::new();
    let mut names: HashMap<String, Location> = HashMap::new();
    let mut addrs: HashMap<IpAddr, Location> = HashMap::new();
    for p in &raw.peers {
        // Duplicates are checked on what is written, also for peers with other problems.
        unique_name(cx, &mut names, &p.value.name);
        if let Some(a) = &p.value.address
            && let Ok(addr) = a.value.trim().parse::<IpAddr>()
        {
            if let Some(first) = addrs.get(&addr) {
                let msg = format!(
                    "duplicate peer address {addr} (first at line {})",
                    first.line()
                );
                cx.err(a.referenced, msg);
            } else {
                addrs.insert(addr, a.referenced);
            }
        }
        if let Some(peer) = peer(cx, p, &bgp, &pod_cidrs, base, node.asn, Kind::Peer) {
            peers.push(peer);
        }
    }
    let mut peer_ranges: Vec<PeerRange> = Vec::new();
    for p in &raw.peer_ranges {
        unique_name(cx, &mut names, &p.value.name);
        let range = match &p.value.range {
            Some(r) => cx.parse::<IpNet>(r, "range (a CIDR such as 198.18.0.0/15)"),
            None => {
                cx.err(p.referenced, "a peer range needs `range:` (a CIDR)");
                None
            }
        };
        if let (Some(r), Some(s)) = (range, &p.value.range)
            && let Some(other) = peer_ranges
                .iter()
                .find(|o| o.range.contains(&r.network()) || r.contains(&o.range.network()))
        {
            cx.err(
                s.referenced,
                format!(
                    "range {r} overlaps range {} of {:?}",
                    other.range, other.name
                ),
            );
        }
        let max_peers = cx.opt_int(&p.value.max_peers, 1, 100_000, "max_peers", 1000);
        if let Some(range) = range
            && let Some(template) =
                peer(cx, p, &bgp, &pod_cidrs, base, node.asn, Kind::Range(range))
        {
            peer_ranges.push(PeerRange {
                name: template.name.clone(),
                range: range.trunc(),
                max_peers,
                template,
            });
        }
    }
    let mesh = raw.mesh.and_then(|m| {
        let (referenced, defined) = (m.referenced, m.defined);
        match m.value {
            RawMesh::None(word) => {
                if word != "none" {
                    cx.err(
                        referenced,
                        format!("mesh {word:?}: none, or a table such as {{ from: kubernetes }}"),
                    );
                }
                None
            }
            RawMesh::Table(t) => {
                let t = Spanned::new(*t, referenced, defined);
                peer(cx, &t, &bgp, &pod_cidrs, base, node.asn, Kind::Mesh)
                    .map(|template| MeshConfig { template })
            }
        }
    });
    Config {
        node,
        peers,
        peer_ranges,
        mesh,
        bgp,
        fib: fib(cx, raw.fib.as_ref()),
        control: ControlConfig {
            socket: control_socket(cx, raw.control.as_ref()),
        },
        metrics: MetricsConfig {
            address: raw
                .metrics
                .as_ref()
                .and_then(|m| m.value.address.as_ref())
                .and_then(|a| cx.parse::<SocketAddr>(a, "metrics address (want ip:port)")),
        },
        originate: raw
            .originate
            .as_ref()
            .map(|l| originate(cx, l, &pod_cidrs))
            .unwrap_or_default(),
        warnings: Vec::new(),
    }
}

/// Peer and peer range names are one namespace: the second use of a name is an error.
fn unique_name(
    cx: &mut Ctx<'_>,
    names: &mut HashMap<String, Location>,
    name: &Option<Spanned<String>>,
) {
    let Some(name) = name else { return };
    if let Some(first) = names.get(&name.value) {
        let msg = format!(
            "duplicate peer name {:?} (first at line {})",
            name.value,
            first.line()
        );
        cx.err(name.referenced, msg);
    } else {
        names.insert(name.value.clone(), name.referenced);
    }
}

fn control_socket(cx: &mut Ctx<'_>, raw: Option<&Spanned<RawControl>>) -> PathBuf {
    let Some(s) = raw.and_then(|c| c.value.socket.as_ref()) else {
        return PathBuf::from(DEFAULT_CONTROL_SOCKET);
    };
    if s.value.is_empty() {
        cx.err(s.referenced, "control.socket is empty");
    } else if s.value.len() > MAX_SOCKET_PATH {
        cx.err(
            s.referenced,
            format!(
                "control.socket is {} bytes long; a Unix socket path holds at most {MAX_SOCKET_PATH}",
                s.value.len()
            ),
        );
    }
    PathBuf::from(&s.value)
}

fn asn(cx: &mut Ctx<'_>, v: &Spanned<i64>, what: &str) -> u32 {
    let n = cx.int::<u32>(v, 1, u32::MAX as i64, what).unwrap_or(0);
    if n == 23456 {
        cx.err(
            v.referenced,
            format!("{what} 23456 is AS_TRANS (RFC 6793), not a real AS number"),
        );
    }
    n
}

fn node(cx: &mut Ctx<'_>, raw: &Spanned<RawNode>) -> NodeConfig {
    let n = &raw.value;
    let asn = asn(cx, &n.asn, "node ASN");
    let router_id = match cx.parse::<Ipv4Addr>(&n.router_id, "router_id (want an IPv4 address)") {
        Some(id) if id.is_unspecified() || id.is_broadcast() || id.is_multicast() => {
            cx.err(
                n.router_id.referenced,
                format!("router_id {id} is not a usable BGP identifier"),
            );
            id
        }
        Some(id) => id,
        None => Ipv4Addr::UNSPECIFIED,
    };
    if let Some(name) = &n.name
        && !safe_name(&name.value, 253, true)
    {
        cx.err(
            name.referenced,
            format!(
                "node name {:?}: only letters, digits, '.', '_', '-' and ':', at most 253",
                name.value
            ),
        );
    }
    let mut min_len = MinPodCidrLen::default();
    if let Some(m) = &n.min_pod_cidr_len {
        min_len.ipv4 = cx.opt_int(&m.value.ipv4, 1, 32, "min_pod_cidr_len.ipv4", 16);
        min_len.ipv6 = cx.opt_int(&m.value.ipv6, 1, 128, "min_pod_cidr_len.ipv6", 48);
    }
    let pod_cidrs = match (&n.pod_cidrs, &n.pod_cidrs_from) {
        (Some(_), Some(from)) => {
            cx.err(
                from.referenced,
                "give either pod_cidrs or pod_cidrs_from, not both",
            );
            PodCidrs::Static(Vec::new())
        }
        (None, Some(from)) => {
            if from.value != "kubernetes" {
                cx.err(
                    from.referenced,
                    format!(
                        "unknown pod_cidrs_from {:?} (the only source is \"kubernetes\")",
                        from.value
                    ),
                );
            }
            PodCidrs::Kubernetes
        }
        (Some(list), None) => {
            let mut out: Vec<IpNet> = Vec::new();
            for c in &list.value {
                let Some(net) = cx.cidr(c, "pod CIDR") else {
                    continue;
                };
                if let Some(why) = min_len.refuse(&net) {
                    cx.err(c.referenced, why);
                    continue;
                }
                if let Some(other) = out.iter().find(|o| o.contains(&net) || net.contains(*o)) {
                    let msg = format!("pod CIDR {net} overlaps {other}");
                    cx.err(c.referenced, msg);
                    continue;
                }
                out.push(net);
            }
            if list.value.is_empty() {
                // A node that only routes (a route reflector, say) has no pods of its own.
                cx.warn(
                    list.referenced,
                    "pod_cidrs is empty: this node announces no pod CIDR (fine for a route reflector)",
                );
            }
            PodCidrs::Static(out)
        }
        (None, None) => {
            cx.err(
                raw.referenced,
                "missing field `pod_cidrs` (or `pod_cidrs_from: kubernetes`)",
            );
            PodCidrs::Static(Vec::new())
        }
    };
    NodeConfig {
        name: n.name.as_ref().map(|s| s.value.clone()),
        asn,
        router_id,
        pod_cidrs,
        min_pod_cidr_len: min_len,
    }
}

fn bgp(cx: &mut Ctx<'_>, raw: Option<&Spanned<RawBgp>>) -> BgpConfig {
    let mut out = BgpConfig {
        cluster_id: None,
        listen_addresses: Vec::new(),
        listen_port: BGP_PORT,
        graceful_restart: GracefulRestartConfig {
            enabled: true,
            restart_time: 120,
            stale_time: 360,
        },
        max_paths: 8,
    };
    let Some(raw) = raw else { return out };
    let b = &raw.value;
    out.cluster_id = b
        .cluster_id
        .as_ref()
        .and_then(|c| cx.parse::<Ipv4Addr>(c, "cluster_id (an IPv4 address)"));
    if let Some(list) = &b.listen_addresses {
        out.listen_addresses = list
            .iter()
            .filter_map(|a| cx.parse::<IpAddr>(a, "listen address"))
            .collect();
    }
    out.listen_port = cx.opt_int(&b.listen_port, 0, 65535, "listen_port", BGP_PORT);
    out.max_paths = cx.opt_int(&b.max_paths, 1, 64, "max_paths", 8);
    if let Some(gr) = &b.graceful_restart {
        let g = &gr.value;
        out.graceful_restart.enabled = g.enabled.unwrap_or(true);
        // RFC 4724: Restart Time is 12 bits.
        out.graceful_restart.restart_time =
            cx.opt_int(&g.restart_time, 1, 4095, "restart_time", 120);
        out.graceful_restart.stale_time = cx.opt_int(&g.stale_time, 1, 65535, "stale_time", 360);
    }
    out
}

fn fib(cx: &mut Ctx<'_>, raw: Option<&Spanned<RawFib>>) -> FibConfig {
    let mut out = FibConfig {
        protocol: DEFAULT_FIB_PROTOCOL,
        table: 254,
        enable_forwarding: false,
        own_cidr_route: OwnCidrRoute::Blackhole,
        metric: 20,
    };
    let Some(raw) = raw else { return out };
    let f = &raw.value;
    if let Some(p) = &f.protocol {
        // 0..=4 are the kernel's own (unspec, redirect, kernel, boot, static).
        out.protocol = cx
            .int(p, 5, 255, "fib protocol")
            .unwrap_or(DEFAULT_FIB_PROTOCOL);
        if let Some(owner) = well_known_protocol(out.protocol) {
            cx.err(
                p.referenced,
                format!(
                    "fib protocol {} belongs to {owner}: pick a number no other routing daemon on the node uses",
                    out.protocol
                ),
            );
        }
    }
    out.table = cx.opt_int(&f.table, 1, u32::MAX as i64, "fib table", 254);
    out.enable_forwarding = f.enable_forwarding.unwrap_or(false);
    out.metric = cx.opt_int(&f.metric, 0, u32::MAX as i64, "fib metric", 20);
    if let Some(r) = &f.own_cidr_route {
        out.own_cidr_route = match r.value.as_str() {
            "blackhole" => OwnCidrRoute::Blackhole,
            "unreachable" => OwnCidrRoute::Unreachable,
            "none" => OwnCidrRoute::None,
            other => {
                cx.err(
                    r.referenced,
                    format!(
                        "unknown own_cidr_route {other:?} (want blackhole, unreachable or none)"
                    ),
                );
                OwnCidrRoute::Blackhole
            }
        };
    }
    out
}

/// Protocol numbers from /etc/iproute2/rt_protos that other daemons use.
fn well_known_protocol(n: u8) -> Option<&'static str> {
    Some(match n {
        8 => "gated",
        9 => "ra",
        10 => "mrt",
        11 => "zebra",
        12 => "bird",
        13 => "dnrouted",
        14 => "xorp",
        15 => "ntk",
        16 => "dhcp",
        42 => "babel",
        186 => "bgp (FRR)",
        187 => "isis (FRR)",
        188 => "ospf (FRR)",
        189 => "rip (FRR)",
        192 => "eigrp (FRR)",
        _ => return None,
    })
}

fn peer(
    cx: &mut Ctx<'_>,
    raw: &Spanned<RawPeer>,
    bgp: &BgpConfig,
    pod_cidrs: &[IpNet],
    base: Option<&Path>,
    node_asn: u32,
    kind: Kind,
) -> Option<PeerConfig> {
    let p = &raw.value;
    let before = cx.problems.len();
    let range = match kind {
        Kind::Range(r) => Some(r),
        _ => None,
    };
    let mesh = kind == Kind::Mesh;
    match (&p.from, mesh) {
        (Some(f), false) => cx.err(f.referenced, "`from` belongs in mesh"),
        (Some(f), true) if f.value != "kubernetes" => cx.err(
            f.referenced,
            format!(
                "mesh from {:?}: only kubernetes (the cluster's Nodes)",
                f.value
            ),
        ),
        (None, true) => cx.err(raw.referenced, "the mesh needs `from: kubernetes`"),
        _ => {}
    }
    if mesh {
        for (set, what) in [
            (p.name.as_ref().map(|s| s.referenced), "name"),
            (p.address.as_ref().map(|s| s.referenced), "address"),
            (p.range.as_ref().map(|s| s.referenced), "range"),
            (p.max_peers.as_ref().map(|s| s.referenced), "max_peers"),
            (
                p.local_address.as_ref().map(|s| s.referenced),
                "local_address",
            ),
            (
                p.route_reflector_client.as_ref().map(|s| s.referenced),
                "route_reflector_client",
            ),
        ] {
            if let Some(at) = set {
                cx.err(
                    at,
                    match what {
                        "route_reflector_client" => "`route_reflector_client` does not belong in mesh: Nodes labelled petrel.io/route-reflector: \"true\" are the reflectors".to_string(),
                        _ => format!("`{what}` does not belong in mesh: each Node's InternalIPs are its peers"),
                    },
                );
            }
        }
    }
    let name = match (&p.name, mesh) {
        (_, true) => "mesh".to_string(),
        (Some(n), false) => n.value.clone(),
        (None, false) => {
            cx.err(raw.referenced, "a peer needs `name:`");
            return None;
        }
    };
    if range.is_none() && !mesh {
        if let Some(r) = &p.range {
            cx.err(r.referenced, "`range` belongs in peer_ranges, not peers");
        }
        if let Some(m) = &p.max_peers {
            cx.err(
                m.referenced,
                "`max_peers` belongs in peer_ranges, not peers",
            );
        }
    }
    let address = match (range, &p.address) {
        _ if mesh => Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        (None, Some(a)) => cx.parse::<IpAddr>(a, "peer address"),
        (None, None) => {
            cx.err(raw.referenced, "a peer needs `address:`");
            None
        }
        (Some(r), a) => {
            if let Some(a) = a {
                cx.err(a.referenced, "a peer range takes `range:`, not `address:`");
            }
            Some(r.network())
        }
    };
    if let Some(n) = &p.name {
        if n.value.is_empty() {
            cx.err(n.referenced, "peer name is empty");
        } else if !safe_name(&n.value, 64, false) {
            cx.err(
                n.referenced,
                format!(
                    "peer name {:?}: only letters, digits, '.', '_' and '-', at most 64",
                    n.value
                ),
            );
        }
    }
    // Where to point at the address (the range's, for a range).
    let addr_at = p
        .address
        .as_ref()
        .or(p.range.as_ref())
        .map(|a| a.referenced)
        .unwrap_or(raw.referenced);
    if range.is_none()
        && !mesh
        && let Some(a) = address
        && (a.is_unspecified() || a.is_multicast())
    {
        cx.err(
            addr_at,
            format!("peer address {a} is not a unicast address"),
        );
    }
    let peer_asn = match (&p.asn, mesh) {
        (Some(a), true) => {
            let n = asn(cx, a, "mesh ASN");
            if n != node_asn {
                cx.err(
                    a.referenced,
                    format!("the mesh is iBGP: asn {n} is not the node's {node_asn}"),
                );
            }
            n
        }
        (None, true) => node_asn,
        (Some(a), false) => asn(cx, a, "peer ASN"),
        (None, false) => {
            cx.err(raw.referenced, "a peer needs `asn:`");
            0
        }
    };
    let port = cx.opt_int(&p.port, 1, 65535, "port", BGP_PORT);
    let local_address = p
        .local_address
        .as_ref()
        .and_then(|a| cx.parse::<IpAddr>(a, "local_address"));
    if let (Some(l), Some(a)) = (local_address, address)
        && l.is_ipv4() != a.is_ipv4()
    {
        cx.err(
            p.local_address
                .as_ref()
                .map(|s| s.referenced)
                .unwrap_or(raw.referenced),
            format!("local_address {l} and peer address {a} are of different families"),
        );
    }
    let hold_time: u16 = cx.opt_int(&p.hold_time, 0, 65535, "hold_time", 90);
    if (1..3).contains(&hold_time) {
        cx.err(
            p.hold_time
                .as_ref()
                .map(|h| h.referenced)
                .unwrap_or(raw.referenced),
            format!("hold_time {hold_time} is not allowed: 0 or at least 3 seconds (RFC 4271 4.2)"),
        );
    }
    let keepalive = match &p.keepalive {
        Some(k) => {
            let v: u16 = cx.int(k, 0, 21845, "keepalive").unwrap_or(hold_time / 3);
            if hold_time > 0 && v >= hold_time {
                cx.err(
                    k.referenced,
                    format!("keepalive {v} must be less than hold_time {hold_time}"),
                );
            }
            if hold_time > 0 && v == 0 {
                cx.err(k.referenced, "keepalive 0 needs hold_time 0");
            }
            v
        }
        None => hold_time / 3,
    };
    let connect_retry = cx.opt_int(&p.connect_retry, 1, 3600, "connect_retry", 5);
    let connect_retry_max = cx.opt_int(
        &p.connect_retry_max,
        connect_retry as i64,
        3600,
        "connect_retry_max",
        connect_retry.max(60),
    );
    let password_file = p.password_file.as_ref().map(|f| {
        let path = PathBuf::from(&f.value);
        let path = match base {
            Some(b) if path.is_relative() => b.join(path),
            _ => path,
        };
        // Read as `run` reads it, so that what passes here works there.
        match read_md5_key(&path) {
            Err(e) => cx.err(f.referenced, e),
            Ok(_) => {
                if let Some(w) = key_file_mode_warning(&path) {
                    cx.warn(f.referenced, w);
                }
            }
        }
        path
    });
    // A pod CIDR holding the peer's address would blackhole the session.
    if let Some(a) = address
        && let Some(c) = pod_cidrs
            .iter()
            .find(|c| c.contains(&a) || range.is_some_and(|r| r.contains(&c.network())))
    {
        cx.err(
            addr_at,
            match range {
                Some(r) => format!("range {r} overlaps the pod CIDR {c}"),
                None => format!("peer address {a} is inside the pod CIDR {c}"),
            },
        );
    }
    let route_reflector_client = match &p.route_reflector_client {
        Some(b) if b.value && peer_asn != node_asn => {
            cx.err(
                b.referenced,
                format!(
                    "route_reflector_client needs an iBGP peer: asn {peer_asn} is not the node's {node_asn}"
                ),
            );
            false
        }
        Some(b) => b.value,
        None => false,
    };
    let multihop = p
        .multihop
        .as_ref()
        .and_then(|m| cx.int::<u8>(m, 1, 255, "multihop"));
    let families = match &p.families {
        None => {
            // Default: the families of the node's pod CIDRs, or the session's own.
            let mut f: Vec<Family> = pod_cidrs.iter().map(Family::of).collect();
            if f.is_empty() {
                f.push(match address {
                    Some(IpAddr::V6(_)) => Family::Ipv6,
                    _ => Family::Ipv4,
                });
            }
            f.sort();
            f.dedup();
            f
        }
        Some(list) => {
            let mut out = Vec::new();
            for f in &list.value {
                let fam = match f.value.as_str() {
                    "ipv4" => Family::Ipv4,
                    "ipv6" => Family::Ipv6,
                    other => {
                        cx.err(
                            f.referenced,
                            format!("unknown family {other:?} (want ipv4 or ipv6)"),
                        );
                        continue;
                    }
                };
                if out.contains(&fam) {
                    cx.err(f.referenced, format!("family {fam} listed twice"));
                } else {
                    out.push(fam);
                }
            }
            if list.value.is_empty() {
                cx.err(list.referenced, "families is empty");
            }
            out
        }
    };
    let import = match &p.import {
        None => ImportPolicy::default(),
        Some(imp) => import(cx, &imp.value),
    };
    let export = p
        .export
        .as_ref()
        .map(|list| {
            list.value
                .iter()
                .filter_map(|r| rule(cx, r, RuleKind::Export))
                .collect()
        })
        .unwrap_or_default();
    let next_hop_ipv4 = p
        .next_hop_ipv4
        .as_ref()
        .and_then(|a| cx.parse::<Ipv4Addr>(a, "next_hop_ipv4"));
    let next_hop_ipv6 = p
        .next_hop_ipv6
        .as_ref()
        .and_then(|a| cx.parse::<Ipv6Addr>(a, "next_hop_ipv6"));
    let bfd = p.bfd.as_ref().and_then(|b| match &b.value {
        RawBfdOrBool::Bool(on) => on.then(BfdConfig::default),
        RawBfdOrBool::Table(t) => {
            let d = BfdConfig::default();
            let c = BfdConfig {
                min_rx: cx.opt_int(&t.min_rx, 10, 60_000, "bfd min_rx (ms)", d.min_rx),
                min_tx: cx.opt_int(&t.min_tx, 10, 60_000, "bfd min_tx (ms)", d.min_tx),
                multiplier: cx.opt_int(&t.multiplier, 1, 255, "bfd multiplier", d.multiplier),
                strict: t.strict.unwrap_or(false),
            };
            t.enabled.unwrap_or(true).then_some(c)
        }
    });
    if cx.problems.len() > before {
        return None;
    }
    Some(PeerConfig {
        name,
        address: address?,
        port,
        asn: peer_asn,
        local_address,
        passive: p.passive || range.is_some(),
        hold_time,
        keepalive,
        connect_retry,
        connect_retry_max,
        password_file,
        multihop,
        gtsm: p.gtsm,
        families,
        import,
        next_hop_ipv4,
        next_hop_ipv6,
        graceful_restart: p.graceful_restart.unwrap_or(bgp.graceful_restart.enabled),
        enforce_first_as: p.enforce_first_as.unwrap_or(true),
        export,
        bfd,
        route_reflector_client,
    })
}

/// What a set of peer settings is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Peer,
    /// A peer range's template.
    Range(IpNet),
    /// The mesh's template: every other Node is a peer with these settings.
    Mesh,
}

fn import(cx: &mut Ctx<'_>, raw: &RawImport) -> ImportPolicy {
    let prefixes = raw.prefixes.as_ref().map(|list| {
        list.iter()
            .filter_map(|r| prefix_rule(cx, &r.value))
            .collect()
    });
    let max_prefixes = raw
        .max_prefixes
        .as_ref()
        .and_then(|m| cx.int::<u32>(m, 1, u32::MAX as i64, "max_prefixes"));
    let rules = raw
        .rules
        .as_ref()
        .map(|list| {
            list.iter()
                .filter_map(|r| rule(cx, r, RuleKind::Import))
                .collect()
        })
        .unwrap_or_default();
    ImportPolicy {
        prefixes,
        max_prefixes,
        rules,
        filter_martians: raw.filter_martians.unwrap_or(true),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum RuleKind {
    Import,
    Export,
}

/// Well-known communities by name (RFC 1997, RFC 8326, RFC 7999).
fn well_known_community(name: &str) -> Option<u32> {
    Some(match name {
        "no_export" => 0xFFFF_FF01,
        "no_advertise" => 0xFFFF_FF02,
        "no_export_subconfed" => 0xFFFF_FF03,
        "graceful_shutdown" => 0xFFFF_0000,
        "blackhole" => 0xFFFF_029A,
        _ => return None,
    })
}

/// `ASN:VALUE` (each 0..=65535), a well-known name, or with `*` for either half when
/// `pattern`.
fn community(cx: &mut Ctx<'_>, v: &Spanned<String>, pattern: bool) -> Option<CommunityMatch> {
    let text = v.value.trim();
    if let Some(c) = well_known_community(text) {
        return Some(CommunityMatch {
            asn: Some((c >> 16) as u16),
            value: Some(c as u16),
        });
    }
    let part = |s: &str| -> Result<Option<u16>, ()> {
        match s {
            "*" if pattern => Ok(None),
            _ => s.parse::<u16>().map(Some).map_err(|_| ()),
        }
    };
    match text.split_once(':').map(|(a, b)| (part(a), part(b))) {
        Some((Ok(asn), Ok(value))) => Some(CommunityMatch { asn, value }),
        _ => {
            cx.err(
                v.referenced,
                format!(
                    "invalid community {:?} (want ASN:VALUE, each 0 to 65535{}, or no_export, no_advertise, no_export_subconfed, graceful_shutdown, blackhole)",
                    v.value,
                    if pattern { ", * for any" } else { "" }
                ),
            );
            None
        }
    }
}

fn exact_community(cx: &mut Ctx<'_>, v: &Spanned<String>) -> Option<u32> {
    community(cx, v, false)
        .map(|c| ((c.asn.unwrap_or(0) as u32) << 16) | c.value.unwrap_or(0) as u32)
}

/// `GLOBAL:LOCAL1:LOCAL2` (RFC 8092, each 0 to 4294967295), `*` for any part when `pattern`.
fn large_community(
    cx: &mut Ctx<'_>,
    v: &Spanned<String>,
    pattern: bool,
) -> Option<[Option<u32>; 3]> {
    let parts: Vec<&str> = v.value.trim().split(':').collect();
    let mut out = [None; 3];
    let ok = parts.len() == 3
        && parts.iter().zip(out.iter_mut()).all(|(p, o)| match *p {
            "*" if pattern => true,
            p => p.parse::<u32>().map(|x| *o = Some(x)).is_ok(),
        });
    if !ok {
        cx.err(
            v.referenced,
            format!(
                "invalid large community {:?} (want GLOBAL:LOCAL1:LOCAL2, each 0 to 4294967295{})",
                v.value,
                if pattern { ", * for any" } else { "" }
            ),
        );
        return None;
    }
    Some(out)
}

fn exact_large(cx: &mut Ctx<'_>, v: &Spanned<String>) -> Option<[u32; 3]> {
    large_community(cx, v, false).map(|p| p.map(|x| x.unwrap_or(0)))
}

fn rule(cx: &mut Ctx<'_>, raw: &Spanned<RawRule>, kind: RuleKind) -> Option<Rule> {
    let before = cx.problems.len();
    let r = &raw.value;
    let mut out = Rule::default();
    if let Some(a) = &r.action {
        out.action = match a.value.as_str() {
            "accept" => RuleAction::Accept,
            "reject" => RuleAction::Reject,
            other => {
                cx.err(
                    a.referenced,
                    format!("unknown action {other:?} (want accept or reject)"),
                );
                RuleAction::Accept
            }
        };
    }
    if let Some(m) = &r.matches {
        let m = &m.value;
        if let Some(src) = &m.source {
            let names: Vec<&str> = match &src.value {
                OneOrMany::One(s) => vec![s.as_str()],
                OneOrMany::Many(v) => v.iter().map(|s| s.as_str()).collect(),
            };
            let mut sources = Vec::new();
            let mut any = false;
            for n in names {
                match n {
                    "pod_cidrs" => sources.push(RouteSource::PodCidrs),
                    "originate" => sources.push(RouteSource::Originate),
                    "services" => sources.push(RouteSource::Services),
                    "learned" => sources.push(RouteSource::Learned),
                    "any" => any = true,
                    other => cx.err(
                        src.referenced,
                        format!(
                            "unknown source {other:?} (want pod_cidrs, originate, services, learned or any)"
                        ),
                    ),
                }
            }
            if kind == RuleKind::Import {
                cx.err(
                    src.referenced,
                    "import rules see learned routes only: `source` is for export rules",
                );
            }
            out.matches.sources = (!any).then_some(sources);
        }
        if let Some(list) = &m.prefixes {
            out.matches.prefixes = Some(
                list.iter()
                    .filter_map(|p| prefix_rule(cx, &p.value))
                    .collect(),
            );
        }
        for c in m.communities.iter().flatten() {
            if let Some(c) = community(cx, c, true) {
                out.matches.communities.push(c);
            }
        }
        for c in m.large_communities.iter().flatten() {
            if let Some(c) = large_community(cx, c, true) {
                out.matches.large_communities.push(c);
            }
        }
    }
    if let Some(set) = &r.set {
        if out.action == RuleAction::Reject {
            cx.err(
                set.referenced,
                "a rule that rejects cannot also set attributes",
            );
        }
        let st = &set.value;
        for c in st.communities.iter().flatten() {
            if let Some(c) = exact_community(cx, c) {
                out.set.communities.push(c);
            }
        }
        for c in st.large_communities.iter().flatten() {
            if let Some(c) = exact_large(cx, c) {
                out.set.large_communities.push(c);
            }
        }
        out.set.med = st
            .med
            .as_ref()
            .and_then(|m| cx.int::<u32>(m, 0, u32::MAX as i64, "med"));
        out.set.local_pref = st
            .local_pref
            .as_ref()
            .and_then(|m| cx.int::<u32>(m, 0, u32::MAX as i64, "local_pref"));
        if let Some(p) = &st.prepend {
            if kind == RuleKind::Import {
                cx.err(p.referenced, "prepend applies to export rules only");
            }
            out.set.prepend = cx.int::<u8>(p, 0, 16, "prepend").unwrap_or(0);
        }
    }
    (cx.problems.len() == before).then_some(out)
}

fn originate(
    cx: &mut Ctx<'_>,
    list: &Spanned<Vec<Spanned<RawOriginate>>>,
    pods: &[IpNet],
) -> Vec<Originate> {
    let mut out: Vec<Originate> = Vec::new();
    for e in &list.value {
        let o = &e.value;
        let Some(prefix) = cx.cidr(&o.prefix, "originate prefix") else {
            continue;
        };
        if out.iter().any(|x| x.prefix == prefix) {
            cx.err(
                o.prefix.referenced,
                format!("originate prefix {prefix} listed twice"),
            );
            continue;
        }
        if let Some(p) = pods
            .iter()
            .find(|p| p.contains(&prefix) || prefix.contains(*p))
        {
            cx.err(
                o.prefix.referenced,
                format!("originate prefix {prefix} overlaps the pod CIDR {p}, which is announced already"),
            );
            continue;
        }
        let communities = o
            .communities
            .iter()
            .flatten()
            .filter_map(|c| exact_community(cx, c))
            .collect();
        let large_communities = o
            .large_communities
            .iter()
            .flatten()
            .filter_map(|c| exact_large(cx, c))
            .collect();
        let med = o
            .med
            .as_ref()
            .and_then(|m| cx.int::<u32>(m, 0, u32::MAX as i64, "med"));
        out.push(Originate {
            prefix,
            communities,
            large_communities,
            med,
        });
    }
    out
}

fn prefix_rule(cx: &mut Ctx<'_>, r: &RawPrefixRule) -> Option<PrefixRule> {
    let prefix = cx.cidr(&r.prefix, "prefix")?;
    let len = prefix.prefix_len();
    let max = prefix.max_prefix_len();
    let bound = |cx: &mut Ctx<'_>, v: &Option<Spanned<i64>>, what: &str, default: u8| match v {
        None => Some(default),
        Some(b) => {
            if b.value < len as i64 {
                cx.err(
                    b.referenced,
                    format!(
                        "{what} {} is less than the prefix length {len} of {prefix}",
                        b.value
                    ),
                );
                None
            } else if b.value > max as i64 {
                cx.err(
                    b.referenced,
                    format!(
                        "{what} {} is more than {max}, the longest {} prefix",
                        b.value,
                        if max == 32 { "IPv4" } else { "IPv6" }
                    ),
                );
                None
            } else {
                Some(b.value as u8)
            }
        }
    };
    let ge = bound(cx, &r.ge, "ge", len)?;
    // `le` defaults to the prefix length (exact match) unless `ge` is given, in which case up
    // to the longest length, as in a router's prefix list.
    let le_default = if r.ge.is_some() { max } else { len };
    let le = bound(cx, &r.le, "le", le_default)?;
    if ge > le {
        cx.err(
            r.ge.as_ref()
                .map(|g| g.referenced)
                .unwrap_or(r.prefix.referenced),
            format!("ge {ge} is greater than le {le}"),
        );
        return None;
    }
    Some(PrefixRule { prefix, ge, le })
}
