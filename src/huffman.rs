//! Dynamic Huffman codes for the small-window compressor ([`crate::lz`]): code lengths from symbol counts, no
//! code longer than deflate allows (15 bits; 7 for the code-length code), canonical codes (RFC 1951 §3.2.2), and
//! the header of a dynamic block that sends them (§3.2.7).

/// The order in which the code-length code's lengths are sent (§3.2.7).
const ORDER: [usize; 19] = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15];

/// Reverses the low `n` bits of `v`: Huffman codes are defined most significant bit first, and deflate's bit
/// stream is filled from the least significant bit.
pub(crate) const fn reversed(v: u32, n: u32) -> u32 {
    if n == 0 {
        0
    } else {
        v.reverse_bits() >> (32 - n)
    }
}

/// Code lengths for the symbol counts `freq` (at most 288 symbols) into `lens`, none longer than `limit`. At least
/// two symbols get a code, used or not: inflaters want a complete code, or a single one-bit code for distances
/// only (zlib's deflate gives two as well).
pub(crate) fn lengths(freq: &[u32], limit: u8, lens: &mut [u8]) {
    lens.fill(0);
    // The leaves, fewest first (ties by symbol, so the result does not depend on the sort).
    let mut leaves = [(0u32, 0u16); 288];
    let mut m = 0;
    for (s, &f) in freq.iter().enumerate() {
        if f > 0 {
            leaves[m] = (f, s as u16);
            m += 1;
        }
    }
    for (s, _) in freq.iter().enumerate().filter(|(_, &f)| f == 0) {
        if m >= 2 {
            break;
        }
        leaves[m] = (1, s as u16);
        m += 1;
    }
    let leaves = &mut leaves[..m];
    leaves.sort_unstable();
    let depth = tree_depths(leaves);
    // Lengths past the limit are cut to it, then codes are lengthened until the code is complete again (Kraft's
    // sum exactly 1): each step takes one code off the longest length and moves one shorter code a step down,
    // where it and the one taken become two.
    let mut count = [0u32; 16];
    for &d in &depth[..m] {
        count[d.min(u16::from(limit)) as usize] += 1;
    }
    let full = 1u32 << limit;
    let mut kraft: u32 = (1..=limit as usize).map(|l| count[l] << (limit as usize - l)).sum();
    while kraft > full {
        count[limit as usize] -= 1;
        let l = (1..limit as usize).rev().find(|&l| count[l] > 0).unwrap_or(1);
        count[l] -= 1;
        count[l + 1] += 2;
        kraft -= 1;
    }
    // The longest codes to the rarest symbols.
    let mut next = 0;
    for l in (1..=limit as usize).rev() {
        for _ in 0..count[l] {
            lens[leaves[next].1 as usize] = l as u8;
            next += 1;
        }
    }
}

/// The depth in an optimal (unlimited) Huffman tree of each of `leaves` (sorted by count, at least two), built
/// with two queues: the leaves in order, and the inner nodes in the order they are made (which is by weight).
fn tree_depths(leaves: &[(u32, u16)]) -> [u16; 288] {
    let m = leaves.len();
    let (mut weight, mut parent, mut leaf_parent) = ([0u32; 287], [0u16; 287], [0u16; 288]);
    let (mut next_leaf, mut next_node) = (0, 0);
    for k in 0..m - 1 {
        let mut w = 0;
        for _ in 0..2 {
            let leaf_first = next_leaf < m && (next_node >= k || leaves[next_leaf].0 <= weight[next_node]);
            if leaf_first {
                w += leaves[next_leaf].0;
                leaf_parent[next_leaf] = k as u16;
                next_leaf += 1;
            } else {
                w += weight[next_node];
                parent[next_node] = k as u16;
                next_node += 1;
            }
        }
        weight[k] = w;
    }
    // The root is the last node made; a node's depth is its parent's plus one, and parents come later.
    let mut node_depth = [0u16; 287];
    for k in (0..m.saturating_sub(2)).rev() {
        node_depth[k] = node_depth[parent[k] as usize] + 1;
    }
    let mut depth = [0u16; 288];
    for i in 0..m {
        depth[i] = node_depth[leaf_parent[i] as usize] + 1;
    }
    depth
}

/// Each symbol's canonical code (§3.2.2) for `lens`, bit-reversed for the stream, with its length: code in the
/// low 16 bits, length above (the form of the fixed code table in [`crate::lz`]).
pub(crate) fn codes(lens: &[u8], table: &mut [u32]) {
    let mut count = [0u32; 16];
    for &l in lens {
        count[l as usize] += 1;
    }
    count[0] = 0;
    let mut next = [0u32; 16];
    for l in 1..16 {
        next[l] = (next[l - 1] + count[l - 1]) << 1;
    }
    for (s, &l) in lens.iter().enumerate() {
        if l > 0 {
            table[s] = reversed(next[l as usize], l as u32) | (u32::from(l) << 16);
            next[l as usize] += 1;
        } else {
            table[s] = 0;
        }
    }
}

/// A dynamic block's header: how many literal/length and distance lengths are sent, and those lengths
/// run-length coded (§3.2.7) with their own code.
pub(crate) struct Header {
    hlit: usize,
    hdist: usize,
    hclen: usize,
    cl_lens: [u8; 19],
    cl_table: [u32; 19],
    /// Code-length symbols (0–18) with their extra bits' value in the high byte.
    runs: [u16; 316],
    n_runs: usize,
}

impl Header {
    /// The header for these code lengths (286 literal/length, 30 distance).
    pub(crate) fn new(lit: &[u8; 286], dist: &[u8; 30]) -> Header {
        let hlit = 257.max(lit.iter().rposition(|&l| l > 0).map_or(0, |p| p + 1));
        let hdist = 1.max(dist.iter().rposition(|&l| l > 0).map_or(0, |p| p + 1));
        let mut all = [0u8; 316];
        all[..hlit].copy_from_slice(&lit[..hlit]);
        all[hlit..hlit + hdist].copy_from_slice(&dist[..hdist]);
        let mut h = Header { hlit, hdist, hclen: 4, cl_lens: [0; 19], cl_table: [0; 19], runs: [0; 316], n_runs: 0 };
        h.run_length(&all[..hlit + hdist]);
        let mut freq = [0u32; 19];
        for &r in &h.runs[..h.n_runs] {
            freq[(r & 0xff) as usize] += 1;
        }
        lengths(&freq, 7, &mut h.cl_lens);
        codes(&h.cl_lens, &mut h.cl_table);
        h.hclen = 4.max(ORDER.iter().rposition(|&s| h.cl_lens[s] > 0).map_or(0, |p| p + 1));
        h
    }

    /// `all` as code-length symbols: 16 repeats the last length 3–6 times, 17 and 18 give 3–10 and 11–138 zeros.
    fn run_length(&mut self, all: &[u8]) {
        let mut k = 0;
        while k < all.len() {
            let l = all[k];
            let run = all[k..].iter().take_while(|&&x| x == l).count();
            k += run;
            let mut left = run;
            if l == 0 {
                while left >= 11 {
                    let n = left.min(138);
                    self.push(18, n - 11);
                    left -= n;
                }
                if left >= 3 {
                    self.push(17, left - 3);
                    left = 0;
                }
            } else if left >= 4 {
                self.push(l, 0);
                left -= 1;
                while left >= 3 {
                    let n = left.min(6);
                    self.push(16, n - 3);
                    left -= n;
                }
            }
            for _ in 0..left {
                self.push(l, 0);
            }
        }
    }

    fn push(&mut self, sym: u8, extra: usize) {
        self.runs[self.n_runs] = u16::from(sym) | ((extra as u16) << 8);
        self.n_runs += 1;
    }

    /// Extra bits after code-length symbol `sym`.
    fn extra_bits(sym: usize) -> u32 {
        match sym {
            16 => 2,
            17 => 3,
            18 => 7,
            _ => 0,
        }
    }

    /// The header's size in bits (after the block's three).
    pub(crate) fn bits(&self) -> u64 {
        let runs: u64 = self.runs[..self.n_runs]
            .iter()
            .map(|&r| {
                let s = (r & 0xff) as usize;
                u64::from(self.cl_lens[s]) + u64::from(Self::extra_bits(s))
            })
            .sum();
        14 + 3 * self.hclen as u64 + runs
    }

    /// Writes the header through `put(value, bits)`.
    pub(crate) fn write(&self, mut put: impl FnMut(u32, u32)) {
        put((self.hlit - 257) as u32, 5);
        put((self.hdist - 1) as u32, 5);
        put((self.hclen - 4) as u32, 4);
        for &s in &ORDER[..self.hclen] {
            put(u32::from(self.cl_lens[s]), 3);
        }
        for &r in &self.runs[..self.n_runs] {
            let s = (r & 0xff) as usize;
            let c = self.cl_table[s];
            put(c & 0xffff, c >> 16);
            let extra = Self::extra_bits(s);
            if extra > 0 {
                put(u32::from(r >> 8), extra);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kraft's sum of `lens`, in units of 2^-15.
    fn kraft(lens: &[u8]) -> u32 {
        lens.iter().filter(|&&l| l > 0).map(|&l| 1u32 << (15 - l)).sum()
    }

    #[test]
    fn lengths_make_a_complete_code_within_the_limit() {
        // Counts that would give an unlimited tree 39 levels (Fibonacci), flat ones, one symbol, none.
        let mut fib = [0u32; 40];
        (fib[0], fib[1]) = (1, 1);
        for i in 2..40 {
            fib[i] = fib[i - 1] + fib[i - 2];
        }
        let cases: [&[u32]; 5] = [&fib, &[5; 286], &[0, 0, 9, 0], &[0; 30], &[1, 1000, 1, 1, 0, 3]];
        for (n, freq) in cases.iter().enumerate() {
            for limit in [7u8, 15] {
                if freq.len() > 1 << limit {
                    continue; // (no complete code of 286 symbols in 7 bits: the code-length code has 19)
                }
                let mut lens = vec![0u8; freq.len()];
                lengths(freq, limit, &mut lens);
                assert!(lens.iter().all(|&l| l <= limit), "case {n}: {lens:?}");
                assert_eq!(kraft(&lens), 1 << 15, "case {n} limit {limit}: a complete code: {lens:?}");
                for (s, &f) in freq.iter().enumerate() {
                    assert!(f == 0 || lens[s] > 0, "case {n}: a used symbol without a code");
                }
            }
        }
        // Unlimited where the limit allows: the classic example.
        let mut lens = [0u8; 6];
        lengths(&[45, 13, 12, 16, 9, 5], 15, &mut lens);
        assert_eq!(lens, [1, 3, 3, 3, 4, 4]);
    }

    #[test]
    fn canonical_codes_follow_the_rfc_example() {
        // RFC 1951 §3.2.2: lengths (3, 3, 3, 3, 3, 2, 4, 4) give F=00, A=010 … H=1111.
        let mut table = [0u32; 8];
        codes(&[3, 3, 3, 3, 3, 2, 4, 4], &mut table);
        let plain: Vec<(u32, u32)> = table.iter().map(|&c| (reversed(c & 0xffff, c >> 16), c >> 16)).collect();
        assert_eq!(plain, [(2, 3), (3, 3), (4, 3), (5, 3), (6, 3), (0, 2), (14, 4), (15, 4)]);
    }
}
