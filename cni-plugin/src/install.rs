//! `petrel-cni install`: put the plugins where the runtime looks for them and the network
//! configuration where it reads it, each atomically (a runtime may read at any moment; it
//! must see the old file or the new one, never half of one). The DaemonSet runs this in an
//! init container.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The conflist `install` writes when none is given: petrel-cni with petrel-ipam finding the
/// pod CIDRs in the agent's config file or, given a socket path (`--agent-socket`), from
/// the running agent; then portmap for hostPort.
pub fn default_conflist(agent_config: &str, mtu: Option<u32>) -> String {
    let ipam = if agent_config.ends_with(".sock") {
        serde_json::json!({ "type": "petrel-ipam", "agent_socket": agent_config })
    } else {
        serde_json::json!({ "type": "petrel-ipam", "config": agent_config })
    };
    let mut plugin = serde_json::json!({
        "type": "petrel-cni",
        "capabilities": { "ips": true },
        "ipam": ipam,
    });
    if let Some(m) = mtu {
        plugin["mtu"] = m.into();
    }
    serde_json::to_string_pretty(&serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "petrel",
        "plugins": [
            plugin,
            { "type": "portmap", "capabilities": { "portMappings": true } },
        ],
    }))
    .unwrap_or_default()
}

/// Write `content` to `path` atomically (temporary file, fsync, rename, fsync of the dir).
pub fn write_atomic(path: &Path, content: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // A leading dot: runtimes skip hidden files while the temporary one exists.
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let mut f = File::create(&tmp)?;
    f.write_all(content)?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

pub struct InstallOpts {
    pub bin_dir: PathBuf,
    pub conf_dir: PathBuf,
    /// A conflist to install as is; `None`: [`default_conflist`].
    pub conflist: Option<PathBuf>,
    pub agent_config: String,
    pub mtu: Option<u32>,
    pub name: String,
}

/// Copy `petrel-cni` and `petrel-ipam` (from beside the running binary) to the bin dir and
/// write the conflist. Returns what was written.
pub fn install(o: &InstallOpts) -> Result<Vec<PathBuf>, String> {
    let here = std::env::current_exe()
        .map_err(|e| format!("cannot find myself: {e}"))?
        .parent()
        .map(Path::to_path_buf)
        .ok_or("no directory for the running binary")?;
    let mut written = Vec::new();
    for bin in ["petrel-cni", "petrel-ipam"] {
        let src = here.join(bin);
        let bytes = std::fs::read(&src).map_err(|e| format!("{}: {e}", src.display()))?;
        let dst = o.bin_dir.join(bin);
        write_atomic(&dst, &bytes, 0o755).map_err(|e| format!("{}: {e}", dst.display()))?;
        written.push(dst);
    }
    let content = match &o.conflist {
        Some(p) => std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?,
        None => default_conflist(&o.agent_config, o.mtu).into_bytes(),
    };
    // Refuse to install something a runtime could not read.
    let v: serde_json::Value = serde_json::from_slice(&content)
        .map_err(|e| format!("the conflist is not valid JSON: {e}"))?;
    if v["plugins"].as_array().is_none_or(|p| p.is_empty()) {
        return Err("the conflist has no \"plugins\"".into());
    }
    let dst = o.conf_dir.join(&o.name);
    write_atomic(&dst, &content, 0o644).map_err(|e| format!("{}: {e}", dst.display()))?;
    written.push(dst);
    Ok(written)
}

/// `petrel-cni install [--bin-dir DIR] [--conf-dir DIR] [--conflist FILE] [--config FILE]
/// [--mtu N] [--name NAME]`; returns the exit code.
pub fn cli(args: &[String]) -> i32 {
    let mut o = InstallOpts {
        bin_dir: PathBuf::from("/opt/cni/bin"),
        conf_dir: PathBuf::from("/etc/cni/net.d"),
        conflist: None,
        agent_config: "/etc/petrel/petrel.yaml".into(),
        mtu: None,
        name: "10-petrel.conflist".into(),
    };
    let mut it = args.iter().skip(2);
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().unwrap_or_default();
        match a.as_str() {
            "--bin-dir" => o.bin_dir = val().into(),
            "--conf-dir" => o.conf_dir = val().into(),
            "--conflist" => o.conflist = Some(val().into()),
            "--config" | "--agent-socket" => o.agent_config = val(),
            "--mtu" => o.mtu = val().parse().ok(),
            "--name" => o.name = val(),
            "-h" | "--help" => {
                println!(
                    "usage: petrel-cni install [--bin-dir /opt/cni/bin] [--conf-dir /etc/cni/net.d] [--conflist FILE] [--config /etc/petrel/petrel.yaml] [--mtu N] [--name 10-petrel.conflist]"
                );
                return 0;
            }
            other => {
                eprintln!("petrel-cni install: unknown argument {other:?}");
                return 2;
            }
        }
    }
    match install(&o) {
        Ok(files) => {
            for f in files {
                println!("installed {}", f.display());
            }
            0
        }
        Err(e) => {
            eprintln!("petrel-cni install: {e}");
            1
        }
    }
}
