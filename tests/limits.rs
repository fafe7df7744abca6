//! Limits are enforced before buffering: frame size, message size, frames per message, the incomplete-message
//! timeout (one timer per connection), and the handshake timeout.

mod common;
use common::*;
use std::io::Write;
use std::time::{Duration, Instant};
use wskit::frame::{encode_header, OpCode};
use wskit::Config;

#[test]
fn oversized_frame_is_refused_at_its_header() {
    let server = TestServer::echo(Config::new()); // 512 KiB default
    let mut c = raw_client(server.addr);
    let mut h = [0u8; 14];
    let n = encode_header(true, 0, OpCode::Binary, Some([1, 2, 3, 4]), 16 << 20, &mut h);
    c.write_all(&h[..n]).unwrap(); // only the header: no payload follows
    assert_eq!(read_close(&mut c), Some(1009));
}

#[test]
fn message_limit_counts_fragments() {
    let server = TestServer::echo(Config::new().max_payload_size(1000).max_message_size(1500));
    let mut c = raw_client(server.addr);
    c.write_all(&client_frame(false, OpCode::Binary, &[0; 1000])).unwrap();
    c.write_all(&client_frame(true, OpCode::Continuation, &[0; 501])).unwrap();
    assert_eq!(read_close(&mut c), Some(1009));
}

#[test]
fn frames_per_message_default_is_100() {
    let server = TestServer::echo(Config::new());
    let mut c = raw_client(server.addr);
    let mut wire = client_frame(false, OpCode::Binary, b"x");
    for _ in 0..98 {
        wire.extend(client_frame(false, OpCode::Continuation, b"x"));
    }
    wire.extend(client_frame(true, OpCode::Continuation, b"x")); // the 100th frame: allowed
    c.write_all(&wire).unwrap();
    assert_eq!(read_frame(&mut c).unwrap().2.len(), 100);
    let mut wire = client_frame(false, OpCode::Binary, b"x");
    for _ in 0..100 {
        wire.extend(client_frame(false, OpCode::Continuation, b"x")); // the 101st frame: refused
    }
    c.write_all(&wire).unwrap();
    assert_eq!(read_close(&mut c), Some(1009));
}

#[test]
fn incomplete_message_times_out_with_1008_per_connection() {
    let server = TestServer::echo(Config::new().timeout(Duration::from_millis(400)));
    let mut slow = raw_client(server.addr);
    let mut busy = raw_client(server.addr);
    let start = Instant::now();
    slow.write_all(&client_frame(false, OpCode::Text, b"never finished")).unwrap();
    // The other connection keeps completing messages; its traffic must not postpone the slow one's timer,
    // and the slow one's timer must not touch it.
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(100));
        busy.write_all(&client_frame(true, OpCode::Text, b"ping")).unwrap();
        assert_eq!(read_frame(&mut busy).unwrap().2, b"ping");
    }
    assert_eq!(read_close(&mut slow), Some(1008));
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(400) && took < Duration::from_secs(3), "{took:?}");
    busy.write_all(&client_frame(true, OpCode::Text, b"still open")).unwrap();
    assert_eq!(read_frame(&mut busy).unwrap().2, b"still open");
}

#[test]
fn handshake_timeout_drops_silent_sockets() {
    let server = TestServer::echo(Config::new().handshake_timeout(Duration::from_millis(300)));
    let mut s = std::net::TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n").unwrap(); // and nothing more
    let start = Instant::now();
    assert!(reads_eof(&mut s));
    assert!(start.elapsed() < Duration::from_secs(3));
    assert!(wait_until(Duration::from_secs(2), || server.connections() == 0));
}
