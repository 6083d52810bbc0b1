//! Input sequences against expected actions and states; no runtime.

use super::*;
use crate::wire::{Capabilities, GracefulRestartCap, UpdateMsg};

const ME: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const LOW: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const HIGH: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);

fn cfg() -> FsmConfig {
    FsmConfig {
        local_asn: 65002,
        remote_asn: 65001,
        router_id: ME,
        hold_time: 9,
        keepalive: 3,
        connect_retry: 1,
        connect_retry_max: 8,
        passive: false,
        families: vec![Afi::Ipv4, Afi::Ipv6],
        graceful_restart: Some(GrConfig {
            restart_time: 120,
            restarting: false,
            forwarding_preserved: false,
        }),
    }
}

fn peer_open(id: Ipv4Addr, gr: bool) -> Message {
    let caps = Capabilities {
        families: vec![Afi::Ipv4],
        route_refresh: true,
        graceful_restart: gr.then(|| GracefulRestartCap {
            restarting: false,
            notification: false,
            restart_time: 120,
            families: vec![(Afi::Ipv4, true)],
        }),
        ..Default::default()
    };
    Message::Open(OpenMsg::new(65001, 90, id, caps))
}

fn sends(actions: &[Action], d: Dir) -> Vec<Message> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(x, m) if *x == d => Some(m.clone()),
            _ => None,
        })
        .collect()
}

fn notification(actions: &[Action], d: Dir) -> Option<(u8, u8)> {
    sends(actions, d).into_iter().find_map(|m| match m {
        Message::Notification(n) => Some((n.code, n.subcode)),
        _ => None,
    })
}

fn down(actions: &[Action]) -> Option<(DownReason, Vec<Afi>)> {
    actions.iter().find_map(|a| match a {
        Action::Down {
            reason,
            keep_routes,
            ..
        } => Some((reason.clone(), keep_routes.clone())),
        _ => None,
    })
}

/// Drive an outbound session to Established with a peer of identifier `id`.
fn established(id: Ipv4Addr, gr: bool) -> Fsm {
    let mut f = Fsm::new(cfg());
    f.handle(Input::Start);
    f.handle(Input::Connected(Dir::Out));
    f.handle(Input::Message(Dir::Out, peer_open(id, gr)));
    let a = f.handle(Input::Message(Dir::Out, Message::Keepalive));
    assert!(a.iter().any(|a| matches!(a, Action::Up(Dir::Out, _))));
    assert_eq!(f.state(), State::Established);
    f
}

#[test]
fn active_open_to_established() {
    let mut f = Fsm::new(cfg());
    assert_eq!(f.state(), State::Idle);
    assert_eq!(
        f.handle(Input::Start),
        vec![Action::Connect, Action::ArmTimer(Timer::ConnectRetry, 1)]
    );
    assert_eq!(f.state(), State::Connect);
    let a = f.handle(Input::Connected(Dir::Out));
    assert_eq!(a[0], Action::CancelTimer(Timer::ConnectRetry));
    let Action::Send(Dir::Out, Message::Open(open)) = &a[1] else {
        panic!("{a:?}")
    };
    assert_eq!((open.asn(), open.hold_time, open.router_id), (65002, 9, ME));
    assert_eq!(open.caps.families, vec![Afi::Ipv4, Afi::Ipv6]);
    assert!(open.caps.graceful_restart.is_some() && open.caps.route_refresh);
    assert_eq!(
        a[2],
        Action::ArmTimer(Timer::Hold(Dir::Out), OPEN_HOLD_TIME)
    );
    assert_eq!(f.state(), State::OpenSent);

    let a = f.handle(Input::Message(Dir::Out, peer_open(LOW, true)));
    assert_eq!(
        a,
        vec![
            Action::Send(Dir::Out, Message::Keepalive),
            Action::ArmTimer(Timer::Hold(Dir::Out), 9),
            Action::ArmTimer(Timer::Keepalive(Dir::Out), 3),
        ]
    );
    assert_eq!(f.state(), State::OpenConfirm);
    let a = f.handle(Input::Message(Dir::Out, Message::Keepalive));
    let Some(Action::Up(Dir::Out, n)) = a.last() else {
        panic!("{a:?}")
    };
    assert_eq!(n.families, vec![Afi::Ipv4], "only what both sides support");
    assert_eq!((n.hold_time, n.keepalive), (9, 3));
    assert!(n.gr && n.codec.asn4 && !n.codec.ibgp);
    assert_eq!(f.state(), State::Established);

    // Keepalive timer: send one, re-arm.
    assert_eq!(
        f.handle(Input::TimerExpired(Timer::Keepalive(Dir::Out))),
        vec![
            Action::Send(Dir::Out, Message::Keepalive),
            Action::ArmTimer(Timer::Keepalive(Dir::Out), 3)
        ]
    );
    // An UPDATE restarts the hold timer and goes to the RIB.
    let a = f.handle(Input::Message(
        Dir::Out,
        Message::Update(UpdateMsg::default()),
    ));
    assert_eq!(
        a,
        vec![
            Action::ArmTimer(Timer::Hold(Dir::Out), 9),
            Action::Update(UpdateMsg::default())
        ]
    );
}

#[test]
fn passive_waits_for_the_peer() {
    let mut f = Fsm::new(FsmConfig {
        passive: true,
        ..cfg()
    });
    assert!(f.handle(Input::Start).is_empty());
    assert_eq!(f.state(), State::Active);
    let a = f.handle(Input::Connected(Dir::In));
    assert!(matches!(&a[0], Action::Send(Dir::In, Message::Open(_))));
    assert_eq!(f.state(), State::OpenSent);
}

#[test]
fn idle_refuses_connections() {
    let mut f = Fsm::new(cfg());
    assert_eq!(
        f.handle(Input::Connected(Dir::In)),
        vec![Action::Close(Dir::In)]
    );
    assert_eq!(f.state(), State::Idle);
}

#[test]
fn bad_peer_as_is_refused_and_retried() {
    let mut f = Fsm::new(cfg());
    f.handle(Input::Start);
    f.handle(Input::Connected(Dir::Out));
    let wrong = Message::Open(OpenMsg::new(65099, 90, LOW, Capabilities::default()));
    let a = f.handle(Input::Message(Dir::Out, wrong));
    assert_eq!(notification(&a, Dir::Out), Some((2, 2)));
    assert!(a.contains(&Action::Close(Dir::Out)));
    assert!(a.contains(&Action::ArmTimer(Timer::ConnectRetry, 1)));
    assert!(down(&a).is_none(), "it never was up");
    assert_eq!(f.state(), State::Active);
    // The retry timer connects again.
    assert_eq!(
        f.handle(Input::TimerExpired(Timer::ConnectRetry)),
        vec![Action::Connect, Action::ArmTimer(Timer::ConnectRetry, 2)]
    );
}

#[test]
fn same_router_id_on_ibgp_is_refused() {
    let mut f = Fsm::new(FsmConfig {
        remote_asn: 65002,
        ..cfg()
    });
    f.handle(Input::Start);
    f.handle(Input::Connected(Dir::Out));
    let a = f.handle(Input::Message(
        Dir::Out,
        Message::Open(OpenMsg::new(65002, 90, ME, Capabilities::default())),
    ));
    assert_eq!(notification(&a, Dir::Out), Some((2, 3)));
}

#[test]
fn no_common_family_is_unsupported_capability() {
    let mut f = Fsm::new(FsmConfig {
        families: vec![Afi::Ipv6],
        ..cfg()
    });
    f.handle(Input::Start);
    f.handle(Input::Connected(Dir::Out));
    let a = f.handle(Input::Message(Dir::Out, peer_open(LOW, false)));
    assert_eq!(notification(&a, Dir::Out), Some((2, 7)));
}

#[test]
fn connect_backoff_doubles_to_the_max() {
    let mut f = Fsm::new(cfg());
    f.handle(Input::Start);
    let mut seen = Vec::new();
    for _ in 0..6 {
        let a = f.handle(Input::ConnectFailed);
        let wait = a
            .iter()
            .find_map(|a| match a {
                Action::ArmTimer(Timer::ConnectRetry, s) => Some(*s),
                _ => None,
            })
            .unwrap();
        seen.push(wait);
        f.handle(Input::TimerExpired(Timer::ConnectRetry));
    }
    assert_eq!(seen, vec![1, 2, 4, 8, 8, 8]);
    // Established resets the backoff.
    f.handle(Input::Connected(Dir::Out));
    f.handle(Input::Message(Dir::Out, peer_open(LOW, false)));
    f.handle(Input::Message(Dir::Out, Message::Keepalive));
    assert_eq!(f.retry_interval(), 1);
}

#[test]
fn unexpected_messages_are_fsm_errors() {
    let mut f = Fsm::new(cfg());
    f.handle(Input::Start);
    f.handle(Input::Connected(Dir::Out));
    let a = f.handle(Input::Message(Dir::Out, Message::Keepalive));
    assert_eq!(notification(&a, Dir::Out), Some((5, 1)));

    let mut f = Fsm::new(cfg());
    f.handle(Input::Start);
    f.handle(Input::Connected(Dir::Out));
    f.handle(Input::Message(Dir::Out, peer_open(LOW, false)));
    let a = f.handle(Input::Message(
        Dir::Out,
        Message::Update(UpdateMsg::default()),
    ));
    assert_eq!(notification(&a, Dir::Out), Some((5, 2)));

    let mut f = established(LOW, false);
    let a = f.handle(Input::Message(Dir::Out, peer_open(LOW, false)));
    assert_eq!(notification(&a, Dir::Out), Some((5, 3)));
    assert!(down(&a).is_some());
}

#[test]
fn hold_timer_expiry_drops_routes_even_with_graceful_restart() {
    let mut f = established(LOW, true);
    let a = f.handle(Input::TimerExpired(Timer::Hold(Dir::Out)));
    assert_eq!(notification(&a, Dir::Out), Some((4, 0)));
    assert_eq!(down(&a), Some((DownReason::HoldTimerExpired, vec![])));
    assert!(a.contains(&Action::ArmTimer(Timer::ConnectRetry, 1)));
    assert_eq!(f.state(), State::Active);
}

#[test]
fn lost_connection_keeps_routes_of_a_graceful_restart_peer() {
    let mut f = established(LOW, true);
    let a = f.handle(Input::Closed(Dir::Out));
    assert_eq!(notification(&a, Dir::Out), None);
    assert_eq!(
        down(&a),
        Some((DownReason::ConnectionLost, vec![Afi::Ipv4]))
    );
    assert!(
        a.iter()
            .any(|a| matches!(a, Action::Down { stale_for: 120, .. }))
    );

    let mut f = established(LOW, false);
    let a = f.handle(Input::Closed(Dir::Out));
    assert_eq!(down(&a), Some((DownReason::ConnectionLost, vec![])));
}

#[test]
fn notification_received_ends_the_session() {
    let mut f = established(LOW, true);
    let n = NotificationMsg::cease(codes::cease::ADMIN_SHUTDOWN);
    let a = f.handle(Input::Message(Dir::Out, Message::Notification(n.clone())));
    assert_eq!(down(&a), Some((DownReason::Received(n), vec![])));
    assert!(a.contains(&Action::Close(Dir::Out)));
}

#[test]
fn malformed_message_sends_its_notification() {
    let mut f = established(LOW, false);
    let e = DecodeError {
        notification: NotificationMsg::new(3, 1, vec![]),
        reason: "test".into(),
    };
    let a = f.handle(Input::Malformed(Dir::Out, e));
    assert_eq!(notification(&a, Dir::Out), Some((3, 1)));
    assert!(down(&a).is_some());
}

#[test]
fn max_prefix_error_ceases() {
    let mut f = established(LOW, false);
    let a = f.handle(Input::Error(NotificationMsg::cease(
        codes::cease::MAX_PREFIXES,
    )));
    assert_eq!(notification(&a, Dir::Out), Some((6, 1)));
    assert!(down(&a).is_some());
}

/// Both sides connect at once; each gets the other's OPEN.
fn collision(peer_id: Ipv4Addr) -> (Fsm, Vec<Action>) {
    let mut f = Fsm::new(cfg());
    f.handle(Input::Start);
    f.handle(Input::Connected(Dir::Out));
    f.handle(Input::Connected(Dir::In));
    f.handle(Input::Message(Dir::Out, peer_open(peer_id, false)));
    assert_eq!(f.state(), State::OpenConfirm);
    let a = f.handle(Input::Message(Dir::In, peer_open(peer_id, false)));
    (f, a)
}

#[test]
fn collision_keeps_our_connection_when_our_id_is_higher() {
    let (mut f, a) = collision(LOW);
    assert_eq!(notification(&a, Dir::In), Some((6, 7)));
    assert!(a.contains(&Action::Close(Dir::In)));
    assert!(notification(&a, Dir::Out).is_none());
    let a = f.handle(Input::Message(Dir::Out, Message::Keepalive));
    assert!(matches!(a.last(), Some(Action::Up(Dir::Out, _))));
}

#[test]
fn collision_keeps_their_connection_when_their_id_is_higher() {
    let (mut f, a) = collision(HIGH);
    assert_eq!(notification(&a, Dir::Out), Some((6, 7)));
    assert!(a.contains(&Action::Close(Dir::Out)));
    assert_eq!(sends(&a, Dir::In), vec![Message::Keepalive]);
    let a = f.handle(Input::Message(Dir::In, Message::Keepalive));
    assert!(matches!(a.last(), Some(Action::Up(Dir::In, _))));
    assert_eq!(f.established_dir(), Some(Dir::In));
}

#[test]
fn established_session_wins_against_a_new_connection() {
    let mut f = established(HIGH, false);
    let a = f.handle(Input::Connected(Dir::In));
    assert_eq!(notification(&a, Dir::In), Some((6, 7)));
    assert_eq!(f.state(), State::Established);
}

#[test]
fn graceful_restart_peer_reconnecting_replaces_the_old_session() {
    let mut f = established(HIGH, true);
    let a = f.handle(Input::Connected(Dir::In));
    // The connection alone decides nothing: the OPEN on it does (RFC 4724 4.2).
    assert_eq!(down(&a), None);
    assert_eq!(f.state(), State::Established);
    assert!(
        sends(&a, Dir::In)
            .iter()
            .any(|m| matches!(m, Message::Open(_)))
    );
    let a = f.handle(Input::Message(Dir::In, peer_open(HIGH, true)));
    assert_eq!(down(&a), Some((DownReason::PeerRestarted, vec![Afi::Ipv4])));
    assert!(a.contains(&Action::Close(Dir::Out)));
    assert_eq!(f.state(), State::OpenConfirm);
}

/// Both sides connect at once; the session comes up on one connection and the peer then
/// drops its other one, which reached us after we were Established: that must not end
/// the session (it did, as "peer restarted", in a 30-node mesh).
#[test]
fn a_graceful_restart_peer_s_late_collision_connection_leaves_the_session_up() {
    let mut f = established(HIGH, true);
    let a = f.handle(Input::Connected(Dir::In));
    assert_eq!(down(&a), None);
    let a = f.handle(Input::Closed(Dir::In));
    assert_eq!(down(&a), None);
    assert_eq!(f.state(), State::Established);
    assert_eq!(f.established_dir(), Some(Dir::Out));
}

#[test]
fn route_refresh_only_for_negotiated_families() {
    let mut f = established(LOW, false);
    let rr = |afi, safi| Message::RouteRefresh {
        afi,
        safi,
        subtype: 0,
    };
    let a = f.handle(Input::Message(Dir::Out, rr(1, 1)));
    assert!(a.contains(&Action::RouteRefresh(Afi::Ipv4)));
    let a = f.handle(Input::Message(Dir::Out, rr(2, 1)));
    assert!(
        !a.iter().any(|a| matches!(a, Action::RouteRefresh(_))),
        "IPv6 was not negotiated"
    );
}

#[test]
fn stop_sends_cease_or_closes_gracefully() {
    let mut f = established(LOW, true);
    let a = f.handle(Input::Stop {
        notification: None,
        graceful: false,
    });
    assert_eq!(notification(&a, Dir::Out), Some((6, 2)));
    assert_eq!(f.state(), State::Idle);

    let mut f = established(LOW, true);
    let a = f.handle(Input::Stop {
        notification: None,
        graceful: true,
    });
    assert_eq!(
        notification(&a, Dir::Out),
        None,
        "the peer must see a lost connection"
    );
    assert!(a.contains(&Action::Close(Dir::Out)));
    assert_eq!(down(&a).map(|d| d.0), Some(DownReason::GracefulStop));
}

#[test]
fn restarting_speaker_sets_r_and_f_bits() {
    let mut f = Fsm::new(FsmConfig {
        graceful_restart: Some(GrConfig {
            restart_time: 90,
            restarting: true,
            forwarding_preserved: true,
        }),
        ..cfg()
    });
    f.handle(Input::Start);
    let a = f.handle(Input::Connected(Dir::Out));
    let Some(Message::Open(o)) = sends(&a, Dir::Out).into_iter().next() else {
        panic!()
    };
    let gr = o.caps.graceful_restart.unwrap();
    assert!(gr.restarting);
    assert_eq!(gr.restart_time, 90);
    assert_eq!(gr.families, vec![(Afi::Ipv4, true), (Afi::Ipv6, true)]);
}
