//! Everything the speaker's tasks exchange, in one place: messages, the per-peer outbound
//! mailbox, and the status board. Task modules import this one, never each other.
//!
//! Who waits on whom (an arrow is "may wait for room in"); there is no cycle:
//!
//! ```text
//!   Speaker handle ──SpeakerCmd (64)──► manager ──PeerCmd (64)──► peer tasks
//!          │                              │                           │
//!          │                              └──RibInput (256)─┐         │ RibInput (256), shared
//!          │                                                ▼         ▼
//!          └──────────RibQuery (16)──────────────────────► rib task ◄──┘
//!                                                           │   │
//!                                   OutQueue (never blocks) │   └─RibOutput (4 batches)──► consumer (FIB)
//!                                                           ▼
//!                                         connection writer ──► TCP (the peer's window)
//! ```
//!
//! - The rib task never waits on a peer: what it has for a peer goes into that peer's
//!   [`OutQueue`], a coalescing map (one entry per prefix, the latest wins) that the
//!   connection writer drains as fast as the peer's TCP window allows. Its size is bounded
//!   by the number of prefixes, not by the number of changes.
//! - A slow consumer of [`RibOutput`] makes the rib task wait; while it waits it answers
//!   queries but reads no more events, so the peers stop reading their sockets and TCP
//!   slows the routers down. Nothing waits on the consumer's consumer: it never asks back.
//! - Status is never queued: peer tasks and the rib task publish to the [`Board`], and
//!   readers copy it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use ipnet::IpNet;
use tokio::net::TcpStream;
use tokio::sync::{Notify, oneshot};

use crate::policy::{ExportPolicy, ImportPolicy, OutRoute, Source};
use crate::rib::{PeerCounts, PeerId, RibChange, RouteAttrs, RouteView};
use crate::wire::{Afi, Codec, DecodeError, NextHop, NotificationMsg};

use super::{PeerConfig, PeerStatus};

// ---------------------------------------------------------------------------------------
// Handle → manager

/// Sent by the [`super::Speaker`] handle, received by the manager task; bound 64; the
/// sender waits when it is full (the manager never waits on the handle).
pub(crate) enum SpeakerCmd {
    SetPeers(Vec<PeerConfig>, oneshot::Sender<()>),
    /// Replace the peer ranges (dynamic peers); answered once applied.
    SetRanges(Vec<super::PeerRange>, oneshot::Sender<()>),
    /// Replace one local source's routes; answered once the changes are written to every
    /// peer's socket (or its session is gone).
    SetLocal {
        source: Source,
        routes: Vec<LocalRoute>,
        done: oneshot::Sender<()>,
    },
    Shutdown {
        graceful: bool,
        done: oneshot::Sender<()>,
    },
    NodeAddresses(Vec<IpNet>),
    /// The kernel's routes next hops are resolved through (next-hop tracking), whole.
    Underlay(Vec<crate::rib::UnderlayRoute>),
    /// A liveness detector's verdict on the path to a peer, sent by the agent's BFD watcher
    /// (one per peer, which waits when this queue is full; nothing waits on the watcher).
    /// The manager forwards it, awaiting room in the peer's queue: the peer task never
    /// waits on the manager, so this cannot close a cycle.
    Liveness {
        peer: String,
        up: bool,
        control_plane_independent: bool,
    },
}

/// One of the node's own routes, as a route source gives it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct LocalRoute {
    pub prefix: IpNet,
    #[serde(default)]
    pub communities: Vec<u32>,
    #[serde(default)]
    pub large_communities: Vec<[u32; 3]>,
    #[serde(default)]
    pub med: Option<u32>,
}

impl LocalRoute {
    pub fn new(prefix: IpNet) -> LocalRoute {
        LocalRoute {
            prefix,
            communities: Vec::new(),
            large_communities: Vec::new(),
            med: None,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Manager → peer task

/// Sent by the manager (and by a peer's own connect attempt), received by the peer task;
/// bound 64; the manager waits when it is full, which only happens while the peer task
/// waits for room in the rib task's queue (which never waits on the manager).
pub(crate) enum PeerCmd {
    Start,
    /// Stop the session; with `done`, the task also ends and reports through it.
    Stop {
        notification: Option<NotificationMsg>,
        graceful: bool,
        done: Option<oneshot::Sender<()>>,
    },
    Incoming(TcpStream),
    ConnectResult {
        generation: u64,
        result: std::io::Result<TcpStream>,
    },
    /// From the manager: what BFD says of the path to the peer.
    Liveness {
        up: bool,
        control_plane_independent: bool,
    },
}

// ---------------------------------------------------------------------------------------
// Connection reader → peer task, peer task → connection writer

/// Which connection an event is about: its slot and a generation number, so that events of
/// a connection already replaced are recognised and dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConnId {
    pub dir: crate::fsm::Dir,
    pub generation: u64,
}

/// Sent by a connection's reader, received by its peer task; bound 16384 messages (deep
/// enough that a router sending a full table never finds our TCP window closed while the
/// peer task catches up); the reader waits when it is full, and TCP then slows the router.
#[derive(Debug)]
pub(crate) enum ConnEvent {
    /// One whole message (header included).
    Message(Bytes),
    /// The byte stream cannot be framed; the error carries the NOTIFICATION (boxed: rare,
    /// and large beside the others).
    Malformed(Box<DecodeError>),
    /// End of stream or a socket error.
    Closed(Option<std::io::Error>),
}

/// Sent by the peer task, received by one connection's writer; unbounded, but only for the
/// session's own few messages (OPEN, KEEPALIVE, NOTIFICATION): routes come through the
/// [`OutQueue`], at the pace of the peer's TCP window.
pub(crate) enum WriterMsg {
    Data(Vec<u8>),
    /// The session is Established on this connection (boxed: once per session, and the
    /// channel allocates its slots at the size of the largest variant).
    Established(Box<Established>),
    Close,
}

/// Drain the peer's [`OutQueue`] for `session` with this codec and these next hops for
/// [`crate::policy::OutNextHop::Local`].
pub(crate) struct Established {
    pub session: u64,
    pub codec: Codec,
    pub next_hop_v4: Option<NextHop>,
    pub next_hop_v6: Option<NextHop>,
}

// ---------------------------------------------------------------------------------------
// Peers and manager → rib task

/// What the rib task is told: plain data, so that a recorded sequence can be replayed
/// through [`super::table::Table`] (JSON lines in the golden tests).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RibEvent {
    /// A peer is configured, or its policy changed (then applied to what it sent and what
    /// it was given, without a reset).
    PeerConfig {
        id: PeerId,
        name: String,
        address: IpAddr,
        ebgp: bool,
        /// A route reflection client of ours (RFC 4456).
        #[serde(default)]
        rr_client: bool,
        import: ImportPolicy,
        export: ExportPolicy,
    },
    /// The peer left the config: its routes go now.
    PeerRemoved {
        id: PeerId,
    },
    PeerUp {
        id: PeerId,
        /// Counts the peer's sessions; names the [`OutQueue`] generation of this one.
        session: u64,
        router_id: Ipv4Addr,
        families: Vec<Afi>,
        /// Families whose forwarding state the peer preserved over its restart (F bit).
        preserved: Vec<Afi>,
        /// Our addresses on the session (a route with one of them as next hop is refused).
        local_addresses: Vec<IpAddr>,
    },
    PeerDown {
        id: PeerId,
        keep: Vec<Afi>,
        stale_for: u16,
    },
    Update {
        id: PeerId,
        withdrawn: Vec<IpNet>,
        announced: Vec<(Arc<RouteAttrs>, Vec<IpNet>)>,
    },
    EndOfRib {
        id: PeerId,
        afi: Afi,
    },
    /// The peer asked for our routes of this family again (RFC 2918).
    RouteRefresh {
        id: PeerId,
        afi: Afi,
    },
    /// Replace one local source's routes.
    SetLocal {
        source: Source,
        routes: Vec<LocalRoute>,
    },
    /// Every address of the node, with its subnet (what import's sanity checks compare
    /// next hops and prefixes with).
    NodeAddresses {
        addresses: Vec<IpNet>,
    },
    /// The underlay next hops resolve through, whole (next-hop tracking): paths whose next
    /// hop resolves differently are selected again.
    Underlay {
        routes: Vec<crate::rib::UnderlayRoute>,
    },
}

/// Sent by peer tasks and the manager, received by the rib task; one queue of bound 256
/// shared by all senders; a sender waits when it is full (a peer task then reads no more
/// from its socket; its timers keep running).
pub(crate) enum RibInput {
    Event(RibEvent),
    /// The outbound mailbox of peer `id`; sent by the manager before the peer's first event.
    Queue(PeerId, Arc<OutQueue>),
    /// Answered once everything before it is on every peer's socket (the own-CIDR
    /// ordering: a blackhole goes only after the withdrawal is out).
    Flushed(oneshot::Sender<()>),
}

/// Sent by the handle, received by the rib task, which answers these even while it waits
/// for its consumer; bound 16; the asker waits when it is full.
pub(crate) enum RibQuery {
    Routes(oneshot::Sender<Vec<RouteView>>),
}

// ---------------------------------------------------------------------------------------
// Rib task → consumer

/// What the speaker tells its consumer (the FIB): sent by the rib task, bound 4 batches of
/// at most 16384 changes; the rib task waits when the consumer is behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RibOutput {
    /// Changes of the Loc-RIB, in order, each with the selected paths.
    Changes(Vec<RibChange>),
    /// The initial table is complete: every peer present at start sent its End-of-RIB, or the
    /// sync timeout passed. Sent once. A consumer that kept state from a previous run may
    /// now remove what the RIB no longer selects.
    Synced,
}

// ---------------------------------------------------------------------------------------
// Rib task → connection writer: the outbound mailbox

/// What the rib task has for one peer, written by the rib task and drained by the writer of
/// the peer's Established connection. Never blocks the rib task: a newer route for a prefix
/// replaces the older one still waiting, so the mailbox holds at most one entry per prefix.
#[derive(Debug, Default)]
pub(crate) struct OutQueue {
    state: Mutex<OutState>,
    /// Something new to drain.
    pub ready: Notify,
    /// A signal for the peer task (maximum prefixes exceeded).
    pub signal: Notify,
}

#[derive(Debug, Default)]
struct OutState {
    session: u64,
    order: VecDeque<IpNet>,
    latest: HashMap<IpNet, Option<Arc<OutRoute>>>,
    /// Entries appended to `order` and taken from it since the reset.
    pushed: u64,
    popped: u64,
    /// End-of-RIB markers: send once `popped` reaches the count.
    eor: VecDeque<(u64, Afi)>,
    barriers: Vec<(u64, oneshot::Sender<()>)>,
    max_prefix: Option<u32>,
}

/// One drain of the mailbox.
#[derive(Debug, Default)]
pub(crate) struct OutBatch {
    pub routes: Vec<(IpNet, Option<Arc<OutRoute>>)>,
    pub end_of_rib: Vec<Afi>,
    /// To fire once the batch is written.
    pub written: Vec<oneshot::Sender<()>>,
}

impl OutState {
    fn fire_barriers(&mut self, out: &mut Vec<oneshot::Sender<()>>) {
        let popped = self.popped;
        let mut i = 0;
        while i < self.barriers.len() {
            if self.barriers[i].0 <= popped {
                out.push(self.barriers.swap_remove(i).1);
            } else {
                i += 1;
            }
        }
    }
}

impl OutQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, OutState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Start over for a new session (`session` 0: none); anything waiting is dropped and
    /// its barriers fire.
    pub fn reset(&self, session: u64) {
        let mut s = self.lock();
        let barriers = std::mem::take(&mut s.barriers);
        *s = OutState {
            session,
            ..Default::default()
        };
        drop(s);
        for (_, b) in barriers {
            let _ = b.send(());
        }
        self.ready.notify_one();
    }

    pub fn push(&self, changes: impl IntoIterator<Item = (IpNet, Option<Arc<OutRoute>>)>) {
        let mut s = self.lock();
        let mut any = false;
        for (p, r) in changes {
            any = true;
            if s.latest.insert(p, r).is_none() {
                s.order.push_back(p);
                s.pushed += 1;
            }
        }
        drop(s);
        if any {
            self.ready.notify_one();
        }
    }

    /// Send End-of-RIB for `afi` after everything queued so far.
    pub fn end_of_rib(&self, afi: Afi) {
        let mut s = self.lock();
        let at = s.pushed;
        s.eor.push_back((at, afi));
        drop(s);
        self.ready.notify_one();
    }

    /// Fires once everything queued so far is written (at once if nothing is).
    pub fn barrier(&self, tx: oneshot::Sender<()>) {
        let mut s = self.lock();
        if s.popped >= s.pushed || s.session == 0 {
            drop(s);
            let _ = tx.send(());
            return;
        }
        let at = s.pushed;
        s.barriers.push((at, tx));
    }

    /// Take up to `max` routes for `session`, stopping at the next End-of-RIB marker (which
    /// then comes with them). `None` when there is nothing for this session.
    pub fn take(&self, session: u64, max: usize) -> Option<OutBatch> {
        let mut s = self.lock();
        if s.session != session || session == 0 {
            return None;
        }
        let mut b = OutBatch::default();
        let stop = s.eor.front().map(|(at, _)| *at).unwrap_or(u64::MAX);
        while b.routes.len() < max && s.popped < stop {
            let Some(p) = s.order.pop_front() else { break };
            s.popped += 1;
            if let Some(r) = s.latest.remove(&p) {
                b.routes.push((p, r));
            }
        }
        while s.eor.front().is_some_and(|(at, _)| *at <= s.popped) {
            if let Some((_, afi)) = s.eor.pop_front() {
                b.end_of_rib.push(afi);
            }
        }
        // A burst leaves the mailbox's tables at their peak size, once per peer: give that
        // back once drained (with a thousand peers, a thousand such tables).
        if s.order.is_empty() && s.latest.capacity() > 64 {
            s.order = VecDeque::new();
            s.latest = HashMap::new();
        }
        s.fire_barriers(&mut b.written);
        if b.routes.is_empty() && b.end_of_rib.is_empty() && b.written.is_empty() {
            return None;
        }
        Some(b)
    }

    pub fn signal_max_prefix(&self, limit: u32) {
        self.lock().max_prefix = Some(limit);
        self.signal.notify_one();
    }

    pub fn take_max_prefix(&self) -> Option<u32> {
        self.lock().max_prefix.take()
    }
}

// ---------------------------------------------------------------------------------------
// Everyone → status readers: the board

/// Counters a peer's tasks bump as they go (the writer counts what it sends).
#[derive(Debug, Default)]
pub(crate) struct PeerCounters {
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub updates_in: AtomicU64,
    pub updates_out: AtomicU64,
}

impl PeerCounters {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// One peer on the board: the status its task last published and its live counters.
#[derive(Debug)]
pub(crate) struct PeerShared {
    pub id: PeerId,
    pub status: Mutex<PeerStatus>,
    pub counters: Arc<PeerCounters>,
}

/// What the rib task last published.
#[derive(Debug, Clone, Default)]
pub(crate) struct RibSnapshot {
    pub peers: HashMap<PeerId, (PeerCounts, [u64; 4])>,
    pub local: Vec<(Source, Vec<IpNet>)>,
    pub loc_rib: (usize, usize),
    pub synced: bool,
    /// Underlay routes known for next-hop tracking (none: not fed yet).
    pub underlay: Option<usize>,
}

/// Where every task publishes its status; read without waiting on any task.
#[derive(Debug, Default)]
pub(crate) struct Board {
    pub peers: RwLock<BTreeMap<String, Arc<PeerShared>>>,
    pub rib: Mutex<RibSnapshot>,
    /// Set while the manager and the rib task run.
    pub manager_alive: AtomicBool,
    pub rib_alive: AtomicBool,
}

/// Clears a liveness flag when the task holding it ends, however it ends.
pub(crate) struct AliveGuard<'a>(pub &'a AtomicBool);

impl Drop for AliveGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every peer has its own command, connection-event and writer channels, and a tokio
    /// channel allocates its first block of 32 slots when it is made: with a thousand peers
    /// each byte of a message is 32 kB of resident memory. Rare, large variants are boxed.
    #[test]
    fn per_peer_messages_stay_small() {
        assert!(
            std::mem::size_of::<WriterMsg>() <= 24,
            "{}",
            std::mem::size_of::<WriterMsg>()
        );
        assert!(std::mem::size_of::<(ConnId, ConnEvent)>() <= 56);
        assert!(std::mem::size_of::<PeerCmd>() <= 56);
    }
}
