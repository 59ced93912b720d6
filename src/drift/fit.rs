//! Whether a drift reference fits a model: the check `modelgate registry push --reference`
//! runs before anything is uploaded, on the model's own `config.pbtxt`.
//!
//! A reference fits when every feature it names is one the gateway profiles for that model (so
//! windows and reference line up), each of the same kind (a categorical reference for a float
//! input is a datatype mismatch), and, for each tensor it covers, it covers all of that
//! tensor's features (a reference of 16 columns for a 64-column input is the wrong data).

use std::collections::{BTreeMap, BTreeSet};

use modelgate_sketch::{Profile, Summary};

use super::schema::{Feature, Kind, Schema, Source};

/// Checks `reference` against `schema`, with the model's tensor names by source; the error
/// says what does not fit.
pub fn check(schema: &Schema, tensor_names: &dyn Fn(Source) -> String, reference: &Profile) -> Result<(), String> {
    let by_name: BTreeMap<&str, &Feature> = schema.features.iter().map(|f| (f.name.as_str(), f)).collect();
    let unknown: Vec<&str> =
        reference.features.keys().map(String::as_str).filter(|n| !by_name.contains_key(n)).collect();
    if !unknown.is_empty() {
        let known: Vec<&str> = schema.features.iter().take(6).map(|f| f.name.as_str()).collect();
        return Err(format!(
            "the model has no feature {} (it has {} features, e.g. {}): profile the data with --input set to the model's input name",
            list(&unknown),
            schema.features.len(),
            known.join(", ")
        ));
    }
    let mut covered: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    for (name, summary) in &reference.features {
        let feature = by_name[name.as_str()];
        let kind = match summary {
            Summary::Numeric(_) => Kind::Numeric,
            Summary::Categorical(_) => Kind::Categorical,
        };
        if kind != feature.kind {
            return Err(format!(
                "feature '{name}' is {} in the reference but {} in the model (datatype mismatch)",
                kind_name(kind),
                kind_name(feature.kind)
            ));
        }
        covered.entry(tensor_names(feature.source)).or_default().insert(name);
    }
    for (tensor, names) in &covered {
        let all: Vec<&str> = schema
            .features
            .iter()
            .filter(|f| &tensor_names(f.source) == tensor)
            .map(|f| f.name.as_str())
            .filter(|n| !n.ends_with(".argmax"))
            .collect();
        let missing: Vec<&str> = all.iter().copied().filter(|n| !names.contains(n)).collect();
        if !missing.is_empty() {
            return Err(format!(
                "the reference has {} features of '{tensor}' where the model has {}: {} missing",
                names.len(),
                all.len(),
                list(&missing)
            ));
        }
    }
    Ok(())
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Numeric => "numeric",
        Kind::Categorical => "categorical",
    }
}

fn list(names: &[&str]) -> String {
    let shown: Vec<String> = names.iter().take(5).map(|n| format!("'{n}'")).collect();
    match names.len() {
        n if n > 5 => format!("{} and {} more", shown.join(", "), n - 5),
        _ => shown.join(", "),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::tensor::IoSpec;
    use modelgate_backend::DataType;
    use modelgate_sketch::{CategoricalProfile, FeatureProfile};

    fn schema() -> (Schema, impl Fn(Source) -> String) {
        let inputs = [IoSpec { name: "x".into(), dtype: DataType::Fp32, dims: vec![3] }];
        let outputs = [IoSpec { name: "y".into(), dtype: DataType::Fp32, dims: vec![2] }];
        let schema = Schema::from_config(8, &inputs, &outputs, &BTreeMap::new()).unwrap();
        (schema, |s| match s {
            Source::Input(_) => "x".to_string(),
            Source::Output(_) => "y".to_string(),
        })
    }

    fn numeric() -> Summary {
        Summary::Numeric(FeatureProfile::reference(&[1.0, 2.0, 3.0], 2, 200).unwrap())
    }

    fn profile(names: &[&str]) -> Profile {
        Profile { features: names.iter().map(|n| ((*n).to_string(), numeric())).collect() }
    }

    #[test]
    fn a_reference_of_every_input_column_fits_and_outputs_are_optional() {
        let (schema, names) = schema();
        check(&schema, &names, &profile(&["x[0]", "x[1]", "x[2]"])).unwrap();
    }

    #[test]
    fn a_reference_with_another_feature_count_or_kind_is_refused_with_the_reason() {
        let (schema, names) = schema();
        let short = check(&schema, &names, &profile(&["x[0]", "x[1]"])).unwrap_err();
        assert!(short.contains("2 features of 'x' where the model has 3") && short.contains("'x[2]'"), "{short}");
        let unknown = check(&schema, &names, &profile(&["x[0]", "x[1]", "x[2]", "x[3]"])).unwrap_err();
        assert!(unknown.contains("no feature 'x[3]'"), "{unknown}");
        let mut categorical = profile(&["x[0]", "x[1]"]);
        categorical.features.insert("x[2]".into(), Summary::Categorical(CategoricalProfile::new(8).unwrap()));
        let kind = check(&schema, &names, &categorical).unwrap_err();
        assert!(kind.contains("datatype mismatch"), "{kind}");
    }
}
