//! `petrel-ipam`: the CNI IPAM plugin over [`petrel_ipam::Store`], and a small CLI to list
//! allocations (`petrel-ipam list`).
//!
//! ```json
//! "ipam": { "type": "petrel-ipam",
//!           "pod_cidrs": ["10.244.7.0/24", "fd00:10:244:7::/64"],
//!           "data_dir": "/var/lib/petrel/ipam" }
//! ```
//! or `"config": "/etc/petrel/petrel.yaml"` instead of `pod_cidrs`: the node's pod CIDRs
//! from the agent's file (or, in Kubernetes mode, from the running agent's status); or
//! `"agent_socket": "/run/petrel/petrel.sock"`: from the running agent directly.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use petrel_ipam::{Error as StoreError, Store};
use serde::Deserialize;
use serde_json::Value;

use crate::cni::{self, CniError, CniResult, Command, Env, IpConfig, Route, code};

pub const DEFAULT_DATA_DIR: &str = "/var/lib/petrel/ipam";

#[derive(Debug, Deserialize)]
struct Outer {
    ipam: Option<IpamConf>,
    #[serde(rename = "runtimeConfig", default)]
    runtime_config: Option<RuntimeConfig>,
}

/// The `ips` capability: addresses the runtime asks for.
#[derive(Debug, Default, Deserialize)]
struct RuntimeConfig {
    #[serde(default)]
    ips: Vec<String>,
}

/// Addresses asked for, from `runtimeConfig.ips` (the `ips` capability) or `CNI_ARGS`
/// `IP=a[,b]` (what host-local and Calico read). Each may carry a prefix length, which is
/// ignored: the pod gets a host address. At most one per family.
pub fn wanted(c: &IpamConf, env: &Env) -> Result<Vec<IpAddr>, CniError> {
    let mut list: Vec<String> = c.requested.clone();
    if let Some(v) = env.args.get("IP") {
        list.extend(v.split(',').map(|s| s.trim().to_string()));
    }
    let mut out: Vec<IpAddr> = Vec::new();
    for s in list.iter().filter(|s| !s.is_empty()) {
        let a = s
            .parse::<IpAddr>()
            .or_else(|_| s.parse::<IpNet>().map(|n| n.addr()))
            .map_err(|_| invalid("invalid requested address", format!("{s:?}")))?;
        if let Some(other) = out.iter().find(|o| o.is_ipv4() == a.is_ipv4()) {
            if *other != a {
                return Err(invalid(
                    "more than one requested address per family",
                    format!("{other} and {a}"),
                ));
            }
            continue;
        }
        out.push(a);
    }
    Ok(out)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpamConf {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub pod_cidrs: Option<Vec<String>>,
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    #[serde(default)]
    pub config: Option<PathBuf>,
    /// Ask the running agent (Kubernetes mode, where the CIDRs are the Node's).
    #[serde(default)]
    pub agent_socket: Option<PathBuf>,
    #[serde(default)]
    pub routes: Option<Vec<Route>>,
    /// `runtimeConfig.ips` of the network configuration (filled by [`parse`]).
    #[serde(skip)]
    pub requested: Vec<String>,
}

fn invalid(msg: &str, details: impl Into<String>) -> CniError {
    CniError::new(code::INVALID_CONFIG, msg, details)
}

pub fn parse(raw: &[u8]) -> Result<IpamConf, CniError> {
    let o: Outer = serde_json::from_slice(raw).map_err(|e| {
        CniError::new(
            code::DECODE_FAILURE,
            "cannot decode the IPAM configuration",
            e.to_string(),
        )
    })?;
    let mut c = o.ipam.ok_or_else(|| {
        invalid(
            "no \"ipam\" section",
            "petrel-ipam reads its settings from \"ipam\"",
        )
    })?;
    c.requested = o.runtime_config.unwrap_or_default().ips;
    Ok(c)
}

/// The running agent's pod CIDRs, from its control socket (Kubernetes mode).
fn agent_pod_cidrs(socket: &Path) -> Result<Vec<IpNet>, CniError> {
    let unavailable = |d: String| {
        CniError::new(
            code::TRY_AGAIN_LATER,
            "the node's pod CIDRs are not known yet",
            d,
        )
    };
    let st = petrel_control::status(socket, std::time::Duration::from_secs(5))
        .map_err(|e| unavailable(e.to_string()))?;
    if st.node.pod_cidrs.is_empty() {
        return Err(unavailable("the Node object has no podCIDRs yet".into()));
    }
    Ok(st.node.pod_cidrs)
}

/// The pools to allocate from.
pub fn pools(c: &IpamConf) -> Result<Vec<IpNet>, CniError> {
    let given = [
        c.pod_cidrs.is_some(),
        c.config.is_some(),
        c.agent_socket.is_some(),
    ];
    if given.iter().filter(|g| **g).count() > 1 {
        return Err(invalid(
            "ambiguous IPAM pools",
            "give one of ipam.pod_cidrs, ipam.config or ipam.agent_socket",
        ));
    }
    if let Some(sock) = &c.agent_socket {
        return agent_pod_cidrs(sock);
    }
    match (&c.pod_cidrs, &c.config) {
        (Some(list), None) => {
            let mut out = Vec::new();
            for s in list {
                let n: IpNet = s
                    .parse()
                    .map_err(|_| invalid("invalid pod CIDR", format!("{s:?} in ipam.pod_cidrs")))?;
                if n.trunc() != n {
                    return Err(invalid(
                        "invalid pod CIDR",
                        format!("{s} has host bits set"),
                    ));
                }
                out.push(n);
            }
            if out.is_empty() {
                return Err(invalid("no pod CIDR", "ipam.pod_cidrs is empty"));
            }
            Ok(out)
        }
        (None, Some(path)) => {
            let cfg = petrel_config::load(path)
                .map_err(|e| invalid("cannot read the agent's config", e.to_string()))?;
            match cfg.node.pod_cidrs {
                petrel_config::PodCidrs::Static(v) => Ok(v),
                petrel_config::PodCidrs::Kubernetes => agent_pod_cidrs(&cfg.control.socket),
            }
        }
        (Some(_), Some(_)) => Err(invalid(
            "ambiguous IPAM pools",
            "give ipam.pod_cidrs or ipam.config, not both",
        )),
        (None, None) => Err(invalid(
            "no pod CIDR",
            "ipam needs \"pod_cidrs\" or \"config\"",
        )),
    }
}

fn store_err(e: StoreError) -> CniError {
    match e {
        // Addresses come back as pods are deleted: the runtime may retry.
        StoreError::Exhausted { .. } => {
            CniError::new(code::TRY_AGAIN_LATER, "no free address", e.to_string())
        }
        // The holder may be on its way out (a pod recreated under the same address).
        StoreError::InUse { .. } => CniError::new(
            code::TRY_AGAIN_LATER,
            "requested address in use",
            e.to_string(),
        ),
        StoreError::NotInPool { .. } => CniError::new(
            code::INVALID_CONFIG,
            "requested address not in the pod CIDRs",
            e.to_string(),
        ),
        StoreError::NoPool => CniError::new(code::INVALID_CONFIG, "no pod CIDR", e.to_string()),
        StoreError::BadName(_) => {
            CniError::new(code::INVALID_CONFIG, "invalid network name", e.to_string())
        }
        StoreError::Io { .. } | StoreError::Corrupt { .. } => {
            CniError::new(code::IO_FAILURE, "IPAM store failure", e.to_string())
        }
    }
}

fn open(c: &IpamConf, network: &str) -> Result<Store, CniError> {
    let dir = c
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    Store::open(dir, network).map_err(store_err)
}

pub fn run(cmd: Command, env: &Env, raw: &[u8]) -> Result<Option<Value>, CniError> {
    let common = cni::common(raw)?;
    let c = parse(raw)?;
    let store = open(&c, &common.name)?;
    match cmd {
        Command::Add => {
            let pools = pools(&c)?;
            let want = wanted(&c, env)?;
            let got = store
                .allocate_with(&pools, &env.container_id, &env.ifname, &want)
                .map_err(store_err)?;
            let r = CniResult {
                interfaces: Vec::new(),
                ips: got
                    .iter()
                    .map(|a| IpConfig {
                        address: IpNet::new(a.address, a.pool.prefix_len())
                            .unwrap_or_else(|_| IpNet::from(a.address)),
                        gateway: None,
                        interface: None,
                    })
                    .collect(),
                routes: c.routes.clone().unwrap_or_default(),
            };
            Ok(Some(r.to_json(&common.cni_version)))
        }
        Command::Del => {
            store
                .release(&env.container_id, &env.ifname)
                .map_err(store_err)?;
            Ok(None)
        }
        Command::Check => {
            let have = store
                .find(&env.container_id, &env.ifname)
                .map_err(store_err)?;
            if have.is_empty() {
                return Err(CniError::new(
                    code::CHECK_FAILED,
                    "no address allocated",
                    format!("{}/{} holds no address", env.container_id, env.ifname),
                ));
            }
            if let Some(prev) = &common.prev_result {
                let prev = CniResult::from_json(prev)?;
                for ip in prev.ips {
                    if !have.iter().any(|a| a.address == ip.address.addr()) {
                        return Err(CniError::new(
                            code::CHECK_FAILED,
                            "address not allocated",
                            format!(
                                "{} is not allocated to {}/{}",
                                ip.address.addr(),
                                env.container_id,
                                env.ifname
                            ),
                        ));
                    }
                }
            }
            Ok(None)
        }
        Command::Gc => {
            let valid: Vec<(String, String)> = common
                .valid_attachments
                .unwrap_or_default()
                .into_iter()
                .map(|a| (a.container_id, a.ifname))
                .collect();
            store.gc(&valid).map_err(store_err)?;
            Ok(None)
        }
        Command::Status => {
            let pools =
                pools(&c).map_err(|e| CniError::new(code::NOT_AVAILABLE, e.msg, e.details))?;
            let used = store.list().map_err(|e| {
                let e = store_err(e);
                CniError::new(code::NOT_AVAILABLE, e.msg, e.details)
            })?;
            for fam_v4 in [true, false] {
                let fam: Vec<&IpNet> = pools
                    .iter()
                    .filter(|p| p.addr().is_ipv4() == fam_v4)
                    .collect();
                if fam.is_empty() {
                    continue;
                }
                let cap: u128 = fam.iter().map(|p| petrel_ipam::pool::capacity(p)).sum();
                let n = used
                    .iter()
                    .filter(|a| a.address.is_ipv4() == fam_v4)
                    .count() as u128;
                if n >= cap {
                    return Err(CniError::new(
                        code::NOT_AVAILABLE,
                        "no free address",
                        format!(
                            "all {cap} addresses of {} are in use",
                            fam.iter()
                                .map(|p| p.to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                }
            }
            Ok(None)
        }
        Command::Version => Ok(Some(
            serde_json::from_str(&cni::version_json(Some(&common.cni_version))).unwrap_or_default(),
        )),
    }
}

fn cli(args: &[String]) -> i32 {
    let mut dir = PathBuf::from(DEFAULT_DATA_DIR);
    let mut network: Option<String> = None;
    let mut json = false;
    let mut it = args.iter().skip(1);
    let mut list = false;
    while let Some(a) = it.next() {
        match a.as_str() {
            "list" => list = true,
            "--data-dir" => dir = it.next().map(PathBuf::from).unwrap_or(dir),
            "--network" => network = it.next().cloned(),
            "--json" => json = true,
            "-h" | "--help" => {
                println!(
                    "usage: petrel-ipam list [--data-dir DIR] [--network NAME] [--json]\n(run without arguments, as a CNI IPAM plugin: CNI_COMMAND and the network configuration on stdin)"
                );
                return 0;
            }
            other => {
                eprintln!("petrel-ipam: unknown argument {other:?} (try --help)");
                return 2;
            }
        }
    }
    if !list {
        eprintln!("petrel-ipam: nothing to do (try `petrel-ipam list`)");
        return 2;
    }
    let names: Vec<String> = match network {
        Some(n) => vec![n],
        None => std::fs::read_dir(&dir)
            .map(|d| {
                let mut v: Vec<String> = d
                    .flatten()
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()
                            .and_then(|n| n.strip_suffix(".json"))
                            .map(String::from)
                    })
                    .collect();
                v.sort();
                v
            })
            .unwrap_or_default(),
    };
    let mut all = Vec::new();
    for n in names {
        match Store::open(&dir, &n).and_then(|s| s.list()) {
            Ok(list) => all.extend(list.into_iter().map(|a| (n.clone(), a))),
            Err(e) => {
                eprintln!("petrel-ipam: {e}");
                return 1;
            }
        }
    }
    if json {
        let v: Vec<Value> = all
            .iter()
            .map(|(n, a)| {
                let mut o = serde_json::to_value(a).unwrap_or_default();
                o["network"] = Value::from(n.clone());
                o
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        println!(
            "{:<16} {:<40} {:<32} {:<8}",
            "NETWORK", "ADDRESS", "CONTAINER", "IFNAME"
        );
        for (n, a) in &all {
            let c: String = a.container_id.chars().take(32).collect();
            println!("{:<16} {:<40} {:<32} {:<8}", n, a.address, c, a.ifname);
        }
    }
    0
}

/// Entry point of the `petrel-ipam` binary.
pub fn main() {
    let args: Vec<String> = std::env::args().collect();
    if std::env::var_os("CNI_COMMAND").is_none() && args.len() > 1 {
        std::process::exit(cli(&args));
    }
    let (cmd, env) = match cni::env(|k| std::env::var(k).ok()) {
        Ok(x) => x,
        Err(e) => cni::fail(&e, cni::LATEST),
    };
    let raw = match cni::stdin() {
        Ok(r) => r,
        Err(e) => cni::fail(&e, cni::LATEST),
    };
    if cmd == Command::Version {
        let requested = serde_json::from_slice::<Value>(&raw)
            .ok()
            .and_then(|v| v["cniVersion"].as_str().map(String::from));
        println!("{}", cni::version_json(requested.as_deref()));
        return;
    }
    let version = serde_json::from_slice::<Value>(&raw)
        .ok()
        .and_then(|v| v["cniVersion"].as_str().map(String::from))
        .filter(|v| cni::SUPPORTED.contains(&v.as_str()))
        .unwrap_or_else(|| cni::LATEST.to_string());
    match run(cmd, &env, &raw) {
        Ok(Some(v)) => println!("{v}"),
        Ok(None) => {}
        Err(e) => cni::fail(&e, &version),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_with(args: &[(&str, &str)]) -> Env {
        Env {
            args: args
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn wanted_addresses_from_capability_and_args() {
        let conf = br#"{"cniVersion":"1.0.0","name":"n","type":"petrel-ipam",
            "runtimeConfig":{"ips":["10.244.7.9/24"]},"ipam":{"type":"petrel-ipam"}}"#;
        let w = wanted(&parse(conf).unwrap(), &env_with(&[("IP", "fd00::9")])).unwrap();
        assert_eq!(
            w,
            vec![
                "10.244.7.9".parse::<IpAddr>().unwrap(),
                "fd00::9".parse().unwrap()
            ]
        );
        let plain = br#"{"ipam":{"type":"petrel-ipam"}}"#;
        assert!(
            wanted(&parse(plain).unwrap(), &Env::default())
                .unwrap()
                .is_empty()
        );
        let e = wanted(
            &parse(plain).unwrap(),
            &env_with(&[("IP", "10.0.0.1,10.0.0.2")]),
        )
        .unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
        let e = wanted(&parse(plain).unwrap(), &env_with(&[("IP", "nonsense")])).unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
    }
}
