//! Linker arguments for this crate's own test binaries (the root package's
//! build.rs does the same for the gateway): cargo passes `rustc-link-arg` to
//! the targets of the package that prints it, never to dependents.
//!
//! - torch-sys links libtorch but sets no rpath, so without one every test
//!   binary would need `LD_LIBRARY_PATH`.
//! - With `libtorch-cuda`: `--as-needed` (rustc's default) drops `libtorch_cuda.so`,
//!   since no symbol of it is referenced, and libtorch then reports no CUDA
//!   device (tch-rs issues #329 and #980). `--no-as-needed` keeps it.

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return; // feature `libtorch` off: nothing is linked
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    if std::env::var_os("CARGO_FEATURE_LIBTORCH_CUDA").is_some() {
        if !std::path::Path::new(&lib).join("libtorch_cuda.so").exists() {
            println!(
                "cargo:warning=feature `libtorch-cuda` needs a CUDA build of libtorch, but {lib} has no libtorch_cuda.so \
                 (the CPU libtorch of scripts/setup.sh cannot link it; see README, GPU)"
            );
        }
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-ltorch");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
