//! Arbitrary inputs into the session FSM after it reached Established: whatever arrives, in
//! any order, the FSM answers with actions and never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use petrel_bgp::fsm::{Dir, Fsm, FsmConfig, GrConfig, Input, Timer};
use petrel_bgp::wire::{self, Afi, Codec};

fuzz_target!(|data: &[u8]| {
    let mut f = Fsm::new(FsmConfig {
        local_asn: 65002,
        remote_asn: 65001,
        router_id: "10.0.0.2".parse().unwrap(),
        hold_time: 9,
        keepalive: 3,
        connect_retry: 1,
        connect_retry_max: 8,
        passive: data.first().is_some_and(|b| b & 1 == 1),
        families: vec![Afi::Ipv4, Afi::Ipv6],
        graceful_restart: Some(GrConfig {
            restart_time: 120,
            restarting: false,
            forwarding_preserved: false,
        }),
    });
    f.handle(Input::Start);
    let mut rest = data;
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        let dir = if op & 0x80 != 0 { Dir::In } else { Dir::Out };
        let input = match op & 0x0f {
            0 => Input::Connected(dir),
            1 => Input::ConnectFailed,
            2 => Input::Closed(dir),
            3 => Input::TimerExpired(Timer::ConnectRetry),
            4 => Input::TimerExpired(Timer::Hold(dir)),
            5 => Input::TimerExpired(Timer::Keepalive(dir)),
            6 => Input::Start,
            7 => Input::Stop { notification: None, graceful: op & 0x40 != 0 },
            _ => {
                // A message: the next bytes, framed and decoded as the runtime would.
                match wire::frame(rest, &Codec::INITIAL) {
                    Ok(Some(len)) => {
                        let m = &rest[..len];
                        rest = &rest[len..];
                        match wire::decode(m, &Codec::INITIAL) {
                            Ok(msg) => Input::Message(dir, msg),
                            Err(e) => Input::Malformed(dir, e),
                        }
                    }
                    _ => return,
                }
            }
        };
        let _ = f.handle(input);
        let _ = f.state();
    }
});
