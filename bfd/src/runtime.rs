//! The BFD shell: one tokio task owns every session, its sockets and its timers.
//!
//! ```text
//!   Handle::add / remove / reconfigure ──cmd (bounded 64)──▶ ┌──────────────┐
//!   UDP 3784 (single-hop), 4784 (multihop) ── datagrams ───▶ │  BFD task    │──▶ UDP to peer
//!                                                            │  Session FSMs│    (own socket per
//!   per session: watch::Receiver<Status> ◀── latest value ── └──────────────┘     session, TTL 255)
//! ```
//!
//! Nothing here waits on a watcher: status goes out through `watch` channels, which keep only
//! the latest value, so a slow BGP task never holds BFD back. Commands come in on a bounded
//! channel; a caller finding it full waits (they are configuration changes, rare).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::packet::{ControlMsg, Diag, State};
use crate::session::{Action, Config, Input, Session, Timer, jittered};

/// UDP port of single-hop BFD (RFC 5881).
pub const SINGLE_HOP_PORT: u16 = 3784;
/// UDP port of multihop BFD (RFC 5883).
pub const MULTIHOP_PORT: u16 = 4784;

/// Which session: the two ends (and the kind of path).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    pub local: IpAddr,
    pub remote: IpAddr,
    pub multihop: bool,
}

/// What a session's watchers see, updated at every change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub state: State,
    pub local_discr: u32,
    pub remote_discr: u32,
    /// Our transmit interval and the peer's, µs (negotiated).
    pub tx_us: u64,
    pub rx_us: u64,
    pub detection_us: u64,
    /// The peer's C bit.
    pub remote_control_plane_independent: bool,
    pub flaps: u64,
    /// The diagnostic of the last time the session left Up.
    pub last_down: Diag,
    /// Packets refused (bad format, wrong discriminator, TTL).
    pub discarded: u64,
}

enum Command {
    Add(Key, Config, watch::Sender<Status>),
    Remove(Key),
    Reconfigure(Key, Config),
}

/// Cheap to clone; the BFD task stops when every handle is gone.
#[derive(Clone)]
pub struct Handle {
    /// Sent by whoever configures sessions, received by the BFD task; bound 64, a full
    /// channel makes the sender wait.
    cmd: mpsc::Sender<Command>,
}

impl Handle {
    /// Start (or restart) the session `key`; its status from now on.
    pub async fn add(&self, key: Key, cfg: Config) -> watch::Receiver<Status> {
        let (tx, rx) = watch::channel(Status {
            state: State::Down,
            local_discr: 0,
            remote_discr: 0,
            tx_us: 0,
            rx_us: 0,
            detection_us: 0,
            remote_control_plane_independent: false,
            flaps: 0,
            last_down: Diag::None,
            discarded: 0,
        });
        let _ = self.cmd.send(Command::Add(key, cfg, tx)).await;
        rx
    }

    pub async fn remove(&self, key: Key) {
        let _ = self.cmd.send(Command::Remove(key)).await;
    }

    pub async fn reconfigure(&self, key: Key, cfg: Config) {
        let _ = self.cmd.send(Command::Reconfigure(key, cfg)).await;
    }
}

struct Entry {
    fsm: Session,
    sock: UdpSocket,
    status: watch::Sender<Status>,
    tx_at: Option<Instant>,
    detect_at: Option<Instant>,
    discarded: u64,
}

/// Start the BFD task on the current runtime. Receive sockets are opened as sessions need
/// them (port 3784 or 4784, per family).
pub fn spawn() -> Handle {
    let (cmd, rx) = mpsc::channel(64);
    tokio::spawn(run(rx));
    Handle { cmd }
}

/// A receive socket: the port for all sessions of one family and kind, with the TTL (hop
/// limit) of each datagram delivered beside it.
fn listen(v6: bool, port: u16) -> io::Result<UdpSocket> {
    let std = if v6 {
        let s = std::net::UdpSocket::bind(("::", port))?;
        setsockopt(&s, libc::IPPROTO_IPV6, libc::IPV6_RECVHOPLIMIT, 1)?;
        s
    } else {
        let s = std::net::UdpSocket::bind(("0.0.0.0", port))?;
        setsockopt(&s, libc::IPPROTO_IP, libc::IP_RECVTTL, 1)?;
        s
    };
    std.set_nonblocking(true)?;
    UdpSocket::from_std(std)
}

fn setsockopt(s: &impl AsRawFd, level: i32, name: i32, v: i32) -> io::Result<()> {
    // SAFETY: an int option on a socket we own.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            name,
            (&v as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The sending socket of one session: from `local` and a source port in 49152-65535 (RFC
/// 5881 section 4), TTL 255, connected to the peer.
fn sender(key: Key, seed: &mut u64) -> io::Result<UdpSocket> {
    let port = if key.multihop {
        MULTIHOP_PORT
    } else {
        SINGLE_HOP_PORT
    };
    let mut last = None;
    for _ in 0..64 {
        let src = 49152 + (xorshift(seed) % 16384) as u16;
        match std::net::UdpSocket::bind(SocketAddr::new(key.local, src)) {
            Ok(s) => {
                if key.local.is_ipv6() {
                    setsockopt(&s, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, 255)?;
                } else {
                    setsockopt(&s, libc::IPPROTO_IP, libc::IP_TTL, 255)?;
                }
                s.connect(SocketAddr::new(key.remote, port))?;
                s.set_nonblocking(true)?;
                return UdpSocket::from_std(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free source port")))
}

fn xorshift(s: &mut u64) -> u32 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    (*s >> 32) as u32
}

/// One datagram with its source and TTL (hop limit), if the kernel said.
fn recv_with_ttl(s: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, Option<u8>)> {
    s.try_io(Interest::READABLE, || {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: zeroed plain structs, filled by the kernel within their sizes.
        let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut cmsg = [0u8; 64];
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut addr as *mut libc::sockaddr_storage).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.as_mut_ptr().cast();
        msg.msg_controllen = cmsg.len();
        // SAFETY: msg points at live buffers for the call.
        let n = unsafe { libc::recvmsg(s.as_raw_fd(), &mut msg, 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut ttl = None;
        // SAFETY: walking the control messages the kernel wrote, with its macros.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                let (l, t) = ((*c).cmsg_level, (*c).cmsg_type);
                if (l == libc::IPPROTO_IP && t == libc::IP_TTL)
                    || (l == libc::IPPROTO_IPV6 && t == libc::IPV6_HOPLIMIT)
                {
                    let v = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const i32);
                    ttl = Some(v as u8);
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        let from = match addr.ss_family as i32 {
            libc::AF_INET => {
                // SAFETY: the kernel wrote a sockaddr_in.
                let a: &libc::sockaddr_in =
                    unsafe { &*(&addr as *const _ as *const libc::sockaddr_in) };
                SocketAddr::new(
                    IpAddr::from(u32::from_be(a.sin_addr.s_addr).to_be_bytes()),
                    u16::from_be(a.sin_port),
                )
            }
            _ => {
                // SAFETY: the kernel wrote a sockaddr_in6.
                let a: &libc::sockaddr_in6 =
                    unsafe { &*(&addr as *const _ as *const libc::sockaddr_in6) };
                let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
                let ip = ip
                    .to_ipv4_mapped()
                    .map(IpAddr::V4)
                    .unwrap_or(IpAddr::V6(ip));
                SocketAddr::new(ip, u16::from_be(a.sin6_port))
            }
        };
        Ok((n as usize, from, ttl))
    })
}

struct Task {
    sessions: HashMap<Key, Entry>,
    by_discr: HashMap<u32, Key>,
    /// (v6, multihop) -> receive socket
    listeners: HashMap<(bool, bool), UdpSocket>,
    seed: u64,
}

async fn run(mut cmds: mpsc::Receiver<Command>) {
    let mut t = Task {
        sessions: HashMap::new(),
        by_discr: HashMap::new(),
        listeners: HashMap::new(),
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1,
    };
    let mut buf = [0u8; 512];
    loop {
        let next = t
            .sessions
            .values()
            .flat_map(|e| [e.tx_at, e.detect_at])
            .flatten()
            .min();
        let sleep = tokio::time::sleep_until(
            next.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600)),
        );
        let readable = async {
            if t.listeners.is_empty() {
                std::future::pending::<()>().await;
            }
            let futs: Vec<_> = t
                .listeners
                .values()
                .map(|s| Box::pin(s.readable()))
                .collect();
            let _ = futures_select_any(futs).await;
        };
        tokio::select! {
            c = cmds.recv() => match c {
                Some(c) => t.command(c),
                None => return,
            },
            () = readable => t.drain(&mut buf),
            () = sleep => t.timers(),
        }
    }
}

/// The first of several futures to finish.
async fn futures_select_any<F: std::future::Future + Unpin>(futs: Vec<F>) {
    let mut futs = futs;
    std::future::poll_fn(move |cx| {
        for f in futs.iter_mut() {
            if std::pin::Pin::new(f).poll(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    })
    .await
}

impl Task {
    fn command(&mut self, c: Command) {
        match c {
            Command::Add(key, cfg, status) => {
                self.remove(key);
                let (v6, mh) = (key.local.is_ipv6(), key.multihop);
                if let std::collections::hash_map::Entry::Vacant(v) = self.listeners.entry((v6, mh))
                {
                    match listen(v6, if mh { MULTIHOP_PORT } else { SINGLE_HOP_PORT }) {
                        Ok(s) => {
                            v.insert(s);
                        }
                        Err(e) => warn!(error = %e, "BFD receive socket"),
                    }
                }
                let sock = match sender(key, &mut self.seed) {
                    Ok(s) => s,
                    Err(e) => {
                        warn!(error = %e, remote = %key.remote, "BFD send socket");
                        return;
                    }
                };
                let mut discr = 0;
                while discr == 0 || self.by_discr.contains_key(&discr) {
                    discr = xorshift(&mut self.seed);
                }
                let mut fsm = Session::new(discr, cfg);
                let acts = fsm.start();
                self.by_discr.insert(discr, key);
                self.sessions.insert(
                    key,
                    Entry {
                        fsm,
                        sock,
                        status,
                        tx_at: None,
                        detect_at: None,
                        discarded: 0,
                    },
                );
                info!(remote = %key.remote, local = %key.local, discr, "BFD session started");
                self.apply(key, acts);
            }
            Command::Remove(key) => self.remove(key),
            Command::Reconfigure(key, cfg) => {
                if let Some(e) = self.sessions.get_mut(&key) {
                    let acts = e.fsm.handle(Input::Reconfigure(cfg));
                    self.apply(key, acts);
                }
            }
        }
    }

    fn remove(&mut self, key: Key) {
        if let Some(mut e) = self.sessions.remove(&key) {
            // Tell the peer we are going away on purpose (AdminDown), once.
            for a in e.fsm.handle(Input::AdminDown(Diag::AdminDown)) {
                if let Action::Send(m) = a {
                    let _ = e.sock.try_send(&m.encode());
                }
            }
            self.by_discr.remove(&e.fsm.local_discr());
        }
    }

    fn drain(&mut self, buf: &mut [u8]) {
        let keys: Vec<(bool, bool)> = self.listeners.keys().copied().collect();
        for lk in keys {
            while let Some(s) = self.listeners.get(&lk) {
                let (n, from, ttl) = match recv_with_ttl(s, buf) {
                    Ok(x) => x,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        debug!(error = %e, "BFD receive");
                        break;
                    }
                };
                let msg = match ControlMsg::decode(&buf[..n]) {
                    Ok(m) => m,
                    Err(e) => {
                        debug!(error = %e, %from, "BFD packet discarded");
                        continue;
                    }
                };
                let key = if msg.your_discr != 0 {
                    self.by_discr.get(&msg.your_discr).copied()
                } else {
                    self.sessions
                        .keys()
                        .find(|k| k.remote == from.ip() && k.multihop == lk.1)
                        .copied()
                };
                let Some(key) = key else {
                    debug!(%from, "BFD packet for no session");
                    continue;
                };
                let Some(e) = self.sessions.get_mut(&key) else {
                    continue;
                };
                // Single-hop: only packets sent with TTL 255 (RFC 5881 section 5).
                if key.remote != from.ip() || (!key.multihop && ttl.is_some_and(|t| t != 255)) {
                    e.discarded += 1;
                    continue;
                }
                let mut acts = Vec::new();
                if e.fsm.receive(msg, &mut acts).is_err() {
                    e.discarded += 1;
                }
                self.apply(key, acts);
            }
        }
    }

    fn timers(&mut self) {
        let now = Instant::now();
        let mut due = Vec::new();
        for (k, e) in &mut self.sessions {
            if e.detect_at.is_some_and(|t| t <= now) {
                e.detect_at = None;
                due.push((*k, Timer::Detect));
            }
            if e.tx_at.is_some_and(|t| t <= now) {
                e.tx_at = None;
                due.push((*k, Timer::Transmit));
            }
        }
        for (k, timer) in due {
            if let Some(e) = self.sessions.get_mut(&k) {
                let acts = e.fsm.handle(Input::Timer(timer));
                self.apply(k, acts);
            }
        }
    }

    fn apply(&mut self, key: Key, acts: Vec<Action>) {
        let Some(e) = self.sessions.get_mut(&key) else {
            return;
        };
        let now = Instant::now();
        for a in acts {
            match a {
                Action::Send(m) => {
                    if let Err(e) = e.sock.try_send(&m.encode()) {
                        debug!(error = %e, remote = %key.remote, "BFD send");
                    }
                }
                Action::Arm(Timer::Transmit, us) => {
                    let j = jittered(
                        us,
                        e.fsm.packet(false).detect_mult,
                        xorshift(&mut self.seed),
                    );
                    e.tx_at = Some(now + Duration::from_micros(j));
                }
                Action::Arm(Timer::Detect, us) => {
                    e.detect_at = Some(now + Duration::from_micros(us))
                }
                Action::Disarm(Timer::Transmit) => e.tx_at = None,
                Action::Disarm(Timer::Detect) => e.detect_at = None,
                Action::StateChange { from, to, diag } => {
                    info!(remote = %key.remote, from = from.name(), to = to.name(), diag = diag.describe(), "BFD state change");
                }
            }
        }
        let s = &e.fsm;
        let st = Status {
            state: s.state(),
            local_discr: s.local_discr(),
            remote_discr: s.remote_discr(),
            tx_us: s.tx_interval(),
            rx_us: s.negotiated_rx(),
            detection_us: s.detection_time(),
            remote_control_plane_independent: s.remote_control_plane_independent(),
            flaps: s.flaps(),
            last_down: s.last_down(),
            discarded: e.discarded,
        };
        e.status.send_if_modified(|old| {
            if *old != st {
                *old = st;
                true
            } else {
                false
            }
        });
    }
}
