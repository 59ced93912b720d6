//! One TorchScript instance: request bytes in as tensors (without a copy on
//! the CPU), `forward()` under `no_grad`, checked outputs copied out.
//!
//! Like Triton's PyTorch backend, inputs on the CPU are handed to the module
//! as views of the request's bytes. A module must therefore treat its inputs
//! as read-only and not keep them past `forward()` (in-place ops on an
//! argument, or storing it in an attribute): TorchScript gives no way to
//! check this, and models written for Triton already follow it.

use modelgate_backend::{
    Backend, BackendError, DataType, InputTensor, ModelSignature, OutputTensor, TensorSpec, fixed_byte_size,
};
use tch::jit::IValue;
use tch::{CModule, Kind, Tensor};

use crate::{kind, threads};

/// A configured tensor with its torch type and its position in `forward()`.
#[derive(Clone, Debug)]
pub(crate) struct Bound {
    pub(crate) spec: TensorSpec,
    pub(crate) kind: Kind,
    pub(crate) position: usize,
}

/// One TorchScript module on one device, run by one thread at a time.
#[derive(Debug)]
pub struct TorchBackend {
    module: CModule,
    device: tch::Device,
    /// In config order (the order the gateway passes inputs in).
    inputs: Vec<Bound>,
    /// In config order (what output indices refer to).
    outputs: Vec<Bound>,
    threads: usize,
    device_memory: Option<u64>,
}

impl TorchBackend {
    pub(crate) fn new(
        module: CModule,
        device: tch::Device,
        inputs: Vec<Bound>,
        outputs: Vec<Bound>,
        threads: usize,
        device_memory: Option<u64>,
    ) -> TorchBackend {
        TorchBackend { module, device, inputs, outputs, threads, device_memory }
    }

    /// The module's result for one batch, as the list of values it returned.
    fn forward(&self, inputs: &[InputTensor<'_>]) -> Result<Vec<IValue>, BackendError> {
        let mut args: Vec<(usize, IValue)> = Vec::with_capacity(inputs.len());
        for (input, bound) in inputs.iter().zip(&self.inputs) {
            args.push((bound.position, IValue::Tensor(input_tensor(input, bound, self.device)?)));
        }
        args.sort_unstable_by_key(|(position, _)| *position);
        let args: Vec<IValue> = args.into_iter().map(|(_, value)| value).collect();
        let result = {
            let _no_grad = tch::no_grad_guard();
            self.module.forward_is(&args)
        };
        // `args` (views of the request's bytes) drop when this returns, before
        // the batch that owns those bytes does.
        match result.map_err(|e| BackendError::Execute(concise(&e)))? {
            IValue::Tensor(t) => Ok(vec![IValue::Tensor(t)]),
            IValue::Tuple(values) | IValue::GenericList(values) => Ok(values),
            IValue::TensorList(tensors) => Ok(tensors.into_iter().map(IValue::Tensor).collect()),
            other => Err(BackendError::Execute(format!(
                "forward() returned {}; a tensor, or a tuple or list of tensors, was expected",
                value_kind(&other)
            ))),
        }
    }
}

impl Backend for TorchBackend {
    fn signature(&self) -> Option<&ModelSignature> {
        None // the config's is the only one
    }

    fn execute(&mut self, inputs: &[InputTensor<'_>], outputs: &[usize]) -> Result<Vec<OutputTensor>, BackendError> {
        if inputs.len() != self.inputs.len() {
            return Err(BackendError::Execute(format!(
                "the model takes {} inputs, the batch has {}",
                self.inputs.len(),
                inputs.len()
            )));
        }
        threads::use_on_this_thread(self.threads);
        let mut results = self.forward(inputs)?;
        outputs
            .iter()
            .map(|&index| {
                let bound = self
                    .outputs
                    .get(index)
                    .ok_or_else(|| BackendError::Execute(format!("no output {index} in the config")))?;
                let count = results.len();
                match results.get_mut(bound.position) {
                    Some(IValue::Tensor(tensor)) => output_tensor(tensor, bound),
                    Some(other) => Err(BackendError::Execute(format!(
                        "output '{}': the model's result {} is {}, not a tensor",
                        bound.spec.name,
                        bound.position,
                        value_kind(other)
                    ))),
                    None => Err(BackendError::Execute(format!(
                        "output '{}' is result {} but the model returned {count} value(s)",
                        bound.spec.name, bound.position
                    ))),
                }
            })
            .collect()
    }

    fn device_memory_bytes(&self) -> Option<u64> {
        self.device_memory
    }
}

/// A torch tensor over the input's bytes: a view on the CPU, a copy on a GPU.
#[allow(unsafe_code)] // the one unsafe block of the crate: the zero-copy view
fn input_tensor(input: &InputTensor<'_>, bound: &Bound, device: tch::Device) -> Result<Tensor, BackendError> {
    let name = &bound.spec.name;
    if input.dtype != bound.spec.dtype {
        return Err(BackendError::Execute(format!(
            "input '{name}' is {}, the config says {}",
            input.dtype, bound.spec.dtype
        )));
    }
    let expected = fixed_byte_size(input.dtype, input.shape)
        .ok_or_else(|| BackendError::Execute(format!("input '{name}' has an invalid shape {:?}", input.shape)))?;
    if input.data.len() != expected {
        return Err(BackendError::Execute(format!(
            "input '{name}' has {} bytes, its shape {:?} needs {expected}",
            input.data.len(),
            input.shape
        )));
    }
    let element = bound.kind.elt_size_in_bytes();
    let tensor = if (input.data.as_ptr() as usize).is_multiple_of(element) {
        let strides = contiguous_strides(input.shape);
        // SAFETY: `data` holds exactly `shape` elements of `kind` (checked
        // above), row-major, aligned for the element type (checked above),
        // and BOOL bytes are 0 or 1 (the gateway checks them at the door).
        // The view is only read: modules must not write to their inputs (see
        // the module docs). It does not outlive `data`: it is dropped, with
        // anything forward() returned (its outputs are copied out first),
        // before `execute` returns, while `data` is borrowed for all of it.
        unsafe { Tensor::f_from_blob(input.data.as_ptr(), input.shape, &strides, bound.kind, tch::Device::Cpu) }
    } else {
        // Not produced by the gateway, which aligns every buffer: copy.
        Tensor::f_from_data_size(input.data, input.shape, bound.kind)
    }
    .map_err(|e| BackendError::Execute(format!("input '{name}': {}", concise(&e))))?;
    match device {
        tch::Device::Cpu => Ok(tensor),
        _ => tensor.f_to_device(device).map_err(|e| BackendError::Execute(format!("input '{name}': {}", concise(&e)))),
    }
}

/// Row-major strides, in elements.
fn contiguous_strides(shape: &[i64]) -> Vec<i64> {
    let mut strides = vec![1i64; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1].saturating_mul(shape[i + 1].max(1));
    }
    strides
}

/// Checks one result tensor against its config entry and copies it to the host.
fn output_tensor(tensor: &Tensor, bound: &Bound) -> Result<OutputTensor, BackendError> {
    let name = &bound.spec.name;
    let fail = |what: String| BackendError::Execute(format!("output '{name}': {what}"));
    if !tensor.defined() {
        return Err(fail("the model returned an undefined tensor".into()));
    }
    let kind = tensor.f_kind().map_err(|e| fail(concise(&e)))?;
    let dtype: DataType =
        kind::data_type(kind).ok_or_else(|| fail(format!("the model returned {kind:?}, which V2 cannot carry")))?;
    if dtype != bound.spec.dtype {
        return Err(fail(format!("the model returned {dtype}, the config says {}", bound.spec.dtype)));
    }
    let shape = tensor.size();
    let fits = shape.len() == bound.spec.shape.len()
        && shape.iter().zip(&bound.spec.shape).all(|(&got, &want)| want < 0 || got == want);
    if !fits {
        return Err(fail(format!("the model returned shape {shape:?}, the config says {:?}", bound.spec.shape)));
    }
    let bytes = fixed_byte_size(dtype, &shape).ok_or_else(|| fail(format!("invalid shape {shape:?}")))?;
    let mut data = vec![0u8; bytes];
    // Copies from any device and any layout (strided, non-contiguous).
    tensor.f_copy_data_u8(&mut data, bytes / kind.elt_size_in_bytes()).map_err(|e| fail(concise(&e)))?;
    Ok(OutputTensor { dtype, shape, data: data.into() })
}

#[cfg(test)]
mod tests;

fn value_kind(value: &IValue) -> &'static str {
    match value {
        IValue::None => "None",
        IValue::Tensor(_) => "a tensor",
        IValue::Double(_) | IValue::Int(_) | IValue::Bool(_) => "a number",
        IValue::String(_) => "a string",
        IValue::Tuple(_) => "a tuple",
        IValue::IntList(_) | IValue::DoubleList(_) | IValue::BoolList(_) | IValue::StringList(_) => {
            "a list of non-tensors"
        }
        IValue::TensorList(_) | IValue::GenericList(_) => "a list",
        IValue::GenericDict(_) => "a dict",
        IValue::Object(_) => "an object",
        IValue::Device(_) => "a device",
        _ => "a value of another type",
    }
}

/// libtorch's message without what is noise or host detail to a client: the
/// C++ backtrace it appends (it names library paths), tch's prefix, and the
/// TorchScript traceback before the error line itself.
pub(crate) fn concise(error: &tch::TchError) -> String {
    let text = error.to_string();
    let text = text.strip_prefix("Internal torch error: ").unwrap_or(&text);
    let text = &text[..text.find("\nException raised from").unwrap_or(text.len())];
    if text.contains("Traceback of TorchScript")
        && let Some(line) = text.lines().rev().find(|l| !l.trim().is_empty())
    {
        return line.trim().to_owned();
    }
    text.trim().to_owned()
}
