//! WebSockets over HTTP/2 (RFC 8441) on real sockets: Python's `h2` client by prior knowledge (h2c) and over TLS
//! with ALPN `h2`, several sessions sharing one connection; HTTP/1.1 clients beside them on the same listener.

mod common;
use common::*;
use wskit::Config;

fn metric(server: &TestServer, name: &str) -> u64 {
    let text = server.handle.metrics().to_prometheus();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("wskit_{name} ")).map(|v| v.trim().parse().unwrap()))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

fn check_report(out: &str) -> serde_json::Value {
    let r: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(r["connect_protocol"], 1, "{r}");
    for s in ["1", "3", "5"] {
        assert_eq!(r["status"][s], 200, "{r}");
        assert_eq!(r["echoed"][s], 4, "every message echoed, in order: {r}");
        assert_eq!(r["closed"][s], 1000, "{r}");
    }
    assert!(r.get("wrong").is_none(), "{r}");
    assert_eq!(r["status"]["9"], 426, "a plain GET goes to on_http (none here: 426): {r}");
    assert!(r["body"].as_str().unwrap().contains("WebSocket"), "{r}");
    // Subprotocols and permessage-deflate are negotiated as over HTTP/1.1; no accept value on HTTP/2.
    let d = &r["deflate"];
    assert_eq!(d["protocol"], "chat", "the server's preference among those offered: {r}");
    assert!(d["extensions"].as_str().unwrap().starts_with("permessage-deflate"), "{r}");
    assert!(d["accept"].is_null(), "{r}");
    assert_eq!((d["rsv1"].as_bool(), d["echo_ok"].as_bool()), (Some(true), Some(true)), "{r}");
    assert!(d["wire"].as_u64().unwrap() < 1000, "5,600 bytes of text compressed: {r}");
    r
}

#[test]
fn python_h2_over_h2c_runs_five_websockets_on_one_connection() {
    if skip_external("python h2") {
        return;
    }
    let server = TestServer::echo(Config::new().http2(true).subprotocols(["chat", "superchat"], false));
    let addr = server.addr.to_string();
    let out = run_python(concat!(include_str!("py/ws_frames.py"), include_str!("py/h2_ws_client.py")), &[&addr, "h2c"]);
    check_report(&out);
    assert_eq!(metric(&server, "http2_connections_total"), 1);
    assert_eq!(metric(&server, "http2_websockets_total"), 5);
    assert_eq!(metric(&server, "http2_streams_total"), 6);
    assert!(
        wait_until(std::time::Duration::from_secs(5), || server.connections() == 0),
        "{} left",
        server.connections()
    );
}

/// The same over TLS, ALPN choosing `h2`; a tungstenite client over HTTP/1.1 on the same listener meanwhile.
#[test]
#[cfg(feature = "tls")]
fn python_h2_over_tls_with_alpn_and_http1_beside_it() {
    if skip_external("python h2") {
        return;
    }
    // The project's test key material (tests/data: a certificate for localhost and 127.0.0.1, and its key).
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let config = Config::new().http2(true).subprotocols(["chat", "superchat"], false);
    let server = TestServer::echo(config.tls_pem(data.join("localhost.pem"), None));
    let addr = server.addr.to_string();
    let ca = data.join("localhost-cert.pem").display().to_string();
    let h1 = python_h1_tls(&addr, &ca);
    let out =
        run_python(concat!(include_str!("py/ws_frames.py"), include_str!("py/h2_ws_client.py")), &[&addr, "tls", &ca]);
    check_report(&out);
    assert_eq!(h1.join().unwrap().trim(), "http/1.1 ok");
    assert_eq!(metric(&server, "http2_connections_total"), 1);
    assert_eq!(metric(&server, "http2_websockets_total"), 5);
    assert_eq!(metric(&server, "connections_opened_total"), 6, "five sessions on h2, one on HTTP/1.1");
}

/// Python `websockets` over wss with ALPN `http/1.1` only, on a thread.
#[cfg(feature = "tls")]
fn python_h1_tls(addr: &str, ca: &str) -> std::thread::JoinHandle<String> {
    let script = r#"
import asyncio, ssl, sys
import websockets
async def main():
    ctx = ssl.create_default_context(cafile=sys.argv[2])
    ctx.set_alpn_protocols(["http/1.1"])
    async with websockets.connect("wss://localhost:" + sys.argv[1].rsplit(":", 1)[1] + "/", ssl=ctx) as ws:
        for i in range(50):
            await ws.send("m%d" % i)
            assert await ws.recv() == "m%d" % i
    print("http/1.1 ok")
asyncio.run(main())
"#;
    let (addr, ca) = (addr.to_string(), ca.to_string());
    std::thread::spawn(move || run_python(script, &[&addr, &ca]))
}

/// What `Cases` saw, in order.
type Log = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// A handler for the edge cases (tests/py/h2_cases.py): `/refuse` is refused, `/defer` accepted from another
/// thread; `close`, `panic` and `pause` do what they say (reading resumes after 500 ms); the rest is echoed.
struct Cases(Log);

impl wskit::Handler for Cases {
    fn on_open(&mut self, ctx: &mut wskit::Ctx<'_>, req: &wskit::handshake::Request) {
        match req.path() {
            "/refuse" => ctx.reject(403, "not you"),
            "/defer" => {
                let d = ctx.defer_upgrade().expect("deferrable");
                std::thread::spawn(move || {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    d.accept(None);
                });
            }
            _ => {}
        }
    }
    fn on_message(&mut self, ctx: &mut wskit::Ctx<'_>, msg: wskit::Message<'_>) {
        match msg.as_bytes() {
            b"close" => ctx.close(wskit::CloseCode(4000), "bye"),
            b"panic" => panic!("a handler bug (on purpose)"),
            b"pause" => {
                ctx.send_text("pausing");
                ctx.pause_reading();
                ctx.set_timer(1, std::time::Duration::from_millis(500));
            }
            _ => {
                ctx.send(msg);
            }
        }
    }
    fn on_timer(&mut self, ctx: &mut wskit::Ctx<'_>, _timer: u64) {
        ctx.send_text("paused");
        let id = ctx.id();
        ctx.resume_reading(id);
    }
    fn on_close(&mut self, ctx: &mut wskit::Ctx<'_>, status: &wskit::CloseStatus) {
        self.0.lock().unwrap().push(format!("{} {status:?}", ctx.id()));
    }
}

fn cases(case: &str) -> (serde_json::Value, Vec<String>, TestServer) {
    let log = Log::default();
    let seen = log.clone();
    let server = TestServer::start(Config::new().http2(true), move || Cases(seen));
    let out = run_python(
        concat!(include_str!("py/ws_frames.py"), include_str!("py/h2_cases.py")),
        &[&server.addr.to_string(), case],
    );
    let r: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(
        wait_until(std::time::Duration::from_secs(5), || server.connections() == 0),
        "{} left",
        server.connections()
    );
    let log = log.lock().unwrap().clone();
    (r, log, server)
}

#[test]
fn sessions_on_one_connection_are_refused_deferred_closed_failed_and_paused_apart() {
    if skip_external("python h2") {
        return;
    }
    let (r, log, server) = cases("mixed");
    assert_eq!(r["status"]["1"], 403, "a refusal is a response on its stream: {r}");
    assert!(r["ended"].as_array().unwrap().contains(&serde_json::json!("1")), "{r}");
    assert_eq!(r["status"]["3"], 200, "{r}");
    assert_eq!(r["messages"]["3"][0], "deferred hello", "{r}");
    assert_eq!(r["closed"]["5"], 4000, "{r}");
    assert_eq!(r["closed"]["7"], 1011, "a panicking handler's session is closed with 1011: {r}");
    // The paused session: its window ran out while paused, and its message came back after the resume.
    assert_eq!(r["min_window"]["9"], 0, "no WINDOW_UPDATE while paused: {r}");
    let m9 = r["messages"]["9"].as_array().unwrap();
    assert_eq!(m9[0], "pausing", "{r}");
    assert_eq!(m9[1], "paused", "{r}");
    assert!(m9[2].as_str().unwrap().starts_with("300000 bytes"), "{r}");
    assert!(r["paused_at"].as_f64().unwrap() >= 0.5, "{r}");
    // Every session that opened was closed once, however it ended: the two the server closed with their close
    // handshake done, the others when the client went.
    assert_eq!(log.len(), 4, "{log:?}");
    assert!(log.iter().any(|l| l.contains("Clean { code: CloseCode(4000)")), "{log:?}");
    assert_eq!(log.iter().filter(|l| l.ends_with("Lost")).count(), 2, "{log:?}");
    assert_eq!(metric(&server, "http2_websockets_total"), 4);
    assert_eq!(metric(&server, "connections_open"), 0);
}

#[test]
fn a_connection_error_or_a_vanished_client_ends_every_session_on_it() {
    if skip_external("python h2") {
        return;
    }
    let (r, log, _server) = cases("garbage");
    assert_eq!(r["goaway"], 1, "PROTOCOL_ERROR: {r}");
    assert_eq!(log.len(), 2, "{log:?}");
    assert!(log.iter().all(|l| l.ends_with("Lost")), "{log:?}");
    let (r, log, _server) = cases("drop");
    assert_eq!(r["status"]["1"], 200, "{r}");
    assert_eq!(log.len(), 2, "{log:?}");
    assert!(log.iter().all(|l| l.ends_with("Lost")), "{log:?}");
}

/// Plain pages for `nghttp` and `h2load`.
struct Pages;

impl wskit::Handler for Pages {
    fn on_http(&mut self, _ctx: &mut wskit::Ctx<'_>, req: &wskit::handshake::Request) -> Option<wskit::Response> {
        Some(match req.path() {
            "/" => wskit::Response::new(200, "text/html", "<p>hello over h2</p>"),
            "/big" => wskit::Response::new(200, "application/octet-stream", vec![7u8; 200_000]),
            _ => wskit::Response::new(404, "text/plain", "not found\n"),
        })
    }
}

fn nghttp2_tool(name: &str) -> Option<std::path::PathBuf> {
    let p = std::path::PathBuf::from("/usr/bin").join(name);
    if p.exists() {
        return Some(p);
    }
    assert!(skip_external(name), "{name} not found: `apt-get install nghttp2-client` (done by .ci/run)");
    None
}

#[test]
fn nghttp_and_h2load_get_pages_over_h2c() {
    let (Some(nghttp), Some(h2load)) = (nghttp2_tool("nghttp"), nghttp2_tool("h2load")) else { return };
    let server = TestServer::start(Config::new().http2(true), || Pages);
    let base = format!("http://{}", server.addr);
    let out = std::process::Command::new(&nghttp)
        .args(["-ns", &format!("{base}/"), &format!("{base}/big"), &format!("{base}/nope")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    // Its summary: `id responseEnd requestStart process code size path` per request.
    let rows: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 7 && f[0].parse::<u32>().is_ok()).then(|| (f[4].to_string(), f[f.len() - 1].to_string()))
        })
        .collect();
    for (code, path) in [("200", "/"), ("200", "/big"), ("404", "/nope")] {
        assert!(rows.contains(&(code.to_string(), path.to_string())), "{code} {path} in\n{text}");
    }
    let out = std::process::Command::new(&h2load)
        .args(["-n", "2000", "-c", "4", "-m", "16", &format!("{base}/")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("2000 succeeded, 0 failed, 0 errored"), "{text}");
    assert!(text.contains("status codes: 2000 2xx"), "{text}");
    assert_eq!(metric(&server, "http2_connections_total"), 5);
    assert_eq!(metric(&server, "http2_streams_total"), 2003);
}

#[test]
fn the_end_of_a_paused_sessions_stream_waits_behind_what_came_before_it() {
    if skip_external("python h2") {
        return;
    }
    let (r, log, _server) = cases("fin");
    assert_eq!(r["messages"]["1"], serde_json::json!(["pausing", "paused", "a", "b"]), "{r}");
    assert_eq!(r["closed"]["1"], 1000, "{r}");
    assert!(r["ended"].as_array().unwrap().contains(&serde_json::json!("1")), "END_STREAM, not a reset: {r}");
    assert_eq!(log.len(), 1, "{log:?}");
    assert!(log[0].contains("Clean { code: CloseCode(1000)"), "the close reached the handler: {log:?}");
}

#[test]
fn a_stream_error_ends_its_session_and_only_it() {
    if skip_external("python h2") {
        return;
    }
    let (r, log, _server) = cases("zero_update");
    assert_eq!(r["reset"], serde_json::json!([1, 1]), "RST_STREAM PROTOCOL_ERROR on stream 1: {r}");
    assert_eq!(r["messages"]["3"], serde_json::json!(["still here"]), "{r}");
    assert_eq!(log.len(), 2, "{log:?}");
}

#[test]
fn an_http2_socket_without_a_session_gets_the_handshakes_time_then_goaway() {
    use std::io::{Read, Write};
    use wskit::h2::frame;
    let config = Config::new().http2(true).handshake_timeout(std::time::Duration::from_millis(300));
    let server = TestServer::echo(config);
    let mut s = std::net::TcpStream::connect(server.addr).unwrap();
    let mut hello = wskit::h2::conn::PREFACE.to_vec();
    frame::write_settings(&mut hello, &[]);
    frame::write_settings_ack(&mut hello);
    s.write_all(&hello).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    let t = std::time::Instant::now();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let waited = t.elapsed();
    assert!(
        waited >= std::time::Duration::from_millis(250) && waited < std::time::Duration::from_secs(3),
        "{waited:?}"
    );
    // SETTINGS, WINDOW_UPDATE, SETTINGS ACK, then GOAWAY (NO_ERROR), then the end.
    let mut at = 0;
    let mut kinds = Vec::new();
    while let Some(h) = frame::decode_header(&got[at..]) {
        kinds.push(h.kind);
        at += frame::HEADER_LEN + h.len as usize;
    }
    assert_eq!(kinds.last(), Some(&frame::kind::GOAWAY), "{kinds:?}");
    drop(s);
    assert!(wait_until(std::time::Duration::from_secs(3), || server.connections() == 0));
}

#[test]
fn a_graceful_shutdown_closes_each_session_then_says_goaway() {
    if skip_external("python h2") {
        return;
    }
    let (r, report, log) = shutdown_case("shutdown", std::time::Duration::from_secs(5));
    assert_eq!(r["goaway"], 0, "GOAWAY NO_ERROR: {r}");
    let ended = r["ended"].as_array().unwrap();
    assert!(ended.contains(&serde_json::json!("1")) && ended.contains(&serde_json::json!("3")), "{r}");
    assert_eq!((report.closed_cleanly, report.dropped_at_deadline), (2, 0), "{report:?}");
    assert_eq!(log.len(), 2);
}

#[test]
fn a_shutdown_whose_grace_runs_out_drops_the_sessions_then_their_socket() {
    if skip_external("python h2") {
        return;
    }
    let (_, report, log) = shutdown_case("silent_shutdown", std::time::Duration::from_millis(300));
    assert_eq!((report.closed_cleanly, report.dropped_at_deadline), (0, 2), "{report:?}");
    assert_eq!(log.len(), 2, "each session's on_close, once: {log:?}");
}

/// A server with two sessions on one HTTP/2 connection, shut down with `grace` once both are open; the client's
/// report, the shutdown's, and the handler's closes.
fn shutdown_case(case: &str, grace: std::time::Duration) -> (serde_json::Value, wskit::ShutdownReport, Vec<String>) {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    let log = Log::default();
    let seen = log.clone();
    let thread = std::thread::spawn(move || {
        let mut server = wskit::Server::bind("127.0.0.1:0", Config::new().http2(true), Cases(seen)).unwrap();
        tx.send((server.local_addr(), server.handle())).unwrap();
        server.run().unwrap()
    });
    let (addr, handle) = rx.recv().unwrap();
    let mut child = std::process::Command::new(python())
        .args(["-c", concat!(include_str!("py/ws_frames.py"), include_str!("py/h2_cases.py")), &addr.to_string(), case])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    handle.shutdown(grace);
    line.clear();
    out.read_line(&mut line).unwrap();
    assert!(child.wait().unwrap().success());
    let r: serde_json::Value = serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!((r["closed"]["1"].as_u64(), r["closed"]["3"].as_u64()), (Some(1001), Some(1001)), "{r}");
    let report = thread.join().unwrap().expect("a shutdown report");
    let log = log.lock().unwrap().clone();
    (r, report, log)
}
