//! The routing table's event handler: what the rib task does with each [`RibEvent`], as a
//! pure state machine. No tokio, no sockets, no clock: time comes in as milliseconds.
//!
//! It owns the [`Rib`] (Adj-RIBs-In, local routes, Loc-RIB), every peer's import and export
//! policy and [`AdjRibOut`], the interned attribute sets, the maximum-prefix limits, the
//! graceful-restart stale timers and the initial-sync state. [`Table::handle`] returns
//! [`Outputs`]: the Loc-RIB changes for the FIB and what each peer must be sent. The golden
//! tests replay recorded events through it and diff the outputs.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use tracing::{info, warn};

use super::msg::{LocalRoute, RibEvent, RibSnapshot};
use crate::policy::{
    Candidate, Decision, ExportContext, ExportPolicy, ImportContext, ImportPolicy, Imported,
    LearnedFrom, OutRoute, Source,
};
use crate::rib::adj_out::{GroupRoute, OutChange, UpdateGroup};
use crate::rib::intern::Interner;
use crate::rib::{LOCAL_PEER, PeerId, PeerInfo, Rib, RibChange, RouteAttrs, Verdict};
use crate::wire::{Afi, NextHop, Origin, PathAttrs};

/// Speaker-wide settings of the table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TableConfig {
    pub local_asn: u32,
    pub router_id: std::net::Ipv4Addr,
    /// Route reflection cluster id (RFC 4456); `None`: the router id.
    #[serde(default)]
    pub cluster_id: Option<std::net::Ipv4Addr>,
    pub max_paths: usize,
    /// How long to wait for the initial peers' End-of-RIB before declaring the table
    /// complete anyway.
    pub sync_timeout_ms: u64,
    /// How long a restarting peer's stale routes are kept at most, once it is back.
    pub stale_time_ms: u64,
    /// The peers configured at start, whose End-of-RIB makes the initial table complete.
    pub initial_peers: Vec<PeerId>,
}

/// What one peer must be sent.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerOut {
    /// A new session (or none: 0): everything waiting for the old one is void.
    Reset {
        id: PeerId,
        session: u64,
    },
    Route {
        id: PeerId,
        prefix: IpNet,
        route: Option<Arc<OutRoute>>,
    },
    EndOfRib {
        id: PeerId,
        afi: Afi,
    },
    /// Too many prefixes accepted: end the session (Cease, RFC 4486 subcode 1).
    MaxPrefix {
        id: PeerId,
        limit: u32,
    },
}

#[derive(Debug, Default, serde::Serialize)]
pub struct Outputs {
    pub fib: Vec<RibChange>,
    pub peers: Vec<PeerOut>,
    /// The initial table became complete.
    pub synced: bool,
}

impl Outputs {
    pub fn is_empty(&self) -> bool {
        self.fib.is_empty() && self.peers.is_empty() && !self.synced
    }
}

#[derive(Debug)]
struct Peer {
    name: String,
    address: IpAddr,
    ebgp: bool,
    rr_client: bool,
    /// From the peer's OPEN, once a session came up.
    router_id: Option<std::net::Ipv4Addr>,
    import: ImportPolicy,
    export: ExportPolicy,
    /// 0 while no session is Established.
    session: u64,
    families: Vec<Afi>,
    local_addresses: Vec<IpAddr>,
    /// The update group its Established session is in.
    group: Option<u32>,
    tripped: bool,
}

/// What makes peers export alike: the peers of one update group share it.
#[derive(Debug, Clone, PartialEq)]
struct GroupKey {
    ebgp: bool,
    rr_client: bool,
    families: Vec<Afi>,
    export: ExportPolicy,
}

impl GroupKey {
    fn of(p: &Peer) -> GroupKey {
        let mut families = p.families.clone();
        families.sort();
        GroupKey {
            ebgp: p.ebgp,
            rr_client: p.rr_client,
            families,
            export: p.export.clone(),
        }
    }
}

pub struct Table {
    cfg: TableConfig,
    rib: Rib,
    peers: HashMap<PeerId, Peer>,
    attrs: Interner<RouteAttrs>,
    routes: Interner<OutRoute>,
    /// Update groups by id, with what their members share.
    groups: HashMap<u32, (GroupKey, UpdateGroup)>,
    next_group: u32,
    /// Deadline (ms) for each restarting peer's stale routes.
    stale_deadline: HashMap<PeerId, u64>,
    /// Initial peers whose End-of-RIB we still wait for, with the families left (`None`:
    /// the session is not up yet).
    sync_waiting: HashMap<PeerId, Option<HashSet<Afi>>>,
    sync_deadline: Option<u64>,
    synced: bool,
    /// The pod CIDRs: routes covering or inside them are refused on import.
    own: Vec<IpNet>,
    /// Every address of the node, with its subnet: next hops and subnets of our own.
    node_addresses: Vec<IpNet>,
}

impl Table {
    /// A table at time `now` (ms).
    pub fn new(cfg: TableConfig, now: u64) -> Table {
        Table {
            rib: Rib::new(cfg.max_paths),
            peers: HashMap::new(),
            attrs: Interner::default(),
            routes: Interner::default(),
            groups: HashMap::new(),
            next_group: 0,
            stale_deadline: HashMap::new(),
            sync_waiting: cfg.initial_peers.iter().map(|p| (*p, None)).collect(),
            sync_deadline: Some(now + cfg.sync_timeout_ms),
            synced: false,
            own: Vec::new(),
            node_addresses: Vec::new(),
            cfg,
        }
    }

    /// When [`Table::tick`] is next due.
    pub fn next_deadline(&self) -> Option<u64> {
        self.stale_deadline
            .values()
            .copied()
            .chain(self.sync_deadline)
            .min()
    }

    pub fn has_peer(&self, id: PeerId) -> bool {
        self.peers.contains_key(&id)
    }

    pub fn rib(&self) -> &Rib {
        &self.rib
    }

    pub fn synced(&self) -> bool {
        self.synced
    }

    /// Time passed: stale routes time out, the initial sync may complete.
    pub fn tick(&mut self, now: u64, out: &mut Outputs) {
        let expired: Vec<PeerId> = self
            .stale_deadline
            .iter()
            .filter(|(_, d)| **d <= now)
            .map(|(p, _)| *p)
            .collect();
        let mut changes = Vec::new();
        for p in expired {
            self.stale_deadline.remove(&p);
            let before = changes.len();
            self.rib.sweep_stale(p, None, &mut changes);
            info!(
                peer = p,
                removed = changes.len() - before,
                "stale routes timed out"
            );
        }
        self.publish(changes, out);
        self.check_synced(now, out);
    }

    pub fn handle(&mut self, now: u64, ev: RibEvent, out: &mut Outputs) {
        let mut changes = Vec::new();
        match ev {
            RibEvent::PeerConfig {
                id,
                name,
                address,
                ebgp,
                rr_client,
                import,
                export,
            } => {
                let (import_changed, export_changed) = match self.peers.get_mut(&id) {
                    Some(p) => {
                        let changed = (
                            p.import != import,
                            p.export != export || p.rr_client != rr_client,
                        );
                        p.import = import;
                        p.export = export;
                        p.name = name;
                        p.address = address;
                        p.ebgp = ebgp;
                        p.rr_client = rr_client;
                        changed
                    }
                    None => {
                        self.peers.insert(
                            id,
                            Peer {
                                name,
                                address,
                                ebgp,
                                rr_client,
                                router_id: None,
                                import,
                                export,
                                session: 0,
                                families: Vec::new(),
                                local_addresses: Vec::new(),
                                group: None,
                                tripped: false,
                            },
                        );
                        (false, false)
                    }
                };
                if import_changed {
                    self.reevaluate(id, &mut changes);
                    self.check_max(id, out);
                }
                if export_changed {
                    self.full_export(id, out);
                }
            }
            RibEvent::PeerRemoved { id } => {
                self.rib.peer_down(id, &[], &mut changes);
                self.rib.sweep_stale(id, None, &mut changes);
                self.leave_group(id);
                self.peers.remove(&id);
                self.stale_deadline.remove(&id);
                self.sync_waiting.remove(&id);
                out.peers.push(PeerOut::Reset { id, session: 0 });
            }
            RibEvent::PeerUp {
                id,
                session,
                router_id,
                families,
                preserved,
                local_addresses,
            } => {
                let Some(p) = self.peers.get_mut(&id) else {
                    return;
                };
                p.session = session;
                p.router_id = Some(router_id);
                p.families = families.clone();
                p.local_addresses = local_addresses;
                p.tripped = false;
                self.rib.set_peer(
                    id,
                    PeerInfo {
                        name: p.name.as_str().into(),
                        address: p.address,
                        router_id,
                        ebgp: p.ebgp,
                    },
                );
                // RFC 4724 4.2: families the peer did not preserve lose their stale routes
                // at once; the others keep them until End-of-RIB or the stale timer.
                for afi in Afi::ALL {
                    if !preserved.contains(&afi) || !families.contains(&afi) {
                        self.rib.sweep_stale(id, Some(afi), &mut changes);
                    }
                }
                if self.rib.counts(id).stale > 0 {
                    self.stale_deadline.insert(id, now + self.cfg.stale_time_ms);
                } else {
                    self.stale_deadline.remove(&id);
                }
                if let Some(w) = self.sync_waiting.get_mut(&id) {
                    *w = Some(families.iter().copied().collect());
                }
                // Whatever the sweep changed goes out first, then the whole table.
                self.publish(std::mem::take(&mut changes), out);
                out.peers.push(PeerOut::Reset { id, session });
                self.full_export(id, out);
                for afi in families {
                    out.peers.push(PeerOut::EndOfRib { id, afi });
                }
            }
            RibEvent::PeerDown {
                id,
                keep,
                stale_for,
            } => {
                self.rib.peer_down(id, &keep, &mut changes);
                if !keep.is_empty() && self.rib.counts(id).stale > 0 {
                    self.stale_deadline
                        .insert(id, now + (stale_for.max(1) as u64) * 1000);
                }
                self.leave_group(id);
                if let Some(p) = self.peers.get_mut(&id) {
                    p.session = 0;
                }
                out.peers.push(PeerOut::Reset { id, session: 0 });
            }
            RibEvent::Update {
                id,
                withdrawn,
                announced,
            } => {
                for p in withdrawn {
                    self.rib.withdraw(id, p, &mut changes);
                }
                for (attrs, list) in announced {
                    self.announce(id, attrs, list, &mut changes);
                }
                self.check_max(id, out);
            }
            RibEvent::EndOfRib { id, afi } => {
                self.rib.sweep_stale(id, Some(afi), &mut changes);
                if self.rib.counts(id).stale == 0 {
                    self.stale_deadline.remove(&id);
                }
                if let Some(Some(fams)) = self.sync_waiting.get_mut(&id) {
                    fams.remove(&afi);
                    if fams.is_empty() {
                        self.sync_waiting.remove(&id);
                    }
                }
            }
            RibEvent::RouteRefresh { id, afi } => {
                if let Some(p) = self.peers.get(&id)
                    && p.session != 0
                    && let Some((_, g)) = p.group.and_then(|g| self.groups.get(&g))
                {
                    for (prefix, route) in g.family(id, afi == Afi::Ipv6) {
                        out.peers.push(PeerOut::Route { id, prefix, route });
                    }
                    // RFC 7313 is not negotiated: the refresh is just the routes again.
                }
            }
            RibEvent::NodeAddresses { mut addresses } => {
                addresses.sort();
                addresses.dedup();
                if addresses != self.node_addresses {
                    self.node_addresses = addresses;
                    let mut ids: Vec<PeerId> = self.peers.keys().copied().collect();
                    ids.sort();
                    for id in ids {
                        self.reevaluate(id, &mut changes);
                    }
                }
            }
            RibEvent::Underlay { routes } => {
                let before = changes.len();
                self.rib.set_underlay(routes, &mut changes);
                if changes.len() > before {
                    info!(
                        changed = changes.len() - before,
                        "next hops resolve differently"
                    );
                }
            }
            RibEvent::SetLocal { source, routes } => {
                let list: Vec<(IpNet, Arc<RouteAttrs>)> = routes
                    .into_iter()
                    .map(|r| (r.prefix, self.local_attrs(&r)))
                    .collect();
                if source == Source::PodCidrs {
                    let mut own: Vec<IpNet> = list.iter().map(|(p, _)| *p).collect();
                    own.sort();
                    if own != self.own {
                        // What may be imported depends on the pod CIDRs. New CIDRs go in
                        // first, then import is applied again, then the old ones go: a
                        // learned route never blinks out between the two.
                        let mut both = list.clone();
                        for (p, a) in self.rib.local(Source::PodCidrs) {
                            if !own.contains(p) {
                                both.push((*p, a.clone()));
                            }
                        }
                        self.rib.set_local(source, both, &mut changes);
                        self.own = own;
                        let mut ids: Vec<PeerId> = self.peers.keys().copied().collect();
                        ids.sort();
                        for id in ids {
                            self.reevaluate(id, &mut changes);
                        }
                    }
                }
                self.rib.set_local(source, list, &mut changes);
            }
        }
        self.publish(changes, out);
        self.check_synced(now, out);
    }

    fn local_attrs(&mut self, r: &LocalRoute) -> Arc<RouteAttrs> {
        let next_hop = match r.prefix {
            IpNet::V4(_) => NextHop::V4(std::net::Ipv4Addr::UNSPECIFIED),
            IpNet::V6(_) => NextHop::V6 {
                global: std::net::Ipv6Addr::UNSPECIFIED,
                link_local: None,
            },
        };
        self.attrs.intern(RouteAttrs::new(
            PathAttrs {
                origin: Origin::Igp,
                communities: r.communities.clone(),
                large_communities: r.large_communities.clone(),
                med: r.med,
                ..Default::default()
            },
            next_hop,
        ))
    }

    fn import_ctx<'a>(
        cfg: &TableConfig,
        p: &'a Peer,
        own: &'a [IpNet],
        node_addresses: &'a [IpNet],
    ) -> ImportContext<'a> {
        ImportContext {
            local_asn: cfg.local_asn,
            router_id: cfg.router_id,
            cluster_id: cfg.cluster_id.unwrap_or(cfg.router_id),
            ebgp: p.ebgp,
            own_prefixes: own,
            local_addresses: &p.local_addresses,
            node_addresses,
            peer_address: p.address,
            policy: &p.import,
        }
    }

    fn verdict(
        interner: &mut Interner<RouteAttrs>,
        orig: &Arc<RouteAttrs>,
        i: Imported,
    ) -> Verdict {
        match i {
            Imported::Accepted => Verdict {
                attrs: orig.clone(),
                refusal: None,
            },
            Imported::Refused(r) => Verdict {
                attrs: orig.clone(),
                refusal: Some(r),
            },
            Imported::Changed(mut c) => {
                c.received = Some(orig.clone());
                Verdict {
                    attrs: interner.intern(c),
                    refusal: None,
                }
            }
        }
    }

    fn announce(
        &mut self,
        id: PeerId,
        attrs: Arc<RouteAttrs>,
        list: Vec<IpNet>,
        changes: &mut Vec<RibChange>,
    ) {
        let Some(p) = self.peers.get(&id) else { return };
        let attrs = self.attrs.intern_arc(attrs);
        let cx = Self::import_ctx(&self.cfg, p, &self.own, &self.node_addresses);
        // Most prefixes of one UPDATE get the same verdict: decide each, build each
        // distinct result once.
        let mut cache: Vec<(Decision, Verdict)> = Vec::new();
        let mut verdicts = Vec::with_capacity(list.len());
        for prefix in list {
            let d = cx.decide(&prefix, &attrs);
            let v = match cache.iter().find(|(k, _)| *k == d) {
                Some((_, v)) => v.clone(),
                None => {
                    let v = Self::verdict(&mut self.attrs, &attrs, cx.apply(&attrs, d));
                    cache.push((d, v.clone()));
                    v
                }
            };
            verdicts.push((prefix, v));
        }
        for (prefix, v) in verdicts {
            self.rib.announce(id, prefix, v, changes);
        }
    }

    fn reevaluate(&mut self, id: PeerId, changes: &mut Vec<RibChange>) {
        let Some(p) = self.peers.get(&id) else { return };
        let cx = Self::import_ctx(&self.cfg, p, &self.own, &self.node_addresses);
        let interner = &mut self.attrs;
        self.rib.reevaluate(
            id,
            |prefix, orig| Self::verdict(interner, orig, cx.import(prefix, orig)),
            changes,
        );
    }

    fn check_max(&mut self, id: PeerId, out: &mut Outputs) {
        let accepted = self.rib.counts(id).accepted;
        if let Some(p) = self.peers.get_mut(&id)
            && let Some(max) = p.import.max_prefixes
            && accepted > max as u64
            && !p.tripped
        {
            p.tripped = true;
            warn!(peer = %p.name, accepted, max, "maximum prefixes exceeded");
            out.peers.push(PeerOut::MaxPrefix { id, limit: max });
        }
    }

    /// What the members of a group with `key` should have for a Loc-RIB selection
    /// (`None`: nothing); which members get it is [`GroupRoute::for_member`]'s to say.
    fn export_group(
        cfg: &TableConfig,
        peers: &HashMap<PeerId, Peer>,
        routes: &mut Interner<OutRoute>,
        key: &GroupKey,
        c: &RibChange,
    ) -> Option<GroupRoute> {
        let best = c.best()?;
        let learned = best.peer != LOCAL_PEER;
        let from = learned.then(|| {
            let q = peers.get(&best.peer);
            LearnedFrom {
                peer: best.peer,
                ibgp: q.is_some_and(|q| !q.ebgp),
                rr_client: q.is_some_and(|q| q.rr_client),
                router_id: q
                    .and_then(|q| q.router_id)
                    .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
            }
        });
        let cx = ExportContext {
            local_asn: cfg.local_asn,
            ebgp: key.ebgp,
            rr_client: key.rr_client,
            cluster_id: cfg.cluster_id.unwrap_or(cfg.router_id),
            policy: &key.export,
        };
        let r = cx.export(
            &c.prefix,
            &Candidate {
                source: best.source,
                attrs: &best.attrs,
                from,
            },
        )?;
        Some(GroupRoute {
            route: routes.intern(r),
            source: best.source,
            from: learned.then_some(best.peer),
        })
    }

    /// Loc-RIB changes out: to the FIB, and through each update group's export to its
    /// members.
    fn publish(&mut self, changes: Vec<RibChange>, out: &mut Outputs) {
        if changes.is_empty() {
            return;
        }
        let Table {
            cfg,
            peers,
            routes,
            groups,
            ..
        } = self;
        let mut ids: Vec<u32> = groups.keys().copied().collect();
        ids.sort();
        for gid in ids {
            let Some((key, g)) = groups.get_mut(&gid) else {
                continue;
            };
            for c in &changes {
                if !key.families.contains(&Afi::of(&c.prefix)) {
                    continue;
                }
                let want = Self::export_group(cfg, peers, routes, key, c);
                g.set(c.prefix, want, &mut |id, (prefix, route)| {
                    out.peers.push(PeerOut::Route { id, prefix, route })
                });
            }
        }
        out.fib.extend(changes);
    }

    /// Take peer `id` out of its update group; a group left empty goes.
    fn leave_group(&mut self, id: PeerId) {
        let Some(gid) = self.peers.get_mut(&id).and_then(|p| p.group.take()) else {
            return;
        };
        if let Some((_, g)) = self.groups.get_mut(&gid) {
            g.leave(id);
            if !g.has_members() {
                self.groups.remove(&gid);
            }
        }
    }

    /// Put peer `id` in the update group of its export (made, from the whole Loc-RIB, if
    /// none has it yet); what it now has.
    fn join_group(&mut self, id: PeerId) -> Vec<OutChange> {
        let Some(p) = self.peers.get(&id) else {
            return Vec::new();
        };
        let key = GroupKey::of(p);
        let router_id = p.router_id;
        let found = self
            .groups
            .iter()
            .filter(|(_, (k, _))| *k == key)
            .map(|(gid, _)| *gid)
            .min();
        let gid = match found {
            Some(gid) => gid,
            None => {
                let mut table = HashMap::new();
                for afi in &key.families {
                    for c in self.rib.selected(*afi) {
                        if let Some(r) =
                            Self::export_group(&self.cfg, &self.peers, &mut self.routes, &key, &c)
                        {
                            table.insert(c.prefix, r);
                        }
                    }
                }
                let gid = self.next_group;
                self.next_group += 1;
                self.groups.insert(gid, (key, UpdateGroup::new(table)));
                gid
            }
        };
        if let Some(p) = self.peers.get_mut(&id) {
            p.group = Some(gid);
        }
        match self.groups.get_mut(&gid) {
            Some((_, g)) => g.join(id, router_id),
            None => Vec::new(),
        }
    }

    /// Give peer `id` everything export allows (session start, or an export policy
    /// change: it may move to another update group; only the difference is sent).
    fn full_export(&mut self, id: PeerId, out: &mut Outputs) {
        let Some(p) = self.peers.get(&id) else { return };
        if p.session == 0 {
            return;
        }
        let had: HashMap<IpNet, Arc<OutRoute>> = p
            .group
            .and_then(|g| self.groups.get(&g))
            .map(|(_, g)| {
                g.family(id, false)
                    .into_iter()
                    .chain(g.family(id, true))
                    .filter_map(|(p, r)| Some((p, r?)))
                    .collect()
            })
            .unwrap_or_default();
        self.leave_group(id);
        let now = self.join_group(id);
        let mut gone: Vec<IpNet> = had
            .keys()
            .filter(|p| !now.iter().any(|(q, _)| q == *p))
            .copied()
            .collect();
        gone.sort();
        for prefix in gone {
            out.peers.push(PeerOut::Route {
                id,
                prefix,
                route: None,
            });
        }
        for (prefix, route) in now {
            let same = match (had.get(&prefix), &route) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b) || **a == **b,
                _ => false,
            };
            if !same {
                out.peers.push(PeerOut::Route { id, prefix, route });
            }
        }
    }

    fn check_synced(&mut self, now: u64, out: &mut Outputs) {
        if self.synced {
            return;
        }
        let done = self.sync_waiting.is_empty() || self.sync_deadline.is_some_and(|d| now >= d);
        if done {
            if !self.sync_waiting.is_empty() {
                info!(
                    waiting = self.sync_waiting.len(),
                    "initial sync timed out waiting for End-of-RIB"
                );
            }
            self.synced = true;
            self.sync_deadline = None;
            self.sync_waiting.clear();
            out.synced = true;
        }
    }

    /// Counts for status.
    pub(crate) fn snapshot(&self) -> RibSnapshot {
        RibSnapshot {
            peers: self
                .peers
                .iter()
                .map(|(id, p)| {
                    let g = p.group.and_then(|g| self.groups.get(&g)).map(|(_, g)| g);
                    let a = |s| g.map_or(0, |g| g.advertised(*id, s));
                    let adv = [
                        a(Source::PodCidrs),
                        a(Source::Services),
                        a(Source::Originate),
                        a(Source::Learned),
                    ];
                    (*id, (self.rib.counts(*id), adv))
                })
                .collect(),
            local: Source::LOCAL
                .iter()
                .map(|s| {
                    let mut v: Vec<IpNet> = self.rib.local(*s).keys().copied().collect();
                    v.sort();
                    (*s, v)
                })
                .collect(),
            loc_rib: self.rib.selected_count(),
            synced: self.synced,
            underlay: self.rib.underlay_len(),
        }
    }

    /// Forget attribute sets no route holds any more.
    pub fn sweep_interned(&mut self) {
        self.attrs.sweep();
        self.routes.sweep();
    }
}
