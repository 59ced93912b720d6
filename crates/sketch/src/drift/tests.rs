use super::*;
use crate::numeric::DEFAULT_K;
use crate::testing::normal;
use crate::{SketchError, categorical::DEFAULT_MAX_ITEMS};

fn window(reference: &FeatureProfile, values: &[f64]) -> Result<FeatureProfile, SketchError> {
    let mut p = FeatureProfile::new(reference.histogram().edges().to_vec(), DEFAULT_K)?;
    p.extend(values);
    Ok(p)
}

#[test]
fn an_empty_window_gets_no_verdict_and_says_why() -> Result<(), SketchError> {
    let reference = FeatureProfile::reference(&normal(1, 2_000, 0.0, 1.0), 10, DEFAULT_K)?;
    let current = window(&reference, &[f64::NAN, f64::NAN, f64::INFINITY])?;
    let outcome = evaluate_numeric(&reference, &current, Rule::Auto, 1);
    assert_eq!(outcome, Err(NoVerdict::TooFewRows { rows: 0, min: 1, nan: 2, inf: 1, missing: 0 }));
    let reason = outcome.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(reason.contains("0 usable rows") && reason.contains("2 NaN"), "{reason}");
    Ok(())
}

#[test]
fn an_empty_reference_gets_no_verdict() -> Result<(), SketchError> {
    let reference = FeatureProfile::new(vec![], DEFAULT_K)?;
    let current = window(&reference, &[1.0])?;
    assert_eq!(evaluate_numeric(&reference, &current, Rule::Auto, 1), Err(NoVerdict::EmptyReference));
    Ok(())
}

#[test]
fn auto_tests_a_small_reference_with_ks_and_a_large_one_with_normed_wasserstein() -> Result<(), SketchError> {
    let small = FeatureProfile::reference(&normal(2, 1_000, 0.0, 1.0), 10, DEFAULT_K)?;
    let large = FeatureProfile::reference(&normal(3, 10_000, 0.0, 1.0), 10, DEFAULT_K)?;
    let same = normal(4, 1_000, 0.0, 1.0);
    let v = evaluate_numeric(&small, &window(&small, &same)?, Rule::Auto, 1);
    assert!(v.as_ref().is_ok_and(|v| v.stat == Stat::Ks && !v.drifted), "{v:?}");
    let v = evaluate_numeric(&large, &window(&large, &same)?, Rule::Auto, 1);
    assert!(v.as_ref().is_ok_and(|v| v.stat == Stat::Wasserstein && !v.drifted), "{v:?}");
    Ok(())
}

#[test]
fn a_half_sigma_shift_drifts_under_every_statistic() -> Result<(), SketchError> {
    let reference = FeatureProfile::reference(&normal(5, 10_000, 0.0, 1.0), 10, DEFAULT_K)?;
    let shifted = window(&reference, &normal(6, 1_000, 0.5, 1.0))?;
    let same = window(&reference, &normal(7, 1_000, 0.0, 1.0))?;
    for stat in [Stat::Ks, Stat::Wasserstein, Stat::Psi, Stat::JensenShannon, Stat::Hellinger, Stat::ChiSquared] {
        let rule = Rule::Fixed { stat, threshold: stat.default_threshold() };
        let drifted = evaluate_numeric(&reference, &shifted, rule, 1).map(|v| v.drifted);
        assert_eq!(drifted, Ok(true), "{stat:?} on a 0.5σ shift");
        let drifted = evaluate_numeric(&reference, &same, rule, 1).map(|v| v.drifted);
        assert_eq!(drifted, Ok(false), "{stat:?} on the same distribution");
    }
    Ok(())
}

#[test]
fn a_constant_feature_drifts_only_when_its_value_moves() -> Result<(), SketchError> {
    let reference = FeatureProfile::reference(&[2.0; 5_000], 10, DEFAULT_K)?;
    let same = window(&reference, &[2.0; 1_000])?;
    let moved = window(&reference, &[2.5; 1_000])?;
    let v = evaluate_numeric(&reference, &same, Rule::Auto, 1);
    assert!(v.as_ref().is_ok_and(|v| v.value == 0.0 && !v.drifted), "{v:?}");
    // Wasserstein 0.5 over the floored norm 0.001.
    let v = evaluate_numeric(&reference, &moved, Rule::Auto, 1);
    assert!(v.as_ref().is_ok_and(|v| (v.value - 500.0).abs() < 1e-9 && v.drifted), "{v:?}");
    Ok(())
}

#[test]
fn a_window_on_other_edges_gets_no_binned_verdict() -> Result<(), SketchError> {
    let reference = FeatureProfile::reference(&normal(8, 1_000, 0.0, 1.0), 10, DEFAULT_K)?;
    let mut current = FeatureProfile::new(vec![0.0], DEFAULT_K)?;
    current.extend(&[0.5]);
    let rule = Rule::Fixed { stat: Stat::Psi, threshold: 0.1 };
    assert_eq!(evaluate_numeric(&reference, &current, rule, 1), Err(NoVerdict::EdgesMismatch));
    Ok(())
}

fn categorical(counts: &[(&str, usize)]) -> Result<CategoricalProfile, SketchError> {
    let mut p = CategoricalProfile::new(DEFAULT_MAX_ITEMS)?;
    for &(name, n) in counts {
        for _ in 0..n {
            p.update(name);
        }
    }
    Ok(p)
}

#[test]
fn categorical_auto_uses_chi_squared_then_jensen_shannon() -> Result<(), SketchError> {
    let small = categorical(&[("a", 500), ("b", 300), ("c", 200)])?;
    let large = categorical(&[("a", 5_000), ("b", 3_000), ("c", 2_000)])?;
    let same = categorical(&[("a", 50), ("b", 30), ("c", 20)])?;
    let swapped = categorical(&[("a", 20), ("b", 30), ("c", 50)])?;
    let v = evaluate_categorical(&small, &same, Rule::Auto, 1);
    assert!(v.as_ref().is_ok_and(|v| v.stat == Stat::ChiSquared && !v.drifted), "{v:?}");
    let v = evaluate_categorical(&small, &swapped, Rule::Auto, 1);
    assert!(v.as_ref().is_ok_and(|v| v.drifted), "{v:?}");
    let v = evaluate_categorical(&large, &swapped, Rule::Auto, 1);
    assert!(v.as_ref().is_ok_and(|v| v.stat == Stat::JensenShannon && v.drifted), "{v:?}");
    let ks = Rule::Fixed { stat: Stat::Ks, threshold: 0.05 };
    assert_eq!(evaluate_categorical(&small, &same, ks, 1), Err(NoVerdict::NotApplicable { stat: Stat::Ks }));
    Ok(())
}

#[test]
fn a_new_category_in_the_window_counts_against_the_reference() -> Result<(), SketchError> {
    let reference = categorical(&[("a", 500), ("b", 500)])?;
    let current = categorical(&[("a", 40), ("b", 40), ("new", 20)])?;
    assert_eq!(category_table(&reference, &current), vec![(500, 40), (500, 40), (0, 20)]);
    let v = evaluate_categorical(&reference, &current, Rule::Auto, 1);
    assert!(v.is_ok_and(|v| v.drifted));
    Ok(())
}

#[test]
fn dataset_drift_needs_half_of_the_features() {
    let v = |drifted| Verdict {
        stat: Stat::Ks,
        value: 0.0,
        p_value: None,
        threshold: 0.05,
        drifted,
        reference_rows: 1,
        current_rows: 1,
    };
    let half = DatasetDrift::from_verdicts(&[v(true), v(false)], DEFAULT_DRIFT_SHARE);
    assert!(half.drifted && half.share == 0.5);
    let third = DatasetDrift::from_verdicts(&[v(true), v(false), v(false)], DEFAULT_DRIFT_SHARE);
    assert!(!third.drifted);
    assert!(!DatasetDrift::from_verdicts(&[], DEFAULT_DRIFT_SHARE).drifted);
}

#[test]
fn a_verdict_serializes_with_snake_case_names() -> Result<(), serde_json::Error> {
    let rule: Rule = serde_json::from_str(r#"{"rule":"fixed","stat":"jensen_shannon","threshold":0.2}"#)?;
    assert_eq!(rule, Rule::Fixed { stat: Stat::JensenShannon, threshold: 0.2 });
    Ok(())
}
