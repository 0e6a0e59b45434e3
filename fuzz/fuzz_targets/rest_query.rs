//! libFuzzer entry for the REST query-string parser, planner and SQL writer
//! (`oxibase::fuzz::rest_query`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    oxibase::fuzz::rest_query(data);
});
