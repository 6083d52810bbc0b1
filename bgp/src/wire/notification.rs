//! NOTIFICATION (RFC 4271 4.5): error code, subcode and data.
//!
//! Kept as the three raw fields: a received NOTIFICATION always ends the session, so decoding
//! it can never fail (an unknown code is still a NOTIFICATION), and the codes we send are
//! built from the constants in [`codes`].

use std::fmt;

use super::{HEADER_LEN, header, msg_type, set_len};

/// Error codes and subcodes (RFC 4271 4.5, RFC 4486, RFC 7313, RFC 8203).
pub mod codes {
    pub const MESSAGE_HEADER: u8 = 1;
    pub const OPEN_MESSAGE: u8 = 2;
    pub const UPDATE_MESSAGE: u8 = 3;
    pub const HOLD_TIMER_EXPIRED: u8 = 4;
    pub const FSM: u8 = 5;
    pub const CEASE: u8 = 6;
    pub const ROUTE_REFRESH: u8 = 7;

    pub mod header {
        pub const CONNECTION_NOT_SYNCHRONIZED: u8 = 1;
        pub const BAD_MESSAGE_LENGTH: u8 = 2;
        pub const BAD_MESSAGE_TYPE: u8 = 3;
    }
    pub mod open {
        pub const UNSUPPORTED_VERSION: u8 = 1;
        pub const BAD_PEER_AS: u8 = 2;
        pub const BAD_BGP_IDENTIFIER: u8 = 3;
        pub const UNSUPPORTED_OPTIONAL_PARAMETER: u8 = 4;
        pub const UNACCEPTABLE_HOLD_TIME: u8 = 6;
        pub const UNSUPPORTED_CAPABILITY: u8 = 7;
    }
    pub mod update {
        pub const MALFORMED_ATTRIBUTE_LIST: u8 = 1;
        pub const UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE: u8 = 2;
        pub const MISSING_WELL_KNOWN_ATTRIBUTE: u8 = 3;
        pub const ATTRIBUTE_FLAGS_ERROR: u8 = 4;
        pub const ATTRIBUTE_LENGTH_ERROR: u8 = 5;
        pub const INVALID_ORIGIN: u8 = 6;
        pub const INVALID_NEXT_HOP: u8 = 8;
        pub const OPTIONAL_ATTRIBUTE_ERROR: u8 = 9;
        pub const INVALID_NETWORK_FIELD: u8 = 10;
        pub const MALFORMED_AS_PATH: u8 = 11;
    }
    pub mod fsm {
        pub const UNSPECIFIED: u8 = 0;
        pub const UNEXPECTED_IN_OPENSENT: u8 = 1;
        pub const UNEXPECTED_IN_OPENCONFIRM: u8 = 2;
        pub const UNEXPECTED_IN_ESTABLISHED: u8 = 3;
    }
    pub mod cease {
        pub const MAX_PREFIXES: u8 = 1;
        pub const ADMIN_SHUTDOWN: u8 = 2;
        pub const PEER_DECONFIGURED: u8 = 3;
        pub const ADMIN_RESET: u8 = 4;
        pub const CONNECTION_REJECTED: u8 = 5;
        pub const OTHER_CONFIG_CHANGE: u8 = 6;
        pub const CONNECTION_COLLISION: u8 = 7;
        pub const OUT_OF_RESOURCES: u8 = 8;
        pub const HARD_RESET: u8 = 9;
        /// RFC 9384: a BFD session the BGP session depends on went Down.
        pub const BFD_DOWN: u8 = 10;
    }
    pub mod route_refresh {
        pub const INVALID_MESSAGE_LENGTH: u8 = 1;
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct NotificationMsg {
    pub code: u8,
    pub subcode: u8,
    pub data: Vec<u8>,
}

impl NotificationMsg {
    pub fn new(code: u8, subcode: u8, data: Vec<u8>) -> Self {
        NotificationMsg {
            code,
            subcode,
            data,
        }
    }

    pub fn cease(subcode: u8) -> Self {
        NotificationMsg::new(codes::CEASE, subcode, Vec::new())
    }

    /// Administrative shutdown with a message (RFC 8203/9003: a length byte and UTF-8).
    pub fn shutdown(reason: &str) -> Self {
        let mut data = Vec::new();
        let bytes = reason.as_bytes();
        // RFC 9003 allows up to 255 bytes; cut on a char boundary.
        let mut end = bytes.len().min(255);
        while end > 0 && !reason.is_char_boundary(end) {
            end -= 1;
        }
        if end > 0 {
            data.push(end as u8);
            data.extend_from_slice(&bytes[..end]);
        }
        NotificationMsg::new(codes::CEASE, codes::cease::ADMIN_SHUTDOWN, data)
    }

    pub(crate) fn decode(body: &[u8]) -> Self {
        // frame() guarantees at least the two code bytes.
        let code = body.first().copied().unwrap_or(0);
        let subcode = body.get(1).copied().unwrap_or(0);
        NotificationMsg::new(code, subcode, body.get(2..).unwrap_or(&[]).to_vec())
    }

    pub(crate) fn encode(&self, max_len: usize) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER_LEN + 2 + self.data.len());
        header(&mut b, msg_type::NOTIFICATION);
        b.push(self.code);
        b.push(self.subcode);
        let room = max_len - HEADER_LEN - 2;
        b.extend_from_slice(&self.data[..self.data.len().min(room)]);
        set_len(&mut b);
        b
    }

    /// Human name of the code and subcode.
    pub fn name(&self) -> String {
        use codes::*;
        let code = match self.code {
            MESSAGE_HEADER => "Message Header Error",
            OPEN_MESSAGE => "OPEN Message Error",
            UPDATE_MESSAGE => "UPDATE Message Error",
            HOLD_TIMER_EXPIRED => "Hold Timer Expired",
            FSM => "Finite State Machine Error",
            CEASE => "Cease",
            ROUTE_REFRESH => "ROUTE-REFRESH Message Error",
            _ => "Unknown error",
        };
        let sub = match (self.code, self.subcode) {
            (MESSAGE_HEADER, 1) => "Connection Not Synchronized",
            (MESSAGE_HEADER, 2) => "Bad Message Length",
            (MESSAGE_HEADER, 3) => "Bad Message Type",
            (OPEN_MESSAGE, 1) => "Unsupported Version Number",
            (OPEN_MESSAGE, 2) => "Bad Peer AS",
            (OPEN_MESSAGE, 3) => "Bad BGP Identifier",
            (OPEN_MESSAGE, 4) => "Unsupported Optional Parameter",
            (OPEN_MESSAGE, 6) => "Unacceptable Hold Time",
            (OPEN_MESSAGE, 7) => "Unsupported Capability",
            (UPDATE_MESSAGE, 1) => "Malformed Attribute List",
            (UPDATE_MESSAGE, 2) => "Unrecognized Well-known Attribute",
            (UPDATE_MESSAGE, 3) => "Missing Well-known Attribute",
            (UPDATE_MESSAGE, 4) => "Attribute Flags Error",
            (UPDATE_MESSAGE, 5) => "Attribute Length Error",
            (UPDATE_MESSAGE, 6) => "Invalid ORIGIN Attribute",
            (UPDATE_MESSAGE, 8) => "Invalid NEXT_HOP Attribute",
            (UPDATE_MESSAGE, 9) => "Optional Attribute Error",
            (UPDATE_MESSAGE, 10) => "Invalid Network Field",
            (UPDATE_MESSAGE, 11) => "Malformed AS_PATH",
            (FSM, 1) => "Unexpected Message in OpenSent",
            (FSM, 2) => "Unexpected Message in OpenConfirm",
            (FSM, 3) => "Unexpected Message in Established",
            (CEASE, 1) => "Maximum Number of Prefixes Reached",
            (CEASE, 2) => "Administrative Shutdown",
            (CEASE, 3) => "Peer De-configured",
            (CEASE, 4) => "Administrative Reset",
            (CEASE, 5) => "Connection Rejected",
            (CEASE, 6) => "Other Configuration Change",
            (CEASE, 7) => "Connection Collision Resolution",
            (CEASE, 8) => "Out of Resources",
            (CEASE, 9) => "Hard Reset",
            (CEASE, 10) => "BFD Down",
            (ROUTE_REFRESH, 1) => "Invalid Message Length",
            _ => "",
        };
        let mut s = if sub.is_empty() {
            format!("{code} ({}/{})", self.code, self.subcode)
        } else {
            format!("{code}: {sub} ({}/{})", self.code, self.subcode)
        };
        // RFC 8203 shutdown communication.
        if self.code == CEASE
            && matches!(self.subcode, 2 | 4)
            && let Some((&n, rest)) = self.data.split_first()
            && let Some(text) = rest.get(..n as usize)
            && let Ok(text) = std::str::from_utf8(text)
        {
            s.push_str(&format!(": \"{}\"", text.escape_debug()));
        }
        s
    }
}

impl fmt::Display for NotificationMsg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}
