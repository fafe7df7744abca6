//! Helpers shared by the integration tests: a server on a thread, raw-socket clients, and the paths of outside
//! peers (Python `websockets`, Chromium, the Autobahn runner) installed by `.ci/run`.
#![allow(dead_code)] // each test file uses a different part of this module

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use wskit::frame::{write_client_frame, OpCode};
use wskit::{Config, Ctx, Handler, Message, Server, ServerHandle};

/// Echoes every message.
pub struct Echo;

impl Handler for Echo {
    fn on_message(&mut self, ctx: &mut Ctx<'_>, msg: Message<'_>) {
        ctx.send(msg);
    }
}

/// A server running on its own thread, stopped when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    /// Sends, publishes, reads metrics and stops from the test's thread.
    pub handle: ServerHandle,
    count: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Starts a server on 127.0.0.1 with a free port; `make` builds the handler on the server's thread.
    pub fn start<H: Handler + 'static>(config: Config, make: impl FnOnce() -> H + Send + 'static) -> TestServer {
        let (tx, rx) = mpsc::channel();
        let count = Arc::new(AtomicUsize::new(0));
        let published = count.clone();
        let thread = std::thread::spawn(move || {
            let mut server = Server::bind("127.0.0.1:0", config, make()).expect("bind");
            tx.send((server.local_addr(), server.handle())).unwrap();
            while !server.is_stopped() {
                server.poll_once(Some(Duration::from_millis(20))).expect("poll");
                published.store(server.connection_count(), Ordering::SeqCst);
            }
        });
        let (addr, handle) = rx.recv().expect("server started");
        TestServer { addr, handle, count, thread: Some(thread) }
    }

    /// An echo server.
    pub fn echo(config: Config) -> TestServer {
        Self::start(config, || Echo)
    }

    /// Sockets the server holds, as of its last loop turn.
    pub fn connections(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.handle.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A tungstenite client with extra request headers (`Origin`, `Sec-WebSocket-Protocol`, ...); the handshake
/// error (with the HTTP status) when the server refuses.
pub fn ws_connect(
    url: &str,
    headers: &[(&str, &str)],
) -> Result<
    (tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>, tungstenite::handshake::client::Response),
    tungstenite::Error,
> {
    use tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            tungstenite::http::HeaderValue::from_str(v).unwrap(),
        );
    }
    tungstenite::connect(req)
}

/// The HTTP status of a refused `ws_connect`.
pub fn refused_status(r: Result<impl Sized, tungstenite::Error>) -> u16 {
    match r {
        Err(tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("expected an HTTP refusal, got an open connection"),
    }
}

/// Polls `f` until it is true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}

pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

pub fn upgrade_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n\r\n"
    )
}

/// Reads an HTTP response head (up to the blank line) byte by byte, so nothing after it is consumed.
pub fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// A raw client after a successful handshake.
pub fn raw_client(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(upgrade_request("/").as_bytes()).unwrap();
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s
}

pub fn client_frame(fin: bool, op: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    write_client_frame(&mut v, fin, 0, op, [0xa1, 0xb2, 0xc3, 0xd4], payload);
    v
}

/// Reads one server frame: (fin, opcode byte, payload). Panics if the server sent a masked frame.
pub fn read_frame(s: &mut TcpStream) -> std::io::Result<(bool, u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h)?;
    assert_eq!(h[1] & 0x80, 0, "a server must not mask");
    let len = match h[1] & 0x7f {
        126 => {
            let mut l = [0u8; 2];
            s.read_exact(&mut l)?;
            u16::from_be_bytes(l) as usize
        }
        127 => {
            let mut l = [0u8; 8];
            s.read_exact(&mut l)?;
            u64::from_be_bytes(l) as usize
        }
        n => n as usize,
    };
    let mut p = vec![0u8; len];
    s.read_exact(&mut p)?;
    Ok((h[0] & 0x80 != 0, h[0] & 0x0f, p))
}

/// Reads frames until a close frame and returns its code (None for an empty close).
pub fn read_close(s: &mut TcpStream) -> Option<u16> {
    loop {
        let (_, op, p) = read_frame(s).expect("a close frame");
        if op == 0x8 {
            return (p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]]));
        }
    }
}

/// True if the server closed the TCP connection (EOF) within the read timeout.
pub fn reads_eof(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

fn project_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Whether tests that need outside peers may be skipped (only when `WSKIT_SKIP_EXTERNAL=1` is set on purpose).
pub fn skip_external(what: &str) -> bool {
    if std::env::var("WSKIT_SKIP_EXTERNAL").as_deref() == Ok("1") {
        eprintln!("skipping {what}: WSKIT_SKIP_EXTERNAL=1");
        return true;
    }
    false
}

/// The Python with `websockets` installed by `.ci/run` (`WSKIT_PYTHON`, else `.venv/bin/python`).
pub fn python() -> PathBuf {
    let p =
        std::env::var_os("WSKIT_PYTHON").map(PathBuf::from).unwrap_or_else(|| project_root().join(".venv/bin/python"));
    assert!(
        p.exists(),
        "{} not found: run `bash .ci/run` once (it creates .venv with websockets), or set WSKIT_PYTHON",
        p.display()
    );
    p
}

/// Headless Chromium (`WSKIT_CHROMIUM`, else /usr/bin/chromium).
pub fn chromium() -> PathBuf {
    let p = std::env::var_os("WSKIT_CHROMIUM").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        p.exists(),
        "{} not found: `apt-get install chromium` (done by .ci/run), or set WSKIT_CHROMIUM",
        p.display()
    );
    p
}

/// The Autobahn runner script (`WSKIT_AUTOBAHN`, else ../shared/autobahn/run.sh).
pub fn autobahn() -> PathBuf {
    let p = std::env::var_os("WSKIT_AUTOBAHN")
        .map(PathBuf::from)
        .unwrap_or_else(|| project_root().join("../shared/autobahn/run.sh"));
    assert!(p.exists(), "{} not found: the Autobahn runner lives in ../shared/autobahn", p.display());
    p
}

/// Runs a Python script (with `websockets`) with arguments; panics with its output if it fails.
pub fn run_python(script: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(python()).arg("-c").arg(script).args(args).output().expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "python failed:\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A size field of `/proc/PID/status` (`VmRSS`, `VmHWM`, …), in KiB.
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let prefix = format!("{field}:");
    let value = status.lines().find_map(|l| l.strip_prefix(prefix.as_str())).unwrap_or_else(|| panic!("no {field}"));
    value.trim().trim_end_matches("kB").trim().parse().unwrap()
}

/// Open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

/// A server in a child process (for measurements of its own memory): the test binary runs itself with
/// `child_echo_server` (see [`child_server_entry!`]), so the child has exactly the test's features.
pub struct ChildServer {
    pub child: std::process::Child,
    pub addr: SocketAddr,
}

impl ChildServer {
    pub fn start(max_payload: usize) -> ChildServer {
        Self::start_limited(max_payload, None)
    }

    /// With `open_files`, the child runs under that `ulimit -n`.
    pub fn start_limited(max_payload: usize, open_files: Option<u32>) -> ChildServer {
        Self::start_with(max_payload, open_files, "", None)
    }

    /// The full form: `pairs` are more config keys (`key=value;key=value`, read by [`Config::set`]); with
    /// `stats`, the child writes the number of sockets it holds to that file every 50 ms.
    pub fn start_with(
        max_payload: usize,
        open_files: Option<u32>,
        pairs: &str,
        stats: Option<&std::path::Path>,
    ) -> ChildServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let exe = std::env::current_exe().unwrap();
        let mut cmd = match open_files {
            None => std::process::Command::new(&exe),
            Some(n) => {
                let mut c = std::process::Command::new("sh");
                c.arg("-c").arg(format!("ulimit -n {n} && exec \"$0\" \"$@\"")).arg(&exe);
                c
            }
        };
        let child = cmd
            .args(["--exact", "child_echo_server", "--nocapture", "--test-threads", "1"])
            .env("WSKIT_CHILD_ECHO", format!("{addr} {max_payload}"))
            .env("WSKIT_CHILD_CONFIG", pairs)
            .env("WSKIT_CHILD_STATS", stats.map(|p| p.display().to_string()).unwrap_or_default())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        assert!(wait_until(Duration::from_secs(10), || TcpStream::connect(addr).is_ok()), "child server did not start");
        ChildServer { child, addr }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The body of the `child_echo_server` test: serves forever when started by [`ChildServer`], returns at once
/// otherwise.
pub fn child_echo_server() {
    let Ok(spec) = std::env::var("WSKIT_CHILD_ECHO") else { return };
    let (addr, max) = spec.split_once(' ').unwrap();
    let max: usize = max.parse().unwrap();
    let config = Config::new().max_payload_size(max).max_message_size(max).max_frames_per_message(usize::MAX);
    let config = with_pairs(config, &std::env::var("WSKIT_CHILD_CONFIG").unwrap_or_default());
    let mut server = Server::bind(addr, config, Echo).unwrap();
    let stats = std::env::var("WSKIT_CHILD_STATS").unwrap_or_default();
    if stats.is_empty() {
        server.run().unwrap();
        return;
    }
    let tmp = format!("{stats}.tmp");
    let mut last = Instant::now();
    loop {
        server.poll_once(Some(Duration::from_millis(50))).unwrap();
        if last.elapsed() >= Duration::from_millis(50) {
            last = Instant::now();
            std::fs::write(&tmp, server.connection_count().to_string()).unwrap();
            std::fs::rename(&tmp, &stats).unwrap();
        }
    }
}

/// `config` with the keys of `pairs` (`key=value;key=value`) set through [`Config::set`].
pub fn with_pairs(mut config: Config, pairs: &str) -> Config {
    for pair in pairs.split(';').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap();
        config.set(k, v).unwrap();
    }
    config
}

/// The count a child started with a stats file last wrote.
pub fn child_connections(stats: &std::path::Path) -> Option<usize> {
    std::fs::read_to_string(stats).ok()?.trim().parse().ok()
}

/// Open file descriptors of another process.
pub fn fds_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// Declares the `child_echo_server` test that [`ChildServer`] runs.
#[macro_export]
macro_rules! child_server_entry {
    () => {
        #[test]
        fn child_echo_server() {
            common::child_echo_server();
        }
    };
}

/// A free loopback port (bound and released).
/// Starts an example server on `--addr 127.0.0.1:0` and reads the address it prints (`... ://ADDR ...`): the
/// kernel picks the port as the server binds it. A port picked beforehand ([`free_port`]) can be taken before the
/// server binds it — by another test's server, or as a client socket's ephemeral port — and the test then talks
/// to the wrong process. The rest of the server's output is drained.
pub fn spawn_listening(cmd: &mut std::process::Command) -> (std::process::Child, SocketAddr) {
    use std::io::BufRead;
    let mut child = cmd.arg("--addr").arg("127.0.0.1:0").stdout(std::process::Stdio::piped()).spawn().unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().expect("piped"));
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(out.read_line(&mut line).unwrap_or(0) > 0, "the server exited before it listened");
        let token = line.split("://").nth(1).and_then(|r| r.split(|c: char| c == '/' || c.is_whitespace()).next());
        if let Some(addr) = token.and_then(|t| t.parse().ok()) {
            break addr;
        }
    };
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    (child, addr)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// An example built by `cargo test` (examples are built next to the test binaries), checked to be newer than
/// its source.
pub fn example_binary(name: &str, sources: &[&str]) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent().unwrap().parent().unwrap().join("examples").join(name);
    assert!(p.exists(), "{} not built: run the whole `cargo test`, which builds the examples", p.display());
    let built = std::fs::metadata(&p).and_then(|m| m.modified()).unwrap();
    for src in sources {
        let changed = std::fs::metadata(project_root().join(src)).and_then(|m| m.modified()).unwrap();
        assert!(built >= changed, "{} is older than {src}: run the whole `cargo test`", p.display());
    }
    p
}

/// A child process killed when dropped.
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A real `redis-server` (Debian's) on a free loopback port, without persistence; killed when dropped.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// The Redis `.ci/run` started (`WSKIT_REDIS_PORT`), else one of our own.
    pub fn shared() -> RedisServer {
        match std::env::var("WSKIT_REDIS_PORT").ok().and_then(|p| p.parse().ok()) {
            Some(port) => {
                assert_eq!(
                    redis_call(port, &["PING"]).as_deref(),
                    Some("+PONG"),
                    "no Redis on WSKIT_REDIS_PORT={port}"
                );
                RedisServer { port, child: None }
            }
            None => Self::start(),
        }
    }
    /// A Redis of our own (to kill and restart).
    pub fn start() -> RedisServer {
        let mut r = RedisServer { port: free_port(), child: None };
        r.restart();
        r
    }
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
    /// Kills it (as a crash would).
    pub fn kill(&mut self) {
        self.child = None;
    }
    /// Starts it again on the same port and waits until it answers.
    pub fn restart(&mut self) {
        let bin = std::env::var("WSKIT_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let child = std::process::Command::new(&bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {bin} (`.ci/run` installs Debian's redis-server): {e}"));
        self.child = Some(Child(child));
        let port = self.port;
        assert!(wait_until(Duration::from_secs(10), || redis_call(port, &["PING"]).is_some_and(|r| r == "+PONG")));
    }
}

/// Sends one command to Redis on `port` and returns the reply as text (what one read brings: enough for the
/// short answers the tests ask for).
fn redis_reply(port: u16, args: &[&str]) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut cmd = format!("*{}\r\n", args.len());
    for a in args {
        cmd.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(cmd.as_bytes()).ok()?;
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// The first line of Redis's reply to one command (enough for PING and PUBLISH).
pub fn redis_call(port: u16, args: &[&str]) -> Option<String> {
    redis_reply(port, args)?.lines().next().map(str::to_string)
}

/// Subscribers Redis counts on `channel` (`PUBSUB NUMSUB`).
pub fn redis_numsub(port: u16, channel: &str) -> Option<u64> {
    redis_reply(port, &["PUBSUB", "NUMSUB", channel])?.lines().last()?.strip_prefix(':')?.parse().ok()
}

/// The DER of the first certificate in a PEM file.
pub fn cert_der(path: &std::path::Path) -> Vec<u8> {
    let text = std::fs::read_to_string(path).unwrap();
    let body: String = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::Engine::decode(&base64::engine::general_purpose::STANDARD, body).unwrap()
}

/// A rustls client (ring) trusting these certificates, offering `http/1.1`.
pub fn client_config(trusted: &[&std::path::Path]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for p in trusted {
        roots.add(rustls::pki_types::CertificateDer::from(cert_der(p))).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}
