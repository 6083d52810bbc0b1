//! The control socket's server: a Unix stream socket where `petrel status` and `petrel
//! routes` ask the running agent. The protocol and its types are `petrel_control`'s; status
//! is answered from snapshots, so it never waits on route processing.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use petrel_control::{MAX_REQUEST, Request};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::oneshot;
use tracing::{debug, warn};

use crate::state::Agent;

/// The control socket, bound but not yet served: claimed before the agent touches the
/// kernel, so that a second agent given the same path stops before it can disturb the
/// first one's routes.
pub struct Claimed {
    listener: std::os::unix::net::UnixListener,
    path: PathBuf,
    ours: Option<(u64, u64)>,
}

/// Bind the control socket at `path`. A stale socket there is replaced; a live one (another
/// agent) or any other kind of file is an error.
pub fn claim(path: &Path) -> anyhow::Result<Claimed> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    make_free(path)?;
    let listener = std::os::unix::net::UnixListener::bind(path)
        .with_context(|| format!("bind {}", path.display()))?;
    listener.set_nonblocking(true)?;
    let ours = identity(path);
    // Status includes peer addresses and errors: root and the socket's group only.
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660));
    Ok(Claimed {
        listener,
        path: path.to_path_buf(),
        ours,
    })
}

/// Connections accepted and still sending their request. One more closes the oldest of
/// them: idle clients cannot keep a real one out, and never hold more than this many of
/// our descriptors. The CLI writes its request as it connects, so it is never the oldest.
const MAX_WAITING: usize = 32;

/// Connections still reading their request, oldest first, by id. The accept loop holds
/// each connection's oneshot sender and drops it to evict the connection (its task then
/// returns, closing it); the task takes itself out of the queue once its request is read.
/// Neither side ever waits on the other: the queue is a mutex-guarded list, at most
/// [`MAX_WAITING`] long.
type Waiting = VecDeque<(u64, oneshot::Sender<()>)>;

/// Requests answered at once; a request over this gets a "busy" error at once.
const MAX_ANSWERING: usize = 32;

/// Serve requests until the returned guard is dropped.
pub fn serve(
    claimed: Claimed,
    agent: Arc<Agent>,
    rt: &tokio::runtime::Handle,
) -> anyhow::Result<SocketGuard> {
    let _in = rt.enter();
    let Claimed {
        listener,
        path,
        ours,
    } = claimed;
    let listener = UnixListener::from_std(listener)?;
    let answering = Arc::new(tokio::sync::Semaphore::new(MAX_ANSWERING));
    // Connections still reading their request, oldest first: dropping the sender closes one.
    let waiting: Arc<Mutex<Waiting>> = Arc::default();
    let task = rt.spawn(async move {
        let mut next_id = 0u64;
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let id = next_id;
            next_id += 1;
            let (evict_tx, evict_rx) = oneshot::channel();
            {
                let mut q = waiting.lock().unwrap_or_else(|e| e.into_inner());
                q.push_back((id, evict_tx));
                while q.len() > MAX_WAITING {
                    q.pop_front();
                }
            }
            let agent = agent.clone();
            let waiting = waiting.clone();
            let answering = answering.clone();
            tokio::spawn(async move {
                let (rd, wr) = stream.into_split();
                let request = tokio::select! {
                    r = read_request(rd) => r,
                    _ = evict_rx => return,
                };
                waiting
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .retain(|(i, _)| *i != id);
                let request = match request {
                    Ok(r) => r,
                    Err(e) => {
                        debug!(error = %e, "control request failed");
                        return;
                    }
                };
                let reply = match answering.try_acquire_owned() {
                    Ok(_slot) => answer(&request, &agent).await,
                    Err(_) => error_reply("busy: too many requests at once; try again"),
                };
                if let Err(e) = send(wr, reply).await {
                    debug!(error = %e, "control reply failed");
                }
            });
        }
    });
    Ok(SocketGuard { path, ours, task })
}

/// (device, inode) of a path, to recognise our own socket later.
fn identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// Make `path` free for our socket: nothing there, or a stale socket nobody answers on.
/// Never another kind of file, never the socket of a running agent.
fn make_free(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("control socket {}", path.display())),
        Ok(m) if !m.file_type().is_socket() => anyhow::bail!(
            "control socket {}: the path exists and is not a socket; refusing to replace it",
            path.display()
        ),
        Ok(_) => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                anyhow::bail!(
                    "control socket {}: another agent answers on it; refusing to start a second one",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("remove the stale socket {}", path.display()))
        }
    }
}

/// Removes the socket file when dropped, if it is still ours.
pub struct SocketGuard {
    path: PathBuf,
    ours: Option<(u64, u64)>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        self.task.abort();
        if self.ours.is_some() && identity(&self.path) == self.ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// How long a client may take to send its request.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long a client may take to read its answer (a full route table can be large).
const REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// One request line, within [`REQUEST_TIMEOUT`] and [`MAX_REQUEST`] bytes.
async fn read_request(rd: OwnedReadHalf) -> anyhow::Result<String> {
    let mut line = String::new();
    tokio::time::timeout(
        REQUEST_TIMEOUT,
        BufReader::new(rd.take(MAX_REQUEST as u64)).read_line(&mut line),
    )
    .await
    .context("no request in time")??;
    Ok(line)
}

fn error_reply(msg: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "error": msg })).unwrap_or_default()
}

async fn answer(line: &str, agent: &Agent) -> Vec<u8> {
    let reply = match serde_json::from_str::<Request>(line.trim()) {
        Ok(r) if r.get == "status" => serde_json::to_vec(&agent.status()),
        Ok(r) if r.get == "routes" => serde_json::to_vec(&agent.routes().await),
        Ok(r) => return error_reply(&format!("unknown request {:?}", r.get)),
        Err(e) => return error_reply(&format!("bad request: {e}")),
    };
    reply.unwrap_or_else(|e| error_reply(&format!("encode: {e}")))
}

/// The reply and a newline, within [`REPLY_TIMEOUT`].
async fn send(mut wr: OwnedWriteHalf, reply: Vec<u8>) -> anyhow::Result<()> {
    tokio::time::timeout(REPLY_TIMEOUT, async {
        wr.write_all(&reply).await?;
        wr.write_all(b"\n").await?;
        wr.shutdown().await
    })
    .await
    .context("answer not read in time")??;
    Ok(())
}
