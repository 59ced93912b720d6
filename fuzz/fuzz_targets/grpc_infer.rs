//! libFuzzer target: `modelgate_fuzz::grpc_infer` (see fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| modelgate_fuzz::grpc_infer(data));
