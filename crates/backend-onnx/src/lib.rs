//! ONNX models through ONNX Runtime (`ort`, loaded at run time with `load-dynamic`).
//!
//! The runtime library is opened once per process from an explicit path, so a
//! missing library is a load error with instructions instead of the panic that
//! `ort` gives when it searches on its own. Each [`OnnxBackend`] owns one
//! session; the gateway runs each on its own thread, so `Session::run`'s
//! `&mut self` costs no lock.

use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use bytes::Bytes;
use modelgate_backend::{
    Backend, BackendError, DataType, Device, InputTensor, InstanceOptions, ModelLoader, ModelSignature, OutputTensor,
    TensorSpec, bytes_elements, push_bytes_element,
};
use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, PrimitiveTensorElementType, Tensor, TensorElementType, TensorRef, ValueType};

/// The process-wide ONNX Runtime environment: `ort` allows one per process, and
/// the first library loaded stays loaded, so a failure is remembered too.
static ENVIRONMENT: OnceLock<Result<Environment, String>> = OnceLock::new();

/// Opens ONNX Runtime from `library` (once per process) and returns the environment.
fn environment(library: &Path) -> Result<&'static Environment, BackendError> {
    let env = ENVIRONMENT.get_or_init(|| {
        if !library.exists() {
            return Err(format!(
                "ONNX Runtime library not found at {}: run scripts/setup.sh, or point ORT_DYLIB_PATH \
                 (or --onnxruntime-library) at libonnxruntime.so 1.31 or newer",
                library.display()
            ));
        }
        let builder =
            ort::init_from(library).map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", library.display()))?;
        builder
            .with_name("modelgate")
            .with_telemetry(false)
            .build()
            .map_err(|e| format!("cannot create the ONNX Runtime environment: {e}"))
    });
    env.as_ref().map_err(|e| BackendError::RuntimeUnavailable(e.clone()))
}

/// Creates ONNX Runtime sessions for `model.onnx` files.
#[derive(Debug)]
pub struct OnnxLoader {
    library: PathBuf,
}

impl OnnxLoader {
    /// Opens the runtime library at `library` now, so that a missing or wrong
    /// library is reported at start-up rather than at the first model load.
    pub fn new(library: impl Into<PathBuf>) -> Result<OnnxLoader, BackendError> {
        let library = library.into();
        environment(&library)?;
        Ok(OnnxLoader { library })
    }
}

impl ModelLoader for OnnxLoader {
    fn platform(&self) -> &'static str {
        "onnxruntime_onnx"
    }

    fn backend_name(&self) -> &'static str {
        "onnxruntime"
    }

    fn default_filename(&self) -> &'static str {
        "model.onnx"
    }

    fn load(
        &self,
        model_file: &Path,
        _signature: Option<&ModelSignature>,
        options: &InstanceOptions,
    ) -> Result<Box<dyn Backend>, BackendError> {
        let env = environment(&self.library)?;
        let session = build_session(env, model_file, options)?;
        let signature = read_signature(&session)?;
        Ok(Box::new(OnnxBackend { session, signature }))
    }
}

/// `ort`'s builder errors carry the builder and are not `Send`; keep the message.
fn load_error(e: impl std::fmt::Display) -> BackendError {
    BackendError::Load(e.to_string())
}

fn build_session(env: &Environment, model_file: &Path, options: &InstanceOptions) -> Result<Session, BackendError> {
    let mut builder = Session::builder(env)
        .map_err(load_error)?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(load_error)?;
    if options.intra_op_threads > 0 {
        builder = builder.with_intra_threads(options.intra_op_threads).map_err(load_error)?;
    }
    if options.inter_op_threads > 0 {
        builder = builder.with_inter_threads(options.inter_op_threads).map_err(load_error)?;
    }
    // Spinning threads keep a core busy after each run; on a small host shared
    // with the network workers that costs more than the wake-up it saves.
    let spinning = flag_parameter(options, "allow_spinning", false)?;
    builder = builder.with_intra_op_spinning(spinning).map_err(load_error)?;
    builder = builder.with_inter_op_spinning(spinning).map_err(load_error)?;
    builder = with_device(builder, options)?;
    if options.device == Device::Cpu {
        // ONNX Runtime's CPU arena keeps, for the life of the session, the
        // largest working set any run needed, rounded up to a power of two:
        // one hostile 60 MiB request left ~300 MiB that no budget counts.
        // Without it, blocks come from the C allocator and go back after the
        // run. Models whose runs need large intermediate blocks every time
        // can turn it back on (Triton's parameter of the same name).
        let arena = flag_parameter(options, "enable_mem_arena", false)?;
        builder = builder
            .with_execution_providers([ort::ep::CPU::default().with_arena_allocator(arena).build()])
            .map_err(load_error)?;
    }
    builder.commit_from_file(model_file).map_err(load_error)
}

/// A yes/no model parameter (`"1"`/`"true"` or `"0"`/`"false"`); anything
/// else refuses the load, naming the key.
fn flag_parameter(options: &InstanceOptions, key: &str, default: bool) -> Result<bool, BackendError> {
    match options.parameters.get(key).map(|v| v.trim()) {
        None => Ok(default),
        Some("1" | "true") => Ok(true),
        Some("0" | "false") => Ok(false),
        Some(other) => Err(BackendError::Load(format!(
            "parameter '{key}' must be \"true\"/\"1\" or \"false\"/\"0\", not {:?}",
            other.chars().take(64).collect::<String>()
        ))),
    }
}

#[cfg(feature = "cuda")]
fn with_device(
    builder: ort::session::builder::SessionBuilder,
    options: &InstanceOptions,
) -> Result<ort::session::builder::SessionBuilder, BackendError> {
    match options.device {
        Device::Cpu => Ok(builder),
        Device::Cuda(ordinal) => {
            let id = i32::try_from(ordinal).map_err(|_| BackendError::Device {
                device: options.device,
                reason: format!("CUDA device numbers go up to {}", i32::MAX),
            })?;
            let mut ep = ort::ep::CUDA::default().with_device_id(id).build();
            if !options.allow_cpu_fallback {
                ep = ep.error_on_failure();
            }
            builder.with_execution_providers([ep]).map_err(|e| BackendError::Device {
                device: options.device,
                reason: format!(
                    "{e} (the CUDA execution provider needs onnxruntime-gpu's libonnxruntime.so with \
                     libonnxruntime_providers_cuda.so beside it, and the CUDA 13 and cuDNN 9 libraries)"
                ),
            })
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn with_device(
    builder: ort::session::builder::SessionBuilder,
    options: &InstanceOptions,
) -> Result<ort::session::builder::SessionBuilder, BackendError> {
    match options.device {
        Device::Cpu => Ok(builder),
        Device::Cuda(_) if options.allow_cpu_fallback => {
            tracing::warn!(device = %options.device, "built without CUDA support; running on the CPU as the config allows");
            Ok(builder)
        }
        Device::Cuda(_) => Err(BackendError::Device {
            device: options.device,
            reason: "this build has no CUDA support (cargo feature `cuda`)".into(),
        }),
    }
}

fn data_type(ty: TensorElementType) -> Option<DataType> {
    Some(match ty {
        TensorElementType::Bool => DataType::Bool,
        TensorElementType::Uint8 => DataType::Uint8,
        TensorElementType::Uint16 => DataType::Uint16,
        TensorElementType::Uint32 => DataType::Uint32,
        TensorElementType::Uint64 => DataType::Uint64,
        TensorElementType::Int8 => DataType::Int8,
        TensorElementType::Int16 => DataType::Int16,
        TensorElementType::Int32 => DataType::Int32,
        TensorElementType::Int64 => DataType::Int64,
        TensorElementType::Float16 => DataType::Fp16,
        TensorElementType::Float32 => DataType::Fp32,
        TensorElementType::Float64 => DataType::Fp64,
        TensorElementType::Bfloat16 => DataType::Bf16,
        TensorElementType::String => DataType::Bytes,
        _ => return None,
    })
}

fn tensor_spec(name: &str, ty: &ValueType, role: &str) -> Result<TensorSpec, BackendError> {
    let ValueType::Tensor { ty, shape, .. } = ty else {
        return Err(BackendError::Load(format!(
            "{role} '{name}' is not a tensor (sequences, maps and optionals are not served)"
        )));
    };
    let dtype = data_type(*ty).ok_or_else(|| {
        BackendError::Load(format!("{role} '{name}' has element type {ty:?}, which the V2 protocol cannot carry"))
    })?;
    // ONNX marks unknown dimensions with -1 (symbolic) or 0 in some exporters' old files;
    // only -1 is dynamic here.
    Ok(TensorSpec::new(name, dtype, shape.iter().copied().collect()))
}

fn read_signature(session: &Session) -> Result<ModelSignature, BackendError> {
    let inputs =
        session.inputs().iter().map(|o| tensor_spec(o.name(), o.dtype(), "input")).collect::<Result<_, _>>()?;
    let outputs =
        session.outputs().iter().map(|o| tensor_spec(o.name(), o.dtype(), "output")).collect::<Result<_, _>>()?;
    Ok(ModelSignature { inputs, outputs })
}

/// One ONNX Runtime session, run by one thread.
pub struct OnnxBackend {
    session: Session,
    signature: ModelSignature,
}

impl Backend for OnnxBackend {
    fn signature(&self) -> Option<&ModelSignature> {
        Some(&self.signature)
    }

    fn execute(&mut self, inputs: &[InputTensor<'_>], outputs: &[usize]) -> Result<Vec<OutputTensor>, BackendError> {
        if inputs.len() != self.session.inputs().len() {
            return Err(BackendError::Execute(format!(
                "model takes {} inputs, batch has {}",
                self.session.inputs().len(),
                inputs.len()
            )));
        }
        let values = inputs.iter().map(input_value).collect::<Result<Vec<_>, _>>()?;
        let results = self.session.run(values.as_slice()).map_err(|e| BackendError::Execute(e.to_string()))?;
        outputs
            .iter()
            .map(|&index| {
                let value = results
                    .get(self.signature.outputs[index].name.as_str())
                    .ok_or_else(|| BackendError::Execute(format!("runtime returned no output {index}")))?;
                output_tensor(value)
            })
            .collect()
    }
}

fn execute_error(e: impl std::fmt::Display) -> BackendError {
    BackendError::Execute(e.to_string())
}

/// Wraps a borrowed input in an ONNX Runtime value, without copying when the
/// bytes are aligned for the element type (the batcher makes sure they are).
fn input_value<'a>(input: &InputTensor<'a>) -> Result<SessionInputValue<'a>, BackendError> {
    match input.dtype {
        DataType::Bool => {
            // Bytes that are all 0 or 1 are already ONNX bools: borrowed as
            // they are (a 60 MiB BOOL input held one more copy of itself
            // while it ran, outside the in-flight budget). Any other byte is
            // true, as the V2 protocol reads it, at the price of a copy.
            match bytemuck::checked::try_cast_slice::<u8, bool>(input.data) {
                Ok(view) => Ok(TensorRef::from_array_view((input.shape.to_vec(), view)).map_err(execute_error)?.into()),
                Err(_) => {
                    let data: Vec<bool> = input.data.iter().map(|&b| b != 0).collect();
                    Ok(Tensor::from_array((input.shape.to_vec(), data)).map_err(execute_error)?.into())
                }
            }
        }
        DataType::Uint8 => primitive::<u8>(input),
        DataType::Uint16 => primitive::<u16>(input),
        DataType::Uint32 => primitive::<u32>(input),
        DataType::Uint64 => primitive::<u64>(input),
        DataType::Int8 => primitive::<i8>(input),
        DataType::Int16 => primitive::<i16>(input),
        DataType::Int32 => primitive::<i32>(input),
        DataType::Int64 => primitive::<i64>(input),
        DataType::Fp16 => primitive::<half::f16>(input),
        DataType::Fp32 => primitive::<f32>(input),
        DataType::Fp64 => primitive::<f64>(input),
        DataType::Bf16 => primitive::<half::bf16>(input),
        DataType::Bytes => strings(input),
    }
}

fn primitive<'a, T>(input: &InputTensor<'a>) -> Result<SessionInputValue<'a>, BackendError>
where
    T: PrimitiveTensorElementType + bytemuck::Pod + Debug,
{
    match bytemuck::try_cast_slice::<u8, T>(input.data) {
        Ok(view) => Ok(TensorRef::from_array_view((input.shape.to_vec(), view)).map_err(execute_error)?.into()),
        // Misaligned bytes (not produced by the gateway, but possible from other
        // callers): pay for one copy rather than refuse.
        Err(_) => {
            let owned: Vec<T> = bytemuck::pod_collect_to_vec(input.data);
            Ok(Tensor::from_array((input.shape.to_vec(), owned)).map_err(execute_error)?.into())
        }
    }
}

fn strings<'a>(input: &InputTensor<'a>) -> Result<SessionInputValue<'a>, BackendError> {
    let mut elements = Vec::new();
    for (index, element) in bytes_elements(input.data).enumerate() {
        let element = element.map_err(|e| BackendError::InvalidInput(e.to_string()))?;
        let text = std::str::from_utf8(element).map_err(|_| {
            BackendError::InvalidInput(format!("BYTES element {index} is not UTF-8, which ONNX string tensors require"))
        })?;
        if text.contains('\0') {
            return Err(BackendError::InvalidInput(format!(
                "BYTES element {index} contains a NUL byte, which ONNX string tensors cannot hold"
            )));
        }
        // `ort` wants 'static element types for string tensors.
        elements.push(text.to_owned());
    }
    Ok(Tensor::from_string_array((input.shape.to_vec(), elements.as_slice())).map_err(execute_error)?.into())
}

fn output_tensor(value: &DynValue) -> Result<OutputTensor, BackendError> {
    let ValueType::Tensor { ty, shape, .. } = value.dtype() else {
        return Err(BackendError::Execute("model produced a non-tensor output".into()));
    };
    let dtype = data_type(*ty).ok_or_else(|| BackendError::Execute(format!("model produced element type {ty:?}")))?;
    let shape: Vec<i64> = shape.iter().copied().collect();
    let data = match dtype {
        DataType::Bool => {
            let (_, values) = value.try_extract_tensor::<bool>().map_err(execute_error)?;
            values.iter().map(|&b| u8::from(b)).collect::<Vec<u8>>().into()
        }
        DataType::Uint8 => copy_out::<u8>(value)?,
        DataType::Uint16 => copy_out::<u16>(value)?,
        DataType::Uint32 => copy_out::<u32>(value)?,
        DataType::Uint64 => copy_out::<u64>(value)?,
        DataType::Int8 => copy_out::<i8>(value)?,
        DataType::Int16 => copy_out::<i16>(value)?,
        DataType::Int32 => copy_out::<i32>(value)?,
        DataType::Int64 => copy_out::<i64>(value)?,
        DataType::Fp16 => copy_out::<half::f16>(value)?,
        DataType::Fp32 => copy_out::<f32>(value)?,
        DataType::Fp64 => copy_out::<f64>(value)?,
        DataType::Bf16 => copy_out::<half::bf16>(value)?,
        DataType::Bytes => {
            let (_, strings) = value.try_extract_strings().map_err(execute_error)?;
            let total: usize = strings.iter().map(|s| s.len() + 4).sum();
            let mut out = Vec::with_capacity(total);
            for s in &strings {
                push_bytes_element(&mut out, s.as_bytes());
            }
            out.into()
        }
    };
    Ok(OutputTensor { dtype, shape, data })
}

fn copy_out<T>(value: &DynValue) -> Result<Bytes, BackendError>
where
    T: PrimitiveTensorElementType + bytemuck::Pod + Debug,
{
    let (_, values) = value.try_extract_tensor::<T>().map_err(execute_error)?;
    Ok(Bytes::copy_from_slice(bytemuck::cast_slice(values)))
}
