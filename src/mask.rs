//! Masking (RFC 6455 §5.3): every client-to-server payload byte is XORed with one byte of a 4-byte key.
//!
//! Two implementations live here: [`apply_mask_bytewise`], the one-line definition straight from the RFC, and
//! [`apply_mask`], which XORs eight bytes at a time with a 64-bit word (safe code; the compiler vectorises the loop).
//! A test checks that both agree at every length and every starting offset. Unmasking happens **in place**, in the
//! buffer the bytes were read into, so a payload is never copied just to be unmasked.

/// The reference: byte `i` of the payload is XORed with `mask[(offset + i) % 4]`.
///
/// `offset` is how many payload bytes of this frame were unmasked before `buf` (a frame's payload can arrive in
/// several reads).
pub fn apply_mask_bytewise(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= mask[(offset + i) & 3];
    }
}

/// Word-wide masking, equal in effect to [`apply_mask_bytewise`].
#[inline]
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    // Rotate the key so that byte 0 of `buf` uses key byte 0 of `m`.
    let m = [mask[offset & 3], mask[(offset + 1) & 3], mask[(offset + 2) & 3], mask[(offset + 3) & 3]];
    let word = u64::from_ne_bytes([m[0], m[1], m[2], m[3], m[0], m[1], m[2], m[3]]);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ word).to_ne_bytes());
    }
    // 8 is a multiple of 4, so the tail starts on key byte 0 again.
    apply_mask_bytewise(chunks.into_remainder(), m, 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_wide_equals_bytewise_at_every_length_and_offset() {
        let mask = [0x6d, 0xb6, 0xb2, 0x80];
        for len in 0..=300 {
            for offset in 0..8 {
                for start in 0..8 {
                    // `start` shifts the slice inside its allocation, so alignment varies too.
                    let data: Vec<u8> = (0..len + start).map(|i| (i * 31 + 7) as u8).collect();
                    let mut a = data.clone();
                    let mut b = data.clone();
                    apply_mask(&mut a[start..], mask, offset);
                    apply_mask_bytewise(&mut b[start..], mask, offset);
                    assert_eq!(a, b, "len {len} offset {offset} start {start}");
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
