//! Incremental UTF-8 validation (RFC 6455 §8.1) across frames and reads.
//!
//! A text message may be split anywhere, even inside one code point. [`Utf8Validator`] carries the up-to-three
//! bytes of an unfinished code point from one chunk to the next and fails **at the first byte that cannot continue
//! a valid sequence** — before the rest of the message arrives (Autobahn 6.4.x checks this "fail fast").

/// Validates UTF-8 fed in arbitrary chunks.
#[derive(Debug, Default, Clone)]
pub struct Utf8Validator {
    carry: [u8; 4],
    carry_len: u8,
}

/// The text is not UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidUtf8;

/// How many bytes a code point starting with `lead` has; only called on leads that `from_utf8` accepted as the
/// start of an unfinished sequence.
fn width(lead: u8) -> usize {
    match lead {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        _ => 4,
    }
}

impl Utf8Validator {
    /// A validator at the start of a message.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next chunk. Fails as soon as the bytes so far cannot be the start of valid UTF-8.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), InvalidUtf8> {
        if self.carry_len > 0 {
            let have = self.carry_len as usize;
            let need = width(self.carry[0]);
            let take = (need - have).min(data.len());
            self.carry[have..have + take].copy_from_slice(&data[..take]);
            let total = have + take;
            match std::str::from_utf8(&self.carry[..total]) {
                Ok(_) => {
                    self.carry_len = 0;
                    data = &data[take..];
                }
                Err(e) if e.error_len().is_none() => {
                    // Still unfinished, and `data` is used up.
                    self.carry_len = total as u8;
                    return Ok(());
                }
                Err(_) => return Err(InvalidUtf8),
            }
        }
        match std::str::from_utf8(data) {
            Ok(_) => Ok(()),
            Err(e) => match e.error_len() {
                Some(_) => Err(InvalidUtf8),
                None => {
                    let rest = &data[e.valid_up_to()..];
                    self.carry[..rest.len()].copy_from_slice(rest);
                    self.carry_len = rest.len() as u8;
                    Ok(())
                }
            },
        }
    }

    /// The message ended: fails if it ended inside a code point.
    pub fn finish(&mut self) -> Result<(), InvalidUtf8> {
        let unfinished = self.carry_len != 0;
        self.carry_len = 0;
        if unfinished {
            Err(InvalidUtf8)
        } else {
            Ok(())
        }
    }

    /// True while a code point is unfinished.
    pub fn is_mid_sequence(&self) -> bool {
        self.carry_len != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vectors() -> Vec<Vec<u8>> {
        let mut v: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"Hello-\xc2\xb5@\xc3\x9f\xc3\xb6\xc3\xa4\xc3\xbc\xc3\xa0\xc3\xa1-UTF-8!!".to_vec(),
            "κόσμε".as_bytes().to_vec(),
            vec![0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xcf, 0x83, 0xce, 0xbc, 0xce, 0xb5, 0xed, 0xa0, 0x80, 0x65, 0x64],
            vec![0xf4, 0x90, 0x80, 0x80],
            vec![0xf0, 0x9f, 0x98, 0x80, 0xf0, 0x9f],
            vec![0xed, 0x9f, 0xbf],
            vec![0xef, 0xbf, 0xbf],
            vec![0xc0, 0x80],
            vec![0xe0, 0x80, 0xaf],
            vec![0x80],
            vec![0xfe],
            vec![0xf4, 0x8f, 0xbf, 0xbf],
        ];
        // Every 1-, 2- and 3-byte prefix of a 4-byte code point, alone and followed by ASCII.
        for tail in [&b""[..], b"a"] {
            for n in 1..=4 {
                let mut x = vec![0xf0, 0x90, 0x80, 0x80][..n].to_vec();
                x.extend_from_slice(tail);
                v.push(x);
            }
        }
        v
    }

    fn check(data: &[u8], splits: &[usize]) -> Result<(), InvalidUtf8> {
        let mut v = Utf8Validator::new();
        let mut last = 0;
        for &s in splits {
            v.feed(&data[last..s])?;
            last = s;
        }
        v.feed(&data[last..])?;
        v.finish()
    }

    #[test]
    fn agrees_with_std_at_every_split_point_and_byte_by_byte() {
        for data in vectors() {
            let expect = std::str::from_utf8(&data).is_ok();
            assert_eq!(check(&data, &[]).is_ok(), expect, "{data:x?}");
            for a in 0..=data.len() {
                for b in a..=data.len() {
                    assert_eq!(check(&data, &[a, b]).is_ok(), expect, "{data:x?} split {a},{b}");
                }
            }
            let all: Vec<usize> = (1..data.len()).collect();
            assert_eq!(check(&data, &all).is_ok(), expect, "{data:x?} byte by byte");
        }
    }

    #[test]
    fn fails_fast_at_the_first_impossible_byte() {
        // U+D800 (a surrogate) is refused at its second byte, before the message ends.
        let mut v = Utf8Validator::new();
        assert!(v.feed(&[b'a', 0xed]).is_ok());
        assert_eq!(v.feed(&[0xa0]), Err(InvalidUtf8));
        // Beyond U+10FFFF at the second byte.
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(&[0xf4, 0x90]), Err(InvalidUtf8));
        // A valid prefix waits.
        let mut v = Utf8Validator::new();
        assert!(v.feed(&[0xf0, 0x9f]).is_ok());
        assert!(v.is_mid_sequence());
        assert!(v.feed(&[0x98]).is_ok());
        assert!(v.feed(&[0x80]).is_ok());
        assert!(!v.is_mid_sequence());
        assert!(v.finish().is_ok());
    }
}
