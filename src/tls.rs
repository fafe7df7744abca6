//! TLS as a byte transform (rustls 0.23): ciphertext in, plaintext out; plaintext in, ciphertext out.
//!
//! [`TlsLayer`] never touches a socket: the shell hands it the bytes it read ([`TlsLayer::receive`]) and writes
//! what it produced ([`TlsLayer::out`], then [`TlsLayer::consume_out`]). A client and a server can therefore be
//! joined in memory in tests, as rustls' own tests do. The WebSocket [`crate::Connection`] sits on top and sees
//! only plaintext.
//!
//! ```text
//!  socket ──ciphertext──▶ TlsLayer::receive ──plaintext──▶ Connection::read
//!  socket ◀──TlsLayer::out── TlsLayer::send ◀──plaintext── Connection::out
//! ```

use rustls::ServerConnection;
use std::io::{Read, Write};
use std::sync::Arc;

/// One connection's TLS state.
pub struct TlsLayer {
    conn: ServerConnection,
    out: Vec<u8>,
    close_notify_sent: bool,
}

impl std::fmt::Debug for TlsLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsLayer")
            .field("handshaking", &self.conn.is_handshaking())
            .field("out", &self.out.len())
            .finish()
    }
}

/// What one [`TlsLayer::receive`] call found besides plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// The peer sent `close_notify`: no more plaintext will come.
    pub peer_closed: bool,
}

impl TlsLayer {
    /// A server-side TLS connection. Plaintext written before the handshake completes is held until it does;
    /// wskit bounds outbound bytes itself, so rustls' own buffer limit is lifted.
    pub fn new(config: Arc<rustls::ServerConfig>) -> Result<Self, rustls::Error> {
        let mut conn = ServerConnection::new(config)?;
        conn.set_buffer_limit(None);
        Ok(TlsLayer { conn, out: Vec::new(), close_notify_sent: false })
    }

    /// Feeds ciphertext read from the peer and appends the plaintext it yields to `plain`. On a TLS fault the
    /// alert for the peer is queued in [`TlsLayer::out`] and the error returned: the shell MUST write `out`, then
    /// close the connection.
    pub fn receive(&mut self, mut input: &[u8], plain: &mut Vec<u8>) -> Result<Received, rustls::Error> {
        let mut peer_closed = false;
        while !input.is_empty() {
            match self.conn.read_tls(&mut input) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => return Err(rustls::Error::General(format!("reading TLS records: {e}"))),
            }
            let state = match self.conn.process_new_packets() {
                Ok(s) => s,
                Err(e) => {
                    self.drain();
                    return Err(e);
                }
            };
            let n = state.plaintext_bytes_to_read();
            if n > 0 {
                let start = plain.len();
                plain.resize(start + n, 0);
                if self.conn.reader().read_exact(&mut plain[start..]).is_err() {
                    plain.truncate(start);
                }
            }
            peer_closed |= state.peer_has_closed();
        }
        self.drain();
        Ok(Received { peer_closed })
    }

    /// Encrypts plaintext for the peer; the records land in [`TlsLayer::out`].
    pub fn send(&mut self, plain: &[u8]) {
        if !plain.is_empty() {
            // With the buffer limit lifted, the writer takes everything.
            let _ = self.conn.writer().write_all(plain);
            self.drain();
        }
    }

    /// Queues `close_notify` (once): sent after the WebSocket close, before TCP closes.
    pub fn close_notify(&mut self) {
        if !self.close_notify_sent {
            self.close_notify_sent = true;
            self.conn.send_close_notify();
            self.drain();
        }
    }

    fn drain(&mut self) {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut self.out) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }

    /// Ciphertext that MUST be written to the peer, in order.
    pub fn out(&self) -> &[u8] {
        &self.out
    }

    /// Drops the first `n` bytes of [`TlsLayer::out`] (written).
    pub fn consume_out(&mut self, n: usize) {
        if n >= self.out.len() {
            self.out.clear();
            if self.out.capacity() > 64 * 1024 {
                self.out = Vec::new();
            }
        } else {
            self.out.drain(..n);
        }
    }

    /// Whether the TLS handshake is still under way.
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// The ALPN protocol agreed, if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// The server name the client asked for (SNI), if any.
    pub fn server_name(&self) -> Option<&str> {
        self.conn.server_name()
    }
}
