//! libFuzzer entry for the storage Range header parser (`oxibase::storage::fuzz::range_header`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    oxibase::storage::fuzz::range_header(data);
});
