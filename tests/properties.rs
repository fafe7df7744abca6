//! Property tests of the sans-I/O core (proptest): any split of a stream gives the same events and output as
//! feeding it whole; frame headers round-trip; the UTF-8 validator agrees with `std::str::from_utf8` on any input
//! and any split; a timer kept by `Connection::deadline_to_arm` is never later than the connection's deadline. The fuzz targets (`fuzz/`) check the same things on arbitrary bytes; these generate *valid*
//! streams, which random bytes rarely reach.

use proptest::prelude::*;
use std::time::{Duration, Instant};
use wskit::frame::{decode_header, encode_header, write_client_frame, OpCode, Status};
use wskit::utf8::Utf8Validator;
use wskit::{CloseCode, Config, Connection, Event};

const HEAD: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

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

    /// The shell keeps one timer per connection and asks `deadline_to_arm` after every turn; it skips the
    /// computation while no deadline has started or stopped. Whatever the traffic and its timing (messages cut
    /// across reads and left unfinished, pings, silences that trigger keepalive pings, idle and message timeouts, a
    /// close of ours), the armed timer is never later than `next_deadline`.
    #[test]
    fn the_armed_timer_is_never_later_than_the_deadline(
        frames in proptest::collection::vec(frame_strategy(), 1..10),
        cut in 1usize..30,
        gaps in proptest::collection::vec(0u64..12_000, 1..40),
        close_at in proptest::option::of(0usize..40),
        ping in any::<bool>(),
    ) {
        let ms = Duration::from_millis;
        let cfg = Config::new()
            .timeout(ms(3_000))
            .liveness(Some(ms(30_000)), ping.then_some(ms(8_000)), ms(12_000), Some(ms(200_000)));
        let mut c = Connection::new(cfg.limits(), Instant::now());
        let mut now = Instant::now();
        let mut head = HEAD.to_vec();
        prop_assert!(matches!(c.read(&mut head, now).1, Some(Event::Upgrade(_))));
        c.accept(None, false, now).unwrap();
        let mut armed = c.deadline_to_arm(None);
        let mut stream = encode(&frames, [9, 8, 7, 6]);
        let mut chunks = stream.chunks_mut(cut);
        for (i, gap) in gaps.iter().enumerate() {
            let until = now + ms(*gap);
            // Timers that come due in the gap fire (the shell disarms and asks again after each).
            while let Some(t) = armed.filter(|t| *t <= until && !c.is_finished()) {
                now = now.max(t);
                c.handle_timeout(now);
                let out = c.out().len();
                c.consume_out(out);
                armed = c.deadline_to_arm(None);
            }
            if c.is_finished() {
                break; // the shell drops it
            }
            now = until;
            if close_at == Some(i) {
                let _ = c.close(CloseCode::NORMAL, "", now);
            } else if let Some(chunk) = chunks.next() {
                let mut off = 0;
                while off < chunk.len() {
                    let (used, ev) = c.read(&mut chunk[off..], now);
                    off += used;
                    if used == 0 && ev.is_none() {
                        break;
                    }
                }
            }
            let out = c.out().len();
            c.consume_out(out);
            if let Some(d) = c.deadline_to_arm(armed) {
                armed = Some(d);
            }
            if let Some(d) = c.next_deadline() {
                prop_assert!(armed.is_some_and(|a| a <= d), "armed {:?} after the deadline {:?}", armed, d);
            }
        }
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
