//! HPACK (RFC 7541), the header compression of HTTP/2: a decoder bounded for hostile peers and the little
//! encoder a server needs.
//!
//! The decoder keeps the dynamic table within our SETTINGS_HEADER_TABLE_SIZE (a size update above it, or after a
//! block's first field, is an error), and bounds what one block may decode to: its fields' size as RFC 7541
//! counts entries (32 + name + value; SETTINGS_MAX_HEADER_LIST_SIZE) and their number. Past either bound it goes
//! on decoding without keeping the fields, so the table stays in step with the peer's, and reports
//! [`Decoded::TooLarge`] (a stream refused with 431, the connection goes on); a block of one-byte references to a
//! large entry therefore costs its decoding, never its expansion. Every other fault is a [`HpackError`], a
//! connection error (COMPRESSION_ERROR). The encoder writes literals without indexing (and `:status` from the
//! static table), so the peer's table for us stays empty.

use std::borrow::Cow;
use std::collections::VecDeque;

/// Why a field block does not decode: a connection error (COMPRESSION_ERROR, RFC 9113 §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HpackError {
    /// The block ends inside a field.
    Truncated,
    /// An integer longer than 32 bits.
    IntegerOverflow,
    /// Index 0, or past the static and dynamic tables.
    BadIndex(u32),
    /// A dynamic table size update after the block's first field (§4.2).
    LateSizeUpdate,
    /// A dynamic table size update above our SETTINGS_HEADER_TABLE_SIZE.
    SizeUpdateTooLarge(u32),
    /// A Huffman-coded string with the EOS symbol, or padding longer than 7 bits or not all ones (§5.2).
    BadHuffman,
}

impl std::fmt::Display for HpackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HpackError::Truncated => f.write_str("field block ends inside a field"),
            HpackError::IntegerOverflow => f.write_str("integer longer than 32 bits"),
            HpackError::BadIndex(i) => write!(f, "index {i} is in neither table"),
            HpackError::LateSizeUpdate => f.write_str("dynamic table size update after a field"),
            HpackError::SizeUpdateTooLarge(n) => write!(f, "dynamic table size update to {n}, above our setting"),
            HpackError::BadHuffman => f.write_str("malformed Huffman-coded string"),
        }
    }
}

impl std::error::Error for HpackError {}

/// One header field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Its name (lower case, as HTTP/2 requires; checked by the caller).
    pub name: Vec<u8>,
    /// Its value.
    pub value: Vec<u8>,
}

/// What a field block decoded to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// Its fields, in order.
    Fields(Vec<Field>),
    /// Past the header-list bounds: decoded (the table is in step) but not kept. The stream is refused (431).
    TooLarge,
}

/// RFC 7541's size of an entry or field: its name and value and 32 bytes of overhead (§4.1).
fn entry_size(name: &[u8], value: &[u8]) -> usize {
    name.len() + value.len() + 32
}

/// A dynamic table entry: name and value.
type Entry = (Box<[u8]>, Box<[u8]>);

/// A decoded field, borrowed from the table or owned.
type FieldRef<'a> = (Cow<'a, [u8]>, Cow<'a, [u8]>);

/// The dynamic table: newest first, its size within `max`.
#[derive(Debug, Default)]
struct Table {
    entries: VecDeque<Entry>,
    size: usize,
    max: usize,
}

impl Table {
    fn set_max(&mut self, max: usize) {
        self.max = max;
        self.evict(0);
    }
    /// Evicts the oldest entries until `room` more bytes fit.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max {
            let Some((n, v)) = self.entries.pop_back() else { break };
            self.size -= entry_size(&n, &v);
        }
    }
    /// Adds an entry (§4.4: one larger than the table empties it and is not added).
    fn insert(&mut self, name: &[u8], value: &[u8]) {
        let size = entry_size(name, value);
        if size > self.max {
            self.entries.clear();
            self.size = 0;
            return;
        }
        self.evict(size);
        self.entries.push_front((name.into(), value.into()));
        self.size += size;
    }
}

/// Decodes field blocks from one peer (one per connection: its dynamic table follows the peer's encoder).
#[derive(Debug)]
pub struct Decoder {
    table: Table,
    /// Our SETTINGS_HEADER_TABLE_SIZE: the largest table the peer may ask for.
    max_table: usize,
    /// Our SETTINGS_MAX_HEADER_LIST_SIZE: the most one block's fields may add up to (RFC 7541 counting).
    max_list: usize,
    /// The most fields one block may hold.
    max_fields: usize,
}

impl Decoder {
    /// A decoder for a connection on which we announced SETTINGS_HEADER_TABLE_SIZE `max_table` and
    /// SETTINGS_MAX_HEADER_LIST_SIZE `max_list`; blocks of more than `max_fields` fields are refused as too large.
    pub fn new(max_table: usize, max_list: usize, max_fields: usize) -> Decoder {
        Decoder { table: Table { max: max_table, ..Table::default() }, max_table, max_list, max_fields }
    }

    /// The dynamic table's size as RFC 7541 counts it (for tests and metrics).
    pub fn table_size(&self) -> usize {
        self.table.size
    }

    /// Decodes one whole field block (HEADERS and its CONTINUATION frames, joined).
    pub fn decode(&mut self, block: &[u8]) -> Result<Decoded, HpackError> {
        let (max_list, max_fields) = (self.max_list, self.max_fields);
        let mut r = Reader { buf: block, at: 0 };
        let (mut fields, mut size, mut over, mut first) = (Vec::new(), 0usize, false, true);
        while let Some(&b) = r.buf.get(r.at) {
            if b & 0xe0 == 0x20 {
                // A dynamic table size update: only before the first field.
                if !first {
                    return Err(HpackError::LateSizeUpdate);
                }
                let n = r.int(5)?;
                if n as usize > self.max_table {
                    return Err(HpackError::SizeUpdateTooLarge(n));
                }
                self.table.set_max(n as usize);
                continue;
            }
            first = false;
            let (name, value) = self.field(&mut r, b)?;
            size = size.saturating_add(entry_size(&name, &value));
            over = over || size > max_list || fields.len() >= max_fields;
            if !over {
                fields.push(Field { name: name.into_owned(), value: value.into_owned() });
            }
        }
        Ok(if over { Decoded::TooLarge } else { Decoded::Fields(fields) })
    }

    /// One field representation (§6), whose first byte is `b`; literals with incremental indexing enter the table.
    /// A reference to a table entry is borrowed: a block of references costs no copies unless its fields are kept.
    fn field(&mut self, r: &mut Reader<'_>, b: u8) -> Result<FieldRef<'_>, HpackError> {
        if b & 0x80 != 0 {
            let (n, v) = self.entry(r.int(7)?)?;
            return Ok((Cow::Borrowed(n), Cow::Borrowed(v)));
        }
        // Literal: with incremental indexing (01, 6-bit name index), without indexing (0000) or never indexed
        // (0001), both with a 4-bit name index.
        let indexing = b & 0x40 != 0;
        let index = r.int(if indexing { 6 } else { 4 })?;
        let name = if index == 0 { r.string()? } else { self.entry(index)?.0.to_vec() };
        let value = r.string()?;
        if indexing {
            self.table.insert(&name, &value);
        }
        Ok((Cow::Owned(name), Cow::Owned(value)))
    }

    /// The entry at `index`: 1–61 static, then dynamic, newest first.
    fn entry(&self, index: u32) -> Result<(&[u8], &[u8]), HpackError> {
        let i = index as usize;
        match i {
            1..=61 => Ok(STATIC[i - 1]),
            _ if i > 61 => {
                let (n, v) = self.table.entries.get(i - 62).ok_or(HpackError::BadIndex(index))?;
                Ok((n, v))
            }
            _ => Err(HpackError::BadIndex(index)),
        }
    }
}

/// A cursor over a field block.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, HpackError> {
        let b = *self.buf.get(self.at).ok_or(HpackError::Truncated)?;
        self.at += 1;
        Ok(b)
    }

    /// An integer with an `n`-bit prefix (§5.1), at most 32 bits.
    fn int(&mut self, n: u8) -> Result<u32, HpackError> {
        let max = (1u32 << n) - 1;
        let first = u32::from(self.byte()?) & max;
        if first < max {
            return Ok(first);
        }
        let mut value = u64::from(max);
        for shift in (0..).step_by(7) {
            let b = self.byte()?;
            value += u64::from(b & 0x7f) << shift;
            if value > u64::from(u32::MAX) || shift > 28 {
                return Err(HpackError::IntegerOverflow);
            }
            if b & 0x80 == 0 {
                break;
            }
        }
        Ok(value as u32)
    }

    /// A string literal (§5.2), Huffman-decoded if marked so.
    fn string(&mut self) -> Result<Vec<u8>, HpackError> {
        let huffman = self.buf.get(self.at).ok_or(HpackError::Truncated)? & 0x80 != 0;
        let len = self.int(7)? as usize;
        let raw = self.buf.get(self.at..self.at + len).ok_or(HpackError::Truncated)?;
        self.at += len;
        if huffman {
            huffman_decode(raw)
        } else {
            Ok(raw.to_vec())
        }
    }
}

/// The canonical Huffman code's decoding tables: for each length, its first code, how many codes it has, and
/// where its symbols start in `symbols` (all symbols sorted by code length, then value).
struct Huffman {
    first: [u32; 31],
    count: [u16; 31],
    offset: [u16; 31],
    symbols: [u16; 257],
}

const fn huffman() -> Huffman {
    let mut h = Huffman { first: [0; 31], count: [0; 31], offset: [0; 31], symbols: [0; 257] };
    let mut s = 0;
    while s < 257 {
        h.count[CODE_LENGTHS[s] as usize] += 1;
        s += 1;
    }
    let (mut code, mut at, mut len) = (0u32, 0u16, 1);
    while len <= 30 {
        h.first[len] = code;
        h.offset[len] = at;
        code = (code + h.count[len] as u32) << 1;
        at += h.count[len];
        len += 1;
    }
    let mut fill = h.offset;
    let mut s = 0;
    while s < 257 {
        let l = CODE_LENGTHS[s] as usize;
        h.symbols[fill[l] as usize] = s as u16;
        fill[l] += 1;
        s += 1;
    }
    h
}

static HUFFMAN: Huffman = huffman();

/// Decodes a Huffman-coded string (§5.2): no EOS inside, padding of at most 7 bits, all ones.
fn huffman_decode(raw: &[u8]) -> Result<Vec<u8>, HpackError> {
    let h = &HUFFMAN;
    let mut out = Vec::with_capacity(raw.len() * 8 / 5);
    let (mut code, mut len, mut ones) = (0u32, 0usize, true);
    for &byte in raw {
        for bit in (0..8).rev() {
            let b = u32::from(byte >> bit) & 1;
            code = code << 1 | b;
            len += 1;
            ones &= b == 1;
            let k = code.wrapping_sub(h.first[len]);
            if k < u32::from(h.count[len]) {
                let sym = h.symbols[(h.offset[len] as u32 + k) as usize];
                if sym == 256 {
                    return Err(HpackError::BadHuffman);
                }
                out.push(sym as u8);
                (code, len, ones) = (0, 0, true);
            } else if len >= 30 {
                return Err(HpackError::BadHuffman);
            }
        }
    }
    // What is left is padding: a prefix of EOS (all ones), shorter than a byte.
    if len > 7 || !ones {
        return Err(HpackError::BadHuffman);
    }
    Ok(out)
}

// ── encoding ──────────────────────────────────────────────────────────────────────────────────────────────

/// Appends an integer with an `n`-bit prefix, the prefix's other bits `flags` (§5.1).
fn write_int(out: &mut Vec<u8>, flags: u8, n: u8, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(flags | v as u8);
        return;
    }
    out.push(flags | max as u8);
    v -= max;
    while v >= 0x80 {
        out.push((v & 0x7f) as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends a `:status` field: from the static table when it holds it (200, 204, 206, 304, 400, 404, 500), else
/// as a literal with the static name.
pub fn write_status(out: &mut Vec<u8>, status: u16) {
    match STATIC.iter().position(|(n, v)| *n == b":status" && *v == status.to_string().as_bytes()) {
        Some(i) => write_int(out, 0x80, 7, i + 1),
        None => {
            write_int(out, 0x00, 4, 8);
            write_string(out, status.to_string().as_bytes());
        }
    }
}

/// Appends a field as a literal without indexing, with a new name (the name must be lower case).
pub fn write_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    write_string(out, name);
    write_string(out, value);
}

/// Appends a string literal, not Huffman-coded.
fn write_string(out: &mut Vec<u8>, s: &[u8]) {
    write_int(out, 0x00, 7, s.len());
    out.extend_from_slice(s);
}

/// The Huffman code's length in bits for each symbol, 0–255 and EOS (256) (RFC 7541 Appendix B). The code is
/// canonical: each symbol's code follows from the lengths alone (see [`Huffman`]).
const CODE_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28,
    28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12,
    10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6,
    5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22,
    22, 23, 22, 23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22, 21, 20,
    22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28,
    27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28,
    27, 27, 27, 27, 27, 26, 30,
];

/// The static table (RFC 7541 Appendix A), index 1 first.
const STATIC: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn fields(pairs: &[(&str, &str)]) -> Decoded {
        Decoded::Fields(
            pairs.iter().map(|(n, v)| Field { name: n.as_bytes().to_vec(), value: v.as_bytes().to_vec() }).collect(),
        )
    }

    const REQ: [(&str, &str); 4] =
        [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com")];
    const DATE1: &str = "Mon, 21 Oct 2013 20:13:21 GMT";
    const DATE2: &str = "Mon, 21 Oct 2013 20:13:22 GMT";
    const COOKIE: &str = "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1";

    /// RFC 7541 Appendix C: each sequence of blocks on one decoder, with the fields and the table size after each.
    #[allow(clippy::type_complexity)]
    fn appendix_c() -> Vec<(&'static str, usize, Vec<(Vec<u8>, Decoded, usize)>)> {
        let more = |extra: &[(&'static str, &'static str)]| {
            let mut v: Vec<(&str, &str)> = REQ.to_vec();
            v.extend_from_slice(extra);
            v
        };
        let third = [
            (":method", "GET"),
            (":scheme", "https"),
            (":path", "/index.html"),
            (":authority", "www.example.com"),
            ("custom-key", "custom-value"),
        ];
        let r1 = [
            (":status", "302"),
            ("cache-control", "private"),
            ("date", DATE1),
            ("location", "https://www.example.com"),
        ];
        let r2 = [
            (":status", "307"),
            ("cache-control", "private"),
            ("date", DATE1),
            ("location", "https://www.example.com"),
        ];
        let r3 = [
            (":status", "200"),
            ("cache-control", "private"),
            ("date", DATE2),
            ("location", "https://www.example.com"),
            ("content-encoding", "gzip"),
            ("set-cookie", COOKIE),
        ];
        vec![
            ("C.2.1", 4096, vec![(hex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572"), fields(&[("custom-key", "custom-header")]), 55)]),
            ("C.2.2", 4096, vec![(hex("040c 2f73 616d 706c 652f 7061 7468"), fields(&[(":path", "/sample/path")]), 0)]),
            ("C.2.3", 4096, vec![(hex("1008 7061 7373 776f 7264 0673 6563 7265 74"), fields(&[("password", "secret")]), 0)]),
            ("C.2.4", 4096, vec![(hex("82"), fields(&[(":method", "GET")]), 0)]),
            ("C.3", 4096, vec![
                (hex("8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d"), fields(&REQ), 57),
                (hex("8286 84be 5808 6e6f 2d63 6163 6865"), fields(&more(&[("cache-control", "no-cache")])), 110),
                (hex("8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65"), fields(&third), 164),
            ]),
            ("C.4", 4096, vec![
                (hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff"), fields(&REQ), 57),
                (hex("8286 84be 5886 a8eb 1064 9cbf"), fields(&more(&[("cache-control", "no-cache")])), 110),
                (hex("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf"), fields(&third), 164),
            ]),
            ("C.5", 256, vec![
                (hex("4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65 2e63 6f6d"), fields(&r1), 222),
                (hex("4803 3330 37c1 c0bf"), fields(&r2), 222),
                (hex("88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d 54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e 3d31"), fields(&r3), 215),
            ]),
            ("C.6", 256, vec![
                (hex("4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3"), fields(&r1), 222),
                (hex("4883 640e ffc1 c0bf"), fields(&r2), 222),
                (hex("88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab 77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07"), fields(&r3), 215),
            ]),
        ]
    }

    #[test]
    fn rfc_7541_appendix_c_examples_decode_with_their_table_sizes() {
        for (name, table, blocks) in appendix_c() {
            let mut d = Decoder::new(table, 1 << 16, 100);
            for (i, (block, want, size)) in blocks.into_iter().enumerate() {
                assert_eq!(d.decode(&block), Ok(want), "{name} block {i}");
                assert_eq!(d.table_size(), size, "{name} block {i}: table size");
            }
        }
    }

    #[test]
    fn malformed_blocks_are_errors_not_panics() {
        let cases: [(&str, HpackError); 12] = [
            ("3f", HpackError::Truncated),    // a size update whose integer never ends
            ("80", HpackError::BadIndex(0)),  // index 0
            ("be", HpackError::BadIndex(62)), // the dynamic table is empty
            ("ff ff ff ff ff 0f", HpackError::IntegerOverflow), // more than 32 bits
            ("ff 80 80 80 80 80 80 01", HpackError::IntegerOverflow),
            ("41", HpackError::Truncated),         // a literal without its value
            ("00 05 61", HpackError::Truncated),   // a name shorter than its length
            ("82 20", HpackError::LateSizeUpdate), // a size update after a field
            ("3f e1 1f", HpackError::SizeUpdateTooLarge(4096)), // above our setting
            ("00 81 ff 00", HpackError::BadHuffman), // 8 bits of padding
            ("00 81 00 00", HpackError::BadHuffman), // padding that is not all ones
            ("00 84 ff ff ff ff 00", HpackError::BadHuffman), // EOS inside the string
        ];
        for (bytes, want) in cases {
            let mut d = Decoder::new(4095, 1 << 16, 100);
            assert_eq!(d.decode(&hex(bytes)), Err(want), "{bytes}");
        }
        // A size update at the start is fine, and evicts.
        let mut d = Decoder::new(4096, 1 << 16, 100);
        d.decode(&hex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572")).unwrap();
        assert_eq!(d.decode(&hex("20 3f e1 1f 82")), Ok(fields(&[(":method", "GET")])));
        assert_eq!(d.table_size(), 0, "the update to 0 emptied it");
        assert_eq!(d.decode(&hex("be")), Err(HpackError::BadIndex(62)));
    }

    #[test]
    fn a_bomb_is_decoded_not_kept_and_the_table_stays_in_step() {
        // One 4 KB entry, then 16,000 one-byte references to it: 64 MB if expanded.
        let mut block = vec![0x40, 0x01, b'x'];
        write_int(&mut block, 0, 7, 4000);
        block.extend(std::iter::repeat_n(b'y', 4000));
        block.extend(std::iter::repeat_n(0xbe, 16_000));
        let mut d = Decoder::new(4096, 16 << 10, 100);
        assert_eq!(d.decode(&block), Ok(Decoded::TooLarge));
        // The next block still refers to that entry correctly.
        let Ok(Decoded::Fields(f)) = d.decode(&[0xbe]) else { panic!("in step") };
        assert_eq!((f[0].name.as_slice(), f[0].value.len()), (&b"x"[..], 4000));
        // Too many fields, however small.
        let mut d = Decoder::new(4096, 1 << 20, 10);
        assert_eq!(d.decode(&[0x82; 11]), Ok(Decoded::TooLarge));
        assert_eq!(
            d.decode(&[0x82; 10]),
            Ok(Decoded::Fields(vec![Field { name: b":method".to_vec(), value: b"GET".to_vec() }; 10]))
        );
    }

    #[test]
    fn an_entry_larger_than_the_table_empties_it() {
        let mut d = Decoder::new(64, 1 << 16, 100);
        d.decode(&hex("4001 61 01 62")).unwrap(); // a: b, 34 bytes
        assert_eq!(d.table_size(), 34);
        let mut big = vec![0x40, 0x01, b'c', 0x20];
        big.extend([b'd'; 32]);
        d.decode(&big).unwrap(); // 65 bytes: larger than the table
        assert_eq!(d.table_size(), 0);
        assert_eq!(d.decode(&[0xbe]), Err(HpackError::BadIndex(62)));
    }

    #[test]
    fn the_huffman_tables_follow_from_the_code_lengths() {
        // RFC 7541 Appendix B: '0' is 00000 (5 bits), 'a' is 00011, EOS is 30 ones; the code is prefix-free.
        let h = &HUFFMAN;
        assert_eq!((h.first[5], h.count[5]), (0, 10));
        assert_eq!(h.symbols[h.offset[5] as usize], u16::from(b'0'));
        assert_eq!(h.symbols[h.offset[5] as usize + 3], u16::from(b'a'));
        assert_eq!(h.first[30] + u32::from(h.count[30]) - 1, (1 << 30) - 1);
        assert_eq!(h.symbols[256], 256, "EOS is the last, longest code");
        assert_eq!(huffman_decode(&hex("f1e3 c2e5 f23a 6ba0 ab90 f4ff")), Ok(b"www.example.com".to_vec()));
    }

    #[test]
    fn what_the_encoder_writes_decodes_back() {
        let mut out = Vec::new();
        write_status(&mut out, 200);
        assert_eq!(out, [0x88]);
        write_status(&mut out, 101);
        write_field(&mut out, b"sec-websocket-protocol", b"chat");
        write_field(&mut out, b"x-long", &[b'v'; 300]);
        let long = String::from_utf8(vec![b'v'; 300]).unwrap();
        let want =
            [(":status", "200"), (":status", "101"), ("sec-websocket-protocol", "chat"), ("x-long", long.as_str())];
        assert_eq!(Decoder::new(4096, 1 << 16, 100).decode(&out), Ok(fields(&want)));
    }
}
