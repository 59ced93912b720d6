//! What a `ModelInferRequest` will take in memory once decoded, read from
//! its protobuf wire bytes before anything is built (#15, finding 6).
//!
//! The wire form is small beside what it decodes to: an empty entry of
//! `bytes_contents` is 2 bytes on the wire and a 32-byte `Bytes` in memory,
//! a one-byte varint of `int64_contents` is 8 bytes, a map entry of
//! `parameters` is 2 bytes and a hash-map slot. One 60 MB message of empty
//! `bytes_contents` reached 1.6 GB. [`decoded_bytes`] counts every element
//! the decoder would build (no allocation, one pass over the bytes) so that
//! such a message is refused first.

use std::mem::size_of;

use bytes::Bytes;

use crate::proto::inference::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use crate::proto::inference::{InferParameter, InferTensorContents, ModelInferRequest};

/// A map entry: the key, the value and the hash map's slot around them.
const MAP_ENTRY: usize = size_of::<String>() + size_of::<InferParameter>() + 16;

/// Bytes of memory the decoded `ModelInferRequest` in `wire` takes, by the
/// elements it holds (tensor data given as `bytes` costs only its handle:
/// it is not copied). Malformed input counts what came before the fault;
/// the decoder refuses the rest.
pub fn decoded_bytes(wire: &[u8]) -> usize {
    size_of::<ModelInferRequest>().saturating_add(walk(wire, request_field))
}

/// The cost of one field of `ModelInferRequest`.
fn request_field(field: u32, value: Value<'_>) -> usize {
    match (field, value) {
        // model_name, model_version, id: copied into `String`s.
        (1..=3, Value::Bytes(b)) => b.len(),
        (4, Value::Bytes(b)) => MAP_ENTRY + b.len(),
        (5, Value::Bytes(b)) => size_of::<InferInputTensor>().saturating_add(walk(b, input_field)),
        (6, Value::Bytes(b)) => size_of::<InferRequestedOutputTensor>() + walk(b, output_field),
        // raw_input_contents: a handle on the message's buffer each.
        (7, Value::Bytes(_)) => size_of::<Bytes>(),
        _ => 0,
    }
}

fn input_field(field: u32, value: Value<'_>) -> usize {
    match (field, value) {
        (1 | 2, Value::Bytes(b)) => b.len(),
        (3, value) => repeated(value, Scalar::Varint, size_of::<i64>()),
        (4, Value::Bytes(b)) => MAP_ENTRY + b.len(),
        (5, Value::Bytes(b)) => size_of::<InferTensorContents>().saturating_add(walk(b, contents_field)),
        _ => 0,
    }
}

fn output_field(field: u32, value: Value<'_>) -> usize {
    match (field, value) {
        (1, Value::Bytes(b)) => b.len(),
        (2, Value::Bytes(b)) => MAP_ENTRY + b.len(),
        _ => 0,
    }
}

fn contents_field(field: u32, value: Value<'_>) -> usize {
    match field {
        1 => repeated(value, Scalar::Varint, size_of::<bool>()),
        2 | 4 => repeated(value, Scalar::Varint, size_of::<i32>()),
        3 | 5 => repeated(value, Scalar::Varint, size_of::<i64>()),
        6 => repeated(value, Scalar::Fixed(4), size_of::<f32>()),
        7 => repeated(value, Scalar::Fixed(8), size_of::<f64>()),
        8 => size_of::<Bytes>(),
        _ => 0,
    }
}

/// How the elements of a packed field are laid out.
#[derive(Clone, Copy)]
enum Scalar {
    Varint,
    Fixed(usize),
}

/// One element (`Value::Scalar`) or a packed run of them (`Value::Bytes`),
/// `size` bytes each in memory.
fn repeated(value: Value<'_>, scalar: Scalar, size: usize) -> usize {
    let count = match (value, scalar) {
        (Value::Scalar, _) => 1,
        // Every varint ends at a byte below 0x80.
        (Value::Bytes(b), Scalar::Varint) => b.iter().filter(|&&byte| byte < 0x80).count(),
        (Value::Bytes(b), Scalar::Fixed(width)) => b.len() / width,
    };
    count.saturating_mul(size)
}

/// A field's value as the wire gives it.
#[derive(Clone, Copy)]
enum Value<'a> {
    /// A varint or a fixed-width number.
    Scalar,
    /// A length-delimited value.
    Bytes(&'a [u8]),
}

/// Sums `cost` over the fields of the message in `wire`, stopping at the
/// first malformed field.
fn walk(mut wire: &[u8], cost: impl Fn(u32, Value<'_>) -> usize) -> usize {
    let mut total = 0usize;
    while !wire.is_empty() {
        let Some(key) = varint(&mut wire) else { break };
        let field = u32::try_from(key >> 3).unwrap_or(0);
        let value = match key & 7 {
            0 => match varint(&mut wire) {
                Some(_) => Value::Scalar,
                None => break,
            },
            1 | 5 => {
                let width = if key & 7 == 1 { 8 } else { 4 };
                let Some(rest) = wire.get(width..) else { break };
                wire = rest;
                Value::Scalar
            }
            2 => {
                let Some(len) = varint(&mut wire).and_then(|len| usize::try_from(len).ok()) else { break };
                let Some(bytes) = wire.get(..len) else { break };
                wire = &wire[len..];
                Value::Bytes(bytes)
            }
            // Groups (3, 4) and unknown wire types: the decoder refuses them.
            _ => break,
        };
        total = total.saturating_add(cost(field, value));
    }
    total
}

/// Reads a varint off the front of `wire`.
fn varint(wire: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (i, &byte) in wire.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            *wire = &wire[i + 1..];
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    fn with_contents(contents: InferTensorContents) -> ModelInferRequest {
        let input = InferInputTensor { name: "x".into(), contents: Some(contents), ..Default::default() };
        ModelInferRequest { inputs: vec![input], ..Default::default() }
    }

    #[test]
    fn empty_bytes_elements_count_their_handles() {
        let message =
            with_contents(InferTensorContents { bytes_contents: vec![Bytes::new(); 1000], ..Default::default() })
                .encode_to_vec();
        assert!(message.len() < 2100, "{}", message.len());
        let decoded = decoded_bytes(&message);
        assert!(decoded >= 1000 * size_of::<Bytes>(), "{decoded}");
        assert!(decoded < 1000 * size_of::<Bytes>() + 1000, "{decoded}");
    }

    #[test]
    fn packed_numbers_count_their_width_in_memory() {
        let small = with_contents(InferTensorContents { int64_contents: vec![1; 1000], ..Default::default() });
        let floats = with_contents(InferTensorContents { fp32_contents: vec![1.0; 1000], ..Default::default() });
        let base = decoded_bytes(&with_contents(InferTensorContents::default()).encode_to_vec());
        assert_eq!(decoded_bytes(&small.encode_to_vec()) - base, 8000);
        assert_eq!(decoded_bytes(&floats.encode_to_vec()) - base, 4000);
    }

    #[test]
    fn raw_contents_cost_a_handle_not_their_length() {
        let message =
            ModelInferRequest { raw_input_contents: vec![Bytes::from(vec![0; 1 << 20])], ..Default::default() };
        assert_eq!(decoded_bytes(&message.encode_to_vec()), size_of::<ModelInferRequest>() + size_of::<Bytes>());
    }

    #[test]
    fn malformed_wire_stops_the_count_without_a_panic() {
        for wire in [&[0xff_u8; 11][..], &[0x2a, 0x80], &[0x3a, 0x05, 1], &[0x0b], &[0x09, 1, 2]] {
            assert!(decoded_bytes(wire) >= size_of::<ModelInferRequest>());
        }
    }
}
