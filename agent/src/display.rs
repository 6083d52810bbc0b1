//! Human-readable tables for `petrel status` and `petrel routes`.

use std::fmt::Write;

use crate::state::AgentStatus;

/// Left-aligned columns separated by two spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{:<w$}  ", c, w = widths[i]);
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for r in rows {
        line(r.iter().map(|s| s.as_str()).collect(), &mut out);
    }
    out
}

pub fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d{h:02}h{m:02}m")
    } else if h > 0 {
        format!("{h}h{m:02}m{s:02}s")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

pub fn status(s: &AgentStatus) -> String {
    let mut out = String::new();
    let n = &s.node;
    let cidrs: Vec<String> = n.pod_cidrs.iter().map(|c| c.to_string()).collect();
    let _ = writeln!(
        out,
        "node {}AS{} router-id {}  pod CIDRs: {} ({})",
        n.name
            .as_ref()
            .map(|x| format!("{x}  "))
            .unwrap_or_default(),
        n.asn,
        n.router_id,
        if cidrs.is_empty() {
            "none".to_string()
        } else {
            cidrs.join(", ")
        },
        n.pod_cidrs_source
    );
    out.push('\n');
    let rows: Vec<Vec<String>> = s
        .peers
        .iter()
        .map(|p| {
            let since = match p.uptime_secs {
                Some(u) => format!("up {}", duration(u)),
                None => match &p.last_error {
                    Some(e) => format!("{} ({})", duration(p.state_secs), e),
                    None => duration(p.state_secs),
                },
            };
            vec![
                p.name.clone(),
                p.address.to_string(),
                p.asn.to_string(),
                p.state.clone(),
                format!(
                    "{}/{}/{}",
                    p.prefixes.received, p.prefixes.accepted, p.prefixes.advertised
                ),
                since,
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "PEER",
            "ADDRESS",
            "ASN",
            "STATE",
            "RCVD/ACPT/ADV",
            "UPTIME / LAST ERROR",
        ],
        &rows,
    ));
    out.push('\n');
    let f = &s.fib;
    let fw = |v: Option<bool>| match v {
        Some(true) => "on",
        Some(false) => "off",
        None => "?",
    };
    let _ = writeln!(
        out,
        "fib (protocol {}, table {}): {} routes installed, {} ECMP, {} own-CIDR routes, {} failed{}; forwarding ipv4 {} ipv6 {}",
        f.protocol,
        f.table,
        f.installed,
        f.ecmp,
        f.own_routes,
        f.failed,
        if f.synced {
            String::new()
        } else {
            format!(", {} stale awaiting sync", f.stale)
        },
        fw(f.forwarding_ipv4),
        fw(f.forwarding_ipv6),
    );
    for w in &s.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    out
}

pub fn routes(v: &serde_json::Value) -> String {
    let mut rows = Vec::new();
    let empty = Vec::new();
    for r in v["routes"].as_array().unwrap_or(&empty) {
        let prefix = r["prefix"].as_str().unwrap_or("?").to_string();
        let in_fib = if r["in_fib"].as_bool() == Some(true) {
            "yes"
        } else {
            "no"
        };
        for (i, p) in r["paths"].as_array().unwrap_or(&empty).iter().enumerate() {
            let nh = p["next_hop"].as_str().unwrap_or("?").to_string();
            let mark = if p["best"].as_bool() == Some(true) {
                "*>"
            } else if p["selected"].as_bool() == Some(true) {
                "*="
            } else {
                "  "
            };
            let mut why = p["lost_on"]
                .as_str()
                .map(|s| format!("lost: {s}"))
                .unwrap_or_default();
            if p["stale"].as_bool() == Some(true) {
                why = format!("stale {why}").trim().to_string();
            }
            rows.push(vec![
                if i == 0 {
                    prefix.clone()
                } else {
                    String::new()
                },
                mark.to_string(),
                nh,
                p["peer"].as_str().unwrap_or("").to_string(),
                p["as_path"].as_str().unwrap_or("").to_string(),
                p["local_pref"].to_string(),
                if i == 0 {
                    in_fib.to_string()
                } else {
                    String::new()
                },
                why,
            ]);
        }
    }
    let mut out = table(
        &[
            "PREFIX", "", "NEXT HOP", "PEER", "AS PATH", "LOCPRF", "FIB", "NOTE",
        ],
        &rows,
    );
    if let Some(o) = v["originated"].as_array() {
        let list: Vec<&str> = o.iter().filter_map(|x| x.as_str()).collect();
        let _ = writeln!(
            out,
            "\noriginated: {}",
            if list.is_empty() {
                "none".into()
            } else {
                list.join(", ")
            }
        );
    }
    out.push_str("*> best, *= also in the ECMP set\n");
    out
}
