//! The virtual client both simulators share: a seeded script of what it sends (the upgrade request, messages cut
//! into frames with pings between them, compressed when permessage-deflate was agreed, and an ending), and a
//! parser of what it receives (the HTTP answer, then frames: pings answered, the server's close echoed,
//! messages reassembled and inflated).

/// splitmix64: small, fast, and the same sequence on every machine.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    /// True `per_mille` times in a thousand.
    pub fn chance(&mut self, per_mille: usize) -> bool {
        self.below(1000) < per_mille
    }
}

/// Whether `WSKIT_SIM_TRACE` asks for every step.
pub fn tracing() -> bool {
    std::env::var_os("WSKIT_SIM_TRACE").is_some()
}

/// How a client's script ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Ending {
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

impl Ending {
    pub fn pick(rng: &mut Rng) -> Ending {
        match rng.below(10) {
            0..=3 => Ending::Clean,
            4 => Ending::Fault("reserved opcode", 1002),
            5 => Ending::Fault("invalid UTF-8", 1007),
            6 => Ending::Fault("frame over max_payload_size", 1009),
            7 => Ending::VanishMidMessage,
            8 if rng.chance(500) => Ending::Reset(rng.below(20_000)),
            _ => Ending::Vanish,
        }
    }
}

/// A message that makes the simulator's handler panic.
pub const PANIC: &[u8] = b"PANIC";
/// A message that makes the simulator's handler flood its sender with [`FLOODED`] messages.
pub const FLOOD: &[u8] = b"FLOOD";
/// What a flood is made of (its messages start with this).
pub const FLOODED: &[u8] = b"FLOODED";

/// The client's side of one connection.
pub struct Peer {
    /// The client's whole script, as bytes, and how much of it the network has carried.
    pub script: Vec<u8>,
    pub carried: usize,
    /// Messages the client sent whole, in order (text?, payload).
    pub sent: Vec<(bool, Vec<u8>)>,
    pub ending: Ending,
    /// Bytes from the server not yet parsed; the HTTP answer is parsed first.
    pub inbox: Vec<u8>,
    pub upgraded: bool,
    /// The HTTP status of an answer other than 101.
    pub refused: Option<u16>,
    /// What the client received: messages (reassembled), and the close code.
    pub echoed: Vec<(bool, Vec<u8>)>,
    partial: Option<(bool, Vec<u8>)>,
    partial_compressed: bool,
    pub close_code: Option<u16>,
    /// The client answers pings and closes (false once it has vanished).
    pub responsive: bool,
    /// The client sent its close frame.
    pub sent_close: bool,
    pub id: usize,
    deflate: Option<ClientDeflate>,
    max_payload: usize,
    /// Messages in the script, at most.
    pub max_messages: usize,
    /// Which message of the script asks the handler to panic (`PANIC`), or to flood the connection (`FLOOD`).
    pub panic_at: Option<usize>,
    pub flood_at: Option<usize>,
}

pub fn mask_frame(out: &mut Vec<u8>, fin: bool, op: u8, payload: &[u8], mask: [u8; 4]) {
    mask_frame_rsv(out, fin, 0, op, payload, mask);
}

pub fn mask_frame_rsv(out: &mut Vec<u8>, fin: bool, rsv: u8, op: u8, payload: &[u8], mask: [u8; 4]) {
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

pub fn payload(rng: &mut Rng, text: bool) -> Vec<u8> {
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

pub fn request(rng: &mut Rng, offer_deflate: bool) -> Vec<u8> {
    // 16 random bytes in base64: 21 free symbols, then one whose low bits are zero, then the padding.
    let key: String = (0..21).map(|_| (b'A' + rng.below(26) as u8) as char).collect::<String>() + "Q";
    format!(
        "GET /chat HTTP/1.1\r\nHost: sim\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}==\r\nSec-WebSocket-Version: 13\r\n{}\r\n",
        if offer_deflate { "Sec-WebSocket-Extensions: permessage-deflate\r\n" } else { "" }
    )
    .into_bytes()
}

impl Peer {
    /// A client with a random ending, offering permessage-deflate half the time.
    pub fn new(rng: &mut Rng, max_payload: usize) -> Peer {
        let offer_deflate = cfg!(feature = "deflate") && rng.chance(500);
        let ending = Ending::pick(rng);
        Peer::with(request(rng, offer_deflate), ending, max_payload)
    }

    /// A client that sends `script` first (a request head, say) and ends as `ending`.
    pub fn with(script: Vec<u8>, ending: Ending, max_payload: usize) -> Peer {
        Peer {
            script,
            carried: 0,
            sent: Vec::new(),
            ending,
            inbox: Vec::new(),
            upgraded: false,
            refused: None,
            echoed: Vec::new(),
            partial: None,
            partial_compressed: false,
            close_code: None,
            responsive: true,
            sent_close: false,
            id: 0,
            deflate: None,
            max_payload,
            max_messages: 8,
            panic_at: None,
            flood_at: None,
        }
    }

    /// After the 101: the messages (compressed as negotiated), then the ending.
    fn write_rest(&mut self, rng: &mut Rng) {
        let script = &mut self.script;
        for i in 0..rng.below(self.max_messages) {
            let text = rng.chance(500);
            let data = match i {
                _ if self.panic_at == Some(i) => PANIC.to_vec(),
                _ if self.flood_at == Some(i) => FLOOD.to_vec(),
                _ => payload(rng, text),
            };
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

    /// Whether the whole script went out (after the upgrade).
    pub fn script_done(&self) -> bool {
        self.upgraded && self.carried == self.script.len()
    }

    /// The next `n` bytes of the script are carried to the server.
    pub fn carry(&mut self, n: usize) -> &[u8] {
        let from = self.carried;
        self.carried += n;
        if self.upgraded && self.carried == self.script.len() && matches!(self.ending, Ending::Clean) {
            self.sent_close = true;
        }
        &self.script[from..self.carried]
    }

    /// Parses what the client received: the HTTP answer, then frames (pings answered while it is responsive).
    pub fn reads(&mut self, rng: &mut Rng) -> Result<(), String> {
        if !self.upgraded {
            if self.refused.is_some() {
                return Ok(()); // (the body of a refusal)
            }
            let Some(end) = self.inbox.windows(4).position(|w| w == b"\r\n\r\n") else { return Ok(()) };
            let head = String::from_utf8_lossy(&self.inbox[..end]).into_owned();
            if !head.starts_with("HTTP/1.1 101") {
                let status = head.get(9..12).and_then(|s| s.parse().ok()).ok_or(format!("no status: {head:?}"))?;
                self.refused = Some(status);
                return Ok(());
            }
            #[cfg(feature = "deflate")]
            {
                self.deflate = ClientDeflate::negotiated(&head);
            }
            if tracing() {
                eprintln!("client {} upgraded: {}", self.id, head.replace("\r\n", " | "));
            }
            self.inbox.drain(..end + 4);
            self.upgraded = true;
            self.write_rest(rng);
        }
        while self.frame(rng)? {}
        Ok(())
    }

    /// Parses one frame from the inbox, if a whole one is there.
    fn frame(&mut self, rng: &mut Rng) -> Result<bool, String> {
        use wskit::frame::{decode_header, OpCode, Status};
        let (h, n) = match decode_header(&self.inbox) {
            Ok(Status::Complete(x)) => x,
            Ok(Status::Partial) => return Ok(false),
            Err(e) => return Err(format!("the server sent an undecodable frame: {e}")),
        };
        if h.mask.is_some() {
            return Err("the server masked a frame".into());
        }
        let len = h.len as usize;
        if self.inbox.len() < n + len {
            return Ok(false);
        }
        if tracing() {
            eprintln!("client {} got {:?} fin {} rsv {} len {len}", self.id, h.opcode, h.fin, h.rsv);
        }
        let body: Vec<u8> = self.inbox[n..n + len].to_vec();
        self.inbox.drain(..n + len);
        if self.close_code.is_some() {
            return Err("a frame after the server's close".into());
        }
        match h.opcode {
            OpCode::Text | OpCode::Binary if self.partial.is_none() => {
                self.partial = Some((h.opcode == OpCode::Text, body));
                self.partial_compressed = h.rsv & 0b100 != 0;
            }
            OpCode::Continuation if self.partial.is_some() => self.partial.as_mut().unwrap().1.extend_from_slice(&body),
            OpCode::Ping => {
                if self.responsive && !self.sent_close {
                    let mut pong = Vec::new();
                    mask_frame(&mut pong, true, 0xA, &body, (rng.next() as u32).to_be_bytes());
                    self.script.extend_from_slice(&pong);
                }
                return Ok(true);
            }
            OpCode::Pong => return Ok(true),
            OpCode::Close => {
                let code = if body.len() >= 2 { u16::from_be_bytes([body[0], body[1]]) } else { 1005 };
                self.close_code = Some(code);
                if self.responsive && !self.sent_close {
                    // Echo the server's close, as a client does.
                    mask_frame(&mut self.script, true, 8, &body[..body.len().min(2)], [5, 5, 5, 5]);
                    self.sent_close = true;
                }
                return Ok(true);
            }
            op => return Err(format!("unexpected {op:?} (fin {}) mid-message {}", h.fin, self.partial.is_some())),
        }
        if h.fin {
            let (text, mut data) = self.partial.take().unwrap();
            if self.partial_compressed {
                data = self.deflate.as_mut().ok_or("RSV1 without permessage-deflate")?.inflate(&data)?;
            }
            if !data.starts_with(FLOODED) {
                self.echoed.push((text, data));
            }
        }
        Ok(true)
    }

    /// Whether the echoes are the messages sent, once each and in order (a prefix of them).
    pub fn echoes_are_a_prefix(&self) -> Result<(), String> {
        if self.echoed.len() > self.sent.len() || self.echoed[..] != self.sent[..self.echoed.len()] {
            let first = self.echoed.iter().zip(&self.sent).position(|(a, b)| a != b).unwrap_or(self.sent.len());
            return Err(format!(
                "echoes are not the messages sent, once each and in order: {} sent, {} echoed, first difference \
                 at {first}",
                self.sent.len(),
                self.echoed.len()
            ));
        }
        Ok(())
    }
}

/// The client's side of permessage-deflate (flate2, raw deflate): a compressor and an inflater, each reset per
/// message when its no_context_takeover was negotiated.
#[cfg(feature = "deflate")]
pub struct ClientDeflate {
    compress: flate2::Compress,
    decompress: flate2::Decompress,
    reset_compress: bool,
    reset_decompress: bool,
}

#[cfg(not(feature = "deflate"))]
pub struct ClientDeflate;

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

    pub fn compress(&mut self, data: &[u8]) -> Vec<u8> {
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

/// The seeds a test runs: `WSKIT_SIM_SEED=S` one, `WSKIT_SIM_SEEDS=N` the first N, else the first `default`.
pub fn seeds(default: u64) -> Vec<u64> {
    if let Some(s) = std::env::var("WSKIT_SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        return vec![s];
    }
    let n = std::env::var("WSKIT_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(default);
    (0..n).collect()
}
