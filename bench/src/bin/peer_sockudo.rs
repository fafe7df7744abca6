//! sockudo-ws echo server on a current-thread tokio runtime, with TCP_NODELAY. The upgrade uses the crate's own
//! request parser and response builder; with `--deflate`, permessage-deflate is negotiated by the crate
//! (`negotiate_server_deflate`) and messages go through its `CompressedWebSocketStream`.
//! `peer_sockudo 127.0.0.1:9001 [--deflate]`
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use sockudo_ws::deflate::{negotiate_server_deflate, DeflateConfig, DeflateNegotiation};
use sockudo_ws::handshake::{build_response, generate_accept_key, parse_request};
use sockudo_ws::{CompressedWebSocketStream, Config, Message, WebSocketStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Reads the request, answers 101; returns the negotiated deflate (if any) and bytes read past the head.
async fn upgrade(sock: &mut TcpStream, deflate: bool) -> Option<(Option<DeflateNegotiation>, Bytes)> {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        if sock.read_buf(&mut buf).await.ok()? == 0 {
            return None;
        }
        if let Some((req, used)) = parse_request(&buf).ok()? {
            let accept = generate_accept_key(req.key);
            let neg =
                req.extensions.filter(|_| deflate).and_then(|e| negotiate_server_deflate(e, &DeflateConfig::default()));
            let header = neg.as_ref().map(|n| n.to_response_header());
            let resp = build_response(&accept, None, header.as_deref());
            sock.write_all(&resp).await.ok()?;
            let rest = buf.split_off(used).freeze();
            return Some((neg, rest));
        }
    }
}

async fn echo<S>(mut ws: S)
where
    S: futures_util::Stream<Item = sockudo_ws::Result<Message>> + futures_util::Sink<Message> + Unpin,
{
    while let Some(Ok(msg)) = ws.next().await {
        let data = matches!(msg, Message::Text(_) | Message::Binary(_));
        if matches!(msg, Message::Close(_)) || (data && ws.send(msg).await.is_err()) {
            return;
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let addr = args.get(1).cloned().unwrap_or_else(|| "127.0.0.1:9001".into());
    let deflate = args.iter().any(|a| a == "--deflate");
    let listener = TcpListener::bind(&addr).await.expect("bind");
    loop {
        let Ok((mut sock, _)) = listener.accept().await else { continue };
        let _ = sock.set_nodelay(true);
        tokio::spawn(async move {
            let Some((neg, rest)) = upgrade(&mut sock, deflate).await else { return };
            let config = Config::default();
            match neg {
                Some(n) => {
                    echo(CompressedWebSocketStream::server_with_leftover(sock, config, n.config, Some(rest))).await
                }
                None => echo(WebSocketStream::server(sock, config)).await,
            }
        });
    }
}
