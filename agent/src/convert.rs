//! From the config file's types to the speaker's.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ipnet::IpNet;
use petrel_bgp::policy::{
    Action, CommunityPattern, ExportPolicy, ImportPolicy, LargePattern, Match, PrefixRule, Rule,
    Set,
};
use petrel_bgp::wire::Afi;
use petrel_bgp::{GracefulRestart, LocalRoute, PeerConfig, Source, SpeakerConfig};
use petrel_config::{Config, Family, RouteSource, RuleAction};

pub fn afi(f: Family) -> Afi {
    match f {
        Family::Ipv4 => Afi::Ipv4,
        Family::Ipv6 => Afi::Ipv6,
    }
}

/// The node's addresses as the speaker's sanity checks see them: every interface address
/// with its subnet, and the next hops configured for the other family (they are ours too).
pub fn node_addresses(cfg: &Config, interfaces: Vec<IpNet>) -> Vec<IpNet> {
    let mut v = interfaces;
    for p in &cfg.peers {
        v.extend(
            p.next_hop_ipv4
                .map(|a| IpNet::from(std::net::IpAddr::V4(a))),
        );
        v.extend(
            p.next_hop_ipv6
                .map(|a| IpNet::from(std::net::IpAddr::V6(a))),
        );
    }
    v.sort();
    v.dedup();
    v
}

/// Why `net` cannot be one of this node's pod CIDRs: too short (or a default route), or
/// overlapping a subnet of one of the node's interfaces (blackholing it would cut the
/// node off that link). Loopback addresses are not links and do not count.
pub fn pod_cidr_problem(
    min: &petrel_config::MinPodCidrLen,
    interfaces: &[IpNet],
    net: &IpNet,
) -> Option<String> {
    if let Some(why) = min.refuse(net) {
        return Some(why);
    }
    interfaces
        .iter()
        .filter(|i| !i.addr().is_loopback())
        .find(|i| i.trunc().contains(net) || net.contains(&i.addr()))
        .map(|i| format!("pod CIDR {net} overlaps {i}, an address of this node and its subnet"))
}

/// The pod CIDRs that can be used, and why each of the others cannot.
pub fn usable_pod_cidrs(
    min: &petrel_config::MinPodCidrLen,
    interfaces: &[IpNet],
    cidrs: Vec<IpNet>,
) -> (Vec<IpNet>, Vec<String>) {
    let mut problems = Vec::new();
    let ok = cidrs
        .into_iter()
        .filter(|c| match pod_cidr_problem(min, interfaces, c) {
            Some(why) => {
                problems.push(why);
                false
            }
            None => true,
        })
        .collect();
    (ok, problems)
}

pub fn speaker(cfg: &Config, restarting: bool, node_addresses: Vec<IpNet>) -> SpeakerConfig {
    let gr = &cfg.bgp.graceful_restart;
    SpeakerConfig {
        asn: cfg.node.asn,
        router_id: cfg.node.router_id,
        cluster_id: cfg.bgp.cluster_id,
        listen_addresses: cfg.bgp.listen_addresses.clone(),
        listen_port: cfg.bgp.listen_port,
        max_paths: cfg.bgp.max_paths as usize,
        graceful_restart: gr.enabled.then_some(GracefulRestart {
            restart_time: gr.restart_time,
            stale_time: gr.stale_time,
            restarting,
        }),
        // Wait for every peer's End-of-RIB at most as long as peers keep our routes.
        sync_timeout: Duration::from_secs(gr.restart_time.clamp(5, 300) as u64),
        node_addresses,
    }
}

/// The TCP MD5 key in a password file, read as `petrel check` reads it.
fn read_key(path: &std::path::Path) -> anyhow::Result<Arc<[u8]>> {
    petrel_config::read_md5_key(path)
        .map(Into::into)
        .map_err(anyhow::Error::msg)
}

fn prefix_rules(r: &[petrel_config::PrefixRule]) -> Vec<PrefixRule> {
    r.iter()
        .map(|r| PrefixRule {
            prefix: r.prefix,
            ge: r.ge,
            le: r.le,
        })
        .collect()
}

fn source(s: RouteSource) -> Source {
    match s {
        RouteSource::PodCidrs => Source::PodCidrs,
        RouteSource::Originate => Source::Originate,
        RouteSource::Services => Source::Services,
        RouteSource::Learned => Source::Learned,
    }
}

fn rule(r: &petrel_config::Rule) -> Rule {
    let m = &r.matches;
    Rule {
        matches: Match {
            sources: m
                .sources
                .as_ref()
                .map(|v| v.iter().map(|s| source(*s)).collect()),
            prefixes: m.prefixes.as_deref().map(prefix_rules),
            communities: m
                .communities
                .iter()
                .map(|c| CommunityPattern {
                    asn: c.asn,
                    value: c.value,
                })
                .collect(),
            large_communities: m
                .large_communities
                .iter()
                .map(|c| LargePattern(*c))
                .collect(),
        },
        action: match r.action {
            RuleAction::Accept => Action::Accept,
            RuleAction::Reject => Action::Reject,
        },
        set: Set {
            communities: r.set.communities.clone(),
            large_communities: r.set.large_communities.clone(),
            med: r.set.med,
            prepend: r.set.prepend,
            local_pref: r.set.local_pref,
        },
    }
}

/// The node's pod CIDRs as a route source.
pub fn pod_routes(cidrs: &[IpNet]) -> Vec<LocalRoute> {
    cidrs.iter().map(|p| LocalRoute::new(*p)).collect()
}

/// The config file's `originate:` entries as a route source.
pub fn originate(cfg: &Config) -> Vec<LocalRoute> {
    cfg.originate
        .iter()
        .map(|o| LocalRoute {
            prefix: o.prefix,
            communities: o.communities.clone(),
            large_communities: o.large_communities.clone(),
            med: o.med,
        })
        .collect()
}

pub fn peers(cfg: &Config) -> anyhow::Result<Vec<PeerConfig>> {
    cfg.peers.iter().map(peer).collect()
}

/// The peer ranges (dynamic peers), each with its template as a speaker peer.
pub fn peer_ranges(cfg: &Config) -> anyhow::Result<Vec<petrel_bgp::PeerRange>> {
    cfg.peer_ranges
        .iter()
        .map(|r| {
            Ok(petrel_bgp::PeerRange {
                name: r.name.clone(),
                range: r.range,
                max_peers: r.max_peers,
                template: peer(&r.template)?,
            })
        })
        .collect()
}

pub(crate) fn peer(p: &petrel_config::PeerConfig) -> anyhow::Result<PeerConfig> {
    {
        {
            let md5_key = match &p.password_file {
                Some(f) => Some(read_key(f).with_context(|| format!("peer {}", p.name))?),
                None => None,
            };
            Ok(PeerConfig {
                name: p.name.clone(),
                address: p.address,
                port: p.port,
                remote_asn: p.asn,
                local_address: p.local_address,
                passive: p.passive,
                hold_time: p.hold_time,
                keepalive: p.keepalive,
                connect_retry: p.connect_retry as u32,
                connect_retry_max: p.connect_retry_max as u32,
                md5_key,
                multihop: p.multihop,
                gtsm: p.gtsm,
                families: p.families.iter().map(|f| afi(*f)).collect(),
                import: ImportPolicy {
                    prefixes: p.import.prefixes.as_deref().map(prefix_rules),
                    rules: p.import.rules.iter().map(rule).collect(),
                    max_prefixes: p.import.max_prefixes,
                    filter_martians: p.import.filter_martians,
                },
                export: ExportPolicy {
                    rules: p.export.iter().map(rule).collect(),
                },
                next_hop_v4: p.next_hop_ipv4,
                next_hop_v6: p.next_hop_ipv6,
                graceful_restart: p.graceful_restart,
                enforce_first_as: p.enforce_first_as,
                liveness_required: p.bfd.is_some_and(|b| b.strict),
                route_reflector_client: p.route_reflector_client,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn pod_cidrs_on_the_nodes_links_are_refused() {
        let min = petrel_config::MinPodCidrLen::default();
        let ifs = [
            n("198.51.100.2/24"),
            n("127.0.0.1/8"),
            n("2001:db8:1::2/64"),
            n("192.0.2.9/32"),
        ];
        let why = |c: &str| pod_cidr_problem(&min, &ifs, &n(c));
        assert!(
            why("198.51.100.128/25")
                .unwrap()
                .contains("overlaps 198.51.100.2/24")
        );
        assert!(
            why("198.51.0.0/16")
                .unwrap()
                .contains("overlaps 198.51.100.2/24")
        );
        assert!(
            why("2001:db8:1::/112")
                .unwrap()
                .contains("overlaps 2001:db8:1::2/64")
        );
        assert!(
            why("192.0.2.0/24")
                .unwrap()
                .contains("overlaps 192.0.2.9/32")
        );
        assert!(why("::/0").unwrap().contains("default route"));
        assert!(why("10.0.0.0/8").unwrap().contains("shorter than /16"));
        assert_eq!(why("10.244.2.0/24"), None);
        assert_eq!(why("2001:db8:2::/64"), None);
        let (ok, bad) =
            usable_pod_cidrs(&min, &ifs, vec![n("10.244.2.0/24"), n("198.51.100.0/26")]);
        assert_eq!(ok, vec![n("10.244.2.0/24")]);
        assert_eq!(bad.len(), 1);
    }
}
