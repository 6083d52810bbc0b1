//! A small fake Kubernetes API server: enough of `GET /api/v1/nodes` (list, then watch with
//! chunked WatchEvents, `fieldSelector=metadata.name=…`) for the agent's Node watches,
//! speaking the real JSON. No real API server can be installed on these machines
//! (shared/DECISIONS.md).
//!
//! Node objects are shaped as the API reference shows them (metadata with name, uid,
//! resourceVersion, labels; spec.podCIDR(s); status.addresses with InternalIP and Hostname
//! entries). Every change bumps one resourceVersion counter; a watch from version V first
//! gets the events after V, as from a real API server, so nothing is lost between list and
//! watch.
//!
//! It listens inside a test namespace (a thread that joins the namespace with setns): on
//! 127.0.0.1 for an agent in that namespace, or on an address of a LAN there for agents in
//! namespaces plugged into it.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, mpsc};

use serde_json::{Value, json};

use crate::{Netns, TestDir};

pub struct FakeApi {
    pub host: String,
    pub port: u16,
    state: Arc<Mutex<State>>,
    /// Paths of the requests served, in order.
    pub requests: Arc<Mutex<Vec<String>>>,
}

struct Watcher {
    /// `metadata.name` from the watch's field selector.
    only: Option<String>,
    tx: mpsc::Sender<String>,
}

#[derive(Default)]
struct State {
    nodes: BTreeMap<String, Value>,
    rv: u64,
    watchers: Vec<Watcher>,
    /// Every event so far: (resourceVersion, node name, event JSON).
    history: Vec<(u64, String, String)>,
}

impl State {
    fn event(&mut self, kind: &str, name: &str, object: &Value) {
        let ev = json!({ "type": kind, "object": object }).to_string();
        self.history.push((self.rv, name.to_string(), ev.clone()));
        self.watchers.retain(|w| {
            w.only.as_deref().is_some_and(|o| o != name) || w.tx.send(ev.clone()).is_ok()
        });
    }
}

/// A Node object as the API server returns it.
pub fn node_object(
    name: &str,
    rv: u64,
    internal_ips: &[&str],
    labels: &BTreeMap<String, String>,
    pod_cidrs: &[&str],
) -> Value {
    let mut spec = json!({});
    if let Some(first) = pod_cidrs.first() {
        spec = json!({ "podCIDR": first, "podCIDRs": pod_cidrs });
    }
    let mut addresses: Vec<Value> = internal_ips
        .iter()
        .map(|a| json!({ "type": "InternalIP", "address": a }))
        .collect();
    addresses.push(json!({ "type": "Hostname", "address": name }));
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": name,
            "uid": format!("00000000-0000-4000-8000-{:012x}", name.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64)) & 0xffff_ffff_ffff),
            "resourceVersion": rv.to_string(),
            "creationTimestamp": "2026-12-01T00:00:00Z",
            "labels": labels,
        },
        "spec": spec,
        "status": { "addresses": addresses },
    })
}

impl FakeApi {
    /// Serve Node `name` with `pod_cidrs` (empty: none allocated yet) on 127.0.0.1 in `ns`.
    pub fn start(ns: &Netns, name: &str, pod_cidrs: &[&str]) -> FakeApi {
        let api = Self::serve(ns, "127.0.0.1");
        api.add_node(name, &[], &[], pod_cidrs);
        api
    }

    /// Serve no Nodes yet on `host` (an address in `ns`).
    pub fn serve(ns: &Netns, host: &str) -> FakeApi {
        let state = Arc::new(Mutex::new(State {
            rv: 1,
            ..Default::default()
        }));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (ptx, prx) = mpsc::channel();
        let ns_path = format!("/var/run/netns/{}", ns.name);
        let (st, rq) = (state.clone(), requests.clone());
        let bind = format!("{host}:0");
        std::thread::spawn(move || {
            let f = std::fs::File::open(&ns_path).expect("netns file");
            // SAFETY: setns on this thread only; the fd is open for the call.
            let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            let l = TcpListener::bind(&bind).expect("bind fake API server");
            ptx.send(l.local_addr().unwrap().port()).unwrap();
            for conn in l.incoming().flatten() {
                let (st, rq) = (st.clone(), rq.clone());
                std::thread::spawn(move || serve(conn, st, rq));
            }
        });
        let port = prx.recv().expect("fake API port");
        FakeApi {
            host: host.to_string(),
            port,
            state,
            requests,
        }
    }

    /// A kubeconfig pointing at this server.
    pub fn kubeconfig(&self, dir: &TestDir) -> std::path::PathBuf {
        dir.write(
            "kubeconfig",
            &format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}:{}\nusers:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\n",
                self.host, self.port
            ),
        )
    }

    /// Create Node `name` (watchers get ADDED).
    pub fn add_node(
        &self,
        name: &str,
        internal_ips: &[&str],
        labels: &[(&str, &str)],
        pod_cidrs: &[&str],
    ) {
        let mut st = self.state.lock().unwrap();
        st.rv += 1;
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let obj = node_object(name, st.rv, internal_ips, &labels, pod_cidrs);
        st.nodes.insert(name.to_string(), obj.clone());
        st.event("ADDED", name, &obj);
    }

    /// Change Node `name` with `f` (watchers get MODIFIED).
    fn modify(&self, name: &str, f: impl FnOnce(&mut Value)) {
        let mut st = self.state.lock().unwrap();
        st.rv += 1;
        let rv = st.rv;
        let Some(obj) = st.nodes.get_mut(name) else {
            panic!("no Node {name}");
        };
        f(obj);
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let obj = obj.clone();
        st.event("MODIFIED", name, &obj);
    }

    /// Set (or with `None` remove) one label of Node `name`.
    pub fn set_label(&self, name: &str, key: &str, value: Option<&str>) {
        self.modify(name, |n| {
            let labels = n["metadata"]["labels"].as_object_mut().unwrap();
            match value {
                Some(v) => labels.insert(key.to_string(), json!(v)),
                None => labels.remove(key),
            };
        });
    }

    /// Change the first Node's pod CIDRs: watchers get a MODIFIED event.
    pub fn set_pod_cidrs(&self, cidrs: &[&str]) {
        let name = self.state.lock().unwrap().nodes.keys().next().cloned();
        self.modify(&name.expect("a Node"), |n| {
            n["spec"] = match cidrs.first() {
                Some(first) => json!({ "podCIDR": first, "podCIDRs": cidrs }),
                None => json!({}),
            };
        });
    }

    /// Delete Node `name` (watchers get DELETED with its last state).
    pub fn delete_node(&self, name: &str) {
        let mut st = self.state.lock().unwrap();
        st.rv += 1;
        let rv = st.rv;
        let Some(mut obj) = st.nodes.remove(name) else {
            panic!("no Node {name}");
        };
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        st.event("DELETED", name, &obj);
    }
}

/// The value of `key` in the query of `path`, percent-decoded.
fn query(path: &str, key: &str) -> Option<String> {
    let q = path.split_once('?')?.1;
    let v = q
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))?;
    let mut out = Vec::new();
    let b = v.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 3 <= b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3]).ok()?;
                out.push(u8::from_str_radix(h, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The Node name a field selector `metadata.name=X` asks for.
fn only_name(path: &str) -> Option<String> {
    query(path, "fieldSelector")?
        .strip_prefix("metadata.name=")
        .map(String::from)
}

fn serve(conn: TcpStream, st: Arc<Mutex<State>>, rq: Arc<Mutex<Vec<String>>>) {
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let mut out = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        // Skip the headers (GET requests carry no body).
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" || h == "\n" {
                break;
            }
        }
        rq.lock().unwrap().push(path.clone());
        if !path.starts_with("/api/v1/nodes") {
            let body = json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound" }).to_string();
            let _ = write!(
                out,
                "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            continue;
        }
        let only = only_name(&path);
        let watch = query(&path, "watch").is_some_and(|v| v == "true" || v == "1");
        if watch {
            let (tx, rx) = mpsc::channel::<String>();
            let since: u64 = query(&path, "resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            {
                let mut s = st.lock().unwrap();
                for (_, _, ev) in s.history.iter().filter(|(rv, name, _)| {
                    *rv > since && only.as_deref().is_none_or(|o| o == name)
                }) {
                    let _ = tx.send(ev.clone());
                }
                s.watchers.push(Watcher { only, tx });
            }
            let _ = write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            );
            let _ = out.flush();
            while let Ok(ev) = rx.recv() {
                let chunk = format!("{ev}\n");
                if write!(out, "{:x}\r\n{chunk}\r\n", chunk.len()).is_err() || out.flush().is_err()
                {
                    return;
                }
            }
            return;
        }
        let body = {
            let s = st.lock().unwrap();
            let items: Vec<Value> = s
                .nodes
                .iter()
                .filter(|(name, _)| only.as_deref().is_none_or(|o| o == *name))
                .map(|(_, n)| n.clone())
                .collect();
            json!({
                "apiVersion": "v1", "kind": "NodeList",
                "metadata": { "resourceVersion": s.rv.to_string() },
                "items": items,
            })
            .to_string()
        };
        let _ = write!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let _ = out.flush();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn query_values_are_decoded() {
        let p = "/api/v1/nodes?fieldSelector=metadata.name%3Dnode1&watch=true&resourceVersion=5";
        assert_eq!(super::only_name(p).as_deref(), Some("node1"));
        assert_eq!(super::query(p, "watch").as_deref(), Some("true"));
        assert_eq!(super::query(p, "resourceVersion").as_deref(), Some("5"));
        assert_eq!(super::only_name("/api/v1/nodes"), None);
    }
}
