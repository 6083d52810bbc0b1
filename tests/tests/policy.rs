//! The routing core against real routers: export rules (communities, large communities, MED,
//! prepend) as BIRD and FRR see them, an import rule by large community that moves the
//! kernel's route, NO_EXPORT honoured towards an eBGP peer, GRACEFUL_SHUTDOWN draining a
//! path before its session closes, and `originate` entries changed by SIGHUP without
//! touching the other routes.

use std::time::Duration;

use petrel_tests::bird::{self, Bird};
use petrel_tests::frr::Frr;
use petrel_tests::petrel::Petrel;
use petrel_tests::{Netns, TestDir, link, wait_gateways, wait_until_or};

const T: Duration = Duration::from_secs(30);

/// A node between two routers: BIRD (AS 65001, 198.51.100.1) and FRR (AS 65003,
/// 203.0.113.1).
struct Rack {
    dir: TestDir,
    n: Netns,
    rb: Netns,
    rf: Netns,
}

fn rack(label: &str) -> Rack {
    let dir = TestDir::new(label);
    let n = Netns::new("n");
    let rb = Netns::new("bird");
    let rf = Netns::new("frr");
    link(&rb, &["198.51.100.1/24"], &n, &["198.51.100.2/24"]);
    link(&rf, &["203.0.113.1/24"], &n, &["203.0.113.2/24"]);
    Rack { dir, n, rb, rf }
}

fn bird_conf(statics: &str, export: &str) -> String {
    format!(
        r#"
router id 198.51.100.1;
protocol device {{}}
protocol static s4 {{ ipv4; {statics} }}
protocol bgp petrel {{
  local 198.51.100.1 as 65001; neighbor 198.51.100.2 as 65002;
  hold time 9; graceful restart off; {fast}
  ipv4 {{ import all; export {export}; }};
}}
"#,
        fast = bird::FAST
    )
}

/// FRR (AS 65003) announcing `networks` (each "PREFIX [route-map NAME]", or a "neighbor
/// ..." line for the address family), with `extra` config lines.
fn frr_conf(networks: &[&str], extra: &str) -> String {
    frr_conf_as(65003, 65002, networks, extra)
}

fn frr_conf_as(asn: u32, petrel_asn: u32, networks: &[&str], extra: &str) -> String {
    let nets: String = networks
        .iter()
        .map(|n| {
            if n.starts_with("neighbor") {
                format!("  {n}\n")
            } else {
                format!("  network {n}\n")
            }
        })
        .collect();
    format!(
        r#"frr defaults traditional
hostname frr
bgp route-map delay-timer 1
{extra}
router bgp {asn}
 bgp router-id 203.0.113.1
 no bgp ebgp-requires-policy
 no bgp network import-check
 bgp graceful-restart-disable
 timers bgp 1 3
 neighbor 203.0.113.2 remote-as {petrel_asn}
 neighbor 203.0.113.2 timers connect 1
 neighbor 203.0.113.2 advertisement-interval 0
 address-family ipv4 unicast
{nets} exit-address-family
"#
    )
}

fn petrel_yaml(extra_bird: &str, extra_frr: &str, tail: &str) -> String {
    petrel_yaml_frr_as(65003, extra_bird, extra_frr, tail)
}

fn petrel_yaml_frr_as(frr_asn: u32, extra_bird: &str, extra_frr: &str, tail: &str) -> String {
    format!(
        r#"node: {{ asn: 65002, router_id: 198.51.100.2, pod_cidrs: [10.244.2.0/24] }}
peers:
  - name: bird
    address: 198.51.100.1
    asn: 65001
    hold_time: 9
    connect_retry: 1
    import: {{ prefixes: [{{ prefix: 0.0.0.0/0, le: 32 }}] }}
{extra_bird}
  - name: frr
    address: 203.0.113.1
    asn: {frr_asn}
    hold_time: 3
    connect_retry: 1
{extra_frr}
{tail}"#
    )
}

#[test]
fn export_rules_are_seen_at_bird_and_frr() {
    let r = rack("export");
    let b = Bird::start(&r.rb, &r.dir, "bird", &bird_conf("", "none"));
    let f = Frr::start(&r.rf, &r.dir, "frr", &frr_conf(&[], ""));
    // The issue's export rule, towards both routers; an `originate` entry with its own
    // community; FRR gets the pod CIDRs with a community only.
    let rule = "    export:\n      - match: { source: pod_cidrs }\n        set: { communities: [\"65000:100\"], large_communities: [\"65000:1:2\"], med: 50, prepend: 2 }";
    let yaml = petrel_yaml(
        rule,
        &format!("{rule}\n    import: {{ prefixes: [{{ prefix: 0.0.0.0/0, le: 32 }}] }}"),
        "originate:\n  - { prefix: 198.19.0.0/24, communities: [\"65000:300\"] }\n",
    );
    let p = Petrel::start(&r.n, &r.dir, "petrel", &yaml);
    b.wait_established("petrel", T);
    let at_bird = wait_until_or(
        "BIRD holds the pod CIDR with the set attributes",
        T,
        || Some(b.route("10.244.2.0/24")).filter(|r| r.contains("BGP.community")),
        || b.birdc("show route all"),
    );
    assert!(
        at_bird.contains("BGP.as_path: 65002 65002 65002"),
        "{at_bird}"
    );
    assert!(at_bird.contains("BGP.med: 50"), "{at_bird}");
    assert!(at_bird.contains("BGP.community: (65000,100)"), "{at_bird}");
    assert!(
        at_bird.contains("BGP.large_community: (65000, 1, 2)"),
        "{at_bird}"
    );
    let orig = b.route("198.19.0.0/24");
    assert!(orig.contains("BGP.community: (65000,300)"), "{orig}");
    assert!(
        orig.contains("BGP.as_path: 65002\n"),
        "no rule for originate: {orig}"
    );

    wait_until_or(
        "FRR holds the pod CIDR",
        T,
        || {
            f.try_vtysh("show bgp ipv4 unicast 10.244.2.0/24 json")
                .filter(|j| j.contains("65000:100"))
        },
        || f.vtysh("show bgp ipv4 unicast"),
    );
    let j: serde_json::Value =
        serde_json::from_str(&f.vtysh("show bgp ipv4 unicast 10.244.2.0/24 json")).unwrap();
    let path = &j["paths"][0];
    assert_eq!(path["aspath"]["string"], "65002 65002 65002", "{path}");
    assert_eq!(path["metric"], 50, "{path}");
    assert_eq!(path["community"]["string"], "65000:100", "{path}");
    assert_eq!(path["largeCommunity"]["string"], "65000:1:2", "{path}");

    // Status counts what each peer was given, by source.
    let st = p.peer("bird");
    assert_eq!(
        st["prefixes"]["advertised_by_source"]["pod_cidrs"], 1,
        "{st}"
    );
    assert_eq!(
        st["prefixes"]["advertised_by_source"]["originate"], 1,
        "{st}"
    );
    assert_eq!(st["prefixes"]["advertised"], 2, "{st}");
    // Routes show the node's own routes with their source and communities.
    let own = p.route("10.244.2.0/24").unwrap();
    assert_eq!(own["paths"][0]["source"], "pod_cidrs", "{own}");
    let o = p.route("198.19.0.0/24").unwrap();
    assert_eq!(o["paths"][0]["source"], "originate", "{o}");
    assert_eq!(o["paths"][0]["communities"][0], "65000:300", "{o}");
    drop((p, b, f));
}

#[test]
fn import_rule_by_large_community_moves_the_kernel_route() {
    let r = rack("import-lc");
    let b = Bird::start(
        &r.rb,
        &r.dir,
        "bird",
        &bird_conf("route 198.18.0.0/16 blackhole;", "all"),
    );
    let f = Frr::start(
        &r.rf,
        &r.dir,
        "frr",
        &frr_conf(
            &["198.18.0.0/16 route-map tag"],
            "route-map tag permit 10\n",
        ),
    );
    let rules = "    import:\n      prefixes: [{ prefix: 0.0.0.0/0, le: 32 }]\n      rules:\n        - match: { communities: [\"65001:666\"] }\n          action: reject\n        - match: { large_communities: [\"65001:10:*\"] }\n          set: { local_pref: 200 }";
    let yaml = petrel_yaml("", rules, "");
    let p = Petrel::start(&r.n, &r.dir, "petrel", &yaml);
    p.wait_established("bird", T);
    p.wait_established("frr", T);
    // Equal paths: ECMP.
    wait_gateways(&r.n, "198.18.0.0/16", &["198.51.100.1", "203.0.113.1"], T);
    // FRR tags its path with a large community: local preference 200, FRR alone.
    f.vtysh_conf(&["route-map tag permit 10", "set large-community 65001:10:7"]);
    f.vtysh("clear bgp * soft out");
    let took = wait_gateways(&r.n, "198.18.0.0/16", &["203.0.113.1"], T);
    eprintln!("kernel route moved to FRR alone after {took:?}");
    let route = p.route("198.18.0.0/16").unwrap();
    let best = route["paths"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["best"] == true)
        .unwrap()
        .clone();
    assert_eq!(best["peer"], "frr", "{route}");
    assert_eq!(best["local_pref"], 200, "{route}");
    assert_eq!(best["large_communities"][0], "65001:10:7", "{route}");
    // The reject rule: FRR's path with 65001:666 leaves, BIRD's takes over.
    f.vtysh_conf(&["route-map tag permit 10", "set community 65001:666"]);
    f.vtysh("clear bgp * soft out");
    wait_gateways(&r.n, "198.18.0.0/16", &["198.51.100.1"], T);
    let route = p.route("198.18.0.0/16").unwrap();
    let frr_path = route["paths"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["peer"] == "frr")
        .unwrap()
        .clone();
    assert_eq!(frr_path["accepted"], false, "{route}");
    assert_eq!(frr_path["refused"], "rejected by an import rule", "{route}");
    assert!(
        p.peer("frr")["prefixes"]["refused"]["rejected_by_rule"].as_u64() == Some(1),
        "{}",
        p.peer("frr")
    );
    drop((p, b, f));
}

#[test]
fn no_export_from_frr_is_not_sent_to_an_ebgp_peer() {
    let r = rack("no-export");
    let b = Bird::start(&r.rb, &r.dir, "bird", &bird_conf("", "none"));
    // FRR is inside the node's AS (iBGP): it sends NO_EXPORT routes to Petrel, and it is
    // Petrel's job not to pass them out of the AS.
    let f = Frr::start(
        &r.rf,
        &r.dir,
        "frr",
        &frr_conf_as(
            65002,
            65002,
            &["198.18.1.0/24 route-map noexp", "198.18.2.0/24"],
            "route-map noexp permit 10\n set community no-export\n",
        ),
    );
    // Petrel passes learned routes on to BIRD (eBGP).
    let yaml = petrel_yaml_frr_as(
        65002,
        "    export:\n      - match: { source: learned }",
        "",
        "",
    );
    let p = Petrel::start(&r.n, &r.dir, "petrel", &yaml);
    p.wait_established("frr", T);
    wait_until_or(
        "BIRD holds the route without NO_EXPORT, through Petrel",
        T,
        || b.has_route("198.18.2.0/24").then_some(()),
        || b.birdc("show route all"),
    );
    let via = b.route("198.18.2.0/24");
    assert!(via.contains("BGP.as_path: 65002\n"), "{via}");
    // Petrel holds the NO_EXPORT one (it is in its FIB) and does not pass it on.
    let held = wait_until_or(
        "Petrel holds the NO_EXPORT route",
        T,
        || p.route("198.18.1.0/24"),
        || p.routes().to_string(),
    );
    assert_eq!(held["paths"][0]["communities"][0], "no_export", "{held}");
    assert_eq!(held["in_fib"], true, "{held}");
    assert!(
        !b.has_route("198.18.1.0/24"),
        "{}",
        b.birdc("show route all")
    );
    drop((p, b, f));
}

#[test]
fn graceful_shutdown_from_bird_moves_the_route_before_the_session_closes() {
    let r = rack("gshut");
    let b = Bird::start(
        &r.rb,
        &r.dir,
        "bird",
        &bird_conf("route 198.18.0.0/16 blackhole;", "all"),
    );
    let f = Frr::start(&r.rf, &r.dir, "frr", &frr_conf(&["198.18.0.0/16"], ""));
    let yaml = petrel_yaml(
        "",
        "    import: { prefixes: [{ prefix: 0.0.0.0/0, le: 32 }] }",
        "",
    );
    let p = Petrel::start(&r.n, &r.dir, "petrel", &yaml);
    p.wait_established("bird", T);
    wait_gateways(&r.n, "198.18.0.0/16", &["198.51.100.1", "203.0.113.1"], T);
    // BIRD's operator starts maintenance (RFC 8326): GRACEFUL_SHUTDOWN on what it sends.
    b.reconfigure(&bird_conf(
        "route 198.18.0.0/16 blackhole;",
        "filter { bgp_community.add((65535,0)); accept; }",
    ));
    let took = wait_gateways(&r.n, "198.18.0.0/16", &["203.0.113.1"], T);
    eprintln!("traffic left BIRD's path {took:?} after the GRACEFUL_SHUTDOWN");
    // ... while BIRD's session is still up and its path still held, at preference 0.
    assert_eq!(b.bgp_state("petrel"), "Established");
    assert_eq!(p.peer_state("bird"), "Established");
    let route = p.route("198.18.0.0/16").unwrap();
    let bird_path = route["paths"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["peer"] == "bird")
        .unwrap()
        .clone();
    assert_eq!(bird_path["local_pref"], 0, "{route}");
    assert_eq!(bird_path["lost_on"], "higher local preference", "{route}");
    // Then the session goes: nothing changes for the traffic.
    b.birdc("disable petrel");
    wait_until_or(
        "the session down",
        T,
        || (p.peer_state("bird") != "Established").then_some(()),
        || p.peer("bird").to_string(),
    );
    wait_gateways(&r.n, "198.18.0.0/16", &["203.0.113.1"], T);
    drop((p, b, f));
}

#[test]
fn originate_entries_follow_sighup_without_touching_the_other_routes() {
    let r = rack("originate");
    let b = Bird::start(&r.rb, &r.dir, "bird", &bird_conf("", "none"));
    let f = Frr::start(&r.rf, &r.dir, "frr", &frr_conf(&[], ""));
    let entries = |list: &str| petrel_yaml("", "", &format!("originate:\n{list}"));
    let p = Petrel::start(
        &r.n,
        &r.dir,
        "petrel",
        &entries(
            "  - { prefix: 198.19.0.0/24, communities: [\"65000:300\"] }\n  - { prefix: 192.0.2.0/24 }\n",
        ),
    );
    b.wait_established("petrel", T);
    wait_until_or(
        "BIRD holds both entries and the pod CIDR",
        T,
        || {
            (b.has_route("198.19.0.0/24")
                && b.has_route("192.0.2.0/24")
                && b.has_route("10.244.2.0/24"))
            .then_some(())
        },
        || b.birdc("show route all"),
    );
    // The pod CIDR's route at BIRD, with the time BIRD learned it: it must not be sent again.
    let pod_before = b.route("10.244.2.0/24");
    let updates_before = p.peer("bird")["updates_out"].as_u64().unwrap();
    // One entry changes its community, one goes, one comes.
    std::fs::write(
        &p.config,
        entries(
            "  - { prefix: 198.19.0.0/24, communities: [\"65000:301\"] }\n  - { prefix: 203.0.113.128/25 }\n",
        ),
    )
    .unwrap();
    p.daemon.hup();
    wait_until_or(
        "BIRD follows the reload",
        T,
        || {
            (b.route("198.19.0.0/24").contains("(65000,301)")
                && !b.has_route("192.0.2.0/24")
                && b.has_route("203.0.113.128/25"))
            .then_some(())
        },
        || b.birdc("show route all"),
    );
    assert_eq!(
        b.route("10.244.2.0/24"),
        pod_before,
        "the pod CIDR was sent again"
    );
    // Three changes: a withdrawal and two announcements (each its own attribute set).
    let updates = p.peer("bird")["updates_out"].as_u64().unwrap() - updates_before;
    assert!(updates <= 3, "{updates} UPDATEs for three changes");
    assert_eq!(p.peer("bird")["established_count"], 1);
    let st = p.status();
    assert_eq!(
        st["node"]["originated"]["originate"],
        serde_json::json!(["198.19.0.0/24", "203.0.113.128/25"]),
        "{st}"
    );
    drop((p, b, f));
}
