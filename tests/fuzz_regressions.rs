//! Every input a fuzz target ever failed on (`fuzz/regressions/<target>/`) and the seed corpus
//! (`fuzz/corpus/<target>/`), replayed through the same checks as the targets (`wskit::fuzzing`).

use std::path::Path;

fn replay(dir: &str, check: impl Fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    for kind in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join("fuzz").join(kind).join(dir)) else { continue };
        for e in entries {
            let path = e.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&data))).is_err() {
                panic!("{} fails its check", path.display());
            }
            n += 1;
        }
    }
    n
}

#[test]
fn fuzz_inputs_replay_clean() {
    assert!(replay("handshake", wskit::fuzzing::handshake) >= 3);
    assert!(replay("frame", wskit::fuzzing::frame) >= 5);
    assert!(replay("h2_frame", wskit::fuzzing::h2_frame) >= 4);
    assert!(replay("hpack", wskit::fuzzing::hpack) >= 3);
    assert!(replay("h2_conn", wskit::fuzzing::h2_conn) >= 2);
    assert!(replay("connection", wskit::fuzzing::connection) >= 5);
    assert!(replay("endpoint", wskit::fuzzing::endpoint) >= 5);
    assert!(replay("endpoint_h2", wskit::fuzzing::endpoint_h2) >= 3);
    assert!(replay("deflate", wskit::fuzzing::deflate) >= 3);
    #[cfg(feature = "deflate")]
    assert!(replay("lz", wskit::fuzzing::lz) >= 2);
    #[cfg(feature = "tls")]
    {
        let pem = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/localhost.pem");
        let cfg = wskit::tls_config::server_config(&wskit::Config::new().tls_pem(pem, None)).unwrap().unwrap();
        assert!(replay("tls", |d| wskit::fuzzing::tls(cfg.clone(), d)) >= 1);
    }
}
