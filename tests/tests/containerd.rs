//! Through a real container runtime: containerd's CRI plugin calls petrel-cni (and, by
//! delegation, petrel-ipam) exactly as the kubelet's runtime does. A small CRI client runs
//! pod sandboxes, reads their status, checks that pods reach each other with their own
//! addresses, then stops and removes them: both DELs (the second without a namespace) must
//! leave nothing behind.

use std::time::Duration;

use hyper_util::rt::TokioIo;
use petrel_tests::containerd::Containerd;
use petrel_tests::cri::{
    LinuxPodSandboxConfig, PodSandboxConfig, PodSandboxMetadata, PodSandboxStatusRequest,
    RunPodSandboxRequest, RuntimeService,
};
use petrel_tests::{Netns, TestDir, bin, link};
use tonic::transport::{Endpoint, Uri};

async fn client(socket: std::path::PathBuf) -> RuntimeService {
    let channel = Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let s = socket.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(s).await?))
            }
        }))
        .await
        .expect("connect to containerd");
    RuntimeService::new(channel)
}

fn sandbox(name: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        linux: Some(LinuxPodSandboxConfig::default()),
        ..Default::default()
    }
}

/// Ping `addr` from the network namespace of process `pid`.
fn ping_from(pid: u64, addr: &str) -> bool {
    std::process::Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .args(["ping", "-c", "1", "-W", "2", addr])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_through_containerd_cri() {
    let dir = TestDir::new("cri");
    let up = Netns::new("up");
    let node = Netns::new("node");
    link(&up, &["203.0.113.1/24"], &node, &["203.0.113.2/24"]);
    node.ip("route add default via 203.0.113.1");
    node.sysctl("net.ipv4.ip_forward", "1");
    let ctd = Containerd::start(&node, &dir);
    // The plugins, and a wrapper that logs each call (to see both DELs).
    let calls = dir.file("cni-calls.log");
    std::fs::copy(bin("petrel-ipam"), ctd.cni_bin.join("petrel-ipam")).unwrap();
    // containerd brings up the pod's lo with the reference loopback plugin.
    petrel_tests::require_tool("/usr/lib/cni/loopback", "containernetworking-plugins");
    std::fs::copy("/usr/lib/cni/loopback", ctd.cni_bin.join("loopback")).unwrap();
    std::fs::copy(bin("petrel-cni"), ctd.cni_bin.join("petrel-cni.real")).unwrap();
    let wrapper = ctd.cni_bin.join("petrel-cni");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho \"$CNI_COMMAND container=$CNI_CONTAINERID netns=$CNI_NETNS\" >> {}\nexec \"$(dirname \"$0\")/petrel-cni.real\" \"$@\"\n",
            calls.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let ipam_dir = dir.file("ipam");
    std::fs::write(
        ctd.cni_conf.join("10-petrel.conflist"),
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "petrel",
            "plugins": [{ "type": "petrel-cni", "ipam": { "type": "petrel-ipam", "pod_cidrs": ["10.244.20.0/24"], "data_dir": ipam_dir } }],
        })
        .to_string(),
    )
    .unwrap();

    let mut rt = client(ctd.socket.clone()).await;
    let mut ids = Vec::new();
    let mut ips = Vec::new();
    let mut pids = Vec::new();
    for name in ["web", "db"] {
        let r = tokio::time::timeout(
            Duration::from_secs(60),
            rt.run_pod_sandbox(RunPodSandboxRequest {
                config: Some(sandbox(name)),
                runtime_handler: String::new(),
            }),
        )
        .await
        .expect("RunPodSandbox in time")
        .unwrap_or_else(|e| panic!("RunPodSandbox {name}: {e}\n{}", ctd.daemon.log_tail(30)));
        let id = r.pod_sandbox_id;
        let st = rt
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: id.clone(),
                verbose: true,
            })
            .await
            .unwrap();
        let ip = st
            .status
            .as_ref()
            .and_then(|s| s.network.as_ref())
            .map(|n| n.ip.clone())
            .unwrap_or_default();
        assert!(
            ip.starts_with("10.244.20."),
            "PodSandboxStatus shows the pod IP: {ip:?}"
        );
        let info: serde_json::Value =
            serde_json::from_str(st.info.get("info").map(String::as_str).unwrap_or("{}")).unwrap();
        let pid = info["pid"].as_u64().expect("sandbox pid");
        ids.push(id);
        ips.push(ip);
        pids.push(pid);
    }
    assert_ne!(ips[0], ips[1]);
    // The pods reach each other and the node, with the addresses the runtime reported.
    assert!(ping_from(pids[0], &ips[1]), "web -> db");
    assert!(ping_from(pids[1], &ips[0]), "db -> web");
    assert!(ping_from(pids[0], "203.0.113.2"), "web -> node");
    assert!(
        node.cmd("ping")
            .args(["-c", "1", "-W", "2", &ips[0]])
            .output()
            .unwrap()
            .status
            .success(),
        "node -> web"
    );

    for id in &ids {
        rt.stop_pod_sandbox(id).await.unwrap();
        rt.remove_pod_sandbox(id).await.unwrap();
    }
    // What the runtime sent: ADD, then DEL with the namespace, then DEL without.
    let log = std::fs::read_to_string(&calls).unwrap();
    for id in &ids {
        let mine: Vec<&str> = log.lines().filter(|l| l.contains(id.as_str())).collect();
        assert!(mine.iter().any(|l| l.starts_with("ADD")), "{log}");
        let dels: Vec<&&str> = mine.iter().filter(|l| l.starts_with("DEL")).collect();
        assert!(dels.len() >= 2, "two DELs for {id}: {log}");
        assert!(
            dels.iter().any(|l| l.ends_with("netns=")),
            "a DEL without netns: {log}"
        );
    }
    // Nothing left: no veth of ours on the node, no route to the pods, no allocation.
    petrel_tests::wait_until_or(
        "no veth of ours left on the node",
        Duration::from_secs(10),
        || (!node.ip("-o link show type veth").contains(": pet")).then_some(()),
        || node.ip("-o link show type veth"),
    );
    assert!(
        !node.routes4("").contains("10.244.20."),
        "{}",
        node.routes4("")
    );
    let store = std::fs::read_to_string(ipam_dir.join("petrel.json")).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&store).unwrap_or_default();
    assert_eq!(
        v["allocations"].as_array().map(|a| a.len()).unwrap_or(0),
        0,
        "{store}"
    );
    drop(rt);
    drop(ctd);
}
