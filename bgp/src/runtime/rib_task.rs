//! The task that owns the [`Rib`]: it applies what peer tasks send, enforces the maximum
//! number of prefixes, times out stale routes of restarting peers, and emits the Loc-RIB
//! changes in batches.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::peer::PeerCmd;
use crate::rib::{PeerCounts, PeerId, PeerInfo, Rib, RibChange, RouteAttrs, RouteView};
use crate::wire::{Afi, NextHop};

/// What the speaker tells its consumer (the FIB).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RibOutput {
    /// Changes of the selected next hops, in order.
    Changes(Vec<RibChange>),
    /// The initial table is complete: every peer present at start sent its End-of-RIB, or the
    /// sync timeout passed. Sent once. A consumer that kept state from a previous run may
    /// now remove what the RIB no longer selects.
    Synced,
}

/// Prefixes announced with one set of attributes, each with the import policy's verdict.
pub(crate) type Announced = Vec<(Arc<RouteAttrs>, Vec<(IpNet, bool)>)>;

pub(crate) type AcceptFn = Box<dyn FnMut(&IpNet, &RouteAttrs) -> bool + Send>;

pub(crate) enum RibEvent {
    PeerUp {
        id: PeerId,
        info: PeerInfo,
        families: Vec<Afi>,
        /// Families whose forwarding state the peer preserved over its restart (F bit).
        preserved: Vec<Afi>,
        max_prefixes: Option<u32>,
        cmd: mpsc::Sender<PeerCmd>,
    },
    PeerDown {
        id: PeerId,
        keep: Vec<Afi>,
        stale_for: u16,
    },
    Update {
        id: PeerId,
        withdrawn: Vec<IpNet>,
        announced: Announced,
    },
    EndOfRib {
        id: PeerId,
        afi: Afi,
    },
    Reevaluate {
        id: PeerId,
        accept: AcceptFn,
    },
    /// The peer was removed from the config: drop its routes now.
    Remove {
        id: PeerId,
    },
    Query(Query),
}

pub(crate) enum Query {
    Routes(oneshot::Sender<Vec<RouteView>>),
    Counts(oneshot::Sender<HashMap<PeerId, PeerCounts>>),
    Lookup(Vec<IpNet>, oneshot::Sender<Vec<Vec<NextHop>>>),
    Selected(oneshot::Sender<Vec<(IpNet, Vec<NextHop>)>>),
    Summary(oneshot::Sender<((usize, usize), bool)>),
}

struct PeerState {
    max_prefixes: Option<u32>,
    cmd: Option<mpsc::Sender<PeerCmd>>,
    tripped: bool,
}

pub(crate) struct RibTask {
    rib: Rib,
    out: mpsc::Sender<RibOutput>,
    peers: HashMap<PeerId, PeerState>,
    /// Deadline for each restarting peer's stale routes.
    stale_deadline: HashMap<PeerId, Instant>,
    stale_time: Duration,
    /// Peers present at start whose End-of-RIB we still wait for, with the families left.
    sync_waiting: HashMap<PeerId, Option<HashSet<Afi>>>,
    sync_deadline: Option<Instant>,
    synced: bool,
}

impl RibTask {
    pub(crate) fn spawn(
        max_paths: usize,
        initial_peers: Vec<PeerId>,
        sync_timeout: Duration,
        stale_time: Duration,
        out: mpsc::Sender<RibOutput>,
    ) -> mpsc::Sender<RibEvent> {
        let (tx, rx) = mpsc::channel(256);
        let task = RibTask {
            rib: Rib::new(max_paths),
            out,
            peers: HashMap::new(),
            stale_deadline: HashMap::new(),
            stale_time,
            sync_waiting: initial_peers.into_iter().map(|p| (p, None)).collect(),
            sync_deadline: Some(Instant::now() + sync_timeout),
            synced: false,
        };
        tokio::spawn(tracing::Instrument::instrument(
            task.run(rx),
            tracing::info_span!("rib"),
        ));
        tx
    }

    async fn run(mut self, mut rx: mpsc::Receiver<RibEvent>) {
        self.check_synced().await;
        let mut changes = Vec::new();
        loop {
            let next = self
                .stale_deadline
                .values()
                .copied()
                .chain(self.sync_deadline)
                .min();
            tokio::select! {
                ev = rx.recv() => {
                    let Some(ev) = ev else { break };
                    self.event(ev, &mut changes);
                    // Apply whatever else is already queued before publishing: fewer, larger
                    // batches for the FIB.
                    while changes.len() < 16 * 1024 {
                        match rx.try_recv() {
                            Ok(ev) => self.event(ev, &mut changes),
                            Err(_) => break,
                        }
                    }
                }
                _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now).into()), if next.is_some() => {
                    self.timers(&mut changes);
                }
            }
            if !changes.is_empty()
                && self
                    .out
                    .send(RibOutput::Changes(std::mem::take(&mut changes)))
                    .await
                    .is_err()
            {
                debug!("consumer gone");
            }
            self.check_synced().await;
        }
    }

    async fn check_synced(&mut self) {
        if self.synced {
            return;
        }
        let done =
            self.sync_waiting.is_empty() || self.sync_deadline.is_some_and(|d| Instant::now() >= d);
        if done {
            if !self.sync_waiting.is_empty() {
                info!(
                    waiting = self.sync_waiting.len(),
                    "initial sync timed out waiting for End-of-RIB"
                );
            }
            self.synced = true;
            self.sync_deadline = None;
            self.sync_waiting.clear();
            let _ = self.out.send(RibOutput::Synced).await;
        }
    }

    fn timers(&mut self, changes: &mut Vec<RibChange>) {
        let now = Instant::now();
        let expired: Vec<PeerId> = self
            .stale_deadline
            .iter()
            .filter(|(_, d)| **d <= now)
            .map(|(p, _)| *p)
            .collect();
        for p in expired {
            self.stale_deadline.remove(&p);
            let before = changes.len();
            self.rib.sweep_stale(p, None, changes);
            info!(
                peer = p,
                removed = changes.len() - before,
                "stale routes timed out"
            );
        }
    }

    fn event(&mut self, ev: RibEvent, changes: &mut Vec<RibChange>) {
        match ev {
            RibEvent::PeerUp {
                id,
                info,
                families,
                preserved,
                max_prefixes,
                cmd,
            } => {
                self.rib.set_peer(id, info);
                self.peers.insert(
                    id,
                    PeerState {
                        max_prefixes,
                        cmd: Some(cmd),
                        tripped: false,
                    },
                );
                // RFC 4724 4.2: families the peer did not preserve lose their stale routes
                // at once; the others keep them until End-of-RIB or the stale timer.
                for afi in Afi::ALL {
                    if !preserved.contains(&afi) || !families.contains(&afi) {
                        self.rib.sweep_stale(id, Some(afi), changes);
                    }
                }
                if self.rib.counts(id).stale > 0 {
                    self.stale_deadline
                        .insert(id, Instant::now() + self.stale_time);
                } else {
                    self.stale_deadline.remove(&id);
                }
                if let Some(w) = self.sync_waiting.get_mut(&id) {
                    *w = Some(families.into_iter().collect());
                }
            }
            RibEvent::PeerDown {
                id,
                keep,
                stale_for,
            } => {
                self.rib.peer_down(id, &keep, changes);
                if !keep.is_empty() && self.rib.counts(id).stale > 0 {
                    self.stale_deadline.insert(
                        id,
                        Instant::now() + Duration::from_secs(stale_for.max(1) as u64),
                    );
                }
            }
            RibEvent::Update {
                id,
                withdrawn,
                announced,
            } => {
                for p in withdrawn {
                    self.rib.withdraw(id, p, changes);
                }
                for (attrs, list) in announced {
                    for (p, ok) in list {
                        self.rib.announce(id, p, attrs.clone(), ok, changes);
                    }
                }
                self.check_max(id);
            }
            RibEvent::EndOfRib { id, afi } => {
                self.rib.sweep_stale(id, Some(afi), changes);
                if self.rib.counts(id).stale == 0 {
                    self.stale_deadline.remove(&id);
                }
                if let Some(Some(fams)) = self.sync_waiting.get_mut(&id) {
                    fams.remove(&afi);
                    if fams.is_empty() {
                        self.sync_waiting.remove(&id);
                    }
                }
            }
            RibEvent::Reevaluate { id, accept } => {
                self.rib.reevaluate(id, accept, changes);
                self.check_max(id);
            }
            RibEvent::Remove { id } => {
                self.rib.peer_down(id, &[], changes);
                self.rib.sweep_stale(id, None, changes);
                self.peers.remove(&id);
                self.stale_deadline.remove(&id);
                self.sync_waiting.remove(&id);
            }
            RibEvent::Query(q) => self.query(q),
        }
    }

    fn check_max(&mut self, id: PeerId) {
        let accepted = self.rib.counts(id).accepted;
        if let Some(st) = self.peers.get_mut(&id)
            && let Some(max) = st.max_prefixes
            && accepted > max as u64
            && !st.tripped
        {
            st.tripped = true;
            warn!(peer = id, accepted, max, "maximum prefixes exceeded");
            if let Some(cmd) = &st.cmd {
                let _ = cmd.try_send(PeerCmd::MaxPrefix(max));
            }
        }
    }

    fn query(&self, q: Query) {
        match q {
            Query::Routes(tx) => {
                let _ = tx.send(self.rib.view());
            }
            Query::Counts(tx) => {
                let _ = tx.send(
                    self.peers
                        .keys()
                        .map(|p| (*p, self.rib.counts(*p)))
                        .collect(),
                );
            }
            Query::Lookup(prefixes, tx) => {
                let _ = tx.send(prefixes.iter().map(|p| self.rib.next_hops(p)).collect());
            }
            Query::Selected(tx) => {
                let _ = tx.send(self.rib.selected().collect());
            }
            Query::Summary(tx) => {
                let _ = tx.send((self.rib.selected_count(), self.synced));
            }
        }
    }
}
