//! The PROXY protocol (HAProxy's, versions 1 and 2): the header a load balancer sends first on each connection it
//! forwards, naming the client it accepted. Behind such a balancer every socket's peer is the balancer; with
//! [`Config::proxy_protocol`](crate::Config::proxy_protocol) on, the server reads this header before anything
//! else (before TLS, before the HTTP request) and the client it names becomes the connection's peer: in
//! [`Ctx::peer_addr`](crate::Ctx::peer_addr), in the per-IP limit, in logs.
//!
//! Both versions are read incrementally, like the request head: [`ProxyReader::feed`] takes any split of the
//! bytes and answers `Complete((source, n))`, `Partial`, or an error as soon as the bytes cannot begin a valid
//! header (a client that speaks HTTP or TLS straight away fails at its first byte).
//!
//! - Version 1 is one text line of at most 107 bytes: `PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\n`,
//!   `TCP6` with IPv6 addresses, or `PROXY UNKNOWN…\r\n`.
//! - Version 2 is binary: a 12-byte signature, a version/command byte (`0x21` PROXY, `0x20` LOCAL), an
//!   address-family/transport byte, a 16-bit length, then the addresses and optional TLVs (skipped). Lengths
//!   past [`MAX_V2_LEN`] are refused.
//!
//! `UNKNOWN`, `LOCAL` (a balancer's own health check) and families without an IP source (UNIX, unspecified)
//! complete with no source: the socket's own peer address stands.

use crate::frame::Status;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::fmt;

/// The version 2 signature.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest version 1 line, `\r\n` included (the specification's bound).
pub const MAX_V1_LEN: usize = 107;
/// The longest version 2 address block with its TLVs accepted (the 16-byte fixed part not included). Addresses
/// take at most 216 bytes (UNIX); the rest leaves room for the usual TLVs (ALPN, authority, TLS details, a
/// unique id).
pub const MAX_V2_LEN: usize = 2048;

/// What is wrong with a PROXY header. Every fault is the client's (or its balancer's); the answer is an HTTP 400
/// on a plain listener and a closed connection on a TLS one (where nothing HTTP can be said).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProxyError {
    /// The bytes begin neither `PROXY ` nor the version 2 signature.
    NotProxy,
    /// A version 1 line without its `\r\n` within 107 bytes.
    LineTooLong,
    /// A version 1 line that does not follow the grammar (protocol, addresses, ports).
    BadLine,
    /// A version 2 header with a version other than 2, or a command other than LOCAL or PROXY.
    BadVersion,
    /// A version 2 address block longer than [`MAX_V2_LEN`], or too short for its address family.
    BadLength,
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProxyError::NotProxy => "no PROXY protocol header",
            ProxyError::LineTooLong => "PROXY v1 line longer than 107 bytes",
            ProxyError::BadLine => "malformed PROXY v1 line",
            ProxyError::BadVersion => "unsupported PROXY v2 version or command",
            ProxyError::BadLength => "PROXY v2 length out of bounds",
        })
    }
}

impl std::error::Error for ProxyError {}

/// A completed header: the client's address if the header names one, and how many bytes the header took.
pub type Parsed = (Option<SocketAddr>, usize);

/// Parses a PROXY header at the start of `data` (one buffer holding everything received so far).
/// `Complete((source, n))`: the header is `data[..n]`; what follows is the client's own first bytes.
pub fn parse(data: &[u8]) -> Result<Status<Parsed>, ProxyError> {
    match data.first() {
        None => Ok(Status::Partial),
        Some(b'P') => parse_v1(data),
        Some(b'\r') => parse_v2(data),
        Some(_) => Err(ProxyError::NotProxy),
    }
}

fn parse_v1(data: &[u8]) -> Result<Status<Parsed>, ProxyError> {
    const PREFIX: &[u8] = b"PROXY ";
    let n = data.len().min(PREFIX.len());
    if data[..n] != PREFIX[..n] {
        return Err(ProxyError::NotProxy);
    }
    let window = &data[..data.len().min(MAX_V1_LEN)];
    let Some(cr) = window.windows(2).position(|w| w == b"\r\n") else {
        // A line may hold only printable ASCII; fail at once on anything else rather than wait for 107 bytes.
        // Checked before the length, so that the verdict is the one the shortest failing prefix gets: the same
        // however the bytes were split (the fuzzer found the other order answering differently).
        let body = &window[..window.len() - usize::from(window.last() == Some(&b'\r'))];
        if !body.iter().all(|b| (0x20..0x7f).contains(b)) {
            return Err(ProxyError::BadLine);
        }
        if window.len() == MAX_V1_LEN {
            return Err(ProxyError::LineTooLong);
        }
        return Ok(Status::Partial);
    };
    if !data[..cr].iter().all(|b| (0x20..0x7f).contains(b)) {
        return Err(ProxyError::BadLine);
    }
    let line = std::str::from_utf8(&data[PREFIX.len()..cr]).map_err(|_| ProxyError::BadLine)?;
    let mut parts = line.split(' ');
    let source = match parts.next() {
        // The rest of an UNKNOWN line is ignored (the specification says so).
        Some("UNKNOWN") => None,
        Some(proto @ ("TCP4" | "TCP6")) => {
            let (Some(src), Some(dst), Some(sport), Some(dport), None) =
                (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(ProxyError::BadLine);
            };
            // The destination is checked, not kept: it is this server.
            let ip = if proto == "TCP4" { ip4 } else { ip6 };
            let (src, _dst, sport, _dport) = (ip(src)?, ip(dst)?, port(sport)?, port(dport)?);
            Some(SocketAddr::new(src, sport))
        }
        _ => return Err(ProxyError::BadLine),
    };
    Ok(Status::Complete((source, cr + 2)))
}

fn ip4(s: &str) -> Result<IpAddr, ProxyError> {
    s.parse::<Ipv4Addr>().map(IpAddr::V4).map_err(|_| ProxyError::BadLine)
}

fn ip6(s: &str) -> Result<IpAddr, ProxyError> {
    s.parse::<Ipv6Addr>().map(IpAddr::V6).map_err(|_| ProxyError::BadLine)
}

/// A port in decimal, 0–65535, without sign or leading zeros (as the specification writes them).
fn port(s: &str) -> Result<u16, ProxyError> {
    let ok =
        !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    ok.then(|| s.parse().ok()).flatten().ok_or(ProxyError::BadLine)
}

fn parse_v2(data: &[u8]) -> Result<Status<Parsed>, ProxyError> {
    let n = data.len().min(V2_SIGNATURE.len());
    if data[..n] != V2_SIGNATURE[..n] {
        return Err(ProxyError::NotProxy);
    }
    if data.len() < 16 {
        if let Some(&vc) = data.get(12) {
            check_version(vc)?;
        }
        return Ok(Status::Partial);
    }
    let local = check_version(data[12])?;
    let len = usize::from(u16::from_be_bytes([data[14], data[15]]));
    if len > MAX_V2_LEN {
        return Err(ProxyError::BadLength);
    }
    // Family in the high nibble (1 IPv4, 2 IPv6), transport in the low one (1 stream).
    let need = match data[13] {
        0x11 => 12,
        0x21 => 36,
        _ => 0,
    };
    if len < need {
        return Err(ProxyError::BadLength);
    }
    if data.len() < 16 + len {
        return Ok(Status::Partial);
    }
    let a = &data[16..16 + len];
    let source = match data[13] {
        _ if local => None,
        0x11 => {
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])), u16::from_be_bytes([a[8], a[9]])))
        }
        0x21 => {
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&a[..16]);
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), u16::from_be_bytes([a[32], a[33]])))
        }
        // UNSPEC, UNIX, datagrams: no IP source to take.
        _ => None,
    };
    Ok(Status::Complete((source, 16 + len)))
}

/// Version 2 and a known command; true for LOCAL.
fn check_version(vc: u8) -> Result<bool, ProxyError> {
    match vc {
        0x20 => Ok(true),
        0x21 => Ok(false),
        _ => Err(ProxyError::BadVersion),
    }
}

/// Collects a PROXY header across reads. Holds nothing while the header arrives in one read (the usual case);
/// otherwise at most `16 + MAX_V2_LEN` bytes.
#[derive(Debug, Default)]
pub struct ProxyReader {
    buf: Vec<u8>,
}

impl ProxyReader {
    /// A reader waiting for the first byte.
    pub fn new() -> ProxyReader {
        ProxyReader::default()
    }

    /// Feeds the next bytes. `Complete((source, n))`: the header ended after `input[..n]` (the rest of `input`
    /// is the client's); `Partial`: all of `input` was taken and more is needed.
    pub fn feed(&mut self, input: &[u8]) -> Result<Status<Parsed>, ProxyError> {
        if self.buf.is_empty() {
            let r = parse(input)?;
            if let Status::Partial = r {
                self.buf.extend_from_slice(input);
            }
            return Ok(r);
        }
        let before = self.buf.len();
        // A header is short: look at what is held plus at most enough of the input to finish the longest one.
        let take = input.len().min((16 + MAX_V2_LEN).saturating_sub(before));
        self.buf.extend_from_slice(&input[..take]);
        match parse(&self.buf)? {
            Status::Complete((source, n)) => {
                self.buf = Vec::new();
                Ok(Status::Complete((source, n - before)))
            }
            Status::Partial => Ok(Status::Partial),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(cmd: u8, fam: u8, addr: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(cmd);
        h.push(fam);
        h.extend_from_slice(&((addr.len() + tlvs.len()) as u16).to_be_bytes());
        h.extend_from_slice(addr);
        h.extend_from_slice(tlvs);
        h
    }

    /// Valid headers and the source each names.
    fn vectors() -> Vec<(Vec<u8>, Option<SocketAddr>)> {
        let v4: &[u8] = &[192, 0, 2, 1, 198, 51, 100, 1, 0xdc, 0x04, 0x01, 0xbb];
        let mut v6 = Vec::new();
        v6.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend_from_slice(&[0x30, 0x39, 0x01, 0xbb]);
        let tlv: &[u8] = &[0x01, 0x00, 0x02, b'h', b'2', 0x05, 0x00, 0x03, 1, 2, 3];
        vec![
            (b"PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\n".to_vec(), Some("192.0.2.1:56324".parse().unwrap())),
            (b"PROXY TCP6 2001:db8::7 2001:db8::1 12345 443\r\n".to_vec(), Some("[2001:db8::7]:12345".parse().unwrap())),
            (b"PROXY UNKNOWN\r\n".to_vec(), None),
            (b"PROXY UNKNOWN ffff:f::1 ffff:f::2 1 2\r\n".to_vec(), None),
            (
                b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"
                    .to_vec(),
                Some("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535".parse().unwrap()),
            ),
            (v2(0x21, 0x11, v4, &[]), Some("192.0.2.1:56324".parse().unwrap())),
            (v2(0x21, 0x11, v4, tlv), Some("192.0.2.1:56324".parse().unwrap())),
            (v2(0x21, 0x21, &v6, tlv), Some("[2001:db8::7]:12345".parse().unwrap())),
            (v2(0x20, 0x00, &[], &[]), None),
            (v2(0x20, 0x11, v4, &[]), None),
            (v2(0x21, 0x31, &[0u8; 216], &[]), None),
            (v2(0x21, 0x00, &[], tlv), None),
        ]
    }

    #[test]
    fn every_vector_parses_and_leaves_the_tail() {
        for (header, source) in vectors() {
            let mut data = header.clone();
            data.extend_from_slice(b"GET / HTTP/1.1\r\n");
            assert_eq!(parse(&data), Ok(Status::Complete((source, header.len()))), "{header:?}");
        }
    }

    #[test]
    fn every_prefix_is_partial() {
        for (header, _) in vectors() {
            for end in 0..header.len() {
                assert_eq!(parse(&header[..end]), Ok(Status::Partial), "{header:?} cut at {end}");
            }
        }
    }

    #[test]
    fn every_split_point_gives_the_same_result() {
        for (header, source) in vectors() {
            let mut data = header.clone();
            data.extend_from_slice(b"\x16\x03\x01tail");
            for a in 0..=data.len() {
                for b in a..=data.len() {
                    let mut r = ProxyReader::new();
                    let mut fed = 0;
                    let mut got = None;
                    for part in [&data[..a], &data[a..b], &data[b..]] {
                        match r.feed(part).unwrap() {
                            Status::Complete((s, n)) => {
                                got = Some((s, fed + n));
                                break;
                            }
                            Status::Partial => fed += part.len(),
                        }
                    }
                    assert_eq!(got, Some((source, header.len())), "{header:?} split at {a}, {b}");
                }
            }
        }
    }

    #[test]
    fn faults_are_found_as_early_as_the_bytes_allow() {
        // A client that speaks straight away fails at its first byte.
        assert_eq!(parse(b"G"), Err(ProxyError::NotProxy));
        assert_eq!(parse(b"\x16\x03\x01"), Err(ProxyError::NotProxy));
        assert_eq!(parse(b"PROXX"), Err(ProxyError::NotProxy));
        assert_eq!(parse(b"\r\n\r\n\0\r\nQUIT\r"), Err(ProxyError::NotProxy));
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4\n"), Err(ProxyError::BadLine));
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4\0"), Err(ProxyError::BadLine));
        let long = [b"PROXY UNKNOWN ".as_slice(), &[b'x'; 100]].concat();
        assert_eq!(parse(&long), Err(ProxyError::LineTooLong));
        for bad in [
            "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            "PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            "PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
            "PROXY TCP4 ::1 ::1 1 2\r\n",
            "PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
            "PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
            "PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            "PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
            "PROXY TCP4 256.2.3.4 5.6.7.8 1 2\r\n",
            "PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            "PROXY \r\n",
        ] {
            assert_eq!(parse(bad.as_bytes()), Err(ProxyError::BadLine), "{bad}");
        }
        assert_eq!(parse(&v2(0x11, 0x11, &[0; 12], &[])), Err(ProxyError::BadVersion));
        assert_eq!(parse(&v2(0x22, 0x11, &[0; 12], &[])), Err(ProxyError::BadVersion));
        // The version byte is judged as soon as it arrives.
        assert_eq!(parse(&v2(0x31, 0x11, &[0; 12], &[])[..13]), Err(ProxyError::BadVersion));
        assert_eq!(parse(&v2(0x21, 0x11, &[0; 11], &[])), Err(ProxyError::BadLength));
        assert_eq!(parse(&v2(0x21, 0x21, &[0; 35], &[])), Err(ProxyError::BadLength));
        // A length past the bound fails on the fixed part alone, before any of the block is held.
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(parse(&huge), Err(ProxyError::BadLength));
    }

    /// The verdict on a whole input is the verdict of its shortest prefix that is not `Partial`: what split
    /// feeding sees.
    #[test]
    fn the_verdict_does_not_depend_on_the_split() {
        let long_with_cr = [b"PROXY UNKNRWN\r webs0".as_slice(), &[0xff; 120], b"\r\n"].concat();
        let mut inputs = vec![long_with_cr];
        for (h, _) in vectors() {
            for i in 0..h.len() {
                for b in [0u8, b'\r', b'\n', b' ', 0xff] {
                    let mut x = h.clone();
                    x[i] = b;
                    inputs.push(x);
                }
            }
        }
        for data in inputs {
            let first = (0..=data.len()).map(|n| parse(&data[..n])).find(|r| *r != Ok(Status::Partial));
            assert_eq!(parse(&data), first.unwrap_or(Ok(Status::Partial)), "{data:?}");
        }
    }

    #[test]
    fn a_header_that_never_ends_holds_a_bounded_amount() {
        let mut r = ProxyReader::new();
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[0x21, 0x11]);
        h.extend_from_slice(&(MAX_V2_LEN as u16).to_be_bytes());
        assert_eq!(r.feed(&h), Ok(Status::Partial));
        for _ in 0..100 {
            if r.feed(&[0u8; 7]) != Ok(Status::Partial) {
                break;
            }
            assert!(r.buf.len() <= 16 + MAX_V2_LEN);
        }
        // Byte by byte, a v1 line is refused at 107 bytes.
        let mut r = ProxyReader::new();
        let mut last = Ok(Status::Partial);
        for b in b"PROXY UNKNOWN ".iter().chain(&[b'x'; 200]) {
            last = r.feed(&[*b]);
            if last.is_err() {
                break;
            }
        }
        assert_eq!(last, Err(ProxyError::LineTooLong));
        assert!(r.buf.len() <= MAX_V1_LEN);
    }
}
