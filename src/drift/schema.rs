//! [`Schema`]: which features a model version's rows have, read from its
//! config once at load.
//!
//! Naming follows what a data scientist sees in the training frame:
//!
//! | tensor (dims after the batch dimension) | features |
//! |---|---|
//! | `[]` (one value per row) | `INPUT0` |
//! | `[F]` | `INPUT0[0]` … `INPUT0[F-1]`, or the names of `modelgate.features.INPUT0` |
//! | higher rank, or a dynamic dim | `INPUT0.mean`, `.std`, `.min`, `.max` (numeric) |
//! | an output `[C]` of floats, C ≥ 2 | per column as above, plus `OUTPUT0.argmax` (categorical) |
//!
//! BYTES elements are categorical; numbers (integers and booleans too) are
//! numeric unless the reference says categorical ([`super::plan`] decides).
//! A BYTES tensor with no fixed per-row element count has no feature: a
//! per-row summary of strings would mean nothing.

use std::collections::BTreeMap;

use modelgate_backend::DataType;

use crate::tensor::IoSpec;

/// Config parameter prefix naming a tensor's columns: `modelgate.features.INPUT0 = "age,income"`.
pub const FEATURE_NAMES_PARAMETER: &str = "modelgate.features.";

/// Which tensor of a batch a feature is read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Input `i` in the model's order.
    Input(usize),
    /// Output `j` in the model's order.
    Output(usize),
}

/// How one row of a tensor becomes one value of a feature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduce {
    /// Element `i` of the row (the only element when the row holds one).
    Element(usize),
    /// Mean of the row's finite elements.
    Mean,
    /// Population standard deviation of the row's finite elements.
    Std,
    /// Smallest finite element of the row.
    Min,
    /// Largest finite element of the row.
    Max,
    /// Index of the row's largest element: a classifier's predicted class.
    Argmax,
}

impl Reduce {
    /// Whether a feature read this way can be categorical (an element or a class
    /// index) rather than only numeric (a per-row statistic).
    pub fn can_be_categorical(self) -> bool {
        matches!(self, Reduce::Element(_) | Reduce::Argmax)
    }
}

/// What kind of value a feature is when no reference says otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A number (any numeric element type, or a per-row statistic).
    Numeric,
    /// A category (a BYTES element, a class index).
    Categorical,
}

/// One feature of the schema.
#[derive(Clone, Debug, PartialEq)]
pub struct Feature {
    /// Its name in profiles (`INPUT0[3]`, `OUTPUT0.argmax`, or a configured name).
    pub name: String,
    /// The tensor it is read from.
    pub source: Source,
    /// How a row of that tensor becomes its value.
    pub reduce: Reduce,
    /// Its kind without a reference.
    pub kind: Kind,
}

/// The layout a batch's tensor must have for the schema to apply to it.
#[derive(Clone, Debug, PartialEq)]
pub struct Layout {
    /// Element type.
    pub dtype: DataType,
    /// Dims after the batch dimension, as configured (-1 for any size).
    pub dims: Vec<i64>,
}

impl Layout {
    /// Elements per row when every dim is fixed.
    pub fn fixed_row_elements(&self) -> Option<usize> {
        self.dims.iter().try_fold(1usize, |n, &d| usize::try_from(d).ok().and_then(|d| n.checked_mul(d)))
    }

    /// Whether a tensor of `dtype` and `shape` (batch dimension first when
    /// `batched`) fits; returns its rows and elements per row.
    pub fn rows_of(&self, dtype: DataType, shape: &[i64], batched: bool) -> Option<(usize, usize)> {
        if dtype != self.dtype {
            return None;
        }
        let (rows, row_dims) = if batched {
            let (&rows, rest) = shape.split_first()?;
            (usize::try_from(rows).ok()?, rest)
        } else {
            (1, shape)
        };
        if row_dims.len() != self.dims.len() {
            return None;
        }
        let mut per_row = 1usize;
        for (&got, &want) in row_dims.iter().zip(&self.dims) {
            if got < 0 || (want >= 0 && got != want) {
                return None;
            }
            per_row = per_row.checked_mul(usize::try_from(got).ok()?)?;
        }
        Some((rows, per_row))
    }
}

/// The features of one model version, and the layouts of the tensors they are read from.
#[derive(Clone, Debug, PartialEq)]
pub struct Schema {
    /// Whether tensors carry a batch dimension (`max_batch_size > 0`); without
    /// one, each execution is one row.
    pub batched: bool,
    /// Input layouts, in the model's order.
    pub inputs: Vec<Layout>,
    /// Output layouts, in the model's order.
    pub outputs: Vec<Layout>,
    /// Every feature, inputs first.
    pub features: Vec<Feature>,
}

/// Why a config's feature names cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("parameter '{parameter}': {reason}")]
pub struct SchemaError {
    /// The parameter's key.
    pub parameter: String,
    /// What is wrong with it.
    pub reason: String,
}

impl Schema {
    /// Reads the schema of a version from its config: `max_batch_size`, inputs,
    /// outputs and the `modelgate.features.*` parameters. A names parameter
    /// whose count does not match its tensor's columns, or that names a tensor
    /// the model does not have, is an error (a config mistake, shown at load).
    pub fn from_config(
        max_batch_size: u32,
        inputs: &[IoSpec],
        outputs: &[IoSpec],
        parameters: &BTreeMap<String, String>,
    ) -> Result<Schema, SchemaError> {
        let mut names = BTreeMap::new();
        for (key, value) in parameters {
            if let Some(tensor) = key.strip_prefix(FEATURE_NAMES_PARAMETER) {
                let list: Vec<String> = value.split(',').map(|n| n.trim().to_owned()).collect();
                if list.iter().any(String::is_empty) {
                    return Err(SchemaError { parameter: key.clone(), reason: "a feature name is empty".into() });
                }
                if !inputs.iter().chain(outputs).any(|s| s.name == tensor) {
                    return Err(SchemaError {
                        parameter: key.clone(),
                        reason: format!("the model has no input or output '{tensor}'"),
                    });
                }
                names.insert(tensor.to_owned(), (key.clone(), list));
            }
        }
        let mut features = Vec::new();
        for (i, spec) in inputs.iter().enumerate() {
            tensor_features(spec, Source::Input(i), names.get(&spec.name), false, &mut features)?;
        }
        for (j, spec) in outputs.iter().enumerate() {
            tensor_features(spec, Source::Output(j), names.get(&spec.name), true, &mut features)?;
        }
        let layout = |s: &IoSpec| Layout { dtype: s.dtype, dims: s.dims.clone() };
        Ok(Schema {
            batched: max_batch_size > 0,
            inputs: inputs.iter().map(layout).collect(),
            outputs: outputs.iter().map(layout).collect(),
            features,
        })
    }

    /// The layout of a source tensor.
    pub fn layout(&self, source: Source) -> Option<&Layout> {
        match source {
            Source::Input(i) => self.inputs.get(i),
            Source::Output(j) => self.outputs.get(j),
        }
    }
}

/// Appends the features of one tensor.
fn tensor_features(
    spec: &IoSpec,
    source: Source,
    names: Option<&(String, Vec<String>)>,
    is_output: bool,
    out: &mut Vec<Feature>,
) -> Result<(), SchemaError> {
    let layout = Layout { dtype: spec.dtype, dims: spec.dims.clone() };
    let bytes = spec.dtype == DataType::Bytes;
    let element_kind = if bytes { Kind::Categorical } else { Kind::Numeric };
    let fixed = layout.fixed_row_elements();
    let name = &spec.name;
    if let Some((parameter, list)) = names {
        // Names replace `NAME[i]`, one per element of a row (row-major for a higher rank).
        if fixed != Some(list.len()) {
            let columns = fixed.map_or("a dynamic number of".to_owned(), |n| n.to_string());
            return Err(SchemaError {
                parameter: parameter.clone(),
                reason: format!("names {} features but '{name}' has {columns} elements per row", list.len()),
            });
        }
        for (i, feature) in list.iter().enumerate() {
            out.push(Feature { name: feature.clone(), source, reduce: Reduce::Element(i), kind: element_kind });
        }
    } else {
        match (spec.dims.as_slice(), fixed) {
            ([], _) => out.push(Feature { name: name.clone(), source, reduce: Reduce::Element(0), kind: element_kind }),
            ([_], Some(columns)) => {
                for i in 0..columns {
                    out.push(Feature {
                        name: format!("{name}[{i}]"),
                        source,
                        reduce: Reduce::Element(i),
                        kind: element_kind,
                    });
                }
            }
            // Strings have no mean: a BYTES tensor of this shape has no features.
            _ if bytes => {}
            _ => {
                for (suffix, reduce) in
                    [("mean", Reduce::Mean), ("std", Reduce::Std), ("min", Reduce::Min), ("max", Reduce::Max)]
                {
                    out.push(Feature { name: format!("{name}.{suffix}"), source, reduce, kind: Kind::Numeric });
                }
            }
        }
    }
    let float = matches!(spec.dtype, DataType::Fp16 | DataType::Fp32 | DataType::Fp64 | DataType::Bf16);
    if is_output && float && matches!(spec.dims.as_slice(), [c] if *c >= 2) {
        out.push(Feature { name: format!("{name}.argmax"), source, reduce: Reduce::Argmax, kind: Kind::Categorical });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(name: &str, dtype: DataType, dims: &[i64]) -> IoSpec {
        IoSpec { name: name.into(), dtype, dims: dims.to_vec() }
    }

    fn names(schema: &Schema) -> Vec<&str> {
        schema.features.iter().map(|f| f.name.as_str()).collect()
    }

    #[test]
    fn a_matrix_input_gives_one_feature_per_column_and_a_classifier_output_its_argmax() {
        let schema = Schema::from_config(
            8,
            &[io("INPUT0", DataType::Fp32, &[3])],
            &[io("OUTPUT0", DataType::Fp32, &[2])],
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(
            names(&schema),
            ["INPUT0[0]", "INPUT0[1]", "INPUT0[2]", "OUTPUT0[0]", "OUTPUT0[1]", "OUTPUT0.argmax"]
        );
        assert_eq!(schema.features[5].kind, Kind::Categorical);
        assert_eq!(schema.features[5].reduce, Reduce::Argmax);
        assert_eq!(schema.features[1].source, Source::Input(0));
    }

    #[test]
    fn a_per_row_value_is_named_after_its_tensor_and_bytes_are_categorical() {
        let schema = Schema::from_config(
            8,
            &[io("x", DataType::Int64, &[]), io("city", DataType::Bytes, &[2])],
            &[io("score", DataType::Fp32, &[1])],
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(names(&schema), ["x", "city[0]", "city[1]", "score[0]"]);
        assert_eq!(schema.features[0].kind, Kind::Numeric);
        assert_eq!(schema.features[1].kind, Kind::Categorical);
    }

    #[test]
    fn higher_rank_and_dynamic_inputs_are_summarised_per_row() {
        let schema = Schema::from_config(
            8,
            &[
                io("image", DataType::Uint8, &[2, 2]),
                io("tokens", DataType::Int32, &[-1]),
                io("s", DataType::Bytes, &[-1]),
            ],
            &[],
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(
            names(&schema),
            [
                "image.mean",
                "image.std",
                "image.min",
                "image.max",
                "tokens.mean",
                "tokens.std",
                "tokens.min",
                "tokens.max"
            ]
        );
    }

    #[test]
    fn configured_names_replace_column_indices() {
        let parameters = BTreeMap::from([("modelgate.features.INPUT0".to_string(), "age, income".to_string())]);
        let schema = Schema::from_config(8, &[io("INPUT0", DataType::Fp32, &[2])], &[], &parameters).unwrap();
        assert_eq!(names(&schema), ["age", "income"]);
        assert_eq!(schema.features[1].reduce, Reduce::Element(1));
    }

    #[test]
    fn configured_names_that_do_not_match_the_columns_are_a_config_error() {
        let parameters = BTreeMap::from([("modelgate.features.INPUT0".to_string(), "a,b,c".to_string())]);
        let err = Schema::from_config(8, &[io("INPUT0", DataType::Fp32, &[2])], &[], &parameters).unwrap_err();
        assert!(err.to_string().contains("names 3 features but 'INPUT0' has 2 elements per row"), "{err}");

        let parameters = BTreeMap::from([("modelgate.features.NOPE".to_string(), "a".to_string())]);
        let err = Schema::from_config(8, &[io("INPUT0", DataType::Fp32, &[1])], &[], &parameters).unwrap_err();
        assert!(err.to_string().contains("no input or output 'NOPE'"), "{err}");
    }

    #[test]
    fn a_layout_accepts_only_its_dtype_and_dims() {
        let layout = Layout { dtype: DataType::Fp32, dims: vec![-1, 3] };
        assert_eq!(layout.rows_of(DataType::Fp32, &[4, 2, 3], true), Some((4, 6)));
        assert_eq!(layout.rows_of(DataType::Fp32, &[4, 2, 4], true), None);
        assert_eq!(layout.rows_of(DataType::Fp64, &[4, 2, 3], true), None);
        assert_eq!(layout.rows_of(DataType::Fp32, &[4, 3], true), None);
        assert_eq!(layout.rows_of(DataType::Fp32, &[2, 3], false), Some((1, 6)));
        assert_eq!(layout.rows_of(DataType::Fp32, &[], true), None);
    }
}
