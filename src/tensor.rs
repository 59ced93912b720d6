//! Protocol-neutral inference requests and responses, checked when built.
//!
//! Both front doors (HTTP/JSON+binary and gRPC) decode into [`InferRequest`],
//! whose tensors are structurally sound (non-negative dims, exact byte sizes,
//! well-formed BYTES, 0/1 booleans). [`ModelIo::validate`] then resolves the
//! request against one model's inputs and outputs and yields a
//! [`ValidRequest`], the only type the scheduler accepts. Nothing downstream
//! checks again.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use modelgate_backend::{BytesLayoutError, DataType, check_bytes_layout, element_count};
use smallvec::SmallVec;

use crate::error::{Dims, Error, Quoted};

/// A named tensor whose bytes match its shape and type.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub dtype: DataType,
    /// Concrete shape.
    pub shape: Vec<i64>,
    /// Row-major little-endian bytes; BYTES as length-prefixed elements.
    pub data: Bytes,
}

/// Why a request's inputs or outputs are refused: a tensor that is not
/// sound in itself (both front doors check it while decoding), or a request
/// that does not fit the model ([`ModelIo::validate`]). Each variant holds
/// what the client sent and what was expected; its text is the message the
/// client gets, which clients and the Triton-client compatibility suite
/// compare, so it stays as it is whatever the variant holds.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// A dimension of the shape is negative.
    #[error("input '{}': shape {} has negative dimension {dimension}", Quoted(.name), Dims(.shape))]
    NegativeDimension {
        /// The input.
        name: String,
        /// The shape as the client sent it.
        shape: Vec<i64>,
        /// The first negative dimension.
        dimension: i64,
    },
    /// The shape holds more elements than a `usize` counts.
    #[error("input '{}': shape {} has too many elements", Quoted(.name), Dims(.shape))]
    TooManyElements {
        /// The input.
        name: String,
        /// The shape as the client sent it.
        shape: Vec<i64>,
    },
    /// A fixed-size input's bytes would be over what is left of the request
    /// limit: the one refusal for size rather than form (413 /
    /// RESOURCE_EXHAUSTED, as for an oversized body).
    #[error("input '{name}': {count} {dtype} elements exceed the request limit of {limit} bytes")]
    OverLimit {
        /// The input.
        name: String,
        /// Elements its shape holds.
        count: usize,
        /// Its element type.
        dtype: DataType,
        /// Bytes left of the request limit for this input.
        limit: usize,
    },
    /// The datatype is not a V2 datatype.
    #[error("input '{name}': unknown datatype '{datatype}'")]
    UnknownDatatype {
        /// The input.
        name: String,
        /// The datatype as the client sent it.
        datatype: String,
    },
    /// A fixed-size tensor's data is not the size its shape and type call for.
    #[error(
        "input '{}': shape {} of {dtype} needs {} bytes, got {got}",
        Quoted(.name),
        Dims(.shape),
        NeededBytes(.expected)
    )]
    ByteCount {
        /// The input.
        name: String,
        /// Its shape.
        shape: Vec<i64>,
        /// Its element type.
        dtype: DataType,
        /// Bytes the shape calls for (`None`: more than a `usize` counts).
        expected: Option<usize>,
        /// Bytes the data has.
        got: usize,
    },
    /// A BYTES tensor's data is not a sequence of length-prefixed elements,
    /// as many as its shape holds.
    #[error("input '{name}': {layout}")]
    BytesLayout {
        /// The input.
        name: String,
        /// What is wrong with the layout.
        layout: BytesLayoutError,
    },
    /// A parameter whose meaning the gateway does not implement (and must
    /// not silently ignore).
    #[error("{owner}: parameter '{key}': {why}")]
    UnsupportedParameter {
        /// Whose parameter it is.
        owner: ParameterOwner,
        /// The parameter.
        key: String,
        /// Why it is refused.
        why: &'static str,
    },
    /// A raw binary request (no JSON header) for a model that has not
    /// exactly one input.
    #[error("a raw binary request needs a model with exactly one input; this one has {inputs}")]
    RawRequestInputCount {
        /// Inputs the model has.
        inputs: usize,
    },
    /// A raw binary request for a model whose only input has variable
    /// dimensions: the body alone does not say its shape.
    #[error("input '{name}' has variable dimensions {dims:?}; send a JSON header with the shape")]
    RawRequestVariableDims {
        /// The model's input.
        name: String,
        /// Its dims (without the batch dimension), -1 for any size.
        dims: Vec<i64>,
    },
    /// An input the model does not have.
    #[error("unexpected input '{name}': the model's inputs are {}", Names(.model_inputs))]
    UnexpectedInput {
        /// The input as the client named it.
        name: String,
        /// The model's inputs, in model order.
        model_inputs: Vec<String>,
    },
    /// An input sent twice.
    #[error("input '{name}' appears more than once")]
    DuplicateInput {
        /// The input.
        name: String,
    },
    /// An input of another element type than the model's.
    #[error("input '{name}': datatype is {given}, but the model expects {expected}")]
    DatatypeMismatch {
        /// The input.
        name: String,
        /// Its element type as sent.
        given: DataType,
        /// The model's element type for it.
        expected: DataType,
    },
    /// An input's shape does not fit the model's dims (rank, or a fixed
    /// dimension).
    #[error("input '{name}': unexpected shape {}, the model expects {expected:?}", Dims(.shape))]
    ShapeMismatch {
        /// The input.
        name: String,
        /// Its shape as sent.
        shape: Vec<i64>,
        /// The shape the model expects, as its metadata shows it (`-1`
        /// for any size, the batch dimension first when it batches).
        expected: Vec<i64>,
    },
    /// An input's batch dimension is 0 or over the model's `max_batch_size`.
    #[error("input '{name}': batch size {rows} must be between 1 and the model's max_batch_size {max_batch_size}")]
    BatchSize {
        /// The input.
        name: String,
        /// Its batch dimension.
        rows: i64,
        /// The model's largest batch.
        max_batch_size: u32,
    },
    /// Two inputs of one request with different batch dimensions.
    #[error("inputs '{first}' and '{second}' disagree on the batch size ({first_rows} vs {second_rows})")]
    BatchDisagreement {
        /// The first input of the request.
        first: String,
        /// Its batch dimension.
        first_rows: usize,
        /// The input that disagrees with it.
        second: String,
        /// Its batch dimension.
        second_rows: usize,
    },
    /// Inputs of the model the request does not send.
    #[error(
        "expected {expected} inputs but got {}: missing {}",
        .expected.saturating_sub(.missing.len()),
        Names(.missing)
    )]
    MissingInputs {
        /// Inputs the model has.
        expected: usize,
        /// The ones missing, in model order.
        missing: Vec<String>,
    },
    /// An output the model does not have.
    #[error("unexpected output '{name}': the model's outputs are {}", Names(.model_outputs))]
    UnexpectedOutput {
        /// The output as the client named it.
        name: String,
        /// The model's outputs, in model order.
        model_outputs: Vec<String>,
    },
    /// An output asked for twice.
    #[error("output '{name}' is requested more than once")]
    DuplicateOutput {
        /// The output.
        name: String,
    },
}

impl From<InputError> for Error {
    fn from(error: InputError) -> Error {
        match error {
            // A refusal for size, not form: answered like an oversized body.
            InputError::OverLimit { .. } => Error::PayloadTooLarge(error.to_string()),
            _ => Error::InvalidArgument(error.to_string()),
        }
    }
}

/// Whose parameters hold a refused one, as [`InputError::UnsupportedParameter`]
/// names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParameterOwner {
    /// The request's own parameters.
    Request,
    /// An input's, by name.
    Input(String),
    /// A requested output's, by name.
    Output(String),
}

impl std::fmt::Display for ParameterOwner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParameterOwner::Request => f.write_str("request"),
            ParameterOwner::Input(name) => write!(f, "input '{name}'"),
            ParameterOwner::Output(name) => write!(f, "output '{name}'"),
        }
    }
}

/// Tensor names as refusals list them: `'a', 'b'`.
struct Names<'a>(&'a [String]);

impl std::fmt::Display for Names<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, name) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "'{name}'")?;
        }
        Ok(())
    }
}

/// The bytes a shape needs, or "too many" when they overflow a `usize`.
struct NeededBytes<'a>(&'a Option<usize>);

impl std::fmt::Display for NeededBytes<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(bytes) => write!(f, "{bytes}"),
            None => f.write_str("too many"),
        }
    }
}

/// Why [`checked_element_count`] refuses a shape. The caller owns the name
/// and the shape and moves them into the [`InputError`]: a hostile shape can
/// hold millions of dimensions, and an error is no reason to copy them.
#[derive(Clone, Copy, Debug)]
enum ShapeFault {
    /// The first negative dimension.
    Negative(i64),
    /// The element count overflows a `usize`.
    TooManyElements,
}

impl ShapeFault {
    fn refuse(self, name: String, shape: Vec<i64>) -> InputError {
        match self {
            ShapeFault::Negative(dimension) => InputError::NegativeDimension { name, shape, dimension },
            ShapeFault::TooManyElements => InputError::TooManyElements { name, shape },
        }
    }
}

/// Checks a shape given by a client: every dimension non-negative, and the
/// element count representable. Returns the element count.
fn checked_element_count(shape: &[i64]) -> Result<usize, ShapeFault> {
    if let Some(&d) = shape.iter().find(|&&d| d < 0) {
        return Err(ShapeFault::Negative(d));
    }
    element_count(shape).ok_or(ShapeFault::TooManyElements)
}

/// An input as a front door declares it, before its data: the datatype is
/// known, the shape sound, and a fixed-size input's bytes within the request
/// limit (checked before anything is allocated for it). Both decoders build
/// one, find its data in their own wire form, and finish it with
/// [`DeclaredInput::with_data`].
#[derive(Debug)]
pub struct DeclaredInput {
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub dtype: DataType,
    /// Concrete shape.
    pub shape: Vec<i64>,
    /// Elements the shape holds.
    pub count: usize,
    /// Bytes the data must have, for fixed-size types (`None` for BYTES).
    pub fixed_bytes: Option<usize>,
}

impl DeclaredInput {
    /// Checks an input's datatype (a V2 name) and shape; `limit` is what is
    /// left of the request's decoded-bytes limit.
    pub fn new(name: String, datatype: &str, shape: Vec<i64>, limit: usize) -> Result<DeclaredInput, InputError> {
        let Some(dtype) = DataType::from_v2(datatype) else {
            return Err(InputError::UnknownDatatype { name, datatype: datatype.to_owned() });
        };
        let count = match checked_element_count(&shape) {
            Ok(count) => count,
            Err(fault) => return Err(fault.refuse(name, shape)),
        };
        // Checked before anything is allocated for the data.
        let fixed_bytes = match dtype.element_size() {
            None => None,
            Some(size) => match count.checked_mul(size) {
                Some(bytes) if bytes <= limit => Some(bytes),
                _ => return Err(InputError::OverLimit { name, count, dtype, limit }),
            },
        };
        Ok(DeclaredInput { name, dtype, shape, count, fixed_bytes })
    }

    /// The tensor, once its data holds exactly what the declaration calls for.
    pub fn with_data(self, data: Bytes) -> Result<Tensor, InputError> {
        Tensor::checked(self.name, self.dtype, self.shape, data)
    }
}

impl Tensor {
    /// Builds a tensor after checking that `data` holds exactly what `shape`
    /// and `dtype` call for.
    pub fn checked(name: String, dtype: DataType, shape: Vec<i64>, data: Bytes) -> Result<Tensor, InputError> {
        let count = match checked_element_count(&shape) {
            Ok(count) => count,
            Err(fault) => return Err(fault.refuse(name, shape)),
        };
        match dtype.element_size() {
            Some(size) => {
                let expected = count.checked_mul(size);
                if expected != Some(data.len()) {
                    return Err(InputError::ByteCount { name, shape, dtype, expected, got: data.len() });
                }
                // Any non-zero byte is true, as in C and numpy (perf_analyzer's
                // random data sends such bytes); backends get canonical 0/1.
                if dtype == DataType::Bool && data.iter().any(|&b| b > 1) {
                    let canonical: Vec<u8> = data.iter().map(|&b| u8::from(b != 0)).collect();
                    return Ok(Tensor { name, dtype, shape, data: Bytes::from(canonical) });
                }
            }
            None => {
                if let Err(layout) = check_bytes_layout(&data, count) {
                    return Err(InputError::BytesLayout { name, layout });
                }
            }
        }
        Ok(Tensor { name, dtype, shape, data })
    }
}

/// Parameters whose meaning the gateway must not silently ignore, with why
/// they are refused. Both front doors check request, input and output
/// parameters against this list.
const UNSUPPORTED_PARAMETERS: &[(&str, &str)] = &[
    ("sequence_id", "sequence batching is not supported"),
    ("sequence_start", "sequence batching is not supported"),
    ("sequence_end", "sequence batching is not supported"),
    ("shared_memory_region", "shared memory is not supported"),
    ("classification", "the classification extension is not supported"),
];

/// Refuses a parameter set (of a request, an input or an output, named by
/// `owner`, which is only built for the error) that holds a parameter the
/// gateway does not support.
pub fn refuse_unsupported_parameters<'a>(
    keys: impl IntoIterator<Item = &'a String>,
    owner: impl FnOnce() -> ParameterOwner,
) -> Result<(), InputError> {
    for key in keys {
        if let Some(&(_, why)) = UNSUPPORTED_PARAMETERS.iter().find(|(k, _)| k == key) {
            return Err(InputError::UnsupportedParameter { owner: owner(), key: key.clone(), why });
        }
    }
    Ok(())
}

/// An output the client asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestedOutput {
    /// Output name.
    pub name: String,
    /// HTTP only: return this output in binary form (`binary_data`); `None`
    /// falls back to the request-level `binary_data_output`.
    pub binary: Option<bool>,
}

/// A decoded inference request, not yet matched to a model.
#[derive(Clone, Debug, Default)]
pub struct InferRequest {
    /// Client-chosen id, echoed back.
    pub id: Option<String>,
    /// A raw binary request's body (`Inference-Header-Content-Length: 0`):
    /// the data of the model's only input, shaped by the version that serves
    /// the request (under a route, not known until the route picks it).
    pub raw_input: Option<Bytes>,
    /// Input tensors, in the order the client sent them.
    pub inputs: Vec<Tensor>,
    /// Outputs asked for; empty means all.
    pub outputs: Vec<RequestedOutput>,
    /// HTTP: return outputs in binary unless an output says otherwise.
    pub binary_output: bool,
    /// Client deadline (Triton's `timeout` parameter, `grpc-timeout`, or the
    /// timeout header), measured from arrival.
    pub timeout: Option<Duration>,
}

impl InferRequest {
    /// Bounds the request's deadline by another one the client set (a
    /// `grpc-timeout`, the timeout header): the shorter of the two holds.
    pub fn cap_timeout(&mut self, limit: Duration) {
        self.timeout = Some(self.timeout.map_or(limit, |t| t.min(limit)));
    }
}

/// One output of a response.
#[derive(Clone, Debug, PartialEq)]
pub struct ResponseOutput {
    /// The tensor.
    pub tensor: Tensor,
    /// HTTP: send in the binary section.
    pub binary: bool,
}

/// A completed inference.
#[derive(Clone, Debug, PartialEq)]
pub struct InferResponse {
    /// Model name as the client addressed it.
    pub model_name: String,
    /// Version that served the request.
    pub model_version: u64,
    /// The request's id.
    pub id: Option<String>,
    /// Outputs in the order requested (model order when all were asked for).
    pub outputs: Vec<ResponseOutput>,
}

/// One input or output of a model as clients see it: dims exclude the batch
/// dimension when the model batches (Triton's `dims`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IoSpec {
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub dtype: DataType,
    /// Dims without the batch dimension; -1 for any size.
    pub dims: Vec<i64>,
}

/// The inputs and outputs of a model version and its batching limit.
#[derive(Clone, Debug)]
pub struct ModelIo {
    /// 0 when the model does not batch.
    pub max_batch_size: u32,
    /// Inputs in model order.
    pub inputs: Vec<IoSpec>,
    /// Outputs in model order.
    pub outputs: Vec<IoSpec>,
    input_index: HashMap<String, usize>,
    output_index: HashMap<String, usize>,
}

/// A request matched to a model: inputs in model order, outputs resolved.
#[derive(Debug)]
pub struct ValidRequest {
    /// Inputs in the model's order.
    pub inputs: Vec<Tensor>,
    /// Rows this request adds to a batch (1 for models that do not batch).
    pub batch_size: usize,
    /// Indices of the outputs to return, in the order to return them.
    pub outputs: SmallVec<[usize; 4]>,
    /// Per returned output: binary form (HTTP only).
    pub binary: SmallVec<[bool; 4]>,
}

impl ValidRequest {
    /// Whether two requests can share a batch: same non-batch dims for every input.
    pub fn batches_with(&self, other: &ValidRequest) -> bool {
        self.inputs.iter().zip(&other.inputs).all(|(a, b)| a.shape.get(1..) == b.shape.get(1..))
    }
}

impl ModelIo {
    /// Builds the lookup tables.
    pub fn new(max_batch_size: u32, inputs: Vec<IoSpec>, outputs: Vec<IoSpec>) -> ModelIo {
        let input_index = inputs.iter().enumerate().map(|(i, s)| (s.name.clone(), i)).collect();
        let output_index = outputs.iter().enumerate().map(|(i, s)| (s.name.clone(), i)).collect();
        ModelIo { max_batch_size, inputs, outputs, input_index, output_index }
    }

    /// The shape clients see in metadata: `[-1] + dims` when batching.
    pub fn full_shape(&self, spec: &IoSpec) -> Vec<i64> {
        if self.max_batch_size > 0 {
            std::iter::once(-1).chain(spec.dims.iter().copied()).collect()
        } else {
            spec.dims.clone()
        }
    }

    /// The tensor of a raw binary request: the body is the data of the only
    /// input, which must have fixed dims; a batch of one.
    fn raw_input(&self, body: Bytes) -> Result<Tensor, InputError> {
        let [spec] = self.inputs.as_slice() else {
            return Err(InputError::RawRequestInputCount { inputs: self.inputs.len() });
        };
        if spec.dims.iter().any(|&d| d < 0) {
            return Err(InputError::RawRequestVariableDims { name: spec.name.clone(), dims: spec.dims.clone() });
        }
        let mut shape = spec.dims.clone();
        if self.max_batch_size > 0 {
            shape.insert(0, 1);
        }
        Tensor::checked(spec.name.clone(), spec.dtype, shape, body)
    }

    /// Matches a request to this model. Every mismatch is a 400 naming the
    /// tensor, what the model expects and what was given.
    pub fn validate(&self, mut request: InferRequest) -> Result<ValidRequest, InputError> {
        if let Some(body) = request.raw_input.take() {
            request.inputs = vec![self.raw_input(body)?];
        }
        // Per input of the request, its index among the model's inputs.
        let mut model_index: SmallVec<[usize; 4]> = SmallVec::with_capacity(request.inputs.len());
        let mut given: SmallVec<[bool; 4]> = smallvec::smallvec![false; self.inputs.len()];
        // The rows of the first input, and where it is in the request.
        let mut batch: Option<(usize, usize)> = None;
        for at in 0..request.inputs.len() {
            let tensor = &mut request.inputs[at];
            let Some(&index) = self.input_index.get(&tensor.name) else {
                let name = std::mem::take(&mut tensor.name);
                return Err(InputError::UnexpectedInput { name, model_inputs: names(&self.inputs) });
            };
            if std::mem::replace(&mut given[index], true) {
                return Err(InputError::DuplicateInput { name: std::mem::take(&mut tensor.name) });
            }
            let spec = &self.inputs[index];
            if tensor.dtype != spec.dtype {
                return Err(InputError::DatatypeMismatch {
                    name: std::mem::take(&mut tensor.name),
                    given: tensor.dtype,
                    expected: spec.dtype,
                });
            }
            let rows = self.check_shape(spec, tensor)?;
            match batch {
                Some((first_rows, first)) if first_rows != rows => {
                    return Err(InputError::BatchDisagreement {
                        first: request.inputs[first].name.clone(),
                        first_rows,
                        second: std::mem::take(&mut request.inputs[at].name),
                        second_rows: rows,
                    });
                }
                Some(_) => {}
                None => batch = Some((rows, at)),
            }
            model_index.push(index);
        }
        let missing: Vec<String> =
            self.inputs.iter().zip(&given).filter(|(_, given)| !**given).map(|(spec, _)| spec.name.clone()).collect();
        if !missing.is_empty() {
            return Err(InputError::MissingInputs { expected: self.inputs.len(), missing });
        }
        // Every input once: `model_index` is a permutation. Clients usually
        // send the inputs in the model's order, and then they stay where they are.
        let mut inputs = request.inputs;
        if model_index.iter().enumerate().any(|(at, &index)| at != index) {
            let mut slots: Vec<Option<Tensor>> = inputs.iter().map(|_| None).collect();
            for (tensor, &index) in inputs.into_iter().zip(&model_index) {
                slots[index] = Some(tensor);
            }
            inputs = slots.into_iter().flatten().collect();
        }
        let batch_size = batch.map_or(1, |(rows, _)| rows);

        let (outputs, binary) = if request.outputs.is_empty() {
            ((0..self.outputs.len()).collect(), smallvec::smallvec![request.binary_output; self.outputs.len()])
        } else {
            let mut seen: SmallVec<[bool; 4]> = smallvec::smallvec![false; self.outputs.len()];
            let mut outputs = SmallVec::with_capacity(request.outputs.len());
            let mut binary = SmallVec::with_capacity(request.outputs.len());
            for wanted in &request.outputs {
                let Some(&index) = self.output_index.get(&wanted.name) else {
                    return Err(InputError::UnexpectedOutput {
                        name: wanted.name.clone(),
                        model_outputs: names(&self.outputs),
                    });
                };
                if std::mem::replace(&mut seen[index], true) {
                    return Err(InputError::DuplicateOutput { name: wanted.name.clone() });
                }
                outputs.push(index);
                binary.push(wanted.binary.unwrap_or(request.binary_output));
            }
            (outputs, binary)
        };
        Ok(ValidRequest { inputs, batch_size, outputs, binary })
    }

    /// Checks one input's shape against the model and returns its batch rows.
    /// A shape that does not fit moves out of the (refused) tensor into the
    /// error: a client's shape can hold millions of dimensions, and an error
    /// is no reason to copy them.
    fn check_shape(&self, spec: &IoSpec, tensor: &mut Tensor) -> Result<usize, InputError> {
        let batching = self.max_batch_size > 0;
        let shape = &tensor.shape;
        let dims = if batching { shape.get(1..).unwrap_or(&[]) } else { shape };
        let fits = shape.len() == spec.dims.len() + usize::from(batching)
            && dims.iter().zip(&spec.dims).all(|(&given, &want)| want < 0 || given == want);
        if !fits {
            return Err(InputError::ShapeMismatch {
                name: spec.name.clone(),
                shape: std::mem::take(&mut tensor.shape),
                expected: self.full_shape(spec),
            });
        }
        if !batching {
            return Ok(1);
        }
        let rows = shape[0];
        if rows < 1 || rows as u64 > u64::from(self.max_batch_size) {
            return Err(InputError::BatchSize { name: spec.name.clone(), rows, max_batch_size: self.max_batch_size });
        }
        Ok(rows as usize)
    }
}

fn names(specs: &[IoSpec]) -> Vec<String> {
    specs.iter().map(|s| s.name.clone()).collect()
}

/// What every request a front door decodes must satisfy (for the decoders'
/// property tests): shapes the checks accept, fixed-size data of exactly the
/// bytes its shape calls for, and no more than `limit` bytes in all.
#[cfg(test)]
pub(crate) fn check_decoded(request: &InferRequest, limit: usize) -> Result<(), String> {
    let mut total = 0usize;
    for tensor in &request.inputs {
        let count = checked_element_count(&tensor.shape).map_err(|fault| {
            format!("accepted a shape it should refuse: {}", fault.refuse(tensor.name.clone(), tensor.shape.clone()))
        })?;
        if let Some(size) = tensor.dtype.element_size()
            && tensor.data.len() != count * size
        {
            return Err(format!("{} {:?} holds {} bytes", tensor.dtype, tensor.shape, tensor.data.len()));
        }
        total += tensor.data.len();
    }
    if total > limit {
        return Err(format!("{total} decoded bytes, over the limit of {limit}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32_tensor(name: &str, shape: Vec<i64>) -> Tensor {
        let count = element_count(&shape).unwrap();
        Tensor::checked(name.into(), DataType::Fp32, shape, Bytes::from(vec![0u8; count * 4])).unwrap()
    }

    fn mlp() -> ModelIo {
        ModelIo::new(
            8,
            vec![IoSpec { name: "x".into(), dtype: DataType::Fp32, dims: vec![4] }],
            vec![
                IoSpec { name: "y".into(), dtype: DataType::Fp32, dims: vec![3] },
                IoSpec { name: "z".into(), dtype: DataType::Fp32, dims: vec![-1] },
            ],
        )
    }

    fn request(inputs: Vec<Tensor>) -> InferRequest {
        InferRequest { inputs, ..Default::default() }
    }

    fn refusal(result: Result<ValidRequest, InputError>) -> InputError {
        result.unwrap_err()
    }

    #[test]
    fn tensor_bytes_must_match_shape_exactly_and_bools_become_0_or_1() {
        let err = Tensor::checked("x".into(), DataType::Fp32, vec![2, 2], Bytes::from(vec![0u8; 12])).unwrap_err();
        assert_eq!(
            err,
            InputError::ByteCount {
                name: "x".into(),
                shape: vec![2, 2],
                dtype: DataType::Fp32,
                expected: Some(16),
                got: 12
            }
        );
        let err = Tensor::checked("x".into(), DataType::Int8, vec![2, -5], Bytes::new()).unwrap_err();
        assert_eq!(err, InputError::NegativeDimension { name: "x".into(), shape: vec![2, -5], dimension: -5 });
        let err = Tensor::checked("x".into(), DataType::Fp64, vec![1 << 40, 1 << 40], Bytes::new()).unwrap_err();
        assert_eq!(err, InputError::TooManyElements { name: "x".into(), shape: vec![1 << 40, 1 << 40] });
        let err = Tensor::checked("x".into(), DataType::Fp64, vec![1 << 62], Bytes::new()).unwrap_err();
        assert!(matches!(err, InputError::ByteCount { expected: None, got: 0, .. }), "{err:?}");
        let bools = Tensor::checked("b".into(), DataType::Bool, vec![3], Bytes::from_static(&[1, 7, 0])).unwrap();
        assert_eq!(&bools.data[..], &[1, 1, 0], "non-zero bytes are true");
        let err = Tensor::checked("s".into(), DataType::Bytes, vec![2], Bytes::from_static(&[1, 0, 0, 0, b'a']));
        assert_eq!(
            err.unwrap_err(),
            InputError::BytesLayout { name: "s".into(), layout: BytesLayoutError::Count { expected: 2, found: 1 } }
        );
    }

    #[test]
    fn declared_inputs_are_refused_before_their_data_is_allocated() {
        let err = DeclaredInput::new("a".into(), "FP99", vec![1], 1 << 20).unwrap_err();
        assert_eq!(err, InputError::UnknownDatatype { name: "a".into(), datatype: "FP99".into() });
        let err = DeclaredInput::new("a".into(), "FP64", vec![1000], 4096).unwrap_err();
        assert_eq!(err, InputError::OverLimit { name: "a".into(), count: 1000, dtype: DataType::Fp64, limit: 4096 });
        assert!(matches!(Error::from(err), Error::PayloadTooLarge(_)), "over the limit is a 413");
        let err = DeclaredInput::new("a".into(), "INT8", vec![3, -1], 4096).unwrap_err();
        assert!(matches!(err, InputError::NegativeDimension { dimension: -1, .. }), "{err:?}");
        assert!(matches!(Error::from(err), Error::InvalidArgument(_)));
        let parameters = ["timeout".to_owned(), "sequence_end".to_owned()];
        let err = refuse_unsupported_parameters(&parameters, || ParameterOwner::Input("a".into())).unwrap_err();
        assert!(
            matches!(&err, InputError::UnsupportedParameter { owner: ParameterOwner::Input(name), key, .. }
                if name == "a" && key == "sequence_end"),
            "{err:?}"
        );
    }

    #[test]
    fn validate_orders_inputs_and_resolves_outputs() {
        let io = ModelIo::new(
            0,
            vec![
                IoSpec { name: "a".into(), dtype: DataType::Fp32, dims: vec![2] },
                IoSpec { name: "b".into(), dtype: DataType::Fp32, dims: vec![2] },
            ],
            vec![IoSpec { name: "c".into(), dtype: DataType::Fp32, dims: vec![2] }],
        );
        let valid = io.validate(request(vec![f32_tensor("b", vec![2]), f32_tensor("a", vec![2])])).unwrap();
        assert_eq!(valid.inputs[0].name, "a");
        assert_eq!(valid.batch_size, 1);
        assert_eq!(valid.outputs.as_slice(), [0]);
    }

    #[test]
    fn validate_refuses_each_mismatch_naming_what_was_given_and_expected() {
        let io = mlp();
        assert_eq!(
            refusal(io.validate(request(vec![]))),
            InputError::MissingInputs { expected: 1, missing: vec!["x".into()] }
        );
        assert_eq!(
            refusal(io.validate(request(vec![f32_tensor("q", vec![1, 4])]))),
            InputError::UnexpectedInput { name: "q".into(), model_inputs: vec!["x".into()] }
        );
        assert_eq!(
            refusal(io.validate(request(vec![f32_tensor("x", vec![1, 4]), f32_tensor("x", vec![1, 4])]))),
            InputError::DuplicateInput { name: "x".into() }
        );
        assert_eq!(
            refusal(io.validate(request(vec![f32_tensor("x", vec![1, 5])]))),
            InputError::ShapeMismatch { name: "x".into(), shape: vec![1, 5], expected: vec![-1, 4] }
        );
        assert!(matches!(
            refusal(io.validate(request(vec![f32_tensor("x", vec![4])]))),
            InputError::ShapeMismatch { shape, .. } if shape == [4]
        ));
        assert_eq!(
            refusal(io.validate(request(vec![f32_tensor("x", vec![9, 4])]))),
            InputError::BatchSize { name: "x".into(), rows: 9, max_batch_size: 8 }
        );
        assert!(matches!(
            refusal(io.validate(request(vec![f32_tensor("x", vec![0, 4])]))),
            InputError::BatchSize { rows: 0, .. }
        ));
        let int = Tensor::checked("x".into(), DataType::Int32, vec![1, 4], Bytes::from(vec![0u8; 16])).unwrap();
        assert_eq!(
            refusal(io.validate(request(vec![int]))),
            InputError::DatatypeMismatch { name: "x".into(), given: DataType::Int32, expected: DataType::Fp32 }
        );

        let mut wrong_output = request(vec![f32_tensor("x", vec![1, 4])]);
        wrong_output.outputs = vec![RequestedOutput { name: "nope".into(), binary: None }];
        assert_eq!(
            refusal(io.validate(wrong_output)),
            InputError::UnexpectedOutput { name: "nope".into(), model_outputs: vec!["y".into(), "z".into()] }
        );
        let mut twice = request(vec![f32_tensor("x", vec![1, 4])]);
        twice.outputs = vec![RequestedOutput { name: "y".into(), binary: None }; 2];
        assert_eq!(refusal(io.validate(twice)), InputError::DuplicateOutput { name: "y".into() });
    }

    #[test]
    fn inputs_of_one_request_agree_on_the_batch_size() {
        let io = ModelIo::new(
            8,
            vec![
                IoSpec { name: "a".into(), dtype: DataType::Fp32, dims: vec![1] },
                IoSpec { name: "b".into(), dtype: DataType::Fp32, dims: vec![1] },
            ],
            vec![],
        );
        assert_eq!(
            refusal(io.validate(request(vec![f32_tensor("a", vec![2, 1]), f32_tensor("b", vec![3, 1])]))),
            InputError::BatchDisagreement { first: "a".into(), first_rows: 2, second: "b".into(), second_rows: 3 }
        );
    }

    #[test]
    fn a_raw_request_needs_one_input_of_fixed_dims() {
        let raw =
            |body: &'static [u8]| InferRequest { raw_input: Some(Bytes::from_static(body)), ..Default::default() };
        let spec = |name: &str| IoSpec { name: name.into(), dtype: DataType::Fp32, dims: vec![4] };
        let two = ModelIo::new(0, vec![spec("a"), spec("b")], vec![]);
        assert_eq!(refusal(two.validate(raw(b""))), InputError::RawRequestInputCount { inputs: 2 });
        let variable =
            ModelIo::new(0, vec![IoSpec { name: "v".into(), dtype: DataType::Fp32, dims: vec![-1] }], vec![]);
        assert_eq!(
            refusal(variable.validate(raw(b""))),
            InputError::RawRequestVariableDims { name: "v".into(), dims: vec![-1] }
        );
        assert!(matches!(
            refusal(mlp().validate(raw(&[0; 4]))),
            InputError::ByteCount { expected: Some(16), got: 4, .. }
        ));
        assert_eq!(mlp().validate(raw(&[0; 16])).unwrap().inputs[0].shape, vec![1, 4]);
    }

    /// The messages clients see (and compare), one per kind of text: client
    /// text quoted through `Quoted` and `Dims`, "too many" bytes, the 413,
    /// a parameter's owner, lists of names, a model shape.
    #[test]
    fn refusals_render_the_messages_clients_see() {
        let cases = [
            (
                InputError::NegativeDimension { name: "a\nb".into(), shape: vec![1; 20], dimension: -3 },
                r"input 'a\nb': shape [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, ... (20 dimensions)] has negative dimension -3",
            ),
            (
                InputError::ByteCount {
                    name: "x".into(),
                    shape: vec![1 << 62],
                    dtype: DataType::Fp64,
                    expected: None,
                    got: 0,
                },
                "input 'x': shape [4611686018427387904] of FP64 needs too many bytes, got 0",
            ),
            (
                InputError::OverLimit { name: "a".into(), count: 100, dtype: DataType::Fp64, limit: 8 },
                "input 'a': 100 FP64 elements exceed the request limit of 8 bytes",
            ),
            (
                InputError::UnsupportedParameter {
                    owner: ParameterOwner::Output("y".into()),
                    key: "classification".into(),
                    why: "the classification extension is not supported",
                },
                "output 'y': parameter 'classification': the classification extension is not supported",
            ),
            (
                InputError::MissingInputs { expected: 3, missing: vec!["a".into(), "c".into()] },
                "expected 3 inputs but got 1: missing 'a', 'c'",
            ),
            (
                InputError::ShapeMismatch { name: "x".into(), shape: vec![1, 5], expected: vec![-1, 4] },
                "input 'x': unexpected shape [1, 5], the model expects [-1, 4]",
            ),
        ];
        for (error, text) in cases {
            assert_eq!(error.to_string(), text);
            assert_eq!(Error::from(error).message(), text);
        }
    }

    #[test]
    fn requests_batch_together_only_with_equal_non_batch_dims() {
        let io = ModelIo::new(
            8,
            vec![IoSpec { name: "x".into(), dtype: DataType::Fp32, dims: vec![-1] }],
            vec![IoSpec { name: "y".into(), dtype: DataType::Fp32, dims: vec![-1] }],
        );
        let a = io.validate(request(vec![f32_tensor("x", vec![2, 3])])).unwrap();
        let b = io.validate(request(vec![f32_tensor("x", vec![5, 3])])).unwrap();
        let c = io.validate(request(vec![f32_tensor("x", vec![1, 4])])).unwrap();
        assert_eq!(a.batch_size, 2);
        assert!(a.batches_with(&b));
        assert!(!a.batches_with(&c));
    }

    proptest::proptest! {
        #[test]
        fn a_fixed_size_tensor_is_accepted_exactly_when_its_bytes_match_its_shape(
            dtype in proptest::sample::select(DataType::ALL.iter().copied().filter(|d| d.element_size().is_some()).collect::<Vec<_>>()),
            shape in proptest::collection::vec(proptest::prop_oneof![8 => 0i64..4, 1 => -2i64..0, 1 => (1i64 << 40)..i64::MAX], 0..4),
            len in 0usize..80,
        ) {
            let size = dtype.element_size().unwrap_or(1);
            let fits = shape.iter().all(|&d| d >= 0)
                && shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d as u64)).and_then(|n| n.checked_mul(size as u64))
                    == Some(len as u64);
            let checked = Tensor::checked("x".into(), dtype, shape.clone(), Bytes::from(vec![1u8; len]));
            proptest::prop_assert_eq!(checked.is_ok(), fits, "{:?} {:?} {} bytes: {:?}", dtype, shape, len, checked.err());
        }

        /// A BYTES tensor is accepted exactly when its data is `count` whole length-prefixed
        /// elements (4-byte little-endian length, then the bytes), checked against an oracle that
        /// walks the same data independently; cutting or padding the data is refused.
        #[test]
        fn a_bytes_tensor_is_accepted_exactly_when_its_elements_are_whole(
            elements in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..12), 0..6),
            declared in 0i64..8,
            edit in 0u8..3,
            cut in 1usize..64,
            extra in proptest::collection::vec(proptest::num::u8::ANY, 1..6),
        ) {
            let mut data = Vec::new();
            for element in &elements {
                data.extend_from_slice(&(element.len() as u32).to_le_bytes());
                data.extend_from_slice(element);
            }
            // 0: as encoded; 1: cut short; 2: with bytes after the last element.
            match edit {
                1 => data.truncate(data.len().saturating_sub(cut.min(data.len()))),
                2 => data.extend_from_slice(&extra),
                _ => {}
            }
            // The oracle: how many whole elements the data holds, and whether nothing is left over.
            let mut rest = &data[..];
            let mut whole = 0i64;
            let oracle_ok = loop {
                if rest.is_empty() {
                    break true;
                }
                if rest.len() < 4 {
                    break false;
                }
                let n = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                if rest.len() - 4 < n {
                    break false;
                }
                rest = &rest[4 + n..];
                whole += 1;
            } && whole == declared;
            let checked = Tensor::checked("x".into(), DataType::Bytes, vec![declared], Bytes::from(data.clone()));
            proptest::prop_assert_eq!(checked.is_ok(), oracle_ok, "{} elements declared, data {:?}: {:?}", declared, data, checked.err());
            if let Ok(tensor) = checked {
                proptest::prop_assert_eq!(&tensor.data[..], &data[..], "the data is kept as sent");
            }
        }
    }
}
