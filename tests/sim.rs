//! A deterministic simulator of the sans-I/O core (issue 18), first stage: virtual clients on virtual time, each
//! driving one [`Connection`] with the bytes a socket would carry, under seeded faults — every read split, send
//! windows down to one byte, clock jumps past every timeout, clients that vanish mid-message or between
//! messages, clients that break the protocol, pings between fragments — and checks, at every step and at the
//! end, the invariants a user relies on:
//!
//! * every message is echoed exactly once, in order, unchanged (what a connection echoed is a prefix of what its
//!   client sent, and all of it when the client closed cleanly and no deadline intervened);
//! * every connection ends, with its defined close: the code the client received is the one its
//!   [`CloseStatus`] gives (1000 echoed, 1002/1007/1009 for a fault, 1008 for a message left unfinished, 1001
//!   idle, 1011 for an unanswered keepalive), and no connection is left open when its client is gone;
//! * the core's own invariants hold after every call, and what it holds stays within
//!   [`Config::memory_bound`].
//!
//! The handler and the shell are the simulator's (an echo server), until the endpoint's table, admission and
//! topics are a sans-I/O `Endpoint` the simulator can drive whole. CI runs `SEEDS` seeds; `WSKIT_SIM_SEEDS=N`
//! runs more, and a failing seed prints the one command that replays it (`WSKIT_SIM_SEED=S`; add
//! `WSKIT_SIM_TRACE=1` to see every step).
//! `a_planted_bug_is_found` shows the invariants fail when the echo server is wrong.

use std::sync::Arc;
use std::time::{Duration, Instant};
use wskit::deflate::DeflatePool;
use wskit::frame::{decode_header, OpCode, Status};
use wskit::{CloseStatus, Config, Connection, Event, Message};

/// Seeds CI runs (a few seconds in a debug build).
const SEEDS: u64 = 300;
/// Virtual clients per seed.
const CLIENTS: usize = 6;
/// Steps after which a seed that has not ended counts as stuck.
const MAX_STEPS: usize = 400_000;

/// splitmix64: small, fast, and the same sequence on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    /// True `per_mille` times in a thousand.
    fn chance(&mut self, per_mille: usize) -> bool {
        self.below(1000) < per_mille
    }
}

/// How a client's script ends.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Ending {
    /// A close frame (1000); the client waits for the echo.
    Clean,
    /// A frame that breaks the protocol, with the code the server must answer.
    Fault(&'static str, u16),
    /// The first fragment of a message, then silence: the message timeout closes with 1008.
    VanishMidMessage,
    /// Silence between messages: the idle timeout (1001) or the keepalive (1011) ends it, if configured; else the
    /// server closes it (1001, as at shutdown).
    Vanish,
    /// The connection is reset after this many bytes of the script (mid-frame, mid-handshake): the shell drops
    /// it at once, and its status is `Lost` unless its end was already known.
    Reset(usize),
}

/// The server side of one connection and the client that drives it.
struct Client {
    conn: Connection,
    /// The client's whole script, as bytes, and how much of it the network has carried.
    script: Vec<u8>,
    carried: usize,
    /// Messages the client sent whole, in order (text?, payload).
    sent: Vec<(bool, Vec<u8>)>,
    ending: Ending,
    /// Bytes from the server not yet parsed; the 101 answer is skipped first.
    inbox: Vec<u8>,
    upgraded: bool,
    /// What the client received: messages (reassembled), and the close code.
    echoed: Vec<(bool, Vec<u8>)>,
    partial: Option<(bool, Vec<u8>)>,
    close_code: Option<u16>,
    /// A timeout, or the simulated shutdown, closed it (the echoes may be a prefix).
    cut_short: bool,
    /// The client answers pings and closes (false once it has vanished).
    responsive: bool,
    /// The client sent its close frame.
    sent_close: bool,
    /// The server accepted the upgrade.
    accepted: bool,
    id: usize,
    deflate: Option<ClientDeflate>,
    partial_compressed: bool,
    /// The status just before a reset.
    reset: Option<CloseStatus>,
    max_payload: usize,
}

fn mask_frame(out: &mut Vec<u8>, fin: bool, op: u8, payload: &[u8], mask: [u8; 4]) {
    mask_frame_rsv(out, fin, 0, op, payload, mask);
}

fn mask_frame_rsv(out: &mut Vec<u8>, fin: bool, rsv: u8, op: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(u8::from(fin) << 7 | rsv << 4 | op);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
}

fn payload(rng: &mut Rng, text: bool) -> Vec<u8> {
    let len = match rng.below(10) {
        0 => 0,
        1..=5 => rng.below(126),
        6..=8 => 126 + rng.below(4000),
        _ => 65_536 + rng.below(40_000),
    };
    if !text {
        return (0..len).map(|_| rng.next() as u8).collect();
    }
    let mut s = String::new();
    while s.len() < len {
        s.push(match rng.below(20) {
            0 => 'é',
            1 => '€',
            2 => '😀',
            _ => (b'a' + rng.below(26) as u8) as char,
        });
    }
    s.into_bytes()
}

/// Writes a message as 1–4 frames (cut anywhere, inside a UTF-8 sequence too), with pings between them;
/// compressed (RSV1 on the first frame) when the client compresses and chooses to.
fn write_message(rng: &mut Rng, out: &mut Vec<u8>, text: bool, data: &[u8], z: Option<&mut ClientDeflate>) {
    // (An empty message goes uncompressed: a sync flush of nothing new writes nothing.)
    let compressed = z.filter(|_| !data.is_empty() && rng.chance(700)).map(|z| z.compress(data));
    let rsv1 = u8::from(compressed.is_some()) << 2;
    let data = compressed.as_deref().unwrap_or(data);
    let frames = 1 + rng.below(4);
    let mut cuts: Vec<usize> = (1..frames).map(|_| rng.below(data.len() + 1)).collect();
    cuts.sort_unstable();
    cuts.push(data.len());
    let mut from = 0;
    for (i, &to) in cuts.iter().enumerate() {
        let (op, rsv) = if i == 0 { (if text { 1 } else { 2 }, rsv1) } else { (0, 0) };
        let mask = (rng.next() as u32).to_be_bytes();
        mask_frame_rsv(out, i + 1 == cuts.len(), rsv, op, &data[from..to], mask);
        from = to;
        if rng.chance(150) {
            let p: Vec<u8> = (0..rng.below(126)).map(|_| rng.next() as u8).collect();
            mask_frame(out, true, 9, &p, [1, 2, 3, 4]);
        }
    }
}

fn request(rng: &mut Rng, offer_deflate: bool) -> Vec<u8> {
    // 16 random bytes in base64: 21 free symbols, then one whose low bits are zero, then the padding.
    let key: String = (0..21).map(|_| (b'A' + rng.below(26) as u8) as char).collect::<String>() + "Q";
    format!(
        "GET /chat HTTP/1.1\r\nHost: sim\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}==\r\nSec-WebSocket-Version: 13\r\n{}\r\n",
        if offer_deflate { "Sec-WebSocket-Extensions: permessage-deflate\r\n" } else { "" }
    )
    .into_bytes()
}

fn client(rng: &mut Rng, config: &Arc<Config>, now: Instant) -> Client {
    let offer_deflate = cfg!(feature = "deflate") && rng.chance(500);
    let ending = match rng.below(10) {
        0..=3 => Ending::Clean,
        4 => Ending::Fault("reserved opcode", 1002),
        5 => Ending::Fault("invalid UTF-8", 1007),
        6 => Ending::Fault("frame over max_payload_size", 1009),
        7 => Ending::VanishMidMessage,
        8 if rng.chance(500) => Ending::Reset(rng.below(20_000)),
        _ => Ending::Vanish,
    };
    Client {
        conn: Connection::new(config.clone(), now),
        script: request(rng, offer_deflate),
        carried: 0,
        sent: Vec::new(),
        ending,
        inbox: Vec::new(),
        upgraded: false,
        echoed: Vec::new(),
        partial: None,
        close_code: None,
        cut_short: false,
        responsive: true,
        sent_close: false,
        accepted: false,
        id: 0,
        deflate: None,
        partial_compressed: false,
        reset: None,
        max_payload: config.max_payload_size,
    }
}

impl Client {
    /// After the 101: the messages (compressed as negotiated), then the ending.
    fn write_rest(&mut self, rng: &mut Rng) {
        let script = &mut self.script;
        for _ in 0..rng.below(8) {
            let text = rng.chance(500);
            let data = payload(rng, text);
            write_message(rng, script, text, &data, self.deflate.as_mut());
            self.sent.push((text, data));
        }
        let mask = [9, 8, 7, 6];
        match self.ending {
            Ending::Clean => mask_frame(script, true, 8, &1000u16.to_be_bytes(), mask),
            Ending::Fault(_, 1002) => mask_frame(script, true, 3, b"x", mask),
            Ending::Fault(_, 1007) => mask_frame(script, true, 1, &[b'o', b'k', 0xc3, 0x28], mask),
            Ending::Fault(..) => {
                // A header announcing more than the limit, and nothing after it.
                let n = self.max_payload as u64 + 1;
                script.extend_from_slice(&[0x82, 0x80 | 127]);
                script.extend_from_slice(&n.to_be_bytes());
                script.extend_from_slice(&mask);
            }
            Ending::VanishMidMessage => mask_frame(script, false, 2, b"half a message", mask),
            Ending::Vanish | Ending::Reset(_) => {}
        }
    }
}

/// The client's side of permessage-deflate (flate2, raw deflate): a compressor and an inflater, each reset per
/// message when its no_context_takeover was negotiated.
#[cfg(feature = "deflate")]
struct ClientDeflate {
    compress: flate2::Compress,
    decompress: flate2::Decompress,
    reset_compress: bool,
    reset_decompress: bool,
}

#[cfg(not(feature = "deflate"))]
struct ClientDeflate;

#[cfg(not(feature = "deflate"))]
impl ClientDeflate {
    fn compress(&mut self, _: &[u8]) -> Vec<u8> {
        unreachable!("deflate is offered only with the feature")
    }
    fn inflate(&mut self, _: &[u8]) -> Result<Vec<u8>, String> {
        Err("a compressed frame without permessage-deflate".into())
    }
}

#[cfg(feature = "deflate")]
impl ClientDeflate {
    /// From the 101's `Sec-WebSocket-Extensions`, if permessage-deflate was agreed.
    fn negotiated(head: &str) -> Option<ClientDeflate> {
        let ext = head.lines().find(|l| l.to_ascii_lowercase().starts_with("sec-websocket-extensions:"))?;
        let ext = ext.to_ascii_lowercase();
        ext.contains("permessage-deflate").then(|| ClientDeflate {
            compress: flate2::Compress::new(flate2::Compression::new(6), false),
            decompress: flate2::Decompress::new(false),
            reset_compress: ext.contains("client_no_context_takeover"),
            reset_decompress: ext.contains("server_no_context_takeover"),
        })
    }

    fn compress(&mut self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() + 64);
        let mut done = 0;
        loop {
            out.reserve(data.len() + 1024);
            let before = self.compress.total_in();
            self.compress.compress_vec(&data[done..], &mut out, flate2::FlushCompress::Sync).unwrap();
            done += (self.compress.total_in() - before) as usize;
            if done == data.len() && out.len() < out.capacity() {
                break;
            }
        }
        assert!(out.ends_with(&[0, 0, 0xff, 0xff]), "a sync flush ends with its marker");
        out.truncate(out.len() - 4);
        if self.reset_compress {
            self.compress.reset();
        }
        out
    }

    fn inflate(&mut self, data: &[u8]) -> Result<Vec<u8>, String> {
        let input = [data, &[0, 0, 0xff, 0xff]].concat();
        let mut out = Vec::with_capacity(input.len() * 4 + 1024);
        let mut done = 0;
        loop {
            out.reserve(64 * 1024);
            let before = self.decompress.total_in();
            self.decompress
                .decompress_vec(&input[done..], &mut out, flate2::FlushDecompress::Sync)
                .map_err(|e| format!("the server's compressed message does not inflate: {e}"))?;
            done += (self.decompress.total_in() - before) as usize;
            if done == input.len() && out.len() < out.capacity() {
                break;
            }
        }
        if self.reset_decompress {
            self.decompress.reset(false);
        }
        Ok(out)
    }
}

/// The simulator's shell and handler: what a server does with each event. `echo` decides what is sent back
/// for a message (the real one echoes it; a planted bug may not).
type Echo = fn(&[u8]) -> usize;

fn echo_once(_: &[u8]) -> usize {
    1
}

/// Feeds `input` to the core, as the shell does, and acts on every event.
fn feed(c: &mut Client, input: &mut [u8], now: Instant, echo: Echo, pool: &mut DeflatePool) {
    let (mut off, len) = (0, input.len());
    loop {
        let (used, ev) = c.conn.read(&mut input[off..], now);
        off += used;
        let reply = match ev {
            None if used == 0 || off == len => break,
            None => continue,
            Some(Event::Upgrade(_)) => Some(None),
            Some(Event::Message(m)) => Some(Some((m.is_text(), m.as_bytes().to_vec()))),
            Some(_) => None,
        };
        match reply {
            Some(None) => {
                c.conn.accept(None, true, now).expect("accept");
                c.accepted = true;
            }
            Some(Some((text, data))) => {
                for _ in 0..echo(&data) {
                    let msg = if text {
                        Message::Text(std::str::from_utf8(&data).expect("the core validated it"))
                    } else {
                        Message::Binary(&data)
                    };
                    let _ = c.conn.send_with(msg, pool);
                }
            }
            None => {}
        }
        c.conn.debug_check_invariants();
        if off == input.len() {
            break;
        }
    }
}

/// Parses what the client received: the 101 answer, then frames (pings answered while it is responsive).
fn client_reads(c: &mut Client, rng: &mut Rng) -> Result<(), String> {
    if !c.upgraded {
        let Some(end) = c.inbox.windows(4).position(|w| w == b"\r\n\r\n") else { return Ok(()) };
        if !c.inbox.starts_with(b"HTTP/1.1 101") {
            return Err(format!("no 101: {:?}", String::from_utf8_lossy(&c.inbox[..end])));
        }
        #[cfg(feature = "deflate")]
        {
            c.deflate = ClientDeflate::negotiated(&String::from_utf8_lossy(&c.inbox[..end]));
        }
        if std::env::var_os("WSKIT_SIM_TRACE").is_some() {
            eprintln!("client {} upgraded: {}", c.id, String::from_utf8_lossy(&c.inbox[..end]).replace("\r\n", " | "));
        }
        c.inbox.drain(..end + 4);
        c.upgraded = true;
        c.write_rest(rng);
    }
    loop {
        let (h, n) = match decode_header(&c.inbox) {
            Ok(Status::Complete(x)) => x,
            Ok(Status::Partial) => return Ok(()),
            Err(e) => return Err(format!("the server sent an undecodable frame: {e}")),
        };
        if h.mask.is_some() {
            return Err("the server masked a frame".into());
        }
        let len = h.len as usize;
        if c.inbox.len() < n + len {
            return Ok(());
        }
        if std::env::var_os("WSKIT_SIM_TRACE").is_some() {
            eprintln!("client {} got {:?} fin {} rsv {} len {len}", c.id, h.opcode, h.fin, h.rsv);
        }
        let body: Vec<u8> = c.inbox[n..n + len].to_vec();
        c.inbox.drain(..n + len);
        if c.close_code.is_some() {
            return Err("a frame after the server's close".into());
        }
        match h.opcode {
            OpCode::Text | OpCode::Binary if c.partial.is_none() => {
                c.partial = Some((h.opcode == OpCode::Text, body));
                c.partial_compressed = h.rsv & 0b100 != 0;
            }
            OpCode::Continuation if c.partial.is_some() => c.partial.as_mut().unwrap().1.extend_from_slice(&body),
            OpCode::Ping => {
                if c.responsive && !c.sent_close {
                    let mut pong = Vec::new();
                    mask_frame(&mut pong, true, 0xA, &body, (rng.next() as u32).to_be_bytes());
                    c.script.extend_from_slice(&pong);
                }
                continue;
            }
            OpCode::Pong => continue,
            OpCode::Close => {
                let code = if body.len() >= 2 { u16::from_be_bytes([body[0], body[1]]) } else { 1005 };
                c.close_code = Some(code);
                if c.responsive && !c.sent_close {
                    // Echo the server's close, as a client does.
                    mask_frame(&mut c.script, true, 8, &body[..body.len().min(2)], [5, 5, 5, 5]);
                    c.sent_close = true;
                }
                continue;
            }
            op => return Err(format!("unexpected {op:?} (fin {}) mid-message {}", h.fin, c.partial.is_some())),
        }
        if h.fin {
            let (text, mut data) = c.partial.take().unwrap();
            if c.partial_compressed {
                data = c.deflate.as_mut().ok_or("RSV1 without permessage-deflate")?.inflate(&data)?;
            }
            c.echoed.push((text, data));
        }
    }
}

/// One step of the network for one client: carry some of its script to the server, or some of the server's
/// queue to it (a send window of 1 byte up to 64 KiB).
fn step(c: &mut Client, rng: &mut Rng, now: Instant, echo: Echo, pool: &mut DeflatePool) -> Result<(), String> {
    let to_server = c.carried < c.script.len() && c.conn.wants_read();
    if to_server && (c.conn.out().is_empty() || rng.chance(500)) {
        let n = match rng.below(4) {
            0 => 1,
            1 => 1 + rng.below(16),
            _ => 1 + rng.below(64 * 1024),
        }
        .min(c.script.len() - c.carried);
        let mut input = c.script[c.carried..c.carried + n].to_vec();
        if std::env::var_os("WSKIT_SIM_TRACE").is_some() {
            eprintln!("client {} sends {n} ({} of {})", c.id, c.carried + n, c.script.len());
        }
        c.carried += n;
        if c.upgraded && c.carried == c.script.len() && matches!(c.ending, Ending::Clean) {
            c.sent_close = true;
        }
        feed(c, &mut input, now, echo, pool);
    } else if !c.conn.out().is_empty() {
        let window = if rng.chance(300) { 1 + rng.below(7) } else { 1 + rng.below(64 * 1024) };
        let out = c.conn.out();
        let n = window.min(out.len());
        if std::env::var_os("WSKIT_SIM_TRACE").is_some() {
            eprintln!("client {} takes {n} of {} (queued {})", c.id, out.len(), c.conn.queued());
        }
        c.inbox.extend_from_slice(&out[..n]);
        c.conn.consume_out(n);
        client_reads(c, rng)?;
    }
    Ok(())
}

fn config(rng: &mut Rng) -> Config {
    let mut cfg = Config { max_payload_size: 128 * 1024, ..Config::default() };
    match rng.below(3) {
        0 => cfg.idle_timeout = Some(Duration::from_secs(30)),
        1 => cfg.ping_interval = Some(Duration::from_secs(20)),
        _ => {}
    }
    // permessage-deflate as the server may be set: its contexts kept or reset, its window small or large.
    cfg.deflate.server_no_context_takeover = rng.chance(500);
    cfg.deflate.client_no_context_takeover = rng.chance(300);
    cfg.deflate.server_max_window_bits = 8 + rng.below(8) as u8;
    cfg.deflate.min_size = rng.below(64);
    cfg
}

/// Runs one seed; the error says which invariant broke.
fn run(seed: u64, echo: Echo) -> Result<(), String> {
    let mut rng = Rng(seed);
    let config = Arc::new(config(&mut rng));
    let bound = config.memory_bound(false).total();
    // The loop's compressors, shared by its connections (used under server_no_context_takeover).
    let mut pool = DeflatePool::new();
    let start = Instant::now();
    let mut now = start;
    let mut clients: Vec<Client> = (0..CLIENTS).map(|_| client(&mut rng, &config, now)).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.id = i;
    }
    for steps in 0.. {
        if clients.iter().all(|c| c.conn.is_finished()) {
            break;
        }
        if steps == MAX_STEPS {
            return Err("stuck: a connection never ended".into());
        }
        // Virtual time: usually a little, sometimes a jump past every timeout.
        now += if rng.chance(2) {
            Duration::from_secs(1 + rng.below(60) as u64)
        } else {
            Duration::from_micros(rng.below(2000) as u64)
        };
        let i = rng.below(clients.len());
        let c = &mut clients[i];
        if c.conn.is_finished() {
            continue;
        }
        let script_done = c.upgraded && c.carried == c.script.len();
        if script_done && matches!(c.ending, Ending::Vanish | Ending::VanishMidMessage) {
            c.responsive = false;
        }
        if let Ending::Reset(at) = c.ending {
            if c.carried >= at || (script_done && rng.chance(10)) {
                // The socket died: what the shell does on a reset or an error.
                c.reset = Some(c.conn.close_status());
                c.conn.abort(now);
                c.cut_short = true;
                continue;
            }
        }
        if c.conn.next_deadline().is_some_and(|d| now >= d) {
            // A deadline that ends an open connection (or its handshake) cuts it short; the close timeout after
            // our own close does not, unless it drops output the client has not read yet (the linger
            // deadline drops a connection whatever it still holds).
            c.cut_short |= c.conn.is_open() || !c.accepted || !c.conn.out().is_empty();
            if std::env::var_os("WSKIT_SIM_TRACE").is_some() {
                eprintln!("client {i}: deadline, open {}, queued {}", c.conn.is_open(), c.conn.queued());
            }
            c.conn.handle_timeout(now);
            c.conn.debug_check_invariants();
        } else if script_done && c.conn.out().is_empty() && c.conn.is_open() && rng.chance(1) {
            // Nothing will come: the simulated server shuts this connection down.
            c.cut_short = true;
            let _ = c.conn.close(wskit::CloseCode::GOING_AWAY, "shutdown", now);
        }
        step(c, &mut rng, now, echo, &mut pool).map_err(|e| format!("client {i}: {e}"))?;
        if c.conn.held() > bound {
            return Err(format!("client {i}: holds {} bytes, over the bound {bound}", c.conn.held()));
        }
    }
    for (i, c) in clients.iter().enumerate() {
        check_end(c).map_err(|e| format!("client {i} ({:?}): {e}", c.ending))?;
    }
    Ok(())
}

/// The invariants at the end of a connection.
fn check_end(c: &Client) -> Result<(), String> {
    if c.echoed.len() > c.sent.len() || c.echoed[..] != c.sent[..c.echoed.len()] {
        let first = c.echoed.iter().zip(&c.sent).position(|(a, b)| a != b).unwrap_or(c.sent.len());
        return Err(format!(
            "echoes are not the messages sent, once each and in order: {} sent, {} echoed, first difference at {first}",
            c.sent.len(),
            c.echoed.len()
        ));
    }
    let status = c.conn.close_status();
    // (A close of ours that was never answered is recorded as abnormal, whatever code it carried.)
    let unanswered = matches!(status, CloseStatus::TimedOut(wskit::TimeoutKind::Close));
    if let Some(code) = c.close_code.filter(|_| !unanswered) {
        if code != status.code().0 {
            return Err(format!("the client got close {code}, the status says {status:?}"));
        }
    }
    if let Some(before) = &c.reset {
        if !c.conn.is_finished() {
            return Err("a reset connection is not finished".into());
        }
        // Known before the reset, or lost with it.
        if status != *before {
            return Err(format!("reset: status {status:?}, before it {before:?}"));
        }
    }
    if c.cut_short {
        // A deadline or the shutdown ended it early: what was echoed is a prefix, and the close was the one its
        // status gives (checked above).
        return Ok(());
    }
    let complete = c.echoed.len() == c.sent.len();
    match (c.ending, &status) {
        (Ending::Clean, CloseStatus::Clean { code, by_peer: true, .. }) if code.0 == 1000 && complete => {}
        (Ending::Fault(_, want), CloseStatus::Error(e)) if e.close_code().0 == want && complete => {}
        (Ending::VanishMidMessage | Ending::Vanish, _) => {
            return Err(format!("a silent client's connection ended without a deadline: {status:?}"));
        }
        (ending, status) => {
            return Err(format!(
                "ended {status:?} for {ending:?} ({} of {} echoed, close {:?}; upgraded {}, {} bytes unparsed, {} of \
                 {} script bytes carried)",
                c.echoed.len(),
                c.sent.len(),
                c.close_code,
                c.upgraded,
                c.inbox.len(),
                c.carried,
                c.script.len()
            ))
        }
    }
    Ok(())
}

fn seeds() -> Vec<u64> {
    if let Some(s) = std::env::var("WSKIT_SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        return vec![s];
    }
    let n = std::env::var("WSKIT_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(SEEDS);
    (0..n).collect()
}

#[test]
fn every_seed_keeps_the_invariants() {
    let mut failed = Vec::new();
    for seed in seeds() {
        if let Err(e) = run(seed, echo_once) {
            failed.push(format!(
                "seed {seed}: {e}\n  replay: WSKIT_SIM_SEED={seed} cargo test --test sim -- --nocapture"
            ));
        }
    }
    assert!(failed.is_empty(), "{} seeds failed:\n{}", failed.len(), failed.join("\n"));
}

#[test]
fn a_planted_bug_is_found() {
    // An echo server that answers a message of exactly 7 bytes twice, and one that drops 3-byte messages.
    fn twice_at_seven(m: &[u8]) -> usize {
        if m.len() == 7 {
            2
        } else {
            1
        }
    }
    fn drops_three(m: &[u8]) -> usize {
        usize::from(m.len() != 3)
    }
    for bug in [twice_at_seven as Echo, drops_three] {
        let found = (0..SEEDS).find_map(|seed| run(seed, bug).err().map(|e| (seed, e)));
        let (seed, e) = found.expect("the planted bug went unnoticed");
        // Either the echoes are not a prefix of what was sent, or a clean ending left some unanswered.
        assert!(e.contains(" echoed"), "seed {seed} failed for another reason: {e}");
    }
}
