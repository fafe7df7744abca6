//! tokio-tungstenite echo server on a current-thread tokio runtime (one core, like one wskit loop), with
//! TCP_NODELAY; with `--pem FILE` (certificate chain and key) it serves wss through tokio-rustls (ring, as
//! wskit). `peer_tungstenite 127.0.0.1:9001 [--pem FILE]`
use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

async fn echo<S: AsyncRead + AsyncWrite + Unpin>(sock: S) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(sock).await else { return };
    while let Some(Ok(msg)) = ws.next().await {
        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
            return;
        }
    }
}

fn tls(pem: &str) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(pem).expect("--pem file").map(|c| c.expect("certificate")).collect();
    let key = PrivateKeyDer::from_pem_file(pem).expect("key in --pem file");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("certificate and key");
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let addr = args.get(1).cloned().unwrap_or_else(|| "127.0.0.1:9001".into());
    let acceptor = args.windows(2).find(|w| w[0] == "--pem").map(|w| tls(&w[1]));
    let listener = TcpListener::bind(&addr).await.expect("bind");
    loop {
        let Ok((sock, _)) = listener.accept().await else { continue };
        let _ = sock.set_nodelay(true);
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            match acceptor {
                None => echo(sock).await,
                Some(a) => {
                    if let Ok(s) = a.accept(sock).await {
                        echo(s).await
                    }
                }
            }
        });
    }
}
