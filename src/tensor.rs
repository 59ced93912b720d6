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
use modelgate_backend::{DataType, check_bytes_layout, element_count};

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

/// Checks a shape given by a client: every dimension non-negative, and the
/// element count representable. Returns the element count.
fn checked_element_count(name: &str, shape: &[i64]) -> Result<usize, Error> {
    if let Some(d) = shape.iter().find(|&&d| d < 0) {
        return Err(Error::invalid(format!(
            "input '{}': shape {} has negative dimension {d}",
            Quoted(name),
            Dims(shape)
        )));
    }
    element_count(shape)
        .ok_or_else(|| Error::invalid(format!("input '{}': shape {} has too many elements", Quoted(name), Dims(shape))))
}

/// Bytes a fixed-size tensor of `count` elements takes, refused when it is over
/// `limit` (the request size limit): this is checked before any allocation.
fn checked_byte_size(name: &str, dtype: DataType, count: usize, limit: usize) -> Result<Option<usize>, Error> {
    let Some(size) = dtype.element_size() else {
        return Ok(None);
    };
    match count.checked_mul(size) {
        Some(bytes) if bytes <= limit => Ok(Some(bytes)),
        _ => Err(Error::PayloadTooLarge(format!(
            "input '{name}': {count} {dtype} elements exceed the request limit of {limit} bytes"
        ))),
    }
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
    pub fn new(name: String, datatype: &str, shape: Vec<i64>, limit: usize) -> Result<DeclaredInput, Error> {
        let dtype = DataType::from_v2(datatype)
            .ok_or_else(|| Error::invalid(format!("input '{name}': unknown datatype '{datatype}'")))?;
        let count = checked_element_count(&name, &shape)?;
        let fixed_bytes = checked_byte_size(&name, dtype, count, limit)?;
        Ok(DeclaredInput { name, dtype, shape, count, fixed_bytes })
    }

    /// The tensor, once its data holds exactly what the declaration calls for.
    pub fn with_data(self, data: Bytes) -> Result<Tensor, Error> {
        Tensor::checked(self.name, self.dtype, self.shape, data)
    }
}

impl Tensor {
    /// Builds a tensor after checking that `data` holds exactly what `shape`
    /// and `dtype` call for.
    pub fn checked(name: String, dtype: DataType, shape: Vec<i64>, data: Bytes) -> Result<Tensor, Error> {
        let count = checked_element_count(&name, &shape)?;
        match dtype.element_size() {
            Some(size) => {
                let expected = count.checked_mul(size);
                if expected != Some(data.len()) {
                    return Err(Error::invalid(format!(
                        "input '{}': shape {} of {dtype} needs {} bytes, got {}",
                        Quoted(&name),
                        Dims(&shape),
                        expected.map_or_else(|| "too many".to_owned(), |n| n.to_string()),
                        data.len()
                    )));
                }
                // Any non-zero byte is true, as in C and numpy (perf_analyzer's
                // random data sends such bytes); backends get canonical 0/1.
                if dtype == DataType::Bool && data.iter().any(|&b| b > 1) {
                    let canonical: Vec<u8> = data.iter().map(|&b| u8::from(b != 0)).collect();
                    return Ok(Tensor { name, dtype, shape, data: Bytes::from(canonical) });
                }
            }
            None => check_bytes_layout(&data, count).map_err(|e| Error::invalid(format!("input '{name}': {e}")))?,
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
/// `what`, which is only built for the error) that holds a parameter the
/// gateway does not support.
pub fn refuse_unsupported_parameters<'a>(
    keys: impl IntoIterator<Item = &'a String>,
    what: impl FnOnce() -> String,
) -> Result<(), Error> {
    for key in keys {
        if let Some((_, why)) = UNSUPPORTED_PARAMETERS.iter().find(|(k, _)| k == key) {
            return Err(Error::invalid(format!("{}: parameter '{key}': {why}", what())));
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
    pub outputs: Vec<usize>,
    /// Per returned output: binary form (HTTP only).
    pub binary: Vec<bool>,
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
    fn raw_input(&self, body: Bytes) -> Result<Tensor, Error> {
        let [spec] = self.inputs.as_slice() else {
            return Err(Error::invalid(format!(
                "a raw binary request needs a model with exactly one input; this one has {}",
                self.inputs.len()
            )));
        };
        if spec.dims.iter().any(|&d| d < 0) {
            return Err(Error::invalid(format!(
                "input '{}' has variable dimensions {:?}; send a JSON header with the shape",
                spec.name, spec.dims
            )));
        }
        let mut shape = spec.dims.clone();
        if self.max_batch_size > 0 {
            shape.insert(0, 1);
        }
        Tensor::checked(spec.name.clone(), spec.dtype, shape, body)
    }

    /// Matches a request to this model. Every mismatch is a 400 naming the
    /// tensor, what the model expects and what was given.
    pub fn validate(&self, mut request: InferRequest) -> Result<ValidRequest, Error> {
        if let Some(body) = request.raw_input.take() {
            request.inputs = vec![self.raw_input(body)?];
        }
        let mut slots: Vec<Option<Tensor>> = vec![None; self.inputs.len()];
        let mut batch: Option<(usize, String)> = None;
        for tensor in request.inputs {
            let Some(&index) = self.input_index.get(&tensor.name) else {
                return Err(Error::invalid(format!(
                    "unexpected input '{}': the model's inputs are {}",
                    tensor.name,
                    names(&self.inputs)
                )));
            };
            if slots[index].is_some() {
                return Err(Error::invalid(format!("input '{}' appears more than once", tensor.name)));
            }
            let spec = &self.inputs[index];
            if tensor.dtype != spec.dtype {
                return Err(Error::invalid(format!(
                    "input '{}': datatype is {}, but the model expects {}",
                    tensor.name, tensor.dtype, spec.dtype
                )));
            }
            let rows = self.check_shape(spec, &tensor.shape)?;
            match &batch {
                Some((b, first)) if *b != rows => {
                    return Err(Error::invalid(format!(
                        "inputs '{first}' and '{}' disagree on the batch size ({b} vs {rows})",
                        tensor.name
                    )));
                }
                Some(_) => {}
                None => batch = Some((rows, tensor.name.clone())),
            }
            slots[index] = Some(tensor);
        }
        let missing: Vec<&str> = self
            .inputs
            .iter()
            .zip(&slots)
            .filter(|(_, slot)| slot.is_none())
            .map(|(spec, _)| spec.name.as_str())
            .collect();
        if !missing.is_empty() {
            return Err(Error::invalid(format!(
                "expected {} inputs but got {}: missing {}",
                self.inputs.len(),
                self.inputs.len() - missing.len(),
                missing.iter().map(|n| format!("'{n}'")).collect::<Vec<_>>().join(", ")
            )));
        }
        let inputs: Vec<Tensor> = slots.into_iter().flatten().collect();
        let batch_size = batch.map_or(1, |(rows, _)| rows);

        let (outputs, binary) = if request.outputs.is_empty() {
            ((0..self.outputs.len()).collect(), vec![request.binary_output; self.outputs.len()])
        } else {
            let mut seen = vec![false; self.outputs.len()];
            let mut outputs = Vec::with_capacity(request.outputs.len());
            let mut binary = Vec::with_capacity(request.outputs.len());
            for wanted in &request.outputs {
                let Some(&index) = self.output_index.get(&wanted.name) else {
                    return Err(Error::invalid(format!(
                        "unexpected output '{}': the model's outputs are {}",
                        wanted.name,
                        names(&self.outputs)
                    )));
                };
                if std::mem::replace(&mut seen[index], true) {
                    return Err(Error::invalid(format!("output '{}' is requested more than once", wanted.name)));
                }
                outputs.push(index);
                binary.push(wanted.binary.unwrap_or(request.binary_output));
            }
            (outputs, binary)
        };
        Ok(ValidRequest { inputs, batch_size, outputs, binary })
    }

    /// Checks one input's shape against the model and returns its batch rows.
    fn check_shape(&self, spec: &IoSpec, shape: &[i64]) -> Result<usize, Error> {
        let batching = self.max_batch_size > 0;
        let dims = if batching { shape.get(1..).unwrap_or(&[]) } else { shape };
        let fits = shape.len() == spec.dims.len() + usize::from(batching)
            && dims.iter().zip(&spec.dims).all(|(&given, &want)| want < 0 || given == want);
        if !fits {
            return Err(Error::invalid(format!(
                "input '{}': unexpected shape {}, the model expects {:?}",
                spec.name,
                Dims(shape),
                self.full_shape(spec)
            )));
        }
        if !batching {
            return Ok(1);
        }
        let rows = shape[0];
        if rows < 1 || rows as u64 > u64::from(self.max_batch_size) {
            return Err(Error::invalid(format!(
                "input '{}': batch size {rows} must be between 1 and the model's max_batch_size {}",
                spec.name, self.max_batch_size
            )));
        }
        Ok(rows as usize)
    }
}

fn names(specs: &[IoSpec]) -> String {
    specs.iter().map(|s| format!("'{}'", s.name)).collect::<Vec<_>>().join(", ")
}

/// What every request a front door decodes must satisfy (for the decoders'
/// property tests): shapes the checks accept, fixed-size data of exactly the
/// bytes its shape calls for, and no more than `limit` bytes in all.
#[cfg(test)]
pub(crate) fn check_decoded(request: &InferRequest, limit: usize) -> Result<(), String> {
    let mut total = 0usize;
    for tensor in &request.inputs {
        let count = checked_element_count(&tensor.name, &tensor.shape)
            .map_err(|e| format!("accepted a shape it should refuse: {e}"))?;
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

    fn message(result: Result<ValidRequest, Error>) -> String {
        result.unwrap_err().message().to_owned()
    }

    #[test]
    fn tensor_bytes_must_match_shape_exactly_and_bools_become_0_or_1() {
        let err = Tensor::checked("x".into(), DataType::Fp32, vec![2, 2], Bytes::from(vec![0u8; 12]));
        assert!(err.unwrap_err().message().contains("needs 16 bytes, got 12"));
        let err = Tensor::checked("x".into(), DataType::Int8, vec![2, -5], Bytes::new());
        assert!(err.unwrap_err().message().contains("negative dimension -5"));
        let err = Tensor::checked("x".into(), DataType::Fp64, vec![1 << 40, 1 << 40], Bytes::new());
        assert!(err.unwrap_err().message().contains("too many elements"));
        let bools = Tensor::checked("b".into(), DataType::Bool, vec![3], Bytes::from_static(&[1, 7, 0])).unwrap();
        assert_eq!(&bools.data[..], &[1, 1, 0], "non-zero bytes are true");
        let err = Tensor::checked("s".into(), DataType::Bytes, vec![2], Bytes::from_static(&[1, 0, 0, 0, b'a']));
        assert!(err.unwrap_err().message().contains("expected 2 BYTES elements, found 1"));
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
        assert_eq!(valid.outputs, vec![0]);
    }

    #[test]
    fn validate_refuses_each_mismatch_with_a_clear_message() {
        let io = mlp();
        assert!(message(io.validate(request(vec![]))).contains("missing 'x'"));
        assert!(message(io.validate(request(vec![f32_tensor("q", vec![1, 4])]))).contains("unexpected input 'q'"));
        assert!(
            message(io.validate(request(vec![f32_tensor("x", vec![1, 4]), f32_tensor("x", vec![1, 4])])))
                .contains("more than once")
        );
        assert!(message(io.validate(request(vec![f32_tensor("x", vec![1, 5])]))).contains("unexpected shape [1, 5]"));
        assert!(message(io.validate(request(vec![f32_tensor("x", vec![4])]))).contains("unexpected shape [4]"));
        assert!(message(io.validate(request(vec![f32_tensor("x", vec![9, 4])]))).contains("max_batch_size 8"));
        assert!(message(io.validate(request(vec![f32_tensor("x", vec![0, 4])]))).contains("between 1"));
        let int = Tensor::checked("x".into(), DataType::Int32, vec![1, 4], Bytes::from(vec![0u8; 16])).unwrap();
        assert!(message(io.validate(request(vec![int]))).contains("datatype is INT32, but the model expects FP32"));

        let mut wrong_output = request(vec![f32_tensor("x", vec![1, 4])]);
        wrong_output.outputs = vec![RequestedOutput { name: "nope".into(), binary: None }];
        assert!(message(io.validate(wrong_output)).contains("unexpected output 'nope'"));
        let mut twice = request(vec![f32_tensor("x", vec![1, 4])]);
        twice.outputs = vec![RequestedOutput { name: "y".into(), binary: None }; 2];
        assert!(message(io.validate(twice)).contains("requested more than once"));
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
    }
}
