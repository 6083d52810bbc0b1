//! Human-readable tables for `petrel status` and `petrel routes`.

use std::fmt::Write;

use petrel_control::{AgentStatus, BySource, RoutesAnswer};

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

/// `pod_cidrs 1, originate 2`: the non-zero counts.
fn sources(b: &BySource) -> String {
    let parts: Vec<String> = [
        ("pod_cidrs", b.pod_cidrs),
        ("services", b.services),
        ("originate", b.originate),
        ("learned", b.learned),
    ]
    .iter()
    .filter(|(_, n)| *n > 0)
    .map(|(s, n)| format!("{s} {n}"))
    .collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}

pub fn status(s: &AgentStatus) -> String {
    let mut out = String::new();
    let n = &s.node;
    let cidrs: Vec<String> = n.pod_cidrs.iter().map(|c| c.to_string()).collect();
    for (source, list) in &n.originated {
        if source != "pod_cidrs" {
            let l: Vec<String> = list.iter().map(|c| c.to_string()).collect();
            let _ = writeln!(out, "{source}: {}", l.join(", "));
        }
    }
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
                sources(&p.prefixes.advertised_by_source),
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
            "ADVERTISED BY SOURCE",
            "UPTIME / LAST ERROR",
        ],
        &rows,
    ));
    let bfd: Vec<Vec<String>> = s
        .peers
        .iter()
        .filter_map(|p| p.bfd.as_ref().map(|b| (p, b)))
        .map(|(p, b)| {
            vec![
                p.name.clone(),
                if b.multihop {
                    format!("{} (multihop)", b.state)
                } else {
                    b.state.clone()
                },
                format!("{}/{}/{} ms", b.tx_ms, b.rx_ms, b.detection_ms),
                format!("{:#x}", b.remote_discriminator),
                b.remote_control_plane_independent.to_string(),
                b.flaps.to_string(),
                b.last_down.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    if !bfd.is_empty() {
        out.push('\n');
        out.push_str(&table(
            &[
                "BFD PEER",
                "STATE",
                "TX/RX/DETECT",
                "REMOTE DISCR",
                "REMOTE C",
                "FLAPS",
                "LAST DOWN",
            ],
            &bfd,
        ));
    }
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

pub fn routes(v: &RoutesAnswer) -> String {
    let mut rows = Vec::new();
    for r in &v.routes {
        let prefix = r.prefix.to_string();
        let in_fib = if r.in_fib { "yes" } else { "no" };
        for (i, p) in r.paths.iter().enumerate() {
            let nh = p.next_hop.clone().unwrap_or_else(|| "-".into());
            let mark = if p.best {
                "*>"
            } else if p.selected {
                "*="
            } else {
                "  "
            };
            let mut notes = Vec::new();
            if p.stale {
                notes.push("stale".to_string());
            }
            match (&p.refused, &p.unresolved, &p.lost_on) {
                (Some(why), _, _) => notes.push(format!("refused: {why}")),
                (None, Some(why), _) => notes.push(format!("unresolved: {why}")),
                (None, None, Some(why)) => notes.push(format!("lost: {why}")),
                _ => {}
            }
            if let Some(via) = p.resolved_via {
                notes.push(format!(
                    "via {} through {via} (cost {})",
                    p.gateways.join(","),
                    p.igp_cost
                ));
            }
            let mut comms = p.communities.clone();
            comms.extend(p.large_communities.iter().cloned());
            comms.extend(p.extended_communities.iter().cloned());
            rows.push(vec![
                if i == 0 {
                    prefix.clone()
                } else {
                    String::new()
                },
                mark.to_string(),
                nh,
                if p.source == "learned" {
                    p.peer.clone()
                } else {
                    format!("({})", p.source)
                },
                p.as_path.clone(),
                p.local_pref.to_string(),
                comms.join(" "),
                if i == 0 {
                    in_fib.to_string()
                } else {
                    String::new()
                },
                notes.join("; "),
            ]);
        }
    }
    let mut out = table(
        &[
            "PREFIX",
            "",
            "NEXT HOP",
            "FROM",
            "AS PATH",
            "LOCPRF",
            "COMMUNITIES",
            "FIB",
            "NOTE",
        ],
        &rows,
    );
    let list: Vec<String> = v.originated.iter().map(|p| p.to_string()).collect();
    let _ = writeln!(
        out,
        "\noriginated: {}",
        if list.is_empty() {
            "none".into()
        } else {
            list.join(", ")
        }
    );
    out.push_str("*> best, *= also in the ECMP set\n");
    out
}
