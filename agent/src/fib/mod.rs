//! Kernel FIB sync: one more consumer of the Loc-RIB, told what to install and never asking
//! anything back.
//!
//! ```text
//!  speaker ──RibOutput──► fib task: Reconciler ──Vec<RouteOp>──► netlink thread (batches, ACKs)
//!  run ──FibCmd────────►    ▲   │
//!  monitor thread ──────────┘   └──► FibSnapshot (status, metrics)
//!  (deletions of our routes made by someone else)
//! ```
//!
//! The [`reconcile::Reconciler`] keeps the desired state (learned routes from the change
//! stream, the node's own pod CIDRs) and turns every event into route operations; this task
//! only moves them to the netlink thread and back. Our routes carry our `rtm_protocol` and
//! live in our table; nothing else is touched. At start the routes a previous run left are
//! taken over as they are (so forwarding does not blink); once the speaker reports the
//! initial table complete ([`RibOutput::Synced`]), the ones nobody claimed are removed.
//!
//! A route deleted behind our back is put back from the desired state; our own deletions
//! never reach us (the monitor's socket filter drops notifications our writer caused); lost
//! notifications (ENOBUFS) lead to a full comparison with the kernel.

pub mod netlink;
pub mod reconcile;

use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use petrel_bgp::RibOutput;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::msg::{Fib, FibCmd, FibSnapshot, FibSummary, Metrics};
use netlink::{KernelRoute, Netlink};
pub use netlink::{RouteOp, RouteTag, Target};
use reconcile::Reconciler;

type BatchResult = std::io::Result<Vec<(usize, std::io::Error)>>;
type Job = (Vec<RouteOp>, oneshot::Sender<BatchResult>);

/// A batch the netlink thread is working on.
struct Inflight {
    rx: oneshot::Receiver<BatchResult>,
    prefixes: Vec<IpNet>,
    /// Per operation: an install (not a delete).
    installs: Vec<bool>,
    started: Instant,
    /// Restorations in it (counted once the kernel answers).
    restores: usize,
}

/// Batches handed to the netlink thread before the first comes back: the next one is built
/// while the kernel works on the previous.
const MAX_INFLIGHT: usize = 3;

/// The netlink writer thread: receives jobs from the FIB task (bound 4; the FIB task waits
/// when it is full) and answers each on its oneshot. Returns its netlink port id too.
fn spawn_writer(tag: RouteTag) -> std::io::Result<(mpsc::Sender<Job>, u32)> {
    let mut nl = Netlink::open(tag)?;
    let port = nl.port;
    let (tx, mut rx) = mpsc::channel::<Job>(4);
    std::thread::Builder::new()
        .name("fib-netlink".into())
        .spawn(move || {
            while let Some((ops, reply)) = rx.blocking_recv() {
                let _ = reply.send(nl.apply(&ops));
            }
        })?;
    Ok((tx, port))
}

/// Routes of ours that someone other than our writer (port `ours`) deleted, a burst per
/// message; `None` when notifications were lost. Sent by the monitor thread, received by
/// the FIB task; bound 64; the thread waits when it is full (the kernel then buffers, and
/// overflows into ENOBUFS, which makes us resync).
fn spawn_monitor(tag: RouteTag, ours: u32) -> std::io::Result<mpsc::Receiver<Option<Vec<IpNet>>>> {
    use petrel_netlink::netlink_packet_core::{NetlinkMessage, NetlinkPayload};
    use petrel_netlink::netlink_packet_route::RouteNetlinkMessage;
    use petrel_netlink::netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

    const RTMGRP_IPV4_ROUTE: u32 = 0x40;
    const RTMGRP_IPV6_ROUTE: u32 = 0x400;
    let mut sock = Socket::new(NETLINK_ROUTE)?;
    netlink::only_deletions(&sock, ours)?;
    sock.bind(&SocketAddr::new(0, RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE))?;
    let _ = sock.set_rx_buf_sz(4 * 1024 * 1024);
    let (tx, rx) = mpsc::channel(64);
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
                let mut gone = Vec::new();
                for (_, m) in petrel_netlink::headers(&buf[..n]) {
                    if let Ok(m) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(m)
                        && let NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelRoute(r)) =
                            m.payload
                        && let Some(k) = netlink::parse_route(&r, &tag)
                    {
                        gone.push(k.prefix);
                    }
                }
                if !gone.is_empty() && tx.blocking_send(Some(gone)).is_err() {
                    return;
                }
            }
        })?;
    Ok(rx)
}

async fn dump(tag: RouteTag) -> std::io::Result<Vec<KernelRoute>> {
    tokio::task::spawn_blocking(move || Netlink::open(tag)?.dump())
        .await
        .map_err(std::io::Error::other)?
}

struct FibTask {
    tag: RouteTag,
    writer: mpsc::Sender<Job>,
    r: Reconciler,
    summary: FibSummary,
    snapshot: Arc<Mutex<FibSnapshot>>,
    /// The failed set as last published (republished only when it changes).
    published_failed: usize,
    restore_queue: Vec<IpNet>,
    last_resync: Option<Instant>,
    metrics: Metrics,
}

/// Start FIB sync. `own_kind` is the route for the node's pod CIDRs (`None`: no route).
pub async fn start(
    tag: RouteTag,
    own_kind: Option<Target>,
    changes: mpsc::Receiver<RibOutput>,
    metrics: Metrics,
) -> anyhow::Result<Fib> {
    let (writer, port) = spawn_writer(tag)?;
    let monitor = spawn_monitor(tag, port)?;
    let existing = dump(tag).await?;
    if !existing.is_empty() {
        info!(
            routes = existing.len(),
            "taking over routes left by a previous run"
        );
    }
    let mut r = Reconciler::new(own_kind);
    r.adopt(&existing);
    let (tx, rx) = mpsc::channel(16);
    let snapshot = Arc::new(Mutex::new(FibSnapshot::default()));
    let alive = Arc::new(AtomicBool::new(true));
    let task = FibTask {
        tag,
        writer,
        r,
        summary: FibSummary::default(),
        snapshot: snapshot.clone(),
        published_failed: 0,
        restore_queue: Vec::new(),
        last_resync: None,
        metrics,
    };
    let a = alive.clone();
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            task.run(changes, rx, monitor).await;
            a.store(false, std::sync::atomic::Ordering::Relaxed);
        },
        tracing::info_span!("fib"),
    ));
    Ok(Fib {
        tx,
        snapshot,
        alive,
    })
}

/// Whether the kernel holds routes of ours (checked before the speaker starts, to set the
/// graceful-restart F bit).
pub async fn has_routes(tag: RouteTag) -> bool {
    dump(tag).await.is_ok_and(|v| !v.is_empty())
}

impl FibTask {
    /// Hand `ops` to the netlink thread without waiting for the kernel.
    async fn submit(&mut self, ops: Vec<RouteOp>, restores: usize) -> Option<Inflight> {
        if ops.is_empty() {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        let prefixes: Vec<IpNet> = ops.iter().map(|o| o.prefix()).collect();
        let installs: Vec<bool> = ops
            .iter()
            .map(|o| !matches!(o, RouteOp::Delete { .. }))
            .collect();
        if self.writer.send((ops, tx)).await.is_err() {
            warn!("netlink writer is gone");
            return None;
        }
        Some(Inflight {
            rx,
            prefixes,
            installs,
            started: Instant::now(),
            restores,
        })
    }

    /// Account for a batch the kernel has answered.
    fn complete(&mut self, b: Inflight, res: Result<BatchResult, oneshot::error::RecvError>) {
        let n = b.prefixes.len();
        let failed = match res {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => {
                warn!(error = %e, "netlink batch failed");
                self.summary.errors += n as u64;
                return;
            }
            Err(_) => return,
        };
        let secs = b.started.elapsed().as_secs_f64();
        self.summary.ops += n as u64;
        self.summary.errors += failed.len() as u64;
        self.summary.restored += b.restores.saturating_sub(failed.len()) as u64;
        self.summary.last_batch_secs = secs;
        self.summary.last_batch_routes = n;
        self.metrics.fib_batch_seconds.observe(secs);
        self.metrics.fib_batch_routes.observe(n as f64);
        debug!(ops = n, secs, "batch applied");
        let refused: Vec<usize> = failed.iter().map(|(i, _)| *i).collect();
        self.r.results(&b.prefixes, &b.installs, &refused);
        for (i, e) in &failed {
            warn!(prefix = %b.prefixes[*i], error = %e, "kernel refused a route");
        }
    }

    /// Submit and wait (for everything but the bulk change stream).
    async fn apply(&mut self, ops: Vec<RouteOp>, restores: usize) {
        if let Some(mut b) = self.submit(ops, restores).await {
            let res = (&mut b.rx).await;
            self.complete(b, res);
        }
    }

    /// Wait for the batches in flight, in order.
    async fn drain(&mut self, inflight: &mut VecDeque<Inflight>) {
        while let Some(mut b) = inflight.pop_front() {
            let res = (&mut b.rx).await;
            self.complete(b, res);
        }
    }

    fn publish(&mut self) {
        let (installed, ecmp) = self.r.counts();
        let s = &mut self.summary;
        s.failed = self.r.failed.len() as u64;
        s.installed = (installed as u64).saturating_sub(s.failed);
        s.ecmp = ecmp as u64;
        s.own = self.r.own().len();
        s.stale = self.r.adopted();
        s.synced = self.r.synced();
        let mut snap = self.snapshot.lock().unwrap_or_else(|e| e.into_inner());
        snap.summary = self.summary.clone();
        if self.r.failed.len() != self.published_failed || !self.r.failed.is_empty() {
            snap.failed = Arc::new(self.r.failed.clone());
            self.published_failed = self.r.failed.len();
        }
    }

    /// Compare the kernel with the desired state after lost notifications, and fix what
    /// differs (at most every 10 s; a burst of losses needs one).
    async fn resync(&mut self) {
        if self
            .last_resync
            .is_some_and(|t| t.elapsed() < Duration::from_secs(10))
        {
            return;
        }
        self.last_resync = Some(Instant::now());
        match dump(self.tag).await {
            Ok(kernel) => {
                let ops = self.r.resync(&kernel);
                info!(
                    kernel = kernel.len(),
                    fixed = ops.len(),
                    "compared with the kernel after lost route notifications"
                );
                self.summary.resyncs += 1;
                self.apply(ops, 0).await;
            }
            Err(e) => warn!(error = %e, "cannot list our routes to compare them"),
        }
    }

    async fn run(
        mut self,
        mut changes: mpsc::Receiver<RibOutput>,
        mut cmds: mpsc::Receiver<FibCmd>,
        mut monitor: mpsc::Receiver<Option<Vec<IpNet>>>,
    ) {
        let mut restore_at: Option<Instant> = None;
        let mut frozen = false;
        let mut trim_at: Option<Instant> = None;
        let mut inflight: VecDeque<Inflight> = VecDeque::new();
        self.publish();
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
                        Some(FibCmd::SetOwn(own, tx)) => {
                            let ops = self.r.set_own(own);
                            self.apply(ops, 0).await;
                            let _ = tx.send(());
                        }
                        Some(FibCmd::Flush(tx)) => {
                            let t = Instant::now();
                            match dump(self.tag).await {
                                Ok(kernel) => {
                                    let listed = t.elapsed().as_secs_f64();
                                    let ops = self.r.flush(&kernel);
                                    let n = ops.len();
                                    self.apply(ops, 0).await;
                                    info!(routes = n, listed, secs = t.elapsed().as_secs_f64(), "removed every route of ours");
                                }
                                Err(e) => warn!(error = %e, "cannot list our routes to remove them"),
                            }
                            let _ = tx.send(());
                        }
                        Some(FibCmd::Freeze(tx)) => {
                            frozen = true;
                            let _ = tx.send(());
                        }
                        None => break,
                    }
                }
                // Read even when frozen (and then drop): the speaker must never wait on us
                // while it shuts down.
                out = changes.recv(), if frozen || inflight.len() < MAX_INFLIGHT => match out {
                    Some(_) if frozen => {}
                    Some(RibOutput::Changes(batch)) => {
                        let ops = self.r.rib_changes(&batch);
                        drop(batch);
                        if let Some(b) = self.submit(ops, 0).await {
                            inflight.push_back(b);
                        }
                    }
                    Some(RibOutput::Synced) => {
                        self.drain(&mut inflight).await;
                        let ops = self.r.sync_done();
                        if !ops.is_empty() {
                            info!(
                                routes = ops.len(),
                                "removing routes of a previous run the RIB no longer selects"
                            );
                        }
                        self.apply(ops, 0).await;
                    }
                    None => {
                        // The speaker stopped; keep answering commands until dropped.
                        changes = mpsc::channel(1).1;
                    }
                },
                del = monitor.recv(), if !frozen => match del {
                    Some(Some(list)) => {
                        self.restore_queue.extend(list);
                        // Deletions come in bursts: look at them together shortly after.
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
                    let mut queue = std::mem::take(&mut self.restore_queue);
                    queue.sort();
                    queue.dedup();
                    let ops = self.r.deleted(&queue);
                    if !ops.is_empty() {
                        info!(routes = ops.len(), "putting back routes of ours deleted from outside");
                    }
                    let n = ops.len();
                    self.apply(ops, n).await;
                }
                _ = tokio::time::sleep_until(trim_at.unwrap_or_else(Instant::now).into()), if trim_at.is_some() => {
                    trim_at = None;
                    // Walking the heap takes a while after a big load: not on this task.
                    tokio::task::spawn_blocking(crate::memory::release);
                }
            }
            self.publish();
        }
    }
}
