//! The HTTP endpoint for operators' tooling (off unless `metrics.address` is set):
//! `/metrics` in the Prometheus text format, `/healthz` (the agent's tasks answer) and
//! `/readyz` (the initial routing table is in the kernel).
//!
//! Peer and FIB figures are read from a status snapshot at each scrape; the FIB task feeds
//! the batch-latency histogram as it works.

use std::net::SocketAddr;
use std::sync::Arc;

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
    }
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

/// Serve the endpoint on `addr` until the task is dropped.
pub fn serve(
    addr: SocketAddr,
    agent: Arc<Agent>,
    rt: &tokio::runtime::Handle,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let _in = rt.enter();
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(agent);
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(std_listener)?;
    info!(%addr, "metrics and health endpoint listening");
    Ok(rt.spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            warn!(error = %e, "metrics endpoint stopped");
        }
    }))
}
