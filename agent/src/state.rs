//! The running agent as the control socket and the metrics endpoint see it. Status is put
//! together from what the tasks last published (the speaker's board, the FIB's snapshot):
//! it never waits on route processing. The document shapes are `petrel_control`'s.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::RwLock;

use ipnet::IpNet;
use petrel_bgp::Speaker;
use petrel_control::{
    AgentStatus, BySource, FibView, NodeView, PathEntry, PeerView, PrefixCounts, RouteEntry,
    RoutesAnswer, STATUS_VERSION, UnknownAttribute,
};

use crate::msg::{Fib, Metrics};

/// Who the node is; changed by the Kubernetes watch and reloads.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub name: Option<String>,
    pub asn: u32,
    pub router_id: Ipv4Addr,
    pub pod_cidrs: Vec<IpNet>,
    /// "config" or "kubernetes".
    pub pod_cidrs_source: String,
}

/// What the control socket and metrics need from the running agent.
pub struct Agent {
    pub speaker: Speaker,
    pub bfd: crate::bfd::Bfd,
    /// The config file's peers and the mesh's, set together.
    pub peers: crate::mesh::PeerSet,
    pub fib: Fib,
    pub node: RwLock<NodeInfo>,
    pub protocol: u8,
    pub table: u32,
    pub metrics: Metrics,
    /// The config's warnings (a key file others can read, ...), as of the running config.
    pub config_warnings: RwLock<Vec<String>>,
    /// The last reload's failure, until a reload succeeds.
    pub reload_error: RwLock<Option<String>>,
    /// Pod CIDRs from the Node object that could not be used, and why.
    pub refused_pod_cidrs: RwLock<Vec<String>>,
}

fn read_flag(path: &str) -> Option<bool> {
    std::fs::read_to_string(path).ok().map(|s| s.trim() != "0")
}

pub fn forwarding() -> (Option<bool>, Option<bool>) {
    (
        read_flag("/proc/sys/net/ipv4/ip_forward"),
        read_flag("/proc/sys/net/ipv6/conf/all/forwarding"),
    )
}

fn by_source(b: &petrel_bgp::BySource) -> BySource {
    BySource {
        pod_cidrs: b.pod_cidrs,
        services: b.services,
        originate: b.originate,
        learned: b.learned,
    }
}

impl Agent {
    pub fn node(&self) -> NodeInfo {
        self.node.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The speaker's and the FIB's tasks are running.
    pub fn healthy(&self) -> bool {
        self.speaker.alive() && self.fib.alive()
    }

    pub fn status(&self) -> AgentStatus {
        let node = self.node();
        let sp = self.speaker.status();
        let fib = self.fib.snapshot().summary;
        let (f4, f6) = forwarding();
        let mut warnings = Vec::new();
        let has4 = node.pod_cidrs.iter().any(|p| matches!(p, IpNet::V4(_)));
        let has6 = node.pod_cidrs.iter().any(|p| matches!(p, IpNet::V6(_)));
        if has4 && f4 == Some(false) {
            warnings.push("IPv4 forwarding is off in this namespace: pods are not reachable through this node (set fib.enable_forwarding: true or enable it yourself)".to_string());
        }
        if has6 && f6 == Some(false) {
            warnings.push("IPv6 forwarding is off in this namespace: pods are not reachable through this node (set fib.enable_forwarding: true or enable it yourself)".to_string());
        }
        if node.pod_cidrs.is_empty() {
            warnings.push("no pod CIDR yet: no pod CIDR is advertised".to_string());
        }
        if fib.failed > 0 {
            warnings.push(format!(
                "{} route(s) refused by the kernel (see the log)",
                fib.failed
            ));
        }
        if !self.healthy() {
            warnings.push("a task of the agent has stopped (see the log)".to_string());
        }
        warnings.extend(
            self.config_warnings
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .cloned(),
        );
        warnings.extend(
            self.refused_pod_cidrs
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|w| format!("ignored a pod CIDR of the Node object: {w}")),
        );
        if let Some(e) = &*self.reload_error.read().unwrap_or_else(|e| e.into_inner()) {
            warnings.push(format!(
                "the last reload failed; the previous config runs: {e}"
            ));
        }
        let peers = sp
            .peers
            .iter()
            .map(|p| {
                let up = p.state == petrel_bgp::fsm::State::Established;
                PeerView {
                    name: p.name.clone(),
                    address: p.address,
                    asn: p.remote_asn,
                    local_address: p.local_address,
                    state: p.state.to_string(),
                    uptime_secs: up.then_some(p.state_secs),
                    state_secs: p.state_secs,
                    last_error: p.last_error.clone(),
                    prefixes: PrefixCounts {
                        received: p.prefixes.received,
                        accepted: p.prefixes.accepted,
                        advertised: p.advertised,
                        stale: p.prefixes.stale,
                        advertised_by_source: by_source(&p.advertised_by_source),
                        refused: p
                            .refused
                            .iter()
                            .map(|(r, n)| {
                                let name = serde_json::to_value(r)
                                    .ok()
                                    .and_then(|v| v.as_str().map(String::from))
                                    .unwrap_or_default();
                                (name, *n)
                            })
                            .collect(),
                    },
                    remote_router_id: p.remote_router_id,
                    hold_time: p.hold_time,
                    keepalive: p.keepalive,
                    families: p.families.iter().map(|f| f.to_string()).collect(),
                    graceful_restart: p.graceful_restart,
                    route_reflector_client: p.route_reflector_client,
                    messages_in: p.messages_in,
                    messages_out: p.messages_out,
                    updates_in: p.updates_in,
                    updates_out: p.updates_out,
                    established_count: p.established_count,
                    bfd: self.bfd.view(&p.name),
                }
            })
            .collect();
        let originated: BTreeMap<String, Vec<IpNet>> = sp
            .local
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(s, v)| (s.name().to_string(), v.clone()))
            .collect();
        AgentStatus {
            version: STATUS_VERSION,
            node: NodeView {
                name: node.name,
                asn: node.asn,
                router_id: node.router_id,
                pod_cidrs: node.pod_cidrs,
                pod_cidrs_source: node.pod_cidrs_source,
                originated,
            },
            peers,
            fib: FibView {
                protocol: self.protocol,
                ops: fib.ops,
                errors: fib.errors,
                table: self.table,
                installed: fib.installed,
                ecmp: fib.ecmp,
                failed: fib.failed,
                own_routes: fib.own,
                stale: fib.stale,
                synced: fib.synced,
                restored: fib.restored,
                resyncs: fib.resyncs,
                forwarding_ipv4: f4,
                forwarding_ipv6: f6,
            },
            warnings,
        }
    }

    pub async fn routes(&self) -> RoutesAnswer {
        let routes = self.speaker.routes().await.unwrap_or_default();
        let failed = self.fib.snapshot().failed;
        let mut originated: Vec<IpNet> = self
            .speaker
            .status()
            .local
            .into_iter()
            .flat_map(|(_, v)| v)
            .collect();
        originated.sort();
        let routes = routes
            .into_iter()
            .map(|r| RouteEntry {
                in_fib: !r.next_hops.is_empty() && !failed.contains(&r.prefix),
                prefix: r.prefix,
                next_hops: r.next_hops.iter().map(|n| n.addr().to_string()).collect(),
                gateways: r.gateways.iter().map(|g| g.to_string()).collect(),
                paths: r
                    .paths
                    .into_iter()
                    .map(|p| PathEntry {
                        source: p.source.name().to_string(),
                        peer: p.peer,
                        peer_address: p.peer_address,
                        next_hop: p.next_hop.map(|n| n.addr().to_string()),
                        resolved_via: p.resolved_via,
                        gateways: p.gateways.iter().map(|g| g.to_string()).collect(),
                        igp_cost: p.igp_cost,
                        unresolved: p.unresolved.map(String::from),
                        as_path: p.as_path,
                        origin: serde_json::to_value(p.origin)
                            .ok()
                            .and_then(|v| v.as_str().map(String::from))
                            .unwrap_or_default(),
                        local_pref: p.local_pref,
                        med: p.med,
                        communities: p.communities,
                        large_communities: p.large_communities,
                        extended_communities: p.extended_communities,
                        unknown_attributes: p
                            .unknown_attributes
                            .into_iter()
                            .map(|u| UnknownAttribute {
                                code: u.code,
                                flags: u.flags,
                                transitive: u.transitive,
                                value: u.value,
                            })
                            .collect(),
                        originator_id: p.originator_id,
                        cluster_list: p.cluster_list,
                        stale: p.stale,
                        accepted: p.accepted,
                        refused: p.refused.map(String::from),
                        best: p.best,
                        selected: p.selected,
                        lost_on: p.lost_on.map(String::from),
                    })
                    .collect(),
            })
            .collect();
        RoutesAnswer {
            version: STATUS_VERSION,
            originated,
            routes,
        }
    }
}
