//! Ground truth for served predictions: the request ids that name them, the
//! bounded index that keeps what each request predicted, the truths clients
//! send back, the quality of each version, and A/B results between versions.
//!
//! - `request_id.rs`: ids for requests that bring none.
//! - `summary.rs`: what is kept of a prediction (class and score, or value).
//! - `index.rs`: the sharded, bounded index of one route.
//! - `outbox.rs`: a shared route's predictions on their way to the control plane.
//! - `fleet.rs`: the control plane as feedback asks it (lookups, claims).
//! - `quality.rs`: per-version accuracy, precision/recall, errors, rewards.
//! - `ab.rs`: each arm against the baseline, with always-valid intervals.
//!
//! A route that asks for it (`feedback = { ... }`, see `routing::spec`)
//! carries one [`Feedback`]; it outlives weight changes, not a replaced route.

pub mod ab;
pub mod fleet;
pub mod index;
pub mod outbox;
pub mod quality;
pub mod request_id;
pub mod summary;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

pub use fleet::{Fleet, FleetLink};
pub use index::{Miss, PredictionIndex};
pub use outbox::Outbox;
pub use quality::{Quality, Report, Truth};
pub use summary::{OutputKind, Prediction};

use crate::error::Error;
use crate::metrics;
use crate::tensor::ResponseOutput;

/// A route's feedback settings, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// How long a prediction waits for its truth.
    pub ttl: Duration,
    /// Most predictions held.
    pub max_entries: usize,
    /// The sliding window of the quality metrics.
    pub window: Duration,
    /// The output summarized (`None`: the first).
    pub output: Option<String>,
    /// How it is read.
    pub kind: OutputKind,
    /// The difference worth detecting between arms (the A/B test's τ).
    pub min_effect: f64,
    /// Whether predictions are shipped to the control plane, so that feedback
    /// at another replica joins them and a truth is accepted once fleet-wide.
    pub shared: bool,
}

/// The feedback state of one route.
#[derive(Debug)]
pub struct Feedback {
    model: String,
    settings: Settings,
    index: PredictionIndex,
    /// A shared route's predictions on their way to the control plane.
    outbox: Option<Arc<Outbox>>,
    /// One per target version, in route order.
    versions: Vec<(u64, Quality)>,
}

/// What one truth did.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Judged {
    /// The request id.
    pub id: String,
    /// The version that answered it.
    pub model_version: String,
    /// Whether the predicted class was the label (labels only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correct: Option<bool>,
}

/// One arm in an A/B result.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ArmResult {
    /// The version.
    pub version: u64,
    /// Samples of the compared metric.
    pub n: u64,
    /// The metric's value.
    pub value: Option<f64>,
    /// Against the baseline (absent for the baseline itself).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comparison: Option<ab::Comparison>,
}

/// A route's A/B result.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct AbResult {
    /// The public model name.
    pub model: String,
    /// The metric compared (absent until the baseline has truths).
    pub metric: Option<ab::Metric>,
    /// The version the others are compared with.
    pub baseline: u64,
    /// How the verdicts are reached.
    pub method: &'static str,
    /// Each arm, the baseline first.
    pub arms: Vec<ArmResult>,
}

impl Feedback {
    /// Empty feedback state of route `model` over `versions`.
    pub fn new(model: &str, settings: Settings, versions: &[u64]) -> Feedback {
        let outbox = settings.shared.then(|| Arc::new(Outbox::default()));
        Feedback {
            model: model.to_owned(),
            index: PredictionIndex::with_outbox(settings.max_entries, settings.ttl, outbox.clone()),
            outbox,
            versions: versions.iter().map(|&v| (v, Quality::new(settings.window))).collect(),
            settings,
        }
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The index.
    pub fn index(&self) -> &PredictionIndex {
        &self.index
    }

    /// The public model name.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// A shared route's outbox to the control plane.
    pub fn outbox(&self) -> Option<&Arc<Outbox>> {
        self.outbox.as_ref()
    }

    /// Keeps what request `id`, answered by `version`, predicted (nothing
    /// when the output is missing or not numeric).
    pub fn keep(&self, id: &str, version: u64, outputs: &[ResponseOutput]) {
        if let Some(prediction) = summary::summarize(outputs, self.settings.output.as_deref(), self.settings.kind) {
            self.index.insert(id, version, prediction);
        }
    }

    /// The quality of `version`.
    pub fn quality(&self, version: u64) -> Option<&Quality> {
        self.versions.iter().find(|(v, _)| *v == version).map(|(_, q)| q)
    }

    /// Joins a truth to the prediction of request `id` and counts it (see [`Feedback::judge_all`]).
    pub async fn judge(&self, id: &str, truth: Truth, link: &FleetLink) -> Result<Judged, Error> {
        let mut results = self.judge_all(vec![(id.to_owned(), truth)], link).await;
        results.pop().unwrap_or_else(|| Err(Error::Internal("a truth judged to nothing".into())))
    }

    /// Judges a batch whose items were parsed one by one: the parsed ones
    /// together ([`Feedback::judge_all`]), the refused ones keep their error,
    /// and each result stays in its item's place.
    pub async fn judge_parsed(
        &self,
        items: Vec<Result<(String, Truth), Error>>,
        link: &FleetLink,
    ) -> Vec<Result<Judged, Error>> {
        let valid: Vec<(String, Truth)> = items.iter().filter_map(|item| item.as_ref().ok().cloned()).collect();
        let mut judged = self.judge_all(valid, link).await.into_iter();
        items
            .into_iter()
            .map(|item| match item {
                Ok(_) => judged.next().unwrap_or_else(|| Err(Error::Internal("a truth judged to nothing".into()))),
                Err(e) => Err(e),
            })
            .collect()
    }

    /// Counts a feedback request or item refused before it named a
    /// prediction (malformed JSON, a missing id, a label that is no class
    /// index, a batch over its bound).
    pub fn count_invalid(&self) {
        metrics::feedback(&self.model, "invalid");
    }

    /// Joins truths to the predictions of their request ids, one result per
    /// item, and counts each in `modelgate_feedback_total`. Unknown ids are 404,
    /// expired 410, a second truth 409 (the first one stands), a truth of the
    /// wrong kind or class 400 (the prediction stays open for a right one).
    ///
    /// A shared route with a control plane (`link`) asks it for the ids this
    /// gateway does not hold, and claims every entry before accepting its truth,
    /// so a second truth is refused at any replica; the truth then counts in this
    /// gateway's quality for the version that answered. Without the control plane
    /// (none, or it did not answer) joins are local only.
    pub async fn judge_all(&self, items: Vec<(String, Truth)>, link: &FleetLink) -> Vec<Result<Judged, Error>> {
        let fleet = if self.settings.shared { link.available().cloned() } else { None };
        let mut steps: Vec<Step> = items.iter().map(|(id, truth)| self.local_step(id, *truth)).collect();
        if let Some(fleet) = &fleet {
            self.look_up_misses(fleet.as_ref(), link, &items, &mut steps).await;
            self.claim(fleet.as_ref(), link, &items, &mut steps).await;
        }
        items
            .iter()
            .zip(steps)
            .map(|((id, truth), step)| {
                let result = self.finish(id, *truth, step);
                let label = match &result {
                    Ok(_) => "accepted",
                    Err(Error::NotFound(_)) => "unknown",
                    Err(Error::Gone(_)) => "expired",
                    Err(Error::Conflict(_)) => "duplicate",
                    Err(Error::Unavailable(_)) => "unavailable",
                    Err(_) => "invalid",
                };
                metrics::feedback(&self.model, label);
                result
            })
            .collect()
    }

    /// Where one item stands against the local index.
    fn local_step(&self, id: &str, truth: Truth) -> Step {
        if let Err(message) = request_id::check(id) {
            return Step::Done(Err(Error::InvalidArgument(message)));
        }
        match self.index.peek(id) {
            // The kind is checked before the entry is marked judged, so a
            // mistaken truth can be sent again, right.
            Ok(entry) => match check_truth(entry.prediction, truth) {
                Ok(()) => Step::Local(entry),
                Err(e) => Step::Done(Err(e)),
            },
            Err(miss) => Step::Done(Err(self.miss(id, miss))),
        }
    }

    /// Asks the control plane for the ids unknown here.
    async fn look_up_misses(&self, fleet: &dyn Fleet, link: &FleetLink, items: &[(String, Truth)], steps: &mut [Step]) {
        let unknown: Vec<usize> =
            (0..steps.len()).filter(|&i| matches!(steps[i], Step::Done(Err(Error::NotFound(_))))).collect();
        if unknown.is_empty() {
            return;
        }
        let ids = unknown.iter().map(|&i| items[i].0.clone()).collect();
        let Ok(found) = link.call(fleet.lookup(&self.model, ids)).await else { return };
        for (&i, found) in unknown.iter().zip(found) {
            let (id, truth) = &items[i];
            steps[i] = match (found.state, found.version, found.prediction) {
                (fleet::State::Open, Some(version), Some(prediction)) => {
                    let prediction = fleet::from_shared(prediction);
                    match check_truth(prediction, *truth) {
                        Ok(()) => Step::Remote { version, prediction },
                        Err(e) => Step::Done(Err(e)),
                    }
                }
                (fleet::State::Judged, ..) => Step::Done(Err(self.miss(id, Miss::Duplicate))),
                (fleet::State::Expired, ..) => Step::Done(Err(self.miss(id, Miss::Expired))),
                _ => continue,
            };
        }
    }

    /// Claims every entry about to be judged; those another gateway judged first
    /// become duplicates. A control plane that does not answer leaves local
    /// entries to be judged here alone; entries only it holds cannot be (503).
    async fn claim(&self, fleet: &dyn Fleet, link: &FleetLink, items: &[(String, Truth)], steps: &mut [Step]) {
        let claiming: Vec<usize> =
            (0..steps.len()).filter(|&i| matches!(steps[i], Step::Local(_) | Step::Remote { .. })).collect();
        if claiming.is_empty() {
            return;
        }
        let ttl_ms = i64::try_from(self.settings.ttl.as_millis()).unwrap_or(i64::MAX);
        let claims = claiming
            .iter()
            .map(|&i| {
                let id = items[i].0.clone();
                let entry = match &steps[i] {
                    Step::Local(entry) => Some(modelgate_registry::feedback::Entry {
                        model: self.model.clone(),
                        id: id.clone(),
                        version: entry.version,
                        at_ms: self.index.unix_ms(entry.at_ms),
                        ttl_ms,
                        prediction: fleet::to_shared(entry.prediction),
                    }),
                    _ => None,
                };
                fleet::Claim { id, entry }
            })
            .collect();
        match link.call(fleet.claim(&self.model, claims)).await {
            Ok(results) => {
                for (&i, found) in claiming.iter().zip(results) {
                    let id = &items[i].0;
                    let lost = match found.state {
                        fleet::State::Claimed => continue,
                        fleet::State::Expired => Miss::Expired,
                        fleet::State::Unknown => Miss::Unknown,
                        fleet::State::Judged | fleet::State::Open => Miss::Duplicate,
                    };
                    if lost == Miss::Duplicate {
                        // Judged elsewhere: a later truth here is refused without asking.
                        self.index.mark_judged(id);
                    }
                    steps[i] = Step::Done(Err(self.miss(id, lost)));
                }
            }
            Err(_) => {
                for &i in &claiming {
                    if matches!(steps[i], Step::Remote { .. }) {
                        steps[i] = Step::Done(Err(Error::Unavailable(format!(
                            "the prediction of request id '{}' is held by the control plane, which did not answer: send the feedback again",
                            items[i].0
                        ))));
                    }
                }
            }
        }
    }

    /// Marks and counts an accepted truth.
    fn finish(&self, id: &str, truth: Truth, step: Step) -> Result<Judged, Error> {
        let (version, prediction) = match step {
            Step::Done(result) => return result,
            Step::Local(_) => {
                // Marked here at last: a concurrent truth for the same id may have come first.
                let entry = self.index.judge(id).map_err(|miss| self.miss(id, miss))?;
                (entry.version, entry.prediction)
            }
            Step::Remote { version, prediction } => {
                self.index.mark_judged(id);
                (version, prediction)
            }
        };
        if let Some(quality) = self.quality(version) {
            quality.record(Instant::now(), prediction, truth);
        }
        let correct = match (prediction, truth) {
            (Prediction::Class { class, .. }, Truth::Label(label)) => Some(class == label),
            _ => None,
        };
        Ok(Judged { id: id.to_owned(), model_version: version.to_string(), correct })
    }

    fn miss(&self, id: &str, miss: Miss) -> Error {
        let model = &self.model;
        match miss {
            Miss::Unknown => Error::NotFound(format!(
                "model '{model}' holds no prediction of request id '{id}' (never seen, or pushed out by newer ones)"
            )),
            Miss::Expired => Error::Gone(format!(
                "the prediction of request id '{id}' is older than model '{model}''s feedback ttl of {}s",
                self.settings.ttl.as_secs()
            )),
            Miss::Duplicate => {
                Error::Conflict(format!("request id '{id}' already has its truth; the first one stands"))
            }
        }
    }

    /// Each version's figures over the window, and the index's size, as metrics.
    pub fn publish_metrics(&self) {
        let index = &self.index;
        index.flush();
        let (entries, bytes) = (index.len(), index.heap_bytes());
        metrics::feedback_index(&self.model, entries, index.capacity(), bytes, index.evicted(), index.dropped());
        if let Some(outbox) = &self.outbox {
            metrics::feedback_shipped(&self.model, outbox.shipped(), outbox.dropped());
        }
        let now = Instant::now();
        for (version, quality) in &self.versions {
            let report = quality.window(now).report();
            let figures = metrics::QualityFigures {
                samples: [("label", report.labelled), ("value", report.valued), ("reward", report.rewarded)],
                accuracy: report.accuracy,
                classes: report.classes.iter().map(|c| (c.class, c.precision, c.recall)).collect(),
                mae: report.mae,
                rmse: report.rmse,
                mean_reward: report.mean_reward,
            };
            metrics::model_quality(&self.model, *version, &figures);
        }
    }

    /// Each version's figures, since the route began and over the window.
    pub fn reports(&self) -> Vec<(u64, Report, Report)> {
        let now = Instant::now();
        self.versions.iter().map(|(v, q)| (*v, q.total().report(), q.window(now).report())).collect()
    }

    /// Every arm against `baseline` since the route began.
    pub fn ab(&self, baseline: u64) -> AbResult {
        let totals: Vec<(u64, quality::Tally)> = self.versions.iter().map(|(v, q)| (*v, q.total())).collect();
        let base = totals.iter().find(|(v, _)| *v == baseline).map(|(_, t)| t.clone()).unwrap_or_default();
        let metric = ab::metric_of(&base);
        let estimate = |t: &quality::Tally| metric.and_then(|m| ab::Estimate::of(t, m));
        let base_estimate = estimate(&base);
        let mut arms = Vec::with_capacity(totals.len());
        for (version, tally) in
            totals.iter().filter(|(v, _)| *v == baseline).chain(totals.iter().filter(|(v, _)| *v != baseline))
        {
            let mine = estimate(tally);
            let comparison = match (metric, &base_estimate, &mine) {
                (Some(m), Some(b), Some(a)) if *version != baseline => {
                    Some(ab::compare(m, b, a, self.settings.min_effect))
                }
                (Some(_), _, _) if *version != baseline => Some(ab::Comparison {
                    difference: f64::NAN,
                    fixed_ci: [f64::NAN; 2],
                    sequential_ci: [f64::NAN; 2],
                    verdict: ab::Verdict::NotYetKnown,
                }),
                _ => None,
            };
            arms.push(ArmResult {
                version: *version,
                n: mine.map_or(0, |e| e.n),
                value: mine.map(|e| e.mean),
                comparison,
            });
        }
        AbResult {
            model: self.model.clone(),
            metric,
            baseline,
            method: "mixture SPRT always-valid 95% interval (verdict); two-proportion / Welch 95% fixed-horizon interval (fixed_ci, read once only)",
            arms,
        }
    }
}

/// Where one feedback item stands on its way to an answer.
enum Step {
    /// Answered.
    Done(Result<Judged, Error>),
    /// Held here (claimed at the control plane when the route is shared).
    Local(index::Entry),
    /// Held only by the control plane.
    Remote {
        /// The version that answered.
        version: u64,
        /// What it predicted.
        prediction: Prediction,
    },
}

/// Refuses a truth that cannot judge the prediction: a value for a class, a
/// label for a value, a label past the output's classes, a non-finite number.
fn check_truth(prediction: Prediction, truth: Truth) -> Result<(), Error> {
    match (prediction, truth) {
        (Prediction::Class { classes, .. }, Truth::Label(label)) if label >= classes => Err(Error::invalid(format!(
            "label {label} is not a class of this model's output: classes are 0 to {}",
            classes - 1
        ))),
        (Prediction::Class { .. }, Truth::Value(_)) => Err(Error::invalid(
            "this route's predictions are classes: send a \"label\" (or a \"reward\"), not a \"value\"",
        )),
        (Prediction::Value(_), Truth::Label(_)) => Err(Error::invalid(
            "this route's predictions are values: send a \"value\" (or a \"reward\"), not a \"label\"",
        )),
        (_, Truth::Value(x) | Truth::Reward(x)) if !x.is_finite() => {
            Err(Error::invalid(format!("the truth must be a finite number, got {x}")))
        }
        _ => Ok(()),
    }
}
