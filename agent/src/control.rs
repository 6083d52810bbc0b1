//! The control socket's server: a Unix stream socket where `petrel status` and `petrel
//! routes` ask the running agent. The protocol and its types are `petrel_control`'s; status
//! is answered from snapshots, so it never waits on route processing.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use petrel_control::{MAX_REQUEST, Request};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
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

/// At most this many requests are answered at once; further clients wait in the listen
/// backlog (holding no descriptor of ours) until one finishes or times out.
const MAX_CLIENTS: usize = 32;

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
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
    let task = rt.spawn(async move {
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            match listener.accept().await {
                Ok((stream, _)) => {
                    let agent = agent.clone();
                    tokio::spawn(async move {
                        if let Err(e) = answer(stream, agent).await {
                            debug!(error = %e, "control request failed");
                        }
                        drop(slot);
                    });
                }
                Err(e) => {
                    warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
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

async fn answer(stream: UnixStream, agent: Arc<Agent>) -> anyhow::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut line = String::new();
    tokio::time::timeout(
        REQUEST_TIMEOUT,
        BufReader::new(rd.take(MAX_REQUEST as u64)).read_line(&mut line),
    )
    .await
    .context("no request in time")??;
    let reply = match serde_json::from_str::<Request>(line.trim()) {
        Ok(r) if r.get == "status" => serde_json::to_vec(&agent.status())?,
        Ok(r) if r.get == "routes" => serde_json::to_vec(&agent.routes().await)?,
        Ok(r) => serde_json::to_vec(
            &serde_json::json!({ "error": format!("unknown request {:?}", r.get) }),
        )?,
        Err(e) => serde_json::to_vec(&serde_json::json!({ "error": format!("bad request: {e}") }))?,
    };
    tokio::time::timeout(REPLY_TIMEOUT, async {
        wr.write_all(&reply).await?;
        wr.write_all(b"\n").await?;
        wr.shutdown().await
    })
    .await
    .context("answer not read in time")??;
    Ok(())
}
