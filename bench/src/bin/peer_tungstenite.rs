//! tokio-tungstenite echo server on a current-thread tokio runtime (one core, like one wskit loop), with
//! TCP_NODELAY. `peer_tungstenite 127.0.0.1:9001`
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9001".into());
    let listener = TcpListener::bind(&addr).await.expect("bind");
    loop {
        let Ok((sock, _)) = listener.accept().await else { continue };
        let _ = sock.set_nodelay(true);
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(sock).await else { return };
            while let Some(Ok(msg)) = ws.next().await {
                if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                    return;
                }
            }
        });
    }
}
