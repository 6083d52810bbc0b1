//! The BFD Control packet, RFC 5880 section 4.1:
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |Vers |  Diag   |Sta|P|F|C|A|D|M|  Detect Mult  |    Length     |
//! |                       My Discriminator                        |
//! |                      Your Discriminator                       |
//! |                    Desired Min TX Interval                    |
//! |                   Required Min RX Interval                    |
//! |                 Required Min Echo RX Interval                 |
//! ```
//!
//! Intervals are in microseconds on the wire and here.

use thiserror::Error;

/// The length of a Control packet without authentication.
pub const LEN: usize = 24;

/// Session state (bfd.SessionState), section 4.1 "State (Sta)".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    AdminDown = 0,
    Down = 1,
    Init = 2,
    Up = 3,
}

impl State {
    fn from_bits(b: u8) -> State {
        match b & 3 {
            0 => State::AdminDown,
            1 => State::Down,
            2 => State::Init,
            _ => State::Up,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            State::AdminDown => "AdminDown",
            State::Down => "Down",
            State::Init => "Init",
            State::Up => "Up",
        }
    }
}

/// Diagnostic code (bfd.LocalDiag), section 4.1 "Diagnostic (Diag)".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Diag {
    None,
    /// 1: Control Detection Time Expired.
    DetectionTimeExpired,
    /// 2: Echo Function Failed.
    EchoFailed,
    /// 3: Neighbor Signaled Session Down.
    NeighborDown,
    /// 4: Forwarding Plane Reset.
    ForwardingReset,
    /// 5: Path Down.
    PathDown,
    /// 6: Concatenated Path Down.
    ConcatenatedPathDown,
    /// 7: Administratively Down.
    AdminDown,
    /// 8: Reverse Concatenated Path Down.
    ReverseConcatenatedPathDown,
    /// 9-31: reserved; kept as received.
    Other(u8),
}

impl Diag {
    pub fn code(self) -> u8 {
        match self {
            Diag::None => 0,
            Diag::DetectionTimeExpired => 1,
            Diag::EchoFailed => 2,
            Diag::NeighborDown => 3,
            Diag::ForwardingReset => 4,
            Diag::PathDown => 5,
            Diag::ConcatenatedPathDown => 6,
            Diag::AdminDown => 7,
            Diag::ReverseConcatenatedPathDown => 8,
            Diag::Other(c) => c & 0x1f,
        }
    }

    pub fn from_code(c: u8) -> Diag {
        match c & 0x1f {
            0 => Diag::None,
            1 => Diag::DetectionTimeExpired,
            2 => Diag::EchoFailed,
            3 => Diag::NeighborDown,
            4 => Diag::ForwardingReset,
            5 => Diag::PathDown,
            6 => Diag::ConcatenatedPathDown,
            7 => Diag::AdminDown,
            8 => Diag::ReverseConcatenatedPathDown,
            c => Diag::Other(c),
        }
    }

    /// How status shows it.
    pub fn describe(self) -> &'static str {
        match self {
            Diag::None => "no diagnostic",
            Diag::DetectionTimeExpired => "control detection time expired",
            Diag::EchoFailed => "echo function failed",
            Diag::NeighborDown => "neighbor signaled session down",
            Diag::ForwardingReset => "forwarding plane reset",
            Diag::PathDown => "path down",
            Diag::ConcatenatedPathDown => "concatenated path down",
            Diag::AdminDown => "administratively down",
            Diag::ReverseConcatenatedPathDown => "reverse concatenated path down",
            Diag::Other(_) => "reserved diagnostic",
        }
    }
}

/// A BFD Control packet. Authentication, when present (A bit), is kept as raw bytes: this
/// codec does not verify it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlMsg {
    pub diag: Diag,
    pub state: State,
    /// Poll (P): the sender asks for a packet with Final.
    pub poll: bool,
    /// Final (F): the answer to a Poll.
    pub fin: bool,
    /// Control Plane Independent (C): the sender's forwarding survives its control plane.
    pub cpi: bool,
    /// Demand (D); never set by us.
    pub demand: bool,
    pub detect_mult: u8,
    pub my_discr: u32,
    pub your_discr: u32,
    /// Microseconds.
    pub desired_min_tx: u32,
    /// Microseconds.
    pub required_min_rx: u32,
    /// Microseconds; 0: no Echo function.
    pub required_min_echo_rx: u32,
    /// The authentication section as received (type, length, data), if the A bit was set.
    pub auth: Option<Vec<u8>>,
}

/// Why a received packet is discarded (RFC 5880 section 6.8.6, the checks that need no
/// session). BFD has no error messages: a bad packet is dropped and counted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("{0} bytes: shorter than a Control packet")]
    Short(usize),
    #[error("version {0}, not 1")]
    Version(u8),
    #[error("length field {field} with {got} bytes received")]
    Length { field: u8, got: usize },
    #[error("detect multiplier zero")]
    ZeroMultiplier,
    #[error("multipoint bit set")]
    Multipoint,
    #[error("my discriminator zero")]
    ZeroMyDiscriminator,
    #[error("your discriminator zero in state {0}")]
    ZeroYourDiscriminator(&'static str),
    #[error("authentication section malformed")]
    Auth,
}

impl ControlMsg {
    /// Parse and check one datagram's payload.
    pub fn decode(b: &[u8]) -> Result<ControlMsg, DecodeError> {
        if b.len() < LEN {
            return Err(DecodeError::Short(b.len()));
        }
        let version = b[0] >> 5;
        if version != 1 {
            return Err(DecodeError::Version(version));
        }
        let flags = b[1];
        let auth_bit = flags & 0x04 != 0;
        let field = b[3];
        let min = if auth_bit { LEN + 2 } else { LEN };
        if (field as usize) < min || field as usize > b.len() {
            return Err(DecodeError::Length {
                field,
                got: b.len(),
            });
        }
        if b[2] == 0 {
            return Err(DecodeError::ZeroMultiplier);
        }
        if flags & 0x01 != 0 {
            return Err(DecodeError::Multipoint);
        }
        let word = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let state = State::from_bits(flags >> 6);
        let msg = ControlMsg {
            diag: Diag::from_code(b[0]),
            state,
            poll: flags & 0x20 != 0,
            fin: flags & 0x10 != 0,
            cpi: flags & 0x08 != 0,
            demand: flags & 0x02 != 0,
            detect_mult: b[2],
            my_discr: word(4),
            your_discr: word(8),
            desired_min_tx: word(12),
            required_min_rx: word(16),
            required_min_echo_rx: word(20),
            auth: if auth_bit {
                let a = &b[LEN..field as usize];
                // Auth Type, Auth Len (which covers the type and length bytes).
                if a.len() < 2 || (a[1] as usize) < 2 || a[1] as usize > a.len() {
                    return Err(DecodeError::Auth);
                }
                Some(a[..a[1] as usize].to_vec())
            } else {
                None
            },
        };
        if msg.my_discr == 0 {
            return Err(DecodeError::ZeroMyDiscriminator);
        }
        if msg.your_discr == 0 && !matches!(state, State::Down | State::AdminDown) {
            return Err(DecodeError::ZeroYourDiscriminator(state.name()));
        }
        Ok(msg)
    }

    pub fn encode(&self) -> Vec<u8> {
        let auth = self.auth.as_deref().unwrap_or(&[]);
        let len = LEN + auth.len();
        let mut b = Vec::with_capacity(len);
        b.push((1 << 5) | self.diag.code());
        b.push(
            ((self.state as u8) << 6)
                | (u8::from(self.poll) << 5)
                | (u8::from(self.fin) << 4)
                | (u8::from(self.cpi) << 3)
                | (u8::from(self.auth.is_some()) << 2)
                | (u8::from(self.demand) << 1),
        );
        b.push(self.detect_mult);
        b.push(len as u8);
        for w in [
            self.my_discr,
            self.your_discr,
            self.desired_min_tx,
            self.required_min_rx,
            self.required_min_echo_rx,
        ] {
            b.extend_from_slice(&w.to_be_bytes());
        }
        b.extend_from_slice(auth);
        b
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// FRR bfdd 8.4 (Debian 12) configured with `receive-interval 300`, `transmit-interval
    /// 300`, before it hears from its peer: state Down, no remote discriminator, 1 s slow
    /// transmission and 1 s receive while not Up, multiplier 3, C clear, echo 50 ms. Captured
    /// with `tcpdump -X udp port 3784` from 192.0.2.1.49152, TTL 255.
    #[test]
    fn frr_down_packet() {
        let bytes: [u8; 24] = [
            0x20, 0x40, 0x03, 0x18, 0x51, 0x6a, 0xec, 0x8f, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0f,
            0x42, 0x40, 0x00, 0x0f, 0x42, 0x40, 0x00, 0x00, 0xc3, 0x50,
        ];
        let m = ControlMsg::decode(&bytes).unwrap();
        assert_eq!(
            m,
            ControlMsg {
                diag: Diag::None,
                state: State::Down,
                poll: false,
                fin: false,
                cpi: false,
                demand: false,
                detect_mult: 3,
                my_discr: 0x516aec8f,
                your_discr: 0,
                desired_min_tx: 1_000_000,
                required_min_rx: 1_000_000,
                required_min_echo_rx: 50_000,
                auth: None,
            }
        );
        assert_eq!(m.encode(), bytes);
    }

    #[test]
    fn up_with_poll_and_cpi_and_a_diag() {
        let m = ControlMsg {
            diag: Diag::NeighborDown,
            state: State::Up,
            poll: true,
            fin: false,
            cpi: true,
            demand: false,
            detect_mult: 5,
            my_discr: 1,
            your_discr: 2,
            desired_min_tx: 300_000,
            required_min_rx: 200_000,
            required_min_echo_rx: 0,
            auth: None,
        };
        let b = m.encode();
        assert_eq!(&b[..4], &[0x23, 0xe8, 5, 24]);
        assert_eq!(ControlMsg::decode(&b).unwrap(), m);
    }

    #[test]
    fn reception_checks_of_6_8_6() {
        let good = ControlMsg {
            diag: Diag::None,
            state: State::Up,
            poll: false,
            fin: false,
            cpi: false,
            demand: false,
            detect_mult: 3,
            my_discr: 7,
            your_discr: 9,
            desired_min_tx: 300_000,
            required_min_rx: 300_000,
            required_min_echo_rx: 0,
            auth: None,
        }
        .encode();
        let with = |i: usize, v: u8| {
            let mut b = good.clone();
            b[i] = v;
            b
        };
        assert_eq!(ControlMsg::decode(&good[..20]), Err(DecodeError::Short(20)));
        assert_eq!(
            ControlMsg::decode(&with(0, 0x40)),
            Err(DecodeError::Version(2))
        );
        assert_eq!(
            ControlMsg::decode(&with(3, 30)),
            Err(DecodeError::Length { field: 30, got: 24 })
        );
        assert_eq!(
            ControlMsg::decode(&with(3, 20)),
            Err(DecodeError::Length { field: 20, got: 24 })
        );
        assert_eq!(
            ControlMsg::decode(&with(2, 0)),
            Err(DecodeError::ZeroMultiplier)
        );
        assert_eq!(
            ControlMsg::decode(&with(1, 0xc1)),
            Err(DecodeError::Multipoint)
        );
        let mut b = good.clone();
        b[4..8].copy_from_slice(&[0; 4]);
        assert_eq!(
            ControlMsg::decode(&b),
            Err(DecodeError::ZeroMyDiscriminator)
        );
        let mut b = good.clone();
        b[8..12].copy_from_slice(&[0; 4]);
        assert_eq!(
            ControlMsg::decode(&b),
            Err(DecodeError::ZeroYourDiscriminator("Up"))
        );
        // A with no room for an authentication section.
        assert_eq!(
            ControlMsg::decode(&with(1, 0xc4)),
            Err(DecodeError::Length { field: 24, got: 24 })
        );
        // Trailing bytes beyond the length field are ignored.
        let mut b = good.clone();
        b.extend_from_slice(&[0xde, 0xad]);
        assert!(ControlMsg::decode(&b).is_ok());
    }

    fn any_msg() -> impl Strategy<Value = ControlMsg> {
        (
            (0u8..32, 0u8..4, any::<[bool; 4]>(), 1u8..=255),
            (1u32.., 1u32.., any::<u32>(), any::<u32>(), any::<u32>()),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
        )
            .prop_map(
                |((diag, st, f, mult), (my, your, tx, rx, echo), auth)| ControlMsg {
                    diag: Diag::from_code(diag),
                    state: State::from_bits(st),
                    poll: f[0],
                    fin: f[1],
                    cpi: f[2],
                    demand: f[3],
                    detect_mult: mult,
                    my_discr: my,
                    your_discr: your,
                    desired_min_tx: tx,
                    required_min_rx: rx,
                    required_min_echo_rx: echo,
                    auth: auth.map(|mut a| {
                        // type, length (covering itself), data
                        let n = a.len() as u8 + 2;
                        a.insert(0, n);
                        a.insert(0, 1);
                        a
                    }),
                },
            )
    }

    proptest! {
        #[test]
        fn encode_then_decode_gives_it_back(m in any_msg()) {
            prop_assert_eq!(ControlMsg::decode(&m.encode()).unwrap(), m);
        }

        #[test]
        fn decoding_anything_never_panics(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = ControlMsg::decode(&b);
        }
    }
}
