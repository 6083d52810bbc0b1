//! The task of one peer: it owns the peer's [`Fsm`], its connections and timers, decodes
//! what the peer sends (RFC 7606 outcomes, the first-AS check) and hands it to the rib task.
//! Import and export policy live in the rib task; what the peer is sent comes from its
//! [`OutQueue`], drained by the writer of the Established connection.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::conn::{self, Conn, ConnectOpts};
use super::msg::{
    ConnEvent, ConnId, OutQueue, PeerCmd, PeerCounters, PeerShared, RibEvent, RibInput, WriterMsg,
};
use super::sockopt::TtlPolicy;
use super::{GracefulRestart, PeerConfig, PeerStatus, SpeakerConfig};
use crate::fsm::{Action, Dir, DownReason, Fsm, FsmConfig, GrConfig, Input, Negotiated, Timer};
use crate::rib::{PeerId, RouteAttrs};
use crate::wire::{self, Afi, Codec, Message, NextHop, NotificationMsg, UpdateMsg, codes};

/// Handle the manager keeps.
pub(crate) struct PeerHandle {
    pub id: PeerId,
    pub cfg: PeerConfig,
    pub cmd: mpsc::Sender<PeerCmd>,
    pub task: JoinHandle<()>,
    pub shared: Arc<PeerShared>,
}

pub(crate) struct PeerTask {
    id: PeerId,
    cfg: PeerConfig,
    speaker: SpeakerConfig,
    fsm: Fsm,
    conns: [Option<Conn>; 2],
    conn_gen: u64,
    connect_gen: u64,
    connecting: Option<JoinHandle<()>>,
    timers: HashMap<Timer, Instant>,
    hold_secs: [u32; 2],
    self_tx: mpsc::Sender<PeerCmd>,
    conn_tx: mpsc::Sender<(ConnId, ConnEvent)>,
    rib: mpsc::Sender<RibInput>,
    /// Events for the RIB waiting for room in its queue; while any wait, we read no more.
    pending: VecDeque<RibEvent>,
    queue: Arc<OutQueue>,
    shared: Arc<PeerShared>,
    negotiated: Option<Box<Negotiated>>,
    up_dir: Option<Dir>,
    up_since: Option<Instant>,
    /// Sessions so far; the current one's number names its [`OutQueue`] generation.
    session: u64,
    state_since: Instant,
    last_state: crate::fsm::State,
    last_error: Option<String>,
    eor_at: Vec<(Afi, f64)>,
    established: u64,
    /// The liveness detector's last verdict (BFD); `None` until it has spoken.
    live: Option<bool>,
    /// A Start held back until the detector says Up (`liveness_required`).
    start_deferred: bool,
}

impl PeerTask {
    pub(crate) fn spawn(
        id: PeerId,
        cfg: PeerConfig,
        speaker: SpeakerConfig,
        rib: mpsc::Sender<RibInput>,
        queue: Arc<OutQueue>,
    ) -> PeerHandle {
        let (tx, rx) = mpsc::channel(64);
        let (conn_tx, conn_rx) = mpsc::channel(16384);
        let fsm = Fsm::new(fsm_config(&cfg, &speaker));
        let shared = Arc::new(PeerShared {
            id,
            status: std::sync::Mutex::new(PeerStatus::new(&cfg)),
            counters: Arc::new(PeerCounters::default()),
        });
        let task = PeerTask {
            id,
            cfg: cfg.clone(),
            speaker,
            fsm,
            conns: [None, None],
            conn_gen: 0,
            connect_gen: 0,
            connecting: None,
            timers: HashMap::new(),
            hold_secs: [0; 2],
            self_tx: tx.clone(),
            conn_tx,
            rib,
            pending: VecDeque::new(),
            queue,
            shared: shared.clone(),
            negotiated: None,
            up_dir: None,
            up_since: None,
            session: 0,
            state_since: Instant::now(),
            last_state: crate::fsm::State::Idle,
            last_error: None,
            eor_at: Vec::new(),
            established: 0,
            live: None,
            start_deferred: false,
        };
        let span = tracing::info_span!("peer", peer = %cfg.name, remote_as = cfg.remote_asn, addr = %cfg.address);
        let run = Box::new(task).run(rx, conn_rx);
        let handle = tokio::spawn(tracing::Instrument::instrument(run, span));
        PeerHandle {
            id,
            cfg,
            cmd: tx,
            task: handle,
            shared,
        }
    }

    /// `self` boxed: an async fn keeps its arguments in its state beside the locals they
    /// are moved into, so a task by value would carry two copies for its whole life.
    async fn run(
        mut self: Box<Self>,
        mut cmds: mpsc::Receiver<PeerCmd>,
        mut conn_rx: mpsc::Receiver<(ConnId, ConnEvent)>,
    ) {
        let rib = self.rib.clone();
        let queue = self.queue.clone();
        self.publish();
        loop {
            let next = self.timers.values().copied().min();
            let waiting = !self.pending.is_empty();
            tokio::select! {
                biased;
                cmd = cmds.recv() => {
                    let Some(cmd) = cmd else { break };
                    if let Some(done) = self.command(cmd) {
                        // Boxed: once per task, and inline it would make every peer's
                        // task larger for its whole life.
                        Box::pin(self.flush_pending()).await;
                        let _ = done.send(());
                        break;
                    }
                }
                _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now).into()), if next.is_some() => {
                    self.fire_timers();
                }
                _ = queue.signal.notified() => {
                    if let Some(limit) = queue.take_max_prefix() {
                        self.max_prefix(limit);
                    }
                }
                permit = rib.reserve(), if waiting => {
                    let Ok(permit) = permit else { break };
                    if let Some(ev) = self.pending.pop_front() {
                        permit.send(RibInput::Event(ev));
                    }
                }
                ev = conn_rx.recv(), if !waiting => {
                    let Some((id, ev)) = ev else { break };
                    self.conn_event(id, ev);
                }
            }
            self.note_state();
        }
        for c in self.conns.iter_mut() {
            if let Some(c) = c.take() {
                c.close();
            }
        }
        if let Some(h) = self.connecting.take() {
            h.abort();
        }
    }

    async fn flush_pending(&mut self) {
        while let Some(ev) = self.pending.pop_front() {
            if self.rib.send(RibInput::Event(ev)).await.is_err() {
                break;
            }
        }
    }

    fn note_state(&mut self) {
        let s = self.fsm.state();
        if s != self.last_state {
            info!(from = %self.last_state, to = %s, "state change");
            self.last_state = s;
            self.state_since = Instant::now();
            self.publish();
        }
    }

    /// Publish what status shows of this peer (on every change of it).
    fn publish(&self) {
        let n = self.negotiated.as_deref();
        let mut st = self.shared.status.lock().unwrap_or_else(|e| e.into_inner());
        st.local_address = self
            .up_dir
            .and_then(|d| self.conns[slot(d)].as_ref())
            .map(|c| c.local.ip());
        st.state = self.fsm.state();
        st.state_since = Some(self.state_since);
        st.last_error = self.last_error.clone();
        st.remote_router_id = n.map(|n| n.remote_id);
        st.hold_time = n.map(|n| n.hold_time);
        st.keepalive = n.map(|n| n.keepalive);
        st.families = n.map(|n| n.families.clone()).unwrap_or_default();
        st.graceful_restart = n.map(|n| n.gr).unwrap_or(false);
        st.established_count = self.established;
        st.end_of_rib_secs = self.eor_at.clone();
    }

    /// Handle a command; returns the reply channel when the task must end.
    fn command(&mut self, cmd: PeerCmd) -> Option<oneshot::Sender<()>> {
        match cmd {
            PeerCmd::Start => {
                if self.cfg.liveness_required && self.live != Some(true) {
                    info!("waiting for BFD to come up before starting the session");
                    self.start_deferred = true;
                } else {
                    self.input(Input::Start);
                }
            }
            PeerCmd::Liveness {
                up,
                control_plane_independent,
            } => self.liveness(up, control_plane_independent),
            PeerCmd::Stop {
                notification,
                graceful,
                done,
            } => {
                self.input(Input::Stop {
                    notification,
                    graceful,
                });
                if done.is_some() {
                    return done;
                }
            }
            PeerCmd::Incoming(stream) => self.incoming(stream),
            PeerCmd::ConnectResult { generation, result } => {
                if generation != self.connect_gen || self.connecting.is_none() {
                    return None;
                }
                self.connecting = None;
                match result {
                    Ok(stream) => {
                        self.conn_gen += 1;
                        let id = ConnId {
                            dir: Dir::Out,
                            generation: self.conn_gen,
                        };
                        match self.open_conn(stream, id) {
                            Ok(c) => {
                                debug!(local = %c.local, "connected");
                                self.conns[0] = Some(c);
                                self.input(Input::Connected(Dir::Out));
                            }
                            Err(e) => {
                                self.last_error = Some(format!("connect: {e}"));
                                self.input(Input::ConnectFailed);
                            }
                        }
                    }
                    Err(e) => {
                        debug!(error = %e, "connect failed");
                        self.last_error = Some(format!("connect: {e}"));
                        self.input(Input::ConnectFailed);
                    }
                }
            }
        }
        None
    }

    fn open_conn(&self, stream: TcpStream, id: ConnId) -> std::io::Result<Conn> {
        Conn::spawn(
            stream,
            id,
            self.conn_tx.clone(),
            self.queue.clone(),
            self.shared.counters.clone(),
        )
    }

    /// RFC 5882 section 4.3 and RFC 9384: BFD's verdict on the path to the peer.
    fn liveness(&mut self, up: bool, cpi: bool) {
        let was = self.live.replace(up);
        if up {
            if self.start_deferred {
                self.start_deferred = false;
                info!("BFD up: starting the session");
                self.input(Input::Start);
            }
            return;
        }
        if was == Some(false) {
            return;
        }
        if let Some(n) = &self.negotiated {
            if cpi && !n.gr_families().is_empty() {
                // The peer's forwarding survives its control plane: a restart of the peer
                // is graceful restart's business, not a failure (RFC 5882 section 4.3.2).
                info!(
                    "BFD down, but the peer's forwarding is control-plane independent and the session has graceful restart: left to graceful restart"
                );
                return;
            }
            warn!("BFD down: ending the session (Cease, BFD Down)");
            self.last_error = Some("BFD down".to_string());
            self.input(Input::Error(NotificationMsg::cease(codes::cease::BFD_DOWN)));
        }
        if self.cfg.liveness_required {
            // Hold in Idle until BFD is back.
            self.input(Input::Stop {
                notification: None,
                graceful: false,
            });
            self.start_deferred = true;
        }
    }

    fn max_prefix(&mut self, limit: u32) {
        warn!(limit, "maximum number of prefixes reached");
        // RFC 4486 4: AFI, SAFI and the upper bound.
        let mut data = vec![0, 1, 1];
        data.extend_from_slice(&limit.to_be_bytes());
        self.input(Input::Error(NotificationMsg::new(
            codes::CEASE,
            codes::cease::MAX_PREFIXES,
            data,
        )));
    }

    fn incoming(&mut self, stream: TcpStream) {
        if self.conns[1].is_some() {
            // One inbound connection at a time; refuse the newcomer (RFC 4271 6.8).
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let mut s = stream;
                let n = NotificationMsg::cease(codes::cease::CONNECTION_COLLISION);
                let _ = s
                    .write_all(&wire::encode(&Message::Notification(n), &Codec::INITIAL))
                    .await;
                let _ = s.shutdown().await;
            });
            return;
        }
        let ttl = self.ttl_policy();
        let v6 = self.cfg.address.is_ipv6();
        let sock = socket2::SockRef::from(&stream);
        if let Err(e) = ttl.apply(&sock, v6) {
            warn!(error = %e, "cannot set TTL options on an accepted connection");
            return;
        }
        self.conn_gen += 1;
        let id = ConnId {
            dir: Dir::In,
            generation: self.conn_gen,
        };
        match self.open_conn(stream, id) {
            Ok(c) => {
                debug!(remote = %c.remote, "accepted");
                self.conns[1] = Some(c);
                self.input(Input::Connected(Dir::In));
            }
            Err(e) => warn!(error = %e, "accepted connection unusable"),
        }
    }

    fn ttl_policy(&self) -> TtlPolicy {
        TtlPolicy::new(
            self.cfg.remote_asn != self.speaker.asn,
            self.cfg.multihop,
            self.cfg.gtsm,
        )
    }

    fn codec(&self, d: Dir) -> Codec {
        match (&self.negotiated, self.up_dir) {
            (Some(n), Some(u)) if u == d => n.codec,
            _ => Codec::INITIAL,
        }
    }

    fn conn_event(&mut self, id: ConnId, ev: ConnEvent) {
        let current = self.conns[slot(id.dir)].as_ref().map(|c| c.id);
        if current != Some(id) {
            return;
        }
        match ev {
            ConnEvent::Message(bytes) => {
                PeerCounters::add(&self.shared.counters.messages_in, 1);
                match wire::decode(&bytes, &self.codec(id.dir)) {
                    Ok(m) => {
                        if matches!(m, Message::Update(_)) {
                            PeerCounters::add(&self.shared.counters.updates_in, 1);
                        }
                        if let Message::Notification(n) = &m {
                            warn!(notification = %n, "received NOTIFICATION");
                            self.last_error = Some(format!("received {n}"));
                        }
                        self.input(Input::Message(id.dir, m));
                    }
                    Err(e) => {
                        warn!(error = %e, "malformed message");
                        self.input(Input::Malformed(id.dir, e));
                    }
                }
            }
            ConnEvent::Malformed(e) => {
                warn!(error = %e, "malformed message");
                self.input(Input::Malformed(id.dir, *e));
            }
            ConnEvent::Closed(err) => {
                if let Some(e) = err {
                    self.last_error = Some(format!("connection: {e}"));
                }
                self.input(Input::Closed(id.dir));
            }
        }
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        let due: Vec<Timer> = self
            .timers
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(t, _)| *t)
            .collect();
        for t in due {
            self.timers.remove(&t);
            if let Timer::Hold(d) = t
                && let Some(c) = &self.conns[slot(d)]
            {
                // The hold timer counts from the last message the socket delivered.
                let hold_ms = self.hold_secs[slot(d)] as u64 * 1000;
                let quiet = conn::now_ms().saturating_sub(c.last_rx.load(Ordering::Relaxed));
                if quiet < hold_ms {
                    self.timers
                        .insert(t, now + Duration::from_millis(hold_ms - quiet));
                    continue;
                }
            }
            self.input(Input::TimerExpired(t));
        }
    }

    fn input(&mut self, input: Input) {
        let actions = self.fsm.handle(input);
        for a in actions {
            self.act(a);
        }
    }

    fn act(&mut self, a: Action) {
        match a {
            Action::Connect => self.connect(),
            Action::CancelConnect => {
                if let Some(h) = self.connecting.take() {
                    h.abort();
                }
            }
            Action::Send(d, m) => {
                if let Some(c) = &self.conns[slot(d)] {
                    if let Message::Notification(n) = &m {
                        warn!(notification = %n, "sending NOTIFICATION");
                        self.last_error = Some(format!("sent {n}"));
                    }
                    c.send(wire::encode(&m, &self.codec(d)));
                    PeerCounters::add(&self.shared.counters.messages_out, 1);
                }
            }
            Action::Close(d) => {
                if let Some(c) = self.conns[slot(d)].take() {
                    c.close();
                }
            }
            Action::ArmTimer(t, secs) => {
                if let Timer::Hold(d) = t {
                    self.hold_secs[slot(d)] = secs;
                }
                self.timers
                    .insert(t, Instant::now() + Duration::from_secs(secs as u64));
            }
            Action::CancelTimer(t) => {
                self.timers.remove(&t);
            }
            Action::Up(d, n) => self.up(d, n),
            Action::Down {
                reason,
                keep_routes,
                stale_for,
            } => self.down(reason, keep_routes, stale_for),
            Action::Update(u) => self.update(u),
            Action::RouteRefresh(afi) => {
                debug!(%afi, "route refresh requested");
                self.pending
                    .push_back(RibEvent::RouteRefresh { id: self.id, afi });
            }
            Action::Failed(why) => {
                debug!(reason = %why, "session attempt failed");
                self.last_error = Some(why);
            }
        }
    }

    fn connect(&mut self) {
        if let Some(h) = self.connecting.take() {
            h.abort();
        }
        self.connect_gen += 1;
        let generation = self.connect_gen;
        let opts = ConnectOpts {
            remote: SocketAddr::new(self.cfg.address, self.cfg.port),
            local: self.cfg.local_address,
            md5: self.cfg.md5_key.clone(),
            ttl: self.ttl_policy(),
        };
        let tx = self.self_tx.clone();
        self.connecting = Some(tokio::spawn(async move {
            let result = conn::connect(opts).await;
            let _ = tx.send(PeerCmd::ConnectResult { generation, result }).await;
        }));
    }

    /// Our next hop for `afi` on this session, for the routes we announce as ours: the
    /// configured one, else the session's own address where it fits the family.
    fn local_next_hop(&self, afi: Afi, local: IpAddr) -> Option<NextHop> {
        match afi {
            Afi::Ipv4 => match (self.cfg.next_hop_v4, local) {
                (Some(a), _) => Some(NextHop::V4(a)),
                (None, IpAddr::V4(a)) => Some(NextHop::V4(a)),
                (None, IpAddr::V6(a)) => a.to_ipv4_mapped().map(NextHop::V4),
            },
            Afi::Ipv6 => match (self.cfg.next_hop_v6, local) {
                (Some(a), _) => Some(NextHop::V6 {
                    global: a,
                    link_local: None,
                }),
                (None, IpAddr::V6(a)) => Some(NextHop::V6 {
                    global: a,
                    link_local: None,
                }),
                (None, IpAddr::V4(_)) => None,
            },
        }
    }

    fn up(&mut self, d: Dir, n: Box<Negotiated>) {
        info!(
            remote_id = %n.remote_id,
            hold = n.hold_time,
            families = ?n.families,
            graceful_restart = n.gr,
            "session established"
        );
        self.established += 1;
        self.session += 1;
        self.last_error = None;
        self.eor_at.clear();
        let preserved: Vec<Afi> = n
            .peer_gr
            .as_ref()
            .map(|g| {
                g.families
                    .iter()
                    .filter(|(_, f)| *f)
                    .map(|(a, _)| *a)
                    .collect()
            })
            .unwrap_or_default();
        let local = self.conns[slot(d)].as_ref().map(|c| c.local.ip());
        let (nh4, nh6) = match local {
            Some(l) => (
                self.local_next_hop(Afi::Ipv4, l),
                self.local_next_hop(Afi::Ipv6, l),
            ),
            None => (None, None),
        };
        for (afi, nh) in [(Afi::Ipv4, nh4), (Afi::Ipv6, nh6)] {
            if n.families.contains(&afi) && nh.is_none() {
                warn!(%afi, "no next hop for this family on this session: our routes of it are not advertised (set next_hop_{afi})");
            }
        }
        self.pending.push_back(RibEvent::PeerUp {
            id: self.id,
            session: self.session,
            router_id: n.remote_id,
            families: n.families.clone(),
            preserved,
            local_addresses: self.local_addresses(),
        });
        if let Some(c) = &self.conns[slot(d)] {
            c.established(WriterMsg::Established(Box::new(super::msg::Established {
                session: self.session,
                codec: n.codec,
                next_hop_v4: nh4,
                next_hop_v6: nh6,
            })));
        }
        self.negotiated = Some(n);
        self.up_dir = Some(d);
        self.up_since = Some(Instant::now());
        self.publish();
    }

    fn down(&mut self, reason: DownReason, keep: Vec<Afi>, stale_for: u16) {
        warn!(reason = %reason, kept_families = ?keep, "session down");
        self.last_error = Some(reason.to_string());
        self.pending.push_back(RibEvent::PeerDown {
            id: self.id,
            keep,
            stale_for,
        });
        self.negotiated = None;
        self.up_dir = None;
        self.up_since = None;
        self.publish();
    }

    fn local_addresses(&self) -> Vec<IpAddr> {
        self.conns.iter().flatten().map(|c| c.local.ip()).collect()
    }

    fn update(&mut self, u: UpdateMsg) {
        for e in &u.errors {
            warn!(attribute = e.code, action = ?e.action, reason = %e.reason, "RFC 7606: malformed attribute");
        }
        let Some(n) = &self.negotiated else { return };
        let families = &n.families;
        let ebgp = self.cfg.remote_asn != self.speaker.asn;
        let mut withdrawn: Vec<ipnet::IpNet> = u
            .withdrawn
            .into_iter()
            .filter(|p| families.contains(&Afi::of(p)))
            .collect();
        let mut announced = Vec::with_capacity(u.reach.len());
        for r in u.reach {
            if !families.contains(&r.afi) {
                continue;
            }
            // RFC 4271 6.3: an eBGP peer's path must start with its own AS; RFC 7606 7.2
            // makes the route withdrawn rather than the session reset.
            if ebgp
                && self.cfg.enforce_first_as
                && u.attrs.as_path.first_as() != Some(self.cfg.remote_asn)
            {
                warn!(as_path = %u.attrs.as_path, "first AS is not the peer's: routes withdrawn");
                withdrawn.extend(r.prefixes);
                continue;
            }
            let attrs = Arc::new(RouteAttrs::new(u.attrs.clone(), r.next_hop));
            announced.push((attrs, r.prefixes));
        }
        if !withdrawn.is_empty() || !announced.is_empty() {
            self.pending.push_back(RibEvent::Update {
                id: self.id,
                withdrawn,
                announced,
            });
        }
        if let Some(afi) = u.end_of_rib {
            if let Some(since) = self.up_since {
                self.eor_at.push((afi, since.elapsed().as_secs_f64()));
            }
            debug!(%afi, "End-of-RIB received");
            self.pending
                .push_back(RibEvent::EndOfRib { id: self.id, afi });
            self.publish();
        }
    }
}

fn slot(d: Dir) -> usize {
    match d {
        Dir::Out => 0,
        Dir::In => 1,
    }
}

pub(crate) fn fsm_config(cfg: &PeerConfig, speaker: &SpeakerConfig) -> FsmConfig {
    FsmConfig {
        local_asn: speaker.asn,
        remote_asn: cfg.remote_asn,
        router_id: speaker.router_id,
        hold_time: cfg.hold_time,
        keepalive: cfg.keepalive,
        connect_retry: cfg.connect_retry,
        connect_retry_max: cfg.connect_retry_max,
        passive: cfg.passive,
        families: cfg.families.clone(),
        graceful_restart: match (&speaker.graceful_restart, cfg.graceful_restart) {
            (
                Some(GracefulRestart {
                    restart_time,
                    restarting,
                    ..
                }),
                true,
            ) => Some(GrConfig {
                restart_time: *restart_time,
                restarting: *restarting,
                forwarding_preserved: *restarting,
            }),
            _ => None,
        },
    }
}
