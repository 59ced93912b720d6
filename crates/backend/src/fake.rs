//! A fake backend for tests (cargo feature `fake`): no native library, outputs
//! that are a known function of the inputs, and failures, latency and pauses
//! that a test sets and can change while the model serves.
//!
//! - Output `j` echoes input `j % inputs`: same type, shape and bytes. A test
//!   that gives each request its own values can check that every request of a
//!   batch got its own rows back. A config for the fake declares each output
//!   like the input it echoes.
//! - [`FakeModel`] is the state every instance of one model version shares:
//!   its [`Behaviour`], the record of the batches it ran, and a gate that
//!   holds executions until the test releases them (the deterministic way to
//!   let requests pile up in a queue, or to catch instances running at once).
//! - [`FakeLoader`] serves the platform `fake` (file `model.fake`, which may
//!   be empty) from a model repository, with one [`FakeModel`] per
//!   `<model>/<version>` directory, so a canary and its baseline behave apart.
//!
//! Everything here blocks on `std` primitives: the gateway runs backends on
//! their own OS threads, so a held or slow fake never stalls the async runtime.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::{Backend, BackendError, InputTensor, InstanceOptions, ModelLoader, ModelSignature, OutputTensor};
use crate::{DataType, bytes_elements};

/// The platform (and backend) name the fake loader serves.
pub const PLATFORM: &str = "fake";
/// The model file the fake loader looks for; its contents are not read.
pub const FILENAME: &str = "model.fake";

/// Which batches a fake model fails.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Failure {
    /// None.
    #[default]
    Never,
    /// Every batch.
    Always,
    /// Every batch after the first `n` this model has run (warm-up included).
    AfterBatches(usize),
    /// A batch in which some element of some input has exactly these
    /// little-endian bytes (for BYTES inputs: this content).
    OnElement(Vec<u8>),
}

impl Failure {
    /// Fails a batch holding the INT32 value `value` in any input.
    pub fn on_i32(value: i32) -> Failure {
        Failure::OnElement(value.to_le_bytes().to_vec())
    }
}

/// How a failing batch fails.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FailAs {
    /// `BackendError::Execute`.
    #[default]
    Error,
    /// A panic inside `execute`.
    Panic,
}

/// What a fake model does with each batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Behaviour {
    /// Time each execution takes (a real sleep on the instance thread).
    pub latency: Duration,
    /// Which batches fail.
    pub failure: Failure,
    /// How they fail.
    pub fail_as: FailAs,
}

/// One batch a fake model ran.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchRecord {
    /// The instance that ran it, in load order from 0.
    pub instance: usize,
    /// The first dimension of its first input (1 for a scalar).
    pub rows: usize,
    /// Whether the fake failed it.
    pub failed: bool,
}

#[derive(Debug, Default)]
struct State {
    behaviour: Behaviour,
    batches: Vec<BatchRecord>,
    /// Executions started since the model was created (not reset by `clear`).
    started: usize,
    /// Executions in progress now.
    running: usize,
    held: bool,
    instances: usize,
}

/// The state every instance of one fake model version shares.
#[derive(Debug, Default)]
pub struct FakeModel {
    state: Mutex<State>,
    changed: Condvar,
}

impl FakeModel {
    /// A model that answers every batch at once.
    pub fn new() -> Arc<FakeModel> {
        Arc::new(FakeModel::default())
    }

    /// A model with `behaviour`.
    pub fn with(behaviour: Behaviour) -> Arc<FakeModel> {
        let model = FakeModel::new();
        model.set_behaviour(behaviour);
        model
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking fake (FailAs::Panic) never panics while holding the lock,
        // but a test's assertion may: the state is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new instance of this model: its batches are recorded under the next
    /// instance number.
    pub fn instance(self: &Arc<FakeModel>) -> FakeBackend {
        let instance = {
            let mut state = self.lock();
            state.instances += 1;
            state.instances - 1
        };
        FakeBackend { model: self.clone(), instance }
    }

    /// `n` boxed instances, ready for a scheduler.
    pub fn instances(self: &Arc<FakeModel>, n: usize) -> Vec<Box<dyn Backend>> {
        (0..n).map(|_| Box::new(self.instance()) as Box<dyn Backend>).collect()
    }

    /// Replaces the behaviour; batches already running keep the old one.
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        self.lock().behaviour = behaviour;
    }

    /// Sets which batches fail from now on.
    pub fn set_failure(&self, failure: Failure) {
        self.lock().behaviour.failure = failure;
    }

    /// Sets the time each execution takes from now on.
    pub fn set_latency(&self, latency: Duration) {
        self.lock().behaviour.latency = latency;
    }

    /// Executions that start from now on wait, recorded and counted as
    /// running, until [`FakeModel::release`]. A load's warm-up waits too: hold
    /// a model after it is loaded.
    pub fn hold(&self) {
        self.lock().held = true;
    }

    /// Lets held executions finish and new ones run straight through.
    pub fn release(&self) {
        self.lock().held = false;
        self.changed.notify_all();
    }

    /// Every batch run since the last [`FakeModel::clear`], in start order.
    pub fn batches(&self) -> Vec<BatchRecord> {
        self.lock().batches.clone()
    }

    /// The rows of each batch run since the last clear, in start order.
    pub fn batch_sizes(&self) -> Vec<usize> {
        self.lock().batches.iter().map(|b| b.rows).collect()
    }

    /// Forgets the batches run so far (e.g. the warm-up of a load).
    pub fn clear(&self) {
        self.lock().batches.clear();
    }

    /// Executions in progress now.
    pub fn running(&self) -> usize {
        self.lock().running
    }

    /// Waits until `n` executions are in progress at once, or `timeout`
    /// passes; returns whether they were. The timeout only bounds a failing
    /// test: a passing one returns as soon as the count is reached.
    pub fn wait_for_running(&self, n: usize, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        let mut state = self.lock();
        while state.running < n {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self.changed.wait_timeout(state, left).unwrap_or_else(PoisonError::into_inner).0;
        }
        true
    }
}

/// One instance of a [`FakeModel`].
#[derive(Debug)]
pub struct FakeBackend {
    model: Arc<FakeModel>,
    instance: usize,
}

/// Whether any element of any input is `marker`.
fn holds_element(inputs: &[InputTensor<'_>], marker: &[u8]) -> bool {
    inputs.iter().any(|input| match input.dtype {
        DataType::Bytes => bytes_elements(input.data).any(|e| e.is_ok_and(|e| e == marker)),
        dtype => {
            dtype.element_size() == Some(marker.len()) && input.data.chunks_exact(marker.len()).any(|e| e == marker)
        }
    })
}

impl Backend for FakeBackend {
    fn signature(&self) -> Option<&ModelSignature> {
        // Like TorchScript: the config declares the inputs and outputs.
        None
    }

    fn execute(&mut self, inputs: &[InputTensor<'_>], outputs: &[usize]) -> Result<Vec<OutputTensor>, BackendError> {
        let rows = inputs.first().and_then(|i| i.shape.first()).map_or(1, |&d| usize::try_from(d).unwrap_or(0));
        let (index, failed, latency, fail_as) = {
            let mut state = self.model.lock();
            let index = state.started;
            let failed = match &state.behaviour.failure {
                Failure::Never => false,
                Failure::Always => true,
                Failure::AfterBatches(n) => index >= *n,
                Failure::OnElement(marker) => holds_element(inputs, marker),
            };
            state.started += 1;
            state.running += 1;
            state.batches.push(BatchRecord { instance: self.instance, rows, failed });
            self.model.changed.notify_all();
            while state.held {
                state = self.model.changed.wait(state).unwrap_or_else(PoisonError::into_inner);
            }
            (index, failed, state.behaviour.latency, state.behaviour.fail_as)
        };
        if !latency.is_zero() {
            std::thread::sleep(latency);
        }
        self.model.lock().running -= 1;
        self.model.changed.notify_all();
        if failed {
            let message = format!("fake failure of batch {index} (instance {})", self.instance);
            match fail_as {
                FailAs::Error => return Err(BackendError::Execute(message)),
                FailAs::Panic => panic!("{message}"),
            }
        }
        if inputs.is_empty() && !outputs.is_empty() {
            return Err(BackendError::Execute("the fake echoes inputs, and this batch has none".into()));
        }
        Ok(outputs
            .iter()
            .map(|&j| {
                let input = &inputs[j % inputs.len()];
                OutputTensor {
                    dtype: input.dtype,
                    shape: input.shape.to_vec(),
                    data: Bytes::copy_from_slice(input.data),
                }
            })
            .collect())
    }
}

/// Loads fake models from a repository: `<model>/<version>/model.fake`, with
/// a config that sets `platform: "fake"` and declares the inputs and outputs.
#[derive(Debug, Default)]
pub struct FakeLoader {
    models: Mutex<HashMap<(String, u64), Arc<FakeModel>>>,
}

impl FakeLoader {
    /// A loader with no models yet.
    pub fn new() -> FakeLoader {
        FakeLoader::default()
    }

    /// The shared state of `model` version `version`, created on first use:
    /// set its behaviour before or after the load, read what it ran.
    pub fn model(&self, model: &str, version: u64) -> Arc<FakeModel> {
        let mut models = self.models.lock().unwrap_or_else(PoisonError::into_inner);
        models.entry((model.to_owned(), version)).or_default().clone()
    }
}

/// `(model, version)` of a file at `<model>/<version>/<file>`.
fn model_and_version(model_file: &Path) -> Option<(String, u64)> {
    let version_dir = model_file.parent()?;
    let version = version_dir.file_name()?.to_str()?.parse().ok()?;
    let model = version_dir.parent()?.file_name()?.to_str()?.to_owned();
    Some((model, version))
}

impl ModelLoader for FakeLoader {
    fn platform(&self) -> &'static str {
        PLATFORM
    }

    fn backend_name(&self) -> &'static str {
        PLATFORM
    }

    fn default_filename(&self) -> &'static str {
        FILENAME
    }

    fn load(
        &self,
        model_file: &Path,
        _signature: Option<&ModelSignature>,
        _options: &InstanceOptions,
    ) -> Result<Box<dyn Backend>, BackendError> {
        let (model, version) = model_and_version(model_file)
            .ok_or_else(|| BackendError::Load("a fake model file must be at <model>/<version>/model.fake".into()))?;
        Ok(Box::new(self.model(&model, version).instance()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn i32_input<'a>(shape: &'a [i64], data: &'a [u8]) -> InputTensor<'a> {
        InputTensor { dtype: DataType::Int32, shape, data }
    }

    fn le(values: &[i32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn outputs_echo_the_inputs_and_each_batch_is_recorded() {
        let model = FakeModel::new();
        let mut backend = model.instance();
        let (a, b) = (le(&[1, 2, 3, 4]), le(&[5, 6, 7, 8]));
        let inputs = [i32_input(&[2, 2], &a), i32_input(&[2, 2], &b)];
        let outputs = backend.execute(&inputs, &[1, 0, 2]).unwrap();
        assert_eq!(outputs.len(), 3);
        assert_eq!(outputs[0].data.as_ref(), b.as_slice());
        assert_eq!(outputs[1].data.as_ref(), a.as_slice());
        assert_eq!(outputs[2].data.as_ref(), a.as_slice(), "output 2 echoes input 2 % 2");
        assert_eq!(outputs[0].shape, [2, 2]);
        assert_eq!(model.batches(), [BatchRecord { instance: 0, rows: 2, failed: false }]);
    }

    #[test]
    fn failures_follow_the_behaviour() {
        let model = FakeModel::with(Behaviour { failure: Failure::AfterBatches(1), ..Behaviour::default() });
        let mut backend = model.instance();
        let data = le(&[1]);
        let input = [i32_input(&[1, 1], &data)];
        assert!(backend.execute(&input, &[0]).is_ok());
        assert!(matches!(backend.execute(&input, &[0]), Err(BackendError::Execute(_))));

        model.set_failure(Failure::on_i32(-7));
        assert!(backend.execute(&input, &[0]).is_ok());
        let marked = le(&[3, -7]);
        assert!(backend.execute(&[i32_input(&[2, 1], &marked)], &[0]).is_err());
        assert_eq!(model.batches().iter().map(|b| b.failed).collect::<Vec<_>>(), [false, true, false, true]);
    }

    #[test]
    fn each_execution_takes_at_least_the_latency() {
        let model = FakeModel::new();
        model.set_latency(Duration::from_millis(20));
        let mut backend = model.instance();
        let data = le(&[1]);
        let started = Instant::now();
        backend.execute(&[i32_input(&[1], &data)], &[0]).unwrap();
        assert!(started.elapsed() >= Duration::from_millis(20), "{:?}", started.elapsed());
    }

    #[test]
    fn a_held_execution_runs_when_released() {
        let model = FakeModel::new();
        model.hold();
        let mut backend = model.instance();
        let thread = std::thread::spawn(move || {
            let data = le(&[9]);
            backend.execute(&[i32_input(&[1], &data)], &[0]).map(|o| o.len())
        });
        assert!(model.wait_for_running(1, Duration::from_secs(10)));
        assert!(!model.wait_for_running(2, Duration::from_millis(1)));
        model.release();
        assert_eq!(thread.join().unwrap().unwrap(), 1);
        assert_eq!(model.running(), 0);
    }

    #[test]
    fn the_loader_keeps_one_model_per_version_directory() {
        let loader = FakeLoader::new();
        let canary = loader.model("m", 2);
        canary.set_failure(Failure::Always);
        let options = InstanceOptions::default();
        let mut v1 = loader.load(Path::new("/repo/m/1/model.fake"), None, &options).unwrap();
        let mut v2 = loader.load(Path::new("/repo/m/2/model.fake"), None, &options).unwrap();
        let data = le(&[1]);
        let input = [i32_input(&[1], &data)];
        assert!(v1.execute(&input, &[0]).is_ok());
        assert!(v2.execute(&input, &[0]).is_err());
        assert_eq!(canary.batches().len(), 1);
        assert!(loader.load(Path::new("model.fake"), None, &options).is_err());
    }
}
