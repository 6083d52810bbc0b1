//! The deployment files say what the agent needs, and only that: the DaemonSet (host
//! network, its capabilities, the config from a ConfigMap that is a valid Petrel config,
//! the CNI install step, RBAC for its Node) and the systemd unit.

use std::collections::HashMap;

use serde_json::Value;

fn deploy(name: &str) -> String {
    std::fs::read_to_string(format!("{}/../deploy/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn docs() -> Vec<Value> {
    serde_saphyr::from_str_multiple::<Value, Vec<Value>>(&deploy("petrel-daemonset.yaml"))
        .expect("the manifest is valid YAML")
}

fn kind<'a>(docs: &'a [Value], k: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == k)
        .unwrap_or_else(|| panic!("no {k}"))
}

#[test]
fn daemonset_runs_the_agent_with_host_network_and_only_the_capabilities_it_needs() {
    let d = docs();
    let ds = kind(&d, "DaemonSet");
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["hostNetwork"], true);
    let agent = &spec["containers"][0];
    assert_eq!(agent["command"][0], "/usr/local/bin/petrel");
    assert_eq!(agent["args"][0], "run");
    let sc = &agent["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let mut caps: Vec<&str> = sc["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    caps.sort();
    assert_eq!(caps, ["NET_ADMIN", "NET_BIND_SERVICE"]);
    // The node name and router id come from the Node.
    let env: HashMap<&str, &Value> = agent["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap(),
                &e["valueFrom"]["fieldRef"]["fieldPath"],
            )
        })
        .collect();
    assert_eq!(env["NODE_NAME"], "spec.nodeName");
    assert_eq!(env["PETREL_ROUTER_ID"], "status.hostIP");
    // Probes on the metrics endpoint's port.
    assert_eq!(agent["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(agent["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(agent["readinessProbe"]["httpGet"]["port"], 9179);
    // The config is mounted from the ConfigMap at the path the args name.
    let mounts = agent["volumeMounts"].as_array().unwrap();
    assert!(
        mounts
            .iter()
            .any(|m| m["name"] == "config" && m["mountPath"] == "/etc/petrel")
    );
    let vols = spec["volumes"].as_array().unwrap();
    assert!(
        vols.iter()
            .any(|v| v["name"] == "config" && v["configMap"]["name"] == "petrel-config")
    );
    // The control socket's directory is the host's, where petrel-ipam asks for CIDRs.
    assert!(
        vols.iter()
            .any(|v| v["name"] == "run" && v["hostPath"]["path"] == "/run/petrel")
    );
}

#[test]
fn the_configmap_is_a_valid_petrel_config_in_kubernetes_mode() {
    let d = docs();
    let cm = kind(&d, "ConfigMap");
    let text = cm["data"]["petrel.yaml"].as_str().unwrap();
    let cfg = petrel_config::parse_str(text, "petrel.yaml (ConfigMap)", None)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.node.pod_cidrs, petrel_config::PodCidrs::Kubernetes);
    assert!(cfg.fib.enable_forwarding);
    assert_eq!(cfg.control.socket.to_str(), Some("/run/petrel/petrel.sock"));
    assert_eq!(cfg.metrics.address.map(|a| a.port()), Some(9179));
    assert!(!cfg.peers.is_empty());
}

#[test]
fn the_init_container_installs_the_cni_plugin_on_the_host() {
    let d = docs();
    let spec = &kind(&d, "DaemonSet")["spec"]["template"]["spec"];
    let init = &spec["initContainers"][0];
    let cmd: Vec<&str> = init["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(&cmd[..2], ["/usr/local/bin/petrel-cni", "install"]);
    let arg = |flag: &str| {
        cmd.iter()
            .position(|c| *c == flag)
            .map(|i| cmd[i + 1])
            .unwrap()
    };
    assert_eq!(arg("--agent-socket"), "/run/petrel/petrel.sock");
    let vols = spec["volumes"].as_array().unwrap();
    for (flag, host) in [
        ("--bin-dir", "/opt/cni/bin"),
        ("--conf-dir", "/etc/cni/net.d"),
    ] {
        let mount = init["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == arg(flag))
            .unwrap();
        let vol = vols.iter().find(|v| v["name"] == mount["name"]).unwrap();
        assert_eq!(vol["hostPath"]["path"], host, "{flag}");
    }
}

#[test]
fn rbac_grants_read_access_to_nodes_only() {
    let d = docs();
    let role = kind(&d, "ClusterRole");
    let rules = role["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0]["resources"], serde_json::json!(["nodes"]));
    assert_eq!(
        rules[0]["verbs"],
        serde_json::json!(["get", "list", "watch"])
    );
    let binding = kind(&d, "ClusterRoleBinding");
    assert_eq!(binding["subjects"][0]["name"], "petrel");
    assert_eq!(
        kind(&d, "DaemonSet")["spec"]["template"]["spec"]["serviceAccountName"],
        "petrel"
    );
}

/// `[Section]` -> key -> values (a key may repeat).
fn unit(text: &str) -> HashMap<String, HashMap<String, Vec<String>>> {
    let mut out: HashMap<String, HashMap<String, Vec<String>>> = HashMap::new();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_string();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not key=value: {line}"));
        out.entry(section.clone())
            .or_default()
            .entry(k.trim().into())
            .or_default()
            .push(v.trim().into());
    }
    out
}

#[test]
fn systemd_unit_runs_checks_reloads_and_limits_capabilities() {
    let u = unit(&deploy("petrel.service"));
    let svc = &u["Service"];
    assert_eq!(
        svc["ExecStart"],
        ["/usr/local/bin/petrel run --config /etc/petrel/petrel.yaml"]
    );
    assert_eq!(
        svc["ExecStartPre"],
        ["/usr/local/bin/petrel check --config /etc/petrel/petrel.yaml"]
    );
    assert_eq!(svc["ExecReload"], ["/bin/kill -HUP $MAINPID"]);
    assert_eq!(svc["KillSignal"], ["SIGTERM"]);
    assert_eq!(
        svc["AmbientCapabilities"],
        ["CAP_NET_ADMIN CAP_NET_BIND_SERVICE"]
    );
    assert_eq!(svc["CapabilityBoundingSet"], svc["AmbientCapabilities"]);
    assert_eq!(
        svc["RuntimeDirectory"],
        ["petrel"],
        "the control socket's directory"
    );
    assert!(u["Unit"]["After"][0].contains("network-online.target"));
    assert_eq!(u["Install"]["WantedBy"], ["multi-user.target"]);
}
