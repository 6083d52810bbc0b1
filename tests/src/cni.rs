//! Running CNI plugins as a runtime does (environment, config on stdin, result on stdout),
//! inside a test's "node" namespace, and small TCP helpers that run in a namespace without
//! any tool (a thread joins the namespace).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::{Netns, bin};

/// The CNI_PATH of the tests: our plugins (the workspace's target dir) and Debian's.
pub fn cni_path() -> String {
    let ours = bin("petrel-cni").parent().unwrap().display().to_string();
    format!("{ours}:/usr/lib/cni")
}

/// What one plugin call printed and how it ended.
#[derive(Debug)]
pub struct Call {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Call {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {:?} / stderr {:?}",
                self.stdout, self.stderr
            )
        })
    }

    /// The error code, if the call failed with a CNI error.
    pub fn code(&self) -> Option<u64> {
        (!self.ok).then(|| self.json()["code"].as_u64()).flatten()
    }
}

/// Start `c` with only `env` (and a PATH), feed it `stdin`, collect what it says.
fn exec(mut c: Command, env: &[(&str, &str)], stdin: &str) -> Call {
    c.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {c:?}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out: Output = child.wait_with_output().unwrap();
    Call {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Run plugin `plugin` (a path) for `cmd` in `node`, with the given env and stdin.
pub fn call(node: &Netns, plugin: &str, env: &[(&str, &str)], stdin: &str) -> Call {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &node.name, plugin]);
    exec(c, env, stdin)
}

/// Like [`call`], but the plugin is started from a thread that joined `node` (setns), the
/// way a runtime living in the node's namespace starts it: no `ip netns exec` in between.
pub fn call_direct(node: &Netns, plugin: &str, env: &[(&str, &str)], stdin: &str) -> Call {
    in_ns(node, || exec(Command::new(plugin), env, stdin))
}

/// [`run`] through [`call_direct`].
pub fn run_direct(
    node: &Netns,
    plugin: &str,
    cmd: &str,
    container: &str,
    netns: &str,
    ifname: &str,
    conf: &str,
) -> Call {
    let path = cni_path();
    call_direct(
        node,
        plugin,
        &[
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", container),
            ("CNI_NETNS", netns),
            ("CNI_IFNAME", ifname),
            ("CNI_PATH", &path),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=test",
            ),
        ],
        conf,
    )
}

/// A CNI command for one attachment.
pub fn run(
    node: &Netns,
    plugin: &str,
    cmd: &str,
    container: &str,
    netns: &str,
    ifname: &str,
    conf: &str,
) -> Call {
    let path = cni_path();
    call(
        node,
        plugin,
        &[
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", container),
            ("CNI_NETNS", netns),
            ("CNI_IFNAME", ifname),
            ("CNI_PATH", &path),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=test",
            ),
        ],
        conf,
    )
}

/// The path of a namespace made with `ip netns add`.
pub fn netns_path(ns: &Netns) -> String {
    format!("/var/run/netns/{}", ns.name)
}

/// Run `f` on a thread inside `ns`.
pub fn in_ns<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> T {
    crate::host::in_netns(&ns.name, f).unwrap_or_else(|e| panic!("{e:#}"))
}

/// A TCP listener inside a namespace that records the peer address of each connection
/// (what the receiver sees as the sender's address) and answers with that address.
pub struct Listener {
    pub port: u16,
    pub peers: Arc<Mutex<Vec<SocketAddr>>>,
}

impl Listener {
    pub fn start(ns: &Netns, bind: &str) -> Listener {
        let path = netns_path(ns);
        let peers = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let p2 = peers.clone();
        let bind = bind.to_string();
        std::thread::spawn(move || {
            let f = std::fs::File::open(&path).expect("netns file");
            // SAFETY: as above.
            assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
            let l = TcpListener::bind(&bind).expect("bind listener");
            tx.send(l.local_addr().unwrap().port()).unwrap();
            for s in l.incoming().flatten() {
                if let Ok(peer) = s.peer_addr() {
                    p2.lock().unwrap().push(peer);
                    let mut s = s;
                    let _ = s.write_all(peer.ip().to_string().as_bytes());
                }
            }
        });
        Listener {
            port: rx.recv().unwrap(),
            peers,
        }
    }
}

/// Connect from inside `ns` to `addr`; returns (our local address, what the listener says it
/// saw as our address).
pub fn connect(ns: &Netns, addr: SocketAddr) -> std::io::Result<(SocketAddr, String)> {
    in_ns(ns, move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        let local = s.local_addr()?;
        let mut seen = String::new();
        s.read_to_string(&mut seen)?;
        Ok((local, seen))
    })
}

/// `ping -c 1` from `ns` (IPv4 or IPv6 by the address).
pub fn ping(ns: &Netns, addr: &str) -> bool {
    ns.cmd("ping")
        .args(["-c", "1", "-W", "2", addr])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Run a conflist the way libcni does: ADD through the plugins in order, each getting the
/// previous result as `prevResult`; DEL in reverse order with the cached result (if any).
/// Returns the final result of ADD (Null for DEL).
pub fn chain(
    node: &Netns,
    conflist: &Value,
    cmd: &str,
    container: &str,
    netns: &str,
    ifname: &str,
    cached: Option<&Value>,
) -> Result<Value, String> {
    let version = conflist["cniVersion"].clone();
    let name = conflist["name"].clone();
    let mut plugins: Vec<Value> = conflist["plugins"].as_array().cloned().unwrap_or_default();
    if cmd == "DEL" {
        plugins.reverse();
    }
    let mut prev: Option<Value> = cached.cloned();
    let dirs: Vec<String> = cni_path().split(':').map(String::from).collect();
    for p in plugins {
        let kind = p["type"].as_str().ok_or("plugin without type")?.to_string();
        let bin: PathBuf = dirs
            .iter()
            .map(|d| PathBuf::from(d).join(&kind))
            .find(|b| b.exists())
            .ok_or(format!("plugin {kind} not found"))?;
        let mut conf = p.clone();
        conf["cniVersion"] = version.clone();
        conf["name"] = name.clone();
        if let Some(r) = &prev {
            conf["prevResult"] = r.clone();
        }
        let c = run(
            node,
            bin.to_str().unwrap(),
            cmd,
            container,
            netns,
            ifname,
            &conf.to_string(),
        );
        if !c.ok {
            return Err(format!("{kind} {cmd} failed: {} {}", c.stdout, c.stderr));
        }
        if cmd == "ADD" {
            prev = Some(c.json());
        }
    }
    Ok(if cmd == "ADD" {
        prev.unwrap_or(Value::Null)
    } else {
        Value::Null
    })
}
