//! The compact summary of a prediction the index keeps: the class a
//! classifier chose and its score, or a regressor's value. Read from one
//! output tensor's first row, so a request is one prediction to judge.

use modelgate_backend::DataType;
use serde::{Deserialize, Serialize};

use crate::tensor::{ResponseOutput, Tensor};

/// How an output is read.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OutputKind {
    /// A row of more than one number is a classifier's scores, one number a value.
    #[default]
    Auto,
    /// The argmax of the row is the predicted class; its score is kept.
    Classifier,
    /// The row's first number is the predicted value.
    Regressor,
}

/// What the index keeps of one prediction (12 bytes).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Prediction {
    /// A classifier's choice.
    Class {
        /// Index of the highest score.
        class: u32,
        /// Number of classes the output has (labels at or past it are refused).
        classes: u32,
        /// The highest score.
        score: f32,
    },
    /// A regressor's value.
    Value(f32),
}

/// Reads the prediction of `output` (the named output, else the first) of a
/// response: `None` when the output is missing, empty or not numeric.
pub fn summarize(outputs: &[ResponseOutput], output: Option<&str>, kind: OutputKind) -> Option<Prediction> {
    let tensor = match output {
        Some(name) => &outputs.iter().find(|o| o.tensor.name == name)?.tensor,
        None => &outputs.first()?.tensor,
    };
    let row = row_len(tensor)?;
    let value = |i: usize| element(tensor, i);
    let classifier = match kind {
        OutputKind::Auto => row > 1,
        OutputKind::Classifier => true,
        OutputKind::Regressor => false,
    };
    if !classifier {
        return Some(Prediction::Value(value(0)? as f32));
    }
    let mut best = (0usize, f64::NEG_INFINITY);
    for i in 0..row {
        let v = value(i)?;
        // NaN scores never win, so a row of NaN predicts class 0 with score NaN.
        if v > best.1 {
            best = (i, v);
        }
    }
    let score = if best.1.is_finite() { best.1 as f32 } else { f32::NAN };
    Some(Prediction::Class { class: u32::try_from(best.0).ok()?, classes: u32::try_from(row).ok()?, score })
}

/// Elements in the first row: the last dimension (1 for a scalar or a vector
/// of one value per row).
fn row_len(tensor: &Tensor) -> Option<usize> {
    let size = tensor.dtype.element_size()?;
    let count = tensor.data.len() / size;
    if count == 0 {
        return None;
    }
    let last = match tensor.shape.as_slice() {
        [] | [_] => 1,
        [.., last] => usize::try_from(*last).ok()?,
    };
    Some(last.clamp(1, count))
}

fn element(tensor: &Tensor, i: usize) -> Option<f64> {
    let size = tensor.dtype.element_size()?;
    let bytes = tensor.data.get(i * size..(i + 1) * size)?;
    let array = |n: usize| -> [u8; 8] {
        let mut out = [0u8; 8];
        out[..n].copy_from_slice(&bytes[..n]);
        out
    };
    let v = match tensor.dtype {
        DataType::Fp32 => f64::from(f32::from_le_bytes(bytes.try_into().ok()?)),
        DataType::Fp64 => f64::from_le_bytes(bytes.try_into().ok()?),
        DataType::Fp16 => f64::from(half::f16::from_le_bytes(bytes.try_into().ok()?)),
        DataType::Bf16 => f64::from(half::bf16::from_le_bytes(bytes.try_into().ok()?)),
        DataType::Int8 => f64::from(bytes[0] as i8),
        DataType::Uint8 | DataType::Bool => f64::from(bytes[0]),
        DataType::Int16 => f64::from(i16::from_le_bytes(bytes.try_into().ok()?)),
        DataType::Uint16 => f64::from(u16::from_le_bytes(bytes.try_into().ok()?)),
        DataType::Int32 => f64::from(i32::from_le_bytes(bytes.try_into().ok()?)),
        DataType::Uint32 => f64::from(u32::from_le_bytes(bytes.try_into().ok()?)),
        DataType::Int64 => i64::from_le_bytes(array(8)) as f64,
        DataType::Uint64 => u64::from_le_bytes(array(8)) as f64,
        _ => return None,
    };
    Some(v)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn output(name: &str, dtype: DataType, shape: Vec<i64>, data: Vec<u8>) -> ResponseOutput {
        ResponseOutput { tensor: Tensor::checked(name.into(), dtype, shape, Bytes::from(data)).unwrap(), binary: false }
    }

    fn floats(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn a_row_of_scores_is_a_class_and_one_number_is_a_value() {
        let scores = output("p", DataType::Fp32, vec![2, 3], floats(&[0.1, 0.7, 0.2, 0.9, 0.0, 0.1]));
        assert_eq!(
            summarize(std::slice::from_ref(&scores), None, OutputKind::Auto),
            Some(Prediction::Class { class: 1, classes: 3, score: 0.7 })
        );
        let value = output("v", DataType::Fp64, vec![1, 1], 2.5f64.to_le_bytes().to_vec());
        assert_eq!(summarize(&[scores.clone(), value], Some("v"), OutputKind::Auto), Some(Prediction::Value(2.5)));
        assert_eq!(summarize(std::slice::from_ref(&scores), None, OutputKind::Regressor), Some(Prediction::Value(0.1)));
        assert_eq!(summarize(&[scores], Some("missing"), OutputKind::Auto), None);
    }

    #[test]
    fn integer_and_empty_outputs() {
        let ints = output("c", DataType::Int64, vec![1, 2], [3i64, 9].iter().flat_map(|v| v.to_le_bytes()).collect());
        assert_eq!(
            summarize(&[ints], None, OutputKind::Classifier),
            Some(Prediction::Class { class: 1, classes: 2, score: 9.0 })
        );
        let empty = output("e", DataType::Fp32, vec![0, 3], Vec::new());
        assert_eq!(summarize(&[empty], None, OutputKind::Auto), None);
    }
}
