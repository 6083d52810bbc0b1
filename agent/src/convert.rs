//! From the config file's types to the speaker's.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use petrel_bgp::policy::{ImportPolicy, PrefixRule};
use petrel_bgp::wire::Afi;
use petrel_bgp::{GracefulRestart, PeerConfig, SpeakerConfig};
use petrel_config::{Config, Family};

pub fn afi(f: Family) -> Afi {
    match f {
        Family::Ipv4 => Afi::Ipv4,
        Family::Ipv6 => Afi::Ipv6,
    }
}

pub fn speaker(cfg: &Config, restarting: bool) -> SpeakerConfig {
    let gr = &cfg.bgp.graceful_restart;
    SpeakerConfig {
        asn: cfg.node.asn,
        router_id: cfg.node.router_id,
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
    }
}

/// The TCP MD5 key in a password file: its content without the trailing newline.
fn read_key(path: &std::path::Path) -> anyhow::Result<Arc<[u8]>> {
    let raw = std::fs::read(path).with_context(|| format!("password_file {}", path.display()))?;
    let mut key: &[u8] = &raw;
    while let Some((last, rest)) = key.split_last() {
        if *last == b'\n' || *last == b'\r' {
            key = rest;
        } else {
            break;
        }
    }
    anyhow::ensure!(!key.is_empty(), "password_file {} is empty", path.display());
    anyhow::ensure!(
        key.len() <= 80,
        "password_file {}: TCP MD5 keys are at most 80 bytes",
        path.display()
    );
    Ok(key.into())
}

pub fn peers(cfg: &Config) -> anyhow::Result<Vec<PeerConfig>> {
    cfg.peers
        .iter()
        .map(|p| {
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
                    rules: p.import.prefixes.as_ref().map(|rules| {
                        rules
                            .iter()
                            .map(|r| PrefixRule {
                                prefix: r.prefix,
                                ge: r.ge,
                                le: r.le,
                            })
                            .collect()
                    }),
                    max_prefixes: p.import.max_prefixes,
                },
                next_hop_v4: p.next_hop_ipv4,
                next_hop_v6: p.next_hop_ipv6,
                graceful_restart: p.graceful_restart,
                enforce_first_as: p.enforce_first_as,
            })
        })
        .collect()
}
