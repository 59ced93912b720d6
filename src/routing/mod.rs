//! Traffic routing: a public model name maps to target versions with weights,
//! header rules, a sticky key and a shadow copy.
//!
//! - `spec.rs`: the route as written (config and admin JSON) and its checks.
//! - `table.rs`: the route as the request path reads it, and the pick.
//! - `arm.rs`: per-version run-time state (outcome window, in-flight count).
//! - `shadow.rs`: shadow copies and the comparison of their answers.
//! - `window.rs`: lock-free sliding windows of per-version outcomes.
//! - `sprt.rs`: per-request sequential tests of a canary's outcomes.
//! - `overdue.rs`: counting canary requests slow as they pass the latency
//!   threshold, without a timer per request.
//! - `retry.rs`: the budget of retries of canary faults on the baseline.
//! - `hedge.rs`: hedging of slow canary requests on the baseline.
//! - `policy.rs`: the rollout policy as written, and its checks (the
//!   `rollout` module runs it).
//! - `feedback_spec.rs`: the feedback section as written, and its checks
//!   (the `feedback` module keeps the predictions and their quality).
//!
//! The table of routes is one immutable snapshot behind `ArcSwap`: the
//! request path does one `load` and a map lookup, and takes no lock. Writers
//! (the rollout controller and analyzers) build a new table and swap it in.

mod arm;
pub mod feedback_spec;
mod hedge;
mod overdue;
pub mod policy;
pub mod random;
mod retry;
mod shadow;
pub mod spec;
pub mod sprt;
mod table;
pub mod window;

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

pub use arm::Arm;
pub use feedback_spec::FeedbackSpec;
pub use hedge::CanaryHedge;
pub use policy::{DriftGate, Hedging, Policy, PolicyError, QualityGate, RolloutSpec};
pub use retry::{CanaryRetry, RetryBudget};
pub use shadow::Shadow;
pub use spec::{RouteError, RouteSpec, RoutesError, RuleSpec, ShadowSpec, TargetSpec, ValidRoute, validate_all};
pub use sprt::Sequential;
pub use table::{Route, Target};
pub use window::{Outcome, Summary, Window};

/// Every route, by public model name.
#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    /// Routes by model name.
    pub routes: HashMap<String, Arc<Route>>,
}

/// The route table as the request path and its writers share it.
#[derive(Debug, Default)]
pub struct Routes {
    table: ArcSwap<RouteTable>,
    /// The control plane's latest drift verdict on each served version (public model name,
    /// version) it has one for: rollouts hold or roll back a drifting canary (policy `drift`),
    /// and the admin API's route status shows it. Set by the sync follower; read once per
    /// rollout check and status, never on the request path.
    drift: parking_lot::RwLock<HashMap<(String, u64), DriftMark>>,
}

/// The control plane's latest drift verdict on one served version, as the route status shows it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct DriftMark {
    /// Whether the version drifts (against its reference, or a canary against the stable version).
    pub drifted: bool,
    /// Drifted features / features with a verdict.
    pub share: f64,
    /// When it was evaluated, milliseconds since the Unix epoch (0: not known).
    pub evaluated_ms: i64,
    /// The feature furthest past its bound ([`DriftMark::new`] says how they are ranked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worst: Option<WorstFeature>,
}

/// One feature's verdict.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct WorstFeature {
    /// Its name (`INPUT0[3]`, an output, ...).
    pub feature: String,
    /// The statistic (`ks`, `wasserstein`, ...).
    pub stat: &'static str,
    /// Its value.
    pub value: f64,
    /// The threshold it was held to (α for the tests `ks` and `chi_squared`).
    pub threshold: f64,
    /// Whether it drifted.
    pub drifted: bool,
}

impl DriftMark {
    /// The mark of `status`. The worst feature is a drifted one if any, then the one with the
    /// largest statistic relative to its bound: value / threshold for distances, the value for
    /// the tests (whose threshold bounds the p-value, which the status does not carry).
    pub fn new(status: &modelgate_registry::sync::DriftStatus) -> DriftMark {
        let score = |f: &modelgate_registry::sync::FeatureDrift| {
            let relative = if f.stat.is_test() || f.threshold <= 0.0 { f.value } else { f.value / f.threshold };
            (f.drifted, if relative.is_finite() { relative } else { f64::MAX })
        };
        let worst = status
            .features
            .iter()
            .max_by(|(_, a), (_, b)| {
                let (a, b) = (score(a), score(b));
                a.0.cmp(&b.0).then(a.1.total_cmp(&b.1))
            })
            .map(|(name, f)| WorstFeature {
                feature: name.clone(),
                stat: f.stat.as_str(),
                value: f.value,
                threshold: f.threshold,
                drifted: f.drifted,
            });
        DriftMark { drifted: status.drifted, share: status.share, evaluated_ms: status.evaluated_ms, worst }
    }
}

impl Routes {
    /// Records whether a served version drifts, without the details of [`Routes::set_drift`].
    pub fn set_drifted(&self, model: &str, version: u64, drifted: bool) {
        let mark = drifted.then_some(DriftMark { drifted, share: 0.0, evaluated_ms: 0, worst: None });
        self.set_drift(model, version, mark);
    }

    /// Records the control plane's drift verdict on a served version (`None`: it has none).
    pub fn set_drift(&self, model: &str, version: u64, mark: Option<DriftMark>) {
        let key = (model.to_owned(), version);
        let mut marks = self.drift.write();
        match mark {
            Some(mark) => marks.insert(key, mark),
            None => marks.remove(&key),
        };
    }

    /// Whether the control plane's latest evaluation says `version` of `model` drifted.
    pub fn drifted(&self, model: &str, version: u64) -> bool {
        self.drift.read().get(&(model.to_owned(), version)).is_some_and(|m| m.drifted)
    }

    /// The control plane's latest drift verdict on `version` of `model`, if it has one.
    pub fn drift(&self, model: &str, version: u64) -> Option<DriftMark> {
        self.drift.read().get(&(model.to_owned(), version)).cloned()
    }

    /// The route of `model`, if it has one.
    pub fn get(&self, model: &str) -> Option<Arc<Route>> {
        self.table.load().routes.get(model).cloned()
    }

    /// The current table.
    pub fn snapshot(&self) -> Arc<RouteTable> {
        self.table.load_full()
    }

    /// Puts `route` in the table, replacing the route of its model.
    pub fn insert(&self, route: Route) {
        let route = Arc::new(route);
        let previous = self.table.rcu(|table| {
            let mut next = RouteTable::clone(table);
            next.routes.insert(route.model.clone(), route.clone());
            next
        });
        publish_weights(previous.routes.get(&route.model).map(|r| &**r), Some(&route));
    }

    /// Removes the route of `model`; its weight gauges drop to 0.
    pub fn remove(&self, model: &str) -> Option<Arc<Route>> {
        let previous = self.table.rcu(|table| {
            let mut next = RouteTable::clone(table);
            next.routes.remove(model);
            next
        });
        let removed = previous.routes.get(model).cloned();
        publish_weights(removed.as_deref(), None);
        removed
    }

    /// Replaces the route of `model` by `edit(route)`, but only while it is
    /// generation `generation`; `false` when the route is gone or was
    /// replaced (its rollout then has nothing left to steer).
    pub fn update(&self, model: &str, generation: u64, edit: impl Fn(&Route) -> Route) -> bool {
        let mut applied = None;
        self.table.rcu(|table| match table.routes.get(model) {
            Some(route) if route.generation == generation => {
                let edited = Arc::new(edit(route));
                applied = Some(edited.clone());
                let mut next = RouteTable::clone(table);
                next.routes.insert(model.to_owned(), edited);
                Arc::new(next)
            }
            _ => {
                applied = None;
                table.clone()
            }
        });
        match applied {
            Some(route) => {
                // A target marked failed (a rollout rolled it back) has its arm retired, so its
                // running requests are rescued on the baseline; one cleared again (a promote, an
                // operator's weights) serves on its own again.
                for target in &route.targets {
                    if target.failed {
                        target.arm.retire();
                    } else {
                        target.arm.reinstate();
                    }
                }
                publish_weights(None, Some(&route));
                true
            }
            None => false,
        }
    }

    /// Whether a route sends `model` version `version` any traffic: a
    /// weight, a header rule or a shadow copy.
    pub fn serves(&self, model: &str, version: u64) -> bool {
        self.get(model).is_some_and(|route| {
            route.target(version).is_some_and(|t| t.weight > 0 || !route.spec.rules.is_empty())
                || route.shadow.as_ref().is_some_and(|s| s.spec.version == version)
        })
    }
}

/// Publishes the weight gauges of a change from `previous` to `next`: the
/// versions `next` no longer routes to drop to 0 (a replaced route's gauges
/// would otherwise keep their last weight), then `next`'s weights.
fn publish_weights(previous: Option<&Route>, next: Option<&Route>) {
    let kept = |version: u64| next.is_some_and(|n| n.target(version).is_some());
    for target in previous.iter().flat_map(|p| &p.targets).filter(|t| !kept(t.version)) {
        target.arm.set_weight(0);
    }
    for target in next.iter().flat_map(|n| &n.targets) {
        target.arm.set_weight(target.weight);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(generation: u64, weights: &[(u64, u32)]) -> Route {
        Route::build(&RouteSpec::weighted("m", weights).validate().unwrap(), generation)
    }

    #[tokio::test]
    async fn updates_apply_only_to_the_generation_they_were_meant_for() {
        let routes = Routes::default();
        assert!(routes.get("m").is_none());
        routes.insert(route(1, &[(1, 90), (2, 10)]));
        assert!(routes.update("m", 1, |r| r.with_weights(&[(1, 100, false), (2, 0, true)])));
        assert_eq!(routes.get("m").unwrap().targets[1].weight, 0);
        routes.insert(route(2, &[(1, 50), (2, 50)]));
        assert!(!routes.update("m", 1, |r| r.with_weights(&[(1, 0, false)])));
        assert_eq!(routes.get("m").unwrap().targets[0].weight, 50);
        assert!(routes.serves("m", 2));
        assert!(!routes.serves("m", 3));
        assert!(routes.remove("m").is_some());
        assert!(!routes.update("m", 2, |r| r.clone()));
        assert!(!routes.serves("m", 2));
    }

    #[test]
    fn a_drift_mark_names_a_drifted_feature_before_a_nearer_undrifted_one() {
        use modelgate_registry::sync::{DriftStatus, FeatureDrift};
        use modelgate_sketch::Stat;
        let feature = |stat, value, threshold, drifted| FeatureDrift { stat, value, threshold, drifted };
        let status = DriftStatus {
            evaluated_ms: 7,
            span_seconds: 60,
            rows: 1000,
            drifted: true,
            share: 0.5,
            features: [
                // Far past its bound relatively, but not drifted: never worse than a drifted one.
                ("a".to_owned(), feature(Stat::Wasserstein, 0.09, 0.1, false)),
                ("b".to_owned(), feature(Stat::Wasserstein, 0.12, 0.1, true)),
                ("c".to_owned(), feature(Stat::Wasserstein, 0.30, 0.1, true)),
                ("d".to_owned(), feature(Stat::Ks, 0.9, 0.05, false)),
            ]
            .into(),
        };
        let mark = DriftMark::new(&status);
        let worst = mark.worst.as_ref().expect("features with verdicts");
        assert_eq!((worst.feature.as_str(), worst.stat, worst.drifted), ("c", "wasserstein", true));
        assert_eq!((mark.drifted, mark.evaluated_ms), (true, 7));

        let routes = Routes::default();
        routes.set_drift("m", 2, Some(mark.clone()));
        assert!(routes.drifted("m", 2) && !routes.drifted("m", 1));
        assert_eq!(routes.drift("m", 2), Some(mark));
        routes.set_drift("m", 2, None);
        assert!(!routes.drifted("m", 2) && routes.drift("m", 2).is_none());
    }
}
