//! The tensor element types of the KServe V2 protocol, and their names in each
//! vocabulary the gateway speaks: V2 (`FP32`), Triton's model config (`TYPE_FP32`).

use std::fmt;

/// A tensor element type of the KServe V2 protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DataType {
    /// One byte, 0 or 1.
    Bool,
    /// Unsigned 8-bit integer.
    Uint8,
    /// Unsigned 16-bit integer.
    Uint16,
    /// Unsigned 32-bit integer.
    Uint32,
    /// Unsigned 64-bit integer.
    Uint64,
    /// Signed 8-bit integer.
    Int8,
    /// Signed 16-bit integer.
    Int16,
    /// Signed 32-bit integer.
    Int32,
    /// Signed 64-bit integer.
    Int64,
    /// IEEE half precision; only travels in binary form.
    Fp16,
    /// IEEE single precision.
    Fp32,
    /// IEEE double precision.
    Fp64,
    /// bfloat16; only travels in binary form.
    Bf16,
    /// Variable-length byte strings: each element is a `u32` little-endian length and the bytes.
    Bytes,
}

impl DataType {
    /// Every element type, in the order the V2 specification lists them.
    pub const ALL: [DataType; 14] = [
        DataType::Bool,
        DataType::Uint8,
        DataType::Uint16,
        DataType::Uint32,
        DataType::Uint64,
        DataType::Int8,
        DataType::Int16,
        DataType::Int32,
        DataType::Int64,
        DataType::Fp16,
        DataType::Fp32,
        DataType::Fp64,
        DataType::Bf16,
        DataType::Bytes,
    ];

    /// Parses a V2 protocol name such as `FP32` (case-sensitive, as the protocol says).
    pub fn from_v2(name: &str) -> Option<DataType> {
        Self::ALL.into_iter().find(|d| d.v2_name() == name)
    }

    /// The V2 protocol name, e.g. `FP32`.
    pub const fn v2_name(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::Uint8 => "UINT8",
            DataType::Uint16 => "UINT16",
            DataType::Uint32 => "UINT32",
            DataType::Uint64 => "UINT64",
            DataType::Int8 => "INT8",
            DataType::Int16 => "INT16",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
            DataType::Fp16 => "FP16",
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
            DataType::Bf16 => "BF16",
            DataType::Bytes => "BYTES",
        }
    }

    /// Parses a Triton model-config name such as `TYPE_FP32` (`TYPE_STRING` is BYTES).
    pub fn from_config_name(name: &str) -> Option<DataType> {
        let short = name.strip_prefix("TYPE_")?;
        match short {
            "STRING" => Some(DataType::Bytes),
            "BYTES" => None,
            other => DataType::from_v2(other),
        }
    }

    /// The Triton model-config name, e.g. `TYPE_FP32`.
    pub const fn config_name(self) -> &'static str {
        match self {
            DataType::Bool => "TYPE_BOOL",
            DataType::Uint8 => "TYPE_UINT8",
            DataType::Uint16 => "TYPE_UINT16",
            DataType::Uint32 => "TYPE_UINT32",
            DataType::Uint64 => "TYPE_UINT64",
            DataType::Int8 => "TYPE_INT8",
            DataType::Int16 => "TYPE_INT16",
            DataType::Int32 => "TYPE_INT32",
            DataType::Int64 => "TYPE_INT64",
            DataType::Fp16 => "TYPE_FP16",
            DataType::Fp32 => "TYPE_FP32",
            DataType::Fp64 => "TYPE_FP64",
            DataType::Bf16 => "TYPE_BF16",
            DataType::Bytes => "TYPE_STRING",
        }
    }

    /// The value of Triton's `DataType` protobuf enum for this type.
    pub const fn config_enum_value(self) -> i32 {
        match self {
            DataType::Bool => 1,
            DataType::Uint8 => 2,
            DataType::Uint16 => 3,
            DataType::Uint32 => 4,
            DataType::Uint64 => 5,
            DataType::Int8 => 6,
            DataType::Int16 => 7,
            DataType::Int32 => 8,
            DataType::Int64 => 9,
            DataType::Fp16 => 10,
            DataType::Fp32 => 11,
            DataType::Fp64 => 12,
            DataType::Bytes => 13,
            DataType::Bf16 => 14,
        }
    }

    /// Bytes per element, or `None` for the variable-length BYTES type.
    pub const fn element_size(self) -> Option<usize> {
        match self {
            DataType::Bool | DataType::Uint8 | DataType::Int8 => Some(1),
            DataType::Uint16 | DataType::Int16 | DataType::Fp16 | DataType::Bf16 => Some(2),
            DataType::Uint32 | DataType::Int32 | DataType::Fp32 => Some(4),
            DataType::Uint64 | DataType::Int64 | DataType::Fp64 => Some(8),
            DataType::Bytes => None,
        }
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.v2_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_round_trips_through_both_vocabularies() {
        for d in DataType::ALL {
            assert_eq!(DataType::from_v2(d.v2_name()), Some(d));
            assert_eq!(DataType::from_config_name(d.config_name()), Some(d));
        }
    }

    #[test]
    fn names_are_case_sensitive_and_unknown_names_are_refused() {
        assert_eq!(DataType::from_v2("fp32"), None);
        assert_eq!(DataType::from_v2("FP99"), None);
        assert_eq!(DataType::from_config_name("FP32"), None);
        assert_eq!(DataType::from_config_name("TYPE_BYTES"), None);
    }

    #[test]
    fn config_enum_values_follow_tritons_numbering() {
        let mut values: Vec<i32> = DataType::ALL.iter().map(|d| d.config_enum_value()).collect();
        values.sort_unstable();
        assert_eq!(values, (1..=14).collect::<Vec<_>>());
        assert_eq!(DataType::Bytes.config_enum_value(), 13);
    }
}
