//! libFuzzer entry for the REST `Prefer` and `Accept` header parsers
//! (`oxibase::rest::fuzz::prefer_header`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    oxibase::rest::fuzz::prefer_header(data);
});
