//! 300 half-open handshakes (slowloris) do not delay a new client's echo, and are dropped at the handshake timeout.

mod common;
use common::*;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};
use wskit::frame::OpCode;
use wskit::Config;

fn echo_round_trip(c: &mut TcpStream) -> Duration {
    let start = Instant::now();
    c.write_all(&client_frame(true, OpCode::Text, b"are you there")).unwrap();
    assert_eq!(read_frame(c).unwrap().2, b"are you there");
    start.elapsed()
}

#[test]
fn slowloris_does_not_delay_a_new_client_and_is_dropped_at_the_handshake_timeout() {
    let server = TestServer::echo(Config::new().handshake_timeout(Duration::from_secs(3)));
    // Baseline latency with nobody else around.
    let mut probe = raw_client(server.addr);
    let mut base = Duration::MAX;
    for _ in 0..20 {
        base = base.min(echo_round_trip(&mut probe));
    }
    drop(probe);
    // 300 clients that send half a request head, a byte at a time.
    let mut loris: Vec<TcpStream> = (0..300).map(|_| TcpStream::connect(server.addr).unwrap()).collect();
    for s in &mut loris {
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow").unwrap();
    }
    assert!(wait_until(Duration::from_secs(5), || server.connections() >= 300));
    let connected = Instant::now();
    let mut c = raw_client(server.addr);
    let mut worst = Duration::ZERO;
    let mut best = Duration::MAX;
    for _ in 0..20 {
        let t = echo_round_trip(&mut c);
        worst = worst.max(t);
        best = best.min(t);
    }
    eprintln!("echo round trip: alone {base:?}; beside 300 half-open handshakes best {best:?}, worst {worst:?}");
    assert!(best < base + Duration::from_millis(5), "best {best:?} vs alone {base:?}");
    // The half-open ones are dropped at the 3 s handshake timeout; ours stays.
    for s in &mut loris {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        assert!(reads_eof(s), "half-open handshake dropped");
    }
    let took = connected.elapsed();
    assert!(took < Duration::from_secs(8), "dropped after {took:?}");
    assert!(wait_until(Duration::from_secs(3), || server.connections() == 1), "{}", server.connections());
    assert!(echo_round_trip(&mut c) < Duration::from_secs(1));
}
