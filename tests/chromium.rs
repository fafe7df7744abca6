//! A real browser: headless Chromium opens the chat example's page twice, two users join, one sends a message,
//! and each page shows what it should. Driven over the DevTools protocol with `tungstenite`.

mod common;
use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Kills a child process when dropped.
struct Killed(Child, Option<PathBuf>);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        if let Some(dir) = &self.1 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn http(port: u16, method: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\r\n").ok()?;
    // DevTools keeps the connection open: read the head, then exactly Content-Length bytes.
    let head = read_head(&mut s);
    let len: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))?;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    Some(String::from_utf8_lossy(&body).into_owned())
}

/// The chat example as built by `cargo test` (examples are built next to the test binaries).
fn chat_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent().unwrap().parent().unwrap().join("examples/chat");
    assert!(p.exists(), "{} not built: run the whole `cargo test`, which builds the examples", p.display());
    let built = std::fs::metadata(&p).and_then(|m| m.modified()).unwrap();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for src in ["examples/chat/main.rs", "examples/chat/index.html"] {
        let changed = std::fs::metadata(root.join(src)).and_then(|m| m.modified()).unwrap();
        assert!(
            built >= changed,
            "{} is older than {src}: run the whole `cargo test` (it rebuilds examples)",
            p.display()
        );
    }
    p
}

struct Page {
    ws: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>,
    next: u64,
    id: String,
}

impl Page {
    fn open(debug_port: u16, url: &str) -> Page {
        let body = http(debug_port, "PUT", &format!("/json/new?{url}")).expect("new target");
        let target: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        let ws_url = target["webSocketDebuggerUrl"].as_str().expect("debugger url").to_string();
        let (ws, _) = tungstenite::connect(ws_url).expect("connect to the page");
        Page { ws, next: 1, id: target["id"].as_str().unwrap_or_default().to_string() }
    }

    fn try_call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        let id = self.next;
        self.next += 1;
        self.ws
            .send(tungstenite::Message::text(json!({"id": id, "method": method, "params": params}).to_string()))
            .unwrap();
        loop {
            let msg = self.ws.read().expect("devtools reply");
            let Ok(text) = msg.to_text() else { continue };
            let v: Value = serde_json::from_str(text).unwrap();
            if v["id"].as_u64() == Some(id) {
                return match v.get("error") {
                    Some(e) => Err(e.clone()),
                    None => Ok(v["result"].clone()),
                };
            }
        }
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        self.try_call(method, params).unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    /// Waits until the page has loaded (evaluation fails while a navigation replaces the context).
    fn wait_loaded(&mut self) {
        let start = Instant::now();
        loop {
            let r = self.try_call(
                "Runtime.evaluate",
                json!({"expression": "document.readyState === 'complete' && document.getElementById('name') !== null", "returnByValue": true}),
            );
            if matches!(&r, Ok(v) if v["result"]["value"] == json!(true)) {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(15), "page did not load: {r:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Evaluates an async JS expression and returns its value.
    fn eval(&mut self, js: &str) -> Value {
        let r = self.call("Runtime.evaluate", json!({"expression": js, "awaitPromise": true, "returnByValue": true}));
        assert!(r.get("exceptionDetails").is_none(), "{js}: {r}");
        r["result"]["value"].clone()
    }

    /// Polls `cond` (a JS boolean expression) from here for up to 10 s (a background tab's own timers are
    /// throttled); returns the page's log text.
    fn wait_for(&mut self, cond: &str) -> String {
        let start = Instant::now();
        while self.eval(&format!("!!({cond})")) != json!(true) {
            if start.elapsed() > Duration::from_secs(10) {
                let log = self.eval("document.getElementById('log') ? document.getElementById('log').innerText : ''");
                panic!("waited 10 s for {cond}; page log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.eval("document.getElementById('log').innerText").as_str().unwrap_or("").to_string()
    }

    fn join(&mut self, name: &str) {
        self.wait_loaded();
        self.eval(&format!(
            "document.getElementById('name').value = {}; document.getElementById('join').click(); 1",
            json!(name)
        ));
        // What a person sees: the name form is gone and the message form is shown.
        self.wait_for(
            "getComputedStyle(document.getElementById('join-form')).display === 'none' && \
             getComputedStyle(document.getElementById('send-form')).display !== 'none'",
        );
    }

    fn say(&mut self, text: &str) {
        self.eval(&format!(
            "document.getElementById('msg').value = {}; document.getElementById('send').click(); 1",
            json!(text)
        ));
    }
}

/// Starts headless Chromium with a DevTools port; killed (and its profile removed) when the guard drops.
fn start_chromium(browser: &std::path::Path) -> (Killed, u16) {
    let debug_port = free_port();
    let profile = std::env::temp_dir().join(format!("wskit-chromium-{}-{debug_port}", std::process::id()));
    let guard = Killed(
        Command::new(browser)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--disable-background-timer-throttling",
                "--disable-renderer-backgrounding",
                "--disable-backgrounding-occluded-windows",
                "--ignore-certificate-errors",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(format!("--remote-debugging-port={debug_port}"))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium"),
        Some(profile.clone()),
    );
    let start = Instant::now();
    while http(debug_port, "GET", "/json/version").is_none() {
        assert!(start.elapsed() < Duration::from_secs(20), "chromium did not open its debugging port");
        std::thread::sleep(Duration::from_millis(100));
    }

    (guard, debug_port)
}

#[test]
fn two_browser_pages_chat() {
    chat_session(false);
}

/// The same chat over wss: the page is served over https and connects with wss (a test certificate, trusted
/// with --ignore-certificate-errors).
#[test]
#[cfg(feature = "tls")]
fn two_browser_pages_chat_over_tls() {
    chat_session(true);
}

fn chat_session(tls: bool) {
    if skip_external("Chromium") {
        return;
    }
    let browser = chromium();
    let chat_port = free_port();
    let mut args = vec!["--addr".to_string(), format!("127.0.0.1:{chat_port}")];
    if tls {
        let dir = std::env::temp_dir().join(format!("wskit-chat-tls-{}-{chat_port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = Command::new("openssl")
            .current_dir(&dir)
            .args(["req", "-x509", "-newkey", "rsa:2048", "-days", "2", "-subj", "/CN=localhost"])
            .args([
                "-addext",
                "subjectAltName=IP:127.0.0.1",
                "-passout",
                "pass:chat",
                "-keyout",
                "key.pem",
                "-out",
                "cert.pem",
            ])
            .output()
            .expect("openssl");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let mut both = std::fs::read(dir.join("key.pem")).unwrap();
        both.extend(std::fs::read(dir.join("cert.pem")).unwrap());
        std::fs::write(dir.join("both.pem"), both).unwrap();
        args.extend(["--pem".into(), dir.join("both.pem").display().to_string(), "--passphrase".into(), "chat".into()]);
    }
    let _chat = Killed(
        Command::new(chat_binary()).args(&args).stdout(Stdio::null()).spawn().expect("start the chat example"),
        None,
    );
    assert!(wait_until(Duration::from_secs(10), || TcpStream::connect(("127.0.0.1", chat_port)).is_ok()));

    let (_chromium, debug_port) = start_chromium(&browser);

    let url = format!("{}://127.0.0.1:{chat_port}/", if tls { "https" } else { "http" });
    let mut alice = Page::open(debug_port, &url);
    let mut bob = Page::open(debug_port, &url);
    alice.join("alice");
    bob.join("bob");
    alice.wait_for("document.getElementById('log').innerText.includes('bob joined')");

    alice.say("hello bob, κόσμε <b>not bold</b>");
    let bob_log = bob.wait_for("document.getElementById('log').innerText.includes('alice: hello bob')");
    assert!(bob_log.contains("alice: hello bob, κόσμε <b>not bold</b>"), "{bob_log}");
    bob.say("hi alice");
    let alice_log = alice.wait_for("document.getElementById('log').innerText.includes('bob: hi alice')");
    assert!(alice_log.contains("alice: hello bob"), "the sender sees its own line: {alice_log}");

    // A screenshot of the page, kept for people to look at.
    if tls {
        assert_eq!(alice.eval("location.protocol"), json!("https:"));
    }
    let shot = alice.call("Page.captureScreenshot", json!({"format": "png"}));
    if let Some(b64) = shot["data"].as_str() {
        use base64::Engine;
        let png = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
        let _ = std::fs::write(
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(if tls { "chat-alice-tls.png" } else { "chat-alice.png" }),
            png,
        );
    }

    // Bob closes his tab; Alice sees him leave.
    http(debug_port, "GET", &format!("/json/close/{}", bob.id)).expect("close bob's tab");
    alice.wait_for("document.getElementById('log').innerText.includes('bob left')");

    // The example serves the server's metrics beside the chat (the page fetches them like a scraper would).
    let metrics = alice.eval("fetch('/metrics').then((r) => r.text())");
    let metrics = metrics.as_str().unwrap_or_default();
    for line in ["wskit_connections_opened_total 2", "wskit_connections_open 1", "wskit_messages_in_total 2"] {
        assert!(metrics.lines().any(|l| l == line), "missing `{line}` in /metrics:\n{metrics}");
    }
    if tls {
        // Over https the page came on HTTP/2, and both chat sockets ran over it (RFC 8441): the server counts
        // them, and the browser says which protocol carried the page.
        let proto = alice.eval("performance.getEntriesByType('navigation')[0].nextHopProtocol");
        assert_eq!(proto, json!("h2"));
        let line = "wskit_http2_websockets_total 2";
        assert!(metrics.lines().any(|l| l == line), "missing `{line}` in /metrics:\n{metrics}");
    }
}

#[test]
#[cfg(feature = "deflate")]
fn chromium_negotiates_deflate_with_the_echo_server() {
    if skip_external("Chromium") {
        return;
    }
    let server = TestServer::echo(wskit::Config::new());
    let (_chromium, debug_port) = start_chromium(&chromium());
    let mut page = Page::open(debug_port, "about:blank");
    let start = Instant::now();
    while page.try_call("Runtime.evaluate", json!({"expression": "1", "returnByValue": true})).is_err() {
        assert!(start.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(50));
    }
    let js = format!(
        r#"(async () => {{
            const ws = new WebSocket("ws://{addr}/");
            ws.binaryType = "arraybuffer";
            await new Promise((ok, fail) => {{ ws.onopen = ok; ws.onerror = () => fail("error"); }});
            const got = [];
            ws.onmessage = (e) => got.push(e.data);
            const text = "compress me, compress me, κόσμε! ".repeat(2000);
            const bin = new Uint8Array(100000).map((_, i) => (i * 7) % 13);
            ws.send(text);
            ws.send(bin);
            ws.send("tiny");
            for (let i = 0; i < 200 && got.length < 3; i++) await new Promise((r) => setTimeout(r, 25));
            const back = new Uint8Array(got[1]);
            const binOk = back.length === bin.length && back.every((v, i) => v === bin[i]);
            ws.close(1000);
            return {{ ext: ws.extensions, text: got[0] === text, bin: binOk, tiny: got[2] === "tiny" }};
        }})()"#,
        addr = server.addr
    );
    let r = page.eval(&js);
    assert!(r["ext"].as_str().unwrap_or("").starts_with("permessage-deflate"), "{r}");
    assert_eq!(
        (r["text"].clone(), r["bin"].clone(), r["tiny"].clone()),
        (json!(true), json!(true), json!(true)),
        "{r}"
    );
}
