//! libFuzzer target: `modelgate_fuzz::binary_tensor` (see fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| modelgate_fuzz::binary_tensor(data));
