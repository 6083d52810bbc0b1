//! Every byte string through framing and decoding, under each codec setting: nothing may
//! panic, and every error must carry a NOTIFICATION with a defined code.
#![no_main]

use libfuzzer_sys::fuzz_target;
use petrel_bgp::wire::{self, Codec, Message};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, mut rest)) = data.split_first() else {
        return;
    };
    let codec = Codec {
        asn4: sel & 1 != 0,
        extended_message: sel & 2 != 0,
        ibgp: sel & 4 != 0,
    };
    // Treat the input as a stream, as the reader task does.
    while !rest.is_empty() {
        match wire::frame(rest, &codec) {
            Ok(Some(len)) => {
                match wire::decode(&rest[..len], &codec) {
                    Ok(Message::Update(u)) => {
                        // What we decoded re-encodes within the size limit and decodes again.
                        for m in wire::encode_updates(&u, &codec) {
                            assert!(m.len() <= codec.max_len());
                            let _ = wire::decode(&m, &codec);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => assert!((1..=7).contains(&e.notification.code), "{e:?}"),
                }
                rest = &rest[len..];
            }
            Ok(None) => break,
            Err(e) => {
                assert_eq!(e.notification.code, 1);
                break;
            }
        }
    }
});
