//! libFuzzer entry for storage upload bodies, raw and multipart (`oxibase::fuzz::storage_upload`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    oxibase::fuzz::storage_upload(data);
});
