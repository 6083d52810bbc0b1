//! BGP messages between bytes and typed structs.
//!
//! The codec is netgauze-bgp-pkt; this module is the glue around it and keeps it behind our own
//! types: framing with the RFC 4271 / RFC 8654 size limits, decoding parameterised by what the
//! session negotiated, host bits cleared from every prefix, and the RFC 7606 outcomes
//! (attribute discard, treat-as-withdraw, session reset) carried as data on the decoded UPDATE.
//!
//! No sockets, no clock: every function here takes bytes and returns values. Nothing from the
//! wire may panic; `fuzz/` and the property tests check that.

mod nlri;
mod notification;
mod open;
mod update;

use std::fmt;

pub use notification::{NotificationMsg, codes};
pub use open::{Capabilities, GracefulRestartCap, OpenMsg};
pub use update::{
    AsPath, AsSegment, AttrError, ErrorAction, NextHop, Origin, PathAttrs, RawAttr, Reach,
    UpdateMsg, attr, community, encode_updates,
};

/// Length of the message header (marker, length, type).
pub const HEADER_LEN: usize = 19;
/// Largest message without the Extended Message capability (RFC 4271 4.1).
pub const MAX_LEN: usize = 4096;
/// Largest message with the Extended Message capability (RFC 8654).
pub const MAX_EXTENDED_LEN: usize = 65535;
/// The AS number sent in the 2-byte field when ours does not fit (RFC 6793).
pub const AS_TRANS: u16 = 23456;

/// Message type codes (RFC 4271 4.1, RFC 2918).
pub mod msg_type {
    pub const OPEN: u8 = 1;
    pub const UPDATE: u8 = 2;
    pub const NOTIFICATION: u8 = 3;
    pub const KEEPALIVE: u8 = 4;
    pub const ROUTE_REFRESH: u8 = 5;
}

/// The unicast address families Petrel speaks.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Afi {
    Ipv4,
    Ipv6,
}

impl Afi {
    pub const ALL: [Afi; 2] = [Afi::Ipv4, Afi::Ipv6];

    pub fn of(net: &ipnet::IpNet) -> Afi {
        match net {
            ipnet::IpNet::V4(_) => Afi::Ipv4,
            ipnet::IpNet::V6(_) => Afi::Ipv6,
        }
    }

    pub fn of_addr(a: &std::net::IpAddr) -> Afi {
        match a {
            std::net::IpAddr::V4(_) => Afi::Ipv4,
            std::net::IpAddr::V6(_) => Afi::Ipv6,
        }
    }

    /// IANA AFI number.
    pub fn afi_number(self) -> u16 {
        match self {
            Afi::Ipv4 => 1,
            Afi::Ipv6 => 2,
        }
    }

    /// AFI/SAFI pair for unicast, or `None` for anything else.
    pub fn from_numbers(afi: u16, safi: u8) -> Option<Afi> {
        match (afi, safi) {
            (1, 1) => Some(Afi::Ipv4),
            (2, 1) => Some(Afi::Ipv6),
            _ => None,
        }
    }

    pub(crate) fn address_type(self) -> netgauze_iana::address_family::AddressType {
        use netgauze_iana::address_family::AddressType;
        match self {
            Afi::Ipv4 => AddressType::Ipv4Unicast,
            Afi::Ipv6 => AddressType::Ipv6Unicast,
        }
    }

    pub(crate) fn from_address_type(t: netgauze_iana::address_family::AddressType) -> Option<Afi> {
        use netgauze_iana::address_family::AddressType;
        match t {
            AddressType::Ipv4Unicast => Some(Afi::Ipv4),
            AddressType::Ipv6Unicast => Some(Afi::Ipv6),
            _ => None,
        }
    }
}

impl fmt::Display for Afi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Afi::Ipv4 => "ipv4",
            Afi::Ipv6 => "ipv6",
        })
    }
}

/// A decoded BGP message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Open(OpenMsg),
    Update(UpdateMsg),
    Notification(NotificationMsg),
    Keepalive,
    /// ROUTE-REFRESH (RFC 2918); `subtype` is 0 for a plain request (RFC 7313 adds 1 and 2
    /// for BoRR/EoRR). The family is kept as numbers: one not negotiated is ignored by the
    /// session (RFC 2918 4), not an error of the codec.
    RouteRefresh {
        afi: u16,
        safi: u8,
        subtype: u8,
    },
}

impl Message {
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Open(_) => "OPEN",
            Message::Update(_) => "UPDATE",
            Message::Notification(_) => "NOTIFICATION",
            Message::Keepalive => "KEEPALIVE",
            Message::RouteRefresh { .. } => "ROUTE-REFRESH",
        }
    }
}

/// What decides the bytes of a route's UPDATE besides the route: the session's codec, the
/// local next hops, and the prefixes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodeKey {
    pub codec: Codec,
    pub next_hop_v4: Option<NextHop>,
    pub next_hop_v6: Option<NextHop>,
    pub prefixes: smallvec::SmallVec<[ipnet::IpNet; 2]>,
}

/// One encoded UPDATE kept with an outgoing route, for the next peer that sends the same
/// (same [`EncodeKey`]). Never part of a route's identity: equal and hashed as nothing.
#[derive(Debug, Default)]
pub struct EncodedOnce(std::sync::Mutex<Option<Kept>>);

/// The key an encoding was made for, and its messages.
type Kept = (EncodeKey, std::sync::Arc<[Vec<u8>]>);

impl EncodedOnce {
    /// The messages for `key`: the kept ones when the key matches, else `encode`'s (kept
    /// from then on in their place).
    pub fn get_or(
        &self,
        key: EncodeKey,
        encode: impl FnOnce() -> Vec<Vec<u8>>,
    ) -> std::sync::Arc<[Vec<u8>]> {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((k, m)) = g.as_ref()
            && *k == key
        {
            return m.clone();
        }
        let m: std::sync::Arc<[Vec<u8>]> = encode().into();
        *g = Some((key, m.clone()));
        m
    }

    /// The messages kept now, if any.
    pub fn kept(&self) -> Option<std::sync::Arc<[Vec<u8>]>> {
        let g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        g.as_ref().map(|(_, m)| m.clone())
    }
}

impl Clone for EncodedOnce {
    fn clone(&self) -> Self {
        EncodedOnce::default()
    }
}
impl PartialEq for EncodedOnce {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for EncodedOnce {}
impl std::hash::Hash for EncodedOnce {
    fn hash<H: std::hash::Hasher>(&self, _: &mut H) {}
}

/// What the session negotiated, which changes how messages are read and written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Codec {
    /// Both sides sent the 4-octet AS capability (RFC 6793).
    pub asn4: bool,
    /// Both sides sent the Extended Message capability (RFC 8654).
    pub extended_message: bool,
    /// The session is iBGP (LOCAL_PREF expected; ORIGINATOR_ID and CLUSTER_LIST allowed).
    pub ibgp: bool,
}

impl Codec {
    /// Before OPENs are exchanged: 2-octet AS paths, 4096-byte messages.
    pub const INITIAL: Codec = Codec {
        asn4: false,
        extended_message: false,
        ibgp: false,
    };

    pub fn max_len(&self) -> usize {
        if self.extended_message {
            MAX_EXTENDED_LEN
        } else {
            MAX_LEN
        }
    }

    pub(crate) fn netgauze_ctx(&self) -> netgauze_bgp_pkt::wire::deserializer::BgpParsingContext {
        let mut ctx = netgauze_bgp_pkt::wire::deserializer::BgpParsingContext::default();
        ctx.set_asn4(self.asn4);
        ctx
    }
}

/// A message that could not be decoded, with the NOTIFICATION RFC 4271 section 6 prescribes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason} (sending {notification})")]
pub struct DecodeError {
    pub notification: NotificationMsg,
    pub reason: String,
}

impl DecodeError {
    pub(crate) fn new(code: u8, subcode: u8, data: Vec<u8>, reason: impl Into<String>) -> Self {
        DecodeError {
            notification: NotificationMsg::new(code, subcode, data),
            reason: reason.into(),
        }
    }
}

impl From<DecodeError> for NotificationMsg {
    fn from(e: DecodeError) -> Self {
        e.notification
    }
}

/// Look at the start of `buf`: `Ok(None)` if a whole message is not there yet,
/// `Ok(Some(len))` with the length of the first message once it is, or the header error.
pub fn frame(buf: &[u8], codec: &Codec) -> Result<Option<usize>, DecodeError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    if buf[..16].iter().any(|b| *b != 0xff) {
        return Err(DecodeError::new(
            codes::MESSAGE_HEADER,
            codes::header::CONNECTION_NOT_SYNCHRONIZED,
            Vec::new(),
            "message marker is not all ones",
        ));
    }
    let len = u16::from_be_bytes([buf[16], buf[17]]) as usize;
    let ty = buf[18];
    let bad_len = || {
        DecodeError::new(
            codes::MESSAGE_HEADER,
            codes::header::BAD_MESSAGE_LENGTH,
            (len as u16).to_be_bytes().to_vec(),
            format!("bad length {len} for message type {ty}"),
        )
    };
    // Per-type limits (RFC 4271 4.1, 6.1; RFC 8654 for UPDATE, NOTIFICATION, ROUTE-REFRESH).
    let (min, max) = match ty {
        msg_type::OPEN => (29, MAX_LEN),
        msg_type::UPDATE => (23, codec.max_len()),
        msg_type::NOTIFICATION => (21, codec.max_len()),
        msg_type::KEEPALIVE => (HEADER_LEN, HEADER_LEN),
        msg_type::ROUTE_REFRESH => (23, codec.max_len()),
        _ => {
            return Err(DecodeError::new(
                codes::MESSAGE_HEADER,
                codes::header::BAD_MESSAGE_TYPE,
                vec![ty],
                format!("unknown message type {ty}"),
            ));
        }
    };
    if len < min || len > max {
        return Err(bad_len());
    }
    if buf.len() < len {
        return Ok(None);
    }
    Ok(Some(len))
}

/// Decode one whole message (as delimited by [`frame`]).
pub fn decode(msg: &[u8], codec: &Codec) -> Result<Message, DecodeError> {
    let len = match frame(msg, codec)? {
        Some(len) if len == msg.len() => len,
        _ => {
            return Err(DecodeError::new(
                codes::MESSAGE_HEADER,
                codes::header::BAD_MESSAGE_LENGTH,
                Vec::new(),
                "message length does not match the bytes given",
            ));
        }
    };
    let body = &msg[HEADER_LEN..len];
    match msg[18] {
        msg_type::OPEN => open::decode(msg).map(Message::Open),
        msg_type::UPDATE => update::decode(msg, codec).map(Message::Update),
        msg_type::NOTIFICATION => Ok(Message::Notification(NotificationMsg::decode(body))),
        msg_type::KEEPALIVE => Ok(Message::Keepalive),
        msg_type::ROUTE_REFRESH => decode_route_refresh(body),
        // frame() has rejected every other type.
        ty => Err(DecodeError::new(
            codes::MESSAGE_HEADER,
            codes::header::BAD_MESSAGE_TYPE,
            vec![ty],
            format!("unknown message type {ty}"),
        )),
    }
}

fn decode_route_refresh(body: &[u8]) -> Result<Message, DecodeError> {
    // RFC 7313 5: a ROUTE-REFRESH whose length is not 23 gets Invalid Message Length.
    if body.len() != 4 {
        return Err(DecodeError::new(
            codes::ROUTE_REFRESH,
            codes::route_refresh::INVALID_MESSAGE_LENGTH,
            body.to_vec(),
            format!("ROUTE-REFRESH of {} bytes", body.len() + HEADER_LEN),
        ));
    }
    Ok(Message::RouteRefresh {
        afi: u16::from_be_bytes([body[0], body[1]]),
        subtype: body[2],
        safi: body[3],
    })
}

fn header(buf: &mut Vec<u8>, ty: u8) {
    buf.extend_from_slice(&[0xff; 16]);
    buf.extend_from_slice(&[0, 0, ty]);
}

fn set_len(buf: &mut [u8]) {
    let len = buf.len() as u16;
    buf[16..18].copy_from_slice(&len.to_be_bytes());
}

/// Encode a message that has no variable size beyond the limits (everything but UPDATE, which
/// goes through [`encode_updates`] to be split as needed).
pub fn encode(msg: &Message, codec: &Codec) -> Vec<u8> {
    match msg {
        Message::Open(o) => o.encode(),
        Message::Update(u) => {
            let mut out = Vec::new();
            for m in encode_updates(u, codec) {
                out.extend_from_slice(&m);
            }
            out
        }
        Message::Notification(n) => n.encode(codec.max_len()),
        Message::Keepalive => {
            let mut b = Vec::with_capacity(HEADER_LEN);
            header(&mut b, msg_type::KEEPALIVE);
            set_len(&mut b);
            b
        }
        Message::RouteRefresh { afi, safi, subtype } => {
            let mut b = Vec::with_capacity(23);
            header(&mut b, msg_type::ROUTE_REFRESH);
            b.extend_from_slice(&afi.to_be_bytes());
            b.extend_from_slice(&[*subtype, *safi]);
            set_len(&mut b);
            b
        }
    }
}

#[cfg(test)]
mod tests;
