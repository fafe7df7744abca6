//! The opening handshake against the running server, over raw sockets: the 101 answer, each refusal's status,
//! oversized heads, and frames that arrive in the same packet as the request.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use wskit::frame::OpCode;
use wskit::Config;

fn exchange(server: &TestServer, request: &[u8]) -> String {
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out); // the server closes after a refusal
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(resp: &str) -> u16 {
    resp.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

#[test]
fn upgrade_answers_101_with_the_accept_key() {
    let server = TestServer::echo(Config::new());
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.write_all(upgrade_request("/x?y=1").as_bytes()).unwrap();
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"), "{head}");
    assert!(head.contains(&format!("Sec-WebSocket-Accept: {ACCEPT}\r\n")), "{head}");
    assert!(head.to_ascii_lowercase().contains("upgrade: websocket\r\n"));
}

#[test]
fn frames_in_the_same_packet_as_the_request_are_kept() {
    let server = TestServer::echo(Config::new());
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut packet = upgrade_request("/").into_bytes();
    packet.extend(client_frame(true, OpCode::Text, b"early"));
    packet.extend(client_frame(true, OpCode::Binary, b"bird"));
    s.write_all(&packet).unwrap();
    assert!(read_head(&mut s).starts_with("HTTP/1.1 101"));
    assert_eq!(read_frame(&mut s).unwrap(), (true, 1, b"early".to_vec()));
    assert_eq!(read_frame(&mut s).unwrap(), (true, 2, b"bird".to_vec()));
}

#[test]
fn request_split_into_single_bytes_is_accepted() {
    let server = TestServer::echo(Config::new());
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for b in upgrade_request("/").bytes() {
        s.write_all(&[b]).unwrap();
    }
    assert!(read_head(&mut s).starts_with("HTTP/1.1 101"));
}

#[test]
fn each_bad_request_gets_its_status_and_the_connection_closes() {
    let server = TestServer::echo(Config::new());
    let good = upgrade_request("/");
    let cases: Vec<(String, u16)> = vec![
        (good.replace("GET", "POST"), 405),
        (good.replace("HTTP/1.1", "HTTP/1.0"), 400),
        (good.replace("Host: 127.0.0.1\r\n", ""), 400),
        (good.replace("Upgrade: websocket", "Upgrade: h2c"), 400),
        (good.replace("Connection: Upgrade", "Connection: keep-alive"), 400),
        (good.replace(KEY, "c2hvcnQ="), 400),
        (good.replace(&format!("Sec-WebSocket-Key: {KEY}\r\n"), ""), 400),
        (good.replace("Version: 13", "Version: 8"), 426),
        ("NOT HTTP AT ALL\r\n\r\n".to_string(), 400),
    ];
    for (req, status) in cases {
        let resp = exchange(&server, req.as_bytes());
        assert_eq!(status_of(&resp), status, "request:\n{req}\nresponse:\n{resp}");
        assert!(resp.contains("Connection: close\r\n"), "{resp}");
        let body = resp.split("\r\n\r\n").nth(1).unwrap_or("");
        assert!(resp.contains(&format!("Content-Length: {}\r\n", body.len())), "{resp}");
        if status == 426 {
            assert!(resp.contains("Sec-WebSocket-Version: 13\r\n"), "{resp}");
        }
    }
}

#[test]
fn plain_http_gets_426_by_default() {
    let server = TestServer::echo(Config::new());
    let resp = exchange(&server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status_of(&resp), 426, "{resp}");
    assert!(resp.contains("Upgrade: websocket\r\n"));
}

#[test]
fn oversized_head_gets_431_and_the_server_keeps_serving() {
    let server = TestServer::echo(Config::new());
    // 64 KiB of headers, written while the server may already have answered and closed.
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut req = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
    while req.len() < 64 * 1024 {
        req.extend_from_slice(b"X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    let _ = s.write_all(&req);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let resp = String::from_utf8_lossy(&out);
    assert_eq!(status_of(&resp), 431, "{resp}");
    // Still alive for others.
    let mut c = raw_client(server.addr);
    c.write_all(&client_frame(true, OpCode::Text, b"still here")).unwrap();
    assert_eq!(read_frame(&mut c).unwrap().2, b"still here");
}

#[test]
fn head_limit_is_configurable() {
    let server = TestServer::echo(Config::new().max_handshake_bytes(100));
    assert_eq!(status_of(&exchange(&server, upgrade_request("/").as_bytes())), 431);
}

/// Lenient parsing refused (the hostile-load issue's F7): a head with bare LF line endings is answered 400 at
/// once instead of waiting for the handshake timeout; `Host`, `Sec-WebSocket-Key` or `Sec-WebSocket-Version`
/// twice, and a target that is not a path, are 400 rather than 101.
#[test]
fn lf_only_heads_duplicate_headers_and_odd_targets_get_400() {
    let server = TestServer::echo(Config::new());
    let ok = upgrade_request("/");
    let started = std::time::Instant::now();
    let lf_only = exchange(&server, ok.replace("\r\n", "\n").as_bytes());
    assert_eq!(status_of(&lf_only), 400, "{lf_only}");
    assert!(started.elapsed() < Duration::from_secs(2), "answered at once, not at the handshake timeout");
    let with = |line: &str| ok.replace("\r\n\r\n", &format!("\r\n{line}\r\n\r\n"));
    for dup in ["Host: evil.example", &format!("Sec-WebSocket-Key: {KEY}"), "Sec-WebSocket-Version: 13"] {
        let resp = exchange(&server, with(dup).as_bytes());
        assert_eq!(status_of(&resp), 400, "{dup} twice: {resp}");
    }
    for target in ["*", "http://127.0.0.1/"] {
        let resp = exchange(&server, ok.replacen("GET / ", &format!("GET {target} "), 1).as_bytes());
        assert_eq!(status_of(&resp), 400, "GET {target}: {resp}");
    }
    let resp = exchange(&server, b"GET /page HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n");
    assert_eq!(status_of(&resp), 400, "plain HTTP with two Hosts: {resp}");
    // Still served: a good upgrade after all of them.
    let mut c = raw_client(server.addr);
    c.write_all(&client_frame(true, OpCode::Text, b"fine")).unwrap();
    assert_eq!(read_frame(&mut c).unwrap().2, b"fine");
}
