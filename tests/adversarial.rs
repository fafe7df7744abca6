//! Abusive clients against the running server: control frames are not starved behind queued data, floods of
//! tiny fragments and of pings stay bounded, and huge declared lengths are refused at the header — while
//! another client keeps being served.

mod common;
use common::*;
use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use wskit::frame::OpCode;
use wskit::{Config, Ctx, Handler, Message};

/// `flood` queues 16 × 512 KiB; anything else is echoed.
struct Flood;
impl Handler for Flood {
    fn on_message(&mut self, ctx: &mut Ctx<'_>, msg: Message<'_>) {
        if msg.as_bytes() == b"flood" {
            let chunk = vec![7u8; 512 * 1024];
            for _ in 0..16 {
                ctx.send_binary(&chunk);
            }
        } else {
            ctx.send(msg);
        }
    }
}

fn echo_ok(addr: std::net::SocketAddr) {
    let mut other = raw_client(addr);
    other.write_all(&client_frame(true, OpCode::Text, b"still served")).unwrap();
    assert_eq!(read_frame(&mut other).unwrap().2, b"still served");
}

#[test]
fn a_pong_overtakes_megabytes_of_queued_data_at_the_next_frame_boundary() {
    let mut config = Config::new().deflate(false);
    config.max_frame_out = 64 * 1024;
    config.write_high_water = 64 << 20;
    config.max_queued_bytes = 64 << 20;
    let server = TestServer::start(config, || Flood);
    let mut c = raw_client(server.addr);
    socket2::SockRef::from(&c).set_recv_buffer_size(64 * 1024).unwrap();
    c.write_all(&client_frame(true, OpCode::Text, b"flood")).unwrap();
    std::thread::sleep(Duration::from_millis(300)); // 8 MiB queued; the socket buffers are full
    c.write_all(&client_frame(true, OpCode::Ping, b"are you there")).unwrap();
    let total = 16 * 512 * 1024;
    let (mut data, mut before_pong) = (0usize, None);
    while data < total || before_pong.is_none() {
        let (_, op, p) = read_frame(&mut c).unwrap();
        match op {
            0xA => {
                assert_eq!(p, b"are you there");
                before_pong = Some(data);
            }
            0x0 | 0x2 => data += p.len(),
            other => panic!("opcode {other}"),
        }
    }
    assert_eq!(data, total, "every data byte arrives, none lost around the pong");
    let before = before_pong.unwrap();
    // What the kernel had buffered arrives first; the rest of the queue waits for the pong.
    assert!(before < total * 3 / 4, "the pong waited behind {before} of {total} queued bytes");
    echo_ok(server.addr);
}

#[test]
fn tiny_fragment_flood_is_cut_at_the_frame_limit() {
    let server = TestServer::echo(Config::new()); // at most 100 frames per message
    let mut c = raw_client(server.addr);
    let mut flood = client_frame(false, OpCode::Text, b"a");
    for i in 0..10_000 {
        flood.extend(client_frame(false, OpCode::Continuation, if i % 2 == 0 { b"" } else { b"b" }));
    }
    let _ = c.write_all(&flood); // the server may close before it has read it all
    assert_eq!(read_close(&mut c), Some(1009));
    echo_ok(server.addr);
}

#[test]
fn ping_flood_from_a_client_that_never_reads_stays_bounded() {
    let mut config = Config::new().deflate(false);
    config.write_high_water = 1 << 20;
    let server = TestServer::echo(config);
    let c = raw_client(server.addr);
    let ping = client_frame(true, OpCode::Ping, &[9u8; 125]);
    let writer = {
        let mut c = c.try_clone().unwrap();
        c.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
        std::thread::spawn(move || {
            let mut sent = 0;
            for _ in 0..200_000 {
                if c.write_all(&ping).is_err() {
                    break; // TCP pushed back: the server stopped reading from us
                }
                sent += 1;
            }
            sent
        })
    };
    let sent = writer.join().unwrap();
    let m = server.handle.metrics();
    // 127-byte pongs the client never reads: once the socket is full, waiting pongs are coalesced into the newest
    // (at most 1 KiB waits), so the queue stays at what was queued when the socket filled.
    let queued = m.queued_bytes.load(Relaxed);
    assert!(queued <= (1 << 20) + 128 * 1024 + 1024, "{queued} bytes queued after {sent} pings");
    echo_ok(server.addr);
    // The client finally reads: pongs, coalesced (fewer than the pings), each well-formed with a ping's payload.
    let mut c = c;
    c.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut pongs = 0;
    while let Ok((_, op, p)) = read_frame(&mut c) {
        assert_eq!((op, p.as_slice()), (0xA, &[9u8; 125][..]));
        pongs += 1;
    }
    assert!(pongs > 0 && pongs < sent, "{pongs} pongs for {sent} pings");
}

#[test]
fn huge_declared_lengths_are_refused_at_the_header_on_many_connections() {
    let server = TestServer::echo(Config::new());
    let mut clients: Vec<TcpStream> = (0..200).map(|_| raw_client(server.addr)).collect();
    let mut header = [0u8; 14];
    let n = wskit::frame::encode_header(true, 0, OpCode::Binary, Some([1, 2, 3, 4]), (1u64 << 63) - 1, &mut header);
    for c in clients.iter_mut() {
        c.write_all(&header[..n]).unwrap();
    }
    for c in clients.iter_mut() {
        assert_eq!(read_close(c), Some(1009));
    }
    echo_ok(server.addr);
}

#[test]
fn a_half_closed_client_still_gets_its_answer_then_the_connection_ends() {
    let server = TestServer::echo(Config::new());
    for _ in 0..20 {
        let mut c = raw_client(server.addr);
        c.write_all(&client_frame(true, OpCode::Text, b"last words")).unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(read_frame(&mut c).unwrap().2, b"last words");
        assert!(reads_eof(&mut c));
    }
    assert!(wait_until(Duration::from_secs(5), || server.connections() == 0));
    echo_ok(server.addr);
}

#[test]
fn ten_thousand_connections_from_one_address_meet_the_per_ip_limit() {
    let server = TestServer::echo(Config::new().max_connections(0, 100));
    let mut held = Vec::new();
    let (mut upgraded, mut refused) = (0, 0);
    // In waves of 1,000, so the test needs ~2,000 descriptors at a time, not 20,000.
    for _ in 0..10 {
        let mut wave: Vec<TcpStream> = (0..1000)
            .map(|_| {
                let mut s = TcpStream::connect(server.addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                s.write_all(upgrade_request("/").as_bytes()).unwrap();
                s
            })
            .collect();
        for mut s in wave.drain(..) {
            let head = read_head(&mut s);
            if head.starts_with("HTTP/1.1 101") {
                upgraded += 1;
                held.push(s);
            } else {
                assert!(head.starts_with("HTTP/1.1 429"), "{head}");
                refused += 1;
            }
        }
    }
    assert_eq!((upgraded, refused), (100, 9900));
    assert_eq!(server.handle.metrics().refusals(wskit::metrics::Refusal::PerIp), 9900);
    // Another address is served at once, and the 100 still are.
    let other = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    other.bind(&"127.0.0.2:0".parse::<std::net::SocketAddr>().unwrap().into()).unwrap();
    other.connect(&server.addr.into()).unwrap();
    let mut other: TcpStream = other.into();
    other.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    other.write_all(upgrade_request("/").as_bytes()).unwrap();
    assert!(read_head(&mut other).starts_with("HTTP/1.1 101"));
    other.write_all(&client_frame(true, OpCode::Text, b"from elsewhere")).unwrap();
    assert_eq!(read_frame(&mut other).unwrap().2, b"from elsewhere");
    let last = held.last_mut().unwrap();
    last.write_all(&client_frame(true, OpCode::Text, b"one of the 100")).unwrap();
    assert_eq!(read_frame(last).unwrap().2, b"one of the 100");
}
