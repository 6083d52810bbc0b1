//! What the peers are given: Adj-RIBs-Out (RFC 4271 3.2) computed from the Loc-RIB through
//! export policy, one per update group. Pure.
//!
//! Peers whose export is computed alike (same eBGP/iBGP side, reflection client or not,
//! families and export policy) form an [`UpdateGroup`]: export runs once per group and
//! change, and the group keeps one table of what its members have, whatever their number.
//! What sets members apart is only where a route came from: a member is never given a
//! route learned from itself, nor one whose ORIGINATOR_ID is its own router id
//! ([`GroupRoute::for_member`]); so each member's Adj-RIB-Out is the group's minus those,
//! and needs no table of its own.
//!
//! [`UpdateGroup::set`] takes what export says the group should now have for a prefix and
//! emits, per member, the change to send: an announcement with the (interned) outgoing
//! route, or a withdrawal. Announcing what a member already has, or withdrawing what it
//! never got, is no change. Counts by [`Source`] are kept per member for status.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::IpNet;

use crate::policy::{OutRoute, Source};
use crate::rib::PeerId;

/// One change for a peer: `Some` announces, `None` withdraws.
pub type OutChange = (IpNet, Option<Arc<OutRoute>>);

/// A route in a group's Adj-RIB-Out, with what decides which members get it.
#[derive(Debug, Clone)]
pub struct GroupRoute {
    pub route: Arc<OutRoute>,
    pub source: Source,
    /// The peer it was learned from (`None`: the node's own).
    pub from: Option<PeerId>,
}

impl GroupRoute {
    fn same(&self, o: &GroupRoute) -> bool {
        (Arc::ptr_eq(&self.route, &o.route) || *self.route == *o.route)
            && self.source == o.source
            && self.from == o.from
    }

    /// Whether member `id` with BGP identifier `router_id` gets it: not the peer it came
    /// from, not the router its ORIGINATOR_ID names (RFC 4456 8).
    pub fn for_member(&self, id: PeerId, router_id: Option<Ipv4Addr>) -> bool {
        self.from != Some(id)
            && !(self.route.attrs.originator_id.is_some()
                && self.route.attrs.originator_id == router_id)
    }
}

#[derive(Debug, Clone)]
struct Member {
    id: PeerId,
    router_id: Option<Ipv4Addr>,
    by_source: [u64; 4],
}

#[derive(Debug, Default)]
pub struct UpdateGroup {
    routes: HashMap<IpNet, GroupRoute>,
    /// Sorted by id.
    members: Vec<Member>,
}

impl UpdateGroup {
    /// A group whose Adj-RIB-Out is `routes` (computed by the caller), with no member yet.
    pub fn new(routes: HashMap<IpNet, GroupRoute>) -> UpdateGroup {
        UpdateGroup {
            routes,
            members: Vec::new(),
        }
    }

    /// Make the group's route for `prefix` be `new`; `emit` gets each member's change.
    pub fn set(
        &mut self,
        prefix: IpNet,
        new: Option<GroupRoute>,
        emit: &mut impl FnMut(PeerId, OutChange),
    ) {
        let old = match &new {
            Some(n) => match self.routes.get(&prefix) {
                Some(o) if o.same(n) => return,
                _ => self.routes.insert(prefix, n.clone()),
            },
            None => match self.routes.remove(&prefix) {
                Some(o) => Some(o),
                None => return,
            },
        };
        for m in &mut self.members {
            let had = old.as_ref().filter(|o| o.for_member(m.id, m.router_id));
            let has = new.as_ref().filter(|n| n.for_member(m.id, m.router_id));
            if let Some(o) = had {
                m.by_source[o.source.index()] -= 1;
            }
            if let Some(n) = has {
                m.by_source[n.source.index()] += 1;
            }
            match (had, has) {
                (Some(o), Some(n)) if Arc::ptr_eq(&o.route, &n.route) || *o.route == *n.route => {}
                (_, Some(n)) => emit(m.id, (prefix, Some(n.route.clone()))),
                (Some(_), None) => emit(m.id, (prefix, None)),
                (None, None) => {}
            }
        }
    }

    /// Add member `id` (its session just came up, or it moved here); returns what it now
    /// has, sorted by prefix, for the caller to send or compare.
    pub fn join(&mut self, id: PeerId, router_id: Option<Ipv4Addr>) -> Vec<OutChange> {
        let mut m = Member {
            id,
            router_id,
            by_source: [0; 4],
        };
        let mut all: Vec<OutChange> = self
            .routes
            .iter()
            .filter(|(_, r)| r.for_member(id, router_id))
            .map(|(p, r)| {
                m.by_source[r.source.index()] += 1;
                (*p, Some(r.route.clone()))
            })
            .collect();
        all.sort_by_key(|(p, _)| *p);
        let at = self.members.partition_point(|x| x.id < id);
        if self.members.get(at).is_some_and(|x| x.id == id) {
            self.members[at] = m;
        } else {
            self.members.insert(at, m);
        }
        all
    }

    /// Remove member `id` (its session ended, or it moves to another group).
    pub fn leave(&mut self, id: PeerId) {
        self.members.retain(|m| m.id != id);
    }

    pub fn has_members(&self) -> bool {
        !self.members.is_empty()
    }

    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    /// What member `id` has of one family, for a route refresh (RFC 2918).
    pub fn family(&self, id: PeerId, v6: bool) -> Vec<OutChange> {
        let Some(m) = self.members.iter().find(|m| m.id == id) else {
            return Vec::new();
        };
        let mut v: Vec<OutChange> = self
            .routes
            .iter()
            .filter(|(p, r)| matches!(p, IpNet::V6(_)) == v6 && r.for_member(id, m.router_id))
            .map(|(p, r)| (*p, Some(r.route.clone())))
            .collect();
        v.sort_by_key(|(p, _)| *p);
        v
    }

    /// Prefixes member `id` was given from `source`.
    pub fn advertised(&self, id: PeerId, source: Source) -> u64 {
        self.members
            .iter()
            .find(|m| m.id == id)
            .map_or(0, |m| m.by_source[source.index()])
    }

    /// Routes in the group's table (shared by every member).
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::OutNextHop;
    use crate::wire::PathAttrs;

    fn route(med: u32, originator: Option<&str>) -> Arc<OutRoute> {
        Arc::new(OutRoute::new(
            PathAttrs {
                med: Some(med),
                originator_id: originator.map(|o| o.parse().unwrap()),
                ..Default::default()
            },
            OutNextHop::Local,
        ))
    }

    fn gr(r: &Arc<OutRoute>, source: Source, from: Option<PeerId>) -> GroupRoute {
        GroupRoute {
            route: r.clone(),
            source,
            from,
        }
    }

    fn collect(
        g: &mut UpdateGroup,
        prefix: IpNet,
        new: Option<GroupRoute>,
    ) -> Vec<(PeerId, Option<u32>)> {
        let mut v = Vec::new();
        g.set(prefix, new, &mut |id, (_, r)| {
            v.push((id, r.map(|r| r.attrs.med.unwrap())))
        });
        v
    }

    #[test]
    fn members_share_the_table_but_not_their_own_routes() {
        let p: IpNet = "10.244.2.0/24".parse().unwrap();
        let q: IpNet = "198.51.100.0/24".parse().unwrap();
        let rid = |i: u8| Some(Ipv4Addr::new(192, 0, 2, i));
        let mut g = UpdateGroup::default();
        assert!(g.join(1, rid(1)).is_empty());
        assert!(g.join(2, rid(2)).is_empty());
        assert!(g.join(3, rid(3)).is_empty());
        let r1 = route(1, None);
        // The node's own route: everyone.
        assert_eq!(
            collect(&mut g, p, Some(gr(&r1, Source::PodCidrs, None))),
            [(1, Some(1)), (2, Some(1)), (3, Some(1))]
        );
        // The same again (equal content, another Arc): nothing.
        assert!(collect(&mut g, p, Some(gr(&route(1, None), Source::PodCidrs, None))).is_empty());
        // Learned from member 2: everyone but 2.
        let r2 = route(2, None);
        assert_eq!(
            collect(&mut g, q, Some(gr(&r2, Source::Learned, Some(2)))),
            [(1, Some(2)), (3, Some(2))]
        );
        // Now from 1 instead, with the same attributes: 1 loses it, 2 gets it, 3 has it.
        assert_eq!(
            collect(&mut g, q, Some(gr(&r2, Source::Learned, Some(1)))),
            [(1, None), (2, Some(2))]
        );
        // Reflected with member 3 as originator: not to 3.
        let r3 = route(3, Some("192.0.2.3"));
        assert_eq!(
            collect(&mut g, q, Some(gr(&r3, Source::Learned, Some(1)))),
            [(2, Some(3)), (3, None)]
        );
        assert_eq!(g.advertised(3, Source::Learned), 0);
        assert_eq!(g.advertised(2, Source::Learned), 1);
        // A late member gets what is meant for it, sorted.
        let got: Vec<IpNet> = g.join(4, rid(4)).into_iter().map(|(p, _)| p).collect();
        assert_eq!(got, [p, q]);
        assert_eq!(g.family(4, false).len(), 2);
        assert_eq!(g.family(3, false).len(), 1);
        // Withdrawn: only those who had it hear of it.
        assert_eq!(collect(&mut g, q, None), [(2, None), (4, None)]);
        assert!(collect(&mut g, q, None).is_empty());
        g.leave(4);
        assert_eq!(g.member_count(), 3);
        assert_eq!(g.advertised(1, Source::PodCidrs), 1);
        assert_eq!(g.len(), 1);
    }
}
