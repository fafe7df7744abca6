//! Descriptor exhaustion: with `ulimit -n` low, a connection storm makes `accept` fail with EMFILE. The loop must
//! not spin at 100 % CPU, must keep serving the clients it has, and must accept again once descriptors free up.

mod common;
use common::*;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};
use wskit::frame::OpCode;

child_server_entry!();

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap() // utime + stime
}

#[test]
fn accept_survives_descriptor_exhaustion() {
    let server = ChildServer::start_limited(1 << 20, Some(64));
    let mut first = raw_client(server.addr);
    // A storm well past the limit: the kernel completes the TCP handshakes, accept() hits EMFILE.
    let storm: Vec<TcpStream> = (0..150).filter_map(|_| TcpStream::connect(server.addr).ok()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let before = cpu_ticks(server.pid());
    std::thread::sleep(Duration::from_secs(1));
    let spent = cpu_ticks(server.pid()) - before;
    assert!(spent < 30, "the loop spun while accept failed: {spent} ticks of CPU in 1 s");
    // The existing client is still served.
    first.write_all(&client_frame(true, OpCode::Text, b"still here")).unwrap();
    assert_eq!(read_frame(&mut first).unwrap().2, b"still here");
    // Free the descriptors (the storm's sockets close; the server drops them at the handshake timeout or EOF).
    drop(storm);
    let start = Instant::now();
    let mut late = loop {
        let mut s = TcpStream::connect(server.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(upgrade_request("/").as_bytes()).unwrap();
        if read_head(&mut s).starts_with("HTTP/1.1 101") {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "never accepted again");
    };
    late.write_all(&client_frame(true, OpCode::Binary, b"back")).unwrap();
    assert_eq!(read_frame(&mut late).unwrap().2, b"back");
}
