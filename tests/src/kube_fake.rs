//! A small fake Kubernetes API server: enough of `GET /api/v1/nodes` (list, then watch with
//! chunked WatchEvents) for the agent's Node watch, speaking the real JSON. No real API
//! server can be installed on these machines (shared/DECISIONS.md).
//!
//! It listens on 127.0.0.1 inside a test namespace (a thread that joins the namespace with
//! setns), so the agent running there reaches it at http://127.0.0.1:PORT.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, mpsc};

use serde_json::{Value, json};

use crate::{Netns, TestDir};

pub struct FakeApi {
    pub port: u16,
    state: Arc<Mutex<State>>,
    /// Paths of the requests served, in order.
    pub requests: Arc<Mutex<Vec<String>>>,
}

struct State {
    node: Value,
    rv: u64,
    watchers: Vec<mpsc::Sender<String>>,
    /// Every event so far, with its resourceVersion: a watch from version V first gets the
    /// events after V, as from a real API server (nothing is lost between list and watch).
    history: Vec<(u64, String)>,
}

impl FakeApi {
    /// Serve Node `name` with `pod_cidrs` (empty: none allocated yet) in `ns`.
    pub fn start(ns: &Netns, name: &str, pod_cidrs: &[&str]) -> FakeApi {
        let state = Arc::new(Mutex::new(State {
            node: node(name, 1, pod_cidrs),
            rv: 1,
            watchers: Vec::new(),
            history: Vec::new(),
        }));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (ptx, prx) = mpsc::channel();
        let ns_path = format!("/var/run/netns/{}", ns.name);
        let (st, rq) = (state.clone(), requests.clone());
        std::thread::spawn(move || {
            let f = std::fs::File::open(&ns_path).expect("netns file");
            // SAFETY: setns on this thread only; the fd is open for the call.
            let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            let l = TcpListener::bind("127.0.0.1:0").expect("bind fake API server");
            ptx.send(l.local_addr().unwrap().port()).unwrap();
            for conn in l.incoming().flatten() {
                let (st, rq) = (st.clone(), rq.clone());
                std::thread::spawn(move || serve(conn, st, rq));
            }
        });
        let port = prx.recv().expect("fake API port");
        FakeApi {
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
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://127.0.0.1:{}\nusers:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\n",
                self.port
            ),
        )
    }

    /// Change the Node's pod CIDRs: watchers get a MODIFIED event.
    pub fn set_pod_cidrs(&self, cidrs: &[&str]) {
        let mut st = self.state.lock().unwrap();
        st.rv += 1;
        let name = st.node["metadata"]["name"].as_str().unwrap().to_string();
        st.node = node(&name, st.rv, cidrs);
        let ev = json!({ "type": "MODIFIED", "object": st.node }).to_string();
        let rv = st.rv;
        st.history.push((rv, ev.clone()));
        st.watchers.retain(|w| w.send(ev.clone()).is_ok());
    }
}

fn node(name: &str, rv: u64, cidrs: &[&str]) -> Value {
    let mut spec = json!({});
    if let Some(first) = cidrs.first() {
        spec = json!({ "podCIDR": first, "podCIDRs": cidrs });
    }
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": { "name": name, "resourceVersion": rv.to_string(), "uid": "0000-fake" },
        "spec": spec,
    })
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
        if path.contains("watch=true") || path.contains("watch=1") {
            let (tx, rx) = mpsc::channel::<String>();
            let since: u64 = path
                .split(['?', '&'])
                .find_map(|kv| kv.strip_prefix("resourceVersion="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            {
                let mut s = st.lock().unwrap();
                for (_, ev) in s.history.iter().filter(|(rv, _)| *rv > since) {
                    let _ = tx.send(ev.clone());
                }
                s.watchers.push(tx);
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
            json!({
                "apiVersion": "v1", "kind": "NodeList",
                "metadata": { "resourceVersion": s.rv.to_string() },
                "items": [s.node.clone()],
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
