//! HPACK field blocks: no panic, bounded output and table (see `wskit::fuzzing::hpack`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    wskit::fuzzing::hpack(data);
});
