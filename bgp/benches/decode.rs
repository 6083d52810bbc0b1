//! Decode speed of the wire layer, in prefixes per second, beside netgauze-bgp-pkt's own
//! decoder on the same bytes (the anchor: our layer adds framing, RFC 7606 checks, host-bit
//! clearing and the conversion to our types on top of it).
//!
//! Input: PETREL_BENCH_PREFIXES (default 1,000,000) IPv4 prefixes shaped like an Internet
//! table (mostly /24, some shorter, a few /32), 1,000 per attribute set (AS path of 3 to 5
//! ASes, ORIGIN, NEXT_HOP, MED, one community), packed into UPDATEs of at most 4096 bytes by
//! our encoder, as a peer like BIRD sends them.
//!
//!     cargo bench -p petrel-bgp --bench decode

use std::net::Ipv4Addr;
use std::time::Instant;

use ipnet::{IpNet, Ipv4Net};
use netgauze_bgp_pkt::BgpMessage;
use netgauze_bgp_pkt::wire::deserializer::BgpParsingContext;
use netgauze_parse_utils::reader::SliceReader;
use netgauze_parse_utils::traits::ParseFromWithOneInput;
use petrel_bgp::wire::{self, AsPath, Codec, Message, NextHop, PathAttrs, Reach, UpdateMsg};

fn prefixes(n: usize) -> Vec<IpNet> {
    // xorshift: deterministic, no dependency.
    let mut s: u64 = 0x9e3779b97f4a7c15;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let lengths = [24u8, 24, 24, 24, 24, 24, 23, 22, 22, 21, 20, 19, 18, 16, 32];
    let mut seen = std::collections::HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let r = next();
        let len = lengths[(r % lengths.len() as u64) as usize];
        let first = 1 + (r >> 8) % 223;
        if first == 10 || first == 127 {
            continue;
        }
        let addr = ((first as u32) << 24) | ((r >> 16) as u32 & 0x00ff_ffff);
        let net = Ipv4Net::new(Ipv4Addr::from(addr), len).unwrap().trunc();
        if seen.insert(net) {
            out.push(IpNet::V4(net));
        }
    }
    out
}

fn main() {
    let n: usize = std::env::var("PETREL_BENCH_PREFIXES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let codec = Codec {
        asn4: true,
        extended_message: false,
        ibgp: false,
    };
    let all = prefixes(n);
    let mut msgs: Vec<Vec<u8>> = Vec::new();
    for (i, chunk) in all.chunks(1000).enumerate() {
        let i = i as u32;
        let u = UpdateMsg {
            reach: vec![Reach {
                afi: wire::Afi::Ipv4,
                next_hop: NextHop::V4(Ipv4Addr::new(192, 0, 2, 1)),
                prefixes: chunk.to_vec(),
            }],
            attrs: PathAttrs {
                as_path: AsPath::sequence(
                    (0..3 + i % 3)
                        .map(|k| 64512 + ((i * 7 + k) % 1000))
                        .collect(),
                ),
                med: Some(i % 100),
                communities: vec![(65001 << 16) | (i % 500)],
                ..Default::default()
            },
            ..Default::default()
        };
        msgs.extend(wire::encode_updates(&u, &codec));
    }
    let bytes: usize = msgs.iter().map(|m| m.len()).sum();
    println!(
        "input: {n} prefixes in {} UPDATEs, {:.1} MB",
        msgs.len(),
        bytes as f64 / 1e6
    );

    let rounds = 5;
    let mut best_ng = f64::MAX;
    let mut best_ours = f64::MAX;
    for _ in 0..rounds {
        // The anchor: netgauze alone, to its own typed message.
        let t = Instant::now();
        let mut count = 0usize;
        for m in &msgs {
            let mut ctx = BgpParsingContext::default();
            if let Ok(BgpMessage::Update(u)) = BgpMessage::parse(&mut SliceReader::new(m), &mut ctx)
            {
                count += u.nlri().len();
            }
        }
        assert_eq!(count, n);
        best_ng = best_ng.min(t.elapsed().as_secs_f64());

        // Ours: framing, size limits, RFC 7606, host bits, our types.
        let t = Instant::now();
        let mut count = 0usize;
        for m in &msgs {
            let len = wire::frame(m, &codec).unwrap().unwrap();
            if let Ok(Message::Update(u)) = wire::decode(&m[..len], &codec) {
                count += u.announced();
            }
        }
        assert_eq!(count, n);
        best_ours = best_ours.min(t.elapsed().as_secs_f64());
    }
    let rate = |s: f64| n as f64 / s / 1e6;
    println!(
        "netgauze-bgp-pkt alone : {:>7.1} M prefixes/s ({:.3} s, best of {rounds})",
        rate(best_ng),
        best_ng
    );
    println!(
        "petrel wire::decode    : {:>7.1} M prefixes/s ({:.3} s, best of {rounds})",
        rate(best_ours),
        best_ours
    );
    println!("ratio petrel/netgauze  : {:.2}", best_ng / best_ours);
}
