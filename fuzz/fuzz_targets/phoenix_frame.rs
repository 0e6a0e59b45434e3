//! libFuzzer entry for the realtime Phoenix frame decoders: vsn 1.0.0 and 2.0.0 JSON text
//! frames and 2.0.0 binary frames (`oxibase::fuzz::phoenix_frame`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    oxibase::fuzz::phoenix_frame(data);
});
