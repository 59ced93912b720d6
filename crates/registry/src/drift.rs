//! Drift checks in the control plane: each version's reference profile, the evaluation of the
//! windows gateways report against it, and the loop that evaluates every served version.
//!
//! Gateways profile each served version's traffic per window (modelgate-sketch profiles, merged
//! here across gateways) and ship closed windows with their sync reports. Every
//! [`DriftSettings::every`], the evaluator merges each version's windows of the last
//! [`DriftSettings::span`] and tests each feature against the version's reference:
//! Evidently's `auto` rule by default (KS up to 1,000 reference rows, normed Wasserstein above;
//! chi-squared / Jensen–Shannon for categories), or a fixed statistic; dataset drift when the share
//! of drifted features reaches [`DriftSettings::share`]. A canary's windows are also tested against
//! the stable version's windows of the same span ("the canary answers one class"). The results go
//! to the gateways with the desired state ([`DriftStatus`]) and to `GET /cp/v1/models/{m}/drift`.
//!
//! A version with no uploaded reference gets a production baseline: its own first
//! [`DriftSettings::baseline_rows`] rows, stored as its reference once that many arrived.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use modelgate_sketch::{DatasetDrift, Profile, Rule, Stat, Verdict};
use serde::{Deserialize, Serialize};

use crate::sync::{DriftStatus, FeatureDrift};
use crate::{Registry, RegistryError};

/// How the control plane evaluates drift.
#[derive(Clone, Debug, clap::Args)]
pub struct DriftSettings {
    /// How often every served version's recent windows are evaluated (seconds).
    #[arg(long = "drift-every", default_value = "60", value_parser = parse_seconds)]
    pub every: Duration,
    /// The span of windows merged for one evaluation (seconds).
    #[arg(long = "drift-span", default_value = "900", value_parser = parse_seconds)]
    pub span: Duration,
    /// Fewest rows a feature needs in the span for a verdict.
    #[arg(long = "drift-min-rows", default_value_t = 500)]
    pub min_rows: u64,
    /// `auto` (Evidently's rule) or one of ks, wasserstein, psi, jensen_shannon, hellinger,
    /// chi_squared; its threshold with `--drift-threshold`.
    #[arg(long = "drift-stat", default_value = "auto", value_parser = parse_stat)]
    pub stat: StatChoice,
    /// The threshold of `--drift-stat` (α for ks and chi_squared; the distance bound otherwise).
    #[arg(long = "drift-threshold")]
    pub threshold: Option<f64>,
    /// Share of drifted features at which a version's dataset drifts.
    #[arg(long = "drift-share", default_value_t = modelgate_sketch::drift::DEFAULT_DRIFT_SHARE)]
    pub share: f64,
    /// Rows of its own traffic a version without a reference is compared against.
    #[arg(long = "drift-baseline-rows", default_value_t = 10_000)]
    pub baseline_rows: u64,
    /// URL POSTed a JSON body when a version starts or stops drifting (also logged as events
    /// `drift_detected` / `drift_cleared`).
    #[arg(long = "drift-webhook")]
    pub webhook: Option<String>,
}

impl Default for DriftSettings {
    fn default() -> Self {
        Self {
            every: Duration::from_secs(60),
            span: Duration::from_secs(900),
            min_rows: 500,
            stat: StatChoice::Auto,
            threshold: None,
            share: modelgate_sketch::drift::DEFAULT_DRIFT_SHARE,
            baseline_rows: 10_000,
            webhook: None,
        }
    }
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    let digits = text.strip_suffix('s').unwrap_or(text);
    match digits.parse::<u64>() {
        Ok(n) if n > 0 => Ok(Duration::from_secs(n)),
        _ => Err(format!("'{text}': expected whole seconds above 0, e.g. 60 or 60s")),
    }
}

/// `--drift-stat`: Evidently's rule, or one statistic for every feature.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StatChoice {
    /// Evidently's `auto`.
    Auto,
    /// One statistic.
    Fixed(Stat),
}

fn parse_stat(text: &str) -> Result<StatChoice, String> {
    if text == "auto" {
        return Ok(StatChoice::Auto);
    }
    serde_json::from_value(serde_json::Value::String(text.to_owned()))
        .map(StatChoice::Fixed)
        .map_err(|_| format!("'{text}': expected auto, ks, wasserstein, psi, jensen_shannon, hellinger or chi_squared"))
}

impl DriftSettings {
    /// The rule every feature without a threshold of its own is tested under.
    pub fn rule(&self) -> Rule {
        match self.stat {
            StatChoice::Auto => Rule::Auto,
            StatChoice::Fixed(stat) => {
                Rule::Fixed { stat, threshold: self.threshold.unwrap_or_else(|| stat.default_threshold()) }
            }
        }
    }

    /// Refuses settings that cannot evaluate anything.
    pub fn check(&self) -> Result<(), String> {
        if !(self.share > 0.0 && self.share <= 1.0) {
            return Err(format!("--drift-share {}: expected a share in (0, 1]", self.share));
        }
        if self.threshold.is_some_and(|t| !t.is_finite() || t <= 0.0) {
            return Err("--drift-threshold: expected a finite number above 0".into());
        }
        if self.threshold.is_some() && self.stat == StatChoice::Auto {
            return Err("--drift-threshold needs --drift-stat (auto has its own thresholds)".into());
        }
        if let Some(url) = &self.webhook
            && reqwest::Url::parse(url).map_or(true, |u| !matches!(u.scheme(), "http" | "https"))
        {
            return Err(format!("--drift-webhook '{url}': expected an http(s) URL"));
        }
        Ok(())
    }
}

/// A version's reference: the profile its traffic is compared with, and per-feature rules
/// that replace the default one (NannyML-style adaptive thresholds computed from reference
/// chunks by `modelgate profile --adaptive`, or hand-set ones).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reference {
    /// Feature summaries of the reference rows.
    pub profile: Profile,
    /// Feature → rule, for features that do not follow the control plane's rule.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rules: BTreeMap<String, Rule>,
}

impl Reference {
    /// Checks what a gateway or a user sent: at least one feature, non-empty, every rule's
    /// threshold finite, rules only for features the profile has.
    pub fn check(&self) -> Result<(), RegistryError> {
        let bad = |m: String| Err(RegistryError::InvalidArgument(m));
        if self.profile.features.is_empty() {
            return bad("the reference profile has no features".into());
        }
        if self.profile.rows() == 0 {
            return bad("the reference profile holds no rows".into());
        }
        for (name, rule) in &self.rules {
            if !self.profile.features.contains_key(name) {
                return bad(format!("a rule for feature '{name}', which the profile does not have"));
            }
            if let Rule::Fixed { threshold, .. } = rule
                && !(threshold.is_finite() && *threshold > 0.0)
            {
                return bad(format!("feature '{name}': threshold {threshold} is not a finite number above 0"));
            }
        }
        Ok(())
    }
}

/// One feature's outcome in an evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FeatureResult {
    /// Tested.
    Verdict(Verdict),
    /// Not tested, and why (too few rows in the span, an empty reference, ...).
    NoVerdict {
        /// The reason.
        no_verdict: String,
    },
}

/// The test of a canary's windows against the stable version's windows of the same span.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VersusStable {
    /// The stable version.
    pub stable_version: i64,
    /// Its rows in the span.
    pub stable_rows: u64,
    /// Dataset drift over the prediction features.
    pub dataset: DatasetDrift,
    /// Per prediction feature.
    pub features: BTreeMap<String, FeatureResult>,
}

/// One evaluation of one version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// When, in Unix milliseconds.
    pub evaluated_ms: i64,
    /// The span merged, in seconds.
    pub span_seconds: u32,
    /// Windows merged.
    pub windows: usize,
    /// Gateways whose windows were merged.
    pub gateways: usize,
    /// Rows in the span.
    pub rows: u64,
    /// Window features left out of the span for being profiled on other histogram edges
    /// (windows from before the reference was set).
    #[serde(default)]
    pub skipped_features: usize,
    /// The reference's rows and where it came from.
    pub reference_rows: u64,
    /// `upload`, `production baseline`, ...
    pub reference_source: String,
    /// Dataset drift: share of drifted features against the bound.
    pub dataset: DatasetDrift,
    /// Per feature.
    pub features: BTreeMap<String, FeatureResult>,
    /// For a canary: its predictions against the stable version's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versus_stable: Option<VersusStable>,
}

impl Evaluation {
    /// What the gateways get: whether the version drifted (against its reference, or as a
    /// canary against the stable version) and each tested feature's statistic.
    pub fn status(&self) -> DriftStatus {
        let drifted = self.dataset.drifted || self.versus_stable.as_ref().is_some_and(|v| v.dataset.drifted);
        let features = self
            .features
            .iter()
            .filter_map(|(name, result)| match result {
                FeatureResult::Verdict(v) => Some((
                    name.clone(),
                    FeatureDrift { stat: v.stat, value: v.value, threshold: v.threshold, drifted: v.drifted },
                )),
                FeatureResult::NoVerdict { .. } => None,
            })
            .collect();
        DriftStatus {
            evaluated_ms: self.evaluated_ms,
            span_seconds: self.span_seconds,
            rows: self.rows,
            drifted,
            share: self.dataset.share,
            features,
        }
    }
}

/// Windows of one version merged over a span.
#[derive(Debug, Default)]
pub struct Merged {
    /// The merged profile (per arm merged together).
    pub profile: Profile,
    /// Windows merged.
    pub windows: usize,
    /// Gateways seen.
    pub gateways: BTreeSet<String>,
    /// Rows.
    pub rows: u64,
    /// Features that are predictions (outputs), as the gateways named them.
    pub predictions: BTreeSet<String>,
    /// Route arms the windows came from (`stable`, `canary`).
    pub arms: BTreeSet<String>,
    /// Window features left out for being profiled on other edges than the rest.
    pub skipped_features: usize,
}

/// Tests every feature of `current` against `reference` (feature rules first, else `rule`).
fn test_features(
    reference: &Reference,
    current: &Profile,
    only: Option<&BTreeSet<String>>,
    rule: Rule,
    min_rows: u64,
) -> BTreeMap<String, FeatureResult> {
    reference
        .profile
        .features
        .iter()
        .filter(|(name, _)| only.is_none_or(|o| o.contains(*name)))
        .map(|(name, summary)| {
            let rule = reference.rules.get(name).copied().unwrap_or(rule);
            let outcome = match current.features.get(name) {
                Some(window) => summary.evaluate(window, rule, min_rows),
                None => Err(modelgate_sketch::NoVerdict::TooFewRows {
                    rows: 0,
                    min: min_rows.max(1),
                    nan: 0,
                    inf: 0,
                    missing: 0,
                }),
            };
            let result = match outcome {
                Ok(v) => FeatureResult::Verdict(v),
                Err(why) => FeatureResult::NoVerdict { no_verdict: why.to_string() },
            };
            (name.clone(), result)
        })
        .collect()
}

fn dataset(features: &BTreeMap<String, FeatureResult>, share: f64) -> DatasetDrift {
    let verdicts: Vec<Verdict> = features
        .values()
        .filter_map(|r| match r {
            FeatureResult::Verdict(v) => Some(v.clone()),
            FeatureResult::NoVerdict { .. } => None,
        })
        .collect();
    DatasetDrift::from_verdicts(&verdicts, share)
}

/// Evaluates one version's merged windows against its reference and, for a canary, against
/// the stable version's merged windows.
pub fn evaluate(
    settings: &DriftSettings,
    now_ms: i64,
    reference: &StoredReference,
    current: &Merged,
    stable: Option<(i64, &Merged)>,
) -> Evaluation {
    let rule = settings.rule();
    let features = test_features(&reference.reference, &current.profile, None, rule, settings.min_rows);
    let versus_stable = stable.filter(|(_, s)| s.rows > 0).map(|(stable_version, s)| {
        // The stable version's traffic as the reference; only predictions differ in
        // distribution between two arms that split the same traffic at random.
        let baseline = Reference { profile: s.profile.clone(), rules: BTreeMap::new() };
        let predictions: BTreeSet<String> = current.predictions.intersection(&s.predictions).cloned().collect();
        let features = test_features(&baseline, &current.profile, Some(&predictions), rule, settings.min_rows);
        VersusStable { stable_version, stable_rows: s.rows, dataset: dataset(&features, settings.share), features }
    });
    Evaluation {
        evaluated_ms: now_ms,
        span_seconds: u32::try_from(settings.span.as_secs()).unwrap_or(u32::MAX),
        windows: current.windows,
        gateways: current.gateways.len(),
        rows: current.rows,
        skipped_features: current.skipped_features,
        reference_rows: reference.rows,
        reference_source: reference.source.clone(),
        dataset: dataset(&features, settings.share),
        features,
        versus_stable,
    }
}

/// A reference as stored, with what made it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredReference {
    /// The reference.
    pub reference: Reference,
    /// Its rows.
    pub rows: u64,
    /// `upload`, `production baseline (first N rows)`, or what the uploader said.
    pub source: String,
    /// When it was stored.
    pub created_ms: i64,
}

/// Runs the evaluation loop until the task is aborted.
pub fn spawn_evaluator(registry: Arc<Registry>, settings: DriftSettings) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(settings.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match evaluate_all(&registry, &settings).await {
                Ok(n) if n > 0 => tracing::debug!(versions = n, "drift evaluated"),
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "drift evaluation failed; retrying at the next tick"),
            }
        }
    })
}

/// One round: prunes old windows, sets production baselines, evaluates every version with
/// windows in the span. Returns how many versions were evaluated.
pub async fn evaluate_all(registry: &Registry, settings: &DriftSettings) -> Result<usize, RegistryError> {
    let store = &registry.store;
    let now = crate::store::now_ms();
    let span_ms = i64::try_from(settings.span.as_millis()).unwrap_or(i64::MAX);
    store.prune_drift(now.saturating_sub(span_ms.saturating_mul(2)), now.saturating_sub(RESULTS_KEPT_MS)).await?;
    let since = now.saturating_sub(span_ms);
    let mut evaluations = Vec::new();
    for (model, version) in store.versions_with_windows(since).await? {
        // One version's trouble (a stored window that no longer reads) never stops the round.
        match evaluate_version(registry, settings, now, since, &model, version).await {
            Ok(Some(evaluation)) => evaluations.push((model, version, evaluation)),
            Ok(None) => {}
            Err(error) => tracing::warn!(model, version, %error, "drift evaluation of a version failed"),
        }
    }
    let n = evaluations.len();

    if n > 0 {
        let before = store.latest_drift_statuses().await?;
        store.put_drift_results(&evaluations).await?;
        for (model, version, evaluation) in &evaluations {
            let status = evaluation.status();
            let was = before.get(&(model.clone(), *version)).is_some_and(|s| s.drifted);
            if status.drifted != was {
                store.record_drift_flip(model, *version, &status).await?;
                tracing::warn!(model, version, drifted = status.drifted, share = status.share, "drift status changed");
                if let Some(url) = &settings.webhook {
                    notify(url.clone(), model.clone(), *version, status);
                }
            }
        }
    }
    Ok(n)
}

/// POSTs a drift flip to the webhook in the background (5 s timeout; a failure is logged, not
/// retried: the event log and the metric still hold it).
fn notify(url: String, model: String, version: i64, status: DriftStatus) {
    tokio::spawn(async move {
        let body = serde_json::json!({
            "event": if status.drifted { "drift_detected" } else { "drift_cleared" },
            "model": model, "version": version, "status": status,
        });
        let sent = reqwest::Client::new().post(&url).timeout(Duration::from_secs(5)).json(&body).send().await;
        match sent.map(|r| r.status()) {
            Ok(code) if code.is_success() => {}
            Ok(code) => tracing::warn!(%url, %code, "drift webhook refused the notification"),
            Err(error) => tracing::warn!(%url, %error, "drift webhook unreachable"),
        }
    });
}

/// Evaluates one version's windows of the span; `None` when it has no reference yet.
async fn evaluate_version(
    registry: &Registry,
    settings: &DriftSettings,
    now: i64,
    since: i64,
    model: &str,
    version: i64,
) -> Result<Option<Evaluation>, RegistryError> {
    let store = &registry.store;
    let Some(reference) = reference_or_baseline(registry, settings, model, version).await? else { return Ok(None) };
    let specs = reference.reference.profile.specs();
    let current = store.merged_windows(model, version, since, None, Some(&specs)).await?;
    // A canary is also held against the version that served the stable arm beside it.
    let stable_version = match current.arms.contains("canary") {
        true => store.stable_arm_version(model, version, since).await?,
        false => None,
    };
    let stable = match stable_version {
        Some(v) => Some((v, store.merged_windows(model, v, since, Some("stable"), None).await?)),
        None => None,
    };
    Ok(Some(evaluate(settings, now, &reference, &current, stable.as_ref().map(|(v, m)| (*v, m)))))
}

/// Evaluations are kept this long (the history the API and the operations page show).
pub const RESULTS_KEPT_MS: i64 = 7 * 24 * 3600 * 1000;

async fn reference_or_baseline(
    registry: &Registry,
    settings: &DriftSettings,
    model: &str,
    version: i64,
) -> Result<Option<StoredReference>, RegistryError> {
    let store = &registry.store;
    if let Some(found) = store.drift_reference(model, version).await? {
        return Ok(Some(found));
    }
    let Some(first) = store.first_rows(model, version, settings.baseline_rows).await? else { return Ok(None) };
    let reference = Reference { profile: first.profile, rules: BTreeMap::new() };
    let source = format!("production baseline (first {} rows served)", first.rows);
    store.put_drift_reference(model, version, &reference, &source).await?;
    store.drift_reference(model, version).await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use modelgate_sketch::{FeatureProfile, Summary};

    fn profile(values: &[f64]) -> Profile {
        let p = FeatureProfile::reference(values, 10, 200).unwrap();
        Profile { features: BTreeMap::from([("x".to_string(), Summary::Numeric(p))]) }
    }

    fn window(reference: &Profile, values: &[f64]) -> Merged {
        let mut p = Profile::empty(&reference.specs()).unwrap();
        if let Some(Summary::Numeric(x)) = p.features.get_mut("x") {
            x.extend(values);
        }
        Merged { rows: values.len() as u64, profile: p, windows: 1, ..Merged::default() }
    }

    fn stored(profile: Profile) -> StoredReference {
        StoredReference {
            rows: profile.rows(),
            reference: Reference { profile, rules: BTreeMap::new() },
            source: "upload".into(),
            created_ms: 0,
        }
    }

    fn normal(n: usize, shift: f64) -> Vec<f64> {
        // A deterministic, roughly normal sample: the sum of four uniform grids.
        (0..n).map(|i| ((i * 7919 % 1000) as f64 / 1000.0 + (i * 104_729 % 997) as f64 / 997.0) - 1.0 + shift).collect()
    }

    #[test]
    fn a_shifted_window_drifts_and_the_same_distribution_does_not() {
        let reference = stored(profile(&normal(5000, 0.0)));
        let settings = DriftSettings::default();
        let same = evaluate(&settings, 1, &reference, &window(&reference.reference.profile, &normal(2000, 0.0)), None);
        assert!(!same.dataset.drifted, "{same:?}");
        let shifted =
            evaluate(&settings, 1, &reference, &window(&reference.reference.profile, &normal(2000, 0.5)), None);
        assert!(shifted.dataset.drifted && shifted.status().drifted, "{shifted:?}");
        assert!(shifted.status().features["x"].drifted);
    }

    #[test]
    fn a_span_with_too_few_rows_gives_no_verdict_and_no_drift() {
        let reference = stored(profile(&normal(5000, 0.0)));
        let e =
            evaluate(&DriftSettings::default(), 1, &reference, &window(&reference.reference.profile, &[5.0; 10]), None);
        assert!(matches!(e.features["x"], FeatureResult::NoVerdict { .. }));
        assert!(!e.status().drifted);
        assert!(e.status().features.is_empty());
    }

    #[test]
    fn a_feature_rule_overrides_the_default() {
        let mut reference = stored(profile(&normal(5000, 0.0)));
        reference.reference.rules.insert("x".into(), Rule::Fixed { stat: Stat::Psi, threshold: 100.0 });
        let e = evaluate(
            &DriftSettings::default(),
            1,
            &reference,
            &window(&reference.reference.profile, &normal(2000, 0.5)),
            None,
        );
        let FeatureResult::Verdict(v) = &e.features["x"] else { panic!("{e:?}") };
        assert_eq!(v.stat, Stat::Psi);
        assert!(!v.drifted);
    }

    #[test]
    fn a_canary_whose_predictions_differ_from_the_stable_versions_drifts_against_it() {
        let reference = stored(profile(&normal(5000, 0.0)));
        let mut canary = window(&reference.reference.profile, &normal(2000, 0.0));
        let mut stable = window(&reference.reference.profile, &normal(2000, 0.8));
        canary.predictions.insert("x".into());
        stable.predictions.insert("x".into());
        let e = evaluate(&DriftSettings::default(), 1, &reference, &canary, Some((1, &stable)));
        assert!(!e.dataset.drifted);
        assert!(e.versus_stable.as_ref().unwrap().dataset.drifted);
        assert!(e.status().drifted);
    }

    #[test]
    fn the_drift_flags_parse_with_their_defaults_and_a_chosen_statistic() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            drift: DriftSettings,
        }
        let defaults = Cli::try_parse_from(["x"]).unwrap().drift;
        assert_eq!((defaults.rule(), defaults.min_rows, defaults.span), (Rule::Auto, 500, Duration::from_secs(900)));
        let chosen = Cli::try_parse_from(["x", "--drift-stat", "psi", "--drift-threshold", "0.25"]).unwrap().drift;
        assert_eq!(chosen.rule(), Rule::Fixed { stat: Stat::Psi, threshold: 0.25 });
        assert!(Cli::try_parse_from(["x", "--drift-stat", "t-test"]).is_err());
    }

    #[test]
    fn settings_refuse_a_threshold_without_a_statistic_and_a_share_out_of_range() {
        let mut s = DriftSettings { threshold: Some(0.2), ..DriftSettings::default() };
        assert!(s.check().is_err());
        s.stat = StatChoice::Fixed(Stat::Psi);
        assert!(s.check().is_ok());
        assert_eq!(s.rule(), Rule::Fixed { stat: Stat::Psi, threshold: 0.2 });
        s.share = 0.0;
        assert!(s.check().is_err());
        assert_eq!(parse_stat("jensen_shannon").unwrap(), StatChoice::Fixed(Stat::JensenShannon));
        assert!(parse_stat("t-test").is_err());
    }

    #[test]
    fn a_reference_with_a_rule_for_an_unknown_feature_is_refused() {
        let mut r = Reference { profile: profile(&normal(100, 0.0)), rules: BTreeMap::new() };
        assert!(r.check().is_ok());
        r.rules.insert("y".into(), Rule::Auto);
        assert!(r.check().is_err());
        assert!(Reference { profile: Profile::default(), rules: BTreeMap::new() }.check().is_err());
    }
}
