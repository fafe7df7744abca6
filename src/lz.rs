//! wskit's own deflate compressor, kept per connection across messages: what a connection that negotiated server
//! context takeover compresses with by default (`deflate_dedicated_window_bits`, 15 by default:
//! [`crate::deflate::DeflateConfig::dedicated_window_bits`]).
//!
//! zlib-rs holds ~250 KB per compressor whatever its window (a fixed 128 KiB hash table among the rest), so a
//! dedicated compressor there costs 251–380 KB per connection. This one holds the last `2^bits` bytes it sent
//! (the history later messages may refer to) with room for a quarter window more (short messages are coded in
//! place after it), a hash table of up to 8,192 16-bit positions and a link per window byte for its chains: 5.25
//! bytes per window byte up to 13 bits, 2.6 KiB at 9 bits, 21 KiB at 12, 120 KiB at 15 (uWebSockets'
//! `DEDICATED_COMPRESSOR_3KB` … `_256KB` spans the same range with zlib's `memLevel`). Nothing is held before the
//! first compressed message.
//!
//! The method (RFC 1951): every 4-byte sequence's position goes at the head of its hash slot's chain; the
//! chain is walked, newest first, through at most 36 candidates within the window (each checked first at the
//! 4 bytes where the best match so far ends), for the longest match of 4 to 258 bytes (32 is long enough to stop
//! at: the harness's 16 KiB JSON 96 → 62 µs at 64, the same size); a match shorter than 64 is checked against the
//! one at the next byte (one step of lazy evaluation, along a quarter of the chain). Text seen before often runs
//! on at one distance: a match of 258 bytes is followed by more at its distance, and a message's first bytes are
//! tried at the last match's distance (the harness's JSON workload, where a connection's texts come again 16 KiB
//! later: 0.090 → 0.017 wire bytes per payload byte at 15 bits, where the table's newest candidate is in the last
//! message). A message found to be three quarters literals after its first 4 KiB (text without repeats) is
//! searched on with one candidate and no lazy step, and a 4-byte match more than 4 KiB back is left as literals
//! there (its distance costs more than they do): 16 KiB of random letters 0.6095 of their size at 256 µs, where
//! the full search took 362 µs for 0.612.
//!
//! Against zlib-rs at level 6 with its context kept and a 15-bit window — what Firefox and sockudo-ws compress
//! with — over `deflate_curve --small`'s six workloads, at 15 bits (wire bytes per payload byte, then µs per
//! message): chat lines 0.3375 / 0.3441 at 5.6 / 8.4, ticks 0.3275 / 0.3305 at 1.4 / 5.1, random letters
//! 0.6095 / 0.6117 at 224 / 283, 64 KiB chat pages 0.2632 / 0.2636 at 1,165 / 1,211, the harness's JSON at 1 KiB
//! 0.0915 / 0.0959 at 6.2 / 10.7 and at 16 KiB 0.0666 / 0.0672 at 51 / 91: smaller on all six, at less CPU.
//! The search's inner loops are where that came from: the lazy step looks only for a match longer than the one
//! it has, the 4 bytes a candidate must match are read once per best match, and the positions inside a match go
//! in the table through one read of 4 bytes each (the pages 1,311 → 1,165 µs, the same sizes).
//!
//! The parse goes into a block of up to 16,384 literals and matches, held in the caller's scratch
//! buffer. A block is written with the fixed Huffman codes of §3.2.6 (nothing to build or send: what short
//! messages want) unless, once it comes to 384 bits or more that way, codes built from its own counts
//! (`src/huffman.rs`, §3.2.7) with their header come out smaller: 16 KiB of random letters 0.993 → 0.606 of
//! their size at 12 bits, 64 KiB chat pages 0.389 → 0.301 (zlib-rs kept, level 2 / 3: 0.303 / 0.284). The
//! configured levels do not apply. A message those codes would make larger (random or already compressed bytes)
//! goes out as stored blocks instead. A message ends with an empty stored block (a sync flush) whose
//! `00 00 FF FF` is stripped (RFC 7692 §7.2.1).
//!
//! History and message in one buffer, so that a match crosses from a message into the ones before it: a short
//! message is appended to the history, in the quarter window of room the history keeps after itself; a longer one
//! is joined with the history in a buffer the caller lends (the loop's, which holds the block's 64 KiB of tokens
//! too).

/// Smallest and largest match (RFC 1951 §3.2.5).
const MIN_MATCH: usize = 4;
const MAX_MATCH: usize = 258;
/// The hash table has `2^bits` slots up to this many bits (8,192: 16 KiB), past it the chains are longer. At a
/// 15-bit window a table of 2^15 slots gave the five workloads of `deflate_curve --small` 0.1–0.3 % smaller
/// output for 48 KiB more per connection, nearly all of it resident after one message (its slots are written
/// all over), where the chains' links fill in as the history does.
const HASH_BITS: u8 = 13;
/// Most candidates tried for one match along a hash chain.
const CHAIN: usize = 36;
/// A match this long ends the search along the chain.
const NICE: usize = 32;
/// A match shorter than this is checked against the one at the next byte (lazy evaluation).
const LAZY: usize = 64;
/// After this many bytes of a message, a message three quarters literals so far is searched with one candidate
/// per byte and no lazy step for the rest.
const SPARSE_CHECK: usize = 4096;
/// In such a message, a match of [`MIN_MATCH`] bytes further back than this is left as literals: its
/// distance's extra bits cost more than they save.
const TOO_FAR: usize = 4096;

/// Base length and extra bits of length codes 257–285.
const LEN_BASE: [u16; 29] =
    [3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258];
const LEN_EXTRA: [u8; 29] = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0];
/// Base distance and extra bits of distance codes 0–29.
const DIST_BASE: [u16; 30] = [
    1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145,
    8193, 12289, 16385, 24577,
];
const DIST_EXTRA: [u8; 30] =
    [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13];

/// The length code (0–28, i.e. symbol 257 + it) of every match length 0–258 (0–2 unused).
const LEN_CODE: [u8; 259] = {
    let mut t = [0u8; 259];
    let mut code = 0;
    let mut len = 3;
    while len <= 258 {
        while code < 28 && len >= LEN_BASE[code + 1] as usize {
            code += 1;
        }
        t[len] = code as u8;
        len += 1;
    }
    t
};

use crate::huffman::{reversed, Header};

/// The fixed literal/length code of `sym` (§3.2.6), bit-reversed for the stream, and its length.
const fn fixed_code(sym: u32) -> (u32, u32) {
    match sym {
        0..=143 => (reversed(0x30 + sym, 8), 8),
        144..=255 => (reversed(0x190 + sym - 144, 9), 9),
        256..=279 => (reversed(sym - 256, 7), 7),
        _ => (reversed(0xC0 + sym - 280, 8), 8),
    }
}

/// Every literal/length symbol's fixed code, ready to write: code in the low 16 bits, length above.
const FIXED: [u32; 288] = {
    let mut t = [0u32; 288];
    let mut s = 0;
    while s < 288 {
        let (code, len) = fixed_code(s as u32);
        t[s] = code | (len << 16);
        s += 1;
    }
    t
};

/// Every distance symbol's fixed code (five bits, §3.2.6), in the form of [`FIXED`].
const FIXED_DIST: [u32; 30] = {
    let mut t = [0u32; 30];
    let mut s = 0;
    while s < 30 {
        t[s] = reversed(s as u32, 5) | (5 << 16);
        s += 1;
    }
    t
};

/// The distance code of distances 1–256 at `d - 1`, and of longer ones at `256 + (d - 1) / 128` (every code from
/// 16 on starts one past a multiple of 128).
const DIST_CODE: [u8; 512] = {
    let mut t = [0u8; 512];
    let mut code = 0;
    let mut d = 1;
    while d <= 32768 {
        while code < 29 && d >= DIST_BASE[code + 1] as usize {
            code += 1;
        }
        if d <= 256 {
            t[d - 1] = code as u8;
        } else {
            t[256 + ((d - 1) >> 7)] = code as u8;
        }
        d += 1;
    }
    t
};

#[inline]
fn dist_code(d: usize) -> usize {
    if d <= 256 {
        DIST_CODE[d - 1] as usize
    } else {
        DIST_CODE[256 + ((d - 1) >> 7)] as usize
    }
}

/// Literals and matches a block holds before it is written; its codes are chosen from their counts.
const BLOCK_TOKENS: usize = 16384;
/// The bytes of the caller's scratch buffer that hold a block's tokens (four each), before history and message.
const TOKEN_AREA: usize = BLOCK_TOKENS * 4;
/// Blocks whose fixed codes come to fewer bits than this are not worth a dynamic header (tens of bytes) or the
/// work of building one.
const DYNAMIC_MIN_BITS: u64 = 384;

/// Bits into a byte vector, least significant first.
struct Bits<'a> {
    out: &'a mut Vec<u8>,
    acc: u64,
    n: u32,
}

impl Bits<'_> {
    #[inline]
    fn put(&mut self, v: u32, n: u32) {
        self.acc |= (v as u64) << self.n;
        self.n += n;
        if self.n >= 32 {
            self.out.extend_from_slice(&(self.acc as u32).to_le_bytes());
            self.acc >>= 32;
            self.n -= 32;
        }
    }

    /// A code in the form of [`FIXED`]'s entries.
    #[inline]
    fn code(&mut self, c: u32) {
        self.put(c & 0xffff, c >> 16);
    }

    /// Pads to a byte boundary and writes out what is held.
    fn finish(mut self) {
        while self.n > 0 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.n = self.n.saturating_sub(8);
        }
    }
}

/// Where the parse goes: a block's literals and matches with their counts, written out (with fixed or dynamic
/// codes, whichever is smaller) when the block is full or the message ends.
struct Sink<'a, 'b> {
    bits: Bits<'b>,
    /// [`BLOCK_TOKENS`] tokens of four bytes: a literal's byte, or a match's length above 16 bits and distance
    /// below.
    tokens: &'a mut [u8],
    n: usize,
    /// The block's size in fixed codes, extra bits left out (they are the same in any code).
    fixed: u64,
}

impl Sink<'_, '_> {
    #[inline]
    fn literal(&mut self, b: u8) {
        self.fixed += u64::from(FIXED[b as usize] >> 16);
        self.push(u32::from(b));
    }

    #[inline]
    fn matched(&mut self, len: usize, dist: usize) {
        self.fixed += u64::from(FIXED[257 + LEN_CODE[len] as usize] >> 16) + 5;
        self.push(((len as u32) << 16) | dist as u32);
    }

    #[inline]
    fn push(&mut self, t: u32) {
        self.tokens[self.n * 4..self.n * 4 + 4].copy_from_slice(&t.to_le_bytes());
        self.n += 1;
        if self.n == BLOCK_TOKENS {
            self.flush();
        }
    }

    #[inline]
    fn token(&self, k: usize) -> u32 {
        let t = &self.tokens[k * 4..k * 4 + 4];
        u32::from_le_bytes([t[0], t[1], t[2], t[3]])
    }

    /// Writes the block held, if any: dynamic codes where they come out smaller than the fixed ones with their
    /// header.
    fn flush(&mut self) {
        if self.n == 0 {
            return;
        }
        if self.fixed < DYNAMIC_MIN_BITS || !self.dynamic() {
            self.bits.put(0b010, 3); // BFINAL 0, BTYPE 01: fixed codes
            self.write_tokens(&FIXED, &FIXED_DIST);
        }
    }

    /// Writes the block with dynamic codes if they and their header come to fewer bits than the fixed ones.
    fn dynamic(&mut self) -> bool {
        let (mut lit, mut dist) = ([0u32; 286], [0u32; 30]);
        for k in 0..self.n {
            let t = self.token(k);
            if t < 256 {
                lit[t as usize] += 1;
            } else {
                lit[257 + LEN_CODE[(t >> 16) as usize] as usize] += 1;
                dist[dist_code((t & 0xffff) as usize)] += 1;
            }
        }
        lit[256] = 1; // end of block
        let (mut lit_lens, mut dist_lens) = ([0u8; 286], [0u8; 30]);
        crate::huffman::lengths(&lit, 15, &mut lit_lens);
        crate::huffman::lengths(&dist, 15, &mut dist_lens);
        let header = Header::new(&lit_lens, &dist_lens);
        let cost = |freq: &[u32], lens: &[u8]| -> u64 {
            freq.iter().zip(lens).map(|(&f, &l)| u64::from(f) * u64::from(l)).sum()
        };
        if header.bits() + cost(&lit, &lit_lens) + cost(&dist, &dist_lens) >= self.fixed + 7 {
            return false;
        }
        let (mut lit_table, mut dist_table) = ([0u32; 286], [0u32; 30]);
        crate::huffman::codes(&lit_lens, &mut lit_table);
        crate::huffman::codes(&dist_lens, &mut dist_table);
        self.bits.put(0b100, 3); // BFINAL 0, BTYPE 10: dynamic codes
        header.write(|v, n| self.bits.put(v, n));
        self.write_tokens(&lit_table, &dist_table);
        true
    }

    /// The block's tokens and its end, in these codes; then a fresh block. A match goes out in two writes: its
    /// length's code with its extra bits (from a table of the 256 lengths, in a block long enough to pay for
    /// making it: 64 KiB chat pages 1,225 → 1,205 µs), then its distance's.
    fn write_tokens(&mut self, lit: &[u32], dist: &[u32]) {
        // A length's code and extra bits: the bits below 24, their count above.
        let length = |len: usize| {
            let lc = LEN_CODE[len] as usize;
            let (c, extra) = (lit[257 + lc], (len - LEN_BASE[lc] as usize) as u32);
            (c & 0xffff) | extra << (c >> 16) | ((c >> 16) + u32::from(LEN_EXTRA[lc])) << 24
        };
        let mut table = [0u32; MAX_MATCH + 1];
        let tabled = self.n >= 1024;
        if tabled {
            for (len, slot) in table.iter_mut().enumerate().skip(MIN_MATCH) {
                *slot = length(len);
            }
        }
        for k in 0..self.n {
            let t = self.token(k);
            if t < 256 {
                self.bits.code(lit[t as usize]);
                continue;
            }
            let len = (t >> 16) as usize;
            let l = if tabled { table[len] } else { length(len) };
            self.bits.put(l & 0xff_ffff, l >> 24);
            let d = (t & 0xffff) as usize;
            let dc = dist_code(d);
            let c = dist[dc];
            let extra = (d - DIST_BASE[dc] as usize) as u32;
            self.bits.put((c & 0xffff) | extra << (c >> 16), (c >> 16) + u32::from(DIST_EXTRA[dc]));
        }
        self.bits.code(lit[256]);
        (self.n, self.fixed) = (0, 0);
    }
}

/// How many bytes `a` and `b` have in common from the start, up to [`MAX_MATCH`] (`a` is at least as long as
/// `b`: it starts earlier in the same buffer). Eight bytes are compared at a time.
#[inline]
fn match_len(a: &[u8], b: &[u8]) -> usize {
    let max = b.len().min(MAX_MATCH);
    let (a, b) = (&a[..max], &b[..max]);
    let mut n = 0;
    while n + 8 <= max {
        let x = u64::from_le_bytes(a[n..n + 8].try_into().unwrap_or([0; 8]));
        let y = u64::from_le_bytes(b[n..n + 8].try_into().unwrap_or([0; 8]));
        if x != y {
            return n + ((x ^ y).trailing_zeros() / 8) as usize;
        }
        n += 8;
    }
    while n < max && a[n] == b[n] {
        n += 1;
    }
    n
}

/// The hash slot of 4 bytes read as a little-endian word.
#[inline(always)]
fn hash_word(v: u32, bits: u8) -> usize {
    (v.wrapping_mul(0x9E37_79B1) >> (32 - bits as u32)) as usize
}

/// Bytes of `n` bytes sent as stored blocks, with the closing empty block's header byte (its `00 00 FF FF` is
/// stripped): a byte of header and four of lengths per 65,535 bytes. No message comes out of
/// [`SmallCompressor::compress`] longer than this.
pub fn stored_len(n: usize) -> usize {
    n + 5 * n.div_ceil(0xffff) + 1
}

/// `data` as stored blocks (RFC 1951 §3.2.4; each starts on a byte boundary, as every message here does), then
/// the empty stored block of the sync flush, without its `00 00 FF FF`.
fn write_stored(data: &[u8], out: &mut Vec<u8>) {
    for chunk in data.chunks(0xffff) {
        let len = chunk.len() as u16;
        out.push(0); // BFINAL 0, BTYPE 00, padding
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.push(0);
}

/// A deflate compressor with a `2^bits`-byte window kept across messages (see the module docs).
#[derive(Debug)]
pub struct SmallCompressor {
    bits: u8,
    /// The last bytes compressed: at least the last window's (all of them, before a window's worth), and at most a
    /// window and a quarter (the room short messages are coded in).
    history: Vec<u8>,
    /// Per hash slot, the stream position (modulo 2^16) of the newest 4-byte sequence there. Candidates are
    /// checked byte by byte and against the window, so a stale or aliased entry only costs a comparison.
    head: Box<[u16]>,
    /// Per window position (stream position modulo the window), the position before it in its hash slot: the
    /// chain of older candidates, walked while their distances grow and stay within the window.
    prev: Box<[u16]>,
    /// Bytes compressed so far (modulo 2^32; positions are compared modulo 2^16).
    total: u32,
    /// The last match's distance (at most the window): tried first at the start of the next message.
    rep: usize,
}

impl SmallCompressor {
    /// A compressor whose matches reach back at most `2^bits` bytes (`bits` 8–15: unlike zlib, it keeps a
    /// promise of 256 bytes exactly).
    pub fn new(bits: u8) -> Self {
        let bits = bits.clamp(8, 15);
        SmallCompressor {
            bits,
            history: Vec::new(),
            head: vec![0; 1 << bits.min(HASH_BITS)].into_boxed_slice(),
            prev: vec![0; 1 << bits].into_boxed_slice(),
            total: 0,
            rep: 0,
        }
    }

    /// Heap bytes held once a window's worth has been sent.
    pub fn heap_bytes(&self) -> usize {
        Self::heap_bytes_for(self.bits)
    }

    /// Heap bytes of one with this window once a window's worth has been sent: two bytes per slot of the hash
    /// table and per window byte of the chains' links, and the history's room, a window and a quarter (2,688 at
    /// 9 bits, 21,504 at 12, 122,880 at 15).
    pub fn heap_bytes_for(bits: u8) -> usize {
        let bits = bits.clamp(8, 15);
        let w = 1usize << bits;
        (2 << bits.min(HASH_BITS)) + 2 * w + w + w / 4
    }

    /// Compresses one message, appending it to `out` without the `00 00 FF FF` tail; `scratch` is a buffer the
    /// caller lends (its contents are replaced).
    ///
    /// A message that fits in the history's room after it (a quarter of a window) is appended there and coded in
    /// place; when the room runs out, the last window's bytes move to the front first (one move per quarter window
    /// of messages, where copying the history out and back cost two windows per message: 1.6 µs for a 30-byte
    /// message at 15 bits). A longer message is joined with the history in `scratch`, after the block's tokens.
    pub fn compress(&mut self, input: &[u8], out: &mut Vec<u8>, scratch: &mut Vec<u8>) {
        let window = 1usize << self.bits;
        let room = window + window / 4;
        let mut hist = std::mem::take(&mut self.history);
        if hist.len() + input.len() > room && input.len() <= room - window {
            hist.drain(..hist.len() - window);
        }
        // The token area is only zeroed when the buffer is new: it keeps its length from one message to the next.
        scratch.resize(TOKEN_AREA, 0);
        if hist.len() + input.len() <= room {
            hist.reserve_exact(room - hist.len()); // (once: the room is kept)
            let start = hist.len();
            hist.extend_from_slice(input);
            self.code(&hist, start, scratch, out);
        } else {
            scratch.extend_from_slice(&hist);
            scratch.extend_from_slice(input);
            let (tokens, buf) = scratch.split_at_mut(TOKEN_AREA);
            self.code(buf, hist.len(), tokens, out);
            let keep = buf.len().min(window);
            hist.clear();
            hist.extend_from_slice(&buf[buf.len() - keep..]);
        }
        self.history = hist;
    }

    /// Codes `buf[start..]` (a message after its history) into `out`, or stores it where coding would not shrink
    /// it; `tokens` holds a block's tokens.
    fn code(&mut self, buf: &[u8], start: usize, tokens: &mut [u8], out: &mut Vec<u8>) {
        let input = &buf[start..];
        out.reserve(input.len() + input.len() / 8 + 8);
        let at = out.len();
        let bits = Bits { out, acc: 0, n: 0 };
        let mut sink = Sink { bits, tokens, n: 0, fixed: 0 };
        self.encode(buf, start, &mut sink);
        sink.flush();
        let mut bits = sink.bits;
        bits.put(0, 3); // an empty stored block: BFINAL 0, BTYPE 00, then padding and 00 00 FF FF (stripped)
        bits.finish();
        if out.len() - at > stored_len(input.len()) {
            // What does not compress goes out stored instead. (The table stays right: stored bytes enter the
            // peer's window as coded ones do.)
            out.truncate(at);
            write_stored(input, out);
        }
    }

    /// The longest match at `buf[i..]` longer than `beat` bytes among the table's candidates (the newest first,
    /// then older ones along the chain, at most `depth` of them), as (length, distance), (0, 0) for none; position
    /// `i` (stream position `base + i`) goes in the table. (The lazy step looks for a match longer than the one it
    /// has: every candidate is checked at the 4 bytes where that one ends from the first, 64 KiB chat pages 1,311
    /// → 1,263 µs at the same size.)
    #[inline(always)]
    fn candidate(&mut self, buf: &[u8], base: u32, i: usize, depth: usize, beat: usize) -> (usize, usize) {
        if i + MIN_MATCH > buf.len() {
            return (0, 0);
        }
        let here = base.wrapping_add(i as u32) as u16;
        // (Reads of 4 bytes within the bytes at hand.)
        let word = |at: usize| u32::from_le_bytes(buf[at..at + 4].try_into().unwrap_or_default());
        let mut cand = self.insert(word(i), here);
        let mask = (1usize << self.bits) - 1;
        let limit = (mask + 1).min(i);
        let max = (buf.len() - i).min(MAX_MATCH);
        let (mut best, mut best_d, mut last_d) = (beat, 0, 0);
        // Only a candidate that matches the 4 bytes around where the best match ends (at `e`) can beat it.
        let nice = NICE.min(max);
        let mut e = best.saturating_sub(3).min(max - MIN_MATCH);
        let mut want = word(i + e);
        for _ in 0..depth {
            let d = here.wrapping_sub(cand) as usize;
            if d <= last_d || d > limit {
                // Past the window or the bytes at hand, or an entry overwritten by a newer position. (Entries are
                // never cleared: one 64 KiB older comes round as a near one, and costs a comparison.)
                break;
            }
            if word(i - d + e) == want {
                let len = match_len(&buf[i - d..], &buf[i..]);
                if len > best {
                    (best, best_d) = (len, d);
                    if len >= nice {
                        break;
                    }
                    e = (len - 3).min(max - MIN_MATCH);
                    want = word(i + e);
                }
            }
            last_d = d;
            cand = self.prev[cand as usize & mask];
        }
        if best >= MIN_MATCH && best_d > 0 {
            (best, best_d)
        } else {
            (0, 0)
        }
    }

    /// Puts stream position `here` (modulo 2^16), where the 4 bytes of `word` begin, at the head of its hash
    /// slot's chain; returns the position that was there.
    #[inline(always)]
    fn insert(&mut self, word: u32, here: u16) -> u16 {
        let h = hash_word(word, self.bits.min(HASH_BITS));
        let old = self.head[h];
        self.head[h] = here;
        self.prev[here as usize & ((1 << self.bits) - 1)] = old;
        old
    }

    /// Literals and matches of `buf[start..]`, matches reaching into `buf[..start]` (the history) too.
    fn encode(&mut self, buf: &[u8], start: usize, sink: &mut Sink<'_, '_>) {
        // Stream position of buf[0].
        let base = self.total.wrapping_sub(start as u32);
        let mut i = start;
        // A message often begins where the last one's text was found: the last match's distance is tried beside
        // the table's candidate (which is newer, so usually part of the last message).
        let r = self.rep;
        let mut last = r;
        if r >= 1 && r <= start && start + MIN_MATCH <= buf.len() {
            let len = match_len(&buf[start - r..], &buf[start..]);
            if len >= MIN_MATCH {
                let (found, d) = self.candidate(buf, base, start, CHAIN, 0);
                let (len, dist) = if found > len { (found, d) } else { (len, r) };
                i = self.write_matches(buf, base, (start, start + 1), len, dist, sink);
                last = dist;
            }
        }
        // The search's effort: the whole chain, and a lazy look at the next byte after a short match, until a
        // stretch of the message turns out to be mostly literals (text without repeats: what codes buy there
        // does not depend on the matches, and each candidate costs a miss).
        let (mut depth, mut lazy) = (CHAIN, LAZY);
        let (mut literals, mut check) = (0, i + SPARSE_CHECK);
        while i < buf.len() {
            if i >= check {
                if literals * 4 > (i - start) * 3 {
                    (depth, lazy) = (1, 0);
                }
                check = usize::MAX;
            }
            let (mut len, mut dist) = self.candidate(buf, base, i, depth, 0);
            if lazy == 0 && len == MIN_MATCH && dist > TOO_FAR {
                len = 0; // (in text without repeats, where codes are short, four literals cost less)
            }
            let mut entered = i + 1;
            if (MIN_MATCH..lazy).contains(&len) {
                // One step of lazy evaluation: a longer match at the next byte wins, this byte going as a
                // literal (looked for along a quarter of the chain).
                let (next, d) = self.candidate(buf, base, i + 1, depth / 4, len);
                entered = i + 2;
                if next > len {
                    sink.literal(buf[i]);
                    literals += 1;
                    (i, len, dist) = (i + 1, next, d);
                }
            }
            if len >= MIN_MATCH {
                i = self.write_matches(buf, base, (i, entered), len, dist, sink);
                last = dist;
            } else {
                sink.literal(buf[i]);
                literals += 1;
                i += 1;
            }
        }
        self.total = base.wrapping_add(buf.len() as u32);
        self.rep = last;
    }

    /// Writes the match of `len` bytes at `buf[i..]`, putting the positions it covers from `entered` on (those
    /// before are in the table already) in the table; after a match of the longest length, as many more as go on
    /// at the same distance. Returns where they end.
    #[inline]
    fn write_matches(
        &mut self,
        buf: &[u8],
        base: u32,
        (i, entered): (usize, usize),
        len: usize,
        dist: usize,
        sink: &mut Sink<'_, '_>,
    ) -> usize {
        sink.matched(len, dist);
        self.enter(buf, base, entered.max(i + 1)..i + len);
        if len == MAX_MATCH {
            self.go_on(buf, base, i + len, dist, sink)
        } else {
            i + len
        }
    }

    /// Puts the positions `range` of `buf` in the table (those inside a match: the next messages find them).
    #[inline]
    fn enter(&mut self, buf: &[u8], base: u32, range: std::ops::Range<usize>) {
        let end = range.end.min(buf.len().saturating_sub(MIN_MATCH - 1));
        if range.start >= end {
            return;
        }
        let mut here = base.wrapping_add(range.start as u32) as u16;
        for w in buf[range.start..end + MIN_MATCH - 1].windows(MIN_MATCH) {
            self.insert(u32::from_le_bytes([w[0], w[1], w[2], w[3]]), here);
            here = here.wrapping_add(1);
        }
    }

    /// After a match of 258 bytes, the matches at the same distance from `buf[i..]` on, for text seen before runs
    /// past one match (the table's candidate there is rarely that far back). Returns where they end.
    #[cold]
    #[inline(never)]
    fn go_on(&mut self, buf: &[u8], base: u32, mut i: usize, dist: usize, sink: &mut Sink<'_, '_>) -> usize {
        while i + MIN_MATCH <= buf.len() {
            let len = match_len(&buf[i - dist..], &buf[i..]);
            if len < MIN_MATCH {
                break;
            }
            sink.matched(len, dist);
            self.enter(buf, base, i..i + len);
            i += len;
            if len < MAX_MATCH {
                break;
            }
        }
        i
    }

    /// Stops referring back to what this compressor sent: the peer's window took bytes it did not produce (a
    /// message compressed once for many connections), so the distances to its history are no longer right.
    /// Costs nothing: the history goes and the last distance with it; the table keeps its entries, but a match is
    /// only taken within the bytes at hand and checked byte by byte, so the next message refers to itself only.
    pub fn forget(&mut self) {
        self.history.clear();
        self.rep = 0;
    }

    /// Forgets the context and its memory.
    pub fn reset(&mut self) {
        self.history = Vec::new();
        self.head.fill(0);
        self.prev.fill(0);
        self.total = 0;
        self.rep = 0;
    }
}

#[cfg(all(test, feature = "deflate"))]
mod tests {
    use super::*;
    use flate2::{Decompress, FlushDecompress};

    /// Inflates a run of messages with one raw inflater whose window is `bits`: a distance past the window is an
    /// error there, so this checks the window as well as the bytes.
    fn inflate_all(bits: u8, compressed: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mut d = Decompress::new_with_window_bits(false, bits);
        compressed
            .iter()
            .map(|z| {
                let mut input = z.clone();
                input.extend_from_slice(&crate::deflate::TAIL);
                let mut out = Vec::with_capacity(input.len() * 8 + 1024);
                loop {
                    let before = d.total_in();
                    d.decompress_vec(&input, &mut out, FlushDecompress::Sync).expect("valid deflate");
                    input.drain(..(d.total_in() - before) as usize);
                    if input.is_empty() && out.len() < out.capacity() {
                        break;
                    }
                    out.reserve(out.capacity());
                }
                out
            })
            .collect()
    }

    /// Reads this compressor's streams (stored blocks, and blocks in fixed codes or codes of their own) as a decoder would, asserting that no
    /// match reaches further back than `window` bytes or before the stream's start; `seen` is everything decoded
    /// so far (the history later messages refer to).
    fn walk(z: &[u8], window: usize, seen: &mut Vec<u8>) -> Vec<u8> {
        let mut data = z.to_vec();
        data.extend_from_slice(&crate::deflate::TAIL);
        let start = seen.len();
        let mut pos = 0usize; // in bits
        let bit = |pos: &mut usize| {
            let b = u32::from((data[*pos / 8] >> (*pos % 8)) & 1);
            *pos += 1;
            b
        };
        let num = |pos: &mut usize, n: u8| (0..n).fold(0u32, |v, i| v | (bit(pos) << i));
        // A canonical code read bit by bit: at each length, the codes of that length are the next `count` values;
        // a table is (count per length, symbols by length then value).
        let table = |lens: &[u8]| -> ([usize; 16], Vec<usize>) {
            let mut count = [0usize; 16];
            lens.iter().for_each(|&l| count[l as usize] += 1);
            let mut syms: Vec<usize> = (0..lens.len()).filter(|&s| lens[s] > 0).collect();
            syms.sort_by_key(|&s| lens[s]);
            (count, syms)
        };
        let decode = |pos: &mut usize, (count, syms): &([usize; 16], Vec<usize>)| -> usize {
            let (mut code, mut first, mut index) = (0usize, 0usize, 0usize);
            for &n in &count[1..] {
                code |= bit(pos) as usize;
                if code - first < n {
                    return syms[index + code - first];
                }
                index += n;
                first = (first + n) << 1;
                code <<= 1;
            }
            panic!("not a code");
        };
        while pos < data.len() * 8 {
            let (_final, kind) = (num(&mut pos, 1), num(&mut pos, 2));
            if kind == 0 {
                pos = pos.div_ceil(8) * 8;
                let len = num(&mut pos, 16) as usize;
                assert_eq!(num(&mut pos, 16) as usize, !len & 0xffff, "NLEN");
                seen.extend_from_slice(&data[pos / 8..pos / 8 + len]);
                pos += len * 8;
                continue;
            }
            let (lit, dist) = if kind == 1 {
                (table(&FIXED.map(|c| (c >> 16) as u8)), table(&[5; 30]))
            } else {
                assert_eq!(kind, 2, "no reserved block type");
                let (hlit, hdist, hclen) =
                    (num(&mut pos, 5) as usize + 257, num(&mut pos, 5) as usize + 1, num(&mut pos, 4) as usize + 4);
                let mut lengths = [0u8; 19];
                for &s in &[16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15][..hclen] {
                    lengths[s] = num(&mut pos, 3) as u8;
                }
                let cl = table(&lengths);
                let mut lens = Vec::new();
                while lens.len() < hlit + hdist {
                    match decode(&mut pos, &cl) {
                        16 => {
                            let last = *lens.last().expect("a length to repeat");
                            lens.extend(std::iter::repeat(last).take(3 + num(&mut pos, 2) as usize));
                        }
                        17 => lens.extend(std::iter::repeat(0).take(3 + num(&mut pos, 3) as usize)),
                        18 => lens.extend(std::iter::repeat(0).take(11 + num(&mut pos, 7) as usize)),
                        l => lens.push(l as u8),
                    }
                }
                assert_eq!(lens.len(), hlit + hdist, "runs end at the tables' end");
                (table(&lens[..hlit]), table(&lens[hlit..]))
            };
            loop {
                match decode(&mut pos, &lit) {
                    sym @ 0..=255 => seen.push(sym as u8),
                    256 => break,
                    sym => {
                        let lc = sym - 257;
                        let len = LEN_BASE[lc] as usize + num(&mut pos, LEN_EXTRA[lc]) as usize;
                        let dc = decode(&mut pos, &dist);
                        let dist = DIST_BASE[dc] as usize + num(&mut pos, DIST_EXTRA[dc]) as usize;
                        assert!(dist <= window, "a match {dist} bytes back, past the {window}-byte window");
                        assert!(dist <= seen.len(), "a match before the stream's start");
                        for _ in 0..len {
                            seen.push(seen[seen.len() - dist]);
                        }
                    }
                }
            }
        }
        seen[start..].to_vec()
    }

    fn rng(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    fn messages(seed: u64) -> Vec<Vec<u8>> {
        let mut s = seed | 1;
        let words = ["price", "bid", "ask", "EURUSD", "\"user\":", "hello", "the", "{\"t\":", "1.0842", "},"];
        let mut v: Vec<Vec<u8>> = vec![Vec::new(), b"a".to_vec(), b"abcd".to_vec(), b"abcdabcdabcdabcd".to_vec()];
        for _ in 0..60 {
            let len = match rng(&mut s) % 5 {
                0 => (rng(&mut s) % 8) as usize,
                1 => 100,
                2 => 1000,
                3 => 5000,
                _ => 70_000,
            };
            let mut m = Vec::with_capacity(len);
            let random = rng(&mut s) % 4 == 0;
            while m.len() < len {
                if random {
                    m.push(rng(&mut s) as u8);
                } else {
                    m.extend_from_slice(words[(rng(&mut s) % words.len() as u64) as usize].as_bytes());
                    m.push(b' ');
                }
            }
            m.truncate(len);
            v.push(m);
        }
        v.push(vec![0; 100_000]);
        v.push(vec![7; 3]);
        // Random letters: few matches, so many blocks of BLOCK_TOKENS tokens, with codes of their own (27 symbols).
        v.push((0..200_000).map(|_| b"abcdefghijklmnopqrstuvwxyz "[(rng(&mut s) % 27) as usize]).collect());
        v
    }

    #[test]
    fn every_window_round_trips_through_zlib_within_its_window() {
        for bits in 8..=15u8 {
            // (zlib inflates raw deflate with 9 bits at least: the 8-bit window's bound is checked at 9.)
            let inflate_bits = bits.max(9);
            for seed in [1u64, 2, 3] {
                let msgs = messages(seed);
                let (mut c, mut scratch) = (SmallCompressor::new(bits), Vec::new());
                let compressed: Vec<Vec<u8>> = msgs
                    .iter()
                    .map(|m| {
                        let mut z = Vec::new();
                        c.compress(m, &mut z, &mut scratch);
                        z
                    })
                    .collect();
                assert_eq!(inflate_all(inflate_bits, &compressed), msgs, "bits {bits} seed {seed}");
                // zlib checks a distance against its window only past what one call wrote: every one, here.
                let mut seen = Vec::new();
                for (z, m) in compressed.iter().zip(&msgs) {
                    assert_eq!(&walk(z, 1 << bits, &mut seen), m, "bits {bits} seed {seed}");
                }
                // All three kinds of block were written: fixed codes, dynamic ones (long text) and stored.
                for kind in [0b010, 0b100, 0b000] {
                    assert!(compressed.iter().any(|z| z.len() > 1 && z[0] & 0b111 == kind), "block type {kind:03b}");
                }
                // The random letters (the last message) went out in blocks of codes of their own.
                assert_eq!(compressed.last().map(|z| z[0] & 0b111), Some(0b100), "bits {bits}: a dynamic block");
                // Repeated text shrinks, and the context carries over: the same line again costs a few bytes.
                let line = b"{\"user\":\"ada\",\"text\":\"hello there, how is the market today?\"}";
                let (mut z1, mut z2) = (Vec::new(), Vec::new());
                c.compress(line, &mut z1, &mut scratch);
                c.compress(line, &mut z2, &mut scratch);
                assert!(z2.len() < 10, "bits {bits}: a repeated line took {} bytes", z2.len());
                assert_eq!(walk(&z1, 1 << bits, &mut seen), line);
                assert_eq!(walk(&z2, 1 << bits, &mut seen), line);
            }
        }
    }

    /// The block's tokens after `c` encodes `buf[start..]` (`buf[..start]` being its history): (length, distance)
    /// of each match, (0, byte) of each literal.
    fn tokens(c: &mut SmallCompressor, buf: &[u8], start: usize) -> Vec<(usize, usize)> {
        let (mut area, mut out) = (vec![0u8; TOKEN_AREA], Vec::new());
        let mut sink = Sink { bits: Bits { out: &mut out, acc: 0, n: 0 }, tokens: &mut area, n: 0, fixed: 0 };
        c.encode(buf, start, &mut sink);
        (0..sink.n)
            .map(|k| sink.token(k))
            .map(|t| if t < 256 { (0, t as usize) } else { ((t >> 16) as usize, (t & 0xffff) as usize) })
            .collect()
    }

    #[test]
    fn the_chain_finds_an_older_longer_match_and_sparse_text_gives_up_far_short_ones() {
        // "abcd" is newest at 9 (four bytes in common), but at 0 the whole "abcdefgh" comes again.
        let buf = b"abcdefgh_abcdXYZW_abcdefgh";
        let t = tokens(&mut SmallCompressor::new(12), buf, 0);
        assert_eq!(t.last(), Some(&(8, 18)), "{t:?}");
        // Random letters, a second message of them after a first: in its first 4 KiB 4-byte matches more than 4
        // KiB back (into the first) are taken; once the message is seen to be mostly literals, they are left as
        // literals (they cost more than those do), nearer ones still taken.
        let mut s = 99u64;
        let mut letters =
            || -> Vec<u8> { (0..16384).map(|_| b"abcdefghijklmnopqrstuvwxyz "[(rng(&mut s) % 27) as usize]).collect() };
        let (mut c, first, second) = (SmallCompressor::new(15), letters(), letters());
        c.compress(&first, &mut Vec::new(), &mut Vec::new());
        assert_eq!(c.history, first);
        let buf = [first.as_slice(), second.as_slice()].concat();
        let (mut at, mut far, mut near) = (0, [0; 2], 0);
        for (len, d) in tokens(&mut c, &buf, first.len()) {
            let after = at >= SPARSE_CHECK;
            if len == MIN_MATCH && d > TOO_FAR {
                far[after as usize] += 1;
            }
            near += (after && len >= MIN_MATCH && d <= TOO_FAR) as usize;
            at += len.max(1);
        }
        assert_eq!(at, second.len());
        assert!(far[0] > 0 && far[1] == 0 && near > 0, "{far:?} {near}");
    }

    #[test]
    fn after_forget_a_message_refers_only_to_itself() {
        // The peer's window: what this compressor sent, then a message compressed elsewhere (a shared frame).
        let line = b"a line of text that will come again, word for word, in the next message".to_vec();
        let (mut c, mut scratch, mut seen) = (SmallCompressor::new(12), Vec::new(), Vec::new());
        let mut z = Vec::new();
        c.compress(&line, &mut z, &mut scratch);
        assert_eq!(walk(&z, 4096, &mut seen), line);
        seen.extend_from_slice(b"some bytes this compressor never saw");
        c.forget();
        let twice = [line.as_slice(), line.as_slice()].concat();
        let mut z = Vec::new();
        c.compress(&twice, &mut z, &mut scratch);
        assert_eq!(walk(&z, 4096, &mut seen), twice, "a reference into the history would land in the foreign bytes");
        assert!(z.len() < line.len() + 20, "the second copy is still a match: {} bytes", z.len());
        // And after forget the context builds again: the same text next time is a few bytes.
        let mut z = Vec::new();
        c.compress(&line, &mut z, &mut scratch);
        assert_eq!(walk(&z, 4096, &mut seen), line);
        assert!(z.len() < 10, "{} bytes", z.len());
        // The same for a message longer than the history's room (a quarter window: joined with the history in
        // the scratch buffer instead of coded in place).
        seen.extend_from_slice(b"more foreign bytes");
        c.forget();
        let long: Vec<u8> = line.iter().chain(b" -- ").copied().cycle().take(3000).collect();
        let mut z = Vec::new();
        c.compress(&long, &mut z, &mut scratch);
        assert_eq!(walk(&z, 4096, &mut seen), long);
        assert!(z.len() < line.len() + 40, "{} bytes", z.len());
    }

    #[test]
    fn a_reset_forgets_and_the_heap_is_five_and_a_quarter_bytes_per_window_byte() {
        let (mut c, mut scratch) = (SmallCompressor::new(10), Vec::new());
        let line = b"the same sixty-odd bytes of text, twice over, to be found again".to_vec();
        let mut z = Vec::new();
        c.compress(&line, &mut z, &mut scratch);
        c.reset();
        let mut again = Vec::new();
        c.compress(&line, &mut again, &mut scratch);
        assert_eq!(again, z, "after a reset the same message compresses as from the start");
        // A fresh decoder reads it: nothing refers back past the reset.
        assert_eq!(walk(&again, 1024, &mut Vec::new()), line);
        assert_eq!(inflate_all(10, &[again]), vec![line]);
        // What it holds once a window's worth has gone through: the history and the table, as counted.
        c.compress(&[b'x'; 5000], &mut Vec::new(), &mut scratch);
        assert_eq!(c.history.capacity() + c.head.len() * 2 + c.prev.len() * 2, c.heap_bytes());
        assert_eq!(c.heap_bytes(), 1024 + 256 + 2048 + 2048);
        c.reset();
        assert!(c.history.capacity() == 0 && c.total == 0 && c.rep == 0);
        assert!(c.head.iter().chain(c.prev.iter()).all(|&h| h == 0));
        // Bytes that no code shrinks go out stored, at their stored size exactly.
        let mut s = 7u64;
        let noise: Vec<u8> = (0..5000).map(|_| rng(&mut s) as u8).collect();
        let mut z = Vec::new();
        c.compress(&noise, &mut z, &mut scratch);
        assert_eq!(z.len(), stored_len(noise.len()));
    }

    #[test]
    fn a_message_seen_again_further_back_costs_a_few_bytes_per_258() {
        // Sixteen 1 KiB texts of the same records with different ids, sent in turn twice: each is in the window
        // when it comes again, 16 KiB back, but the newest place of each 4-byte sequence is in the last text.
        let text = |k: usize| {
            let mut t = String::new();
            for id in k * 7919.. {
                t.push_str(&format!(r#"{{"id":{id},"user":"user{}","text":"hello from the load client"}},"#, id % 37));
                if t.len() >= 1024 {
                    break;
                }
            }
            t.truncate(1024);
            t.into_bytes()
        };
        for bits in [14u8, 15] {
            let (mut c, mut scratch, mut seen) = (SmallCompressor::new(bits), Vec::new(), Vec::new());
            let msgs: Vec<Vec<u8>> = (0..32).map(|i| text(i % 16)).collect();
            let compressed: Vec<Vec<u8>> = msgs
                .iter()
                .map(|m| {
                    let mut z = Vec::new();
                    c.compress(m, &mut z, &mut scratch);
                    assert_eq!(&walk(&z, 1 << bits, &mut seen), m);
                    z
                })
                .collect();
            assert_eq!(inflate_all(bits, &compressed), msgs);
            // Four matches of 258, 258, 258 and 250 bytes at 16 KiB, 26 bits each, and the blocks' 13 bits: 15
            // bytes. The first text seen again is found through the table only (~100 bytes); from the next on,
            // each starts at the last one's distance.
            for z in &compressed[17..] {
                assert!(z.len() <= 20, "bits {bits}: {} bytes for 1 KiB seen 16 KiB back", z.len());
            }
        }
    }

    #[test]
    fn long_codes_with_extra_bits_go_out_whole() {
        // A block of 15,000 literals, byte k coming half as often as byte k - 1 (a code as deep as 15 bits), and
        // two matches: a length that comes once is given one of the longest codes, so with its 5 extra bits (250)
        // it goes out in one write of more than 16 bits (a block this long takes its lengths from a table); the
        // distance, 14,000, has 12 extra bits.
        let (mut s, mut out, mut tokens, mut expect) = (7u64, Vec::new(), vec![0u8; TOKEN_AREA], Vec::new());
        let mut sink = Sink { bits: Bits { out: &mut out, acc: 0, n: 0 }, tokens: &mut tokens, n: 0, fixed: 0 };
        for k in 0..15_000 {
            let b = rng(&mut s).trailing_zeros() as u8;
            sink.literal(b);
            expect.push(b);
            if k == 14_000 {
                sink.matched(250, 10_000);
                sink.matched(4, 14_000);
                for _ in 0..250 {
                    expect.push(expect[expect.len() - 10_000]);
                }
                for _ in 0..4 {
                    expect.push(expect[expect.len() - 14_000]);
                }
            }
        }
        sink.flush();
        let mut bits = sink.bits;
        bits.put(0, 3);
        bits.finish();
        assert_eq!(out[0] & 0b111, 0b100, "a block of codes of its own");
        assert_eq!(inflate_all(15, &[out.clone()]), vec![expect.clone()]);
        assert_eq!(walk(&out, 1 << 15, &mut Vec::new()), expect);
    }

    #[test]
    fn length_codes_cover_every_match_length() {
        for (len, &c) in LEN_CODE.iter().enumerate().skip(3) {
            let c = c as usize;
            assert!(LEN_BASE[c] as usize <= len && len < LEN_BASE[c] as usize + (1 << LEN_EXTRA[c]), "{len}");
        }
        assert_eq!(LEN_CODE[258], 28, "258 has its own code");
    }
}
