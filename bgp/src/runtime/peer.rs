//! The task of one peer: it owns the peer's [`Fsm`], its connections and timers, applies
//! import policy to what the peer sends and keeps the peer's Adj-RIB-Out (the node's own
//! prefixes) in step with what it has advertised.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::conn::{self, Conn, ConnEvent, ConnId, ConnectOpts};
use super::rib_task::RibEvent;
use super::sockopt::TtlPolicy;
use super::{GracefulRestart, PeerConfig, PeerStatus, SpeakerConfig};
use crate::fsm::{Action, Dir, DownReason, Fsm, FsmConfig, GrConfig, Input, Negotiated, Timer};
use crate::policy::{ImportContext, ImportPolicy};
use crate::rib::{PeerCounts, PeerId, PeerInfo, RouteAttrs};
use crate::wire::{
    self, Afi, AsPath, Codec, Message, NextHop, NotificationMsg, Origin, PathAttrs, Reach,
    UpdateMsg, codes,
};

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
    SetOriginated(Arc<Vec<IpNet>>),
    SetPolicy(ImportPolicy),
    /// The RIB counted more accepted prefixes than allowed.
    MaxPrefix(u32),
    Status(oneshot::Sender<PeerStatus>),
}

/// Handle the manager keeps.
pub(crate) struct PeerHandle {
    pub id: PeerId,
    pub cfg: PeerConfig,
    pub cmd: mpsc::Sender<PeerCmd>,
    pub task: JoinHandle<()>,
}

struct Counters {
    messages_in: u64,
    messages_out: u64,
    updates_in: u64,
    updates_out: u64,
    established: u64,
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
    rib: mpsc::Sender<RibEvent>,
    /// Events for the RIB waiting for room in its queue; while any wait, we read no more.
    pending: VecDeque<RibEvent>,
    originated: Arc<Vec<IpNet>>,
    advertised: HashMap<Afi, Vec<IpNet>>,
    negotiated: Option<Box<Negotiated>>,
    up_dir: Option<Dir>,
    up_since: Option<Instant>,
    state_since: Instant,
    last_state: crate::fsm::State,
    last_error: Option<String>,
    eor_at: Vec<(Afi, f64)>,
    /// While the peer's initial table is coming: when to check whether it went quiet.
    nudge_at: Option<Instant>,
    counters: Counters,
}

impl PeerTask {
    pub(crate) fn spawn(
        id: PeerId,
        cfg: PeerConfig,
        speaker: SpeakerConfig,
        originated: Arc<Vec<IpNet>>,
        rib: mpsc::Sender<RibEvent>,
    ) -> PeerHandle {
        let (tx, rx) = mpsc::channel(64);
        // Raw messages read off the socket but not yet processed. Deep enough (at most
        // 16384 UPDATEs of at most 4 KB) that a peer sending a full table never finds its
        // TCP window closed: some speakers (BIRD among them) stall for seconds once their
        // socket blocks. The RIB still holds us back, just not through the socket.
        let (conn_tx, conn_rx) = mpsc::channel(16384);
        let fsm = Fsm::new(fsm_config(&cfg, &speaker));
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
            originated,
            advertised: HashMap::new(),
            negotiated: None,
            up_dir: None,
            up_since: None,
            state_since: Instant::now(),
            last_state: crate::fsm::State::Idle,
            last_error: None,
            eor_at: Vec::new(),
            nudge_at: None,
            counters: Counters {
                messages_in: 0,
                messages_out: 0,
                updates_in: 0,
                updates_out: 0,
                established: 0,
            },
        };
        let span = tracing::info_span!("peer", peer = %cfg.name, remote_as = cfg.remote_asn, addr = %cfg.address);
        let handle = tokio::spawn(tracing::Instrument::instrument(task.run(rx, conn_rx), span));
        PeerHandle {
            id,
            cfg,
            cmd: tx,
            task: handle,
        }
    }

    async fn run(
        mut self,
        mut cmds: mpsc::Receiver<PeerCmd>,
        mut conn_rx: mpsc::Receiver<(ConnId, ConnEvent)>,
    ) {
        let rib = self.rib.clone();
        loop {
            let next = self.timers.values().copied().chain(self.nudge_at).min();
            let waiting = !self.pending.is_empty();
            tokio::select! {
                biased;
                cmd = cmds.recv() => {
                    let Some(cmd) = cmd else { break };
                    if let Some(done) = self.command(cmd) {
                        self.flush_pending().await;
                        let _ = done.send(());
                        break;
                    }
                }
                _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now).into()), if next.is_some() => {
                    self.fire_timers();
                    self.nudge();
                }
                permit = rib.reserve(), if waiting => {
                    let Ok(permit) = permit else { break };
                    if let Some(ev) = self.pending.pop_front() {
                        permit.send(ev);
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
            if self.rib.send(ev).await.is_err() {
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
        }
    }

    /// Handle a command; returns the reply channel when the task must end.
    fn command(&mut self, cmd: PeerCmd) -> Option<oneshot::Sender<()>> {
        match cmd {
            PeerCmd::Start => self.input(Input::Start),
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
                        match Conn::spawn(stream, id, self.conn_tx.clone()) {
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
            PeerCmd::SetOriginated(o) => {
                self.originated = o;
                self.sync_exports();
            }
            PeerCmd::SetPolicy(p) => {
                self.cfg.import = p;
                self.reevaluate();
            }
            PeerCmd::MaxPrefix(limit) => {
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
            PeerCmd::Status(tx) => {
                let _ = tx.send(self.status());
            }
        }
        None
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
        match Conn::spawn(stream, id, self.conn_tx.clone()) {
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
                self.counters.messages_in += 1;
                match wire::decode(&bytes, &self.codec(id.dir)) {
                    Ok(m) => {
                        if matches!(m, Message::Update(_)) {
                            self.counters.updates_in += 1;
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
                self.input(Input::Malformed(id.dir, e));
            }
            ConnEvent::Closed(err) => {
                if let Some(e) = err {
                    self.last_error = Some(format!("connection: {e}"));
                }
                self.input(Input::Closed(id.dir));
            }
        }
    }

    /// Some speakers (BIRD 2 among them) can leave the tail of their initial table unsent
    /// until their event loop next wakes up, up to 3 s later. While we wait for the peer's
    /// End-of-RIB, a session quiet for 200 ms gets a KEEPALIVE, at most one a second
    /// (RFC 4271 4.4), which wakes such a peer; it costs nothing to others.
    fn nudge(&mut self) {
        let Some(at) = self.nudge_at else { return };
        let now = Instant::now();
        if now < at {
            return;
        }
        let (Some(d), Some(n)) = (self.up_dir, &self.negotiated) else {
            self.nudge_at = None;
            return;
        };
        // Done once every family's End-of-RIB came, or after a minute (a peer that never
        // sends one is not nudged forever).
        let too_late = self
            .up_since
            .is_none_or(|t| t.elapsed() > Duration::from_secs(60));
        if self.eor_at.len() >= n.families.len() || too_late {
            self.nudge_at = None;
            return;
        }
        if let Some(c) = &self.conns[slot(d)] {
            let quiet = conn::now_ms().saturating_sub(c.last_rx.load(Ordering::Relaxed));
            if quiet >= 200 {
                c.send(wire::encode(&Message::Keepalive, &self.codec(d)));
                self.counters.messages_out += 1;
                self.nudge_at = Some(now + Duration::from_secs(1));
            } else {
                self.nudge_at = Some(now + Duration::from_millis(200 - quiet));
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
                    }
                    c.send(wire::encode(&m, &self.codec(d)));
                    self.counters.messages_out += 1;
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
                self.advertised.remove(&afi);
                self.sync_exports();
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

    fn up(&mut self, d: Dir, n: Box<Negotiated>) {
        info!(
            remote_id = %n.remote_id,
            hold = n.hold_time,
            families = ?n.families,
            graceful_restart = n.gr,
            "session established"
        );
        self.counters.established += 1;
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
        self.pending.push_back(RibEvent::PeerUp {
            id: self.id,
            info: PeerInfo {
                name: self.cfg.name.as_str().into(),
                address: self.cfg.address,
                router_id: n.remote_id,
                ebgp: self.cfg.remote_asn != self.speaker.asn,
            },
            families: n.families.clone(),
            preserved,
            max_prefixes: self.cfg.import.max_prefixes,
            cmd: self.self_tx.clone(),
        });
        self.negotiated = Some(n);
        self.up_dir = Some(d);
        self.up_since = Some(Instant::now());
        self.nudge_at = Some(Instant::now() + Duration::from_millis(200));
        self.advertised.clear();
        self.sync_exports();
        // End-of-RIB after the initial update (RFC 4724 2), for every family.
        let fams = self
            .negotiated
            .as_ref()
            .map(|n| n.families.clone())
            .unwrap_or_default();
        for afi in fams {
            self.send_update(&UpdateMsg::end_of_rib(afi));
        }
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
        self.nudge_at = None;
        self.advertised.clear();
    }

    fn local_addresses(&self) -> Vec<IpAddr> {
        self.conns.iter().flatten().map(|c| c.local.ip()).collect()
    }

    fn import_context<'a>(&'a self, locals: &'a [IpAddr]) -> ImportContext<'a> {
        ImportContext {
            local_asn: self.speaker.asn,
            router_id: self.speaker.router_id,
            ebgp: self.cfg.remote_asn != self.speaker.asn,
            own_prefixes: &self.originated,
            local_addresses: locals,
            policy: &self.cfg.import,
        }
    }

    fn update(&mut self, u: UpdateMsg) {
        for e in &u.errors {
            warn!(attribute = e.code, action = ?e.action, reason = %e.reason, "RFC 7606: malformed attribute");
        }
        let Some(n) = &self.negotiated else { return };
        let families = n.families.clone();
        let ebgp = self.cfg.remote_asn != self.speaker.asn;
        let locals = self.local_addresses();
        let ctx = self.import_context(&locals);
        let mut withdrawn: Vec<IpNet> = u
            .withdrawn
            .into_iter()
            .filter(|p| families.contains(&Afi::of(p)))
            .collect();
        let mut announced = Vec::with_capacity(u.reach.len());
        for r in u.reach {
            if !families.contains(&r.afi) {
                continue;
            }
            let attrs = Arc::new(RouteAttrs {
                attrs: u.attrs.clone(),
                next_hop: r.next_hop,
            });
            // RFC 4271 6.3: an eBGP peer's path must start with its own AS; RFC 7606 7.2
            // makes the route withdrawn rather than the session reset.
            if ebgp
                && self.cfg.enforce_first_as
                && attrs.attrs.as_path.first_as() != Some(self.cfg.remote_asn)
            {
                warn!(as_path = %attrs.attrs.as_path, "first AS is not the peer's: routes withdrawn");
                withdrawn.extend(r.prefixes);
                continue;
            }
            let attrs_ok = ctx.check_attrs(&attrs).is_ok();
            let list: Vec<(IpNet, bool)> = r
                .prefixes
                .into_iter()
                .map(|p| {
                    let ok = attrs_ok && ctx.check_prefix(&p).is_ok();
                    (p, ok)
                })
                .collect();
            announced.push((attrs, list));
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
        }
    }

    fn reevaluate(&mut self) {
        let locals = self.local_addresses();
        let ctx = self.import_context(&locals);
        let policy = ctx.policy.clone();
        let (asn, id, ebgp, own) = (
            ctx.local_asn,
            ctx.router_id,
            ctx.ebgp,
            self.originated.clone(),
        );
        let accept = move |p: &IpNet, r: &RouteAttrs| {
            ImportContext {
                local_asn: asn,
                router_id: id,
                ebgp,
                own_prefixes: &own,
                local_addresses: &locals,
                policy: &policy,
            }
            .accept(p, r)
        };
        self.pending.push_back(RibEvent::Reevaluate {
            id: self.id,
            accept: Box::new(accept),
        });
    }

    /// The attributes and next hop we advertise for `afi`, or `None` when this session has
    /// no usable next hop for the family (e.g. IPv6 over an IPv4 session without
    /// `next_hop_ipv6`).
    fn export_route(&self, afi: Afi) -> Option<(PathAttrs, NextHop)> {
        let d = self.up_dir?;
        let local = self.conns[slot(d)].as_ref()?.local.ip();
        let nh = match afi {
            Afi::Ipv4 => match (self.cfg.next_hop_v4, local) {
                (Some(a), _) => NextHop::V4(a),
                (None, IpAddr::V4(a)) => NextHop::V4(a),
                (None, IpAddr::V6(a)) => NextHop::V4(a.to_ipv4_mapped()?),
            },
            Afi::Ipv6 => match (self.cfg.next_hop_v6, local) {
                (Some(a), _) => NextHop::V6 {
                    global: a,
                    link_local: None,
                },
                (None, IpAddr::V6(a)) => NextHop::V6 {
                    global: a,
                    link_local: None,
                },
                (None, IpAddr::V4(_)) => return None,
            },
        };
        let ebgp = self.cfg.remote_asn != self.speaker.asn;
        let attrs = PathAttrs {
            origin: Origin::Igp,
            as_path: if ebgp {
                AsPath::sequence(vec![self.speaker.asn])
            } else {
                AsPath::default()
            },
            local_pref: (!ebgp).then_some(crate::rib::DEFAULT_LOCAL_PREF),
            ..Default::default()
        };
        Some((attrs, nh))
    }

    /// Bring what the peer has from us in line with what we originate.
    fn sync_exports(&mut self) {
        let Some(n) = &self.negotiated else { return };
        for afi in n.families.clone() {
            let want: Vec<IpNet> = self
                .originated
                .iter()
                .filter(|p| Afi::of(p) == afi)
                .copied()
                .collect();
            let route = self.export_route(afi);
            let want = if route.is_some() { want } else { Vec::new() };
            let had = self.advertised.get(&afi).cloned().unwrap_or_default();
            let withdraw: Vec<IpNet> = had.iter().filter(|p| !want.contains(p)).copied().collect();
            let announce: Vec<IpNet> = want.iter().filter(|p| !had.contains(p)).copied().collect();
            if !withdraw.is_empty() {
                self.send_update(&UpdateMsg {
                    withdrawn: withdraw,
                    ..Default::default()
                });
            }
            if let (Some((attrs, next_hop)), false) = (route, announce.is_empty()) {
                self.send_update(&UpdateMsg {
                    reach: vec![Reach {
                        afi,
                        next_hop,
                        prefixes: announce,
                    }],
                    attrs,
                    ..Default::default()
                });
            }
            if self.originated.iter().any(|p| Afi::of(p) == afi) && self.export_route(afi).is_none()
            {
                warn!(%afi, "no next hop for this family on this session: not advertised (set next_hop_{afi})");
            }
            self.advertised.insert(afi, want);
        }
    }

    fn send_update(&mut self, u: &UpdateMsg) {
        let Some(d) = self.up_dir else { return };
        let codec = self.codec(d);
        if let Some(c) = &self.conns[slot(d)] {
            for m in wire::encode_updates(u, &codec) {
                c.send(m);
                self.counters.updates_out += 1;
                self.counters.messages_out += 1;
            }
        }
    }

    fn status(&self) -> PeerStatus {
        let n = self.negotiated.as_deref();
        PeerStatus {
            name: self.cfg.name.clone(),
            address: self.cfg.address,
            remote_asn: self.cfg.remote_asn,
            local_address: self
                .up_dir
                .and_then(|d| self.conns[slot(d)].as_ref())
                .map(|c| c.local.ip()),
            state: self.fsm.state(),
            state_secs: self.state_since.elapsed().as_secs(),
            last_error: self.last_error.clone(),
            remote_router_id: n.map(|n| n.remote_id),
            hold_time: n.map(|n| n.hold_time),
            keepalive: n.map(|n| n.keepalive),
            families: n.map(|n| n.families.clone()).unwrap_or_default(),
            graceful_restart: n.map(|n| n.gr).unwrap_or(false),
            prefixes: PeerCounts::default(),
            advertised: self.advertised.values().map(|v| v.len() as u64).sum(),
            messages_in: self.counters.messages_in,
            messages_out: self.counters.messages_out,
            updates_in: self.counters.updates_in,
            updates_out: self.counters.updates_out,
            established_count: self.counters.established,
            end_of_rib_secs: self.eor_at.clone(),
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
