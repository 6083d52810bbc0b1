//! OPEN (RFC 4271 4.2) and the capabilities Petrel uses (RFC 5492).

use std::collections::HashMap;
use std::net::Ipv4Addr;

use netgauze_bgp_pkt::BgpMessage;
use netgauze_bgp_pkt::capabilities::{
    BgpCapability, FourOctetAsCapability, GracefulRestartAddressFamily, GracefulRestartCapability,
    MultiProtocolExtensionsCapability,
};
use netgauze_bgp_pkt::open::{BgpOpenMessage, BgpOpenMessageParameter};
use netgauze_bgp_pkt::wire::deserializer::BgpParsingContext;
use netgauze_bgp_pkt::wire::deserializer::open::{
    BgpOpenMessageParsingError, BgpParameterParsingError,
};
use netgauze_parse_utils::WritablePdu;
use netgauze_parse_utils::reader::SliceReader;
use netgauze_parse_utils::traits::ParseFromWithOneInput;

use super::{AS_TRANS, Afi, DecodeError, HEADER_LEN, codes};

/// What a speaker says about itself in its OPEN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenMsg {
    /// The 2-octet "My Autonomous System" field (AS_TRANS when the real one needs 4 octets).
    pub my_as: u16,
    pub hold_time: u16,
    pub router_id: Ipv4Addr,
    pub caps: Capabilities,
}

/// The capabilities Petrel acts on; the codes of the others are kept for status.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// Multiprotocol extensions (RFC 4760), unicast families only.
    pub families: Vec<Afi>,
    pub route_refresh: bool,
    pub enhanced_route_refresh: bool,
    /// 4-octet AS number (RFC 6793).
    pub asn4: Option<u32>,
    pub graceful_restart: Option<GracefulRestartCap>,
    pub extended_message: bool,
    /// Codes of capabilities we do not act on.
    pub others: Vec<u8>,
}

/// Graceful restart capability (RFC 4724 3, RFC 8538 for the N bit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GracefulRestartCap {
    /// R bit: the sender has restarted.
    pub restarting: bool,
    /// N bit (RFC 8538): the sender supports graceful NOTIFICATION.
    pub notification: bool,
    /// Seconds the sender needs to come back.
    pub restart_time: u16,
    /// Families with their F bit (forwarding state preserved).
    pub families: Vec<(Afi, bool)>,
}

impl OpenMsg {
    /// An OPEN for `asn`, with the 4-octet capability always present.
    pub fn new(asn: u32, hold_time: u16, router_id: Ipv4Addr, mut caps: Capabilities) -> Self {
        caps.asn4 = Some(asn);
        OpenMsg {
            my_as: u16::try_from(asn).unwrap_or(AS_TRANS),
            hold_time,
            router_id,
            caps,
        }
    }

    /// The sender's AS: from the 4-octet capability when present (RFC 6793 4.1).
    pub fn asn(&self) -> u32 {
        self.caps.asn4.unwrap_or(self.my_as as u32)
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut caps = Vec::new();
        for afi in &self.caps.families {
            caps.push(BgpCapability::MultiProtocolExtensions(
                MultiProtocolExtensionsCapability::new(afi.address_type()),
            ));
        }
        if self.caps.route_refresh {
            caps.push(BgpCapability::RouteRefresh);
        }
        if self.caps.enhanced_route_refresh {
            caps.push(BgpCapability::EnhancedRouteRefresh);
        }
        if let Some(asn) = self.caps.asn4 {
            caps.push(BgpCapability::FourOctetAs(FourOctetAsCapability::new(asn)));
        }
        if let Some(gr) = &self.caps.graceful_restart {
            caps.push(BgpCapability::GracefulRestartCapability(
                GracefulRestartCapability::new(
                    gr.restarting,
                    gr.notification,
                    gr.restart_time.min(4095),
                    gr.families
                        .iter()
                        .map(|(afi, f)| GracefulRestartAddressFamily::new(*f, afi.address_type()))
                        .collect::<Vec<_>>(),
                ),
            ));
        }
        if self.caps.extended_message {
            caps.push(BgpCapability::ExtendedMessage);
        }
        let params = if caps.is_empty() {
            Vec::new()
        } else {
            vec![BgpOpenMessageParameter::new_capabilities(caps)]
        };
        let msg = BgpMessage::Open(BgpOpenMessage::new(
            self.my_as,
            self.hold_time,
            self.router_id,
            params,
        ));
        let mut out = Vec::with_capacity(64);
        // An OPEN built from our own capabilities is far below 4096 bytes; writing to a Vec
        // cannot fail.
        if msg.write(&mut out).is_err() {
            out.clear();
        }
        out
    }
}

/// Decode an OPEN (the whole message, header included).
pub(crate) fn decode(msg: &[u8]) -> Result<OpenMsg, DecodeError> {
    let body = &msg[HEADER_LEN..];
    // A malformed capability is ignored rather than fatal: the session then runs without it.
    let mut ctx = BgpParsingContext::new(
        true,
        HashMap::new(),
        HashMap::new(),
        true,
        true,
        false,
        true,
    );
    let mut reader = SliceReader::new(body);
    let open = BgpOpenMessage::parse(&mut reader, &mut ctx).map_err(open_error)?;
    if !reader.is_empty() {
        return Err(DecodeError::new(
            codes::MESSAGE_HEADER,
            codes::header::BAD_MESSAGE_LENGTH,
            (msg.len() as u16).to_be_bytes().to_vec(),
            "OPEN longer than its parameters",
        ));
    }
    let mut caps = Capabilities::default();
    for cap in open.capabilities() {
        match cap {
            BgpCapability::MultiProtocolExtensions(mp) => {
                if let Some(afi) = Afi::from_address_type(mp.address_type())
                    && !caps.families.contains(&afi)
                {
                    caps.families.push(afi);
                }
            }
            BgpCapability::RouteRefresh | BgpCapability::CiscoRouteRefresh => {
                caps.route_refresh = true
            }
            BgpCapability::EnhancedRouteRefresh => caps.enhanced_route_refresh = true,
            BgpCapability::FourOctetAs(a) => caps.asn4 = Some(a.asn4()),
            BgpCapability::GracefulRestartCapability(gr) => {
                caps.graceful_restart = Some(GracefulRestartCap {
                    restarting: gr.restart(),
                    notification: gr.graceful_notification(),
                    restart_time: gr.time(),
                    families: gr
                        .address_families()
                        .iter()
                        .filter_map(|f| {
                            Afi::from_address_type(f.address_type())
                                .map(|afi| (afi, f.forwarding_state()))
                        })
                        .collect(),
                })
            }
            BgpCapability::ExtendedMessage => caps.extended_message = true,
            other => {
                let code = match other.code() {
                    Ok(c) => c as u8,
                    Err(c) => c,
                };
                caps.others.push(code);
            }
        }
    }
    Ok(OpenMsg {
        my_as: open.my_as(),
        hold_time: open.hold_time(),
        router_id: open.bgp_id(),
        caps,
    })
}

fn open_error(e: BgpOpenMessageParsingError) -> DecodeError {
    use codes::open::*;
    let reason = e.to_string();
    let (sub, data) = match e {
        // RFC 4271 6.2: the data is the largest version we support.
        BgpOpenMessageParsingError::UnsupportedVersionNumber { .. } => {
            (UNSUPPORTED_VERSION, 4u16.to_be_bytes().to_vec())
        }
        BgpOpenMessageParsingError::UnacceptableHoldTime { .. } => {
            (UNACCEPTABLE_HOLD_TIME, Vec::new())
        }
        BgpOpenMessageParsingError::InvalidBgpId { .. } => (BAD_BGP_IDENTIFIER, Vec::new()),
        BgpOpenMessageParsingError::ParameterError(
            BgpParameterParsingError::UndefinedParameterType { .. },
        ) => (UNSUPPORTED_OPTIONAL_PARAMETER, Vec::new()),
        _ => (0, Vec::new()),
    };
    DecodeError::new(codes::OPEN_MESSAGE, sub, data, reason)
}
