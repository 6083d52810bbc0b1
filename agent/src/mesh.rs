//! The automatic node mesh (`mesh: { from: kubernetes }`): every other Node of the cluster
//! is an iBGP peer at each of its InternalIPs; Nodes labelled
//! `petrel.io/route-reflector: "true"` are route reflectors, and when any exist the other
//! nodes peer only with them (the reflectors with everyone, the others as their clients).
//!
//! ```text
//!   API server ──Node list+watch──► node watcher task ──NodesTx (latest)──► mesh task
//!   mesh task ──PeerSet::set_mesh──► speaker (peers), BFD     (status read, never awaited)
//! ```
//!
//! The plan ([`desired`]) and make-before-break ([`Mesh`]) are plain code. A peer the plan
//! no longer wants is kept until every peer it wants is Established and nothing is selected
//! only through the leaving one (its routes arrive through the reflectors too), or until its
//! Node is gone; not before the plan has held for [`SETTLE_MS`]; after [`GIVE_UP_MS`] it
//! goes anyway.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use petrel_config::{Family, PeerConfig};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::msg::{NodeSet, NodesRx, NodesTx};

/// The label that makes a Node a route reflector.
pub const REFLECTOR_LABEL: &str = "petrel.io/route-reflector";

/// How long a peer the plan no longer wants is kept at most, waiting for its replacements.
pub const GIVE_UP_MS: u64 = 60_000;

/// How long a peer the plan no longer wants is kept at least (unless its Node is gone):
/// labels set one Node at a time (`kubectl label node a b`) make plans that last
/// milliseconds, and a session dropped for one of them would come straight back.
pub const SETTLE_MS: u64 = 3_000;

/// What the mesh needs of a Node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshNode {
    pub name: String,
    /// Its InternalIPs.
    pub addresses: Vec<IpAddr>,
    pub reflector: bool,
}

/// A Node as the mesh sees it (none without a name).
pub fn node_of(n: &Node) -> Option<MeshNode> {
    let name = n.metadata.name.clone()?;
    let mut addresses: Vec<IpAddr> = n
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(|list| {
            list.iter()
                .filter(|a| a.type_ == "InternalIP")
                .filter_map(|a| a.address.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    addresses.sort();
    addresses.dedup();
    let reflector = n
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(REFLECTOR_LABEL))
        .is_some_and(|v| v == "true");
    Some(MeshNode {
        name,
        addresses,
        reflector,
    })
}

/// The name of the mesh peer for `node` at `address`.
pub fn peer_name(node: &str, address: IpAddr) -> String {
    format!("mesh/{node}/{address}")
}

/// The mesh peers node `me` should have, by name: one per InternalIP of each other Node it
/// peers with, of the families `me` has an InternalIP of.
pub fn desired(
    me: &str,
    nodes: &BTreeMap<String, MeshNode>,
    template: &PeerConfig,
) -> BTreeMap<String, PeerConfig> {
    let mine = nodes.get(me);
    let i_reflect = mine.is_some_and(|n| n.reflector);
    let any_reflector = nodes.values().any(|n| n.reflector);
    let has_family =
        |a: &IpAddr| mine.is_none_or(|m| m.addresses.iter().any(|b| b.is_ipv4() == a.is_ipv4()));
    let mut out = BTreeMap::new();
    for n in nodes.values().filter(|n| n.name != me) {
        // Without reflectors, a full mesh; with them, clients peer with reflectors only.
        if any_reflector && !i_reflect && !n.reflector {
            continue;
        }
        for a in n.addresses.iter().filter(|a| has_family(a)) {
            let name = peer_name(&n.name, *a);
            let mut p = template.clone();
            p.name = name.clone();
            p.address = *a;
            p.families = vec![if a.is_ipv4() {
                Family::Ipv4
            } else {
                Family::Ipv6
            }];
            p.route_reflector_client = i_reflect && !n.reflector;
            out.insert(name, p);
        }
    }
    out
}

/// Make-before-break over the plan: the mesh peers in use.
#[derive(Debug, Default)]
pub struct Mesh {
    active: BTreeMap<String, (String, PeerConfig)>,
    /// When each peer the plan dropped started waiting to go (ms).
    leaving: HashMap<String, u64>,
}

/// What [`Mesh::step`] is told of the running sessions.
pub trait Sessions {
    /// The mesh peer `name` is Established.
    fn established(&self, name: &str) -> bool;
    /// Nothing is selected only through peer `name`: every prefix it gave us has another
    /// usable path.
    fn covered(&self, name: &str) -> bool;
}

impl Mesh {
    /// Move toward `want` (from [`desired`]): new and changed peers at once, dropped ones
    /// when their replacements are up (or their Node is gone). Returns whether the peer
    /// list changed.
    pub fn step(
        &mut self,
        want: BTreeMap<String, PeerConfig>,
        nodes: &BTreeMap<String, MeshNode>,
        sessions: &dyn Sessions,
        now: u64,
    ) -> bool {
        let mut changed = false;
        let ready = want.keys().all(|n| sessions.established(n));
        let dropped: Vec<String> = self
            .active
            .keys()
            .filter(|n| !want.contains_key(*n))
            .cloned()
            .collect();
        for name in dropped {
            let (node, cfg) = &self.active[&name];
            let node_gone = nodes
                .get(node)
                .is_none_or(|n| !n.addresses.contains(&cfg.address));
            let since = *self.leaving.entry(name.clone()).or_insert(now);
            let go = if node_gone {
                info!(peer = %name, "mesh: the Node or its address is gone");
                true
            } else if now.saturating_sub(since) >= SETTLE_MS && ready && sessions.covered(&name) {
                info!(peer = %name, "mesh: replaced (its routes come through the reflectors)");
                true
            } else if now.saturating_sub(since) >= GIVE_UP_MS {
                warn!(peer = %name, "mesh: replacements not ready in time; removing it anyway");
                true
            } else {
                false
            };
            if go {
                self.active.remove(&name);
                self.leaving.remove(&name);
                changed = true;
            }
        }
        for (name, cfg) in want {
            self.leaving.remove(&name);
            let node = name
                .strip_prefix("mesh/")
                .and_then(|r| r.rsplit_once('/'))
                .map(|(n, _)| n.to_string())
                .unwrap_or_default();
            if self.active.get(&name).map(|(_, c)| c) != Some(&cfg) {
                self.active.insert(name, (node, cfg));
                changed = true;
            }
        }
        changed
    }

    /// Peers waiting for their replacements.
    pub fn leaving(&self) -> usize {
        self.leaving.len()
    }

    pub fn peers(&self) -> Vec<PeerConfig> {
        self.active.values().map(|(_, c)| c.clone()).collect()
    }
}

/// The node's peers: the config file's and the mesh's, set together so that neither
/// overwrites the other. The lock serializes the two writers (reload and the mesh task); it
/// is held while the speaker takes the list, and the speaker never waits on either.
pub struct PeerSet {
    inner: tokio::sync::Mutex<(Vec<PeerConfig>, Vec<PeerConfig>)>,
}

impl PeerSet {
    /// The config file's peers, as the speaker started with them.
    pub fn new(config: Vec<PeerConfig>) -> PeerSet {
        PeerSet {
            inner: tokio::sync::Mutex::new((config, Vec::new())),
        }
    }

    pub async fn set_config(
        &self,
        peers: Vec<PeerConfig>,
        speaker: &petrel_bgp::Speaker,
        bfd: &crate::bfd::Bfd,
    ) -> anyhow::Result<()> {
        let mut g = self.inner.lock().await;
        g.0 = peers;
        Self::apply(&g, speaker, bfd).await
    }

    pub async fn set_mesh(
        &self,
        peers: Vec<PeerConfig>,
        speaker: &petrel_bgp::Speaker,
        bfd: &crate::bfd::Bfd,
    ) -> anyhow::Result<()> {
        let mut g = self.inner.lock().await;
        g.1 = peers;
        Self::apply(&g, speaker, bfd).await
    }

    async fn apply(
        g: &(Vec<PeerConfig>, Vec<PeerConfig>),
        speaker: &petrel_bgp::Speaker,
        bfd: &crate::bfd::Bfd,
    ) -> anyhow::Result<()> {
        let all: Vec<PeerConfig> = g.0.iter().chain(g.1.iter()).cloned().collect();
        let converted = all
            .iter()
            .map(crate::convert::peer)
            .collect::<anyhow::Result<Vec<_>>>()?;
        speaker.set_peers(converted).await?;
        bfd.apply(&all, speaker).await;
        Ok(())
    }
}

/// Follow every Node (one list+watch); the receiver holds the whole set, `None` until the
/// first list is complete. A re-list replaces the set only once it is complete, so a
/// dropped watch never makes Nodes blink out.
pub fn watch_nodes(client: kube::Client) -> NodesRx {
    let (tx, rx): (NodesTx, NodesRx) = watch::channel(None);
    let api: Api<Node> = Api::all(client);
    tokio::spawn(async move {
        let mut stream = watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        let mut nodes: NodeSet = BTreeMap::new();
        let mut listing: Option<NodeSet> = None;
        let mut errors = 0u32;
        while let Some(ev) = stream.next().await {
            let publish = match ev {
                Ok(Event::Init) => {
                    listing = Some(BTreeMap::new());
                    false
                }
                Ok(Event::InitApply(n)) => {
                    if let (Some(l), Some(m)) = (listing.as_mut(), node_of(&n)) {
                        l.insert(m.name.clone(), m);
                    }
                    false
                }
                Ok(Event::InitDone) => {
                    nodes = listing.take().unwrap_or_default();
                    errors = 0;
                    true
                }
                Ok(Event::Apply(n)) => node_of(&n).is_some_and(|m| {
                    let same = nodes.get(&m.name) == Some(&m);
                    nodes.insert(m.name.clone(), m);
                    !same
                }),
                Ok(Event::Delete(n)) => n
                    .metadata
                    .name
                    .as_ref()
                    .is_some_and(|name| nodes.remove(name).is_some()),
                Err(e) => {
                    // Once per outage: the watcher retries with backoff by itself.
                    if errors == 0 {
                        warn!(error = %e, "watching Nodes for the mesh; keeping the last set");
                    }
                    errors += 1;
                    false
                }
            };
            if publish && tx.send(Some(Arc::new(nodes.clone()))).is_err() {
                return;
            }
        }
    });
    rx
}

/// The session facts the mesh waits on, read from the speaker's published status and
/// routes.
struct Seen {
    established: HashMap<String, bool>,
    /// Peers through which alone some prefix is selected.
    sole: std::collections::HashSet<String>,
}

impl Sessions for Seen {
    fn established(&self, name: &str) -> bool {
        self.established.get(name).copied().unwrap_or(false)
    }
    fn covered(&self, name: &str) -> bool {
        !self.sole.contains(name)
    }
}

async fn seen(speaker: &petrel_bgp::Speaker, need_routes: bool) -> Seen {
    let established = speaker
        .status()
        .peers
        .into_iter()
        .map(|p| (p.name, p.state == petrel_bgp::fsm::State::Established))
        .collect();
    let mut sole = std::collections::HashSet::new();
    if need_routes {
        for r in speaker.routes().await.unwrap_or_default() {
            let usable: Vec<&str> = r
                .paths
                .iter()
                .filter(|p| p.accepted && p.unresolved.is_none() && !p.peer.is_empty())
                .map(|p| p.peer.as_str())
                .collect();
            if let [only] = usable[..] {
                sole.insert(only.to_string());
            }
        }
    }
    Seen { established, sole }
}

/// The mesh task: follows the Nodes and sets the mesh peers; ends with the speaker.
pub async fn run(
    agent: Arc<crate::state::Agent>,
    me: String,
    template: PeerConfig,
    mut nodes: NodesRx,
) {
    let start = Instant::now();
    let mut mesh = Mesh::default();
    let mut known: Option<Arc<NodeSet>> = None;
    loop {
        tokio::select! {
            r = nodes.changed() => {
                if r.is_err() {
                    return;
                }
                known = nodes.borrow_and_update().clone();
            }
            // While peers wait for their replacements, look again every second.
            _ = tokio::time::sleep(Duration::from_secs(1)), if mesh.leaving() > 0 => {}
        }
        let Some(all) = known.as_deref() else {
            continue;
        };
        let want = desired(&me, all, &template);
        let dropping = mesh.peers().iter().any(|p| !want.contains_key(&p.name));
        let facts = seen(&agent.speaker, dropping).await;
        let now = start.elapsed().as_millis() as u64;
        if mesh.step(want, all, &facts, now) {
            let peers = mesh.peers();
            info!(peers = peers.len(), nodes = all.len(), "mesh peers");
            if let Err(e) = agent
                .peers
                .set_mesh(peers, &agent.speaker, &agent.bfd)
                .await
            {
                warn!(error = %e, "setting the mesh peers");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> PeerConfig {
        petrel_config::parse_str(
            "node: { asn: 65000, router_id: 10.0.0.1, pod_cidrs: [10.244.1.0/24] }\nmesh: { from: kubernetes }\n",
            "t.yaml",
            None,
        )
        .unwrap()
        .mesh
        .unwrap()
        .template
    }

    fn nodes(list: &[(&str, &[&str], bool)]) -> BTreeMap<String, MeshNode> {
        list.iter()
            .map(|(n, a, r)| {
                (
                    n.to_string(),
                    MeshNode {
                        name: n.to_string(),
                        addresses: a.iter().map(|x| x.parse().unwrap()).collect(),
                        reflector: *r,
                    },
                )
            })
            .collect()
    }

    fn names(m: &BTreeMap<String, PeerConfig>) -> Vec<&str> {
        m.keys().map(|s| s.as_str()).collect()
    }

    #[test]
    fn full_mesh_then_reflectors() {
        let t = template();
        let all = nodes(&[
            ("a", &["10.0.0.1", "fd00::1"], false),
            ("b", &["10.0.0.2", "fd00::2"], false),
            ("c", &["10.0.0.3"], false),
        ]);
        let d = desired("a", &all, &t);
        assert_eq!(
            names(&d),
            ["mesh/b/10.0.0.2", "mesh/b/fd00::2", "mesh/c/10.0.0.3"]
        );
        assert_eq!(d["mesh/b/fd00::2"].families, vec![Family::Ipv6]);
        assert_eq!(d["mesh/b/10.0.0.2"].asn, 65000);
        // c has no IPv6 address: it peers with b over IPv4 only.
        assert_eq!(
            names(&desired("c", &all, &t)),
            ["mesh/a/10.0.0.1", "mesh/b/10.0.0.2"]
        );

        let rr = nodes(&[
            ("a", &["10.0.0.1"], true),
            ("b", &["10.0.0.2"], true),
            ("c", &["10.0.0.3"], false),
            ("d", &["10.0.0.4"], false),
        ]);
        let d = desired("a", &rr, &t);
        assert_eq!(
            names(&d),
            ["mesh/b/10.0.0.2", "mesh/c/10.0.0.3", "mesh/d/10.0.0.4"]
        );
        assert!(!d["mesh/b/10.0.0.2"].route_reflector_client);
        assert!(d["mesh/c/10.0.0.3"].route_reflector_client);
        let d = desired("c", &rr, &t);
        assert_eq!(names(&d), ["mesh/a/10.0.0.1", "mesh/b/10.0.0.2"]);
        assert!(!d["mesh/a/10.0.0.1"].route_reflector_client);
    }

    struct Fake {
        up: Vec<&'static str>,
        sole: Vec<&'static str>,
    }
    impl Sessions for Fake {
        fn established(&self, n: &str) -> bool {
            self.up.contains(&n)
        }
        fn covered(&self, n: &str) -> bool {
            !self.sole.contains(&n)
        }
    }

    #[test]
    fn make_before_break() {
        let t = template();
        let mut m = Mesh::default();
        let flat = nodes(&[
            ("a", &["10.0.0.1"], false),
            ("b", &["10.0.0.2"], false),
            ("c", &["10.0.0.3"], false),
        ]);
        let none = Fake {
            up: vec![],
            sole: vec![],
        };
        assert!(m.step(desired("c", &flat, &t), &flat, &none, 0));
        assert_eq!(m.peers().len(), 2);
        // Nothing changed: nothing to do (no flap for unrelated Node changes).
        assert!(!m.step(desired("c", &flat, &t), &flat, &none, 10));

        // a becomes a reflector: c keeps b until a is up and b's routes come through a.
        let rr = nodes(&[
            ("a", &["10.0.0.1"], true),
            ("b", &["10.0.0.2"], false),
            ("c", &["10.0.0.3"], false),
        ]);
        assert!(!m.step(desired("c", &rr, &t), &rr, &none, 100));
        assert_eq!(m.peers().len(), 2, "b kept while a is not up");
        let up_but_sole = Fake {
            up: vec!["mesh/a/10.0.0.1"],
            sole: vec!["mesh/b/10.0.0.2"],
        };
        assert!(!m.step(desired("c", &rr, &t), &rr, &up_but_sole, 200));
        assert_eq!(m.leaving(), 1);
        let ready = Fake {
            up: vec!["mesh/a/10.0.0.1"],
            sole: vec![],
        };
        assert!(
            !m.step(desired("c", &rr, &t), &rr, &ready, 100 + SETTLE_MS - 1),
            "the plan must hold for a while first"
        );
        assert!(m.step(desired("c", &rr, &t), &rr, &ready, 100 + SETTLE_MS));
        assert_eq!(
            m.peers()
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>(),
            ["mesh/a/10.0.0.1"]
        );
        assert_eq!(m.leaving(), 0);
    }

    #[test]
    fn a_deleted_node_goes_at_once_and_a_stuck_one_after_the_give_up_time() {
        let t = template();
        let mut m = Mesh::default();
        let three = nodes(&[
            ("a", &["10.0.0.1"], false),
            ("b", &["10.0.0.2"], false),
            ("c", &["10.0.0.3"], false),
        ]);
        let none = Fake {
            up: vec![],
            sole: vec![],
        };
        m.step(desired("a", &three, &t), &three, &none, 0);
        let two = nodes(&[("a", &["10.0.0.1"], false), ("b", &["10.0.0.2"], false)]);
        assert!(m.step(desired("a", &two, &t), &two, &none, 1));
        assert_eq!(m.peers().len(), 1);

        // b becomes a reflector, but never comes up: c is removed after GIVE_UP_MS.
        let mut m = Mesh::default();
        m.step(desired("a", &three, &t), &three, &none, 0);
        let rr = nodes(&[
            ("a", &["10.0.0.1"], false),
            ("b", &["10.0.0.2"], true),
            ("c", &["10.0.0.3"], false),
        ]);
        assert!(!m.step(desired("a", &rr, &t), &rr, &none, 1000));
        assert!(!m.step(desired("a", &rr, &t), &rr, &none, 1000 + GIVE_UP_MS - 1));
        assert!(m.step(desired("a", &rr, &t), &rr, &none, 1000 + GIVE_UP_MS));
        assert_eq!(m.peers().len(), 1);
    }
}
