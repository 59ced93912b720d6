//! Gateways follow the registry: pull the desired state, fetch and verify
//! each version's files, load them, and release what an alias names as a
//! canary under the rollout policy the data plane already runs.
//!
//! - [`settings`]: `[sync]` and `[[follow]]`.
//! - [`client`]: the control plane's API as the gateway calls it.
//! - [`cache`]: verified blobs; resumable, size-capped downloads.
//! - [`materialize`]: version directories built whole and renamed into place.
//! - [`plan`]: what to serve of a model, given its aliases (pure).
//! - [`snapshot`]: the last-known-good state, served when the control plane
//!   is away at start.
//! - [`feedback`]: shared feedback routes' predictions shipped, looked up and claimed.
//!
//! The [`Follower`] changes the data plane only through
//! `Repository::load_version` / `unload_version` and `Rollouts::put`, like an
//! operator would; a control plane that goes away never touches the request
//! path (the versions and routes in force stay).

pub mod cache;
pub mod client;
pub mod feedback;
pub mod materialize;
pub mod plan;
pub mod settings;
pub mod snapshot;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use modelgate_registry::sync::{
    DesiredModel, DesiredState, DesiredVersion, DriftWindow, Failure, FailureReason, LoadedVersion, Outcome, Report,
    RolloutOutcome,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::gateway::Gateway;
use crate::rollout::{Phase, Source};
use crate::routing::RouteSpec;
use cache::BlobCache;
use client::ControlPlane;
use materialize::VersionDirs;
use plan::{Served, plan};
pub use settings::{Follow, FollowRule, SyncSettings, Verify};
use snapshot::Snapshot;

/// Longest pause between two tries to reach the control plane.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often undelivered rollout ends are reported again.
const REPORT_RETRY: Duration = Duration::from_secs(1);
/// How often rollouts the registry started are checked for their end.
const ROLLOUT_WATCH: Duration = Duration::from_millis(200);
/// Profile bytes of drift windows one report carries at most (the control plane takes JSON
/// bodies up to 8 MiB; base64 and field names roughly double the sketches' bytes); the rest
/// go with the next report.
const MAX_REPORT_DRIFT_BYTES: usize = 2 << 20;

/// Follows one control plane until the process ends.
pub struct Follower {
    gateway: Arc<Gateway>,
    settings: SyncSettings,
    rules: Vec<Follow>,
    /// The rules of the last state applied (configured, from the API, or the default).
    in_force: Vec<Follow>,
    /// Whether `in_force` came from a rule someone wrote (config or API), not the default.
    explicit: bool,
    control_plane: ControlPlane,
    id: String,
    cache: BlobCache,
    dirs: VersionDirs,
    /// Per served model: what it serves.
    served: BTreeMap<String, Served>,
    /// Per served model: versions rolled back on this gateway.
    rolled_back: BTreeMap<String, BTreeSet<u64>>,
    /// Per served model: loaded versions and the manifest each was built from.
    loaded: BTreeMap<String, BTreeMap<u64, String>>,
    /// Per registered model: the files of every version loaded here, so one
    /// that no alias names any more (the stable side of a release) can be
    /// loaded again, after a restart from the snapshot too.
    remembered: BTreeMap<String, BTreeMap<i64, DesiredVersion>>,
    /// Rollout ends not yet reported.
    outcomes: Vec<RolloutOutcome>,
    /// The last state applied and its failures.
    applied: Option<DesiredState>,
    failures: Vec<Failure>,
}

/// How one version of a model fared.
type Applied<T> = Result<T, Failure>;

impl Follower {
    /// A follower of `control_plane`; `rules` empty follows every registered
    /// model that has a `champion` alias.
    pub fn new(
        gateway: Arc<Gateway>,
        settings: SyncSettings,
        rules: Vec<Follow>,
        control_plane: ControlPlane,
    ) -> std::io::Result<Follower> {
        let root = settings.root();
        let cache = BlobCache::open(&root.join("cache"))?;
        let dirs = VersionDirs::open(&settings.models_dir())?;
        gateway.repository.await_first_sync();
        Ok(Follower {
            gateway,
            id: settings.gateway_id(),
            settings,
            rules,
            in_force: Vec::new(),
            explicit: false,
            control_plane,
            cache,
            dirs,
            served: BTreeMap::new(),
            rolled_back: BTreeMap::new(),
            loaded: BTreeMap::new(),
            remembered: BTreeMap::new(),
            outcomes: Vec::new(),
            applied: None,
            failures: Vec::new(),
        })
    }

    fn snapshot_path(&self) -> PathBuf {
        snapshot::path(&self.settings.root())
    }

    /// Runs: the first state (or the last-known-good one when the control plane
    /// does not answer), then every change, rollout ends and retries, until
    /// `stop` is cancelled (the step under way, an apply or a report, ends
    /// first). The gateway cancels it before its embedded control plane stops,
    /// so a shutting-down node does not poll itself and log it unreachable.
    pub async fn run(mut self, stop: CancellationToken) {
        // Shared feedback routes ship and ask from the start (a control plane that is away costs them nothing).
        // The shipper ends with this future, however it ends (a task aborted drops it).
        let _shipper = feedback::start(&self.gateway, self.control_plane.clone(), self.id.clone());
        match self.control_plane.poll(&self.id, 0, Duration::ZERO).await {
            Ok(Some(state)) => {
                crate::metrics::control_plane_connected(true);
                self.apply(state).await;
            }
            Ok(None) => crate::metrics::control_plane_connected(true),
            Err(error) => {
                crate::metrics::control_plane_connected(false);
                crate::metrics::sync_failure("unreachable");
                match snapshot::load(&self.snapshot_path()) {
                    Some(last) => {
                        tracing::warn!(%error, generation = last.state.generation,
                            "control plane unreachable at start: serving the last-known-good state");
                        self.served = last.served;
                        self.apply_offline(last.state).await;
                    }
                    None => tracing::warn!(%error, "control plane unreachable at start and no last-known-good state"),
                }
            }
        }
        self.gateway.repository.first_sync_done();
        let since = self.applied.as_ref().map_or(0, |s| s.generation);
        let (states, mut next) = watch::channel(None::<DesiredState>);
        // Stops with the follower however it ends: stopped, or its task aborted.
        let _poller = AbortOnDropHandle::new(tokio::spawn(poll_forever(
            self.control_plane.clone(),
            self.id.clone(),
            since,
            Duration::from_secs(self.settings.wait_secs),
            states,
        )));
        // Closed drift windows go to the control plane once per window, with a report.
        let drift_every =
            self.gateway.drift.as_ref().map(|p| Duration::from_secs(u64::from(p.settings().window_seconds)));
        // Windows close on the wall clock: reports go just after each close, not at this
        // follower's own phase, which would hold a closed window for up to one more window.
        let period = drift_every.unwrap_or(Duration::from_secs(3600));
        let mut ship_drift = tokio::time::interval_at(tokio::time::Instant::now() + after_next_close(period), period);
        ship_drift.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut watch_rollouts = tokio::time::interval(ROLLOUT_WATCH);
        watch_rollouts.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut retry = Backoff::default();
        let mut retry_at: Option<tokio::time::Instant> = None;
        // Rollout ends that could not be reported go again on their own, once a second (one
        // small POST): a control plane that returns with nothing changed sends no new state
        // whose report would carry them.
        let mut report_at = tokio::time::Instant::now();
        loop {
            let retry_sleep = async {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = stop.cancelled() => break,
                changed = next.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let state = next.borrow_and_update().clone();
                    if let Some(state) = state {
                        self.apply(state).await;
                    }
                }
                _ = watch_rollouts.tick() => {
                    if self.watch_rollouts().await {
                        // Apply again at once: a promotion makes the canary the base.
                        if let Some(state) = self.applied.clone() {
                            self.apply(state).await;
                        }
                    } else if !self.outcomes.is_empty() && tokio::time::Instant::now() >= report_at {
                        self.report().await;
                        report_at = tokio::time::Instant::now() + REPORT_RETRY;
                    }
                }
                _ = ship_drift.tick(), if drift_every.is_some() => {
                    self.report().await;
                }
                () = retry_sleep => {
                    retry_at = None;
                    if let Some(state) = self.applied.clone() {
                        self.apply(state).await;
                    }
                }
            }
            // Failures a retry may fix (a download cut off, a full disk) are retried with backoff.
            if self.failures.iter().any(|f| matches!(f.reason, FailureReason::Download | FailureReason::Disk)) {
                if retry_at.is_none() {
                    retry_at = Some(tokio::time::Instant::now() + retry.next());
                }
            } else {
                retry = Backoff::default();
                retry_at = None;
            }
        }
    }

    /// The rules in force for `state`: the configured ones, else those set through the
    /// control plane's API (one it sends that this gateway refuses is reported), else
    /// one per registered model that has a `champion` alias.
    fn rules_for(&mut self, state: &DesiredState) -> Vec<Follow> {
        if !self.rules.is_empty() {
            return self.rules.clone();
        }
        if !state.follow.is_empty() {
            let mut rules = Vec::new();
            for spec in &state.follow {
                match Follow::from_rule(spec) {
                    Ok(rule) => rules.push(rule),
                    Err(message) => self.failures.push(Failure {
                        model: spec.model.clone(),
                        version: None,
                        reason: FailureReason::Rule,
                        message,
                    }),
                }
            }
            return rules;
        }
        state
            .models
            .iter()
            .filter(|(_, m)| m.aliases.contains_key(settings::DEFAULT_STABLE_ALIAS))
            .map(|(name, _)| Follow::default_for(name))
            .collect()
    }

    /// `state` with the files of every version loaded here that the registry
    /// still has READY, where no alias brought them along.
    fn with_remembered(&self, mut state: DesiredState) -> DesiredState {
        for (name, model) in &mut state.models {
            for (version, files) in self.remembered.get(name).into_iter().flatten() {
                if model.ready.contains(version) {
                    model.versions.entry(*version).or_insert_with(|| files.clone());
                }
            }
        }
        state
    }

    /// Applies a state from the control plane, reports, and saves it as the
    /// last-known-good one when every file verified.
    async fn apply(&mut self, state: DesiredState) {
        let state = self.with_remembered(state);
        self.apply_state(&state, true).await;
        let verified = !self.failures.iter().any(|f| {
            matches!(f.reason, FailureReason::FailedVerification | FailureReason::Download | FailureReason::Disk)
        });
        if verified {
            let snapshot = Snapshot { state: state.clone(), served: self.served.clone() };
            if let Err(error) = snapshot::save(&self.snapshot_path(), &snapshot).await {
                tracing::error!(%error, "cannot write the last-known-good snapshot");
            }
        }
        self.applied = Some(state);
        self.report().await;
    }

    /// Applies the last-known-good state from disk alone (no downloads).
    async fn apply_offline(&mut self, state: DesiredState) {
        let state = self.with_remembered(state);
        self.apply_state(&state, false).await;
        self.applied = Some(state);
    }

    async fn apply_state(&mut self, state: &DesiredState, online: bool) {
        self.failures.clear();
        let rules = self.rules_for(state);
        self.explicit = !self.rules.is_empty() || !state.follow.is_empty();
        self.in_force = rules.clone();
        for rule in &rules {
            if let Err(failure) = self.apply_model(rule, state.models.get(&rule.registered), online).await {
                tracing::error!(model = %failure.model, version = ?failure.version, reason = failure.reason.as_str(),
                    message = %failure.message, "registry model not applied");
                crate::metrics::sync_failure(failure.reason.as_str());
                self.failures.push(failure);
            }
        }
        // Models no longer followed (alias or model deleted): their route and versions go.
        let followed: BTreeSet<&str> = rules.iter().map(|r| r.model.as_str()).collect();
        let gone: Vec<String> = self.served.keys().filter(|m| !followed.contains(m.as_str())).cloned().collect();
        for model in gone {
            tracing::info!(model, "no longer followed: its route and versions are removed");
            let _ = self.gateway.rollouts.delete(&model).await;
            for version in self.loaded.remove(&model).unwrap_or_default().into_keys() {
                let _ = self.gateway.repository.unload_version(&model, version).await;
            }
            self.served.remove(&model);
        }
        self.publish_drift(state, &rules);
        crate::metrics::sync_applied_generation(state.generation);
    }

    /// Exports the control plane's drift evaluations of the versions served here.
    fn publish_drift(&self, state: &DesiredState, rules: &[Follow]) {
        for rule in rules {
            let Some(model) = state.models.get(&rule.registered) else { continue };
            let Some(loaded) = self.loaded.get(&rule.model) else { continue };
            for &version in loaded.keys() {
                if let Some(profiler) = &self.gateway.drift {
                    // Windows are profiled on the reference's features (from the next window).
                    let features = i64::try_from(version)
                        .ok()
                        .and_then(|v| model.versions.get(&v))
                        .and_then(|d| d.drift_features.clone());
                    profiler.set_features(&rule.model, version, features);
                }
                let status = i64::try_from(version).ok().and_then(|v| model.drift.get(&v));
                // Rollouts of this gateway hold or roll back a drifting canary (policy `drift`).
                self.gateway.routes.set_drift(&rule.model, version, status.map(crate::routing::DriftMark::new));
                let Some(status) = status else { continue };
                let features: Vec<(&str, &'static str, f64)> =
                    status.features.iter().map(|(name, f)| (name.as_str(), f.stat.as_str(), f.value)).collect();
                crate::metrics::drift(&rule.model, version, status.drifted, &features);
            }
        }
    }

    /// Serves one followed model as the plan says. Failures of the canary leave
    /// the stable version serving alone; failures of the stable version leave
    /// whatever served before.
    async fn apply_model(&mut self, rule: &Follow, model: Option<&DesiredModel>, online: bool) -> Applied<()> {
        let failure = |version: Option<u64>, reason: FailureReason, message: String| Failure {
            model: rule.model.clone(),
            version: version.map(|v| v as i64),
            reason,
            message,
        };
        if self.gateway.repository.in_directory(&rule.model) && self.seeded_here(rule, model) {
            tracing::info!(model = %rule.model, "seeded from the model repository: served through the registry from now on");
            self.gateway.repository.adopt(&rule.model);
        }
        if self.gateway.repository.in_directory(&rule.model) {
            if !self.explicit {
                // No rule asked for it: the registry merely holds a copy (e.g. seeded from
                // the directory at first start), and the directory's version serves.
                tracing::debug!(model = %rule.model, "a registry model of a directory model's name: the directory's serves");
                return Ok(());
            }
            return Err(failure(
                None,
                FailureReason::Conflict,
                format!(
                    "model '{}' is defined by both the model repository directory and the registry; the directory's serves",
                    rule.model
                ),
            ));
        }
        let here = self.rolled_back.get(&rule.model).cloned().unwrap_or_default();
        let mut want = plan(rule, model, self.served.get(&rule.model).copied(), &here)
            .map_err(|e| failure(None, FailureReason::Missing, e.to_string()))?;
        let Some(model) = model else { return Ok(()) };
        self.hold_version(rule, model, want.stable, online).await?;
        let mut canary_failure = None;
        if let Some(canary) = want.canary
            && let Err(f) = self.hold_version(rule, model, canary, online).await
        {
            want.canary = None;
            if matches!(f.reason, FailureReason::Download | FailureReason::Disk) {
                // Not the version's fault: the alias move stays unseen, so the retry
                // releases it once the files come (a version that cannot load is not retried).
                want.stable_alias_seen = self.served.get(&rule.model).and_then(|s| s.stable_alias_seen);
            }
            canary_failure = Some(f);
        }
        self.route(rule, want).await.map_err(|e| failure(Some(want.stable), FailureReason::Load, e))?;
        // Versions no longer wanted stop serving (in-flight requests finish); their
        // directories stay, the newest few, so a rollback needs no download.
        let wanted: BTreeSet<u64> = std::iter::once(want.stable).chain(want.canary).collect();
        let loaded = self.loaded.entry(rule.model.clone()).or_default();
        let leaving: Vec<u64> = loaded.keys().filter(|v| !wanted.contains(v)).copied().collect();
        for version in leaving {
            loaded.remove(&version);
            let _ = self.gateway.repository.unload_version(&rule.model, version).await;
        }
        self.dirs.collect(&rule.model, &wanted, self.settings.keep_versions).await;
        self.served.insert(rule.model.clone(), want);
        canary_failure.map_or(Ok(()), Err)
    }

    /// Whether the registry's model was seeded from this gateway's own model
    /// directory, and no route of the data plane's own (a `[[routes]]` entry, an
    /// operator's) claims the name: then the directory hands the model over.
    fn seeded_here(&self, rule: &Follow, model: Option<&DesiredModel>) -> bool {
        let Some(seeded_from) = model.and_then(|m| m.tags.get(modelgate_registry::sync::SEEDED_FROM_TAG)) else {
            return false;
        };
        let own = self.gateway.repository.settings().path.join(&rule.model);
        let own = std::fs::canonicalize(&own).unwrap_or(own);
        own.display().to_string() == *seeded_from && self.gateway.routes.get(&rule.model).is_none()
    }

    /// Makes `version` of `rule`'s model present, verified and loaded.
    async fn hold_version(&mut self, rule: &Follow, model: &DesiredModel, version: u64, online: bool) -> Applied<()> {
        let failure = |reason: FailureReason, message: String| Failure {
            model: rule.model.clone(),
            version: Some(version as i64),
            reason,
            message,
        };
        let desired = model.versions.get(&(version as i64)).ok_or_else(|| {
            failure(FailureReason::Missing, format!("version {version} is not READY in the registry"))
        })?;
        let digest = &desired.manifest_digest;
        let ready = self.gateway.repository.resolve(&rule.model, Some(version)).is_ok();
        if ready && self.loaded.get(&rule.model).and_then(|l| l.get(&version)) == Some(digest) {
            return Ok(());
        }
        if !self.dirs.holds(&rule.model, version, digest).await
            || (!online && self.settings.verify_on_start == Verify::Full)
        {
            for entry in &desired.files {
                if online {
                    self.cache
                        .fetch(&self.control_plane, entry)
                        .await
                        .map_err(|e| failure(e.reason(), e.to_string()))?;
                } else if !self.cache.has(entry, self.settings.verify_on_start).await {
                    return Err(failure(
                        FailureReason::FailedVerification,
                        format!("{}: not in the cache or not as the manifest says", entry.path),
                    ));
                }
            }
            self.dirs
                .materialize(&self.cache, &rule.model, version, desired)
                .await
                .map_err(|e| failure(e.reason(), e.to_string()))?;
        }
        let started = std::time::Instant::now();
        self.gateway
            .repository
            .load_version(&rule.model, version)
            .await
            .map_err(|e| failure(FailureReason::Load, e.message().to_owned()))?;
        tracing::info!(model = %rule.model, version, digest = %digest, load_ms = started.elapsed().as_millis() as u64,
            "registry version loaded");
        self.loaded.entry(rule.model.clone()).or_default().insert(version, digest.clone());
        self.remembered.entry(rule.registered.clone()).or_default().insert(version as i64, desired.clone());
        Ok(())
    }

    /// Puts the route `want` calls for, unless the one in force already is it (a
    /// rollout in progress, paused by an operator or finished, is left alone).
    async fn route(&self, rule: &Follow, want: Served) -> Result<(), String> {
        let current = self.gateway.routes.get(&rule.model);
        let spec = match want.canary {
            Some(canary) => {
                let running = current.as_ref().is_some_and(|r| {
                    r.spec.rollout.as_ref().is_some_and(|p| p.canary == canary)
                        && r.spec.targets.iter().any(|t| t.version == want.stable)
                });
                if running {
                    return Ok(());
                }
                RouteSpec::canary_release(&rule.model, want.stable, rule.rollout.for_canary(canary)?)
            }
            None => {
                let pinned = current.as_ref().is_some_and(|r| {
                    r.spec.rollout.is_none() && matches!(r.spec.targets.as_slice(), [t] if t.version == want.stable)
                });
                if pinned {
                    return Ok(());
                }
                RouteSpec::weighted(&rule.model, &[(want.stable, 100)])
            }
        };
        self.gateway.rollouts.put(spec, Source::Registry).await.map_err(|e| e.message().to_owned())?;
        if let Some(canary) = want.canary {
            tracing::info!(model = %rule.model, stable = want.stable, canary, "registry release started");
        }
        Ok(())
    }

    /// Looks for registry-started rollouts that ended; records each end once.
    /// Returns whether one ended.
    async fn watch_rollouts(&mut self) -> bool {
        let mut ended = false;
        let releases: Vec<(String, Served)> =
            self.served.iter().filter(|(_, s)| s.canary.is_some()).map(|(m, s)| (m.clone(), *s)).collect();
        for (model, served) in releases {
            let Some(canary) = served.canary else { continue };
            let Ok(status) = self.gateway.rollouts.status(&model).await else { continue };
            let Some(rollout) = status.rollout.filter(|r| r.canary == canary && r.baseline == served.stable) else {
                continue;
            };
            let outcome = match rollout.state {
                Phase::Succeeded => Outcome::Promoted,
                Phase::Failed => Outcome::RolledBack,
                Phase::Progressing | Phase::Paused => continue,
            };
            let rule = self.rule_of(&model);
            let reason = rollout.reason.clone().unwrap_or_else(|| format!("{outcome:?}"));
            tracing::info!(model, stable = served.stable, canary, ?outcome, %reason, "registry release ended");
            match outcome {
                Outcome::Promoted => {
                    self.served.insert(model.clone(), Served { stable: canary, canary: None, ..served });
                }
                Outcome::RolledBack => {
                    self.rolled_back.entry(model.clone()).or_default().insert(canary);
                    self.served.insert(model.clone(), Served { canary: None, ..served });
                }
            }
            self.outcomes.push(RolloutOutcome {
                model: rule.registered.clone(),
                stable: served.stable as i64,
                canary: canary as i64,
                outcome,
                stable_alias: rule.stable_alias.clone(),
                canary_alias: rule.canary_alias.clone(),
                on_rollback: rule.on_rollback,
                reason,
            });
            ended = true;
        }
        ended
    }

    fn rule_of(&self, model: &str) -> Follow {
        self.in_force.iter().find(|r| r.model == model).cloned().unwrap_or_else(|| Follow::default_for(model))
    }

    /// Sends what was applied, what failed and the rollout ends; ends not
    /// delivered are sent with the next report.
    async fn report(&mut self) {
        let Some(state) = &self.applied else { return };
        // The control plane speaks registry names: a served name maps to its registered model.
        let registered = |served: &str| {
            self.in_force.iter().find(|r| r.model == served).map_or_else(|| served.to_owned(), |r| r.registered.clone())
        };
        let loaded = self
            .loaded
            .iter()
            .flat_map(|(model, versions)| {
                let model = registered(model);
                versions.iter().map(move |(v, digest)| LoadedVersion {
                    model: model.clone(),
                    version: *v as i64,
                    manifest_digest: digest.clone(),
                })
            })
            .collect();
        let (drift_windows, sent, unsent) = self.drift_windows();
        let report = Report {
            applied_generation: state.generation,
            loaded,
            failures: self.failures.clone(),
            rollouts: self.outcomes.clone(),
            drift_windows,
        };
        match self.control_plane.report(&self.id, &report).await {
            Ok(()) => {
                crate::metrics::control_plane_connected(true);
                self.outcomes.clear();
                self.requeue_drift(unsent);
            }
            Err(error) => {
                crate::metrics::control_plane_connected(false);
                crate::metrics::sync_failure("unreachable");
                tracing::warn!(%error, "report not delivered; it is sent again with the next one");
                // The windows wait in the profiler (its last `keep_windows` per version).
                let mut back = sent;
                back.extend(unsent);
                self.requeue_drift(back);
            }
        }
    }

    /// The profiler's closed windows of followed models, as the report carries them (registry
    /// names, the arm each version serves as), up to [`MAX_REPORT_DRIFT_BYTES`] of profiles;
    /// the same windows as the profiler holds them (to give back if the report is lost); and
    /// the windows left for the next report.
    fn drift_windows(&self) -> (Vec<DriftWindow>, Vec<crate::drift::ClosedWindow>, Vec<crate::drift::ClosedWindow>) {
        let Some(profiler) = &self.gateway.drift else { return (Vec::new(), Vec::new(), Vec::new()) };
        let mut windows = Vec::new();
        let mut sent = Vec::new();
        let mut rest = Vec::new();
        let mut bytes = 0usize;
        for mut window in profiler.drain_closed() {
            let Some(rule) = self.in_force.iter().find(|r| r.model == window.model) else {
                // A model served from the repository directory: no control plane to test it.
                continue;
            };
            let size = window.profile.memory_bytes();
            if bytes + size > MAX_REPORT_DRIFT_BYTES && !windows.is_empty() {
                rest.push(window);
                continue;
            }
            bytes += size;
            if self.served.get(&window.model).is_some_and(|s| s.canary == Some(window.version)) {
                window.arm = "canary".into();
            }
            let mut report = window.clone().into_report();
            report.model = rule.registered.clone();
            windows.push(report);
            sent.push(window);
        }
        (windows, sent, rest)
    }

    fn requeue_drift(&self, windows: Vec<crate::drift::ClosedWindow>) {
        if let (Some(profiler), false) = (&self.gateway.drift, windows.is_empty()) {
            profiler.requeue(windows);
        }
    }
}

/// Long-polls the control plane forever, handing each new state over; backs
/// off with jitter while it does not answer.
async fn poll_forever(
    control_plane: ControlPlane,
    id: String,
    mut since: i64,
    wait: Duration,
    states: watch::Sender<Option<DesiredState>>,
) {
    let mut backoff = Backoff::default();
    let mut recovering = false;
    loop {
        // After a failure, a quick poll first: a control plane that is back is known (and its
        // state fetched) at once, not after a long poll's wait.
        let this_wait = if recovering { Duration::ZERO } else { wait };
        match control_plane.poll(&id, since, this_wait).await {
            Ok(Some(state)) => {
                crate::metrics::control_plane_connected(true);
                backoff = Backoff::default();
                recovering = false;
                since = state.generation;
                if states.send(Some(state)).is_err() {
                    return;
                }
            }
            Ok(None) => {
                crate::metrics::control_plane_connected(true);
                backoff = Backoff::default();
                recovering = false;
            }
            Err(error) => {
                recovering = true;
                crate::metrics::control_plane_connected(false);
                crate::metrics::sync_failure("unreachable");
                let pause = backoff.next();
                tracing::warn!(%error, retry_in_ms = pause.as_millis() as u64, "control plane unreachable; serving what is loaded");
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// Exponential backoff from 250 ms to [`MAX_BACKOFF`], with full jitter (so a
/// fleet of gateways does not return in step).
#[derive(Debug)]
struct Backoff {
    ceiling: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { ceiling: Duration::from_millis(250) }
    }
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let ceiling = self.ceiling;
        self.ceiling = (self.ceiling * 2).min(MAX_BACKOFF);
        let jitter = crate::routing::random::next_random() as f64 / u64::MAX as f64;
        ceiling.mul_f64(0.5 + jitter / 2.0)
    }
}

/// Time from now until shortly after the next wall-clock multiple of `period` (when drift
/// windows close): the slack lets the profiler thread close the window first.
fn after_next_close(period: Duration) -> Duration {
    const SLACK: Duration = Duration::from_millis(200);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let period_ms = period.as_millis().max(1);
    let into = now.as_millis() % period_ms;
    Duration::from_millis(u64::try_from(period_ms - into).unwrap_or(0)) + SLACK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_reports_are_timed_just_after_the_next_window_close() {
        for period in [Duration::from_secs(1), Duration::from_secs(60)] {
            let wait = after_next_close(period);
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
            let at = (now + wait).as_millis() % period.as_millis();
            assert!(wait <= period + Duration::from_millis(200), "{wait:?}");
            // Lands 200 ms past a multiple of the period (a few ms of clock between the calls).
            assert!((195..=215).contains(&at), "{period:?}: {at} ms into the period");
        }
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_with_jitter_below_the_ceiling() {
        let mut backoff = Backoff::default();
        let pauses: Vec<Duration> = (0..12).map(|_| backoff.next()).collect();
        assert!(pauses[0] <= Duration::from_millis(250) && pauses[0] >= Duration::from_millis(125));
        assert!(pauses.iter().all(|p| *p <= MAX_BACKOFF));
        assert!(pauses[11] >= MAX_BACKOFF / 2);
    }
}
