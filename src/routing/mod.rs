//! Traffic routing: a public model name maps to target versions with weights,
//! header rules, a sticky key and a shadow copy.
//!
//! - `spec.rs`: the route as written (config and admin JSON) and its checks.
//! - `table.rs`: the route as the request path reads it, and the pick.
//! - `arm.rs`: per-version run-time state (outcome window, in-flight count).
//! - `shadow.rs`: shadow copies and the comparison of their answers.
//! - `window.rs`: lock-free sliding windows of per-version outcomes.
//! - `sprt.rs`: per-request sequential tests of a canary's outcomes.
//! - `retry.rs`: the budget of retries of canary faults on the baseline.
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
pub use policy::{DriftGate, Policy, PolicyError, QualityGate, RolloutSpec};
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
    /// Versions (public model name, version) the control plane's latest drift evaluation
    /// says drifted: rollouts hold or roll back a drifting canary (policy `drift`). Set by
    /// the sync follower; read once per rollout check, never on the request path.
    drifted: parking_lot::RwLock<std::collections::HashSet<(String, u64)>>,
}

impl Routes {
    /// Records the control plane's drift verdict on a served version.
    pub fn set_drifted(&self, model: &str, version: u64, drifted: bool) {
        let key = (model.to_owned(), version);
        let mut set = self.drifted.write();
        if drifted {
            set.insert(key);
        } else {
            set.remove(&key);
        }
    }

    /// Whether the control plane's latest evaluation says `version` of `model` drifted.
    pub fn drifted(&self, model: &str, version: u64) -> bool {
        self.drifted.read().contains(&(model.to_owned(), version))
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
}
