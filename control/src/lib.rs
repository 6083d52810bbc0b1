//! The control socket's protocol: a Unix stream socket where `petrel status` and `petrel
//! routes` (and `petrel-ipam`, for the pod CIDRs in Kubernetes mode) ask the running agent.
//!
//! One request per connection: a JSON line [`Request`] (`{"get":"status"}` or
//! `{"get":"routes"}`), answered by one JSON document: [`AgentStatus`], [`RoutesAnswer`],
//! or `{"error": "..."}`. These shapes are the stable interface of `petrel status --json`
//! and `petrel routes --json` (README, "Status JSON"): fields are only ever added, and
//! [`STATUS_VERSION`] says which.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub const STATUS_VERSION: u32 = 1;

/// Requests are one line of at most this many bytes.
pub const MAX_REQUEST: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub get: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentStatus {
    /// Schema version of this document.
    pub version: u32,
    pub node: NodeView,
    pub peers: Vec<PeerView>,
    pub fib: FibView,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeView {
    pub name: Option<String>,
    pub asn: u32,
    pub router_id: Ipv4Addr,
    /// The node's pod CIDRs.
    pub pod_cidrs: Vec<IpNet>,
    /// "config" or "kubernetes".
    pub pod_cidrs_source: String,
    /// Every prefix the node originates, by route source (`pod_cidrs`, `originate`,
    /// `services`).
    #[serde(default)]
    pub originated: BTreeMap<String, Vec<IpNet>>,
}

/// Prefixes per route source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BySource {
    #[serde(default)]
    pub pod_cidrs: u64,
    #[serde(default)]
    pub services: u64,
    #[serde(default)]
    pub originate: u64,
    #[serde(default)]
    pub learned: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrefixCounts {
    pub received: u64,
    pub accepted: u64,
    pub advertised: u64,
    pub stale: u64,
    /// Advertised, per route source.
    #[serde(default)]
    pub advertised_by_source: BySource,
    /// Refused by import policy, per reason (e.g. `not_in_prefix_list`).
    #[serde(default)]
    pub refused: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerView {
    pub name: String,
    pub address: IpAddr,
    pub asn: u32,
    pub local_address: Option<IpAddr>,
    /// RFC 4271 state: Idle, Connect, Active, OpenSent, OpenConfirm, Established.
    pub state: String,
    /// Seconds since the session came up (Established only).
    pub uptime_secs: Option<u64>,
    /// Seconds in the current state.
    pub state_secs: u64,
    pub last_error: Option<String>,
    pub prefixes: PrefixCounts,
    pub remote_router_id: Option<Ipv4Addr>,
    pub hold_time: Option<u16>,
    pub keepalive: Option<u16>,
    pub families: Vec<String>,
    pub graceful_restart: bool,
    /// A route reflection client of ours (RFC 4456).
    #[serde(default)]
    pub route_reflector_client: bool,
    pub messages_in: u64,
    pub messages_out: u64,
    pub updates_in: u64,
    pub updates_out: u64,
    /// Times the session reached Established.
    pub established_count: u64,
    /// The BFD session of this peer, when BFD is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bfd: Option<BfdView>,
}

/// A peer's BFD session as status shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BfdView {
    /// AdminDown, Down, Init, Up.
    pub state: String,
    /// RFC 5883 multihop (port 4784, any TTL) rather than single-hop (3784, TTL 255).
    #[serde(default)]
    pub multihop: bool,
    pub local_address: IpAddr,
    pub local_discriminator: u32,
    pub remote_discriminator: u32,
    /// Negotiated intervals, milliseconds (fractions dropped).
    pub tx_ms: u64,
    pub rx_ms: u64,
    pub detection_ms: u64,
    /// The peer's C bit: its forwarding survives a restart of its control plane.
    pub remote_control_plane_independent: bool,
    /// Times the session left Up, and why it last did.
    pub flaps: u64,
    pub last_down: Option<String>,
    /// Packets refused (wrong discriminator, TTL, authentication).
    pub discarded: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FibView {
    pub protocol: u8,
    /// Route operations sent to the kernel, and refused by it, since start.
    pub ops: u64,
    pub errors: u64,
    pub table: u32,
    pub installed: u64,
    pub ecmp: u64,
    pub failed: u64,
    pub own_routes: usize,
    /// Routes from a previous run not yet confirmed (before the initial sync).
    pub stale: usize,
    pub synced: bool,
    pub restored: u64,
    /// Full comparisons with the kernel after lost route notifications.
    #[serde(default)]
    pub resyncs: u64,
    pub forwarding_ipv4: Option<bool>,
    pub forwarding_ipv6: Option<bool>,
}

/// The answer to `{"get":"routes"}`: the Loc-RIB and Adj-RIBs-In, every prefix with its
/// paths.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoutesAnswer {
    pub version: u32,
    /// The node's own prefixes, all sources together.
    pub originated: Vec<IpNet>,
    pub routes: Vec<RouteEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouteEntry {
    pub prefix: IpNet,
    /// The selected learned paths' next hops.
    pub next_hops: Vec<String>,
    /// Where the kernel forwards: the next hops, or the gateways of the underlay routes
    /// they resolve through (next-hop tracking).
    #[serde(default)]
    pub gateways: Vec<String>,
    /// The route is in the kernel: learned and not refused by it.
    pub in_fib: bool,
    pub paths: Vec<PathEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnknownAttribute {
    #[serde(rename = "type")]
    pub code: u8,
    pub flags: u8,
    pub transitive: bool,
    /// The value, in hex.
    pub value: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PathEntry {
    /// `learned`, `pod_cidrs`, `originate` or `services`.
    pub source: String,
    /// The peer it came from (empty for the node's own routes).
    pub peer: String,
    pub peer_address: Option<IpAddr>,
    pub next_hop: Option<String>,
    /// Next-hop tracking: the underlay route the next hop resolves through (none when on a
    /// connected subnet), the gateways it leads to, and its metric (the IGP cost).
    #[serde(default)]
    pub resolved_via: Option<IpNet>,
    #[serde(default)]
    pub gateways: Vec<String>,
    #[serde(default)]
    pub igp_cost: u32,
    /// Why the next hop cannot be used: the path is not selected and not installed.
    #[serde(default)]
    pub unresolved: Option<String>,
    pub as_path: String,
    pub origin: String,
    pub local_pref: u32,
    pub med: Option<u32>,
    pub communities: Vec<String>,
    pub large_communities: Vec<String>,
    pub extended_communities: Vec<String>,
    pub unknown_attributes: Vec<UnknownAttribute>,
    pub originator_id: Option<Ipv4Addr>,
    pub cluster_list: Vec<Ipv4Addr>,
    pub stale: bool,
    pub accepted: bool,
    /// Why import policy refused it.
    pub refused: Option<String>,
    pub best: bool,
    pub selected: bool,
    /// Why the best path beat this one.
    pub lost_on: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cannot reach the agent at {path} (is `petrel run` running? --socket sets the path): {source}"
    )]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent at {path} did not answer within {secs} s")]
    Timeout { path: String, secs: f64 },
    #[error("talking to the agent at {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("bad answer from the agent: {0}")]
    BadAnswer(String),
    #[error("agent: {0}")]
    Agent(String),
}

/// Ask the agent at `path` for `what`; the raw JSON answer. Gives up after `timeout`.
pub fn ask(path: &Path, what: &str, timeout: Duration) -> Result<serde_json::Value, Error> {
    let p = || path.display().to_string();
    let mut s = std::os::unix::net::UnixStream::connect(path)
        .map_err(|source| Error::Connect { path: p(), source })?;
    let io = |source: std::io::Error| {
        if matches!(
            source.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            Error::Timeout {
                path: p(),
                secs: timeout.as_secs_f64(),
            }
        } else {
            Error::Io { path: p(), source }
        }
    };
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    let req = serde_json::to_string(&Request {
        get: what.to_string(),
    })
    .map_err(|e| Error::BadAnswer(e.to_string()))?;
    s.write_all(req.as_bytes()).map_err(io)?;
    s.write_all(b"\n").map_err(io)?;
    let start = std::time::Instant::now();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    loop {
        // The read timeout applies per read: keep the whole answer within `timeout`.
        let left = timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(Error::Timeout {
                path: p(),
                secs: timeout.as_secs_f64(),
            });
        }
        s.set_read_timeout(Some(left)).map_err(io)?;
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io(e)),
        }
    }
    let v: serde_json::Value =
        serde_json::from_slice(&buf).map_err(|e| Error::BadAnswer(e.to_string()))?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        return Err(Error::Agent(e.to_string()));
    }
    Ok(v)
}

/// `{"get":"status"}`, typed.
pub fn status(path: &Path, timeout: Duration) -> Result<AgentStatus, Error> {
    let v = ask(path, "status", timeout)?;
    serde_json::from_value(v).map_err(|e| Error::BadAnswer(e.to_string()))
}

/// Read one request line from a connection (at most [`MAX_REQUEST`] bytes).
pub fn read_request(r: impl Read) -> Result<Request, String> {
    let mut line = String::new();
    BufReader::new(r.take(MAX_REQUEST as u64))
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    serde_json::from_str(line.trim()).map_err(|e| format!("bad request: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_errors_round_trip() {
        let r = read_request(&b"{\"get\":\"status\"}\n"[..]).unwrap();
        assert_eq!(r.get, "status");
        assert!(
            read_request(&b"nonsense\n"[..])
                .unwrap_err()
                .starts_with("bad request")
        );
    }

    #[test]
    fn an_agent_that_never_answers_times_out() {
        let dir = std::env::temp_dir().join(format!("petrel-control-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let sock = dir.join("mute.sock");
        let _ = std::fs::remove_file(&sock);
        let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let t = std::thread::spawn(move || {
            let (c, _) = l.accept().unwrap();
            std::thread::sleep(Duration::from_millis(800));
            drop(c);
        });
        let start = std::time::Instant::now();
        let e = ask(&sock, "status", Duration::from_millis(300)).unwrap_err();
        assert!(matches!(e, Error::Timeout { .. }), "{e}");
        assert!(start.elapsed() < Duration::from_millis(700));
        t.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
