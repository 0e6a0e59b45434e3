//! libFuzzer entry for the REST `Prefer` and `Accept` header parsers
//! (`oxibase::fuzz::prefer_header`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    oxibase::fuzz::prefer_header(data);
});
