//! Tensor layouts shared by the gateway and every backend: signatures, checked
//! shape arithmetic, and the wire layout of BYTES tensors.

use crate::DataType;

/// A dimension that the model leaves open (any size), as in V2 metadata.
pub const DYNAMIC_DIM: i64 = -1;

/// Name, element type and shape of one model input or output.
///
/// `shape` is the full shape the model sees, batch dimension included; a
/// dynamic dimension is [`DYNAMIC_DIM`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    /// Tensor name as clients use it.
    pub name: String,
    /// Element type.
    pub dtype: DataType,
    /// Full shape; `-1` for a dimension of any size.
    pub shape: Vec<i64>,
}

impl TensorSpec {
    /// Builds a spec.
    pub fn new(name: impl Into<String>, dtype: DataType, shape: Vec<i64>) -> TensorSpec {
        TensorSpec { name: name.into(), dtype, shape }
    }
}

/// The inputs and outputs of a model, in the order the model declares them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelSignature {
    /// Model inputs.
    pub inputs: Vec<TensorSpec>,
    /// Model outputs.
    pub outputs: Vec<TensorSpec>,
}

/// Number of elements of a concrete shape, or `None` if a dimension is negative
/// or the product overflows.
pub fn element_count(shape: &[i64]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| {
        let d = usize::try_from(d).ok()?;
        acc.checked_mul(d)
    })
}

/// Byte size of a fixed-size tensor of `shape`, or `None` on overflow, negative
/// dimensions, or a variable-size type.
pub fn fixed_byte_size(dtype: DataType, shape: &[i64]) -> Option<usize> {
    element_count(shape)?.checked_mul(dtype.element_size()?)
}

/// Why a buffer is not a well-formed BYTES tensor.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BytesLayoutError {
    /// Fewer than four bytes where a length prefix should start.
    #[error("incomplete length prefix of BYTES element {index}")]
    TruncatedLength {
        /// Zero-based element index.
        index: usize,
    },
    /// A length prefix points past the end of the buffer.
    #[error("BYTES element {index} declares {declared} bytes but only {available} remain")]
    Overrun {
        /// Zero-based element index.
        index: usize,
        /// Length the prefix declares.
        declared: usize,
        /// Bytes left in the buffer.
        available: usize,
    },
    /// The buffer holds a different number of elements than the shape says.
    #[error("expected {expected} BYTES elements, found {found}")]
    Count {
        /// Elements the shape calls for.
        expected: usize,
        /// Elements in the buffer (counted up to the first extra one).
        found: usize,
    },
}

/// Iterates over the elements of a BYTES buffer (each a `u32` little-endian
/// length followed by that many bytes), yielding an error once and then stopping
/// if the buffer is malformed.
pub fn bytes_elements(buf: &[u8]) -> impl Iterator<Item = Result<&[u8], BytesLayoutError>> {
    let mut rest = buf;
    let mut index = 0usize;
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || rest.is_empty() {
            return None;
        }
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            failed = true;
            return Some(Err(BytesLayoutError::TruncatedLength { index }));
        };
        let len = u32::from_le_bytes(*len) as usize;
        if len > tail.len() {
            failed = true;
            return Some(Err(BytesLayoutError::Overrun { index, declared: len, available: tail.len() }));
        }
        let (element, after) = tail.split_at(len);
        rest = after;
        index += 1;
        Some(Ok(element))
    })
}

/// Checks that `buf` holds exactly `expected` BYTES elements.
pub fn check_bytes_layout(buf: &[u8], expected: usize) -> Result<(), BytesLayoutError> {
    let mut found = 0usize;
    for element in bytes_elements(buf) {
        element?;
        found += 1;
        if found > expected {
            return Err(BytesLayoutError::Count { expected, found });
        }
    }
    if found == expected { Ok(()) } else { Err(BytesLayoutError::Count { expected, found }) }
}

/// Appends one BYTES element (length prefix and bytes) to `out`.
///
/// # Panics
/// If `element` is 4 GiB or longer, which the request size limits rule out.
pub fn push_bytes_element(out: &mut Vec<u8>, element: &[u8]) {
    let len = u32::try_from(element.len()).expect("BYTES element under 4 GiB (request limits)");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(element);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_count_refuses_negative_dims_and_overflow() {
        assert_eq!(element_count(&[]), Some(1));
        assert_eq!(element_count(&[2, 3, 4]), Some(24));
        assert_eq!(element_count(&[2, 0, 4]), Some(0));
        assert_eq!(element_count(&[2, -5]), None);
        assert_eq!(element_count(&[1 << 40, 1 << 40]), None);
        assert_eq!(fixed_byte_size(DataType::Fp64, &[1 << 61]), None);
        assert_eq!(fixed_byte_size(DataType::Bytes, &[1]), None);
    }

    #[test]
    fn bytes_walker_reads_each_element_and_rejects_bad_prefixes() {
        let mut buf = Vec::new();
        push_bytes_element(&mut buf, b"ab");
        push_bytes_element(&mut buf, b"");
        push_bytes_element(&mut buf, b"xyz");
        let items: Vec<&[u8]> = bytes_elements(&buf).map(|e| e.unwrap()).collect();
        assert_eq!(items, vec![&b"ab"[..], b"", b"xyz"]);
        assert_eq!(check_bytes_layout(&buf, 3), Ok(()));
        assert_eq!(check_bytes_layout(&buf, 2), Err(BytesLayoutError::Count { expected: 2, found: 3 }));
        assert_eq!(check_bytes_layout(&buf, 4), Err(BytesLayoutError::Count { expected: 4, found: 3 }));
        assert_eq!(
            check_bytes_layout(&buf[..buf.len() - 1], 3),
            Err(BytesLayoutError::Overrun { index: 2, declared: 3, available: 2 })
        );
        assert_eq!(check_bytes_layout(&[1, 0], 1), Err(BytesLayoutError::TruncatedLength { index: 0 }));
        let huge = u32::MAX.to_le_bytes();
        assert!(matches!(check_bytes_layout(&huge, 1), Err(BytesLayoutError::Overrun { .. })));
    }
}
