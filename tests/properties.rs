//! Property tests of the sans-I/O core (proptest): any split of a stream gives the same events and output as
//! feeding it whole; frame headers round-trip; the UTF-8 validator agrees with `std::str::from_utf8` on any input
//! and any split. The fuzz targets (`fuzz/`) check the same things on arbitrary bytes; these generate *valid*
//! streams, which random bytes rarely reach.

use proptest::prelude::*;
use wskit::frame::{decode_header, encode_header, write_client_frame, OpCode, Status};
use wskit::utf8::Utf8Validator;

/// One client frame of a valid session.
#[derive(Debug, Clone)]
enum F {
    Text(String),
    Binary(Vec<u8>),
    Fragmented(String, usize),
    Ping(Vec<u8>),
}

fn frame_strategy() -> impl Strategy<Value = F> {
    prop_oneof![
        ".{0,40}".prop_map(F::Text),
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(F::Binary),
        (".{1,40}", 1usize..8).prop_map(|(s, n)| F::Fragmented(s, n)),
        proptest::collection::vec(any::<u8>(), 0..125).prop_map(F::Ping),
    ]
}

fn encode(frames: &[F], mask: [u8; 4]) -> Vec<u8> {
    let mut v = Vec::new();
    for f in frames {
        match f {
            F::Text(t) => write_client_frame(&mut v, true, 0, OpCode::Text, mask, t.as_bytes()),
            F::Binary(b) => write_client_frame(&mut v, true, 0, OpCode::Binary, mask, b),
            F::Ping(p) => write_client_frame(&mut v, true, 0, OpCode::Ping, mask, p),
            F::Fragmented(t, n) => {
                // Cut at byte positions (possibly inside a character): the message is whole only at the end.
                let b = t.as_bytes();
                let step = b.len().div_ceil(*n).max(1);
                let chunks: Vec<&[u8]> = b.chunks(step).collect();
                for (i, c) in chunks.iter().enumerate() {
                    let op = if i == 0 { OpCode::Text } else { OpCode::Continuation };
                    write_client_frame(&mut v, i + 1 == chunks.len(), 0, op, mask, c);
                }
            }
        }
    }
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_split_of_a_valid_stream_gives_the_same_events(
        frames in proptest::collection::vec(frame_strategy(), 1..12),
        mask in any::<[u8; 4]>(),
        step in 1usize..40,
        deflate in any::<bool>(),
    ) {
        let mut data = vec![u8::from(deflate), step as u8 - 1];
        data.extend(encode(&frames, mask));
        // The same differential check the fuzz target runs (whole vs split, events and output).
        wskit::fuzzing::connection(&data);
    }

    #[test]
    fn frame_headers_round_trip(
        fin in any::<bool>(), rsv in 0u8..8, op in prop_oneof![Just(OpCode::Text), Just(OpCode::Binary),
            Just(OpCode::Continuation), Just(OpCode::Ping), Just(OpCode::Pong), Just(OpCode::Close)],
        mask in proptest::option::of(any::<[u8; 4]>()), len in prop_oneof![0u64..126, 126u64..65536, 65536u64..(1 << 40)],
    ) {
        let len = if op.is_control() { len % 126 } else { len };
        let fin = fin || op.is_control();
        let mut out = [0u8; 14];
        let n = encode_header(fin, rsv, op, mask, len, &mut out);
        match decode_header(&out[..n]) {
            Ok(Status::Complete((h, m))) => {
                prop_assert_eq!(m, n);
                prop_assert_eq!((h.fin, h.rsv, h.opcode, h.mask, h.len), (fin, rsv, op, mask, len));
            }
            other => prop_assert!(false, "{:?}", other),
        }
        // Every strict prefix is Partial.
        for k in 0..n {
            prop_assert!(matches!(decode_header(&out[..k]), Ok(Status::Partial)));
        }
    }

    #[test]
    fn utf8_validator_agrees_with_std_at_any_split(
        bytes in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64),
            ".{0,20}".prop_map(String::into_bytes),
        ],
        cuts in proptest::collection::vec(0usize..64, 0..4),
    ) {
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
        cuts.sort_unstable();
        let mut v = Utf8Validator::new();
        let mut last = 0;
        let mut ok = true;
        for c in cuts.into_iter().chain(std::iter::once(bytes.len())) {
            ok &= v.feed(&bytes[last..c]).is_ok();
            last = c;
        }
        ok &= v.finish().is_ok();
        prop_assert_eq!(ok, std::str::from_utf8(&bytes).is_ok());
    }
}
