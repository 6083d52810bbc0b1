//! Any datagram: decoding never panics; what decodes re-encodes to a packet that decodes
//! the same; and fed to a session (Down, then Up) it never panics either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use petrel_bfd::session::Config;
use petrel_bfd::{ControlMsg, Input, Session};

fuzz_target!(|data: &[u8]| {
    let Ok(m) = ControlMsg::decode(data) else {
        return;
    };
    assert_eq!(ControlMsg::decode(&m.encode()).as_ref(), Ok(&m));
    let mut s = Session::new(7, Config::default());
    let _ = s.start();
    for _ in 0..3 {
        let _ = s.handle(Input::Received(m.clone()));
        let _ = s.tx_interval();
        let _ = s.detection_time();
    }
});
