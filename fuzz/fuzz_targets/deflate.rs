//! The extension-header parser and the inflater (see `wskit::fuzzing::deflate`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    wskit::fuzzing::deflate(data);
});
