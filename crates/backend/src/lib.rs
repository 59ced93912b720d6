//! The interface between modelgate's scheduler and the native inference runtimes.
//!
//! A [`Backend`] is one *instance* of one model version: it owns its session on
//! one device and runs a whole batch synchronously. The gateway gives each
//! instance its own OS thread, so backends never see the async runtime and may
//! block as long as the model takes. A [`ModelLoader`] turns a model file into
//! instances for one platform (ONNX Runtime, TorchScript).
//!
//! This crate knows nothing of HTTP, gRPC, JSON or tokio.
#![forbid(unsafe_code)]

mod dtype;
#[cfg(feature = "fake")]
pub mod fake;
mod tensor;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

pub use dtype::DataType;
pub use tensor::{
    BytesLayoutError, DYNAMIC_DIM, ModelSignature, TensorSpec, bytes_elements, check_bytes_layout, element_count,
    fixed_byte_size, push_bytes_element,
};

/// A borrowed input tensor of a batch, already checked against the signature.
#[derive(Clone, Copy, Debug)]
pub struct InputTensor<'a> {
    /// Element type (equal to the signature's).
    pub dtype: DataType,
    /// Concrete shape, batch dimension first when the model batches.
    pub shape: &'a [i64],
    /// Row-major little-endian bytes; for BYTES, length-prefixed elements.
    /// Aligned to at least the element size.
    pub data: &'a [u8],
}

/// An owned output tensor produced by a backend.
#[derive(Clone, Debug, PartialEq)]
pub struct OutputTensor {
    /// Element type.
    pub dtype: DataType,
    /// Concrete shape.
    pub shape: Vec<i64>,
    /// Row-major little-endian bytes; for BYTES, length-prefixed elements.
    pub data: bytes::Bytes,
}

/// Where an instance runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Device {
    /// Host CPU.
    #[default]
    Cpu,
    /// CUDA device by ordinal.
    Cuda(u32),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// How to create one instance.
#[derive(Clone, Debug, Default)]
pub struct InstanceOptions {
    /// Target device.
    pub device: Device,
    /// When the device cannot be used, run on the CPU instead of failing the load.
    pub allow_cpu_fallback: bool,
    /// Threads inside one operator (0 = the runtime's default).
    pub intra_op_threads: usize,
    /// Threads across operators (0 = the runtime's default).
    pub inter_op_threads: usize,
    /// Free-form backend parameters from the model config (`parameters { key: ... }`).
    pub parameters: BTreeMap<String, String>,
}

/// Errors a backend reports. Messages go to operators (logs, repository index)
/// and, for execution errors, to clients: they must not leak host paths.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The native runtime library could not be loaded.
    #[error("runtime unavailable: {0}")]
    RuntimeUnavailable(String),
    /// The model file could not be turned into a session.
    #[error("model load failed: {0}")]
    Load(String),
    /// The requested device cannot be used.
    #[error("device {device} unavailable: {reason}")]
    Device {
        /// The device asked for.
        device: Device,
        /// Why it cannot be used.
        reason: String,
    },
    /// The input is valid for the signature but the runtime refused it
    /// (e.g. a string that is not UTF-8 for ONNX string tensors).
    #[error("{0}")]
    InvalidInput(String),
    /// Running the model failed.
    #[error("model execution failed: {0}")]
    Execute(String),
}

/// One instance of one model version, owned by one thread.
pub trait Backend: Send {
    /// The signature read from the model file, when the format carries one
    /// (ONNX does; TorchScript does not, and relies on the model config).
    fn signature(&self) -> Option<&ModelSignature>;

    /// Runs one batch. `inputs` follow the order of the effective signature's
    /// inputs; `outputs` are indices into its outputs. Returns one tensor per
    /// requested output, in the order requested.
    fn execute(&mut self, inputs: &[InputTensor<'_>], outputs: &[usize]) -> Result<Vec<OutputTensor>, BackendError>;

    /// Device memory this instance holds, when the device reports it.
    fn device_memory_bytes(&self) -> Option<u64> {
        None
    }
}

/// Creates instances of models of one platform.
pub trait ModelLoader: Send + Sync {
    /// Triton's platform name, e.g. `onnxruntime_onnx`.
    fn platform(&self) -> &'static str;

    /// Triton's backend name, e.g. `onnxruntime`.
    fn backend_name(&self) -> &'static str;

    /// The model file name looked for in a version directory, e.g. `model.onnx`.
    fn default_filename(&self) -> &'static str;

    /// Creates one instance from the model file. Input and output names are
    /// given for formats without a signature of their own.
    fn load(
        &self,
        model_file: &Path,
        signature: Option<&ModelSignature>,
        options: &InstanceOptions,
    ) -> Result<Box<dyn Backend>, BackendError>;
}
