//! Petrel's configuration file: the YAML schema, its defaults, and validation.
//!
//! [`load`] reads a file and returns either a validated [`Config`] or every problem found, each
//! as a [`Problem`] that prints as `FILE:LINE:COL: message`. Syntax and type errors come from the
//! YAML decoder (one at a time, it cannot go on past them); semantic checks (bad CIDR, ASN out of
//! range, duplicate peer, host bits set, `le` below the prefix length, ...) are all collected.
//!
//! This crate is types plus validation only. It is shared by the agent (`petrel`) and the CNI
//! plugin (`petrel-ipam` can take the pod CIDRs from the agent's file).
//!
//! ```yaml
//! node:
//!   asn: 65002
//!   router_id: 192.0.2.2
//!   pod_cidrs: [10.244.2.0/24, "fd00:10:244:2::/64"]
//! peers:
//!   - name: tor
//!     address: 192.0.2.1
//!     asn: 65001
//!     hold_time: 9
//!     families: [ipv4, ipv6]
//!     import:
//!       prefixes: [{ prefix: 0.0.0.0/0, le: 32 }, { prefix: "::/0", le: 128 }]
//! ```

mod raw;
mod validate;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;

pub use validate::parse_str;

/// Default TCP port of BGP.
pub const BGP_PORT: u16 = 179;
/// Default `rtm_protocol` number on the routes Petrel installs.
pub const DEFAULT_FIB_PROTOCOL: u8 = 200;
/// Default control socket path.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/petrel/petrel.sock";

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub node: NodeConfig,
    pub peers: Vec<PeerConfig>,
    /// Dynamic peers: sessions accepted from any address of a range (`peer_ranges:`).
    pub peer_ranges: Vec<PeerRange>,
    /// The automatic iBGP node mesh (`mesh: { from: kubernetes }`); `None`: `mesh: none`.
    pub mesh: Option<MeshConfig>,
    pub bgp: BgpConfig,
    pub fib: FibConfig,
    pub control: ControlConfig,
    pub metrics: MetricsConfig,
    /// Static route source: prefixes announced as the node's own (`originate:`).
    pub originate: Vec<Originate>,
    /// Not errors, but worth an operator's look (`petrel check` prints them, `run` logs
    /// them and shows them in status).
    pub warnings: Vec<Problem>,
}

/// Most bytes of a TCP MD5 key (RFC 2385 via Linux's TCP_MD5SIG_MAXKEYLEN).
pub const MAX_MD5_KEY: usize = 80;

/// The longest path a Unix socket can bind to (`sun_path` holds 108 bytes with the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Read a TCP MD5 key file as the agent uses it: its content without trailing newlines,
/// 1 to 80 bytes. The error says what is wrong, without the location.
pub fn read_md5_key(path: &Path) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("cannot read password_file {}: {e}", path.display()))?;
    if meta.is_dir() {
        return Err(format!("password_file {} is a directory", path.display()));
    }
    let raw = std::fs::read(path)
        .map_err(|e| format!("cannot read password_file {}: {e}", path.display()))?;
    let mut key: &[u8] = &raw;
    while let Some((last, rest)) = key.split_last() {
        if *last == b'\n' || *last == b'\r' {
            key = rest;
        } else {
            break;
        }
    }
    if key.is_empty() {
        return Err(format!("password_file {} is empty", path.display()));
    }
    if key.len() > MAX_MD5_KEY {
        return Err(format!(
            "password_file {} holds a key of {} bytes; TCP MD5 keys are at most {MAX_MD5_KEY}",
            path.display(),
            key.len()
        ));
    }
    Ok(key.to_vec())
}

/// A warning for a key file others may read.
pub fn key_file_mode_warning(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then(|| {
        format!(
            "password_file {} is readable by group or others (mode {mode:04o}): chmod 600 it",
            path.display()
        )
    })
}

/// One `originate:` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Originate {
    pub prefix: IpNet,
    pub communities: Vec<u32>,
    pub large_communities: Vec<[u32; 3]>,
    pub med: Option<u32>,
}

/// Where a route comes from, as rules match it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteSource {
    PodCidrs,
    Originate,
    Services,
    Learned,
}

/// What a rule does with a route it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RuleAction {
    #[default]
    Accept,
    Reject,
}

/// A community pattern: `65000:100`, `65000:*`, or a well-known name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommunityMatch {
    pub asn: Option<u16>,
    pub value: Option<u16>,
}

/// The conditions of a rule (all given ones must hold; one listed community is enough).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RuleMatch {
    /// `None`: any source.
    pub sources: Option<Vec<RouteSource>>,
    pub prefixes: Option<Vec<PrefixRule>>,
    pub communities: Vec<CommunityMatch>,
    pub large_communities: Vec<[Option<u32>; 3]>,
}

/// What a rule changes on a route it accepts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RuleSet {
    pub communities: Vec<u32>,
    pub large_communities: Vec<[u32; 3]>,
    pub med: Option<u32>,
    pub prepend: u8,
    pub local_pref: Option<u32>,
}

/// One import or export rule; the first that matches decides.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rule {
    pub matches: RuleMatch,
    pub action: RuleAction,
    pub set: RuleSet,
}

/// The node itself: who it is in BGP and which pod CIDRs it owns.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    /// Node name (Kubernetes mode); `None` means `NODE_NAME` or the hostname.
    pub name: Option<String>,
    pub asn: u32,
    pub router_id: Ipv4Addr,
    pub pod_cidrs: PodCidrs,
    /// Shortest pod CIDR accepted, per family (a node's pods rarely need more than a /16 or
    /// a /48; a shorter one, and above all a default route, would take traffic the node
    /// must not blackhole).
    pub min_pod_cidr_len: MinPodCidrLen,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinPodCidrLen {
    pub ipv4: u8,
    pub ipv6: u8,
}

impl Default for MinPodCidrLen {
    fn default() -> Self {
        MinPodCidrLen { ipv4: 16, ipv6: 48 }
    }
}

impl MinPodCidrLen {
    /// Why `net` cannot be a pod CIDR, if it cannot.
    pub fn refuse(&self, net: &IpNet) -> Option<String> {
        let min = match net {
            IpNet::V4(_) => self.ipv4,
            IpNet::V6(_) => self.ipv6,
        };
        if net.prefix_len() == 0 {
            Some(format!(
                "pod CIDR {net} is a default route: blackholing it would take the node off the network"
            ))
        } else if net.prefix_len() < min {
            Some(format!(
                "pod CIDR {net} is shorter than /{min} (node.min_pod_cidr_len)"
            ))
        } else {
            None
        }
    }
}

/// Names that end up in logs, status and metrics labels: letters, digits, `.`, `_`, `-`
/// (and `:` for node names), nothing that could forge a log line.
pub fn safe_name(s: &str, max: usize, colon: bool) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') || (colon && c == ':')
        })
}

/// Where the node's pod CIDRs come from.
#[derive(Debug, Clone, PartialEq)]
pub enum PodCidrs {
    /// Listed in the file.
    Static(Vec<IpNet>),
    /// `spec.podCIDRs` of the node's Kubernetes Node object.
    Kubernetes,
}

impl PodCidrs {
    /// The static list, or an empty slice in Kubernetes mode.
    pub fn static_list(&self) -> &[IpNet] {
        match self {
            PodCidrs::Static(v) => v,
            PodCidrs::Kubernetes => &[],
        }
    }
}

/// An address family Petrel exchanges routes for (unicast only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub fn of(net: &IpNet) -> Family {
        match net {
            IpNet::V4(_) => Family::Ipv4,
            IpNet::V6(_) => Family::Ipv6,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        })
    }
}

/// One BGP neighbour.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerConfig {
    pub name: String,
    pub address: IpAddr,
    /// Remote TCP port to connect to.
    pub port: u16,
    pub asn: u32,
    pub local_address: Option<IpAddr>,
    /// Only accept connections, never connect.
    pub passive: bool,
    /// Seconds; 0 disables keepalives and the hold timer (RFC 4271 4.2).
    pub hold_time: u16,
    /// Seconds; hold_time / 3 unless given.
    pub keepalive: u16,
    /// Seconds before the first reconnect; doubles on each failure up to `connect_retry_max`.
    pub connect_retry: u16,
    pub connect_retry_max: u16,
    /// TCP MD5 (RFC 2385) key file; the key itself is read by the agent and never logged.
    pub password_file: Option<PathBuf>,
    /// TTL of outgoing packets (eBGP multihop). `None`: 1 for eBGP, 64 for iBGP.
    pub multihop: Option<u8>,
    /// GTSM (RFC 5082): send with TTL 255 and drop packets that arrive with less than
    /// 255 - (hops - 1), where hops is `multihop` or 1.
    pub gtsm: bool,
    pub families: Vec<Family>,
    pub import: ImportPolicy,
    /// IPv6 next hop to announce over an IPv4 session (and the reverse); by default each family
    /// uses the session's own local address and is only sent where that address fits.
    pub next_hop_ipv4: Option<Ipv4Addr>,
    pub next_hop_ipv6: Option<std::net::Ipv6Addr>,
    /// Graceful restart (RFC 4724) for this session; defaults to `bgp.graceful_restart.enabled`.
    pub graceful_restart: bool,
    /// Require an eBGP peer's routes to start with its own AS (RFC 4271 6.3; default on).
    /// Off for a route server, which passes routes on without prepending its AS.
    pub enforce_first_as: bool,
    /// Export rules (first match decides; no match: the node's own routes go out, learned
    /// ones do not).
    pub export: Vec<Rule>,
    /// BFD on this session (RFC 5880/5882); `None`: off.
    pub bfd: Option<BfdConfig>,
    /// A route reflection client of ours (RFC 4456; iBGP only).
    pub route_reflector_client: bool,
}

/// Sessions accepted from any address in `range`, each a peer with the settings of
/// `template` (its `address` is the range's first address and means nothing; it is
/// always passive), at most `max_peers` at once.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerRange {
    pub name: String,
    pub range: IpNet,
    pub max_peers: u32,
    pub template: PeerConfig,
}

/// The node mesh: each other Node of the cluster is an iBGP peer at each of its
/// InternalIPs, with the settings of `template` (its name and address mean nothing). Nodes
/// labelled `petrel.io/route-reflector: "true"` are the reflectors: when any exist, the
/// other nodes peer only with them, and they with everyone.
#[derive(Debug, Clone, PartialEq)]
pub struct MeshConfig {
    pub template: PeerConfig,
}

/// A peer's BFD session; intervals in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BfdConfig {
    /// Required Min RX Interval: how often the peer may send to us.
    pub min_rx: u32,
    /// Desired Min TX Interval: how often we would like to send.
    pub min_tx: u32,
    /// Detect Mult.
    pub multiplier: u8,
    /// Hold the BGP session in Idle until BFD is Up (RFC 9384 style).
    pub strict: bool,
}

impl Default for BfdConfig {
    fn default() -> Self {
        BfdConfig {
            min_rx: 300,
            min_tx: 300,
            multiplier: 3,
            strict: false,
        }
    }
}

impl PeerConfig {
    /// iBGP when the peer's ASN equals the node's.
    pub fn is_ibgp(&self, node_asn: u32) -> bool {
        self.asn == node_asn
    }
}

/// Import policy of a peer.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportPolicy {
    /// `None`: no policy given: eBGP imports nothing (RFC 8212), iBGP imports everything.
    pub prefixes: Option<Vec<PrefixRule>>,
    /// Tear the session down (Cease, RFC 4486 subcode 1) past this many accepted prefixes.
    pub max_prefixes: Option<u32>,
    /// Import rules, applied to what passed `prefixes` (first match decides).
    pub rules: Vec<Rule>,
    /// Refuse martian prefixes, unusable next hops and routes inside the node's connected
    /// subnets (default on).
    pub filter_martians: bool,
}

impl Default for ImportPolicy {
    fn default() -> Self {
        ImportPolicy {
            prefixes: None,
            max_prefixes: None,
            rules: Vec::new(),
            filter_martians: true,
        }
    }
}

/// `prefix` with optional `ge`/`le` bounds on the length, as in a prefix list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixRule {
    pub prefix: IpNet,
    pub ge: u8,
    pub le: u8,
}

impl PrefixRule {
    /// Whether `net` falls inside `prefix` with a length in `ge..=le`.
    pub fn matches(&self, net: &IpNet) -> bool {
        let len = net.prefix_len();
        len >= self.ge && len <= self.le && self.prefix.contains(net)
    }
}

/// Speaker-wide settings.
#[derive(Debug, Clone, PartialEq)]
pub struct BgpConfig {
    /// Route reflection cluster id (RFC 4456 7); `None`: the router id.
    pub cluster_id: Option<Ipv4Addr>,
    /// Addresses to listen on for incoming sessions (port `listen_port`).
    pub listen_addresses: Vec<IpAddr>,
    pub listen_port: u16,
    pub graceful_restart: GracefulRestartConfig,
    /// Most next hops in one ECMP route.
    pub max_paths: u8,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GracefulRestartConfig {
    pub enabled: bool,
    /// Seconds a peer should keep our routes while we restart (RFC 4724 Restart Time).
    pub restart_time: u16,
    /// Seconds we keep a restarting peer's routes as stale, waiting for its End-of-RIB.
    pub stale_time: u16,
}

/// Kernel FIB programming.
#[derive(Debug, Clone, PartialEq)]
pub struct FibConfig {
    pub protocol: u8,
    /// Routing table id (254 = main).
    pub table: u32,
    /// Turn on IPv4/IPv6 forwarding in the agent's namespace.
    pub enable_forwarding: bool,
    /// Route type for the node's own pod CIDRs.
    pub own_cidr_route: OwnCidrRoute,
    /// Metric (priority) of installed routes.
    pub metric: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnCidrRoute {
    Blackhole,
    Unreachable,
    None,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ControlConfig {
    pub socket: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MetricsConfig {
    /// `None`: the HTTP endpoint is off.
    pub address: Option<SocketAddr>,
}

/// One problem in a config file, at a place in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    pub line: u64,
    pub column: u64,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid { problems: Vec<Problem> },
}

impl Error {
    /// The located problems (empty for read errors).
    pub fn problems(&self) -> &[Problem] {
        match self {
            Error::Invalid { problems } => problems,
            Error::Read { .. } => &[],
        }
    }
}

/// Read and validate a config file.
pub fn load(path: impl AsRef<Path>) -> Result<Config, Error> {
    let path = path.as_ref();
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: name.clone(),
        source,
    })?;
    parse_str(&text, &name, path.parent())
}

impl Config {
    /// A one-line summary, as `petrel check` prints for a good file.
    pub fn summary(&self) -> String {
        let cidrs = match &self.node.pod_cidrs {
            PodCidrs::Static(v) => v
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(","),
            PodCidrs::Kubernetes => "from kubernetes".to_string(),
        };
        let ibgp = self
            .peers
            .iter()
            .filter(|p| p.is_ibgp(self.node.asn))
            .count();
        format!(
            "ok: AS{} router-id {} pod CIDRs [{}], {} peer(s) ({} eBGP, {} iBGP), fib protocol {}",
            self.node.asn,
            self.node.router_id,
            cidrs,
            self.peers.len(),
            self.peers.len() - ibgp,
            ibgp,
            self.fib.protocol
        )
    }
}
