//! libFuzzer target: `modelgate_fuzz::registry_manifest` (see fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| modelgate_fuzz::registry_manifest(data));
