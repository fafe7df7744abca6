//! The TLS byte transform fed arbitrary ciphertext (see `wskit::fuzzing::tls`).
#![no_main]
use std::sync::{Arc, OnceLock};

fn config() -> Arc<rustls::ServerConfig> {
    static CFG: OnceLock<Arc<rustls::ServerConfig>> = OnceLock::new();
    CFG.get_or_init(|| {
        let pem = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/localhost.pem");
        wskit::tls_config::server_config(&wskit::Config::new().tls_pem(pem, None)).unwrap().unwrap()
    })
    .clone()
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    wskit::fuzzing::tls(config(), data);
});
