//! The running agent as the control socket and the metrics endpoint see it, and the JSON
//! documents they answer with. The shapes here are the stable interface of `petrel status
//! --json` and `petrel routes --json` (README, "Status JSON"); fields are only ever added.

use ipnet::IpNet;
use petrel_bgp::Speaker;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr};
use tokio::sync::RwLock;

use crate::fib::Fib;

pub const STATUS_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentStatus {
    /// Schema version of this document.
    pub version: u32,
    pub node: NodeView,
    pub peers: Vec<PeerView>,
    pub fib: FibView,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeView {
    pub name: Option<String>,
    pub asn: u32,
    pub router_id: Ipv4Addr,
    /// The prefixes the node originates.
    pub pod_cidrs: Vec<IpNet>,
    /// "config" or "kubernetes".
    pub pod_cidrs_source: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrefixCounts {
    pub received: u64,
    pub accepted: u64,
    pub advertised: u64,
    pub stale: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerView {
    pub name: String,
    pub address: IpAddr,
    pub asn: u32,
    pub local_address: Option<IpAddr>,
    /// RFC 4271 state: Idle, Connect, Active, OpenSent, OpenConfirm, Established.
    pub state: String,
    /// Seconds since the session came up (Established only).
    pub uptime_secs: Option<u64>,
    /// Seconds in the current state.
    pub state_secs: u64,
    pub last_error: Option<String>,
    pub prefixes: PrefixCounts,
    pub remote_router_id: Option<Ipv4Addr>,
    pub hold_time: Option<u16>,
    pub keepalive: Option<u16>,
    pub families: Vec<String>,
    pub graceful_restart: bool,
    pub messages_in: u64,
    pub messages_out: u64,
    pub updates_in: u64,
    pub updates_out: u64,
    /// Times the session reached Established.
    pub established_count: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FibView {
    pub protocol: u8,
    /// Route operations sent to the kernel, and refused by it, since start.
    pub ops: u64,
    pub errors: u64,
    pub table: u32,
    pub installed: u64,
    pub ecmp: u64,
    pub failed: u64,
    pub own_routes: usize,
    /// Routes from a previous run not yet confirmed (before the initial sync).
    pub stale: usize,
    pub synced: bool,
    pub restored: u64,
    pub forwarding_ipv4: Option<bool>,
    pub forwarding_ipv6: Option<bool>,
}

/// What the control socket and metrics need from the running agent.
pub struct Agent {
    pub speaker: Speaker,
    pub fib: Fib,
    pub node: RwLock<NodeView>,
    pub protocol: u8,
    pub table: u32,
    pub metrics: crate::metrics::Metrics,
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

impl Agent {
    pub async fn status(&self) -> AgentStatus {
        let node = self.node.read().await.clone();
        let sp = self.speaker.status().await.ok();
        let fib = self.fib.summary().await;
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
            warnings.push("no pod CIDR yet: nothing is advertised".to_string());
        }
        if fib.failed > 0 {
            warnings.push(format!(
                "{} route(s) refused by the kernel (see the log)",
                fib.failed
            ));
        }
        let peers = sp
            .as_ref()
            .map(|s| {
                s.peers
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
                            },
                            remote_router_id: p.remote_router_id,
                            hold_time: p.hold_time,
                            keepalive: p.keepalive,
                            families: p.families.iter().map(|f| f.to_string()).collect(),
                            graceful_restart: p.graceful_restart,
                            messages_in: p.messages_in,
                            messages_out: p.messages_out,
                            updates_in: p.updates_in,
                            updates_out: p.updates_out,
                            established_count: p.established_count,
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        if sp.is_none() {
            warnings.push("the BGP speaker is not answering".to_string());
        }
        AgentStatus {
            version: STATUS_VERSION,
            node,
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
                forwarding_ipv4: f4,
                forwarding_ipv6: f6,
            },
            warnings,
        }
    }

    pub async fn routes(&self) -> serde_json::Value {
        let routes = self.speaker.routes().await.unwrap_or_default();
        let failed = self.fib.failed().await;
        let node = self.node.read().await.clone();
        let list: Vec<serde_json::Value> = routes
            .into_iter()
            .map(|r| {
                let in_fib = !r.next_hops.is_empty() && !failed.contains(&r.prefix);
                let mut v = serde_json::to_value(&r).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.insert("in_fib".into(), in_fib.into());
                }
                v
            })
            .collect();
        serde_json::json!({
            "version": STATUS_VERSION,
            "originated": node.pod_cidrs,
            "routes": list,
        })
    }
}
