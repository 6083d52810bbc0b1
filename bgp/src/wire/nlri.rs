//! Prefixes as they sit in the NLRI, withdrawn-routes and MP_(UN)REACH fields: a length in bits,
//! then as many bytes as it takes. Host bits are cleared on the way in.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::Afi;

/// Parse a run of prefixes of one family, appending them to `out`.
pub(crate) fn parse(mut buf: &[u8], afi: Afi, out: &mut Vec<IpNet>) -> Result<(), String> {
    let max = match afi {
        Afi::Ipv4 => 32,
        Afi::Ipv6 => 128,
    };
    while let Some((&len, rest)) = buf.split_first() {
        if len > max {
            return Err(format!("{afi} prefix length {len} is over {max}"));
        }
        let n = (len as usize).div_ceil(8);
        let Some(bytes) = rest.get(..n) else {
            return Err(format!(
                "{afi} prefix of length {len} needs {n} bytes, {} left",
                rest.len()
            ));
        };
        let net = match afi {
            Afi::Ipv4 => {
                let mut a = [0u8; 4];
                a[..n].copy_from_slice(bytes);
                // len <= 32 was checked above.
                Ipv4Net::new(Ipv4Addr::from(a), len).map(|n| IpNet::V4(n.trunc()))
            }
            Afi::Ipv6 => {
                let mut a = [0u8; 16];
                a[..n].copy_from_slice(bytes);
                Ipv6Net::new(Ipv6Addr::from(a), len).map(|n| IpNet::V6(n.trunc()))
            }
        };
        match net {
            Ok(net) => out.push(net),
            Err(_) => return Err(format!("bad {afi} prefix length {len}")),
        }
        buf = &rest[n..];
    }
    Ok(())
}

/// Bytes a prefix takes on the wire.
pub(crate) fn wire_len(net: &IpNet) -> usize {
    1 + (net.prefix_len() as usize).div_ceil(8)
}
