//! Petrel's routed CNI plugin (`petrel-cni`) and its IPAM plugin (`petrel-ipam`).
//!
//! One veth pair per pod, the pod end created directly in the pod's namespace; the pod holds
//! its address as a /32 (and /128) with a link-local gateway the host end answers by proxy
//! ARP (IPv4) or owns (IPv6, fe80::1); the node holds a /32 (/128) route to the pod through
//! its veth. No bridge, no overlay, no NAT.
//!
//! - [`cni`]: the protocol (environment, configuration, results, errors; spec 1.1.0 and
//!   the older versions runtimes still send).
//! - [`plugin`]: ADD, DEL, CHECK, GC, STATUS of `petrel-cni`.
//! - [`ipam_plugin`]: `petrel-ipam` over the `petrel-ipam` store.
//! - [`nl`], [`netns`]: the netlink operations and the namespace switching they need.
//! - [`install`]: copy the binaries to the CNI bin dir and write the conflist atomically.

pub mod cni;
pub mod install;
pub mod ipam_plugin;
pub mod netns;
pub mod nl;
pub mod plugin;
