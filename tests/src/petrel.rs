//! Petrel itself in a namespace: `petrel run` with a config written by the test, queried
//! through `petrel status --json` / `petrel routes --json` on its control socket.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{Daemon, Netns, TestDir, bin, wait_until_or};

pub struct Petrel {
    pub ns_name: String,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub daemon: Daemon,
    name: String,
    runs: u32,
    dir: PathBuf,
    env: Vec<(String, String)>,
    wrap: Vec<String>,
}

/// What one `petrel run` is started with.
struct Launch {
    config: PathBuf,
    socket: PathBuf,
    /// 1 for the first run, then one more per restart (one log each).
    run: u32,
    env: Vec<(String, String)>,
    /// A command that execs the agent (e.g. `prlimit ... --`), or nothing.
    wrap: Vec<String>,
}

impl Petrel {
    /// Write `yaml` and start `petrel run` in `ns`; returns once the control socket answers.
    pub fn start(ns: &Netns, dir: &TestDir, name: &str, yaml: &str) -> Petrel {
        Self::start_env(ns, dir, name, yaml, &[])
    }

    /// Like [`Petrel::start`], with extra environment variables (e.g. KUBECONFIG).
    pub fn start_env(
        ns: &Netns,
        dir: &TestDir,
        name: &str,
        yaml: &str,
        env: &[(&str, &str)],
    ) -> Petrel {
        Self::first_run(ns, dir, name, yaml, env, &[])
    }

    /// Like [`Petrel::start`], run through a wrapper that execs its command (for example
    /// `prlimit --nofile=512:512 --`), so the pid is still the agent's.
    pub fn start_wrapped(
        ns: &Netns,
        dir: &TestDir,
        name: &str,
        yaml: &str,
        wrap: &[&str],
    ) -> Petrel {
        Self::first_run(ns, dir, name, yaml, &[], wrap)
    }

    fn first_run(
        ns: &Netns,
        dir: &TestDir,
        name: &str,
        yaml: &str,
        env: &[(&str, &str)],
        wrap: &[&str],
    ) -> Petrel {
        let l = Launch {
            config: dir.write(&format!("{name}.yaml"), yaml),
            socket: dir.file(&format!("{name}.sock")),
            run: 1,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            wrap: wrap.iter().map(|s| s.to_string()).collect(),
        };
        Self::launch(ns, dir, name, l)
    }

    fn launch(ns: &Netns, dir: &TestDir, name: &str, l: Launch) -> Petrel {
        let Launch {
            config,
            socket,
            run,
            env,
            wrap,
        } = l;
        // One log per run: a restart test wants both.
        let log = dir.file(&format!("{name}.run{run}.log"));
        let petrel = bin("petrel");
        let env_ref: Vec<(&str, &str)> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut argv: Vec<&str> = wrap.iter().map(String::as_str).collect();
        argv.extend([
            petrel.to_str().unwrap(),
            "run",
            "--config",
            config.to_str().unwrap(),
            "--socket",
            socket.to_str().unwrap(),
            "--log",
            "info,petrel_bgp=debug",
        ]);
        let daemon = ns.spawn_env(name, &argv, &log, &env_ref);
        let p = Petrel {
            ns_name: ns.name.clone(),
            config,
            socket,
            log,
            daemon,
            name: name.to_string(),
            runs: run,
            dir: dir.path.clone(),
            env,
            wrap,
        };
        wait_until_or(
            &format!("{name} control socket"),
            Duration::from_secs(15),
            || p.try_status().map(|_| ()),
            || p.daemon.log_tail(30),
        );
        p
    }

    /// Start again with the same config and socket (after stop or kill).
    pub fn restart(&mut self, ns: &Netns, dir: &TestDir) {
        self.daemon.stop(Duration::from_secs(10));
        let again = Self::launch(
            ns,
            dir,
            &self.name,
            Launch {
                config: self.config.clone(),
                socket: self.socket.clone(),
                run: self.runs + 1,
                env: self.env.clone(),
                wrap: self.wrap.clone(),
            },
        );
        *self = again;
    }

    fn ask(&self, what: &str) -> Option<Value> {
        let out = Command::new(bin("petrel"))
            .args([what, "--json", "--socket"])
            .arg(&self.socket)
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    pub fn try_status(&self) -> Option<Value> {
        self.ask("status")
    }

    pub fn status(&self) -> Value {
        self.try_status()
            .unwrap_or_else(|| panic!("petrel status failed; log:\n{}", self.daemon.log_tail(40)))
    }

    pub fn routes(&self) -> Value {
        self.ask("routes")
            .unwrap_or_else(|| panic!("petrel routes failed; log:\n{}", self.daemon.log_tail(40)))
    }

    /// The status entry of peer `name`.
    pub fn peer(&self, name: &str) -> Value {
        self.status()["peers"]
            .as_array()
            .and_then(|a| a.iter().find(|p| p["name"] == name).cloned())
            .unwrap_or(Value::Null)
    }

    pub fn peer_state(&self, name: &str) -> String {
        self.peer(name)["state"].as_str().unwrap_or("").to_string()
    }

    pub fn wait_established(&self, peer: &str, timeout: Duration) {
        wait_until_or(
            &format!("petrel peer {peer} Established"),
            timeout,
            || (self.peer_state(peer) == "Established").then_some(()),
            || format!("{}\n{}", self.peer(peer), self.daemon.log_tail(30)),
        );
    }

    /// The Loc-RIB entry of `prefix`, if any.
    pub fn route(&self, prefix: &str) -> Option<Value> {
        self.routes()["routes"]
            .as_array()?
            .iter()
            .find(|r| r["prefix"] == prefix)
            .cloned()
    }

    /// The logs of every run so far.
    pub fn log_text(&self) -> String {
        (1..=self.runs)
            .map(|r| {
                std::fs::read_to_string(self.dir.join(format!("{}.run{r}.log", self.name)))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Asks `petrel status` every 100 ms until stopped; records the slowest answer and failures.
pub struct Poller {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<(Duration, usize, usize)>>,
}

impl Poller {
    pub fn start(socket: &std::path::Path) -> Poller {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let socket = socket.to_path_buf();
        let thread = std::thread::spawn(move || {
            let (mut worst, mut n, mut failed) = (Duration::ZERO, 0usize, 0usize);
            while !s.load(Ordering::Relaxed) {
                let t = Instant::now();
                // A hung agent must not hang the test: `timeout` kills the CLI after 2 s.
                let ok = Command::new("timeout")
                    .arg("2")
                    .arg(bin("petrel"))
                    .args(["status", "--json", "--socket"])
                    .arg(&socket)
                    .output()
                    .map(|o| o.status.success())
                    .unwrap_or(false);
                let took = t.elapsed();
                worst = worst.max(took);
                n += 1;
                if !ok || took > Duration::from_secs(1) {
                    failed += 1;
                    eprintln!("status answer {n}: ok={ok} after {took:?}");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (worst, n, failed)
        });
        Poller {
            stop,
            thread: Some(thread),
        }
    }

    /// (slowest answer, answers, late or failed ones).
    pub fn finish(mut self) -> (Duration, usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}
