use super::*;
use crate::config::Config;

#[test]
fn long_compressed_message_is_one_stream_across_frames() {
    let cfg = Config::new().max_frame_out(100).limits();
    let mut c = Connection::new(cfg, Instant::now());
    let mut head = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n".to_vec();
    let (_, ev) = c.read(&mut head, Instant::now());
    drop(ev);
    c.accept(None, true, Instant::now()).unwrap();
    let n = c.out().len();
    c.consume_out(n);
    let msg: Vec<u8> = (0..20_000u32).map(|i| (i % 7 + i / 1000) as u8).collect();
    c.send_with(Message::Binary(&msg), &mut DeflatePool::new()).unwrap();
    // Parse the frames back: RSV1 on the first only, continuations after, FIN on the last.
    let out = c.out().to_vec();
    let (mut pos, mut stream, mut frames) = (0, Vec::new(), 0);
    while pos < out.len() {
        let Ok(Status::Complete((h, n))) = decode_header(&out[pos..]) else { panic!("bad frame") };
        assert!(h.len <= 100);
        assert_eq!(h.rsv, if frames == 0 { 0b100 } else { 0 });
        assert_eq!(h.opcode, if frames == 0 { OpCode::Binary } else { OpCode::Continuation });
        pos += n;
        stream.extend_from_slice(&out[pos..pos + h.len as usize]);
        pos += h.len as usize;
        frames += 1;
        assert_eq!(h.fin, pos == out.len());
    }
    assert!(frames > 1);
    let mut inf = Inflater::new(15);
    let mut back = Vec::new();
    inf.inflate(&stream, &mut back, 1 << 20).unwrap();
    inf.finish(&mut back, 1 << 20).unwrap();
    assert_eq!(back, msg);
}
