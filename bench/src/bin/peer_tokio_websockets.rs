//! tokio-websockets echo server on a current-thread tokio runtime, with TCP_NODELAY and the crate's own
//! upgrade (`ServerBuilder::accept`). Limits are raised so 1 MiB messages pass, as for every peer.
//! `peer_tokio_websockets 127.0.0.1:9001`
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_websockets::{Config, Limits, ServerBuilder};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9001".into());
    let listener = TcpListener::bind(&addr).await.expect("bind");
    loop {
        let Ok((sock, _)) = listener.accept().await else { continue };
        let _ = sock.set_nodelay(true);
        tokio::spawn(async move {
            let builder = ServerBuilder::new()
                .config(Config::default().frame_size(usize::MAX))
                .limits(Limits::default().max_payload_len(Some(64 << 20)));
            let Ok((_, mut ws)) = builder.accept(sock).await else { return };
            while let Some(Ok(msg)) = ws.next().await {
                if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                    return;
                }
            }
        });
    }
}
