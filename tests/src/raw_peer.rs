//! A scripted BGP speaker for attacks: it accepts the agent's connection, opens the
//! session, sends exactly the UPDATEs it is given (however absurd), then keeps the session
//! alive until dropped. Encoding is Petrel's own wire layer; nothing checks what is sent.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use petrel_bgp::wire::{self, Codec, UpdateMsg};

pub struct RawPeer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn open(asn: u16, id: [u8; 4], hold: u16) -> Vec<u8> {
    // Capabilities: MP IPv4 and IPv6 unicast, 4-octet AS.
    let caps: Vec<u8> = [
        &[1u8, 4, 0, 1, 0, 1][..],
        &[1, 4, 0, 2, 0, 1],
        &[65, 4, 0, 0, (asn >> 8) as u8, asn as u8],
    ]
    .concat();
    let mut params = vec![2, caps.len() as u8];
    params.extend(caps);
    let mut body = vec![
        4,
        (asn >> 8) as u8,
        asn as u8,
        (hold >> 8) as u8,
        hold as u8,
    ];
    body.extend_from_slice(&id);
    body.push(params.len() as u8);
    body.extend(params);
    message(1, &body)
}

fn message(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![0xff; 16];
    m.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
    m.push(ty);
    m.extend_from_slice(body);
    m
}

fn read_message(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 19];
    s.read_exact(&mut h).ok()?;
    let len = u16::from_be_bytes([h[16], h[17]]) as usize;
    let mut body = vec![0u8; len.saturating_sub(19)];
    s.read_exact(&mut body).ok()?;
    Some((h[18], body))
}

impl RawPeer {
    /// Listen on `listen` (an address of namespace `ns`, port 179) as AS `asn`, router id
    /// `id`; once the agent is connected and the session is up, send `updates`.
    pub fn start(
        ns: &str,
        listen: SocketAddr,
        asn: u16,
        id: [u8; 4],
        updates: Vec<UpdateMsg>,
        raw: Vec<Vec<u8>>,
    ) -> RawPeer {
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let ns = ns.to_string();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let _ = crate::host::in_netns(&ns, move || {
                let l = TcpListener::bind(listen).expect("raw peer bind");
                l.set_nonblocking(true).unwrap();
                let _ = ready_tx.send(());
                let mut s = loop {
                    if s2.load(Ordering::Relaxed) {
                        return;
                    }
                    match l.accept() {
                        Ok((s, _)) => break s,
                        Err(_) => std::thread::sleep(Duration::from_millis(50)),
                    }
                };
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_millis(500)))
                    .unwrap();
                // The agent's OPEN, then ours and a KEEPALIVE.
                loop {
                    match read_message(&mut s) {
                        Some((1, _)) => break,
                        Some(_) => {}
                        None if s2.load(Ordering::Relaxed) => return,
                        None => {}
                    }
                }
                let _ = s.write_all(&open(asn, id, 90));
                let _ = s.write_all(&message(4, &[]));
                let codec = Codec {
                    asn4: true,
                    extended_message: false,
                    ibgp: false,
                };
                for u in &updates {
                    for m in wire::encode_updates(u, &codec) {
                        let _ = s.write_all(&m);
                    }
                }
                for m in &raw {
                    let _ = s.write_all(m);
                }
                for afi in wire::Afi::ALL {
                    for m in wire::encode_updates(&UpdateMsg::end_of_rib(afi), &codec) {
                        let _ = s.write_all(&m);
                    }
                }
                // Keep the session up: a KEEPALIVE every second, whatever comes in.
                while !s2.load(Ordering::Relaxed) {
                    let _ = read_message(&mut s);
                    if s.write_all(&message(4, &[])).is_err() {
                        return;
                    }
                }
            });
        });
        let _ = ready_rx.recv_timeout(Duration::from_secs(10));
        RawPeer {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for RawPeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A hand-built UPDATE (what an encoder that checks would refuse to write): ORIGIN IGP,
/// AS_PATH `[asn]` (4-octet), and either IPv4 NLRI with NEXT_HOP `nh4` or an MP_REACH_NLRI
/// of IPv6 `prefixes` with next hop `nh6`. Prefixes as (address bytes, length).
pub fn raw_update(
    asn: u32,
    nh4: Option<[u8; 4]>,
    nh6: Option<[u8; 16]>,
    prefixes: &[(&[u8], u8)],
) -> Vec<u8> {
    let nlri: Vec<u8> = prefixes
        .iter()
        .flat_map(|(a, len)| {
            let mut v = vec![*len];
            v.extend_from_slice(&a[..(*len as usize).div_ceil(8)]);
            v
        })
        .collect();
    let mut attrs = vec![0x40, 1, 1, 0, 0x40, 2, 6, 2, 1];
    attrs.extend_from_slice(&asn.to_be_bytes());
    let mut tail = Vec::new();
    if let Some(nh) = nh4 {
        attrs.extend_from_slice(&[0x40, 3, 4]);
        attrs.extend_from_slice(&nh);
        tail = nlri;
    } else if let Some(nh) = nh6 {
        let mut mp = vec![0, 2, 1, 16];
        mp.extend_from_slice(&nh);
        mp.push(0);
        mp.extend(nlri);
        attrs.extend_from_slice(&[0x90, 14]);
        attrs.extend_from_slice(&(mp.len() as u16).to_be_bytes());
        attrs.extend(mp);
    }
    let mut body = vec![0, 0];
    body.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    body.extend(attrs);
    body.extend(tail);
    message(2, &body)
}
