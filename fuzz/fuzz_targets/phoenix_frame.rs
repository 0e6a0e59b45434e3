//! libFuzzer entry for the realtime Phoenix frame decoders: vsn 1.0.0 and 2.0.0 JSON text
//! frames and 2.0.0 binary frames (`oxibase::realtime::phoenix::fuzz_frame`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    oxibase::realtime::phoenix::fuzz_frame(data);
});
