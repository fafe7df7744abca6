//! The request-head reader and validation, and the PROXY protocol reader, any bytes, any split (see
//! `wskit::fuzzing::handshake`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    wskit::fuzzing::handshake(data);
});
