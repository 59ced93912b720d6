//! The V2 inference request and response over HTTP: JSON, and Triton's binary
//! tensor data extension (a JSON header of `Inference-Header-Content-Length`
//! bytes followed by raw tensor bytes).

use std::borrow::Cow;
use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use modelgate_backend::DataType;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::json_tensor::{parse_data, write_data};
use crate::error::Error;
use crate::tensor::{
    DeclaredInput, InferRequest, InferResponse, ParameterOwner, RequestedOutput, Tensor, refuse_unsupported_parameters,
};

/// The header that splits a binary request or response.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

#[derive(Deserialize)]
struct JsonRequest<'a> {
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    #[serde(borrow)]
    inputs: Vec<JsonInput<'a>>,
    #[serde(default)]
    outputs: Option<Vec<JsonOutput>>,
}

#[derive(Deserialize)]
struct JsonInput<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    shape: Vec<serde_json::Number>,
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
pub fn header_length(headers: &HeaderMap) -> Result<Option<usize>, Error> {
    headers
        .get(HEADER_LENGTH)
        .map(|value| {
            value
                .to_str()
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<usize>().ok())
                .ok_or_else(|| Error::invalid("Inference-Header-Content-Length must be a non-negative integer"))
        })
        .transpose()
}

/// Decodes a V2 infer request body whose JSON header is `header_length`
/// bytes long (`None`: the whole body; 0: a raw binary request, whose body is
/// the data of the model's only input, shaped later by the version that
/// serves it). `limit` bounds the decoded tensor bytes, the same bound as the
/// body (Triton applies its limit after expansion too).
pub fn decode_request(header_length: Option<usize>, body: Bytes, limit: usize) -> Result<InferRequest, Error> {
    let (header, mut binary) = match header_length {
        None => (body, Bytes::new()),
        Some(0) => return Ok(InferRequest { raw_input: Some(body), binary_output: true, ..InferRequest::default() }),
        Some(length) => {
            if length > body.len() {
                return Err(Error::invalid(format!(
                    "Inference-Header-Content-Length {length} exceeds the body length {}",
                    body.len()
                )));
            }
            let binary = body.slice(length..);
            (body.slice(..length), binary)
        }
    };
    let json: JsonRequest<'_> =
        serde_json::from_slice(&header).map_err(|e| Error::invalid(format!("malformed inference request: {e}")))?;

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
        return Err(Error::invalid(format!(
            "unexpected additional input data: {} binary bytes are not claimed by any input's binary_data_size",
            binary.len()
        )));
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

fn bool_parameter(parameters: &Map<String, Value>, key: &str) -> Result<Option<bool>, Error> {
    match parameters.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(Error::invalid(format!("parameter '{key}' must be a boolean, got {other}"))),
    }
}

fn apply_request_parameters(parameters: &Map<String, Value>, request: &mut InferRequest) -> Result<(), Error> {
    refuse_unsupported_parameters(parameters.keys(), || ParameterOwner::Request)?;
    request.binary_output = bool_parameter(parameters, "binary_data_output")?.unwrap_or(false);
    match parameters.get("timeout") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) => {
            let micros = n.as_u64().ok_or_else(|| {
                Error::invalid(format!("parameter 'timeout' must be a non-negative integer of microseconds, got {n}"))
            })?;
            if micros > 0 {
                request.timeout = Some(Duration::from_micros(micros));
            }
        }
        Some(other) => {
            return Err(Error::invalid(format!("parameter 'timeout' must be an integer of microseconds, got {other}")));
        }
    }
    Ok(())
}

fn decode_input(input: JsonInput<'_>, binary: &mut Bytes, limit: usize) -> Result<Tensor, Error> {
    let name = input.name.into_owned();
    let shape = input
        .shape
        .iter()
        .map(|d| match (d.as_i64(), d.as_u64()) {
            (Some(v), _) => Ok(v),
            (None, Some(_)) => Err(Error::invalid(format!("input '{name}': dimension {d} is too large"))),
            (None, None) => Err(Error::invalid(format!("input '{name}': dimension {d} is not an integer"))),
        })
        .collect::<Result<Vec<i64>, Error>>()?;
    let declared = DeclaredInput::new(name, &input.datatype, shape, limit)?;
    let DeclaredInput { ref name, dtype, ref shape, count, fixed_bytes } = declared;

    let binary_size = match &input.parameters {
        Some(parameters) => {
            refuse_unsupported_parameters(parameters.keys(), || ParameterOwner::Input(name.clone()))?;
            match parameters.get("binary_data_size") {
                None | Some(Value::Null) => None,
                Some(Value::Number(n)) => Some(n.as_u64().and_then(|v| usize::try_from(v).ok()).ok_or_else(|| {
                    Error::invalid(format!("input '{name}': binary_data_size must be a non-negative integer, got {n}"))
                })?),
                Some(other) => {
                    return Err(Error::invalid(format!(
                        "input '{name}': binary_data_size must be an integer, got {other}"
                    )));
                }
            }
        }
        None => None,
    };
    let data = match (binary_size, input.data) {
        (Some(_), Some(_)) => {
            return Err(Error::invalid(format!("input '{name}' has both 'data' and binary_data_size")));
        }
        (None, None) => {
            return Err(Error::invalid(format!("input '{name}' has no 'data' and no binary_data_size")));
        }
        (Some(size), None) => {
            if size > binary.len() {
                return Err(Error::invalid(format!(
                    "input '{name}': binary_data_size {size} exceeds the {} binary bytes left in the body",
                    binary.len()
                )));
            }
            if let Some(expected) = fixed_bytes
                && expected != size
            {
                return Err(Error::invalid(format!(
                    "input '{name}': unexpected size {size} for shape {shape:?} of {dtype}, expected {expected} bytes"
                )));
            }
            binary.split_to(size)
        }
        (None, Some(raw)) => {
            if matches!(dtype, DataType::Fp16 | DataType::Bf16) {
                return Err(Error::invalid(format!(
                    "input '{name}': {dtype} data can only be sent in binary form (binary_data_size)"
                )));
            }
            let bytes = parse_data(raw, dtype, count, shape.len())
                .map_err(|e| Error::invalid(format!("input '{name}': {e}")))?;
            if bytes.len() > limit {
                return Err(Error::PayloadTooLarge(format!(
                    "input '{name}': decoded data exceeds the request limit of {limit} bytes"
                )));
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
    pub parts: VecDeque<Bytes>,
    /// `Some(json length)` when binary data follows the JSON.
    pub header_length: Option<usize>,
}

/// Encodes a response: JSON outputs inline, binary outputs after the JSON.
pub fn encode_response(response: &InferResponse) -> Result<EncodedResponse, Error> {
    let mut json = Vec::with_capacity(128 + response.outputs.len() * 64);
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
    let mut parts = VecDeque::new();
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
            parts.push_back(tensor.data.clone());
        } else {
            // No "parameters" member at all: tritonclient takes any as binary.
            json.extend_from_slice(b",\"data\":");
            write_data(&mut json, tensor.dtype, &tensor.data)
                .map_err(|e| Error::invalid(format!("output '{}': {e}", tensor.name)))?;
        }
        json.push(b'}');
    }
    json.extend_from_slice(b"]}");
    let header_length = (!parts.is_empty()).then_some(json.len());
    parts.push_front(Bytes::from(json));
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

    fn decode(body: &[u8], header_length: Option<usize>) -> Result<InferRequest, Error> {
        decode_request(header_length, Bytes::copy_from_slice(body), 1 << 20)
    }

    fn error(body: &[u8], header_length: Option<usize>) -> String {
        decode(body, header_length).unwrap_err().message().to_owned()
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

    #[test]
    fn every_malformed_request_is_a_clear_client_error() {
        let one = |extra: &str| format!(r#"{{"inputs":[{{"name":"a","shape":[2],"datatype":"INT32"{extra}}}]}}"#);
        let cases: Vec<(String, Option<usize>, &str)> = vec![
            ("{".into(), None, "malformed"),
            (
                r#"{"inputs":[{"name":"a","shape":[2],"datatype":"FP99","data":[1,2]}]}"#.into(),
                None,
                "unknown datatype 'FP99'",
            ),
            (one(r#","data":[1,2,3]"#), None, "more elements"),
            (one(""), None, "no 'data'"),
            (
                r#"{"inputs":[{"name":"a","shape":[-2],"datatype":"INT32","data":[]}]}"#.into(),
                None,
                "negative dimension",
            ),
            (r#"{"inputs":[{"name":"a","shape":[1.5],"datatype":"INT32","data":[]}]}"#.into(), None, "not an integer"),
            (
                r#"{"inputs":[{"name":"a","shape":[18446744073709551615],"datatype":"INT32","data":[]}]}"#.into(),
                None,
                "too large",
            ),
            (
                r#"{"inputs":[{"name":"a","shape":[4294967296,4294967296],"datatype":"INT8","data":[]}]}"#.into(),
                None,
                "too many elements",
            ),
            (
                r#"{"inputs":[{"name":"a","shape":[100000000],"datatype":"FP64","data":[]}]}"#.into(),
                None,
                "exceed the request limit",
            ),
            (r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP16","data":[1.0]}]}"#.into(), None, "binary form"),
            (one(r#","parameters":{"binary_data_size":8}"#), None, "exceeds the 0 binary bytes"),
            (one(r#","parameters":{"binary_data_size":"8"}"#), None, "must be an integer"),
            (one(r#","data":[1,2],"parameters":{"binary_data_size":8}"#), None, "both"),
            (r#"{"inputs":[],"parameters":{"sequence_id":1}}"#.into(), None, "sequence batching"),
            (r#"{"inputs":[],"parameters":{"timeout":-1}}"#.into(), None, "non-negative"),
            (r#"{"inputs":[],"inputs":[]}"#.into(), None, "duplicate field"),
            (
                r#"{"inputs":[],"outputs":[{"name":"y","parameters":{"classification":3}}]}"#.into(),
                None,
                "classification",
            ),
        ];
        for (body, header, expected) in cases {
            let message = error(body.as_bytes(), header);
            assert!(message.contains(expected), "{body}: {message}");
        }
    }

    #[test]
    fn binary_sections_must_be_claimed_exactly() {
        let header = br#"{"inputs":[{"name":"a","shape":[1],"datatype":"INT32","parameters":{"binary_data_size":4}}]}"#;
        let mut body = header.to_vec();
        body.extend_from_slice(&[0; 6]);
        assert!(error(&body, Some(header.len())).contains("unexpected additional input data"));
        let wrong_size =
            br#"{"inputs":[{"name":"a","shape":[2],"datatype":"INT32","parameters":{"binary_data_size":4}}]}"#;
        let mut body = wrong_size.to_vec();
        body.extend_from_slice(&[0; 4]);
        assert!(error(&body, Some(wrong_size.len())).contains("expected 8 bytes"));
        assert!(error(b"{}", Some(99)).contains("exceeds the body length"));
        let raw = decode_request(Some(0), Bytes::from_static(b"{}"), 1 << 20).unwrap();
        assert_eq!(raw.raw_input.as_deref(), Some(&b"{}"[..]), "header length 0: the body is the raw input");
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_LENGTH, "-1".parse().unwrap());
        assert!(header_length(&headers).is_err());
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
