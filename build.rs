//! Compiles the KServe V2 / Triton protocol (`proto/`) into Rust with a pure-Rust
//! protobuf compiler (`protox`), so building needs no `protoc` on the machine.
//!
//! With the `torch` feature, also the linker arguments libtorch needs in this
//! package's binaries, tests and benches (crates/backend-torch/build.rs does
//! the same for its own tests; cargo never passes them on to dependents):
//! - an rpath to libtorch's folder, which torch-sys links without one;
//! - with `cuda`, `--no-as-needed` around `libtorch_cuda.so`, which the
//!   default `--as-needed` drops (nothing references it by symbol), leaving
//!   libtorch without CUDA devices (tch-rs issues #329 and #980).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    link_libtorch();
    let protos = ["grpc_service.proto", "model_config.proto", "health.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed=proto/{proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    // The same descriptors at run time: the model config is printed as JSON through them.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("file_descriptor_set.bin"), prost::Message::encode_to_vec(&descriptors))?;
    tonic_prost_build::configure()
        // Tensor payloads stay `Bytes`: decoded without a copy, encoded without one.
        .bytes(".")
        .build_server(true)
        .build_client(true)
        // Clients are for tests; they bring their own channel.
        .build_transport(false)
        .compile_fds(descriptors)?;
    Ok(())
}

fn link_libtorch() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    // Set by torch-sys (`links = "tch"`) for its direct dependents: feature `torch`.
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        if !std::path::Path::new(&lib).join("libtorch_cuda.so").exists() {
            println!(
                "cargo:warning=features `torch` and `cuda` need a CUDA build of libtorch, but {lib} has no \
                 libtorch_cuda.so (the CPU libtorch of scripts/setup.sh cannot link it; see README, GPU)"
            );
        }
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-ltorch");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
