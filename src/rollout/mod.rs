//! Rollouts: automatic canary releases with rollback on SLO breach, and the
//! one place every change to the route table goes through.
//!
//! - `analyzer.rs`: the state machine that steps a canary up or rolls it back.
//! - `status.rs`: the snapshots the admin API shows.
//!
//! [`Rollouts`] serializes the writers that are not analyzers (admin API,
//! config reload, start-up): it checks a change, swaps the new route in, and
//! starts or stops the route's analyzer. While a route has a running
//! analyzer, its weights change only through that analyzer (operator
//! commands go to it), so the analyzer's precedence rules hold.
//!
//! The outcome windows and the policy as written live in `routing`, below
//! this module: a route carries them, and rollouts read them.

pub mod analyzer;
pub mod status;

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use analyzer::Analyzer;
pub use analyzer::Command;
pub use status::{
    Breach, Check, Event, EventKind, IndexStatus, Phase, RouteStatus, ShadowStatus, Status, TargetQuality,
    TargetStatus, TargetWindow, Verdict, WindowStats,
};

use crate::error::Error;
use crate::repository::Repository;
use crate::routing::{Route, RouteSpec, Routes, ValidRoute};

/// The analyzer of one route.
#[derive(Debug)]
struct Running {
    generation: u64,
    commands: mpsc::Sender<analyzer::Request>,
    status: Arc<Mutex<Status>>,
    task: JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Debug, Default)]
struct Control {
    generation: u64,
    running: HashMap<String, Running>,
    /// Specs as last read from the config file: a reload changes only the
    /// routes whose spec in the file changed.
    from_file: HashMap<String, RouteSpec>,
}

/// Where a route change comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The config file, at start or on reload: versions that are not ready
    /// are logged, and their requests fail (503) until they are.
    File,
    /// An operator: every version the route sends traffic to must be ready.
    Operator,
    /// A registry alias (`sync`): versions are loaded before the route is put,
    /// and must be ready, as for an operator.
    Registry,
}

/// What a config reload changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReloadSummary {
    /// Routes added or replaced.
    pub applied: Vec<String>,
    /// Routes removed from the file, and so from the table.
    pub removed: Vec<String>,
    /// Routes whose spec in the file did not change (operator changes kept).
    pub unchanged: Vec<String>,
}

/// Every route change, and the rollouts.
#[derive(Debug)]
pub struct Rollouts {
    routes: Arc<Routes>,
    repository: Arc<Repository>,
    control: tokio::sync::Mutex<Control>,
}

impl Rollouts {
    /// A controller over `routes`, checking versions in `repository`.
    pub fn new(routes: Arc<Routes>, repository: Arc<Repository>) -> Rollouts {
        Rollouts { routes, repository, control: tokio::sync::Mutex::new(Control::default()) }
    }

    /// Versions the route sends traffic to that are not ready, with why.
    fn unready(&self, valid: &ValidRoute) -> Vec<String> {
        let spec = &valid.spec;
        let weighted = |v: u64| match &valid.policy {
            Some(_) => true,
            None => spec.target(v).and_then(|t| t.weight).unwrap_or(0) > 0 || !spec.rules.is_empty(),
        };
        spec.versions()
            .filter(|&v| weighted(v) || spec.shadow.as_ref().is_some_and(|s| s.version == v))
            .filter_map(|v| self.repository.resolve(&spec.model, Some(v)).err().map(|e| e.message().to_owned()))
            .collect()
    }

    /// Refuses (operator) or logs (file) a route that sends traffic to
    /// versions that are not ready.
    fn check_ready(&self, valid: &ValidRoute, source: Source) -> Result<(), Error> {
        let unready = self.unready(valid);
        if unready.is_empty() {
            return Ok(());
        }
        let model = &valid.spec.model;
        match source {
            Source::Operator | Source::Registry => Err(Error::FailedPrecondition(format!(
                "route '{model}' sends traffic to versions that are not ready: {}",
                unready.join("; ")
            ))),
            Source::File => {
                for why in &unready {
                    tracing::error!(model = %model, "route applied, but {why}: its requests fail until it is");
                }
                Ok(())
            }
        }
    }

    /// Creates or replaces the route of `spec.model`; a route with a rollout
    /// starts it from its first step.
    pub async fn put(&self, spec: RouteSpec, source: Source) -> Result<(), Error> {
        let valid = spec.validate().map_err(|e| Error::InvalidArgument(e.to_string()))?;
        self.check_ready(&valid, source)?;
        let mut control = self.control.lock().await;
        self.install(&mut control, &valid);
        Ok(())
    }

    fn install(&self, control: &mut Control, valid: &ValidRoute) {
        let model = valid.spec.model.clone();
        // Stop the old analyzer before its route goes: it never steers a route it did not start.
        control.running.remove(&model);
        control.generation += 1;
        let generation = control.generation;
        self.routes.insert(Route::build(valid, generation));
        if let Some(policy) = &valid.policy
            && let Some((analyzer, commands, status)) =
                Analyzer::new(&model, generation, policy.clone(), self.routes.clone())
        {
            let task = tokio::spawn(analyzer.run());
            control.running.insert(model.clone(), Running { generation, commands, status, task });
        }
        tracing::info!(model = %model, generation, rollout = valid.policy.is_some(), "route applied");
    }

    /// Removes the route of `model` (the model then serves its latest version).
    pub async fn delete(&self, model: &str) -> Result<(), Error> {
        let mut control = self.control.lock().await;
        control.running.remove(model);
        match self.routes.remove(model) {
            Some(_) => Ok(()),
            None => Err(no_route(model)),
        }
    }

    /// Applies the `[[routes]]` of a config file: routes whose spec changed
    /// since the last load are replaced, routes no longer in the file are
    /// removed, and the others are left as they run (with any operator
    /// changes). Every spec is checked before anything changes.
    pub async fn apply_file(&self, specs: &[RouteSpec]) -> Result<ReloadSummary, Error> {
        let valid = crate::routing::validate_all(specs).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let mut control = self.control.lock().await;
        let unchanged = |control: &Control, v: &ValidRoute| {
            control.from_file.get(&v.spec.model) == Some(&v.spec) && self.routes.get(&v.spec.model).is_some()
        };
        // A changed route must pass what the admin API checks (no traffic to
        // a version that is not ready), and all of them before anything
        // changes: a reload that fails keeps every route that serves.
        let refused: Vec<String> = valid
            .iter()
            .filter(|v| !unchanged(&control, v))
            .filter_map(|v| self.check_ready(v, Source::Operator).err())
            .map(|e| e.message().to_owned())
            .collect();
        if !refused.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "routes not applied, the routes in force stay: {}",
                refused.join("; ")
            )));
        }
        let mut summary = ReloadSummary::default();
        for v in &valid {
            let model = v.spec.model.clone();
            if unchanged(&control, v) {
                summary.unchanged.push(model);
                continue;
            }
            self.install(&mut control, v);
            summary.applied.push(model);
        }
        let kept: Vec<String> = valid.iter().map(|v| v.spec.model.clone()).collect();
        let mut gone: Vec<String> = control.from_file.keys().filter(|m| !kept.contains(m)).cloned().collect();
        gone.sort();
        for model in gone {
            control.running.remove(&model);
            if self.routes.remove(&model).is_some() {
                summary.removed.push(model);
            }
        }
        control.from_file = valid.into_iter().map(|v| (v.spec.model.clone(), v.spec)).collect();
        Ok(summary)
    }

    /// Sets the weights of every target of `model`'s route. On a route with a
    /// rollout this pauses it (see the analyzer's precedence rules).
    pub async fn set_weights(&self, model: &str, weights: &[(u64, u32)]) -> Result<(), Error> {
        let control = self.control.lock().await;
        let route = self.routes.get(model).ok_or_else(|| no_route(model))?;
        check_weights(&route, weights)?;
        for &(version, weight) in weights {
            if weight > 0 {
                self.repository.resolve(model, Some(version)).map_err(|e| {
                    Error::FailedPrecondition(format!("cannot send traffic to version {version}: {}", e.message()))
                })?;
            }
        }
        if let Some(running) = control.running.get(model).filter(|r| r.generation == route.generation) {
            return send(running, Command::SetWeights(weights.to_vec())).await;
        }
        let changes: Vec<(u64, u32, bool)> = weights.iter().map(|&(v, w)| (v, w, false)).collect();
        if self.routes.update(model, route.generation, |r| r.with_weights(&changes)) {
            Ok(())
        } else {
            Err(no_route(model))
        }
    }

    /// Sends an operator command to `model`'s rollout.
    pub async fn command(&self, model: &str, command: Command) -> Result<(), Error> {
        let control = self.control.lock().await;
        let route = self.routes.get(model).ok_or_else(|| no_route(model))?;
        let running = control
            .running
            .get(model)
            .filter(|r| r.generation == route.generation)
            .ok_or_else(|| Error::FailedPrecondition(format!("route '{model}' has no rollout")))?;
        let status = running.status.lock().clone();
        let needs = match command {
            Command::Promote => Some(status.canary),
            Command::Rollback => Some(status.baseline),
            Command::Resume => Some(status.canary),
            Command::Pause | Command::SetWeights(_) => None,
        };
        if let Some(version) = needs {
            self.repository.resolve(model, Some(version)).map_err(|e| {
                Error::FailedPrecondition(format!("cannot send traffic to version {version}: {}", e.message()))
            })?;
        }
        send(running, command).await
    }

    /// The state of one route.
    pub async fn status(&self, model: &str) -> Result<RouteStatus, Error> {
        let control = self.control.lock().await;
        let route = self.routes.get(model).ok_or_else(|| no_route(model))?;
        Ok(self.describe(&control, &route))
    }

    /// The state of every route, by model name.
    pub async fn list(&self) -> Vec<RouteStatus> {
        let control = self.control.lock().await;
        let table = self.routes.snapshot();
        let mut routes: Vec<&Arc<Route>> = table.routes.values().collect();
        routes.sort_by(|a, b| a.model.cmp(&b.model));
        routes.into_iter().map(|r| self.describe(&control, r)).collect()
    }

    fn describe(&self, control: &Control, route: &Route) -> RouteStatus {
        let now = tokio::time::Instant::now();
        let window = |arm: &crate::routing::Arm| {
            let summary = arm.window.summary(now);
            TargetWindow {
                span_ms: arm.window.span().as_millis() as u64,
                stats: WindowStats::from(&summary),
                p50_ms: summary.quantile(0.5).map(|d| d.as_secs_f64() * 1000.0),
            }
        };
        let reports = route.feedback.as_ref().map(|f| f.reports()).unwrap_or_default();
        let quality = |version: u64| {
            reports
                .iter()
                .find(|(v, ..)| *v == version)
                .map(|(_, total, window)| TargetQuality { total: total.clone(), window: window.clone() })
        };
        let targets = route
            .targets
            .iter()
            .map(|t| TargetStatus {
                version: t.version,
                weight: t.weight,
                failed: t.failed,
                ready: self.repository.resolve(&route.model, Some(t.version)).is_ok(),
                max_in_flight: t.max_in_flight,
                in_flight: t.arm.in_flight(),
                window: window(&t.arm),
                drift: self.routes.drift(&route.model, t.version),
                quality: quality(t.version),
            })
            .collect();
        let shadow = route.shadow.as_ref().map(|s| {
            let c = s.counts();
            let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
            let (compared, agreed) = (load(&c.compared), load(&c.agreed));
            ShadowStatus {
                version: s.spec.version,
                percent: s.spec.percent,
                success: load(&c.success),
                error: load(&c.error),
                skipped: load(&c.skipped),
                compared,
                agreed,
                agreement_rate: (compared > 0).then(|| agreed as f64 / compared as f64),
                max_abs_diff: (compared > 0).then(|| c.max_abs_diff()),
            }
        });
        let rollout = control
            .running
            .get(&route.model)
            .filter(|r| r.generation == route.generation)
            .map(|r| r.status.lock().clone());
        RouteStatus {
            model: route.model.clone(),
            generation: route.generation,
            targets,
            shadow,
            rollout,
            feedback: route.feedback.as_ref().map(|f| {
                let index = f.index();
                index.flush();
                IndexStatus {
                    entries: index.len(),
                    capacity: index.capacity(),
                    bytes: index.heap_bytes(),
                    evicted: index.evicted(),
                    dropped: index.dropped(),
                }
            }),
            spec: (*route.spec).clone(),
        }
    }
}

async fn send(running: &Running, command: Command) -> Result<(), Error> {
    let (reply, answer) = oneshot::channel();
    let stopped = || Error::Internal("the rollout task has stopped".into());
    running.commands.send((command, reply)).await.map_err(|_| stopped())?;
    answer.await.map_err(|_| stopped())?
}

fn no_route(model: &str) -> Error {
    Error::NotFound(format!("no route for model '{model}'"))
}

/// Weights must name every target of the route once and sum to 100.
fn check_weights(route: &Route, weights: &[(u64, u32)]) -> Result<(), Error> {
    for (i, &(version, weight)) in weights.iter().enumerate() {
        if route.target(version).is_none() {
            return Err(Error::invalid(format!("version {version} is not a target of route '{}'", route.model)));
        }
        if weights[..i].iter().any(|w| w.0 == version) {
            return Err(Error::invalid(format!("version {version} is listed twice")));
        }
        if weight > 100 {
            return Err(Error::invalid(format!("weights are percentages, version {version} has {weight}")));
        }
    }
    if let Some(missing) = route.targets.iter().find(|t| !weights.iter().any(|w| w.0 == t.version)) {
        return Err(Error::invalid(format!(
            "the weight of version {} is missing: give every target's",
            missing.version
        )));
    }
    let total: u32 = weights.iter().map(|w| w.1).sum();
    if total != 100 {
        return Err(Error::invalid(format!("weights must sum to 100, got {total}")));
    }
    Ok(())
}
