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
//! and the node's own routes by source, and hands back Loc-RIB changes (with the selected
//! paths) and status.

pub mod fsm;
pub mod policy;
pub mod rib;
pub mod runtime;
pub mod wire;

pub use policy::Source;
pub use runtime::{
    BySource, GracefulRestart, LocalRoute, PeerConfig, PeerRange, PeerStatus, RibOutput, Speaker,
    SpeakerConfig, SpeakerStatus,
};
