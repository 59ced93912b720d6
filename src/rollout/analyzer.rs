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
//! A check reads the canary's and the baseline's sliding windows. With fewer
//! than `min_requests` canary requests it has no verdict, and since only a
//! passing check steps up, a canary without enough traffic waits at its step. A canary over an
//! SLO fails the check unless the baseline, with enough requests of its own,
//! is over the same SLO in the same window: then the trouble is not the
//! canary's (an overloaded machine) and the check is inconclusive, which
//! neither fails nor passes it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior};

use super::policy::Policy;
use super::status::{Check, Event, Status, WindowStats};
use super::window::Summary;
use crate::error::Error;
use crate::routing::{Arm, Routes};

/// Events a rollout keeps for the admin API.
const EVENTS_KEPT: usize = 64;

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
}

/// How a state ends: the next state, or `None` when the route is gone.
type Next = Option<Phase>;

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
        };
        Some((analyzer, sender, status))
    }

    /// Runs the state machine.
    pub async fn run(mut self) {
        let first = self.policy.step_weights[0];
        self.event("started", format!("canary {} at {first} %", self.policy.canary));
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
        loop {
            tokio::select! {
                _ = ticks.tick() => {
                    let verdict = self.check();
                    if let Verdict::Fail(breach) = verdict
                        && self.status.lock().failed_checks >= self.policy.threshold
                    {
                        return self.roll_back(breach.as_str());
                    }
                    if verdict == Verdict::Pass && self.step_started.elapsed() >= self.policy.interval {
                        let step = self.status.lock().step + 1;
                        if step == self.policy.step_weights.len() {
                            return self.promote("automatic");
                        }
                        let weight = self.policy.step_weights[step];
                        if !self.set_canary_weight(weight, step) {
                            return None;
                        }
                        let steps = self.policy.step_weights.len();
                        self.event("step", format!("step {} of {steps}: canary at {weight} %", step + 1));
                    }
                }
                request = self.commands.recv() => {
                    let (command, reply) = request?;
                    if let Some(next) = self.command(Phase::Progressing, command, reply) {
                        return next;
                    }
                }
            }
        }
    }

    /// Checking (and rolling back on breach), not stepping up.
    async fn paused(&mut self) -> Next {
        let mut ticks = self.ticks();
        loop {
            tokio::select! {
                _ = ticks.tick() => {
                    if let Verdict::Fail(breach) = self.check()
                        && self.status.lock().failed_checks >= self.policy.threshold
                    {
                        return self.roll_back(breach.as_str());
                    }
                }
                request = self.commands.recv() => {
                    let (command, reply) = request?;
                    if let Some(next) = self.command(Phase::Paused, command, reply) {
                        return next;
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
            if let Some(next) = self.command(phase, command, reply) {
                return next;
            }
        }
    }

    /// Applies an operator command in `phase`. `Some(next)` leaves the state
    /// (`Some(None)`: the route is gone); `None` stays.
    fn command(&mut self, phase: Phase, command: Command, reply: oneshot::Sender<Result<(), Error>>) -> Option<Next> {
        let finished = matches!(phase, Phase::Succeeded | Phase::Failed);
        let refuse = |what: &str| Error::FailedPrecondition(format!("the rollout has {}; {what}", phase.as_str()));
        let (answer, next) = match command {
            Command::Pause if finished => (Err(refuse("there is nothing to pause")), None),
            Command::Pause if phase == Phase::Paused => (Ok(()), None),
            Command::Pause => {
                self.pause("paused by an operator");
                (Ok(()), Some(Some(Phase::Paused)))
            }
            Command::Resume if finished => (Err(refuse("put the route again to start a new rollout")), None),
            Command::Resume if phase == Phase::Progressing => (Ok(()), None),
            Command::Resume => {
                let step = self.status.lock().step;
                if !self.set_canary_weight(self.policy.step_weights[step], step) {
                    let _ = reply.send(Err(gone()));
                    return Some(None);
                }
                self.status.lock().reason = None;
                self.step_started = Instant::now();
                self.event(
                    "resumed",
                    format!("resumed at step {} (canary {} %)", step + 1, self.policy.step_weights[step]),
                );
                self.publish_phase(Phase::Progressing);
                (Ok(()), Some(Some(Phase::Progressing)))
            }
            Command::Promote if phase == Phase::Succeeded => (Ok(()), None),
            Command::Promote => match self.promote("manual") {
                Some(next) => (Ok(()), Some(Some(next))),
                None => (Err(gone()), Some(None)),
            },
            Command::Rollback if phase == Phase::Failed => (Ok(()), None),
            Command::Rollback => match self.roll_back("manual") {
                Some(next) => (Ok(()), Some(Some(next))),
                None => (Err(gone()), Some(None)),
            },
            Command::SetWeights(weights) => {
                let changes: Vec<(u64, u32, bool)> = weights.iter().map(|&(v, w)| (v, w, false)).collect();
                if !self.routes.update(&self.model, self.generation, |r| r.with_weights(&changes)) {
                    let _ = reply.send(Err(gone()));
                    return Some(None);
                }
                let canary = weights.iter().find(|w| w.0 == self.policy.canary).map_or(0, |w| w.1);
                self.status.lock().canary_weight = canary;
                self.event("weights", format!("an operator set the weights to {}", describe(&weights)));
                if finished {
                    self.publish_phase(phase);
                    (Ok(()), None)
                } else {
                    self.pause("weights set by an operator");
                    (Ok(()), Some(Some(Phase::Paused)))
                }
            }
        };
        let _ = reply.send(answer);
        next
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
        self.event("paused", reason.to_owned());
        self.publish_phase(Phase::Paused);
    }

    /// Canary to 0 % and marked failed. `reason` is the SLO broken or `manual`.
    fn roll_back(&mut self, reason: &'static str) -> Next {
        let (canary, baseline) = (self.policy.canary, self.policy.baseline);
        if !self.route_canary(0, true) {
            return None;
        }
        crate::metrics::rollout_rollback(&self.model, canary, reason);
        let message = {
            let mut status = self.status.lock();
            status.canary_weight = 0;
            status.reason = Some(format!("rolled back: {reason}"));
            match (&status.last_check, reason) {
                (_, "manual") => format!("an operator rolled canary {canary} back; baseline {baseline} at 100 %"),
                (Some(check), _) => format!(
                    "canary {canary} broke its {reason} SLO in {} consecutive checks (error rate {:.4}, p99 {} over {} requests); baseline {baseline} at 100 %",
                    status.failed_checks,
                    check.canary.error_rate,
                    check.canary.p99_ms.map_or_else(|| "n/a".to_owned(), |ms| format!("{ms:.1} ms")),
                    check.canary.requests,
                ),
                (None, _) => format!("canary {canary} rolled back ({reason}); baseline {baseline} at 100 %"),
            }
        };
        tracing::warn!(target: "modelgate::rollout", model = %self.model, canary, reason, "{message}");
        self.event("rolled_back", message);
        self.publish_phase(Phase::Failed);
        Some(Phase::Failed)
    }

    /// Canary to 100 %. `how` is `automatic` or `manual`.
    fn promote(&mut self, how: &'static str) -> Next {
        let canary = self.policy.canary;
        if !self.route_canary(100, false) {
            return None;
        }
        crate::metrics::rollout_promotion(&self.model, canary, how);
        {
            let mut status = self.status.lock();
            status.canary_weight = 100;
            status.reason = None;
        }
        let message = if how == "manual" {
            format!("an operator promoted canary {canary} to 100 %")
        } else {
            format!("canary {canary} passed every step and is promoted to 100 %")
        };
        tracing::info!(target: "modelgate::rollout", model = %self.model, canary, how, "{message}");
        self.event("promoted", message);
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

    fn event(&self, kind: &'static str, message: String) {
        if !matches!(kind, "rolled_back" | "promoted") {
            tracing::info!(target: "modelgate::rollout", model = %self.model, canary = self.policy.canary, kind, "{message}");
        }
        let at_unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let mut status = self.status.lock();
        if status.events.len() == EVENTS_KEPT {
            status.events.pop_front();
        }
        status.events.push_back(Event { at_unix_ms, kind, message });
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
