//! The V2 inference request and response over HTTP: JSON, and Triton's binary
//! tensor data extension (a JSON header of `Inference-Header-Content-Length`
//! bytes followed by raw tensor bytes).

use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use modelgate_backend::DataType;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Number, Value};
use smallvec::SmallVec;

use super::json_tensor::{parse_data, write_data};
use crate::error::Error;
use crate::tensor::{
    DeclaredInput, InferRequest, InferResponse, InputError, ParameterOwner, RequestedOutput, Tensor,
    refuse_unsupported_parameters,
};

/// The header that splits a binary request or response.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// Why an HTTP infer request is refused while it is decoded: its framing
/// (`Inference-Header-Content-Length` and the binary section after the JSON
/// header), its JSON, or, through [`InputError`], a tensor that is not sound.
/// Each variant holds what the client sent; its text is the `error` of the
/// reply, which clients and the Triton-client compatibility suite compare.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// `Inference-Header-Content-Length` is not a non-negative integer.
    #[error("Inference-Header-Content-Length must be a non-negative integer")]
    HeaderLength,
    /// `Inference-Header-Content-Length` is past the end of the body.
    #[error("Inference-Header-Content-Length {header_length} exceeds the body length {body_length}")]
    HeaderLengthOverBody {
        /// The header's value.
        header_length: usize,
        /// Bytes the body has.
        body_length: usize,
    },
    /// The JSON header is not an inference request.
    #[error("malformed inference request: {0}")]
    MalformedJson(serde_json::Error),
    /// A boolean parameter (`binary_data_output`, an output's `binary_data`)
    /// holds something else.
    #[error("parameter '{key}' must be a boolean, got {value}")]
    NotABoolean {
        /// The parameter.
        key: &'static str,
        /// Its value as sent.
        value: Value,
    },
    /// The `timeout` parameter (held as sent) is a number, but negative,
    /// fractional or too large for microseconds.
    #[error("parameter 'timeout' must be a non-negative integer of microseconds, got {0}")]
    TimeoutOutOfRange(Number),
    /// The `timeout` parameter (held as sent) is not a number.
    #[error("parameter 'timeout' must be an integer of microseconds, got {0}")]
    TimeoutNotANumber(Value),
    /// A dimension of a shape is an integer over `i64::MAX`.
    #[error("input '{name}': dimension {dimension} is too large")]
    DimensionTooLarge {
        /// The input.
        name: String,
        /// The dimension as sent.
        dimension: Number,
    },
    /// A dimension of a shape is not an integer.
    #[error("input '{name}': dimension {dimension} is not an integer")]
    DimensionNotInteger {
        /// The input.
        name: String,
        /// The dimension as sent.
        dimension: Number,
    },
    /// An input's `binary_data_size` is a number, but negative, fractional or
    /// too large.
    #[error("input '{name}': binary_data_size must be a non-negative integer, got {size}")]
    BinaryDataSizeOutOfRange {
        /// The input.
        name: String,
        /// The size as sent.
        size: Number,
    },
    /// An input's `binary_data_size` is not a number.
    #[error("input '{name}': binary_data_size must be an integer, got {value}")]
    BinaryDataSizeNotANumber {
        /// The input.
        name: String,
        /// The value as sent.
        value: Value,
    },
    /// An input has its data both in JSON and in the binary section.
    #[error("input '{name}' has both 'data' and binary_data_size")]
    DataAndBinaryDataSize {
        /// The input.
        name: String,
    },
    /// An input has its data neither in JSON nor in the binary section.
    #[error("input '{name}' has no 'data' and no binary_data_size")]
    NoData {
        /// The input.
        name: String,
    },
    /// An input claims more binary bytes than the body has left.
    #[error("input '{name}': binary_data_size {size} exceeds the {left} binary bytes left in the body")]
    BinaryDataSizeOverBody {
        /// The input.
        name: String,
        /// Bytes it claims.
        size: usize,
        /// Binary bytes left after the inputs before it.
        left: usize,
    },
    /// A fixed-size input claims other binary bytes than its shape and type
    /// call for.
    #[error(
        "input '{name}': unexpected size {size} for shape {} of {dtype}, expected {expected} bytes",
        crate::error::Dims(shape)
    )]
    BinaryDataSizeMismatch {
        /// The input.
        name: String,
        /// Bytes it claims.
        size: usize,
        /// Its shape.
        shape: Vec<i64>,
        /// Its element type.
        dtype: DataType,
        /// Bytes the shape and type call for.
        expected: usize,
    },
    /// FP16 or BF16 data in JSON, which has no such numbers.
    #[error("input '{name}': {dtype} data can only be sent in binary form (binary_data_size)")]
    HalfPrecisionInJson {
        /// The input.
        name: String,
        /// Its element type.
        dtype: DataType,
    },
    /// An input's JSON `data` does not hold its elements: wrong kind, out of
    /// range, too many or too few, nested too deep.
    #[error("input '{name}': {reason}")]
    JsonData {
        /// The input.
        name: String,
        /// What is wrong, as the JSON data parser says it.
        reason: String,
    },
    /// An input's JSON data decodes to more bytes than are left of the
    /// request limit (413 / RESOURCE_EXHAUSTED, as for an oversized body).
    #[error("input '{name}': decoded data exceeds the request limit of {limit} bytes")]
    DecodedOverLimit {
        /// The input.
        name: String,
        /// Bytes left of the request limit for this input.
        limit: usize,
    },
    /// Binary bytes after the inputs that no input claims (held: how many).
    #[error("unexpected additional input data: {0} binary bytes are not claimed by any input's binary_data_size")]
    UnclaimedBinary(usize),
    /// A tensor that is not sound, or a parameter the gateway refuses.
    #[error(transparent)]
    Input(#[from] InputError),
}

impl From<DecodeError> for Error {
    fn from(error: DecodeError) -> Error {
        match error {
            DecodeError::Input(input) => input.into(),
            DecodeError::DecodedOverLimit { .. } => Error::PayloadTooLarge(error.to_string()),
            _ => Error::InvalidArgument(error.to_string()),
        }
    }
}

#[derive(Deserialize)]
struct JsonRequest<'a> {
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    // Small vectors: the usual request's inputs and shapes stay off the heap.
    #[serde(borrow)]
    inputs: SmallVec<[JsonInput<'a>; 2]>,
    #[serde(default)]
    outputs: Option<Vec<JsonOutput>>,
}

#[derive(Deserialize)]
struct JsonInput<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    shape: SmallVec<[Number; 4]>,
    #[serde(borrow)]
    datatype: Cow<'a, str>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct JsonOutput {
    name: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
}

/// The `Inference-Header-Content-Length`, if given: the length of the JSON
/// header before the binary tensor data (0: a raw binary request).
pub fn header_length(headers: &HeaderMap) -> Result<Option<usize>, DecodeError> {
    headers
        .get(HEADER_LENGTH)
        .map(|value| {
            value
                .to_str()
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<usize>().ok())
                .ok_or(DecodeError::HeaderLength)
        })
        .transpose()
}

/// Decodes a V2 infer request body whose JSON header is `header_length`
/// bytes long (`None`: the whole body; 0: a raw binary request, whose body is
/// the data of the model's only input, shaped later by the version that
/// serves it). `limit` bounds the decoded tensor bytes, the same bound as the
/// body (Triton applies its limit after expansion too).
pub fn decode_request(header_length: Option<usize>, body: Bytes, limit: usize) -> Result<InferRequest, DecodeError> {
    let (header, mut binary) = match header_length {
        None => (body, Bytes::new()),
        Some(0) => return Ok(InferRequest { raw_input: Some(body), binary_output: true, ..InferRequest::default() }),
        Some(length) => {
            if length > body.len() {
                return Err(DecodeError::HeaderLengthOverBody { header_length: length, body_length: body.len() });
            }
            let binary = body.slice(length..);
            (body.slice(..length), binary)
        }
    };
    let json: JsonRequest<'_> = serde_json::from_slice(&header).map_err(DecodeError::MalformedJson)?;

    let mut request = InferRequest { id: json.id.map(Cow::into_owned), ..InferRequest::default() };
    if let Some(parameters) = &json.parameters {
        apply_request_parameters(parameters, &mut request)?;
    }
    let mut decoded_bytes = 0usize;
    for input in json.inputs {
        let tensor = decode_input(input, &mut binary, limit - decoded_bytes.min(limit))?;
        decoded_bytes += tensor.data.len();
        request.inputs.push(tensor);
    }
    if !binary.is_empty() {
        return Err(DecodeError::UnclaimedBinary(binary.len()));
    }
    for output in json.outputs.unwrap_or_default() {
        let mut requested = RequestedOutput { name: output.name, binary: None };
        if let Some(parameters) = &output.parameters {
            refuse_unsupported_parameters(parameters.keys(), || ParameterOwner::Output(requested.name.clone()))?;
            requested.binary = bool_parameter(parameters, "binary_data")?;
        }
        request.outputs.push(requested);
    }
    Ok(request)
}

fn bool_parameter(parameters: &Map<String, Value>, key: &'static str) -> Result<Option<bool>, DecodeError> {
    match parameters.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(DecodeError::NotABoolean { key, value: other.clone() }),
    }
}

fn apply_request_parameters(parameters: &Map<String, Value>, request: &mut InferRequest) -> Result<(), DecodeError> {
    refuse_unsupported_parameters(parameters.keys(), || ParameterOwner::Request)?;
    request.binary_output = bool_parameter(parameters, "binary_data_output")?.unwrap_or(false);
    match parameters.get("timeout") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) => {
            let micros = n.as_u64().ok_or_else(|| DecodeError::TimeoutOutOfRange(n.clone()))?;
            if micros > 0 {
                request.timeout = Some(Duration::from_micros(micros));
            }
        }
        Some(other) => return Err(DecodeError::TimeoutNotANumber(other.clone())),
    }
    Ok(())
}

fn decode_input(input: JsonInput<'_>, binary: &mut Bytes, limit: usize) -> Result<Tensor, DecodeError> {
    let name = input.name.into_owned();
    let shape = input
        .shape
        .iter()
        .map(|d| match (d.as_i64(), d.as_u64()) {
            (Some(v), _) => Ok(v),
            (None, Some(_)) => Err(DecodeError::DimensionTooLarge { name: name.clone(), dimension: d.clone() }),
            (None, None) => Err(DecodeError::DimensionNotInteger { name: name.clone(), dimension: d.clone() }),
        })
        .collect::<Result<Vec<i64>, DecodeError>>()?;
    let declared = DeclaredInput::new(name, &input.datatype, shape, limit)?;
    let name = &declared.name;

    let binary_size = match &input.parameters {
        Some(parameters) => {
            refuse_unsupported_parameters(parameters.keys(), || ParameterOwner::Input(name.clone()))?;
            match parameters.get("binary_data_size") {
                None | Some(Value::Null) => None,
                Some(Value::Number(n)) => Some(
                    n.as_u64()
                        .and_then(|v| usize::try_from(v).ok())
                        .ok_or_else(|| DecodeError::BinaryDataSizeOutOfRange { name: name.clone(), size: n.clone() })?,
                ),
                Some(other) => {
                    return Err(DecodeError::BinaryDataSizeNotANumber { name: name.clone(), value: other.clone() });
                }
            }
        }
        None => None,
    };
    let data = match (binary_size, input.data) {
        (Some(_), Some(_)) => return Err(DecodeError::DataAndBinaryDataSize { name: declared.name }),
        (None, None) => return Err(DecodeError::NoData { name: declared.name }),
        (Some(size), None) => {
            if size > binary.len() {
                return Err(DecodeError::BinaryDataSizeOverBody { name: declared.name, size, left: binary.len() });
            }
            if let Some(expected) = declared.fixed_bytes
                && expected != size
            {
                // The shape moves into the error: a client's shape can hold
                // millions of dimensions, and an error is no reason to copy them.
                let DeclaredInput { name, dtype, shape, .. } = declared;
                return Err(DecodeError::BinaryDataSizeMismatch { name, size, shape, dtype, expected });
            }
            binary.split_to(size)
        }
        (None, Some(raw)) => {
            let dtype = declared.dtype;
            if matches!(dtype, DataType::Fp16 | DataType::Bf16) {
                return Err(DecodeError::HalfPrecisionInJson { name: declared.name, dtype });
            }
            let bytes = match parse_data(raw, dtype, declared.count, declared.shape.len()) {
                Ok(bytes) => bytes,
                Err(reason) => return Err(DecodeError::JsonData { name: declared.name, reason }),
            };
            if bytes.len() > limit {
                return Err(DecodeError::DecodedOverLimit { name: declared.name, limit });
            }
            Bytes::from(bytes)
        }
    };
    Ok(declared.with_data(data)?)
}

/// An encoded response: the parts of the body and, for binary responses, the
/// JSON header's length.
pub struct EncodedResponse {
    /// Body parts, written in order without being joined.
    pub parts: SmallVec<[Bytes; 2]>,
    /// `Some(json length)` when binary data follows the JSON.
    pub header_length: Option<usize>,
}

/// The most bytes [`encode_response`] can write for `response`: binary
/// outputs as they are, JSON outputs at the longest text of each element
/// (`-2147483648,` for INT32, an escaped `\u00XX` for every BYTES byte).
/// Taken from the budget before encoding, so a small request cannot make
/// the server write a response of hundreds of megabytes unaccounted.
pub fn encoded_bound(response: &InferResponse) -> usize {
    let text = |s: &str| 6 * s.len() + 2;
    let mut bound = 128 + text(&response.model_name) + response.id.as_deref().map_or(0, text);
    for output in &response.outputs {
        let tensor = &output.tensor;
        bound = bound.saturating_add(96 + text(&tensor.name) + 21 * tensor.shape.len());
        let data = tensor.data.len();
        let per_element = |size: usize, longest: usize| (data / size).saturating_mul(longest + 1);
        let json = match tensor.dtype {
            _ if output.binary => data,
            DataType::Bool => per_element(1, 5),
            DataType::Int8 => per_element(1, 4),
            DataType::Uint8 => per_element(1, 3),
            DataType::Int16 => per_element(2, 6),
            DataType::Uint16 => per_element(2, 5),
            DataType::Int32 => per_element(4, 11),
            DataType::Uint32 => per_element(4, 10),
            DataType::Int64 | DataType::Uint64 => per_element(8, 20),
            // ryu's longest f32 is 15 characters, f64 24; "-Infinity" is 11.
            DataType::Fp32 => per_element(4, 15),
            DataType::Fp64 => per_element(8, 24),
            // Refused by the encoder (no JSON form).
            DataType::Fp16 | DataType::Bf16 => 0,
            // Each element: its 4-byte length becomes `"",`, each byte at most `\u00XX`.
            DataType::Bytes => data.saturating_mul(6),
        };
        bound = bound.saturating_add(json);
    }
    bound
}

/// Encodes a response: JSON outputs inline, binary outputs after the JSON.
pub fn encode_response(response: &InferResponse) -> Result<EncodedResponse, Error> {
    // Sized once at the longest the text can be: growing by doubling would
    // copy a 360 MB text from a 256 MiB buffer into a 512 MiB one, both
    // resident meanwhile. Pages never written are never resident.
    let binary: usize = response.outputs.iter().filter(|o| o.binary).map(|o| o.tensor.data.len()).sum();
    let mut json = Vec::with_capacity(encoded_bound(response).saturating_sub(binary));
    json.extend_from_slice(b"{\"model_name\":");
    write_str(&mut json, &response.model_name);
    json.extend_from_slice(b",\"model_version\":\"");
    json.extend_from_slice(itoa::Buffer::new().format(response.model_version).as_bytes());
    json.push(b'"');
    if let Some(id) = &response.id {
        json.extend_from_slice(b",\"id\":");
        write_str(&mut json, id);
    }
    json.extend_from_slice(b",\"outputs\":[");
    // The JSON first, then each binary output.
    let mut parts = smallvec::smallvec![Bytes::new()];
    for (i, output) in response.outputs.iter().enumerate() {
        if i > 0 {
            json.push(b',');
        }
        let tensor = &output.tensor;
        json.extend_from_slice(b"{\"name\":");
        write_str(&mut json, &tensor.name);
        json.extend_from_slice(b",\"datatype\":\"");
        json.extend_from_slice(tensor.dtype.v2_name().as_bytes());
        json.extend_from_slice(b"\",\"shape\":[");
        let mut buf = itoa::Buffer::new();
        for (j, d) in tensor.shape.iter().enumerate() {
            if j > 0 {
                json.push(b',');
            }
            json.extend_from_slice(buf.format(*d).as_bytes());
        }
        json.push(b']');
        if output.binary {
            json.extend_from_slice(b",\"parameters\":{\"binary_data_size\":");
            json.extend_from_slice(buf.format(tensor.data.len()).as_bytes());
            json.push(b'}');
            parts.push(tensor.data.clone());
        } else {
            // No "parameters" member at all: tritonclient takes any as binary.
            json.extend_from_slice(b",\"data\":");
            write_data(&mut json, tensor.dtype, &tensor.data)
                .map_err(|e| Error::invalid(format!("output '{}': {e}", tensor.name)))?;
        }
        json.push(b'}');
    }
    json.extend_from_slice(b"]}");
    let header_length = (parts.len() > 1).then_some(json.len());
    parts[0] = Bytes::from(json);
    Ok(EncodedResponse { parts, header_length })
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing a string to a Vec cannot fail");
}

#[cfg(test)]
mod properties;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::ResponseOutput;

    fn decode(body: &[u8], header_length: Option<usize>) -> Result<InferRequest, DecodeError> {
        decode_request(header_length, Bytes::copy_from_slice(body), 1 << 20)
    }

    fn error(body: &[u8], header_length: Option<usize>) -> DecodeError {
        decode(body, header_length).unwrap_err()
    }

    #[test]
    fn a_huge_shape_with_a_wrong_binary_size_makes_a_short_message() {
        let shape = vec![0i64; 1 << 20];
        let error = DecodeError::BinaryDataSizeMismatch {
            name: "x".into(),
            size: 4,
            shape,
            dtype: DataType::Int32,
            expected: 0,
        };
        assert!(error.to_string().len() < 256, "{} bytes", error.to_string().len());
    }

    #[test]
    fn decodes_json_inputs_outputs_and_parameters() {
        let body = br#"{"id":"7","parameters":{"binary_data_output":true,"timeout":5000},
            "inputs":[{"name":"a","shape":[1,2],"datatype":"INT32","data":[[1,2]]}],
            "outputs":[{"name":"y","parameters":{"binary_data":false}},{"name":"z"}]}"#;
        let request = decode(body, None).unwrap();
        assert_eq!(request.id.as_deref(), Some("7"));
        assert!(request.binary_output);
        assert_eq!(request.timeout, Some(Duration::from_micros(5000)));
        assert_eq!(request.inputs[0].shape, vec![1, 2]);
        assert_eq!(&request.inputs[0].data[..], bytemuck::cast_slice::<i32, u8>(&[1, 2]));
        assert_eq!(request.outputs[0].binary, Some(false));
        assert_eq!(request.outputs[1].binary, None);
    }

    #[test]
    fn decodes_binary_inputs_after_the_json_header() {
        let header = br#"{"inputs":[{"name":"a","shape":[2],"datatype":"FP16","parameters":{"binary_data_size":4}},
            {"name":"b","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":7}}]}"#;
        let mut body = header.to_vec();
        body.extend_from_slice(&[1, 2, 3, 4]);
        body.extend_from_slice(&[3, 0, 0, 0, b'a', b'b', b'c']);
        let request = decode(&body, Some(header.len())).unwrap();
        assert_eq!(&request.inputs[0].data[..], &[1, 2, 3, 4]);
        assert_eq!(request.inputs[1].data.len(), 7);
    }

    /// Whose parameter an `UnsupportedParameter` refusal names, and which.
    fn unsupported(error: &DecodeError) -> Option<(&ParameterOwner, &str)> {
        match error {
            DecodeError::Input(InputError::UnsupportedParameter { owner, key, .. }) => Some((owner, key)),
            _ => None,
        }
    }

    #[test]
    fn every_malformed_request_is_a_clear_client_error() {
        let one = |extra: &str| format!(r#"{{"inputs":[{{"name":"a","shape":[2],"datatype":"INT32"{extra}}}]}}"#);
        /// Whether a refusal is the one a case expects.
        type Expected = fn(&DecodeError) -> bool;
        let cases: Vec<(String, Expected)> = vec![
            ("{".into(), |e| matches!(e, DecodeError::MalformedJson(_))),
            (r#"{"inputs":[],"inputs":[]}"#.into(), |e| matches!(e, DecodeError::MalformedJson(_))),
            (
                r#"{"inputs":[{"name":"a","shape":[2],"datatype":"FP99","data":[1,2]}]}"#.into(),
                |e| matches!(e, DecodeError::Input(InputError::UnknownDatatype { datatype, .. }) if datatype == "FP99"),
            ),
            (one(r#","data":[1,2,3]"#), |e| matches!(e, DecodeError::JsonData { name, .. } if name == "a")),
            (one(""), |e| matches!(e, DecodeError::NoData { name } if name == "a")),
            (r#"{"inputs":[{"name":"a","shape":[-2],"datatype":"INT32","data":[]}]}"#.into(), |e| {
                matches!(e, DecodeError::Input(InputError::NegativeDimension { dimension: -2, .. }))
            }),
            (
                r#"{"inputs":[{"name":"a","shape":[1.5],"datatype":"INT32","data":[]}]}"#.into(),
                |e| matches!(e, DecodeError::DimensionNotInteger { dimension, .. } if dimension.as_f64() == Some(1.5)),
            ),
            (
                r#"{"inputs":[{"name":"a","shape":[18446744073709551615],"datatype":"INT32","data":[]}]}"#.into(),
                |e| matches!(e, DecodeError::DimensionTooLarge { dimension, .. } if dimension.as_u64() == Some(u64::MAX)),
            ),
            (r#"{"inputs":[{"name":"a","shape":[4294967296,4294967296],"datatype":"INT8","data":[]}]}"#.into(), |e| {
                matches!(e, DecodeError::Input(InputError::TooManyElements { .. }))
            }),
            (r#"{"inputs":[{"name":"a","shape":[100000000],"datatype":"FP64","data":[]}]}"#.into(), |e| {
                matches!(e, DecodeError::Input(InputError::OverLimit { count: 100_000_000, limit: 1_048_576, .. }))
            }),
            (r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP16","data":[1.0]}]}"#.into(), |e| {
                matches!(e, DecodeError::HalfPrecisionInJson { dtype: DataType::Fp16, .. })
            }),
            (one(r#","parameters":{"binary_data_size":8}"#), |e| {
                matches!(e, DecodeError::BinaryDataSizeOverBody { size: 8, left: 0, .. })
            }),
            (
                one(r#","parameters":{"binary_data_size":"8"}"#),
                |e| matches!(e, DecodeError::BinaryDataSizeNotANumber { value, .. } if value == "8"),
            ),
            (
                one(r#","parameters":{"binary_data_size":-8}"#),
                |e| matches!(e, DecodeError::BinaryDataSizeOutOfRange { size, .. } if size.as_i64() == Some(-8)),
            ),
            (one(r#","data":[1,2],"parameters":{"binary_data_size":8}"#), |e| {
                matches!(e, DecodeError::DataAndBinaryDataSize { .. })
            }),
            (r#"{"inputs":[],"parameters":{"sequence_id":1}}"#.into(), |e| {
                unsupported(e) == Some((&ParameterOwner::Request, "sequence_id"))
            }),
            (one(r#","data":[1,2],"parameters":{"shared_memory_region":"r"}"#), |e| {
                unsupported(e) == Some((&ParameterOwner::Input("a".into()), "shared_memory_region"))
            }),
            (r#"{"inputs":[],"outputs":[{"name":"y","parameters":{"classification":3}}]}"#.into(), |e| {
                unsupported(e) == Some((&ParameterOwner::Output("y".into()), "classification"))
            }),
            (
                r#"{"inputs":[],"parameters":{"timeout":-1}}"#.into(),
                |e| matches!(e, DecodeError::TimeoutOutOfRange(n) if n.as_i64() == Some(-1)),
            ),
            (
                r#"{"inputs":[],"parameters":{"timeout":"5"}}"#.into(),
                |e| matches!(e, DecodeError::TimeoutNotANumber(value) if value == "5"),
            ),
            (
                r#"{"inputs":[],"parameters":{"binary_data_output":3}}"#.into(),
                |e| matches!(e, DecodeError::NotABoolean { key: "binary_data_output", value } if value == 3),
            ),
        ];
        for (body, expected) in cases {
            let error = error(body.as_bytes(), None);
            assert!(expected(&error), "{body}: {error:?}");
        }
    }

    #[test]
    fn json_data_past_the_limit_is_too_large() {
        let body = br#"{"inputs":[{"name":"s","shape":[1],"datatype":"BYTES","data":["aaaaaaaaaaaa"]}]}"#;
        let error = decode_request(None, Bytes::from_static(body), 8).unwrap_err();
        assert!(matches!(&error, DecodeError::DecodedOverLimit { name, limit: 8 } if name == "s"), "{error:?}");
    }

    #[test]
    fn binary_sections_must_be_claimed_exactly() {
        let header = br#"{"inputs":[{"name":"a","shape":[1],"datatype":"INT32","parameters":{"binary_data_size":4}}]}"#;
        let mut body = header.to_vec();
        body.extend_from_slice(&[0; 6]);
        assert!(matches!(error(&body, Some(header.len())), DecodeError::UnclaimedBinary(2)));
        let wrong_size =
            br#"{"inputs":[{"name":"a","shape":[2],"datatype":"INT32","parameters":{"binary_data_size":4}}]}"#;
        let mut body = wrong_size.to_vec();
        body.extend_from_slice(&[0; 4]);
        assert!(matches!(
            error(&body, Some(wrong_size.len())),
            DecodeError::BinaryDataSizeMismatch { size: 4, expected: 8, dtype: DataType::Int32, shape, .. }
                if shape == [2]
        ));
        assert!(matches!(
            error(b"{}", Some(99)),
            DecodeError::HeaderLengthOverBody { header_length: 99, body_length: 2 }
        ));
        let raw = decode_request(Some(0), Bytes::from_static(b"{}"), 1 << 20).unwrap();
        assert_eq!(raw.raw_input.as_deref(), Some(&b"{}"[..]), "header length 0: the body is the raw input");
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_LENGTH, "-1".parse().unwrap());
        assert!(matches!(header_length(&headers), Err(DecodeError::HeaderLength)));
    }

    /// What an HTTP client reads: the status and the `error` text, pinned
    /// for a refusal of the door's own, one of the tensor checks, and the
    /// two 413s.
    #[test]
    fn refusals_keep_their_status_and_wire_text() {
        let wrong_size =
            br#"{"inputs":[{"name":"a","shape":[2],"datatype":"INT32","parameters":{"binary_data_size":4}}]}"#;
        let mut body = wrong_size.to_vec();
        body.extend_from_slice(&[0; 4]);
        let cases = [
            (decode(b"{", None), 400, "malformed inference request: EOF while parsing an object at line 1 column 1"),
            (
                decode(&body, Some(wrong_size.len())),
                400,
                "input 'a': unexpected size 4 for shape [2] of INT32, expected 8 bytes",
            ),
            (
                decode(br#"{"inputs":[{"name":"a","shape":[2],"datatype":"FP99","data":[1,2]}]}"#, None),
                400,
                "input 'a': unknown datatype 'FP99'",
            ),
            (
                decode(br#"{"inputs":[{"name":"a","shape":[100000000],"datatype":"FP64","data":[]}]}"#, None),
                413,
                "input 'a': 100000000 FP64 elements exceed the request limit of 1048576 bytes",
            ),
            (
                decode_request(
                    None,
                    Bytes::from_static(
                        br#"{"inputs":[{"name":"s","shape":[1],"datatype":"BYTES","data":["aaaaaaaaaaaa"]}]}"#,
                    ),
                    8,
                ),
                413,
                "input 's': decoded data exceeds the request limit of 8 bytes",
            ),
        ];
        for (result, status, text) in cases {
            let error = Error::from(result.unwrap_err());
            assert_eq!((error.http_status().as_u16(), error.message()), (status, text));
        }
    }

    #[test]
    fn responses_put_binary_outputs_after_the_json() {
        let response = InferResponse {
            model_name: "m".into(),
            model_version: 3,
            id: Some("x".into()),
            outputs: vec![
                ResponseOutput {
                    tensor: Tensor::checked(
                        "a".into(),
                        DataType::Int32,
                        vec![2],
                        Bytes::from(vec![1, 0, 0, 0, 2, 0, 0, 0]),
                    )
                    .unwrap(),
                    binary: false,
                },
                ResponseOutput {
                    tensor: Tensor::checked("b".into(), DataType::Uint8, vec![3], Bytes::from_static(&[7, 8, 9]))
                        .unwrap(),
                    binary: true,
                },
            ],
        };
        let encoded = encode_response(&response).unwrap();
        let json = std::str::from_utf8(&encoded.parts[0]).unwrap();
        assert_eq!(
            json,
            r#"{"model_name":"m","model_version":"3","id":"x","outputs":[{"name":"a","datatype":"INT32","shape":[2],"data":[1,2]},{"name":"b","datatype":"UINT8","shape":[3],"parameters":{"binary_data_size":3}}]}"#
        );
        assert_eq!(encoded.header_length, Some(json.len()));
        assert_eq!(&encoded.parts[1][..], &[7, 8, 9]);
    }
}
