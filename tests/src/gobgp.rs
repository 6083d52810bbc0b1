//! GoBGP (gobgpd) in a namespace, driven with the gobgp CLI over its gRPC API.

use std::time::Duration;

use crate::{Daemon, Netns, TestDir, require_tool, wait_until};

pub struct Gobgp {
    ns: String,
    pub daemon: Daemon,
}

const API: &str = "127.0.0.1";
const PORT: &str = "50051";

impl Gobgp {
    /// Start gobgpd with `toml` (a whole gobgpd config) in `ns`.
    pub fn start(ns: &Netns, dir: &TestDir, name: &str, toml: &str) -> Gobgp {
        require_tool("gobgpd", "gobgpd");
        let conf = dir.write(&format!("{name}.toml"), toml);
        let log = dir.file(&format!("{name}.log"));
        let daemon = ns.spawn(
            name,
            &[
                "gobgpd",
                "-f",
                conf.to_str().unwrap(),
                "--api-hosts",
                &format!("{API}:{PORT}"),
                "-p",
                "--log-level",
                "debug",
            ],
            &log,
        );
        let g = Gobgp {
            ns: ns.name.clone(),
            daemon,
        };
        wait_until(&format!("{name} API"), Duration::from_secs(15), || {
            g.try_cli("global").map(|_| ())
        });
        g
    }

    pub fn try_cli(&self, args: &str) -> Option<String> {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &self.ns, "gobgp", "-u", API, "-p", PORT])
            .args(args.split_whitespace())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn cli(&self, args: &str) -> String {
        self.try_cli(args)
            .unwrap_or_else(|| panic!("gobgp {args} failed; log:\n{}", self.daemon.log_tail(30)))
    }

    /// `gobgp neighbor ADDR -j` as JSON.
    pub fn neighbor(&self, addr: &str) -> serde_json::Value {
        serde_json::from_str(&self.cli(&format!("neighbor {addr} -j"))).unwrap_or_default()
    }

    /// The session state of a neighbor as GoBGP names it ("established", "active", ...).
    pub fn state(&self, addr: &str) -> String {
        let n = self.neighbor(addr);
        n["state"]["session_state"]
            .as_str()
            .map(|s| s.to_string())
            .or_else(|| n["state"]["session_state"].as_i64().map(|i| i.to_string()))
            .unwrap_or_default()
            .to_lowercase()
    }

    /// `gobgp global rib -a FAMILY -j` as JSON (an object keyed by prefix).
    pub fn rib(&self, family: &str) -> serde_json::Value {
        serde_json::from_str(&self.cli(&format!("global rib -a {family} -j"))).unwrap_or_default()
    }
}
