//! The tokio shell around the pure layers: it owns the sockets and timers.
//!
//! ```text
//!   Speaker (handle) ──SpeakerCmd──► manager task ◄──(stream, addr)── listener task(s)
//!      │  │                           │   │  one per configured peer
//!      │  │                  PeerCmd  │   └──RibInput (peer config)────────────┐
//!      │  │                           ▼                                       ▼
//!      │  │   conn reader ──ConnEvent──► peer task: Fsm, decode ──RibInput──► rib task: Table
//!      │  │   conn writer ◄─WriterMsg──┘                                  │  │  │
//!      │  │        ▲                                                     │  │  └─RibOutput──► consumer (FIB)
//!      │  │        └────────────── OutQueue (per peer, never blocks) ◄───┘  │
//!      │  └──────────────────────── RibQuery (routes) ─────────────────────►│
//!      └──── reads ──► Board ◄── publish: peer tasks (state), rib task (counts)
//! ```
//!
//! Each piece of state has one owner: the peer task owns its FSM and connections, the rib
//! task owns the table (RIB, policies, Adj-RIBs-Out), the manager owns the peer list and the
//! listening sockets. Data flows one way; see [`msg`] for every channel, its bound, and who
//! waits on whom.

mod conn;
mod manager;
pub mod msg;
mod peer;
mod rib_task;
pub mod sockopt;
pub mod table;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use tokio::sync::{mpsc, oneshot};

use crate::fsm::State;
use crate::policy::{ExportPolicy, ImportPolicy, Refusal, Source};
use crate::rib::{PeerCounts, RouteView};
use crate::wire::Afi;

use msg::{Board, RibQuery, SpeakerCmd};
pub use msg::{LocalRoute, RibOutput};

/// Speaker-wide settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpeakerConfig {
    pub asn: u32,
    pub router_id: Ipv4Addr,
    /// Route reflection cluster id (RFC 4456 7); `None`: the router id.
    pub cluster_id: Option<Ipv4Addr>,
    /// Where to accept sessions; empty: 0.0.0.0 and :: on `listen_port`.
    pub listen_addresses: Vec<IpAddr>,
    pub listen_port: u16,
    pub max_paths: usize,
    pub graceful_restart: Option<GracefulRestart>,
    /// How long to wait for every peer's End-of-RIB before declaring the initial table
    /// complete anyway ([`RibOutput::Synced`]).
    pub sync_timeout: Duration,
    /// The node's addresses with their subnets, as at start ([`Speaker::set_node_addresses`]
    /// changes them).
    pub node_addresses: Vec<IpNet>,
}

/// Our graceful restart settings (RFC 4724).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GracefulRestart {
    /// Restart Time we advertise.
    pub restart_time: u16,
    /// How long we keep a restarted peer's stale routes waiting for its End-of-RIB.
    pub stale_time: u16,
    /// We are restarting and our forwarding state survived: set the R and F bits.
    pub restarting: bool,
}

/// Dynamic peers (`peer_ranges`): a session from any address in `range` is accepted as a
/// peer named `NAME/ADDRESS` with the settings of `template` (passive, its address the
/// caller's), at most `max_peers` at once. It goes, with its routes, once its session has
/// ended and no stale routes of it are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRange {
    pub name: String,
    pub range: IpNet,
    pub max_peers: u32,
    pub template: PeerConfig,
}

/// One neighbour as the speaker sees it.
#[derive(Clone, PartialEq, Eq)]
pub struct PeerConfig {
    pub name: String,
    pub address: IpAddr,
    pub port: u16,
    pub remote_asn: u32,
    pub local_address: Option<IpAddr>,
    pub passive: bool,
    pub hold_time: u16,
    pub keepalive: u16,
    pub connect_retry: u32,
    pub connect_retry_max: u32,
    /// TCP MD5 key (RFC 2385). Never printed: `Debug` shows only whether it is set.
    pub md5_key: Option<Arc<[u8]>>,
    pub multihop: Option<u8>,
    pub gtsm: bool,
    pub families: Vec<Afi>,
    pub import: ImportPolicy,
    pub export: ExportPolicy,
    pub next_hop_v4: Option<Ipv4Addr>,
    pub next_hop_v6: Option<Ipv6Addr>,
    pub graceful_restart: bool,
    /// Withdraw an eBGP peer's routes whose AS path does not start with its AS (RFC 4271
    /// 6.3); off for route servers.
    pub enforce_first_as: bool,
    /// A liveness detector (BFD) watches this session: hold it in Idle until the detector
    /// reports Up through [`Speaker::set_liveness`] (RFC 9384 "strict" mode).
    pub liveness_required: bool,
    /// A route reflection client (RFC 4456): iBGP routes are reflected to it and from it.
    pub route_reflector_client: bool,
}

impl std::fmt::Debug for PeerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerConfig")
            .field("name", &self.name)
            .field("address", &self.address)
            .field("port", &self.port)
            .field("remote_asn", &self.remote_asn)
            .field("local_address", &self.local_address)
            .field("passive", &self.passive)
            .field("hold_time", &self.hold_time)
            .field("md5", &self.md5_key.as_ref().map(|_| "<set>"))
            .field("families", &self.families)
            .finish_non_exhaustive()
    }
}

impl PeerConfig {
    /// A peer with the usual defaults: active, hold 90, both families.
    pub fn new(name: &str, address: IpAddr, remote_asn: u32) -> PeerConfig {
        PeerConfig {
            name: name.to_string(),
            address,
            port: 179,
            remote_asn,
            local_address: None,
            passive: false,
            hold_time: 90,
            keepalive: 30,
            connect_retry: 5,
            connect_retry_max: 60,
            liveness_required: false,
            route_reflector_client: false,
            md5_key: None,
            multihop: None,
            gtsm: false,
            families: vec![Afi::Ipv4, Afi::Ipv6],
            import: ImportPolicy::default(),
            export: ExportPolicy::default(),
            next_hop_v4: None,
            next_hop_v6: None,
            graceful_restart: true,
            enforce_first_as: true,
        }
    }

    /// Whether a change from `self` to `other` can be applied without resetting the session.
    /// Whether only import, export or route reflection differ: applied to the table with
    /// no session reset.
    fn only_policy_differs(&self, other: &PeerConfig) -> bool {
        let mut a = self.clone();
        a.import = other.import.clone();
        a.export = other.export.clone();
        a.route_reflector_client = other.route_reflector_client;
        &a == other
    }

    fn ebgp(&self, local_asn: u32) -> bool {
        self.remote_asn != local_asn
    }
}

/// Prefixes per source (`pod_cidrs`, `services`, `originate`, `learned`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct BySource {
    pub pod_cidrs: u64,
    pub services: u64,
    pub originate: u64,
    pub learned: u64,
}

impl BySource {
    fn of(a: [u64; 4]) -> BySource {
        BySource {
            pod_cidrs: a[Source::PodCidrs.index()],
            services: a[Source::Services.index()],
            originate: a[Source::Originate.index()],
            learned: a[Source::Learned.index()],
        }
    }

    pub fn total(&self) -> u64 {
        self.pod_cidrs + self.services + self.originate + self.learned
    }
}

/// What the speaker reports about one peer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerStatus {
    pub name: String,
    pub address: IpAddr,
    pub remote_asn: u32,
    pub local_address: Option<IpAddr>,
    pub state: State,
    #[serde(skip)]
    pub state_since: Option<std::time::Instant>,
    /// Seconds in the current state.
    pub state_secs: u64,
    pub last_error: Option<String>,
    pub remote_router_id: Option<Ipv4Addr>,
    pub hold_time: Option<u16>,
    pub keepalive: Option<u16>,
    pub families: Vec<Afi>,
    pub graceful_restart: bool,
    /// A route reflection client of ours.
    pub route_reflector_client: bool,
    pub prefixes: PeerCounts,
    /// Refused by import policy, per reason.
    pub refused: Vec<(Refusal, u64)>,
    pub advertised: u64,
    pub advertised_by_source: BySource,
    pub messages_in: u64,
    pub messages_out: u64,
    pub updates_in: u64,
    pub updates_out: u64,
    /// Times the session reached Established.
    pub established_count: u64,
    /// Seconds from Established to the peer's End-of-RIB, per family, for the last session.
    pub end_of_rib_secs: Vec<(Afi, f64)>,
}

impl PeerStatus {
    pub(crate) fn new(cfg: &PeerConfig) -> PeerStatus {
        PeerStatus {
            name: cfg.name.clone(),
            address: cfg.address,
            remote_asn: cfg.remote_asn,
            local_address: None,
            state: State::Idle,
            state_since: None,
            state_secs: 0,
            last_error: None,
            remote_router_id: None,
            hold_time: None,
            keepalive: None,
            families: Vec::new(),
            graceful_restart: false,
            route_reflector_client: cfg.route_reflector_client,
            prefixes: PeerCounts::default(),
            refused: Vec::new(),
            advertised: 0,
            advertised_by_source: BySource::default(),
            messages_in: 0,
            messages_out: 0,
            updates_in: 0,
            updates_out: 0,
            established_count: 0,
            end_of_rib_secs: Vec::new(),
        }
    }
}

/// What the speaker reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SpeakerStatus {
    pub asn: u32,
    pub router_id: Ipv4Addr,
    /// The node's own routes, per local source.
    pub local: Vec<(Source, Vec<IpNet>)>,
    pub peers: Vec<PeerStatus>,
    /// Prefixes with a selected path, IPv4 and IPv6.
    pub loc_rib: (usize, usize),
    /// Whether the initial table is complete (every peer's End-of-RIB or the timeout).
    pub synced: bool,
    /// Underlay routes known for next-hop tracking (none: nobody fed them yet, so every
    /// next hop counts as connected).
    pub underlay_routes: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the speaker has stopped")]
    Stopped,
}

/// Handle to a running speaker; cheap to clone.
#[derive(Clone)]
pub struct Speaker {
    tx: mpsc::Sender<SpeakerCmd>,
    queries: mpsc::Sender<RibQuery>,
    board: Arc<Board>,
    asn: u32,
    router_id: Ipv4Addr,
}

impl Speaker {
    /// Start listening and connecting. The node's own routes (`local`, per source) are in
    /// the table before any session starts, so that no peer is sent an End-of-RIB without
    /// them; Loc-RIB changes go to `out` (bound it: a full channel slows the speaker down).
    pub async fn start(
        cfg: SpeakerConfig,
        peers: Vec<PeerConfig>,
        local: Vec<(Source, Vec<LocalRoute>)>,
        out: mpsc::Sender<RibOutput>,
    ) -> Result<Speaker, Error> {
        let (tx, rx) = mpsc::channel(64);
        let board = Arc::new(Board::default());
        let (asn, router_id) = (cfg.asn, cfg.router_id);
        let queries = manager::spawn(cfg, peers, local, rx, out, board.clone()).await?;
        Ok(Speaker {
            tx,
            queries,
            board,
            asn,
            router_id,
        })
    }

    async fn ask<T>(&self, f: impl FnOnce(oneshot::Sender<T>) -> SpeakerCmd) -> Result<T, Error> {
        let (otx, orx) = oneshot::channel();
        self.tx.send(f(otx)).await.map_err(|_| Error::Stopped)?;
        orx.await.map_err(|_| Error::Stopped)
    }

    /// Apply a new peer list: new peers start, removed ones stop (Cease, peer
    /// de-configured), changed ones restart, unchanged ones are left alone, and a change of
    /// import or export policy alone is applied without a reset.
    pub async fn set_peers(&self, peers: Vec<PeerConfig>) -> Result<(), Error> {
        self.ask(|tx| SpeakerCmd::SetPeers(peers, tx)).await
    }

    /// Apply new peer ranges: dynamic peers of a range that is gone, no longer holds their
    /// address or whose settings changed are stopped (Cease, peer de-configured; a changed
    /// range takes them back at once when they reconnect).
    pub async fn set_peer_ranges(&self, ranges: Vec<PeerRange>) -> Result<(), Error> {
        self.ask(|tx| SpeakerCmd::SetRanges(ranges, tx)).await
    }

    /// Replace the routes of one local source (pod CIDRs, `originate`, Services): only the
    /// prefixes that differ are announced or withdrawn. Returns once the changes are on
    /// every peer's socket.
    pub async fn set_local(&self, source: Source, routes: Vec<LocalRoute>) -> Result<(), Error> {
        self.ask(|done| SpeakerCmd::SetLocal {
            source,
            routes,
            done,
        })
        .await
    }

    /// Every address of the node, with its subnet: import refuses routes whose next hop is
    /// one of them, or inside one of their subnets (unless `filter_martians` is off).
    pub async fn set_node_addresses(&self, addresses: Vec<IpNet>) -> Result<(), Error> {
        self.tx
            .send(SpeakerCmd::NodeAddresses(addresses))
            .await
            .map_err(|_| Error::Stopped)
    }

    /// The kernel routes next hops resolve through (next-hop tracking), whole: connected,
    /// static and other daemons' routes of the main table, not Petrel's own. A path whose
    /// next hop none of them covers (the default route does not count) is not selected;
    /// one behind a route with gateways is forwarded to those gateways. Until the first
    /// call every next hop counts as connected.
    pub async fn set_underlay(&self, routes: Vec<crate::rib::UnderlayRoute>) -> Result<(), Error> {
        self.tx
            .send(SpeakerCmd::Underlay(routes))
            .await
            .map_err(|_| Error::Stopped)
    }

    /// What a liveness detector (BFD) says of the path to peer `name` (RFC 5882). Down on
    /// an Established session ends it at once with Cease subcode 10, "BFD Down" (RFC 9384),
    /// and its routes leave the table, unless the session negotiated graceful restart and the
    /// peer's forwarding is independent of its control plane (`control_plane_independent`,
    /// the BFD C bit): then graceful restart decides. A session with `liveness_required`
    /// waits in Idle while the detector is not Up.
    pub async fn set_liveness(
        &self,
        name: &str,
        up: bool,
        control_plane_independent: bool,
    ) -> Result<(), Error> {
        self.tx
            .send(SpeakerCmd::Liveness {
                peer: name.to_string(),
                up,
                control_plane_independent,
            })
            .await
            .map_err(|_| Error::Stopped)
    }

    /// Status from what the tasks last published: never waits on route processing.
    pub fn status(&self) -> SpeakerStatus {
        let rib = self
            .board
            .rib
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let peers = self
            .board
            .peers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|p| {
                use std::sync::atomic::Ordering::Relaxed;
                let mut s = p.status.lock().unwrap_or_else(|e| e.into_inner()).clone();
                s.state_secs = s.state_since.map(|t| t.elapsed().as_secs()).unwrap_or(0);
                s.messages_in = p.counters.messages_in.load(Relaxed);
                s.messages_out = p.counters.messages_out.load(Relaxed);
                s.updates_in = p.counters.updates_in.load(Relaxed);
                s.updates_out = p.counters.updates_out.load(Relaxed);
                if let Some((counts, adv)) = rib.peers.get(&p.id) {
                    s.prefixes = *counts;
                    s.refused = Refusal::ALL
                        .iter()
                        .zip(counts.refused)
                        .filter(|(_, n)| *n > 0)
                        .map(|(r, n)| (*r, n))
                        .collect();
                    s.advertised_by_source = BySource::of(*adv);
                    s.advertised = s.advertised_by_source.total();
                }
                s
            })
            .collect();
        SpeakerStatus {
            asn: self.asn,
            router_id: self.router_id,
            local: rib.local,
            peers,
            loc_rib: rib.loc_rib,
            synced: rib.synced,
            underlay_routes: rib.underlay,
        }
    }

    /// Whether the speaker's tasks are running.
    pub fn alive(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        self.board.manager_alive.load(Relaxed) && self.board.rib_alive.load(Relaxed)
    }

    /// Every prefix of the RIB with its paths (answered even while routes are processed).
    pub async fn routes(&self) -> Result<Vec<RouteView>, Error> {
        let (tx, rx) = oneshot::channel();
        self.queries
            .send(RibQuery::Routes(tx))
            .await
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)
    }

    /// Stop every session: with a Cease, or, with `graceful`, by closing the connections
    /// so that graceful-restart peers keep our routes for the restart time.
    pub async fn shutdown(&self, graceful: bool) -> Result<(), Error> {
        self.ask(|done| SpeakerCmd::Shutdown { graceful, done })
            .await
    }
}
