//! HTTP/2 frames decoded in one piece and split: the same frames and errors (see `wskit::fuzzing::h2_frame`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    wskit::fuzzing::h2_frame(data);
});
