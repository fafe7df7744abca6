//! A whole endpoint under one client's bytes, any split, its FIN, every deadline (see `wskit::fuzzing::endpoint`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    wskit::fuzzing::endpoint(data);
});
