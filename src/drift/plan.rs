//! [`Plan`]: what the profiler computes for one version: the schema's features
//! with the spec each is profiled on.
//!
//! Without a reference every feature keeps its schema kind, numeric ones on
//! empty edges (one bin: the KLL sketch still gives KS and Wasserstein). With
//! the reference's specs (`DesiredVersion.drift_features`), the reference
//! decides: only the features it names are profiled (a window is only useful
//! where there is something to compare it with), on its kinds and edges.
//! Names it has that the schema lacks, or whose kind the feature cannot take
//! (a mean as a category, a string as a number), are ignored and reported.

use std::collections::BTreeMap;

use modelgate_backend::DataType;
use modelgate_sketch::{FeatureSpec, Summary};

use super::schema::{Feature, Kind, Schema, Source};

/// One feature to profile.
#[derive(Clone, Debug)]
pub struct Planned {
    /// The schema's feature.
    pub feature: Feature,
    /// An empty window summary on the feature's spec (cloned for each window).
    pub empty: Summary,
}

/// The features of one version to profile, and the reference names left out.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// In schema order.
    pub features: Vec<Planned>,
    /// The tensors the features read, each once.
    pub sources: Vec<Source>,
    /// Reference features not profiled, each with why.
    pub ignored: Vec<(String, &'static str)>,
}

impl Plan {
    /// Plans `schema` on `reference`'s specs, or on the schema's own kinds without one.
    pub fn new(schema: &Schema, reference: Option<&BTreeMap<String, FeatureSpec>>) -> Plan {
        let mut plan = Plan::default();
        for feature in &schema.features {
            let spec = match reference {
                None => match feature.kind {
                    Kind::Numeric => FeatureSpec::Numeric { edges: Vec::new() },
                    Kind::Categorical => FeatureSpec::Categorical,
                },
                Some(specs) => match specs.get(&feature.name) {
                    Some(spec) => spec.clone(),
                    // Not in the reference: nothing to compare a window with.
                    None => continue,
                },
            };
            let is_bytes = schema.layout(feature.source).is_some_and(|l| l.dtype == DataType::Bytes);
            let fits = match &spec {
                FeatureSpec::Categorical => feature.reduce.can_be_categorical(),
                FeatureSpec::Numeric { .. } => !is_bytes,
            };
            if !fits {
                plan.ignored.push((feature.name.clone(), "its kind does not fit the model's tensor"));
                continue;
            }
            match Summary::empty(&spec) {
                Ok(empty) => {
                    if !plan.sources.contains(&feature.source) {
                        plan.sources.push(feature.source);
                    }
                    plan.features.push(Planned { feature: feature.clone(), empty });
                }
                Err(_) => plan.ignored.push((feature.name.clone(), "its histogram edges are not usable")),
            }
        }
        if let Some(specs) = reference {
            for name in specs.keys() {
                if !schema.features.iter().any(|f| &f.name == name) {
                    plan.ignored.push((name.clone(), "the model has no such feature"));
                }
            }
        }
        plan
    }

    /// Fresh summaries for a new window, one per planned feature.
    pub fn empty_summaries(&self) -> Vec<Summary> {
        self.features.iter().map(|p| p.empty.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::IoSpec;

    fn schema() -> Schema {
        let io = |name: &str, dtype, dims: &[i64]| IoSpec { name: name.into(), dtype, dims: dims.to_vec() };
        Schema::from_config(
            8,
            &[io("x", DataType::Int32, &[2]), io("s", DataType::Bytes, &[]), io("img", DataType::Fp32, &[2, 2])],
            &[io("y", DataType::Fp32, &[3])],
            &BTreeMap::new(),
        )
        .unwrap()
    }

    fn names(plan: &Plan) -> Vec<&str> {
        plan.features.iter().map(|p| p.feature.name.as_str()).collect()
    }

    #[test]
    fn without_a_reference_every_feature_is_profiled_on_its_own_kind_with_one_bin() {
        let plan = Plan::new(&schema(), None);
        assert_eq!(plan.features.len(), schema().features.len());
        assert!(plan.ignored.is_empty());
        let spec = |name: &str| plan.features.iter().find(|p| p.feature.name == name).unwrap().empty.spec();
        assert_eq!(spec("x[0]"), FeatureSpec::Numeric { edges: vec![] });
        assert_eq!(spec("s"), FeatureSpec::Categorical);
        assert_eq!(spec("y.argmax"), FeatureSpec::Categorical);
        assert_eq!(spec("img.std"), FeatureSpec::Numeric { edges: vec![] });
    }

    #[test]
    fn the_reference_decides_names_kinds_and_edges() {
        let reference = BTreeMap::from([
            ("x[0]".to_string(), FeatureSpec::Categorical),
            ("x[1]".to_string(), FeatureSpec::Numeric { edges: vec![0.0, 1.0] }),
            ("gone".to_string(), FeatureSpec::Categorical),
            ("img.mean".to_string(), FeatureSpec::Categorical),
            ("s".to_string(), FeatureSpec::Numeric { edges: vec![] }),
            ("y[0]".to_string(), FeatureSpec::Numeric { edges: vec![1.0, 0.0] }),
        ]);
        let plan = Plan::new(&schema(), Some(&reference));
        assert_eq!(names(&plan), ["x[0]", "x[1]"]);
        assert_eq!(plan.features[0].empty.spec(), FeatureSpec::Categorical);
        assert_eq!(plan.features[1].empty.spec(), FeatureSpec::Numeric { edges: vec![0.0, 1.0] });
        let mut ignored: Vec<&str> = plan.ignored.iter().map(|(n, _)| n.as_str()).collect();
        ignored.sort_unstable();
        assert_eq!(ignored, ["gone", "img.mean", "s", "y[0]"]);
    }
}
