//! The manager task: owns the peer table and the listening sockets, routes accepted
//! connections to their peer (and refuses unknown sources), and applies reloads and local
//! route changes. It answers no status query: status is read off the board.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::msg::LocalRoute;
use super::msg::{
    AliveGuard, Board, OutQueue, PeerCmd, RibEvent, RibInput, RibOutput, RibQuery, SpeakerCmd,
};
use super::peer::{PeerHandle, PeerTask};
use super::rib_task::RibTask;
use super::sockopt;
use super::table::TableConfig;
use super::{Error, PeerConfig, PeerRange, SpeakerConfig};
use crate::fsm::State;
use crate::policy::Source;
use crate::rib::PeerId;
use crate::wire::{NotificationMsg, codes};

struct Listener {
    /// Raw fd kept to set MD5 keys per peer; the socket itself lives in the accept task.
    fd: std::os::fd::RawFd,
    v6: bool,
    task: tokio::task::JoinHandle<()>,
}

struct Manager {
    cfg: SpeakerConfig,
    peers: HashMap<String, PeerHandle>,
    next_id: PeerId,
    listeners: Vec<Listener>,
    rib: mpsc::Sender<RibInput>,
    board: Arc<Board>,
    ranges: Vec<PeerRange>,
    /// The dynamic peers among `peers`, by name.
    dynamic: HashMap<String, Dynamic>,
}

struct Dynamic {
    range: String,
    since: tokio::time::Instant,
}

pub(crate) async fn spawn(
    cfg: SpeakerConfig,
    peers: Vec<PeerConfig>,
    local: Vec<(Source, Vec<LocalRoute>)>,
    cmds: mpsc::Receiver<SpeakerCmd>,
    out_tx: mpsc::Sender<RibOutput>,
    board: Arc<Board>,
) -> Result<mpsc::Sender<RibQuery>, Error> {
    let (acc_tx, acc_rx) = mpsc::channel(64);
    let listeners = listen(&cfg, acc_tx)?;
    let stale_time = cfg
        .graceful_restart
        .as_ref()
        .map(|g| g.stale_time)
        .unwrap_or(360);
    let (rib, queries) = RibTask::spawn(
        TableConfig {
            local_asn: cfg.asn,
            router_id: cfg.router_id,
            cluster_id: cfg.cluster_id,
            max_paths: cfg.max_paths,
            sync_timeout_ms: cfg.sync_timeout.as_millis() as u64,
            stale_time_ms: stale_time as u64 * 1000,
            initial_peers: (0..peers.len() as PeerId).collect(),
        },
        out_tx,
        board.clone(),
    );
    board
        .manager_alive
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let mut m = Manager {
        cfg,
        peers: HashMap::new(),
        next_id: 0,
        listeners,
        rib,
        board,
        ranges: Vec::new(),
        dynamic: HashMap::new(),
    };
    m.rib(RibEvent::NodeAddresses {
        addresses: m.cfg.node_addresses.clone(),
    })
    .await;
    for (source, routes) in local {
        m.rib(RibEvent::SetLocal { source, routes }).await;
    }
    for p in peers {
        m.add_peer(p).await;
    }
    tokio::spawn(tracing::Instrument::instrument(
        m.run(cmds, acc_rx),
        tracing::info_span!("speaker"),
    ));
    Ok(queries)
}

fn listen(
    cfg: &SpeakerConfig,
    accepted: mpsc::Sender<(TcpStream, SocketAddr)>,
) -> Result<Vec<Listener>, Error> {
    let addrs: Vec<IpAddr> = if cfg.listen_addresses.is_empty() {
        vec![
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        ]
    } else {
        cfg.listen_addresses.clone()
    };
    let mut out = Vec::new();
    for ip in addrs {
        let addr = SocketAddr::new(ip, cfg.listen_port);
        let err = |source| Error::Listen { addr, source };
        let v6 = ip.is_ipv6();
        let sock = Socket::new(
            if v6 { Domain::IPV6 } else { Domain::IPV4 },
            Type::STREAM,
            Some(Protocol::TCP),
        )
        .map_err(err)?;
        if v6 {
            sock.set_only_v6(true).map_err(err)?;
        }
        sock.set_reuse_address(true).map_err(err)?;
        sock.set_nonblocking(true).map_err(err)?;
        if let Err(e) = sock.bind(&addr.into()) {
            // No IPv6 in this namespace is not a reason to fail when listening everywhere.
            if v6 && cfg.listen_addresses.is_empty() {
                warn!(error = %e, "not listening on IPv6");
                continue;
            }
            return Err(err(e));
        }
        sock.listen(128).map_err(err)?;
        let std_listener: std::net::TcpListener = sock.into();
        let listener = TcpListener::from_std(std_listener).map_err(err)?;
        let fd = listener.as_raw_fd();
        let tx = accepted.clone();
        let task = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((s, a)) => {
                        if tx.send((s, a)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        info!(%addr, "listening");
        out.push(Listener { fd, v6, task });
    }
    Ok(out)
}

/// The peer address as configured, with IPv4-mapped IPv6 addresses turned back into IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

struct Fd(std::os::fd::RawFd);
impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0
    }
}

impl Manager {
    fn set_listener_md5(&self, peer: &PeerConfig, key: &[u8]) {
        for l in &self.listeners {
            if l.v6 == peer.address.is_ipv6()
                && let Err(e) = sockopt::set_md5(&Fd(l.fd), peer.address, key)
            {
                warn!(peer = %peer.name, error = %e, "cannot set TCP MD5 key on the listener");
            }
        }
    }

    async fn add_peer(&mut self, cfg: PeerConfig) {
        let id = self.next_id;
        self.next_id += 1;
        self.spawn_peer(id, cfg).await;
    }

    async fn rib(&self, ev: RibEvent) {
        let _ = self.rib.send(RibInput::Event(ev)).await;
    }

    fn peer_config_event(&self, id: PeerId, cfg: &PeerConfig) -> RibEvent {
        RibEvent::PeerConfig {
            id,
            name: cfg.name.clone(),
            address: cfg.address,
            ebgp: cfg.ebgp(self.cfg.asn),
            rr_client: cfg.route_reflector_client,
            import: cfg.import.clone(),
            export: cfg.export.clone(),
        }
    }

    async fn spawn_peer(&mut self, id: PeerId, cfg: PeerConfig) {
        if let Some(k) = &cfg.md5_key {
            self.set_listener_md5(&cfg, k);
        }
        // The rib task learns of the peer (its mailbox, its policies) before the peer can
        // send it anything.
        let queue = Arc::new(OutQueue::default());
        let _ = self.rib.send(RibInput::Queue(id, queue.clone())).await;
        self.rib(self.peer_config_event(id, &cfg)).await;
        let h = PeerTask::spawn(id, cfg.clone(), self.cfg.clone(), self.rib.clone(), queue);
        let _ = h.cmd.try_send(PeerCmd::Start);
        self.board
            .peers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(cfg.name.clone(), h.shared.clone());
        self.peers.insert(cfg.name.clone(), h);
    }

    async fn stop_peer(&mut self, name: &str, n: NotificationMsg, forget: bool) -> Option<PeerId> {
        let h = self.peers.remove(name)?;
        self.board
            .peers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        let (tx, rx) = oneshot::channel();
        let _ = h
            .cmd
            .send(PeerCmd::Stop {
                notification: Some(n),
                graceful: false,
                done: Some(tx),
            })
            .await;
        let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
        h.task.abort();
        if h.cfg.md5_key.is_some() {
            self.set_listener_md5(&h.cfg, &[]);
        }
        if forget {
            self.rib(RibEvent::PeerRemoved { id: h.id }).await;
        }
        Some(h.id)
    }

    async fn run(
        mut self,
        mut cmds: mpsc::Receiver<SpeakerCmd>,
        mut accepted: mpsc::Receiver<(TcpStream, SocketAddr)>,
    ) {
        let board = self.board.clone();
        let _alive = AliveGuard(&board.manager_alive);
        let mut reap = tokio::time::interval(Duration::from_secs(1));
        reap.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = reap.tick(), if !self.dynamic.is_empty() => self.reap_dynamic().await,
                cmd = cmds.recv() => {
                    let Some(cmd) = cmd else { break };
                    if self.command(cmd).await {
                        break;
                    }
                }
                Some((stream, addr)) = accepted.recv() => self.incoming(stream, addr).await,
            }
        }
        for l in &self.listeners {
            l.task.abort();
        }
    }

    async fn incoming(&mut self, stream: TcpStream, addr: SocketAddr) {
        let ip = canonical(addr.ip());
        if let Some(p) = self.peers.values().find(|p| p.cfg.address == ip) {
            let _ = p.cmd.send(PeerCmd::Incoming(stream)).await;
            return;
        }
        let Some(range) = self.ranges.iter().find(|r| r.range.contains(&ip)) else {
            // Unknown source: refuse without a word (no OPEN, no NOTIFICATION).
            warn!(%addr, "connection from an unknown address refused");
            return;
        };
        let count = self
            .dynamic
            .values()
            .filter(|d| d.range == range.name)
            .count();
        if count >= range.max_peers as usize {
            warn!(%addr, range = %range.name, max = range.max_peers, "connection refused: the range has its maximum of peers");
            return;
        }
        let mut cfg = range.template.clone();
        cfg.name = format!("{}/{}", range.name, ip);
        cfg.address = ip;
        cfg.passive = true;
        let name = cfg.name.clone();
        info!(peer = %name, range = %range.name, "dynamic peer");
        self.dynamic.insert(
            name.clone(),
            Dynamic {
                range: range.name.clone(),
                since: tokio::time::Instant::now(),
            },
        );
        self.add_peer(cfg).await;
        if let Some(p) = self.peers.get(&name) {
            let _ = p.cmd.send(PeerCmd::Incoming(stream)).await;
        }
    }

    /// Dynamic peers whose session ended (or never came up within a minute) and of which
    /// no stale route is kept go, with their routes.
    async fn reap_dynamic(&mut self) {
        let stale: HashMap<PeerId, u64> = self
            .board
            .rib
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .peers
            .iter()
            .map(|(id, (c, _))| (*id, c.stale))
            .collect();
        let mut gone = Vec::new();
        for (name, d) in &self.dynamic {
            let Some(h) = self.peers.get(name) else {
                gone.push(name.clone());
                continue;
            };
            let (state, ever_up) = {
                let s = h.shared.status.lock().unwrap_or_else(|e| e.into_inner());
                (s.state, s.established_count > 0)
            };
            let waited = d.since.elapsed() > Duration::from_secs(60);
            if state != State::Established
                && (ever_up || waited)
                && stale.get(&h.id).copied().unwrap_or(0) == 0
            {
                gone.push(name.clone());
            }
        }
        self.drop_dynamic(gone, "dynamic peer gone: its session ended")
            .await;
    }

    /// Stop these dynamic peers (Cease, peer de-configured) and forget them and their routes.
    async fn drop_dynamic(&mut self, names: Vec<String>, why: &str) {
        for name in names {
            info!(peer = %name, "{why}");
            self.dynamic.remove(&name);
            self.stop_peer(
                &name,
                NotificationMsg::cease(codes::cease::PEER_DECONFIGURED),
                true,
            )
            .await;
        }
    }

    async fn set_ranges(&mut self, ranges: Vec<PeerRange>) {
        let gone: Vec<String> = self
            .dynamic
            .iter()
            .filter(|(name, d)| {
                let Some(h) = self.peers.get(*name) else {
                    return true;
                };
                match ranges.iter().find(|r| r.name == d.range) {
                    None => true,
                    Some(r) => {
                        let before = self.ranges.iter().find(|o| o.name == d.range);
                        !r.range.contains(&h.cfg.address) || before != Some(r)
                    }
                }
            })
            .map(|(n, _)| n.clone())
            .collect();
        self.drop_dynamic(gone, "dynamic peer's range changed or removed")
            .await;
        self.ranges = ranges;
    }

    /// Returns true when the manager must stop.
    async fn command(&mut self, cmd: SpeakerCmd) -> bool {
        match cmd {
            SpeakerCmd::SetPeers(new, done) => {
                self.set_peers(new).await;
                let _ = done.send(());
            }
            SpeakerCmd::SetRanges(ranges, done) => {
                self.set_ranges(ranges).await;
                let _ = done.send(());
            }
            SpeakerCmd::SetLocal {
                source,
                routes,
                done,
            } => {
                self.rib(RibEvent::SetLocal { source, routes }).await;
                // Answered by the rib task once the changes are on the peers' sockets; we
                // do not wait for it.
                let _ = self.rib.send(RibInput::Flushed(done)).await;
            }
            SpeakerCmd::NodeAddresses(addresses) => {
                self.rib(RibEvent::NodeAddresses { addresses }).await;
            }
            SpeakerCmd::Underlay(routes) => {
                self.rib(RibEvent::Underlay { routes }).await;
            }
            SpeakerCmd::Liveness {
                peer,
                up,
                control_plane_independent,
            } => {
                // The peer task never waits on the manager: awaiting room in its queue is
                // safe.
                if let Some(h) = self.peers.get(&peer) {
                    let _ = h
                        .cmd
                        .send(PeerCmd::Liveness {
                            up,
                            control_plane_independent,
                        })
                        .await;
                }
            }
            SpeakerCmd::Shutdown { graceful, done } => {
                let mut waits = Vec::new();
                for (_, h) in self.peers.drain() {
                    let (tx, rx) = oneshot::channel();
                    let _ = h
                        .cmd
                        .send(PeerCmd::Stop {
                            notification: None,
                            graceful,
                            done: Some(tx),
                        })
                        .await;
                    waits.push(rx);
                }
                for w in waits {
                    let _ = tokio::time::timeout(Duration::from_secs(5), w).await;
                }
                // Let the writers flush the NOTIFICATIONs.
                tokio::time::sleep(Duration::from_millis(100)).await;
                let _ = done.send(());
                return true;
            }
        }
        false
    }

    async fn set_peers(&mut self, new: Vec<PeerConfig>) {
        let mut keep = HashMap::new();
        for p in &new {
            keep.insert(p.name.clone(), p.clone());
        }
        // Removed peers: Cease, peer de-configured (RFC 4486).
        // Dynamic peers are not in the list: their ranges are.
        let gone: Vec<String> = self
            .peers
            .keys()
            .filter(|n| !keep.contains_key(*n) && !self.dynamic.contains_key(*n))
            .cloned()
            .collect();
        for name in gone {
            info!(peer = %name, "peer removed");
            self.stop_peer(
                &name,
                NotificationMsg::cease(codes::cease::PEER_DECONFIGURED),
                true,
            )
            .await;
        }
        for p in new {
            match self.peers.get_mut(&p.name) {
                None => {
                    info!(peer = %p.name, "peer added");
                    self.add_peer(p).await;
                }
                Some(h) if h.cfg == p => {}
                Some(h) if h.cfg.only_policy_differs(&p) => {
                    info!(peer = %p.name, "policy changed: applied without a reset");
                    h.cfg = p.clone();
                    h.shared
                        .status
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .route_reflector_client = p.route_reflector_client;
                    let id = h.id;
                    let ev = self.peer_config_event(id, &p);
                    self.rib(ev).await;
                }
                Some(_) => {
                    info!(peer = %p.name, "peer changed: restarting its session");
                    let same_address =
                        self.peers.get(&p.name).map(|h| h.cfg.address) == Some(p.address);
                    let id = self
                        .stop_peer(
                            &p.name,
                            NotificationMsg::cease(codes::cease::OTHER_CONFIG_CHANGE),
                            !same_address,
                        )
                        .await;
                    match id {
                        Some(id) if same_address => self.spawn_peer(id, p).await,
                        _ => self.add_peer(p).await,
                    }
                }
            }
        }
    }
}
