//! The frame-header decoder; decode(encode(h)) == h (see `wskit::fuzzing::frame`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    wskit::fuzzing::frame(data);
});
