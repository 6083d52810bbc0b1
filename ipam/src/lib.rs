//! Petrel's IP address management: hands out pod addresses from the node's pod CIDRs, one per
//! family per (container id, interface), stored on disk under an exclusive lock and updated
//! atomically, so that concurrent CNI calls and crashes never give one address to two pods.
//!
//! - [`pool`]: which addresses of a CIDR may be given out, and the next free one (pure).
//! - [`store`]: the on-disk state, its lock, and the operations (allocate, release, GC, list).
//!
//! Used by `petrel-ipam` (the CNI IPAM plugin) and readable by anything that wants the
//! allocations (the same file, through the same code).

pub mod pool;
pub mod store;

pub use store::{Allocation, Error, Store};
