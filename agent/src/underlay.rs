//! The underlay for next-hop tracking: the kernel's main-table routes that are not
//! Petrel's own (connected subnets, static routes, other daemons'), followed as they change
//! and handed to the speaker whole.
//!
//! ```text
//!   kernel ──route notifications──► underlay thread ──UnderlayTx (latest only)──► forwarder task ──► speaker
//! ```
//!
//! The thread never waits on anyone: it replaces the published table; the forwarder task
//! sends the newest one to the speaker when the previous one has gone in. Petrel's own
//! routes never reach the thread (a socket filter drops them in the kernel), so the FIB's
//! installs do not wake it, and they take no part in resolution: a route that resolves
//! through routes Petrel installed could keep itself alive.

use std::collections::HashMap;
use std::sync::Arc;

use ipnet::IpNet;
use petrel_bgp::rib::UnderlayRoute;
use petrel_netlink::netlink_packet_route::route::{RouteScope, RouteType};
use petrel_netlink::route::Route;
use tracing::{debug, warn};

use crate::msg::{UnderlayRx, UnderlayTx};

/// The kernel's main routing table.
const MAIN: u32 = 254;

/// What a kernel route offers the underlay (`None`: nothing: another table, Petrel's own,
/// local/broadcast/multicast routes).
pub fn underlay_route(r: &Route, ours: u8) -> Option<UnderlayRoute> {
    if r.table != MAIN || r.protocol == ours {
        return None;
    }
    let reachable = match r.kind {
        RouteType::Unicast => true,
        RouteType::BlackHole | RouteType::Unreachable | RouteType::Prohibit => false,
        _ => return None,
    };
    // A host scope route is the node's own address: nothing to forward through.
    if r.scope == RouteScope::Host {
        return None;
    }
    Some(UnderlayRoute {
        dst: r.dst,
        gateways: r.gateways.clone(),
        metric: 0,
        reachable,
    })
}

/// The underlay as the thread keeps it: one route per destination and metric.
#[derive(Debug, Default)]
pub struct Table {
    routes: HashMap<(IpNet, u32), UnderlayRoute>,
}

impl Table {
    pub fn add(&mut self, r: UnderlayRoute) {
        self.routes.insert((r.dst, r.metric), r);
    }

    pub fn remove(&mut self, dst: IpNet, metric: u32) -> bool {
        self.routes.remove(&(dst, metric)).is_some()
    }

    pub fn list(&self) -> Vec<UnderlayRoute> {
        let mut v: Vec<UnderlayRoute> = self.routes.values().cloned().collect();
        v.sort_by_key(|r| (r.dst, r.metric));
        v
    }
}

/// A route message's metric (RTA_PRIORITY).
fn metric_of(r: &petrel_netlink::netlink_packet_route::route::RouteMessage) -> u32 {
    use petrel_netlink::netlink_packet_route::route::RouteAttribute;
    r.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Priority(p) => Some(*p),
            _ => None,
        })
        .unwrap_or(0)
}

fn parse(
    r: &petrel_netlink::netlink_packet_route::route::RouteMessage,
    ours: u8,
) -> Option<UnderlayRoute> {
    let route = petrel_netlink::route::parse(r)?;
    let mut u = underlay_route(&route, ours)?;
    u.metric = metric_of(r);
    Some(u)
}

/// Let through only route notifications whose `rtm_protocol` is not `ours` (a classic BPF
/// socket filter): the FIB's own changes do not wake the thread.
fn not_ours(sock: &petrel_netlink::netlink_sys::Socket, ours: u8) -> std::io::Result<()> {
    let f = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    let mut code = [
        // A = rtm_protocol: byte 5 of the rtmsg after the 16-byte netlink header
        f(0x30, 0, 0, 16 + 5),
        // if A == ours: drop
        f(0x15, 1, 0, ours as u32),
        f(0x06, 0, 0, 0xffff_ffff),
        f(0x06, 0, 0, 0),
    ];
    petrel_netlink::attach_filter(sock, &mut code)
}

/// Every main-table route that is not `ours`, both families.
fn dump(ours: u8) -> std::io::Result<Table> {
    use petrel_netlink::netlink_packet_route::AddressFamily;
    use petrel_netlink::netlink_packet_route::RouteNetlinkMessage;
    use petrel_netlink::netlink_packet_route::route::RouteMessage;
    let mut sock = petrel_netlink::Socket::open()?;
    let mut t = Table::default();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut m = RouteMessage::default();
        m.header.address_family = family;
        for r in sock.dump(RouteNetlinkMessage::GetRoute(m))? {
            if let RouteNetlinkMessage::NewRoute(r) = r
                && let Some(u) = parse(&r, ours)
            {
                t.add(u);
            }
        }
    }
    Ok(t)
}

/// Start following the underlay; the first table is published before this returns.
pub fn start(ours: u8) -> std::io::Result<UnderlayRx> {
    use petrel_netlink::netlink_packet_core::{NetlinkMessage, NetlinkPayload};
    use petrel_netlink::netlink_packet_route::RouteNetlinkMessage;
    use petrel_netlink::netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

    const RTMGRP_IPV4_ROUTE: u32 = 0x40;
    const RTMGRP_IPV6_ROUTE: u32 = 0x400;
    let mut sock = Socket::new(NETLINK_ROUTE)?;
    not_ours(&sock, ours)?;
    sock.bind(&SocketAddr::new(0, RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE))?;
    let _ = sock.set_rx_buf_sz(1024 * 1024);
    // Subscribed first, then read whole: no change falls between the two.
    let mut table = dump(ours)?;
    let (tx, rx): (UnderlayTx, UnderlayRx) = tokio::sync::watch::channel(Arc::new(table.list()));
    std::thread::Builder::new()
        .name("underlay".into())
        .spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = match sock.recv(&mut &mut buf[..], 0) {
                    Ok(n) => n,
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                        // Notifications were lost: read the table again.
                        warn!("underlay notifications lost; reading the routing table again");
                        match dump(ours) {
                            Ok(t) => table = t,
                            Err(e) => warn!(error = %e, "cannot read the routing table"),
                        }
                        tx.send_replace(Arc::new(table.list()));
                        continue;
                    }
                    Err(_) => return,
                };
                let mut changed = false;
                for (_, m) in petrel_netlink::headers(&buf[..n]) {
                    let Ok(m) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(m) else {
                        continue;
                    };
                    match m.payload {
                        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(r)) => {
                            if let Some(u) = parse(&r, ours) {
                                table.add(u);
                                changed = true;
                            }
                        }
                        NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelRoute(r)) => {
                            if let Some(u) = parse(&r, ours) {
                                changed |= table.remove(u.dst, u.metric);
                            }
                        }
                        _ => {}
                    }
                }
                if changed {
                    debug!(routes = table.routes.len(), "underlay changed");
                    if tx.send(Arc::new(table.list())).is_err() {
                        return;
                    }
                }
            }
        })?;
    Ok(rx)
}

/// Hand every new underlay to the speaker, the newest first when several came while the
/// last one went in. Ends with the speaker.
pub async fn forward(mut rx: UnderlayRx, speaker: petrel_bgp::Speaker) {
    loop {
        let routes: Vec<UnderlayRoute> = rx.borrow_and_update().as_ref().clone();
        if speaker.set_underlay(routes).await.is_err() {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn route(dst: &str, gws: &[&str], protocol: u8, kind: RouteType) -> Route {
        Route {
            dst: dst.parse().unwrap(),
            gateways: gws.iter().map(|g| g.parse().unwrap()).collect(),
            oif: Some(2),
            table: MAIN,
            protocol,
            kind,
            scope: RouteScope::Universe,
        }
    }

    #[test]
    fn what_the_underlay_takes() {
        const OURS: u8 = 201;
        let st = route("10.255.0.0/24", &["192.0.2.1"], 4, RouteType::Unicast);
        assert_eq!(
            underlay_route(&st, OURS).unwrap().gateways,
            vec!["192.0.2.1".parse::<IpAddr>().unwrap()]
        );
        // Petrel's own routes and its blackholes: never.
        assert!(
            underlay_route(
                &route("10.1.0.0/16", &["192.0.2.1"], OURS, RouteType::Unicast),
                OURS
            )
            .is_none()
        );
        assert!(
            underlay_route(&route("10.2.0.0/24", &[], OURS, RouteType::BlackHole), OURS).is_none()
        );
        // Someone else's blackhole: covers next hops as unreachable.
        assert!(
            !underlay_route(&route("10.3.0.0/24", &[], 4, RouteType::BlackHole), OURS)
                .unwrap()
                .reachable
        );
        // Other tables, local and broadcast routes: no.
        let mut other = st.clone();
        other.table = 100;
        assert!(underlay_route(&other, OURS).is_none());
        assert!(underlay_route(&route("192.0.2.5/32", &[], 2, RouteType::Local), OURS).is_none());
        let mut t = Table::default();
        let u = underlay_route(&st, OURS).unwrap();
        t.add(u.clone());
        t.add(u.clone());
        assert_eq!(t.list().len(), 1);
        assert!(t.remove(u.dst, 0));
        assert!(t.list().is_empty());
    }
}
