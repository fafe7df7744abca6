//! WebSockets over HTTP/2 through a whole endpoint, any split (see `wskit::fuzzing::endpoint_h2`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    wskit::fuzzing::endpoint_h2(data);
});
