//! libFuzzer target: `modelgate_fuzz::route_spec` (see fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| modelgate_fuzz::route_spec(data));
