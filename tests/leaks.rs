//! Clients that vanish mid-frame leave no slab slot and no file descriptor behind. Alone in its file: the
//! descriptor count is per process.

mod common;
use common::*;
use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;
use wskit::frame::OpCode;
use wskit::Config;

#[test]
fn clients_vanishing_mid_frame_leave_no_slot_or_descriptor() {
    let server = TestServer::echo(Config::new());
    let fds_before = open_fds();
    let mut clients: Vec<TcpStream> = (0..200).map(|_| raw_client(server.addr)).collect();
    assert!(wait_until(Duration::from_secs(5), || server.connections() == 200));
    for (i, c) in clients.iter_mut().enumerate() {
        // Half a frame: a header promising 1000 bytes and a few of them (or half a header).
        let f = client_frame(true, OpCode::Binary, &[7u8; 1000]);
        let cut = if i % 2 == 0 { 1 } else { 20 };
        c.write_all(&f[..cut]).unwrap();
    }
    std::thread::sleep(Duration::from_millis(100));
    // Half of them vanish politely (FIN), half with a reset (SO_LINGER 0 is not in std: drop with unread data).
    for (i, c) in clients.into_iter().enumerate() {
        if i % 2 == 0 {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        drop(c);
    }
    assert!(wait_until(Duration::from_secs(5), || server.connections() == 0), "{} slots left", server.connections());
    assert!(wait_until(Duration::from_secs(5), || open_fds() <= fds_before), "fds {} > {}", open_fds(), fds_before);
}
