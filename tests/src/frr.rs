//! FRR (zebra + bgpd) in a namespace, queried with vtysh.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::{Daemon, Netns, TestDir, require_tool, wait_until};

pub struct Frr {
    pub dir: PathBuf,
    pub bgpd: Daemon,
    pub zebra: Daemon,
    /// Started by [`Frr::start_bfdd`].
    pub bfdd: Option<Daemon>,
}

impl Frr {
    /// Start zebra and bgpd with `config` (an frr.conf) in `ns`. Root must be in the frrvty
    /// group (.ci/run sees to it).
    pub fn start(ns: &Netns, dir: &TestDir, name: &str, config: &str) -> Frr {
        require_tool("/usr/lib/frr/bgpd", "frr");
        let d = dir.file(name);
        std::fs::create_dir_all(&d).expect("frr dir");
        // FRR drops to its own user for some files: let it write here.
        crate::sh(&format!("chmod 777 {}", d.display()));
        let conf = d.join("frr.conf");
        std::fs::write(&conf, config).expect("frr.conf");
        let zserv = d.join("zserv.api");
        let common = |pid: &str| -> Vec<String> {
            vec![
                "-u".into(),
                "root".into(),
                "-g".into(),
                "root".into(),
                "-i".into(),
                d.join(pid).display().to_string(),
                "-z".into(),
                zserv.display().to_string(),
                "--vty_socket".into(),
                d.display().to_string(),
            ]
        };
        let mut zargs = vec!["/usr/lib/frr/zebra".to_string()];
        zargs.extend(common("zebra.pid"));
        zargs.extend(["-f".into(), "/dev/null".into()]);
        let zargs: Vec<&str> = zargs.iter().map(|s| s.as_str()).collect();
        let zebra = ns.spawn(&format!("{name}-zebra"), &zargs, &d.join("zebra.log"));
        wait_until("zebra API socket", Duration::from_secs(10), || {
            zserv.exists().then_some(())
        });
        let mut bargs = vec!["/usr/lib/frr/bgpd".to_string()];
        bargs.extend(common("bgpd.pid"));
        bargs.extend([
            "-f".into(),
            conf.display().to_string(),
            "-P".into(),
            "0".into(),
        ]);
        let bargs: Vec<&str> = bargs.iter().map(|s| s.as_str()).collect();
        let bgpd = ns.spawn(&format!("{name}-bgpd"), &bargs, &d.join("bgpd.log"));
        let f = Frr {
            dir: d,
            bgpd,
            zebra,
            bfdd: None,
        };
        wait_until("bgpd vty", Duration::from_secs(10), || {
            f.try_vtysh("show bgp summary").map(|_| ())
        });
        f
    }

    /// Start bfdd beside zebra and bgpd, with `config` (its `bfd` block) as its own file.
    pub fn start_bfdd(&mut self, ns: &Netns, config: &str) {
        require_tool("/usr/lib/frr/bfdd", "frr");
        let conf = self.dir.join("bfdd.conf");
        std::fs::write(&conf, config).expect("bfdd.conf");
        let d = self.dir.display().to_string();
        let args = [
            "/usr/lib/frr/bfdd".to_string(),
            "-u".into(),
            "root".into(),
            "-g".into(),
            "root".into(),
            "-i".into(),
            format!("{d}/bfdd.pid"),
            "-z".into(),
            format!("{d}/zserv.api"),
            "--vty_socket".into(),
            d.clone(),
            "-f".into(),
            conf.display().to_string(),
        ];
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        self.bfdd = Some(ns.spawn("bfdd", &args, &self.dir.join("bfdd.log")));
        wait_until("bfdd vty", Duration::from_secs(10), || {
            self.try_vtysh("show bfd peers").map(|_| ())
        });
    }

    pub fn try_vtysh(&self, cmd: &str) -> Option<String> {
        let out = Command::new("vtysh")
            .arg("--vty_socket")
            .arg(&self.dir)
            .args(["-c", cmd])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn vtysh(&self, cmd: &str) -> String {
        self.try_vtysh(cmd).unwrap_or_else(|| {
            panic!(
                "vtysh -c '{cmd}' failed; bgpd log:\n{}",
                self.bgpd.log_tail(30)
            )
        })
    }

    /// Configuration lines in `configure terminal`, in order (sub-modes as the lines enter
    /// them), failing the test if vtysh does.
    pub fn vtysh_conf(&self, lines: &[&str]) {
        let mut c = Command::new("vtysh");
        c.arg("--vty_socket")
            .arg(&self.dir)
            .args(["-c", "configure terminal"]);
        for l in lines {
            c.args(["-c", l]);
        }
        let out = c.output().expect("vtysh");
        assert!(
            out.status.success(),
            "vtysh {lines:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `show bgp neighbors ADDR json`, the neighbor's object.
    pub fn neighbor(&self, addr: &str) -> serde_json::Value {
        let v: serde_json::Value =
            serde_json::from_str(&self.vtysh(&format!("show bgp neighbors {addr} json")))
                .unwrap_or_default();
        v[addr].clone()
    }

    pub fn state(&self, addr: &str) -> String {
        self.neighbor(addr)["bgpState"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}
