//! Two sessions back to back over a simulated link with a simulated clock (the test's, not
//! the crate's): bring-up, a silent link, recovery, Poll/Final, AdminDown, and random loss.

use petrel_bfd::session::{Config, jittered};
use petrel_bfd::{Action, ControlMsg, Diag, Input, Session, State, Timer};
use proptest::prelude::*;

const MS: u64 = 1000;

#[derive(Default)]
struct Timers {
    tx: Option<u64>,
    detect: Option<u64>,
}

struct Side {
    s: Session,
    t: Timers,
    changes: Vec<(u64, State, State, Diag)>,
}

/// A link with latency; each direction can be cut silently (packets vanish).
struct Net {
    now: u64,
    sides: [Side; 2],
    /// (deliver at, to side, packet bytes)
    inflight: Vec<(u64, usize, Vec<u8>)>,
    latency: u64,
    cut: [bool; 2],
    /// Drop a packet sent by side i when this returns true.
    loss: Box<dyn FnMut(usize) -> bool>,
    rng: u64,
}

impl Net {
    fn new(a: Config, b: Config) -> Net {
        let mut n = Net {
            now: 0,
            sides: [
                Side {
                    s: Session::new(0x1111, a),
                    t: Timers::default(),
                    changes: Vec::new(),
                },
                Side {
                    s: Session::new(0x2222, b),
                    t: Timers::default(),
                    changes: Vec::new(),
                },
            ],
            inflight: Vec::new(),
            latency: MS,
            cut: [false; 2],
            loss: Box::new(|_| false),
            rng: 0x9e3779b97f4a7c15,
        };
        for i in 0..2 {
            let acts = n.sides[i].s.start();
            n.apply(i, acts);
        }
        n
    }

    fn random(&mut self) -> u32 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 32) as u32
    }

    fn apply(&mut self, i: usize, acts: Vec<Action>) {
        for a in acts {
            match a {
                Action::Send(m) => {
                    let bytes = m.encode();
                    if !self.cut[i] && !(self.loss)(i) {
                        self.inflight.push((self.now + self.latency, 1 - i, bytes));
                    }
                }
                Action::Arm(Timer::Transmit, us) => {
                    let mult = self.sides[i].s.packet(false).detect_mult;
                    let r = self.random();
                    self.sides[i].t.tx = Some(self.now + jittered(us, mult, r));
                }
                Action::Arm(Timer::Detect, us) => self.sides[i].t.detect = Some(self.now + us),
                Action::Disarm(Timer::Transmit) => self.sides[i].t.tx = None,
                Action::Disarm(Timer::Detect) => self.sides[i].t.detect = None,
                Action::StateChange { from, to, diag } => {
                    self.sides[i].changes.push((self.now, from, to, diag))
                }
            }
        }
    }

    fn input(&mut self, i: usize, input: Input) {
        let acts = self.sides[i].s.handle(input);
        self.apply(i, acts);
    }

    /// Run every event up to `until` (µs), in time order.
    fn run_until(&mut self, until: u64) {
        loop {
            let mut next: Option<(u64, u8, usize)> = None; // (time, kind, index)
            let mut consider = |t: Option<u64>, kind: u8, idx: usize| {
                if let Some(t) = t
                    && t <= until
                    && next.is_none_or(|(nt, _, _)| t < nt)
                {
                    next = Some((t, kind, idx));
                }
            };
            for (k, f) in self.inflight.iter().enumerate() {
                consider(Some(f.0), 0, k);
            }
            for i in 0..2 {
                consider(self.sides[i].t.detect, 1, i);
                consider(self.sides[i].t.tx, 2, i);
            }
            let Some((t, kind, idx)) = next else {
                self.now = until;
                return;
            };
            self.now = t;
            match kind {
                0 => {
                    let (_, to, bytes) = self.inflight.remove(idx);
                    let m = ControlMsg::decode(&bytes).expect("our own packets decode");
                    self.input(to, Input::Received(m));
                }
                1 => {
                    self.sides[idx].t.detect = None;
                    self.input(idx, Input::Timer(Timer::Detect));
                }
                _ => {
                    self.sides[idx].t.tx = None;
                    self.input(idx, Input::Timer(Timer::Transmit));
                }
            }
        }
    }

    fn state(&self, i: usize) -> State {
        self.sides[i].s.state()
    }

    fn both_up(&self) -> bool {
        self.state(0) == State::Up && self.state(1) == State::Up
    }
}

fn up_pair() -> Net {
    let mut n = Net::new(Config::default(), Config::default());
    n.run_until(5_000 * MS);
    assert!(
        n.both_up(),
        "{:?} {:?}",
        n.sides[0].changes,
        n.sides[1].changes
    );
    n
}

#[test]
fn two_sessions_come_up_and_settle_on_the_configured_intervals() {
    let n = up_pair();
    for side in &n.sides {
        // Down -> Init -> Up or Down -> Up; never down again.
        assert!(
            side.changes.iter().all(|c| c.2 != State::Down),
            "{:?}",
            side.changes
        );
        assert_eq!(side.s.tx_interval(), 300 * MS);
        assert_eq!(side.s.detection_time(), 900 * MS);
        assert!(!side.s.poll_in_progress(), "the slow-to-fast Poll ended");
        assert!(side.s.remote_control_plane_independent());
    }
    // Up within the first slow round trips, not after seconds.
    assert!(n.sides[0].changes.last().unwrap().0 < 2_100 * MS);
}

#[test]
fn a_silent_link_is_detected_within_the_detection_time_and_recovers() {
    let mut n = up_pair();
    let cut_at = n.now;
    n.cut[1] = true; // b's packets vanish; a hears nothing
    n.run_until(cut_at + 2_000 * MS);
    let (t, from, to, diag) = *n.sides[0].changes.last().unwrap();
    assert_eq!(
        (from, to, diag),
        (State::Up, State::Down, Diag::DetectionTimeExpired)
    );
    assert!(
        t - cut_at <= 900 * MS,
        "detected after {} ms",
        (t - cut_at) / MS
    );
    // b hears a's Down and follows (then, hearing a's Down packets, goes to Init: a
    // cannot hear b's answers, so it never gets further).
    assert!(
        n.sides[1]
            .changes
            .iter()
            .any(|c| (c.1, c.2, c.3) == (State::Up, State::Down, Diag::NeighborDown)),
        "{:?}",
        n.sides[1].changes
    );
    assert_ne!(n.state(1), State::Up);
    assert_eq!(n.sides[0].s.flaps(), 1);
    assert_eq!(n.sides[0].s.last_down(), Diag::DetectionTimeExpired);
    // While down, the slow rate again.
    assert_eq!(n.sides[0].s.packet(false).desired_min_tx, 1_000_000);
    n.cut[1] = false;
    n.run_until(n.now + 5_000 * MS);
    assert!(n.both_up());
}

#[test]
fn poll_and_final_change_the_intervals_without_a_flap() {
    let mut n = up_pair();
    let before = n.sides[0].changes.len();
    n.input(
        0,
        Input::Reconfigure(Config {
            required_min_rx: 600 * MS as u32,
            ..Config::default()
        }),
    );
    assert!(n.sides[0].s.poll_in_progress());
    n.run_until(n.now + 3_000 * MS);
    assert!(!n.sides[0].s.poll_in_progress());
    assert_eq!(n.sides[0].changes.len(), before, "no state change");
    assert!(n.both_up());
    // b now sends every 600 ms and a waits 3 x 600 ms.
    assert_eq!(n.sides[1].s.tx_interval(), 600 * MS);
    assert_eq!(n.sides[0].s.detection_time(), 1_800 * MS);
    // And faster again.
    n.input(
        0,
        Input::Reconfigure(Config {
            required_min_rx: 100 * MS as u32,
            desired_min_tx: 100 * MS as u32,
            ..Config::default()
        }),
    );
    // Until the Final, a reduced RequiredMinRx must not shorten a's detection time.
    assert_eq!(n.sides[0].s.detection_time(), 1_800 * MS);
    n.run_until(n.now + 3_000 * MS);
    assert_eq!(
        n.sides[1].s.tx_interval(),
        300 * MS,
        "b's own 300 ms is the floor"
    );
    assert_eq!(
        n.sides[0].s.tx_interval(),
        300 * MS,
        "b's RequiredMinRx is the floor"
    );
    assert_eq!(n.sides[0].s.detection_time(), 900 * MS);
    assert!(n.both_up());
}

#[test]
fn admin_down_tells_the_peer_and_admin_up_recovers() {
    let mut n = up_pair();
    n.input(0, Input::AdminDown(Diag::AdminDown));
    assert_eq!(n.state(0), State::AdminDown);
    n.run_until(n.now + 2_000 * MS);
    let (_, _, to, diag) = *n.sides[1].changes.last().unwrap();
    assert_eq!((to, diag), (State::Down, Diag::NeighborDown));
    assert_eq!(
        n.state(0),
        State::AdminDown,
        "packets do not move AdminDown"
    );
    n.input(0, Input::AdminUp);
    n.run_until(n.now + 5_000 * MS);
    assert!(n.both_up());
}

#[test]
fn a_packet_for_another_discriminator_or_with_authentication_is_discarded() {
    let mut n = up_pair();
    let mut m = n.sides[1].s.packet(false);
    m.state = State::Down;
    m.your_discr = 0xdead;
    let mut out = Vec::new();
    assert!(n.sides[0].s.receive(m.clone(), &mut out).is_err());
    m.your_discr = n.sides[0].s.local_discr();
    m.auth = Some(vec![1, 2]);
    assert!(n.sides[0].s.receive(m, &mut out).is_err());
    assert!(out.is_empty());
    assert_eq!(n.state(0), State::Up);
}

#[test]
fn five_simulated_minutes_without_loss_never_flap() {
    let mut n = up_pair();
    n.run_until(n.now + 300_000 * MS);
    assert!(n.both_up());
    assert_eq!(n.sides[0].s.flaps() + n.sides[1].s.flaps(), 0);
}

#[test]
fn jitter_stays_within_the_rfc_bounds() {
    for r in 0..1000u32 {
        let j = jittered(300_000, 3, r.wrapping_mul(2654435761));
        assert!((225_000..=300_000).contains(&j), "{j}");
        let j = jittered(300_000, 1, r.wrapping_mul(2654435761));
        assert!((225_000..=270_000).contains(&j), "{j}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever is lost for a while, nothing panics, and once the loss stops both sides are
    /// Up again within a few slow rounds.
    #[test]
    fn random_loss_then_a_clean_link_ends_up(loss_pct in 0u32..100, seed in any::<u64>(), secs in 1u64..30) {
        let mut n = Net::new(Config::default(), Config::default());
        let mut x = seed | 1;
        n.loss = Box::new(move |_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 100) < u64::from(loss_pct)
        });
        n.run_until(secs * 1_000 * MS);
        n.loss = Box::new(|_| false);
        n.run_until(n.now + 6_000 * MS);
        prop_assert!(n.both_up(), "{:?} / {:?}", n.state(0), n.state(1));
    }
}
