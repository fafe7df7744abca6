//! Load over HTTP/2 (RFC 8441): one connection carrying N WebSocket sessions, each an extended CONNECT stream
//! with one masked binary message in flight; as soon as a session has its echo back it sends the next one (the
//! `load` method, multiplexed).
//!
//! `load_h2 --addr 127.0.0.1:9001 --conns 100 --size 20 --secs 5 [--tls --ca cert.pem]` prints `msgs_per_s=…`.
//! Without `--tls` it speaks h2c by prior knowledge. The client announces large windows, so its own flow control
//! never holds the server back; it honours the server's.

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::time::{Duration, Instant};
use wskit::h2::frame::{self, setting, Frame};
use wskit::h2::hpack::{self, Decoder};

const WINDOW: u32 = 1 << 30;

/// The bytes between the client and the socket: plaintext, or through rustls.
struct Wire {
    sock: TcpStream,
    tls: Option<rustls::ClientConnection>,
    /// Bytes for the socket not yet taken.
    pending: Vec<u8>,
}

impl Wire {
    /// Queues plaintext for the server.
    fn send(&mut self, data: &[u8]) {
        match &mut self.tls {
            None => self.pending.extend_from_slice(data),
            Some(tls) => {
                tls.writer().write_all(data).unwrap();
                while tls.wants_write() {
                    tls.write_tls(&mut self.pending).unwrap();
                }
            }
        }
    }

    /// Writes what the socket takes now; true if anything went.
    fn flush(&mut self) -> bool {
        let mut progressed = false;
        while !self.pending.is_empty() {
            match self.sock.write(&self.pending) {
                Ok(n) => {
                    self.pending.drain(..n);
                    progressed = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("write: {e}"),
            }
        }
        progressed
    }

    /// Reads what the socket has into `plain`; true if anything came.
    fn read(&mut self, plain: &mut Vec<u8>) -> bool {
        let mut buf = [0u8; 65536];
        let n = match self.sock.read(&mut buf) {
            Ok(0) => panic!("the server closed the connection"),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(e) => panic!("read: {e}"),
        };
        match &mut self.tls {
            None => plain.extend_from_slice(&buf[..n]),
            Some(tls) => {
                let mut input = &buf[..n];
                while !input.is_empty() {
                    tls.read_tls(&mut input).unwrap();
                    tls.process_new_packets().expect("TLS");
                    let _ = tls.reader().read_to_end(plain);
                }
                while tls.wants_write() {
                    tls.write_tls(&mut self.pending).unwrap();
                }
            }
        }
        true
    }
}

/// The client's HTTP/2 side: the server's windows, and each session's frames in progress.
struct Client {
    wire: Wire,
    decoder: Decoder,
    conn_window: i64,
    peer_initial: i64,
    /// Per stream: its send window and the bytes of its current message not yet sent.
    streams: HashMap<u32, (i64, Vec<u8>)>,
    /// Per stream: WebSocket bytes received, not yet a whole frame.
    partial: HashMap<u32, Vec<u8>>,
    message: Vec<u8>,
    done: u64,
    sent_at: HashMap<u32, Instant>,
    /// The server's SETTINGS came (sessions are opened after them).
    settled: bool,
}

impl Client {
    fn open(&mut self, stream: u32, authority: &str) {
        let mut block = Vec::new();
        for (n, v) in [
            (":method", "CONNECT"),
            (":protocol", "websocket"),
            (":scheme", "https"),
            (":path", "/"),
            (":authority", authority),
            ("sec-websocket-version", "13"),
        ] {
            hpack::write_field(&mut block, n.as_bytes(), v.as_bytes());
        }
        let mut out = Vec::new();
        frame::write_headers(&mut out, stream, false, &block, frame::DEFAULT_MAX_FRAME_SIZE);
        self.wire.send(&out);
        self.streams.insert(stream, (self.peer_initial, Vec::new()));
    }

    /// Sends as much of every stream's pending message as the windows allow.
    fn pump(&mut self) {
        let mut out = Vec::new();
        for (&stream, (window, data)) in self.streams.iter_mut() {
            while !data.is_empty() && *window > 0 && self.conn_window > 0 {
                let n = data.len().min(*window as usize).min(self.conn_window as usize).min(16_384);
                frame::write_data(&mut out, stream, false, &data[..n]);
                data.drain(..n);
                *window -= n as i64;
                self.conn_window -= n as i64;
            }
        }
        if !out.is_empty() {
            self.wire.send(&out);
        }
    }

    fn send_message(&mut self, stream: u32) {
        if let Some((_, data)) = self.streams.get_mut(&stream) {
            data.extend_from_slice(&self.message);
            self.sent_at.insert(stream, Instant::now());
        }
    }

    /// The server's frames in `input`; returns the bytes used.
    fn frames(&mut self, input: &[u8]) -> usize {
        let mut at = 0;
        while let Ok(wskit::frame::Status::Complete((f, n))) = frame::decode(&input[at..], 1 << 24) {
            at += n;
            self.frame(f);
        }
        at
    }

    fn frame(&mut self, f: Frame<'_>) {
        if std::env::var_os("H2_DEBUG").is_some() {
            eprintln!("{f:?}");
        }
        let mut out = Vec::new();
        match f {
            Frame::Settings { ack: false, params } => {
                for (id, v) in frame::settings(params).unwrap() {
                    if id == setting::INITIAL_WINDOW_SIZE {
                        // The change applies to the streams already open too (RFC 9113 §6.9.2).
                        let delta = i64::from(v) - self.peer_initial;
                        for (w, _) in self.streams.values_mut() {
                            *w += delta;
                        }
                        self.peer_initial = i64::from(v);
                    }
                }
                frame::write_settings_ack(&mut out);
                self.settled = true;
            }
            Frame::Ping { ack: false, data } => frame::write_ping(&mut out, true, data),
            Frame::WindowUpdate { stream: 0, increment } => self.conn_window += i64::from(increment),
            Frame::WindowUpdate { stream, increment } => {
                if let Some((w, _)) = self.streams.get_mut(&stream) {
                    *w += i64::from(increment);
                }
            }
            Frame::Headers { stream, block, .. } => {
                let ok = matches!(self.decoder.decode(block), Ok(hpack::Decoded::Fields(f))
                    if f.first().is_some_and(|f| f.name == b":status" && f.value == b"200"));
                assert!(ok, "stream {stream} refused");
                self.send_message(stream);
            }
            Frame::Data { stream, data, .. } => {
                // The windows we announced are large: give the bytes back now and then, not per frame.
                let buf = self.partial.entry(stream).or_default();
                buf.extend_from_slice(data);
                let mut done = 0;
                while let Ok(wskit::frame::Status::Complete((h, hl))) = wskit::frame::decode_header(buf) {
                    let total = hl + h.len as usize;
                    if buf.len() < total {
                        break;
                    }
                    buf.drain(..total);
                    done += 1;
                }
                for _ in 0..done {
                    self.done += 1;
                    self.send_message(stream);
                }
                frame::write_window_update(&mut out, stream, data.len().max(1) as u32);
                frame::write_window_update(&mut out, 0, data.len().max(1) as u32);
            }
            Frame::RstStream { stream, code } => panic!("stream {stream} reset: {code:?}"),
            Frame::GoAway { code, .. } => panic!("GOAWAY {code:?}"),
            _ => {}
        }
        if !out.is_empty() {
            self.wire.send(&out);
        }
    }
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.windows(2).find(|w| w[0] == name).and_then(|w| w[1].parse().ok()).unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let addr: String = arg(&args, "--addr", "127.0.0.1:9001".to_string());
    let conns: u32 = arg(&args, "--conns", 100);
    let size: usize = arg(&args, "--size", 20);
    let secs: f64 = arg(&args, "--secs", 5.0);
    let sock = std::net::TcpStream::connect(&addr).expect("connect");
    sock.set_nodelay(true).unwrap();
    let tls = args.iter().any(|a| a == "--tls").then(|| {
        let mut config = (*wskit_bench::tls_config(&arg(&args, "--ca", String::new()))).clone();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
        // (What waits for the socket is bounded by the server's windows, not by rustls.)
        tls.set_buffer_limit(None);
        tls
    });
    sock.set_nonblocking(true).unwrap();
    // Waits in epoll like `load` does (spinning would give this client an unfair head start on wake-ups).
    let mut sock = TcpStream::from_std(sock);
    let mut poll = Poll::new().unwrap();
    poll.registry().register(&mut sock, Token(0), Interest::READABLE | Interest::WRITABLE).unwrap();
    let mut events = Events::with_capacity(4);
    let mut message = Vec::new();
    let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    wskit::frame::write_client_frame(&mut message, true, 0, wskit::frame::OpCode::Binary, [1, 2, 3, 4], &payload);
    let mut c = Client {
        wire: Wire { sock, tls, pending: Vec::new() },
        decoder: Decoder::new(4096, 1 << 20, 1000),
        conn_window: 65_535,
        peer_initial: 65_535,
        streams: HashMap::new(),
        partial: HashMap::new(),
        message,
        done: 0,
        sent_at: HashMap::new(),
        settled: false,
    };
    let mut hello = wskit::h2::conn::PREFACE.to_vec();
    frame::write_settings(&mut hello, &[(setting::INITIAL_WINDOW_SIZE, WINDOW), (setting::ENABLE_PUSH, 0)]);
    frame::write_window_update(&mut hello, 0, WINDOW - 65_535);
    c.wire.send(&hello);
    let mut input = Vec::new();
    let (mut opened, mut start, mut base) = (false, Instant::now(), 0);
    let warm = Duration::from_secs_f64(arg(&args, "--warmup", 1.0));
    let mut measuring = false;
    loop {
        c.wire.flush();
        // Edge-triggered: read until the socket is drained, answering as the frames come.
        let mut read = false;
        while c.wire.read(&mut input) {
            read = true;
            let used = c.frames(&input);
            input.drain(..used);
            if !opened && c.settled {
                opened = true;
                for i in 0..conns {
                    c.open(2 * i + 1, &addr);
                }
            }
            c.pump();
            c.wire.flush();
        }
        if !measuring && start.elapsed() >= warm {
            (measuring, start, base) = (true, Instant::now(), c.done);
        }
        if measuring && start.elapsed().as_secs_f64() >= secs {
            break;
        }
        if !read {
            poll.poll(&mut events, Some(Duration::from_millis(100))).unwrap();
        }
    }
    let n = c.done - base;
    println!("msgs_per_s={:.0} sessions={conns} size={size}", n as f64 / start.elapsed().as_secs_f64());
}
