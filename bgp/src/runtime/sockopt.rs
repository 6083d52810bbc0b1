//! TCP socket options no crate wraps: TCP MD5 signatures (RFC 2385) and the minimum TTL of
//! GTSM (RFC 5082), plus the outgoing TTL of single-hop and multihop sessions.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;

use socket2::{SockAddr, Socket};

/// Linux `struct tcp_md5sig` (include/uapi/linux/tcp.h).
#[repr(C)]
struct TcpMd5Sig {
    addr: libc::sockaddr_storage,
    flags: u8,
    prefixlen: u8,
    keylen: u16,
    ifindex: libc::c_int,
    key: [u8; libc::TCP_MD5SIG_MAXKEYLEN],
}

/// Set (or, with an empty key, remove) the MD5 key for segments to and from `peer`.
/// On a listening socket this covers the connections it accepts from `peer`.
pub fn set_md5<S: AsRawFd>(sock: &S, peer: IpAddr, key: &[u8]) -> io::Result<()> {
    if key.len() > libc::TCP_MD5SIG_MAXKEYLEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "TCP MD5 key of {} bytes is longer than {}",
                key.len(),
                libc::TCP_MD5SIG_MAXKEYLEN
            ),
        ));
    }
    // SAFETY: all-zero bytes are a valid value of this plain C struct.
    let mut sig: TcpMd5Sig = unsafe { std::mem::zeroed() };
    let sa = SockAddr::from(SocketAddr::new(peer, 0));
    // SAFETY: `sa` holds a sockaddr of `sa.len()` bytes, which is at most the size of a
    // sockaddr_storage, the type of `sig.addr`.
    unsafe {
        std::ptr::copy_nonoverlapping(
            sa.as_ptr() as *const u8,
            &mut sig.addr as *mut libc::sockaddr_storage as *mut u8,
            sa.len() as usize,
        );
    }
    sig.keylen = key.len() as u16;
    sig.key[..key.len()].copy_from_slice(key);
    // SAFETY: the fd is open for the duration of the call, and we pass a pointer to a fully
    // initialised struct with its exact size, as the kernel expects for TCP_MD5SIG.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MD5SIG,
            &sig as *const TcpMd5Sig as *const libc::c_void,
            std::mem::size_of::<TcpMd5Sig>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn set_int<S: AsRawFd>(
    sock: &S,
    level: libc::c_int,
    name: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: plain integer option, valid fd, exact size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            &v as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// TTL (hop limit) of outgoing packets.
pub fn set_ttl(sock: &Socket, v6: bool, ttl: u8) -> io::Result<()> {
    if v6 {
        sock.set_unicast_hops_v6(ttl as u32)
    } else {
        sock.set_ttl_v4(ttl as u32)
    }
}

/// Drop incoming packets whose TTL is below `min` (GTSM, RFC 5082).
pub fn set_min_ttl<S: AsRawFd>(sock: &S, v6: bool, min: u8) -> io::Result<()> {
    if v6 {
        set_int(
            sock,
            libc::IPPROTO_IPV6,
            libc::IPV6_MINHOPCOUNT,
            min as libc::c_int,
        )
    } else {
        set_int(sock, libc::IPPROTO_IP, libc::IP_MINTTL, min as libc::c_int)
    }
}

/// TTL settings of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TtlPolicy {
    /// TTL we send with.
    pub ttl: u8,
    /// Lowest TTL we accept (GTSM), if any.
    pub min_ttl: Option<u8>,
}

impl TtlPolicy {
    /// eBGP defaults to 1 hop, iBGP to 64; GTSM sends 255 and accepts 255 - (hops - 1).
    pub fn new(ebgp: bool, multihop: Option<u8>, gtsm: bool) -> TtlPolicy {
        let hops = multihop.unwrap_or(if ebgp { 1 } else { 64 });
        if gtsm {
            TtlPolicy {
                ttl: 255,
                min_ttl: Some(255u8.saturating_sub(hops.saturating_sub(1))),
            }
        } else {
            TtlPolicy {
                ttl: hops,
                min_ttl: None,
            }
        }
    }

    pub fn apply(&self, sock: &Socket, v6: bool) -> io::Result<()> {
        set_ttl(sock, v6, self.ttl)?;
        if let Some(min) = self.min_ttl {
            set_min_ttl(sock, v6, min)?;
        }
        Ok(())
    }
}
