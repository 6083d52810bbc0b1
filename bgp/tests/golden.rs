//! Golden event replay through the routing table (holo-style): each directory under
//! `tests/golden/` holds `events.jsonl` (a `config` line, then one `event` or `tick` per
//! line, each with the time `at` in milliseconds) and `output.jsonl`, what the table must
//! produce for each input line: the Loc-RIB changes for the FIB and what each peer is sent,
//! one readable string per item. Run with `BLESS=1` to rewrite the outputs after a change
//! that is meant; review the diff.

use std::fmt::Write;
use std::path::Path;

use petrel_bgp::policy::OutNextHop;
use petrel_bgp::rib::{LOCAL_PEER, RibChange, Selected};
use petrel_bgp::runtime::msg::RibEvent;
use petrel_bgp::runtime::table::{Outputs, PeerOut, Table, TableConfig};
use petrel_bgp::wire::{PathAttrs, community};
use serde_json::{Value, json};

fn attrs_text(a: &PathAttrs) -> String {
    let mut s = format!("[{}]", a.as_path);
    if let Some(lp) = a.local_pref {
        let _ = write!(s, " lp {lp}");
    }
    if let Some(m) = a.med {
        let _ = write!(s, " med {m}");
    }
    if !a.communities.is_empty() {
        let c: Vec<String> = a
            .communities
            .iter()
            .map(|c| community::format(*c))
            .collect();
        let _ = write!(s, " c {}", c.join(","));
    }
    if !a.large_communities.is_empty() {
        let c: Vec<String> = a
            .large_communities
            .iter()
            .map(|c| format!("{}:{}:{}", c[0], c[1], c[2]))
            .collect();
        let _ = write!(s, " lc {}", c.join(","));
    }
    for u in &a.unknown {
        let _ = write!(s, " attr{}/{:#x}", u.code, u.flags);
    }
    s
}

fn selected_text(s: &Selected) -> String {
    if s.peer == LOCAL_PEER {
        format!("local {} {}", s.source.name(), attrs_text(&s.attrs.attrs))
    } else {
        format!(
            "peer {} via {} {}",
            s.peer,
            s.attrs.next_hop,
            attrs_text(&s.attrs.attrs)
        )
    }
}

fn change_text(c: &RibChange) -> String {
    if c.selected.is_empty() {
        return format!("{}: gone", c.prefix);
    }
    let sel: Vec<String> = c.selected.iter().map(selected_text).collect();
    format!("{}: {}", c.prefix, sel.join(" | "))
}

fn peer_text(p: &PeerOut) -> String {
    match p {
        PeerOut::Reset { id, session } => format!("to {id}: session {session}"),
        PeerOut::Route {
            id,
            prefix,
            route: None,
        } => format!("to {id}: withdraw {prefix}"),
        PeerOut::Route {
            id,
            prefix,
            route: Some(r),
        } => {
            let nh = match r.next_hop {
                OutNextHop::Local => "self".to_string(),
                OutNextHop::Unchanged(nh) => nh.to_string(),
            };
            format!("to {id}: {prefix} nh {nh} {}", attrs_text(&r.attrs))
        }
        PeerOut::EndOfRib { id, afi } => format!("to {id}: end-of-rib {afi}"),
        PeerOut::MaxPrefix { id, limit } => format!("to {id}: max-prefix {limit}"),
    }
}

/// One output line; hash-ordered parts (a sweep over the table) are sorted, the order of
/// each peer's routes and markers is kept.
fn render(line: usize, o: &Outputs) -> Value {
    let mut fib: Vec<String> = o.fib.iter().map(change_text).collect();
    fib.sort();
    let mut peers = Vec::new();
    let mut run: Vec<String> = Vec::new();
    for p in &o.peers {
        let t = peer_text(p);
        if matches!(p, PeerOut::Route { .. }) {
            run.push(t);
        } else {
            run.sort();
            peers.append(&mut run);
            peers.push(t);
        }
    }
    run.sort();
    peers.append(&mut run);
    let mut v = json!({ "line": line });
    if !fib.is_empty() {
        v["fib"] = json!(fib);
    }
    if !peers.is_empty() {
        v["peers"] = json!(peers);
    }
    if o.synced {
        v["synced"] = json!(true);
    }
    v
}

fn replay(dir: &Path) -> String {
    let events = std::fs::read_to_string(dir.join("events.jsonl")).expect("events.jsonl");
    let mut table: Option<Table> = None;
    let mut out = String::new();
    for (i, line) in events.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() || line.starts_with("//") {
            continue;
        }
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("{}:{line_no}: {e}", dir.display()));
        let at = v["at"].as_u64().unwrap_or(0);
        let mut o = Outputs::default();
        if let Some(c) = v.get("config") {
            let cfg: TableConfig = serde_json::from_value(c.clone())
                .unwrap_or_else(|e| panic!("{}:{line_no}: config: {e}", dir.display()));
            table = Some(Table::new(cfg, at));
            continue;
        }
        let t = table.as_mut().expect("the first line is the config");
        if let Some(e) = v.get("event") {
            let ev: RibEvent = serde_json::from_value(e.clone())
                .unwrap_or_else(|e| panic!("{}:{line_no}: event: {e}", dir.display()));
            t.handle(at, ev, &mut o);
        } else if v.get("tick").is_some() {
            t.tick(at, &mut o);
        } else {
            panic!("{}:{line_no}: want config, event or tick", dir.display());
        }
        if !o.is_empty() {
            out.push_str(&serde_json::to_string(&render(line_no, &o)).unwrap());
            out.push('\n');
        }
    }
    out
}

#[test]
fn golden_replays() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut cases: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("events.jsonl").exists())
        .collect();
    cases.sort();
    assert!(cases.len() >= 5, "golden cases: {cases:?}");
    let bless = std::env::var_os("BLESS").is_some();
    let mut failed = Vec::new();
    for dir in cases {
        let got = replay(&dir);
        let path = dir.join("output.jsonl");
        if bless {
            std::fs::write(&path, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_default();
        if got != want {
            eprintln!("--- {} differs:\n{got}", dir.display());
            failed.push(dir);
        }
    }
    assert!(failed.is_empty(), "golden outputs differ: {failed:?}");
}
