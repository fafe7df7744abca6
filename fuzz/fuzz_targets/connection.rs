//! The per-connection state machine, any bytes in any split, with and without deflate (see `wskit::fuzzing::connection`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    wskit::fuzzing::connection(data);
});
