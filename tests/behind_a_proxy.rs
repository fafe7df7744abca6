//! Behind a real load balancer and reverse proxy (HAProxy): the PROXY protocol (`send-proxy`, `send-proxy-v2`)
//! and the answers to connections without a valid header; `X-Forwarded-For` from trusted proxies only. The
//! client they name is the connection's peer, in `Ctx::peer_addr` and in the per-IP limit.
mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tungstenite::Message as T;
use wskit::{Config, Ctx, Handler, Message};

/// Answers "who" with the peer address it sees; echoes anything else.
struct WhoAmI;

impl Handler for WhoAmI {
    fn on_message(&mut self, ctx: &mut Ctx<'_>, msg: Message<'_>) {
        if msg.as_bytes() == b"who" {
            let me = ctx.peer_addr().to_string();
            ctx.send(Message::Text(&me));
        } else {
            ctx.send(msg);
        }
    }
}

fn server(config: Config) -> TestServer {
    TestServer::start(config.proxy_protocol(true), || WhoAmI)
}

/// HAProxy on a free port, in TCP mode (or `http`, with `option forwardfor`), forwarding to `backend` from
/// 127.0.0.2 (so the server's socket peer is never the client's address) with `send` (`send-proxy`,
/// `send-proxy-v2` or nothing).
struct Haproxy {
    child: Child,
    addr: SocketAddr,
    _dir: TempDir,
}

impl Haproxy {
    fn start(backend: SocketAddr, send: &str) -> Haproxy {
        Self::start_mode(backend, "tcp", send)
    }

    fn start_mode(backend: SocketAddr, mode: &str, send: &str) -> Haproxy {
        let dir = TempDir::new("haproxy");
        let port = free_port();
        let cfg = dir.0.join("haproxy.cfg");
        std::fs::write(
            &cfg,
            format!(
                "global\n  maxconn 100\n\ndefaults\n  mode {mode}\n  timeout connect 5s\n  timeout client 30s\n  \
                 timeout server 30s\n  timeout tunnel 30s\n{fwd}\nfrontend fe\n  bind 127.0.0.1:{port}\n  \
                 default_backend be\n\nbackend be\n  server s1 {backend} {send} source 127.0.0.2\n",
                fwd = if mode == "http" { "  option forwardfor\n" } else { "" }
            ),
        )
        .unwrap();
        let bin = std::env::var("WSKIT_HAPROXY").unwrap_or_else(|_| "/usr/sbin/haproxy".into());
        assert!(Path::new(&bin).exists(), "{bin} not found: `apt-get install haproxy` (done by .ci/run)");
        let child = Command::new(bin)
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start haproxy");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        assert!(wait_until(Duration::from_secs(10), || TcpStream::connect(addr).is_ok()), "haproxy did not listen");
        Haproxy { child, addr, _dir: dir }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(stem: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("wskit-{stem}-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

type Ws = tungstenite::WebSocket<TcpStream>;

/// A tungstenite client over `tcp` (which may already carry a PROXY header), asking who it is.
fn ws_over(tcp: TcpStream) -> (Ws, SocketAddr, String) {
    ws_over_with(tcp, &[])
}

/// The same with extra request headers.
fn ws_over_with(tcp: TcpStream, headers: &[(&str, &str)]) -> (Ws, SocketAddr, String) {
    use tungstenite::client::IntoClientRequest;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let me = tcp.local_addr().unwrap();
    let mut req = format!("ws://{}/", tcp.peer_addr().unwrap()).into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().append(
            tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            tungstenite::http::HeaderValue::from_str(v).unwrap(),
        );
    }
    let (mut ws, _) = tungstenite::client(req, tcp).expect("upgrade");
    ws.send(T::text("who")).unwrap();
    let seen = ws.read().unwrap().into_text().unwrap().to_string();
    (ws, me, seen)
}

#[test]
fn haproxy_v1_and_v2_name_the_client() {
    if skip_external("haproxy") {
        return;
    }
    for send in ["send-proxy", "send-proxy-v2"] {
        let srv = server(Config::new());
        let lb = Haproxy::start(srv.addr, send);
        for _ in 0..3 {
            let (mut ws, me, seen) = ws_over(TcpStream::connect(lb.addr).unwrap());
            // The client's own address and port, not HAProxy's 127.0.0.2.
            assert_eq!(seen, me.to_string(), "{send}");
            let big: Vec<u8> = (0..200_000).map(|i| (i % 251) as u8).collect();
            ws.send(T::binary(big.clone())).unwrap();
            assert_eq!(ws.read().unwrap(), T::binary(big), "{send}");
            ws.close(None).unwrap();
            while ws.read().is_ok() {}
        }
    }
}

/// The same server with the header off sees HAProxy, which is what the header is for.
#[test]
fn without_the_option_the_peer_is_the_balancer() {
    if skip_external("haproxy") {
        return;
    }
    let srv = TestServer::start(Config::new(), || WhoAmI);
    let lb = Haproxy::start(srv.addr, "");
    let (_ws, _, seen) = ws_over(TcpStream::connect(lb.addr).unwrap());
    assert!(seen.starts_with("127.0.0.2:"), "{seen}");
}

/// A plain connection, nothing sent yet.
fn tcp(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

fn v2_tcp4(src: [u8; 4], sport: u16) -> Vec<u8> {
    let mut h = wskit::proxy::V2_SIGNATURE.to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&443u16.to_be_bytes());
    h
}

/// The header and the upgrade request byte by byte, and in one write with the request: the same peer.
#[test]
fn any_split_of_header_and_request_gives_the_named_peer() {
    let srv = server(Config::new());
    let request = upgrade_request("/");
    for header in [b"PROXY TCP4 203.0.113.9 127.0.0.1 4242 80\r\n".to_vec(), v2_tcp4([203, 0, 113, 9], 4242)] {
        for bytewise in [false, true] {
            let mut s = tcp(srv.addr);
            let all = [header.as_slice(), request.as_bytes()].concat();
            if bytewise {
                for b in &all {
                    s.write_all(std::slice::from_ref(b)).unwrap();
                    std::thread::sleep(Duration::from_micros(200));
                }
            } else {
                s.write_all(&all).unwrap();
            }
            assert!(read_head(&mut s).starts_with("HTTP/1.1 101"));
            s.write_all(&client_frame(true, wskit::frame::OpCode::Text, b"who")).unwrap();
            let (_, _, payload) = read_frame(&mut s).unwrap();
            assert_eq!(payload, b"203.0.113.9:4242", "bytewise {bytewise}");
        }
    }
}

/// The per-IP limit counts the clients the headers name, not the balancer.
#[test]
fn the_per_ip_limit_counts_the_named_clients() {
    let srv = server(Config::new().max_connections(0, 1));
    let request = upgrade_request("/");
    let open = |src: [u8; 4], sport: u16| {
        let mut s = tcp(srv.addr);
        s.write_all(&[v2_tcp4(src, sport), request.clone().into_bytes()].concat()).unwrap();
        let head = read_head(&mut s);
        (s, head)
    };
    let (_a, head) = open([198, 51, 100, 1], 1000);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let (_b, head) = open([198, 51, 100, 2], 1000);
    assert!(head.starts_with("HTTP/1.1 101"), "a second client behind the same balancer: {head}");
    let (_c, head) = open([198, 51, 100, 1], 1001);
    assert!(head.starts_with("HTTP/1.1 429"), "{head}");
}

/// No header, a malformed one, or one that never ends: 400 and closed, or dropped at the handshake timeout;
/// the loop serves the next client.
#[test]
fn connections_without_a_valid_header_are_refused() {
    let srv = server(Config::new().handshake_timeout(Duration::from_millis(300)));
    let request = upgrade_request("/");
    for first in [
        request.clone().into_bytes(),
        b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 80\r\n".to_vec(),
        [b"PROXY UNKNOWN ".as_slice(), &[b'x'; 200]].concat(),
        [&wskit::proxy::V2_SIGNATURE[..], &[0x21, 0x11, 0xff, 0xff]].concat(),
    ] {
        let mut s = tcp(srv.addr);
        s.write_all(&first).unwrap();
        let head = read_head(&mut s);
        assert!(head.starts_with("HTTP/1.1 400"), "{head}");
        assert!(reads_eof(&mut s));
    }
    // Half a header, then silence: dropped at the handshake deadline, without an answer.
    let mut s = tcp(srv.addr);
    s.write_all(b"PROXY TCP4 1.2.").unwrap();
    let mut buf = [0u8; 64];
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));
    // And the loop goes on.
    let mut s = tcp(srv.addr);
    s.write_all(&[v2_tcp4([192, 0, 2, 1], 7), request.into_bytes()].concat()).unwrap();
    assert!(read_head(&mut s).starts_with("HTTP/1.1 101"));
    assert!(wait_until(Duration::from_secs(2), || srv.connections() == 1));
}

/// wss: the header comes before TLS. A TLS client with a v2 header is served and named; one without is closed
/// (nothing HTTP can be said before TLS).
#[cfg(feature = "tls")]
#[test]
fn over_tls_the_header_precedes_the_client_hello() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut config = Config::new();
    config.ssl_cert = Some(root.join("localhost.pem"));
    let srv = server(config);
    let cfg = client_config(&[&root.join("localhost-cert.pem")]);
    let connector = || Some(tungstenite::Connector::Rustls(cfg.clone()));
    let url = format!("wss://localhost:{}/", srv.addr.port());

    let mut tcp = TcpStream::connect(srv.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.write_all(&v2_tcp4([203, 0, 113, 77], 5555)).unwrap();
    let (mut ws, _) = tungstenite::client_tls_with_config(&url, tcp, None, connector()).expect("wss");
    ws.send(T::text("who")).unwrap();
    assert_eq!(ws.read().unwrap(), T::text("203.0.113.77:5555"));

    let tcp = TcpStream::connect(srv.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert!(tungstenite::client_tls_with_config(&url, tcp, None, connector()).is_err());
}

/// `upgrade_request` with an `X-Forwarded-For` line.
fn request_forwarded_for(xff: &str) -> Vec<u8> {
    upgrade_request("/").replace("\r\n\r\n", &format!("\r\nX-Forwarded-For: {xff}\r\n\r\n")).into_bytes()
}

/// HAProxy as an HTTP reverse proxy (`option forwardfor` appends the address it received from): the server
/// trusts HAProxy's 127.0.0.2 and finds the client there, whatever the client wrote in the header itself; the
/// same forged header sent straight to the server is ignored.
#[test]
fn x_forwarded_for_from_trusted_proxies_only() {
    if skip_external("haproxy") {
        return;
    }
    let trusted: wskit::policy::IpNet = "127.0.0.2".parse().unwrap();
    let srv = TestServer::start(Config::new().trusted_proxies([trusted]), || WhoAmI);
    let lb = Haproxy::start_mode(srv.addr, "http", "");
    let forged = [("X-Forwarded-For", "6.6.6.6")];
    for headers in [&[][..], &forged[..]] {
        let (mut ws, me, seen) = ws_over_with(TcpStream::connect(lb.addr).unwrap(), headers);
        assert_eq!(seen, format!("{}:0", me.ip()), "through HAProxy, headers {headers:?}");
        ws.send(T::binary(vec![7u8; 100_000])).unwrap();
        assert_eq!(ws.read().unwrap(), T::binary(vec![7u8; 100_000]));
    }
    let (_ws, me, seen) = ws_over_with(TcpStream::connect(srv.addr).unwrap(), &forged);
    assert_eq!(seen, me.to_string(), "straight to the server, from an untrusted address");
}

/// The per-IP limit counts the forwarded clients; an untrusted sender's header changes nothing.
#[test]
fn the_per_ip_limit_counts_forwarded_clients() {
    let loopback: wskit::policy::IpNet = "127.0.0.0/8".parse().unwrap();
    let srv = TestServer::start(Config::new().trusted_proxies([loopback]).max_connections(0, 1), || WhoAmI);
    let open = |xff: &str| {
        let mut s = tcp(srv.addr);
        s.write_all(&request_forwarded_for(xff)).unwrap();
        let head = read_head(&mut s);
        (s, head)
    };
    let (_a, head) = open("198.51.100.1");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let (_b, head) = open("6.6.6.6, 198.51.100.2, 127.0.0.9");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let (_c, head) = open("198.51.100.1");
    assert!(head.starts_with("HTTP/1.1 429"), "{head}");

    let other: wskit::policy::IpNet = "192.0.2.0/24".parse().unwrap();
    let srv = TestServer::start(Config::new().trusted_proxies([other]).max_connections(0, 1), || WhoAmI);
    let mut a = tcp(srv.addr);
    a.write_all(&request_forwarded_for("198.51.100.1")).unwrap();
    assert!(read_head(&mut a).starts_with("HTTP/1.1 101"));
    let mut b = tcp(srv.addr);
    b.write_all(&request_forwarded_for("198.51.100.2")).unwrap();
    assert!(read_head(&mut b).starts_with("HTTP/1.1 429"), "127.0.0.1 is not trusted: one address for both");
}
