//! One BFD session's state machine, RFC 5880 sections 6.2 and 6.8, asynchronous mode.
//!
//! ```text
//!   Input::Received(ControlMsg) ─┐                 ┌─ Action::Send(ControlMsg)
//!   Input::Timer(Transmit|Detect)┼──▶ Session ──▶──┼─ Action::Arm(Timer, µs) / Disarm
//!   Input::AdminUp / AdminDown   │                 └─ Action::StateChange { from, to, diag }
//!   Input::Reconfigure(Config) ──┘
//! ```
//!
//! No sockets and no clock: the shell owns the timers and arms them as told, applying
//! [`jittered`] with a random number to the transmit interval (section 6.8.7).

use crate::packet::{ControlMsg, Diag, State};

/// While a session is not Up, packets go at most once a second (section 6.8.3).
pub const SLOW_TX_US: u32 = 1_000_000;

/// What the operator configured; intervals in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// bfd.DesiredMinTxInterval once Up.
    pub desired_min_tx: u32,
    /// bfd.RequiredMinRxInterval.
    pub required_min_rx: u32,
    /// bfd.DetectMult.
    pub detect_mult: u8,
    /// The C bit: our forwarding survives a restart of our control plane (Petrel's routes
    /// live in the kernel: true).
    pub control_plane_independent: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            desired_min_tx: 300_000,
            required_min_rx: 300_000,
            detect_mult: 3,
            control_plane_independent: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timer {
    /// The periodic transmission of Control packets (section 6.8.7).
    Transmit,
    /// The Detection Time (section 6.8.4): no valid packet within it, the session is down.
    Detect,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A Control packet for this session that passed [`ControlMsg::decode`].
    Received(ControlMsg),
    /// A timer armed by an earlier [`Action::Arm`] fired.
    Timer(Timer),
    /// Leave AdminDown (section 6.8.16).
    AdminUp,
    /// Enter AdminDown with this diagnostic (section 6.8.16).
    AdminDown(Diag),
    /// New intervals or multiplier: a Poll Sequence if Up (section 6.8.3).
    Reconfigure(Config),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Transmit this packet now.
    Send(ControlMsg),
    /// (Re)arm the timer to fire after this many microseconds (jitter not yet applied for
    /// [`Timer::Transmit`]).
    Arm(Timer, u64),
    Disarm(Timer),
    /// bfd.SessionState changed.
    StateChange {
        from: State,
        to: State,
        diag: Diag,
    },
}

/// Why a packet for this session was not processed (counted by the shell).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discard {
    /// Your Discriminator is not ours (section 6.8.6).
    WrongDiscriminator,
    /// The A bit is set and no authentication is configured (section 6.8.6).
    Authentication,
}

/// One session's variables (section 6.8.1).
#[derive(Debug, Clone)]
pub struct Session {
    cfg: Config,
    local_discr: u32,
    remote_discr: u32,
    state: State,
    remote_state: State,
    local_diag: Diag,
    /// The intervals advertised in our packets (the configured ones, or the slow rate).
    adv_tx: u32,
    adv_rx: u32,
    /// While a Poll Sequence runs: the values in force before it, which still govern the
    /// timers where the RFC says so.
    polling: Option<(u32, u32)>,
    remote_min_rx: u32,
    remote_desired_min_tx: u32,
    remote_mult: u8,
    remote_cpi: bool,
    /// Times the session left Up.
    flaps: u64,
    last_down: Diag,
}

impl Session {
    /// A session in Down, with our discriminator (non-zero, unique on the system).
    pub fn new(local_discr: u32, cfg: Config) -> Session {
        Session {
            cfg,
            local_discr: local_discr.max(1),
            remote_discr: 0,
            state: State::Down,
            remote_state: State::Down,
            local_diag: Diag::None,
            adv_tx: SLOW_TX_US.max(cfg.desired_min_tx),
            adv_rx: cfg.required_min_rx,
            polling: None,
            // bfd.RemoteMinRxInterval starts at 1 µs: transmit at our own rate until told.
            remote_min_rx: 1,
            remote_desired_min_tx: 0,
            remote_mult: 0,
            remote_cpi: false,
            flaps: 0,
            last_down: Diag::None,
        }
    }

    /// The first actions: the periodic transmission starts (the Active role).
    pub fn start(&mut self) -> Vec<Action> {
        vec![
            Action::Send(self.packet(false)),
            Action::Arm(Timer::Transmit, self.tx_interval()),
        ]
    }

    pub fn state(&self) -> State {
        self.state
    }
    pub fn local_discr(&self) -> u32 {
        self.local_discr
    }
    pub fn remote_discr(&self) -> u32 {
        self.remote_discr
    }
    pub fn local_diag(&self) -> Diag {
        self.local_diag
    }
    /// The peer's C bit, from its last packet: its forwarding survives its control plane.
    pub fn remote_control_plane_independent(&self) -> bool {
        self.remote_cpi
    }
    pub fn flaps(&self) -> u64 {
        self.flaps
    }
    /// The diagnostic of the last time the session left Up.
    pub fn last_down(&self) -> Diag {
        self.last_down
    }
    pub fn poll_in_progress(&self) -> bool {
        self.polling.is_some()
    }

    /// The interval between our periodic packets (before jitter), µs; 0: none are sent
    /// (the peer asked for none: RemoteMinRxInterval 0).
    pub fn tx_interval(&self) -> u64 {
        if self.remote_min_rx == 0 {
            return 0;
        }
        let tx = match self.polling {
            // An increase waits for the Final; a decrease applies at once (section 6.8.3).
            Some((old_tx, _)) => old_tx.min(self.adv_tx),
            None => self.adv_tx,
        };
        u64::from(tx.max(self.remote_min_rx))
    }

    /// The Detection Time, µs (section 6.8.4, asynchronous mode): the peer's multiplier
    /// times the agreed interval of its packets; 0 before the peer has been heard.
    pub fn detection_time(&self) -> u64 {
        let rx = match self.polling {
            // A reduction waits for the Final (section 6.8.3).
            Some((_, old_rx)) => old_rx.max(self.adv_rx),
            None => self.adv_rx,
        };
        u64::from(self.remote_mult) * u64::from(rx.max(self.remote_desired_min_tx))
    }

    /// The receive interval the peer agreed to send at, µs (status: "rx").
    pub fn negotiated_rx(&self) -> u64 {
        u64::from(self.adv_rx.max(self.remote_desired_min_tx))
    }

    /// Process one input.
    pub fn handle(&mut self, input: Input) -> Vec<Action> {
        let mut out = Vec::new();
        match input {
            Input::Received(m) => {
                let _ = self.receive(m, &mut out);
            }
            Input::Timer(Timer::Transmit) => {
                let iv = self.tx_interval();
                if iv > 0 {
                    out.push(Action::Send(self.packet(false)));
                    out.push(Action::Arm(Timer::Transmit, iv));
                }
            }
            Input::Timer(Timer::Detect) => {
                // Section 6.8.4: the session has gone down; RemoteDiscr is reset (6.8.1).
                self.remote_discr = 0;
                if matches!(self.state, State::Init | State::Up) {
                    self.go(State::Down, Diag::DetectionTimeExpired, &mut out);
                }
            }
            Input::AdminDown(diag) => {
                if self.state != State::AdminDown {
                    self.go(State::AdminDown, diag, &mut out);
                    out.push(Action::Disarm(Timer::Detect));
                }
            }
            Input::AdminUp => {
                if self.state == State::AdminDown {
                    self.go(State::Down, Diag::None, &mut out);
                }
            }
            Input::Reconfigure(cfg) => self.reconfigure(cfg, &mut out),
        }
        out
    }

    /// Section 6.8.6, for a packet that passed the session-independent checks.
    pub fn receive(&mut self, m: ControlMsg, out: &mut Vec<Action>) -> Result<(), Discard> {
        if m.your_discr != 0 && m.your_discr != self.local_discr {
            return Err(Discard::WrongDiscriminator);
        }
        if m.auth.is_some() {
            return Err(Discard::Authentication);
        }
        self.remote_discr = m.my_discr;
        self.remote_state = m.state;
        self.remote_cpi = m.cpi;
        self.remote_mult = m.detect_mult;
        self.remote_desired_min_tx = m.desired_min_tx;
        let old_remote_rx = self.remote_min_rx;
        self.remote_min_rx = m.required_min_rx;
        if m.fin && self.polling.is_some() {
            self.polling = None;
        }
        if self.state == State::AdminDown {
            return Ok(());
        }
        let before = self.state;
        if m.state == State::AdminDown {
            if self.state != State::Down {
                self.go(State::Down, Diag::NeighborDown, out);
            }
        } else {
            match (self.state, m.state) {
                (State::Down, State::Down) => self.go(State::Init, Diag::None, out),
                (State::Down, State::Init) => self.go(State::Up, Diag::None, out),
                (State::Init, State::Init | State::Up) => self.go(State::Up, Diag::None, out),
                (State::Up, State::Down) => self.go(State::Down, Diag::NeighborDown, out),
                _ => {}
            }
        }
        if m.poll {
            // Answer a Poll at once with a Final (section 6.8.6).
            out.push(Action::Send(self.packet(true)));
        }
        let det = self.detection_time();
        if det > 0 {
            out.push(Action::Arm(Timer::Detect, det));
        }
        // A peer that lowered its RequiredMinRx (or first told us) gets our packets at the
        // new rate from now on, not after the old interval.
        if self.state == before && old_remote_rx != self.remote_min_rx {
            let iv = self.tx_interval();
            out.push(if iv > 0 {
                Action::Arm(Timer::Transmit, iv)
            } else {
                Action::Disarm(Timer::Transmit)
            });
        }
        Ok(())
    }

    fn reconfigure(&mut self, cfg: Config, out: &mut Vec<Action>) {
        let old = self.cfg;
        self.cfg = cfg;
        if self.state == State::Up {
            if (cfg.desired_min_tx, cfg.required_min_rx)
                != (old.desired_min_tx, old.required_min_rx)
            {
                self.start_poll(cfg.desired_min_tx, cfg.required_min_rx, out);
            } else if cfg.detect_mult != old.detect_mult {
                out.push(Action::Send(self.packet(false)));
            }
        } else {
            self.adv_tx = SLOW_TX_US.max(cfg.desired_min_tx);
            self.adv_rx = cfg.required_min_rx;
            out.push(Action::Send(self.packet(false)));
            out.push(Action::Arm(Timer::Transmit, self.tx_interval()));
        }
    }

    /// Advertise new intervals with P set until the peer's Final (section 6.8.3).
    fn start_poll(&mut self, tx: u32, rx: u32, out: &mut Vec<Action>) {
        let prev = self.polling.unwrap_or((self.adv_tx, self.adv_rx));
        self.polling = Some(prev);
        self.adv_tx = tx;
        self.adv_rx = rx;
        out.push(Action::Send(self.packet(false)));
        let iv = self.tx_interval();
        if iv > 0 {
            out.push(Action::Arm(Timer::Transmit, iv));
        }
    }

    fn go(&mut self, to: State, diag: Diag, out: &mut Vec<Action>) {
        let from = self.state;
        if from == to {
            return;
        }
        self.state = to;
        self.local_diag = diag;
        if from == State::Up {
            self.flaps += 1;
            self.last_down = diag;
        }
        out.push(Action::StateChange { from, to, diag });
        if to == State::Up {
            // From the slow rate to the configured one, by a Poll Sequence.
            if self.adv_tx != self.cfg.desired_min_tx || self.adv_rx != self.cfg.required_min_rx {
                self.start_poll(self.cfg.desired_min_tx, self.cfg.required_min_rx, out);
                return;
            }
        } else {
            self.polling = None;
            self.adv_tx = SLOW_TX_US.max(self.cfg.desired_min_tx);
            self.adv_rx = self.cfg.required_min_rx;
        }
        // The peer learns of the change at once, not at the next periodic packet.
        out.push(Action::Send(self.packet(false)));
        let iv = self.tx_interval();
        if iv > 0 {
            out.push(Action::Arm(Timer::Transmit, iv));
        }
    }

    /// The Control packet we send now; `fin`: the answer to a Poll.
    pub fn packet(&self, fin: bool) -> ControlMsg {
        ControlMsg {
            diag: self.local_diag,
            state: self.state,
            poll: self.polling.is_some() && !fin,
            fin,
            cpi: self.cfg.control_plane_independent,
            demand: false,
            detect_mult: self.cfg.detect_mult,
            my_discr: self.local_discr,
            your_discr: self.remote_discr,
            desired_min_tx: self.adv_tx,
            required_min_rx: self.adv_rx,
            required_min_echo_rx: 0,
            auth: None,
        }
    }
}

/// The transmit interval with the jitter of section 6.8.7: reduced by a random 0-25%, or
/// 10-25% when the multiplier is 1. `r` is any random number.
pub fn jittered(interval_us: u64, detect_mult: u8, r: u32) -> u64 {
    let (lo, span) = if detect_mult == 1 { (10, 16) } else { (0, 26) };
    let cut = lo + u64::from(r) % span;
    interval_us - interval_us * cut / 100
}
