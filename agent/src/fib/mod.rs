//! Kernel FIB sync: one more consumer of the Loc-RIB.
//!
//! ```text
//!  speaker ──RibOutput──► fib task ──Vec<RouteOp>──► netlink thread (batched writes, ACKs)
//!                          ▲   │
//!     monitor thread ──────┘   └──lookup──► speaker   (a route of ours deleted by hand:
//!     (RTM_DELROUTE of ours)                          put it back if it is still wanted)
//! ```
//!
//! Our routes carry our `rtm_protocol` and live in our table; nothing else is touched. At
//! start the routes a previous run left are taken over as they are (so forwarding does not
//! blink); once the speaker reports the initial table complete ([`RibOutput::Synced`]), the
//! ones it did not select again are removed (mark and sweep). The node's own pod CIDRs get
//! a blackhole (or unreachable) route so that traffic to unassigned pod addresses stops here.

pub mod netlink;

use std::collections::{HashSet, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use petrel_bgp::RibOutput;
use petrel_bgp::Speaker;
use petrel_bgp::rib::RibChange;
use petrel_bgp::wire::NextHop;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use netlink::{KernelRoute, Netlink};
pub use netlink::{RouteOp, RouteTag, Target};

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
    /// Seconds the last batch took, and the routes in it.
    pub last_batch_secs: f64,
    pub last_batch_routes: usize,
}

enum FibCmd {
    Summary(oneshot::Sender<FibSummary>),
    Failed(oneshot::Sender<HashSet<IpNet>>),
    SetOwn(Vec<IpNet>, oneshot::Sender<()>),
    /// Remove every route of ours (clean stop without graceful restart).
    Flush(oneshot::Sender<()>),
    /// Stop applying changes: the routes stay as they are while the speaker shuts down
    /// for a graceful restart.
    Freeze(oneshot::Sender<()>),
}

/// Handle to the FIB task.
#[derive(Clone)]
pub struct Fib {
    tx: mpsc::Sender<FibCmd>,
}

impl Fib {
    pub async fn summary(&self) -> FibSummary {
        let (tx, rx) = oneshot::channel();
        let _ = self.tx.send(FibCmd::Summary(tx)).await;
        rx.await.unwrap_or_default()
    }

    /// Prefixes the kernel refused.
    pub async fn failed(&self) -> HashSet<IpNet> {
        let (tx, rx) = oneshot::channel();
        let _ = self.tx.send(FibCmd::Failed(tx)).await;
        rx.await.unwrap_or_default()
    }

    /// Make `own` the node's own pod CIDRs; returns once their routes are in the kernel.
    pub async fn set_own(&self, own: Vec<IpNet>) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(FibCmd::SetOwn(own, tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(FibCmd::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Leave the kernel as it is from now on (graceful restart: the next run takes over).
    pub async fn freeze(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(FibCmd::Freeze(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

type BatchResult = std::io::Result<Vec<(usize, std::io::Error)>>;
type Job = (Vec<RouteOp>, oneshot::Sender<BatchResult>);

/// A batch the netlink thread is working on.
struct Inflight {
    rx: oneshot::Receiver<BatchResult>,
    prefixes: Vec<IpNet>,
    /// Per operation: an install (not a delete).
    installs: Vec<bool>,
    started: Instant,
    n: usize,
}

/// Batches handed to the netlink thread before the first comes back: the next one is built
/// while the kernel works on the previous.
const MAX_INFLIGHT: usize = 3;

/// The netlink writer thread.
fn spawn_writer(tag: RouteTag) -> std::io::Result<mpsc::Sender<Job>> {
    let mut nl = Netlink::open(tag)?;
    let (tx, mut rx) = mpsc::channel::<Job>(4);
    std::thread::Builder::new()
        .name("fib-netlink".into())
        .spawn(move || {
            while let Some((ops, reply)) = rx.blocking_recv() {
                let _ = reply.send(nl.apply(&ops));
            }
        })?;
    Ok(tx)
}

/// Routes of ours the kernel reports deleted, or `None` when notifications were lost.
fn spawn_monitor(tag: RouteTag) -> std::io::Result<mpsc::Receiver<Option<IpNet>>> {
    use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
    use netlink_packet_route::RouteNetlinkMessage;
    use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

    const RTMGRP_IPV4_ROUTE: u32 = 0x40;
    const RTMGRP_IPV6_ROUTE: u32 = 0x400;
    const RTM_DELROUTE: u16 = 25;
    let mut sock = Socket::new(NETLINK_ROUTE)?;
    netlink::only_deletions(&sock)?;
    sock.bind(&SocketAddr::new(0, RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE))?;
    // Our own installs are announced here too: a large buffer, and a resync if it overflows.
    let _ = sock.set_rx_buf_sz(16 * 1024 * 1024);
    let (tx, rx) = mpsc::channel(1024);
    std::thread::Builder::new()
        .name("fib-monitor".into())
        .spawn(move || {
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = match sock.recv(&mut &mut buf[..], 0) {
                    Ok(n) => n,
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                        if tx.blocking_send(None).is_err() {
                            return;
                        }
                        continue;
                    }
                    Err(_) => return,
                };
                let mut off = 0;
                while off + 16 <= n {
                    let len =
                        u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap_or([0; 4])) as usize;
                    let ty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap_or([0; 2]));
                    if len < 16 || off + len > n {
                        break;
                    }
                    // Only deletions matter; skip the (many) additions without parsing them.
                    if ty == RTM_DELROUTE
                        && let Ok(m) =
                            NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[off..off + len])
                        && let NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelRoute(r)) =
                            m.payload
                        && let Some(k) = netlink::parse_route(&r, &tag)
                        && tx.blocking_send(Some(k.prefix)).is_err()
                    {
                        return;
                    }
                    off += (len + 3) & !3;
                }
            }
        })?;
    Ok(rx)
}

/// Return freed heap memory to the system. After a large table load the allocator keeps the
/// pages of the transient buffers (UPDATE batches, change lists, netlink messages) unless
/// asked; resident memory per route is one of our product figures.
fn release_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim has no preconditions; it only walks the allocator's own lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn target_of(next_hops: &[NextHop]) -> Target {
    let mut gws: Vec<IpAddr> = next_hops.iter().map(|n| n.addr()).collect();
    gws.sort();
    gws.dedup();
    Target::Via(gws)
}

struct FibTask {
    tag: RouteTag,
    writer: mpsc::Sender<Job>,
    speaker: Speaker,
    own_kind: Target,
    own: Vec<IpNet>,
    /// Routes of ours found at start, not yet confirmed by the RIB.
    stale: HashSet<IpNet>,
    failed: HashSet<IpNet>,
    summary: FibSummary,
    restore_queue: Vec<IpNet>,
    last_resync: Option<Instant>,
    metrics: crate::metrics::Metrics,
}

/// Start FIB sync. `own_kind` is the route for the node's pod CIDRs (`None`: no route).
/// Returns the handle and whether routes of ours were found in the kernel (a restart with
/// forwarding state preserved).
pub async fn start(
    tag: RouteTag,
    own: Vec<IpNet>,
    own_kind: Option<Target>,
    speaker: Speaker,
    changes: mpsc::Receiver<RibOutput>,
    metrics: crate::metrics::Metrics,
) -> anyhow::Result<Fib> {
    let writer = spawn_writer(tag)?;
    let monitor = spawn_monitor(tag)?;
    let existing = tokio::task::spawn_blocking(move || Netlink::open(tag)?.dump()).await??;
    let own_kind_t = own_kind.clone().unwrap_or(Target::Blackhole);
    // Everything of ours is stale until the RIB (or set_own, for the pod CIDRs) claims it.
    let stale: HashSet<IpNet> = existing.iter().map(|k: &KernelRoute| k.prefix).collect();
    if !stale.is_empty() {
        info!(
            routes = stale.len(),
            "taking over routes left by a previous run"
        );
    }
    let (tx, rx) = mpsc::channel(16);
    let mut task = FibTask {
        tag,
        writer,
        speaker,
        own_kind: own_kind_t,
        own: Vec::new(),
        stale,
        failed: HashSet::new(),
        summary: FibSummary::default(),
        restore_queue: Vec::new(),
        last_resync: None,
        metrics,
    };
    if own_kind.is_some() {
        task.set_own(own).await;
    }
    tokio::spawn(tracing::Instrument::instrument(
        task.run(changes, rx, monitor),
        tracing::info_span!("fib"),
    ));
    Ok(Fib { tx })
}

/// Whether the kernel holds routes of ours (checked before the speaker starts, to set the
/// graceful-restart F bit).
pub async fn has_routes(tag: RouteTag) -> bool {
    tokio::task::spawn_blocking(move || Netlink::open(tag).and_then(|mut n| n.dump()))
        .await
        .ok()
        .and_then(|r| r.ok())
        .is_some_and(|v| !v.is_empty())
}

impl FibTask {
    /// Hand `ops` to the netlink thread without waiting for the kernel.
    async fn submit(&mut self, ops: Vec<RouteOp>) -> Option<Inflight> {
        if ops.is_empty() {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        let prefixes: Vec<IpNet> = ops.iter().map(|o| o.prefix()).collect();
        let installs: Vec<bool> = ops
            .iter()
            .map(|o| !matches!(o, RouteOp::Delete { .. }))
            .collect();
        let n = ops.len();
        if self.writer.send((ops, tx)).await.is_err() {
            warn!("netlink writer is gone");
            return None;
        }
        Some(Inflight {
            rx,
            prefixes,
            installs,
            started: Instant::now(),
            n,
        })
    }

    /// Account for a batch the kernel has answered.
    fn complete(
        &mut self,
        b: Inflight,
        res: Result<BatchResult, oneshot::error::RecvError>,
    ) -> Vec<(usize, std::io::Error)> {
        let failed = match res {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => {
                warn!(error = %e, "netlink batch failed");
                self.summary.errors += b.n as u64;
                return Vec::new();
            }
            Err(_) => return Vec::new(),
        };
        let secs = b.started.elapsed().as_secs_f64();
        self.summary.ops += b.n as u64;
        self.summary.errors += failed.len() as u64;
        self.summary.last_batch_secs = secs;
        self.summary.last_batch_routes = b.n;
        self.metrics.fib_batch_seconds.observe(secs);
        self.metrics.fib_batch_routes.observe(b.n as f64);
        debug!(ops = b.n, secs, "batch applied");
        // Most batches have no refusal and nothing to forgive: skip the per-route work.
        if !failed.is_empty() || !self.failed.is_empty() {
            let refused: HashSet<usize> = failed.iter().map(|(i, _)| *i).collect();
            for (i, p) in b.prefixes.iter().enumerate() {
                if refused.contains(&i) && b.installs[i] {
                    self.failed.insert(*p);
                } else {
                    self.failed.remove(p);
                }
            }
        }
        for (i, e) in &failed {
            warn!(prefix = %b.prefixes[*i], error = %e, "kernel refused a route");
        }
        failed
    }

    /// Submit and wait (for everything but the bulk change stream).
    async fn apply(&mut self, ops: Vec<RouteOp>) -> Vec<(usize, std::io::Error)> {
        match self.submit(ops).await {
            Some(mut b) => {
                let res = (&mut b.rx).await;
                self.complete(b, res)
            }
            None => Vec::new(),
        }
    }

    /// Wait for the batches in flight, in order.
    async fn drain(&mut self, inflight: &mut VecDeque<Inflight>) {
        while let Some(mut b) = inflight.pop_front() {
            let res = (&mut b.rx).await;
            self.complete(b, res);
        }
    }

    async fn set_own(&mut self, own: Vec<IpNet>) {
        let mut ops = Vec::new();
        for p in &self.own {
            if !own.contains(p) {
                ops.push(RouteOp::Delete { prefix: *p });
            }
        }
        for p in &own {
            self.stale.remove(p);
            ops.push(RouteOp::Replace {
                prefix: *p,
                target: self.own_kind.clone(),
            });
        }
        self.own = own;
        self.summary.own = self.own.len();
        self.apply(ops).await;
    }

    fn count(&mut self, c: &RibChange) {
        let (before, after) = (c.previous, c.next_hops.len());
        self.summary.installed = (self.summary.installed as i64 + (after > 0) as i64
            - (before > 0) as i64)
            .max(0) as u64;
        self.summary.ecmp =
            (self.summary.ecmp as i64 + (after > 1) as i64 - (before > 1) as i64).max(0) as u64;
    }

    fn changes(&mut self, batch: Vec<RibChange>) -> Vec<RouteOp> {
        let mut ops = Vec::with_capacity(batch.len());
        for c in &batch {
            self.count(c);
            self.stale.remove(&c.prefix);
            if self.own.contains(&c.prefix) {
                // Never replace our own pod CIDR's route (policy refuses such routes anyway).
                continue;
            }
            if c.next_hops.is_empty() {
                ops.push(RouteOp::Delete { prefix: c.prefix });
            } else {
                ops.push(RouteOp::Replace {
                    prefix: c.prefix,
                    target: target_of(&c.next_hops),
                });
            }
        }
        ops
    }

    async fn sweep(&mut self) {
        let stale: Vec<IpNet> = self.stale.drain().collect();
        if !stale.is_empty() {
            info!(
                routes = stale.len(),
                "removing routes of a previous run the RIB no longer selects"
            );
        }
        let ops = stale
            .into_iter()
            .map(|prefix| RouteOp::Delete { prefix })
            .collect();
        self.apply(ops).await;
        self.summary.synced = true;
    }

    /// Put back routes of ours that were deleted behind our back, if still wanted.
    async fn restore(&mut self) {
        let queue: Vec<IpNet> = std::mem::take(&mut self.restore_queue);
        if queue.is_empty() {
            return;
        }
        let mut ops = Vec::new();
        let mut ask = Vec::new();
        for p in queue {
            if self.own.contains(&p) {
                ops.push(RouteOp::AddIfMissing {
                    prefix: p,
                    target: self.own_kind.clone(),
                });
            } else if !self.stale.contains(&p) {
                ask.push(p);
            }
        }
        if !ask.is_empty()
            && let Ok(nhs) = self.speaker.lookup(ask.clone()).await
        {
            for (p, nh) in ask.into_iter().zip(nhs) {
                if !nh.is_empty() {
                    ops.push(RouteOp::AddIfMissing {
                        prefix: p,
                        target: target_of(&nh),
                    });
                }
            }
        }
        let n = ops.len();
        let failed = self.apply(ops).await.len();
        if n > 0 {
            self.summary.restored += (n - failed) as u64;
            info!(
                routes = n,
                "checked routes deleted from outside and restored the missing ones"
            );
        }
    }

    /// Compare the kernel with the RIB after lost notifications, and fix what differs.
    async fn resync(&mut self) {
        if self
            .last_resync
            .is_some_and(|t| t.elapsed() < Duration::from_secs(10))
        {
            return;
        }
        self.last_resync = Some(Instant::now());
        let Ok(selected) = self.speaker.selected().await else {
            return;
        };
        let mut ops = Vec::new();
        for (p, nh) in selected {
            if !self.own.contains(&p) {
                ops.push(RouteOp::AddIfMissing {
                    prefix: p,
                    target: target_of(&nh),
                });
            }
        }
        for p in self.own.clone() {
            ops.push(RouteOp::AddIfMissing {
                prefix: p,
                target: self.own_kind.clone(),
            });
        }
        debug!(routes = ops.len(), "resync after lost route notifications");
        self.apply(ops).await;
    }

    /// Remove every route of ours, as the kernel lists them (the speaker may be gone).
    async fn flush(&mut self) {
        let tag = self.tag;
        let existing = tokio::task::spawn_blocking(move || Netlink::open(tag)?.dump()).await;
        let routes = match existing {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                warn!(error = %e, "cannot list our routes to remove them");
                return;
            }
            Err(_) => return,
        };
        let ops: Vec<RouteOp> = routes
            .into_iter()
            .map(|k| RouteOp::Delete { prefix: k.prefix })
            .collect();
        debug!(routes = ops.len(), "removing every route of ours");
        self.apply(ops).await;
        self.stale.clear();
        self.summary.installed = 0;
        self.summary.ecmp = 0;
    }

    async fn run(
        mut self,
        mut changes: mpsc::Receiver<RibOutput>,
        mut cmds: mpsc::Receiver<FibCmd>,
        mut monitor: mpsc::Receiver<Option<IpNet>>,
    ) {
        let mut restore_at: Option<Instant> = None;
        let mut frozen = false;
        let mut trim_at: Option<Instant> = None;
        let mut inflight: VecDeque<Inflight> = VecDeque::new();
        loop {
            tokio::select! {
                biased;
                res = async { (&mut inflight.front_mut().expect("guarded").rx).await }, if !inflight.is_empty() => {
                    if let Some(b) = inflight.pop_front() {
                        self.complete(b, res);
                    }
                    if inflight.is_empty() {
                        // Once the burst is over (no change for a moment), give back the
                        // memory its transient buffers used.
                        trim_at = Some(Instant::now() + Duration::from_millis(500));
                    }
                }
                cmd = cmds.recv() => {
                    self.drain(&mut inflight).await;
                    match cmd {
                    Some(FibCmd::Summary(tx)) => {
                        let mut s = self.summary.clone();
                        s.stale = self.stale.len();
                        s.failed = self.failed.len() as u64;
                        s.installed = s.installed.saturating_sub(s.failed);
                        let _ = tx.send(s);
                    }
                    Some(FibCmd::Failed(tx)) => { let _ = tx.send(self.failed.clone()); }
                    Some(FibCmd::SetOwn(own, tx)) => {
                        self.set_own(own).await;
                        let _ = tx.send(());
                    }
                    Some(FibCmd::Flush(tx)) => {
                        self.flush().await;
                        let _ = tx.send(());
                    }
                    Some(FibCmd::Freeze(tx)) => {
                        frozen = true;
                        let _ = tx.send(());
                    }
                    None => break,
                    }
                },
                out = changes.recv(), if !frozen && inflight.len() < MAX_INFLIGHT => match out {
                    Some(RibOutput::Changes(batch)) => {
                        let ops = self.changes(batch);
                        if let Some(b) = self.submit(ops).await {
                            inflight.push_back(b);
                        }
                    }
                    Some(RibOutput::Synced) => {
                        self.drain(&mut inflight).await;
                        self.sweep().await;
                    }
                    None => {
                        // The speaker stopped; keep answering commands until dropped.
                        changes = mpsc::channel(1).1;
                    }
                },
                del = monitor.recv(), if !frozen => match del {
                    Some(Some(p)) => {
                        self.restore_queue.push(p);
                        // Deletions come in bursts (and our own deletes are announced too):
                        // look at them together shortly after.
                        restore_at.get_or_insert(Instant::now() + Duration::from_millis(100));
                    }
                    Some(None) => {
                        self.drain(&mut inflight).await;
                        self.resync().await;
                    }
                    None => monitor = mpsc::channel(1).1,
                },
                _ = tokio::time::sleep_until(restore_at.unwrap_or_else(Instant::now).into()), if restore_at.is_some() => {
                    restore_at = None;
                    self.drain(&mut inflight).await;
                    self.restore().await;
                }
                _ = tokio::time::sleep_until(trim_at.unwrap_or_else(Instant::now).into()), if trim_at.is_some() => {
                    trim_at = None;
                    // Walking the heap takes a while after a big load: not on this task.
                    tokio::task::spawn_blocking(release_memory);
                }
            }
        }
    }
}
