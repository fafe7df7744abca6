//! [`Peer`]: a connection's peer address in 23 bytes where a `SocketAddr` takes 32. Every connection holds one (and
//! every callback's context a copy), so at 10,000 idle connections the difference is 80 KB.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

/// The IP (an IPv4 address in its first four bytes), the port, and an IPv6 address's scope id. An IPv6 flow label
/// is not kept: it describes a packet flow, not the peer, and accepted sockets report 0.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Peer {
    ip: [u8; 16],
    // (Byte arrays, not integers: the struct has no alignment to pad to, so it packs beside the slot's other
    // small fields.)
    scope: [u8; 4],
    port: [u8; 2],
    v6: bool,
}

impl Peer {
    pub(crate) fn new(addr: SocketAddr) -> Peer {
        match addr {
            SocketAddr::V4(a) => {
                let mut ip = [0; 16];
                ip[..4].copy_from_slice(&a.ip().octets());
                Peer { ip, scope: [0; 4], port: a.port().to_ne_bytes(), v6: false }
            }
            SocketAddr::V6(a) => {
                Peer { ip: a.ip().octets(), scope: a.scope_id().to_ne_bytes(), port: a.port().to_ne_bytes(), v6: true }
            }
        }
    }

    pub(crate) fn ip(self) -> IpAddr {
        if self.v6 {
            IpAddr::V6(Ipv6Addr::from(self.ip))
        } else {
            IpAddr::V4(Ipv4Addr::new(self.ip[0], self.ip[1], self.ip[2], self.ip[3]))
        }
    }

    pub(crate) fn addr(self) -> SocketAddr {
        let port = u16::from_ne_bytes(self.port);
        match self.ip() {
            IpAddr::V6(ip) => SocketAddr::V6(SocketAddrV6::new(ip, port, 0, u32::from_ne_bytes(self.scope))),
            ip => SocketAddr::new(ip, port),
        }
    }
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.addr().fmt(f)
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.addr().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::Peer;
    use std::net::{SocketAddr, SocketAddrV6};

    #[test]
    fn addresses_come_back_as_given() {
        assert_eq!((std::mem::size_of::<Peer>(), std::mem::align_of::<Peer>()), (23, 1));
        for a in
            ["127.0.0.1:80", "0.0.0.0:0", "255.255.255.255:65535", "[::1]:443", "[::ffff:1.2.3.4]:9", "[fe80::1]:7"]
        {
            let a: SocketAddr = a.parse().unwrap();
            assert_eq!(Peer::new(a).addr(), a, "{a}");
            assert_eq!(Peer::new(a).ip(), a.ip());
            assert_eq!(Peer::new(a).to_string(), a.to_string());
            assert_eq!(format!("{:?}", Peer::new(a)), format!("{a:?}"));
        }
        let scoped = SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 7, 0, 3));
        assert_eq!(Peer::new(scoped).addr(), scoped, "the scope id is kept");
        assert_ne!(Peer::new("1.2.3.4:5".parse().unwrap()), Peer::new("[::ffff:1.2.3.4]:5".parse().unwrap()));
    }
}
