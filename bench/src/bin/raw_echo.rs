//! The ceiling: a minimal mio echo that validates nothing. It answers the upgrade, then for every read unmasks
//! each whole frame in place in one shared buffer and writes all echoes of that read with one `send` (partial
//! frames are kept per connection). No UTF-8, no limits, no close handshake, no deflate.
//!
//! `raw_echo 127.0.0.1:9201`

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use std::io::{ErrorKind, Read, Write};

struct Conn {
    sock: TcpStream,
    open: bool,
    pending: Vec<u8>,
}

fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9201".into());
    let mut listener = TcpListener::bind(addr.parse().unwrap()).unwrap();
    let mut poll = Poll::new().unwrap();
    poll.registry().register(&mut listener, Token(usize::MAX), Interest::READABLE).unwrap();
    let mut conns: slab::Slab<Conn> = slab::Slab::new();
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 256 * 1024];
    let mut out = Vec::with_capacity(256 * 1024);
    println!("raw_echo: listening on ws://{addr}");
    loop {
        match poll.poll(&mut events, None) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue, // e.g. strace attaching
            Err(e) => panic!("poll: {e}"),
        }
        for ev in events.iter() {
            if ev.token() == Token(usize::MAX) {
                while let Ok((mut sock, _)) = listener.accept() {
                    sock.set_nodelay(true).unwrap();
                    let e = conns.vacant_entry();
                    poll.registry().register(&mut sock, Token(e.key()), Interest::READABLE).unwrap();
                    e.insert(Conn { sock, open: false, pending: Vec::new() });
                }
                continue;
            }
            let key = ev.token().0;
            let mut close = false;
            while let Some(c) = conns.get_mut(key) {
                match c.sock.read(&mut buf) {
                    Ok(0) => {
                        close = true;
                        break;
                    }
                    Ok(n) => {
                        let mut data: &mut [u8] = &mut buf[..n];
                        let mut joined;
                        if !c.pending.is_empty() {
                            joined = std::mem::take(&mut c.pending);
                            joined.extend_from_slice(data);
                            data = &mut joined[..];
                        }
                        out.clear();
                        if !c.open {
                            let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
                                c.pending.extend_from_slice(data);
                                continue;
                            };
                            let head = String::from_utf8_lossy(&data[..end]).to_string();
                            let key_line = head.lines().find_map(|l| {
                                l.split_once(':')
                                    .filter(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-key"))
                                    .map(|(_, v)| v.trim().to_string())
                            });
                            let accept = wskit::handshake::accept_key(&key_line.unwrap_or_default());
                            out.extend_from_slice(format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n").as_bytes());
                            c.open = true;
                            data = &mut data[end + 4..];
                        }
                        let mut pos = 0;
                        while data.len() - pos >= 2 {
                            let b1 = data[pos + 1];
                            let (len, hl) = match b1 & 0x7f {
                                126 if data.len() - pos >= 4 => {
                                    (u16::from_be_bytes([data[pos + 2], data[pos + 3]]) as usize, 4)
                                }
                                127 if data.len() - pos >= 10 => {
                                    (u64::from_be_bytes(data[pos + 2..pos + 10].try_into().unwrap()) as usize, 10)
                                }
                                126 | 127 => break,
                                l => (l as usize, 2),
                            };
                            if data.len() - pos < hl + 4 + len {
                                break;
                            }
                            let mask: [u8; 4] = data[pos + hl..pos + hl + 4].try_into().unwrap();
                            let b0 = data[pos];
                            let payload = &mut data[pos + hl + 4..pos + hl + 4 + len];
                            wskit::mask::apply_mask(payload, mask, 0);
                            let mut h = [0u8; 14];
                            let n = wskit::frame::encode_header(
                                true,
                                0,
                                wskit::frame::OpCode::Binary,
                                None,
                                len as u64,
                                &mut h,
                            );
                            h[0] = b0;
                            out.extend_from_slice(&h[..n]);
                            out.extend_from_slice(payload);
                            pos += hl + 4 + len;
                        }
                        c.pending.extend_from_slice(&data[pos..]);
                        if !out.is_empty() {
                            let _ = c.sock.write_all(&out);
                        }
                        if n < buf.len() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        close = true;
                        break;
                    }
                }
            }
            if close && conns.contains(key) {
                conns.remove(key);
            }
        }
    }
}
