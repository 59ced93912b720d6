//! Concatenating the inputs of a batch along dimension 0, and splitting the
//! outputs back per request.
//!
//! Inputs of a single request are passed through without a copy when their
//! bytes are aligned for the element type; otherwise they are copied into an
//! 8-byte-aligned buffer, which every numeric element type accepts. Outputs are
//! split by slicing the backend's `Bytes`, so no request pays for a copy.

use std::borrow::Cow;

use bytes::Bytes;
use modelgate_backend::{DataType, InputTensor, OutputTensor, bytes_elements, element_count};

use crate::drift::SharedTensor;
use crate::error::Error;
use crate::tensor::Tensor;

/// A byte buffer aligned to 8 bytes.
#[derive(Debug, Default)]
pub struct AlignedBuf {
    words: Vec<u64>,
    len: usize,
}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes.
    pub fn zeroed(len: usize) -> AlignedBuf {
        AlignedBuf { words: vec![0u64; len.div_ceil(8)], len }
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.words)[..self.len]
    }

    /// The bytes, writable.
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut(&mut self.words)[..self.len]
    }
}

/// Lets `Bytes::from_owner` share an assembled batch without copying it.
impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

/// One input of a batch: borrowed from the request or assembled.
#[derive(Debug)]
enum Data<'a> {
    // The request's `Bytes` rather than a slice of it, so the drift profiler
    // can share it (a reference count) after the batch ran.
    Borrowed(&'a Bytes),
    Owned(AlignedBuf),
    Packed(Vec<u8>),
}

/// One batched input.
#[derive(Debug)]
pub struct BatchedInput<'a> {
    dtype: DataType,
    /// A lone request's shape is borrowed: a batch of one allocates nothing.
    shape: Cow<'a, [i64]>,
    data: Data<'a>,
}

impl BatchedInput<'_> {
    /// The view a backend receives.
    pub fn view(&self) -> InputTensor<'_> {
        let data = match &self.data {
            Data::Borrowed(b) => b,
            Data::Owned(buf) => buf.as_bytes(),
            Data::Packed(v) => v.as_slice(),
        };
        InputTensor { dtype: self.dtype, shape: &self.shape, data }
    }

    /// Whether assembling copied the bytes.
    pub fn copied(&self) -> bool {
        !matches!(self.data, Data::Borrowed(_))
    }

    /// The input as the backend saw it, shared without a copy: the request's
    /// buffer gains a reference, an assembled buffer is moved into `Bytes`.
    pub fn into_shared(self) -> SharedTensor {
        let data = match self.data {
            Data::Borrowed(b) => b.clone(),
            Data::Owned(buf) => Bytes::from_owner(buf),
            Data::Packed(v) => Bytes::from(v),
        };
        SharedTensor { dtype: self.dtype, shape: self.shape.as_ref().into(), data }
    }
}

fn aligned_for(data: &[u8], dtype: DataType) -> bool {
    let align = dtype.element_size().unwrap_or(1);
    (data.as_ptr() as usize).is_multiple_of(align)
}

/// Concatenates input `index` of every request along dimension 0.
/// `requests` must agree on dtype and non-batch dims (the queue guarantees it).
pub fn concat<'a>(requests: &[&'a [Tensor]], index: usize, batched: bool) -> BatchedInput<'a> {
    let first = &requests[0][index];
    if requests.len() == 1 {
        let data = if aligned_for(&first.data, first.dtype) {
            Data::Borrowed(&first.data)
        } else {
            let mut buf = AlignedBuf::zeroed(first.data.len());
            buf.as_bytes_mut().copy_from_slice(&first.data);
            Data::Owned(buf)
        };
        return BatchedInput { dtype: first.dtype, shape: Cow::Borrowed(&first.shape), data };
    }
    debug_assert!(batched, "only batching models receive several requests at once");
    let rows: i64 = requests.iter().map(|r| r[index].shape[0]).sum();
    let mut shape = first.shape.clone();
    shape[0] = rows;
    let total: usize = requests.iter().map(|r| r[index].data.len()).sum();
    let data = if first.dtype == DataType::Bytes {
        // Length-prefixed elements concatenate into a valid BYTES buffer.
        let mut packed = Vec::with_capacity(total);
        for request in requests {
            packed.extend_from_slice(&request[index].data);
        }
        Data::Packed(packed)
    } else {
        let mut buf = AlignedBuf::zeroed(total);
        let out = buf.as_bytes_mut();
        let mut offset = 0;
        for request in requests {
            let part = &request[index].data;
            out[offset..offset + part.len()].copy_from_slice(part);
            offset += part.len();
        }
        Data::Owned(buf)
    };
    BatchedInput { dtype: first.dtype, shape: Cow::Owned(shape), data }
}

/// Splits one output of a batch into one tensor per request, by rows.
/// `index` names the output in error messages.
pub fn split(output: OutputTensor, rows: &[usize], index: usize) -> Result<Vec<OutputTensor>, Error> {
    if rows.len() == 1 {
        return Ok(vec![output]);
    }
    let total: usize = rows.iter().sum();
    let (&first, rest) = output
        .shape
        .split_first()
        .ok_or_else(|| Error::Internal(format!("output {index} is a scalar, so it cannot be split across a batch")))?;
    if first != total as i64 {
        return Err(Error::Internal(format!("output {index} has {first} rows but the batch has {total}")));
    }
    let per_row = element_count(rest).ok_or_else(|| Error::Internal(format!("output {index} has an invalid shape")))?;
    let offsets = row_offsets(&output, per_row, rows, index)?;
    Ok(rows
        .iter()
        .zip(offsets.windows(2))
        .map(|(&r, span)| {
            let mut shape = output.shape.clone();
            shape[0] = r as i64;
            OutputTensor { dtype: output.dtype, shape, data: output.data.slice(span[0]..span[1]) }
        })
        .collect())
}

/// Byte offsets where each request's rows start, plus the end.
fn row_offsets(output: &OutputTensor, per_row: usize, rows: &[usize], index: usize) -> Result<Vec<usize>, Error> {
    let mut offsets = Vec::with_capacity(rows.len() + 1);
    offsets.push(0);
    match output.dtype.element_size() {
        Some(size) => {
            let row_bytes = per_row * size;
            let mut at = 0;
            for &r in rows {
                at += r * row_bytes;
                offsets.push(at);
            }
            if at != output.data.len() {
                return Err(Error::Internal(format!(
                    "output {index} holds {} bytes, its shape needs {at}",
                    output.data.len()
                )));
            }
        }
        None => {
            let mut elements = bytes_elements(&output.data);
            let mut at = 0;
            for &r in rows {
                for _ in 0..r * per_row {
                    let element = elements
                        .next()
                        .ok_or_else(|| Error::Internal(format!("output {index} has too few BYTES elements")))?
                        .map_err(|e| Error::Internal(format!("output {index}: {e}")))?;
                    at += 4 + element.len();
                }
                offsets.push(at);
            }
        }
    }
    Ok(offsets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use modelgate_backend::push_bytes_element;

    fn tensor(dtype: DataType, shape: Vec<i64>, data: Vec<u8>) -> Tensor {
        Tensor::checked("x".into(), dtype, shape, Bytes::from(data)).unwrap()
    }

    #[test]
    fn concat_joins_rows_in_request_order_and_split_undoes_it() {
        let a = vec![tensor(DataType::Int32, vec![1, 2], bytemuck::cast_slice(&[1i32, 2]).to_vec())];
        let b = vec![tensor(DataType::Int32, vec![2, 2], bytemuck::cast_slice(&[3i32, 4, 5, 6]).to_vec())];
        let batch = concat(&[&a, &b], 0, true);
        let view = batch.view();
        assert_eq!(view.shape, &[3, 2]);
        assert_eq!(bytemuck::cast_slice::<u8, i32>(view.data), &[1, 2, 3, 4, 5, 6]);

        let out = OutputTensor { dtype: DataType::Int32, shape: vec![3, 2], data: Bytes::copy_from_slice(view.data) };
        let parts = split(out, &[1, 2], 0).unwrap();
        assert_eq!(parts[0].shape, vec![1, 2]);
        assert_eq!(parts[1].shape, vec![2, 2]);
        assert_eq!(parts[0].data, a[0].data);
        assert_eq!(parts[1].data, b[0].data);
    }

    #[test]
    fn a_single_aligned_request_is_not_copied_and_a_misaligned_one_is_realigned() {
        let owned = vec![tensor(DataType::Fp32, vec![1, 2], vec![0u8; 8])];
        assert!(!concat(&[&owned], 0, true).copied());

        let backing = Bytes::from(vec![0u8; 9]);
        let misaligned =
            if (backing.as_ptr() as usize).is_multiple_of(4) { backing.slice(1..9) } else { backing.slice(0..8) };
        let t = vec![Tensor { name: "x".into(), dtype: DataType::Fp32, shape: vec![1, 2], data: misaligned }];
        let batch = concat(&[&t], 0, true);
        assert!(batch.copied());
        assert!((batch.view().data.as_ptr() as usize).is_multiple_of(8));
    }

    #[test]
    fn bytes_tensors_concatenate_and_split_by_element() {
        let mut one = Vec::new();
        push_bytes_element(&mut one, b"a");
        let mut two = Vec::new();
        push_bytes_element(&mut two, b"bb");
        push_bytes_element(&mut two, b"");
        let a = vec![tensor(DataType::Bytes, vec![1], one.clone())];
        let b = vec![tensor(DataType::Bytes, vec![2], two.clone())];
        let batch = concat(&[&a, &b], 0, true);
        let out =
            OutputTensor { dtype: DataType::Bytes, shape: vec![3], data: Bytes::copy_from_slice(batch.view().data) };
        let parts = split(out, &[1, 2], 0).unwrap();
        assert_eq!(&parts[0].data[..], &one[..]);
        assert_eq!(&parts[1].data[..], &two[..]);
    }

    #[test]
    fn an_output_whose_rows_do_not_match_the_batch_is_an_error_not_a_panic() {
        let out = OutputTensor { dtype: DataType::Fp32, shape: vec![2, 1], data: Bytes::from(vec![0u8; 8]) };
        assert!(split(out, &[1, 2], 0).unwrap_err().message().contains("2 rows but the batch has 3"));
        let scalar = OutputTensor { dtype: DataType::Fp32, shape: vec![], data: Bytes::from(vec![0u8; 4]) };
        assert!(split(scalar, &[1, 1], 0).is_err());
        let short = OutputTensor { dtype: DataType::Fp32, shape: vec![2], data: Bytes::from(vec![0u8; 4]) };
        assert!(split(short, &[1, 1], 0).is_err());
    }
}
