//! libFuzzer entry for storage object paths and keys (`oxibase::fuzz::storage_object_path`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    oxibase::fuzz::storage_object_path(data);
});
