//! wskit's small-window compressor, read back by zlib (see `wskit::fuzzing::lz`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    wskit::fuzzing::lz(data);
});
