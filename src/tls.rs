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

/// Heap bytes of one connection's TLS state beside its pending ciphertext (rustls' connection, buffers and
/// keys), as the memory budget counts it.
pub const TLS_HELD: usize = 64 * 1024;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::frame::{write_client_frame, OpCode};
    use crate::{Connection, Event, Message};
    use std::time::Instant;

    /// A rustls client and a wskit `TlsLayer` + `Connection` joined by plain buffers: no sockets.
    #[test]
    fn websocket_over_tls_in_memory() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
        let config = Config::new().tls_pem(root.join("localhost.pem"), None);
        let server_cfg = crate::tls_config::server_config(&config).unwrap().unwrap();
        let mut server = TlsLayer::new(server_cfg).unwrap();
        let mut conn = Connection::new(config.limits(), Instant::now());

        let pem = std::fs::read_to_string(root.join("localhost-cert.pem")).unwrap();
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        use base64::Engine;
        let der = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(rustls::pki_types::CertificateDer::from(der)).unwrap();
        let client_cfg =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(client_cfg), name).unwrap();

        let head = b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        client.writer().write_all(head).unwrap();
        let mut frame = Vec::new();
        write_client_frame(&mut frame, true, 0, OpCode::Text, [1, 2, 3, 4], "κόσμε in memory".as_bytes());
        client.writer().write_all(&frame).unwrap();

        let mut from_server = Vec::new();
        let mut echoed = false;
        for _ in 0..20 {
            // client → server
            let mut wire = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut wire).unwrap();
            }
            let mut plain = Vec::new();
            server.receive(&wire, &mut plain).unwrap();
            let mut off = 0;
            while off < plain.len() {
                let (n, ev) = conn.read(&mut plain[off..], Instant::now());
                off += n;
                match ev {
                    Some(Event::Upgrade(_)) => conn.accept(None, false, Instant::now()).unwrap(),
                    Some(Event::Message(Message::Text(t))) => {
                        let t = t.to_string();
                        conn.send(Message::Text(&t)).unwrap();
                        echoed = true;
                    }
                    Some(_) => {}
                    None if n == 0 => break,
                    None => {}
                }
            }
            let mut plain = Vec::new();
            conn.drain_out(&mut plain);
            server.send(&plain);
            // server → client
            let mut wire = server.out().to_vec();
            server.consume_out(wire.len());
            let mut rd = &wire[..];
            while !rd.is_empty() {
                client.read_tls(&mut rd).unwrap();
                client.process_new_packets().unwrap();
            }
            wire.clear();
            let _ = client.reader().read_to_end(&mut from_server);
            if echoed && from_server.ends_with("κόσμε in memory".as_bytes()) {
                break;
            }
        }
        let text = String::from_utf8_lossy(&from_server);
        assert!(text.starts_with("HTTP/1.1 101 Switching Protocols"), "{text}");
        let mut expected = vec![0x81, "κόσμε in memory".len() as u8];
        expected.extend_from_slice("κόσμε in memory".as_bytes());
        assert!(from_server.ends_with(&expected), "{from_server:x?}");
    }

    /// Session tickets are off by default (a returning client does a full handshake) and `tls_session_tickets`
    /// turns resumption on.
    #[test]
    fn session_tickets_enable_resumption() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
        let pem = std::fs::read_to_string(root.join("localhost-cert.pem")).unwrap();
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        use base64::Engine;
        let der = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(rustls::pki_types::CertificateDer::from(der)).unwrap();
        let client_cfg = Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        );
        for (tickets, second) in [(0, rustls::HandshakeKind::Full), (2, rustls::HandshakeKind::Resumed)] {
            let config = Config::new().tls_pem(root.join("localhost.pem"), None).tls_session_tickets(tickets);
            let server_cfg = crate::tls_config::server_config(&config).unwrap().unwrap();
            // The client config (and its session cache) is shared by both connections, as a reconnecting client's.
            let client_cfg = Arc::new((*client_cfg).clone());
            let mut kinds = Vec::new();
            for _ in 0..2 {
                let mut server = TlsLayer::new(server_cfg.clone()).unwrap();
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                let mut client = rustls::ClientConnection::new(client_cfg.clone(), name).unwrap();
                client.writer().write_all(b"ping").unwrap();
                let mut got = Vec::new();
                for _ in 0..10 {
                    let mut wire = Vec::new();
                    while client.wants_write() {
                        client.write_tls(&mut wire).unwrap();
                    }
                    server.receive(&wire, &mut got).unwrap();
                    let rd = server.out().to_vec();
                    server.consume_out(rd.len());
                    let mut rd = &mut &rd[..];
                    while !rd.is_empty() {
                        client.read_tls(&mut rd).unwrap();
                        client.process_new_packets().unwrap();
                    }
                }
                assert_eq!(got, b"ping");
                kinds.push(client.handshake_kind().unwrap());
            }
            assert_eq!(kinds, [rustls::HandshakeKind::Full, second], "{tickets} tickets");
        }
    }
}
