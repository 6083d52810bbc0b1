//! The routing table as plain synchronous data: the Adj-RIBs-In, the node's own routes, the
//! Loc-RIB with the decision process, and (in [`adj_out`]) what each peer is sent.
//!
//! One table per family maps a prefix to its paths: one per peer that sent it (every path a
//! peer sent, the ones import policy refused included, with the reason, so that a policy
//! change can be re-applied without asking the peer), and one per local route source that
//! holds it (pod CIDRs, `originate`, Services). The selected paths sit at the front of each
//! entry. Attributes are shared ([`Arc`], interned by the RIB task), so a prefix costs a key
//! and a few words, whatever the number of peers.
//!
//! Every change of what is selected for a prefix is reported as a [`RibChange`] carrying the
//! selected paths with their attributes, source and peer (none when the prefix is gone):
//! that stream is what export to peers and the kernel FIB follow.

pub mod adj_out;
mod best_path;
pub mod intern;
mod nexthop;

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use smallvec::SmallVec;

use best_path::{Candidate, compare, multipath_equal};
pub use best_path::{DEFAULT_LOCAL_PREF, Reason};
use nexthop::NextHops;
pub use nexthop::{Resolution, UnderlayRoute, Unresolved};

use crate::policy::{Refusal, Source};
use crate::wire::{Afi, NextHop, PathAttrs, community};

/// Index of a peer in the RIB.
pub type PeerId = u32;

/// The pseudo-peer of the node's own routes (their [`Source`] tells them apart).
pub const LOCAL_PEER: PeerId = u32::MAX;

/// What the decision process needs to know about a peer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerInfo {
    pub name: Arc<str>,
    pub address: IpAddr,
    /// The peer's BGP identifier (from its OPEN).
    pub router_id: Ipv4Addr,
    pub ebgp: bool,
}

/// Attributes of a route with its next hop; shared by the prefixes of an UPDATE.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct RouteAttrs {
    pub attrs: PathAttrs,
    pub next_hop: NextHop,
    /// The attributes as received, when import policy changed them (these are then the
    /// effective ones); kept to apply a changed policy again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received: Option<Arc<RouteAttrs>>,
}

impl RouteAttrs {
    pub fn new(attrs: PathAttrs, next_hop: NextHop) -> RouteAttrs {
        RouteAttrs {
            attrs,
            next_hop,
            received: None,
        }
    }

    /// The attributes the peer sent.
    pub fn original(self: &Arc<Self>) -> &Arc<RouteAttrs> {
        self.received.as_ref().unwrap_or(self)
    }
}

/// One path to a prefix: a peer's, or a local source's.
#[derive(Debug, Clone)]
pub struct Path {
    /// The effective attributes (after import policy).
    pub attrs: Arc<RouteAttrs>,
    /// [`LOCAL_PEER`] for the node's own routes.
    pub peer: PeerId,
    pub source: Source,
    /// Kept over the peer's graceful restart, waiting to be refreshed (RFC 4724).
    pub stale: bool,
    /// 0: accepted by import policy; else the [`Refusal`] code. A refused path is kept but
    /// never selected.
    refusal: u8,
}

impl Path {
    pub fn accepted(&self) -> bool {
        self.refusal == 0
    }

    pub fn refusal(&self) -> Option<Refusal> {
        Refusal::from_code(self.refusal)
    }

    fn is(&self, peer: PeerId, source: Source) -> bool {
        self.peer == peer && self.source == source
    }
}

#[derive(Debug, Clone, Default)]
struct Dest {
    /// Selected paths first (`selected` of them, the best at index 0), then the others.
    /// Most prefixes have one path: it is kept inline, with no allocation of its own.
    paths: SmallVec<[Path; 1]>,
    selected: u8,
}

/// A selected path as compared before and after a change.
type Key1 = (PeerId, Source, Arc<RouteAttrs>, Option<Arc<Resolution>>);

/// One selected path, as a change reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Selected {
    pub peer: PeerId,
    pub source: Source,
    pub attrs: Arc<RouteAttrs>,
    /// How the next hop is reached when it is not on a connected subnet (next-hop
    /// tracking): forward to these gateways instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolution: Option<Arc<Resolution>>,
}

impl PartialEq for Selected {
    fn eq(&self, o: &Self) -> bool {
        self.peer == o.peer
            && self.source == o.source
            && self.attrs == o.attrs
            && self.resolution == o.resolution
    }
}
impl Eq for Selected {}

impl Dest {
    fn selection(&self, cx: &Ctx) -> SmallVec<[Selected; 1]> {
        self.paths[..self.selected as usize]
            .iter()
            .map(|p| Selected {
                peer: p.peer,
                source: p.source,
                attrs: p.attrs.clone(),
                resolution: cx.recursive(p),
            })
            .collect()
    }

    /// Whether the selection is still `before` (same paths, equal attributes, reached the
    /// same way; interned attributes compare by pointer).
    fn same_selection(&self, cx: &Ctx, before: &[Key1]) -> bool {
        before.len() == self.selected as usize
            && self.paths[..self.selected as usize].iter().zip(before).all(
                |(p, (peer, source, a, r))| {
                    p.peer == *peer
                        && p.source == *source
                        && (Arc::ptr_eq(&p.attrs, a) || *p.attrs == **a)
                        && cx.recursive(p) == *r
                },
            )
    }

    fn selection_key(&self, cx: &Ctx) -> SmallVec<[Key1; 1]> {
        self.paths[..self.selected as usize]
            .iter()
            .map(|p| (p.peer, p.source, p.attrs.clone(), cx.recursive(p)))
            .collect()
    }
}

/// A change of what is selected for a prefix: the selected paths, best first (none: the
/// prefix left the Loc-RIB).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RibChange {
    pub prefix: IpNet,
    pub selected: SmallVec<[Selected; 1]>,
}

impl RibChange {
    /// The best path.
    pub fn best(&self) -> Option<&Selected> {
        self.selected.first()
    }

    /// The next hops of the selected learned paths, sorted (empty when the prefix is gone
    /// or the node's own route is selected).
    pub fn next_hops(&self) -> Vec<NextHop> {
        next_hops_of(self.selected.iter().map(|s| (s.source, &s.attrs)))
    }

    /// Where to forward: each selected learned path's next hop, or the gateways it
    /// resolves to when it is not on a connected subnet; sorted, no repeats.
    pub fn gateways(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = Vec::new();
        for s in self.selected.iter().filter(|s| s.source == Source::Learned) {
            match s.resolution.as_deref() {
                Some(Resolution::Recursive { gateways, .. }) => v.extend(gateways),
                _ => v.push(s.attrs.next_hop.addr()),
            }
        }
        v.sort();
        v.dedup();
        v
    }
}

fn next_hops_of<'a>(paths: impl Iterator<Item = (Source, &'a Arc<RouteAttrs>)>) -> Vec<NextHop> {
    let mut v: Vec<NextHop> = paths
        .filter(|(s, _)| *s == Source::Learned)
        .map(|(_, a)| a.next_hop)
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Routes from one peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerCounts {
    pub received: u64,
    pub accepted: u64,
    pub stale: u64,
    /// Refused by import policy, by reason ([`Refusal::ALL`] order).
    #[serde(skip)]
    pub refused: [u64; Refusal::ALL.len()],
}

/// A path as shown to operators.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PathView {
    pub source: Source,
    /// The peer it came from (empty for the node's own routes).
    pub peer: String,
    pub peer_address: Option<IpAddr>,
    pub next_hop: Option<NextHop>,
    /// Next-hop tracking: the underlay route the next hop resolves through (none when it
    /// is on a connected subnet), its gateways, and the interior cost.
    pub resolved_via: Option<IpNet>,
    pub gateways: Vec<IpAddr>,
    pub igp_cost: u32,
    /// Why the next hop cannot be used (the path is then never selected).
    pub unresolved: Option<&'static str>,
    pub as_path: String,
    pub origin: crate::wire::Origin,
    pub local_pref: u32,
    pub med: Option<u32>,
    pub communities: Vec<String>,
    pub large_communities: Vec<String>,
    pub extended_communities: Vec<String>,
    /// Attributes Petrel keeps without interpreting them, by type code.
    pub unknown_attributes: Vec<UnknownView>,
    /// Route reflection (RFC 4456): the router that originated the route in the AS, and
    /// the clusters it went through.
    pub originator_id: Option<Ipv4Addr>,
    pub cluster_list: Vec<Ipv4Addr>,
    pub stale: bool,
    pub accepted: bool,
    /// Why import policy refused it.
    pub refused: Option<&'static str>,
    pub best: bool,
    /// Part of the ECMP set.
    pub selected: bool,
    /// Why the best path beat this one (for the others).
    pub lost_on: Option<&'static str>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct UnknownView {
    #[serde(rename = "type")]
    pub code: u8,
    pub flags: u8,
    pub transitive: bool,
    pub value: String,
}

/// A prefix as shown to operators.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RouteView {
    pub prefix: IpNet,
    pub next_hops: Vec<NextHop>,
    /// Where the kernel forwards (the next hops, or what they resolve to).
    pub gateways: Vec<IpAddr>,
    pub paths: Vec<PathView>,
}

trait Key: Copy + Eq + Hash {
    fn net(self) -> IpNet;
}
impl Key for Ipv4Net {
    fn net(self) -> IpNet {
        IpNet::V4(self)
    }
}
impl Key for Ipv6Net {
    fn net(self) -> IpNet {
        IpNet::V6(self)
    }
}

/// What every table operation needs besides the table.
#[derive(Debug, Default)]
struct Ctx {
    peers: Vec<Option<PeerInfo>>,
    counts: Vec<PeerCounts>,
    local_info: Option<PeerInfo>,
    max_paths: usize,
    /// Prefixes with a selected path, per family.
    selected: [usize; 2],
    nht: NextHops,
}

impl Ctx {
    /// How a learned path's next hop is reached.
    fn resolution(&self, p: &Path) -> Option<Arc<Resolution>> {
        (p.source == Source::Learned).then(|| self.nht.get(&p.attrs.next_hop))
    }

    /// The resolution a selection reports: only a recursive one.
    fn recursive(&self, p: &Path) -> Option<Arc<Resolution>> {
        self.resolution(p)
            .filter(|r| matches!(**r, Resolution::Recursive { .. }))
    }

    /// `p` as the decision process sees it; none when it cannot be selected (refused by
    /// import, its peer unknown, or its next hop unresolvable).
    fn candidate<'a>(&'a self, p: &'a Path) -> Option<Candidate<'a>> {
        let peer = self.info(p).filter(|_| p.accepted())?;
        let cost = match self.resolution(p) {
            Some(r) if !r.usable() => return None,
            Some(r) => r.cost(),
            None => 0,
        };
        Some(Candidate {
            path: p,
            peer,
            cost,
        })
    }

    fn info(&self, p: &Path) -> Option<&PeerInfo> {
        if p.peer == LOCAL_PEER {
            self.local_info.as_ref()
        } else {
            self.peers.get(p.peer as usize).and_then(|i| i.as_ref())
        }
    }

    fn count(&mut self, p: &Path, sign: i64) {
        let Some(c) = self.counts.get_mut(p.peer as usize) else {
            return;
        };
        let add = |x: &mut u64, on: bool| {
            if on {
                *x = (*x as i64 + sign).max(0) as u64;
            }
        };
        add(&mut c.received, true);
        add(&mut c.accepted, p.accepted());
        add(&mut c.stale, p.stale);
        if let Some(r) = p.refusal() {
            add(&mut c.refused[r.code() as usize - 1], true);
        }
    }

    /// Reselect `dest` and report the change against `before`.
    fn reselect(
        &mut self,
        fam: usize,
        prefix: IpNet,
        dest: &mut Dest,
        before: &[Key1],
        out: &mut Vec<RibChange>,
    ) {
        select(dest, self);
        if !dest.same_selection(self, before) {
            let (was, is) = (!before.is_empty(), dest.selected > 0);
            if was != is {
                if is {
                    self.selected[fam] += 1;
                } else {
                    self.selected[fam] -= 1;
                }
            }
            out.push(RibChange {
                prefix,
                selected: dest.selection(self),
            });
        }
    }
}

struct Table<K> {
    map: HashMap<K, Dest>,
    fam: usize,
}

impl<K: Key> Table<K> {
    fn new(fam: usize) -> Self {
        Table {
            map: HashMap::new(),
            fam,
        }
    }

    fn upsert(&mut self, cx: &mut Ctx, key: K, path: Path, out: &mut Vec<RibChange>) {
        let dest = self.map.entry(key).or_default();
        let before = dest.selection_key(cx);
        cx.count(&path, 1);
        cx.nht.track(&path.attrs.next_hop);
        match dest.paths.iter_mut().find(|p| p.is(path.peer, path.source)) {
            Some(old) => {
                let old = std::mem::replace(old, path);
                cx.count(&old, -1);
            }
            None => dest.paths.push(path),
        }
        cx.reselect(self.fam, key.net(), dest, &before, out);
    }

    fn remove(
        &mut self,
        cx: &mut Ctx,
        key: K,
        peer: PeerId,
        source: Source,
        out: &mut Vec<RibChange>,
    ) {
        let Some(dest) = self.map.get_mut(&key) else {
            return;
        };
        let Some(i) = dest.paths.iter().position(|p| p.is(peer, source)) else {
            return;
        };
        let before = dest.selection_key(cx);
        let old = dest.paths.remove(i);
        cx.count(&old, -1);
        if (i as u8) < dest.selected {
            dest.selected -= 1;
        }
        cx.reselect(self.fam, key.net(), dest, &before, out);
        if dest.paths.is_empty() {
            self.map.remove(&key);
        }
    }

    fn sweep(
        &mut self,
        cx: &mut Ctx,
        peer: PeerId,
        out: &mut Vec<RibChange>,
        mut rule: impl FnMut(IpNet, &Path) -> Sweep,
    ) {
        let mut emptied = Vec::new();
        for (key, dest) in self.map.iter_mut() {
            let Some(i) = dest.paths.iter().position(|p| p.peer == peer) else {
                continue;
            };
            let before = dest.selection_key(cx);
            match rule(key.net(), &dest.paths[i]) {
                Sweep::Keep => continue,
                Sweep::MarkStale => {
                    if dest.paths[i].stale {
                        continue;
                    }
                    cx.count(&dest.paths[i], -1);
                    dest.paths[i].stale = true;
                    cx.count(&dest.paths[i], 1);
                }
                Sweep::Remove => {
                    let old = dest.paths.remove(i);
                    cx.count(&old, -1);
                    if (i as u8) < dest.selected {
                        dest.selected -= 1;
                    }
                }
                Sweep::Replace(attrs, refusal) => {
                    let p = &mut dest.paths[i];
                    if p.refusal == refusal && Arc::ptr_eq(&p.attrs, &attrs) {
                        continue;
                    }
                    cx.count(&dest.paths[i], -1);
                    cx.nht.track(&attrs.next_hop);
                    dest.paths[i].attrs = attrs;
                    dest.paths[i].refusal = refusal;
                    cx.count(&dest.paths[i], 1);
                }
            }
            cx.reselect(self.fam, key.net(), dest, &before, out);
            if dest.paths.is_empty() {
                emptied.push(*key);
            }
        }
        for k in emptied {
            self.map.remove(&k);
        }
    }
}

enum Sweep {
    Keep,
    MarkStale,
    Remove,
    /// New effective attributes and refusal code (policy re-applied).
    Replace(Arc<RouteAttrs>, u8),
}

/// The outcome of import policy for one path, as the RIB stores it.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub attrs: Arc<RouteAttrs>,
    pub refusal: Option<Refusal>,
}

pub struct Rib {
    cx: Ctx,
    v4: Table<Ipv4Net>,
    v6: Table<Ipv6Net>,
    /// The node's own routes, per source.
    local: [HashMap<IpNet, Arc<RouteAttrs>>; 3],
}

impl Default for Rib {
    fn default() -> Self {
        Rib::new(1)
    }
}

impl std::fmt::Debug for Rib {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rib")
            .field("v4", &self.v4.map.len())
            .field("v6", &self.v6.map.len())
            .finish()
    }
}

fn local_slot(s: Source) -> usize {
    match s {
        Source::PodCidrs => 0,
        Source::Services => 1,
        Source::Originate | Source::Learned => 2,
    }
}

impl Rib {
    pub fn new(max_paths: usize) -> Rib {
        Rib {
            cx: Ctx {
                max_paths: max_paths.max(1),
                local_info: Some(PeerInfo {
                    name: "local".into(),
                    address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    router_id: Ipv4Addr::UNSPECIFIED,
                    ebgp: false,
                }),
                ..Default::default()
            },
            v4: Table::new(0),
            v6: Table::new(1),
            local: Default::default(),
        }
    }

    pub fn set_max_paths(&mut self, n: usize) {
        self.cx.max_paths = n.max(1);
    }

    /// Register (or update) a peer under `id` before giving it paths.
    pub fn set_peer(&mut self, id: PeerId, info: PeerInfo) {
        let i = id as usize;
        if self.cx.peers.len() <= i {
            self.cx.peers.resize(i + 1, None);
            self.cx.counts.resize(i + 1, PeerCounts::default());
        }
        self.cx.peers[i] = Some(info);
    }

    pub fn peer(&self, id: PeerId) -> Option<&PeerInfo> {
        self.cx.peers.get(id as usize).and_then(|p| p.as_ref())
    }

    pub fn counts(&self, id: PeerId) -> PeerCounts {
        self.cx.counts.get(id as usize).copied().unwrap_or_default()
    }

    /// Number of prefixes with at least one path.
    pub fn len(&self) -> usize {
        self.v4.map.len() + self.v6.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of prefixes with a selected path (the Loc-RIB), per family.
    pub fn selected_count(&self) -> (usize, usize) {
        (self.cx.selected[0], self.cx.selected[1])
    }

    /// Add or replace `peer`'s path to `prefix` with its import verdict.
    pub fn announce(&mut self, peer: PeerId, prefix: IpNet, v: Verdict, out: &mut Vec<RibChange>) {
        let path = Path {
            attrs: v.attrs,
            peer,
            source: Source::Learned,
            stale: false,
            refusal: v.refusal.map(Refusal::code).unwrap_or(0),
        };
        self.insert(prefix, path, out);
    }

    fn insert(&mut self, prefix: IpNet, path: Path, out: &mut Vec<RibChange>) {
        match prefix {
            IpNet::V4(p) => self.v4.upsert(&mut self.cx, p, path, out),
            IpNet::V6(p) => self.v6.upsert(&mut self.cx, p, path, out),
        }
    }

    fn delete(&mut self, prefix: IpNet, peer: PeerId, source: Source, out: &mut Vec<RibChange>) {
        match prefix {
            IpNet::V4(p) => self.v4.remove(&mut self.cx, p, peer, source, out),
            IpNet::V6(p) => self.v6.remove(&mut self.cx, p, peer, source, out),
        }
    }

    /// Remove `peer`'s path to `prefix`, if it has one.
    pub fn withdraw(&mut self, peer: PeerId, prefix: IpNet, out: &mut Vec<RibChange>) {
        self.delete(prefix, peer, Source::Learned, out);
    }

    /// Replace the routes of one local source; only the prefixes that differ change.
    pub fn set_local(
        &mut self,
        source: Source,
        routes: Vec<(IpNet, Arc<RouteAttrs>)>,
        out: &mut Vec<RibChange>,
    ) {
        let slot = local_slot(source);
        let new: HashMap<IpNet, Arc<RouteAttrs>> = routes.into_iter().collect();
        let gone: Vec<IpNet> = self.local[slot]
            .keys()
            .filter(|p| !new.contains_key(p))
            .copied()
            .collect();
        for p in gone {
            self.local[slot].remove(&p);
            self.delete(p, LOCAL_PEER, source, out);
        }
        let mut changed: Vec<(IpNet, Arc<RouteAttrs>)> = new
            .into_iter()
            .filter(|(p, a)| self.local[slot].get(p) != Some(a))
            .collect();
        changed.sort_by_key(|(p, _)| *p);
        for (p, a) in changed {
            self.local[slot].insert(p, a.clone());
            let path = Path {
                attrs: a,
                peer: LOCAL_PEER,
                source,
                stale: false,
                refusal: 0,
            };
            self.insert(p, path, out);
        }
    }

    /// The routes of one local source.
    pub fn local(&self, source: Source) -> &HashMap<IpNet, Arc<RouteAttrs>> {
        &self.local[local_slot(source)]
    }

    /// The peer's session ended: its paths of the families in `keep` become stale (graceful
    /// restart helper), all the others go.
    pub fn peer_down(&mut self, peer: PeerId, keep: &[Afi], out: &mut Vec<RibChange>) {
        if self.counts(peer).received == 0 {
            return;
        }
        let rule =
            |on: bool| move |_: IpNet, _: &Path| if on { Sweep::MarkStale } else { Sweep::Remove };
        self.v4
            .sweep(&mut self.cx, peer, out, rule(keep.contains(&Afi::Ipv4)));
        self.v6
            .sweep(&mut self.cx, peer, out, rule(keep.contains(&Afi::Ipv6)));
    }

    /// Remove the peer's paths still stale: for one family after its End-of-RIB, or for all
    /// when the restart timer ran out (`None`).
    pub fn sweep_stale(&mut self, peer: PeerId, afi: Option<Afi>, out: &mut Vec<RibChange>) {
        if self.counts(peer).stale == 0 {
            return;
        }
        let rule = |_: IpNet, p: &Path| if p.stale { Sweep::Remove } else { Sweep::Keep };
        if afi != Some(Afi::Ipv6) {
            self.v4.sweep(&mut self.cx, peer, out, rule);
        }
        if afi != Some(Afi::Ipv4) {
            self.v6.sweep(&mut self.cx, peer, out, rule);
        }
    }

    /// Apply import policy again to the peer's paths (after a policy change): `decide`
    /// gets each path's attributes as received.
    pub fn reevaluate(
        &mut self,
        peer: PeerId,
        mut decide: impl FnMut(&IpNet, &Arc<RouteAttrs>) -> Verdict,
        out: &mut Vec<RibChange>,
    ) {
        if self.counts(peer).received == 0 {
            return;
        }
        let mut rule = |k: IpNet, p: &Path| {
            let v = decide(&k, p.attrs.original());
            Sweep::Replace(v.attrs, v.refusal.map(Refusal::code).unwrap_or(0))
        };
        self.v4.sweep(&mut self.cx, peer, out, &mut rule);
        self.v6.sweep(&mut self.cx, peer, out, &mut rule);
    }

    /// A new underlay for next-hop tracking: every prefix with a path whose next hop now
    /// resolves differently is selected again.
    pub fn set_underlay(&mut self, routes: Vec<UnderlayRoute>, out: &mut Vec<RibChange>) {
        let in_use = self
            .v4
            .map
            .values()
            .chain(self.v6.map.values())
            .flat_map(|d| d.paths.iter())
            .filter(|p| p.source == Source::Learned)
            .map(|p| p.attrs.next_hop);
        let plan = self.cx.nht.plan(routes, in_use);
        if plan.changed.is_empty() {
            self.cx.nht.commit(plan);
            return;
        }
        let touched = |d: &Dest| {
            d.paths.iter().any(|p| {
                p.source == Source::Learned && NextHops::is_in(&p.attrs.next_hop, &plan.changed)
            })
        };
        let cx = &self.cx;
        let v4: Vec<(Ipv4Net, SmallVec<[Key1; 1]>)> = self
            .v4
            .map
            .iter()
            .filter(|(_, d)| touched(d))
            .map(|(k, d)| (*k, d.selection_key(cx)))
            .collect();
        let v6: Vec<(Ipv6Net, SmallVec<[Key1; 1]>)> = self
            .v6
            .map
            .iter()
            .filter(|(_, d)| touched(d))
            .map(|(k, d)| (*k, d.selection_key(cx)))
            .collect();
        self.cx.nht.commit(plan);
        for (k, before) in v4 {
            if let Some(d) = self.v4.map.get_mut(&k) {
                self.cx.reselect(0, k.net(), d, &before, out);
            }
        }
        for (k, before) in v6 {
            if let Some(d) = self.v6.map.get_mut(&k) {
                self.cx.reselect(1, k.net(), d, &before, out);
            }
        }
    }

    /// Number of underlay routes next hops are resolved through (none: not known yet).
    pub fn underlay_len(&self) -> Option<usize> {
        self.cx.nht.underlay_len()
    }

    /// The next hops selected for `prefix` (empty when none).
    pub fn next_hops(&self, prefix: &IpNet) -> Vec<NextHop> {
        let d = match prefix {
            IpNet::V4(p) => self.v4.map.get(p),
            IpNet::V6(p) => self.v6.map.get(p),
        };
        d.map(|d| {
            next_hops_of(
                d.paths[..d.selected as usize]
                    .iter()
                    .map(|p| (p.source, &p.attrs)),
            )
        })
        .unwrap_or_default()
    }

    /// Every prefix with a selected path, with its selection (best first).
    pub fn selected(&self, afi: Afi) -> Box<dyn Iterator<Item = RibChange> + '_> {
        fn it<'a, K: Key>(t: &'a Table<K>, cx: &'a Ctx) -> impl Iterator<Item = RibChange> + 'a {
            t.map
                .iter()
                .filter(|(_, d)| d.selected > 0)
                .map(|(k, d)| RibChange {
                    prefix: k.net(),
                    selected: d.selection(cx),
                })
        }
        let cx = &self.cx;
        match afi {
            Afi::Ipv4 => Box::new(it(&self.v4, cx)),
            Afi::Ipv6 => Box::new(it(&self.v6, cx)),
        }
    }

    /// Every learned path of `peer`, with its prefix.
    pub fn paths_of(&self, peer: PeerId) -> Vec<(IpNet, Path)> {
        fn it<K: Key>(t: &Table<K>, peer: PeerId, out: &mut Vec<(IpNet, Path)>) {
            for (k, d) in &t.map {
                for p in d.paths.iter().filter(|p| p.peer == peer) {
                    out.push((k.net(), p.clone()));
                }
            }
        }
        let mut out = Vec::new();
        it(&self.v4, peer, &mut out);
        it(&self.v6, peer, &mut out);
        out
    }

    /// Operators' view of every prefix, sorted.
    pub fn view(&self) -> Vec<RouteView> {
        let mut out: Vec<RouteView> = self
            .v4
            .map
            .iter()
            .map(|(k, d)| self.view_of(k.net(), d))
            .chain(self.v6.map.iter().map(|(k, d)| self.view_of(k.net(), d)))
            .collect();
        out.sort_by_key(|r| r.prefix);
        out
    }

    fn view_of(&self, prefix: IpNet, d: &Dest) -> RouteView {
        let best_c = d
            .paths
            .first()
            .filter(|_| d.selected > 0)
            .and_then(|b| self.cx.candidate(b));
        let paths = d
            .paths
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let info = self.cx.info(p);
                let res = self.cx.resolution(p);
                let unresolved = match res.as_deref() {
                    Some(Resolution::Unresolved(u)) => Some(u.describe()),
                    _ => None,
                };
                let lost_on = match (&best_c, self.cx.candidate(p)) {
                    (_, _) if !p.accepted() => Some("refused by import policy"),
                    (_, None) if unresolved.is_some() => Some("next hop unresolvable"),
                    (Some(bc), Some(pc)) if i >= d.selected as usize => {
                        let (_, r) = compare(bc, &pc);
                        Some(if i > 0 && r == Reason::Equal {
                            "same next hop as a selected path"
                        } else {
                            r.describe()
                        })
                    }
                    _ => None,
                };
                let (resolved_via, gateways, igp_cost) = match res.as_deref() {
                    Some(Resolution::Recursive {
                        via,
                        gateways,
                        metric,
                    }) => (Some(*via), gateways.clone(), *metric),
                    Some(Resolution::Connected) => (None, vec![p.attrs.next_hop.addr()], 0),
                    _ => (None, Vec::new(), 0),
                };
                let a = &p.attrs.attrs;
                let learned = p.source == Source::Learned;
                PathView {
                    source: p.source,
                    peer: if learned {
                        info.map(|i| i.name.to_string()).unwrap_or_default()
                    } else {
                        String::new()
                    },
                    peer_address: info.filter(|_| learned).map(|i| i.address),
                    next_hop: learned.then_some(p.attrs.next_hop),
                    resolved_via,
                    gateways,
                    igp_cost,
                    unresolved,
                    as_path: a.as_path.to_string(),
                    origin: a.origin,
                    local_pref: a.local_pref.unwrap_or(DEFAULT_LOCAL_PREF),
                    med: a.med,
                    communities: a
                        .communities
                        .iter()
                        .map(|c| community::format(*c))
                        .collect(),
                    large_communities: a
                        .large_communities
                        .iter()
                        .map(|c| format!("{}:{}:{}", c[0], c[1], c[2]))
                        .collect(),
                    extended_communities: a
                        .ext_communities
                        .iter()
                        .map(|c| community::format_ext(*c))
                        .collect(),
                    unknown_attributes: a
                        .unknown
                        .iter()
                        .map(|u| UnknownView {
                            code: u.code,
                            flags: u.flags,
                            transitive: u.transitive(),
                            value: u.value.iter().map(|b| format!("{b:02x}")).collect(),
                        })
                        .collect(),
                    originator_id: a.originator_id,
                    cluster_list: a.cluster_list.clone(),
                    stale: p.stale,
                    accepted: p.accepted(),
                    refused: p.refusal().map(Refusal::describe),
                    best: i == 0 && d.selected > 0,
                    selected: i < d.selected as usize,
                    lost_on,
                }
            })
            .collect();
        let selection = RibChange {
            prefix,
            selected: d.selection(&self.cx),
        };
        RouteView {
            prefix,
            next_hops: selection.next_hops(),
            gateways: selection.gateways(),
            paths,
        }
    }
}

/// Run the decision process over `dest`: the best path to the front, then the paths equal
/// enough to share the load (up to `max_paths`, one per next hop; only learned paths: the
/// node's own route stands alone). Paths refused by import or with an unresolvable next hop
/// are never selected (RFC 4271 9.1.2).
fn select(dest: &mut Dest, cx: &Ctx) {
    let mut chosen = 0usize;
    let limit = cx.max_paths.min(u8::MAX as usize);
    while chosen < dest.paths.len() && chosen < limit {
        // The best of the remaining usable paths.
        let mut best: Option<usize> = None;
        for i in chosen..dest.paths.len() {
            let Some(pc) = cx.candidate(&dest.paths[i]) else {
                continue;
            };
            if chosen > 0 {
                // After the first: only multipath-equal learned paths with a next hop not
                // taken yet.
                let Some(bc) = cx.candidate(&dest.paths[0]) else {
                    continue;
                };
                let p = &dest.paths[i];
                let nh_taken = dest.paths[..chosen]
                    .iter()
                    .any(|q| q.attrs.next_hop == p.attrs.next_hop);
                if bc.path.source.is_local()
                    || p.source.is_local()
                    || nh_taken
                    || !multipath_equal(&bc, &pc)
                {
                    continue;
                }
            }
            best = match best.and_then(|j| Some((j, cx.candidate(&dest.paths[j])?))) {
                None => Some(i),
                Some((j, qc)) => {
                    if compare(&pc, &qc).0 == std::cmp::Ordering::Less {
                        Some(i)
                    } else {
                        Some(j)
                    }
                }
            };
        }
        match best {
            Some(i) => {
                dest.paths.swap(chosen, i);
                chosen += 1;
            }
            None => break,
        }
    }
    dest.selected = chosen as u8;
}

#[cfg(test)]
mod tests;
