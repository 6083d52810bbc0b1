//! UPDATE (RFC 4271 4.3, RFC 4760 for MP_REACH/MP_UNREACH) with RFC 7606 error handling.
//!
//! Decoding walks the message once. The framing (field lengths, each attribute's header, the
//! prefixes of the withdrawn, NLRI and MP_(UN)REACH fields) is ours, because RFC 7606 needs it
//! even when an attribute inside is broken: to withdraw the routes of a message whose
//! attributes cannot be trusted we must still find its prefixes. Each path attribute is then
//! decoded by netgauze on its own, so a failure names exactly one attribute, and the RFC 7606
//! table in [`action_for`] says what it costs: the attribute (discard), the routes
//! (treat-as-withdraw) or the session (a NOTIFICATION).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use netgauze_bgp_pkt::BgpMessage;
use netgauze_bgp_pkt::community::{Community, LargeCommunity};
use netgauze_bgp_pkt::nlri::{Ipv4Unicast, Ipv4UnicastAddress, Ipv6Unicast, Ipv6UnicastAddress};
use netgauze_bgp_pkt::path_attribute::{
    Aggregator, As2PathSegment, As4PathSegment, AsPathSegmentType, ClusterId, ClusterList,
    Communities, LargeCommunities, LocalPreference, MpReach, MpUnreach, MultiExitDiscriminator,
    NextHop as NgNextHop, Origin as NgOrigin, Originator, PathAttribute, PathAttributeValue,
    UnknownAttribute,
};
use netgauze_bgp_pkt::update::BgpUpdateMessage;
use netgauze_parse_utils::WritablePdu;
use netgauze_parse_utils::reader::SliceReader;
use netgauze_parse_utils::traits::ParseFromWithOneInput;

use super::{AS_TRANS, Afi, Codec, DecodeError, HEADER_LEN, codes, nlri};

/// Path attribute type codes.
pub mod attr {
    pub const ORIGIN: u8 = 1;
    pub const AS_PATH: u8 = 2;
    pub const NEXT_HOP: u8 = 3;
    pub const MED: u8 = 4;
    pub const LOCAL_PREF: u8 = 5;
    pub const ATOMIC_AGGREGATE: u8 = 6;
    pub const AGGREGATOR: u8 = 7;
    pub const COMMUNITIES: u8 = 8;
    pub const ORIGINATOR_ID: u8 = 9;
    pub const CLUSTER_LIST: u8 = 10;
    pub const MP_REACH: u8 = 14;
    pub const MP_UNREACH: u8 = 15;
    pub const EXT_COMMUNITIES: u8 = 16;
    pub const AS4_PATH: u8 = 17;
    pub const AS4_AGGREGATOR: u8 = 18;
    pub const IPV6_EXT_COMMUNITIES: u8 = 25;
    pub const LARGE_COMMUNITIES: u8 = 32;
}

const FLAG_OPTIONAL: u8 = 0x80;
const FLAG_TRANSITIVE: u8 = 0x40;
const FLAG_PARTIAL: u8 = 0x20;
const FLAG_EXTENDED_LENGTH: u8 = 0x10;

/// ORIGIN (RFC 4271 5.1.1); the order is the decision-process order.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    #[default]
    Igp,
    Egp,
    Incomplete,
}

/// One AS_PATH segment (RFC 4271 4.3, RFC 5065 for the confederation types).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct AsSegment {
    /// 1 AS_SET, 2 AS_SEQUENCE, 3 AS_CONFED_SEQUENCE, 4 AS_CONFED_SET.
    pub kind: u8,
    pub asns: Vec<u32>,
}

pub const AS_SET: u8 = 1;
pub const AS_SEQUENCE: u8 = 2;
pub const AS_CONFED_SEQUENCE: u8 = 3;
pub const AS_CONFED_SET: u8 = 4;

#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
pub struct AsPath {
    pub segments: Vec<AsSegment>,
}

impl AsPath {
    pub fn sequence(asns: Vec<u32>) -> AsPath {
        if asns.is_empty() {
            return AsPath::default();
        }
        AsPath {
            segments: vec![AsSegment {
                kind: AS_SEQUENCE,
                asns,
            }],
        }
    }

    /// Length for the decision process (RFC 4271 9.1.2.2 a): a set counts as one,
    /// confederation segments not at all (RFC 5065 5.3).
    pub fn path_len(&self) -> usize {
        self.segments
            .iter()
            .map(|s| match s.kind {
                AS_SEQUENCE => s.asns.len(),
                AS_SET => 1,
                _ => 0,
            })
            .sum()
    }

    /// The AS that sent the route: first AS of a leading AS_SEQUENCE.
    pub fn first_as(&self) -> Option<u32> {
        self.segments
            .iter()
            .find(|s| s.kind == AS_SEQUENCE || s.kind == AS_SET)
            .filter(|s| s.kind == AS_SEQUENCE)
            .and_then(|s| s.asns.first().copied())
    }

    pub fn contains(&self, asn: u32) -> bool {
        self.segments.iter().any(|s| s.asns.contains(&asn))
    }

    /// The neighbouring AS for MED comparison: the first AS of the path, if any.
    pub fn neighbor_as(&self) -> Option<u32> {
        self.segments.first().and_then(|s| s.asns.first().copied())
    }

    /// Prepend `asn` to the leading AS_SEQUENCE (RFC 4271 5.1.2).
    pub fn prepend(&mut self, asn: u32) {
        match self.segments.first_mut() {
            Some(s) if s.kind == AS_SEQUENCE && s.asns.len() < 255 => s.asns.insert(0, asn),
            _ => self.segments.insert(
                0,
                AsSegment {
                    kind: AS_SEQUENCE,
                    asns: vec![asn],
                },
            ),
        }
    }

    fn asn_count(&self) -> usize {
        self.segments.iter().map(|s| s.asns.len()).sum()
    }
}

impl std::fmt::Display for AsPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for s in &self.segments {
            let (open, close) = match s.kind {
                AS_SET => ("{", "}"),
                AS_CONFED_SEQUENCE => ("(", ")"),
                AS_CONFED_SET => ("[", "]"),
                _ => ("", ""),
            };
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            f.write_str(open)?;
            for (i, a) in s.asns.iter().enumerate() {
                if i > 0 {
                    f.write_str(" ")?;
                }
                write!(f, "{a}")?;
            }
            f.write_str(close)?;
        }
        Ok(())
    }
}

/// The path attributes Petrel keeps. The next hop is not here: it belongs to a family
/// ([`Reach`]), since one UPDATE can carry IPv4 and IPv6 routes with different next hops.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct PathAttrs {
    pub origin: Origin,
    pub as_path: AsPath,
    pub med: Option<u32>,
    pub local_pref: Option<u32>,
    pub atomic_aggregate: bool,
    pub aggregator: Option<(u32, Ipv4Addr)>,
    pub communities: Vec<u32>,
    pub large_communities: Vec<[u32; 3]>,
    pub originator_id: Option<Ipv4Addr>,
    pub cluster_list: Vec<Ipv4Addr>,
    /// EXTENDED_COMMUNITIES (RFC 4360), each as its 8 bytes in network order.
    pub ext_communities: Vec<u64>,
    /// Optional attributes Petrel does not interpret, kept as received so that they can be
    /// shown and, the transitive ones, passed on (RFC 4271 5, with the Partial bit set).
    pub unknown: Vec<RawAttr>,
}

/// An optional path attribute kept as bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct RawAttr {
    pub flags: u8,
    pub code: u8,
    pub value: Box<[u8]>,
}

impl RawAttr {
    pub fn transitive(&self) -> bool {
        self.flags & FLAG_TRANSITIVE != 0
    }
}

/// Well-known communities (RFC 1997, RFC 8326, RFC 7999).
pub mod community {
    pub const NO_EXPORT: u32 = 0xFFFF_FF01;
    pub const NO_ADVERTISE: u32 = 0xFFFF_FF02;
    pub const NO_EXPORT_SUBCONFED: u32 = 0xFFFF_FF03;
    pub const GRACEFUL_SHUTDOWN: u32 = 0xFFFF_0000;
    pub const BLACKHOLE: u32 = 0xFFFF_029A;

    /// `65000:100`, or the name of a well-known community.
    pub fn format(c: u32) -> String {
        match c {
            NO_EXPORT => "no_export".into(),
            NO_ADVERTISE => "no_advertise".into(),
            NO_EXPORT_SUBCONFED => "no_export_subconfed".into(),
            GRACEFUL_SHUTDOWN => "graceful_shutdown".into(),
            BLACKHOLE => "blackhole".into(),
            c => format!("{}:{}", c >> 16, c & 0xffff),
        }
    }

    /// An extended community (RFC 4360, RFC 5668, RFC 7153) in the usual text forms:
    /// `rt 65000:100`, `ro 192.0.2.1:7`, or the type and hex value for others.
    pub fn format_ext(c: u64) -> String {
        let b = c.to_be_bytes();
        let (ty, sub) = (b[0], b[1]);
        let name = match sub {
            0x02 => "rt",
            0x03 => "ro",
            _ => "",
        };
        let g2 = u16::from_be_bytes([b[2], b[3]]);
        let l4 = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
        let g4 = u32::from_be_bytes([b[2], b[3], b[4], b[5]]);
        let l2 = u16::from_be_bytes([b[6], b[7]]);
        match (ty & 0x3f, name.is_empty()) {
            (0x00, false) => format!("{name} {g2}:{l4}"),
            (0x01, false) => format!("{name} {}:{l2}", std::net::Ipv4Addr::from(g4)),
            (0x02, false) => format!("{name} {g4}:{l2}"),
            _ => format!("0x{c:016x}"),
        }
    }
}

/// Where a route points. Serialized as the address routed through (for IPv6 the global
/// one), so IPv4 and IPv6 next hops read alike in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NextHop {
    V4(Ipv4Addr),
    /// A global address and, from a directly connected peer, its link-local one (RFC 2545 3).
    V6 {
        global: Ipv6Addr,
        link_local: Option<Ipv6Addr>,
    },
}

impl NextHop {
    /// The address to route through: the global one for IPv6.
    pub fn addr(&self) -> IpAddr {
        match self {
            NextHop::V4(a) => IpAddr::V4(*a),
            NextHop::V6 { global, .. } => IpAddr::V6(*global),
        }
    }
}

impl serde::Serialize for NextHop {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.addr())
    }
}

/// Read back from the address alone (the link-local part of an IPv6 next hop is not kept).
impl<'de> serde::Deserialize<'de> for NextHop {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.parse::<IpAddr>().map_err(serde::de::Error::custom)? {
            IpAddr::V4(a) => Ok(NextHop::V4(a)),
            IpAddr::V6(a) => Ok(NextHop::V6 {
                global: a,
                link_local: None,
            }),
        }
    }
}

impl std::fmt::Display for NextHop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NextHop::V4(a) => write!(f, "{a}"),
            NextHop::V6 {
                global,
                link_local: Some(ll),
            } => write!(f, "{global} ({ll})"),
            NextHop::V6 { global, .. } => write!(f, "{global}"),
        }
    }
}

/// Prefixes of one family announced with one next hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reach {
    pub afi: Afi,
    pub next_hop: NextHop,
    pub prefixes: Vec<IpNet>,
}

/// What RFC 7606 made us do with a malformed attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorAction {
    /// The attribute was dropped, the routes kept.
    Discard,
    /// The routes of the message were withdrawn.
    TreatAsWithdraw,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttrError {
    pub code: u8,
    pub action: ErrorAction,
    pub reason: String,
}

/// A decoded UPDATE, with any RFC 7606 outcome already applied: when the routes could not be
/// trusted, `reach` is empty and their prefixes are in `withdrawn`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpdateMsg {
    pub withdrawn: Vec<IpNet>,
    pub reach: Vec<Reach>,
    pub attrs: PathAttrs,
    /// End-of-RIB marker (RFC 4724 2) for this family.
    pub end_of_rib: Option<Afi>,
    pub errors: Vec<AttrError>,
}

impl UpdateMsg {
    pub fn end_of_rib(afi: Afi) -> UpdateMsg {
        UpdateMsg {
            end_of_rib: Some(afi),
            ..Default::default()
        }
    }

    pub fn announced(&self) -> usize {
        self.reach.iter().map(|r| r.prefixes.len()).sum()
    }

    pub fn treated_as_withdraw(&self) -> bool {
        self.errors
            .iter()
            .any(|e| e.action == ErrorAction::TreatAsWithdraw)
    }
}

/// RFC 7606 section 7 (and RFC 6793 for AS4_*, RFC 8092 for large communities): what a
/// malformed attribute of this type costs. `None` means the session (a NOTIFICATION).
fn action_for(code: u8) -> Option<ErrorAction> {
    use attr::*;
    match code {
        ORIGIN | AS_PATH | NEXT_HOP | MED | LOCAL_PREF | COMMUNITIES | ORIGINATOR_ID
        | CLUSTER_LIST | EXT_COMMUNITIES | IPV6_EXT_COMMUNITIES | LARGE_COMMUNITIES => {
            Some(ErrorAction::TreatAsWithdraw)
        }
        MP_REACH | MP_UNREACH => None,
        // ATOMIC_AGGREGATE, AGGREGATOR, AS4_PATH, AS4_AGGREGATOR and anything optional we do
        // not use.
        _ => Some(ErrorAction::Discard),
    }
}

/// Attributes Petrel reads into [`PathAttrs`] fields; every other valid optional attribute
/// goes to [`PathAttrs::unknown`].
fn interpreted(code: u8) -> bool {
    matches!(code, 1..=10 | 14..=18 | 32)
}

fn is_known(code: u8) -> bool {
    matches!(code, 1..=10 | 14..=18 | 25 | 26 | 29 | 32 | 35 | 40)
}

fn update_err(sub: u8, data: Vec<u8>, reason: impl Into<String>) -> DecodeError {
    DecodeError::new(codes::UPDATE_MESSAGE, sub, data, reason)
}

struct Builder {
    out: UpdateMsg,
    origin: bool,
    as_path: bool,
    as4_path: Option<AsPath>,
    as4_aggregator: Option<(u32, Ipv4Addr)>,
    next_hop: Option<Ipv4Addr>,
    mp_seen: bool,
    seen: [bool; 256],
}

impl Builder {
    fn error(&mut self, code: u8, action: ErrorAction, reason: String) {
        self.out.errors.push(AttrError {
            code,
            action,
            reason,
        });
    }
}

/// Decode an UPDATE (the whole message, header included).
pub(crate) fn decode(msg: &[u8], codec: &Codec) -> Result<UpdateMsg, DecodeError> {
    use codes::update::*;
    let body = &msg[HEADER_LEN..];
    let malformed_list = |why: &str| update_err(MALFORMED_ATTRIBUTE_LIST, Vec::new(), why);
    let wlen = u16::from_be_bytes([body[0], body[1]]) as usize;
    let Some(withdrawn_buf) = body.get(2..2 + wlen) else {
        return Err(malformed_list(
            "withdrawn routes length runs past the message",
        ));
    };
    let Some(alen) = body.get(2 + wlen..4 + wlen) else {
        return Err(malformed_list(
            "withdrawn routes length leaves no room for the attributes",
        ));
    };
    let alen = u16::from_be_bytes([alen[0], alen[1]]) as usize;
    let Some(mut attrs_buf) = body.get(4 + wlen..4 + wlen + alen) else {
        return Err(malformed_list(
            "total path attribute length runs past the message",
        ));
    };
    let nlri_buf = &body[4 + wlen + alen..];

    let mut b = Builder {
        out: UpdateMsg::default(),
        origin: false,
        as_path: false,
        as4_path: None,
        as4_aggregator: None,
        next_hop: None,
        mp_seen: false,
        seen: [false; 256],
    };
    nlri::parse(withdrawn_buf, Afi::Ipv4, &mut b.out.withdrawn).map_err(|e| {
        update_err(
            INVALID_NETWORK_FIELD,
            Vec::new(),
            format!("withdrawn routes: {e}"),
        )
    })?;
    let mut nlri = Vec::new();
    nlri::parse(nlri_buf, Afi::Ipv4, &mut nlri)
        .map_err(|e| update_err(INVALID_NETWORK_FIELD, Vec::new(), format!("NLRI: {e}")))?;

    let mut ctx = codec.netgauze_ctx();
    while !attrs_buf.is_empty() {
        // Attribute header: flags, type, 1 or 2 length bytes.
        let (flags, code) = match attrs_buf {
            [f, c, ..] => (*f, *c),
            _ => {
                overrun(&mut b, "attribute header cut short")?;
                break;
            }
        };
        let (hlen, vlen) = if flags & FLAG_EXTENDED_LENGTH != 0 {
            match attrs_buf.get(2..4) {
                Some(l) => (4, u16::from_be_bytes([l[0], l[1]]) as usize),
                None => {
                    overrun(&mut b, "attribute length cut short")?;
                    break;
                }
            }
        } else {
            match attrs_buf.get(2) {
                Some(l) => (3, *l as usize),
                None => {
                    overrun(&mut b, "attribute length cut short")?;
                    break;
                }
            }
        };
        let Some(raw) = attrs_buf.get(..hlen + vlen) else {
            overrun(
                &mut b,
                &format!("attribute {code} of length {vlen} runs past the attributes"),
            )?;
            break;
        };
        attrs_buf = &attrs_buf[hlen + vlen..];
        let value = &raw[hlen..];

        // RFC 7606 3(g): a repeated MP_(UN)REACH resets the session; any other repeat is
        // dropped, the first one kept.
        if b.seen[code as usize] {
            if code == attr::MP_REACH || code == attr::MP_UNREACH {
                return Err(malformed_list(
                    "MP_REACH_NLRI or MP_UNREACH_NLRI appears twice",
                ));
            }
            b.error(
                code,
                ErrorAction::Discard,
                format!("attribute {code} repeated"),
            );
            continue;
        }
        b.seen[code as usize] = true;

        // RFC 4271 6.3: an unrecognized well-known attribute is a session error.
        if flags & FLAG_OPTIONAL == 0 && !is_known(code) {
            return Err(update_err(
                UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE,
                raw.to_vec(),
                format!("unrecognized well-known attribute {code}"),
            ));
        }

        match code {
            attr::MP_REACH => {
                b.mp_seen = true;
                mp_reach(&mut b, value)?;
            }
            attr::MP_UNREACH => {
                b.mp_seen = true;
                mp_unreach(&mut b, value)?;
            }
            // The iBGP-only attributes from an external peer are ignored (RFC 4271 5.1.5,
            // RFC 4456 8 via RFC 7606 7.9 and 7.10).
            attr::LOCAL_PREF | attr::ORIGINATOR_ID | attr::CLUSTER_LIST if !codec.ibgp => {}
            _ => match PathAttribute::parse(&mut SliceReader::new(raw), &mut ctx) {
                Ok(_) if code == attr::EXT_COMMUNITIES => {
                    b.out.attrs.ext_communities = value
                        .chunks_exact(8)
                        .map(|c| u64::from_be_bytes(c.try_into().unwrap_or([0; 8])))
                        .collect();
                }
                Ok(pa) if !interpreted(code) => {
                    // Valid, not ours to interpret: kept as bytes (flags without the
                    // extended-length bit, which encoding chooses again).
                    if flags & FLAG_OPTIONAL != 0 {
                        b.out.attrs.unknown.push(RawAttr {
                            flags: flags & !FLAG_EXTENDED_LENGTH,
                            code,
                            value: value.into(),
                        });
                    }
                    let _ = pa;
                }
                Ok(pa) => apply(&mut b, pa.value().clone(), codec),
                Err(e) => match action_for(code) {
                    Some(action) => b.error(code, action, format!("attribute {code}: {e}")),
                    None => {
                        return Err(update_err(
                            OPTIONAL_ATTRIBUTE_ERROR,
                            raw.to_vec(),
                            format!("attribute {code}: {e}"),
                        ));
                    }
                },
            },
        }
    }

    // RFC 6793 4.2.3: rebuild the path of a 2-octet session from AS_PATH and AS4_PATH.
    if !codec.asn4 {
        if let Some(as4) = b.as4_path.take() {
            merge_as4_path(&mut b.out.attrs.as_path, as4);
        }
        if let (Some((AS_TRANS_U32, _)), Some(agg)) = (b.out.attrs.aggregator, b.as4_aggregator) {
            b.out.attrs.aggregator = Some(agg);
        }
    }

    if !nlri.is_empty() {
        match b.next_hop {
            Some(nh) => b.out.reach.insert(
                0,
                Reach {
                    afi: Afi::Ipv4,
                    next_hop: NextHop::V4(nh),
                    prefixes: nlri,
                },
            ),
            None => {
                if !b.seen[attr::NEXT_HOP as usize] {
                    b.error(
                        attr::NEXT_HOP,
                        ErrorAction::TreatAsWithdraw,
                        "NEXT_HOP missing".into(),
                    );
                }
                // Keep the prefixes so that treat-as-withdraw below withdraws them.
                b.out.reach.insert(
                    0,
                    Reach {
                        afi: Afi::Ipv4,
                        next_hop: NextHop::V4(Ipv4Addr::UNSPECIFIED),
                        prefixes: nlri,
                    },
                );
            }
        }
    }

    if !b.out.reach.is_empty() {
        // RFC 7606 3(d): well-known mandatory attributes missing.
        if !b.origin && !b.seen[attr::ORIGIN as usize] {
            b.error(
                attr::ORIGIN,
                ErrorAction::TreatAsWithdraw,
                "ORIGIN missing".into(),
            );
        }
        if !b.as_path && !b.seen[attr::AS_PATH as usize] {
            b.error(
                attr::AS_PATH,
                ErrorAction::TreatAsWithdraw,
                "AS_PATH missing".into(),
            );
        }
        // RFC 4271 6.3: a semantically wrong next hop makes the routes unusable.
        let bad = b.out.reach.iter().find(|r| match r.next_hop {
            NextHop::V4(a) => a.is_unspecified() || a.is_multicast() || a.is_broadcast(),
            NextHop::V6 { global, .. } => global.is_unspecified() || global.is_multicast(),
        });
        if let Some(r) = bad
            && b.out.errors.iter().all(|e| e.code != attr::NEXT_HOP)
        {
            let reason = format!("unusable {} next hop {}", r.afi, r.next_hop);
            b.error(attr::NEXT_HOP, ErrorAction::TreatAsWithdraw, reason);
        }
    }

    let only_empty_mp_unreach = b.seen.iter().filter(|s| **s).count() == 1
        && b.seen[attr::MP_UNREACH as usize]
        && b.out.withdrawn.is_empty()
        && nlri_buf.is_empty()
        && wlen == 0;
    let mut out = b.out;
    if out.treated_as_withdraw() {
        for r in out.reach.drain(..) {
            out.withdrawn.extend(r.prefixes);
        }
        out.attrs = PathAttrs::default();
    }
    // RFC 4724 2: End-of-RIB is an empty UPDATE (IPv4) or one holding only an empty
    // MP_UNREACH (mp_unreach() noted its family).
    if alen == 0 && wlen == 0 && nlri_buf.is_empty() {
        out.end_of_rib = Some(Afi::Ipv4);
    } else if !only_empty_mp_unreach {
        out.end_of_rib = None;
    }
    Ok(out)
}

const AS_TRANS_U32: u32 = AS_TRANS as u32;

/// RFC 7606 4: attributes that overrun the attribute field. Treat-as-withdraw is possible only
/// when no MP_(UN)REACH has been seen (its NLRI could be in the part we cannot read).
fn overrun(b: &mut Builder, why: &str) -> Result<(), DecodeError> {
    if b.mp_seen {
        return Err(update_err(
            codes::update::MALFORMED_ATTRIBUTE_LIST,
            Vec::new(),
            why,
        ));
    }
    b.error(0, ErrorAction::TreatAsWithdraw, why.to_string());
    Ok(())
}

fn mp_header(value: &[u8]) -> Option<(u16, u8, &[u8])> {
    let afi = u16::from_be_bytes([*value.first()?, *value.get(1)?]);
    Some((afi, *value.get(2)?, value.get(3..)?))
}

fn mp_error(reason: String, value: &[u8]) -> DecodeError {
    update_err(
        codes::update::OPTIONAL_ATTRIBUTE_ERROR,
        value.to_vec(),
        reason,
    )
}

fn mp_reach(b: &mut Builder, value: &[u8]) -> Result<(), DecodeError> {
    let Some((afi_n, safi, rest)) = mp_header(value) else {
        return Err(mp_error("MP_REACH_NLRI too short".into(), value));
    };
    let Some(afi) = Afi::from_numbers(afi_n, safi) else {
        // A family we did not negotiate: RFC 4760 7 lets us ignore it.
        return Ok(());
    };
    let Some((&nh_len, rest)) = rest.split_first() else {
        return Err(mp_error(
            "MP_REACH_NLRI has no next hop length".into(),
            value,
        ));
    };
    let nh_len = nh_len as usize;
    let (Some(nh), Some(rest)) = (rest.get(..nh_len), rest.get(nh_len + 1..)) else {
        return Err(mp_error(
            format!("MP_REACH_NLRI next hop of {nh_len} bytes runs past it"),
            value,
        ));
    };
    let next_hop = match nh_len {
        4 => NextHop::V4(Ipv4Addr::new(nh[0], nh[1], nh[2], nh[3])),
        16 | 32 => {
            let mut g = [0u8; 16];
            g.copy_from_slice(&nh[..16]);
            let link_local = (nh_len == 32).then(|| {
                let mut l = [0u8; 16];
                l.copy_from_slice(&nh[16..32]);
                Ipv6Addr::from(l)
            });
            NextHop::V6 {
                global: Ipv6Addr::from(g),
                link_local,
            }
        }
        // RFC 7606 7.11: a next hop of a length the family does not allow is malformed.
        n => {
            return Err(mp_error(
                format!("MP_REACH_NLRI {afi} next hop length {n}"),
                value,
            ));
        }
    };
    let mut prefixes = Vec::new();
    nlri::parse(rest, afi, &mut prefixes)
        .map_err(|e| mp_error(format!("MP_REACH_NLRI: {e}"), value))?;
    if !prefixes.is_empty() {
        b.out.reach.push(Reach {
            afi,
            next_hop,
            prefixes,
        });
    }
    Ok(())
}

fn mp_unreach(b: &mut Builder, value: &[u8]) -> Result<(), DecodeError> {
    let Some((afi_n, safi, rest)) = mp_header(value) else {
        return Err(mp_error("MP_UNREACH_NLRI too short".into(), value));
    };
    let Some(afi) = Afi::from_numbers(afi_n, safi) else {
        return Ok(());
    };
    if rest.is_empty() {
        b.out.end_of_rib = Some(afi);
        return Ok(());
    }
    nlri::parse(rest, afi, &mut b.out.withdrawn)
        .map_err(|e| mp_error(format!("MP_UNREACH_NLRI: {e}"), value))
}

fn as_path_of(v: &netgauze_bgp_pkt::path_attribute::AsPath) -> AsPath {
    use netgauze_bgp_pkt::path_attribute::AsPath as NgAsPath;
    let segments = match v {
        NgAsPath::As2PathSegments(segs) => segs
            .iter()
            .map(|s| AsSegment {
                kind: s.segment_type() as u8,
                asns: s.as_numbers().iter().map(|a| *a as u32).collect(),
            })
            .collect(),
        NgAsPath::As4PathSegments(segs) => segs
            .iter()
            .map(|s| AsSegment {
                kind: s.segment_type() as u8,
                asns: s.as_numbers().to_vec(),
            })
            .collect(),
    };
    AsPath { segments }
}

fn apply(b: &mut Builder, v: PathAttributeValue, codec: &Codec) {
    let a = &mut b.out.attrs;
    match v {
        PathAttributeValue::Origin(o) => {
            b.origin = true;
            a.origin = match o {
                NgOrigin::IGP => Origin::Igp,
                NgOrigin::EGP => Origin::Egp,
                NgOrigin::Incomplete => Origin::Incomplete,
            };
        }
        PathAttributeValue::AsPath(p) => {
            b.as_path = true;
            a.as_path = as_path_of(&p);
        }
        // Only meaningful on a 2-octet session (RFC 6793 4.1: ignored otherwise).
        PathAttributeValue::As4Path(p) if !codec.asn4 => {
            b.as4_path = Some(AsPath {
                segments: p
                    .segments()
                    .iter()
                    .map(|s| AsSegment {
                        kind: s.segment_type() as u8,
                        asns: s.as_numbers().to_vec(),
                    })
                    .collect(),
            });
        }
        PathAttributeValue::NextHop(nh) => b.next_hop = Some(nh.next_hop()),
        PathAttributeValue::MultiExitDiscriminator(m) => a.med = Some(m.metric()),
        PathAttributeValue::LocalPreference(l) => a.local_pref = Some(l.metric()),
        PathAttributeValue::AtomicAggregate(_) => a.atomic_aggregate = true,
        PathAttributeValue::Aggregator(agg) => match agg {
            Aggregator::As2Aggregator(x) => a.aggregator = Some((*x.asn() as u32, x.origin())),
            Aggregator::As4Aggregator(x) => {
                // On a 2-octet session a 4-octet aggregator is AS4_AGGREGATOR (type 18).
                if codec.asn4 {
                    a.aggregator = Some((*x.asn(), x.origin()));
                } else {
                    b.as4_aggregator = Some((*x.asn(), x.origin()));
                }
            }
        },
        PathAttributeValue::Communities(c) => {
            a.communities = c.communities().iter().map(|c| c.value()).collect()
        }
        PathAttributeValue::LargeCommunities(c) => {
            a.large_communities = c
                .communities()
                .iter()
                .map(|c| [c.global_admin(), c.local_data1(), c.local_data2()])
                .collect()
        }
        PathAttributeValue::Originator(o) => a.originator_id = Some(o.id()),
        PathAttributeValue::ClusterList(c) => {
            a.cluster_list = c.cluster_list().iter().map(|c| c.id()).collect()
        }
        // Extended communities and the attributes not interpreted are kept as bytes by
        // decode() before it gets here.
        _ => {}
    }
}

/// RFC 6793 4.2.3: take the leading ASes of AS_PATH that AS4_PATH does not cover, then
/// AS4_PATH. An AS4_PATH longer than AS_PATH is ignored.
fn merge_as4_path(as_path: &mut AsPath, as4: AsPath) {
    let n2 = as_path.asn_count();
    let n4 = as4.asn_count();
    if n4 > n2 {
        return;
    }
    let mut keep = n2 - n4;
    let mut merged = Vec::new();
    for s in &as_path.segments {
        if keep == 0 {
            break;
        }
        let take = s.asns.len().min(keep);
        merged.push(AsSegment {
            kind: s.kind,
            asns: s.asns[..take].to_vec(),
        });
        keep -= take;
    }
    merged.extend(as4.segments);
    as_path.segments = merged;
}

// ---------------------------------------------------------------------------------------------
// Encoding

fn pa(optional: bool, transitive: bool, value: PathAttributeValue) -> Option<PathAttribute> {
    // The flags are the ones each type requires; from() only refuses mismatched flags.
    PathAttribute::from(optional, transitive, false, true, value).ok()
}

fn attrs_to_netgauze(attrs: &PathAttrs, codec: &Codec) -> Vec<PathAttribute> {
    let mut out = Vec::new();
    out.extend(pa(
        false,
        true,
        PathAttributeValue::Origin(match attrs.origin {
            Origin::Igp => NgOrigin::IGP,
            Origin::Egp => NgOrigin::EGP,
            Origin::Incomplete => NgOrigin::Incomplete,
        }),
    ));
    let seg_type = |k: u8| match k {
        // netgauze has no confederation segment types; Petrel is not in a confederation and
        // never builds them.
        AS_SET => AsPathSegmentType::AsSet,
        _ => AsPathSegmentType::AsSequence,
    };
    // Segments hold at most 255 ASes.
    let chunks = |p: &AsPath| -> Vec<(u8, Vec<u32>)> {
        p.segments
            .iter()
            .flat_map(|s| s.asns.chunks(255).map(move |c| (s.kind, c.to_vec())))
            .collect()
    };
    let path = chunks(&attrs.as_path);
    if codec.asn4 {
        out.extend(pa(
            false,
            true,
            PathAttributeValue::AsPath(netgauze_bgp_pkt::path_attribute::AsPath::As4PathSegments(
                path.iter()
                    .map(|(k, a)| As4PathSegment::new(seg_type(*k), a.clone()))
                    .collect::<Vec<_>>()
                    .into(),
            )),
        ));
    } else {
        let needs_as4 = path.iter().any(|(_, a)| a.iter().any(|x| *x > 0xffff));
        out.extend(pa(
            false,
            true,
            PathAttributeValue::AsPath(netgauze_bgp_pkt::path_attribute::AsPath::As2PathSegments(
                path.iter()
                    .map(|(k, a)| {
                        As2PathSegment::new(
                            seg_type(*k),
                            a.iter()
                                .map(|x| u16::try_from(*x).unwrap_or(AS_TRANS))
                                .collect::<Vec<_>>(),
                        )
                    })
                    .collect::<Vec<_>>()
                    .into(),
            )),
        ));
        if needs_as4 {
            out.extend(pa(
                true,
                true,
                PathAttributeValue::As4Path(netgauze_bgp_pkt::path_attribute::As4Path::new(
                    path.iter()
                        .map(|(k, a)| As4PathSegment::new(seg_type(*k), a.clone()))
                        .collect::<Vec<_>>(),
                )),
            ));
        }
    }
    if let Some(m) = attrs.med {
        out.extend(pa(
            true,
            false,
            PathAttributeValue::MultiExitDiscriminator(MultiExitDiscriminator::new(m)),
        ));
    }
    if codec.ibgp
        && let Some(l) = attrs.local_pref
    {
        out.extend(pa(
            false,
            true,
            PathAttributeValue::LocalPreference(LocalPreference::new(l)),
        ));
    }
    if attrs.atomic_aggregate {
        out.extend(pa(
            false,
            true,
            PathAttributeValue::AtomicAggregate(netgauze_bgp_pkt::path_attribute::AtomicAggregate),
        ));
    }
    if let Some((asn, id)) = attrs.aggregator {
        let agg = if codec.asn4 {
            Aggregator::As4Aggregator(netgauze_bgp_pkt::path_attribute::As4Aggregator::new(
                asn, id,
            ))
        } else {
            Aggregator::As2Aggregator(netgauze_bgp_pkt::path_attribute::As2Aggregator::new(
                u16::try_from(asn).unwrap_or(AS_TRANS),
                id,
            ))
        };
        out.extend(pa(true, true, PathAttributeValue::Aggregator(agg)));
    }
    if !attrs.communities.is_empty() {
        out.extend(pa(
            true,
            true,
            PathAttributeValue::Communities(Communities::new(
                attrs
                    .communities
                    .iter()
                    .map(|c| Community::new(*c))
                    .collect::<Vec<_>>(),
            )),
        ));
    }
    if codec.ibgp {
        if let Some(o) = attrs.originator_id {
            out.extend(pa(
                true,
                false,
                PathAttributeValue::Originator(Originator::new(o)),
            ));
        }
        if !attrs.cluster_list.is_empty() {
            out.extend(pa(
                true,
                false,
                PathAttributeValue::ClusterList(ClusterList::new(
                    attrs
                        .cluster_list
                        .iter()
                        .map(|c| ClusterId::new(*c))
                        .collect::<Vec<_>>(),
                )),
            ));
        }
    }
    if !attrs.large_communities.is_empty() {
        out.extend(pa(
            true,
            true,
            PathAttributeValue::LargeCommunities(LargeCommunities::new(
                attrs
                    .large_communities
                    .iter()
                    .map(|c| LargeCommunity::new(c[0], c[1], c[2]))
                    .collect::<Vec<_>>(),
            )),
        ));
    }
    if !attrs.ext_communities.is_empty() {
        let bytes: Vec<u8> = attrs
            .ext_communities
            .iter()
            .flat_map(|c| c.to_be_bytes())
            .collect();
        out.extend(raw_pa(
            FLAG_OPTIONAL | FLAG_TRANSITIVE,
            attr::EXT_COMMUNITIES,
            &bytes,
        ));
    }
    for u in &attrs.unknown {
        // Only optional attributes are ever kept; non-transitive ones are not for other
        // speakers (RFC 4271 5), transitive ones go on marked partial since we did not
        // recognise them.
        if u.transitive() {
            out.extend(raw_pa(u.flags | FLAG_PARTIAL, u.code, &u.value));
        }
    }
    out
}

fn raw_pa(flags: u8, code: u8, value: &[u8]) -> Option<PathAttribute> {
    PathAttribute::from(
        flags & FLAG_OPTIONAL != 0,
        flags & FLAG_TRANSITIVE != 0,
        flags & FLAG_PARTIAL != 0,
        true,
        PathAttributeValue::UnknownAttribute(UnknownAttribute::new(code, value.to_vec())),
    )
    .ok()
}

fn v4_addrs(nets: &[IpNet]) -> Vec<Ipv4UnicastAddress> {
    nets.iter()
        .filter_map(|n| match n {
            IpNet::V4(v4) => Ipv4Unicast::from_net(*v4)
                .ok()
                .map(Ipv4UnicastAddress::new_no_path_id),
            IpNet::V6(_) => None,
        })
        .collect()
}

fn v6_addrs(nets: &[IpNet]) -> Vec<Ipv6UnicastAddress> {
    nets.iter()
        .filter_map(|n| match n {
            IpNet::V6(v6) => Ipv6Unicast::from_net(*v6)
                .ok()
                .map(|u| Ipv6UnicastAddress::new(None, u)),
            IpNet::V4(_) => None,
        })
        .collect()
}

fn write_update(msg: BgpUpdateMessage) -> Vec<u8> {
    let mut out = Vec::new();
    // Sizes were budgeted by the caller; a failure here would be a bug, and yields nothing
    // rather than a malformed message.
    if BgpMessage::Update(msg).write(&mut out).is_err() {
        debug_assert!(false, "UPDATE encoding failed");
        out.clear();
    }
    out
}

/// Split `nets` into runs whose wire size fits `budget` bytes.
fn chunks(nets: &[IpNet], budget: usize) -> Vec<&[IpNet]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut size = 0;
    for (i, n) in nets.iter().enumerate() {
        let l = nlri::wire_len(n);
        if size + l > budget && i > start {
            out.push(&nets[start..i]);
            start = i;
            size = 0;
        }
        size += l;
    }
    if start < nets.len() {
        out.push(&nets[start..]);
    }
    out
}

/// Encode an UPDATE as one or more messages, each within the session's size limit: IPv4
/// withdrawals in the withdrawn-routes field, IPv4 routes with an IPv4 next hop in the NLRI
/// field, everything else in MP_REACH/MP_UNREACH (one of each per message, RFC 4760).
///
/// The room left for prefixes is measured, not estimated: the message is first encoded with
/// no prefix at all, and what remains of the limit is filled.
pub fn encode_updates(u: &UpdateMsg, codec: &Codec) -> Vec<Vec<u8>> {
    let max = codec.max_len();
    let room = |empty: BgpUpdateMessage| max.saturating_sub(write_update(empty).len());
    let unreach6 = |nets: &[IpNet]| {
        pa(
            true,
            false,
            PathAttributeValue::MpUnreach(MpUnreach::Ipv6Unicast {
                nlri: v6_addrs(nets).into(),
            }),
        )
        .into_iter()
        .collect::<Vec<_>>()
    };
    let mut out = Vec::new();
    let (w4, w6): (Vec<IpNet>, Vec<IpNet>) =
        u.withdrawn.iter().partition(|n| matches!(n, IpNet::V4(_)));
    let r = room(BgpUpdateMessage::new(vec![], vec![], vec![]));
    for c in chunks(&w4, r) {
        out.push(write_update(BgpUpdateMessage::new(
            v4_addrs(c),
            vec![],
            vec![],
        )));
    }
    let r = room(BgpUpdateMessage::new(vec![], unreach6(&[]), vec![]));
    for c in chunks(&w6, r) {
        out.push(write_update(BgpUpdateMessage::new(
            vec![],
            unreach6(c),
            vec![],
        )));
    }
    let base = attrs_to_netgauze(&u.attrs, codec);
    for r in &u.reach {
        match (r.afi, r.next_hop) {
            (Afi::Ipv4, NextHop::V4(nh)) => {
                let mut attrs = base.clone();
                attrs.extend(pa(
                    false,
                    true,
                    PathAttributeValue::NextHop(NgNextHop::new(nh)),
                ));
                let space = room(BgpUpdateMessage::new(vec![], attrs.clone(), vec![]));
                for c in chunks(&r.prefixes, space) {
                    out.push(write_update(BgpUpdateMessage::new(
                        vec![],
                        attrs.clone(),
                        v4_addrs(c),
                    )));
                }
            }
            (afi, nh) => {
                let reach = |nets: &[IpNet]| match (afi, nh) {
                    (Afi::Ipv6, NextHop::V6 { global, link_local }) => Some(MpReach::Ipv6Unicast {
                        next_hop_global: global,
                        next_hop_local: link_local,
                        nlri: v6_addrs(nets).into(),
                    }),
                    (Afi::Ipv4, NextHop::V6 { global, link_local }) => Some(MpReach::Ipv4Unicast {
                        next_hop: IpAddr::V6(global),
                        next_hop_local: link_local,
                        nlri: v4_addrs(nets).into(),
                    }),
                    // IPv6 routes cannot have an IPv4 next hop: nothing to send.
                    _ => None,
                };
                let with = |nets: &[IpNet]| {
                    let mut attrs = base.clone();
                    attrs.extend(
                        reach(nets).and_then(|r| pa(true, false, PathAttributeValue::MpReach(r))),
                    );
                    attrs
                };
                if reach(&[]).is_none() {
                    continue;
                }
                let space = room(BgpUpdateMessage::new(vec![], with(&[]), vec![]));
                for c in chunks(&r.prefixes, space) {
                    out.push(write_update(BgpUpdateMessage::new(vec![], with(c), vec![])));
                }
            }
        }
    }
    match u.end_of_rib {
        Some(Afi::Ipv4) => out.push(write_update(BgpUpdateMessage::new(vec![], vec![], vec![]))),
        Some(Afi::Ipv6) => {
            let unreach = MpUnreach::Ipv6Unicast {
                nlri: vec![].into(),
            };
            out.push(write_update(BgpUpdateMessage::new(
                vec![],
                pa(true, false, PathAttributeValue::MpUnreach(unreach))
                    .into_iter()
                    .collect::<Vec<_>>(),
                vec![],
            )));
        }
        None => {}
    }
    out.retain(|m| !m.is_empty());
    out
}
