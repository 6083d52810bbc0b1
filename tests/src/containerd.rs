//! containerd with its CRI plugin, as the kubelet's runtime, in a test's node namespace.
//!
//! No image can be pulled here, so the sandbox ("pause") image is built on the spot: an OCI
//! image layout whose one layer is a busybox-static root filesystem running
//! `/bin/sleep infinity`, imported with `ctr`. containerd runs with a private root, state,
//! socket and CNI directories, entered into the node namespace with `nsenter --net` (no new
//! mount namespace, so the pod namespaces it mounts are visible to the test).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{Daemon, Netns, TestDir, netns_names, require_tool, run, wait_until_or};

pub const SANDBOX_IMAGE: &str = "localhost/pause:1";

fn sha256(path: &Path) -> String {
    let out = run(Command::new("sha256sum").arg(path));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Build the sandbox image as an OCI layout tar; returns its path.
pub fn build_sandbox_image(dir: &Path) -> PathBuf {
    require_tool("/bin/busybox", "busybox-static");
    let root = dir.join("rootfs");
    let bindir = root.join("bin");
    std::fs::create_dir_all(&bindir).unwrap();
    std::fs::copy("/bin/busybox", bindir.join("busybox")).unwrap();
    for l in ["sleep", "sh"] {
        std::os::unix::fs::symlink("busybox", bindir.join(l)).unwrap();
    }
    let layout = dir.join("layout");
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let tar = dir.join("layer.tar");
    run(Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg("."));
    let diff_id = sha256(&tar);
    run(Command::new("gzip").args(["-n", "-f"]).arg(&tar));
    let gz = dir.join("layer.tar.gz");
    let layer_digest = sha256(&gz);
    let layer_size = std::fs::metadata(&gz).unwrap().len();
    std::fs::rename(&gz, blobs.join(&layer_digest)).unwrap();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": { "Entrypoint": ["/bin/sleep", "infinity"] },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{diff_id}")] },
    })
    .to_string();
    let cfg_path = dir.join("config.json");
    std::fs::write(&cfg_path, &config).unwrap();
    let cfg_digest = sha256(&cfg_path);
    std::fs::write(blobs.join(&cfg_digest), &config).unwrap();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{cfg_digest}"), "size": config.len() },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": format!("sha256:{layer_digest}"), "size": layer_size }],
    })
    .to_string();
    let m_path = dir.join("manifest.json");
    std::fs::write(&m_path, &manifest).unwrap();
    let m_digest = sha256(&m_path);
    std::fs::write(blobs.join(&m_digest), &manifest).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{m_digest}"), "size": manifest.len(),
            "annotations": { "io.containerd.image.name": SANDBOX_IMAGE, "org.opencontainers.image.ref.name": "1" },
        }],
    });
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
    let out = dir.join("pause.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&out)
        .arg("."));
    out
}

pub struct Containerd {
    pub socket: PathBuf,
    pub cni_bin: PathBuf,
    pub cni_conf: PathBuf,
    pub daemon: Daemon,
    /// Network namespaces that existed before containerd started.
    netns_before: Vec<String>,
}

impl Drop for Containerd {
    /// Also after a failed test: kill the pods' tasks, stop containerd and the shims it
    /// started, and remove the pod namespaces it created.
    fn drop(&mut self) {
        let ids = Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["-n", "k8s.io", "tasks", "ls", "-q"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for id in ids.lines().filter(|l| !l.is_empty()) {
            self.ctr(&["-n", "k8s.io", "tasks", "kill", "-s", "SIGKILL", id]);
            self.ctr(&["-n", "k8s.io", "tasks", "rm", "-f", id]);
            self.ctr(&["-n", "k8s.io", "containers", "rm", id]);
        }
        self.daemon.stop(Duration::from_secs(10));
        // The shims outlive containerd; theirs carry our socket path.
        let sock = self.socket.display().to_string();
        for pid in crate::pids_with_arg(&sock) {
            // SAFETY: kill(2) on processes this test's containerd started.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        for n in netns_names() {
            if n.starts_with("cni-") && !self.netns_before.contains(&n) {
                let _ = Command::new("ip").args(["netns", "del", &n]).status();
            }
        }
    }
}

impl Containerd {
    /// Start containerd in `node` with CNI bin and conf dirs of its own, the sandbox image
    /// imported.
    pub fn start(node: &Netns, dir: &TestDir) -> Containerd {
        require_tool("containerd", "containerd");
        require_tool("runc", "runc");
        let base = dir.file("containerd");
        let cni_bin = base.join("cni-bin");
        let cni_conf = base.join("cni-conf");
        for d in [&cni_bin, &cni_conf] {
            std::fs::create_dir_all(d).unwrap();
        }
        let socket = base.join("containerd.sock");
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{socket}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{image}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin}"
    conf_dir = "{conf}"
"#,
            root = base.join("root").display(),
            state = base.join("state").display(),
            socket = socket.display(),
            image = SANDBOX_IMAGE,
            bin = cni_bin.display(),
            conf = cni_conf.display(),
        );
        let cfg = base.join("config.toml");
        std::fs::write(&cfg, config).unwrap();
        let netns_before = netns_names();
        let log = base.join("containerd.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", node.name))
            .arg("--")
            .arg("containerd")
            .arg("--config")
            .arg(&cfg)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start containerd");
        let daemon = Daemon::from_child("containerd", child, &log);
        let c = Containerd {
            socket,
            cni_bin,
            cni_conf,
            daemon,
            netns_before,
        };
        wait_until_or(
            "containerd socket",
            Duration::from_secs(30),
            || c.ctr(&["version"]).then_some(()),
            || c.daemon.log_tail(20),
        );
        let image = build_sandbox_image(&dir.file("image"));
        let ok = c.ctr(&[
            "-n",
            "k8s.io",
            "images",
            "import",
            "--snapshotter",
            "native",
            image.to_str().unwrap(),
        ]);
        assert!(ok, "ctr import failed; log:\n{}", c.daemon.log_tail(20));
        c
    }

    pub fn ctr(&self, args: &[&str]) -> bool {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(args)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }
}
