//! Texts the harness compresses: JSON-like chat lines, and the same lines joined into 64 KiB pages.

/// The seed `deflate_curve` starts from (its chat workload's lines, which the pages join).
pub const SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// A small deterministic generator (xorshift64*), so every run compresses the same bytes.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn bits(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.bits() % n
    }
}

const WORDS: &[&str] = &[
    "the", "of", "and", "to", "in", "is", "you", "that", "it", "he", "was", "for", "on", "are", "as", "with", "his",
    "they", "at", "be", "this", "have", "from", "or", "one", "had", "by", "word", "but", "not", "what", "all", "were",
    "we", "when", "your", "can", "said", "there", "use", "an", "each", "which", "she", "do", "how", "their", "if",
    "will", "up", "other", "about", "out", "many", "then", "them", "these", "so", "some", "her", "would", "make",
    "like", "him", "into", "time", "has", "look", "two", "more", "write", "go", "see", "number", "no", "way", "could",
    "people", "my", "than", "first", "water", "been", "call", "who", "oil", "its", "now", "find", "long", "down",
    "day", "did", "get", "come", "made", "may", "part", "meeting", "deploy", "server", "tonight", "lunch", "release",
    "latency", "graph", "thanks", "agreed", "tomorrow", "weekend", "coffee", "review", "merge", "ticket",
];
const USERS: &[&str] = &["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy"];
const ROOMS: &[&str] = &["lobby", "dev", "ops", "random"];

/// 2,000 chat messages as a chat server relays them: JSON, 80–600 bytes, words from a small vocabulary.
pub fn chat(rng: &mut Rng) -> Vec<Vec<u8>> {
    let mut ts = 1_764_800_000_000u64;
    (0..2000)
        .map(|i| {
            let mut text = String::new();
            for _ in 0..3 + rng.below(60) {
                text += WORDS[rng.below(WORDS.len() as u64) as usize];
                text.push(' ');
            }
            ts += rng.below(5000);
            let (user, room) = (USERS[rng.below(10) as usize], ROOMS[rng.below(4) as usize]);
            format!(
                r#"{{"type":"message","id":{i},"room":"{room}","user":"{user}","ts":{ts},"text":"{}"}}"#,
                text.trim_end()
            )
            .into_bytes()
        })
        .collect()
}

/// The chat lines of [`SEED`] joined into messages of 64 KiB (a history page, a batch): long text with repeats,
/// `deflate_curve`'s "chat pages" and `load --text pages`.
pub fn chat_pages() -> Vec<Vec<u8>> {
    let lines = chat(&mut Rng(SEED));
    let mut pages = vec![Vec::new()];
    for l in lines.iter().cycle().take(6000) {
        let page = pages.last_mut().expect("one page at least");
        page.extend_from_slice(l);
        page.push(b'\n');
        if page.len() >= 64 * 1024 {
            page.truncate(64 * 1024);
            pages.push(Vec::new());
        }
    }
    pages.pop();
    pages
}
