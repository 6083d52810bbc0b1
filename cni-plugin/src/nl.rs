//! The few rtnetlink operations a CNI call needs, synchronous: a plugin lives for
//! milliseconds, and a blocking socket per network namespace is the cheapest way to talk to
//! the kernel. The socket, its request loop and route parsing are petrel-netlink's (shared
//! with the agent's FIB); messages are built with netlink-packet-route.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::RawFd;

use ipnet::IpNet;
use petrel_netlink::netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE,
};
use petrel_netlink::netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
};
use petrel_netlink::netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use petrel_netlink::netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use petrel_netlink::netlink_packet_route::route::{
    RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use petrel_netlink::netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use petrel_netlink::{Socket, family, route_address as raddr};

/// A netlink socket in the network namespace of the thread that opened it.
pub struct Nl {
    sock: Socket,
}

/// A link as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Vec<u8>,
    pub mtu: u32,
    pub up: bool,
    pub kind: Option<String>,
}

/// A neighbour (ARP or NDP) entry as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    pub ip: IpAddr,
    pub mac: Vec<u8>,
    pub permanent: bool,
}

/// A route as the kernel reports it (main table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub scope_link: bool,
}

pub fn mac_string(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl Nl {
    pub fn open() -> io::Result<Nl> {
        Ok(Nl {
            sock: Socket::open()?,
        })
    }

    /// Send one request; collect the messages of the answer until its ACK, DONE or error.
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.sock.request(msg, flags)
    }

    fn link_of(m: LinkMessage) -> Link {
        let mut l = Link {
            index: m.header.index,
            name: String::new(),
            mac: Vec::new(),
            mtu: 0,
            up: m.header.flags.contains(LinkFlags::Up),
            kind: None,
        };
        for a in m.attributes {
            match a {
                LinkAttribute::IfName(n) => l.name = n,
                LinkAttribute::Address(mac) => l.mac = mac,
                LinkAttribute::Mtu(mtu) => l.mtu = mtu,
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        if let LinkInfo::Kind(k) = i {
                            l.kind = Some(k.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        l
    }

    /// The link called `name`, if there is one.
    pub fn link(&mut self, name: &str) -> io::Result<Option<Link>> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.get_link(m)
    }

    pub fn link_by_index(&mut self, index: u32) -> io::Result<Option<Link>> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        self.get_link(m)
    }

    /// One RTM_GETLINK; `None` when the kernel knows no such link.
    fn get_link(&mut self, m: LinkMessage) -> io::Result<Option<Link>> {
        match self.request(RouteNetlinkMessage::GetLink(m), 0) {
            Ok(r) => Ok(r.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(Self::link_of(l)),
                _ => None,
            })),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every link of the namespace.
    pub fn links(&mut self) -> io::Result<Vec<Link>> {
        let r = self.request(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(r.into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(Self::link_of(l)),
                _ => None,
            })
            .collect())
    }

    /// A veth pair: `host` here with MAC `host_mac`, `peer` created directly in the network
    /// namespace `peer_ns` (never moved afterwards). Fails with EEXIST if `host` exists.
    pub fn create_veth(
        &mut self,
        host: &str,
        host_mac: [u8; 6],
        peer: &str,
        peer_ns: RawFd,
        mtu: u32,
    ) -> io::Result<()> {
        // The host end comes up as it is created (one link change, and one taking of the
        // kernel's rtnl lock, fewer per pod). The peer cannot: veth refuses to open before
        // the pair is linked, which happens after the peer is configured.
        let mut p = LinkMessage::default();
        p.attributes.push(LinkAttribute::IfName(peer.to_string()));
        p.attributes.push(LinkAttribute::Mtu(mtu));
        p.attributes.push(LinkAttribute::NetNsFd(peer_ns));
        let mut m = LinkMessage::default();
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        m.attributes.push(LinkAttribute::IfName(host.to_string()));
        m.attributes.push(LinkAttribute::Mtu(mtu));
        m.attributes.push(LinkAttribute::Address(host_mac.to_vec()));
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))),
        ]));
        self.request(
            RouteNetlinkMessage::NewLink(m),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    pub fn set_up(&mut self, index: u32) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        self.request(RouteNetlinkMessage::SetLink(m), NLM_F_ACK)?;
        Ok(())
    }

    pub fn set_down(&mut self, index: u32) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.change_mask = LinkFlags::Up;
        self.request(RouteNetlinkMessage::SetLink(m), NLM_F_ACK)?;
        Ok(())
    }

    /// Delete a link (and, for a veth, its peer). `Ok(false)` if it was not there.
    pub fn delete_link(&mut self, name: &str) -> io::Result<bool> {
        let Some(l) = self.link(name)? else {
            return Ok(false);
        };
        let mut m = LinkMessage::default();
        m.header.index = l.index;
        match self.request(RouteNetlinkMessage::DelLink(m), NLM_F_ACK) {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Add `addr` to link `index`; IPv6 ones skip duplicate address detection.
    pub fn add_addr(&mut self, index: u32, addr: IpNet) -> io::Result<()> {
        let mut m = AddressMessage::default();
        m.header.family = family(&addr.addr());
        m.header.prefix_len = addr.prefix_len();
        m.header.index = index;
        m.header.scope = if addr.addr().is_ipv6()
            && matches!(addr.addr(), IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80)
        {
            AddressScope::Link
        } else {
            AddressScope::Universe
        };
        m.attributes.push(AddressAttribute::Local(addr.addr()));
        m.attributes.push(AddressAttribute::Address(addr.addr()));
        if addr.addr().is_ipv6() {
            m.header.flags = AddressHeaderFlags::Nodad;
            m.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        self.request(
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    /// The addresses on link `index`.
    pub fn addrs(&mut self, index: u32) -> io::Result<Vec<IpNet>> {
        let r = self.request(
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(r.into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == index => {
                    let len = a.header.prefix_len;
                    a.attributes.iter().find_map(|x| match x {
                        AddressAttribute::Address(ip) => IpNet::new(*ip, len).ok(),
                        _ => None,
                    })
                }
                _ => None,
            })
            .collect())
    }

    /// Add a route in the main table: through `gw` if given, else directly on the link.
    pub fn add_route(&mut self, dst: IpNet, gw: Option<IpAddr>, oif: u32) -> io::Result<()> {
        let mut m = RouteMessage::default();
        m.header.address_family = family(&dst.addr());
        m.header.destination_prefix_length = dst.prefix_len();
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::Boot;
        m.header.kind = RouteType::Unicast;
        m.header.scope = if gw.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        if dst.prefix_len() > 0 {
            m.attributes
                .push(RouteAttribute::Destination(raddr(dst.addr())));
        }
        if let Some(g) = gw {
            m.attributes.push(RouteAttribute::Gateway(raddr(g)));
        }
        m.attributes.push(RouteAttribute::Oif(oif));
        self.request(
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    /// Routes of the main table of one family.
    pub fn routes(&mut self, v6: bool) -> io::Result<Vec<RouteEntry>> {
        let mut q = RouteMessage::default();
        q.header.address_family = if v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let r = self.request(RouteNetlinkMessage::GetRoute(q), NLM_F_DUMP)?;
        let mut out = Vec::new();
        for m in r {
            let RouteNetlinkMessage::NewRoute(rt) = m else {
                continue;
            };
            if rt.header.table != RouteHeader::RT_TABLE_MAIN {
                continue;
            }
            if let Some(r) = petrel_netlink::route::parse(&rt) {
                out.push(RouteEntry {
                    dst: r.dst,
                    gateway: r.gateways.first().copied(),
                    oif: r.oif,
                    scope_link: r.scope == RouteScope::Link,
                });
            }
        }
        Ok(out)
    }

    /// A permanent neighbour entry `ip` → `mac` on link `index`, replacing any entry there.
    pub fn set_permanent_neighbour(
        &mut self,
        index: u32,
        ip: IpAddr,
        mac: [u8; 6],
    ) -> io::Result<()> {
        let mut m = NeighbourMessage::default();
        m.header.family = family(&ip);
        m.header.ifindex = index;
        m.header.state = NeighbourState::Permanent;
        m.attributes.push(NeighbourAttribute::Destination(match ip {
            IpAddr::V4(a) => NeighbourAddress::Inet(a),
            IpAddr::V6(a) => NeighbourAddress::Inet6(a),
        }));
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        self.request(
            RouteNetlinkMessage::NewNeighbour(m),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )?;
        Ok(())
    }

    /// The neighbour entries of both families on link `index`.
    pub fn neighbours(&mut self, index: u32) -> io::Result<Vec<Neighbour>> {
        let mut out = Vec::new();
        for fam in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut q = NeighbourMessage::default();
            q.header.family = fam;
            for m in self.request(RouteNetlinkMessage::GetNeighbour(q), NLM_F_DUMP)? {
                let RouteNetlinkMessage::NewNeighbour(n) = m else {
                    continue;
                };
                if n.header.ifindex != index {
                    continue;
                }
                let mut ip = None;
                let mut mac = Vec::new();
                for a in &n.attributes {
                    match a {
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                            ip = Some(IpAddr::V4(*a))
                        }
                        NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                            ip = Some(IpAddr::V6(*a))
                        }
                        NeighbourAttribute::LinkLayerAddress(m) => mac = m.clone(),
                        _ => {}
                    }
                }
                if let Some(ip) = ip {
                    out.push(Neighbour {
                        ip,
                        mac,
                        permanent: n.header.state == NeighbourState::Permanent,
                    });
                }
            }
        }
        Ok(out)
    }

    /// The MTU of the link traffic to the outside leaves through: a FIB lookup (not a dump:
    /// a node may hold a full BGP table) for an address no pod CIDR covers.
    pub fn uplink_mtu(&mut self) -> io::Result<Option<u32>> {
        for dst in [
            IpAddr::V4(Ipv4Addr::new(8, 8, 8, 8)),
            "2001:4860:4860::8888"
                .parse()
                .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        ] {
            let mut q = RouteMessage::default();
            q.header.address_family = family(&dst);
            q.header.destination_prefix_length = if dst.is_ipv4() { 32 } else { 128 };
            q.attributes.push(RouteAttribute::Destination(raddr(dst)));
            let oif = match self.request(RouteNetlinkMessage::GetRoute(q), 0) {
                Ok(r) => r.into_iter().find_map(|m| match m {
                    RouteNetlinkMessage::NewRoute(rt) => {
                        rt.attributes.iter().find_map(|a| match a {
                            RouteAttribute::Oif(i) => Some(*i),
                            _ => None,
                        })
                    }
                    _ => None,
                }),
                // No route: try the other family.
                Err(_) => None,
            };
            if let Some(i) = oif
                && let Some(l) = self.link_by_index(i)?
            {
                return Ok(Some(l.mtu));
            }
        }
        Ok(None)
    }

    /// Rename link `index`.
    pub fn rename(&mut self, index: u32, name: &str) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.request(RouteNetlinkMessage::SetLink(m), NLM_F_ACK)?;
        Ok(())
    }

    /// Delete the main-table route to `dst` through link `oif` (no error if it is gone).
    pub fn del_route(&mut self, dst: IpNet, oif: u32) -> io::Result<()> {
        let mut m = RouteMessage::default();
        m.header.address_family = family(&dst.addr());
        m.header.destination_prefix_length = dst.prefix_len();
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.scope = RouteScope::NoWhere;
        m.attributes
            .push(RouteAttribute::Destination(raddr(dst.addr())));
        m.attributes.push(RouteAttribute::Oif(oif));
        match self.request(RouteNetlinkMessage::DelRoute(m), NLM_F_ACK) {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Routes of the main table through link `oif`.
    pub fn routes_via(&mut self, oif: u32) -> io::Result<Vec<RouteEntry>> {
        let mut out = self.routes(false)?;
        out.extend(self.routes(true)?);
        out.retain(|r| r.oif == Some(oif));
        Ok(out)
    }
}
