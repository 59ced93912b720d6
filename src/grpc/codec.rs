//! Protobuf messages to and from the gateway's types: `ModelInferRequest`
//! (typed contents or `raw_input_contents`) to [`InferRequest`],
//! [`InferResponse`] to `ModelInferResponse` (always `raw_output_contents`,
//! which is what tritonclient reads from Triton), and the config and
//! statistics messages.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use modelgate_backend::{DataType, push_bytes_element};

use crate::error::Error;
use crate::proto::inference::{
    self as pb, InferTensorContents, ModelInferRequest, ModelInferResponse, infer_parameter::ParameterChoice,
    model_infer_request::InferInputTensor, model_infer_response::InferOutputTensor,
};
use crate::repository::ModelVersion;
use crate::tensor::{
    DeclaredInput, InferRequest, InferResponse, InputError, ParameterOwner, RequestedOutput, Tensor,
    refuse_unsupported_parameters,
};

/// Why a `ModelInferRequest` is refused while it is decoded: its `timeout`,
/// how its data is laid out over the typed `contents` and
/// `raw_input_contents`, or, through [`InputError`], a tensor that is not
/// sound. Each variant holds what the client sent; its text is the status
/// message, which clients and the Triton-client compatibility suite compare.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// The `timeout` parameter (held as sent) is not a non-negative integer.
    #[error("parameter 'timeout' must be a non-negative integer of microseconds")]
    Timeout(Option<ParameterChoice>),
    /// `raw_input_contents` is given, but not one entry per input.
    #[error("raw_input_contents holds {raw} entries for {inputs} inputs; send one per input")]
    RawContentsCount {
        /// Entries of `raw_input_contents`.
        raw: usize,
        /// Inputs of the request.
        inputs: usize,
    },
    /// An input has data both in its typed `contents` and in `raw_input_contents`.
    #[error("input '{name}': data given both in contents and in raw_input_contents")]
    ContentsAndRaw {
        /// The input.
        name: String,
    },
    /// FP16 or BF16 data in typed `contents`, which has no field for them.
    #[error("input '{name}': {dtype} data must be sent in raw_input_contents")]
    HalfPrecisionInContents {
        /// The input.
        name: String,
        /// Its element type.
        dtype: DataType,
    },
    /// Typed data in another `contents` field than the input's datatype's.
    #[error("input '{name}': {dtype} data belongs in {field}, not {given}")]
    ContentsField {
        /// The input.
        name: String,
        /// Its element type.
        dtype: DataType,
        /// The field for that type.
        field: &'static str,
        /// The field the data was given in.
        given: &'static str,
    },
    /// The typed `contents` field holds another number of elements than the shape.
    #[error("input '{name}': {field} holds {found} elements, the shape needs {count}")]
    ContentsCount {
        /// The input.
        name: String,
        /// The field.
        field: &'static str,
        /// Elements in it.
        found: usize,
        /// Elements the shape holds.
        count: usize,
    },
    /// A typed value out of the range of the input's (narrower) datatype.
    #[error("input '{name}': {value} is out of range for {dtype}")]
    OutOfRange {
        /// The input.
        name: String,
        /// The value as sent.
        value: i64,
        /// Its element type.
        dtype: DataType,
    },
    /// A tensor that is not sound, or a parameter the gateway refuses.
    #[error(transparent)]
    Input(#[from] InputError),
}

impl From<DecodeError> for Error {
    fn from(error: DecodeError) -> Error {
        match error {
            DecodeError::Input(input) => input.into(),
            _ => Error::InvalidArgument(error.to_string()),
        }
    }
}

/// Decodes a `ModelInferRequest`. `limit` bounds the decoded tensor bytes.
pub fn decode_request(message: ModelInferRequest, limit: usize) -> Result<InferRequest, DecodeError> {
    refuse_unsupported_parameters(message.parameters.keys(), || ParameterOwner::Request)?;
    let mut request = InferRequest { id: (!message.id.is_empty()).then_some(message.id), ..InferRequest::default() };
    if let Some(timeout) = message.parameters.get("timeout") {
        match timeout.parameter_choice {
            Some(ParameterChoice::Int64Param(us)) if us >= 0 => {
                request.timeout = (us > 0).then(|| Duration::from_micros(us as u64));
            }
            Some(ParameterChoice::Uint64Param(us)) => request.timeout = (us > 0).then(|| Duration::from_micros(us)),
            ref other => return Err(DecodeError::Timeout(other.clone())),
        }
    }
    let raw = message.raw_input_contents;
    if !raw.is_empty() && raw.len() != message.inputs.len() {
        return Err(DecodeError::RawContentsCount { raw: raw.len(), inputs: message.inputs.len() });
    }
    let mut raw = raw.into_iter();
    let mut decoded = 0usize;
    for input in message.inputs {
        let tensor = decode_input(input, raw.next(), limit.saturating_sub(decoded))?;
        decoded += tensor.data.len();
        request.inputs.push(tensor);
    }
    for output in message.outputs {
        refuse_unsupported_parameters(output.parameters.keys(), || ParameterOwner::Output(output.name.clone()))?;
        request.outputs.push(RequestedOutput { name: output.name, binary: None });
    }
    Ok(request)
}

fn decode_input(input: InferInputTensor, raw: Option<Bytes>, limit: usize) -> Result<Tensor, DecodeError> {
    refuse_unsupported_parameters(input.parameters.keys(), || ParameterOwner::Input(input.name.clone()))?;
    let declared = DeclaredInput::new(input.name, &input.datatype, input.shape, limit)?;
    let contents = input.contents.unwrap_or_default();
    let data = match raw {
        Some(raw) => {
            if has_typed(&contents) {
                return Err(DecodeError::ContentsAndRaw { name: declared.name });
            }
            raw
        }
        None => typed(&declared.name, declared.dtype, declared.count, contents)?,
    };
    Ok(declared.with_data(data)?)
}

/// Elements a message holds in typed `contents` (which [`decode_request`]
/// converts one by one; `raw_input_contents` it takes without a copy).
pub fn typed_elements(message: &ModelInferRequest) -> usize {
    message
        .inputs
        .iter()
        .filter_map(|input| input.contents.as_ref())
        .map(|c| {
            c.bool_contents.len()
                + c.int_contents.len()
                + c.int64_contents.len()
                + c.uint_contents.len()
                + c.uint64_contents.len()
                + c.fp32_contents.len()
                + c.fp64_contents.len()
                + c.bytes_contents.len()
        })
        .sum()
}

fn has_typed(c: &InferTensorContents) -> bool {
    !(c.bool_contents.is_empty()
        && c.int_contents.is_empty()
        && c.int64_contents.is_empty()
        && c.uint_contents.is_empty()
        && c.uint64_contents.is_empty()
        && c.fp32_contents.is_empty()
        && c.fp64_contents.is_empty()
        && c.bytes_contents.is_empty())
}

/// Converts typed contents to little-endian bytes, range-checking narrowing.
fn typed(name: &str, dtype: DataType, count: usize, c: InferTensorContents) -> Result<Bytes, DecodeError> {
    let field = match dtype {
        DataType::Bool => "bool_contents",
        DataType::Int8 | DataType::Int16 | DataType::Int32 => "int_contents",
        DataType::Int64 => "int64_contents",
        DataType::Uint8 | DataType::Uint16 | DataType::Uint32 => "uint_contents",
        DataType::Uint64 => "uint64_contents",
        DataType::Fp32 => "fp32_contents",
        DataType::Fp64 => "fp64_contents",
        DataType::Bytes => "bytes_contents",
        DataType::Fp16 | DataType::Bf16 => {
            return Err(DecodeError::HalfPrecisionInContents { name: name.to_owned(), dtype });
        }
    };
    let given = [
        ("bool_contents", c.bool_contents.len()),
        ("int_contents", c.int_contents.len()),
        ("int64_contents", c.int64_contents.len()),
        ("uint_contents", c.uint_contents.len()),
        ("uint64_contents", c.uint64_contents.len()),
        ("fp32_contents", c.fp32_contents.len()),
        ("fp64_contents", c.fp64_contents.len()),
        ("bytes_contents", c.bytes_contents.len()),
    ];
    if let Some(&(other, _)) = given.iter().find(|(f, n)| *n > 0 && *f != field) {
        return Err(DecodeError::ContentsField { name: name.to_owned(), dtype, field, given: other });
    }
    let found = given.iter().find(|(f, _)| *f == field).map_or(0, |(_, n)| *n);
    if found != count {
        return Err(DecodeError::ContentsCount { name: name.to_owned(), field, found, count });
    }
    let range = |value: i64| DecodeError::OutOfRange { name: name.to_owned(), value, dtype };
    let mut out: Vec<u8> = Vec::with_capacity(count * dtype.element_size().unwrap_or(8));
    match dtype {
        DataType::Bool => out.extend(c.bool_contents.iter().map(|&b| u8::from(b))),
        DataType::Int8 => {
            for &v in &c.int_contents {
                out.extend_from_slice(&i8::try_from(v).map_err(|_| range(v.into()))?.to_le_bytes());
            }
        }
        DataType::Int16 => {
            for &v in &c.int_contents {
                out.extend_from_slice(&i16::try_from(v).map_err(|_| range(v.into()))?.to_le_bytes());
            }
        }
        DataType::Int32 => c.int_contents.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DataType::Int64 => c.int64_contents.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DataType::Uint8 => {
            for &v in &c.uint_contents {
                out.extend_from_slice(&u8::try_from(v).map_err(|_| range(v.into()))?.to_le_bytes());
            }
        }
        DataType::Uint16 => {
            for &v in &c.uint_contents {
                out.extend_from_slice(&u16::try_from(v).map_err(|_| range(v.into()))?.to_le_bytes());
            }
        }
        DataType::Uint32 => c.uint_contents.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DataType::Uint64 => c.uint64_contents.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DataType::Fp32 => c.fp32_contents.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DataType::Fp64 => c.fp64_contents.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DataType::Bytes => c.bytes_contents.iter().for_each(|b| push_bytes_element(&mut out, b)),
        DataType::Fp16 | DataType::Bf16 => unreachable!("refused above"),
    }
    Ok(Bytes::from(out))
}

/// Encodes a response with every output in `raw_output_contents`.
pub fn encode_response(response: InferResponse) -> ModelInferResponse {
    let mut outputs = Vec::with_capacity(response.outputs.len());
    let mut raw = Vec::with_capacity(response.outputs.len());
    for output in response.outputs {
        let t = output.tensor;
        outputs.push(InferOutputTensor {
            name: t.name,
            datatype: t.dtype.v2_name().to_owned(),
            shape: t.shape,
            parameters: HashMap::new(),
            contents: None,
        });
        raw.push(t.data);
    }
    ModelInferResponse {
        model_name: response.model_name,
        model_version: response.model_version.to_string(),
        id: response.id.unwrap_or_default(),
        parameters: HashMap::new(),
        outputs,
        raw_output_contents: raw,
    }
}

fn duration((count, ns): (u64, u64)) -> Option<pb::StatisticDuration> {
    Some(pb::StatisticDuration { count, ns })
}

/// The `ModelStatistics` message of a version.
pub fn statistics(v: &ModelVersion) -> pb::ModelStatistics {
    let s = &v.stats;
    let compute = s.compute.get();
    pb::ModelStatistics {
        name: v.name.clone(),
        version: v.version.to_string(),
        last_inference: s.last_inference_ms(),
        inference_count: s.inference_count(),
        execution_count: s.execution_count(),
        inference_stats: Some(pb::InferStatistics {
            success: duration(s.success.get()),
            fail: duration(s.fail.get()),
            queue: duration(s.queue.get()),
            compute_input: duration(compute.input),
            compute_infer: duration(compute.infer),
            compute_output: duration(compute.output),
            cache_hit: Some(pb::StatisticDuration::default()),
            cache_miss: Some(pb::StatisticDuration::default()),
        }),
        batch_stats: s
            .batch_stats()
            .map(|(size, b)| {
                let compute = b.compute.get();
                pb::InferBatchStatistics {
                    batch_size: size as u64,
                    compute_input: duration(compute.input),
                    compute_infer: duration(compute.infer),
                    compute_output: duration(compute.output),
                }
            })
            .collect(),
        memory_usage: vec![],
        response_stats: HashMap::new(),
    }
}

/// Parses a `grpc-timeout` header value (`<digits><unit>`, units H M S m u n).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod properties;

#[cfg(test)]
mod tests {
    use super::*;

    fn input(datatype: &str, shape: Vec<i64>, contents: InferTensorContents) -> InferInputTensor {
        InferInputTensor {
            name: "x".into(),
            datatype: datatype.into(),
            shape,
            parameters: HashMap::new(),
            contents: Some(contents),
        }
    }

    fn request(inputs: Vec<InferInputTensor>, raw: Vec<Bytes>) -> ModelInferRequest {
        ModelInferRequest { inputs, raw_input_contents: raw, ..Default::default() }
    }

    #[test]
    fn typed_contents_become_little_endian_bytes() {
        let c = InferTensorContents { int_contents: vec![-1, 2], ..Default::default() };
        let r = decode_request(request(vec![input("INT16", vec![2], c)], vec![]), 1 << 20).unwrap();
        assert_eq!(&r.inputs[0].data[..], &[0xff, 0xff, 2, 0]);
        let c = InferTensorContents { bytes_contents: vec![Bytes::from_static(b"hi")], ..Default::default() };
        let r = decode_request(request(vec![input("BYTES", vec![1], c)], vec![]), 1 << 20).unwrap();
        assert_eq!(&r.inputs[0].data[..], &[2, 0, 0, 0, b'h', b'i']);
    }

    #[test]
    fn raw_contents_are_taken_one_per_input_without_copying() {
        let raw = Bytes::from(vec![0u8; 8]);
        let r = decode_request(
            request(vec![input("FP32", vec![2], InferTensorContents::default())], vec![raw.clone()]),
            1 << 20,
        )
        .unwrap();
        assert_eq!(r.inputs[0].data.as_ptr(), raw.as_ptr());
    }

    #[test]
    fn malformed_messages_are_refused_with_a_reason() {
        let empty = InferTensorContents::default;
        let ints = |int_contents: Vec<i32>| InferTensorContents { int_contents, ..Default::default() };
        let floats = |fp32_contents: Vec<f32>| InferTensorContents { fp32_contents, ..Default::default() };
        let x = || "x".to_owned();
        let cases = vec![
            (
                request(vec![input("FP32", vec![2], empty())], vec![Bytes::new(), Bytes::new()]),
                DecodeError::RawContentsCount { raw: 2, inputs: 1 },
            ),
            (
                request(vec![input("FP32", vec![2], empty())], vec![Bytes::from(vec![0u8; 4])]),
                DecodeError::Input(InputError::ByteCount {
                    name: x(),
                    shape: vec![2],
                    dtype: DataType::Fp32,
                    expected: Some(8),
                    got: 4,
                }),
            ),
            (
                request(vec![input("INT32", vec![1], ints(vec![1]))], vec![Bytes::from(vec![0u8; 4])]),
                DecodeError::ContentsAndRaw { name: x() },
            ),
            (
                request(vec![input("FP32", vec![2], floats(vec![1.0]))], vec![]),
                DecodeError::ContentsCount { name: x(), field: "fp32_contents", found: 1, count: 2 },
            ),
            (
                request(vec![input("INT32", vec![1], floats(vec![1.0]))], vec![]),
                DecodeError::ContentsField {
                    name: x(),
                    dtype: DataType::Int32,
                    field: "int_contents",
                    given: "fp32_contents",
                },
            ),
            (
                request(vec![input("INT8", vec![1], ints(vec![300]))], vec![]),
                DecodeError::OutOfRange { name: x(), value: 300, dtype: DataType::Int8 },
            ),
            (
                request(vec![input("FP16", vec![1], empty())], vec![]),
                DecodeError::HalfPrecisionInContents { name: x(), dtype: DataType::Fp16 },
            ),
            (
                request(vec![input("FP99", vec![1], empty())], vec![]),
                DecodeError::Input(InputError::UnknownDatatype { name: x(), datatype: "FP99".into() }),
            ),
            (
                request(vec![input("FP32", vec![-1], empty())], vec![]),
                DecodeError::Input(InputError::NegativeDimension { name: x(), shape: vec![-1], dimension: -1 }),
            ),
            (
                request(vec![input("FP32", vec![i64::MAX, 4], empty())], vec![]),
                DecodeError::Input(InputError::TooManyElements { name: x(), shape: vec![i64::MAX, 4] }),
            ),
        ];
        for (message, expected) in cases {
            assert_eq!(decode_request(message, 1 << 20).unwrap_err(), expected);
        }
    }

    #[test]
    fn request_parameters_are_checked() {
        let with = |key: &str, choice: ParameterChoice| {
            let mut message = request(vec![], vec![]);
            message.parameters.insert(key.into(), pb::InferParameter { parameter_choice: Some(choice) });
            message
        };
        let bool_timeout = with("timeout", ParameterChoice::BoolParam(true));
        assert_eq!(
            decode_request(bool_timeout, 1 << 20).unwrap_err(),
            DecodeError::Timeout(Some(ParameterChoice::BoolParam(true)))
        );
        let negative = with("timeout", ParameterChoice::Int64Param(-1));
        assert_eq!(
            decode_request(negative, 1 << 20).unwrap_err(),
            DecodeError::Timeout(Some(ParameterChoice::Int64Param(-1)))
        );
        let timeout = with("timeout", ParameterChoice::Uint64Param(250));
        assert_eq!(decode_request(timeout, 1 << 20).unwrap().timeout, Some(Duration::from_micros(250)));
        let sequence = with("sequence_id", ParameterChoice::Int64Param(1));
        assert!(matches!(
            decode_request(sequence, 1 << 20).unwrap_err(),
            DecodeError::Input(InputError::UnsupportedParameter { owner: ParameterOwner::Request, key, .. })
                if key == "sequence_id"
        ));
    }

    /// What a gRPC client reads: the code and the status message, pinned for
    /// refusals of the door's own and for tensor checks (the 413 among them).
    #[test]
    fn refusals_keep_their_code_and_wire_text() {
        let empty = InferTensorContents::default;
        let wrong_field = InferTensorContents { fp32_contents: vec![1.0], ..Default::default() };
        let cases = [
            (
                request(vec![input("INT32", vec![1], wrong_field)], vec![]),
                tonic::Code::InvalidArgument,
                "input 'x': INT32 data belongs in int_contents, not fp32_contents",
            ),
            (
                request(vec![input("FP32", vec![2], empty())], vec![Bytes::new(), Bytes::new()]),
                tonic::Code::InvalidArgument,
                "raw_input_contents holds 2 entries for 1 inputs; send one per input",
            ),
            (
                request(vec![input("FP32", vec![2], empty())], vec![Bytes::from(vec![0u8; 4])]),
                tonic::Code::InvalidArgument,
                "input 'x': shape [2] of FP32 needs 8 bytes, got 4",
            ),
            (
                request(vec![input("FP32", vec![1 << 30], empty())], vec![]),
                tonic::Code::ResourceExhausted,
                "input 'x': 1073741824 FP32 elements exceed the request limit of 1048576 bytes",
            ),
        ];
        for (message, code, text) in cases {
            let status = tonic::Status::from(Error::from(decode_request(message, 1 << 20).unwrap_err()));
            assert_eq!((status.code(), status.message()), (code, text));
        }
    }

    #[test]
    fn grpc_timeouts_parse_every_unit_and_refuse_garbage() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("5u"), Some(Duration::from_micros(5)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("m"), None);
        assert_eq!(parse_grpc_timeout("10x"), None);
        assert_eq!(parse_grpc_timeout("1234567890S"), None);
    }
}
