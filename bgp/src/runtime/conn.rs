//! One TCP connection of a peer: a reader task that frames messages off the socket and a
//! writer task that sends what the peer task queues. The reader notes the time of the last
//! message it saw, so that a peer task slowed down by a busy RIB never mistakes a live peer
//! for a dead one: the hold timer counts from the socket, not from the queue.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::sockopt::{self, TtlPolicy};
use crate::fsm::Dir;
use crate::wire::{self, Codec, DecodeError};

/// Which connection an event is about: its slot and a generation number, so that events of
/// a connection already replaced are recognised and dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConnId {
    pub dir: Dir,
    pub generation: u64,
}

/// What a connection's reader reports.
#[derive(Debug)]
pub(crate) enum ConnEvent {
    /// One whole message (header included).
    Message(Bytes),
    /// The byte stream cannot be framed; the error carries the NOTIFICATION.
    Malformed(DecodeError),
    /// End of stream or a socket error.
    Closed(Option<io::Error>),
}

/// Monotonic milliseconds since the first call, for cheap atomic timestamps.
pub(crate) fn now_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

enum WriterMsg {
    Data(Vec<u8>),
    Close,
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
    ) -> io::Result<Conn> {
        stream.set_nodelay(true)?;
        let local = stream.local_addr()?;
        let remote = stream.peer_addr()?;
        let (mut rd, mut wr) = stream.into_split();
        let last_rx = Arc::new(AtomicU64::new(now_ms()));
        let rx_stamp = last_rx.clone();
        let reader = tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(64 * 1024);
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
                            let _ = events.send((id, ConnEvent::Malformed(e))).await;
                            return;
                        }
                    }
                }
                if buf.capacity() - buf.len() < 8192 {
                    buf.reserve(64 * 1024);
                }
                let read = rd.read_buf(&mut buf).await;
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
        let (wtx, mut wrx) = mpsc::unbounded_channel::<WriterMsg>();
        tokio::spawn(async move {
            while let Some(m) = wrx.recv().await {
                match m {
                    WriterMsg::Data(d) => {
                        if wr.write_all(&d).await.is_err() {
                            return;
                        }
                    }
                    WriterMsg::Close => break,
                }
            }
            // Whatever was queued before Close has been written: let it drain, then FIN.
            let _ = tokio::time::timeout(Duration::from_secs(2), wr.shutdown()).await;
        });
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

    /// Stop reading; close once what is queued has been written.
    pub fn close(self) {
        self.reader.abort();
        let _ = self.writer.send(WriterMsg::Close);
    }
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
