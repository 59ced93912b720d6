//! Property tests of the HTTP request decoder: whatever a client sends, the
//! answer is a request whose tensors hold exactly what their shapes call for,
//! within the limit, or a client error. Never a panic.

use bytes::Bytes;
use http::HeaderMap;
use modelgate_backend::DataType;
use proptest::prelude::*;
use serde_json::{Value, json};

use super::{DecodeError, HEADER_LENGTH, decode_request, header_length};
use crate::error::Error;
use crate::tensor::{InferRequest, check_decoded};

/// Small, so that shapes can both fit and overflow it.
const LIMIT: usize = 1 << 12;

/// Dimensions a client may send: mostly small, sometimes hostile.
fn dimension() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => (0i64..5).prop_map(Value::from),
        1 => prop::sample::select(vec![-1i64, -5, 1 << 31, 1 << 32, 1 << 62, i64::MAX]).prop_map(Value::from),
        1 => Just(json!(u64::MAX)),
        1 => Just(json!(1.5)),
        1 => Just(json!("2")),
    ]
}

fn datatype() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::sample::select(DataType::ALL.to_vec()).prop_map(|d| d.v2_name().to_owned()),
        1 => "[A-Z0-9]{0,6}",
    ]
}

/// A JSON `data` element: numbers of every range, bools, strings, nulls, arrays.
fn element() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        (0u64..300).prop_map(Value::from),
        any::<f64>().prop_map(Value::from), // non-finite becomes null
        any::<bool>().prop_map(Value::from),
        "[a-z]{0,4}".prop_map(Value::from),
        Just(Value::Null),
        Just(json!([1, [2]])),
    ]
}

/// One input and the binary bytes it claims.
fn input() -> impl Strategy<Value = (Value, Vec<u8>)> {
    prop_oneof![3 => consistent_input(), 2 => hostile_input()]
}

/// An input whose data matches its shape and datatype, as JSON or as binary.
fn consistent_input() -> impl Strategy<Value = (Value, Vec<u8>)> {
    (
        prop::sample::select(vec!["a", "b", "c"]),
        prop::sample::select(DataType::ALL.to_vec()),
        prop::collection::vec(0i64..4, 1..4),
        any::<bool>(),
        any::<u8>(),
    )
        .prop_map(|(name, dtype, shape, binary, fill)| {
            let count = shape.iter().product::<i64>() as usize;
            let mut input = json!({ "name": name, "shape": shape, "datatype": dtype.v2_name() });
            // FP16 and BF16 travel only in binary form.
            if binary || matches!(dtype, DataType::Fp16 | DataType::Bf16) {
                let bytes = match dtype.element_size() {
                    Some(size) => vec![fill; count * size],
                    // BYTES: each element a 4-byte little-endian length, then its bytes.
                    None => (0..count)
                        .flat_map(|i| [&(i as u32 % 3).to_le_bytes()[..], &[fill; 2][..i % 3]].concat())
                        .collect(),
                };
                input["parameters"] = json!({ "binary_data_size": bytes.len() });
                return (input, bytes);
            }
            let element = |i: usize| match dtype {
                DataType::Bool => json!(i.is_multiple_of(2)),
                DataType::Bytes => json!(format!("s{i}")),
                DataType::Fp32 | DataType::Fp64 | DataType::Fp16 | DataType::Bf16 => json!(i as f64 / 4.0),
                _ => json!(i % 100),
            };
            input["data"] = Value::from((0..count).map(element).collect::<Vec<_>>());
            (input, Vec::new())
        })
}

/// An input made of anything: hostile dims and datatypes, data of any type
/// and length (flat or nested), a `binary_data_size`, both, or neither.
fn hostile_input() -> impl Strategy<Value = (Value, Vec<u8>)> {
    (
        prop::sample::select(vec!["a", "b", "a"]),
        prop::collection::vec(dimension(), 0..4),
        datatype(),
        prop::collection::vec(element(), 0..12),
        prop::option::of(0usize..64),
        0u8..4,
        any::<u8>(),
    )
        .prop_map(|(name, shape, datatype, data, binary_size, form, fill)| {
            let mut input = json!({ "name": name, "shape": shape, "datatype": datatype });
            match (binary_size, form) {
                (Some(size), 0) => {
                    input["parameters"] = json!({ "binary_data_size": size });
                    input["data"] = Value::from(data);
                }
                (Some(size), _) => input["parameters"] = json!({ "binary_data_size": size }),
                (None, 0) => {}
                (None, 1) => input["data"] = json!([data]),
                (None, _) => input["data"] = Value::from(data),
            }
            (input, vec![fill; binary_size.unwrap_or(0)])
        })
}

/// A whole body: a JSON header, a binary tail of about the claimed size, and an
/// `Inference-Header-Content-Length` that is right, absent or wrong.
fn request() -> impl Strategy<Value = (HeaderMap, Bytes)> {
    (prop::collection::vec(input(), 0..4), -2i64..3, any::<u8>(), 0u8..4, any::<bool>(), -3i64..3).prop_map(
        |(inputs, tail_error, fill, length_form, outputs, length_error)| {
            let (inputs, tails): (Vec<Value>, Vec<Vec<u8>>) = inputs.into_iter().unzip();
            let mut header = json!({ "inputs": inputs });
            if outputs {
                header["outputs"] = json!([{ "name": "y", "parameters": { "binary_data": true } }]);
                header["parameters"] = json!({ "binary_data_output": true, "timeout": 5 });
            }
            let mut body = serde_json::to_vec(&header).unwrap_or_default();
            let header_length = body.len();
            // The claimed bytes, then one or two more, or one or two fewer.
            body.extend(tails.concat());
            match usize::try_from(tail_error) {
                Ok(extra) => body.extend(std::iter::repeat_n(fill, extra)),
                Err(_) => {
                    body.truncate(body.len().saturating_sub(tail_error.unsigned_abs() as usize).max(header_length))
                }
            }
            let mut headers = HeaderMap::new();
            let length = match length_form {
                0 => Some(header_length.to_string()),
                1 => None,
                2 => Some((header_length as i64 + length_error).to_string()),
                _ => Some("-1".to_owned()),
            };
            if let Some(length) = length {
                headers.insert(HEADER_LENGTH, length.parse().expect("an ASCII header value"));
            }
            (headers, Bytes::from(body))
        },
    )
}

/// A request that is right in every respect: distinct names, data that
/// matches each shape, the binary bytes claimed and the header length exact.
fn consistent_request() -> impl Strategy<Value = (HeaderMap, Bytes, Vec<Value>, Vec<Vec<u8>>)> {
    prop::collection::vec(consistent_input(), 0..4).prop_map(|inputs| {
        let (mut inputs, tails): (Vec<Value>, Vec<Vec<u8>>) = inputs.into_iter().unzip();
        for (i, input) in inputs.iter_mut().enumerate() {
            input["name"] = json!(format!("in{i}"));
        }
        let mut body = serde_json::to_vec(&json!({ "inputs": inputs })).unwrap_or_default();
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_LENGTH, body.len().into());
        body.extend(tails.concat());
        (headers, Bytes::from(body), inputs, tails)
    })
}

/// The tensor bytes JSON `data` stands for, written independently of the decoder: row-major,
/// little-endian, booleans 0/1, BYTES as length-prefixed UTF-8.
fn json_oracle(dtype: DataType, data: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    for value in data.as_array().into_iter().flatten() {
        let int = || value.as_i64().unwrap_or_default();
        match dtype {
            DataType::Bool => out.push(u8::from(value.as_bool().unwrap_or_default())),
            DataType::Uint8 => out.extend((int() as u8).to_le_bytes()),
            DataType::Uint16 => out.extend((int() as u16).to_le_bytes()),
            DataType::Uint32 => out.extend((int() as u32).to_le_bytes()),
            DataType::Uint64 => out.extend((int() as u64).to_le_bytes()),
            DataType::Int8 => out.extend((int() as i8).to_le_bytes()),
            DataType::Int16 => out.extend((int() as i16).to_le_bytes()),
            DataType::Int32 => out.extend((int() as i32).to_le_bytes()),
            DataType::Int64 => out.extend(int().to_le_bytes()),
            DataType::Fp32 => out.extend((value.as_f64().unwrap_or_default() as f32).to_le_bytes()),
            DataType::Fp64 => out.extend(value.as_f64().unwrap_or_default().to_le_bytes()),
            DataType::Bytes => {
                let text = value.as_str().unwrap_or_default().as_bytes();
                out.extend((text.len() as u32).to_le_bytes());
                out.extend(text);
            }
            // Only in binary form (see consistent_input).
            DataType::Fp16 | DataType::Bf16 => {}
        }
    }
    out
}

/// What every decoded request must satisfy, and every refusal.
fn check(result: Result<InferRequest, DecodeError>) -> Result<(), TestCaseError> {
    match result {
        Ok(request) => check_decoded(&request, LIMIT).map_err(TestCaseError::fail)?,
        Err(error) => {
            let error = Error::from(error);
            let status = error.http_status().as_u16();
            prop_assert!(matches!(status, 400 | 413 | 501), "{status}: {error}");
            prop_assert!(!error.message().is_empty());
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn a_consistent_request_is_accepted_with_its_shapes_and_binary_bytes((headers, body, inputs, tails) in consistent_request()) {
        let request = header_length(&headers).and_then(|n| decode_request(n, body, LIMIT)).map_err(|e| TestCaseError::fail(format!("refused: {e}")))?;
        prop_assert_eq!(request.inputs.len(), inputs.len());
        for ((tensor, sent), tail) in request.inputs.iter().zip(&inputs).zip(&tails) {
            prop_assert_eq!(&json!(tensor.shape), &sent["shape"]);
            prop_assert_eq!(tensor.dtype.v2_name(), sent["datatype"].as_str().unwrap_or_default());
            if !tail.is_empty() && tensor.dtype != DataType::Bool {
                prop_assert_eq!(&tensor.data[..], &tail[..], "binary bytes pass through unchanged");
            }
            if tail.is_empty() {
                let expected = json_oracle(tensor.dtype, &sent["data"]);
                prop_assert_eq!(&tensor.data[..], &expected[..], "JSON {} data decodes to its values", tensor.dtype.v2_name());
            }
        }
        check(Ok(request))?;
    }

    #[test]
    fn any_well_formed_or_malformed_request_decodes_exactly_or_is_refused((headers, body) in request()) {
        check(header_length(&headers).and_then(|n| decode_request(n, body, LIMIT)))?;
    }

    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512), split in prop::option::of(0usize..600)) {
        let mut headers = HeaderMap::new();
        if let Some(n) = split {
            headers.insert(HEADER_LENGTH, n.into());
        }
        check(header_length(&headers).and_then(|n| decode_request(n, Bytes::from(body), LIMIT)))?;
    }
}
