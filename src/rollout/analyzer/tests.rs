//! The analyzer under paused time: outcomes are recorded straight into the
//! arms' windows and the clock is advanced by hand, so every verdict, step
//! and rollback happens at a known instant.

use std::time::Duration;

use tokio::task::JoinHandle;

use super::super::status::EventKind;
use super::*;
use crate::routing::policy::RolloutSpec;
use crate::routing::window::{Outcome, Window};
use crate::routing::{Route, RouteSpec};

const CHECK: Duration = Duration::from_millis(500);

struct Rig {
    routes: Arc<Routes>,
    commands: mpsc::Sender<Request>,
    status: Arc<Mutex<Status>>,
    canary: Arc<Arm>,
    baseline: Arc<Arm>,
    task: JoinHandle<()>,
}

fn rollout() -> RolloutSpec {
    let mut spec = RolloutSpec::new(2);
    spec.step_weights = vec![10, 50, 100];
    spec.interval = Duration::from_secs(10);
    spec.check_interval = CHECK;
    spec.window = Duration::from_secs(5);
    spec.threshold = 2;
    spec.min_requests = 20;
    spec.max_error_rate = 0.05;
    spec.max_p99_latency = Some(Duration::from_millis(200));
    spec
}

async fn start(rollout: RolloutSpec) -> Rig {
    let spec = RouteSpec::canary_release("m", 1, rollout);
    let valid = spec.validate().unwrap();
    let routes = Arc::new(Routes::default());
    routes.insert(Route::build(&valid, 1));
    let (analyzer, commands, status) = Analyzer::new("m", 1, valid.policy.unwrap(), routes.clone()).unwrap();
    let route = routes.get("m").unwrap();
    let (baseline, canary) = (route.targets[0].arm.clone(), route.targets[1].arm.clone());
    let rig = Rig { routes, commands, status, canary, baseline, task: tokio::spawn(analyzer.run()) };
    // Let the analyzer start its clock at 0.
    settle().await;
    rig
}

impl Rig {
    fn weights(&self) -> (u32, u32) {
        let route = self.routes.get("m").unwrap();
        (route.targets[0].weight, route.targets[1].weight)
    }

    fn state(&self) -> Phase {
        self.status.lock().state
    }

    async fn send(&self, command: Command) -> Result<(), Error> {
        let (reply, answer) = oneshot::channel();
        self.commands.send((command, reply)).await.unwrap();
        answer.await.unwrap()
    }

    /// `n` outcomes now, into the window of `arm`.
    fn feed(arm: &Arm, n: usize, outcome: Outcome) {
        for _ in 0..n {
            arm.window.record(Instant::now(), outcome);
        }
    }

    /// Healthy traffic on both arms for `duration`, one batch per check.
    async fn healthy_for(&self, duration: Duration) {
        let mut left = duration;
        while !left.is_zero() {
            Rig::feed(&self.canary, 20, Outcome::Success(Duration::from_millis(5)));
            Rig::feed(&self.baseline, 20, Outcome::Success(Duration::from_millis(5)));
            let step = left.min(CHECK);
            tokio::time::advance(step).await;
            settle().await;
            left -= step;
        }
    }
}

/// Lets the analyzer run what the clock made due.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

async fn tick() {
    tokio::time::advance(CHECK).await;
    settle().await;
}

#[tokio::test(start_paused = true)]
async fn a_failing_canary_is_rolled_back_at_the_thresholdth_failed_check() {
    let rig = start(rollout()).await;
    assert_eq!(rig.weights(), (90, 10));
    Rig::feed(&rig.canary, 30, Outcome::Failure);
    Rig::feed(&rig.baseline, 300, Outcome::Success(Duration::from_millis(5)));
    tick().await;
    assert_eq!((rig.state(), rig.status.lock().failed_checks), (Phase::Progressing, 1));
    assert_eq!(rig.weights(), (90, 10), "one failed check is tolerated with threshold 2");
    tick().await;
    assert_eq!(rig.state(), Phase::Failed);
    assert_eq!(rig.weights(), (100, 0));
    let route = rig.routes.get("m").unwrap();
    assert!(route.targets[1].failed, "the canary is marked failed");
    let status = rig.status.lock().clone();
    assert_eq!(status.reason.as_deref(), Some("rolled back: error_rate"));
    assert_eq!(status.events.back().unwrap().kind, EventKind::RolledBack);
}

#[tokio::test(start_paused = true)]
async fn a_slow_canary_is_rolled_back_on_latency() {
    let rig = start(rollout()).await;
    Rig::feed(&rig.canary, 40, Outcome::Success(Duration::from_millis(800)));
    Rig::feed(&rig.baseline, 400, Outcome::Success(Duration::from_millis(5)));
    tick().await;
    tick().await;
    assert_eq!(rig.state(), Phase::Failed);
    assert_eq!(rig.status.lock().reason.as_deref(), Some("rolled back: latency"));
    let check = rig.status.lock().last_check.clone().unwrap();
    assert_eq!(check.verdict, Verdict::Fail(Breach::Latency));
    assert!(check.canary.p99_ms.unwrap() > 700.0);
}

#[tokio::test(start_paused = true)]
async fn a_healthy_canary_steps_up_each_interval_and_is_promoted() {
    let rig = start(rollout()).await;
    rig.healthy_for(Duration::from_millis(9_500)).await;
    assert_eq!((rig.state(), rig.weights()), (Phase::Progressing, (90, 10)));
    rig.healthy_for(Duration::from_secs(1)).await;
    assert_eq!(rig.weights(), (50, 50));
    rig.healthy_for(Duration::from_secs(10)).await;
    assert_eq!(rig.weights(), (0, 100));
    assert_eq!(rig.state(), Phase::Progressing, "the last step is held for an interval too");
    rig.healthy_for(Duration::from_secs(10)).await;
    assert_eq!(rig.state(), Phase::Succeeded);
    assert_eq!(rig.weights(), (0, 100));
    let kinds: Vec<EventKind> = rig.status.lock().events.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EventKind::Started, EventKind::Step, EventKind::Step, EventKind::Promoted]);
}

#[tokio::test(start_paused = true)]
async fn too_few_requests_give_no_verdict_either_way() {
    let rig = start(rollout()).await;
    for _ in 0..40 {
        // 10 failures per check: a 100 % error rate, but under min_requests in every window.
        Rig::feed(&rig.canary, 1, Outcome::Failure);
        Rig::feed(&rig.baseline, 50, Outcome::Success(Duration::from_millis(5)));
        tick().await;
    }
    assert_eq!((rig.state(), rig.weights()), (Phase::Progressing, (90, 10)), "no rollback and no step");
    assert_eq!(rig.status.lock().last_check.as_ref().unwrap().verdict, Verdict::NoData);
}

#[tokio::test(start_paused = true)]
async fn a_baseline_as_bad_as_the_canary_makes_checks_inconclusive() {
    let rig = start(rollout()).await;
    for _ in 0..30 {
        Rig::feed(&rig.canary, 10, Outcome::Failure);
        Rig::feed(&rig.canary, 10, Outcome::Success(Duration::from_millis(5)));
        Rig::feed(&rig.baseline, 50, Outcome::Failure);
        Rig::feed(&rig.baseline, 50, Outcome::Success(Duration::from_millis(5)));
        tick().await;
    }
    assert_eq!((rig.state(), rig.weights()), (Phase::Progressing, (90, 10)));
    assert_eq!(rig.status.lock().last_check.as_ref().unwrap().verdict, Verdict::Inconclusive(Breach::ErrorRate));
}

#[tokio::test(start_paused = true)]
async fn pause_stops_promotion_but_not_protection() {
    let rig = start(rollout()).await;
    rig.send(Command::Pause).await.unwrap();
    assert_eq!(rig.state(), Phase::Paused);
    rig.healthy_for(Duration::from_secs(25)).await;
    assert_eq!(rig.weights(), (90, 10), "a paused rollout does not step up");
    Rig::feed(&rig.canary, 100, Outcome::Failure);
    tick().await;
    tick().await;
    assert_eq!((rig.state(), rig.weights()), (Phase::Failed, (100, 0)));
}

#[tokio::test(start_paused = true)]
async fn operator_weights_pause_the_rollout_and_resume_restores_the_step() {
    let rig = start(rollout()).await;
    rig.send(Command::SetWeights(vec![(1, 70), (2, 30)])).await.unwrap();
    assert_eq!((rig.state(), rig.weights()), (Phase::Paused, (70, 30)));
    assert_eq!(rig.status.lock().reason.as_deref(), Some("weights set by an operator"));
    rig.healthy_for(Duration::from_secs(15)).await;
    assert_eq!(rig.weights(), (70, 30), "the analyzer leaves operator weights alone");
    rig.send(Command::Resume).await.unwrap();
    assert_eq!((rig.state(), rig.weights()), (Phase::Progressing, (90, 10)));
    // A fresh interval: no step before 10 s after the resume.
    rig.healthy_for(Duration::from_millis(9_500)).await;
    assert_eq!(rig.weights(), (90, 10));
    rig.healthy_for(Duration::from_secs(1)).await;
    assert_eq!(rig.weights(), (50, 50));
}

#[tokio::test(start_paused = true)]
async fn manual_rollback_and_promote_end_the_rollout_and_are_never_undone() {
    let rig = start(rollout()).await;
    rig.send(Command::Rollback).await.unwrap();
    assert_eq!((rig.state(), rig.weights()), (Phase::Failed, (100, 0)));
    assert_eq!(rig.status.lock().reason.as_deref(), Some("rolled back: manual"));
    rig.healthy_for(Duration::from_secs(30)).await;
    assert_eq!(rig.weights(), (100, 0), "a healthy window does not bring a rolled-back canary back");
    assert!(matches!(rig.send(Command::Pause).await, Err(Error::FailedPrecondition(_))));
    assert!(matches!(rig.send(Command::Resume).await, Err(Error::FailedPrecondition(_))));
    // An operator may override the verdict: promote from failed.
    rig.send(Command::Promote).await.unwrap();
    assert_eq!((rig.state(), rig.weights()), (Phase::Succeeded, (0, 100)));
    assert!(!rig.routes.get("m").unwrap().targets[1].failed);
    Rig::feed(&rig.canary, 500, Outcome::Failure);
    tick().await;
    tick().await;
    tick().await;
    assert_eq!(rig.weights(), (0, 100), "a promoted rollout is the operator's: no automatic rollback");
    rig.send(Command::Rollback).await.unwrap();
    assert_eq!((rig.state(), rig.weights()), (Phase::Failed, (100, 0)));
}

#[tokio::test(start_paused = true)]
async fn a_replaced_route_stops_its_analyzer() {
    let rig = start(rollout()).await;
    let valid = RouteSpec::weighted("m", &[(1, 60), (2, 40)]).validate().unwrap();
    rig.routes.insert(Route::build(&valid, 2));
    let canary = rig.routes.get("m").unwrap().targets[1].arm.clone();
    Rig::feed(&rig.canary, 100, Outcome::Failure);
    Rig::feed(&canary, 100, Outcome::Failure);
    tick().await;
    tick().await;
    settle().await;
    assert_eq!(rig.weights(), (60, 40), "the old analyzer never edits the new route");
    assert!(rig.task.is_finished());
}

#[test]
fn judge_blames_the_canary_only_for_what_the_baseline_does_not_share() {
    let policy = rollout().validate(1).unwrap();
    let window = |ok: usize, failed: usize, latency_ms: u64| {
        let w = Window::new(Duration::from_secs(10), Instant::now());
        for _ in 0..ok {
            w.record(Instant::now(), Outcome::Success(Duration::from_millis(latency_ms)));
        }
        for _ in 0..failed {
            w.record(Instant::now(), Outcome::Failure);
        }
        w.summary(Instant::now())
    };
    let healthy = window(100, 0, 5);
    assert_eq!(judge(&policy, &window(19, 0, 5), &healthy), Verdict::NoData);
    assert_eq!(judge(&policy, &window(96, 4, 5), &healthy), Verdict::Pass);
    assert_eq!(judge(&policy, &window(90, 10, 5), &healthy), Verdict::Fail(Breach::ErrorRate));
    assert_eq!(judge(&policy, &window(90, 10, 5), &window(90, 10, 5)), Verdict::Inconclusive(Breach::ErrorRate));
    // A baseline with too few requests cannot excuse the canary.
    assert_eq!(judge(&policy, &window(90, 10, 5), &window(5, 5, 5)), Verdict::Fail(Breach::ErrorRate));
    assert_eq!(judge(&policy, &window(100, 0, 300), &healthy), Verdict::Fail(Breach::Latency));
    assert_eq!(judge(&policy, &window(100, 0, 300), &window(100, 0, 300)), Verdict::Inconclusive(Breach::Latency));
    let mut no_latency = policy;
    no_latency.max_p99_latency = None;
    assert_eq!(judge(&no_latency, &window(100, 0, 300), &healthy), Verdict::Pass);
}

/// `n` outcomes through the arm, as the request path records them (window
/// and sequential tests).
fn record(arm: &Arm, n: usize, outcome: Result<(), crate::error::Fault>, latency: Duration) {
    for _ in 0..n {
        arm.record(outcome, latency);
    }
}

const FAST: Duration = Duration::from_millis(5);

#[tokio::test(start_paused = true)]
async fn the_sequential_test_rolls_a_failing_canary_back_at_its_third_failure_without_waiting_for_a_check() {
    use crate::error::Fault;
    let rig = start(rollout()).await;
    record(&rig.baseline, 300, Ok(()), FAST);
    // Against a 5 % SLO a failure adds ln(10) and the bound is ln(0.99 / 0.001) = 6.9.
    record(&rig.canary, 2, Err(Fault::Server), FAST);
    settle().await;
    assert_eq!(rig.state(), Phase::Progressing, "two failures are not proof yet");
    record(&rig.canary, 1, Err(Fault::Server), FAST);
    settle().await;
    // No time has passed: no check ran, the test decided.
    assert_eq!((rig.state(), rig.weights()), (Phase::Failed, (100, 0)));
    let status = rig.status.lock().clone();
    assert!(status.last_check.is_none(), "rolled back before the first check");
    assert_eq!(status.reason.as_deref(), Some("rolled back: error_rate"));
    let message = &status.events.back().unwrap().message;
    assert!(message.contains("sequential test crossed its bound"), "{message}");
}

#[tokio::test(start_paused = true)]
async fn the_sequential_test_rolls_a_slow_canary_back_at_its_third_slow_answer() {
    let rig = start(rollout()).await;
    record(&rig.canary, 2, Ok(()), Duration::from_millis(800));
    settle().await;
    assert_eq!(rig.state(), Phase::Progressing);
    record(&rig.canary, 1, Ok(()), Duration::from_millis(800));
    settle().await;
    assert_eq!((rig.state(), rig.weights()), (Phase::Failed, (100, 0)));
    assert_eq!(rig.status.lock().reason.as_deref(), Some("rolled back: latency"));
}

#[tokio::test(start_paused = true)]
async fn the_sequential_test_leaves_a_canary_at_half_its_error_budget_alone() {
    use crate::error::Fault;
    let mut spec = rollout();
    spec.interval = Duration::from_secs(3600);
    let rig = start(spec).await;
    // 2.5 % failures against a 5 % SLO, and 0.5 % of answers over the
    // latency threshold (half of what a p99 allows), for 60 s at 2,000
    // canary requests a second: 120,000 outcomes, spread evenly.
    for _ in 0..120 {
        for i in 0..1000 {
            let (outcome, latency) = match i {
                _ if i % 40 == 7 => (Err(Fault::Server), FAST),
                _ if i % 200 == 3 => (Ok(()), Duration::from_millis(300)),
                _ => (Ok(()), FAST),
            };
            rig.canary.record(outcome, latency);
        }
        record(&rig.baseline, 1000, Ok(()), FAST);
        tokio::time::advance(CHECK).await;
        settle().await;
        assert_eq!(rig.state(), Phase::Progressing, "{:?}", rig.status.lock().events);
    }
    assert_eq!(rig.weights(), (90, 10));
}

#[tokio::test(start_paused = true)]
async fn a_baseline_breaking_the_same_slo_makes_the_sequential_test_start_over() {
    use crate::error::Fault;
    let rig = start(rollout()).await;
    record(&rig.baseline, 50, Err(Fault::Server), FAST);
    record(&rig.baseline, 50, Ok(()), FAST);
    record(&rig.canary, 3, Err(Fault::Server), FAST);
    settle().await;
    assert_eq!((rig.state(), rig.weights()), (Phase::Progressing, (90, 10)));
    let test = rig.canary.sequential.as_ref().unwrap().errors.as_ref().unwrap();
    assert!(!test.crossed(), "the test starts over");
}

#[tokio::test(start_paused = true)]
async fn a_paused_rollout_is_still_rolled_back_by_the_sequential_test() {
    use crate::error::Fault;
    let rig = start(rollout()).await;
    rig.send(Command::Pause).await.unwrap();
    record(&rig.canary, 3, Err(Fault::Server), FAST);
    settle().await;
    assert_eq!((rig.state(), rig.weights()), (Phase::Failed, (100, 0)));
}

#[tokio::test(start_paused = true)]
async fn without_the_sequential_test_only_the_checks_roll_back() {
    use crate::error::Fault;
    let mut spec = rollout();
    spec.sequential = false;
    let rig = start(spec).await;
    assert!(rig.canary.sequential.is_none());
    record(&rig.canary, 30, Err(Fault::Server), FAST);
    settle().await;
    assert_eq!(rig.state(), Phase::Progressing);
    tick().await;
    tick().await;
    assert_eq!(rig.state(), Phase::Failed);
}

#[tokio::test(start_paused = true)]
async fn a_drifting_canary_is_held_at_its_step_until_it_stops_drifting() {
    let rig = start(rollout()).await;
    rig.routes.set_drifted("m", 2, true);
    rig.healthy_for(Duration::from_secs(25)).await;
    assert_eq!((rig.state(), rig.weights()), (Phase::Progressing, (90, 10)), "held at the first step");
    let kinds: Vec<EventKind> = rig.status.lock().events.iter().map(|e| e.kind).collect();
    assert_eq!(kinds.iter().filter(|k| **k == EventKind::DriftHold).count(), 1, "{kinds:?}");
    // Drift on another version (the baseline) holds nothing.
    rig.routes.set_drifted("m", 2, false);
    rig.routes.set_drifted("m", 1, true);
    rig.healthy_for(Duration::from_secs(9)).await;
    assert_eq!(rig.weights(), (90, 10), "a fresh interval at the step once the drift ends");
    rig.healthy_for(Duration::from_secs(2)).await;
    assert_eq!(rig.weights(), (50, 50), "stepping up resumed");
    rig.healthy_for(Duration::from_secs(22)).await;
    assert_eq!(rig.state(), Phase::Succeeded);
}

#[tokio::test(start_paused = true)]
async fn a_drifting_canary_is_rolled_back_under_drift_rollback_and_ignored_under_ignore() {
    let mut spec = rollout();
    spec.drift = crate::routing::DriftGate::Rollback;
    let rig = start(spec).await;
    rig.healthy_for(Duration::from_secs(1)).await;
    rig.routes.set_drifted("m", 2, true);
    rig.healthy_for(Duration::from_secs(1)).await;
    assert_eq!((rig.state(), rig.weights()), (Phase::Failed, (100, 0)));
    let last = rig.status.lock().events.back().unwrap().message.clone();
    assert!(last.contains("drifts"), "{last}");

    let mut spec = rollout();
    spec.drift = crate::routing::DriftGate::Ignore;
    let rig = start(spec).await;
    rig.routes.set_drifted("m", 2, true);
    rig.healthy_for(Duration::from_secs(31)).await;
    assert_eq!(rig.state(), Phase::Succeeded, "drift ignored");
}
