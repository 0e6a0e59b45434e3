//! libFuzzer entry for storage upload bodies, raw and multipart (`oxibase::storage::fuzz::upload_body`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    oxibase::storage::fuzz::upload_body(data);
});
