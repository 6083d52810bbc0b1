//! The config file: the issue's example as written, defaults, and one test per kind of problem,
//! each checking the exact `file:line:col: message`.

use petrel_config::{Family, OwnCidrRoute, PodCidrs, load, parse_str};

fn problems(text: &str) -> Vec<String> {
    match parse_str(text, "p.yaml", None) {
        Ok(_) => panic!("expected problems in:\n{text}"),
        Err(e) => e.problems().iter().map(|p| p.to_string()).collect(),
    }
}

const HEAD: &str = "node:\n  asn: 65002\n  router_id: 192.0.2.2\n  pod_cidrs: [10.244.2.0/24]\n";

/// A scratch directory of this test process.
fn scratch(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("petrel-config-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn issue_example_is_accepted_as_written() {
    use std::os::unix::fs::PermissionsExt;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/issue-example.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    // As written, on a machine without /etc/petrel/tor.key, check says so where it is named.
    if !std::path::Path::new("/etc/petrel/tor.key").exists() {
        let e = load(path).unwrap_err();
        assert!(
            e.to_string()
                .contains(":10:20: cannot read password_file /etc/petrel/tor.key"),
            "{e}"
        );
    }
    // With the key where it says, accepted.
    let dir = scratch("example");
    let key = dir.join("tor.key");
    std::fs::write(&key, "s3cret\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let text = text.replace("/etc/petrel/tor.key", key.to_str().unwrap());
    let cfg = parse_str(&text, "issue-example.yaml", None).unwrap();
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
    assert_eq!(cfg.node.asn, 65002);
    assert_eq!(cfg.node.router_id.to_string(), "192.0.2.2");
    assert_eq!(
        cfg.node.pod_cidrs,
        PodCidrs::Static(vec![
            "10.244.2.0/24".parse().unwrap(),
            "fd00:10:244:2::/64".parse().unwrap()
        ])
    );
    let tor = &cfg.peers[0];
    assert_eq!(tor.name, "tor");
    assert_eq!(tor.asn, 65001);
    assert!(!tor.is_ibgp(cfg.node.asn));
    assert_eq!((tor.hold_time, tor.keepalive), (9, 3));
    assert_eq!(tor.families, vec![Family::Ipv4, Family::Ipv6]);
    assert_eq!(tor.password_file.as_deref(), Some(key.as_path()));
    let rules = tor.import.prefixes.as_ref().unwrap();
    assert_eq!(rules.len(), 2);
    assert!(rules[0].matches(&"198.51.100.0/24".parse().unwrap()));
    assert!(rules[1].matches(&"2001:db8::/48".parse().unwrap()));
    assert_eq!(tor.import.max_prefixes, Some(2_000_000));
    assert_eq!(cfg.fib.protocol, 200);
    assert_eq!(cfg.fib.own_cidr_route, OwnCidrRoute::Blackhole);
    assert!(!cfg.fib.enable_forwarding);
    assert_eq!(cfg.control.socket.to_str(), Some("/run/petrel/petrel.sock"));
    assert_eq!(cfg.metrics.address, None);
    assert!(cfg.summary().starts_with("ok: AS65002 router-id 192.0.2.2"));
}

#[test]
fn defaults_ibgp_and_no_import_policy() {
    let cfg = parse_str(
        &format!("{HEAD}peers:\n  - name: n3\n    address: 192.0.2.3\n    asn: 65002\n"),
        "p.yaml",
        None,
    )
    .unwrap();
    let p = &cfg.peers[0];
    assert!(p.is_ibgp(65002));
    assert_eq!(
        p.import.prefixes, None,
        "no policy given: the speaker decides by session type"
    );
    assert_eq!((p.hold_time, p.keepalive, p.port), (90, 30, 179));
    assert_eq!(p.families, vec![Family::Ipv4]);
    assert!(p.graceful_restart);
}

#[test]
fn unknown_key() {
    assert_eq!(
        problems(&format!("{HEAD}  colour: blue\n")),
        [
            "p.yaml:5:3: unknown field `colour`, expected one of name, asn, router_id, pod_cidrs, pod_cidrs_from, min_pod_cidr_len"
        ]
    );
}

#[test]
fn missing_field() {
    assert_eq!(
        problems("node:\n  router_id: 192.0.2.2\n  pod_cidrs: [10.0.0.0/24]\n"),
        ["p.yaml:3:3: missing field `asn`"]
    );
}

#[test]
fn bad_cidr_and_host_bits_and_overlap() {
    let text = "node:\n  asn: 65002\n  router_id: 192.0.2.2\n  pod_cidrs: [10.244.2.1/24, 10.244.300.0/24, 10.244.0.0/16, 10.244.2.0/25]\n";
    assert_eq!(
        problems(text),
        [
            "p.yaml:4:15: pod CIDR 10.244.2.1/24 has host bits set (did you mean 10.244.2.0/24?)",
            "p.yaml:4:30: invalid pod CIDR \"10.244.300.0/24\"",
            "p.yaml:4:62: pod CIDR 10.244.2.0/25 overlaps 10.244.0.0/16",
        ]
    );
}

#[test]
fn asn_out_of_range() {
    let text = format!(
        "{HEAD}peers:\n  - name: a\n    address: 192.0.2.1\n    asn: 4294967296\n  - name: b\n    address: 192.0.2.3\n    asn: 0\n  - name: c\n    address: 192.0.2.4\n    asn: 23456\n"
    );
    assert_eq!(
        problems(&text),
        [
            "p.yaml:8:10: peer ASN 4294967296 out of range (1..=4294967295)",
            "p.yaml:11:10: peer ASN 0 out of range (1..=4294967295)",
            "p.yaml:14:10: peer ASN 23456 is AS_TRANS (RFC 6793), not a real AS number",
        ]
    );
}

#[test]
fn duplicate_peer() {
    let text = format!(
        "{HEAD}peers:\n  - name: tor\n    address: 192.0.2.1\n    asn: 65001\n  - name: tor\n    address: 192.0.2.1\n    asn: 65003\n"
    );
    assert_eq!(
        problems(&text),
        [
            "p.yaml:9:11: duplicate peer name \"tor\" (first at line 6)",
            "p.yaml:10:14: duplicate peer address 192.0.2.1 (first at line 7)",
        ]
    );
}

#[test]
fn prefix_rule_bounds() {
    let text = format!(
        "{HEAD}peers:\n  - name: tor\n    address: 192.0.2.1\n    asn: 65001\n    import:\n      prefixes:\n        - {{ prefix: 10.0.0.0/16, le: 8 }}\n        - {{ prefix: 10.0.0.0/16, ge: 24, le: 20 }}\n        - {{ prefix: \"2001:db8::/32\", le: 129 }}\n"
    );
    assert_eq!(
        problems(&text),
        [
            "p.yaml:11:38: le 8 is less than the prefix length 16 of 10.0.0.0/16",
            "p.yaml:12:38: ge 24 is greater than le 20",
            "p.yaml:13:42: le 129 is more than 128, the longest IPv6 prefix",
        ]
    );
}

#[test]
fn hold_time_keepalive_and_family() {
    let text = format!(
        "{HEAD}peers:\n  - name: tor\n    address: 192.0.2.1\n    asn: 65001\n    hold_time: 2\n    families: [ipv4, ipv5]\n  - name: b\n    address: 192.0.2.3\n    asn: 65001\n    hold_time: 9\n    keepalive: 9\n"
    );
    assert_eq!(
        problems(&text),
        [
            "p.yaml:9:16: hold_time 2 is not allowed: 0 or at least 3 seconds (RFC 4271 4.2)",
            "p.yaml:10:22: unknown family \"ipv5\" (want ipv4 or ipv6)",
            "p.yaml:15:16: keepalive 9 must be less than hold_time 9",
        ]
    );
}

#[test]
fn syntax_error_has_location() {
    assert_eq!(
        problems("node:\n  asn: 65002\n  pod_cidrs: [10.0.0.0/24, \"fd00::/64]\n"),
        ["p.yaml:3:28: unclosed quote"]
    );
}

#[test]
fn fib_protocol_of_another_daemon() {
    assert_eq!(
        problems(&format!("{HEAD}fib:\n  protocol: 12\n")),
        [
            "p.yaml:6:13: fib protocol 12 belongs to bird: pick a number no other routing daemon on the node uses"
        ]
    );
    assert_eq!(
        problems(&format!("{HEAD}fib:\n  protocol: 3\n")),
        ["p.yaml:6:13: fib protocol 3 out of range (5..=255)"]
    );
}

#[test]
fn kubernetes_mode() {
    let cfg = parse_str(
        "node:\n  asn: 65002\n  router_id: 192.0.2.2\n  pod_cidrs_from: kubernetes\n",
        "p.yaml",
        None,
    )
    .unwrap();
    assert_eq!(cfg.node.pod_cidrs, PodCidrs::Kubernetes);
    assert_eq!(
        problems("node:\n  asn: 65002\n  router_id: 192.0.2.2\n  pod_cidrs_from: etcd\n"),
        ["p.yaml:4:19: unknown pod_cidrs_from \"etcd\" (the only source is \"kubernetes\")"]
    );
}

#[test]
fn routing_core_example_is_accepted_as_written() {
    use petrel_config::{CommunityMatch, RouteSource, RuleAction};
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/routing-core-example.yaml"
    );
    let cfg = load(path).unwrap();
    let c = |a: u32, b: u32| (a << 16) | b;
    assert_eq!(cfg.originate.len(), 1);
    assert_eq!(cfg.originate[0].prefix.to_string(), "198.51.100.0/24");
    assert_eq!(cfg.originate[0].communities, vec![c(65000, 300)]);
    let tor = &cfg.peers[0];
    let e = &tor.export[0];
    assert_eq!(e.matches.sources, Some(vec![RouteSource::PodCidrs]));
    assert_eq!(e.action, RuleAction::Accept);
    assert_eq!(e.set.communities, vec![c(65000, 100)]);
    assert_eq!(e.set.large_communities, vec![[65000, 1, 2]]);
    assert_eq!((e.set.med, e.set.prepend), (Some(50), 2));
    let r = &tor.import.rules;
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].action, RuleAction::Reject);
    assert_eq!(
        r[0].matches.communities,
        vec![CommunityMatch {
            asn: Some(65001),
            value: Some(666)
        }]
    );
    assert_eq!(
        r[1].matches.large_communities,
        vec![[Some(65001), Some(10), None]]
    );
    assert_eq!(r[1].set.local_pref, Some(200));
    assert_eq!(tor.import.prefixes.as_ref().unwrap().len(), 1);
}

#[test]
fn rule_mistakes_are_located() {
    let text = format!(
        "{HEAD}originate:\n  - {{ prefix: 10.244.2.0/25 }}\n  - {{ prefix: 198.51.100.7/24 }}\n  - {{ prefix: 203.0.113.0/24, communities: [\"65000:70000\"] }}\npeers:\n  - name: tor\n    address: 192.0.2.1\n    asn: 65001\n    export:\n      - match: {{ source: pods }}\n      - match: {{ communities: [\"x:1\"] }}\n        action: reject\n        set: {{ med: 5 }}\n      - set: {{ prepend: 40, large_communities: [\"1:2\"] }}\n      - action: drop\n    import:\n      rules:\n        - match: {{ source: learned }}\n        - set: {{ prepend: 1 }}\n"
    );
    assert_eq!(
        problems(&text),
        vec![
            "p.yaml:6:15: originate prefix 10.244.2.0/25 overlaps the pod CIDR 10.244.2.0/24, which is announced already",
            "p.yaml:7:15: originate prefix 198.51.100.7/24 has host bits set (did you mean 198.51.100.0/24?)",
            "p.yaml:8:45: invalid community \"65000:70000\" (want ASN:VALUE, each 0 to 65535, or no_export, no_advertise, no_export_subconfed, graceful_shutdown, blackhole)",
            "p.yaml:14:26: unknown source \"pods\" (want pod_cidrs, originate, services, learned or any)",
            "p.yaml:15:32: invalid community \"x:1\" (want ASN:VALUE, each 0 to 65535, * for any, or no_export, no_advertise, no_export_subconfed, graceful_shutdown, blackhole)",
            "p.yaml:17:14: a rule that rejects cannot also set attributes",
            "p.yaml:18:25: prepend 40 out of range (0..=16)",
            "p.yaml:18:49: invalid large community \"1:2\" (want GLOBAL:LOCAL1:LOCAL2, each 0 to 4294967295)",
            "p.yaml:19:17: unknown action \"drop\" (want accept or reject)",
            "p.yaml:22:28: import rules see learned routes only: `source` is for export rules",
            "p.yaml:23:27: prepend applies to export rules only",
        ]
    );
}

#[test]
fn password_files_are_read_as_run_reads_them() {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch("keys");
    let put = |name: &str, content: &[u8], mode: u32| {
        let p = dir.join(name);
        std::fs::write(&p, content).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    };
    let empty = put("empty.key", b"\n", 0o600);
    let long = put("long.key", &[b'k'; 81], 0o600);
    let open = put("open.key", b"s3cret\n", 0o644);
    let good = put("good.key", b"s3cret\n", 0o600);
    let sub = dir.join("adir");
    std::fs::create_dir_all(&sub).unwrap();
    let peer = |i: usize, f: &std::path::Path| {
        format!(
            "  - {{ name: p{i}, address: 192.0.2.{}, asn: 65001, password_file: {} }}\n",
            i + 1,
            f.display()
        )
    };
    let text = format!(
        "{HEAD}peers:\n{}{}{}{}{}",
        peer(0, &dir.join("missing.key")),
        peer(1, &empty),
        peer(2, &long),
        peer(3, &sub),
        peer(4, &good)
    );
    let got = problems(&text);
    assert_eq!(got.len(), 4, "{got:#?}");
    assert!(
        got[0].starts_with("p.yaml:6:")
            && got[0].contains("cannot read password_file")
            && got[0].contains("No such file"),
        "{}",
        got[0]
    );
    assert!(
        got[1].starts_with("p.yaml:7:") && got[1].ends_with("is empty"),
        "{}",
        got[1]
    );
    assert!(
        got[2].starts_with("p.yaml:8:") && got[2].contains("81 bytes; TCP MD5 keys are at most 80"),
        "{}",
        got[2]
    );
    assert!(
        got[3].starts_with("p.yaml:9:") && got[3].ends_with("is a directory"),
        "{}",
        got[3]
    );
    // Readable by others: accepted, with a located warning.
    let cfg = parse_str(&format!("{HEAD}peers:\n{}", peer(0, &open)), "p.yaml", None).unwrap();
    assert_eq!(cfg.warnings.len(), 1);
    let w = cfg.warnings[0].to_string();
    assert!(
        w.starts_with("p.yaml:6:")
            && w.contains("warning: password_file")
            && w.contains("mode 0644"),
        "{w}"
    );
}

#[test]
fn default_routes_short_pod_cidrs_and_peers_inside_them_are_refused() {
    let text = "node:\n  asn: 65002\n  router_id: 192.0.2.2\n  pod_cidrs: [\"::/0\", 0.0.0.0/0, 10.0.0.0/8, 192.0.2.0/24, \"fd00::/32\"]\npeers:\n  - { name: tor, address: 192.0.2.1, asn: 65001 }\n";
    assert_eq!(
        problems(text),
        vec![
            "p.yaml:4:15: pod CIDR ::/0 is a default route: blackholing it would take the node off the network",
            "p.yaml:4:23: pod CIDR 0.0.0.0/0 is a default route: blackholing it would take the node off the network",
            "p.yaml:4:34: pod CIDR 10.0.0.0/8 is shorter than /16 (node.min_pod_cidr_len)",
            "p.yaml:4:60: pod CIDR fd00::/32 is shorter than /48 (node.min_pod_cidr_len)",
            "p.yaml:6:27: peer address 192.0.2.1 is inside the pod CIDR 192.0.2.0/24",
        ]
    );
    // The minimum is the operator's to lower.
    let ok = "node:\n  asn: 65002\n  router_id: 192.0.2.2\n  pod_cidrs: [10.0.0.0/8]\n  min_pod_cidr_len: { ipv4: 8 }\n";
    parse_str(ok, "p.yaml", None).unwrap();
}

#[test]
fn unsafe_names_and_socket_paths_are_refused() {
    let long = format!("/run/{}", "x".repeat(110));
    let text = format!(
        "node:\n  name: \"evil\\nlog line\"\n  asn: 65002\n  router_id: 192.0.2.2\n  pod_cidrs: [10.244.2.0/24]\npeers:\n  - {{ name: \"tor\\u001b[31m\", address: 192.0.2.1, asn: 65001 }}\n  - {{ name: \"a b\", address: 192.0.2.3, asn: 65001 }}\ncontrol: {{ socket: {long} }}\n"
    );
    let got = problems(&text);
    assert_eq!(got.len(), 4, "{got:#?}");
    assert!(
        got[0].starts_with("p.yaml:2:9: node name \"evil\\nlog line\": only letters"),
        "{}",
        got[0]
    );
    assert!(
        got[1].starts_with("p.yaml:7:13: peer name \"tor\\u{1b}[31m\": only letters"),
        "{}",
        got[1]
    );
    assert!(
        got[2].starts_with("p.yaml:8:13: peer name \"a b\""),
        "{}",
        got[2]
    );
    assert!(
        got[3].starts_with("p.yaml:9:20: control.socket is 115 bytes long"),
        "{}",
        got[3]
    );
    assert_eq!(
        problems(&format!("{HEAD}control: {{ socket: \"\" }}\n")),
        vec!["p.yaml:5:20: control.socket is empty"]
    );
}

#[test]
fn bfd_example_is_accepted_as_written_and_checked() {
    use petrel_config::BfdConfig;
    let peer = |bfd: &str| {
        format!("{HEAD}peers:\n  - name: tor\n    address: 192.0.2.1\n    asn: 65001\n    {bfd}\n")
    };
    // The issue's form, as written.
    let cfg = parse_str(
        &peer("bfd: { enabled: true, min_rx: 300, min_tx: 300, multiplier: 3, strict: false }"),
        "p.yaml",
        None,
    )
    .unwrap();
    assert_eq!(cfg.peers[0].bfd, Some(BfdConfig::default()));
    let cfg = parse_str(&peer("bfd: true"), "p.yaml", None).unwrap();
    assert_eq!(cfg.peers[0].bfd, Some(BfdConfig::default()));
    let cfg = parse_str(&peer("bfd: false"), "p.yaml", None).unwrap();
    assert_eq!(cfg.peers[0].bfd, None);
    let cfg = parse_str(
        &peer("bfd: { enabled: false, min_rx: 100 }"),
        "p.yaml",
        None,
    )
    .unwrap();
    assert_eq!(cfg.peers[0].bfd, None);
    let cfg = parse_str(&peer("bfd: { min_rx: 100, strict: true }"), "p.yaml", None).unwrap();
    assert_eq!(
        cfg.peers[0].bfd,
        Some(BfdConfig {
            min_rx: 100,
            strict: true,
            ..BfdConfig::default()
        })
    );
    assert_eq!(
        problems(&peer("bfd: { min_rx: 5, multiplier: 0 }")),
        vec![
            "p.yaml:9:20: bfd min_rx (ms) 5 out of range (10..=60000)",
            "p.yaml:9:35: bfd multiplier 0 out of range (1..=255)",
        ]
    );
}

#[test]
fn route_reflector_and_peer_range_example_is_accepted_as_written() {
    let text = "node: { asn: 65000, router_id: 198.18.0.1, pod_cidrs: [10.244.2.0/24] }\nbgp:\n  cluster_id: 198.18.0.1\npeer_ranges:\n  - { name: clients, range: 198.18.0.0/15, asn: 65000, route_reflector_client: true, max_peers: 2000, hold_time: 30 }\npeers:\n  - { name: rr2, address: 192.0.2.9, asn: 65000, route_reflector_client: false }\n";
    let cfg = parse_str(text, "p.yaml", None).unwrap();
    assert_eq!(cfg.bgp.cluster_id, Some("198.18.0.1".parse().unwrap()));
    let r = &cfg.peer_ranges[0];
    assert_eq!(
        (r.name.as_str(), r.range.to_string(), r.max_peers),
        ("clients", "198.18.0.0/15".into(), 2000)
    );
    assert!(r.template.route_reflector_client && r.template.passive);
    assert_eq!((r.template.asn, r.template.hold_time), (65000, 30));
    assert!(!cfg.peers[0].route_reflector_client);
}

#[test]
fn route_reflector_and_peer_range_problems() {
    let head = "node: { asn: 65000, router_id: 192.0.2.2, pod_cidrs: [10.244.2.0/24] }\n";
    assert_eq!(
        problems(&format!(
            "{head}peers:\n  - {{ name: x, address: 192.0.2.1, asn: 65001, route_reflector_client: true }}\n"
        )),
        [
            "p.yaml:3:72: route_reflector_client needs an iBGP peer: asn 65001 is not the node's 65000"
        ]
    );
    assert_eq!(
        problems(&format!("{head}bgp: {{ cluster_id: 2001:db8::1 }}\n")),
        ["p.yaml:2:20: invalid cluster_id (an IPv4 address) \"2001:db8::1\""]
    );
    let p = problems(&format!(
        "{head}peer_ranges:\n  - {{ name: a, range: 198.18.0.0/15, asn: 65000 }}\n  - {{ name: b, range: 198.19.0.0/16, asn: 65000, address: 192.0.2.1 }}\n  - {{ name: c, asn: 65000 }}\n  - {{ name: d, range: 10.244.0.0/16, asn: 65000 }}\n"
    ));
    assert_eq!(p.len(), 4, "{p:?}");
    assert!(
        p[0].contains("range 198.19.0.0/16 overlaps range 198.18.0.0/15 of \"a\""),
        "{p:?}"
    );
    assert!(
        p[1].contains("a peer range takes `range:`, not `address:`"),
        "{p:?}"
    );
    assert!(p[2].contains("a peer range needs `range:`"), "{p:?}");
    assert!(
        p[3].contains("range 10.244.0.0/16 overlaps the pod CIDR 10.244.2.0/24"),
        "{p:?}"
    );
    assert_eq!(
        problems(&format!(
            "{head}peers:\n  - {{ name: x, range: 198.18.0.0/15, asn: 65000 }}\n"
        )),
        [
            "p.yaml:3:5: a peer needs `address:`",
            "p.yaml:3:23: `range` belongs in peer_ranges, not peers"
        ]
    );
}

#[test]
fn mesh_forms_are_accepted_as_written() {
    let head = "node: { asn: 65000, router_id: 198.18.0.1, pod_cidrs: [10.244.2.0/24] }\n";
    let cfg = parse_str(
        &format!("{head}mesh: {{ from: kubernetes }}\n"),
        "p.yaml",
        None,
    )
    .unwrap();
    let m = cfg.mesh.expect("mesh");
    assert_eq!((m.template.asn, m.template.hold_time), (65000, 90));
    let cfg = parse_str(&format!("{head}mesh: none\n"), "p.yaml", None).unwrap();
    assert!(cfg.mesh.is_none());
    let cfg = parse_str(head, "p.yaml", None).unwrap();
    assert!(cfg.mesh.is_none(), "none by default");
    let cfg = parse_str(
        &format!("{head}mesh: {{ from: kubernetes, hold_time: 9, connect_retry: 1 }}\n"),
        "p.yaml",
        None,
    )
    .unwrap();
    let t = cfg.mesh.unwrap().template;
    assert_eq!((t.hold_time, t.keepalive, t.connect_retry), (9, 3, 1));
}

#[test]
fn mesh_problems() {
    let head = "node: { asn: 65000, router_id: 198.18.0.1, pod_cidrs: [10.244.2.0/24] }\n";
    assert_eq!(
        problems(&format!("{head}mesh: full\n")),
        ["p.yaml:2:7: mesh \"full\": none, or a table such as { from: kubernetes }"]
    );
    assert_eq!(
        problems(&format!("{head}mesh: {{ hold_time: 9 }}\n")),
        ["p.yaml:2:7: the mesh needs `from: kubernetes`"]
    );
    assert_eq!(
        problems(&format!(
            "{head}mesh: {{ from: etcd, asn: 65001, address: 192.0.2.1 }}\n"
        )),
        [
            "p.yaml:2:15: mesh from \"etcd\": only kubernetes (the cluster's Nodes)",
            "p.yaml:2:26: the mesh is iBGP: asn 65001 is not the node's 65000",
            "p.yaml:2:42: `address` does not belong in mesh: each Node's InternalIPs are its peers",
        ]
    );
    assert_eq!(
        problems(&format!(
            "{head}peers:\n  - {{ name: a, address: 192.0.2.1, asn: 65001, from: kubernetes }}\n  - {{ address: 192.0.2.2, asn: 65001 }}\n"
        )),
        [
            "p.yaml:3:54: `from` belongs in mesh",
            "p.yaml:4:5: a peer needs `name:`",
        ]
    );
}
