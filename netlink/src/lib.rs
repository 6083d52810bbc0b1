//! The rtnetlink layer shared by the agent's FIB and the CNI plugin: synchronous, one socket
//! per network namespace (the namespace of the thread that opens it), messages built with
//! netlink-packet-route.
//!
//! - [`Socket`]: a bound, connected NETLINK_ROUTE socket with extended ACKs; [`Socket::request`]
//!   sends one request and collects its answer (until the ACK, DONE or error), and
//!   [`Socket::append`] / [`Socket::send_raw`] / [`Socket::recv_raw`] let a caller pipeline many
//!   requests in one send.
//! - [`headers`]: the messages of a receive buffer, without parsing their payload.
//! - [`route`]: a route message as plain data (destination, gateways, interface, table, ...).
//! - [`attach_filter`]: a classic BPF program on a socket (e.g. only the notifications wanted).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::route::RouteAddress;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{SocketAddr, protocols::NETLINK_ROUTE};

pub use netlink_packet_core;
pub use netlink_packet_route;
pub use netlink_sys;

/// NLMSG_ERROR: an ACK (code 0) or an error (negative errno).
pub const NLMSG_ERROR: u16 = 2;
/// NLMSG_DONE: the end of a dump.
pub const NLMSG_DONE: u16 = 3;
pub const RTM_NEWROUTE: u16 = 24;
pub const RTM_DELROUTE: u16 = 25;

/// A NETLINK_ROUTE socket in the network namespace of the thread that opened it.
pub struct Socket {
    sock: netlink_sys::Socket,
    seq: u32,
    port: u32,
    rx: Vec<u8>,
}

/// The fixed header of one netlink message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub len: usize,
    pub ty: u16,
    pub seq: u32,
    /// The port the message is from, or, in a notification, the port whose request caused it.
    pub pid: u32,
}

/// The messages of a receive buffer, each with its header and its whole bytes.
pub fn headers(buf: &[u8]) -> impl Iterator<Item = (Header, &[u8])> {
    let mut off = 0;
    std::iter::from_fn(move || {
        if off + 16 > buf.len() {
            return None;
        }
        let u32_at = |i: usize| u32::from_ne_bytes(buf[i..i + 4].try_into().unwrap_or([0; 4]));
        let len = u32_at(off) as usize;
        if len < 16 || off + len > buf.len() {
            return None;
        }
        let h = Header {
            len,
            ty: u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap_or([0; 2])),
            seq: u32_at(off + 8),
            pid: u32_at(off + 12),
        };
        let m = &buf[off..off + len];
        off += (len + 3) & !3;
        Some((h, m))
    })
}

/// The status of an NLMSG_ERROR message: 0 for an ACK, else a negative errno.
pub fn error_code(msg: &[u8]) -> Option<i32> {
    msg.get(16..20)
        .map(|b| i32::from_ne_bytes(b.try_into().unwrap_or([0; 4])))
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

impl Socket {
    /// Open a socket in the current thread's network namespace.
    pub fn open() -> io::Result<Socket> {
        let mut sock = netlink_sys::Socket::new(NETLINK_ROUTE)?;
        let port = sock.bind_auto()?.port_number();
        sock.connect(&SocketAddr::new(0, 0))?;
        sock.set_ext_ack(true)?;
        Ok(Socket {
            sock,
            seq: 1,
            port,
            rx: vec![0u8; 64 * 1024],
        })
    }

    /// Our port id: the kernel's notifications of changes we asked for carry it.
    pub fn port(&self) -> u32 {
        self.port
    }

    pub fn inner(&self) -> &netlink_sys::Socket {
        &self.sock
    }

    /// Room for this many bytes of answers (a pipelined batch's ACKs).
    pub fn set_rx_buf(&mut self, kernel: usize, ours: usize) {
        let _ = self.sock.set_rx_buf_sz(kernel);
        self.rx.resize(ours, 0);
    }

    /// ACKs without the request echoed back.
    pub fn set_cap_ack(&mut self, on: bool) -> io::Result<()> {
        self.sock.set_cap_ack(on)
    }

    /// Serialise `msg` with `flags` (NLM_F_REQUEST is added) at the end of `buf`; returns
    /// its sequence number.
    pub fn append(&mut self, buf: &mut Vec<u8>, msg: RouteNetlinkMessage, flags: u16) -> u32 {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1).max(1);
        let mut hdr = NetlinkHeader::default();
        hdr.flags = NLM_F_REQUEST | flags;
        hdr.sequence_number = seq;
        let mut m = NetlinkMessage::new(hdr, NetlinkPayload::InnerMessage(msg));
        m.finalize();
        let at = buf.len();
        buf.resize(at + m.buffer_len(), 0);
        m.serialize(&mut buf[at..]);
        seq
    }

    pub fn send_raw(&self, buf: &[u8]) -> io::Result<()> {
        self.sock.send(buf, 0).map(|_| ())
    }

    /// One receive: the bytes of one or more messages.
    pub fn recv_raw(&mut self) -> io::Result<&[u8]> {
        let n = self.sock.recv(&mut &mut self.rx[..], 0)?;
        Ok(&self.rx[..n])
    }

    /// Send one request and collect the messages of its answer until its ACK, DONE or
    /// error. Every request that is not a dump asks for an ACK: that is how we know its
    /// answer is complete.
    pub fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut buf = Vec::new();
        let seq = self.append(&mut buf, msg, if dump { flags } else { flags | NLM_F_ACK });
        self.send_raw(&buf)?;
        let mut replies = Vec::new();
        loop {
            let n = self.sock.recv(&mut &mut self.rx[..], 0)?;
            for (h, m) in headers(&self.rx[..n]) {
                if h.seq != seq {
                    continue;
                }
                match h.ty {
                    NLMSG_ERROR => {
                        return match error_code(m) {
                            Some(0) | None => Ok(replies),
                            Some(c) => Err(io::Error::from_raw_os_error(-c)),
                        };
                    }
                    NLMSG_DONE => return Ok(replies),
                    _ => {
                        let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(m)
                            .map_err(invalid)?;
                        if let NetlinkPayload::InnerMessage(m) = reply.payload {
                            replies.push(m);
                        }
                    }
                }
            }
        }
    }

    /// Every address of the namespace with its prefix length, both families.
    pub fn addresses(&mut self) -> io::Result<Vec<ipnet::IpNet>> {
        use netlink_packet_route::address::{AddressAttribute, AddressMessage};
        let mut out = Vec::new();
        for m in self.dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))? {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
            let addr = a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let addr = addr.or_else(|| {
                a.attributes.iter().find_map(|x| match x {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            });
            if let Some(ip) = addr
                && let Ok(net) = ipnet::IpNet::new(ip, a.header.prefix_len)
            {
                out.push(net);
            }
        }
        Ok(out)
    }

    /// A dump (NLM_F_DUMP) of `msg`'s kind.
    pub fn dump(&mut self, msg: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.request(msg, NLM_F_DUMP)
    }
}

/// Addresses between std and netlink-packet-route.
pub fn route_address(a: IpAddr) -> RouteAddress {
    match a {
        IpAddr::V4(a) => RouteAddress::Inet(a),
        IpAddr::V6(a) => RouteAddress::Inet6(a),
    }
}

pub fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

pub fn family(a: &IpAddr) -> AddressFamily {
    match a {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// Routes as plain data.
pub mod route {
    use super::*;
    use ipnet::IpNet;
    use netlink_packet_route::route::{RouteAttribute, RouteMessage, RouteScope, RouteType};

    /// A route as the kernel reports it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Route {
        pub dst: IpNet,
        /// Every gateway, of a plain route or of each of its multipath next hops; sorted.
        pub gateways: Vec<IpAddr>,
        pub oif: Option<u32>,
        pub table: u32,
        pub protocol: u8,
        pub kind: RouteType,
        pub scope: RouteScope,
    }

    /// A route message as a [`Route`] (`None` for a family other than IPv4 and IPv6).
    pub fn parse(r: &RouteMessage) -> Option<Route> {
        let mut table = r.header.table as u32;
        let mut dst: Option<IpAddr> = None;
        let mut gateways = Vec::new();
        let mut oif = None;
        for a in &r.attributes {
            match a {
                RouteAttribute::Table(t) => table = *t,
                RouteAttribute::Destination(d) => dst = ip_of(d),
                RouteAttribute::Gateway(g) => gateways.extend(ip_of(g)),
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::MultiPath(hops) => {
                    for h in hops {
                        for a in &h.attributes {
                            if let RouteAttribute::Gateway(g) = a {
                                gateways.extend(ip_of(g));
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        let any = match r.header.address_family {
            AddressFamily::Inet => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            _ => return None,
        };
        gateways.sort();
        Some(Route {
            dst: IpNet::new(dst.unwrap_or(any), r.header.destination_prefix_length).ok()?,
            gateways,
            oif,
            table,
            protocol: u8::from(r.header.protocol),
            kind: r.header.kind,
            scope: r.header.scope,
        })
    }
}

/// Attach a classic BPF program to `sock` (SO_ATTACH_FILTER).
pub fn attach_filter(sock: &netlink_sys::Socket, code: &mut [libc::sock_filter]) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let prog = libc::sock_fprog {
        len: code.len() as u16,
        filter: code.as_mut_ptr(),
    };
    // SAFETY: `prog` points at `code`, both alive for the call; the kernel copies them.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            &prog as *const libc::sock_fprog as *const libc::c_void,
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_walk_a_buffer_and_stop_at_a_short_message() {
        let mut buf = Vec::new();
        for (ty, seq, pid) in [(NLMSG_ERROR, 7u32, 0u32), (RTM_DELROUTE, 8, 42)] {
            let len = 20u32;
            buf.extend_from_slice(&len.to_ne_bytes());
            buf.extend_from_slice(&ty.to_ne_bytes());
            buf.extend_from_slice(&0u16.to_ne_bytes());
            buf.extend_from_slice(&seq.to_ne_bytes());
            buf.extend_from_slice(&pid.to_ne_bytes());
            buf.extend_from_slice(&(-3i32).to_ne_bytes());
        }
        buf.extend_from_slice(&[1, 2, 3]);
        let got: Vec<(u16, u32, u32)> = headers(&buf).map(|(h, _)| (h.ty, h.seq, h.pid)).collect();
        assert_eq!(got, vec![(NLMSG_ERROR, 7, 0), (RTM_DELROUTE, 8, 42)]);
        let (_, first) = headers(&buf).next().unwrap();
        assert_eq!(error_code(first), Some(-3));
    }
}
