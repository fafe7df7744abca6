//! An HTTP/2 server connection on arbitrary client bytes (see `wskit::fuzzing::h2_conn`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    wskit::fuzzing::h2_conn(data);
});
