//! Petrel's routed CNI plugin (`petrel-cni`): one veth pair per pod, the pod's address as a
//! /32 (and /128) with a link-local gateway answered by proxy-ARP/NDP on the host side, and
//! a host route to the pod through its veth. No bridge, no overlay, no NAT.
