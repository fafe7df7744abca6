//! Echoes written straight from where they were read — from the read buffer, the answer's header written over the
//! request's; or from the buffer a message was assembled in — arrive exactly as sent and in order, however the
//! socket cuts the writes (a client that reads slowly, so the server's socket fills and the rest is queued, with
//! pongs overtaking at frame boundaries) and however the requests were cut (a header split across reads leaves no
//! room in front of the payload).

mod common;
use common::*;
use std::io::Write;
use std::time::Duration;
use wskit::frame::OpCode;
use wskit::Config;

fn payload(len: usize, seed: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + seed * 13) as u8).collect()
}

#[test]
fn direct_echoes_survive_a_full_socket_and_any_cut() {
    let server = TestServer::echo(Config::new().deflate(false).max_payload_size(1 << 20));
    let mut s = raw_client(server.addr);
    // A small receive window: the server's sends come up short and the rest of each frame is queued.
    socket2::SockRef::from(&s).set_recv_buffer_size(64 * 1024).unwrap();
    let sizes = [20usize, 125, 126, 1024, 16 * 1024, 65535, 65536, 200_000];
    // First, messages one at a time (each alone in its read, so written directly) that fill the socket before the
    // reader starts: one of them is cut.
    let mut expected: Vec<Vec<u8>> = (0..100).map(|i| payload(60_000, 500 + i)).collect();
    let paced = expected.len();
    for round in 0..6 {
        for (i, &n) in sizes.iter().enumerate() {
            expected.push(payload(n, round * 10 + i));
        }
    }
    // Two messages whose header reaches the server in pieces.
    expected.push(payload(3000, 991));
    expected.push(payload(70_000, 992));

    // A slow reader: back-pressure all the way to the client, which keeps sending.
    let mut r = s.try_clone().unwrap();
    let want = expected.clone();
    let reader = std::thread::spawn(move || {
        // Late: meanwhile the server's socket fills and its direct writes come up short.
        std::thread::sleep(Duration::from_millis(700));
        let mut got = 0;
        let mut pongs = 0;
        while got < want.len() {
            let (fin, op, p) = read_frame(&mut r).expect("an echo");
            if op == 0xA {
                pongs += 1;
                continue;
            }
            assert!(fin, "one frame per echo");
            assert_eq!(p.len(), want[got].len(), "echo {got}: length");
            assert!(p == want[got], "echo {got}: bytes");
            got += 1;
            if got % 8 == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        pongs
    });

    let mut sent_pings = 0;
    for (k, p) in expected.iter().enumerate() {
        if p.len() == 200_000 {
            // Fragmented: assembled by the server, echoed from that buffer.
            let mut f = client_frame(false, OpCode::Binary, &p[..50_000]);
            f.extend(client_frame(false, OpCode::Continuation, &p[50_000..120_000]));
            f.extend(client_frame(true, OpCode::Continuation, &p[120_000..]));
            s.write_all(&f).unwrap();
        } else if k >= expected.len() - 2 {
            let f = client_frame(true, OpCode::Binary, p);
            for b in &f[..8] {
                s.write_all(std::slice::from_ref(b)).unwrap();
                std::thread::sleep(Duration::from_millis(3));
            }
            s.write_all(&f[8..]).unwrap();
        } else {
            s.write_all(&client_frame(true, OpCode::Binary, p)).unwrap();
            if k < paced {
                std::thread::sleep(Duration::from_millis(3));
            }
        }
        if k % 5 == 0 {
            s.write_all(&client_frame(true, OpCode::Ping, b"between")).unwrap();
            sent_pings += 1;
        }
    }
    let pongs = reader.join().expect("every echo arrived intact");
    // A pong answers only the latest ping when several wait (RFC 6455 §5.5.3), so at least one came through.
    assert!(pongs >= 1 && pongs <= sent_pings, "{pongs} pongs for {sent_pings} pings");
}
