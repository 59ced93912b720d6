//! One loaded model version: its config, its inputs and outputs, its
//! scheduler, and its statistics. Loading builds all of it off to the side,
//! warms every instance up, and only then hands it over to be published.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use modelgate_backend::{
    Backend, DataType, Device, InputTensor, InstanceOptions, ModelLoader, ModelSignature, OutputTensor,
};

use super::model_config::{self, ConfigFile, InstanceKind, ModelConfig, ModelConfigError};
use super::settings::RepositorySettings;
use crate::batching::{AlignedBuf, BatchPolicy, Scheduler};
use crate::drift::{Profiler, Schema};
use crate::error::Error;
use crate::metrics::VersionMetrics;
use crate::stats::ModelStats;
use crate::tensor::{InferRequest, ModelIo, ResponseOutput, Tensor};

/// A version ready to serve.
#[derive(Debug)]
pub struct ModelVersion {
    /// Model name.
    pub name: String,
    /// Version number.
    pub version: u64,
    /// Effective config.
    pub config: Arc<ModelConfig>,
    /// Inputs and outputs clients use.
    pub io: ModelIo,
    /// Statistics.
    pub stats: Arc<ModelStats>,
    /// Metric handles.
    pub metrics: Arc<VersionMetrics>,
    scheduler: Scheduler,
    default_timeout: Option<Duration>,
    allow_timeout_override: bool,
}

impl ModelVersion {
    /// Runs a request as [`ModelVersion::infer`] does and counts it in this
    /// version's statistics. Returns the time since `arrival` as well, for
    /// the caller's own records.
    pub async fn infer_recorded(
        &self,
        request: InferRequest,
        arrival: Instant,
    ) -> (Result<Vec<ResponseOutput>, Error>, Duration) {
        let result = self.infer(request, arrival).await;
        let elapsed = arrival.elapsed();
        match &result {
            Ok(_) => self.stats.success.add(1, elapsed),
            Err(_) => self.stats.fail.add(1, elapsed),
        }
        (result, elapsed)
    }

    /// Validates and runs a request; waits at most until its deadline.
    /// Returns the outputs the request asked for, named and in its order.
    pub async fn infer(&self, request: InferRequest, arrival: Instant) -> Result<Vec<ResponseOutput>, Error> {
        let timeout = self.effective_timeout(request.timeout);
        // The client's own deadline governs (it is no longer than the
        // model's): its expiry is the client's outcome, not the version's.
        let client_set = request.timeout.is_some() && timeout == request.timeout;
        let result = self.infer_until(request, arrival, timeout).await;
        match result {
            Err(Error::DeadlineExceeded(message)) if client_set => Err(Error::ClientDeadline(message)),
            other => other,
        }
    }

    async fn infer_until(
        &self,
        request: InferRequest,
        arrival: Instant,
        timeout: Option<Duration>,
    ) -> Result<Vec<ResponseOutput>, Error> {
        let mut valid = self.io.validate(request)?;
        // The batch needs the output indices too; the forms are the response's alone.
        let (indices, binary) = (valid.outputs.clone(), std::mem::take(&mut valid.binary));
        let deadline = timeout.map(|t| arrival + t);
        let receiver = self.scheduler.submit(valid, deadline)?;
        let reply = match deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline.into(), receiver).await {
                Ok(reply) => reply,
                // Dropping the receiver marks the queued request cancelled, so it never runs.
                Err(_) => {
                    return Err(Error::DeadlineExceeded(format!(
                        "request timeout of {} µs expired",
                        timeout.unwrap_or_default().as_micros()
                    )));
                }
            },
            None => receiver.await,
        };
        let tensors = reply.map_err(|_| Error::Internal("the model instance stopped".into()))??;
        let specs = &self.io.outputs;
        Ok(indices
            .into_iter()
            .zip(binary)
            .zip(tensors)
            .map(|((index, binary), t)| ResponseOutput {
                tensor: Tensor { name: specs[index].name.clone(), dtype: t.dtype, shape: t.shape, data: t.data },
                binary,
            })
            .collect())
    }

    /// Triton's queue policy: the model default applies unless the request may
    /// shorten it (`allow_timeout_override`); a request may never lengthen it.
    fn effective_timeout(&self, requested: Option<Duration>) -> Option<Duration> {
        match (self.default_timeout, requested) {
            (Some(default), Some(asked)) if self.allow_timeout_override => Some(asked.min(default)),
            (Some(default), _) => Some(default),
            (None, asked) => asked,
        }
    }

    /// Requests waiting.
    pub fn queue_depth(&self) -> usize {
        self.scheduler.queue_depth()
    }
}

/// Everything needed to load one version.
pub struct VersionPlan<'a> {
    /// Model name.
    pub name: &'a str,
    /// Version number.
    pub version: u64,
    /// The version directory.
    pub dir: &'a Path,
    /// The config as written.
    pub file: &'a ConfigFile,
    /// The loader for this model's platform.
    pub loader: &'a dyn ModelLoader,
    /// Repository-wide settings.
    pub settings: &'a RepositorySettings,
    /// The drift profiler, when `[drift]` is on.
    pub drift: Option<&'a Profiler>,
}

/// Why a version could not be loaded: what the repository index shows (no
/// host paths: runtime messages name the file relative to the repository).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The version directory has no model file.
    #[error("version {version} has no model file '{filename}'")]
    MissingFile {
        /// The version.
        version: u64,
        /// The file looked for.
        filename: String,
    },
    /// The config and the model disagree, or the config cannot be served.
    #[error(transparent)]
    Config(#[from] ModelConfigError),
    /// The runtime refused the model or the device.
    #[error("{0}")]
    Runtime(String),
    /// A configured warm-up sample failed.
    #[error("warm-up of instance {instance} failed: {reason}")]
    WarmUp {
        /// Which instance.
        instance: usize,
        /// The sample and what failed.
        reason: String,
    },
    /// The instance threads could not be started.
    #[error("cannot start instance threads: {0}")]
    Threads(#[from] std::io::Error),
    /// The blocking task that loads panicked or was cancelled.
    #[error("load task failed: {0}")]
    Task(String),
}

/// Loads, completes, warms up and starts a version. Blocking: run it off the
/// async runtime.
pub fn load_version(plan: VersionPlan<'_>) -> Result<ModelVersion, LoadError> {
    let started = Instant::now();
    let VersionPlan { name, version, dir, file, loader, settings, drift } = plan;
    let filename = file.default_model_filename.clone().unwrap_or_else(|| loader.default_filename().to_owned());
    let model_file = dir.join(&filename);
    if !model_file.exists() {
        return Err(LoadError::MissingFile { version, filename });
    }
    let complete = |signature: Option<&ModelSignature>| {
        model_config::complete(
            name,
            file.clone(),
            loader.platform(),
            loader.backend_name(),
            loader.default_filename(),
            signature,
            settings,
        )
    };
    // Formats without a signature (TorchScript) need the config's before loading.
    let declared = complete(None).ok().map(|c| c.signature());
    let devices = instance_devices(&model_config::instance_groups(name, file.instance_groups.clone()));
    let first_options = instance_options(name, file, settings, devices.first().copied().unwrap_or_default())?;
    // Runtime errors quote the file path; clients and the index see it relative to the repository.
    let shown = format!("{name}/{version}/{filename}");
    let scrub = |e: modelgate_backend::BackendError| {
        LoadError::Runtime(e.to_string().replace(&model_file.display().to_string(), &shown))
    };
    let first = loader.load(&model_file, declared.as_ref(), &first_options).map_err(scrub)?;
    let config = Arc::new(complete(first.signature())?);
    let signature = config.signature();
    // Checked with drift off too: a wrong `modelgate.features.*` fails the load
    // the day it is written, not the day drift is turned on.
    let schema = Schema::from_config(config.max_batch_size, &config.inputs, &config.outputs, &config.parameters)
        .map_err(|e| ModelConfigError(format!("model '{name}': {e}")))?;

    let mut backends = vec![first];
    for &device in devices.iter().skip(1) {
        let options = instance_options(name, file, settings, device)?;
        backends.push(loader.load(&model_file, Some(&signature), &options).map_err(scrub)?);
    }
    for (i, backend) in backends.iter_mut().enumerate() {
        warm_up(&config, backend.as_mut()).map_err(|reason| LoadError::WarmUp { instance: i, reason })?;
    }
    for (device, backend) in devices.iter().zip(&backends) {
        if let Some(bytes) = backend.device_memory_bytes() {
            crate::metrics::device_memory(name, version, &device.to_string(), bytes);
        }
    }

    let max_rows = config.max_batch_size as usize;
    let policy = batch_policy(&config, settings);
    let stats = Arc::new(ModelStats::new(max_rows.max(1)));
    let metrics = Arc::new(VersionMetrics::new(name, version));
    let thread_name = format!("mg-{name}-{version}");
    let tap = drift.map(|profiler| profiler.register(name, version, schema, stats.clone()));
    let spin = Duration::from_micros(settings.instance_spin_micros);
    let scheduler = Scheduler::start(&thread_name, policy, spin, backends, stats.clone(), metrics.clone(), tap)?;
    let (default_timeout, allow_timeout_override) = match &config.dynamic_batching {
        Some(b) if b.default_timeout_microseconds > 0 => {
            (Some(Duration::from_micros(b.default_timeout_microseconds)), b.allow_timeout_override)
        }
        _ => (None, true),
    };
    crate::metrics::model_loaded(name, version, started.elapsed());
    Ok(ModelVersion {
        name: name.to_owned(),
        version,
        io: config.io(),
        config,
        stats,
        metrics,
        scheduler,
        default_timeout,
        allow_timeout_override,
    })
}

fn batch_policy(config: &ModelConfig, settings: &RepositorySettings) -> BatchPolicy {
    let batching = config.dynamic_batching.clone().unwrap_or_default();
    let mut preferred: Vec<usize> = batching.preferred_batch_size.iter().map(|&p| p as usize).collect();
    preferred.sort_unstable_by(|a, b| b.cmp(a));
    BatchPolicy {
        max_batch_size: config.max_batch_size.max(1) as usize,
        combine: config.dynamic_batching.is_some() && config.max_batch_size > 0,
        preferred,
        max_delay: Duration::from_micros(batching.max_queue_delay_microseconds),
        // Completion gave every batcher its bound; requests run one by one share the default.
        max_queue_size: config.dynamic_batching.as_ref().map_or(settings.default_max_queue_size, |b| b.max_queue_size)
            as usize,
    }
}

/// One device per instance, in group order.
fn instance_devices(groups: &[model_config::InstanceGroup]) -> Vec<Device> {
    let mut devices = Vec::new();
    for group in groups {
        match group.kind {
            InstanceKind::Gpu => {
                for &gpu in &group.gpus {
                    devices.extend(std::iter::repeat_n(Device::Cuda(gpu), group.count as usize));
                }
            }
            InstanceKind::Cpu | InstanceKind::Model | InstanceKind::Auto => {
                devices.extend(std::iter::repeat_n(Device::Cpu, group.count as usize));
            }
        }
    }
    if devices.is_empty() {
        devices.push(Device::Cpu);
    }
    devices
}

/// Most threads a thread-count parameter may ask for: more is a typo, not a machine.
const MAX_THREADS: usize = 1024;

fn instance_options(
    name: &str,
    file: &ConfigFile,
    settings: &RepositorySettings,
    device: Device,
) -> Result<InstanceOptions, ModelConfigError> {
    // A count that is set but unreadable fails the load: read as "unset", it would quietly
    // give the model every core.
    let threads = |key: &str| -> Result<Option<usize>, ModelConfigError> {
        let Some(text) = file.parameters.get(key) else { return Ok(None) };
        match text.trim().parse::<usize>() {
            Ok(n) if n <= MAX_THREADS => Ok(Some(n)),
            _ => Err(ModelConfigError(format!(
                "model '{name}': parameter '{key}' must be a number of threads from 0 (the runtime's choice) to {MAX_THREADS}, got {text:?}"
            ))),
        }
    };
    Ok(InstanceOptions {
        device,
        allow_cpu_fallback: file.parameters.get("allow_cpu_fallback").is_some_and(|v| v == "true" || v == "1"),
        intra_op_threads: threads("intra_op_thread_count")?.unwrap_or(settings.intra_op_threads),
        inter_op_threads: threads("inter_op_thread_count")?.unwrap_or(0),
        parameters: file.parameters.clone(),
    })
}

/// Runs the config's `model_warmup` samples, or one zero-filled batch of one
/// when there are none, so the first client does not pay for lazy
/// initialisation. A failing default sample is only logged; a failing
/// configured sample fails the load, as in Triton.
fn warm_up(config: &ModelConfig, backend: &mut dyn Backend) -> Result<(), String> {
    if config.warmup.is_empty() {
        if let Err(e) = run_sample(config, backend, 1, false) {
            tracing::warn!(model = %config.name, error = %e, "default warm-up failed; serving anyway");
        }
        return Ok(());
    }
    for sample in &config.warmup {
        for _ in 0..sample.count {
            run_sample(config, backend, sample.batch_size.max(1) as i64, sample.random_inputs)
                .map_err(|e| format!("sample '{}': {e}", sample.name))?;
        }
    }
    Ok(())
}

fn run_sample(
    config: &ModelConfig,
    backend: &mut dyn Backend,
    batch: i64,
    random: bool,
) -> Result<Vec<OutputTensor>, String> {
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let inputs: Vec<(DataType, Vec<i64>, AlignedBuf)> = config
        .inputs
        .iter()
        .map(|spec| {
            let mut shape: Vec<i64> = spec.dims.iter().map(|&d| if d < 0 { 1 } else { d }).collect();
            if config.max_batch_size > 0 {
                shape.insert(0, batch);
            }
            let count = modelgate_backend::element_count(&shape).unwrap_or(0);
            let buf = match spec.dtype.element_size() {
                Some(size) => {
                    let mut buf = AlignedBuf::zeroed(count * size);
                    if random && spec.dtype != DataType::Bool {
                        for byte in buf.as_bytes_mut() {
                            seed ^= seed << 13;
                            seed ^= seed >> 7;
                            seed ^= seed << 17;
                            *byte = (seed & 0x3f) as u8;
                        }
                    }
                    buf
                }
                // BYTES: `count` empty elements (a zero length prefix each).
                None => AlignedBuf::zeroed(count * 4),
            };
            (spec.dtype, shape, buf)
        })
        .collect();
    let views: Vec<InputTensor<'_>> =
        inputs.iter().map(|(dtype, shape, buf)| InputTensor { dtype: *dtype, shape, data: buf.as_bytes() }).collect();
    let outputs: Vec<usize> = (0..config.outputs.len()).collect();
    backend.execute(&views, &outputs).map_err(|e| e.to_string())
}
