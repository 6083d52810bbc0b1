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

/// Serve requests until the listener is dropped. The socket file is replaced if present.
pub fn serve(
    path: &Path,
    agent: Arc<Agent>,
    rt: &tokio::runtime::Handle,
) -> anyhow::Result<SocketGuard> {
    let _in = rt.enter();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("remove {}", path.display())),
    }
    let listener = UnixListener::bind(path).with_context(|| format!("bind {}", path.display()))?;
    // Status includes peer addresses and errors: root and the socket's group only.
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660));
    let task = rt.spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let agent = agent.clone();
                    tokio::spawn(async move {
                        if let Err(e) = answer(stream, agent).await {
                            debug!(error = %e, "control request failed");
                        }
                    });
                }
                Err(e) => {
                    warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(SocketGuard {
        path: path.to_path_buf(),
        task,
    })
}

/// Removes the socket file when dropped.
pub struct SocketGuard {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// How long a client may take to send its request.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

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
    wr.write_all(&reply).await?;
    wr.write_all(b"\n").await?;
    wr.shutdown().await?;
    Ok(())
}
