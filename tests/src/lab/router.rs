//! The lab's top-of-rack router: BIRD 2, FRR or GoBGP, with an eBGP session per node and
//! family.
//!
//! BIRD and FRR install what they learn in the router namespace's kernel and would forward
//! between nodes; on the shared rack LAN both pass the announcing node's address on as the
//! next hop (RFC 4271 5.1.3, "third party" next hop), so node-to-node traffic takes the
//! direct path. GoBGP has no FIB of its own: it runs as a route server (route-server-client
//! sessions), which passes routes on unchanged (next hop and AS path), and the nodes route
//! to each other directly across the LAN. The nodes then accept paths that do not start
//! with the router's AS (`enforce_first_as: false`).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Result, bail};

use super::{
    HOLD_TIME, Lab, ROUTER_ADDR4, ROUTER_ADDR6, ROUTER_ASN, alive, need_tool, spawn, stop, wait_for,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouterKind {
    Bird,
    Frr,
    Gobgp,
}

impl std::str::FromStr for RouterKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "bird" | "bird2" => Ok(RouterKind::Bird),
            "frr" => Ok(RouterKind::Frr),
            "gobgp" | "gobgpd" => Ok(RouterKind::Gobgp),
            other => Err(format!("router {other:?}: bird, frr or gobgp")),
        }
    }
}

impl std::fmt::Display for RouterKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RouterKind::Bird => "bird",
            RouterKind::Frr => "frr",
            RouterKind::Gobgp => "gobgp",
        })
    }
}

impl RouterKind {
    pub fn is_route_server(self) -> bool {
        self == RouterKind::Gobgp
    }

    pub fn title(self) -> &'static str {
        match self {
            RouterKind::Bird => "BIRD 2",
            RouterKind::Frr => "FRR",
            RouterKind::Gobgp => "GoBGP (route server)",
        }
    }

    pub fn check_tools(self) -> Result<()> {
        match self {
            RouterKind::Bird => {
                need_tool("bird", "bird2")?;
                need_tool("birdc", "bird2")
            }
            RouterKind::Frr => {
                if !Path::new("/usr/lib/frr/bgpd").exists() {
                    bail!(
                        "/usr/lib/frr/bgpd not found: apt-get install frr (./lab.sh installs it)"
                    );
                }
                need_tool("vtysh", "frr")
            }
            RouterKind::Gobgp => {
                need_tool("gobgpd", "gobgpd")?;
                need_tool("gobgp", "gobgpd")
            }
        }
    }
}

fn bird_conf(lab: &Lab) -> String {
    let mut c = format!(
        "# petrel-lab router\nrouter id {ROUTER_ADDR4};\n\
         protocol device {{ scan time 10; }}\n\
         protocol kernel kernel4 {{ ipv4 {{ import none; export all; }}; }}\n\
         protocol kernel kernel6 {{ ipv6 {{ import none; export all; }}; }}\n\
         template bgp rack {{\n  local as {ROUTER_ASN};\n  hold time {HOLD_TIME};\n  \
         connect delay time 1; connect retry time 2; error wait time 1, 2;\n}}\n"
    );
    for n in lab.nodes() {
        c.push_str(&format!(
            "protocol bgp {name}_v4 from rack {{\n  local {ROUTER_ADDR4};\n  neighbor {a4} as {asn};\n  \
             ipv4 {{ import all; export all; }};\n}}\n\
             protocol bgp {name}_v6 from rack {{\n  local {ROUTER_ADDR6};\n  neighbor {a6} as {asn};\n  \
             ipv6 {{ import all; export all; }};\n}}\n",
            name = n.name,
            a4 = n.addr4,
            a6 = n.addr6,
            asn = n.asn,
        ));
    }
    c
}

fn frr_conf(lab: &Lab) -> String {
    let mut c = format!(
        "frr defaults datacenter\nhostname rtr\n!\nrouter bgp {ROUTER_ASN}\n bgp router-id {ROUTER_ADDR4}\n \
         no bgp ebgp-requires-policy\n no bgp default ipv4-unicast\n"
    );
    for n in lab.nodes() {
        for a in [n.addr4, n.addr6] {
            c.push_str(&format!(
                " neighbor {a} remote-as {asn}\n neighbor {a} timers {ka} {HOLD_TIME}\n neighbor {a} timers connect 1\n",
                asn = n.asn,
                ka = HOLD_TIME / 3,
            ));
        }
    }
    for (fam, v6) in [("ipv4", false), ("ipv6", true)] {
        c.push_str(&format!(" address-family {fam} unicast\n"));
        for n in lab.nodes() {
            let a = if v6 { n.addr6 } else { n.addr4 };
            c.push_str(&format!("  neighbor {a} activate\n"));
        }
        c.push_str(" exit-address-family\n");
    }
    c.push_str("!\n");
    c
}

fn gobgp_conf(lab: &Lab) -> String {
    let mut c = format!(
        "# petrel-lab route server\n[global.config]\n  as = {ROUTER_ASN}\n  router-id = \"{ROUTER_ADDR4}\"\n  \
         local-address-list = [\"{ROUTER_ADDR4}\", \"{ROUTER_ADDR6}\"]\n"
    );
    for n in lab.nodes() {
        for (a, fam) in [(n.addr4, "ipv4-unicast"), (n.addr6, "ipv6-unicast")] {
            c.push_str(&format!(
                "\n[[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{a}\"\n    peer-as = {asn}\n  \
                 [neighbors.timers.config]\n    hold-time = {HOLD_TIME}\n    keepalive-interval = {ka}\n    connect-retry = 1\n  \
                 [neighbors.route-server.config]\n    route-server-client = true\n  \
                 [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"{fam}\"\n",
                asn = n.asn,
                ka = HOLD_TIME / 3,
            ));
        }
    }
    c
}

/// Start the router daemon(s) unless they run.
pub(super) fn start(lab: &Lab, ns: &str, dir: &Path, log: &mut dyn FnMut(&str)) -> Result<()> {
    match lab.s.router {
        RouterKind::Bird => {
            let conf = dir.join("bird.conf");
            std::fs::write(&conf, bird_conf(lab))?;
            let pid = dir.join("bird.pid");
            if !alive(&pid) {
                log("router: BIRD 2");
                let ctl = dir.join("bird.ctl");
                spawn(
                    ns,
                    &[
                        "bird",
                        "-f",
                        "-c",
                        conf.to_str().unwrap(),
                        "-s",
                        ctl.to_str().unwrap(),
                    ],
                    &dir.join("bird.log"),
                    &pid,
                )?;
            }
        }
        RouterKind::Frr => {
            // FRR drops privileges for some files: let it write its directory.
            std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o777))?;
            let conf = dir.join("frr.conf");
            std::fs::write(&conf, frr_conf(lab))?;
            let zserv = dir.join("zserv.api");
            let common = |pid: &str| -> Vec<String> {
                [
                    "-u",
                    "root",
                    "-g",
                    "root",
                    "-i",
                    dir.join(pid).to_str().unwrap(),
                    "-z",
                    zserv.to_str().unwrap(),
                    "--vty_socket",
                    dir.to_str().unwrap(),
                ]
                .iter()
                .map(|s| s.to_string())
                .collect()
            };
            if !alive(&dir.join("zebra.lab.pid")) {
                log("router: FRR zebra");
                let _ = std::fs::remove_file(&zserv);
                let mut a = vec!["/usr/lib/frr/zebra".to_string()];
                a.extend(common("zebra.pid"));
                a.extend(["-f".into(), "/dev/null".into()]);
                let a: Vec<&str> = a.iter().map(|s| s.as_str()).collect();
                spawn(ns, &a, &dir.join("zebra.log"), &dir.join("zebra.lab.pid"))?;
                wait_for("zebra's API socket", Duration::from_secs(10), || {
                    zserv.exists().then_some(())
                })?;
            }
            if !alive(&dir.join("bgpd.lab.pid")) {
                log("router: FRR bgpd");
                let mut a = vec!["/usr/lib/frr/bgpd".to_string()];
                a.extend(common("bgpd.pid"));
                a.extend([
                    "-f".into(),
                    conf.to_str().unwrap().into(),
                    "-P".into(),
                    "0".into(),
                ]);
                let a: Vec<&str> = a.iter().map(|s| s.as_str()).collect();
                spawn(ns, &a, &dir.join("bgpd.log"), &dir.join("bgpd.lab.pid"))?;
            }
        }
        RouterKind::Gobgp => {
            let conf = dir.join("gobgpd.toml");
            std::fs::write(&conf, gobgp_conf(lab))?;
            let pid = dir.join("gobgpd.pid");
            if !alive(&pid) {
                log("router: GoBGP route server");
                spawn(
                    ns,
                    &[
                        "gobgpd",
                        "-f",
                        conf.to_str().unwrap(),
                        "--api-hosts",
                        "127.0.0.1:50051",
                        "-p",
                    ],
                    &dir.join("gobgpd.log"),
                    &pid,
                )?;
            }
        }
    }
    wait_for("the router's CLI", Duration::from_secs(20), || {
        cli_ok(lab).then_some(())
    })
}

fn cli_ok(lab: &Lab) -> bool {
    match lab.s.router {
        RouterKind::Bird => cli(lab, "show status").is_some_and(|s| s.contains("Daemon is up")),
        RouterKind::Frr => cli(lab, "show bgp summary").is_some(),
        RouterKind::Gobgp => cli(lab, "global").is_some(),
    }
}

/// Run the router's own CLI: `birdc`, `vtysh -c` or `gobgp`.
pub fn cli(lab: &Lab, cmd: &str) -> Option<String> {
    let dir = lab.s.state_dir.join("router");
    let mut c = match lab.s.router {
        RouterKind::Bird => {
            let mut c = Command::new("birdc");
            c.arg("-s")
                .arg(dir.join("bird.ctl"))
                .args(cmd.split_whitespace());
            c
        }
        RouterKind::Frr => {
            let mut c = Command::new("vtysh");
            c.arg("--vty_socket").arg(&dir).args(["-c", cmd]);
            c
        }
        RouterKind::Gobgp => {
            let mut c = Command::new("ip");
            c.args([
                "netns",
                "exec",
                &lab.router_ns(),
                "gobgp",
                "-u",
                "127.0.0.1",
                "-p",
                "50051",
            ])
            .args(cmd.split_whitespace());
            c
        }
    };
    let out = c.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What an operator types on the router to see its routes, and what it prints.
pub fn route_views(lab: &Lab) -> Vec<(String, String)> {
    if lab.s.topology == super::Topology::Rr {
        // The router runs no BGP in this topology: nothing to show.
        return Vec::new();
    }
    let cmds: Vec<String> = match lab.s.router {
        RouterKind::Bird => vec!["show route".into()],
        RouterKind::Frr => vec!["show ip bgp".into(), "show bgp ipv6 unicast".into()],
        // A route server keeps no global RIB: what it received from each client.
        RouterKind::Gobgp => lab
            .nodes()
            .iter()
            .flat_map(|n| {
                [
                    format!("neighbor {} adj-in -a ipv4", n.addr4),
                    format!("neighbor {} adj-in -a ipv6", n.addr6),
                ]
            })
            .collect(),
    };
    let tool = match lab.s.router {
        RouterKind::Bird => "birdc",
        RouterKind::Frr => "vtysh -c",
        RouterKind::Gobgp => "gobgp",
    };
    cmds.iter()
        .map(|c| {
            (
                format!("{tool} {c}"),
                cli(lab, c).unwrap_or_else(|| "(no answer)".into()),
            )
        })
        .collect()
}

/// The prefixes the router holds, as text CIDRs.
pub fn prefixes(lab: &Lab) -> Vec<String> {
    prefixes_in(&route_views(lab))
}

/// The prefixes named in what [`route_views`] printed.
pub fn prefixes_in(views: &[(String, String)]) -> Vec<String> {
    let mut out = Vec::new();
    for (_, text) in views {
        for tok in text.split_whitespace() {
            let tok = tok.trim_start_matches(['*', '>', '=']);
            if tok.contains('/')
                && tok.parse::<ipnet::IpNet>().is_ok()
                && !out.iter().any(|o| o == tok)
            {
                out.push(tok.to_string());
            }
        }
    }
    out
}

/// Stop the router daemon(s).
pub(super) fn stop_router(lab: &Lab) {
    let dir = lab.s.state_dir.join("router");
    for p in ["bird.pid", "bgpd.lab.pid", "zebra.lab.pid", "gobgpd.pid"] {
        stop(&dir.join(p));
    }
}
