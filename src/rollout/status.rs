//! What the admin API shows of routes and rollouts: plain serializable
//! snapshots, built by [`super::Rollouts`] and the analyzers.

use std::collections::VecDeque;

use serde::Serialize;

use crate::routing::{RouteSpec, Summary};

/// Where a rollout stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Checking and stepping up.
    Progressing,
    /// Checking, not stepping up.
    Paused,
    /// Canary at 100 %.
    Succeeded,
    /// Canary at 0 % and marked failed.
    Failed,
}

impl Phase {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Progressing => "progressing",
            Phase::Paused => "paused",
            Phase::Succeeded => "succeeded",
            Phase::Failed => "failed",
        }
    }
}

/// An SLO the canary broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Breach {
    /// Server-fault error rate over `max_error_rate`.
    ErrorRate,
    /// p99 latency over `max_p99_latency`.
    Latency,
}

impl Breach {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Breach::ErrorRate => "error_rate",
            Breach::Latency => "latency",
        }
    }
}

/// The result of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "verdict", content = "slo")]
pub enum Verdict {
    /// Fewer than `min_requests` canary requests in the window.
    NoData,
    /// Within every SLO.
    Pass,
    /// Over an SLO the baseline meets.
    Fail(Breach),
    /// Over an SLO the baseline is over too.
    Inconclusive(Breach),
}

impl Verdict {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::NoData => "no_data",
            Verdict::Pass => "pass",
            Verdict::Fail(_) => "fail",
            Verdict::Inconclusive(_) => "inconclusive",
        }
    }
}

/// What a line of a rollout's history records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The rollout began at its first step.
    Started,
    /// The canary stepped up.
    Step,
    /// Stepping up stopped.
    Paused,
    /// Stepping up went on.
    Resumed,
    /// An operator set the weights.
    Weights,
    /// The canary went to 0 % and was marked failed.
    RolledBack,
    /// The canary went to 100 %.
    Promoted,
    /// Stepping up was held because the canary drifts, or resumed when it stopped drifting.
    DriftHold,
    /// Stepping up was held because ground truth says the canary is less
    /// accurate than `min_accuracy_delta` allows, or resumed when it no longer is.
    QualityHold,
}

/// One line of a rollout's history.
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// What happened.
    pub kind: EventKind,
    /// What happened, in words.
    pub message: String,
}

/// Counts of one window, as a check saw them.
#[derive(Clone, Debug, Default, Serialize)]
pub struct WindowStats {
    /// Requests (successes and server-fault failures).
    pub requests: u64,
    /// Server-fault failures.
    pub errors: u64,
    /// errors / requests.
    pub error_rate: f64,
    /// p99 latency of successes, in milliseconds.
    pub p99_ms: Option<f64>,
}

impl From<&Summary> for WindowStats {
    fn from(s: &Summary) -> WindowStats {
        WindowStats {
            requests: s.requests,
            errors: s.errors,
            error_rate: s.error_rate(),
            p99_ms: s.p99().map(|d| d.as_secs_f64() * 1000.0),
        }
    }
}

/// The last check.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// The verdict.
    #[serde(flatten)]
    pub verdict: Verdict,
    /// The canary's window.
    pub canary: WindowStats,
    /// The baseline's window.
    pub baseline: WindowStats,
}

/// What the admin API shows of a rollout.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// Phase.
    pub state: Phase,
    /// Why it is paused or failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Canary version.
    pub canary: u64,
    /// Baseline version.
    pub baseline: u64,
    /// Index into `step_weights`.
    pub step: usize,
    /// The policy's steps.
    pub step_weights: Vec<u32>,
    /// Canary weight now.
    pub canary_weight: u32,
    /// Consecutive failed checks.
    pub failed_checks: u32,
    /// The last check.
    pub last_check: Option<Check>,
    /// Recent events, oldest first.
    pub events: VecDeque<Event>,
}

/// What the admin API shows of a route.
#[derive(Clone, Debug, Serialize)]
pub struct RouteStatus {
    /// Public model name.
    pub model: String,
    /// Changes each time the route is replaced.
    pub generation: u64,
    /// Targets with their live weights and windows.
    pub targets: Vec<TargetStatus>,
    /// Shadow copies and their comparison.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowStatus>,
    /// The rollout, when the route has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Status>,
    /// The prediction index, when the route keeps one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feedback: Option<IndexStatus>,
    /// The route as applied.
    pub spec: RouteSpec,
}

/// One target of a route.
#[derive(Clone, Debug, Serialize)]
pub struct TargetStatus {
    /// Version.
    pub version: u64,
    /// Weight in percent.
    pub weight: u32,
    /// Rolled back.
    pub failed: bool,
    /// Loaded and serving.
    pub ready: bool,
    /// In-flight limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
    /// Requests in flight through the route.
    pub in_flight: u32,
    /// Its sliding window.
    pub window: TargetWindow,
    /// The control plane's latest drift verdict on it, when it has one (versions the gateway
    /// serves from the registry, with a reference or a production baseline).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drift: Option<crate::routing::DriftMark>,
    /// Its quality from ground truth (routes with `feedback`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quality: Option<TargetQuality>,
}

/// A target's quality from the truths its predictions received.
#[derive(Clone, Debug, Serialize)]
pub struct TargetQuality {
    /// Since the route began (what A/B results and the release gate read).
    pub total: crate::feedback::Report,
    /// Over the feedback window (what the metrics show).
    pub window: crate::feedback::Report,
}

/// A route's prediction index.
#[derive(Clone, Debug, Serialize)]
pub struct IndexStatus {
    /// Predictions held.
    pub entries: usize,
    /// Most held at once.
    pub capacity: usize,
    /// Heap bytes.
    pub bytes: usize,
    /// Pushed out by newer ones.
    pub evicted: u64,
    /// Never kept: the queue to the index's applier thread was full.
    pub dropped: u64,
}

/// A target's sliding window.
#[derive(Clone, Debug, Serialize)]
pub struct TargetWindow {
    /// Span.
    pub span_ms: u64,
    /// Counts.
    #[serde(flatten)]
    pub stats: WindowStats,
    /// Median latency of successes.
    pub p50_ms: Option<f64>,
}

/// A route's shadow copies.
#[derive(Clone, Debug, Serialize)]
pub struct ShadowStatus {
    /// Shadow version.
    pub version: u64,
    /// Percent copied.
    pub percent: f64,
    /// Copies answered.
    pub success: u64,
    /// Copies failed.
    pub error: u64,
    /// Copies skipped (too many in flight).
    pub skipped: u64,
    /// Answers compared with the primary's.
    pub compared: u64,
    /// Comparisons that agreed.
    pub agreed: u64,
    /// agreed / compared.
    pub agreement_rate: Option<f64>,
    /// Largest absolute output difference seen.
    pub max_abs_diff: Option<f64>,
}
