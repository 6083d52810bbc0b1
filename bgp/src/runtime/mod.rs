//! The tokio shell around the pure layers: it owns the sockets and timers.
//!
//! ```text
//!   Speaker (handle) ──SpeakerCmd──► manager task ◄──(stream, addr)── listener task(s)
//!                                     │   │  one per configured peer
//!                          PeerCmd    │   └──────────────────────────────┐
//!                                     ▼                                  ▼
//!   conn reader ──(ConnId, ConnEvent)──► peer task: Fsm + policy ──RibEvent──► rib task: Rib
//!   conn writer ◄──────── bytes ─────────┘   ▲                                 │
//!                                            └──── PeerCmd (max prefix) ───────┤
//!                                                                              ▼
//!                                                        RibOutput (changes, synced) ──► FIB
//! ```
//!
//! Each piece of state has one owner: the peer task owns its FSM and connections, the rib
//! task owns the RIB, the manager owns the peer table and the listening sockets. They talk over
//! bounded channels; a full RIB queue makes peer tasks stop reading their sockets (TCP then
//! slows the sender), while their timers keep running.

mod conn;
mod manager;
mod peer;
mod rib_task;
pub mod sockopt;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use tokio::sync::{mpsc, oneshot};

use crate::fsm::State;
use crate::policy::ImportPolicy;
use crate::rib::{PeerCounts, RibChange, RouteView};
use crate::wire::{Afi, NextHop};

pub use rib_task::RibOutput;

/// Speaker-wide settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpeakerConfig {
    pub asn: u32,
    pub router_id: Ipv4Addr,
    /// Where to accept sessions; empty: 0.0.0.0 and :: on `listen_port`.
    pub listen_addresses: Vec<IpAddr>,
    pub listen_port: u16,
    pub max_paths: usize,
    pub graceful_restart: Option<GracefulRestart>,
    /// How long to wait for every peer's End-of-RIB before declaring the initial table
    /// complete anyway ([`RibOutput::Synced`]).
    pub sync_timeout: Duration,
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
    pub next_hop_v4: Option<Ipv4Addr>,
    pub next_hop_v6: Option<Ipv6Addr>,
    pub graceful_restart: bool,
    /// Withdraw an eBGP peer's routes whose AS path does not start with its AS (RFC 4271
    /// 6.3); off for route servers.
    pub enforce_first_as: bool,
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
            md5_key: None,
            multihop: None,
            gtsm: false,
            families: vec![Afi::Ipv4, Afi::Ipv6],
            import: ImportPolicy::default(),
            next_hop_v4: None,
            next_hop_v6: None,
            graceful_restart: true,
            enforce_first_as: true,
        }
    }

    /// Whether a change from `self` to `other` can be applied without resetting the session.
    fn only_policy_differs(&self, other: &PeerConfig) -> bool {
        let mut a = self.clone();
        a.import = other.import.clone();
        &a == other
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
    /// Seconds in the current state.
    pub state_secs: u64,
    pub last_error: Option<String>,
    pub remote_router_id: Option<Ipv4Addr>,
    pub hold_time: Option<u16>,
    pub keepalive: Option<u16>,
    pub families: Vec<Afi>,
    pub graceful_restart: bool,
    pub prefixes: PeerCounts,
    pub advertised: u64,
    pub messages_in: u64,
    pub messages_out: u64,
    pub updates_in: u64,
    pub updates_out: u64,
    /// Times the session reached Established.
    pub established_count: u64,
    /// Seconds from Established to the peer's End-of-RIB, per family, for the last session.
    pub end_of_rib_secs: Vec<(Afi, f64)>,
}

/// What the speaker reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SpeakerStatus {
    pub asn: u32,
    pub router_id: Ipv4Addr,
    pub originated: Vec<IpNet>,
    pub peers: Vec<PeerStatus>,
    /// Prefixes with a selected path, IPv4 and IPv6.
    pub loc_rib: (usize, usize),
    /// Whether the initial table is complete (every peer's End-of-RIB or the timeout).
    pub synced: bool,
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

pub(crate) enum SpeakerCmd {
    SetPeers(Vec<PeerConfig>, oneshot::Sender<()>),
    SetOriginated(Vec<IpNet>),
    Status(oneshot::Sender<SpeakerStatus>),
    Routes(oneshot::Sender<Vec<RouteView>>),
    Lookup(Vec<IpNet>, oneshot::Sender<Vec<Vec<NextHop>>>),
    Selected(oneshot::Sender<Vec<(IpNet, Vec<NextHop>)>>),
    Shutdown {
        graceful: bool,
        done: oneshot::Sender<()>,
    },
}

/// Handle to a running speaker; cheap to clone.
#[derive(Clone)]
pub struct Speaker {
    tx: mpsc::Sender<SpeakerCmd>,
}

impl Speaker {
    /// Start listening and connecting. Returns the handle and the stream of Loc-RIB changes.
    pub async fn start(
        cfg: SpeakerConfig,
        peers: Vec<PeerConfig>,
        originated: Vec<IpNet>,
    ) -> Result<(Speaker, mpsc::Receiver<RibOutput>), Error> {
        let (tx, rx) = mpsc::channel(64);
        let out = manager::spawn(cfg, peers, originated, rx).await?;
        Ok((Speaker { tx }, out))
    }

    async fn ask<T>(&self, f: impl FnOnce(oneshot::Sender<T>) -> SpeakerCmd) -> Result<T, Error> {
        let (otx, orx) = oneshot::channel();
        self.tx.send(f(otx)).await.map_err(|_| Error::Stopped)?;
        orx.await.map_err(|_| Error::Stopped)
    }

    /// Apply a new peer list: new peers start, removed ones stop (Cease, peer
    /// de-configured), changed ones restart, unchanged ones are left alone, and a change of
    /// import policy alone is applied to the routes already received without a reset.
    pub async fn set_peers(&self, peers: Vec<PeerConfig>) -> Result<(), Error> {
        self.ask(|tx| SpeakerCmd::SetPeers(peers, tx)).await
    }

    /// Replace the prefixes we originate (the node's pod CIDRs).
    pub async fn set_originated(&self, prefixes: Vec<IpNet>) -> Result<(), Error> {
        self.tx
            .send(SpeakerCmd::SetOriginated(prefixes))
            .await
            .map_err(|_| Error::Stopped)
    }

    pub async fn status(&self) -> Result<SpeakerStatus, Error> {
        self.ask(SpeakerCmd::Status).await
    }

    pub async fn routes(&self) -> Result<Vec<RouteView>, Error> {
        self.ask(SpeakerCmd::Routes).await
    }

    /// The selected next hops of each prefix (empty: none).
    pub async fn lookup(&self, prefixes: Vec<IpNet>) -> Result<Vec<Vec<NextHop>>, Error> {
        self.ask(|tx| SpeakerCmd::Lookup(prefixes, tx)).await
    }

    /// Every selected prefix with its next hops.
    pub async fn selected(&self) -> Result<Vec<(IpNet, Vec<NextHop>)>, Error> {
        self.ask(SpeakerCmd::Selected).await
    }

    /// Stop every session: with a Cease, or, with `graceful`, by closing the connections
    /// so that graceful-restart peers keep our routes for the restart time.
    pub async fn shutdown(&self, graceful: bool) -> Result<(), Error> {
        self.ask(|done| SpeakerCmd::Shutdown { graceful, done })
            .await
    }
}

/// The change stream a speaker produces, re-exported for consumers.
pub type Changes = Vec<RibChange>;
