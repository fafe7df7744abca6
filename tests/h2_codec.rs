//! The HTTP/2 codec against a real peer's: field blocks from Python's `hpack` (the `h2` library's encoder) decode
//! to the header lists it encoded, block after block on one connection, Huffman or not, its table resized.

mod common;
use common::*;
use wskit::h2::hpack::{Decoded, Decoder};

/// Bytes from the hex the Python scripts print.
fn from_hex(hex: &str) -> Vec<u8> {
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
}

#[test]
fn blocks_from_python_hpack_decode_to_what_it_encoded() {
    if skip_external("python h2") {
        return;
    }
    let script = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/hpack_blocks.py")).unwrap();
    let mut blocks = 0;
    for seed in ["1", "2", "3"] {
        let out = run_python(&script, &[seed, "300"]);
        // One connection: one decoder for the whole sequence.
        let mut d = Decoder::new(4096, 1 << 20, 1000);
        for line in out.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let block = from_hex(v["block"].as_str().unwrap());
            let want: Vec<(String, String)> = v["fields"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| (f[0].as_str().unwrap().to_string(), f[1].as_str().unwrap().to_string()))
                .collect();
            let Ok(Decoded::Fields(got)) = d.decode(&block) else { panic!("seed {seed}: {line}") };
            let got: Vec<(String, String)> = got
                .into_iter()
                .map(|f| (String::from_utf8(f.name).unwrap(), String::from_utf8(f.value).unwrap()))
                .collect();
            assert_eq!(got, want, "seed {seed}, block {blocks}");
            blocks += 1;
        }
    }
    assert_eq!(blocks, 900);
}

/// Python's `h2` client against wskit's HTTP/2 core, byte for byte through pipes (both sans-I/O): an extended
/// CONNECT whose 76,800 bytes of DATA come back through the flow-control windows, then a plain GET.
#[test]
fn python_h2_client_opens_an_extended_connect_and_gets_its_data_back() {
    use std::io::{BufRead, BufReader, Write};
    use wskit::h2::conn::{Event, H2Conn, Limits};
    if skip_external("python h2") {
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/h2_client.py");
    let mut child = std::process::Command::new(python())
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut to_py = child.stdin.take().unwrap();
    let mut from_py = BufReader::new(child.stdout.take().unwrap());
    let mut c = H2Conn::new(Limits::default());
    let mut log: Vec<String> = Vec::new();
    // What each stream still has to send: its bytes, and whether they end it.
    let mut pending: Vec<(u32, Vec<u8>, bool)> = Vec::new();
    let now = std::time::Instant::now();
    for _round in 0..200 {
        let mut line = String::new();
        assert!(from_py.read_line(&mut line).unwrap() > 0, "the client ended early; log so far: {log:?}");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        log.extend(v["log"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()));
        if v["done"].as_bool().unwrap() {
            break;
        }
        let bytes = from_hex(v["send"].as_str().unwrap());
        c.receive(&bytes, now).unwrap();
        while let Some(ev) = c.poll_event() {
            match ev {
                Event::Request { stream, head, .. } if head.protocol.as_deref() == Some("websocket") => {
                    assert_eq!((head.method.as_str(), head.path.as_deref()), ("CONNECT", Some("/chat")));
                    c.respond(stream, 200, &[], false);
                }
                Event::Request { stream, .. } => {
                    c.respond(stream, 200, &[("content-type", "text/plain")], false);
                    pending.push((stream, b"hello over h2".to_vec(), true));
                }
                // The echo: what came back goes out as the windows allow, released once sent.
                Event::Data { stream, data, end_stream } => {
                    c.release(stream, data.len());
                    pending.push((stream, data, end_stream));
                }
                Event::Writable { .. } | Event::Reset { .. } | Event::GoAway { .. } => {}
            }
        }
        for (stream, data, end) in pending.iter_mut() {
            let n = c.send_data(*stream, data, *end, now);
            data.drain(..n);
        }
        pending.retain(|(_, d, _)| !d.is_empty());
        writeln!(to_py, "{}", c.out().iter().map(|b| format!("{b:02x}")).collect::<String>()).unwrap();
        c.consume_out(c.out().len());
    }
    let _ = child.wait();
    for want in ["response 1 200", "echo ok", "response 3 200", "body hello over h2", "ended 3"] {
        assert!(log.iter().any(|l| l == want), "{want:?} missing from the client's log: {log:?}");
    }
}
