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
use crate::stats::StatDuration;
use crate::tensor::{
    DeclaredInput, InferRequest, InferResponse, ParameterOwner, RequestedOutput, Tensor, refuse_unsupported_parameters,
};

/// Decodes a `ModelInferRequest`. `limit` bounds the decoded tensor bytes.
pub fn decode_request(message: ModelInferRequest, limit: usize) -> Result<InferRequest, Error> {
    refuse_unsupported_parameters(message.parameters.keys(), || ParameterOwner::Request)?;
    let mut request = InferRequest { id: (!message.id.is_empty()).then_some(message.id), ..InferRequest::default() };
    if let Some(timeout) = message.parameters.get("timeout") {
        match timeout.parameter_choice {
            Some(ParameterChoice::Int64Param(us)) if us >= 0 => {
                request.timeout = (us > 0).then(|| Duration::from_micros(us as u64));
            }
            Some(ParameterChoice::Uint64Param(us)) => request.timeout = (us > 0).then(|| Duration::from_micros(us)),
            _ => {
                return Err(Error::invalid("parameter 'timeout' must be a non-negative integer of microseconds"));
            }
        }
    }
    let raw = message.raw_input_contents;
    if !raw.is_empty() && raw.len() != message.inputs.len() {
        return Err(Error::invalid(format!(
            "raw_input_contents holds {} entries for {} inputs; send one per input",
            raw.len(),
            message.inputs.len()
        )));
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

fn decode_input(input: InferInputTensor, raw: Option<Bytes>, limit: usize) -> Result<Tensor, Error> {
    refuse_unsupported_parameters(input.parameters.keys(), || ParameterOwner::Input(input.name.clone()))?;
    let declared = DeclaredInput::new(input.name, &input.datatype, input.shape, limit)?;
    let contents = input.contents.unwrap_or_default();
    let data = match raw {
        Some(raw) => {
            if has_typed(&contents) {
                return Err(Error::invalid(format!(
                    "input '{}': data given both in contents and in raw_input_contents",
                    declared.name
                )));
            }
            raw
        }
        None => typed(&declared.name, declared.dtype, declared.count, contents)?,
    };
    Ok(declared.with_data(data)?)
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
fn typed(name: &str, dtype: DataType, count: usize, c: InferTensorContents) -> Result<Bytes, Error> {
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
            return Err(Error::invalid(format!("input '{name}': {dtype} data must be sent in raw_input_contents")));
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
    if let Some((other, _)) = given.iter().find(|(f, n)| *n > 0 && *f != field) {
        return Err(Error::invalid(format!("input '{name}': {dtype} data belongs in {field}, not {other}")));
    }
    let found = given.iter().find(|(f, _)| *f == field).map_or(0, |(_, n)| *n);
    if found != count {
        return Err(Error::invalid(format!("input '{name}': {field} holds {found} elements, the shape needs {count}")));
    }
    let range = |v: i64| Error::invalid(format!("input '{name}': {v} is out of range for {dtype}"));
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

fn duration(d: &StatDuration) -> Option<pb::StatisticDuration> {
    let (count, ns) = d.get();
    Some(pb::StatisticDuration { count, ns })
}

/// The `ModelStatistics` message of a version.
pub fn statistics(v: &ModelVersion) -> pb::ModelStatistics {
    let s = &v.stats;
    pb::ModelStatistics {
        name: v.name.clone(),
        version: v.version.to_string(),
        last_inference: s.last_inference_ms(),
        inference_count: s.inference_count(),
        execution_count: s.execution_count(),
        inference_stats: Some(pb::InferStatistics {
            success: duration(&s.success),
            fail: duration(&s.fail),
            queue: duration(&s.queue),
            compute_input: duration(&s.compute_input),
            compute_infer: duration(&s.compute_infer),
            compute_output: duration(&s.compute_output),
            cache_hit: Some(pb::StatisticDuration::default()),
            cache_miss: Some(pb::StatisticDuration::default()),
        }),
        batch_stats: s
            .batch_stats()
            .map(|(size, b)| pb::InferBatchStatistics {
                batch_size: size as u64,
                compute_input: duration(&b.compute_input),
                compute_infer: duration(&b.compute_infer),
                compute_output: duration(&b.compute_output),
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
        let cases = vec![
            (
                request(vec![input("FP32", vec![2], empty())], vec![Bytes::new(), Bytes::new()]),
                "2 entries for 1 inputs",
            ),
            (request(vec![input("FP32", vec![2], empty())], vec![Bytes::from(vec![0u8; 4])]), "needs 8 bytes, got 4"),
            (
                request(
                    vec![input("INT32", vec![1], InferTensorContents { int_contents: vec![1], ..Default::default() })],
                    vec![Bytes::from(vec![0u8; 4])],
                ),
                "both in contents and in raw",
            ),
            (
                request(
                    vec![input(
                        "FP32",
                        vec![2],
                        InferTensorContents { fp32_contents: vec![1.0], ..Default::default() },
                    )],
                    vec![],
                ),
                "holds 1 elements",
            ),
            (
                request(
                    vec![input(
                        "INT32",
                        vec![1],
                        InferTensorContents { fp32_contents: vec![1.0], ..Default::default() },
                    )],
                    vec![],
                ),
                "not fp32_contents",
            ),
            (
                request(
                    vec![input("INT8", vec![1], InferTensorContents { int_contents: vec![300], ..Default::default() })],
                    vec![],
                ),
                "out of range",
            ),
            (request(vec![input("FP16", vec![1], empty())], vec![]), "raw_input_contents"),
            (request(vec![input("FP99", vec![1], empty())], vec![]), "unknown datatype"),
            (request(vec![input("FP32", vec![-1], empty())], vec![]), "negative dimension"),
            (request(vec![input("FP32", vec![i64::MAX, 4], empty())], vec![]), "too many elements"),
        ];
        for (message, expected) in cases {
            let error = decode_request(message, 1 << 20).unwrap_err();
            assert!(error.message().contains(expected), "{expected}: {error}");
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
