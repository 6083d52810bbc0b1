//! Routes in and out of the kernel over rtnetlink, in batches.
//!
//! Blocking, meant for a thread of its own. A batch of operations goes out as many netlink
//! messages in one `send` (each asking for an ACK), then the ACKs are read back and matched
//! by sequence number, so a batch of a thousand routes costs two system calls and the kernel's
//! own work. Only routes tagged with our protocol number in our table are ever touched.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader,
    NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteNextHop, RouteProtocol,
    RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

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
    seq: u32,
    tag: RouteTag,
    buf: Vec<u8>,
    rx: Vec<u8>,
}

/// Most bytes of requests in one send.
const BATCH_BYTES: usize = 60 * 1024;

impl Netlink {
    pub fn open(tag: RouteTag) -> io::Result<Netlink> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        let port = sock.bind_auto()?.port_number();
        sock.connect(&SocketAddr::new(0, 0))?;
        // ACKs without the request echoed back; room for a whole batch of them.
        sock.set_cap_ack(true)?;
        sock.set_ext_ack(true)?;
        let _ = sock.set_rx_buf_sz(4 * 1024 * 1024);
        Ok(Netlink {
            sock,
            port,
            seq: 1,
            tag,
            buf: Vec::with_capacity(BATCH_BYTES + 4096),
            rx: vec![0u8; 256 * 1024],
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
        m.attributes.push(RouteAttribute::Destination(match prefix {
            IpNet::V4(n) => RouteAddress::Inet(n.network()),
            IpNet::V6(n) => RouteAddress::Inet6(n.network()),
        }));
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
                [one] => m.attributes.push(RouteAttribute::Gateway(gw(*one))),
                many => {
                    let hops = many
                        .iter()
                        .map(|g| {
                            let mut hop = RouteNextHop::default();
                            hop.attributes.push(RouteAttribute::Gateway(gw(*g)));
                            hop
                        })
                        .collect();
                    m.attributes.push(RouteAttribute::MultiPath(hops));
                }
            }
        }
        m
    }

    fn push(&mut self, payload: RouteNetlinkMessage, flags: u16) -> u32 {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1).max(1);
        let mut hdr = NetlinkHeader::default();
        hdr.flags = flags;
        hdr.sequence_number = seq;
        let mut msg = NetlinkMessage::new(hdr, NetlinkPayload::InnerMessage(payload));
        msg.finalize();
        let at = self.buf.len();
        self.buf.resize(at + msg.buffer_len(), 0);
        msg.serialize(&mut self.buf[at..]);
        seq
    }

    /// Apply `ops` in order. Returns the index and error of each operation the kernel
    /// refused; a delete of a route already gone and an add-if-missing of a route already
    /// there are not errors.
    pub fn apply(&mut self, ops: &[RouteOp]) -> io::Result<Vec<(usize, io::Error)>> {
        let mut failed = Vec::new();
        let mut start = 0;
        while start < ops.len() {
            self.buf.clear();
            let mut seqs: Vec<(u32, usize)> = Vec::new();
            let mut i = start;
            while i < ops.len() && self.buf.len() < BATCH_BYTES {
                // Only the last request of a send asks for an ACK: the kernel answers the
                // others only if they fail, and handles them in order, so the last ACK
                // means the whole send is done. Half the netlink traffic of one ACK each.
                let last = i + 1 == ops.len() || self.buf.len() + 512 >= BATCH_BYTES;
                let ack = if last { NLM_F_ACK } else { 0 };
                let (payload, flags) = match &ops[i] {
                    RouteOp::Replace { prefix, target } => (
                        RouteNetlinkMessage::NewRoute(self.route_message(prefix, target)),
                        NLM_F_REQUEST | ack | NLM_F_CREATE | NLM_F_REPLACE,
                    ),
                    RouteOp::AddIfMissing { prefix, target } => (
                        RouteNetlinkMessage::NewRoute(self.route_message(prefix, target)),
                        NLM_F_REQUEST | ack | NLM_F_CREATE | NLM_F_EXCL,
                    ),
                    RouteOp::Delete { prefix } => {
                        let mut m = self.header(&self.tag, prefix, RouteType::Unspec);
                        m.header.scope = RouteScope::NoWhere;
                        (RouteNetlinkMessage::DelRoute(m), NLM_F_REQUEST | ack)
                    }
                };
                let seq = self.push(payload, flags);
                seqs.push((seq, i));
                i += 1;
                if last {
                    break;
                }
            }
            self.sock.send(&self.buf, 0)?;
            let last_seq = seqs.last().map(|(s, _)| *s).unwrap_or(0);
            let mut done = false;
            while !done {
                let n = self.sock.recv(&mut &mut self.rx[..], 0)?;
                let mut off = 0;
                while off + 16 <= n {
                    let len = u32::from_ne_bytes(self.rx[off..off + 4].try_into().unwrap_or([0; 4]))
                        as usize;
                    if len < 16 || off + len > n {
                        break;
                    }
                    let seq =
                        u32::from_ne_bytes(self.rx[off + 8..off + 12].try_into().unwrap_or([0; 4]));
                    let ty =
                        u16::from_ne_bytes(self.rx[off + 4..off + 6].try_into().unwrap_or([0; 2]));
                    // NLMSG_ERROR (2) carries the status; anything else is not for us.
                    if ty == 2 && len >= 20 {
                        let code = i32::from_ne_bytes(
                            self.rx[off + 16..off + 20].try_into().unwrap_or([0; 4]),
                        );
                        if seq == last_seq {
                            done = true;
                        }
                        let first = seqs.first().map(|(s, _)| *s).unwrap_or(0);
                        let pos = seq.wrapping_sub(first) as usize;
                        let hit = seqs
                            .get(pos)
                            .filter(|(s, _)| *s == seq)
                            .or_else(|| seqs.iter().find(|(s, _)| *s == seq));
                        if let Some(&(_, idx)) = hit
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
                    off += (len + 3) & !3;
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
            self.buf.clear();
            let mut m = RouteMessage::default();
            m.header.address_family = family;
            let seq = self.push(RouteNetlinkMessage::GetRoute(m), NLM_F_REQUEST | NLM_F_DUMP);
            self.sock.send(&self.buf, 0)?;
            'recv: loop {
                let n = self.sock.recv(&mut &mut self.rx[..], 0)?;
                let mut off = 0;
                while off < n {
                    let msg = match NetlinkMessage::<RouteNetlinkMessage>::deserialize(
                        &self.rx[off..n],
                    ) {
                        Ok(m) => m,
                        Err(e) => {
                            return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string()));
                        }
                    };
                    let len = msg.header.length as usize;
                    if msg.header.sequence_number == seq {
                        match msg.payload {
                            NetlinkPayload::Done(_) => break 'recv,
                            NetlinkPayload::Error(e) => {
                                if let Some(code) = e.code {
                                    return Err(io::Error::from_raw_os_error(-code.get()));
                                }
                            }
                            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(r)) => {
                                if let Some(k) = self.ours(&r) {
                                    out.push(k);
                                }
                            }
                            _ => {}
                        }
                    }
                    if len == 0 {
                        break;
                    }
                    off += (len + 3) & !3;
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
    let mut table = r.header.table as u32;
    let mut dst: Option<IpAddr> = None;
    let mut gws = Vec::new();
    for a in &r.attributes {
        match a {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = Some(IpAddr::V4(*a)),
            RouteAttribute::Destination(RouteAddress::Inet6(a)) => dst = Some(IpAddr::V6(*a)),
            RouteAttribute::Gateway(g) => gws.extend(addr(g)),
            RouteAttribute::MultiPath(hops) => {
                for h in hops {
                    for a in &h.attributes {
                        if let RouteAttribute::Gateway(g) = a {
                            gws.extend(addr(g));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    if table != tag.table {
        return None;
    }
    let len = r.header.destination_prefix_length;
    let prefix = match (r.header.address_family, dst) {
        (AddressFamily::Inet, Some(a)) => IpNet::new(a, len).ok()?,
        (AddressFamily::Inet, None) => IpNet::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), len).ok()?,
        (AddressFamily::Inet6, Some(a)) => IpNet::new(a, len).ok()?,
        (AddressFamily::Inet6, None) => IpNet::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), len).ok()?,
        _ => return None,
    };
    let target = match r.header.kind {
        RouteType::BlackHole => Target::Blackhole,
        RouteType::Unreachable => Target::Unreachable,
        _ => {
            gws.sort();
            Target::Via(std::sync::Arc::new(gws))
        }
    };
    Some(KernelRoute { prefix, target })
}

fn gw(a: IpAddr) -> RouteAddress {
    match a {
        IpAddr::V4(a) => RouteAddress::Inet(a),
        IpAddr::V6(a) => RouteAddress::Inet6(a),
    }
}

fn addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

/// Let only RTM_DELROUTE messages reach `sock` (a classic BPF socket filter), and of those
/// only the ones not caused by the netlink socket with port id `ours`: route additions and
/// our own deletions are then dropped by the kernel instead of waking us up.
pub fn only_deletions(sock: &Socket, ours: u32) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    const RTM_DELROUTE: u16 = 25;
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
