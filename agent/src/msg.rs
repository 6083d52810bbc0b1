//! Everything the agent's tasks exchange, in one place: the FIB's commands and handle, the
//! snapshot it publishes, and the metrics instruments tasks update. Task modules (`fib`,
//! `control`, `metrics`, `run`) import this one, never each other.
//!
//! ```text
//!   run (own CIDRs, stop) ──FibCmd (16)──► fib task ──Job (4)──► netlink writer thread
//!   speaker ──RibOutput (4 batches)──────►   ▲  │
//!   monitor thread ──deletions (64)──────────┘  └──► FibSnapshot ◄── status, metrics (read)
//!   underlay thread ──UnderlayTx (latest)──► forwarder task ──► speaker (next-hop tracking)
//!   node watcher ──NodesTx (latest)──► mesh task ──► speaker peers (mesh.rs)
//! ```
//!
//! The FIB task never waits on anything but the netlink writer thread (which waits only on
//! the kernel); status and health read snapshots and never wait on it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use ipnet::IpNet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use tokio::sync::{mpsc, oneshot};

/// The kernel routes next hops resolve through, whole. Sent by the underlay thread, which
/// replaces the value and never waits; received by the forwarder task, which hands the
/// newest to the speaker. Bound: one value; when the forwarder is behind, only the latest
/// table is kept (older ones are void anyway).
pub type UnderlayTx = tokio::sync::watch::Sender<Arc<Vec<petrel_bgp::rib::UnderlayRoute>>>;
pub type UnderlayRx = tokio::sync::watch::Receiver<Arc<Vec<petrel_bgp::rib::UnderlayRoute>>>;

/// Every Node of the cluster as the mesh sees it (`None` until the first list is complete).
/// Sent by the node watcher task, which replaces the value and never waits; received by
/// the mesh task. Bound: one value; a mesh task behind sees only the latest set.
pub type NodesTx = tokio::sync::watch::Sender<Option<Arc<NodeSet>>>;
pub type NodesRx = tokio::sync::watch::Receiver<Option<Arc<NodeSet>>>;
pub type NodeSet = std::collections::BTreeMap<String, crate::mesh::MeshNode>;

/// Sent by the agent's main task, received by the FIB task; bound 16; the sender waits when
/// it is full (the FIB task never waits on the sender).
pub enum FibCmd {
    /// Make these the node's own pod CIDRs; answered once their routes are in the kernel.
    SetOwn(Vec<IpNet>, oneshot::Sender<()>),
    /// Remove every route of ours (clean stop without graceful restart).
    Flush(oneshot::Sender<()>),
    /// Stop applying changes: the routes stay as they are while the speaker shuts down for a
    /// graceful restart.
    Freeze(oneshot::Sender<()>),
}

/// FIB figures for status and metrics.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FibSummary {
    /// Learned routes in the kernel.
    pub installed: u64,
    /// Of those, routes with more than one next hop.
    pub ecmp: u64,
    /// Routes the kernel refused (see the log for why).
    pub failed: u64,
    /// Blackhole/unreachable routes for the node's own pod CIDRs.
    pub own: usize,
    /// Routes taken over from a previous run and not yet confirmed.
    pub stale: usize,
    pub synced: bool,
    /// Operations sent and refused since start.
    pub ops: u64,
    pub errors: u64,
    /// Routes restored after someone deleted them.
    pub restored: u64,
    /// Full comparisons with the kernel after lost notifications.
    pub resyncs: u64,
    /// Seconds the last batch took, and the routes in it.
    pub last_batch_secs: f64,
    pub last_batch_routes: usize,
}

/// What the FIB task last published.
#[derive(Debug, Clone, Default)]
pub struct FibSnapshot {
    pub summary: FibSummary,
    pub failed: Arc<HashSet<IpNet>>,
}

/// Handle to the FIB task; cheap to clone.
#[derive(Clone)]
pub struct Fib {
    pub(crate) tx: mpsc::Sender<FibCmd>,
    pub(crate) snapshot: Arc<Mutex<FibSnapshot>>,
    pub(crate) alive: Arc<std::sync::atomic::AtomicBool>,
}

impl Fib {
    /// The last published figures (never waits on the FIB task).
    pub fn snapshot(&self) -> FibSnapshot {
        self.snapshot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn alive(&self) -> bool {
        self.alive.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn ask(&self, f: impl FnOnce(oneshot::Sender<()>) -> FibCmd) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(f(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Make `own` the node's own pod CIDRs; returns once their routes are in the kernel.
    pub async fn set_own(&self, own: Vec<IpNet>) {
        self.ask(|tx| FibCmd::SetOwn(own, tx)).await
    }

    pub async fn flush(&self) {
        self.ask(FibCmd::Flush).await
    }

    /// Leave the kernel as it is from now on (graceful restart: the next run takes over).
    pub async fn freeze(&self) {
        self.ask(FibCmd::Freeze).await
    }
}

/// Metrics updated as things happen (the rest is read from status at scrape time).
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Seconds to apply one batch of FIB operations (netlink request to last ACK).
    pub fib_batch_seconds: Histogram,
    /// Routes per batch.
    pub fib_batch_routes: Histogram,
    /// HTTP connections closed at once because a connection cap was reached.
    pub http_refused: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            fib_batch_seconds: Histogram::new(exponential_buckets(0.0001, 4.0, 10)),
            fib_batch_routes: Histogram::new(exponential_buckets(1.0, 4.0, 10)),
            http_refused: Counter::default(),
        }
    }
}
