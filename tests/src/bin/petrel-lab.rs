//! `petrel-lab`: a routed cluster in network namespaces: a top-of-rack router (BIRD, FRR or
//! GoBGP), nodes running `petrel run`, pods made by `petrel-cni`. See `petrel_tests::lab`.
//!
//! ```text
//! petrel-lab up     [--nodes 3] [--pods 2] [--router bird|frr|gobgp] [--topology tor|rr] [--json]
//! petrel-lab status [--json]
//! petrel-lab down
//! petrel-lab add-pod NODE [--ip ADDR[,ADDR]]     petrel-lab del-pod POD
//! ```
//! `status` and `up` exit 1 when a cell of the reachability matrix fails.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use petrel_tests::lab::{self, Lab, RouterKind, Settings, Topology};

#[derive(Parser)]
#[command(
    name = "petrel-lab",
    about = "A routed Petrel cluster in network namespaces"
)]
struct Cli {
    /// Name prefix of everything the lab makes (namespaces PREFIX-rtr, PREFIX-n1, ...).
    #[arg(long, global = true, default_value = "plab")]
    prefix: String,
    /// Where the lab keeps configs, logs and pid files [default: /run/petrel-lab/PREFIX].
    #[arg(long, global = true)]
    state_dir: Option<PathBuf>,
    /// Where petrel, petrel-cni and petrel-ipam are [default: beside petrel-lab].
    #[arg(long, global = true)]
    bin_dir: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Bring the lab up (what is already up stays), then print the status. Sizes and router
    /// default to the running lab's, or 3 nodes, 2 pods each, BIRD.
    Up {
        #[arg(long)]
        nodes: Option<usize>,
        /// Pods per node.
        #[arg(long)]
        pods: Option<usize>,
        /// bird, frr or gobgp.
        #[arg(long)]
        router: Option<RouterKind>,
        /// tor (eBGP to the router) or rr (iBGP, nodes n1 and n2 reflecting; the router
        /// only forwards).
        #[arg(long)]
        topology: Option<Topology>,
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the agents' status, the router's routes, the pods and the reachability matrix.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Remove every namespace, process and file of the lab.
    Down,
    /// Add a pod to node NODE (n1, n2, ...), optionally asking for its addresses.
    AddPod {
        node: String,
        #[arg(long)]
        ip: Option<String>,
    },
    /// Delete pod POD (n1-p2, ...) the way a runtime does: CNI DEL, then its namespace.
    DelPod { pod: String },
    /// (internal) The echo listener run in every pod and node.
    #[command(hide = true)]
    Echo {
        #[arg(long, default_value_t = lab::ECHO_PORT)]
        port: u16,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("petrel-lab: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let state_dir = cli
        .state_dir
        .clone()
        .unwrap_or_else(|| Settings::default_state_dir(&cli.prefix));
    let bin_dir = match cli.bin_dir.clone() {
        Some(d) => d,
        None => std::env::current_exe()?
            .parent()
            .map(|p| p.to_path_buf())
            .unwrap_or_default(),
    };
    let mut say = |m: &str| eprintln!("petrel-lab: {m}");
    let print = |lab: &Lab, json: bool| -> anyhow::Result<ExitCode> {
        let r = lab.report();
        if json {
            println!("{}", serde_json::to_string_pretty(&r.json)?);
        } else {
            print!("{}", lab::render(&r));
        }
        Ok(if r.all_ok() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    };
    match cli.cmd {
        Cmd::Echo { port } => {
            lab::echo_serve(port)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Up {
            nodes,
            pods,
            router,
            topology,
            json,
        } => {
            let old = Lab::open(&state_dir, bin_dir.clone()).ok().map(|l| l.s);
            let lab = Lab::new(Settings {
                prefix: cli.prefix,
                nodes: nodes.or(old.as_ref().map(|o| o.nodes)).unwrap_or(3),
                pods: pods.or(old.as_ref().map(|o| o.pods)).unwrap_or(2),
                router: router
                    .or(old.as_ref().map(|o| o.router))
                    .unwrap_or(RouterKind::Bird),
                topology: topology
                    .or(old.as_ref().map(|o| o.topology))
                    .unwrap_or(Topology::Tor),
                state_dir,
                bin_dir,
            })?;
            lab.up(&mut say)?;
            print(&lab, json)
        }
        Cmd::Status { json } => print(&Lab::open(&state_dir, bin_dir)?, json),
        Cmd::Down => {
            match Lab::open(&state_dir, bin_dir.clone()) {
                Ok(lab) => lab.down(&mut say)?,
                // No state (a crashed `up`): still sweep the prefix's namespaces.
                Err(_) => Lab::new(Settings {
                    prefix: cli.prefix,
                    state_dir,
                    bin_dir,
                    nodes: 1,
                    pods: 1,
                    router: RouterKind::Bird,
                    topology: Topology::Tor,
                })?
                .down(&mut say)?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::AddPod { node, ip } => {
            let lab = Lab::open(&state_dir, bin_dir)?;
            let i: usize = node
                .strip_prefix('n')
                .and_then(|n| n.parse().ok())
                .filter(|i| (1..=lab.s.nodes).contains(i))
                .ok_or_else(|| anyhow::anyhow!("no node {node:?} (n1 to n{})", lab.s.nodes))?;
            let next = lab
                .pods()
                .iter()
                .filter(|p| p.node == i)
                .filter_map(|p| p.name.rsplit_once("-p")?.1.parse::<usize>().ok())
                .max()
                .unwrap_or(0)
                + 1;
            let pod = lab.pod(i, next);
            lab.pod_up(&pod, ip.as_deref(), &mut say)?;
            println!("{}", pod.name);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::DelPod { pod } => {
            let lab = Lab::open(&state_dir, bin_dir)?;
            let p = lab
                .pods()
                .into_iter()
                .find(|p| p.name == pod)
                .ok_or_else(|| anyhow::anyhow!("no pod {pod:?}"))?;
            lab.pod_down(&p)?;
            say(&format!("pod {pod} deleted"));
            Ok(ExitCode::SUCCESS)
        }
    }
}
