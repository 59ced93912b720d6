//! The state both front doors share, and the protocol-neutral inference path:
//! resolve the model version, run the request, record the outcome.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http::HeaderMap;
use metrics_exporter_prometheus::PrometheusHandle;

use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::budget::InflightBytes;
use crate::drift::Profiler;
use crate::error::{Error, Fault};
use crate::feedback::request_id;
use crate::metrics::{self, Protocol};
use crate::repository::{ModelVersion, Repository, validate_model_name};
use crate::rollout::Rollouts;
use crate::routing::sprt::LatencyWatch;
use crate::routing::{CanaryHedge, CanaryRetry, Route, Routes, Target};
use crate::tensor::{InferRequest, InferResponse};

/// Limits applied at the door, the same for HTTP and gRPC.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest request body, after decompression, and largest decoded tensor total.
    pub max_request_bytes: usize,
    /// Request data held at once across every request (see [`InflightBytes`]).
    pub max_inflight_bytes: usize,
    /// Open data-plane connections at most, HTTP and gRPC ports together
    /// (at most [`Semaphore::MAX_PERMITS`]: [`Gateway::new`] caps it).
    pub max_connections: usize,
    /// Longest wait for the next piece of a request body (nginx's
    /// `client_body_timeout`): a client that stalls mid-body is answered 408
    /// and its connection closed, instead of holding it open for ever.
    pub body_idle_timeout: Duration,
    /// Longest time to receive a whole request body: a body that trickles in
    /// (one byte per pause, each shorter than `body_idle_timeout`) still ends.
    pub body_timeout: Duration,
    /// Compressed request bodies inflated at once; the others wait for a turn.
    pub max_concurrent_decompressions: usize,
}

/// What the request path needs, behind one `Arc`.
#[derive(Debug)]
pub struct Gateway {
    /// Models and their versions.
    pub repository: Arc<Repository>,
    /// Door limits.
    pub limits: Limits,
    /// Request data held now, against `limits.max_inflight_bytes`.
    pub inflight: Arc<InflightBytes>,
    /// Turns to inflate a compressed body (`limits.max_concurrent_decompressions`).
    pub decompressions: Arc<Semaphore>,
    /// One permit per open data-plane connection (`limits.max_connections`).
    pub connection_slots: Arc<Semaphore>,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// Routes of public model names to versions (read per request).
    pub routes: Arc<Routes>,
    /// Every change to the routes, and the rollouts.
    pub rollouts: Rollouts,
    /// The drift profiler (`[drift] enabled`): the sync follower drains its
    /// closed windows and hands it the references' specs.
    pub drift: Option<Arc<Profiler>>,
    /// The control plane that shared feedback routes ask (connected by the sync follower).
    pub fleet: crate::feedback::FleetLink,
    draining: AtomicBool,
}

/// Where a request came from: what the routing and the records need beyond
/// the tensors.
#[derive(Clone, Copy, Debug)]
pub struct Call<'a> {
    /// HTTP or gRPC.
    pub protocol: Protocol,
    /// When the request reached the door.
    pub arrival: Instant,
    /// Request headers (gRPC metadata as headers): routing rules and sticky keys read them.
    pub headers: &'a HeaderMap,
}

/// The name and version this server reports in server metadata.
pub const SERVER_NAME: &str = "modelgate";

/// V2 extensions that are implemented here, and only those: perf_analyzer
/// calls the statistics endpoint because `statistics` is listed.
pub const EXTENSIONS: &[&str] = &["binary_tensor_data", "model_configuration", "model_repository", "statistics"];

impl Gateway {
    /// Shared state over a repository.
    pub fn new(repository: Arc<Repository>, limits: Limits, metrics: PrometheusHandle) -> Gateway {
        let routes = Arc::new(Routes::default());
        let rollouts = Rollouts::new(routes.clone(), repository.clone());
        // A semaphore's bound; nobody configures 2^61 connections.
        let limits = Limits { max_connections: limits.max_connections.min(Semaphore::MAX_PERMITS), ..limits };
        let inflight = InflightBytes::new(limits.max_inflight_bytes);
        let connection_slots = Arc::new(Semaphore::new(limits.max_connections));
        let decompressions = Arc::new(Semaphore::new(limits.max_concurrent_decompressions.clamp(1, 1 << 16)));
        let drift = repository.drift().cloned();
        Gateway {
            repository,
            limits,
            inflight,
            decompressions,
            connection_slots,
            metrics,
            routes,
            rollouts,
            drift,
            fleet: crate::feedback::FleetLink::default(),
            draining: AtomicBool::new(false),
        }
    }

    /// Data-plane connections open now.
    pub fn open_connections(&self) -> usize {
        self.limits.max_connections - self.connection_slots.available_permits()
    }

    /// Records how close the door is to its limits (called when `/metrics` is
    /// scraped, so requests and connections pay nothing for it).
    pub fn record_door_metrics(&self) {
        let limits = &self.limits;
        metrics::door(self.inflight.held(), limits.max_inflight_bytes, self.open_connections(), limits.max_connections);
    }

    /// The prediction index and quality of `model`'s route, for feedback (HTTP and gRPC):
    /// 404 for a route without a `feedback` section, or no route.
    pub fn feedback(&self, model: &str) -> Result<Arc<crate::feedback::Feedback>, Error> {
        validate_model_name(model)?;
        self.routes.get(model).and_then(|route| route.feedback.clone()).ok_or_else(|| {
            Error::NotFound(format!(
                "model '{model}' keeps no predictions for feedback: its route needs a `feedback` section"
            ))
        })
    }

    /// Publishes each feedback route's quality over its window and its
    /// index's size (at scrape time, like the door's).
    pub fn record_feedback_metrics(&self) {
        for route in self.routes.snapshot().routes.values() {
            if let Some(feedback) = &route.feedback {
                feedback.publish_metrics();
            }
        }
    }

    /// Refuses to unload, through the repository API, a model that a route
    /// serves: the admin API refuses to unload a routed version, and the
    /// unauthenticated API may not do more than the authenticated one.
    pub fn check_unload(&self, model: &str) -> Result<(), Error> {
        match self.routes.get(model) {
            Some(_) => Err(Error::FailedPrecondition(format!(
                "'{model}' has a route: remove the route (admin API) before unloading the model"
            ))),
            None => Ok(()),
        }
    }

    /// Marks the server as shutting down: readiness turns false at once.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Ready to take traffic.
    pub fn is_ready(&self) -> bool {
        !self.draining.load(Ordering::Acquire) && self.repository.is_ready()
    }

    /// Finds the version that serves `model` (and `version`, as the client
    /// wrote it; empty means the route's main target when the model has a
    /// route, else the policy's choice), for metadata, config and readiness.
    pub fn resolve(&self, model: &str, version: Option<&str>) -> Result<Arc<ModelVersion>, Error> {
        validate_model_name(model)?;
        let version = match parse_version(version)? {
            None => self.routes.get(model).and_then(|route| route.primary()),
            named => named,
        };
        self.repository.resolve(model, version)
    }

    /// Runs one inference and records its outcome in the version's statistics
    /// and metrics. A request that names no version goes through the model's
    /// route, when it has one.
    pub async fn infer(
        &self,
        model: &str,
        version: Option<&str>,
        request: InferRequest,
        call: Call<'_>,
    ) -> Result<InferResponse, Error> {
        validate_model_name(model)?;
        let version = parse_version(version)?;
        let mut request = request;
        // Every request has an id: feedback names the prediction by it, and logs carry it.
        let id: &str = request.id.get_or_insert_with(request_id::generate);
        // The span copies the id only when it is enabled.
        let span = tracing::debug_span!("infer", model, request_id = id);
        async {
            if version.is_none()
                && let Some(route) = self.routes.get(model)
            {
                // Boxed: a route's future (retries, hedges, rescues) is several
                // times a version's, and would make every request's that large.
                return Box::pin(self.infer_routed(&route, request, call)).await;
            }
            let served_by = self.repository.resolve(model, version)?;
            run_version(model, &served_by, request, call.protocol, call.arrival).await
        }
        .instrument(span)
        .await
    }

    /// Picks the route's target, runs the request there, records the outcome
    /// in the target's window, and sends the shadow copy. A rollout canary's
    /// server fault is retried once on the baseline (see [`retryable`]), its
    /// slow request hedged there when the route says so, and its running
    /// requests rescued there when the rollout rolls it back.
    async fn infer_routed(
        &self,
        route: &Arc<Route>,
        request: InferRequest,
        call: Call<'_>,
    ) -> Result<InferResponse, Error> {
        let model = route.model.as_str();
        let (index, by_rule) = route.pick_why(call.headers)?;
        let target = &route.targets[index];
        let shadow = route
            .shadow
            .as_ref()
            .filter(|s| s.spec.version != target.version)
            .and_then(|s| Some((s.clone(), s.admit()?, request.clone())));
        // A header that names the canary asked for the canary: only a weighted pick may be answered by another version.
        let retry = route.retry.as_ref().filter(|r| r.canary == target.version && !by_rule);
        let hedge = route.hedge.as_ref().filter(|h| h.canary == target.version && !by_rule);
        // The copy the baseline may run: a hedge or a rescue takes it, and such a request is not retried too.
        let mut copy = (retry.is_some() || hedge.is_some()).then(|| request.clone());
        let mut result = match copy {
            None => self.run_target(model, target, request, call, call.arrival).await,
            // Boxed, as the retry below: only a canary's requests carry the race's state.
            Some(_) => Box::pin(self.run_canary(route, target, hedge, request, &mut copy, call)).await,
        };
        match &result {
            // Every answer the picked version gave itself earns the route's retries and hedges: the
            // canary's too, so the budget is a share of the route's traffic, which is the baseline's
            // load before the rollout began (earning only from the baseline's answers left nothing
            // to retry with at the last step, where the baseline gets no traffic of its own).
            Ok(response) if response.model_version == target.version => {
                if let Some(retry) = &route.retry {
                    retry.budget.earn();
                }
                if let Some(hedge) = &route.hedge {
                    hedge.budget.earn();
                }
            }
            Ok(_) => {}
            Err(error) => {
                if let (Some(retry), Some(copy)) = (retry, copy)
                    && retryable(error, &copy, call.arrival)
                {
                    // The canary's answer is dropped unsent: the client gets the retry's answer, once.
                    result = Box::pin(self.retry_on_baseline(route, retry, copy, call)).await.unwrap_or(result);
                }
            }
        }
        if let (Some(feedback), Ok(response)) = (&route.feedback, &result)
            && let Some(id) = &response.id
        {
            // The version that answered: after a retry or a hedge, the baseline's.
            feedback.keep(id, response.model_version, &response.outputs);
        }
        if let Some((shadow, permit, copy)) = shadow {
            let primary = result.as_ref().ok().map(|r| r.outputs.clone());
            let answered = result.as_ref().map_or(target.version, |r| r.model_version);
            let task = shadow.run(permit, self.repository.clone(), model.to_owned(), answered, copy, primary);
            tokio::spawn(task);
        }
        result
    }

    /// Runs a request on one target of a route and records its outcome (see
    /// [`run_on_target`]).
    async fn run_target(
        &self,
        model: &str,
        target: &Target,
        request: InferRequest,
        call: Call<'_>,
        since: Instant,
    ) -> Result<InferResponse, Error> {
        run_on_target(&self.repository, model, target, request, call.protocol, call.arrival, since).await
    }

    /// Runs a rollout canary's request, and the same request (`copy`, taken)
    /// on the baseline too when, before the canary answers:
    /// - the route hedges and `hedge.after` has passed since its arrival
    ///   (within the hedge budget), or
    /// - the rollout rolls the canary back (a rescue: the canary has been
    ///   judged, and its running requests need not wait for it).
    ///
    /// The first success answers. A canary run that loses a hedge goes on in
    /// a task of its own, so that its answer, when it comes, is recorded
    /// against the canary like any other (and its slowness is counted soon
    /// after it passes the latency threshold, even if it never answers); one
    /// that loses a rescue is cancelled. Only a hedged route's canary run is
    /// owned and boxed for that: without hedging it runs in place.
    async fn run_canary(
        &self,
        route: &Route,
        canary: &Target,
        hedge: Option<&CanaryHedge>,
        request: InferRequest,
        copy: &mut Option<InferRequest>,
        call: Call<'_>,
    ) -> Result<InferResponse, Error> {
        let model = route.model.as_str();
        let Some(hedge) = hedge else {
            let run = self.run_target(model, canary, request, call, call.arrival);
            tokio::pin!(run);
            return self.race_on_baseline(route, canary, None, run, copy, call).await.0;
        };
        // Owned (no borrow of the request's state), so that it can outlive the request.
        let mut run = Box::pin({
            let (repository, model, canary) = (self.repository.clone(), model.to_owned(), canary.clone());
            let (protocol, arrival) = (call.protocol, call.arrival);
            async move { run_on_target(&repository, &model, &canary, request, protocol, arrival, arrival).await }
        });
        let (result, lost_a_hedge) = self.race_on_baseline(route, canary, Some(hedge), run.as_mut(), copy, call).await;
        if lost_a_hedge {
            tokio::spawn(run);
        }
        result
    }

    /// [`Gateway::run_canary`]'s race, on a canary run it does not own; also
    /// true when the canary run lost a hedge and is to go on.
    async fn race_on_baseline<F: Future<Output = Result<InferResponse, Error>>>(
        &self,
        route: &Route,
        canary: &Target,
        hedge: Option<&CanaryHedge>,
        mut canary_run: Pin<&mut F>,
        copy: &mut Option<InferRequest>,
        call: Call<'_>,
    ) -> (Result<InferResponse, Error>, bool) {
        let model = route.model.as_str();
        // From the tokio clock (tests pause it), what is left of `after` since arrival.
        let late = hedge.map(|h| tokio::time::Instant::now() + h.after.saturating_sub(call.arrival.elapsed()));
        let hedge_time = async {
            match late {
                Some(late) => tokio::time::sleep_until(late).await,
                None => std::future::pending().await,
            }
        };
        let rescue = tokio::select! {
            biased;
            result = &mut canary_run => return (result, false),
            () = canary.arm.retired() => true,
            () = hedge_time => false,
        };
        let baseline = route.target(route.baseline()).filter(|t| !t.failed);
        // Past the client's deadline nobody waits for the baseline.
        let waited_for = copy.as_ref().is_some_and(|c| client_waits(c, call.arrival));
        let (Some(baseline), true) = (baseline, waited_for) else {
            return (canary_run.await, false);
        };
        if let (false, Some(hedge)) = (rescue, hedge)
            && !hedge.budget.spend()
        {
            metrics::canary_hedge(model, hedge.canary, "budget_exhausted");
            return (canary_run.await, false);
        }
        let Some(request) = copy.take() else {
            return (canary_run.await, false);
        };
        // The baseline's window gets this run's own time, not the canary's before it.
        let baseline_run = self.run_target(model, baseline, request, call, Instant::now());
        tokio::pin!(baseline_run);
        // The third value: the canary run has not ended.
        let (result, winner, canary_running) = tokio::select! {
            biased;
            result = &mut canary_run => match result {
                // The baseline's run is dropped: nobody needs its answer.
                Ok(response) => (Ok(response), "canary_won", false),
                // A canary fault while the baseline runs: its answer is the retry.
                Err(_) => (baseline_run.await, "baseline_won", false),
            },
            result = &mut baseline_run => match result {
                Ok(response) => (Ok(response), "baseline_won", true),
                // The baseline failed: the canary's answer, when it comes, is the only one.
                Err(_) => (canary_run.await, "canary_won", false),
            },
        };
        if rescue {
            metrics::canary_rescue(model, canary.version, winner);
        } else {
            metrics::canary_hedge(model, canary.version, winner);
        }
        (result, canary_running && !rescue)
    }

    /// Runs `request` again on the route's baseline, within its budget;
    /// `None` when it may not (no budget, no live baseline), and the canary's
    /// answer stands.
    async fn retry_on_baseline(
        &self,
        route: &Route,
        retry: &CanaryRetry,
        request: InferRequest,
        call: Call<'_>,
    ) -> Option<Result<InferResponse, Error>> {
        let model = route.model.as_str();
        let baseline = route.target(retry.baseline).filter(|t| !t.failed)?;
        if !retry.budget.spend() {
            metrics::canary_retry(model, retry.canary, "no_budget");
            return None;
        }
        // The baseline's window gets the retry's own time, not the canary's before it.
        let result = self.run_target(model, baseline, request, call, Instant::now()).await;
        metrics::canary_retry(model, retry.canary, if result.is_ok() { "success" } else { "error" });
        if result.as_ref().is_err_and(|e| e.fault() == Fault::Server) {
            // The baseline fails too: no more retries until the route's own answers earn them again.
            retry.budget.empty();
        }
        Some(result)
    }
}

/// Runs a request on one target of a route and records its outcome, and its
/// time since `since`, in the target's arm (the deadline still counts from
/// the call's `arrival`). A canary whose latency is tested has its slowness
/// counted soon after it passes the threshold, not when it answers. Borrows
/// nothing of the request's call, so that a hedged canary run can outlive it.
async fn run_on_target(
    repository: &Repository,
    model: &str,
    target: &Target,
    request: InferRequest,
    protocol: Protocol,
    arrival: Instant,
    since: Instant,
) -> Result<InferResponse, Error> {
    let run = async {
        match target.arm.admit(model, target.max_in_flight) {
            Ok(_in_flight) => match repository.resolve(model, Some(target.version)) {
                Ok(served_by) => run_version(model, &served_by, request, protocol, arrival).await,
                // The route names it, so a missing version is the server's fault, not the client's.
                Err(e) => Err(Error::Unavailable(format!("route '{model}': {}", e.message()))),
            },
            Err(e) => Err(e),
        }
    };
    // The latency test counts the request slow if it passes the threshold while it runs (see `routing::overdue`).
    let watched = target.arm.sequential.as_ref().and_then(|s| {
        // From the tokio clock (tests pause it).
        let now = tokio::time::Instant::now();
        s.watch(now.checked_sub(since.elapsed()).unwrap_or(now))
    });
    let result = run.await;
    let slow_counted = watched.is_some_and(LatencyWatch::end);
    let outcome = result.as_ref().map(|_| ()).map_err(Error::fault);
    target.arm.record_watched(outcome, since.elapsed(), slow_counted);
    result
}

/// Runs a request on one version and records it.
async fn run_version(
    model: &str,
    served_by: &ModelVersion,
    mut request: InferRequest,
    protocol: Protocol,
    arrival: Instant,
) -> Result<InferResponse, Error> {
    // The version does not read the id: the response takes it.
    let id = request.id.take();
    let (result, elapsed) = served_by.infer_recorded(request, arrival).await;
    match result {
        Ok(outputs) => {
            served_by.metrics.request(protocol, Ok(()), elapsed);
            Ok(InferResponse { model_name: model.to_owned(), model_version: served_by.version, id, outputs })
        }
        Err(error) => {
            served_by.metrics.request(protocol, Err(error.outcome()), elapsed);
            Err(error)
        }
    }
}

/// Whether a canary's failed request may be retried on the baseline: a
/// server fault (never the client's mistake, nor its own deadline), with
/// time left before the client's deadline (the retry runs within what
/// remains: deadlines count from arrival), and not a deadline the gateway
/// enforced (that time is spent for the baseline too). Every inference
/// request that reaches a route is idempotent: the parameters that would
/// make one stateful (`sequence_id`, ...) are refused at the door.
fn retryable(error: &Error, request: &InferRequest, arrival: Instant) -> bool {
    error.fault() == Fault::Server && !matches!(error, Error::DeadlineExceeded(_)) && client_waits(request, arrival)
}

/// Whether the client still waits for `request`: its own deadline (`timeout`)
/// has not passed since `arrival`. Past it, neither a retry nor a hedge is sent.
fn client_waits(request: &InferRequest, arrival: Instant) -> bool {
    request.timeout.is_none_or(|timeout| arrival.elapsed() < timeout)
}

/// A version as the client wrote it (`None` or empty: not named; gRPC sends
/// an empty string for "not named"). Only plain decimal numbers, as the
/// repository's directories are named: `01`, `+1` or ` 1` name nothing.
fn parse_version(version: Option<&str>) -> Result<Option<u64>, Error> {
    match version {
        None | Some("") => Ok(None),
        Some(text) => text
            .parse::<u64>()
            .ok()
            .filter(|_| text.bytes().all(|b| b.is_ascii_digit()) && (text == "0" || !text.starts_with('0')))
            .map(Some)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "invalid model version '{}': versions are positive integers",
                    crate::error::Quoted(text)
                ))
            }),
    }
}

#[cfg(test)]
mod tests;
