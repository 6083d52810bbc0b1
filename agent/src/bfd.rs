//! BFD for the BGP sessions: one session per peer with `bfd` set, on petrel-bfd's runtime,
//! and a watcher per session that tells the speaker when the path goes down or comes back.
//!
//! ```text
//!   config ──apply()──▶ petrel_bfd::runtime (one task) ──watch──▶ watcher (one per peer)
//!                                                                   │ Speaker::set_liveness
//!                                                                   ▼
//!                                                      BGP manager ──▶ peer task
//! ```
//!
//! The watchers read `watch` channels (latest value only), so BFD never waits on them; a
//! watcher waits on the speaker's command queue, which never waits on a watcher. Status
//! reads the latest values from [`Bfd::views`] without asking anyone.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use ipnet::IpNet;

use petrel_bfd::State;
use petrel_bfd::runtime::{Handle, Key, Status};
use petrel_bfd::session::Config as SessionConfig;
use petrel_bgp::Speaker;
use petrel_config::{BfdConfig, PeerConfig};
use petrel_control::BfdView;
use tokio::task::JoinHandle;
use tracing::{info, warn};

struct Running {
    key: Key,
    cfg: BfdConfig,
    watcher: JoinHandle<()>,
}

pub struct Bfd {
    handle: Handle,
    running: tokio::sync::Mutex<HashMap<String, Running>>,
    /// Per peer name, as status shows it.
    views: Arc<Mutex<HashMap<String, BfdView>>>,
}

fn session_config(c: &BfdConfig) -> SessionConfig {
    SessionConfig {
        desired_min_tx: c.min_tx * 1000,
        required_min_rx: c.min_rx * 1000,
        detect_mult: c.multiplier,
        // Our routes live in the kernel and survive an agent restart.
        control_plane_independent: true,
    }
}

/// The local address of the path to `peer`: the configured one, or the kernel's choice
/// for a datagram to it (a UDP connect sends nothing).
fn local_address(p: &PeerConfig) -> std::io::Result<IpAddr> {
    if let Some(a) = p.local_address {
        return Ok(a);
    }
    let any: SocketAddr = if p.address.is_ipv6() {
        "[::]:0"
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([0u8; 16], 0)))
    } else {
        SocketAddr::from(([0, 0, 0, 0], 0))
    };
    let s = std::net::UdpSocket::bind(any)?;
    s.connect(SocketAddr::new(
        p.address,
        petrel_bfd::runtime::SINGLE_HOP_PORT,
    ))?;
    Ok(s.local_addr()?.ip())
}

fn view(key: &Key, s: &Status) -> BfdView {
    BfdView {
        state: s.state.name().to_string(),
        multihop: key.multihop,
        local_address: key.local,
        local_discriminator: s.local_discr,
        remote_discriminator: s.remote_discr,
        tx_ms: s.tx_us / 1000,
        rx_ms: s.rx_us / 1000,
        detection_ms: s.detection_us / 1000,
        remote_control_plane_independent: s.remote_control_plane_independent,
        flaps: s.flaps,
        last_down: (s.flaps > 0).then(|| s.last_down.describe().to_string()),
        discarded: s.discarded,
    }
}

impl Bfd {
    /// Start the BFD task on the current runtime.
    pub fn start() -> Bfd {
        Bfd {
            handle: petrel_bfd::runtime::spawn(),
            running: Default::default(),
            views: Default::default(),
        }
    }

    pub fn view(&self, peer: &str) -> Option<BfdView> {
        self.views
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(peer)
            .cloned()
    }

    /// Make the running sessions those of `peers`: new ones start, removed ones stop
    /// (AdminDown sent), new intervals are renegotiated in place, a new address restarts
    /// the session.
    pub async fn apply(&self, peers: &[PeerConfig], speaker: &Speaker) {
        // The node's subnets now: a peer on none of them is reached through a router, and
        // gets a multihop session (RFC 5883) even without `multihop` (iBGP between
        // loopbacks, for one).
        let subnets: Vec<IpNet> = tokio::task::spawn_blocking(|| {
            petrel_netlink::Socket::open().and_then(|mut s| s.addresses())
        })
        .await
        .ok()
        .and_then(|r| {
            r.map_err(|e| warn!(error = %e, "BFD: cannot list the node's addresses"))
                .ok()
        })
        .unwrap_or_default();
        let mut running = self.running.lock().await;
        let mut wanted: HashMap<String, (Key, BfdConfig)> = HashMap::new();
        for p in peers {
            let Some(cfg) = p.bfd else { continue };
            let local = match local_address(p) {
                Ok(a) => a,
                Err(e) => {
                    warn!(peer = %p.name, error = %e, "BFD: no local address towards the peer; no session");
                    continue;
                }
            };
            let key = Key {
                local,
                remote: p.address,
                multihop: p.multihop.is_some_and(|h| h > 1)
                    || (!subnets.is_empty() && !subnets.iter().any(|n| n.contains(&p.address))),
            };
            wanted.insert(p.name.clone(), (key, cfg));
        }
        let names: Vec<String> = running.keys().cloned().collect();
        for name in names {
            let keep = match (running.get_mut(&name), wanted.get(&name)) {
                (Some(r), Some((k, c))) if r.key == *k => {
                    if r.cfg != *c {
                        // New intervals or multiplier: renegotiated by a Poll Sequence
                        // (RFC 5880 6.8.3), no flap.
                        info!(peer = %name, min_rx = c.min_rx, min_tx = c.min_tx, multiplier = c.multiplier, "BFD settings changed");
                        self.handle.reconfigure(r.key, session_config(c)).await;
                        r.cfg = *c;
                    }
                    true
                }
                _ => false,
            };
            if !keep && let Some(r) = running.remove(&name) {
                r.watcher.abort();
                self.handle.remove(r.key).await;
                self.views
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&name);
            }
        }
        for (name, (key, cfg)) in wanted {
            if running.contains_key(&name) {
                continue;
            }
            info!(peer = %name, local = %key.local, remote = %key.remote, min_rx = cfg.min_rx, min_tx = cfg.min_tx, multiplier = cfg.multiplier, strict = cfg.strict, "BFD session for the peer");
            let rx = self.handle.add(key, session_config(&cfg)).await;
            let watcher = tokio::spawn(watch(
                name.clone(),
                key,
                rx,
                speaker.clone(),
                self.views.clone(),
            ));
            running.insert(name, Running { key, cfg, watcher });
        }
    }
}

impl Bfd {
    /// Tell the speaker again about every session that is Up: a peer restarted by a reload
    /// starts without a verdict, and a strict one would wait for an Up that already came.
    pub async fn reassert(&self, speaker: &Speaker) {
        let ups: Vec<(String, bool)> = self
            .views
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, v)| v.state == "Up")
            .map(|(n, v)| (n.clone(), v.remote_control_plane_independent))
            .collect();
        for (name, cpi) in ups {
            let _ = speaker.set_liveness(&name, true, cpi).await;
        }
    }
}

/// Follow one session: keep its view current and tell the speaker when it goes Up or
/// leaves Up.
async fn watch(
    peer: String,
    key: Key,
    mut rx: tokio::sync::watch::Receiver<Status>,
    speaker: Speaker,
    views: Arc<Mutex<HashMap<String, BfdView>>>,
) {
    let mut was_up = false;
    loop {
        let st = rx.borrow_and_update().clone();
        views
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(peer.clone(), view(&key, &st));
        let up = st.state == State::Up;
        if up != was_up {
            was_up = up;
            if !up {
                warn!(peer = %peer, reason = st.last_down.describe(), "BFD down");
            } else {
                info!(peer = %peer, "BFD up");
            }
            if speaker
                .set_liveness(&peer, up, st.remote_control_plane_independent)
                .await
                .is_err()
            {
                return;
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}
