//! The task that owns the [`Table`]: it feeds it events and timer ticks, hands the Loc-RIB
//! changes to the consumer in batches, puts what each peer must be sent in the peer's
//! [`OutQueue`], and publishes counts to the [`Board`].
//!
//! ```text
//!   RibInput (peers, manager) ──► rib task ──RibOutput──► consumer
//!   RibQuery (handle) ─────────►     │  └─► Board (counts)
//!                                    └────► OutQueue per peer (never blocks)
//! ```
//!
//! While a batch waits for the consumer, the task answers queries and reads no events.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use super::msg::{Board, OutQueue, RibInput, RibOutput, RibQuery};
use super::table::{Outputs, PeerOut, Table, TableConfig};
use crate::rib::{PeerId, RibChange};

/// Most Loc-RIB changes in one batch for the consumer.
const BATCH: usize = 16 * 1024;
/// Most peer changes (one per peer and prefix) gathered before they go to the mailboxes:
/// with a thousand peers, one slice of events makes a thousand times its changes.
const PEER_BATCH: usize = 64 * 1024;
/// Most time spent on events before looking at queries and the consumer again.
const SLICE: Duration = Duration::from_millis(50);

pub(crate) struct RibTask {
    table: Table,
    start: Instant,
    queues: HashMap<PeerId, Arc<OutQueue>>,
    out: mpsc::Sender<RibOutput>,
    /// Batches the consumer has not taken yet.
    pending: VecDeque<RibOutput>,
    board: Arc<Board>,
    dirty: bool,
    last_publish: Instant,
    events_since_sweep: usize,
}

impl RibTask {
    pub(crate) fn spawn(
        cfg: TableConfig,
        out: mpsc::Sender<RibOutput>,
        board: Arc<Board>,
    ) -> (mpsc::Sender<RibInput>, mpsc::Sender<RibQuery>) {
        let (tx, rx) = mpsc::channel(256);
        let (qtx, qrx) = mpsc::channel(16);
        let start = Instant::now();
        board.rib_alive.store(true, Ordering::Relaxed);
        let task = RibTask {
            table: Table::new(cfg, 0),
            start,
            queues: HashMap::new(),
            out,
            pending: VecDeque::new(),
            board,
            dirty: true,
            last_publish: start,
            events_since_sweep: 0,
        };
        tokio::spawn(tracing::Instrument::instrument(
            task.run(rx, qrx),
            tracing::info_span!("rib"),
        ));
        (tx, qtx)
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    async fn run(
        mut self,
        mut rx: mpsc::Receiver<RibInput>,
        mut queries: mpsc::Receiver<RibQuery>,
    ) {
        let board = self.board.clone();
        let _alive = super::msg::AliveGuard(&board.rib_alive);
        let mut out = Outputs::default();
        self.table.tick(self.now(), &mut out);
        self.apply(out);
        loop {
            self.publish(false);
            if !self.pending.is_empty() {
                // Hold the events back until the consumer takes what it has.
                tokio::select! {
                    biased;
                    q = queries.recv() => match q {
                        Some(q) => self.query(q),
                        None => queries = mpsc::channel(1).1,
                    },
                    permit = self.out.reserve() => match permit {
                        Ok(p) => {
                            if let Some(b) = self.pending.pop_front() {
                                p.send(b);
                            }
                        }
                        Err(_) => {
                            debug!("consumer gone");
                            self.pending.clear();
                        }
                    },
                }
                continue;
            }
            let next = self.table.next_deadline();
            let sleep_ms = next
                .map(|d| d.saturating_sub(self.now()))
                .unwrap_or(3_600_000);
            tokio::select! {
                biased;
                q = queries.recv() => match q {
                    Some(q) => self.query(q),
                    None => queries = mpsc::channel(1).1,
                },
                ev = rx.recv() => {
                    let Some(ev) = ev else { break };
                    let started = Instant::now();
                    let mut out = Outputs::default();
                    self.input(ev, &mut out);
                    // Whatever else is already queued, within a time slice: fewer, larger
                    // batches for the consumer, and queries still answered promptly.
                    while out.fib.len() < BATCH
                        && out.peers.len() < PEER_BATCH
                        && started.elapsed() < SLICE
                    {
                        match rx.try_recv() {
                            Ok(ev) => self.input(ev, &mut out),
                            Err(_) => break,
                        }
                    }
                    // Quiet again: counts go out before the changes do, so that status
                    // agrees with what the FIB and the peers are about to get. While busy,
                    // at most every 100 ms.
                    if rx.is_empty() {
                        self.publish(true);
                    }
                    self.apply(out);
                }
                _ = tokio::time::sleep(Duration::from_millis(sleep_ms.max(1))), if next.is_some() => {
                    let mut out = Outputs::default();
                    let now = self.now();
                    self.table.tick(now, &mut out);
                    self.apply(out);
                }
                // Counts go out at most every 100 ms while busy; once more when it calms.
                _ = tokio::time::sleep(Duration::from_millis(100)), if self.dirty => {
                    self.publish(true);
                }
            }
        }
        self.publish(true);
    }

    fn input(&mut self, ev: RibInput, out: &mut Outputs) {
        match ev {
            RibInput::Event(e) => {
                let now = self.now();
                self.table.handle(now, e, out);
                self.events_since_sweep += 1;
                if self.events_since_sweep > 4096 {
                    self.events_since_sweep = 0;
                    self.table.sweep_interned();
                }
            }
            RibInput::Queue(id, q) => {
                self.queues.insert(id, q);
            }
            RibInput::Flushed(done) => {
                // What this slice decided so far goes into the mailboxes first; then wait
                // for the writers in a task of its own, so that nothing here waits on them.
                let before = std::mem::take(out);
                self.apply(before);
                let waits: Vec<oneshot::Receiver<()>> = self
                    .queues
                    .values()
                    .map(|q| {
                        let (tx, rx) = oneshot::channel();
                        q.barrier(tx);
                        rx
                    })
                    .collect();
                tokio::spawn(async move {
                    for w in waits {
                        let _ = tokio::time::timeout(Duration::from_secs(5), w).await;
                    }
                    let _ = done.send(());
                });
            }
        }
        self.dirty = true;
    }

    /// Carry out what the table decided: peers' mailboxes first (they never block), then
    /// the consumer's batches.
    fn apply(&mut self, out: Outputs) {
        let mut routes: HashMap<PeerId, Vec<_>> = HashMap::new();
        let flush = |routes: &mut HashMap<PeerId, Vec<_>>,
                     queues: &HashMap<PeerId, Arc<OutQueue>>| {
            for (id, list) in routes.drain() {
                if let Some(q) = queues.get(&id) {
                    q.push(list);
                }
            }
        };
        for p in out.peers {
            match p {
                PeerOut::Route { id, prefix, route } => {
                    routes.entry(id).or_default().push((prefix, route));
                }
                other => {
                    // Keep the order of routes and markers for each peer.
                    flush(&mut routes, &self.queues);
                    match other {
                        PeerOut::Reset { id, session } => {
                            if let Some(q) = self.queues.get(&id) {
                                q.reset(session);
                            }
                            if session == 0 {
                                // A removed peer's mailbox goes with it.
                                if !self.table.has_peer(id) {
                                    self.queues.remove(&id);
                                }
                            }
                        }
                        PeerOut::EndOfRib { id, afi } => {
                            if let Some(q) = self.queues.get(&id) {
                                q.end_of_rib(afi);
                            }
                        }
                        PeerOut::MaxPrefix { id, limit } => {
                            if let Some(q) = self.queues.get(&id) {
                                q.signal_max_prefix(limit);
                            }
                        }
                        PeerOut::Route { .. } => {}
                    }
                }
            }
        }
        flush(&mut routes, &self.queues);
        let mut fib: Vec<RibChange> = out.fib;
        while !fib.is_empty() {
            let rest = if fib.len() > BATCH {
                fib.split_off(BATCH)
            } else {
                Vec::new()
            };
            self.pending.push_back(RibOutput::Changes(fib));
            fib = rest;
        }
        if out.synced {
            self.pending.push_back(RibOutput::Synced);
        }
        // The consumer gets what it can take at once; the rest waits in `pending`.
        while let Some(b) = self.pending.pop_front() {
            match self.out.try_send(b) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(b)) => {
                    self.pending.push_front(b);
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.pending.clear();
                    break;
                }
            }
        }
    }

    fn query(&self, q: RibQuery) {
        match q {
            RibQuery::Routes(tx) => {
                let _ = tx.send(self.table.rib().view());
            }
        }
    }

    fn publish(&mut self, force: bool) {
        if !self.dirty || (!force && self.last_publish.elapsed() < Duration::from_millis(100)) {
            return;
        }
        let snap = self.table.snapshot();
        *self.board.rib.lock().unwrap_or_else(|e| e.into_inner()) = snap;
        self.dirty = false;
        self.last_publish = Instant::now();
    }
}
