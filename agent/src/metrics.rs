//! The HTTP endpoint for operators' tooling (off unless `metrics.address` is set):
//! `/metrics` in the Prometheus text format, `/healthz` (the agent's tasks answer) and
//! `/readyz` (the initial routing table is in the kernel).
//!
//! Peer and FIB figures are read from a status snapshot at each scrape; the FIB task feeds
//! the batch-latency histogram as it works.
//!
//! The endpoint is often bound to every address of the node (the DaemonSet does), so it is
//! reachable by anyone on the network: it never holds more than [`MAX_CONNECTIONS`]
//! descriptors for remote clients and [`MAX_PER_SOURCE`] per source address, gives a client [`HEADER_TIMEOUT`] to
//! send its request and [`CONNECTION_TIMEOUT`] in all. A connection over a cap is accepted
//! and closed at once, so the listen backlog keeps moving and idle floods cost nothing;
//! BGP's listener and the control socket never wait for descriptors held here. Clients on
//! the node itself (loopback and the node's own addresses: the kubelet's probes) are held
//! to the per-source cap only, so a flood from the network cannot fail the health checks.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tracing::{info, warn};

use petrel_control::AgentStatus;

use crate::msg::Metrics;
use crate::state::Agent;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    peer: String,
    address: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    peer: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    peer: String,
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    peer: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

const STATES: [&str; 6] = [
    "Idle",
    "Connect",
    "Active",
    "OpenSent",
    "OpenConfirm",
    "Established",
];

/// The Prometheus text for one status snapshot.
pub fn render(st: &AgentStatus, m: &Metrics) -> String {
    let mut reg = Registry::with_prefix("petrel");
    let up = Family::<PeerLabels, Gauge>::default();
    let state = Family::<StateLabels, Gauge>::default();
    let rcvd = Family::<PeerLabels, Gauge>::default();
    let acpt = Family::<PeerLabels, Gauge>::default();
    let adv = Family::<PeerLabels, Gauge>::default();
    let stale = Family::<PeerLabels, Gauge>::default();
    let upd_in = Family::<PeerLabels, Counter>::default();
    let upd_out = Family::<PeerLabels, Counter>::default();
    let msg_in = Family::<PeerLabels, Counter>::default();
    let msg_out = Family::<PeerLabels, Counter>::default();
    let flaps = Family::<PeerLabels, Counter>::default();
    let adv_src = Family::<SourceLabels, Gauge>::default();
    let refused = Family::<ReasonLabels, Gauge>::default();
    let bfd_up = Family::<PeerLabels, Gauge>::default();
    let bfd_flaps = Family::<PeerLabels, Counter>::default();
    let bfd_tx = Family::<PeerLabels, Gauge>::default();
    let bfd_rx = Family::<PeerLabels, Gauge>::default();
    let bfd_detect = Family::<PeerLabels, Gauge>::default();
    let bfd_discarded = Family::<PeerLabels, Counter>::default();
    for p in &st.peers {
        let b = &p.prefixes.advertised_by_source;
        for (source, n) in [
            ("pod_cidrs", b.pod_cidrs),
            ("originate", b.originate),
            ("services", b.services),
            ("learned", b.learned),
        ] {
            adv_src
                .get_or_create(&SourceLabels {
                    peer: p.name.clone(),
                    source: source.into(),
                })
                .set(n as i64);
        }
        for (reason, n) in &p.prefixes.refused {
            refused
                .get_or_create(&ReasonLabels {
                    peer: p.name.clone(),
                    reason: reason.clone(),
                })
                .set(*n as i64);
        }
        let l = PeerLabels {
            peer: p.name.clone(),
            address: p.address.to_string(),
        };
        up.get_or_create(&l).set((p.state == "Established") as i64);
        for s in STATES {
            state
                .get_or_create(&StateLabels {
                    peer: p.name.clone(),
                    state: s.to_string(),
                })
                .set((p.state == s) as i64);
        }
        rcvd.get_or_create(&l).set(p.prefixes.received as i64);
        acpt.get_or_create(&l).set(p.prefixes.accepted as i64);
        adv.get_or_create(&l).set(p.prefixes.advertised as i64);
        stale.get_or_create(&l).set(p.prefixes.stale as i64);
        upd_in.get_or_create(&l).inc_by(p.updates_in);
        upd_out.get_or_create(&l).inc_by(p.updates_out);
        msg_in.get_or_create(&l).inc_by(p.messages_in);
        msg_out.get_or_create(&l).inc_by(p.messages_out);
        flaps.get_or_create(&l).inc_by(p.established_count);
        if let Some(b) = &p.bfd {
            bfd_up.get_or_create(&l).set((b.state == "Up") as i64);
            bfd_flaps.get_or_create(&l).inc_by(b.flaps);
            bfd_tx.get_or_create(&l).set(b.tx_ms as i64);
            bfd_rx.get_or_create(&l).set(b.rx_ms as i64);
            bfd_detect.get_or_create(&l).set(b.detection_ms as i64);
            bfd_discarded.get_or_create(&l).inc_by(b.discarded);
        }
    }
    reg.register("peer_bfd_up", "1 when the peer's BFD session is Up", bfd_up);
    reg.register("peer_bfd_flaps", "Times the BFD session left Up", bfd_flaps);
    reg.register(
        "peer_bfd_tx_milliseconds",
        "Negotiated BFD transmit interval",
        bfd_tx,
    );
    reg.register(
        "peer_bfd_rx_milliseconds",
        "Negotiated interval of the peer's BFD packets",
        bfd_rx,
    );
    reg.register(
        "peer_bfd_detection_milliseconds",
        "BFD detection time",
        bfd_detect,
    );
    reg.register(
        "peer_bfd_discarded",
        "BFD packets refused (discriminator, TTL, authentication)",
        bfd_discarded,
    );
    reg.register("peer_up", "1 when the session is Established", up);
    reg.register(
        "peer_state",
        "1 for the session's current RFC 4271 state",
        state,
    );
    reg.register(
        "peer_prefixes_received",
        "Prefixes received from the peer",
        rcvd,
    );
    reg.register(
        "peer_prefixes_accepted",
        "Prefixes accepted by import policy",
        acpt,
    );
    reg.register(
        "peer_prefixes_advertised",
        "Prefixes advertised to the peer",
        adv,
    );
    reg.register(
        "peer_prefixes_stale",
        "Prefixes kept over the peer's graceful restart",
        stale,
    );
    reg.register(
        "peer_prefixes_advertised_by_source",
        "Prefixes advertised to the peer, per route source",
        adv_src,
    );
    reg.register(
        "peer_prefixes_refused",
        "Prefixes import policy refused, per reason",
        refused,
    );
    reg.register("peer_updates_received", "UPDATE messages received", upd_in);
    reg.register("peer_updates_sent", "UPDATE messages sent", upd_out);
    reg.register("peer_messages_received", "BGP messages received", msg_in);
    reg.register("peer_messages_sent", "BGP messages sent", msg_out);
    reg.register(
        "peer_established",
        "Times the session reached Established",
        flaps,
    );

    let fib = Family::<KindLabels, Gauge>::default();
    for (k, v) in [
        ("installed", st.fib.installed as i64),
        ("ecmp", st.fib.ecmp as i64),
        ("failed", st.fib.failed as i64),
        ("own", st.fib.own_routes as i64),
        ("stale", st.fib.stale as i64),
    ] {
        fib.get_or_create(&KindLabels { kind: k.into() }).set(v);
    }
    reg.register("fib_routes", "Routes of ours in the kernel, by kind", fib);
    let ops: Counter = Counter::default();
    ops.inc_by(st.fib.ops);
    reg.register("fib_operations", "Route operations sent to the kernel", ops);
    let errs: Counter = Counter::default();
    errs.inc_by(st.fib.errors);
    reg.register("fib_errors", "Route operations the kernel refused", errs);
    let restored: Counter = Counter::default();
    restored.inc_by(st.fib.restored);
    reg.register(
        "fib_restored",
        "Routes put back after someone deleted them",
        restored,
    );
    let warnings: Gauge = Gauge::default();
    warnings.set(st.warnings.len() as i64);
    reg.register(
        "warnings",
        "Things status asks an operator to look at (see petrel status)",
        warnings,
    );
    let reload_failed: Gauge = Gauge::default();
    reload_failed.set(
        st.warnings
            .iter()
            .any(|w| w.starts_with("the last reload failed")) as i64,
    );
    reg.register(
        "config_reload_failed",
        "1 while the last reload failed and the previous config runs",
        reload_failed,
    );
    let synced: Gauge = Gauge::default();
    synced.set(st.fib.synced as i64);
    reg.register(
        "fib_synced",
        "1 once the initial table is in the kernel",
        synced,
    );
    reg.register(
        "fib_batch_seconds",
        "Time to apply one batch of route operations",
        m.fib_batch_seconds.clone(),
    );
    reg.register(
        "http_connections_refused",
        "HTTP connections closed at once because a connection cap was reached",
        m.http_refused.clone(),
    );
    reg.register(
        "fib_batch_routes",
        "Route operations per batch",
        m.fib_batch_routes.clone(),
    );
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &reg).is_err() {
        out.clear();
    }
    out
}

async fn metrics(State(agent): State<Arc<Agent>>) -> impl IntoResponse {
    let st = agent.status();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        render(&st, &agent.metrics),
    )
}

async fn healthz(State(agent): State<Arc<Agent>>) -> impl IntoResponse {
    if agent.healthy() {
        (StatusCode::OK, "ok\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "a task of the agent has stopped\n",
        )
    }
}

async fn readyz(State(agent): State<Arc<Agent>>) -> impl IntoResponse {
    if agent.fib.snapshot().summary.synced {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "initial routing table not in the kernel yet\n",
        )
    }
}

/// Connections served at once from remote sources together.
pub const MAX_CONNECTIONS: usize = 64;
/// Connections served at once from one source address.
pub const MAX_PER_SOURCE: usize = 16;
/// Time a client has to send its request line and headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(3);
/// Time a connection may live, keep-alive included (a scrape takes milliseconds).
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Admission of connections: one global and one per-source count.
#[derive(Clone, Default)]
struct Admission {
    /// The node's own addresses: exempt from the global cap.
    local: Arc<Vec<IpAddr>>,
    per_source: Arc<Mutex<HashMap<IpAddr, usize>>>,
    total: Arc<std::sync::atomic::AtomicUsize>,
}

/// A served connection's place in [`Admission`], given back on drop.
struct Admitted {
    adm: Admission,
    source: IpAddr,
    counted: bool,
}

impl Admission {
    fn admit(&self, source: IpAddr) -> Option<Admitted> {
        use std::sync::atomic::Ordering;
        let source = source.to_canonical();
        let counted = !(source.is_loopback() || self.local.contains(&source));
        let mut map = self.per_source.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(source).or_insert(0);
        if *n >= MAX_PER_SOURCE
            || (counted && self.total.load(Ordering::Relaxed) >= MAX_CONNECTIONS)
        {
            if *n == 0 {
                map.remove(&source);
            }
            return None;
        }
        *n += 1;
        if counted {
            self.total.fetch_add(1, Ordering::Relaxed);
        }
        Some(Admitted {
            adm: self.clone(),
            source,
            counted,
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering;
        let mut map = self
            .adm
            .per_source
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.source);
            }
        }
        if self.counted {
            self.adm.total.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Serve the endpoint on `addr` until the task is dropped.
pub fn serve(
    addr: SocketAddr,
    agent: Arc<Agent>,
    local: Vec<IpAddr>,
    rt: &tokio::runtime::Handle,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let _in = rt.enter();
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(agent.clone());
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(std_listener)?;
    info!(%addr, "metrics and health endpoint listening");
    let refused = agent.metrics.http_refused.clone();
    Ok(rt.spawn(async move {
        let adm = Admission {
            local: Arc::new(local),
            ..Admission::default()
        };
        let mut last_error_log: Option<std::time::Instant> = None;
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors, say: log at most once a minute and retry soon.
                    if last_error_log.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                        warn!(error = %e, "metrics endpoint accept failed");
                        last_error_log = Some(std::time::Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(admitted) = adm.admit(peer.ip()) else {
                refused.inc();
                drop(stream);
                continue;
            };
            let svc = hyper_util::service::TowerToHyperService::new(app.clone());
            tokio::spawn(async move {
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
                let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
                drop(admitted);
            });
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_caps_remote_sources_and_spares_the_node() {
        let node: IpAddr = "198.51.100.2".parse().unwrap();
        let adm = Admission {
            local: Arc::new(vec![node]),
            ..Admission::default()
        };
        let one: IpAddr = "203.0.113.1".parse().unwrap();
        let mut held: Vec<Admitted> = (0..MAX_PER_SOURCE)
            .map(|_| adm.admit(one).expect("under the per-source cap"))
            .collect();
        assert!(adm.admit(one).is_none(), "per-source cap");
        for i in 0..(MAX_CONNECTIONS - MAX_PER_SOURCE) {
            let src = IpAddr::from([203, 0, 114, (i % 200) as u8 + 1]);
            held.push(adm.admit(src).expect("under the global cap"));
        }
        assert!(
            adm.admit("203.0.115.9".parse().unwrap()).is_none(),
            "global cap"
        );
        // The node itself and loopback (also as a v4-mapped v6 address) still get in.
        let local: Vec<Admitted> = [
            node,
            "127.0.0.1".parse().unwrap(),
            "::ffff:127.0.0.1".parse().unwrap(),
        ]
        .into_iter()
        .map(|a| adm.admit(a).expect("local sources are not globally capped"))
        .collect();
        drop(local);
        held.truncate(MAX_CONNECTIONS - 1);
        assert!(
            adm.admit("203.0.115.9".parse().unwrap()).is_some(),
            "a slot given back"
        );
        drop(held);
        assert!(adm.per_source.lock().unwrap().len() <= 1);
    }
}
