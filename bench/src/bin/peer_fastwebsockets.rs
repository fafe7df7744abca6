//! fastwebsockets echo server on a current-thread tokio runtime, with TCP_NODELAY. The HTTP upgrade is done by
//! hand (the crate's own upgrade path needs hyper); frames go through `FragmentCollector`, as its echo example
//! does. `peer_fastwebsockets 127.0.0.1:9001`
use fastwebsockets::{FragmentCollector, OpCode, Role, WebSocket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn upgrade(sock: &mut TcpStream) -> Option<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = sock.read(&mut buf).await.ok()?;
        if n == 0 || head.len() > 8192 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let key = text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case("sec-websocket-key").then(|| v.trim().to_string())
    })?;
    let accept = wskit::handshake::accept_key(&key);
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    sock.write_all(resp.as_bytes()).await.ok()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9001".into());
    let listener = TcpListener::bind(&addr).await.expect("bind");
    loop {
        let Ok((mut sock, _)) = listener.accept().await else { continue };
        let _ = sock.set_nodelay(true);
        tokio::spawn(async move {
            if upgrade(&mut sock).await.is_none() {
                return;
            }
            let mut ws = FragmentCollector::new(WebSocket::after_handshake(sock, Role::Server));
            while let Ok(frame) = ws.read_frame().await {
                let op = frame.opcode;
                if op == OpCode::Close {
                    return;
                }
                if matches!(op, OpCode::Text | OpCode::Binary) && ws.write_frame(frame).await.is_err() {
                    return;
                }
            }
        });
    }
}
