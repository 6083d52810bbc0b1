//! The manager task: owns the peer table and the listening sockets, routes accepted
//! connections to their peer (and refuses unknown sources), applies reloads, and answers
//! status queries by asking the peers and the RIB.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::peer::{PeerCmd, PeerHandle, PeerTask};
use super::rib_task::{Query, RibEvent, RibOutput, RibTask};
use super::sockopt;
use super::{Error, PeerConfig, SpeakerCmd, SpeakerConfig, SpeakerStatus};
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
    rib: mpsc::Sender<RibEvent>,
    originated: Arc<Vec<IpNet>>,
}

pub(crate) async fn spawn(
    cfg: SpeakerConfig,
    peers: Vec<PeerConfig>,
    originated: Vec<IpNet>,
    cmds: mpsc::Receiver<SpeakerCmd>,
) -> Result<mpsc::Receiver<RibOutput>, Error> {
    // Few batches in flight to the consumer: a slow FIB holds the RIB back (and, through
    // it, the peers' sockets) instead of piling up changes in memory.
    let (out_tx, out_rx) = mpsc::channel(4);
    let (acc_tx, acc_rx) = mpsc::channel(64);
    let listeners = listen(&cfg, acc_tx)?;
    let initial: Vec<PeerId> = (0..peers.len() as PeerId).collect();
    let stale_time = cfg
        .graceful_restart
        .as_ref()
        .map(|g| g.stale_time)
        .unwrap_or(360);
    let rib = RibTask::spawn(
        cfg.max_paths,
        initial,
        cfg.sync_timeout,
        Duration::from_secs(stale_time as u64),
        out_tx,
    );
    let mut m = Manager {
        cfg,
        peers: HashMap::new(),
        next_id: 0,
        listeners,
        rib,
        originated: Arc::new(originated),
    };
    for p in peers {
        m.add_peer(p);
    }
    tokio::spawn(tracing::Instrument::instrument(
        m.run(cmds, acc_rx),
        tracing::info_span!("speaker"),
    ));
    Ok(out_rx)
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

    fn add_peer(&mut self, cfg: PeerConfig) {
        let id = self.next_id;
        self.next_id += 1;
        self.spawn_peer(id, cfg);
    }

    fn spawn_peer(&mut self, id: PeerId, cfg: PeerConfig) {
        if let Some(k) = &cfg.md5_key {
            self.set_listener_md5(&cfg, k);
        }
        let h = PeerTask::spawn(
            id,
            cfg.clone(),
            self.cfg.clone(),
            self.originated.clone(),
            self.rib.clone(),
        );
        let _ = h.cmd.try_send(PeerCmd::Start);
        self.peers.insert(cfg.name.clone(), h);
    }

    async fn stop_peer(&mut self, name: &str, n: NotificationMsg, forget: bool) -> Option<PeerId> {
        let h = self.peers.remove(name)?;
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
            let _ = self.rib.send(RibEvent::Remove { id: h.id }).await;
        }
        Some(h.id)
    }

    async fn run(
        mut self,
        mut cmds: mpsc::Receiver<SpeakerCmd>,
        mut accepted: mpsc::Receiver<(TcpStream, SocketAddr)>,
    ) {
        loop {
            tokio::select! {
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
        match self.peers.values().find(|p| p.cfg.address == ip) {
            Some(p) => {
                let _ = p.cmd.send(PeerCmd::Incoming(stream)).await;
            }
            None => {
                // Unknown source: refuse without a word (no OPEN, no NOTIFICATION).
                warn!(%addr, "connection from an unknown address refused");
                drop(stream);
            }
        }
    }

    /// Returns true when the manager must stop.
    async fn command(&mut self, cmd: SpeakerCmd) -> bool {
        match cmd {
            SpeakerCmd::SetPeers(new, done) => {
                self.set_peers(new).await;
                let _ = done.send(());
            }
            SpeakerCmd::SetOriginated(o) => {
                self.originated = Arc::new(o);
                for p in self.peers.values() {
                    let _ = p
                        .cmd
                        .send(PeerCmd::SetOriginated(self.originated.clone()))
                        .await;
                }
            }
            SpeakerCmd::Status(tx) => {
                let st = self.status().await;
                let _ = tx.send(st);
            }
            SpeakerCmd::Routes(tx) => {
                let _ = self.rib.send(RibEvent::Query(Query::Routes(tx))).await;
            }
            SpeakerCmd::Lookup(p, tx) => {
                let _ = self.rib.send(RibEvent::Query(Query::Lookup(p, tx))).await;
            }
            SpeakerCmd::Selected(tx) => {
                let _ = self.rib.send(RibEvent::Query(Query::Selected(tx))).await;
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
        let gone: Vec<String> = self
            .peers
            .keys()
            .filter(|n| !keep.contains_key(*n))
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
                    self.add_peer(p);
                }
                Some(h) if h.cfg == p => {}
                Some(h) if h.cfg.only_policy_differs(&p) => {
                    info!(peer = %p.name, "import policy changed: re-applied without a reset");
                    let _ = h.cmd.send(PeerCmd::SetPolicy(p.import.clone())).await;
                    h.cfg = p;
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
                        Some(id) if same_address => self.spawn_peer(id, p),
                        _ => self.add_peer(p),
                    }
                }
            }
        }
    }

    async fn status(&self) -> SpeakerStatus {
        let mut peers = Vec::new();
        for h in self.peers.values() {
            let (tx, rx) = oneshot::channel();
            if h.cmd.send(PeerCmd::Status(tx)).await.is_ok()
                && let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(2), rx).await
            {
                peers.push((h.id, s));
            }
        }
        let (ctx, crx) = oneshot::channel();
        let (stx, srx) = oneshot::channel();
        let _ = self.rib.send(RibEvent::Query(Query::Counts(ctx))).await;
        let _ = self.rib.send(RibEvent::Query(Query::Summary(stx))).await;
        let counts = crx.await.unwrap_or_default();
        let (loc_rib, synced) = srx.await.unwrap_or(((0, 0), false));
        let mut peers: Vec<_> = peers
            .into_iter()
            .map(|(id, mut s)| {
                s.prefixes = counts.get(&id).copied().unwrap_or_default();
                s
            })
            .collect();
        peers.sort_by(|a, b| a.name.cmp(&b.name));
        SpeakerStatus {
            asn: self.cfg.asn,
            router_id: self.cfg.router_id,
            originated: self.originated.to_vec(),
            peers,
            loc_rib,
            synced,
        }
    }
}
