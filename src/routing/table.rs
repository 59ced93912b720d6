//! The route of one public model name as the request path reads it, and the
//! pick: header rules, then a sticky hash, then a weighted random choice.
//!
//! A `Route` is immutable. Weight changes build a new one that shares the
//! arms (windows, in-flight counts) of the old, and swap it in.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::arm::Arm;
use super::hedge::CanaryHedge;
use super::random::next_random;
use super::retry::{CanaryRetry, RetryBudget};
use super::shadow::Shadow;
use super::spec::{RouteSpec, Rule, ValidRoute};
use super::sprt::Sequential;
use crate::error::Error;
use crate::feedback::Feedback;

/// Window span of routes without a rollout (the admin API shows each arm's span).
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);

/// One version behind a route.
#[derive(Clone, Debug)]
pub struct Target {
    /// Version number.
    pub version: u64,
    /// Percent of weighted traffic.
    pub weight: u32,
    /// Rolled back: rules and weights skip it until an operator sends it
    /// traffic again.
    pub failed: bool,
    /// In-flight limit through this route.
    pub max_in_flight: Option<u32>,
    /// Run-time state.
    pub arm: Arc<Arm>,
}

/// A route, ready for the request path.
#[derive(Clone, Debug)]
pub struct Route {
    /// Public model name.
    pub model: String,
    /// Changes each time the route is replaced (not when its weights change),
    /// so a rollout never edits a route that replaced its own.
    pub generation: u64,
    /// The spec as applied.
    pub spec: Arc<RouteSpec>,
    /// Targets, in spec order.
    pub targets: Vec<Target>,
    /// Shadow copies.
    pub shadow: Option<Arc<Shadow>>,
    /// A rollout's retries of canary faults on the baseline.
    pub retry: Option<CanaryRetry>,
    /// A rollout's hedging of slow canary requests on the baseline.
    pub hedge: Option<CanaryHedge>,
    /// The predictions kept for ground truth, and each version's quality
    /// (`feedback` in the spec); shared by the weight changes of one route.
    pub feedback: Option<Arc<Feedback>>,
    rules: Vec<Rule>,
    sticky: Option<HeaderName>,
    /// Running sums of the weights, in target order; the last is 100.
    cumulative: Vec<u32>,
    /// Mixed into sticky hashes so that two routes split one user population
    /// independently.
    salt: u64,
}

impl Route {
    /// Builds a route from a checked spec, with fresh arms: a new route (a
    /// new rollout) is judged on its own traffic only.
    pub fn build(valid: &ValidRoute, generation: u64) -> Route {
        let spec = &valid.spec;
        let span = valid.policy.as_ref().map_or(DEFAULT_WINDOW, |p| p.window);
        let targets = spec
            .targets
            .iter()
            .map(|t| {
                let weight = match &valid.policy {
                    None => t.weight.unwrap_or(0),
                    Some(p) if p.canary == t.version => p.step_weights[0],
                    Some(p) => 100 - p.step_weights[0],
                };
                let arm = Arm::new(&spec.model, t.version, span);
                // Only the canary is judged outcome by outcome.
                let sequential = valid.policy.as_ref().filter(|p| p.canary == t.version).and_then(Sequential::new);
                let arm = Arc::new(arm.watched(sequential));
                Target { version: t.version, weight, failed: false, max_in_flight: t.max_in_flight, arm }
            })
            .collect();
        let mut route = Route {
            model: spec.model.clone(),
            generation,
            spec: Arc::new(spec.clone()),
            targets,
            shadow: spec.shadow.as_ref().map(|s| {
                let versions: Vec<u64> = spec.targets.iter().map(|t| t.version).collect();
                Arc::new(Shadow::new(&spec.model, s, &versions))
            }),
            retry: valid.policy.as_ref().and_then(|p| {
                Some(CanaryRetry {
                    canary: p.canary,
                    baseline: p.baseline,
                    budget: Arc::new(RetryBudget::new(p.retry_budget?)),
                })
            }),
            hedge: valid.policy.as_ref().and_then(|p| {
                let hedging = p.hedge?;
                Some(CanaryHedge {
                    canary: p.canary,
                    baseline: p.baseline,
                    after: hedging.after,
                    budget: Arc::new(RetryBudget::new(hedging.budget)),
                })
            }),
            feedback: valid.feedback.as_ref().map(|settings| {
                let versions: Vec<u64> = spec.targets.iter().map(|t| t.version).collect();
                Arc::new(Feedback::new(&spec.model, settings.clone(), &versions))
            }),
            rules: valid.rules.clone(),
            sticky: valid.sticky.clone(),
            cumulative: Vec::new(),
            salt: fnv1a(0xcbf2_9ce4_8422_2325, spec.model.as_bytes()),
        };
        route.sum_weights();
        route
    }

    fn sum_weights(&mut self) {
        let mut total = 0;
        self.cumulative = self
            .targets
            .iter()
            .map(|t| {
                total += t.weight;
                total
            })
            .collect();
    }

    /// The same route with new weights: `(version, weight, failed)` for the
    /// targets named; the others keep theirs.
    pub fn with_weights(&self, changes: &[(u64, u32, bool)]) -> Route {
        let mut next = self.clone();
        for target in &mut next.targets {
            if let Some(&(_, weight, failed)) = changes.iter().find(|c| c.0 == target.version) {
                target.weight = weight;
                target.failed = failed;
            }
        }
        next.sum_weights();
        next
    }

    /// The version the others are compared with in A/B results: a rollout's
    /// baseline, else the first target.
    pub fn baseline(&self) -> u64 {
        match &self.retry {
            Some(retry) => retry.baseline,
            None => self
                .spec
                .rollout
                .as_ref()
                .and_then(|r| self.targets.iter().map(|t| t.version).find(|&v| v != r.canary))
                .unwrap_or(self.targets[0].version),
        }
    }

    /// The version with the most weight (the first of equals), which stands
    /// for the route in metadata, config and readiness requests.
    pub fn primary(&self) -> Option<u64> {
        let mut best: Option<&Target> = None;
        for target in self.targets.iter().filter(|t| !t.failed) {
            if best.is_none_or(|b| target.weight > b.weight) {
                best = Some(target);
            }
        }
        best.map(|t| t.version)
    }

    /// The target of `version`.
    pub fn target(&self, version: u64) -> Option<&Target> {
        self.targets.iter().find(|t| t.version == version)
    }

    /// Index of the target that serves a request with these headers.
    pub fn pick(&self, headers: &HeaderMap) -> Result<usize, Error> {
        self.pick_why(headers).map(|(index, _)| index)
    }

    /// [`Route::pick`], and whether a header rule chose the target (the
    /// client asked for that version: no other version may answer for it).
    pub fn pick_why(&self, headers: &HeaderMap) -> Result<(usize, bool), Error> {
        for (name, matcher) in &self.rules {
            let Some(value) = headers.get(name) else { continue };
            let version = match matcher {
                Some((wanted, version)) if wanted == value => *version,
                Some(_) => continue,
                None => self.named_version(name, value)?,
            };
            match self.targets.iter().position(|t| t.version == version) {
                Some(i) if !self.targets[i].failed => return Ok((i, true)),
                // A rolled-back version gets no routed traffic, asked for or not.
                Some(_) => break,
                None => {
                    return Err(Error::NotFound(format!(
                        "header {name} names version {version}, which route '{}' does not serve (versions: {})",
                        self.model,
                        self.targets.iter().map(|t| t.version.to_string()).collect::<Vec<_>>().join(", ")
                    )));
                }
            }
        }
        let point = match self.sticky.as_ref().and_then(|h| headers.get(h)) {
            Some(key) => scale(fnv_mix(self.salt, key.as_bytes())),
            None => scale(next_random()),
        };
        self.weighted(point).map(|index| (index, false))
    }

    fn named_version(&self, name: &HeaderName, value: &HeaderValue) -> Result<u64, Error> {
        value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|&v| v > 0)
            .ok_or_else(|| Error::invalid(format!("header {name} must name a model version (a positive integer)")))
    }

    /// The target whose share of `[0, 100)` holds `point`.
    fn weighted(&self, point: u32) -> Result<usize, Error> {
        self.cumulative
            .iter()
            .position(|&end| point < end)
            .ok_or_else(|| Error::Unavailable(format!("route '{}' has no version with traffic weight", self.model)))
    }
}

/// Maps a uniform 64-bit value onto `[0, 100)` without modulo bias.
fn scale(x: u64) -> u32 {
    ((u128::from(x) * 100) >> 64) as u32
}

fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// A hash of a sticky key that every replica and every restart computes the
/// same (so a user stays on one arm across gateways): FNV-1a, then the
/// murmur3 finalizer to spread FNV's weak high bits.
fn fnv_mix(salt: u64, key: &[u8]) -> u64 {
    let mut h = fnv1a(salt, key);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::spec::RuleSpec;

    fn route(spec: RouteSpec) -> Route {
        Route::build(&spec.validate().unwrap(), 1)
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        map
    }

    proptest::proptest! {
        /// Each target owns exactly its weight's share of `[0, 100)`, whatever
        /// the weights, and every 64-bit draw lands in that range.
        #[test]
        fn each_target_owns_exactly_its_weight_of_the_range(
            cuts in proptest::collection::vec(0u32..=100, 1..4),
            draw in proptest::num::u64::ANY,
        ) {
            let mut cuts = cuts;
            cuts.sort_unstable();
            let mut weights = Vec::new();
            let mut last = 0;
            for (i, &cut) in cuts.iter().chain([&100]).enumerate() {
                weights.push((i as u64 + 1, cut - last));
                last = cut;
            }
            let route = route(RouteSpec::weighted("m", &weights));
            let mut owned = vec![0u32; weights.len()];
            for point in 0..100 {
                owned[route.weighted(point).unwrap()] += 1;
            }
            let expected: Vec<u32> = weights.iter().map(|&(_, w)| w).collect();
            proptest::prop_assert_eq!(owned, expected);
            proptest::prop_assert!(scale(draw) < 100);
        }
    }

    #[tokio::test]
    async fn weights_split_traffic_in_proportion() {
        let route = route(RouteSpec::weighted("m", &[(1, 70), (2, 20), (3, 10), (4, 0)]));
        let mut counts = [0u32; 4];
        for _ in 0..100_000 {
            counts[route.pick(&HeaderMap::new()).unwrap()] += 1;
        }
        for (count, expected) in counts.iter().zip([70_000, 20_000, 10_000, 0]) {
            assert!(count.abs_diff(expected) < 1_000, "{counts:?}");
        }
    }

    #[tokio::test]
    async fn header_rules_come_first_and_name_versions() {
        let mut spec = RouteSpec::weighted("m", &[(1, 100), (2, 0), (3, 0)]);
        spec.rules = vec![
            RuleSpec { header: "x-variant".into(), value: Some("b".into()), version: Some(2) },
            RuleSpec { header: "X-Model-Version".into(), value: None, version: None },
        ];
        let route = route(spec);
        let version = |h: &[(&str, &str)]| route.pick(&headers(h)).map(|i| route.targets[i].version);
        assert_eq!(version(&[]), Ok(1));
        assert_eq!(version(&[("x-variant", "b")]), Ok(2));
        assert_eq!(version(&[("x-variant", "c")]), Ok(1));
        assert_eq!(version(&[("x-model-version", "3")]), Ok(3));
        assert!(matches!(version(&[("x-model-version", "9")]), Err(Error::NotFound(_))));
        assert!(matches!(version(&[("x-model-version", "three")]), Err(Error::InvalidArgument(_))));
        // The first matching rule wins.
        assert_eq!(version(&[("x-variant", "b"), ("x-model-version", "3")]), Ok(2));
    }

    #[tokio::test]
    async fn rolled_back_versions_get_no_routed_traffic() {
        let mut spec = RouteSpec::weighted("m", &[(1, 50), (2, 50)]);
        spec.rules = vec![RuleSpec { header: "x-model-version".into(), value: None, version: None }];
        let route = route(spec).with_weights(&[(1, 100, false), (2, 0, true)]);
        for _ in 0..1000 {
            assert_eq!(route.pick(&headers(&[("x-model-version", "2")])), Ok(0));
        }
    }

    #[tokio::test]
    async fn a_sticky_key_stays_on_one_arm_and_keys_split_by_weight() {
        let mut spec = RouteSpec::weighted("m", &[(1, 80), (2, 20)]);
        spec.sticky_header = Some("x-user-id".into());
        let route = route(spec);
        let mut on_two = 0;
        for user in 0..5_000 {
            let h = headers(&[("x-user-id", &format!("user-{user}"))]);
            let first = route.pick(&h).unwrap();
            for _ in 0..3 {
                assert_eq!(route.pick(&h).unwrap(), first);
            }
            on_two += usize::from(first == 1);
        }
        assert!((800..1200).contains(&on_two), "{on_two} of 5000 users on the 20 % arm");
    }

    #[tokio::test]
    async fn raising_a_weight_only_moves_sticky_users_toward_it() {
        let mut spec = RouteSpec::weighted("m", &[(1, 95), (2, 5)]);
        spec.sticky_header = Some("x-user-id".into());
        let small = route(spec);
        let large = small.with_weights(&[(1, 50, false), (2, 50, false)]);
        for user in 0..2_000 {
            let h = headers(&[("x-user-id", &format!("u{user}"))]);
            if small.pick(&h).unwrap() == 1 {
                assert_eq!(large.pick(&h).unwrap(), 1, "user {user} left the canary when its weight grew");
            }
        }
    }

    #[test]
    fn sticky_hashes_are_stable_across_processes() {
        // Fixed values: a change here moves every user to another arm.
        assert_eq!(fnv_mix(0, b""), 0);
        assert_eq!(scale(fnv_mix(fnv1a(0xcbf2_9ce4_8422_2325, b"mlp"), b"user-1")), 21);
        assert_eq!(scale(0), 0);
        assert_eq!(scale(u64::MAX), 99);
    }

    #[tokio::test]
    async fn the_heaviest_live_target_stands_for_the_route() {
        let route = route(RouteSpec::weighted("m", &[(1, 30), (2, 70), (3, 0)]));
        assert_eq!(route.primary(), Some(2));
        assert_eq!(route.with_weights(&[(2, 0, true), (1, 100, false)]).primary(), Some(1));
        assert_eq!(route.with_weights(&[(1, 50, false), (2, 50, false)]).primary(), Some(1));
    }

    #[tokio::test]
    async fn a_route_with_no_weight_left_is_unavailable() {
        let route = route(RouteSpec::weighted("m", &[(1, 100), (2, 0)])).with_weights(&[(1, 0, true)]);
        assert!(matches!(route.pick(&HeaderMap::new()), Err(Error::Unavailable(_))));
    }
}
