//! The decision process (RFC 4271 9.1.2.2, RFC 4456 9 for route reflection) and the rule that
//! makes paths equal enough to share the forwarding load (multipath).

use std::cmp::Ordering;

use super::{Path, PeerInfo};

/// Default LOCAL_PREF for routes that carry none (eBGP).
pub const DEFAULT_LOCAL_PREF: u32 = 100;

/// The step of the decision process that decided between two paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The node's own route wins over learned ones (pod CIDRs first, then Services, then
    /// `originate`).
    Source,
    LocalPref,
    AsPathLength,
    Origin,
    Med,
    ExternalOverInternal,
    /// Lower interior cost to the next hop (next-hop tracking).
    IgpCost,
    NotStale,
    ClusterListLength,
    RouterId,
    PeerAddress,
    /// Nothing told them apart (the same peer sent both: cannot happen in one RIB).
    Equal,
}

impl Reason {
    pub fn describe(self) -> &'static str {
        match self {
            Reason::Source => "the node's own route is preferred",
            Reason::LocalPref => "higher local preference",
            Reason::AsPathLength => "shorter AS path",
            Reason::Origin => "lower origin",
            Reason::Med => "lower MED",
            Reason::ExternalOverInternal => "eBGP over iBGP",
            Reason::IgpCost => "lower IGP cost to the next hop",
            Reason::NotStale => "not stale",
            Reason::ClusterListLength => "shorter cluster list",
            Reason::RouterId => "lower router id",
            Reason::PeerAddress => "lower peer address",
            Reason::Equal => "equal",
        }
    }
}

pub(crate) struct Candidate<'a> {
    pub path: &'a Path,
    pub peer: &'a PeerInfo,
    /// Interior cost to the next hop (the metric of the underlay route it resolves
    /// through; 0 on a connected subnet).
    pub cost: u32,
}

impl Candidate<'_> {
    fn local_pref(&self) -> u32 {
        self.path
            .attrs
            .attrs
            .local_pref
            .unwrap_or(DEFAULT_LOCAL_PREF)
    }
    fn med(&self) -> u32 {
        // RFC 4271 9.1.2.2 c: a missing MED is the lowest value.
        self.path.attrs.attrs.med.unwrap_or(0)
    }
    fn router_id(&self) -> u32 {
        // RFC 4456 9: the ORIGINATOR_ID stands in for the router id of reflected routes.
        u32::from(
            self.path
                .attrs
                .attrs
                .originator_id
                .unwrap_or(self.peer.router_id),
        )
    }
}

/// Compare `a` and `b`: `Less` means `a` is preferred. Returns the deciding step.
pub(crate) fn compare(a: &Candidate<'_>, b: &Candidate<'_>) -> (Ordering, Reason) {
    let steps: [(Ordering, Reason); 11] = [
        (a.path.source.cmp(&b.path.source), Reason::Source),
        (b.local_pref().cmp(&a.local_pref()), Reason::LocalPref),
        (
            a.path
                .attrs
                .attrs
                .as_path
                .path_len()
                .cmp(&b.path.attrs.attrs.as_path.path_len()),
            Reason::AsPathLength,
        ),
        (
            a.path.attrs.attrs.origin.cmp(&b.path.attrs.attrs.origin),
            Reason::Origin,
        ),
        (med_order(a, b), Reason::Med),
        (b.peer.ebgp.cmp(&a.peer.ebgp), Reason::ExternalOverInternal),
        (a.cost.cmp(&b.cost), Reason::IgpCost),
        (a.path.stale.cmp(&b.path.stale), Reason::NotStale),
        (
            a.path
                .attrs
                .attrs
                .cluster_list
                .len()
                .cmp(&b.path.attrs.attrs.cluster_list.len()),
            Reason::ClusterListLength,
        ),
        (a.router_id().cmp(&b.router_id()), Reason::RouterId),
        (a.peer.address.cmp(&b.peer.address), Reason::PeerAddress),
    ];
    steps
        .into_iter()
        .find(|(o, _)| *o != Ordering::Equal)
        .unwrap_or((Ordering::Equal, Reason::Equal))
}

/// MED is only compared between routes from the same neighbouring AS (RFC 4271 9.1.2.2 c).
fn med_order(a: &Candidate<'_>, b: &Candidate<'_>) -> Ordering {
    let na = a.path.attrs.attrs.as_path.neighbor_as();
    let nb = b.path.attrs.attrs.as_path.neighbor_as();
    if na == nb {
        a.med().cmp(&b.med())
    } else {
        Ordering::Equal
    }
}

/// Whether `a` may share the load with the best path `best`: equal through the eBGP/iBGP
/// step (AS paths of the same length, not necessarily the same ASes, as with
/// "multipath relax"), the same interior cost, and a next hop of its own.
pub(crate) fn multipath_equal(best: &Candidate<'_>, a: &Candidate<'_>) -> bool {
    best.local_pref() == a.local_pref()
        && best.path.attrs.attrs.as_path.path_len() == a.path.attrs.attrs.as_path.path_len()
        && best.path.attrs.attrs.origin == a.path.attrs.attrs.origin
        && med_order(best, a) == Ordering::Equal
        && best.peer.ebgp == a.peer.ebgp
        && best.cost == a.cost
}
