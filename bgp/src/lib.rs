//! Petrel's BGP speaker.
//!
//! Layers, each depending only on the ones before it:
//! 1. [`wire`]: messages between bytes and typed structs (netgauze-bgp-pkt behind our types).
//! 2. [`fsm`]: the per-peer session state machine (RFC 4271 section 8), pure.
//! 3. [`rib`]: Adj-RIBs-In and the Loc-RIB with the decision process, pure; [`policy`] decides
//!    what enters it.
//! 4. [`runtime`]: the tokio shell that owns sockets and timers.
//!
//! The crate knows nothing of Kubernetes, the kernel FIB or files: it takes session configs
//! and the prefixes to originate, and hands back Loc-RIB changes and status.

pub mod fsm;
pub mod policy;
pub mod rib;
pub mod runtime;
pub mod wire;

pub use runtime::{
    GracefulRestart, PeerConfig, PeerStatus, RibOutput, Speaker, SpeakerConfig, SpeakerStatus,
};
