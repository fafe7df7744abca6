//! The HTTP/2 codec against a real peer's: field blocks from Python's `hpack` (the `h2` library's encoder) decode
//! to the header lists it encoded, block after block on one connection, Huffman or not, its table resized.

mod common;
use common::*;
use wskit::h2::hpack::{Decoded, Decoder};

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
            let hex = v["block"].as_str().unwrap();
            let block: Vec<u8> =
                (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
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
