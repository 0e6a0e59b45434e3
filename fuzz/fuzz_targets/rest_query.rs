//! libFuzzer entry for the REST query-string parser, planner and SQL writer
//! (`oxibase::rest::fuzz::query_string`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    oxibase::rest::fuzz::query_string(data);
});
