//! BIRD 2 in a namespace, driven through its control socket.

use std::process::Command;
use std::time::Duration;

use crate::{Daemon, Netns, TestDir, require_tool, wait_until};

pub struct Bird {
    pub ctl: std::path::PathBuf,
    pub conf: std::path::PathBuf,
    pub daemon: Daemon,
}

/// Settings that make BIRD quick in tests: connect and retry after a second.
pub const FAST: &str = "connect delay time 1; connect retry time 2; error wait time 1, 2;";

impl Bird {
    /// Start BIRD with `config` (a whole bird.conf) in `ns`.
    pub fn start(ns: &Netns, dir: &TestDir, name: &str, config: &str) -> Bird {
        require_tool("bird", "bird2");
        let conf = dir.write(&format!("{name}.conf"), config);
        let ctl = dir.file(&format!("{name}.ctl"));
        let log = dir.file(&format!("{name}.log"));
        let daemon = ns.spawn(
            name,
            &[
                "bird",
                "-f",
                "-c",
                conf.to_str().unwrap(),
                "-s",
                ctl.to_str().unwrap(),
            ],
            &log,
        );
        let b = Bird { ctl, conf, daemon };
        wait_until(
            &format!("{name} control socket"),
            Duration::from_secs(10),
            || {
                b.try_birdc("show status")
                    .filter(|s| s.contains("Daemon is up"))
                    .map(|_| ())
            },
        );
        b
    }

    pub fn try_birdc(&self, cmd: &str) -> Option<String> {
        let out = Command::new("birdc")
            .arg("-s")
            .arg(&self.ctl)
            .args(cmd.split_whitespace())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn birdc(&self, cmd: &str) -> String {
        self.try_birdc(cmd)
            .unwrap_or_else(|| panic!("birdc {cmd} failed; log:\n{}", self.daemon.log_tail(30)))
    }

    /// The state column of `show protocols` for `proto` ("Established", "Active", ...).
    pub fn bgp_state(&self, proto: &str) -> String {
        let out = self.birdc(&format!("show protocols {proto}"));
        out.lines()
            .find(|l| l.starts_with(proto))
            .and_then(|l| l.split_whitespace().nth(5))
            .unwrap_or("")
            .to_string()
    }

    pub fn wait_established(&self, proto: &str, timeout: Duration) {
        crate::wait_until_or(
            &format!("BIRD protocol {proto} Established"),
            timeout,
            || (self.bgp_state(proto) == "Established").then_some(()),
            || self.birdc(&format!("show protocols all {proto}")),
        );
    }

    /// `show route for PREFIX all` (empty when BIRD has no route).
    pub fn route(&self, prefix: &str) -> String {
        self.try_birdc(&format!("show route {prefix} all"))
            .unwrap_or_default()
    }

    /// `show route PREFIX all` holds a route for the prefix.
    pub fn has_route(&self, prefix: &str) -> bool {
        self.route(prefix).lines().any(|l| l.starts_with(prefix))
    }

    pub fn reconfigure(&self, config: &str) {
        std::fs::write(&self.conf, config).expect("write bird.conf");
        let out = self.birdc("configure");
        assert!(
            out.contains("Reconfigured") || out.contains("Reconfiguration"),
            "{out}"
        );
    }
}
