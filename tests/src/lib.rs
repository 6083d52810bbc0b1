//! Topology helpers for Petrel's integration tests.
//!
//! Every test builds its own hosts as network namespaces with unique names, joins them with
//! veth pairs, runs real daemons inside them (BIRD, GoBGP, FRR, Petrel itself) and tears it
//! all down through guards, also when it fails: [`Daemon`] kills its process by pid,
//! [`Netns`] kills whatever is left inside and deletes the namespace, [`TestDir`] removes its
//! files. Nothing here touches the root namespace's addresses, routes or sysctls.
//!
//! Waiting is always for a condition with a deadline ([`wait_until`]), never a fixed sleep.

pub mod bird;
pub mod cni;
pub mod containerd;
pub mod cri;
pub mod frr;
pub mod gobgp;
pub mod host;
pub mod kube_fake;
pub mod lab;
pub mod petrel;
pub mod raw_peer;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short id unique to this process and call: for namespace, interface and file names.
pub fn unique_id() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:x}", ((std::process::id() & 0xffffff) << 8) | (n & 0xff))
}

/// Fail early, and clearly, where the tests cannot run.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!("integration tests need root: they create network namespaces");
    }
}

pub fn require_tool(tool: &str, package: &str) {
    if let Err(e) = host::need_tool(tool, package) {
        panic!("{e}");
    }
}

/// A built binary of the workspace (target/<profile>/<name>).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is not built: run the tests with `cargo nextest run --workspace` (or cargo build --workspace first)",
        p.display()
    );
    p
}

/// Run a command, panic with its output if it fails.
pub fn run(cmd: &mut Command) -> Output {
    host::output_ok(cmd).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Run a shell line, panic if it fails; returns stdout.
pub fn sh(line: &str) -> String {
    String::from_utf8_lossy(&run(Command::new("sh").arg("-c").arg(line)).stdout).into_owned()
}

/// Poll `f` every 100 ms until it returns `Some`, or panic after `timeout` with `what`.
pub fn wait_until<T>(what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    host::wait_for(what, timeout, f).unwrap_or_else(|e| panic!("{e}"))
}

/// Like [`wait_until`], with a description of the current state in the panic message.
pub fn wait_until_or<T>(
    what: &str,
    timeout: Duration,
    f: impl FnMut() -> Option<T>,
    diag: impl Fn() -> String,
) -> T {
    host::wait_for(what, timeout, f).unwrap_or_else(|e| panic!("{e}\n--- state:\n{}", diag()))
}

/// A scratch directory for configs, sockets and logs; removed when dropped (kept, and
/// printed, when the test is failing, to look at the logs).
pub struct TestDir {
    pub path: PathBuf,
}

impl TestDir {
    pub fn new(label: &str) -> TestDir {
        let path = PathBuf::from(format!("/tmp/petrel-tests/{}-{label}", unique_id()));
        std::fs::create_dir_all(&path).expect("create test dir");
        TestDir { path }
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn write(&self, name: &str, content: &str) -> PathBuf {
        let p = self.file(name);
        let mut f = std::fs::File::create(&p).expect("create file");
        f.write_all(content.as_bytes()).expect("write file");
        p
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test files kept in {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

pub use host::netns_names;

/// A network namespace: a host of the test topology.
pub struct Netns {
    pub name: String,
}

/// Remove the namespaces (and their processes) of test processes that died without
/// cleaning up: killed by a timeout, their `Drop` guards never ran. A name `pt-<id>-…`
/// carries its creator's pid (see [`unique_id`]); only namespaces whose creator is gone are
/// touched, so tests running beside this one keep theirs.
pub fn sweep_dead_tests_namespaces() -> Vec<String> {
    let mut swept = Vec::new();
    for name in netns_names() {
        let Some(id) = name
            .strip_prefix("pt-")
            .and_then(|r| r.split('-').next())
            .and_then(|h| u32::from_str_radix(h, 16).ok())
        else {
            continue;
        };
        let pid = id >> 8;
        if pid == 0 || pid == std::process::id() & 0xffffff {
            continue;
        }
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            host::netns_destroy(&name);
            swept.push(name);
        }
    }
    swept
}

impl Netns {
    pub fn new(label: &str) -> Netns {
        require_root();
        static SWEEP: std::sync::Once = std::sync::Once::new();
        SWEEP.call_once(|| {
            let _ = sweep_dead_tests_namespaces();
        });
        let name = format!("pt-{}-{label}", unique_id());
        host::netns_add(&name).unwrap_or_else(|e| panic!("{e:#}"));
        Netns { name }
    }

    /// `ip -n NS <args>`.
    pub fn ip(&self, args: &str) -> String {
        host::ip(&self.name, args).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// A command inside the namespace, as a `Command` to adjust.
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Run a shell line inside the namespace; returns its output whatever the exit status.
    pub fn sh(&self, line: &str) -> Output {
        self.cmd("sh")
            .arg("-c")
            .arg(line)
            .output()
            .expect("run sh in netns")
    }

    /// Like [`Netns::sh`], panicking on failure; returns stdout.
    pub fn sh_ok(&self, line: &str) -> String {
        String::from_utf8_lossy(&run(self.cmd("sh").arg("-c").arg(line)).stdout).into_owned()
    }

    pub fn sysctl(&self, key: &str, value: &str) {
        host::sysctl(&self.name, key, value).unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// Start a long-running process inside the namespace, its output in `log`.
    pub fn spawn(&self, name: &str, argv: &[&str], log: &Path) -> Daemon {
        self.spawn_env(name, argv, log, &[])
    }

    /// Like [`Netns::spawn`], with extra environment variables.
    pub fn spawn_env(&self, name: &str, argv: &[&str], log: &Path, env: &[(&str, &str)]) -> Daemon {
        let child = host::command_in(&self.name, argv, log, env)
            .and_then(|mut c| Ok(c.spawn()?))
            .unwrap_or_else(|e| panic!("cannot start {name}: {e:#}"));
        Daemon {
            name: name.to_string(),
            child: Some(child),
            log: log.to_path_buf(),
        }
    }

    /// IPv4 routes in the namespace (`ip -4 route show` with extra args).
    pub fn routes4(&self, args: &str) -> String {
        self.ip(&format!("-4 route show {args}"))
    }

    pub fn routes6(&self, args: &str) -> String {
        self.ip(&format!("-6 route show {args}"))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Whatever this test started in here and did not stop yet, then the namespace.
        host::netns_destroy(&self.name);
    }
}

/// The most common topology: a scratch directory, a router namespace `r` (198.51.100.1/24)
/// and a node namespace `n` (198.51.100.2/24) joined by one link.
pub fn router_and_node(label: &str) -> (TestDir, Netns, Netns) {
    let dir = TestDir::new(label);
    let r = Netns::new("r");
    let n = Netns::new("n");
    link(&r, &["198.51.100.1/24"], &n, &["198.51.100.2/24"]);
    (dir, r, n)
}

/// A veth pair between two namespaces with addresses on each end; returns the interface
/// names (a's, b's). Addresses are CIDRs; IPv6 ones skip duplicate address detection.
pub fn link(a: &Netns, a_addrs: &[&str], b: &Netns, b_addrs: &[&str]) -> (String, String) {
    let id = unique_id();
    let (an, bn) = (format!("pv{id}a"), format!("pv{id}b"));
    run(Command::new("ip").args([
        "link", "add", &an, "netns", &a.name, "type", "veth", "peer", "name", &bn, "netns", &b.name,
    ]));
    for (ns, ifname, addrs) in [(a, &an, a_addrs), (b, &bn, b_addrs)] {
        for addr in addrs {
            if addr.contains(':') {
                ns.ip(&format!("addr add {addr} dev {ifname} nodad"));
            } else {
                ns.ip(&format!("addr add {addr} dev {ifname}"));
            }
        }
        ns.ip(&format!("link set {ifname} up"));
    }
    (an, bn)
}

/// A process a test started; killed by pid when dropped.
pub struct Daemon {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Daemon {
    /// Adopt a process started elsewhere.
    pub fn from_child(name: &str, child: Child, log: &Path) -> Daemon {
        Daemon {
            name: name.to_string(),
            child: Some(child),
            log: log.to_path_buf(),
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn signal(&self, sig: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) on the pid of our own child.
            unsafe {
                libc::kill(pid as i32, sig);
            }
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`. Returns the exit status.
    pub fn stop(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        self.signal_child(&child, libc::SIGTERM);
        let start = Instant::now();
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            if start.elapsed() > grace {
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal_child(&self, child: &Child, sig: i32) {
        // SAFETY: kill(2) on the pid of our own child.
        unsafe {
            libc::kill(child.id() as i32, sig);
        }
    }

    /// SIGKILL now: the process gets no chance to say goodbye.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn hup(&self) {
        self.signal(libc::SIGHUP);
    }

    pub fn log_tail(&self, lines: usize) -> String {
        host::tail(&self.log, lines)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether `needle` appears in any line of `ip route` output as the destination.
pub fn route_lines<'a>(table: &'a str, prefix: &str) -> Vec<&'a str> {
    table
        .lines()
        .filter(|l| {
            let l = l
                .trim_start_matches("blackhole ")
                .trim_start_matches("unreachable ");
            l.split_whitespace().next() == Some(prefix)
        })
        .collect()
}

/// A bridge in `ns` with `addrs` on it: a LAN segment for several namespaces.
pub fn bridge(ns: &Netns, name: &str, addrs: &[&str]) {
    ns.ip(&format!("link add {name} type bridge"));
    for a in addrs {
        if a.contains(':') {
            ns.ip(&format!("addr add {a} dev {name} nodad"));
        } else {
            ns.ip(&format!("addr add {a} dev {name}"));
        }
    }
    ns.ip(&format!("link set {name} up"));
}

/// Plug `other` into the bridge `br` of `bridge_ns` with a veth, addresses on its end;
/// returns the interface name in `other`.
pub fn plug(bridge_ns: &Netns, br: &str, other: &Netns, addrs: &[&str]) -> String {
    let (port, end) = link(bridge_ns, &[], other, addrs);
    bridge_ns.ip(&format!("link set {port} master {br}"));
    end
}

/// `GET path` over HTTP/1.0 to `host:port` from inside `ns` (bash's /dev/tcp: no curl
/// needed); the whole response, headers included.
pub fn http_get(ns: &Netns, host: &str, port: u16, path: &str) -> String {
    let out = ns
        .cmd("bash")
        .arg("-c")
        .arg(format!(
            "exec 3<>/dev/tcp/{host}/{port} && printf 'GET {path} HTTP/1.0\\r\\nHost: {host}\\r\\n\\r\\n' >&3 && timeout 5 cat <&3"
        ))
        .output()
        .expect("bash");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Processes whose command line has an argument equal to `arg`.
pub fn pids_with_arg(arg: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline"))
            && cmd.split(|b| *b == 0).any(|a| a == arg.as_bytes())
        {
            out.push(pid);
        }
    }
    out
}

/// `ip -j route show PREFIX proto 200` in `ns`, as JSON (None when absent).
pub fn kernel_route(ns: &Netns, prefix: &str) -> Option<serde_json::Value> {
    let fam = if prefix.contains(':') { "-6" } else { "-4" };
    let out = ns.sh(&format!("ip -j {fam} route show {prefix} proto 200"));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v.as_array()?.iter().find(|r| r["dst"] == prefix).cloned()
}

/// The gateways of a kernel route (one for a plain route, several for ECMP).
pub fn gateways(r: &serde_json::Value) -> Vec<String> {
    let mut g: Vec<String> = match r["nexthops"].as_array() {
        Some(hops) => hops
            .iter()
            .filter_map(|h| h["gateway"].as_str().map(String::from))
            .collect(),
        None => r["gateway"]
            .as_str()
            .map(String::from)
            .into_iter()
            .collect(),
    };
    g.sort();
    g
}

pub fn wait_gateways(ns: &Netns, prefix: &str, want: &[&str], timeout: Duration) -> Duration {
    let start = Instant::now();
    wait_until_or(
        &format!("{prefix} via {want:?} in the FIB"),
        timeout,
        || {
            let got = kernel_route(ns, prefix)
                .map(|r| gateways(&r))
                .unwrap_or_default();
            (got == want).then_some(())
        },
        || ns.routes4(""),
    );
    start.elapsed()
}

#[cfg(test)]
mod tests {
    #[test]
    fn namespaces_of_dead_test_processes_are_swept_and_live_ones_kept() {
        super::require_root();
        // A pid that no process has now.
        let dead = (1000..4_000_000u32)
            .rev()
            .find(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
            .unwrap();
        // Ours first (its first Netns sweeps once by itself), then the orphan.
        let mine = super::Netns::new("kept");
        let orphan = format!("pt-{:x}-orphan", (dead << 8) | 1);
        super::host::netns_add(&orphan).unwrap();
        let swept = super::sweep_dead_tests_namespaces();
        assert!(swept.contains(&orphan), "{swept:?}");
        assert!(!super::netns_names().contains(&orphan));
        assert!(super::netns_names().contains(&mine.name));
    }
}
