//! Petrel's BGP speaker.
//!
//! Layers, each depending only on the ones before it:
//! 1. [`wire`]: messages between bytes and typed structs (netgauze-bgp-pkt behind our types).
//! 2. [`fsm`]: the per-peer session state machine (RFC 4271 section 8), pure.
//! 3. [`rib`]: Adj-RIB-In, Loc-RIB with the decision process, pure.
//! 4. [`runtime`]: the tokio shell that owns sockets and timers.
//!
//! The crate knows nothing of Kubernetes, the kernel FIB or files: it takes session
//! configs and routes to originate, and hands back Loc-RIB changes and status.

pub mod fsm;
pub mod rib;
pub mod wire;
