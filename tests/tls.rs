//! wss: TLS (rustls) inside the loop, from one PEM holding the chain and the key, with an optional passphrase.
//! Key material is made with the `openssl` command line, as the seed's users make it: RSA and ECDSA; PKCS#8,
//! PKCS#1 and SEC1; encrypted (3DES and AES) and plain. Clients: `tungstenite` over rustls, Python `websockets`.
#![cfg(feature = "tls")]

mod common;
use base64::Engine;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tungstenite::Message as T;
use wskit::tls_config::TlsConfigError;
use wskit::{CloseStatus, Config, Ctx, Handler, Message};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl (Debian package `openssl`)");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn cat(dir: &Path, out: &str, parts: &[&str]) -> PathBuf {
    let mut all = Vec::new();
    for p in parts {
        all.extend(std::fs::read(dir.join(p)).unwrap());
    }
    std::fs::write(dir.join(out), all).unwrap();
    dir.join(out)
}

const LEAF_EXT: &[&str] = &["-addext", "basicConstraints=critical,CA:FALSE", "-addext", "extendedKeyUsage=serverAuth"];

/// A fresh directory with key material; returns its path.
fn material(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("tls-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A self-signed leaf `{stem}.crt` with `key_args` choosing the key; its name is the subject's CN (`localhost`
/// also covers 127.0.0.1).
fn self_signed(dir: &Path, stem: &str, key_args: &[&str], subject: &str) {
    let cn = subject.trim_start_matches("/CN=");
    let san = if cn == "localhost" {
        "subjectAltName=IP:127.0.0.1,DNS:localhost".to_string()
    } else {
        format!("subjectAltName=DNS:{cn}")
    };
    let mut args = vec!["req", "-x509", "-days", "2", "-subj", subject, "-addext", &san, "-out"];
    let cert = format!("{stem}.crt");
    args.push(&cert);
    args.extend_from_slice(key_args);
    args.extend_from_slice(LEAF_EXT);
    openssl(dir, &args);
}

type Wss = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>;

fn wss(addr: std::net::SocketAddr, host: &str, cfg: Arc<rustls::ClientConfig>) -> Result<Wss, tungstenite::Error> {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let url = format!("wss://{host}:{}/", addr.port());
    tungstenite::client_tls_with_config(url, tcp, None, Some(tungstenite::Connector::Rustls(cfg)))
        .map(|(ws, _)| ws)
        .map_err(|e| match e {
            tungstenite::HandshakeError::Failure(e) => e,
            tungstenite::HandshakeError::Interrupted(_) => panic!("interrupted handshake on a blocking socket"),
        })
}

fn echo_round_trips(ws: &mut Wss) {
    for n in [0usize, 10, 5000, 70_000, 300_000] {
        let data: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
        ws.send(T::binary(data.clone())).unwrap();
        assert_eq!(ws.read().unwrap(), T::binary(data));
    }
    ws.send(T::text("κόσμε over TLS ".repeat(100))).unwrap();
    assert_eq!(ws.read().unwrap(), T::text("κόσμε over TLS ".repeat(100)));
}

#[test]
fn every_key_kind_serves_wss_to_tungstenite() {
    let dir = material("kinds");
    // RSA, PKCS#8, encrypted with openssl's default (PBES2 + 3DES), as in the seed's instructions.
    self_signed(
        &dir,
        "rsa",
        &["-newkey", "rsa:2048", "-passout", "pass:s3cret", "-keyout", "rsa-enc.key"],
        "/CN=localhost",
    );
    // The same key: plain PKCS#8, PKCS#1, and PKCS#8 encrypted with AES-256.
    openssl(
        &dir,
        &["pkcs8", "-topk8", "-nocrypt", "-in", "rsa-enc.key", "-passin", "pass:s3cret", "-out", "rsa-p8.key"],
    );
    openssl(&dir, &["rsa", "-traditional", "-in", "rsa-p8.key", "-out", "rsa-p1.key"]);
    openssl(
        &dir,
        &[
            "pkcs8",
            "-topk8",
            "-v2",
            "aes-256-cbc",
            "-in",
            "rsa-p8.key",
            "-passout",
            "pass:other",
            "-out",
            "rsa-aes.key",
        ],
    );
    // ECDSA P-256: SEC1 and encrypted PKCS#8.
    openssl(&dir, &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ec-sec1.key"]);
    self_signed(&dir, "ec", &["-key", "ec-sec1.key"], "/CN=localhost");
    openssl(
        &dir,
        &["pkcs8", "-topk8", "-v2", "aes-128-cbc", "-in", "ec-sec1.key", "-passout", "pass:ec", "-out", "ec-enc.key"],
    );

    let cases: Vec<(PathBuf, Option<&str>, &str)> = vec![
        (cat(&dir, "a.pem", &["rsa-enc.key", "rsa.crt"]), Some("s3cret"), "rsa.crt"),
        (cat(&dir, "b.pem", &["rsa.crt", "rsa-p8.key"]), None, "rsa.crt"), // certificate first: any order
        (cat(&dir, "c.pem", &["rsa-p1.key", "rsa.crt"]), None, "rsa.crt"),
        (cat(&dir, "d.pem", &["rsa-aes.key", "rsa.crt"]), Some("other"), "rsa.crt"),
        (cat(&dir, "e.pem", &["ec-sec1.key", "ec.crt"]), None, "ec.crt"),
        (cat(&dir, "f.pem", &["ec.crt", "ec-enc.key"]), Some("ec"), "ec.crt"),
    ];
    for (pem, pass, crt) in cases {
        let server = TestServer::echo(Config::new().max_payload_size(1 << 20).tls_pem(&pem, pass));
        let mut ws = wss(server.addr, "localhost", client_config(&[&dir.join(crt)]))
            .unwrap_or_else(|e| panic!("{}: {e}", pem.display()));
        echo_round_trips(&mut ws);
        ws.close(None).unwrap();
        while ws.read().is_ok() {}
    }
}

#[test]
fn python_websockets_over_wss() {
    if skip_external("python websockets") {
        return;
    }
    let dir = material("py");
    self_signed(&dir, "rsa", &["-newkey", "rsa:2048", "-passout", "pass:pw", "-keyout", "k.key"], "/CN=localhost");
    let pem = cat(&dir, "both.pem", &["k.key", "rsa.crt"]);
    let server = TestServer::echo(Config::new().tls_pem(&pem, Some("pw")));
    let script = r#"
import ssl, sys
from websockets.sync.client import connect
ctx = ssl.create_default_context(cafile=sys.argv[2])
for compression in (None, "deflate"):
    with connect(sys.argv[1], ssl=ctx, compression=compression, max_size=None) as ws:
        for data in ("hello wss " * 1000, b"\x00\x01" * 50000):
            ws.send(data)
            assert ws.recv() == data
print("ok")
"#;
    let out = run_python(
        script,
        &[&format!("wss://127.0.0.1:{}/", server.addr.port()), dir.join("rsa.crt").to_str().unwrap()],
    );
    assert_eq!(out.trim(), "ok");
}

fn startup_error(config: Config) -> String {
    match wskit::Server::bind("127.0.0.1:0", config, Echo) {
        Ok(_) => panic!("started"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn startup_errors_name_the_file_and_the_fault() {
    let dir = material("errors");
    self_signed(&dir, "a", &["-newkey", "rsa:2048", "-passout", "pass:pw", "-keyout", "a-enc.key"], "/CN=localhost");
    openssl(&dir, &["pkcs8", "-topk8", "-nocrypt", "-in", "a-enc.key", "-passin", "pass:pw", "-out", "a.key"]);
    self_signed(
        &dir,
        "b",
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "b.key"],
        "/CN=localhost",
    );
    openssl(&dir, &["genpkey", "-algorithm", "ed448", "-out", "ed448.key"]);
    self_signed(&dir, "ed448", &["-key", "ed448.key"], "/CN=localhost");
    openssl(&dir, &["rsa", "-traditional", "-aes256", "-in", "a.key", "-passout", "pass:pw", "-out", "a-legacy.key"]);
    let check = |pem: PathBuf, pass: Option<&str>, want: &str| {
        let msg = startup_error(Config::new().tls_pem(&pem, pass));
        assert!(msg.contains(&pem.display().to_string()), "names the file: {msg}");
        assert!(msg.contains(want), "expected {want:?} in: {msg}");
    };
    check(dir.join("missing.pem"), None, "cannot read the file");
    check(cat(&dir, "nocert.pem", &["a.key"]), None, "no certificate");
    check(cat(&dir, "nokey.pem", &["a.crt"]), None, "no private key");
    check(cat(&dir, "mismatch.pem", &["a.key", "b.crt"]), None, "does not match the certificate");
    check(cat(&dir, "nopass.pem", &["a-enc.key", "a.crt"]), None, "encrypted and no ssl_passphrase");
    check(cat(&dir, "wrong.pem", &["a-enc.key", "a.crt"]), Some("wrong"), "wrong passphrase");
    check(cat(&dir, "ed448.pem", &["ed448.key", "ed448.crt"]), None, "unsupported private key");
    check(cat(&dir, "legacy.pem", &["a-legacy.key", "a.crt"]), Some("pw"), "legacy PEM encryption");
    // Never a silent plain-text fallback: a TLS config error stops the server.
    let msg = startup_error(Config::from_pairs([("ssl_cert", dir.join("missing.pem").to_str().unwrap())]).unwrap());
    assert!(msg.contains("ssl_cert"), "{msg}");
}

#[test]
fn sni_alpn_and_minimum_version() {
    let dir = material("sni");
    self_signed(&dir, "a", &["-newkey", "rsa:2048", "-nodes", "-keyout", "a.key"], "/CN=a.test");
    self_signed(&dir, "b", &["-newkey", "rsa:2048", "-nodes", "-keyout", "b.key"], "/CN=b.test");
    self_signed(&dir, "d", &["-newkey", "rsa:2048", "-nodes", "-keyout", "d.key"], "/CN=localhost");
    let config = Config::new()
        .tls_pem(cat(&dir, "d.pem", &["d.key", "d.crt"]), None)
        .sni_cert("a.test", cat(&dir, "a.pem", &["a.key", "a.crt"]), None)
        .sni_cert("B.TEST", cat(&dir, "b.pem", &["b.key", "b.crt"]), None);
    let server = TestServer::echo(config);
    // Each name gets its own certificate: the client trusts all three and checks the name.
    let trust = client_config(&[&dir.join("a.crt"), &dir.join("b.crt"), &dir.join("d.crt")]);
    for host in ["a.test", "b.test", "localhost"] {
        let mut ws = wss(server.addr, host, trust.clone()).unwrap_or_else(|e| panic!("{host}: {e}"));
        ws.send(T::text(host)).unwrap();
        assert_eq!(ws.read().unwrap(), T::text(host));
        if let tungstenite::stream::MaybeTlsStream::Rustls(tls) = ws.get_ref() {
            assert_eq!(tls.conn.alpn_protocol(), Some(&b"http/1.1"[..]), "ALPN");
        }
    }
    // A client trusting only a.test's certificate fails for b.test: it got b's certificate.
    assert!(wss(server.addr, "b.test", client_config(&[&dir.join("a.crt")])).is_err());

    // TLS 1.3 only: a TLS 1.2 client is refused.
    let mut c13 = Config::new().tls_pem(dir.join("d.pem"), None);
    c13.ssl_min_version = wskit::config::TlsVersion::Tls13;
    let server = TestServer::echo(c13);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(cert_der(&dir.join("d.crt")))).unwrap();
    let tls12 = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    assert!(wss(server.addr, "localhost", Arc::new(tls12)).is_err());
    assert!(wss(server.addr, "localhost", client_config(&[&dir.join("d.crt")])).is_ok());
}

/// Records how connections ended.
struct Record(std::sync::mpsc::Sender<CloseStatus>);
impl Handler for Record {
    fn on_message(&mut self, ctx: &mut Ctx<'_>, msg: Message<'_>) {
        ctx.send(msg);
    }
    fn on_close(&mut self, _ctx: &mut Ctx<'_>, status: &CloseStatus) {
        let _ = self.0.send(status.clone());
    }
}

#[test]
fn garbage_silence_close_notify_and_lost() {
    let dir = material("faults");
    self_signed(&dir, "d", &["-newkey", "rsa:2048", "-nodes", "-keyout", "d.key"], "/CN=localhost");
    let pem = cat(&dir, "d.pem", &["d.key", "d.crt"]);
    let (tx, rx) = std::sync::mpsc::channel();
    let config = Config::new().tls_pem(&pem, None).handshake_timeout(Duration::from_millis(400));
    let server = TestServer::start(config, move || Record(tx));
    let trust = client_config(&[&dir.join("d.crt")]);

    // Plain HTTP (garbage to TLS) gets an alert and a close; others are unaffected.
    let mut g = TcpStream::connect(server.addr).unwrap();
    g.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    g.write_all(upgrade_request("/").as_bytes()).unwrap();
    let mut got = Vec::new();
    let _ = g.read_to_end(&mut got);
    assert!(!got.is_empty() && got[0] == 0x15, "a TLS alert record, got {got:x?}");
    // A client that never sends a ClientHello is dropped at the handshake deadline.
    let mut silent = TcpStream::connect(server.addr).unwrap();
    silent.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let start = Instant::now();
    assert!(reads_eof(&mut silent));
    assert!(start.elapsed() < Duration::from_secs(3), "{:?}", start.elapsed());

    // A clean close: the server sends close_notify after the WebSocket close (the client sees a clean TLS EOF).
    let mut ws = wss(server.addr, "localhost", trust.clone()).unwrap();
    ws.send(T::text("hi")).unwrap();
    assert_eq!(ws.read().unwrap(), T::text("hi"));
    ws.close(None).unwrap();
    loop {
        match ws.read() {
            Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("expected a clean close, got {e}"),
        }
    }
    let tungstenite::stream::MaybeTlsStream::Rustls(tls) = ws.get_mut() else { panic!("not TLS") };
    let mut rest = Vec::new();
    assert!(tls.read_to_end(&mut rest).is_ok(), "close_notify received (no UnexpectedEof)");
    assert!(matches!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), CloseStatus::Clean { .. }));

    // Dropping TCP without a close is "connection lost".
    let mut ws = wss(server.addr, "localhost", trust).unwrap();
    ws.send(T::text("bye")).unwrap();
    assert_eq!(ws.read().unwrap(), T::text("bye"));
    drop(ws);
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), CloseStatus::Lost);
    assert!(wait_until(Duration::from_secs(5), || server.connections() == 0), "{}", server.connections());
}

fn pem_section(text: &str, label: &str) -> Vec<u8> {
    let begin = format!("-----BEGIN {label}-----");
    let body: String =
        text.lines().skip_while(|l| *l != begin).skip(1).take_while(|l| !l.starts_with("-----END")).collect();
    base64::engine::general_purpose::STANDARD.decode(body).unwrap()
}

#[test]
fn caller_built_rustls_config_with_bind_tls() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let text = std::fs::read_to_string(data.join("localhost.pem")).unwrap();
    let cert = rustls::pki_types::CertificateDer::from(pem_section(&text, "CERTIFICATE"));
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(pem_section(&text, "PRIVATE KEY"));
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key.into())
        .unwrap();
    let tls = Arc::new(tls);
    let (tx, rx) = std::sync::mpsc::channel();
    let served = tls.clone();
    let stopper = std::thread::spawn(move || {
        let mut server = wskit::Server::bind_tls("127.0.0.1:0", Config::new(), served, Echo).unwrap();
        tx.send((server.local_addr(), server.handle())).unwrap();
        server.run().unwrap();
    });
    let (addr, handle) = rx.recv().unwrap();
    let mut ws = wss(addr, "localhost", client_config(&[&data.join("localhost-cert.pem")])).unwrap();
    ws.send(T::text("built by the caller")).unwrap();
    assert_eq!(ws.read().unwrap(), T::text("built by the caller"));
    // No files to read again: the caller gives the new configuration itself.
    assert_eq!(handle.reload_tls(), Err(TlsConfigError::NotReloadable));
    handle.set_tls_config(tls).unwrap();
    let mut again = wss(addr, "localhost", client_config(&[&data.join("localhost-cert.pem")])).unwrap();
    again.send(T::text("after set_tls_config")).unwrap();
    assert_eq!(again.read().unwrap(), T::text("after set_tls_config"));
    assert!(wait_until(Duration::from_secs(5), || handle.metrics().tls_reloads.load(Relaxed) == 1));
    handle.stop();
    stopper.join().unwrap();
}

/// Two self-signed ECDSA certificates for `localhost` (`one.pem`, `two.pem`: key and certificate; `one.crt`,
/// `two.crt`), and `live.pem`, a copy of `one.pem`, for the server to serve and the test to renew in place.
fn two_certificates(name: &str) -> PathBuf {
    let dir = material(name);
    for stem in ["one", "two"] {
        let key = format!("{stem}.key");
        openssl(&dir, &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", &key]);
        self_signed(&dir, stem, &["-key", &key], "/CN=localhost");
        cat(&dir, &format!("{stem}.pem"), &[&key, &format!("{stem}.crt")]);
    }
    std::fs::copy(dir.join("one.pem"), dir.join("live.pem")).unwrap();
    dir
}

#[test]
fn reload_tls_serves_the_renewed_certificate_to_new_handshakes_only() {
    let dir = two_certificates("reload");
    let live = dir.join("live.pem");
    let (one, two) = (client_config(&[&dir.join("one.crt")]), client_config(&[&dir.join("two.crt")]));
    let server = TestServer::echo(Config::new().max_payload_size(1 << 20).tls_pem(&live, None));
    let mut before = wss(server.addr, "localhost", one.clone()).expect("served with the first certificate");
    assert!(wss(server.addr, "localhost", two.clone()).is_err(), "the second certificate is not served yet");

    // Renewed in place, then reloaded: new handshakes get the new certificate, the open connection goes on.
    std::fs::copy(dir.join("two.pem"), &live).unwrap();
    server.handle.reload_tls().expect("the renewed file loads");
    let mut after = wss(server.addr, "localhost", two.clone()).expect("served with the second certificate");
    assert!(wss(server.addr, "localhost", one.clone()).is_err(), "the first certificate is no longer served");
    echo_round_trips(&mut before);
    echo_round_trips(&mut after);
    assert_eq!(server.handle.metrics().tls_reloads.load(Relaxed), 1);

    // Files that do not load are refused with their error; the configuration in use stays.
    std::fs::copy(dir.join("two.crt"), &live).unwrap(); // a certificate without its key
    assert_eq!(server.handle.reload_tls(), Err(TlsConfigError::NoKey(live.clone())));
    std::fs::write(&live, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    let e = server.handle.reload_tls().unwrap_err();
    assert!(matches!(e, TlsConfigError::BadPem(..) | TlsConfigError::NoCertificate(_)), "{e}");
    assert!(e.to_string().contains("live.pem"), "the error names the file: {e}");
    std::fs::remove_file(&live).unwrap();
    assert!(matches!(server.handle.reload_tls(), Err(TlsConfigError::FileUnreadable(..))));
    let mut still = wss(server.addr, "localhost", two).expect("still served with the second certificate");
    echo_round_trips(&mut still);
    echo_round_trips(&mut before);
    assert_eq!(server.handle.metrics().tls_reloads.load(Relaxed), 1);
    assert!(server.handle.metrics().to_prometheus().contains("wskit_tls_reloads_total 1"));

    let plain = TestServer::echo(Config::new());
    assert_eq!(plain.handle.reload_tls(), Err(TlsConfigError::NotTls));
}

#[test]
fn echo_example_reloads_its_pem_on_sighup() {
    let dir = two_certificates("sighup");
    let live = dir.join("live.pem");
    let (one, two) = (client_config(&[&dir.join("one.crt")]), client_config(&[&dir.join("two.crt")]));
    let echo = example_binary("echo", &["examples/echo.rs"]);
    for loops in ["1", "2"] {
        std::fs::copy(dir.join("one.pem"), &live).unwrap();
        let (child, addr) = spawn_listening(Command::new(&echo).args(["--pem"]).arg(&live).args(["--loops", loops]));
        let child = Child(child);
        let mut before = wss(addr, "localhost", one.clone()).expect("the first certificate");
        std::fs::copy(dir.join("two.pem"), &live).unwrap();
        let hup = |pid: u32| assert!(Command::new("kill").args(["-HUP", &pid.to_string()]).status().unwrap().success());
        hup(child.0.id());
        assert!(
            wait_until(Duration::from_secs(10), || wss(addr, "localhost", two.clone()).is_ok()),
            "{loops} loop(s): the renewed certificate is served after SIGHUP"
        );
        // Every loop serves it (connections land on either loop of two).
        for _ in 0..8 {
            echo_round_trips(&mut wss(addr, "localhost", two.clone()).expect("every loop reloaded"));
        }
        echo_round_trips(&mut before);
        // A broken file on SIGHUP: refused, and the server goes on with what it had.
        std::fs::write(&live, "garbage").unwrap();
        hup(child.0.id());
        std::thread::sleep(Duration::from_millis(300));
        echo_round_trips(&mut wss(addr, "localhost", two.clone()).expect("the configuration in use is kept"));
    }
}
