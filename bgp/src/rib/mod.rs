//! Routes learned from peers and the choice among them, as plain synchronous data.
//!
//! One table per family maps a prefix to its paths, one per peer: together they are the
//! Adj-RIBs-In (every path a peer sent, the ones import policy refused included, so that a
//! policy change can be re-applied without asking the peer) and the Loc-RIB (the selected
//! paths at the front of each entry). Attributes are shared (`Arc`) by all the prefixes of
//! one UPDATE, so a prefix costs a key and a few words.
//!
//! Every change to what is selected for a prefix is reported as a [`RibChange`] with the new
//! set of next hops (several for ECMP, none when the prefix is gone): that stream is what the
//! FIB and any other consumer follow.

mod best_path;

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use smallvec::SmallVec;

use best_path::{Candidate, compare, multipath_equal};
pub use best_path::{DEFAULT_LOCAL_PREF, Reason};

use crate::wire::{Afi, NextHop, PathAttrs};

/// Index of a peer in the RIB.
pub type PeerId = u32;

/// What the decision process needs to know about a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub name: Arc<str>,
    pub address: IpAddr,
    /// The peer's BGP identifier (from its OPEN).
    pub router_id: Ipv4Addr,
    pub ebgp: bool,
}

/// Attributes of a route as received, with its next hop; shared by the prefixes of an UPDATE.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RouteAttrs {
    pub attrs: PathAttrs,
    pub next_hop: NextHop,
}

/// One peer's path to a prefix.
#[derive(Debug, Clone)]
pub struct Path {
    pub peer: PeerId,
    pub attrs: Arc<RouteAttrs>,
    /// Kept over the peer's graceful restart, waiting to be refreshed (RFC 4724).
    pub stale: bool,
    /// Accepted by import policy; a refused path is kept but never selected.
    pub accepted: bool,
}

#[derive(Debug, Clone, Default)]
struct Dest {
    /// Selected paths first (`selected` of them, the best at index 0), then the others.
    /// Most prefixes have one path: it is kept inline, with no allocation of its own.
    paths: SmallVec<[Path; 1]>,
    selected: u8,
}

impl Dest {
    fn next_hops(&self) -> Vec<NextHop> {
        let mut v: Vec<NextHop> = self.paths[..self.selected as usize]
            .iter()
            .map(|p| p.attrs.next_hop)
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

/// A change of what is selected for a prefix: the next hops to forward to (none: gone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RibChange {
    pub prefix: IpNet,
    pub next_hops: Vec<NextHop>,
    /// How many next hops the prefix had before (0: it was not selected).
    pub previous: usize,
}

/// Routes from one peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PeerCounts {
    pub received: u64,
    pub accepted: u64,
    pub stale: u64,
}

/// A path as shown to operators.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PathView {
    pub peer: String,
    pub peer_address: IpAddr,
    pub next_hop: NextHop,
    pub as_path: String,
    pub origin: crate::wire::Origin,
    pub local_pref: u32,
    pub med: Option<u32>,
    pub communities: Vec<String>,
    /// Route reflection (RFC 4456): the router that originated the route in the AS, and
    /// the clusters it went through.
    pub originator_id: Option<Ipv4Addr>,
    pub cluster_list: Vec<Ipv4Addr>,
    pub stale: bool,
    pub accepted: bool,
    pub best: bool,
    /// Part of the ECMP set.
    pub selected: bool,
    /// Why the best path beat this one (for the others).
    pub lost_on: Option<&'static str>,
}

/// A prefix as shown to operators.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RouteView {
    pub prefix: IpNet,
    pub next_hops: Vec<NextHop>,
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

#[derive(Debug, Default)]
pub struct Rib {
    peers: Vec<Option<PeerInfo>>,
    counts: Vec<PeerCounts>,
    v4: HashMap<Ipv4Net, Dest>,
    v6: HashMap<Ipv6Net, Dest>,
    max_paths: usize,
}

impl Rib {
    pub fn new(max_paths: usize) -> Rib {
        Rib {
            max_paths: max_paths.max(1),
            ..Default::default()
        }
    }

    /// Register (or update) a peer under `id` before giving it paths.
    pub fn set_peer(&mut self, id: PeerId, info: PeerInfo) {
        let i = id as usize;
        if self.peers.len() <= i {
            self.peers.resize(i + 1, None);
            self.counts.resize(i + 1, PeerCounts::default());
        }
        self.peers[i] = Some(info);
    }

    pub fn peer(&self, id: PeerId) -> Option<&PeerInfo> {
        self.peers.get(id as usize).and_then(|p| p.as_ref())
    }

    pub fn counts(&self, id: PeerId) -> PeerCounts {
        self.counts.get(id as usize).copied().unwrap_or_default()
    }

    /// Number of prefixes with at least one path.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of prefixes with a selected path (the Loc-RIB), per family.
    pub fn selected_count(&self) -> (usize, usize) {
        (
            self.v4.values().filter(|d| d.selected > 0).count(),
            self.v6.values().filter(|d| d.selected > 0).count(),
        )
    }

    /// Add or replace `peer`'s path to `prefix`.
    pub fn announce(
        &mut self,
        peer: PeerId,
        prefix: IpNet,
        attrs: Arc<RouteAttrs>,
        accepted: bool,
        out: &mut Vec<RibChange>,
    ) {
        let path = Path {
            peer,
            attrs,
            stale: false,
            accepted,
        };
        match prefix {
            IpNet::V4(p) => upsert(
                &mut self.v4,
                &self.peers,
                &mut self.counts,
                self.max_paths,
                p,
                path,
                out,
            ),
            IpNet::V6(p) => upsert(
                &mut self.v6,
                &self.peers,
                &mut self.counts,
                self.max_paths,
                p,
                path,
                out,
            ),
        }
    }

    /// Remove `peer`'s path to `prefix`, if it has one.
    pub fn withdraw(&mut self, peer: PeerId, prefix: IpNet, out: &mut Vec<RibChange>) {
        match prefix {
            IpNet::V4(p) => remove(
                &mut self.v4,
                &self.peers,
                &mut self.counts,
                self.max_paths,
                p,
                peer,
                out,
            ),
            IpNet::V6(p) => remove(
                &mut self.v6,
                &self.peers,
                &mut self.counts,
                self.max_paths,
                p,
                peer,
                out,
            ),
        }
    }

    /// The peer's session ended: its paths of the families in `keep` become stale (graceful
    /// restart helper), all the others go.
    pub fn peer_down(&mut self, peer: PeerId, keep: &[Afi], out: &mut Vec<RibChange>) {
        let keep4 = keep.contains(&Afi::Ipv4);
        let keep6 = keep.contains(&Afi::Ipv6);
        sweep(
            &mut self.v4,
            &self.peers,
            &mut self.counts,
            self.max_paths,
            peer,
            out,
            |_, _| {
                if keep4 {
                    Sweep::MarkStale
                } else {
                    Sweep::Remove
                }
            },
        );
        sweep(
            &mut self.v6,
            &self.peers,
            &mut self.counts,
            self.max_paths,
            peer,
            out,
            |_, _| {
                if keep6 {
                    Sweep::MarkStale
                } else {
                    Sweep::Remove
                }
            },
        );
    }

    /// Remove the peer's paths still stale: for one family after its End-of-RIB, or for all
    /// when the restart timer ran out (`None`).
    pub fn sweep_stale(&mut self, peer: PeerId, afi: Option<Afi>, out: &mut Vec<RibChange>) {
        if self.counts(peer).stale == 0 {
            return;
        }
        let rule = |_: IpNet, p: &Path| if p.stale { Sweep::Remove } else { Sweep::Keep };
        if afi != Some(Afi::Ipv6) {
            sweep(
                &mut self.v4,
                &self.peers,
                &mut self.counts,
                self.max_paths,
                peer,
                out,
                rule,
            );
        }
        if afi != Some(Afi::Ipv4) {
            sweep(
                &mut self.v6,
                &self.peers,
                &mut self.counts,
                self.max_paths,
                peer,
                out,
                rule,
            );
        }
    }

    /// Re-run import policy over the peer's paths (after a policy change).
    pub fn reevaluate(
        &mut self,
        peer: PeerId,
        mut accept: impl FnMut(&IpNet, &RouteAttrs) -> bool,
        out: &mut Vec<RibChange>,
    ) {
        sweep(
            &mut self.v4,
            &self.peers,
            &mut self.counts,
            self.max_paths,
            peer,
            out,
            |k, p| Sweep::SetAccepted(accept(&k, &p.attrs)),
        );
        sweep(
            &mut self.v6,
            &self.peers,
            &mut self.counts,
            self.max_paths,
            peer,
            out,
            |k, p| Sweep::SetAccepted(accept(&k, &p.attrs)),
        );
    }

    /// The next hops selected for `prefix` (empty when none).
    pub fn next_hops(&self, prefix: &IpNet) -> Vec<NextHop> {
        match prefix {
            IpNet::V4(p) => self.v4.get(p).map(Dest::next_hops).unwrap_or_default(),
            IpNet::V6(p) => self.v6.get(p).map(Dest::next_hops).unwrap_or_default(),
        }
    }

    /// Every prefix with a selected path and its next hops.
    pub fn selected(&self) -> impl Iterator<Item = (IpNet, Vec<NextHop>)> + '_ {
        let v4 = self.v4.iter().map(|(k, d)| (k.net(), d));
        let v6 = self.v6.iter().map(|(k, d)| (k.net(), d));
        v4.chain(v6)
            .filter(|(_, d)| d.selected > 0)
            .map(|(k, d)| (k, d.next_hops()))
    }

    /// Operators' view of every prefix, sorted.
    pub fn view(&self) -> Vec<RouteView> {
        let mut out: Vec<RouteView> = self
            .v4
            .iter()
            .map(|(k, d)| self.view_of(k.net(), d))
            .chain(self.v6.iter().map(|(k, d)| self.view_of(k.net(), d)))
            .collect();
        out.sort_by_key(|r| r.prefix);
        out
    }

    fn view_of(&self, prefix: IpNet, d: &Dest) -> RouteView {
        let best = d.paths.first().filter(|_| d.selected > 0);
        let cand = |p: &'_ Path| -> Option<(PeerInfo, Path)> {
            self.peer(p.peer).map(|i| (i.clone(), p.clone()))
        };
        let best_c = best.and_then(cand);
        let paths = d
            .paths
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let info = self.peer(p.peer);
                let lost_on = match (&best_c, info) {
                    (Some((bi, bp)), Some(pi)) if i >= d.selected as usize => {
                        if !p.accepted {
                            Some("refused by import policy")
                        } else {
                            let (_, r) = compare(
                                &Candidate { path: bp, peer: bi },
                                &Candidate { path: p, peer: pi },
                            );
                            Some(if i > 0 && r == Reason::Equal {
                                "same next hop as a selected path"
                            } else {
                                r.describe()
                            })
                        }
                    }
                    (None, _) if !p.accepted => Some("refused by import policy"),
                    _ => None,
                };
                let a = &p.attrs.attrs;
                PathView {
                    peer: info.map(|i| i.name.to_string()).unwrap_or_default(),
                    peer_address: info
                        .map(|i| i.address)
                        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
                    next_hop: p.attrs.next_hop,
                    as_path: a.as_path.to_string(),
                    origin: a.origin,
                    local_pref: a.local_pref.unwrap_or(DEFAULT_LOCAL_PREF),
                    med: a.med,
                    communities: a
                        .communities
                        .iter()
                        .map(|c| format!("{}:{}", c >> 16, c & 0xffff))
                        .chain(
                            a.large_communities
                                .iter()
                                .map(|c| format!("{}:{}:{}", c[0], c[1], c[2])),
                        )
                        .collect(),
                    originator_id: a.originator_id,
                    cluster_list: a.cluster_list.clone(),
                    stale: p.stale,
                    accepted: p.accepted,
                    best: i == 0 && d.selected > 0,
                    selected: i < d.selected as usize,
                    lost_on,
                }
            })
            .collect();
        RouteView {
            prefix,
            next_hops: d.next_hops(),
            paths,
        }
    }
}

fn count_add(counts: &mut [PeerCounts], p: &Path, sign: i64) {
    if let Some(c) = counts.get_mut(p.peer as usize) {
        let add = |x: &mut u64, on: bool| {
            if on {
                *x = (*x as i64 + sign).max(0) as u64;
            }
        };
        add(&mut c.received, true);
        add(&mut c.accepted, p.accepted);
        add(&mut c.stale, p.stale);
    }
}

fn upsert<K: Key>(
    table: &mut HashMap<K, Dest>,
    peers: &[Option<PeerInfo>],
    counts: &mut [PeerCounts],
    max_paths: usize,
    key: K,
    path: Path,
    out: &mut Vec<RibChange>,
) {
    let dest = table.entry(key).or_default();
    let before = if dest.selected > 0 {
        dest.next_hops()
    } else {
        Vec::new()
    };
    count_add(counts, &path, 1);
    match dest.paths.iter_mut().find(|p| p.peer == path.peer) {
        Some(old) => {
            let old = std::mem::replace(old, path);
            count_add(counts, &old, -1);
        }
        None => dest.paths.push(path),
    }
    select(dest, peers, max_paths);
    let after = dest.next_hops();
    if before != after {
        out.push(RibChange {
            prefix: key.net(),
            previous: before.len(),
            next_hops: after,
        });
    }
}

fn remove<K: Key>(
    table: &mut HashMap<K, Dest>,
    peers: &[Option<PeerInfo>],
    counts: &mut [PeerCounts],
    max_paths: usize,
    key: K,
    peer: PeerId,
    out: &mut Vec<RibChange>,
) {
    let Some(dest) = table.get_mut(&key) else {
        return;
    };
    let Some(i) = dest.paths.iter().position(|p| p.peer == peer) else {
        return;
    };
    let before = dest.next_hops();
    let old = dest.paths.remove(i);
    count_add(counts, &old, -1);
    if (i as u8) < dest.selected {
        dest.selected -= 1;
    }
    finish(table, peers, max_paths, key, before, out);
}

/// Reselect after a removal and report; drop the entry once it has no path.
fn finish<K: Key>(
    table: &mut HashMap<K, Dest>,
    peers: &[Option<PeerInfo>],
    max_paths: usize,
    key: K,
    before: Vec<NextHop>,
    out: &mut Vec<RibChange>,
) {
    let Some(dest) = table.get_mut(&key) else {
        return;
    };
    select(dest, peers, max_paths);
    let after = dest.next_hops();
    if dest.paths.is_empty() {
        table.remove(&key);
    }
    if before != after {
        out.push(RibChange {
            prefix: key.net(),
            previous: before.len(),
            next_hops: after,
        });
    }
}

enum Sweep {
    Keep,
    MarkStale,
    Remove,
    SetAccepted(bool),
}

fn sweep<K: Key>(
    table: &mut HashMap<K, Dest>,
    peers: &[Option<PeerInfo>],
    counts: &mut [PeerCounts],
    max_paths: usize,
    peer: PeerId,
    out: &mut Vec<RibChange>,
    mut rule: impl FnMut(IpNet, &Path) -> Sweep,
) {
    if counts.get(peer as usize).is_none_or(|c| c.received == 0) {
        return;
    }
    let mut emptied = Vec::new();
    for (key, dest) in table.iter_mut() {
        let Some(i) = dest.paths.iter().position(|p| p.peer == peer) else {
            continue;
        };
        let before = dest.next_hops();
        match rule(key.net(), &dest.paths[i]) {
            Sweep::Keep => continue,
            Sweep::MarkStale => {
                if dest.paths[i].stale {
                    continue;
                }
                count_add(counts, &dest.paths[i], -1);
                dest.paths[i].stale = true;
                count_add(counts, &dest.paths[i], 1);
            }
            Sweep::Remove => {
                let old = dest.paths.remove(i);
                count_add(counts, &old, -1);
                if (i as u8) < dest.selected {
                    dest.selected -= 1;
                }
            }
            Sweep::SetAccepted(a) => {
                if dest.paths[i].accepted == a {
                    continue;
                }
                count_add(counts, &dest.paths[i], -1);
                dest.paths[i].accepted = a;
                count_add(counts, &dest.paths[i], 1);
            }
        }
        select(dest, peers, max_paths);
        let after = dest.next_hops();
        if dest.paths.is_empty() {
            emptied.push(*key);
        }
        if before != after {
            out.push(RibChange {
                prefix: key.net(),
                previous: before.len(),
                next_hops: after,
            });
        }
    }
    for k in emptied {
        table.remove(&k);
    }
}

/// Run the decision process over `dest`: the best path to the front, then the paths equal
/// enough to share the load (up to `max_paths`, one per next hop).
fn select(dest: &mut Dest, peers: &[Option<PeerInfo>], max_paths: usize) {
    let info = |p: &Path| peers.get(p.peer as usize).and_then(|i| i.as_ref());
    let mut chosen = 0usize;
    let limit = max_paths.min(u8::MAX as usize);
    while chosen < dest.paths.len() && chosen < limit {
        // The best of the remaining usable paths.
        let mut best: Option<usize> = None;
        for i in chosen..dest.paths.len() {
            let p = &dest.paths[i];
            let Some(pi) = info(p).filter(|_| p.accepted) else {
                continue;
            };
            if chosen > 0 {
                // After the first: only multipath-equal paths with a next hop not taken yet.
                let b = &dest.paths[0];
                let Some(bi) = info(b) else { continue };
                let nh_taken = dest.paths[..chosen]
                    .iter()
                    .any(|q| q.attrs.next_hop == p.attrs.next_hop);
                if nh_taken
                    || !multipath_equal(
                        &Candidate { path: b, peer: bi },
                        &Candidate { path: p, peer: pi },
                    )
                {
                    continue;
                }
            }
            best = match best {
                None => Some(i),
                Some(j) => {
                    let q = &dest.paths[j];
                    let qi = info(q).filter(|_| q.accepted);
                    match qi {
                        Some(qi) => {
                            let (o, _) = compare(
                                &Candidate { path: p, peer: pi },
                                &Candidate { path: q, peer: qi },
                            );
                            if o == std::cmp::Ordering::Less {
                                Some(i)
                            } else {
                                Some(j)
                            }
                        }
                        None => Some(i),
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
