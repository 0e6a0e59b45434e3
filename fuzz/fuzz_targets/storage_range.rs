//! libFuzzer entry for the storage Range header parser (`oxibase::fuzz::storage_range`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    oxibase::fuzz::storage_range(data);
});
