//! The opening handshake's outcomes: accept (with a subprotocol and deflate), reject, a plain HTTP response,
//! and the refusal of a bad head.

use super::*;

impl Connection {
    /// Accepts the upgrade reported by [`Event::Upgrade`]: queues the 101 answer (with the chosen subprotocol, which
    /// MUST be one the client offered) and opens the WebSocket.
    ///
    /// With `allow_deflate` false, permessage-deflate is not answered even if it was offered (the shell uses this
    /// to cap live compression contexts).
    ///
    /// The idle, keepalive and lifetime clocks start at `now`.
    pub fn accept(&mut self, protocol: Option<&str>, allow_deflate: bool, now: Instant) -> Result<(), SendError> {
        let State::AwaitingDecision { accept, deflate, .. } = &self.state else { return Err(SendError::NotOpen) };
        let params = deflate.as_deref().copied().filter(|_| allow_deflate);
        let ext = params.map(|p| p.response());
        let q = self.q.get_or_insert_with(Box::default);
        handshake::write_accept(&mut q.out, accept, protocol, ext.as_deref());
        // The 101 head counts as one unit: the first frame boundary is right after it.
        q.frame_left = q.out.len();
        self.deflate =
            params.map(|params| Box::new(DeflateState { params, inflater: None, compressor: None, used: false }));
        self.state = State::Open(Rx { release_out: true, ..Rx::default() });
        let c = &self.config;
        if c.idle_timeout.is_some() || c.ping_interval.is_some() || c.max_lifetime.is_some() {
            self.live = Some(Liveness { last_rx: now });
            if let Some(d) = c.max_lifetime {
                self.ending().lifetime = Some(now + d);
            }
        }
        Ok(())
    }

    /// The permessage-deflate parameters in force, if it was negotiated.
    pub fn deflate_params(&self) -> Option<&Params> {
        self.deflate.as_ref().map(|d| &d.params)
    }

    /// Refuses the upgrade reported by [`Event::Upgrade`] with an HTTP status; the connection closes once the answer
    /// is written.
    pub fn reject(
        &mut self,
        status: u16,
        headers: &[(&str, &str)],
        body: &[u8],
        now: Instant,
    ) -> Result<(), SendError> {
        if !matches!(self.state, State::AwaitingDecision { .. }) {
            return Err(SendError::NotOpen);
        }
        self.final_response(status, headers, body, now);
        Ok(())
    }

    /// Answers the plain HTTP request reported by [`Event::Http`]; the connection closes once it is written.
    pub fn respond(
        &mut self,
        status: u16,
        headers: &[(&str, &str)],
        body: &[u8],
        now: Instant,
    ) -> Result<(), SendError> {
        if !matches!(self.state, State::AwaitingResponse { .. }) {
            return Err(SendError::NotOpen);
        }
        self.final_response(status, headers, body, now);
        Ok(())
    }

    /// The queue's buffer for bytes that are not WebSocket frames (an HTTP answer, a tunnelled protocol's).
    fn http_out(&mut self) -> &mut Vec<u8> {
        let q = self.q();
        q.frame_left = usize::MAX;
        &mut q.out
    }

    /// Queues an HTTP response after which the connection closes.
    pub(super) fn final_response(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8], now: Instant) {
        handshake::write_response(self.http_out(), status, headers, body);
        self.state = State::Closed { linger: now + self.config.close_timeout };
    }

    /// Refuses the connection before its request head, for a fault the shell found in what precedes the head
    /// (a PROXY protocol header): queues the HTTP answer to `e`; the connection closes once it is written. Only
    /// while the head is awaited (else `Err(NotOpen)`).
    pub fn refuse_before_head(&mut self, e: HandshakeError, now: Instant) -> Result<(), SendError> {
        if !matches!(self.state, State::ReadingHead { .. }) {
            return Err(SendError::NotOpen);
        }
        self.refuse(e, now);
        Ok(())
    }

    pub(super) fn refuse(&mut self, e: HandshakeError, now: Instant) -> Event<'static> {
        handshake::write_refusal(self.http_out(), &e);
        self.state = State::Closed { linger: now + self.config.close_timeout };
        Event::HandshakeFailed(e)
    }

    /// Hands the connection to another protocol before any request head came whole (HTTP/2, by prior knowledge
    /// or ALPN): nothing is read here any more, and `out` carries that protocol's bytes as they are given
    /// ([`Connection::tunnel_send`]). Only while the head is awaited (else `Err(NotOpen)`).
    /// The handshake's deadline still runs, until the tunnel's own is set ([`Connection::set_tunnel_deadline`]).
    pub fn into_tunnel(&mut self) -> Result<(), SendError> {
        let State::ReadingHead { deadline, .. } = self.state else { return Err(SendError::NotOpen) };
        self.state = State::Tunnel { deadline: Some(deadline), prefix: Vec::new() };
        Ok(())
    }

    /// The client's bytes held before the tunnel began (the start of the HTTP/2 preface); taken once.
    pub fn take_tunnel_prefix(&mut self) -> Vec<u8> {
        match &mut self.state {
            State::Tunnel { prefix, .. } => std::mem::take(prefix),
            _ => Vec::new(),
        }
    }

    /// Queues the tunnelled protocol's bytes, taking all of `bytes` (left empty): an empty queue takes the
    /// buffer itself and gives its own back in exchange, so nothing is copied.
    pub fn tunnel_send(&mut self, bytes: &mut Vec<u8>) {
        if !matches!(self.state, State::Tunnel { .. }) {
            return bytes.clear();
        }
        let out = self.http_out();
        if out.is_empty() {
            std::mem::swap(out, bytes);
        } else {
            out.extend_from_slice(bytes);
        }
        bytes.clear();
    }

    /// Sets the tunnelled protocol's next deadline (see [`Connection::next_deadline`]).
    pub fn set_tunnel_deadline(&mut self, at: Option<Instant>) {
        if let State::Tunnel { deadline, .. } = &mut self.state {
            *deadline = at;
        }
    }

    /// Ends the tunnel: the connection closes once `out` is written (or at `close_timeout`).
    pub fn end_tunnel(&mut self, now: Instant) {
        if matches!(self.state, State::Tunnel { .. }) {
            self.state = State::Closed { linger: now + self.config.close_timeout };
        }
    }

    /// Whether the connection carries another protocol ([`Connection::into_tunnel`]).
    pub fn is_tunnel(&self) -> bool {
        matches!(self.state, State::Tunnel { .. })
    }
}
