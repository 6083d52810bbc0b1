//! The control socket: a Unix stream socket where `petrel status` and `petrel routes` ask the
//! running agent. One request per connection: a JSON line `{"get":"status"}` or
//! `{"get":"routes"}`, answered by one JSON document.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, warn};

use crate::state::Agent;

#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    pub get: String,
}

/// Serve requests until the listener is dropped. The socket file is replaced if present.
pub fn serve(path: &Path, agent: Arc<Agent>) -> anyhow::Result<SocketGuard> {
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
    let task = tokio::spawn(async move {
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

async fn answer(stream: UnixStream, agent: Arc<Agent>) -> anyhow::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut line = String::new();
    BufReader::new(rd.take(4096)).read_line(&mut line).await?;
    let reply = match serde_json::from_str::<Request>(line.trim()) {
        Ok(r) if r.get == "status" => serde_json::to_vec(&agent.status().await)?,
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

/// Ask the agent at `path`; returns the raw JSON answer.
pub async fn ask(path: &Path, what: &str) -> anyhow::Result<serde_json::Value> {
    let mut s = UnixStream::connect(path).await.with_context(|| {
        format!(
            "cannot reach the agent at {} (is `petrel run` running? --socket sets the path)",
            path.display()
        )
    })?;
    let req = serde_json::to_string(&Request {
        get: what.to_string(),
    })?;
    s.write_all(req.as_bytes()).await?;
    s.write_all(b"\n").await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let v: serde_json::Value = serde_json::from_slice(&buf).context("bad answer from the agent")?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        anyhow::bail!("agent: {e}");
    }
    Ok(v)
}
