//! The per-peer session state machine of RFC 4271 section 8, with connection collision
//! detection (6.8), capability negotiation (RFC 5492) and the graceful-restart rules of
//! RFC 4724 that decide whether a lost session keeps its routes.
//!
//! Pure: [`Fsm::handle`] takes one [`Input`] and returns the [`Action`]s for the runtime to carry
//! out. It never sleeps, reads the clock or touches a socket; timers are named, armed and
//! cancelled through actions, and their expiry comes back as an input.
//!
//! A peer can have two TCP connections at once: the one we opened ([`Dir::Out`]) and one the
//! peer opened ([`Dir::In`]). Each is a *slot* with its own phase; the peer's [`State`] is the
//! most advanced of them. When an OPEN arrives while the other slot is in OpenConfirm (or
//! Established), the BGP identifiers decide which connection survives (6.8).

use std::net::Ipv4Addr;

use crate::wire::{
    Afi, Capabilities, Codec, DecodeError, GracefulRestartCap, Message, NotificationMsg, OpenMsg,
    UpdateMsg, codes,
};

/// Hold time used while waiting for the peer's OPEN (RFC 4271 8.2.2: "a large value",
/// 4 minutes suggested).
pub const OPEN_HOLD_TIME: u32 = 240;

/// RFC 4271 8.2.2 states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum State {
    Idle,
    Connect,
    Active,
    OpenSent,
    OpenConfirm,
    Established,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// Which TCP connection an input or action is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dir {
    /// We connected to the peer.
    Out,
    /// The peer connected to us.
    In,
}

impl Dir {
    fn idx(self) -> usize {
        match self {
            Dir::Out => 0,
            Dir::In => 1,
        }
    }
    fn other(self) -> Dir {
        match self {
            Dir::Out => Dir::In,
            Dir::In => Dir::Out,
        }
    }
}

/// Timers the FSM arms through [`Action::ArmTimer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timer {
    /// ConnectRetryTimer (RFC 4271 8.1.3), with exponential backoff.
    ConnectRetry,
    /// HoldTimer of one connection.
    Hold(Dir),
    /// KeepaliveTimer of one connection.
    Keepalive(Dir),
}

/// Session settings the FSM needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsmConfig {
    pub local_asn: u32,
    pub remote_asn: u32,
    pub router_id: Ipv4Addr,
    /// Hold time we propose (seconds; 0 or >= 3).
    pub hold_time: u16,
    /// Keepalive interval we would like (seconds); capped at a third of the negotiated hold.
    pub keepalive: u16,
    /// First connect-retry interval (seconds); doubles on each failure up to the max.
    pub connect_retry: u32,
    pub connect_retry_max: u32,
    /// Never connect, only accept.
    pub passive: bool,
    pub families: Vec<Afi>,
    /// Advertise the graceful restart capability.
    pub graceful_restart: Option<GrConfig>,
}

impl FsmConfig {
    pub fn is_ibgp(&self) -> bool {
        self.local_asn == self.remote_asn
    }
}

/// Our side of graceful restart (RFC 4724).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrConfig {
    /// Restart Time we ask the peer to wait for us.
    pub restart_time: u16,
    /// R bit: we are coming back from a restart.
    pub restarting: bool,
    /// F bit: our forwarding state survived (routes still in the FIB).
    pub forwarding_preserved: bool,
}

/// What both OPENs agreed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub remote_id: Ipv4Addr,
    pub remote_asn: u32,
    pub hold_time: u16,
    pub keepalive: u16,
    pub families: Vec<Afi>,
    pub route_refresh: bool,
    pub codec: Codec,
    /// The peer's graceful restart capability, if it sent one.
    pub peer_gr: Option<GracefulRestartCap>,
    /// Both sides advertised graceful restart.
    pub gr: bool,
    pub remote_caps: Capabilities,
}

impl Negotiated {
    /// Families whose routes the peer asked us to keep over its restart (RFC 4724 4.2).
    pub fn gr_families(&self) -> Vec<Afi> {
        match &self.peer_gr {
            Some(gr) if self.gr => self
                .families
                .iter()
                .copied()
                .filter(|f| gr.families.iter().any(|(a, _)| a == f))
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// Why a session went down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownReason {
    /// We sent a NOTIFICATION.
    Sent(NotificationMsg),
    /// The peer sent a NOTIFICATION.
    Received(NotificationMsg),
    HoldTimerExpired,
    /// TCP closed or reset without a NOTIFICATION.
    ConnectionLost,
    /// A new connection from the peer replaced the session (RFC 4724 4.2).
    PeerRestarted,
    /// We stopped without a NOTIFICATION to let the peer keep our routes (RFC 4724).
    GracefulStop,
}

impl std::fmt::Display for DownReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DownReason::Sent(n) => write!(f, "sent {n}"),
            DownReason::Received(n) => write!(f, "received {n}"),
            DownReason::HoldTimerExpired => f.write_str("hold timer expired"),
            DownReason::ConnectionLost => f.write_str("connection lost"),
            DownReason::PeerRestarted => f.write_str("peer restarted (new connection)"),
            DownReason::GracefulStop => f.write_str("stopped for graceful restart"),
        }
    }
}

/// An input (an RFC 4271 8.1 event).
#[allow(clippy::large_enum_variant)] // one at a time, never stored
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// ManualStart / AutomaticStart (Events 1, 3; Events 4, 5 when passive).
    Start,
    /// ManualStop (Event 2). With `graceful`, close without a NOTIFICATION so that a
    /// graceful-restart peer keeps our routes.
    Stop {
        notification: Option<NotificationMsg>,
        graceful: bool,
    },
    /// TcpCRAcked / TcpConnectionConfirmed (Events 16, 17).
    Connected(Dir),
    /// TcpConnectionFails (Event 18) for our connect attempt.
    ConnectFailed,
    /// TcpConnectionFails (Event 18) for an open connection: closed or reset by the peer.
    Closed(Dir),
    /// A decoded message (Events 19, 25, 26, 27 and ROUTE-REFRESH).
    Message(Dir, Message),
    /// A message that did not decode (Events 21, 22, 28): its NOTIFICATION is sent.
    Malformed(Dir, DecodeError),
    /// ConnectRetryTimer_Expires, HoldTimer_Expires, KeepaliveTimer_Expires (9, 10, 11).
    TimerExpired(Timer),
    /// A local error that ends the session with this NOTIFICATION (for example, the
    /// maximum number of prefixes was reached: Cease subcode 1, RFC 4486).
    Error(NotificationMsg),
}

/// What the runtime must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Start a TCP connection to the peer (the outcome comes back as `Connected(Out)` or
    /// `ConnectFailed`). Any attempt in progress is abandoned.
    Connect,
    /// Abandon a connect attempt in progress.
    CancelConnect,
    Send(Dir, Message),
    /// Close the connection once what was sent has been flushed.
    Close(Dir),
    ArmTimer(Timer, u32),
    CancelTimer(Timer),
    /// The session is Established on this connection.
    Up(Dir, Box<Negotiated>),
    /// The Established session ended. With `keep_routes`, the peer's routes for those
    /// families are kept as stale (RFC 4724 helper) for `stale_for` seconds.
    Down {
        reason: DownReason,
        keep_routes: Vec<Afi>,
        stale_for: u16,
    },
    /// An UPDATE for the RIB.
    Update(UpdateMsg),
    /// The peer asked for our routes of this family again (RFC 2918).
    RouteRefresh(Afi),
    /// A connection attempt or an unestablished session failed (for status).
    Failed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Our TCP connect is in progress (outbound slot only).
    Connecting,
    OpenSent,
    OpenConfirm,
    Established,
}

#[derive(Debug, Clone)]
struct Slot {
    phase: Phase,
    negotiated: Option<Box<Negotiated>>,
}

/// The state machine of one peer.
#[derive(Debug, Clone)]
pub struct Fsm {
    cfg: FsmConfig,
    started: bool,
    slots: [Option<Slot>; 2],
    /// Current connect-retry interval (backoff).
    retry: u32,
    /// Set while the retry timer runs: Active, waiting to connect again.
    waiting_retry: bool,
}

impl Fsm {
    pub fn new(cfg: FsmConfig) -> Fsm {
        let retry = cfg.connect_retry.max(1);
        Fsm {
            cfg,
            started: false,
            slots: [None, None],
            retry,
            waiting_retry: false,
        }
    }

    pub fn config(&self) -> &FsmConfig {
        &self.cfg
    }

    /// Replace settings that take effect on the next session (the runtime restarts the
    /// session when the change needs it).
    pub fn set_config(&mut self, cfg: FsmConfig) {
        self.cfg = cfg;
    }

    /// The peer's state: the most advanced of its connections.
    pub fn state(&self) -> State {
        let best = self
            .slots
            .iter()
            .flatten()
            .map(|s| s.phase)
            .max_by_key(|p| match p {
                Phase::Connecting => 0,
                Phase::OpenSent => 1,
                Phase::OpenConfirm => 2,
                Phase::Established => 3,
            });
        match best {
            Some(Phase::Established) => State::Established,
            Some(Phase::OpenConfirm) => State::OpenConfirm,
            Some(Phase::OpenSent) => State::OpenSent,
            Some(Phase::Connecting) => State::Connect,
            None if self.started => State::Active,
            None => State::Idle,
        }
    }

    /// The negotiated parameters of the Established session.
    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.slots
            .iter()
            .flatten()
            .find(|s| s.phase == Phase::Established)
            .and_then(|s| s.negotiated.as_deref())
    }

    /// The connection the Established session runs on.
    pub fn established_dir(&self) -> Option<Dir> {
        [Dir::Out, Dir::In]
            .into_iter()
            .find(|d| matches!(&self.slots[d.idx()], Some(s) if s.phase == Phase::Established))
    }

    /// The current connect-retry interval.
    pub fn retry_interval(&self) -> u32 {
        self.retry
    }

    fn slot(&self, d: Dir) -> Option<&Slot> {
        self.slots[d.idx()].as_ref()
    }

    fn phase(&self, d: Dir) -> Option<Phase> {
        self.slot(d).map(|s| s.phase)
    }

    /// Feed one input; get the actions to carry out, in order.
    pub fn handle(&mut self, input: Input) -> Vec<Action> {
        let mut out = Vec::new();
        match input {
            Input::Start => self.start(&mut out),
            Input::Stop {
                notification,
                graceful,
            } => self.stop(notification, graceful, &mut out),
            Input::Connected(d) => self.connected(d, &mut out),
            Input::ConnectFailed => {
                if self.phase(Dir::Out) == Some(Phase::Connecting) {
                    self.slots[Dir::Out.idx()] = None;
                    out.push(Action::Failed("connect failed".into()));
                    self.schedule_retry(true, &mut out);
                }
            }
            Input::Closed(d) => {
                if self.slot(d).is_some() {
                    let reason = DownReason::ConnectionLost;
                    self.drop_slot(d, reason, &mut out);
                }
            }
            Input::Message(d, m) => self.message(d, m, &mut out),
            Input::Malformed(d, e) => {
                if self.slot(d).is_some() {
                    let n = e.notification.clone();
                    out.push(Action::Failed(e.reason.clone()));
                    self.fail(d, n, &mut out);
                }
            }
            Input::TimerExpired(t) => self.timer(t, &mut out),
            Input::Error(n) => {
                for d in [Dir::Out, Dir::In] {
                    if matches!(self.phase(d), Some(p) if p != Phase::Connecting) {
                        self.fail(d, n.clone(), &mut out);
                    }
                }
            }
        }
        out
    }

    fn start(&mut self, out: &mut Vec<Action>) {
        if self.started {
            return;
        }
        self.started = true;
        self.retry = self.cfg.connect_retry.max(1);
        if !self.cfg.passive {
            self.connect(out);
        }
    }

    fn connect(&mut self, out: &mut Vec<Action>) {
        self.waiting_retry = false;
        self.slots[Dir::Out.idx()] = Some(Slot {
            phase: Phase::Connecting,
            negotiated: None,
        });
        out.push(Action::Connect);
        // While connecting the retry timer bounds the attempt (RFC 4271 8.2.2 Connect state).
        out.push(Action::ArmTimer(Timer::ConnectRetry, self.retry));
    }

    /// After a failure: wait, then connect again, with the interval doubled for next time.
    fn schedule_retry(&mut self, backoff: bool, out: &mut Vec<Action>) {
        if !self.started || self.cfg.passive || self.slots[Dir::Out.idx()].is_some() {
            return;
        }
        if self
            .slots
            .iter()
            .flatten()
            .any(|s| s.phase != Phase::Connecting)
        {
            // Another connection is making progress; no need for ours.
            return;
        }
        out.push(Action::ArmTimer(Timer::ConnectRetry, self.retry));
        self.waiting_retry = true;
        if backoff {
            self.retry = (self.retry.saturating_mul(2)).min(self.cfg.connect_retry_max.max(1));
        }
    }

    fn stop(&mut self, n: Option<NotificationMsg>, graceful: bool, out: &mut Vec<Action>) {
        self.started = false;
        self.waiting_retry = false;
        out.push(Action::CancelTimer(Timer::ConnectRetry));
        for d in [Dir::Out, Dir::In] {
            let Some(slot) = self.slots[d.idx()].take() else {
                continue;
            };
            self.cancel_slot_timers(d, out);
            match slot.phase {
                Phase::Connecting => out.push(Action::CancelConnect),
                phase => {
                    let n = n
                        .clone()
                        .unwrap_or_else(|| NotificationMsg::cease(codes::cease::ADMIN_SHUTDOWN));
                    if !(graceful && phase == Phase::Established) {
                        out.push(Action::Send(d, Message::Notification(n.clone())));
                    }
                    out.push(Action::Close(d));
                    if phase == Phase::Established {
                        out.push(Action::Down {
                            reason: if graceful {
                                DownReason::GracefulStop
                            } else {
                                DownReason::Sent(n)
                            },
                            keep_routes: Vec::new(),
                            stale_for: 0,
                        });
                    }
                }
            }
        }
    }

    fn our_open(&self) -> OpenMsg {
        let caps = Capabilities {
            families: self.cfg.families.clone(),
            route_refresh: true,
            graceful_restart: self
                .cfg
                .graceful_restart
                .as_ref()
                .map(|g| GracefulRestartCap {
                    restarting: g.restarting,
                    notification: false,
                    restart_time: g.restart_time,
                    families: self
                        .cfg
                        .families
                        .iter()
                        .map(|f| (*f, g.forwarding_preserved))
                        .collect(),
                }),
            ..Default::default()
        };
        OpenMsg::new(
            self.cfg.local_asn,
            self.cfg.hold_time,
            self.cfg.router_id,
            caps,
        )
    }

    fn connected(&mut self, d: Dir, out: &mut Vec<Action>) {
        if !self.started {
            // Idle refuses connections (RFC 4271 8.2.2).
            out.push(Action::Close(d));
            return;
        }
        match (d, self.phase(d)) {
            (Dir::Out, Some(Phase::Connecting)) => {}
            (Dir::Out, _) => {
                // A connect we no longer wait for.
                out.push(Action::Close(d));
                return;
            }
            (Dir::In, None) => {}
            (Dir::In, Some(_)) => {
                // A second inbound connection while one is open.
                out.push(Action::Send(
                    d,
                    Message::Notification(NotificationMsg::cease(
                        codes::cease::CONNECTION_COLLISION,
                    )),
                ));
                out.push(Action::Close(d));
                return;
            }
        }
        if d == Dir::In
            && let Some(other) = self.established_dir()
        {
            let gr = self.negotiated().map(|n| n.gr).unwrap_or(false);
            if gr {
                // RFC 4724 4.2: a new connection from a graceful-restart peer while the old
                // session is up may mean the peer restarted. Only its OPEN says so: a
                // connection the peer opened before the session came up (a collision it
                // then drops) must not end the session. The new connection proceeds; the
                // OPEN on it decides (see `open_received`).
                let _ = other;
            } else {
                // 6.8: an Established session wins against a new connection.
                out.push(Action::Send(
                    d,
                    Message::Notification(NotificationMsg::cease(
                        codes::cease::CONNECTION_COLLISION,
                    )),
                ));
                out.push(Action::Close(d));
                return;
            }
        }
        if d == Dir::Out || self.waiting_retry {
            out.push(Action::CancelTimer(Timer::ConnectRetry));
            self.waiting_retry = false;
        }
        self.slots[d.idx()] = Some(Slot {
            phase: Phase::OpenSent,
            negotiated: None,
        });
        out.push(Action::Send(d, Message::Open(self.our_open())));
        out.push(Action::ArmTimer(Timer::Hold(d), OPEN_HOLD_TIME));
    }

    fn cancel_slot_timers(&self, d: Dir, out: &mut Vec<Action>) {
        out.push(Action::CancelTimer(Timer::Hold(d)));
        out.push(Action::CancelTimer(Timer::Keepalive(d)));
    }

    /// Send a NOTIFICATION on `d`, close it, and go down if it was Established.
    fn fail(&mut self, d: Dir, n: NotificationMsg, out: &mut Vec<Action>) {
        if self.slot(d).is_none() {
            return;
        }
        out.push(Action::Send(d, Message::Notification(n.clone())));
        self.drop_slot(d, DownReason::Sent(n), out);
    }

    /// Close `d` and clean up; an Established session goes down with `reason`.
    fn drop_slot(&mut self, d: Dir, reason: DownReason, out: &mut Vec<Action>) {
        let Some(slot) = self.slots[d.idx()].take() else {
            return;
        };
        self.cancel_slot_timers(d, out);
        if slot.phase == Phase::Connecting {
            out.push(Action::CancelConnect);
        } else {
            out.push(Action::Close(d));
        }
        if slot.phase == Phase::Established {
            let neg = slot.negotiated.as_deref();
            // RFC 4724 4.2: only a lost connection (no NOTIFICATION either way) keeps the
            // routes of a graceful-restart peer.
            let graceful = matches!(
                reason,
                DownReason::ConnectionLost | DownReason::PeerRestarted
            );
            let (keep_routes, stale_for) = match neg {
                Some(n) if graceful => (
                    n.gr_families(),
                    n.peer_gr.as_ref().map(|g| g.restart_time).unwrap_or(0),
                ),
                _ => (Vec::new(), 0),
            };
            let backoff = false;
            out.push(Action::Down {
                reason,
                keep_routes,
                stale_for,
            });
            self.schedule_retry(backoff, out);
        } else {
            out.push(Action::Failed(reason.to_string()));
            self.schedule_retry(true, out);
        }
    }

    fn message(&mut self, d: Dir, m: Message, out: &mut Vec<Action>) {
        let Some(phase) = self.phase(d) else { return };
        match (phase, m) {
            (_, Message::Notification(n)) => {
                self.drop_slot(d, DownReason::Received(n), out);
            }
            (Phase::OpenSent, Message::Open(o)) => self.open_received(d, o, out),
            (Phase::OpenSent, _) => {
                self.fail(d, fsm_error(codes::fsm::UNEXPECTED_IN_OPENSENT), out);
            }
            (Phase::OpenConfirm, Message::Keepalive) => {
                self.restart_hold(d, out);
                if let Some(slot) = self.slots[d.idx()].as_mut() {
                    slot.phase = Phase::Established;
                }
                // The session is up: the other connection, if any, loses (6.8).
                let other = d.other();
                if self.slot(other).is_some() {
                    if self.phase(other) == Some(Phase::Connecting) {
                        self.slots[other.idx()] = None;
                        out.push(Action::CancelConnect);
                    } else {
                        self.fail(
                            other,
                            NotificationMsg::cease(codes::cease::CONNECTION_COLLISION),
                            out,
                        );
                    }
                }
                out.push(Action::CancelTimer(Timer::ConnectRetry));
                self.waiting_retry = false;
                self.retry = self.cfg.connect_retry.max(1);
                if let Some(n) = self.slot(d).and_then(|s| s.negotiated.clone()) {
                    out.push(Action::Up(d, n));
                }
            }
            (Phase::OpenConfirm, _) => {
                self.fail(d, fsm_error(codes::fsm::UNEXPECTED_IN_OPENCONFIRM), out);
            }
            (Phase::Established, Message::Keepalive) => self.restart_hold(d, out),
            (Phase::Established, Message::Update(u)) => {
                self.restart_hold(d, out);
                out.push(Action::Update(u));
            }
            (Phase::Established, Message::RouteRefresh { afi, safi, subtype }) => {
                self.restart_hold(d, out);
                let negotiated = self
                    .slot(d)
                    .and_then(|s| s.negotiated.as_deref())
                    .map(|n| (n.route_refresh, n.families.clone()));
                // RFC 2918 4: a request for a family not negotiated is ignored; so are the
                // RFC 7313 markers (subtype 1, 2) we did not advertise support for.
                if let (Some(afi), Some((true, fams))) = (Afi::from_numbers(afi, safi), negotiated)
                    && fams.contains(&afi)
                    && subtype == 0
                {
                    out.push(Action::RouteRefresh(afi));
                }
            }
            (Phase::Established, Message::Open(_)) => {
                self.fail(d, fsm_error(codes::fsm::UNEXPECTED_IN_ESTABLISHED), out);
            }
            (Phase::Connecting, _) => {}
        }
    }

    fn restart_hold(&self, d: Dir, out: &mut Vec<Action>) {
        if let Some(n) = self.slot(d).and_then(|s| s.negotiated.as_deref())
            && n.hold_time > 0
        {
            out.push(Action::ArmTimer(Timer::Hold(d), n.hold_time as u32));
        }
    }

    /// Check the peer's OPEN (RFC 4271 6.2) and negotiate; `Err` is the NOTIFICATION.
    fn negotiate(&self, o: &OpenMsg) -> Result<Negotiated, NotificationMsg> {
        use codes::open::*;
        let open_err =
            |sub: u8, data: Vec<u8>| NotificationMsg::new(codes::OPEN_MESSAGE, sub, data);
        if o.asn() != self.cfg.remote_asn {
            return Err(open_err(BAD_PEER_AS, o.my_as.to_be_bytes().to_vec()));
        }
        // RFC 6286 2.1: the identifiers must differ within an AS.
        if self.cfg.is_ibgp() && o.router_id == self.cfg.router_id {
            return Err(open_err(BAD_BGP_IDENTIFIER, Vec::new()));
        }
        let hold_time = self.cfg.hold_time.min(o.hold_time);
        let keepalive = if hold_time == 0 {
            0
        } else {
            let k = if self.cfg.keepalive == 0 {
                hold_time / 3
            } else {
                self.cfg.keepalive.min(hold_time / 3)
            };
            k.max(1)
        };
        // RFC 4760 / 5492: no MP capability at all means IPv4 unicast only.
        let theirs: Vec<Afi> = if o.caps.families.is_empty() {
            vec![Afi::Ipv4]
        } else {
            o.caps.families.clone()
        };
        let families: Vec<Afi> = self
            .cfg
            .families
            .iter()
            .copied()
            .filter(|f| theirs.contains(f))
            .collect();
        if families.is_empty() {
            return Err(open_err(UNSUPPORTED_CAPABILITY, Vec::new()));
        }
        let asn4 = o.caps.asn4.is_some();
        Ok(Negotiated {
            remote_id: o.router_id,
            remote_asn: o.asn(),
            hold_time,
            keepalive,
            families,
            route_refresh: o.caps.route_refresh,
            codec: Codec {
                asn4,
                extended_message: false,
                ibgp: self.cfg.is_ibgp(),
            },
            peer_gr: o.caps.graceful_restart.clone(),
            gr: self.cfg.graceful_restart.is_some() && o.caps.graceful_restart.is_some(),
            remote_caps: o.caps.clone(),
        })
    }

    fn open_received(&mut self, d: Dir, o: OpenMsg, out: &mut Vec<Action>) {
        let neg = match self.negotiate(&o) {
            Ok(n) => n,
            Err(n) => {
                out.push(Action::Failed(format!("refused OPEN: {n}")));
                self.fail(d, n, out);
                return;
            }
        };
        // Collision detection (6.8) against the other connection if it has the peer's OPEN.
        let other = d.other();
        if d == Dir::In
            && self.phase(other) == Some(Phase::Established)
            && self.negotiated().is_some_and(|n| n.gr)
        {
            // RFC 4724 4.2: an OPEN on a new connection from a graceful-restart peer while
            // the session is up: the peer restarted. The old session ends, its routes are
            // kept stale, and the new connection proceeds.
            self.drop_slot(other, DownReason::PeerRestarted, out);
        }
        if matches!(
            self.phase(other),
            Some(Phase::OpenConfirm | Phase::Established)
        ) {
            // Keep the connection opened by the side with the higher BGP identifier.
            let keep = if u32::from(self.cfg.router_id) > u32::from(neg.remote_id) {
                Dir::Out
            } else {
                Dir::In
            };
            let lose = if keep == d { other } else { d };
            let established_other = self.phase(other) == Some(Phase::Established);
            if lose == other && established_other {
                // Never tear down an Established session for a new connection.
                self.fail(
                    d,
                    NotificationMsg::cease(codes::cease::CONNECTION_COLLISION),
                    out,
                );
                return;
            }
            self.fail(
                lose,
                NotificationMsg::cease(codes::cease::CONNECTION_COLLISION),
                out,
            );
            if lose == d {
                return;
            }
        }
        let hold = neg.hold_time;
        let keepalive = neg.keepalive;
        if let Some(slot) = self.slots[d.idx()].as_mut() {
            slot.phase = Phase::OpenConfirm;
            slot.negotiated = Some(Box::new(neg));
        }
        out.push(Action::Send(d, Message::Keepalive));
        if hold > 0 {
            out.push(Action::ArmTimer(Timer::Hold(d), hold as u32));
            out.push(Action::ArmTimer(Timer::Keepalive(d), keepalive as u32));
        } else {
            out.push(Action::CancelTimer(Timer::Hold(d)));
        }
    }

    fn timer(&mut self, t: Timer, out: &mut Vec<Action>) {
        match t {
            Timer::ConnectRetry => {
                if !self.started || self.cfg.passive {
                    return;
                }
                match self.phase(Dir::Out) {
                    Some(Phase::Connecting) => {
                        // The attempt took too long: abandon it and try again (backoff).
                        self.slots[Dir::Out.idx()] = None;
                        out.push(Action::CancelConnect);
                        out.push(Action::Failed("connect timed out".into()));
                        self.retry =
                            (self.retry.saturating_mul(2)).min(self.cfg.connect_retry_max.max(1));
                        self.connect(out);
                    }
                    Some(_) => {}
                    None => {
                        if self.slot(Dir::In).is_none() {
                            self.connect(out);
                        }
                    }
                }
            }
            Timer::Hold(d) => {
                if self.slot(d).is_some() {
                    out.push(Action::Send(
                        d,
                        Message::Notification(NotificationMsg::new(
                            codes::HOLD_TIMER_EXPIRED,
                            0,
                            Vec::new(),
                        )),
                    ));
                    self.drop_slot(d, DownReason::HoldTimerExpired, out);
                }
            }
            Timer::Keepalive(d) => {
                if let Some(slot) = self.slot(d)
                    && matches!(slot.phase, Phase::OpenConfirm | Phase::Established)
                    && let Some(n) = slot.negotiated.as_deref()
                    && n.keepalive > 0
                {
                    let k = n.keepalive as u32;
                    out.push(Action::Send(d, Message::Keepalive));
                    out.push(Action::ArmTimer(Timer::Keepalive(d), k));
                }
            }
        }
    }
}

fn fsm_error(sub: u8) -> NotificationMsg {
    NotificationMsg::new(codes::FSM, sub, Vec::new())
}

#[cfg(test)]
mod tests;
