//! libFuzzer entry for storage object paths and keys (`oxibase::storage::fuzz::object_path`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    oxibase::storage::fuzz::object_path(data);
});
