//! TorchScript models (`model.pt`, Triton platform `pytorch_libtorch`) through
//! libtorch, with `tch`.
//!
//! A TorchScript module carries no signature, so the gateway hands the loader
//! the one from config.pbtxt: each input binds to a positional argument of
//! `forward()` and each output to a position of its result ([`binding`]).
//! An instance owns one module on one device and runs it under `no_grad`, on
//! the thread the gateway gives it, with its own intra-op thread count
//! ([`threads`]).
//!
//! Everything is behind the `libtorch` feature (the root package's `torch`),
//! so the workspace builds on machines without libtorch.

#[cfg(feature = "libtorch")]
mod binding;
#[cfg(feature = "libtorch")]
mod device;
#[cfg(feature = "libtorch")]
mod instance;
#[cfg(feature = "libtorch")]
mod kind;
#[cfg(feature = "libtorch")]
mod loader;
#[cfg(feature = "libtorch")]
mod threads;

#[cfg(feature = "libtorch")]
pub use instance::TorchBackend;
#[cfg(feature = "libtorch")]
pub use loader::TorchLoader;
/// The `tch` this backend links, for code that runs a module through libtorch
/// directly: the gateway's TorchScript tests compare its answers with one.
#[cfg(feature = "libtorch")]
pub use tch;
