//! Admission policy applied to an upgrade request before the handler sees it: the `Origin` allow-list and the
//! subprotocol choice. Pure functions over the request and the [`Config`]; the shell adds the
//! connection limits (503 server-wide, 429 per IP), which need its counters.
//!
//! The order of checks in the server: connection limit (503), per-IP limit (429), origin (403), strict
//! subprotocol (400), then [`Handler::on_open`](crate::Handler::on_open), which may still refuse.

use crate::config::Config;
use crate::handshake::Request;

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
}
