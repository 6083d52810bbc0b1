//! Kubernetes mode: the node's pod CIDRs from `spec.podCIDRs` of its Node object.
//!
//! A watch (list, then watch, re-listing with backoff when the API server drops it) on the
//! one Node named after this host. Every time the CIDRs change, the new list goes out on a
//! `tokio::sync::watch` channel; the agent starts advertising as soon as it is set.

use futures::StreamExt;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;
use tracing::{info, warn};

/// The node's name: the config's, else `NODE_NAME` (the DaemonSet sets it from
/// `spec.nodeName`), else the hostname.
pub fn node_name(configured: Option<&str>) -> anyhow::Result<String> {
    if let Some(n) = configured {
        return Ok(n.to_string());
    }
    if let Ok(n) = std::env::var("NODE_NAME")
        && !n.is_empty()
    {
        return Ok(n);
    }
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname")?;
    Ok(h.trim().to_string())
}

/// The pod CIDRs of a Node: `spec.podCIDRs`, or the older single `spec.podCIDR`. Entries
/// that do not parse (or have host bits set) are skipped with a warning.
pub fn pod_cidrs_of(node: &Node) -> Vec<IpNet> {
    let spec = node.spec.as_ref();
    let list: Vec<String> = match spec.and_then(|s| s.pod_cidrs.clone()) {
        Some(v) if !v.is_empty() => v,
        _ => spec.and_then(|s| s.pod_cidr.clone()).into_iter().collect(),
    };
    let mut out = Vec::new();
    for c in list {
        match c.parse::<IpNet>() {
            Ok(n) if n.trunc() == n => out.push(n),
            _ => warn!(cidr = %c, "ignoring an unusable podCIDR on the Node"),
        }
    }
    out
}

/// Watch the Node `name`; the receiver holds its latest pod CIDRs (empty until known).
pub fn watch_pod_cidrs(client: kube::Client, name: String) -> watch::Receiver<Vec<IpNet>> {
    let (tx, rx) = watch::channel(Vec::new());
    let api: Api<Node> = Api::all(client);
    let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    tokio::spawn(async move {
        let mut stream = watcher::watcher(api, cfg).default_backoff().boxed();
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(Event::Apply(node) | Event::InitApply(node)) => {
                    let cidrs = pod_cidrs_of(&node);
                    if *tx.borrow() != cidrs {
                        info!(node = %name, pod_cidrs = ?cidrs, "pod CIDRs from the Node object");
                        if tx.send(cidrs).is_err() {
                            return;
                        }
                    }
                }
                Ok(Event::Delete(_)) => {
                    warn!(node = %name, "the Node object was deleted: keeping the last pod CIDRs");
                }
                Ok(Event::Init | Event::InitDone) => {}
                Err(e) => warn!(node = %name, error = %e, "watching the Node"),
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};
    use kube::client::Body;

    fn node(json: serde_json::Value) -> Node {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn pod_cidrs_from_the_spec() {
        let n = node(serde_json::json!({
            "metadata": { "name": "n1" },
            "spec": { "podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24", "fd00:10:244:1::/64"] }
        }));
        assert_eq!(
            pod_cidrs_of(&n),
            vec![
                "10.244.1.0/24".parse::<IpNet>().unwrap(),
                "fd00:10:244:1::/64".parse().unwrap()
            ]
        );
        // Older clusters only set the single field.
        let n = node(
            serde_json::json!({ "metadata": { "name": "n1" }, "spec": { "podCIDR": "10.244.1.0/24" } }),
        );
        assert_eq!(
            pod_cidrs_of(&n),
            vec!["10.244.1.0/24".parse::<IpNet>().unwrap()]
        );
        // Not allocated yet; and garbage is skipped.
        let n = node(serde_json::json!({ "metadata": { "name": "n1" }, "spec": {} }));
        assert!(pod_cidrs_of(&n).is_empty());
        let n = node(
            serde_json::json!({ "metadata": { "name": "n1" }, "spec": { "podCIDRs": ["10.244.1.7/24", "x"] } }),
        );
        assert!(pod_cidrs_of(&n).is_empty());
    }

    fn node_list(rv: &str, cidrs: &[&str]) -> String {
        serde_json::json!({
            "apiVersion": "v1", "kind": "NodeList",
            "metadata": { "resourceVersion": rv },
            "items": [{ "apiVersion": "v1", "kind": "Node",
                        "metadata": { "name": "node1", "resourceVersion": rv },
                        "spec": { "podCIDRs": cidrs } }]
        })
        .to_string()
    }

    /// The watcher against kube's tower-test mock: a list with no CIDR, then a watch event
    /// that sets them; the requests carry the field selector for this node.
    #[tokio::test]
    async fn watch_follows_the_node_through_list_and_watch() {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(svc, "default");
        let mut rx = watch_pod_cidrs(client, "node1".into());
        let server = tokio::spawn(async move {
            // The initial list.
            let (req, send) = handle.next_request().await.expect("list request");
            let uri = req.uri().to_string();
            assert!(uri.starts_with("/api/v1/nodes?"), "{uri}");
            assert!(uri.contains("fieldSelector=metadata.name%3Dnode1"), "{uri}");
            assert!(!uri.contains("watch=true"), "{uri}");
            send.send_response(Response::new(Body::from(
                node_list("100", &[]).into_bytes(),
            )));
            // The watch, from the list's resource version.
            let (req, send) = handle.next_request().await.expect("watch request");
            let uri = req.uri().to_string();
            assert!(
                uri.contains("watch=true") && uri.contains("resourceVersion=100"),
                "{uri}"
            );
            let ev = serde_json::json!({ "type": "MODIFIED", "object": {
                "apiVersion": "v1", "kind": "Node",
                "metadata": { "name": "node1", "resourceVersion": "101" },
                "spec": { "podCIDRs": ["10.244.7.0/24", "fd00:10:244:7::/64"] } } });
            send.send_response(Response::new(Body::from(format!("{ev}\n").into_bytes())));
            handle
        });
        let want: Vec<IpNet> = vec![
            "10.244.7.0/24".parse().unwrap(),
            "fd00:10:244:7::/64".parse().unwrap(),
        ];
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            loop {
                rx.changed().await.unwrap();
                if *rx.borrow() == want {
                    break;
                }
            }
        })
        .await
        .expect("pod CIDRs from the watch event");
        let _handle = server.await.unwrap();
    }
}
