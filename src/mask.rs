//! Masking (RFC 6455 §5.3): every client-to-server payload byte is XORed with one byte of a 4-byte key.
//!
//! Three implementations live here: [`apply_mask_bytewise`], the one-line definition straight from the RFC;
//! [`apply_mask_portable`], which XORs eight bytes at a time with a 64-bit word (safe code; the compiler vectorises
//! the loop with the baseline's 16-byte registers); and [`apply_mask`], which the codec calls: on x86-64 CPUs with
//! AVX-512F it takes 64 bytes a step, with AVX2 32, for payloads of [`WIDE_MIN`] bytes or more; else it is the
//! portable one. Tests check that every path this CPU can run agrees with the RFC's definition at every length and
//! every starting offset. Unmasking happens **in place**, in the buffer the bytes were read into, so a payload is
//! never copied just to be unmasked.
//!
//! The wide paths are the crate's `unsafe` blocks (calling a function compiled for a CPU feature after checking
//! that the CPU has it). They pay: `cargo bench --bench core -- unmask` here (AMD EPYC, 2026-11-29) gives 16 KiB in
//! 85 ns with AVX2 against 250 ns for the portable loop (the portable loop measured 200 ns in another build: code
//! layout moves it), 1 KiB in 8.8 against 15.5 ns, 1 MiB in 9.4 against 15.6 µs. AVX-512, measured against AVX2 in
//! builds alternated twice (same day, Zen 5): 16 KiB 116 → 87 ns, 1 KiB 6.7 → 5.5 ns, 1 MiB 9.6 → 8.3 µs. At
//! 16 KiB unmasking is 2–3 % of the server's whole CPU time per echoed message (~7 µs, kernel included).

/// Payloads from this length on take a wide path where the CPU has one (below it, the feature check and the
/// wider tail cost more than they save: 20 B takes 1.7 ns either way).
pub const WIDE_MIN: usize = 128;

/// The reference: byte `i` of the payload is XORed with `mask[(offset + i) % 4]`.
///
/// `offset` is how many payload bytes of this frame were unmasked before `buf` (a frame's payload can arrive in
/// several reads).
pub fn apply_mask_bytewise(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= mask[(offset + i) & 3];
    }
}

/// The key as a little-endian word, rotated so that byte 0 of the slice uses key byte 0 (one rotate instead of four
/// byte loads and shifts).
#[inline]
fn rotate(mask: [u8; 4], offset: usize) -> u32 {
    u32::from_le_bytes(mask).rotate_right(8 * (offset & 3) as u32)
}

/// Masking as [`apply_mask_bytewise`] does it, as fast as the CPU allows (see the module doc).
#[inline(always)]
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    let k = rotate(mask, offset);
    if buf.len() < WIDE_MIN {
        // (Short payloads, most messages: the word loop in place, no call.)
        return xor_words(buf, k);
    }
    apply_mask_long(buf, k);
}

/// [`apply_mask`] from [`WIDE_MIN`] bytes on, with the key rotated already.
#[inline(never)]
fn apply_mask_long(buf: &mut [u8], k: u32) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        #[allow(unsafe_code)]
        // SAFETY: `xor_avx512` is safe code compiled with AVX-512F enabled; its one requirement is a CPU that has
        // AVX-512F, checked just above (std caches the answer, so the check is a load and a bit test).
        unsafe {
            xor_avx512(buf, k)
        };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        #[allow(unsafe_code)]
        // SAFETY: `xor_avx2` is safe code compiled with AVX2 enabled; its one requirement is a CPU that has AVX2,
        // checked just above (std caches the answer, so the check is a load and a bit test).
        unsafe {
            xor_avx2(buf, k)
        };
        return;
    }
    xor_words(buf, k);
}

/// Word-wide masking in portable safe code, equal in effect to [`apply_mask_bytewise`].
pub fn apply_mask_portable(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    xor_words(buf, rotate(mask, offset));
}

/// XORs `buf` with the already-rotated key (little-endian), eight bytes at a time, then four, then bytewise.
/// Inlined, so that inside [`xor_avx2`] the same loop is compiled for AVX2.
#[inline]
fn xor_words(buf: &mut [u8], k: u32) {
    let word = u64::from(k) | u64::from(k) << 32;
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_le_bytes(bytes) ^ word).to_le_bytes());
    }
    // 8 and 4 are multiples of 4, so each tail starts on key byte 0 again.
    let mut tail = chunks.into_remainder();
    if tail.len() >= 4 {
        let (four, rest) = tail.split_at_mut(4);
        let mut bytes = [0u8; 4];
        bytes.copy_from_slice(four);
        four.copy_from_slice(&(u32::from_le_bytes(bytes) ^ k).to_le_bytes());
        tail = rest;
    }
    let key = k.to_le_bytes();
    for (b, m) in tail.iter_mut().zip(key) {
        *b ^= m;
    }
}

/// [`xor_words`] compiled for AVX2: the compiler vectorises its loop with 256-bit registers, 32 bytes a step.
/// (Its own loop rather than a 32-byte one written here: as fast optimised, and not 2.4× slower than the portable
/// loop in unoptimised test builds, where a byte-by-byte 32-byte loop slowed the soak test's echoes tenfold.)
///
/// # Safety
/// The CPU must support AVX2. The body is safe code.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "avx2")]
unsafe fn xor_avx2(buf: &mut [u8], k: u32) {
    xor_words(buf, k);
}

/// [`xor_words`] compiled for AVX-512F: 64 bytes a step.
///
/// # Safety
/// The CPU must support AVX-512F. The body is safe code.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "avx512f")]
unsafe fn xor_avx512(buf: &mut [u8], k: u32) {
    xor_words(buf, k);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masking path by name, taking the rotated key.
    type Path = (&'static str, fn(&mut [u8], u32));

    /// The wide paths this CPU can run, each called directly (the dispatcher takes only the widest).
    fn wide_paths() -> Vec<Path> {
        #[allow(unused_mut)]
        let mut paths: Vec<Path> = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") {
                #[allow(unsafe_code)]
                // SAFETY: the CPU has AVX2, checked just above.
                paths.push(("avx2", |b, k| unsafe { xor_avx2(b, k) }));
            }
            if std::is_x86_feature_detected!("avx512f") {
                #[allow(unsafe_code)]
                // SAFETY: the CPU has AVX-512F, checked just above.
                paths.push(("avx512", |b, k| unsafe { xor_avx512(b, k) }));
            }
        }
        paths
    }

    /// Every path (the dispatcher, the portable loop, and each wide path this CPU has, called directly) against the
    /// RFC's definition.
    #[test]
    fn every_path_equals_bytewise_at_every_length_and_offset() {
        let wide = wide_paths();
        eprintln!("wide paths on this CPU: {:?}", wide.iter().map(|p| p.0).collect::<Vec<_>>());
        let mask = [0x6d, 0xb6, 0xb2, 0x80];
        let lens = (0..=300).chain([511, 512, 513, 4095, 16 * 1024 + 3, 70_001]);
        for len in lens {
            for offset in 0..8 {
                for start in 0..8 {
                    // `start` shifts the slice inside its allocation, so alignment varies too.
                    let data: Vec<u8> = (0..len + start).map(|i| (i * 31 + 7) as u8).collect();
                    let mut want = data.clone();
                    apply_mask_bytewise(&mut want[start..], mask, offset);
                    let mut fast = data.clone();
                    apply_mask(&mut fast[start..], mask, offset);
                    assert!(fast == want, "apply_mask: len {len} offset {offset} start {start}");
                    let mut portable = data.clone();
                    apply_mask_portable(&mut portable[start..], mask, offset);
                    assert!(portable == want, "apply_mask_portable: len {len} offset {offset} start {start}");
                    for (name, path) in &wide {
                        let mut got = data.clone();
                        path(&mut got[start..], rotate(mask, offset));
                        assert!(got == want, "{name}: len {len} offset {offset} start {start}");
                    }
                }
            }
        }
    }

    #[test]
    fn masking_twice_restores_and_split_masking_equals_one_shot() {
        let mask = [1, 2, 3, 4];
        let orig: Vec<u8> = (0..100u8).collect();
        let mut once = orig.clone();
        apply_mask(&mut once, mask, 0);
        assert_ne!(once, orig);
        for split in 0..=orig.len() {
            let mut parts = orig.clone();
            let (a, b) = parts.split_at_mut(split);
            apply_mask(a, mask, 0);
            apply_mask(b, mask, split);
            assert_eq!(parts, once, "split {split}");
        }
        apply_mask(&mut once, mask, 0);
        assert_eq!(once, orig);
    }

    #[test]
    fn rfc_example() {
        // RFC 6455 §5.7: a masked "Hello".
        let mut payload = [0x7f, 0x9f, 0x4d, 0x51, 0x58];
        apply_mask(&mut payload, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(&payload, b"Hello");
    }
}
