//! libFuzzer target: `modelgate_fuzz::config_pbtxt` (see fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| modelgate_fuzz::config_pbtxt(data));
