//! Kubernetes mode against a fake API server that speaks the real list/watch JSON: the agent
//! finds its Node, waits for spec.podCIDRs, advertises them to a BIRD router as soon as they
//! are set, and follows a change.

use std::time::Duration;

use petrel_tests::bird::{self, Bird};
use petrel_tests::kube_fake::FakeApi;
use petrel_tests::petrel::Petrel;
use petrel_tests::{Netns, TestDir, cni, link, wait_until_or};

const T: Duration = Duration::from_secs(30);

#[test]
fn pod_cidrs_from_the_node_object() {
    let dir = TestDir::new("k8s");
    let r = Netns::new("r");
    let n = Netns::new("n");
    link(
        &r,
        &["198.51.100.1/24", "2001:db8:1::1/64"],
        &n,
        &["198.51.100.2/24", "2001:db8:1::2/64"],
    );
    let conf = format!(
        r#"
router id 198.51.100.1;
protocol device {{}}
protocol bgp petrel {{
  local 198.51.100.1 as 65001; neighbor 198.51.100.2 as 65002;
  hold time 3; {fast}
  ipv4 {{ import all; export none; }};
  ipv6 {{ import all; export none; }};
}}
"#,
        fast = bird::FAST
    );
    let b = Bird::start(&r, &dir, "bird", &conf);
    // The Node exists but has no pod CIDR yet (the controller manager has not allocated).
    let api = FakeApi::start(&n, "worker-7", &[]);
    let kubeconfig = api.kubeconfig(&dir);
    let yaml = "node:\n  asn: 65002\n  router_id: 198.51.100.2\n  pod_cidrs_from: kubernetes\npeers:\n  - { name: tor, address: 198.51.100.1, asn: 65001, hold_time: 3, connect_retry: 1, families: [ipv4, ipv6], next_hop_ipv6: \"2001:db8:1::2\" }\n";
    let p = Petrel::start_env(
        &n,
        &dir,
        "petrel",
        yaml,
        &[
            ("KUBECONFIG", kubeconfig.to_str().unwrap()),
            ("NODE_NAME", "worker-7"),
        ],
    );
    p.wait_established("tor", T);
    let st = p.status();
    assert_eq!(st["node"]["name"], "worker-7");
    assert_eq!(st["node"]["pod_cidrs_source"], "kubernetes");
    assert!(
        st["warnings"].to_string().contains("no pod CIDR yet"),
        "{st}"
    );
    assert!(!b.has_route("10.244.7.0/24"));
    // petrel-ipam, asking the agent for the pod CIDRs: none yet, "try again later" (11).
    let netns = cni::netns_path(&n);
    let ipam = |cmd: &str, id: &str| {
        let conf = serde_json::json!({
            "cniVersion": "1.0.0", "name": "k8snet", "type": "petrel-cni",
            "ipam": { "type": "petrel-ipam", "agent_socket": p.socket, "data_dir": dir.file("ipam") }
        })
        .to_string();
        cni::run_direct(
            &n,
            &petrel_tests::bin("petrel-ipam").display().to_string(),
            cmd,
            id,
            &netns,
            "eth0",
            &conf,
        )
    };
    let early = ipam("ADD", "c1");
    assert!(!early.ok, "{}", early.stdout);
    assert_eq!(early.code(), Some(11), "{}", early.stdout);

    // The CIDRs are allocated: advertised at once, blackholed locally.
    api.set_pod_cidrs(&["10.244.7.0/24", "fd00:10:244:7::/64"]);
    wait_until_or(
        "BIRD learns the pod CIDRs",
        T,
        || (b.has_route("10.244.7.0/24") && b.has_route("fd00:10:244:7::/64")).then_some(()),
        || format!("{}\n{}", b.birdc("show route all"), p.log_text()),
    );
    assert!(n.routes4("proto 200").contains("blackhole 10.244.7.0/24"));
    assert_eq!(p.status()["node"]["pod_cidrs"][0], "10.244.7.0/24");
    // Now petrel-ipam gets addresses from them, through the agent's status answer.
    let got = ipam("ADD", "c1");
    assert!(got.ok, "{}{}", got.stdout, got.stderr);
    let ips = got.json()["ips"].to_string();
    assert!(
        ips.contains("10.244.7.") && ips.contains("fd00:10:244:7::"),
        "{ips}"
    );
    assert!(ipam("DEL", "c1").ok);
    // The requests were a list then a watch, for this node only.
    let reqs = api.requests.lock().unwrap().clone();
    assert!(
        reqs.iter()
            .all(|r| r.contains("fieldSelector=metadata.name%3Dworker-7")),
        "{reqs:?}"
    );
    assert!(reqs.iter().any(|r| r.contains("watch=true")), "{reqs:?}");

    // A change follows.
    api.set_pod_cidrs(&["10.244.9.0/24"]);
    wait_until_or(
        "BIRD swaps to the new CIDR",
        T,
        || {
            (b.has_route("10.244.9.0/24")
                && !b.has_route("10.244.7.0/24")
                && !b.has_route("fd00:10:244:7::/64"))
            .then_some(())
        },
        || b.birdc("show route all"),
    );
    // The old blackhole goes once the old CIDR is withdrawn (not before: traffic for it
    // may still arrive until the peers have heard).
    wait_until_or(
        "the old blackhole removed",
        T,
        || (!n.routes4("proto 200").contains("10.244.7.0/24")).then_some(()),
        || n.routes4("proto 200"),
    );
    assert!(n.routes4("proto 200").contains("blackhole 10.244.9.0/24"));
    assert_eq!(p.status()["node"]["pod_cidrs"][0], "10.244.9.0/24");
    drop((p, b));
}
