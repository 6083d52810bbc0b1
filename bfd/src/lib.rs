//! Bidirectional Forwarding Detection for Petrel, shaped like the BGP speaker:
//!
//! - [`packet`]: the BFD Control packet (RFC 5880 section 4.1) between bytes and a struct,
//!   with the reception checks of section 6.8.6 that need no session. No sockets, no clock.
//! - [`session`]: one session's state machine (sections 6.2, 6.8.1-6.8.7): a received
//!   packet, a timer that fired, an administrative change in; packets to send, timers to
//!   arm and state changes out. It never reads the clock: intervals come out as durations
//!   for the shell to arm, and the shell passes the random part of the jitter in.
//! - [`runtime`]: the tokio shell: UDP sockets (TTL 255 out, checked on receipt for
//!   single-hop), the timers, and a latest-value status per session for whoever watches.
//!
//! Asynchronous mode only (no Demand mode, no Echo function), as single-hop (RFC 5881) and
//! multihop (RFC 5883) sessions alike: what differs between them (ports, TTL checks) is
//! the runtime's business.

pub mod packet;
pub mod runtime;
pub mod session;

pub use packet::{ControlMsg, DecodeError, Diag, State};
pub use session::{Action, Config, Input, Session, Timer};
