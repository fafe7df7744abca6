//! WebSockets over HTTP/2 (RFC 8441): a socket whose client speaks HTTP/2 (ALPN `h2`, or h2c by prior
//! knowledge) carries many streams, and each stream with a request is a connection of its own in the table — a
//! *session*, with its own id, [`Connection`], timers, limits and handler calls. The socket's slot keeps the
//! [`H2Conn`] (its [`Connection`] only carries the HTTP/2 bytes: [`Connection::into_tunnel`]).
//!
//! A session's request reaches its core as the HTTP/1.1 request it stands for (RFC 8441 §5 gives the extended
//! CONNECT the semantics of the HTTP/1.1 upgrade), so admission, `on_open`, deferred upgrades and `on_http` are
//! those of HTTP/1.1, unchanged. The core's answer is turned back into a HEADERS frame (101 becomes 200), and
//! everything after it goes out as the stream's DATA, within the peer's windows. A session's DATA is fed to its
//! core as a socket's bytes would be; the window is given back only for what the core took, so a paused or
//! throttled session withholds its WINDOW_UPDATEs (what came meanwhile waits in its stash, at most a window).

use super::*;
use crate::h2::conn::{Event as H2Event, H2Conn, Limits as H2Limits, RequestHead};

/// A socket speaking HTTP/2.
pub(super) struct H2Socket {
    conn: H2Conn,
    /// Stream → its session's slot and generation.
    sessions: HashMap<u32, (usize, u32)>,
    /// Some session was held back (`BLOCKED`) since the last time they were all let go.
    blocked: bool,
    /// Since when it has had no session (a socket without one gets the handshake's time, then GOAWAY).
    idle_since: Instant,
    /// Going away (a shutdown, or the client's GOAWAY): new streams are refused, and once the last session has
    /// ended our GOAWAY goes and the socket ends.
    closing: bool,
}

impl H2Socket {
    /// When a socket without a session has had the handshake's time (`None` while it has one, or is going away).
    fn idle_deadline(&self, handshake_timeout: std::time::Duration) -> Option<Instant> {
        (self.sessions.is_empty() && !self.closing).then(|| self.idle_since + handshake_timeout)
    }
}

/// Where a session lives: the socket's slot, and its stream.
#[derive(Debug, Clone, Copy)]
pub(super) struct Link {
    parent: usize,
    stream: u32,
    /// The core's HTTP answer went out as HEADERS: what follows is the stream's DATA.
    answered: bool,
    /// The client ended its side (END_STREAM): the session's FIN, once what came before it was read.
    peer_ended: bool,
}

/// The HTTP/1.1 request a stream's request stands for: an extended CONNECT becomes the upgrade of RFC 6455 §4.1
/// (with a key of its own: its accept value is never sent), anything else the same method on the same path.
/// Cookie fields are joined into one (RFC 9113 §8.2.3). Field names and values were checked by [`H2Conn`]: none
/// can end a line.
fn http1_request(head: &RequestHead, websocket: bool) -> Vec<u8> {
    let path = head.path.as_deref().unwrap_or("/");
    let method = if websocket { "GET" } else { head.method.as_str() };
    let mut s = format!("{method} {path} HTTP/1.1\r\n");
    if let Some(a) = &head.authority {
        s.push_str(&format!("host: {a}\r\n"));
    }
    if websocket {
        s.push_str("upgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-key: AAAAAAAAAAAAAAAAAAAAAA==\r\n");
    }
    let mut cookies: Vec<&str> = Vec::new();
    for (name, value) in &head.fields {
        match name.as_str() {
            "host" if head.authority.is_some() => {}
            "sec-websocket-key" if websocket => {}
            "cookie" => cookies.push(value),
            _ => s.push_str(&format!("{name}: {value}\r\n")),
        }
    }
    if !cookies.is_empty() {
        s.push_str(&format!("cookie: {}\r\n", cookies.join("; ")));
    }
    s.push_str("\r\n");
    s.into_bytes()
}

/// The core's HTTP/1.1 answer, as HTTP/2 carries it.
struct Answer {
    status: u16,
    /// The fields that mean something on HTTP/2: not the connection-specific ones, nor the upgrade's accept value.
    fields: Vec<(String, String)>,
    /// The head's length in the core's output.
    len: usize,
}

/// The core's HTTP/1.1 answer at the start of `out`, if a whole head is there.
fn http1_answer(out: &[u8]) -> Option<Answer> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(out) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return None,
        // (A handler's answer with more fields than this: a 500 instead, its bytes dropped.)
        Err(_) => return Some(Answer { status: 500, fields: Vec::new(), len: out.len() }),
    };
    let status = resp.code?;
    let fields = resp
        .headers
        .iter()
        .filter(|h| {
            let n = h.name.to_ascii_lowercase();
            !matches!(
                n.as_str(),
                "connection"
                    | "upgrade"
                    | "keep-alive"
                    | "transfer-encoding"
                    | "proxy-connection"
                    | "sec-websocket-accept"
            )
        })
        .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
        .collect();
    Some(Answer { status, fields, len })
}

impl Endpoint {
    /// Bytes for a connection whose core reported [`Event::Tunnel`]: an HTTP/2 socket's go to its [`H2Conn`]; the
    /// first ones make it one (the core saw the preface, or TLS chose `h2`).
    #[cold]
    #[inline(never)]
    pub(super) fn h2_input(&mut self, key: usize, plain: bool, off: usize, n: usize, now: Instant) {
        if !self.slots[key].flags.has(Flags::H2) {
            let slot = &mut self.slots[key];
            slot.flags.set(Flags::H2);
            let prefix = slot.conn.take_tunnel_prefix();
            Metrics::add(&self.shared.metrics.http2_connections, 1);
            let mut conn = H2Conn::new(H2Limits::default());
            let result = conn.receive(&prefix, now);
            self.h2.insert(
                key,
                Box::new(H2Socket { conn, sessions: HashMap::new(), blocked: false, idle_since: now, closing: false }),
            );
            if let Err(e) = result {
                self.h2_failed(key, &e, now);
                return self.h2_out(key, now);
            }
        }
        self.h2_feed(key, plain, off, n, now);
    }

    /// TLS chose `h2` by ALPN (checked while the connection awaits its request head): its bytes are HTTP/2's.
    #[cfg(feature = "tls")]
    #[cold]
    #[inline(never)]
    pub(super) fn alpn_chose_h2(&mut self, key: usize) {
        if let Some(slot) = self.slots.get_mut(key) {
            if self.config.http2 && slot.tls.as_ref().is_some_and(|t| t.alpn_protocol() == Some(b"h2")) {
                let _ = slot.conn.into_tunnel();
            }
        }
    }

    /// An HTTP/2 socket's bytes: through its connection, then each event to its session.
    fn h2_feed(&mut self, key: usize, plain: bool, off: usize, n: usize, now: Instant) {
        let Some(sock) = self.h2.get_mut(&key) else { return };
        let input = if plain { &self.pbuf[off..n] } else { &self.rbuf[off..n] };
        let result = sock.conn.receive(input, now);
        self.h2_events(key, now);
        if let Err(e) = result {
            self.h2_failed(key, &e, now);
        }
        self.h2_out(key, now);
        self.mark_dirty(key);
    }

    /// The connection's events, each to its session; then what the sessions answered goes into the socket's
    /// queue at once, so a read's answers leave in one write.
    fn h2_events(&mut self, key: usize, now: Instant) {
        let mut touched: Vec<usize> = Vec::new();
        while let Some(ev) = self.h2.get_mut(&key).and_then(|s| s.conn.poll_event()) {
            match ev {
                H2Event::Request { stream, head, .. } => touched.extend(self.h2_request(key, stream, &head, now)),
                H2Event::Data { stream, data, end_stream } => {
                    touched.extend(self.h2_data(key, stream, data, end_stream, now));
                }
                H2Event::Reset { stream, .. } => {
                    if let Some(child) = self.session(key, stream) {
                        self.peer_gone(child, false, now);
                    }
                }
                H2Event::Writable { stream } => self.h2_writable(key, stream),
                H2Event::GoAway { .. } => {
                    // The client goes away: no new streams; those open go on (RFC 9113 §6.8), and after the
                    // last our GOAWAY goes and the socket ends (`h2_out`).
                    if let Some(s) = self.h2.get_mut(&key) {
                        s.closing = true;
                    }
                }
            }
        }
        for child in touched {
            if self.slots.contains(child) {
                self.h2_pull(child, now);
            }
        }
    }

    /// The live session on a stream of socket `key`.
    fn session(&self, key: usize, stream: u32) -> Option<usize> {
        let (child, gen) = *self.h2.get(&key)?.sessions.get(&stream)?;
        self.key_of(conn_id(child, gen))
    }

    /// A stream's request: a session is made for it and fed the HTTP/1.1 request it stands for. A CONNECT for
    /// anything but a WebSocket is answered 501 (this is no proxy).
    fn h2_request(&mut self, key: usize, stream: u32, head: &RequestHead, now: Instant) -> Option<usize> {
        Metrics::add(&self.shared.metrics.http2_streams, 1);
        let websocket = head.method == "CONNECT" && head.protocol.as_deref() == Some("websocket");
        let sock = self.h2.get_mut(&key)?;
        if sock.closing {
            sock.conn.reset(stream, crate::h2::frame::ErrorCode::REFUSED_STREAM);
            return None;
        }
        if head.method == "CONNECT" && !websocket {
            sock.conn.respond(stream, 501, &[], true);
            return None;
        }
        let peer = self.slots[key].peer.addr();
        let child = self.insert_slot(peer, Phase::Handshake, None, now);
        self.slots[child].flags.set(Flags::STREAM);
        self.links.insert(child, Link { parent: key, stream, answered: false, peer_ended: false });
        let gen = self.table[child].gen;
        self.h2.get_mut(&key)?.sessions.insert(stream, (child, gen));
        self.h2_feed_session(child, http1_request(head, websocket), now);
        Some(child)
    }

    /// Feeds a session bytes as if its socket had read them.
    fn h2_feed_session(&mut self, child: usize, bytes: Vec<u8>, now: Instant) {
        let len = bytes.len();
        let prev = std::mem::replace(&mut self.pbuf, bytes);
        self.feed(child, true, 0, len, false, now);
        self.pbuf = prev;
    }

    /// Bytes a stream's session has waiting unprocessed (its stash).
    fn stashed(&self, child: usize) -> usize {
        self.stash.get(&child).map_or(0, |s| s.end - s.start)
    }

    /// A stream's DATA: to its session (or its stash, while it does not read); the window is given back for what
    /// its core took. The client's END_STREAM is a socket's FIN.
    fn h2_data(&mut self, key: usize, stream: u32, data: Vec<u8>, end: bool, now: Instant) -> Option<usize> {
        let len = data.len();
        let Some(child) = self.session(key, stream) else {
            // A stream whose session is over: its data is dropped, its window given back.
            self.h2.get_mut(&key)?.conn.release(stream, len);
            return None;
        };
        let before = self.stashed(child);
        let waits = self.slots[child].flags.has(Flags::PAUSED | Flags::THROTTLED);
        if len > 0 && waits && before == 0 {
            // Not read now: the window stays taken until it is (`h2_resume`).
            self.stash.insert(child, Stash { plain: true, buf: data, start: 0, end: len });
        } else if len > 0 {
            // (Behind a stash, `feed` appends the bytes to it.)
            self.h2_feed_session(child, data, now);
        }
        let after = if self.slots.contains(child) { self.stashed(child) } else { 0 };
        self.h2.get_mut(&key)?.conn.release(stream, len + before - after);
        if end {
            if let Some(link) = self.links.get_mut(&child) {
                link.peer_ended = true;
            }
            // Its FIN, once what came before it has been read (a stash waits for `h2_resume`).
            if self.slots.contains(child) && after == 0 {
                self.peer_gone(child, true, now);
            }
        }
        Some(child)
    }

    /// A session's stash is fed again (it resumed, or its rate allows it): the window is given back for what its
    /// core took. Returns false if `key` is no session.
    pub(super) fn h2_resume(&mut self, key: usize, now: Instant) -> bool {
        let Some(link) = self.links.get(&key).copied() else { return false };
        if self.slots[key].flags.has(Flags::THROTTLED | Flags::PAUSED) {
            return true;
        }
        let before = self.stashed(key);
        self.feed_stash(key, now);
        let after = if self.slots.contains(key) { self.stashed(key) } else { 0 };
        if let Some(sock) = self.h2.get_mut(&link.parent) {
            sock.conn.release(link.stream, before - after);
        }
        if self.slots.contains(key) {
            self.h2_pull(key, now);
            if after == 0 && link.peer_ended {
                self.peer_gone(key, true, now);
            }
        }
        true
    }

    /// The peer's windows opened: the sessions waiting on them (stream 0: all) may send again.
    fn h2_writable(&mut self, key: usize, stream: u32) {
        let Some(sock) = self.h2.get_mut(&key) else { return };
        let waiting: Vec<usize> = if stream == 0 {
            if !std::mem::take(&mut sock.blocked) {
                return; // (nobody waits: a hundred sessions are not looked at on every flush)
            }
            sock.sessions.values().map(|&(child, _)| child).collect()
        } else {
            sock.sessions.get(&stream).map(|&(child, _)| child).into_iter().collect()
        };
        for child in waiting {
            if let Some(slot) = self.slots.get_mut(child).filter(|s| s.flags.has(Flags::BLOCKED)) {
                slot.flags.clear(Flags::BLOCKED);
                touch(&mut self.dirty, child, slot);
            }
        }
    }

    /// Moves a session's output onto its stream: the core's HTTP answer as HEADERS (once), then its bytes as
    /// DATA as far as the peer's windows and the socket's own queue allow; a session held back by them waits
    /// (`BLOCKED`) for a window update or the socket's flush.
    pub(super) fn h2_pull(&mut self, key: usize, now: Instant) {
        let Some(link) = self.links.get_mut(&key) else { return };
        let Link { parent, stream, .. } = *link;
        let mut room = match self.slots.get(parent) {
            Some(p) => self.config.write_high_water.saturating_sub(p.queued()),
            None => 0,
        };
        let (Some(sock), Some(slot)) = (self.h2.get_mut(&parent), self.slots.get_mut(key)) else { return };
        if !link.answered {
            let Some(Answer { status, fields, len }) = http1_answer(slot.conn.out()) else { return };
            let fields: Vec<(&str, &str)> = fields.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            sock.conn.respond(stream, if status == 101 { 200 } else { status }, &fields, false);
            slot.conn.consume_out(len);
            link.answered = true;
            if status == 101 {
                Metrics::add(&self.shared.metrics.http2_websockets, 1);
            }
        }
        while room > 0 && slot.conn.wants_write() {
            let data = slot.conn.out();
            if data.is_empty() {
                break;
            }
            let len = data.len();
            let n = sock.conn.send_data(stream, &data[..len.min(room)], false, now);
            slot.conn.consume_out(n);
            room -= n;
            if n < len {
                break;
            }
        }
        if slot.conn.wants_write() {
            slot.flags.set(Flags::BLOCKED);
            sock.blocked = true;
        }
        self.h2_out(parent, now);
    }

    /// What the HTTP/2 connection has for the peer goes into the socket's queue; the socket is marked for the
    /// end of the turn and its deadline brought up to date.
    fn h2_out(&mut self, key: usize, now: Instant) {
        let (Some(sock), Some(slot)) = (self.h2.get_mut(&key), self.slots.get_mut(key)) else { return };
        if sock.closing && sock.sessions.is_empty() && !sock.conn.is_closed() {
            // Going away: our GOAWAY once every session has ended (some clients take a GOAWAY for the end of
            // every stream).
            sock.conn.go_away();
        }
        let mut changed = !sock.conn.out().is_empty();
        if changed {
            slot.conn.tunnel_send(sock.conn.out_mut());
        }
        let idle = sock.idle_deadline(self.config.handshake_timeout);
        slot.conn.set_tunnel_deadline(sock.conn.next_deadline().into_iter().chain(idle).min());
        if slot.conn.is_tunnel() && (sock.conn.is_closed() || (sock.closing && sock.sessions.is_empty())) {
            slot.conn.end_tunnel(now);
            changed = true;
        }
        if changed {
            touch(&mut self.dirty, key, slot);
        }
        self.schedule(key);
    }

    /// The HTTP/2 connection failed (its GOAWAY is queued): its sessions end, and the socket once written.
    fn h2_failed(&mut self, key: usize, e: &crate::h2::conn::ConnError, now: Instant) {
        if !self.config.prod {
            log::debug!(target: "wskit::server", "{} HTTP/2: {e}", self.slots[key].peer);
        }
        self.h2_end_sessions(key, now);
    }

    /// Ends every session of a socket as lost (the socket is over).
    pub(super) fn h2_end_sessions(&mut self, key: usize, now: Instant) {
        let Some(sock) = self.h2.get_mut(&key) else { return };
        let sessions: Vec<(usize, u32)> = sock.sessions.drain().map(|(_, s)| s).collect();
        sock.idle_since = now;
        for (child, gen) in sessions {
            if let Some(child) = self.key_of(conn_id(child, gen)) {
                self.notify_close(child, now);
                self.remove(child, now);
            }
        }
    }

    /// A session is over: its stream ends (END_STREAM after a close or an answer, else RST_STREAM CANCEL), and
    /// it leaves its socket. `reset`: it was dropped (a slow consumer).
    pub(super) fn h2_detach(&mut self, key: usize, reset: bool, now: Instant) -> bool {
        let Some(link) = self.links.remove(&key) else { return false };
        if let Some(sock) = self.h2.get_mut(&link.parent) {
            sock.sessions.remove(&link.stream);
            if sock.sessions.is_empty() {
                sock.idle_since = now;
            }
            // END_STREAM only after an answer, for a session over or whose client ended first; else a reset.
            let over = self.slots.get(key).is_some_and(|s| s.conn.is_finished()) || link.peer_ended;
            if !reset && link.answered && over {
                sock.conn.send_data(link.stream, &[], true, now);
            } else {
                sock.conn.cancel(link.stream);
            }
            self.h2_out(link.parent, now);
        }
        true
    }

    /// A socket's deadline passed: its HTTP/2 connection's timers (a stalled stream's reset, our SETTINGS'
    /// acknowledgement).
    pub(super) fn h2_timeout(&mut self, key: usize, now: Instant) {
        let Some(sock) = self.h2.get_mut(&key) else {
            // TLS chose `h2` and the client said nothing more in the handshake's time.
            if let Some(slot) = self.slots.get_mut(key).filter(|s| s.conn.next_deadline().is_some_and(|d| now >= d)) {
                slot.conn.abort(now);
            }
            return;
        };
        if sock.idle_deadline(self.config.handshake_timeout).is_some_and(|d| now >= d) {
            sock.closing = true; // (no session for a handshake's time: GOAWAY, and the end)
        }
        let result = sock.conn.handle_timeout(now);
        self.h2_events(key, now);
        if let Err(e) = result {
            self.h2_failed(key, &e, now);
        }
        self.h2_out(key, now);
    }

    /// After a flush: a socket whose queue went down lets its held-back sessions write again; a session with
    /// input waiting and reading allowed is read at the next turn.
    pub(super) fn h2_after_flush(&mut self, key: usize) {
        let hw = self.config.write_high_water;
        let Some(slot) = self.slots.get(key) else { return };
        if slot.flags.has(Flags::H2) {
            if slot.queued() < hw {
                self.h2_writable(key, 0);
            }
        } else if !slot.flags.has(Flags::PAUSED | Flags::THROTTLED | Flags::DEFERRED) && self.stash.contains_key(&key) {
            self.defer(key);
        }
    }

    /// A shutdown: every HTTP/2 socket refuses new streams, and says GOAWAY and ends once its sessions have.
    pub(super) fn h2_shutdown(&mut self, key: usize, now: Instant) -> bool {
        let Some(sock) = self.h2.get_mut(&key) else { return false };
        sock.closing = true;
        self.h2_out(key, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_request_becomes_the_http1_request_it_stands_for() {
        let head = RequestHead {
            method: "CONNECT".into(),
            scheme: Some("https".into()),
            authority: Some("example.com".into()),
            path: Some("/chat?room=1".into()),
            protocol: Some("websocket".into()),
            fields: vec![
                ("sec-websocket-version".into(), "13".into()),
                ("cookie".into(), "a=1".into()),
                ("sec-websocket-key".into(), "ignored".into()),
                ("cookie".into(), "b=2".into()),
                ("sec-websocket-protocol".into(), "chat, superchat".into()),
            ],
        };
        let text = String::from_utf8(http1_request(&head, true)).unwrap();
        assert_eq!(
            text,
            "GET /chat?room=1 HTTP/1.1\r\nhost: example.com\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
             sec-websocket-key: AAAAAAAAAAAAAAAAAAAAAA==\r\nsec-websocket-version: 13\r\n\
             sec-websocket-protocol: chat, superchat\r\ncookie: a=1; b=2\r\n\r\n"
        );
        // The core reads it as the upgrade it is.
        let mut reader = crate::handshake::HeadReader::default();
        let bytes = text.as_bytes();
        assert_eq!(reader.feed(bytes, 8192), Ok(Status::Complete(bytes.len())));
        let req = reader.parse(bytes, bytes.len()).unwrap();
        assert!(req.wants_upgrade());
        assert!(crate::handshake::validate_upgrade(&req).is_ok());
        let get = RequestHead { method: "GET".into(), protocol: None, fields: vec![], ..head };
        assert_eq!(http1_request(&get, false), b"GET /chat?room=1 HTTP/1.1\r\nhost: example.com\r\n\r\n");
    }

    #[test]
    fn the_cores_answer_becomes_a_status_and_the_fields_http2_keeps() {
        let mut out = Vec::new();
        crate::handshake::write_accept(
            &mut out,
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
            Some("chat"),
            Some("permessage-deflate"),
        );
        let len = out.len();
        out.extend_from_slice(&[0x81, 0x02, b'h', b'i']);
        let a = http1_answer(&out).unwrap();
        assert_eq!((a.status, a.len), (101, len));
        let names: Vec<&str> = a.fields.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["sec-websocket-protocol", "sec-websocket-extensions"], "no accept value, no Upgrade");
        let mut out = Vec::new();
        crate::handshake::write_response(&mut out, 403, &[("Content-Type", "text/plain")], b"no");
        let a = http1_answer(&out).unwrap();
        assert_eq!(a.status, 403);
        assert_eq!(&out[a.len..], b"no");
        assert!(http1_answer(b"HTTP/1.1 200 OK\r\n").is_none(), "a head not yet whole");
    }
}
