//! `petrel run`: the node agent. Wires config, speaker, FIB sync, control socket and signals
//! together; the only place that does.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use ipnet::IpNet;
use petrel_bgp::{Source, Speaker};
use petrel_config::{Config, OwnCidrRoute, PodCidrs};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use crate::fib::{self, RouteTag, Target};
use crate::state::{Agent, NodeInfo};
use crate::{control, convert};

pub struct RunOpts {
    pub config: PathBuf,
    /// Overrides `control.socket`.
    pub socket: Option<PathBuf>,
}

/// Load the config; `PETREL_ROUTER_ID` (set by the DaemonSet from the node's address, so
/// that one ConfigMap serves every node) overrides `node.router_id`.
fn load(path: &Path) -> anyhow::Result<Config> {
    let mut cfg = petrel_config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Ok(v) = std::env::var("PETREL_ROUTER_ID")
        && !v.is_empty()
    {
        cfg.node.router_id = v
            .parse::<std::net::Ipv4Addr>()
            .ok()
            .filter(|a| !a.is_unspecified() && !a.is_multicast() && !a.is_broadcast())
            .ok_or_else(|| {
                anyhow::anyhow!("PETREL_ROUTER_ID={v:?} is not a usable IPv4 router id")
            })?;
    }
    Ok(cfg)
}

fn tag(cfg: &Config) -> RouteTag {
    RouteTag {
        protocol: cfg.fib.protocol,
        table: cfg.fib.table,
        metric: cfg.fib.metric,
    }
}

fn set_forwarding() -> anyhow::Result<()> {
    for f in [
        "/proc/sys/net/ipv4/ip_forward",
        "/proc/sys/net/ipv6/conf/all/forwarding",
    ] {
        std::fs::write(f, "1").with_context(|| format!("enable forwarding: {f}"))?;
    }
    Ok(())
}

/// The config's warnings as status shows them; logged once here.
fn warnings_of(cfg: &Config) -> Vec<String> {
    cfg.warnings
        .iter()
        .map(|w| {
            warn!("{w}");
            w.to_string()
        })
        .collect()
}

/// Every address of this namespace, with its subnet, sorted.
async fn interface_addresses() -> anyhow::Result<Vec<IpNet>> {
    let mut v =
        tokio::task::spawn_blocking(|| petrel_netlink::Socket::open()?.addresses()).await??;
    v.sort();
    v.dedup();
    Ok(v)
}

/// A single-threaded runtime on a thread of its own, for the control socket and metrics.
fn status_runtime() -> std::io::Result<tokio::runtime::Handle> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let handle = rt.handle().clone();
    std::thread::Builder::new()
        .name("status".into())
        .spawn(move || rt.block_on(std::future::pending::<()>()))?;
    Ok(handle)
}

/// Raise the soft descriptor limit to the hard one (often 1024 of 524288): the agent's
/// needs grow with peers and netlink sockets, and every listener it serves has a cap of
/// its own, so the limit is a ceiling that should never be met.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write a plain struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let old = lim.rlim_cur;
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                info!(from = old, to = lim.rlim_max, "descriptor limit raised");
            }
        }
    }
}

pub async fn run(opts: RunOpts) -> anyhow::Result<()> {
    raise_fd_limit();
    let cfg = load(&opts.config)?;
    let interfaces = interface_addresses()
        .await
        .context("list the node's addresses")?;
    let pod_cidrs: Vec<IpNet> = match &cfg.node.pod_cidrs {
        PodCidrs::Static(v) => v.clone(),
        PodCidrs::Kubernetes => Vec::new(),
    };
    let (_, problems) =
        convert::usable_pod_cidrs(&cfg.node.min_pod_cidr_len, &interfaces, pod_cidrs.clone());
    if !problems.is_empty() {
        anyhow::bail!("{}", problems.join("; "));
    }
    // The control socket first: a second agent given the same path stops here, before it
    // touches the first one's routes.
    let socket_path = opts.socket.clone().unwrap_or(cfg.control.socket.clone());
    let socket = control::claim(&socket_path)?;
    let tag = tag(&cfg);
    let gr = cfg.bgp.graceful_restart.enabled;
    // Routes of ours still in the kernel mean a restart with forwarding preserved: tell the
    // peers (R and F bits) so they keep our routes and we keep theirs until End-of-RIB.
    let restarting = gr && fib::has_routes(tag).await;
    if restarting {
        info!("found our routes in the kernel: restarting gracefully");
    }
    if cfg.fib.enable_forwarding {
        set_forwarding()?;
    }
    let own_kind = match cfg.fib.own_cidr_route {
        OwnCidrRoute::Blackhole => Some(Target::Blackhole),
        OwnCidrRoute::Unreachable => Some(Target::Unreachable),
        OwnCidrRoute::None => None,
    };
    let metrics = crate::msg::Metrics::default();
    // Few batches in flight from the speaker to the FIB: a slow FIB holds the RIB back (and,
    // through it, the peers' sockets) instead of piling up changes in memory.
    let (changes_tx, changes) = tokio::sync::mpsc::channel(4);
    let fib = fib::start(tag, own_kind, changes, metrics.clone())
        .await
        .context("start FIB sync")?;
    // The pod CIDRs' blackholes are in the kernel before any session can announce them.
    fib.set_own(pod_cidrs.clone()).await;
    let started = Started {
        restarting,
        fib: fib.clone(),
        changes_tx,
        metrics,
        pod_cidrs,
        interfaces,
        socket,
    };
    match serve(opts, cfg, started).await {
        Ok(()) => Ok(()),
        Err(e) => {
            // Whatever this run installed goes; a previous run's routes (a graceful
            // restart) stay as they were found.
            if !restarting {
                fib.flush().await;
            }
            Err(e)
        }
    }
}

/// What `run` has set up before the speaker starts.
struct Started {
    restarting: bool,
    fib: crate::msg::Fib,
    changes_tx: tokio::sync::mpsc::Sender<petrel_bgp::RibOutput>,
    metrics: crate::msg::Metrics,
    pod_cidrs: Vec<IpNet>,
    interfaces: Vec<IpNet>,
    socket: control::Claimed,
}

async fn serve(opts: RunOpts, cfg: Config, started: Started) -> anyhow::Result<()> {
    let Started {
        restarting,
        fib,
        changes_tx,
        metrics,
        pod_cidrs,
        interfaces,
        socket,
    } = started;
    let socket_path = opts.socket.clone().unwrap_or(cfg.control.socket.clone());
    let peers = convert::peers(&cfg)?;
    // Next-hop tracking: the kernel's routes are read before any session can bring a path.
    let underlay =
        crate::underlay::start(cfg.fib.protocol).context("follow the kernel's routes")?;
    let speaker = Speaker::start(
        convert::speaker(
            &cfg,
            restarting,
            convert::node_addresses(&cfg, interfaces.clone()),
        ),
        peers,
        vec![
            (Source::PodCidrs, convert::pod_routes(&pod_cidrs)),
            (Source::Originate, convert::originate(&cfg)),
        ],
        changes_tx,
    )
    .await
    .context("start the BGP speaker")?;
    tokio::spawn(crate::underlay::forward(underlay, speaker.clone()));
    tokio::spawn(crate::memory::trim_task(std::time::Duration::from_secs(1)));
    speaker
        .set_peer_ranges(convert::peer_ranges(&cfg)?)
        .await
        .context("set the peer ranges")?;
    let bfd = crate::bfd::Bfd::start();
    bfd.apply(&cfg.peers, &speaker).await;
    // In Kubernetes mode the node's name is known before anything answers on the socket.
    let node_name = match cfg.node.pod_cidrs {
        PodCidrs::Kubernetes => Some(crate::k8s::node_name(cfg.node.name.as_deref())?),
        PodCidrs::Static(_) => cfg.node.name.clone(),
    };
    let agent = Arc::new(Agent {
        speaker: speaker.clone(),
        bfd,
        peers: crate::mesh::PeerSet::new(cfg.peers.clone()),
        fib: fib.clone(),
        node: std::sync::RwLock::new(NodeInfo {
            name: node_name.clone(),
            asn: cfg.node.asn,
            router_id: cfg.node.router_id,
            pod_cidrs,
            pod_cidrs_source: match cfg.node.pod_cidrs {
                PodCidrs::Static(_) => "config".into(),
                PodCidrs::Kubernetes => "kubernetes".into(),
            },
        }),
        protocol: cfg.fib.protocol,
        table: cfg.fib.table,
        metrics,
        config_warnings: std::sync::RwLock::new(warnings_of(&cfg)),
        reload_error: std::sync::RwLock::new(None),
        refused_pod_cidrs: std::sync::RwLock::new(Vec::new()),
    });
    // Status and health answer on a thread and runtime of their own: however busy route
    // processing keeps the main workers, they read snapshots and answer.
    let status_rt = status_runtime().context("start the status thread")?;
    let _guard = control::serve(socket, agent.clone(), &status_rt)?;
    let kube = if cfg.node.pod_cidrs == PodCidrs::Kubernetes || cfg.mesh.is_some() {
        Some(
            kube::Client::try_default()
                .await
                .context("Kubernetes client (in-cluster config or KUBECONFIG)")?,
        )
    } else {
        None
    };
    if let (Some(mesh), Some(client)) = (&cfg.mesh, &kube) {
        let me = crate::k8s::node_name(node_name.as_deref())?;
        info!(node = %me, "mesh: every other Node is a peer");
        let nodes = crate::mesh::watch_nodes(client.clone());
        tokio::spawn(crate::mesh::run(
            agent.clone(),
            me,
            mesh.template.clone(),
            nodes,
        ));
    }
    if let (PodCidrs::Kubernetes, Some(name), Some(client)) = (&cfg.node.pod_cidrs, node_name, kube)
    {
        info!(node = %name, "pod CIDRs come from the Kubernetes Node object");
        let mut rx = crate::k8s::watch_pod_cidrs(client, name);
        let agent = agent.clone();
        let min = cfg.node.min_pod_cidr_len;
        let interfaces = interfaces.clone();
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let cidrs = rx.borrow_and_update().clone();
                // The Node object is checked as the config file is: a default route or a
                // CIDR on the node's own link would be blackholed.
                let (cidrs, problems) = convert::usable_pod_cidrs(&min, &interfaces, cidrs);
                for p in &problems {
                    error!("ignoring a pod CIDR of the Node object: {p}");
                }
                *agent
                    .refused_pod_cidrs
                    .write()
                    .unwrap_or_else(|e| e.into_inner()) = problems;
                if change_pod_cidrs(&agent, cidrs).await.is_err() {
                    return;
                }
            }
        });
    }
    let _metrics = match cfg.metrics.address {
        Some(addr) => Some(
            crate::metrics::serve(
                addr,
                agent.clone(),
                interfaces.iter().map(|n| n.addr()).collect(),
                &status_rt,
            )
            .with_context(|| format!("metrics endpoint on {addr}"))?,
        ),
        None => None,
    };
    info!(socket = %socket_path.display(), asn = cfg.node.asn, router_id = %cfg.node.router_id, "petrel running");

    // The node's addresses, followed: import's sanity checks compare with them.
    {
        let speaker = speaker.clone();
        let cfg = cfg.clone();
        let mut known = interfaces;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(10)).await;
                let Ok(now) = interface_addresses().await else {
                    continue;
                };
                if now != known {
                    info!(addresses = now.len(), "the node's addresses changed");
                    known = now;
                    if speaker
                        .set_node_addresses(convert::node_addresses(&cfg, known.clone()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        });
    }
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut current = cfg;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                match reload(&opts.config, &current, &agent).await {
                    Ok(new) => {
                        *agent.config_warnings.write().unwrap_or_else(|e| e.into_inner()) =
                            warnings_of(&new);
                        *agent.reload_error.write().unwrap_or_else(|e| e.into_inner()) = None;
                        current = new;
                    }
                    Err(e) => {
                        // The whole chain: "peer tor: password_file ...: ...".
                        let e = format!("{e:#}");
                        error!(error = %e, "reload failed; keeping the running config");
                        *agent.reload_error.write().unwrap_or_else(|e| e.into_inner()) = Some(e);
                    }
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    let graceful = current.bgp.graceful_restart.enabled;
    if graceful {
        info!("stopping: sessions closed for graceful restart, routes left in the kernel");
    } else {
        info!("stopping: Cease to every peer, our routes removed from the kernel");
    }
    // Either way the withdrawals the sessions' end causes in the RIB must not reach the
    // kernel: with graceful restart the routes stay for the next run, without it they all
    // go at once (one flush, not a withdrawal per route first).
    let t = std::time::Instant::now();
    fib.freeze().await;
    let _ = speaker.shutdown(graceful).await;
    info!(secs = t.elapsed().as_secs_f64(), "sessions closed");
    if !graceful {
        fib.flush().await;
        info!(secs = t.elapsed().as_secs_f64(), "routes removed");
    }
    Ok(())
}

/// Move to new pod CIDRs without a moment where traffic for them is attracted but not
/// held: the blackholes of old and new are in the kernel before the new CIDRs are
/// announced, and the old ones are withdrawn (on every peer's socket) before their
/// blackholes go.
async fn change_pod_cidrs(agent: &Agent, cidrs: Vec<IpNet>) -> anyhow::Result<()> {
    let old = agent.node().pod_cidrs;
    let mut both = old.clone();
    both.extend(cidrs.iter().filter(|c| !old.contains(c)));
    let shrinks = both.len() > cidrs.len();
    agent.fib.set_own(both).await;
    agent
        .node
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .pod_cidrs = cidrs.clone();
    agent
        .speaker
        .set_local(Source::PodCidrs, convert::pod_routes(&cidrs))
        .await?;
    if shrinks {
        agent.fib.set_own(cidrs).await;
    }
    Ok(())
}

async fn reload(path: &Path, old: &Config, agent: &Agent) -> anyhow::Result<Config> {
    let new = load(path)?;
    if new.node.asn != old.node.asn || new.node.router_id != old.node.router_id {
        warn!("node ASN or router id changed: restart petrel for that to take effect");
    }
    if new.fib != old.fib || new.control != old.control || new.bgp != old.bgp {
        warn!("fib, control and bgp settings take effect at the next restart");
    }
    if new.mesh != old.mesh {
        warn!("mesh settings take effect at the next restart");
    }
    agent
        .peers
        .set_config(new.peers.clone(), &agent.speaker, &agent.bfd)
        .await?;
    agent
        .speaker
        .set_peer_ranges(convert::peer_ranges(&new)?)
        .await?;
    agent.bfd.reassert(&agent.speaker).await;
    if let (PodCidrs::Static(a), PodCidrs::Static(b)) = (&old.node.pod_cidrs, &new.node.pod_cidrs)
        && a != b
    {
        info!(pod_cidrs = ?b, "pod CIDRs changed");
        change_pod_cidrs(agent, b.clone()).await?;
    }
    if new.originate != old.originate {
        info!(entries = new.originate.len(), "originate changed");
        agent
            .speaker
            .set_local(Source::Originate, convert::originate(&new))
            .await?;
    }
    info!(peers = new.peers.len(), "config reloaded");
    let mut kept = new.clone();
    // Settings that need a restart stay as they run.
    kept.node.asn = old.node.asn;
    kept.node.router_id = old.node.router_id;
    kept.fib = old.fib.clone();
    kept.control = old.control.clone();
    kept.bgp = old.bgp.clone();
    kept.mesh = old.mesh.clone();
    Ok(kept)
}
