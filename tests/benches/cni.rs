//! CNI ADD and DEL latency and throughput: petrel-cni (+ petrel-ipam) beside the reference
//! ptp (+ host-local), in one run, in a throwaway "host" namespace (ptp turns on
//! ip_forward where it runs). Plugins are started from a thread that joined the host
//! namespace, as a runtime living there starts them. Sequential calls (median, p99), then 50 and 200 at once
//! (median, p99, calls per second); every ADD's address is checked for duplicates.
//!
//!     bench/cni-latency.sh            (builds the plugins in release, then runs this)
//!
//! Environment: ROUNDS (sequential calls, default 100).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use petrel_tests::cni::{self, netns_path};
use petrel_tests::{Netns, TestDir, link};
use serde_json::{Value, json};

struct Plugin {
    name: &'static str,
    bin: String,
    conf: String,
}

fn stats(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let med = ms(v[v.len() / 2]);
    let p99 = ms(v[((v.len() as f64 * 0.99).ceil() as usize)
        .saturating_sub(1)
        .min(v.len() - 1)]);
    (med, p99)
}

fn call(host: &Netns, p: &Plugin, cmd: &str, id: &str, pod: &Netns) -> (Duration, Option<String>) {
    let t = Instant::now();
    let c = cni::run_direct(host, &p.bin, cmd, id, &netns_path(pod), "eth0", &p.conf);
    let d = t.elapsed();
    assert!(c.ok, "{} {cmd} {id}: {} {}", p.name, c.stdout, c.stderr);
    let addr = (cmd == "ADD").then(|| {
        let v: Value = c.json();
        v["ips"][0]["address"]
            .as_str()
            .unwrap_or("")
            .split('/')
            .next()
            .unwrap_or("")
            .to_string()
    });
    (d, addr)
}

/// ADD then DEL on `pods`, `par` at a time; returns the latencies and the wall times.
fn batch(
    host: &Netns,
    p: &Plugin,
    pods: &[Netns],
    par: usize,
    tag: &str,
) -> (Vec<Duration>, Vec<Duration>, Duration, Duration, usize) {
    let mut adds = Vec::new();
    let mut dels = Vec::new();
    let mut addrs = Vec::new();
    let mut wall_add = Duration::ZERO;
    let mut wall_del = Duration::ZERO;
    for chunk in pods.chunks(par) {
        let t = Instant::now();
        let res: Vec<(Duration, Option<String>)> = std::thread::scope(|s| {
            let hs: Vec<_> = chunk
                .iter()
                .enumerate()
                .map(|(i, pod)| s.spawn(move || call(host, p, "ADD", &format!("{tag}-{i}"), pod)))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        wall_add += t.elapsed();
        for (d, a) in res {
            adds.push(d);
            addrs.extend(a);
        }
        let t = Instant::now();
        let res: Vec<(Duration, Option<String>)> = std::thread::scope(|s| {
            let hs: Vec<_> = chunk
                .iter()
                .enumerate()
                .map(|(i, pod)| s.spawn(move || call(host, p, "DEL", &format!("{tag}-{i}"), pod)))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        wall_del += t.elapsed();
        dels.extend(res.into_iter().map(|(d, _)| d));
    }
    let uniq: HashSet<&String> = addrs.iter().collect();
    let dups = addrs.len() - uniq.len();
    (adds, dels, wall_add, wall_del, dups)
}

fn main() {
    petrel_tests::require_root();
    petrel_tests::require_tool("/usr/lib/cni/ptp", "containernetworking-plugins");
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(100);
    let dir = TestDir::new("cnibench");
    let up = Netns::new("up");
    let host = Netns::new("host");
    link(&up, &["203.0.113.1/24"], &host, &["203.0.113.2/24"]);
    host.ip("route add default via 203.0.113.1");
    let pods: Vec<Netns> = (0..200).map(|i| Netns::new(&format!("b{i}"))).collect();
    let plugins = [
        Plugin {
            name: "petrel",
            bin: petrel_tests::bin("petrel-cni").display().to_string(),
            conf: json!({ "cniVersion": "1.0.0", "name": "petrelnet", "type": "petrel-cni",
                          "ipam": { "type": "petrel-ipam", "pod_cidrs": ["10.251.0.0/16"], "data_dir": dir.file("petrel-ipam") } })
            .to_string(),
        },
        Plugin {
            name: "ptp",
            bin: "/usr/lib/cni/ptp".into(),
            conf: json!({ "cniVersion": "1.0.0", "name": "ptpnet", "type": "ptp", "ipMasq": false,
                          "ipam": { "type": "host-local", "subnet": "10.250.0.0/16", "dataDir": dir.file("host-local") } })
            .to_string(),
        },
    ];
    println!("{rounds} sequential ADD+DEL, then 50 and 200 in parallel; times in ms");
    println!(
        "{:<8} {:>16} {:>16} {:>28} {:>28}",
        "plugin",
        "seq ADD med/p99",
        "seq DEL med/p99",
        "par50 ADD med/p99 per-s",
        "par200 ADD med/p99 per-s"
    );
    let mut summary = Vec::new();
    for p in &plugins {
        // Warm the page cache and the plugin binaries.
        batch(&host, p, &pods[..5], 1, "warm");
        let (sa, sd, _, _, d1) = batch(&host, p, &pods[..rounds.min(200)], 1, "seq");
        let (pa, pd, wa, wd, d2) = batch(&host, p, &pods[..50], 50, "p50");
        let (qa, qd, qwa, qwd, d3) = batch(&host, p, &pods[..200], 200, "p200");
        let (sam, sap) = stats(sa);
        let (sdm, sdp) = stats(sd);
        let (pam, pap) = stats(pa);
        let (qam, qap) = stats(qa);
        let (pdm, _) = stats(pd);
        let (qdm, _) = stats(qd);
        let r50 = 50.0 / wa.as_secs_f64();
        let r200 = 200.0 / qwa.as_secs_f64();
        let r50d = 50.0 / wd.as_secs_f64();
        let r200d = 200.0 / qwd.as_secs_f64();
        println!(
            "{:<8} {:>7.2}/{:<8.2} {:>7.2}/{:<8.2} {:>8.2}/{:<8.2} {:>8.0}/s   {:>8.2}/{:<8.2} {:>8.0}/s",
            p.name, sam, sap, sdm, sdp, pam, pap, r50, qam, qap, r200
        );
        println!(
            "{:<8} parallel DEL: 50 at once med {pdm:.2} ms, {r50d:.0}/s; 200 at once med {qdm:.2} ms, {r200d:.0}/s; duplicate addresses: {}",
            "",
            d1 + d2 + d3
        );
        summary.push((sam, sdm, r50, r200));
    }
    let (pe, pt) = (summary[0], summary[1]);
    println!(
        "ratio ptp/petrel: seq ADD median {:.2}, seq DEL median {:.2}; parallel throughput petrel/ptp: 50 {:.2}, 200 {:.2}",
        pt.0 / pe.0,
        pt.1 / pe.1,
        pe.2 / pt.2,
        pe.3 / pt.3
    );
}
