//! One TCP connection of a peer: a reader task that frames messages off the socket and a
//! writer task that sends the session's own messages and, once the session is Established,
//! the routes waiting in the peer's [`OutQueue`], as fast as the peer's TCP window takes
//! them. The reader notes the time of the last message it saw, so that a peer task slowed
//! down by a busy RIB never mistakes a live peer for a dead one: the hold timer counts from
//! the socket, not from the queue.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::msg::{ConnEvent, ConnId, OutBatch, OutQueue, PeerCounters, WriterMsg};
use super::sockopt::{self, TtlPolicy};
use crate::policy::OutNextHop;
use crate::wire::{self, Afi, Codec, NextHop, Reach, UpdateMsg};

/// Monotonic milliseconds since the first call, for cheap atomic timestamps.
pub(crate) fn now_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

pub(crate) struct Conn {
    pub id: ConnId,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// `now_ms()` of the last message read.
    pub last_rx: Arc<AtomicU64>,
    writer: mpsc::UnboundedSender<WriterMsg>,
    reader: JoinHandle<()>,
}

impl Conn {
    /// Start the reader and writer tasks of an established TCP stream.
    pub fn spawn(
        stream: TcpStream,
        id: ConnId,
        events: mpsc::Sender<(ConnId, ConnEvent)>,
        queue: Arc<OutQueue>,
        counters: Arc<PeerCounters>,
    ) -> io::Result<Conn> {
        stream.set_nodelay(true)?;
        let local = stream.local_addr()?;
        let remote = stream.peer_addr()?;
        let (mut rd, wr) = stream.into_split();
        let last_rx = Arc::new(AtomicU64::new(now_ms()));
        let rx_stamp = last_rx.clone();
        let reader = tokio::spawn(async move {
            // None while the peer is quiet, large while it streams: the next buffer is
            // 64 KiB after a read that filled the space it had, 4 KiB otherwise.
            let mut buf = BytesMut::new();
            let mut streaming = false;
            loop {
                // Hand out every whole message already buffered.
                loop {
                    match wire::frame(&buf, &Codec::INITIAL) {
                        Ok(Some(len)) => {
                            rx_stamp.store(now_ms(), Ordering::Relaxed);
                            let msg = buf.split_to(len).freeze();
                            if events.send((id, ConnEvent::Message(msg))).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            let _ = events.send((id, ConnEvent::Malformed(Box::new(e)))).await;
                            return;
                        }
                    }
                }
                // Quiet and nothing half-read: hold no buffer while waiting (a thousand idle
                // sessions would otherwise hold a thousand), take one once data is there.
                if !streaming && buf.is_empty() {
                    buf = BytesMut::new();
                    if let Err(e) = rd.readable().await {
                        let _ = events.send((id, ConnEvent::Closed(Some(e)))).await;
                        return;
                    }
                }
                let room = if streaming { 64 * 1024 } else { 4096 };
                if buf.capacity() - buf.len() < room / 2 {
                    buf.reserve(room);
                }
                let space = buf.capacity() - buf.len();
                let read = rd.read_buf(&mut buf).await;
                streaming = matches!(read, Ok(n) if n == space);
                // ACK at once: a sender with Nagle's algorithm on (BIRD, for one) holds the
                // short tail segment of each message until our ACK comes back, and a delayed
                // ACK would stall every UPDATE for milliseconds. Quick-ACK mode is not
                // sticky in Linux, so it is set again after each read.
                quickack(&rd);
                tracing::trace!(read = ?read.as_ref().ok(), buffered = buf.len(), "socket read");
                match read {
                    Ok(0) => {
                        let _ = events.send((id, ConnEvent::Closed(None))).await;
                        return;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = events.send((id, ConnEvent::Closed(Some(e)))).await;
                        return;
                    }
                }
            }
        });
        let (wtx, wrx) = mpsc::unbounded_channel::<WriterMsg>();
        tokio::spawn(writer(wr, wrx, queue, counters));
        Ok(Conn {
            id,
            local,
            remote,
            last_rx,
            writer: wtx,
            reader,
        })
    }

    pub fn send(&self, bytes: Vec<u8>) {
        let _ = self.writer.send(WriterMsg::Data(bytes));
    }

    /// Tell the writer the session is Established on this connection.
    pub fn established(&self, m: WriterMsg) {
        let _ = self.writer.send(m);
    }

    /// Stop reading; close once what is queued has been written.
    pub fn close(self) {
        self.reader.abort();
        let _ = self.writer.send(WriterMsg::Close);
    }
}

/// Most routes taken from the mailbox per write: a KEEPALIVE never waits behind more.
const ROUTES_PER_WRITE: usize = 4096;

async fn writer(
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    mut ctl: mpsc::UnboundedReceiver<WriterMsg>,
    queue: Arc<OutQueue>,
    counters: Arc<PeerCounters>,
) {
    // Set once the session is Established on this connection.
    let mut up: Option<(u64, Codec, Option<NextHop>, Option<NextHop>)> = None;
    let mut more = false;
    loop {
        tokio::select! {
            biased;
            m = ctl.recv() => match m {
                Some(WriterMsg::Data(d)) => {
                    if wr.write_all(&d).await.is_err() {
                        return;
                    }
                }
                Some(WriterMsg::Established(e)) => {
                    up = Some((e.session, e.codec, e.next_hop_v4, e.next_hop_v6));
                    more = true;
                }
                Some(WriterMsg::Close) | None => break,
            },
            _ = queue.ready.notified(), if up.is_some() && !more => more = true,
            _ = std::future::ready(()), if up.is_some() && more => {
                let Some((session, codec, nh4, nh6)) = &up else { continue };
                match queue.take(*session, ROUTES_PER_WRITE) {
                    None => more = false,
                    Some(b) => {
                        let msgs = encode_batch(&b, codec, *nh4, *nh6);
                        let n = msgs.len() as u64;
                        let bytes: Vec<u8> = msgs.concat();
                        if !bytes.is_empty() && wr.write_all(&bytes).await.is_err() {
                            return;
                        }
                        PeerCounters::add(&counters.updates_out, n);
                        PeerCounters::add(&counters.messages_out, n);
                        for w in b.written {
                            let _ = w.send(());
                        }
                    }
                }
            }
        }
    }
    // Whatever was queued before Close has been written: let it drain, then FIN.
    let _ = tokio::time::timeout(Duration::from_secs(2), wr.shutdown()).await;
}

/// Most prefixes of one route in a batch for its encoding to be kept and shared.
const SHARED_ENCODING_MAX: usize = 2;

/// The UPDATEs for one drain of the mailbox: withdrawals, then the announcements grouped by
/// shared route (one attribute set, many prefixes), then End-of-RIB markers.
pub(crate) fn encode_batch(
    b: &OutBatch,
    codec: &Codec,
    nh4: Option<NextHop>,
    nh6: Option<NextHop>,
) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let withdrawn: Vec<ipnet::IpNet> = b
        .routes
        .iter()
        .filter(|(_, r)| r.is_none())
        .map(|(p, _)| *p)
        .collect();
    if !withdrawn.is_empty() {
        out.extend(wire::encode_updates(
            &UpdateMsg {
                withdrawn,
                ..Default::default()
            },
            codec,
        ));
    }
    // Group by the shared route, keeping the order of first appearance.
    let mut groups: Vec<(
        &crate::policy::OutRoute,
        Vec<ipnet::IpNet>,
        Vec<ipnet::IpNet>,
    )> = Vec::new();
    let mut index: std::collections::HashMap<*const crate::policy::OutRoute, usize> =
        std::collections::HashMap::new();
    for (p, r) in &b.routes {
        let Some(r) = r else { continue };
        let i = *index.entry(Arc::as_ptr(r)).or_insert_with(|| {
            groups.push((r, Vec::new(), Vec::new()));
            groups.len() - 1
        });
        match p {
            ipnet::IpNet::V4(_) => groups[i].1.push(*p),
            ipnet::IpNet::V6(_) => groups[i].2.push(*p),
        }
    }
    for (route, v4, v6) in groups {
        let encode = |v4: Vec<ipnet::IpNet>, v6: Vec<ipnet::IpNet>| {
            let mut reach = Vec::new();
            for (afi, list, local) in [(Afi::Ipv4, v4, nh4), (Afi::Ipv6, v6, nh6)] {
                if list.is_empty() {
                    continue;
                }
                let next_hop = match route.next_hop {
                    OutNextHop::Local => local,
                    OutNextHop::Unchanged(nh) => Some(nh),
                };
                // No usable next hop for the family on this session: not advertised (the
                // peer task warned when the session came up).
                if let Some(next_hop) = next_hop {
                    reach.push(Reach {
                        afi,
                        next_hop,
                        prefixes: list,
                    });
                }
            }
            if reach.is_empty() {
                return Vec::new();
            }
            wire::encode_updates(
                &UpdateMsg {
                    reach,
                    attrs: route.attrs.clone(),
                    ..Default::default()
                },
                codec,
            )
        };
        if v4.len() + v6.len() <= SHARED_ENCODING_MAX {
            // A route with a prefix or two (what a reflector sends each client for each
            // originator): the next peer with the same session settings reuses the bytes.
            let key = wire::EncodeKey {
                codec: *codec,
                next_hop_v4: nh4,
                next_hop_v6: nh6,
                prefixes: v4.iter().chain(v6.iter()).copied().collect(),
            };
            out.extend(route.encoded.get_or(key, || encode(v4, v6)).iter().cloned());
        } else {
            out.extend(encode(v4, v6));
        }
    }
    for afi in &b.end_of_rib {
        out.extend(wire::encode_updates(&UpdateMsg::end_of_rib(*afi), codec));
    }
    out
}

fn quickack(rd: &tokio::net::tcp::OwnedReadHalf) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: integer socket option on a socket we own, exact size passed.
    unsafe {
        libc::setsockopt(
            rd.as_ref().as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// How to open our side of a session.
#[derive(Debug, Clone)]
pub(crate) struct ConnectOpts {
    pub remote: SocketAddr,
    pub local: Option<IpAddr>,
    pub md5: Option<Arc<[u8]>>,
    pub ttl: TtlPolicy,
}

/// Connect with the session's TCP options set before the SYN leaves.
pub(crate) async fn connect(o: ConnectOpts) -> io::Result<TcpStream> {
    let v6 = o.remote.is_ipv6();
    let sock = Socket::new(
        if v6 { Domain::IPV6 } else { Domain::IPV4 },
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    sock.set_nonblocking(true)?;
    if let Some(key) = &o.md5 {
        sockopt::set_md5(&sock, o.remote.ip(), key)?;
    }
    o.ttl.apply(&sock, v6)?;
    if let Some(local) = o.local {
        sock.bind(&SocketAddr::new(local, 0).into())?;
    }
    let std_stream: std::net::TcpStream = sock.into();
    let tsock = TcpSocket::from_std_stream(std_stream);
    tsock.connect(o.remote).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::PathAttrs;

    fn batch(routes: Vec<(&str, &Arc<crate::policy::OutRoute>)>) -> OutBatch {
        OutBatch {
            routes: routes
                .into_iter()
                .map(|(p, r)| (p.parse().unwrap(), Some(r.clone())))
                .collect(),
            ..Default::default()
        }
    }

    /// What a reflector sends each client for one originator is encoded once and shared;
    /// the bytes are those a fresh encoding gives, and a session that encodes differently
    /// (2-octet AS numbers) gets its own.
    #[test]
    fn a_route_with_a_prefix_or_two_is_encoded_once_for_every_peer() {
        let route = |asn| {
            Arc::new(crate::policy::OutRoute::new(
                PathAttrs {
                    as_path: crate::wire::AsPath::sequence(vec![asn]),
                    originator_id: Some("10.0.0.7".parse().unwrap()),
                    ..Default::default()
                },
                OutNextHop::Unchanged(NextHop::V4("10.0.0.7".parse().unwrap())),
            ))
        };
        let r = route(4_200_000_000);
        let codec = Codec {
            asn4: true,
            extended_message: false,
            ibgp: true,
        };
        let first = encode_batch(&batch(vec![("100.64.7.0/24", &r)]), &codec, None, None);
        let kept = r.encoded.kept().unwrap();
        let second = encode_batch(&batch(vec![("100.64.7.0/24", &r)]), &codec, None, None);
        assert_eq!(first, second);
        assert!(Arc::ptr_eq(&kept, &r.encoded.kept().unwrap()));
        // The same as a route of its own, never shared, gives.
        let fresh = encode_batch(
            &batch(vec![("100.64.7.0/24", &route(4_200_000_000))]),
            &codec,
            None,
            None,
        );
        assert_eq!(first, fresh);
        // Another codec, another prefix: encoded anew.
        let two = Codec {
            asn4: false,
            ..codec
        };
        assert_ne!(
            encode_batch(&batch(vec![("100.64.7.0/24", &r)]), &two, None, None),
            first
        );
        assert_ne!(
            encode_batch(&batch(vec![("100.64.8.0/24", &r)]), &codec, None, None),
            first
        );
    }
}
