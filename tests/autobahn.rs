//! Autobahn|Testsuite (the fuzzingclient cases, run by `../shared/autobahn/run.sh`) against an in-process echo
//! server, compared with the committed verdicts in `tests/autobahn/expected-results.json` (tungstenite's habit):
//! any changed verdict fails, whether a regression or an improvement that needs the golden file updated.
//!
//! To update the golden file after a reviewed change: `WSKIT_AUTOBAHN_BLESS=1 cargo test --test autobahn`.
//! The golden file is for the default features (deflate on); without them the 216 deflate cases differ.
#![cfg(feature = "deflate")]

mod common;
use common::*;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use wskit::Config;

fn verdicts(index: &Value) -> BTreeMap<String, String> {
    let agents = index.as_object().expect("index.json is an object");
    assert_eq!(agents.len(), 1, "one agent");
    let cases = agents.values().next().unwrap().as_object().unwrap();
    cases
        .iter()
        .map(|(id, c)| {
            (id.clone(), format!("{} / {}", c["behavior"].as_str().unwrap(), c["behaviorClose"].as_str().unwrap()))
        })
        .collect()
}

fn case_key(id: &str) -> Vec<u32> {
    id.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

fn echo_config() -> Config {
    Config::new().max_payload_size(64 << 20).max_message_size(64 << 20).max_frames_per_message(usize::MAX)
}

#[test]
fn autobahn_fuzzingclient_matches_the_golden_file() {
    if skip_external("Autobahn") {
        return;
    }
    let server = TestServer::echo(echo_config());
    run_and_compare(autobahn(), server.addr, "autobahn", "expected-results.json", &[]);
}

/// Over wss through the shared runner's TLS relay (socat). The relay reads at most 8 KiB of plaintext at a time and
/// writes the rest of a larger echo after Nagle's delay, so cases whose echoes exceed 8 KiB (12.x/13.x .9, .10,
/// .14-.18, and 12.2-12.5's larger ones) take ~44 ms per message there; CI runs the rest. The full wss run and
/// its figures are in docs/conformance.md.
#[cfg(feature = "tls")]
#[test]
fn autobahn_over_wss_matches_the_golden_file() {
    if skip_external("Autobahn") {
        return;
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("autobahn-wss-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = std::process::Command::new("openssl")
        .current_dir(&dir)
        .args(["req", "-x509", "-newkey", "rsa:2048", "-days", "2", "-subj", "/CN=localhost", "-nodes"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", "key.pem", "-out", "cert.pem"])
        .output()
        .expect("openssl");
    assert!(out.status.success());
    let mut both = std::fs::read(dir.join("key.pem")).unwrap();
    both.extend(std::fs::read(dir.join("cert.pem")).unwrap());
    std::fs::write(dir.join("both.pem"), both).unwrap();
    let server = TestServer::echo(echo_config().tls_pem(dir.join("both.pem"), None));
    let runner = autobahn().with_file_name("run-wss.sh");
    let mut skip: Vec<String> = vec!["9.*".into(), "11.*".into()];
    for s in ["12", "13"] {
        for i in ["9", "10", "14", "15", "16", "17", "18"] {
            skip.push(format!("{s}.*.{i}"));
        }
    }
    let args: Vec<&str> = skip.iter().flat_map(|s| ["-x", s.as_str()]).collect();
    run_and_compare(runner, server.addr, "autobahn-wss", "expected-results-wss.json", &args);
}

/// The permessage-deflate cases (12.*, 13.*) against a server that keeps its compression context in wskit's own
/// small-window compressor (`src/lz.rs`, a 1 KiB window, or the client's smaller one): every stream it writes is
/// read by Autobahn's inflater, whatever the window and context parameters the case offers.
#[test]
fn autobahn_deflate_cases_with_the_small_window_compressor() {
    if skip_external("Autobahn") {
        return;
    }
    let mut config = echo_config();
    config.deflate.server_no_context_takeover = false;
    config.deflate.dedicated_window_bits = 10;
    let server = TestServer::echo(config);
    // The cases of large messages (.9, .10, .14-.18: up to 256 KiB, 1,000 of them) take the rest of six minutes
    // through a test build's unoptimised compressor; the unit tests cover large messages, and the whole suite
    // against the release build is in docs/conformance.md.
    let mut args = vec!["-i", "12.*", "-i", "13.*"];
    let skip: Vec<String> = ["12", "13"]
        .iter()
        .flat_map(|s| ["9", "10", "14", "15", "16", "17", "18"].map(|i| format!("{s}.*.{i}")))
        .collect();
    args.extend(skip.iter().flat_map(|s| ["-x", s.as_str()]));
    run_and_compare(autobahn(), server.addr, "autobahn-lz", "expected-results-lz.json", &args);
}

fn run_and_compare(runner: PathBuf, addr: std::net::SocketAddr, outdir: &str, golden: &str, extra: &[&str]) {
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(outdir);
    let status = std::process::Command::new("bash")
        .arg(&runner)
        .arg(addr.to_string())
        .arg(&out)
        .args(extra)
        .status()
        .expect("run the Autobahn runner");
    let index: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("index.json")).expect("index.json")).unwrap();
    let got = verdicts(&index);
    let golden_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/autobahn").join(golden);
    if std::env::var("WSKIT_AUTOBAHN_BLESS").as_deref() == Ok("1") {
        let mut ids: Vec<&String> = got.keys().collect();
        ids.sort_by_key(|id| case_key(id));
        let mut m = Map::new();
        for id in ids {
            m.insert(id.clone(), Value::String(got[id].clone()));
        }
        std::fs::write(&golden_path, serde_json::to_string_pretty(&Value::Object(m)).unwrap() + "\n").unwrap();
    }
    let golden: Value = serde_json::from_str(&std::fs::read_to_string(&golden_path).expect("golden file")).unwrap();
    let expected: BTreeMap<String, String> =
        golden.as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string())).collect();
    let mut diffs = Vec::new();
    for (id, want) in &expected {
        match got.get(id) {
            Some(have) if have == want => {}
            Some(have) => diffs.push(format!("{id}: expected {want}, got {have}")),
            None => diffs.push(format!("{id}: expected {want}, case not run")),
        }
    }
    for id in got.keys().filter(|id| !expected.contains_key(*id)) {
        diffs.push(format!("{id}: not in the golden file (got {})", got[id]));
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for v in got.values() {
        *counts.entry(v.split(' ').next().unwrap()).or_default() += 1;
    }
    eprintln!("Autobahn: {} cases: {counts:?}", got.len());
    assert!(
        diffs.is_empty(),
        "Autobahn verdicts differ from tests/autobahn/{golden} (a regression, or a reviewed change to bless with \
         WSKIT_AUTOBAHN_BLESS=1):\n{}",
        diffs.join("\n")
    );
    assert!(!got.values().any(|v| v.contains("FAILED")), "FAILED cases");
    assert!(status.success() || !got.values().any(|v| v.contains("FAILED")), "runner failed");
}
