//! Element types: the V2 types that libtorch tensors can hold, and the ones
//! they cannot (refused when a model loads, never at request time).

use modelgate_backend::DataType;
use tch::Kind;

/// The torch element type of a V2 type, or why TorchScript cannot take it.
pub(crate) fn torch_kind(dtype: DataType) -> Result<Kind, &'static str> {
    Ok(match dtype {
        DataType::Bool => Kind::Bool,
        DataType::Uint8 => Kind::Uint8,
        DataType::Int8 => Kind::Int8,
        DataType::Int16 => Kind::Int16,
        DataType::Int32 => Kind::Int,
        DataType::Int64 => Kind::Int64,
        DataType::Fp16 => Kind::Half,
        DataType::Fp32 => Kind::Float,
        DataType::Fp64 => Kind::Double,
        DataType::Bf16 => Kind::BFloat16,
        // torch has only "shell" uint16/32/64 types without most operators, and
        // tch has no Kind for them.
        DataType::Uint16 | DataType::Uint32 | DataType::Uint64 => {
            return Err("libtorch has no usable unsigned 16/32/64-bit tensors (use INT32 or INT64)");
        }
        DataType::Bytes => return Err("TorchScript tensors cannot hold strings (BYTES / TYPE_STRING)"),
    })
}

/// The V2 type of a torch element type, if the protocol has one.
pub(crate) fn data_type(kind: Kind) -> Option<DataType> {
    Some(match kind {
        Kind::Bool => DataType::Bool,
        Kind::Uint8 => DataType::Uint8,
        Kind::Int8 => DataType::Int8,
        Kind::Int16 => DataType::Int16,
        Kind::Int => DataType::Int32,
        Kind::Int64 => DataType::Int64,
        Kind::Half => DataType::Fp16,
        Kind::Float => DataType::Fp32,
        Kind::Double => DataType::Fp64,
        Kind::BFloat16 => DataType::Bf16,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_torch_has_maps_both_ways_and_the_rest_are_refused_with_a_reason() {
        for dtype in DataType::ALL {
            match torch_kind(dtype) {
                Ok(kind) => {
                    assert_eq!(data_type(kind), Some(dtype));
                    assert_eq!(Some(kind.elt_size_in_bytes()), dtype.element_size());
                }
                Err(reason) => {
                    assert!(matches!(dtype, DataType::Uint16 | DataType::Uint32 | DataType::Uint64 | DataType::Bytes));
                    assert!(!reason.is_empty());
                }
            }
        }
    }
}
