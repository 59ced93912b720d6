//! libFuzzer target: `modelgate_fuzz::v2_json` (see fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| modelgate_fuzz::v2_json(data));
