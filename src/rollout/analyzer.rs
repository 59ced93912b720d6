//! The rollout analyzer of one route: a state machine, one `async fn` per
//! state, that checks the canary against its SLOs and the baseline every
//! `check_interval`, steps the canary weight up after each `interval` that
//! passes, rolls back at once after `threshold` consecutive failed checks,
//! and promotes after the last step.
//!
//! ```text
//!              pass + interval over: next step
//!             ┌──────────┐
//!             ▼          │      operator: pause / set weights
//!        Progressing ────┴──────────────────────► Paused
//!          │     │  ◄─────────────────────────────  │
//!          │     │        operator: resume          │
//! last step│     │ threshold failed checks          │ threshold failed checks
//!   passed │     └──────────────┐  ┌────────────────┘
//!          ▼                    ▼  ▼
//!      Succeeded ◄── promote ── Failed (canary weight 0, marked failed)
//!                ── rollback ──►
//! ```
//!
//! Precedence between operators and the analyzer, by construction: the
//! analyzer is the only writer of its route's weights and handles operator
//! commands and its own checks one at a time, in arrival order.
//!
//! - Pause (or an operator setting weights, which pauses) stops promotion,
//!   not protection: a paused canary that breaches is still rolled back.
//! - Promote and rollback by an operator end the rollout; the analyzer never
//!   undoes them. From Failed an operator may still promote (an override),
//!   and from Succeeded roll back.
//! - Resume restarts the current step: its weight, and a fresh interval.
//!
//! In front of the checks, every canary outcome updates the canary's
//! sequential tests (`routing::sprt`: server faults, and answers over the
//! latency threshold). The outcome that carries one over its bound wakes the
//! analyzer, which rolls back at once, between two requests rather than at
//! the next tick, unless the baseline, with enough requests in its window,
//! breaks the same SLO (then the test starts over: the trouble is not the
//! canary's). The checks stay as a backstop.
//!
//! A check reads the canary's and the baseline's sliding windows. With fewer
//! than `min_requests` canary requests it has no verdict, and since only a
//! passing check steps up, a canary without enough traffic waits at its step. A canary over an
//! SLO fails the check unless the baseline, with enough requests of its own,
//! is over the same SLO in the same window: then the trouble is not the
//! canary's (an overloaded machine) and the check is inconclusive, which
//! neither fails nor passes it.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior};

use super::status::{Breach, Check, Event, EventKind, Phase, Status, Verdict, WindowStats};
use crate::error::Error;
use crate::feedback::ab::{MIN_SAMPLES, Metric};
use crate::routing::{Arm, DriftGate, Policy, QualityGate, Routes, Summary};

/// Events a rollout keeps for the admin API.
const EVENTS_KEPT: usize = 64;

/// The SLO verdict for a canary window beside its baseline window.
pub fn judge(policy: &Policy, canary: &Summary, baseline: &Summary) -> Verdict {
    if canary.requests < policy.min_requests {
        return Verdict::NoData;
    }
    let baseline_counts = baseline.requests >= policy.min_requests;
    let over_error = |s: &Summary| s.error_rate() > policy.max_error_rate;
    let over_latency = |s: &Summary| match (policy.max_p99_latency, s.p99()) {
        (Some(max), Some(p99)) => p99 > max,
        _ => false,
    };
    for (breach, over) in
        [(Breach::ErrorRate, &over_error as &dyn Fn(&Summary) -> bool), (Breach::Latency, &over_latency)]
    {
        if over(canary) {
            return if baseline_counts && over(baseline) {
                Verdict::Inconclusive(breach)
            } else {
                Verdict::Fail(breach)
            };
        }
    }
    Verdict::Pass
}

/// What an operator asks of a rollout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Stop stepping up.
    Pause,
    /// Step up again from the current step.
    Resume,
    /// Canary to 100 % now.
    Promote,
    /// Canary to 0 % now.
    Rollback,
    /// Set the weights (checked by the caller) and pause.
    SetWeights(Vec<(u64, u32)>),
}

/// A command and where its answer goes.
pub type Request = (Command, oneshot::Sender<Result<(), Error>>);

/// Runs one route's rollout until the route is replaced or removed.
#[derive(Debug)]
pub struct Analyzer {
    model: String,
    generation: u64,
    policy: Policy,
    routes: Arc<Routes>,
    canary: Arc<Arm>,
    baseline: Arc<Arm>,
    commands: mpsc::Receiver<Request>,
    status: Arc<Mutex<Status>>,
    step_started: Instant,
    /// Whether stepping up is held because the canary drifts (for the hold's events).
    drift_held: bool,
    /// Whether stepping up is held because the canary is less accurate than
    /// `min_accuracy_delta` allows (for the hold's events).
    quality_held: bool,
    /// The last accuracy breach, in words (for the rollback's event).
    quality_breach: Option<String>,
}

/// How a state ends: the next state, or `None` when the route is gone.
type Next = Option<Phase>;

/// What an operator command does to the state machine.
enum Step {
    /// Stay in the current state.
    Stay,
    /// Leave for another state.
    Enter(Phase),
    /// The route was replaced or removed: the analyzer ends.
    RouteGone,
}

/// Why a canary is rolled back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Trigger {
    /// An operator asked.
    Operator,
    /// The canary broke an SLO in `threshold` consecutive checks.
    Slo(Breach),
    /// A sequential test of the canary's outcomes crossed its bound.
    Sequential(Breach),
    /// The control plane says the canary drifts, and the policy says roll back.
    Drift,
    /// Ground truth says the canary is less accurate than the policy allows,
    /// and the policy says roll back.
    Accuracy,
}

impl Trigger {
    /// Label value of `modelgate_rollout_rollbacks_total`.
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Operator => "manual",
            Trigger::Slo(breach) | Trigger::Sequential(breach) => breach.as_str(),
            Trigger::Drift => "drift",
            Trigger::Accuracy => "accuracy",
        }
    }
}

/// Who promotes a canary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Promotion {
    /// The analyzer, after the last step passed.
    Automatic,
    /// An operator.
    Operator,
}

impl Promotion {
    /// Label value of `modelgate_rollout_promotions_total`.
    fn as_str(self) -> &'static str {
        match self {
            Promotion::Automatic => "automatic",
            Promotion::Operator => "manual",
        }
    }
}

impl Analyzer {
    /// An analyzer for `model` (route generation `generation`, already in
    /// `routes` with the first step's weights). Returns it with the sender
    /// of operator commands and the status it publishes.
    pub fn new(
        model: &str,
        generation: u64,
        policy: Policy,
        routes: Arc<Routes>,
    ) -> Option<(Analyzer, mpsc::Sender<Request>, Arc<Mutex<Status>>)> {
        let route = routes.get(model).filter(|r| r.generation == generation)?;
        let canary = route.target(policy.canary)?.arm.clone();
        let baseline = route.target(policy.baseline)?.arm.clone();
        let status = Arc::new(Mutex::new(Status {
            state: Phase::Progressing,
            reason: None,
            canary: policy.canary,
            baseline: policy.baseline,
            step: 0,
            step_weights: policy.step_weights.clone(),
            canary_weight: policy.step_weights[0],
            failed_checks: 0,
            last_check: None,
            events: VecDeque::new(),
        }));
        let (sender, commands) = mpsc::channel(16);
        let analyzer = Analyzer {
            model: model.to_owned(),
            generation,
            policy,
            routes,
            canary,
            baseline,
            commands,
            status: status.clone(),
            step_started: Instant::now(),
            drift_held: false,
            quality_held: false,
            quality_breach: None,
        };
        Some((analyzer, sender, status))
    }

    /// Runs the state machine, and the sweep of the canary's running
    /// requests for its latency test beside it.
    pub async fn run(self) {
        let canary = self.canary.clone();
        let in_flight = || canary.in_flight();
        let sweep = async {
            match &canary.sequential {
                Some(sequential) => sequential.sweep_overdue(in_flight).await,
                None => std::future::pending().await,
            }
        };
        // The canary's running requests are counted slow as they pass the latency threshold for as long as the rollout runs.
        tokio::select! {
            () = self.phases() => {}
            () = sweep => {}
        }
    }

    async fn phases(mut self) {
        let first = self.policy.step_weights[0];
        self.event(EventKind::Started, format!("canary {} at {first} %", self.policy.canary));
        self.publish_phase(Phase::Progressing);
        let mut phase = Phase::Progressing;
        loop {
            let next = match phase {
                Phase::Progressing => self.progressing().await,
                Phase::Paused => self.paused().await,
                Phase::Succeeded | Phase::Failed => self.finished().await,
            };
            match next {
                Some(next) => phase = next,
                None => return,
            }
        }
    }

    fn ticks(&self) -> tokio::time::Interval {
        let every = self.policy.check_interval;
        let mut ticks = tokio::time::interval_at(Instant::now() + every, every);
        // After a stall, check once and go on: a burst of checks would read the same window.
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ticks
    }

    /// Checking and stepping up.
    async fn progressing(&mut self) -> Next {
        let mut ticks = self.ticks();
        let canary = self.canary.clone();
        loop {
            tokio::select! {
                () = crossed(&canary) => {
                    if let ControlFlow::Break(next) = self.sequential_verdict() {
                        return next;
                    }
                }
                _ = ticks.tick() => {
                    let verdict = match self.check_and_protect() {
                        ControlFlow::Break(next) => return next,
                        ControlFlow::Continue(verdict) => verdict,
                    };
                    let held = match self.drift_gate() {
                        ControlFlow::Break(next) => return next,
                        ControlFlow::Continue(held) => held,
                    };
                    let held = match self.quality_gate() {
                        ControlFlow::Break(next) => return next,
                        ControlFlow::Continue(quality_held) => held || quality_held,
                    };
                    if verdict == Verdict::Pass && !held && self.step_started.elapsed() >= self.policy.interval {
                        let step = self.status.lock().step + 1;
                        if step == self.policy.step_weights.len() {
                            return self.promote(Promotion::Automatic);
                        }
                        let weight = self.policy.step_weights[step];
                        if !self.set_canary_weight(weight, step) {
                            return None;
                        }
                        let steps = self.policy.step_weights.len();
                        self.event(EventKind::Step, format!("step {} of {steps}: canary at {weight} %", step + 1));
                    }
                }
                request = self.commands.recv() => {
                    let (command, reply) = request?;
                    match self.command(Phase::Progressing, command, reply) {
                        Step::Stay => {}
                        Step::Enter(next) => return Some(next),
                        Step::RouteGone => return None,
                    }
                }
            }
        }
    }

    /// Checking (and rolling back on breach), not stepping up.
    async fn paused(&mut self) -> Next {
        let mut ticks = self.ticks();
        let canary = self.canary.clone();
        loop {
            tokio::select! {
                () = crossed(&canary) => {
                    if let ControlFlow::Break(next) = self.sequential_verdict() {
                        return next;
                    }
                }
                _ = ticks.tick() => {
                    if let ControlFlow::Break(next) = self.check_and_protect() {
                        return next;
                    }
                    // A paused canary is still protected: drift under `rollback` rolls it back.
                    if let ControlFlow::Break(next) = self.drift_gate() {
                        return next;
                    }
                    if let ControlFlow::Break(next) = self.quality_gate() {
                        return next;
                    }
                }
                request = self.commands.recv() => {
                    let (command, reply) = request?;
                    match self.command(Phase::Paused, command, reply) {
                        Step::Stay => {}
                        Step::Enter(next) => return Some(next),
                        Step::RouteGone => return None,
                    }
                }
            }
        }
    }

    /// Done: only operator overrides remain.
    async fn finished(&mut self) -> Next {
        loop {
            let (command, reply) = self.commands.recv().await?;
            let phase = self.status.lock().state;
            match self.command(phase, command, reply) {
                Step::Stay => {}
                Step::Enter(next) => return Some(next),
                Step::RouteGone => return None,
            }
        }
    }

    /// Applies an operator command in `phase` and answers it.
    fn command(&mut self, phase: Phase, command: Command, reply: oneshot::Sender<Result<(), Error>>) -> Step {
        let finished = matches!(phase, Phase::Succeeded | Phase::Failed);
        let refuse = |what: &str| Error::FailedPrecondition(format!("the rollout has {}; {what}", phase.as_str()));
        let (answer, step) = match command {
            Command::Pause if finished => (Err(refuse("there is nothing to pause")), Step::Stay),
            Command::Pause if phase == Phase::Paused => (Ok(()), Step::Stay),
            Command::Pause => {
                self.pause("paused by an operator");
                (Ok(()), Step::Enter(Phase::Paused))
            }
            Command::Resume if finished => (Err(refuse("put the route again to start a new rollout")), Step::Stay),
            Command::Resume if phase == Phase::Progressing => (Ok(()), Step::Stay),
            Command::Resume => {
                let step = self.status.lock().step;
                if !self.set_canary_weight(self.policy.step_weights[step], step) {
                    let _ = reply.send(Err(gone()));
                    return Step::RouteGone;
                }
                self.status.lock().reason = None;
                self.step_started = Instant::now();
                self.event(
                    EventKind::Resumed,
                    format!("resumed at step {} (canary {} %)", step + 1, self.policy.step_weights[step]),
                );
                self.publish_phase(Phase::Progressing);
                (Ok(()), Step::Enter(Phase::Progressing))
            }
            Command::Promote if phase == Phase::Succeeded => (Ok(()), Step::Stay),
            Command::Promote => match self.promote(Promotion::Operator) {
                Some(next) => (Ok(()), Step::Enter(next)),
                None => (Err(gone()), Step::RouteGone),
            },
            Command::Rollback if phase == Phase::Failed => (Ok(()), Step::Stay),
            Command::Rollback => match self.roll_back(Trigger::Operator) {
                Some(next) => (Ok(()), Step::Enter(next)),
                None => (Err(gone()), Step::RouteGone),
            },
            Command::SetWeights(weights) => {
                let changes: Vec<(u64, u32, bool)> = weights.iter().map(|&(v, w)| (v, w, false)).collect();
                if !self.routes.update(&self.model, self.generation, |r| r.with_weights(&changes)) {
                    let _ = reply.send(Err(gone()));
                    return Step::RouteGone;
                }
                let canary = weights.iter().find(|w| w.0 == self.policy.canary).map_or(0, |w| w.1);
                self.status.lock().canary_weight = canary;
                self.event(EventKind::Weights, format!("an operator set the weights to {}", describe(&weights)));
                if finished {
                    self.publish_phase(phase);
                    (Ok(()), Step::Stay)
                } else {
                    self.pause("weights set by an operator");
                    (Ok(()), Step::Enter(Phase::Paused))
                }
            }
        };
        let _ = reply.send(answer);
        step
    }

    /// A sequential test crossed its bound: rolls back, unless the baseline
    /// breaks the same SLO in its window or, for latency, has a request
    /// overdue now (then the test starts over).
    fn sequential_verdict(&mut self) -> ControlFlow<Next> {
        let canary = self.canary.clone();
        let Some(sequential) = canary.sequential.as_ref() else { return ControlFlow::Continue(()) };
        let baseline = self.baseline.window.summary(Instant::now());
        let counts = baseline.requests >= self.policy.min_requests;
        // The canary's slow requests count the moment they pass the threshold, the baseline's
        // window only when they end: a stall of the whole machine would show on the canary
        // first. So a baseline with a request overdue right now breaks the latency SLO too.
        let baseline_over_latency = match (self.policy.max_p99_latency, baseline.p99()) {
            (Some(max), p99) => (counts && p99.is_some_and(|p99| p99 > max)) || self.baseline.stalled_for(max),
            (None, _) => false,
        };
        let tests = [
            (
                Breach::ErrorRate,
                sequential.errors.as_ref(),
                counts && baseline.error_rate() > self.policy.max_error_rate,
            ),
            (Breach::Latency, sequential.latency.as_ref().map(|(_, t)| t), baseline_over_latency),
        ];
        for (breach, test, baseline_over) in tests {
            let Some(test) = test.filter(|t| t.crossed()) else { continue };
            if baseline_over {
                tracing::warn!(
                    target: "modelgate::rollout",
                    model = %self.model,
                    canary = self.policy.canary,
                    slo = breach.as_str(),
                    "the canary's sequential test crossed its bound, but the baseline breaks the same SLO: not the canary's fault, the test starts over"
                );
                test.reset();
                continue;
            }
            return ControlFlow::Break(self.roll_back(Trigger::Sequential(breach)));
        }
        ControlFlow::Continue(())
    }

    /// Applies the policy's drift gate: rolls back a drifting canary under `rollback`
    /// (breaking with the next state), else continues with whether stepping up is held.
    /// A hold and its end are events.
    fn drift_gate(&mut self) -> ControlFlow<Next, bool> {
        let drifted = self.policy.drift != DriftGate::Ignore && self.routes.drifted(&self.model, self.policy.canary);
        if drifted && self.policy.drift == DriftGate::Rollback {
            return ControlFlow::Break(self.roll_back(Trigger::Drift));
        }
        if drifted != self.drift_held {
            self.drift_held = drifted;
            let message = if drifted {
                format!("step up held: the control plane says canary {} drifts", self.policy.canary)
            } else {
                // Like a resume: the step gets a fresh interval without drift.
                self.step_started = Instant::now();
                format!("canary {} no longer drifts: stepping up resumes after a fresh interval", self.policy.canary)
            };
            tracing::warn!(target: "modelgate::rollout", model = %self.model, canary = self.policy.canary, "{message}");
            self.event(EventKind::DriftHold, message);
        }
        ControlFlow::Continue(drifted)
    }

    /// Applies the policy's accuracy gate (`min_accuracy_delta`): the canary
    /// breaches when the always-valid 95 % interval of its accuracy minus the
    /// baseline's (see `feedback::ab`) lies wholly below the delta, both arms
    /// having their minimum samples. Rolls back under `rollback`, else
    /// continues with whether stepping up is held; a hold and its end are events.
    fn quality_gate(&mut self) -> ControlFlow<Next, bool> {
        let Some(delta) = self.policy.min_accuracy_delta else {
            return ControlFlow::Continue(false);
        };
        let breach = self.accuracy_breach(delta);
        if breach.is_some() && self.policy.on_quality_breach == QualityGate::Rollback {
            self.quality_breach = breach;
            return ControlFlow::Break(self.roll_back(Trigger::Accuracy));
        }
        if breach.is_some() != self.quality_held {
            self.quality_held = breach.is_some();
            let message = match breach {
                Some(why) => format!("step up held: {why}"),
                None => {
                    self.step_started = Instant::now();
                    format!(
                        "canary {} is no longer less accurate than min_accuracy_delta allows: stepping up resumes after a fresh interval",
                        self.policy.canary
                    )
                }
            };
            tracing::warn!(target: "modelgate::rollout", model = %self.model, canary = self.policy.canary, "{message}");
            self.event(EventKind::QualityHold, message);
        }
        ControlFlow::Continue(self.quality_held)
    }

    /// Why the canary breaches `min_accuracy_delta`, or `None`.
    fn accuracy_breach(&self, delta: f64) -> Option<String> {
        let route = self.routes.get(&self.model).filter(|r| r.generation == self.generation)?;
        let result = route.feedback.as_ref()?.ab(self.policy.baseline);
        if result.metric != Some(Metric::Accuracy) || result.arms.iter().any(|a| a.n < MIN_SAMPLES) {
            return None;
        }
        let canary = result.arms.iter().find(|a| a.version == self.policy.canary)?;
        let comparison = canary.comparison.as_ref()?;
        let [low, high] = comparison.sequential_ci;
        (high < delta).then(|| {
            format!(
                "canary {} accuracy minus baseline {}'s is {:.4} (always-valid 95 % interval [{low:.4}, {high:.4}], {} labelled answers), below min_accuracy_delta {delta}",
                self.policy.canary, self.policy.baseline, comparison.difference, canary.n
            )
        })
    }

    /// Runs one check; after `threshold` failed ones in a row, rolls the
    /// canary back and breaks with the state that follows.
    fn check_and_protect(&mut self) -> ControlFlow<Next, Verdict> {
        let verdict = self.check();
        if let Verdict::Fail(breach) = verdict
            && self.status.lock().failed_checks >= self.policy.threshold
        {
            return ControlFlow::Break(self.roll_back(Trigger::Slo(breach)));
        }
        ControlFlow::Continue(verdict)
    }

    /// Runs one check and records it.
    fn check(&mut self) -> Verdict {
        let now = Instant::now();
        let canary = self.canary.window.summary(now);
        let baseline = self.baseline.window.summary(now);
        let verdict = judge(&self.policy, &canary, &baseline);
        crate::metrics::rollout_check(&self.model, self.policy.canary, verdict.as_str());
        let mut status = self.status.lock();
        match verdict {
            Verdict::Fail(_) => status.failed_checks += 1,
            Verdict::Pass => status.failed_checks = 0,
            Verdict::NoData | Verdict::Inconclusive(_) => {}
        }
        if let Verdict::Fail(breach) = verdict {
            tracing::warn!(
                target: "modelgate::rollout",
                model = %self.model,
                canary = self.policy.canary,
                slo = breach.as_str(),
                failed_checks = status.failed_checks,
                threshold = self.policy.threshold,
                error_rate = canary.error_rate(),
                p99_ms = canary.p99().map(|d| d.as_secs_f64() * 1000.0),
                "canary check failed"
            );
        }
        status.last_check =
            Some(Check { verdict, canary: WindowStats::from(&canary), baseline: WindowStats::from(&baseline) });
        verdict
    }

    /// Gives the canary `weight` and the baseline the rest, in the route this
    /// analyzer watches; false when the route was replaced meanwhile.
    fn route_canary(&self, weight: u32, canary_failed: bool) -> bool {
        let (canary, baseline) = (self.policy.canary, self.policy.baseline);
        let changes = [(canary, weight, canary_failed), (baseline, 100 - weight, false)];
        self.routes.update(&self.model, self.generation, |r| r.with_weights(&changes))
    }

    fn set_canary_weight(&mut self, weight: u32, step: usize) -> bool {
        if !self.route_canary(weight, false) {
            return false;
        }
        let state = {
            let mut status = self.status.lock();
            status.step = step;
            status.canary_weight = weight;
            status.state
        };
        self.step_started = Instant::now();
        crate::metrics::rollout_state(&self.model, self.policy.canary, state.as_str(), weight);
        true
    }

    fn pause(&mut self, reason: &str) {
        self.status.lock().reason = Some(reason.to_owned());
        self.event(EventKind::Paused, reason.to_owned());
        self.publish_phase(Phase::Paused);
    }

    /// Canary to 0 % and marked failed: its arm is retired with the mark
    /// (`Routes::update`), and its requests still running are answered by the
    /// baseline, or by the canary if it is first.
    fn roll_back(&mut self, trigger: Trigger) -> Next {
        let (canary, baseline) = (self.policy.canary, self.policy.baseline);
        if !self.route_canary(0, true) {
            return None;
        }
        let reason = trigger.as_str();
        crate::metrics::rollout_rollback(&self.model, canary, reason);
        let message = {
            let mut status = self.status.lock();
            status.canary_weight = 0;
            status.reason = Some(format!("rolled back: {reason}"));
            match (&status.last_check, trigger) {
                (_, Trigger::Operator) => {
                    format!("an operator rolled canary {canary} back; baseline {baseline} at 100 %")
                }
                (Some(check), Trigger::Slo(_)) => format!(
                    "canary {canary} broke its {reason} SLO in {} consecutive checks (error rate {:.4}, p99 {} over {} requests); baseline {baseline} at 100 %",
                    status.failed_checks,
                    check.canary.error_rate,
                    check.canary.p99_ms.map_or_else(|| "n/a".to_owned(), |ms| format!("{ms:.1} ms")),
                    check.canary.requests,
                ),
                (None, Trigger::Slo(_)) => {
                    format!("canary {canary} rolled back ({reason}); baseline {baseline} at 100 %")
                }
                (_, Trigger::Accuracy) => format!(
                    "{}; policy on_quality_breach = \"rollback\": baseline {baseline} at 100 %",
                    self.quality_breach.clone().unwrap_or_default()
                ),
                (_, Trigger::Drift) => format!(
                    "canary {canary} drifts against its reference or against baseline {baseline} (control plane's drift evaluation; policy drift = \"rollback\"); baseline {baseline} at 100 %"
                ),
                (_, Trigger::Sequential(breach)) => {
                    let sequential = self.canary.sequential.as_ref();
                    let test = match breach {
                        Breach::ErrorRate => sequential.and_then(|s| s.errors.as_ref()),
                        Breach::Latency => sequential.and_then(|s| s.latency.as_ref().map(|(_, t)| t)),
                    };
                    let window = self.canary.window.summary(Instant::now());
                    format!(
                        "canary {canary} broke its {reason} SLO: its sequential test crossed its bound (log-likelihood ratio {:.1} of {:.1}; its window so far: {} answered requests, {} failures; a slow request counts when it passes the threshold); baseline {baseline} at 100 %",
                        test.map_or(0.0, |t| t.ratio()),
                        test.map_or(0.0, |t| t.upper()),
                        window.requests,
                        window.errors,
                    )
                }
            }
        };
        tracing::warn!(target: "modelgate::rollout", model = %self.model, canary, reason, "{message}");
        self.event(EventKind::RolledBack, message);
        self.publish_phase(Phase::Failed);
        Some(Phase::Failed)
    }

    /// Canary to 100 %.
    fn promote(&mut self, by: Promotion) -> Next {
        let canary = self.policy.canary;
        if !self.route_canary(100, false) {
            return None;
        }
        let how = by.as_str();
        crate::metrics::rollout_promotion(&self.model, canary, how);
        {
            let mut status = self.status.lock();
            status.canary_weight = 100;
            status.reason = None;
        }
        let message = match by {
            Promotion::Operator => format!("an operator promoted canary {canary} to 100 %"),
            Promotion::Automatic => format!("canary {canary} passed every step and is promoted to 100 %"),
        };
        tracing::info!(target: "modelgate::rollout", model = %self.model, canary, how, "{message}");
        self.event(EventKind::Promoted, message);
        self.publish_phase(Phase::Succeeded);
        Some(Phase::Succeeded)
    }

    fn publish_phase(&self, phase: Phase) {
        let weight = {
            let mut status = self.status.lock();
            status.state = phase;
            status.canary_weight
        };
        crate::metrics::rollout_state(&self.model, self.policy.canary, phase.as_str(), weight);
    }

    fn event(&self, kind: EventKind, message: String) {
        // Rollbacks and promotions log at their own level, with their own fields.
        if !matches!(kind, EventKind::RolledBack | EventKind::Promoted) {
            tracing::info!(target: "modelgate::rollout", model = %self.model, canary = self.policy.canary, ?kind, "{message}");
        }
        let at_unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let mut status = self.status.lock();
        if status.events.len() == EVENTS_KEPT {
            status.events.pop_front();
        }
        status.events.push_back(Event { at_unix_ms, kind, message });
    }
}

/// Resolves when the canary's sequential tests ring; never without them.
async fn crossed(canary: &Arm) {
    match &canary.sequential {
        Some(sequential) => sequential.crossed.notified().await,
        None => std::future::pending().await,
    }
}

fn describe(weights: &[(u64, u32)]) -> String {
    weights.iter().map(|(v, w)| format!("version {v}: {w} %")).collect::<Vec<_>>().join(", ")
}

/// The answer when the route was replaced under a command (the controller
/// stops an analyzer before it replaces its route, so this is a race lost).
fn gone() -> Error {
    Error::Unavailable("the route was replaced while the command ran; try again".into())
}

#[cfg(test)]
mod tests;
