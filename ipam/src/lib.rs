//! Petrel's IP address management: hands out pod addresses from the node's pod CIDRs, one per
//! family per (container id, interface), stored on disk under an exclusive lock and updated
//! atomically, so that concurrent CNI calls and crashes never give one address to two pods.
//! Used by `petrel-ipam` (the CNI IPAM plugin) and read by the agent for its status.
