//! Routes in and out of the kernel over rtnetlink, in batches.
//!
//! Blocking, meant for a thread of its own. A batch of operations goes out as many netlink
//! messages in one `send` (each asking for an ACK), then the ACKs are read back and matched
//! by sequence number, so a batch of a thousand routes costs two system calls and the kernel's
//! own work. Only routes tagged with our protocol number in our table are ever touched.

use std::io;
use std::net::IpAddr;

use ipnet::IpNet;
use petrel_netlink::netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use petrel_netlink::netlink_packet_route::route::{
    RouteAttribute, RouteHeader, RouteMessage, RouteNextHop, RouteProtocol, RouteScope, RouteType,
};
use petrel_netlink::netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use petrel_netlink::{NLMSG_ERROR, Socket, error_code, headers, route_address};

/// Where a route sends its packets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Through these gateways (several: ECMP), sorted; shared by the routes that use them.
    Via(std::sync::Arc<Vec<IpAddr>>),
    /// Dropped silently.
    Blackhole,
    /// Dropped with an ICMP unreachable.
    Unreachable,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteOp {
    /// Install or replace.
    Replace {
        prefix: IpNet,
        target: Target,
    },
    /// Install unless a route for the prefix is there already (used to restore a route
    /// someone deleted without racing a replace of our own).
    AddIfMissing {
        prefix: IpNet,
        target: Target,
    },
    Delete {
        prefix: IpNet,
    },
}

impl Target {
    /// The same route in the kernel's eyes (gateway order aside).
    pub fn same_as(&self, other: &Target) -> bool {
        match (self, other) {
            (Target::Via(a), Target::Via(b)) => {
                let (mut a, mut b) = (a.to_vec(), b.to_vec());
                a.sort();
                b.sort();
                a == b
            }
            (a, b) => a == b,
        }
    }
}

impl RouteOp {
    pub fn prefix(&self) -> IpNet {
        match self {
            RouteOp::Replace { prefix, .. }
            | RouteOp::AddIfMissing { prefix, .. }
            | RouteOp::Delete { prefix } => *prefix,
        }
    }
}

/// A route of ours found in the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRoute {
    pub prefix: IpNet,
    pub target: Target,
}

/// The identity of our routes: protocol number, table, metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteTag {
    pub protocol: u8,
    pub table: u32,
    pub metric: u32,
}

pub struct Netlink {
    sock: Socket,
    /// Our netlink port id: the kernel's notifications of our own changes carry it.
    pub port: u32,
    tag: RouteTag,
    buf: Vec<u8>,
}

/// Most bytes of requests in one send.
const BATCH_BYTES: usize = 60 * 1024;

impl Netlink {
    pub fn open(tag: RouteTag) -> io::Result<Netlink> {
        let mut sock = Socket::open()?;
        // ACKs without the request echoed back; room for a whole batch of them.
        sock.set_cap_ack(true)?;
        sock.set_rx_buf(4 * 1024 * 1024, 256 * 1024);
        Ok(Netlink {
            port: sock.port(),
            sock,
            tag,
            buf: Vec::with_capacity(BATCH_BYTES + 4096),
        })
    }

    fn header(&self, t: &RouteTag, prefix: &IpNet, kind: RouteType) -> RouteMessage {
        let mut m = RouteMessage::default();
        m.header.address_family = match prefix {
            IpNet::V4(_) => AddressFamily::Inet,
            IpNet::V6(_) => AddressFamily::Inet6,
        };
        m.header.destination_prefix_length = prefix.prefix_len();
        m.header.table = if t.table < 256 {
            t.table as u8
        } else {
            RouteHeader::RT_TABLE_UNSPEC
        };
        m.header.protocol = RouteProtocol::from(t.protocol);
        m.header.scope = RouteScope::Universe;
        m.header.kind = kind;
        m.attributes
            .push(RouteAttribute::Destination(route_address(prefix.network())));
        m.attributes.push(RouteAttribute::Table(t.table));
        m.attributes.push(RouteAttribute::Priority(t.metric));
        m
    }

    fn route_message(&self, prefix: &IpNet, target: &Target) -> RouteMessage {
        let kind = match target {
            Target::Via(_) => RouteType::Unicast,
            Target::Blackhole => RouteType::BlackHole,
            Target::Unreachable => RouteType::Unreachable,
        };
        let mut m = self.header(&self.tag, prefix, kind);
        if let Target::Via(gws) = target {
            match gws.as_slice() {
                [one] => m
                    .attributes
                    .push(RouteAttribute::Gateway(route_address(*one))),
                many => {
                    let hops = many
                        .iter()
                        .map(|g| {
                            let mut hop = RouteNextHop::default();
                            hop.attributes
                                .push(RouteAttribute::Gateway(route_address(*g)));
                            hop
                        })
                        .collect();
                    m.attributes.push(RouteAttribute::MultiPath(hops));
                }
            }
        }
        m
    }

    /// Apply `ops` in order. Returns the index and error of each operation the kernel
    /// refused; a delete of a route already gone and an add-if-missing of a route already
    /// there are not errors.
    pub fn apply(&mut self, ops: &[RouteOp]) -> io::Result<Vec<(usize, io::Error)>> {
        let mut failed = Vec::new();
        let mut start = 0;
        while start < ops.len() {
            let mut buf = std::mem::take(&mut self.buf);
            buf.clear();
            let mut seqs: Vec<(u32, usize)> = Vec::new();
            let mut i = start;
            while i < ops.len() && buf.len() < BATCH_BYTES {
                // Only the last request of a send asks for an ACK: the kernel answers the
                // others only if they fail, and handles them in order, so the last ACK
                // means the whole send is done. Half the netlink traffic of one ACK each.
                let last = i + 1 == ops.len() || buf.len() + 512 >= BATCH_BYTES;
                let ack = if last { NLM_F_ACK } else { 0 };
                let (payload, flags) = match &ops[i] {
                    RouteOp::Replace { prefix, target } => (
                        RouteNetlinkMessage::NewRoute(self.route_message(prefix, target)),
                        ack | NLM_F_CREATE | NLM_F_REPLACE,
                    ),
                    RouteOp::AddIfMissing { prefix, target } => (
                        RouteNetlinkMessage::NewRoute(self.route_message(prefix, target)),
                        ack | NLM_F_CREATE | NLM_F_EXCL,
                    ),
                    RouteOp::Delete { prefix } => {
                        let mut m = self.header(&self.tag, prefix, RouteType::Unspec);
                        m.header.scope = RouteScope::NoWhere;
                        (RouteNetlinkMessage::DelRoute(m), ack)
                    }
                };
                let seq = self.sock.append(&mut buf, payload, flags);
                seqs.push((seq, i));
                i += 1;
                if last {
                    break;
                }
            }
            let sent = self.sock.send_raw(&buf);
            self.buf = buf;
            sent?;
            let last_seq = seqs.last().map(|(s, _)| *s).unwrap_or(0);
            let first = seqs.first().map(|(s, _)| *s).unwrap_or(0);
            let mut done = false;
            while !done {
                for (h, m) in headers(self.sock.recv_raw()?) {
                    if h.ty != NLMSG_ERROR {
                        continue;
                    }
                    if h.seq == last_seq {
                        done = true;
                    }
                    let pos = h.seq.wrapping_sub(first) as usize;
                    let hit = seqs
                        .get(pos)
                        .filter(|(s, _)| *s == h.seq)
                        .or_else(|| seqs.iter().find(|(s, _)| *s == h.seq));
                    if let (Some(&(_, idx)), Some(code)) = (hit, error_code(m))
                        && code != 0
                    {
                        let errno = -code;
                        let benign = match ops[idx] {
                            RouteOp::Delete { .. } => errno == libc::ESRCH,
                            RouteOp::AddIfMissing { .. } => errno == libc::EEXIST,
                            RouteOp::Replace { .. } => false,
                        };
                        if !benign {
                            failed.push((idx, io::Error::from_raw_os_error(errno)));
                        }
                    }
                }
            }
            start = i;
        }
        Ok(failed)
    }

    /// Our routes currently in the kernel (our protocol, our table), both families.
    pub fn dump(&mut self) -> io::Result<Vec<KernelRoute>> {
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut m = RouteMessage::default();
            m.header.address_family = family;
            for r in self.sock.dump(RouteNetlinkMessage::GetRoute(m))? {
                if let RouteNetlinkMessage::NewRoute(r) = r
                    && let Some(k) = self.ours(&r)
                {
                    out.push(k);
                }
            }
        }
        Ok(out)
    }

    /// The route, if it is one of ours.
    pub fn ours(&self, r: &RouteMessage) -> Option<KernelRoute> {
        parse_route(r, &self.tag)
    }
}

/// A route message as a [`KernelRoute`], if it carries `tag`'s protocol and table.
pub fn parse_route(r: &RouteMessage, tag: &RouteTag) -> Option<KernelRoute> {
    if u8::from(r.header.protocol) != tag.protocol {
        return None;
    }
    let route = petrel_netlink::route::parse(r)?;
    if route.table != tag.table {
        return None;
    }
    let target = match route.kind {
        RouteType::BlackHole => Target::Blackhole,
        RouteType::Unreachable => Target::Unreachable,
        _ => Target::Via(std::sync::Arc::new(route.gateways)),
    };
    Some(KernelRoute {
        prefix: route.dst,
        target,
    })
}

/// Let only RTM_DELROUTE messages reach `sock` (a classic BPF socket filter), and of those
/// only the ones not caused by the netlink socket with port id `ours`: route additions and
/// our own deletions are then dropped by the kernel instead of waking us up.
pub fn only_deletions(sock: &petrel_netlink::netlink_sys::Socket, ours: u32) -> io::Result<()> {
    const RTM_DELROUTE: u16 = petrel_netlink::RTM_DELROUTE;
    // BPF reads half-words and words big-endian; the netlink header is in host order.
    let k = u16::from_be_bytes(RTM_DELROUTE.to_ne_bytes()) as u32;
    let pid = u32::from_be_bytes(ours.to_ne_bytes());
    let f = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    let mut code = [
        // A = nlmsg_type (bytes 4..6 of the message)
        f(0x28, 0, 0, 4),
        // if A != RTM_DELROUTE: drop
        f(0x15, 0, 3, k),
        // A = nlmsg_pid (bytes 12..16): the port that asked for the change
        f(0x20, 0, 0, 12),
        // if A == ours: drop
        f(0x15, 1, 0, pid),
        // accept
        f(0x06, 0, 0, 0xffff_ffff),
        // drop
        f(0x06, 0, 0, 0),
    ];
    petrel_netlink::attach_filter(sock, &mut code)
}
