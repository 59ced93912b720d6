use super::*;
use crate::testing::normal;

fn kll(values: &[f64]) -> Kll {
    let mut sketch = Kll::default();
    for &v in values {
        if let Ok(item) = KllFloat::<f64>::new(v) {
            sketch.update(item);
        }
    }
    sketch
}

#[test]
fn psi_floors_empty_bins_as_evidently_does() {
    // Reference proportions (0.5, 0.5, 0), current (0.25, 0.25, 0.5): the empty reference bin
    // becomes 0.0001 (its smallest non-zero proportion, 0.5, is above 0.0001).
    let r: [f64; 3] = [0.5, 0.5, 1e-4];
    let c = [0.25, 0.25, 0.5];
    let expected: f64 = r.iter().zip(&c).map(|(r, c)| (r - c) * (r / c).ln()).sum();
    let psi = psi(&[2, 2, 0], &[1, 1, 2]);
    assert!(psi.is_some_and(|p| (p - expected).abs() < 1e-12), "{psi:?} vs {expected}");
}

#[test]
fn psi_floors_below_the_smallest_tiny_proportion() {
    // Smallest non-zero reference proportion 1/20000 = 5e-5 <= 1e-4: empty bins get 5e-11.
    let floored = floored_proportions(&[1, 19_999, 0]);
    assert!((floored[2] - 5e-11).abs() < 1e-20);
}

#[test]
fn psi_is_zero_for_equal_proportions_and_undefined_for_an_empty_side() {
    assert_eq!(psi(&[10, 20, 30], &[1, 2, 3]), Some(0.0));
    assert_eq!(psi(&[10, 20], &[0, 0]), None);
    assert_eq!(psi(&[10, 20], &[1, 2, 3]), None);
}

#[test]
fn jensen_shannon_and_hellinger_span_zero_to_their_maximum() {
    assert_eq!(jensen_shannon(&[5, 5], &[1, 1]), Some(0.0));
    let disjoint = jensen_shannon(&[1, 0], &[0, 1]).unwrap_or(0.0);
    assert!((disjoint - 2f64.ln().sqrt()).abs() < 1e-12);
    assert_eq!(hellinger(&[5, 5], &[1, 1]), Some(0.0));
    assert!((hellinger(&[1, 0], &[0, 1]).unwrap_or(0.0) - 1.0).abs() < 1e-12);
}

#[test]
fn kolmogorov_survival_matches_scipy() {
    // scipy.special.kolmogorov
    for (lambda, expected) in [
        (0.3, 0.999_990_694_198_665_5),
        (0.5, 0.963_945_243_664_875_1),
        (0.8, 0.544_142_411_574_198_1),
        (1.0, 0.269_999_671_677_354_56),
        (1.2, 0.112_249_666_670_724_97),
        (1.36, 0.049_485_876_755_377_876),
        (2.0, 0.000_670_925_255_779_695_3),
    ] {
        let got = kolmogorov_sf(lambda);
        assert!((got - expected).abs() < 1e-12, "Q({lambda}) = {got}, scipy {expected}");
    }
    assert_eq!(kolmogorov_sf(0.0), 1.0);
}

#[test]
fn chi_squared_matches_scipy_chi2_contingency() {
    // chi2_contingency([[30, 50, 20], [40, 40, 20]], correction=False)
    let got = chi_squared(&[(30, 40), (50, 40), (20, 20)]);
    let (stat, dof, p) = got.unwrap_or((0.0, 0, 0.0));
    assert!((stat - 2.539_682_539_682_539_5).abs() < 1e-12);
    assert_eq!(dof, 2);
    assert!((p - 0.280_876_201_764_281_63).abs() < 1e-9, "p = {p}");
}

#[test]
fn chi_squared_drops_categories_absent_on_both_sides() {
    assert_eq!(chi_squared(&[(10, 10), (0, 0)]), Some((0.0, 0, 1.0)));
    assert_eq!(chi_squared(&[(10, 0), (5, 0)]), None);
}

#[test]
fn ks_and_wasserstein_on_exact_sketches_are_the_sample_values() {
    // Small samples fit in level 0: the sketches are the samples.
    let cdfs = StepCdfs::new(&kll(&[1.0, 2.0, 3.0]), &kll(&[2.0, 3.0, 4.0]));
    let cdfs = cdfs.expect("both sketches hold values");
    assert!((cdfs.ks_statistic() - 1.0 / 3.0).abs() < 1e-12);
    assert!((cdfs.wasserstein() - 1.0).abs() < 1e-12);
    assert!(StepCdfs::new(&kll(&[]), &kll(&[1.0])).is_none());
}

#[test]
fn ks_p_value_uses_the_effective_sample_size() {
    // n = m = 200: effective n = 100, so λ = 10 · D.
    assert!((ks_p_value(0.1, 200, 200) - kolmogorov_sf(1.0)).abs() < 1e-15);
    assert_eq!(ks_p_value(0.5, 0, 10), 1.0);
}

#[test]
fn the_noise_model_matches_the_rank_error_of_compacted_sketches() {
    // The sd of rank estimates at the deciles over 100 sketches of 1,000 and of 10,000 values (k = 200).
    for (n, seed) in [(1_000, 40), (10_000, 41)] {
        let mut errors = Vec::new();
        for trial in 0..100 {
            let values = normal(seed * 1000 + trial, n, 0.0, 1.0);
            let sketch = kll(&values);
            let mut sorted = values.clone();
            sorted.sort_by(f64::total_cmp);
            for decile in 1..10 {
                let at = sorted[decile * n / 10];
                let exact = sorted.partition_point(|&v| v <= at) as f64 / n as f64;
                let estimated = KllFloat::<f64>::new(at).ok().and_then(|x| sketch.rank(&x, SearchCriteria::Inclusive));
                errors.push(estimated.unwrap_or(f64::NAN) - exact);
            }
        }
        let sd = (errors.iter().map(|e| e * e).sum::<f64>() / errors.len() as f64).sqrt();
        let model = kll_rank_sd(&kll(&normal(seed, n, 0.0, 1.0)));
        assert!((0.7..1.4).contains(&(sd / model)), "n = {n}: measured sd {sd:.5}, model {model:.5}");
    }
    // A sketch that holds every item has no rank noise.
    assert_eq!(kll_rank_sd(&kll(&normal(42, 100, 0.0, 1.0))), 0.0);
}

#[test]
fn a_ks_statistic_on_sketches_is_tested_less_half_their_noise() {
    let (exact, compacted) = (kll(&normal(43, 100, 0.0, 1.0)), kll(&normal(44, 5_000, 0.0, 1.0)));
    // Exact sketches: the plain asymptotic p-value.
    assert_eq!(ks_sketch_p_value(0.2, &exact, &exact), ks_p_value(0.2, 100, 100));
    // One compacted sketch: the statistic tested is d - sd / 2.
    let noise = kll_rank_sd(&compacted);
    assert!(noise > 0.001, "{noise}");
    let p = ks_sketch_p_value(0.05, &exact, &compacted);
    assert!((p - ks_p_value(0.05 - noise / 2.0, 100, 5_000)).abs() < 1e-15);
    assert!(p > ks_p_value(0.05, 100, 5_000));
    // Never below zero.
    assert_eq!(ks_sketch_p_value(0.0, &compacted, &compacted), 1.0);
}

#[test]
fn adaptive_threshold_is_mean_plus_minus_three_population_std() {
    let (lo, hi) = adaptive_threshold(&[1.0, 3.0]).unwrap_or((0.0, 0.0));
    assert!((lo - -1.0).abs() < 1e-12 && (hi - 5.0).abs() < 1e-12);
    assert_eq!(adaptive_threshold(&[]), None);
}
