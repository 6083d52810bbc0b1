//! `petrel-cni`: routed pod networking with no bridge.
//!
//! ```text
//!   pod netns                      node netns
//!   eth0 10.244.7.2/32  <─veth─>  pet3f9a…  (MAC ee:ee:ee:ee:ee:ee, fe80::1/64, proxy_arp)
//!   169.254.1.1 dev eth0 scope link          10.244.7.2 dev pet3f9a… scope link
//!   default via 169.254.1.1                  fd00:10:244:7::2 dev pet3f9a…
//!   default via fe80::1 (IPv6)
//! ```
//!
//! The pod holds a permanent neighbour entry for its gateways (169.254.1.1 and fe80::1 →
//! ee:ee:ee:ee:ee:ee, the MAC of every host veth): no ARP round trip before the first
//! packet, and a gateway that does not depend on the node's routing. Proxy ARP on the host
//! end stays as a fallback for a pod that flushes its neighbours (it answers only when the
//! node has a route covering 169.254.1.1); for IPv6 the host end owns fe80::1 itself. Addresses come from the IPAM
//! plugin named in `ipam.type` (normally `petrel-ipam`), called by delegation.

use std::collections::HashSet;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command as Proc, Stdio};

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::Value;
use tracing::debug;

use crate::cni::{self, CniError, CniResult, Command, Env, Interface, IpConfig, Route, code};
use crate::netns::{self, sysctl_ensure, sysctl_get};
use crate::nl::{Nl, mac_string};

pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
/// The MAC of every host-side veth: the pods' gateway looks the same everywhere.
pub const HOST_MAC: [u8; 6] = [0xee; 6];
pub const DEFAULT_PREFIX: &str = "pet";

#[derive(Debug, Deserialize)]
pub struct Conf {
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default = "default_prefix")]
    pub host_veth_prefix: String,
    pub ipam: Option<Value>,
}

fn default_prefix() -> String {
    DEFAULT_PREFIX.to_string()
}

fn setup_err(what: &str, e: impl std::fmt::Display) -> CniError {
    CniError::new(code::SETUP_FAILED, what.to_string(), e.to_string())
}

/// FNV-1a: a stable hash for interface names (no need for a cryptographic one).
fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in data {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// The host-side name for (container, ifname): the prefix and a hash, 15 characters at most.
pub fn host_veth_name(prefix: &str, container_id: &str, ifname: &str) -> String {
    let h = fnv1a(format!("{container_id}/{ifname}").as_bytes());
    let hex = format!("{h:016x}");
    let room = 15usize.saturating_sub(prefix.len()).min(16);
    format!("{prefix}{}", &hex[..room])
}

pub fn parse_conf(raw: &[u8]) -> Result<Conf, CniError> {
    let c: Conf = serde_json::from_slice(raw).map_err(|e| {
        CniError::new(
            code::DECODE_FAILURE,
            "cannot decode the network configuration",
            e.to_string(),
        )
    })?;
    if c.host_veth_prefix.is_empty()
        || c.host_veth_prefix.len() > 7
        || !c
            .host_veth_prefix
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '-')
    {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "invalid host_veth_prefix",
            format!("{:?}: 1 to 7 letters, digits or '-'", c.host_veth_prefix),
        ));
    }
    if let Some(m) = c.mtu
        && !(576..=65535).contains(&m)
    {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "invalid mtu",
            format!("{m} is not within 576..=65535"),
        ));
    }
    Ok(c)
}

fn ipam_type(c: &Conf) -> Result<String, CniError> {
    c.ipam
        .as_ref()
        .and_then(|i| i.get("type"))
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty() && !t.contains('/'))
        .map(String::from)
        .ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                "no IPAM plugin",
                "\"ipam\": {\"type\": \"petrel-ipam\", ...} is required",
            )
        })
}

/// Run the IPAM plugin `kind` for `cmd` with the same configuration, as a runtime would.
pub fn delegate(kind: &str, cmd: &str, raw: &[u8], env: &Env) -> Result<Option<Value>, CniError> {
    let bin: PathBuf = env
        .path
        .iter()
        .map(|d| PathBuf::from(d).join(kind))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                format!("IPAM plugin {kind:?} not found"),
                format!("looked in CNI_PATH {:?}", env.path.join(":")),
            )
        })?;
    let mut child = Proc::new(&bin)
        .env("CNI_COMMAND", cmd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| {
            CniError::new(
                code::IO_FAILURE,
                format!("cannot run {}", bin.display()),
                e.to_string(),
            )
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(raw);
    }
    let out = child.wait_with_output().map_err(|e| {
        CniError::new(
            code::IO_FAILURE,
            format!("{} failed", bin.display()),
            e.to_string(),
        )
    })?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // Pass the delegate's own error through.
        return Err(match serde_json::from_str::<Value>(&text) {
            Ok(v) => CniError::new(
                v["code"].as_u64().unwrap_or(code::IO_FAILURE as u64) as u32,
                v["msg"].as_str().unwrap_or("IPAM failed").to_string(),
                v["details"].as_str().unwrap_or("").to_string(),
            ),
            Err(_) => CniError::new(
                code::IO_FAILURE,
                format!("{kind} failed"),
                text.trim().to_string(),
            ),
        });
    }
    if text.trim().is_empty() {
        return Ok(None);
    }
    serde_json::from_str(&text).map(Some).map_err(|e| {
        CniError::new(
            code::DECODE_FAILURE,
            format!("cannot decode {kind}'s answer"),
            e.to_string(),
        )
    })
}

/// The addresses the pod gets: the IPAM's, as host routes (/32, /128).
fn pod_addresses(ipam: &CniResult) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = ipam.ips.iter().map(|i| i.address.addr()).collect();
    v.sort_by_key(|a| !a.is_ipv4());
    v.dedup();
    v
}

fn host_net(a: IpAddr) -> IpNet {
    IpNet::new(a, if a.is_ipv4() { 32 } else { 128 }).unwrap_or_else(|_| IpNet::from(a))
}

fn gateway_of(a: &IpAddr) -> IpAddr {
    if a.is_ipv4() {
        IpAddr::V4(GATEWAY_V4)
    } else {
        IpAddr::V6(GATEWAY_V6)
    }
}

/// Open CNI_NETNS, which must name a network namespace other than the plugin's own:
/// error 4 if it does not, 3 if it cannot be opened.
fn open_pod_netns(path: &str) -> Result<std::fs::File, CniError> {
    let ns = std::fs::File::open(path).map_err(|e| {
        CniError::new(
            code::UNKNOWN_CONTAINER,
            "cannot open the pod's network namespace",
            format!("{path}: {e}"),
        )
    })?;
    match netns::unfit_for_a_pod(&ns) {
        None => Ok(ns),
        Some(why) => Err(CniError::new(
            code::INVALID_ENV,
            format!("CNI_NETNS is {why}"),
            format!("CNI_NETNS={path}"),
        )),
    }
}

pub fn add(env: &Env, conf: &Conf, raw: &[u8], version: &str) -> Result<Value, CniError> {
    let kind = ipam_type(conf)?;
    let host = host_veth_name(&conf.host_veth_prefix, &env.container_id, &env.ifname);
    let mut nl = Nl::open().map_err(|e| setup_err("netlink", e))?;
    // The veth first: it is what can collide (an interface name taken in the pod, an
    // attachment that exists already), and nothing else is taken yet when it does.
    let ns = open_pod_netns(&env.netns)?;
    let mtu = match conf.mtu {
        Some(m) => m,
        None => nl
            .uplink_mtu()
            .map_err(|e| setup_err("reading the uplink MTU", e))?
            .unwrap_or(1500),
    };
    if let Err(e) = nl.create_veth(&host, HOST_MAC, &env.ifname, ns.as_raw_fd(), mtu) {
        if e.raw_os_error() == Some(libc::EEXIST) {
            if nl
                .link(&host)
                .map_err(|e| setup_err("netlink", e))?
                .is_some()
            {
                return Err(CniError::new(
                    code::INVALID_ENV,
                    "this container already has this interface",
                    format!(
                        "host interface {host} for {}/{} (CNI_CONTAINERID, CNI_IFNAME) exists: DEL it first",
                        env.container_id, env.ifname
                    ),
                ));
            }
            return Err(CniError::new(
                code::INVALID_ENV,
                format!("interface {} already exists in the pod", env.ifname),
                format!("CNI_IFNAME {} is taken in {}", env.ifname, env.netns),
            ));
        }
        return Err(setup_err(
            &format!("creating veth {host}/{}", env.ifname),
            e,
        ));
    }
    let ipam = match delegate(&kind, "ADD", raw, env)
        .and_then(|v| {
            v.ok_or_else(|| {
                CniError::new(
                    code::DECODE_FAILURE,
                    "the IPAM plugin returned nothing",
                    kind.clone(),
                )
            })
        })
        .and_then(|v| CniResult::from_json(&v))
    {
        Ok(r) => r,
        Err(e) => {
            retire(&mut nl, &host, &conf.host_veth_prefix);
            return Err(e);
        }
    };
    let addrs = pod_addresses(&ipam);
    let res = if addrs.is_empty() {
        Err(CniError::new(
            code::SETUP_FAILED,
            "the IPAM plugin gave no address",
            kind.clone(),
        ))
    } else {
        setup(env, &mut nl, &host, mtu, &addrs)
    };
    match res {
        Ok(r) => Ok(r.to_json(version)),
        Err(e) => {
            // Give back everything this ADD took before reporting.
            debug!(error = %e, "ADD failed: cleaning up");
            retire(&mut nl, &host, &conf.host_veth_prefix);
            let _ = delegate(&kind, "DEL", raw, env);
            Err(e)
        }
    }
}

/// Take the host veth `name` out of service now and delete it in the background.
///
/// Unregistering a network device makes the kernel wait for RCU grace periods (about 20 ms
/// here, whoever asks), which would dominate DEL. So: down (the kernel flushes its routes:
/// no packet reaches the pod any more), renamed (the name is free for a new ADD at once),
/// and a detached `petrel-cni reap-link` deletes it; the pod end goes with it. GC removes
/// any such link a crash left behind.
pub fn retire(nl: &mut Nl, name: &str, prefix: &str) {
    let Ok(Some(l)) = nl.link(name) else { return };
    let _ = nl.set_down(l.index);
    let dying = format!(
        "{prefix}-{:x}",
        fnv1a(
            format!(
                "{name}{}{:?}",
                std::process::id(),
                std::time::Instant::now()
            )
            .as_bytes()
        )
    );
    let dying: String = dying.chars().take(15).collect();
    let target = match nl.rename(l.index, &dying) {
        Ok(()) => dying,
        Err(_) => name.to_string(),
    };
    let spawned = std::env::current_exe().and_then(|exe| {
        Proc::new(exe)
            .args(["reap-link", &target])
            .env_remove("CNI_COMMAND")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
    });
    if spawned.is_err() {
        let _ = nl.delete_link(&target);
    }
}

fn setup(
    env: &Env,
    nl: &mut Nl,
    host: &str,
    mtu: u32,
    addrs: &[IpAddr],
) -> Result<CniResult, CniError> {
    let v6 = addrs.iter().any(|a| a.is_ipv6());
    // Host side: answer ARP for the pod's gateway at once, forward.
    let sysctl = |k: String, v: &str| sysctl_ensure(&k, v).map_err(|e| setup_err("sysctl", e));
    sysctl(format!("ipv4/conf/{host}/proxy_arp"), "1")?;
    sysctl(format!("ipv4/neigh/{host}/proxy_delay"), "0")?;
    sysctl(format!("ipv4/conf/{host}/forwarding"), "1")?;
    if v6 {
        // The host end owns fe80::1 itself, so neighbour discovery for the pod's gateway
        // needs no proxy; no router advertisements are ever wanted on it.
        sysctl(format!("ipv6/conf/{host}/accept_ra"), "0")?;
        sysctl(format!("ipv6/conf/{host}/accept_dad"), "0")?;
        sysctl(format!("ipv6/conf/{host}/forwarding"), "1")?;
    }
    let hl = nl
        .link(host)
        .map_err(|e| setup_err("netlink", e))?
        .ok_or_else(|| setup_err("the host veth vanished", host))?;
    if v6 {
        nl.add_addr(
            hl.index,
            IpNet::new(IpAddr::V6(GATEWAY_V6), 64)
                .unwrap_or_else(|_| IpNet::from(IpAddr::V6(GATEWAY_V6))),
        )
        .map_err(|e| setup_err("host veth fe80::1", e))?;
    }

    // Pod side.
    let ifname = env.ifname.clone();
    let pod_addrs = addrs.to_vec();
    let (pod_mac, pod_index) = netns::run_in(&env.netns, move || {
        let mut p = Nl::open()?;
        // A runtime normally brings lo up (the loopback plugin); do it if nobody did.
        if let Some(lo) = p.link("lo")?
            && !lo.up
        {
            p.set_up(lo.index)?;
        }
        let l = p
            .link(&ifname)?
            .ok_or_else(|| std::io::Error::other(format!("{ifname} is not in the pod")))?;
        if pod_addrs.iter().any(|a| a.is_ipv6()) {
            // No router advertisements, no duplicate address detection delay.
            let _ = sysctl_ensure(&format!("ipv6/conf/{ifname}/accept_ra"), "0");
            let _ = sysctl_ensure(&format!("ipv6/conf/{ifname}/accept_dad"), "0");
        }
        for a in &pod_addrs {
            p.add_addr(l.index, host_net(*a))?;
        }
        p.set_up(l.index)?;
        for a in &pod_addrs {
            match a {
                IpAddr::V4(_) => {
                    p.add_route(host_net(IpAddr::V4(GATEWAY_V4)), None, l.index)?;
                    p.add_route(
                        "0.0.0.0/0".parse().unwrap_or_default(),
                        Some(IpAddr::V4(GATEWAY_V4)),
                        l.index,
                    )?;
                }
                IpAddr::V6(_) => {
                    p.add_route(
                        "::/0".parse().unwrap_or_default(),
                        Some(IpAddr::V6(GATEWAY_V6)),
                        l.index,
                    )?;
                }
            }
        }
        // The gateway's MAC is known (every host veth has it): a permanent entry means no
        // ARP or neighbour discovery round trip before the first packet, and a gateway that
        // works whatever the node's routing (proxy ARP answers only when the node has a
        // route covering 169.254.1.1).
        for a in &pod_addrs {
            p.set_permanent_neighbour(l.index, gateway_of(a), HOST_MAC)?;
        }
        Ok((mac_string(&l.mac), l.index))
    })
    .map_err(|e| setup_err("configuring the pod's interface", e))?;
    let _ = pod_index;

    // The node routes each pod address to its veth.
    for a in addrs {
        nl.add_route(host_net(*a), None, hl.index)
            .map_err(|e| setup_err(&format!("host route to {a}"), e))?;
    }

    Ok(CniResult {
        interfaces: vec![
            Interface {
                name: host.to_string(),
                mac: mac_string(&HOST_MAC),
                mtu: Some(mtu),
                sandbox: String::new(),
            },
            Interface {
                name: env.ifname.clone(),
                mac: pod_mac,
                mtu: Some(mtu),
                sandbox: env.netns.clone(),
            },
        ],
        ips: addrs
            .iter()
            .map(|a| IpConfig {
                address: host_net(*a),
                gateway: Some(gateway_of(a)),
                interface: Some(1),
            })
            .collect(),
        routes: addrs
            .iter()
            .map(|a| Route {
                dst: if a.is_ipv4() {
                    "0.0.0.0/0".parse().unwrap_or_default()
                } else {
                    "::/0".parse().unwrap_or_default()
                },
                gw: Some(gateway_of(a)),
            })
            .collect(),
    })
}

/// DEL: best effort and idempotent; the IP is always released.
pub fn del(env: &Env, conf: &Conf, raw: &[u8]) -> Result<(), CniError> {
    let host = host_veth_name(&conf.host_veth_prefix, &env.container_id, &env.ifname);
    match Nl::open() {
        // The veth (and with it the pod end and the node's routes to the pod) goes; if the
        // netns is already gone the pod end went with it and so did the pair.
        Ok(mut nl) => retire(&mut nl, &host, &conf.host_veth_prefix),
        Err(e) => debug!(error = %e, "DEL: no netlink"),
    }
    match ipam_type(conf) {
        Ok(kind) => delegate(&kind, "DEL", raw, env).map(|_| ()),
        Err(_) => Ok(()),
    }
}

/// CHECK: the container's network is as ADD left it; the error lists what differs.
pub fn check(env: &Env, conf: &Conf, raw: &[u8], prev: Option<&Value>) -> Result<(), CniError> {
    let prev = prev.ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "CHECK needs prevResult",
            "the runtime must pass the ADD result",
        )
    })?;
    let prev = CniResult::from_json(prev)?;
    let addrs = pod_addresses(&prev);
    open_pod_netns(&env.netns)?;
    let host = host_veth_name(&conf.host_veth_prefix, &env.container_id, &env.ifname);
    let mut diffs: Vec<String> = Vec::new();
    let mut nl = Nl::open().map_err(|e| setup_err("netlink", e))?;
    match nl.link(&host).map_err(|e| setup_err("netlink", e))? {
        None => diffs.push(format!("host veth {host} is missing")),
        Some(hl) => {
            if !hl.up {
                diffs.push(format!("host veth {host} is down"));
            }
            let routes: Vec<_> = [false, true]
                .iter()
                .flat_map(|v6| nl.routes(*v6).unwrap_or_default())
                .collect();
            for a in &addrs {
                let dst = host_net(*a);
                if !routes
                    .iter()
                    .any(|r| r.dst == dst && r.oif == Some(hl.index) && r.gateway.is_none())
                {
                    diffs.push(format!("node has no route {dst} dev {host}"));
                }
            }
            let mut want_sysctls = vec![
                (format!("ipv4/conf/{host}/proxy_arp"), "1"),
                (format!("ipv4/neigh/{host}/proxy_delay"), "0"),
                (format!("ipv4/conf/{host}/forwarding"), "1"),
            ];
            if addrs.iter().any(|a| a.is_ipv6()) {
                want_sysctls.extend([
                    (format!("ipv6/conf/{host}/forwarding"), "1"),
                    (format!("ipv6/conf/{host}/accept_ra"), "0"),
                ]);
            }
            for (k, want) in want_sysctls {
                let got = sysctl_get(&k).unwrap_or_default();
                if got != want {
                    diffs.push(format!(
                        "sysctl net.{} is {got:?}, want {want}",
                        k.replace('/', ".")
                    ));
                }
            }
        }
    }
    let ifname = env.ifname.clone();
    let want = addrs.clone();
    let pod = netns::run_in(&env.netns, move || {
        let mut d = Vec::new();
        let mut p = Nl::open()?;
        let Some(l) = p.link(&ifname)? else {
            d.push(format!("{ifname} is missing in the pod"));
            return Ok(d);
        };
        if !l.up {
            d.push(format!("{ifname} is down in the pod"));
        }
        let have: HashSet<IpNet> = p.addrs(l.index)?.into_iter().collect();
        for a in &want {
            if !have.contains(&host_net(*a)) {
                d.push(format!("{ifname} lacks address {}", host_net(*a)));
            }
        }
        let r4 = p.routes(false)?;
        let r6 = p.routes(true)?;
        if want.iter().any(|a| a.is_ipv4()) {
            if !r4.iter().any(|r| {
                r.dst == host_net(IpAddr::V4(GATEWAY_V4)) && r.scope_link && r.oif == Some(l.index)
            }) {
                d.push(format!(
                    "pod has no route 169.254.1.1 dev {ifname} scope link"
                ));
            }
            if !r4
                .iter()
                .any(|r| r.dst.prefix_len() == 0 && r.gateway == Some(IpAddr::V4(GATEWAY_V4)))
            {
                d.push("pod has no default route via 169.254.1.1".to_string());
            }
        }
        if want.iter().any(|a| a.is_ipv6())
            && !r6
                .iter()
                .any(|r| r.dst.prefix_len() == 0 && r.gateway == Some(IpAddr::V6(GATEWAY_V6)))
        {
            d.push("pod has no IPv6 default route via fe80::1".to_string());
        }
        let neigh = p.neighbours(l.index)?;
        let mut gateways: Vec<IpAddr> = want.iter().map(gateway_of).collect();
        gateways.sort();
        gateways.dedup();
        for gw in gateways {
            if !neigh
                .iter()
                .any(|n| n.ip == gw && n.permanent && n.mac == HOST_MAC)
            {
                d.push(format!(
                    "pod has no permanent neighbour {gw} lladdr {} on {ifname}",
                    mac_string(&HOST_MAC)
                ));
            }
        }
        Ok(d)
    })
    .map_err(|e| {
        CniError::new(
            code::UNKNOWN_CONTAINER,
            "cannot enter the pod's network namespace",
            format!("{}: {e}", env.netns),
        )
    })?;
    diffs.extend(pod);
    if let Ok(kind) = ipam_type(conf) {
        delegate(&kind, "CHECK", raw, env)?;
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            code::CHECK_FAILED,
            "the container's network is not as ADD left it",
            diffs.join("; "),
        ))
    }
}

/// GC: release the IPs of attachments the runtime no longer has, and remove host veths of
/// ours that belong to none of the valid attachments.
pub fn gc(env: &Env, conf: &Conf, raw: &[u8], valid: &[cni::Attachment]) -> Result<(), CniError> {
    let expected: HashSet<String> = valid
        .iter()
        .map(|a| host_veth_name(&conf.host_veth_prefix, &a.container_id, &a.ifname))
        .collect();
    let mut nl = Nl::open().map_err(|e| setup_err("netlink", e))?;
    let dying = format!("{}-", conf.host_veth_prefix);
    for l in nl.links().map_err(|e| setup_err("netlink", e))? {
        let ours = l.name.starts_with(&conf.host_veth_prefix)
            && l.kind.as_deref() == Some("veth")
            && l.mac == HOST_MAC;
        // A live attachment's link, or one retired whose reaper did not get to it.
        if ours
            && (l.name.starts_with(&dying) || (l.name.len() == 15 && !expected.contains(&l.name)))
        {
            debug!(link = %l.name, "GC: removing a stale host veth");
            let _ = nl.delete_link(&l.name);
        }
    }
    if let Ok(kind) = ipam_type(conf) {
        delegate(&kind, "GC", raw, env)?;
    }
    Ok(())
}

/// Entry point of the `petrel-cni` binary.
pub fn main() {
    let args: Vec<String> = std::env::args().collect();
    if std::env::var_os("CNI_COMMAND").is_none() {
        match args.get(1).map(String::as_str) {
            Some("install") => std::process::exit(crate::install::cli(&args)),
            // The background half of DEL (see `retire`).
            Some("reap-link") => {
                if let (Some(name), Ok(mut nl)) = (args.get(2), Nl::open()) {
                    let _ = nl.delete_link(name);
                }
                return;
            }
            _ => {}
        }
    }
    let (cmd, env) = match cni::env(|k| std::env::var(k).ok()) {
        Ok(x) => x,
        Err(e) => cni::fail(&e, cni::LATEST),
    };
    if cmd == Command::Version {
        let raw = cni::stdin().unwrap_or_default();
        let requested = serde_json::from_slice::<Value>(&raw)
            .ok()
            .and_then(|v| v["cniVersion"].as_str().map(String::from));
        println!("{}", cni::version_json(requested.as_deref()));
        return;
    }
    let raw = match cni::stdin() {
        Ok(r) => r,
        Err(e) => cni::fail(&e, cni::LATEST),
    };
    let common = match cni::common(&raw) {
        Ok(c) => c,
        Err(e) => cni::fail(&e, cni::LATEST),
    };
    let version = common.cni_version.clone();
    let conf = match parse_conf(&raw) {
        Ok(c) => c,
        Err(e) => cni::fail(&e, &version),
    };
    let res = match cmd {
        Command::Add => add(&env, &conf, &raw, &version).map(Some),
        Command::Del => del(&env, &conf, &raw).map(|_| None),
        Command::Check => check(&env, &conf, &raw, common.prev_result.as_ref()).map(|_| None),
        Command::Gc => gc(
            &env,
            &conf,
            &raw,
            common.valid_attachments.as_deref().unwrap_or(&[]),
        )
        .map(|_| None),
        Command::Status => ipam_type(&conf)
            .and_then(|k| delegate(&k, "STATUS", &raw, &env))
            .map(|_| None),
        Command::Version => Ok(None),
    };
    match res {
        Ok(Some(v)) => println!("{v}"),
        Ok(None) => {}
        Err(e) => cni::fail(&e, &version),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_stable_short_and_distinct() {
        let a = host_veth_name("pet", "0123456789abcdef", "eth0");
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("pet"));
        assert_eq!(a, host_veth_name("pet", "0123456789abcdef", "eth0"));
        assert_ne!(a, host_veth_name("pet", "0123456789abcdef", "net1"));
        assert_ne!(a, host_veth_name("pet", "0123456789abcdeg", "eth0"));
        assert_eq!(host_veth_name("cali-x", "c", "eth0").len(), 15);
    }

    #[test]
    fn conf_validation() {
        assert!(parse_conf(br#"{"ipam":{"type":"petrel-ipam"}}"#).is_ok());
        assert_eq!(
            parse_conf(br#"{"host_veth_prefix":"waytoolongprefix"}"#)
                .unwrap_err()
                .code,
            7
        );
        assert_eq!(parse_conf(br#"{"mtu":12}"#).unwrap_err().code, 7);
        assert_eq!(
            ipam_type(&parse_conf(br#"{}"#).unwrap()).unwrap_err().code,
            7
        );
    }
}
