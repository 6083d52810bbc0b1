//! Import and export policy: what a peer's routes may enter the Loc-RIB as, and what each
//! peer is sent from it. Pure functions of (route, policy, context).
//!
//! **Import**, for every prefix of every UPDATE, in this order:
//! 1. safety, whatever the config says: routes that would loop (our AS in the path on eBGP,
//!    our router id as ORIGINATOR_ID), with one of our addresses as next hop, or covering or
//!    inside the node's own pod CIDRs are refused; and, unless `filter_martians` is off,
//!    martian prefixes, unusable next hops and routes inside a subnet the node is connected
//!    to (or a host route for the peer itself) are refused;
//! 2. the prefix list, when given (`prefixes`), is a gate: a prefix must match one entry;
//! 3. `rules`, first match decides: `reject` refuses, `accept` (the default) takes the route
//!    with the rule's `set` applied; no rule matched: accepted as received, except on eBGP
//!    with no prefix list, where nothing comes in that a rule did not accept (RFC 8212);
//! 4. GRACEFUL_SHUTDOWN (RFC 8326) lowers the local preference of what was accepted to 0.
//!
//! **Export**, for the best path of every prefix, to each peer:
//! 1. never: back to the peer it came from, iBGP-learned routes to iBGP peers (no route
//!    reflection), NO_ADVERTISE to anyone, NO_EXPORT and NO_EXPORT_SUBCONFED to eBGP;
//! 2. the peer's `export` rules, first match decides (`reject`, or `accept` with `set`);
//! 3. no rule matched: the node's own routes (pod CIDRs, `originate`, ...) go out, learned
//!    ones do not: Petrel is a leaf unless told otherwise.
//!
//! The outgoing attributes are then built as RFC 4271 5.1 says for the session type: on eBGP
//! our AS prepended (and `prepend` more times), next hop self, no LOCAL_PREF, MED only when
//! set by us; on iBGP, LOCAL_PREF carried, the next hop of a learned route unchanged.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;

use crate::rib::{DEFAULT_LOCAL_PREF, RouteAttrs};
use crate::wire::{AsPath, NextHop, Origin, PathAttrs, community};

/// Where a route in the RIB came from.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The node's pod CIDRs (from the config file or the Kubernetes Node).
    PodCidrs,
    /// Kubernetes Service addresses.
    Services,
    /// Static entries of the config file (`originate`).
    Originate,
    /// From a BGP peer.
    Learned,
}

impl Source {
    pub const LOCAL: [Source; 3] = [Source::PodCidrs, Source::Services, Source::Originate];

    pub fn is_local(self) -> bool {
        self != Source::Learned
    }

    pub fn name(self) -> &'static str {
        match self {
            Source::PodCidrs => "pod_cidrs",
            Source::Services => "services",
            Source::Originate => "originate",
            Source::Learned => "learned",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// `prefix` with bounds on the length, as in a router's prefix list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PrefixRule {
    pub prefix: IpNet,
    pub ge: u8,
    pub le: u8,
}

impl PrefixRule {
    pub fn matches(&self, net: &IpNet) -> bool {
        let len = net.prefix_len();
        len >= self.ge && len <= self.le && self.prefix.contains(net)
    }
}

/// A standard community with `*` allowed on either half (`65000:*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CommunityPattern {
    pub asn: Option<u16>,
    pub value: Option<u16>,
}

impl CommunityPattern {
    pub fn exact(c: u32) -> CommunityPattern {
        CommunityPattern {
            asn: Some((c >> 16) as u16),
            value: Some(c as u16),
        }
    }

    pub fn matches(&self, c: u32) -> bool {
        self.asn.is_none_or(|a| a == (c >> 16) as u16) && self.value.is_none_or(|v| v == c as u16)
    }
}

/// A large community (RFC 8092) with `*` allowed on any of its three parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LargePattern(pub [Option<u32>; 3]);

impl LargePattern {
    pub fn matches(&self, c: &[u32; 3]) -> bool {
        self.0.iter().zip(c).all(|(p, v)| p.is_none_or(|p| p == *v))
    }
}

/// The conditions of a rule; all that are given must hold. Within `communities` or
/// `large_communities`, one of the listed patterns is enough.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Match {
    /// `None`: any source.
    pub sources: Option<Vec<Source>>,
    pub prefixes: Option<Vec<PrefixRule>>,
    pub communities: Vec<CommunityPattern>,
    pub large_communities: Vec<LargePattern>,
}

impl Match {
    pub fn matches(&self, source: Source, prefix: &IpNet, a: &PathAttrs) -> bool {
        self.sources.as_ref().is_none_or(|s| s.contains(&source))
            && self
                .prefixes
                .as_ref()
                .is_none_or(|l| l.iter().any(|r| r.matches(prefix)))
            && (self.communities.is_empty()
                || self
                    .communities
                    .iter()
                    .any(|p| a.communities.iter().any(|c| p.matches(*c))))
            && (self.large_communities.is_empty()
                || self
                    .large_communities
                    .iter()
                    .any(|p| a.large_communities.iter().any(|c| p.matches(c))))
    }
}

/// What a rule changes on a route it accepts.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Set {
    /// Added (once each) to the route's communities.
    pub communities: Vec<u32>,
    pub large_communities: Vec<[u32; 3]>,
    pub med: Option<u32>,
    /// More copies of our AS on the path (eBGP export only).
    pub prepend: u8,
    pub local_pref: Option<u32>,
}

impl Set {
    pub fn is_empty(&self) -> bool {
        *self == Set::default()
    }

    fn apply(&self, a: &mut PathAttrs) {
        for c in &self.communities {
            if !a.communities.contains(c) {
                a.communities.push(*c);
            }
        }
        for c in &self.large_communities {
            if !a.large_communities.contains(c) {
                a.large_communities.push(*c);
            }
        }
        if self.med.is_some() {
            a.med = self.med;
        }
        if self.local_pref.is_some() {
            a.local_pref = self.local_pref;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    #[default]
    Accept,
    Reject,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Rule {
    pub matches: Match,
    pub action: Action,
    pub set: Set,
}

fn first_match<'a>(
    rules: &'a [Rule],
    source: Source,
    prefix: &IpNet,
    a: &PathAttrs,
) -> Option<(usize, &'a Rule)> {
    rules
        .iter()
        .enumerate()
        .find(|(_, r)| r.matches.matches(source, prefix, a))
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ImportPolicy {
    /// `None`: no list configured (eBGP refuses all, iBGP accepts all).
    pub prefixes: Option<Vec<PrefixRule>>,
    pub rules: Vec<Rule>,
    /// Most accepted prefixes before the session is torn down (RFC 4486 Cease subcode 1).
    pub max_prefixes: Option<u32>,
    /// Refuse martian prefixes, unusable next hops and routes inside connected subnets.
    pub filter_martians: bool,
}

impl Default for ImportPolicy {
    fn default() -> Self {
        ImportPolicy {
            prefixes: None,
            rules: Vec::new(),
            max_prefixes: None,
            filter_martians: true,
        }
    }
}

/// Prefixes no route should be learned for (RFC 6890): a prefix inside one is martian.
const MARTIANS: &[&str] = &[
    "0.0.0.0/8",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "::1/128",
    "::ffff:0:0/96",
    "fe80::/10",
    "ff00::/8",
];

fn martians() -> &'static [IpNet] {
    static M: std::sync::OnceLock<Vec<IpNet>> = std::sync::OnceLock::new();
    M.get_or_init(|| MARTIANS.iter().filter_map(|m| m.parse().ok()).collect())
}

/// A prefix inside a martian range (a default route is not).
pub fn is_martian(net: &IpNet) -> bool {
    martians().iter().any(|m| m.contains(net))
}

/// An address that cannot be a next hop: unspecified, loopback, multicast, broadcast,
/// reserved (class E, 0/8), link-local (an IPv6 link-local one only as the second address
/// of a next hop), or an IPv4-mapped address that is one of these.
pub fn is_unusable_next_hop(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(v) => {
            let o = v.octets();
            v.is_unspecified()
                || v.is_loopback()
                || v.is_multicast()
                || v.is_broadcast()
                || v.is_link_local()
                || o[0] == 0
                || o[0] >= 240
        }
        IpAddr::V6(v) => {
            if let Some(m) = v.to_ipv4_mapped() {
                return is_unusable_next_hop(IpAddr::V4(m));
            }
            v.is_unspecified()
                || v.is_loopback()
                || v.is_multicast()
                || (v.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ExportPolicy {
    pub rules: Vec<Rule>,
}

/// Why a route was refused on import.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    AsLoop,
    OriginatorIsUs,
    OwnPodCidr,
    NextHopIsUs,
    NotInPrefixList,
    NoPolicyOnEbgp,
    RejectedByRule,
    Martian,
    BadNextHop,
    InsideConnectedSubnet,
    ClusterLoop,
}

impl Refusal {
    pub const ALL: [Refusal; 11] = [
        Refusal::AsLoop,
        Refusal::OriginatorIsUs,
        Refusal::OwnPodCidr,
        Refusal::NextHopIsUs,
        Refusal::NotInPrefixList,
        Refusal::NoPolicyOnEbgp,
        Refusal::RejectedByRule,
        Refusal::Martian,
        Refusal::BadNextHop,
        Refusal::InsideConnectedSubnet,
        Refusal::ClusterLoop,
    ];

    pub fn describe(self) -> &'static str {
        match self {
            Refusal::AsLoop => "our AS is in the AS path",
            Refusal::OriginatorIsUs => "ORIGINATOR_ID is our router id",
            Refusal::OwnPodCidr => "covers or falls inside one of our pod CIDRs",
            Refusal::NextHopIsUs => "the next hop is one of our addresses",
            Refusal::NotInPrefixList => "not in the peer's import prefix list",
            Refusal::NoPolicyOnEbgp => "no import policy on an eBGP session (RFC 8212)",
            Refusal::RejectedByRule => "rejected by an import rule",
            Refusal::Martian => "martian prefix (loopback, multicast, link-local or reserved)",
            Refusal::BadNextHop => {
                "unusable next hop (loopback, multicast, link-local, unspecified or reserved)"
            }
            Refusal::InsideConnectedSubnet => {
                "inside a subnet the node is connected to, or a host route for the peer: it would reroute the node's own traffic"
            }
            Refusal::ClusterLoop => "our cluster id is in the CLUSTER_LIST (RFC 4456 8)",
        }
    }

    /// A small number for compact storage (never 0).
    pub fn code(self) -> u8 {
        Refusal::ALL.iter().position(|r| *r == self).unwrap_or(0) as u8 + 1
    }

    pub fn from_code(c: u8) -> Option<Refusal> {
        c.checked_sub(1)
            .and_then(|i| Refusal::ALL.get(i as usize).copied())
    }
}

/// What import policy decided for a prefix, before any attribute is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Refused(Refusal),
    /// Accepted, with the `set` of this rule (by index) and GRACEFUL_SHUTDOWN applied.
    Accept {
        rule: Option<usize>,
        graceful_shutdown: bool,
    },
}

/// The outcome of import policy for one prefix.
#[allow(clippy::large_enum_variant)] // built once per distinct outcome, not per prefix
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Imported {
    Refused(Refusal),
    /// Accepted as received.
    Accepted,
    /// Accepted with these attributes (a rule's `set` or GRACEFUL_SHUTDOWN changed them).
    Changed(RouteAttrs),
}

/// Everything the import decision needs besides the route.
#[derive(Debug, Clone)]
pub struct ImportContext<'a> {
    pub local_asn: u32,
    pub router_id: Ipv4Addr,
    /// Our route reflection cluster (RFC 4456 7; the router id unless configured).
    pub cluster_id: Ipv4Addr,
    pub ebgp: bool,
    pub own_prefixes: &'a [IpNet],
    /// Our addresses on this session.
    pub local_addresses: &'a [IpAddr],
    /// Every address of the node, with its subnet (both families, every interface).
    pub node_addresses: &'a [IpNet],
    /// The peer's address.
    pub peer_address: IpAddr,
    pub policy: &'a ImportPolicy,
}

impl ImportContext<'_> {
    /// Whether attributes shared by all the prefixes of an UPDATE refuse them all.
    pub fn check_attrs(&self, r: &RouteAttrs) -> Result<(), Refusal> {
        if self.ebgp && r.attrs.as_path.contains(self.local_asn) {
            return Err(Refusal::AsLoop);
        }
        if r.attrs.originator_id == Some(self.router_id) {
            return Err(Refusal::OriginatorIsUs);
        }
        if r.attrs.cluster_list.contains(&self.cluster_id) {
            return Err(Refusal::ClusterLoop);
        }
        let nh = r.next_hop.addr();
        if self.policy.filter_martians && is_unusable_next_hop(nh) {
            return Err(Refusal::BadNextHop);
        }
        if self.local_addresses.contains(&nh) || self.node_addresses.iter().any(|a| a.addr() == nh)
        {
            return Err(Refusal::NextHopIsUs);
        }
        Ok(())
    }

    /// The decision for one prefix, without building anything: cheap, and the same for
    /// most prefixes of an UPDATE, so that [`ImportContext::apply`] runs once per outcome.
    pub fn decide(&self, net: &IpNet, r: &RouteAttrs) -> Decision {
        if self.policy.filter_martians && is_martian(net) {
            return Decision::Refused(Refusal::Martian);
        }
        if let Err(why) = self.check_attrs(r) {
            return Decision::Refused(why);
        }
        if self.policy.filter_martians
            && (self.node_addresses.iter().any(|a| a.trunc().contains(net))
                || *net == IpNet::from(self.peer_address))
        {
            return Decision::Refused(Refusal::InsideConnectedSubnet);
        }
        // A route covering or inside one of our pod CIDRs would steal our own pods' traffic.
        if self
            .own_prefixes
            .iter()
            .any(|own| own.contains(net) || net.contains(own))
        {
            return Decision::Refused(Refusal::OwnPodCidr);
        }
        // The prefix list, when there is one, is a gate for everything.
        if let Some(list) = &self.policy.prefixes
            && !list.iter().any(|p| p.matches(net))
        {
            return Decision::Refused(Refusal::NotInPrefixList);
        }
        let rule = match first_match(&self.policy.rules, Source::Learned, net, &r.attrs) {
            Some((_, rule)) if rule.action == Action::Reject => {
                return Decision::Refused(Refusal::RejectedByRule);
            }
            Some((i, rule)) => (!rule.set.is_empty()).then_some(i),
            // RFC 8212: on eBGP, nothing comes in that no policy lets in.
            None if self.ebgp && self.policy.prefixes.is_none() => {
                return Decision::Refused(Refusal::NoPolicyOnEbgp);
            }
            None => None,
        };
        Decision::Accept {
            rule,
            // RFC 8326 4.2: a route marked for graceful shutdown gets the lowest preference.
            graceful_shutdown: r.attrs.communities.contains(&community::GRACEFUL_SHUTDOWN),
        }
    }

    /// The outcome of a decision for the route's attributes.
    pub fn apply(&self, r: &RouteAttrs, d: Decision) -> Imported {
        match d {
            Decision::Refused(why) => Imported::Refused(why),
            Decision::Accept {
                rule: None,
                graceful_shutdown: false,
            } => Imported::Accepted,
            Decision::Accept {
                rule,
                graceful_shutdown,
            } => {
                let mut c = r.clone();
                if let Some(rule) = rule.and_then(|i| self.policy.rules.get(i)) {
                    rule.set.apply(&mut c.attrs);
                }
                if graceful_shutdown {
                    c.attrs.local_pref = Some(0);
                }
                Imported::Changed(c)
            }
        }
    }

    /// The whole decision for one prefix.
    pub fn import(&self, net: &IpNet, r: &RouteAttrs) -> Imported {
        self.apply(r, self.decide(net, r))
    }

    pub fn accept(&self, net: &IpNet, r: &RouteAttrs) -> bool {
        !matches!(self.import(net, r), Imported::Refused(_))
    }
}

/// The next hop of an outgoing route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutNextHop {
    /// Our own address on the session (or the configured `next_hop_ipv4`/`_ipv6`).
    Local,
    /// As the path has it (a learned route to an iBGP peer).
    Unchanged(NextHop),
}

/// A route as it goes out to a peer: its attributes and its next hop. Interned, so that
/// every prefix (and every peer) with the same outcome shares one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct OutRoute {
    pub attrs: PathAttrs,
    pub next_hop: OutNextHop,
    /// The UPDATE last encoded for it, shared by every peer that sends the same (the
    /// per-origin routes a reflector sends each client): not part of the route's identity.
    #[serde(skip)]
    pub encoded: crate::wire::EncodedOnce,
}

impl OutRoute {
    pub fn new(attrs: PathAttrs, next_hop: OutNextHop) -> OutRoute {
        OutRoute {
            attrs,
            next_hop,
            encoded: Default::default(),
        }
    }
}

/// A path the Loc-RIB selected, as export sees it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub source: Source,
    pub attrs: &'a RouteAttrs,
    /// The peer it was learned from (`None` for the node's own routes).
    pub from: Option<LearnedFrom>,
}

/// The peer a candidate path was learned from, as export sees it.
#[derive(Debug, Clone, Copy)]
pub struct LearnedFrom {
    pub peer: crate::rib::PeerId,
    pub ibgp: bool,
    /// A route reflection client of ours (RFC 4456).
    pub rr_client: bool,
    /// Its BGP identifier: the ORIGINATOR_ID of what we reflect from it.
    pub router_id: Ipv4Addr,
}

/// Everything the export decision needs about the receiving peers: the peers of one
/// update group, which export alike. What keeps one member from a route (it came from that
/// member, or names it as ORIGINATOR_ID) is [`crate::rib::adj_out::GroupRoute::for_member`]'s
/// to decide, once per member, not export's.
#[derive(Debug, Clone)]
pub struct ExportContext<'a> {
    pub local_asn: u32,
    pub ebgp: bool,
    /// The receiving peers are route reflection clients of ours.
    pub rr_client: bool,
    pub cluster_id: Ipv4Addr,
    pub policy: &'a ExportPolicy,
}

impl ExportContext<'_> {
    /// What to send these peers for `prefix` whose best path is `c` (`None`: nothing, a
    /// withdrawal if something was sent before).
    pub fn export(&self, prefix: &IpNet, c: &Candidate<'_>) -> Option<OutRoute> {
        let a = &c.attrs.attrs;
        // iBGP to iBGP only by reflection (RFC 4456 6): from a client to everyone, from a
        // non-client to clients.
        let reflect = match c.from {
            Some(f) if f.ibgp && !self.ebgp => {
                if !(f.rr_client || self.rr_client) {
                    return None;
                }
                Some(a.originator_id.unwrap_or(f.router_id))
            }
            _ => None,
        };
        if a.communities.contains(&community::NO_ADVERTISE) {
            return None;
        }
        if self.ebgp
            && a.communities
                .iter()
                .any(|x| *x == community::NO_EXPORT || *x == community::NO_EXPORT_SUBCONFED)
        {
            return None;
        }
        let set = match first_match(&self.policy.rules, c.source, prefix, a) {
            Some((_, r)) if r.action == Action::Reject => return None,
            Some((_, r)) => Some(&r.set),
            // The node's own routes go out unless a rule says no; so does what a route
            // reflector reflects (RFC 4456), without rules of its own.
            None if c.source.is_local() || reflect.is_some() => None,
            None => return None,
        };
        let mut out = PathAttrs {
            origin: if c.source.is_local() {
                Origin::Igp
            } else {
                a.origin
            },
            as_path: if c.source.is_local() {
                AsPath::default()
            } else {
                a.as_path.clone()
            },
            atomic_aggregate: a.atomic_aggregate,
            aggregator: a.aggregator,
            communities: a.communities.clone(),
            large_communities: a.large_communities.clone(),
            ext_communities: a.ext_communities.clone(),
            unknown: a.unknown.clone(),
            ..Default::default()
        };
        // MED: ours to set; a received one stays inside the AS (RFC 4271 5.1.4). The
        // node's own routes carry the one their source gave them.
        if !self.ebgp || c.source.is_local() {
            out.med = a.med;
        }
        if let Some(s) = set {
            s.apply(&mut out);
        }
        if self.ebgp {
            for _ in 0..=set.map(|s| s.prepend).unwrap_or(0) {
                out.as_path.prepend(self.local_asn);
            }
            out.local_pref = None;
            // Non-transitive extended communities stay in the AS (RFC 4360 2).
            out.ext_communities.retain(|e| (e >> 56) as u8 & 0x40 == 0);
        } else {
            out.local_pref = Some(
                set.and_then(|s| s.local_pref)
                    .or(a.local_pref)
                    .unwrap_or(DEFAULT_LOCAL_PREF),
            );
        }
        // RFC 4456 8: the reflector sets ORIGINATOR_ID if absent and prepends its cluster
        // id to the CLUSTER_LIST; both stay inside the AS.
        if let Some(originator) = reflect {
            out.originator_id = Some(originator);
            out.cluster_list = std::iter::once(self.cluster_id)
                .chain(a.cluster_list.iter().copied())
                .collect();
        }
        let next_hop = if self.ebgp || c.source.is_local() {
            OutNextHop::Local
        } else {
            OutNextHop::Unchanged(c.attrs.next_hop)
        };
        Some(OutRoute::new(out, next_hop))
    }
}

#[cfg(test)]
mod tests;
