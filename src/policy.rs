//! Admission policy applied to an upgrade request before the handler sees it: the `Origin` allow-list, the
//! subprotocol choice, and who the client is behind trusted proxies ([`forwarded_client`]). Pure functions over
//! the request and the [`Config`]; the shell adds the connection limits (503 server-wide, 429 per IP), which need
//! its counters.
//!
//! The order of checks in the server: connection limit (503), per-IP limit (429), origin (403), strict
//! subprotocol (400), then [`Handler::on_open`](crate::Handler::on_open), which may still refuse.

use crate::config::Config;
use crate::handshake::Request;
pub use crate::net::IpNet;
use core::net::IpAddr;

/// Why the policy refused an upgrade: the HTTP status and a one-line body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// HTTP status: 403 (origin) or 400 (no common subprotocol in strict mode).
    pub status: u16,
    /// Body text.
    pub reason: &'static str,
}

/// Whether `origin` passes `allowed`: an empty list allows every origin. Entries are exact origins
/// (`https://example.com`, compared case-insensitively) or a wildcard for subdomains (`https://*.example.com`
/// matches `https://a.example.com` and `https://a.b.example.com`, not `https://example.com`). A request without
/// `Origin` (not a browser) passes when `allow_missing` is set.
pub fn origin_allowed(origin: Option<&str>, allowed: &[String], allow_missing: bool) -> bool {
    let Some(origin) = origin else { return allow_missing || allowed.is_empty() };
    if allowed.is_empty() {
        return true;
    }
    let origin = origin.trim();
    allowed.iter().any(|pat| {
        let pat = pat.trim();
        match pat.split_once("://*.") {
            Some((scheme, domain)) => origin
                .split_once("://")
                .filter(|(s, _)| s.eq_ignore_ascii_case(scheme))
                .map(|(_, host)| {
                    // `label.` + domain: the byte before the domain is an ASCII dot, so slicing there is safe.
                    let (h, d) = (host.as_bytes(), domain.len());
                    h.len() > d + 1 && h[h.len() - d - 1] == b'.' && host[h.len() - d..].eq_ignore_ascii_case(domain)
                })
                .unwrap_or(false),
            None => pat.eq_ignore_ascii_case(origin),
        }
    })
}

/// One entry of a forwarding header: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`, `[2001:db8::1]` or
/// `[2001:db8::1]:4711`.
fn forwarded_ip(entry: &str) -> Option<IpAddr> {
    let e = entry.trim();
    if let Ok(ip) = e.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Some(rest) = e.strip_prefix('[') {
        return rest.split_once(']').and_then(|(ip, _)| ip.parse::<IpAddr>().ok()).map(|ip| ip.to_canonical());
    }
    e.rsplit_once(':').and_then(|(ip, _)| ip.parse::<core::net::Ipv4Addr>().ok()).map(IpAddr::V4)
}

/// The client behind trusted proxies, from a forwarding header (`X-Forwarded-For`, each proxy appending the
/// address it received from): when `peer` is trusted, the header's entries are walked from the right (the
/// nearest hop) past every trusted one, and the first untrusted entry is the client (a client can write anything
/// at the left of the header, so only what trusted proxies appended counts). All trusted: the leftmost entry.
/// `None` (keep `peer`) when `peer` is not trusted, the header is absent, or an entry that would be reached cannot
/// be read as an address.
pub fn forwarded_client<'a>(
    peer: IpAddr,
    trusted: &[IpNet],
    header_values: impl DoubleEndedIterator<Item = &'a str>,
) -> Option<IpAddr> {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(peer) {
        return None;
    }
    let mut last = None;
    for value in header_values.rev() {
        for entry in value.rsplit(',') {
            if entry.trim().is_empty() {
                continue;
            }
            let ip = forwarded_ip(entry)?;
            if !is_trusted(ip) {
                return Some(ip);
            }
            last = Some(ip);
        }
    }
    last
}

/// The subprotocol to answer: the first of the server's preferences (in the server's order) that the client
/// offered. `None` when the server has no list or nothing matches; never a protocol the client did not offer.
pub fn choose_subprotocol<'c>(req: &Request, ours: &'c [String]) -> Option<&'c str> {
    ours.iter().map(String::as_str).find(|p| req.protocols().any(|o| o == *p))
}

/// The policy's verdict on an upgrade: `Ok(subprotocol)` or the refusal.
pub fn admit<'c>(req: &Request, config: &'c Config) -> Result<Option<&'c str>, Refused> {
    if !origin_allowed(req.header("origin"), &config.allowed_origins, config.allow_missing_origin) {
        return Err(Refused { status: 403, reason: "origin not allowed\n" });
    }
    let chosen = choose_subprotocol(req, &config.subprotocols);
    if chosen.is_none() && config.subprotocol_strict && !config.subprotocols.is_empty() {
        return Err(Refused { status: 400, reason: "no supported subprotocol offered\n" });
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn origins_exact_wildcard_and_missing() {
        let allowed = list(&["https://example.com", "https://*.example.org"]);
        assert!(origin_allowed(Some("https://example.com"), &allowed, false));
        assert!(origin_allowed(Some("HTTPS://EXAMPLE.COM"), &allowed, false));
        assert!(!origin_allowed(Some("http://example.com"), &allowed, false));
        assert!(!origin_allowed(Some("https://example.com.evil.net"), &allowed, false));
        assert!(origin_allowed(Some("https://a.example.org"), &allowed, false));
        assert!(origin_allowed(Some("https://a.b.example.org"), &allowed, false));
        assert!(!origin_allowed(Some("https://example.org"), &allowed, false));
        assert!(!origin_allowed(Some("https://badexample.org"), &allowed, false));
        assert!(!origin_allowed(Some("http://a.example.org"), &allowed, false));
        assert!(!origin_allowed(Some("null"), &allowed, false));
        assert!(!origin_allowed(None, &allowed, false));
        assert!(origin_allowed(None, &allowed, true));
        assert!(origin_allowed(Some("https://anything"), &[], false));
        assert!(origin_allowed(Some("https://é.example.org"), &allowed, false));
        assert!(!origin_allowed(Some("https://é"), &allowed, false));
    }

    fn nets(v: &[&str]) -> Vec<IpNet> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_parse_and_match() {
        let n: IpNet = "10.0.0.0/8".parse().unwrap();
        assert!(n.contains(ip("10.200.3.4")));
        assert!(!n.contains(ip("11.0.0.1")));
        assert!(n.contains(ip("::ffff:10.1.2.3")), "IPv4-mapped");
        assert!(!n.contains(ip("2001:db8::1")));
        let one: IpNet = "127.0.0.2".parse().unwrap();
        assert!(one.contains(ip("127.0.0.2")) && !one.contains(ip("127.0.0.1")));
        let v6: IpNet = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")) && !v6.contains(ip("2001:db9::1")));
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.1")));
        assert_eq!("::ffff:10.0.0.0/8".parse::<IpNet>().unwrap(), n);
        for bad in ["", "10.0.0.0/33", "::/129", "10.0.0.0/", "10.0.0/8", "example.com", "10.0.0.0/-1"] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad}");
        }
        assert_eq!(n.to_string(), "10.0.0.0/8");
    }

    #[test]
    fn the_client_is_the_rightmost_untrusted_entry() {
        let trusted = nets(&["127.0.0.0/8", "10.0.0.0/8"]);
        let f = |peer: &str, values: &[&str]| forwarded_client(ip(peer), &trusted, values.iter().copied());
        // One proxy: the entry it appended.
        assert_eq!(f("127.0.0.2", &["203.0.113.5"]), Some(ip("203.0.113.5")));
        // What the client wrote on the left is not believed.
        assert_eq!(f("127.0.0.2", &["6.6.6.6, 203.0.113.5"]), Some(ip("203.0.113.5")));
        // Two trusted hops, over two header lines.
        assert_eq!(f("127.0.0.2", &["6.6.6.6, 203.0.113.5", "10.1.1.1"]), Some(ip("203.0.113.5")));
        // All trusted: the leftmost.
        assert_eq!(f("127.0.0.2", &["10.0.0.9, 10.1.1.1"]), Some(ip("10.0.0.9")));
        // Ports and brackets.
        assert_eq!(f("127.0.0.2", &["203.0.113.5:4711"]), Some(ip("203.0.113.5")));
        assert_eq!(f("127.0.0.2", &["[2001:db8::1]:4711"]), Some(ip("2001:db8::1")));
        assert_eq!(f("127.0.0.2", &["2001:db8::1"]), Some(ip("2001:db8::1")));
        assert_eq!(f("127.0.0.2", &["[2001:db8::1]"]), Some(ip("2001:db8::1")));
        // An untrusted peer's header is ignored; no header keeps the peer; garbage on the way keeps the peer.
        assert_eq!(f("192.0.2.1", &["203.0.113.5"]), None);
        assert_eq!(f("127.0.0.2", &[]), None);
        assert_eq!(f("127.0.0.2", &["unknown"]), None);
        assert_eq!(f("127.0.0.2", &["203.0.113.5, nonsense, 10.1.1.1"]), None);
        // Garbage left of the client is never reached.
        assert_eq!(f("127.0.0.2", &["nonsense, 203.0.113.5"]), Some(ip("203.0.113.5")));
        // Empty entries are skipped; a dual-stack peer counts as its IPv4 address.
        assert_eq!(f("::ffff:127.0.0.2", &["203.0.113.5, ,"]), Some(ip("203.0.113.5")));
    }
}
