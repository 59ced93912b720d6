//! Compiles the KServe V2 / Triton protocol and modelgate's own service (`proto/`) into Rust with a pure-Rust
//! protobuf compiler (`protox`), so building needs no `protoc` on the machine.
//!
//! Copies the operations page's chart library (uPlot, installed from npm by
//! `scripts/setup.sh ui` into `.native/uplot/`) into `OUT_DIR`, where
//! `src/admin/ui.rs` embeds it; without it, empty files stand in and the page
//! shows its figures as numbers only.
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
    embed_chart_library()?;
    let protos = ["grpc_service.proto", "model_config.proto", "health.proto", "modelgate.proto"];
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
        // prost's codec with a bound on what a message decodes to, decoding
        // large ones off the async workers (src/grpc/bounded_codec.rs).
        .codec_path("crate::grpc::bounded_codec::BoundedCodec")
        .build_server(true)
        .build_client(true)
        // Clients are for tests; they bring their own channel.
        .build_transport(false)
        .compile_fds(descriptors)?;
    Ok(())
}

/// The files of `.native/uplot/` that `src/admin/ui.rs` embeds.
const CHART_FILES: [&str; 2] = ["uPlot.iife.min.js", "uPlot.min.css"];

fn embed_chart_library() -> std::io::Result<()> {
    let dir = std::path::Path::new(".native/uplot");
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("uplot");
    std::fs::create_dir_all(&out)?;
    // Watching a path that does not exist would rerun this script (and rebuild the crate) on every
    // build; without the library, a build after `scripts/setup.sh ui` needs `touch build.rs`.
    if dir.exists() {
        println!("cargo:rerun-if-changed=.native/uplot");
    }
    for file in CHART_FILES {
        let content = std::fs::read(dir.join(file)).unwrap_or_default();
        std::fs::write(out.join(file), content)?;
    }
    if !dir.join(CHART_FILES[0]).exists() {
        println!(
            "cargo:warning=no chart library in .native/uplot (scripts/setup.sh ui): the operations page will show numbers without charts"
        );
    }
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
