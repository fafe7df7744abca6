//! permessage-deflate (RFC 7692): negotiation, and the per-message inflate and deflate.
//!
//! **Negotiation** (§5, §7.1): [`negotiate`] reads every offer in `Sec-WebSocket-Extensions`, accepts the first
//! acceptable `permessage-deflate` offer and declines the rest; [`Params::response`] is the answer, listing the
//! parameters actually in force. A malformed offer (unknown or duplicate parameter, bad value) is declined, and
//! the connection goes on without compression — never a 400, so a client with one odd offer still connects.
//!
//! **Inbound** (§6.2, §7.2.2): payload chunks are inflated as they arrive, with `00 00 FF FF` appended at the end
//! of the message, into the message buffer; the inflated size is checked after every chunk of at most
//! [`INFLATE_STEP`] bytes, so a small frame that would inflate to gigabytes is refused (1009) after one limit's
//! worth of output.
//!
//! **Outbound** (§6.1, §7.2.1): a whole message is compressed with a sync flush and the trailing `00 00 FF FF`
//! stripped; RSV1 marks the first frame. By default the server keeps its context between messages, in a
//! compressor per connection ([`crate::lz`]). When it does not (`server_no_context_takeover`), the compressor is
//! not per connection: one per window size and level is pooled per event loop ([`DeflatePool`]). A message to
//! many connections is compressed once, from a fresh context, by the pool (`prepared::PreparedMessage`).
//!
//! **zlib and 8-bit windows**: zlib (and zlib-rs) refuse an 8-bit window for raw deflate. When a client asks for
//! `server_max_window_bits=8`, wskit answers 8 and compresses with a 9-bit window: zlib never emits a match
//! further back than the window size minus 262 bytes (250 for 512), so every stream it writes decodes with a
//! 256-byte window.

#[cfg(feature = "deflate")]
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The extension token.
pub const EXTENSION: &str = "permessage-deflate";

/// What a message ends with once flushed (§7.2.1): removed on send, added back on receive.
pub const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The most output produced between two checks of the inflated size.
pub const INFLATE_STEP: usize = 64 * 1024;

/// The server's permessage-deflate policy (part of [`crate::Config`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeflateConfig {
    /// Negotiate permessage-deflate at all (default true).
    pub enabled: bool,
    /// Largest window the server compresses with, 9–15 (default 15). A smaller client request is honoured.
    pub server_max_window_bits: u8,
    /// Window the server asks clients to compress with when they offer `client_max_window_bits`, 8–15
    /// (default 12, which is what Python `websockets` uses). Sets the per-connection inflate memory.
    pub client_max_window_bits: u8,
    /// Do not keep the compression context between messages (default false: the server keeps its context
    /// unless the client asks it not to). True pools the compressor per loop instead of holding one per
    /// connection (no memory per connection, 0.17 wire bytes per payload byte on the bench's JSON where a kept
    /// context gives 0.02, and 0.91 against 0.34 on chat lines: `bench/src/bin/deflate_curve.rs`).
    pub server_no_context_takeover: bool,
    /// Ask clients not to keep their context (default false); lets the inflater be reset between messages.
    pub client_no_context_takeover: bool,
    /// Compression level 0–9 for messages shorter than `large_min` (default 1), where the loop's pooled zlib-rs
    /// compressor compresses: connections without server context takeover, messages prepared for many
    /// connections, and every message with `dedicated_window_bits` 0. At level 1 zlib-rs codes with
    /// fixed Huffman tables: no tables to build, so a short message costs a fifth of what level 2 costs (0.7 µs
    /// against 4.6 µs for 240-byte chat lines with context takeover), for 7 % more bytes (`bench/src/bin/deflate_curve.rs`).
    pub level: u32,
    /// Compression level 0–9 for messages of `large_min` bytes or more (default 3). Fixed codes cannot shrink
    /// text without repeats (16 KiB of random letters: 0.96–0.99 of its size at level 1, 0.61 at level 2 and
    /// above), and on a long message the tables' cost is spread thin. Level 3 is the knee of the curve on long
    /// text: 64 KiB pages of chat lines go to 0.29 of their size at 5.9 µs per KiB, against 0.41 at level 1 and
    /// 0.28 at level 6 (zlib's and Firefox's default) for 2.4 times the CPU.
    pub large_level: u32,
    /// Where `large_level` takes over from `level` (default 4 KiB).
    pub large_min: usize,
    /// Messages shorter than this go out uncompressed with RSV1 clear (default 64 bytes).
    pub min_size: usize,
    /// With server context takeover (`server_no_context_takeover` false), the window of each connection's own
    /// compressor: 8–15 for wskit's ([`crate::lz`], default 15: 120 KiB at 15 bits, 21 KiB at 12, 2.6 KiB at
    /// 9, held from the connection's first compressed message until a keepalive ping finds it unused since the
    /// last, or memory pressure; `level` and `large_level` do not apply to it), or 0 for zlib-rs (251–380 KB
    /// per connection, at the configured levels). The window announced is unchanged: a compressor may always
    /// refer back less far than it promised.
    pub dedicated_window_bits: u8,
    /// Most connections with a live inflate context in one loop; past it, new connections are served without
    /// compression (default 100,000).
    pub max_contexts: usize,
}

impl Default for DeflateConfig {
    fn default() -> Self {
        DeflateConfig {
            enabled: cfg!(feature = "deflate"),
            server_max_window_bits: 15,
            client_max_window_bits: 12,
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            level: 1,
            large_level: 3,
            large_min: 4096,
            min_size: 64,
            dedicated_window_bits: 15,
            max_contexts: 100_000,
        }
    }
}

/// The parameters in force on one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// The server resets its compressor after every message.
    pub server_no_context_takeover: bool,
    /// The client resets its compressor after every message (so our inflater may be reset too).
    pub client_no_context_takeover: bool,
    /// The window the server promised not to exceed (8–15).
    pub server_max_window_bits: u8,
    /// Whether `server_max_window_bits` goes in the answer (only when the client offered it).
    pub announce_server_bits: bool,
    /// The window the client was asked to use, when it offered `client_max_window_bits`.
    pub client_max_window_bits: Option<u8>,
    /// Compression level of messages shorter than `large_min`.
    pub level: u32,
    /// Compression level of messages of `large_min` bytes or more.
    pub large_level: u32,
    /// Where `large_level` takes over.
    pub large_min: usize,
    /// Smallest message compressed.
    pub min_size: usize,
    /// The window of wskit's small-window compressor under server context takeover, or 0 for zlib-rs'
    /// ([`DeflateConfig::dedicated_window_bits`]).
    pub dedicated_window_bits: u8,
}

impl Params {
    /// The `Sec-WebSocket-Extensions` answer.
    pub fn response(&self) -> String {
        let mut s = String::from(EXTENSION);
        if self.server_no_context_takeover {
            s.push_str("; server_no_context_takeover");
        }
        if self.client_no_context_takeover {
            s.push_str("; client_no_context_takeover");
        }
        if self.announce_server_bits {
            s.push_str(&format!("; server_max_window_bits={}", self.server_max_window_bits));
        }
        if let Some(b) = self.client_max_window_bits {
            s.push_str(&format!("; client_max_window_bits={b}"));
        }
        s
    }

    /// The window zlib compresses with (9 for a promised 8: see the module docs).
    pub fn compress_window(&self) -> u8 {
        self.server_max_window_bits.max(9)
    }

    /// The window our inflater needs.
    pub fn inflate_window(&self) -> u8 {
        self.client_max_window_bits.unwrap_or(15)
    }
}

/// One extension offer: its name and parameters (values unquoted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer<'a> {
    /// Extension name.
    pub name: &'a str,
    /// Parameters in order; `None` for a parameter without a value.
    pub params: Vec<(&'a str, Option<&'a str>)>,
}

/// Splits `s` at `sep`, ignoring separators inside double quotes.
fn split_quoted(s: &str, sep: u8) -> impl Iterator<Item = &str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, b) in s.bytes().enumerate() {
        match b {
            b'"' => quoted = !quoted,
            b if b == sep && !quoted => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts.into_iter()
}

/// Parses the values of every `Sec-WebSocket-Extensions` header into offers, in order. A syntactically broken
/// offer comes back with an empty name (and is declined).
pub fn parse_offers<'a>(values: impl Iterator<Item = &'a str>) -> Vec<Offer<'a>> {
    let mut offers = Vec::new();
    for value in values {
        for ext in split_quoted(value, b',') {
            if ext.trim().is_empty() {
                continue;
            }
            let mut parts = split_quoted(ext, b';');
            let name = parts.next().unwrap_or("").trim();
            let mut params = Vec::new();
            let mut broken = false;
            for p in parts {
                let (k, v) = match p.split_once('=') {
                    Some((k, v)) => (k.trim(), Some(v.trim())),
                    None => (p.trim(), None),
                };
                let v = match v {
                    Some(v) if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') => Some(&v[1..v.len() - 1]),
                    Some(v) if v.contains('"') || v.is_empty() => {
                        broken = true;
                        Some(v)
                    }
                    v => v,
                };
                if k.is_empty() {
                    broken = true;
                }
                params.push((k, v));
            }
            offers.push(Offer { name: if broken { "" } else { name }, params });
        }
    }
    offers
}

fn window_bits(v: &str) -> Option<u8> {
    // 1*DIGIT without a leading zero, 8..=15 (RFC 7692 §7.1.2).
    if v.starts_with('0') || v.len() > 2 {
        return None;
    }
    v.parse().ok().filter(|b| (8..=15).contains(b))
}

/// What one acceptable offer asked for.
#[derive(Default)]
struct Asked {
    server_nct: bool,
    client_nct: bool,
    server_bits: Option<u8>,
    client_bits: Option<Option<u8>>,
}

fn read_offer(offer: &Offer<'_>) -> Option<Asked> {
    if !offer.name.eq_ignore_ascii_case(EXTENSION) {
        return None;
    }
    let mut a = Asked::default();
    let mut seen = [false; 4];
    for &(k, v) in &offer.params {
        let idx = match k.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" if v.is_none() => {
                a.server_nct = true;
                0
            }
            "client_no_context_takeover" if v.is_none() => {
                a.client_nct = true;
                1
            }
            "server_max_window_bits" => {
                a.server_bits = Some(window_bits(v?)?);
                2
            }
            "client_max_window_bits" => {
                a.client_bits = Some(match v {
                    None => None,
                    Some(v) => Some(window_bits(v)?),
                });
                3
            }
            _ => return None, // unknown parameter, or a flag with a value
        };
        if std::mem::replace(&mut seen[idx], true) {
            return None; // duplicate parameter (§7.1)
        }
    }
    Some(a)
}

/// Picks the first acceptable offer and the parameters in force, or `None` to go on without compression.
pub fn negotiate(offers: &[Offer<'_>], cfg: &DeflateConfig) -> Option<Params> {
    if !cfg.enabled || !cfg!(feature = "deflate") {
        return None;
    }
    let a = offers.iter().find_map(read_offer)?;
    let server_bits = cfg.server_max_window_bits.clamp(9, 15).min(a.server_bits.unwrap_or(15));
    Some(Params {
        server_no_context_takeover: a.server_nct || cfg.server_no_context_takeover,
        client_no_context_takeover: a.client_nct || cfg.client_no_context_takeover,
        server_max_window_bits: server_bits,
        announce_server_bits: a.server_bits.is_some(),
        client_max_window_bits: a.client_bits.map(|v| v.unwrap_or(15).min(cfg.client_max_window_bits.clamp(8, 15))),
        level: cfg.level.min(9),
        large_level: cfg.large_level.min(9),
        large_min: cfg.large_min,
        min_size: cfg.min_size,
        dedicated_window_bits: if cfg.dedicated_window_bits == 0 {
            0
        } else {
            cfg.dedicated_window_bits.min(server_bits)
        },
    })
}

impl Params {
    /// The compression level for a message of `len` bytes.
    #[inline]
    pub fn level_for(&self, len: usize) -> u32 {
        if len >= self.large_min {
            self.large_level
        } else {
            self.level
        }
    }
}

/// Heap bytes of one inflate context once used, whatever its window (zlib-rs allocates the largest window):
/// 47,552 measured by `cargo run -p wskit-bench --release --bin deflate_mem`, rounded up.
pub const INFLATER_BYTES: usize = 48 * 1024;

/// Heap bytes of one compressor with this window once used, at any level: `4 << bits` of window and hash chains
/// plus 243 KiB of hash table and state (zlib-rs; `deflate_mem` measures 251,008 at 9 bits and 380,032 at 15).
pub fn compressor_bytes(window_bits: u8) -> usize {
    (4 << window_bits.clamp(9, 15)) + 244 * 1024
}

pub use codec::*;

#[cfg(feature = "deflate")]
mod codec {
    use super::*;

    /// Inflating failed: the data is not deflate (→ 1007), or it inflates past the limit (→ 1009).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum InflateError {
        /// Not a valid deflate stream.
        Corrupt,
        /// The inflated message exceeds the limit.
        TooBig,
    }

    /// One direction's decompressor, created on the first compressed message.
    pub struct Inflater {
        d: Decompress,
        ended: bool,
    }

    impl std::fmt::Debug for Inflater {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Inflater")
        }
    }

    impl Inflater {
        /// A raw-deflate decompressor with this window.
        pub fn new(window_bits: u8) -> Self {
            // zlib cannot be set to 8 bits here either; a 9-bit window decodes every stream an 8-bit one does.
            Inflater { d: Decompress::new_with_window_bits(false, window_bits.clamp(9, 15)), ended: false }
        }

        /// Inflates `input`, appending to `out`; fails once `out` would pass `limit` bytes. At most
        /// [`INFLATE_STEP`] bytes are produced between two checks, so memory stays within `limit + INFLATE_STEP`.
        pub fn inflate(&mut self, mut input: &[u8], out: &mut Vec<u8>, limit: usize) -> Result<(), InflateError> {
            self.run(&mut input, out, limit, FlushDecompress::None)
        }

        /// Ends a message: inflates the `00 00 FF FF` tail the sender stripped.
        pub fn finish(&mut self, out: &mut Vec<u8>, limit: usize) -> Result<(), InflateError> {
            if self.ended {
                return Ok(()); // the sender closed the stream with a final block: nothing follows it
            }
            self.run(&mut &TAIL[..], out, limit, FlushDecompress::Sync)
        }

        /// Forgets the context (between messages, under `client_no_context_takeover`).
        pub fn reset(&mut self) {
            self.d.reset(false);
            self.ended = false;
        }

        /// Whether the stream was ended by a final block (it must be reset before the next message).
        pub fn ended(&self) -> bool {
            self.ended
        }

        fn run(
            &mut self,
            input: &mut &[u8],
            out: &mut Vec<u8>,
            limit: usize,
            flush: FlushDecompress,
        ) -> Result<(), InflateError> {
            loop {
                if self.ended {
                    return if input.is_empty() { Ok(()) } else { Err(InflateError::Corrupt) };
                }
                // Room for at most one step past what is there, never far past the limit.
                if out.capacity() == out.len() {
                    let want = out.len() + INFLATE_STEP.min(limit.saturating_sub(out.len()) + 1);
                    let target = (out.capacity() * 2).clamp(want, limit.saturating_add(INFLATE_STEP).max(want));
                    out.reserve_exact(target - out.len());
                }
                let (in0, out0) = (self.d.total_in(), self.d.total_out());
                let status = self.d.decompress_vec(input, out, flush).map_err(|_| InflateError::Corrupt)?;
                let used = (self.d.total_in() - in0) as usize;
                let made = (self.d.total_out() - out0) as usize;
                *input = &input[used..];
                if out.len() > limit {
                    return Err(InflateError::TooBig);
                }
                if status == Status::StreamEnd {
                    self.ended = true;
                    continue;
                }
                if input.is_empty() && out.len() < out.capacity() {
                    return Ok(()); // all input taken and the output was not full: nothing is held back
                }
                if used == 0 && made == 0 && out.len() < out.capacity() {
                    return if input.is_empty() { Ok(()) } else { Err(InflateError::Corrupt) };
                }
            }
        }
    }

    /// A compressor for whole messages.
    pub struct Compressor {
        c: Compress,
        level: u32,
    }

    impl std::fmt::Debug for Compressor {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Compressor")
        }
    }

    impl Compressor {
        /// A raw-deflate compressor (a window of 8 is raised to 9: see the module docs).
        pub fn new(level: u32, window_bits: u8) -> Self {
            let level = level.min(9);
            Compressor {
                c: Compress::new_with_window_bits(Compression::new(level), false, window_bits.clamp(9, 15)),
                level,
            }
        }

        /// Compresses the next message at `level` (0–9): as [`Compressor::compress`], but a change of level
        /// first resets the context. zlib-rs refuses to change its compression function (level 1 has its own)
        /// once a stream has begun, and a reset is always allowed: context takeover lets the server refer back,
        /// it does not oblige it to, and the peer's inflater reads fresh blocks as it reads any others.
        pub fn compress_at(&mut self, level: u32, input: &[u8], out: &mut Vec<u8>) {
            let level = level.min(9);
            if level != self.level {
                self.c.reset();
                if self.c.set_level(Compression::new(level)).is_ok() {
                    self.level = level;
                }
            }
            self.compress(input, out);
        }

        /// Compresses one message with a sync flush and appends it to `out` without the `00 00 FF FF` tail.
        pub fn compress(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
            let start = out.len();
            loop {
                out.reserve(input.len() / 2 + 64);
                let in0 = self.c.total_in();
                // Compressing into a Vec with spare room cannot fail for a valid stream.
                let _ = self.c.compress_vec(input, out, FlushCompress::Sync);
                input = &input[(self.c.total_in() - in0) as usize..];
                if input.is_empty() && out.len() < out.capacity() {
                    break;
                }
            }
            if out.len() - start >= 4 && out.ends_with(&TAIL) {
                out.truncate(out.len() - 4);
            }
            if out.len() == start {
                // Nothing new to flush (an empty message right after a flush): zlib-rs writes nothing at all,
                // but the peer appends `00 00 FF FF` to whatever comes, and on its own that tail is no block.
                // One zero byte makes it an empty stored block (RFC 7692 §7.2.3.6), as stock zlib would send.
                out.push(0);
            }
        }

        /// Forgets the context.
        pub fn reset(&mut self) {
            self.c.reset();
        }
    }

    /// Compressors shared by every connection of one loop that negotiated `server_no_context_takeover`, one per
    /// (window, level); each is reset after every message.
    #[derive(Debug, Default)]
    pub struct DeflatePool {
        compressors: Vec<(u8, u32, Compressor)>,
        /// Where a message is compressed before it is framed (reused).
        pub(crate) scratch: Vec<u8>,
        /// The small-window compressor's working buffer: a block's tokens, and a long message joined with its
        /// history (reused; [`crate::lz`]).
        pub(crate) lz_scratch: Vec<u8>,
        /// Set by the endpoint under memory pressure: a connection that keeps its context but holds no
        /// compressor yet compresses here, from a fresh context, instead of being given one.
        pub(crate) hold_back: bool,
    }

    impl DeflatePool {
        /// An empty pool; compressors are made on first use.
        pub fn new() -> Self {
            Self::default()
        }

        /// Compresses one message with a fresh context and appends it to `out` (tail stripped).
        pub fn compress(&mut self, window: u8, level: u32, input: &[u8], out: &mut Vec<u8>) {
            let i = match self.compressors.iter().position(|(w, l, _)| *w == window && *l == level) {
                Some(i) => i,
                None => {
                    self.compressors.push((window, level, Compressor::new(level, window)));
                    self.compressors.len() - 1
                }
            };
            let c = &mut self.compressors[i].2;
            c.compress(input, out);
            c.reset();
        }
    }
}

/// Without the `deflate` feature nothing is ever negotiated, so the codec is never reached.
#[cfg(not(feature = "deflate"))]
mod codec {
    /// Inflating failed.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum InflateError {
        /// Not a valid deflate stream.
        Corrupt,
        /// The inflated message exceeds the limit.
        TooBig,
    }
    /// Stand-in; never built without the `deflate` feature.
    #[derive(Debug)]
    pub struct Inflater(());
    impl Inflater {
        /// Never called: negotiation is off.
        pub fn new(_window_bits: u8) -> Self {
            Inflater(())
        }
        /// Refuses everything.
        pub fn inflate(&mut self, _input: &[u8], _out: &mut Vec<u8>, _limit: usize) -> Result<(), InflateError> {
            Err(InflateError::Corrupt)
        }
        /// Refuses everything.
        pub fn finish(&mut self, _out: &mut Vec<u8>, _limit: usize) -> Result<(), InflateError> {
            Err(InflateError::Corrupt)
        }
        /// Nothing to reset.
        pub fn reset(&mut self) {}
        /// Never ended.
        pub fn ended(&self) -> bool {
            false
        }
    }
    /// Stand-in; never built without the `deflate` feature.
    #[derive(Debug)]
    pub struct Compressor(());
    impl Compressor {
        /// Never called: negotiation is off.
        pub fn new(_level: u32, _window_bits: u8) -> Self {
            Compressor(())
        }
        /// Never called: negotiation is off.
        pub fn compress(&mut self, input: &[u8], out: &mut Vec<u8>) {
            out.extend_from_slice(input);
        }
        /// Never called: negotiation is off.
        pub fn compress_at(&mut self, _level: u32, input: &[u8], out: &mut Vec<u8>) {
            out.extend_from_slice(input);
        }
        /// Nothing to reset.
        pub fn reset(&mut self) {}
    }
    /// Stand-in pool.
    #[derive(Debug, Default)]
    pub struct DeflatePool {
        pub(crate) scratch: Vec<u8>,
        pub(crate) lz_scratch: Vec<u8>,
        pub(crate) hold_back: bool,
    }
    impl DeflatePool {
        /// An empty pool.
        pub fn new() -> Self {
            Self::default()
        }
        /// Never called: negotiation is off.
        pub fn compress(&mut self, _window: u8, _level: u32, input: &[u8], out: &mut Vec<u8>) {
            out.extend_from_slice(input);
        }
    }
}

#[cfg(all(test, feature = "deflate"))]
mod tests {
    use super::*;

    fn offers(h: &str) -> Vec<Offer<'_>> {
        parse_offers(std::iter::once(h))
    }

    /// 16 KiB of random lowercase letters and spaces: no repeats for LZ77, ~4.7 bits a byte for Huffman codes.
    #[cfg(feature = "deflate")]
    fn letters(seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..16 * 1024)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b"abcdefghijklmnopqrstuvwxyz "[(x % 27) as usize]
            })
            .collect()
    }

    /// Long messages get the large level (dynamic Huffman codes: fixed ones cannot shrink random letters), short
    /// ones level 1; a connection keeping its context switches between them message by message, and the peer's
    /// one inflater reads the whole stream.
    #[cfg(feature = "deflate")]
    #[test]
    fn levels_follow_message_size_within_one_context() {
        let cfg = DeflateConfig::default();
        let p = negotiate(&offers("permessage-deflate"), &DeflateConfig { enabled: true, ..cfg }).unwrap();
        assert_eq!((p.level_for(4095), p.level_for(4096)), (1, 3));
        let chat = br#"{"type":"message","room":"lobby","user":"alice","text":"see you at the meeting tonight"}"#;
        let msgs = [chat.to_vec(), letters(1), chat.to_vec(), letters(2), letters(2), chat.to_vec()];
        let mut c = Compressor::new(p.level, 15);
        let mut d = Inflater::new(15);
        for (i, m) in msgs.iter().enumerate() {
            let mut z = Vec::new();
            c.compress_at(p.level_for(m.len()), m, &mut z);
            if m.len() == 16 * 1024 && i != 4 {
                assert!(z.len() < m.len() * 7 / 10, "message {i}: {} of {} bytes", z.len(), m.len());
            }
            let mut out = Vec::new();
            d.inflate(&z, &mut out, 1 << 20).unwrap();
            d.finish(&mut out, 1 << 20).unwrap();
            assert_eq!(&out, m, "message {i}");
        }
        // The control: level 1 alone leaves them as large as they were.
        let mut z = Vec::new();
        Compressor::new(1, 15).compress(&letters(1), &mut z);
        assert!(z.len() > 16 * 1024 * 9 / 10, "level 1 took 16 KiB of letters to {}", z.len());
    }

    #[test]
    fn negotiation_answers() {
        let cfg = DeflateConfig { enabled: true, ..DeflateConfig::default() };
        // The server keeps its context by default, in its own compressor with a 15-bit window.
        let p = negotiate(&offers("permessage-deflate; client_max_window_bits"), &cfg).unwrap();
        assert_eq!(p.response(), "permessage-deflate; client_max_window_bits=12");
        assert!(!p.server_no_context_takeover && p.dedicated_window_bits == 15);
        let p = negotiate(&offers("permessage-deflate"), &cfg).unwrap();
        assert_eq!(p.response(), "permessage-deflate");
        assert_eq!(p.inflate_window(), 15);
        let p = negotiate(&offers("permessage-deflate; server_max_window_bits=8; client_no_context_takeover"), &cfg)
            .unwrap();
        assert_eq!(p.response(), "permessage-deflate; client_no_context_takeover; server_max_window_bits=8");
        assert_eq!(p.compress_window(), 9);
        assert_eq!(p.dedicated_window_bits, 8, "its own compressor keeps a promise of 8 bits exactly");
        // The client's flag, or the server's configuration, makes it reset its context after every message.
        let p = negotiate(&offers("permessage-deflate; server_no_context_takeover"), &cfg).unwrap();
        assert_eq!(p.response(), "permessage-deflate; server_no_context_takeover");
        let resets = DeflateConfig { server_no_context_takeover: true, ..cfg.clone() };
        let p = negotiate(&offers("permessage-deflate"), &resets).unwrap();
        assert_eq!(p.response(), "permessage-deflate; server_no_context_takeover");
        // Quoted values and case.
        let p = negotiate(&offers("PerMessage-Deflate; server_max_window_bits=\"10\""), &cfg).unwrap();
        assert_eq!(p.server_max_window_bits, 10);
        // The first acceptable offer wins; bad ones are declined.
        let h = "permessage-deflate; server_max_window_bits=16, permessage-deflate; foo, x-webkit-deflate-frame, permessage-deflate; client_max_window_bits=9";
        let p = negotiate(&offers(h), &cfg).unwrap();
        assert_eq!(p.client_max_window_bits, Some(9));
        for bad in [
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=08",
            "permessage-deflate; client_max_window_bits=1x",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; =",
            "permessage-deflate; a=\"",
            "x-other",
            "",
        ] {
            assert_eq!(negotiate(&offers(bad), &cfg), None, "{bad}");
        }
        let off = DeflateConfig { enabled: false, ..cfg.clone() };
        assert_eq!(negotiate(&offers("permessage-deflate"), &off), None);
    }

    #[test]
    fn hostile_headers_are_cheap_and_safe() {
        let many: String = (0..10_000).map(|_| "permessage-deflate; foo").collect::<Vec<_>>().join(", ");
        let cfg = DeflateConfig { enabled: true, ..DeflateConfig::default() };
        assert_eq!(negotiate(&offers(&many), &cfg), None);
        let long = format!("permessage-deflate; client_max_window_bits={}", "9".repeat(8192));
        assert_eq!(negotiate(&offers(&long), &cfg), None);
        let quotes = "\"".repeat(8192);
        assert_eq!(negotiate(&offers(&quotes), &cfg), None);
    }

    #[test]
    fn round_trip_every_window_and_split() {
        let text = br#"{"type":"message","from":"alice","text":"hello hello hello, how are you? hello"}"#.repeat(20);
        for w in 9..=15u8 {
            let mut pool = DeflatePool::new();
            let mut z = Vec::new();
            pool.compress(w, 1, &text, &mut z);
            assert!(z.len() < text.len() / 3, "window {w}: {} of {}", z.len(), text.len());
            for split in [0, 1, z.len() / 2, z.len()] {
                let mut inf = Inflater::new(w);
                let mut out = Vec::new();
                inf.inflate(&z[..split], &mut out, 1 << 20).unwrap();
                inf.inflate(&z[split..], &mut out, 1 << 20).unwrap();
                inf.finish(&mut out, 1 << 20).unwrap();
                assert_eq!(out, text);
            }
        }
    }

    /// Found by the simulator (tests/sim.rs, seed 46): under context takeover an empty message compressed to
    /// nothing, and the peer's inflater, reading the `00 00 FF FF` it appends as the start of a block, lost the
    /// stream from the next message on.
    #[test]
    fn an_empty_message_keeps_the_stream_in_step() {
        let mut c = Compressor::new(1, 15);
        let mut inf = Inflater::new(15);
        for msg in [&b"hello hello"[..], b"", b"", b"world", b"", b"hello world"] {
            let mut z = Vec::new();
            c.compress(msg, &mut z);
            assert!(!z.is_empty(), "an empty compressed payload is not a deflate block");
            let mut out = Vec::new();
            inf.inflate(&z, &mut out, 1 << 20).unwrap();
            inf.finish(&mut out, 1 << 20).unwrap();
            assert_eq!(out, msg);
        }
    }

    #[test]
    fn window_nine_decodes_with_eight() {
        let data: Vec<u8> = (0..20_000u32).map(|i| ((i * 7919) % 251) as u8 ^ (i / 300) as u8).collect();
        let mut c = Compressor::new(9, 9);
        let mut z = Vec::new();
        c.compress(&data, &mut z);
        let mut inf = Inflater::new(8);
        let mut out = Vec::new();
        inf.inflate(&z, &mut out, 1 << 20).unwrap();
        inf.finish(&mut out, 1 << 20).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn bomb_is_refused_within_one_step_of_the_limit() {
        let zeros = vec![0u8; 64 << 20];
        let mut z = Vec::new();
        Compressor::new(9, 15).compress(&zeros, &mut z);
        assert!(z.len() < 100_000, "{}", z.len());
        let mut inf = Inflater::new(15);
        let mut out = Vec::new();
        assert_eq!(inf.inflate(&z, &mut out, 512 * 1024), Err(InflateError::TooBig));
        assert!(out.capacity() <= 512 * 1024 + 2 * INFLATE_STEP, "{}", out.capacity());
        let mut inf = Inflater::new(15);
        assert_eq!(inf.inflate(b"\xff\xff\xff\xff garbage", &mut Vec::new(), 1 << 20), Err(InflateError::Corrupt));
    }
}
