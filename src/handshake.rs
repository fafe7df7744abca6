//! The opening handshake (RFC 6455 §4.2): an incremental reader for the HTTP request head, the checks a server
//! must make, and the 101 answer or an HTTP refusal.
//!
//! [`HeadReader::feed`] takes bytes as they arrive and answers [`Status::Partial`] (keep feeding) or
//! [`Status::Complete`]`(n)`: the head ended after the first `n` bytes of this input, and the rest of the input is
//! the start of the frame stream. Each byte is scanned for the blank line once — a head that arrives one byte at a
//! time costs linear, not quadratic, time (the class of bug in CVE-2023-43669) — and the head is parsed once, by
//! `httparse`, when it is whole.

use crate::error::HandshakeError;
use crate::frame::Status;
use base64::Engine;
use sha1::{Digest, Sha1};

/// The GUID appended to the key before hashing (§1.3).
pub const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Most header lines a request may carry.
pub const MAX_HEADERS: usize = 64;

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`: base64(SHA-1(key + GUID)) (§4.2.2).
///
/// ```
/// // The example of RFC 6455 §1.3.
/// assert_eq!(wskit::handshake::accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
/// ```
pub fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// A parsed HTTP request head.
#[derive(Debug, Clone, Default)]
pub struct Request {
    method: String,
    target: String,
    version: u8,
    headers: Vec<(String, String)>,
}

impl Request {
    /// The method (`GET`).
    pub fn method(&self) -> &str {
        &self.method
    }
    /// The request target as sent: path and query (`/chat?room=1`).
    pub fn uri(&self) -> &str {
        &self.target
    }
    /// The path, without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
    /// The query string after `?`, if any.
    pub fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, q)| q)
    }
    /// HTTP minor version: 1 for HTTP/1.1.
    pub fn http_minor_version(&self) -> u8 {
        self.version
    }
    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    /// All headers, in order. Values that are not UTF-8 are kept lossily.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.headers.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
    /// The values of every header with this name (case-insensitive), in order.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl DoubleEndedIterator<Item = &'a str> {
        self.headers.iter().filter(move |(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    /// Whether any header with this name holds `token` in its comma-separated list (case-insensitive).
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.header_values(name).flat_map(|v| v.split(',')).any(|t| t.trim().eq_ignore_ascii_case(token))
    }
    /// The value of cookie `name` from the `Cookie` headers, if present.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.header_values("cookie")
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.trim_matches('"'))
    }
    /// Subprotocols the client offered in `Sec-WebSocket-Protocol`, in order.
    pub fn protocols(&self) -> impl Iterator<Item = &str> {
        self.header_values("sec-websocket-protocol").flat_map(|v| v.split(',')).map(str::trim).filter(|s| !s.is_empty())
    }
    /// Whether this request asks for a WebSocket upgrade at all (an `Upgrade` header, or a WebSocket key or
    /// version). A request without any of them is plain HTTP.
    pub fn wants_upgrade(&self) -> bool {
        self.header("upgrade").is_some()
            || self.header("sec-websocket-key").is_some()
            || self.header("sec-websocket-version").is_some()
    }
}

/// Collects the request head across reads, scanning each byte once.
#[derive(Debug, Default)]
pub struct HeadReader {
    buf: Vec<u8>,
}

/// Where the blank line ends in `data`, scanning from `from` (which may start inside a split terminator).
fn find_end(data: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(3);
    data[start..].windows(4).position(|w| w == b"\r\n\r\n").map(|p| start + p + 4)
}

impl HeadReader {
    /// Feeds the next bytes. On `Complete(n)` the head is whole and the first `n` bytes of `input` belonged to it;
    /// call [`HeadReader::parse`] with the same `input`. Refuses a head longer than `max` with
    /// [`HandshakeError::HeadTooLarge`].
    /// A line ended by a bare LF (not CRLF) within the first `max` bytes is [`HandshakeError::Malformed`]: RFC 9112
    /// §2.2 lets a server refuse it, and this one does (a head that ends `\n\n` would otherwise wait for a blank
    /// CRLF line until the handshake timeout).
    pub fn feed(&mut self, input: &[u8], max: usize) -> Result<Status<usize>, HandshakeError> {
        let before = self.buf.len();
        self.bare_lf(input, max)?;
        if before == 0 {
            // The usual case: the whole head in one read, parsed in place without a copy.
            if let Some(end) = find_end(input, 0) {
                return if end > max { Err(HandshakeError::HeadTooLarge) } else { Ok(Status::Complete(end)) };
            }
        } else {
            // Look for a terminator that straddles the old bytes and the new ones, then in the new ones.
            let take = input.len().min(3);
            let mut seam = [0u8; 6];
            let old = before.min(3);
            seam[..old].copy_from_slice(&self.buf[before - old..]);
            seam[old..old + take].copy_from_slice(&input[..take]);
            let found = find_end(&seam[..old + take], 0).map(|e| e - old).or_else(|| find_end(input, 0));
            if let Some(end) = found {
                if before + end > max {
                    return Err(HandshakeError::HeadTooLarge);
                }
                self.buf.extend_from_slice(&input[..end]);
                return Ok(Status::Complete(end));
            }
        }
        if before + input.len() > max {
            return Err(HandshakeError::HeadTooLarge);
        }
        self.buf.extend_from_slice(input);
        Ok(Status::Partial)
    }

    /// Fails at a bare LF among the head's bytes in `input` (those before its end, if it ends here), within the
    /// first `max` bytes of the head.
    fn bare_lf(&self, input: &[u8], max: usize) -> Result<(), HandshakeError> {
        let before = self.buf.len();
        let mut prev = self.buf.last().copied();
        for (i, &b) in input.iter().enumerate() {
            if before + i >= max {
                break;
            }
            if b == b'\n' {
                if prev != Some(b'\r') {
                    return Err(HandshakeError::Malformed);
                }
                // A CRLF CRLF ends the head: what follows is the first frame.
                if self.ends_at(input, i) {
                    return Ok(());
                }
            }
            prev = Some(b);
        }
        Ok(())
    }

    /// Whether `input[i]` (an LF) is the last byte of a CRLF CRLF, counting the held bytes before `input`.
    fn ends_at(&self, input: &[u8], i: usize) -> bool {
        let byte = |back: usize| -> Option<u8> {
            if back <= i {
                Some(input[i - back])
            } else {
                let k = back - i; // 1-based from the end of the held bytes
                self.buf.len().checked_sub(k).map(|j| self.buf[j])
            }
        };
        byte(1) == Some(b'\r') && byte(2) == Some(b'\n') && byte(3) == Some(b'\r')
    }

    /// Whether part of a head is held.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Heap bytes it holds.
    pub fn held(&self) -> usize {
        self.buf.capacity()
    }

    /// The bytes of an unfinished head held so far.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Holds `input` without looking for the head's end (the start of an HTTP/2 preface, which has a blank line
    /// in it).
    pub fn hold(&mut self, input: &[u8]) {
        self.buf.extend_from_slice(input);
    }

    /// Takes the bytes held.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    /// Parses the completed head: the stashed bytes if the head spanned reads, else `input[..n]`.
    pub fn parse(&mut self, input: &[u8], n: usize) -> Result<Request, HandshakeError> {
        let head = std::mem::take(&mut self.buf);
        let bytes = if head.is_empty() { &input[..n] } else { &head[..] };
        parse_request(bytes)
    }
}

/// Parses a whole request head with `httparse`.
pub fn parse_request(head: &[u8]) -> Result<Request, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(HandshakeError::Malformed),
        Err(httparse::Error::TooManyHeaders) => return Err(HandshakeError::TooManyHeaders),
        Err(_) => return Err(HandshakeError::Malformed),
    }
    Ok(Request {
        method: req.method.unwrap_or_default().to_string(),
        target: req.path.unwrap_or_default().to_string(),
        version: req.version.unwrap_or(0),
        headers: req
            .headers
            .iter()
            .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned()))
            .collect(),
    })
}

/// Checks what every request must satisfy (RFC 9112 §3.2): an HTTP/1.1 request has a `Host` header, and no
/// request has two.
pub fn validate_request(req: &Request) -> Result<(), HandshakeError> {
    let mut hosts = req.header_values("host");
    match (hosts.next(), hosts.next()) {
        (_, Some(_)) => Err(HandshakeError::DuplicateHeader),
        (None, None) if req.http_minor_version() >= 1 => Err(HandshakeError::MissingHost),
        _ => Ok(()),
    }
}

/// Checks an upgrade request against §4.2.1 and returns the `Sec-WebSocket-Accept` value.
pub fn validate_upgrade(req: &Request) -> Result<String, HandshakeError> {
    if req.method() != "GET" {
        return Err(HandshakeError::MethodNotAllowed);
    }
    if req.http_minor_version() < 1 {
        return Err(HandshakeError::HttpVersion);
    }
    validate_request(req)?;
    if !req.uri().starts_with('/') {
        return Err(HandshakeError::Target);
    }
    if req.header_values("sec-websocket-key").nth(1).is_some()
        || req.header_values("sec-websocket-version").nth(1).is_some()
    {
        return Err(HandshakeError::DuplicateHeader);
    }
    if !req.has_token("upgrade", "websocket") {
        return Err(HandshakeError::UpgradeHeader);
    }
    if !req.has_token("connection", "upgrade") {
        return Err(HandshakeError::ConnectionHeader);
    }
    if req.header("sec-websocket-version").map(str::trim) != Some("13") {
        return Err(HandshakeError::Version);
    }
    let key = req.header("sec-websocket-key").map(str::trim).ok_or(HandshakeError::Key)?;
    match base64::engine::general_purpose::STANDARD.decode(key) {
        Ok(k) if k.len() == 16 => Ok(accept_key(key)),
        _ => Err(HandshakeError::Key),
    }
}

/// Appends the 101 answer.
pub fn write_accept(out: &mut Vec<u8>, accept: &str, protocol: Option<&str>, extensions: Option<&str>) {
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
    );
    out.extend_from_slice(accept.as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(p) = protocol {
        out.extend_from_slice(b"Sec-WebSocket-Protocol: ");
        out.extend_from_slice(p.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(e) = extensions {
        out.extend_from_slice(b"Sec-WebSocket-Extensions: ");
        out.extend_from_slice(e.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The reason phrase of the statuses wskit sends.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Appends a complete HTTP response with `Content-Length` and `Connection: close`; `headers` are extra lines.
pub fn write_response(out: &mut Vec<u8>, status: u16, headers: &[(&str, &str)], body: &[u8]) {
    use std::io::Write;
    let _ = write!(out, "HTTP/1.1 {} {}\r\n", status, reason_phrase(status));
    for (k, v) in headers {
        let _ = write!(out, "{k}: {v}\r\n");
    }
    let _ = write!(out, "Content-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    out.extend_from_slice(body);
}

/// Appends the refusal for a bad handshake: its status, a one-line body naming the fault, and for a wrong version
/// the `Sec-WebSocket-Version: 13` header (§4.4).
pub fn write_refusal(out: &mut Vec<u8>, err: &HandshakeError) {
    let body = format!("{err}\n");
    let mut headers = vec![("Content-Type", "text/plain; charset=utf-8")];
    match err {
        HandshakeError::Version => headers.push(("Sec-WebSocket-Version", "13")),
        HandshakeError::MethodNotAllowed => headers.push(("Allow", "GET")),
        _ => {}
    }
    write_response(out, err.status(), &headers, body.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHROME: &[u8] = b"GET /chat?room=1 HTTP/1.1\r\nHost: 127.0.0.1:1337\r\nConnection: Upgrade\r\nPragma: no-cache\r\nUpgrade: websocket\r\nOrigin: http://127.0.0.1:1337\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";

    fn feed_split(data: &[u8], splits: &[usize]) -> (Request, usize) {
        let mut r = HeadReader::default();
        let mut last = 0;
        let mut pieces: Vec<&[u8]> = Vec::new();
        for &s in splits {
            pieces.push(&data[last..s]);
            last = s;
        }
        pieces.push(&data[last..]);
        let mut offset = 0;
        for p in pieces {
            match r.feed(p, 8192).unwrap() {
                Status::Partial => offset += p.len(),
                Status::Complete(n) => return (r.parse(p, n).unwrap(), offset + n),
            }
        }
        panic!("never completed");
    }

    #[test]
    fn every_prefix_is_partial() {
        for k in 0..CHROME.len() {
            let mut r = HeadReader::default();
            assert_eq!(r.feed(&CHROME[..k], 8192), Ok(Status::Partial), "prefix {k}");
        }
    }

    #[test]
    fn every_split_point_gives_the_same_request_and_keeps_the_tail() {
        let mut data = CHROME.to_vec();
        data.extend_from_slice(b"\x81\x85frame");
        let (one, n) = feed_split(&data, &[]);
        assert_eq!(n, CHROME.len());
        for a in 0..data.len() {
            let (r, n) = feed_split(&data, &[a]);
            assert_eq!(n, CHROME.len(), "split {a}");
            assert_eq!(r.uri(), one.uri());
            assert_eq!(r.headers().count(), one.headers().count());
        }
        let all: Vec<usize> = (1..data.len()).collect();
        let (r, n) = feed_split(&data, &all);
        assert_eq!((r.path(), r.query(), n), ("/chat", Some("room=1"), CHROME.len()));
        assert_eq!(validate_upgrade(&r).unwrap(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn head_limit() {
        let mut r = HeadReader::default();
        let big = vec![b'a'; 9000];
        assert_eq!(r.feed(&big, 8192), Err(HandshakeError::HeadTooLarge));
        let mut r = HeadReader::default();
        for _ in 0..8 {
            assert_eq!(r.feed(&[b'a'; 1000], 8192), Ok(Status::Partial));
        }
        assert_eq!(r.feed(&[b'a'; 1000], 8192), Err(HandshakeError::HeadTooLarge));
    }

    fn check(req: &str) -> Result<String, HandshakeError> {
        validate_upgrade(&parse_request(req.as_bytes())?)
    }

    #[test]
    fn validation_answers() {
        let ok = "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        assert!(check(ok).is_ok());
        assert_eq!(check(&ok.replace("GET", "POST")).unwrap_err().status(), 405);
        assert_eq!(check(&ok.replace("HTTP/1.1", "HTTP/1.0")).unwrap_err(), HandshakeError::HttpVersion);
        assert_eq!(check(&ok.replace("Host: x\r\n", "")).unwrap_err(), HandshakeError::MissingHost);
        assert_eq!(check(&ok.replace("WebSocket", "h2c")).unwrap_err(), HandshakeError::UpgradeHeader);
        assert_eq!(
            check(&ok.replace("keep-alive, Upgrade", "keep-alive")).unwrap_err(),
            HandshakeError::ConnectionHeader
        );
        let v8 = check(&ok.replace("Version: 13", "Version: 8")).unwrap_err();
        assert_eq!((v8.clone(), v8.status()), (HandshakeError::Version, 426));
        assert_eq!(check(&ok.replace("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ=")).unwrap_err(), HandshakeError::Key);
        assert_eq!(check(&ok.replace("dGhlIHNhbXBsZSBub25jZQ==", "!!!")).unwrap_err(), HandshakeError::Key);
        assert_eq!(parse_request(b"GARBAGE\r\n\r\n").unwrap_err().status(), 400);
        let many: String = (0..100).map(|i| format!("X-{i}: y\r\n")).collect();
        assert_eq!(parse_request(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()).unwrap_err().status(), 431);
    }

    /// The verdict of feeding `data` whole, and in every two pieces: the same, or the test fails.
    fn verdict(data: &[u8], max: usize) -> Result<Option<usize>, HandshakeError> {
        let whole = HeadReader::default().feed(data, max).map(|s| match s {
            Status::Complete(n) => Some(n),
            Status::Partial => None,
        });
        for cut in 1..data.len() {
            let mut r = HeadReader::default();
            let split = r.feed(&data[..cut], max).and_then(|s| match s {
                Status::Complete(n) => Ok(Some(n)),
                Status::Partial => r.feed(&data[cut..], max).map(|s| match s {
                    Status::Complete(n) => Some(cut + n),
                    Status::Partial => None,
                }),
            });
            assert_eq!(split, whole, "cut at {cut} of {:?}", String::from_utf8_lossy(data));
        }
        whole
    }

    #[test]
    fn bare_lf_line_endings_are_refused_at_once_at_any_split() {
        let lf = CHROME.iter().copied().filter(|&b| b != b'\r').collect::<Vec<u8>>();
        assert_eq!(verdict(&lf, 8192), Err(HandshakeError::Malformed));
        assert_eq!(verdict(b"GET / HTTP/1.1\r\nHost: x\nX: y\r\n\r\n", 8192), Err(HandshakeError::Malformed));
        assert_eq!(verdict(b"\n", 8192), Err(HandshakeError::Malformed));
        // Bytes after the head are frame data: a LF there is no fault.
        let mut framed = CHROME.to_vec();
        framed.extend_from_slice(b"\n\n\x81\n");
        assert_eq!(verdict(&framed, 8192), Ok(Some(CHROME.len())));
        // Past the limit the head is too large, whatever follows.
        let mut long = b"GET / HTTP/1.1\r\nX: ".to_vec();
        long.extend(std::iter::repeat(b'a').take(100));
        long.push(b'\n');
        assert_eq!(verdict(&long, 64), Err(HandshakeError::HeadTooLarge));
        assert_eq!(verdict(&long, 8192), Err(HandshakeError::Malformed));
    }

    #[test]
    fn headers_that_must_appear_once_and_the_target() {
        let ok = "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        let twice = |h: &str| ok.replace("\r\n\r\n", &format!("\r\n{h}\r\n\r\n"));
        for dup in ["Host: y", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "sec-websocket-version: 13"] {
            let e = check(&twice(dup)).unwrap_err();
            assert_eq!((e.clone(), e.status()), (HandshakeError::DuplicateHeader, 400), "{dup}");
        }
        assert!(check(&twice("Sec-WebSocket-Protocol: a")).is_ok(), "other headers may repeat");
        for target in ["*", "http://x/", "chat"] {
            assert_eq!(check(&ok.replace("GET / ", &format!("GET {target} "))).unwrap_err(), HandshakeError::Target);
        }
        let plain = |r: &str| validate_request(&parse_request(r.as_bytes()).unwrap());
        assert_eq!(plain("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), Err(HandshakeError::DuplicateHeader));
        assert_eq!(plain("GET / HTTP/1.1\r\n\r\n"), Err(HandshakeError::MissingHost));
        assert_eq!(plain("GET / HTTP/1.0\r\n\r\n"), Ok(()));
    }

    #[test]
    fn refusal_is_complete_http() {
        let mut out = Vec::new();
        write_refusal(&mut out, &HandshakeError::Version);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"), "{text}");
        assert!(text.contains("Sec-WebSocket-Version: 13\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        let body = text.split("\r\n\r\n").nth(1).unwrap();
        assert!(text.contains(&format!("Content-Length: {}\r\n", body.len())));
    }
}
