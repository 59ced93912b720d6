//! Triton's model configuration (`config.pbtxt`): the fields that change how a
//! model is served, read from the text format and completed from the model
//! file the way Triton's auto-complete does.
//!
//! Fields that would change results and that the gateway cannot honour
//! (`sequence_batching`, ensembles, `reshape`, ragged batches, decoupled
//! models) fail the load with a reason: serving them wrongly would be worse.
//! Fields that only tune Triton internals are accepted and reported as ignored.

use std::collections::BTreeMap;

use modelgate_backend::{DataType, ModelSignature};

use super::pbtxt::{self, Field, Message, Scalar, Value};
use super::settings::RepositorySettings;
use crate::tensor::{IoSpec, ModelIo};

/// The configuration of one model, as the gateway serves it.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// Model name (the directory name).
    pub name: String,
    /// Triton platform, e.g. `onnxruntime_onnx`.
    pub platform: String,
    /// Triton backend, e.g. `onnxruntime`.
    pub backend: String,
    /// Which versions to serve.
    pub version_policy: VersionPolicy,
    /// 0: the model does not batch; otherwise the largest batch.
    pub max_batch_size: u32,
    /// Inputs (dims without the batch dimension).
    pub inputs: Vec<IoSpec>,
    /// Outputs (dims without the batch dimension).
    pub outputs: Vec<IoSpec>,
    /// Present when requests are batched together.
    pub dynamic_batching: Option<DynamicBatching>,
    /// Execution instances.
    pub instance_groups: Vec<InstanceGroup>,
    /// File name looked for in each version directory.
    pub default_model_filename: String,
    /// Free-form backend parameters.
    pub parameters: BTreeMap<String, String>,
    /// Warm-up requests run before a version is ready.
    pub warmup: Vec<Warmup>,
}

/// Triton's `version_policy`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VersionPolicy {
    /// The highest N versions.
    Latest(u32),
    /// Every version found.
    All,
    /// Exactly these versions.
    Specific(Vec<u64>),
}

impl VersionPolicy {
    /// Picks the versions to serve from those present (any order).
    pub fn select(&self, available: &[u64]) -> Vec<u64> {
        let mut sorted = available.to_vec();
        sorted.sort_unstable();
        match self {
            VersionPolicy::Latest(n) => {
                let keep = (*n as usize).min(sorted.len());
                sorted.split_off(sorted.len() - keep)
            }
            VersionPolicy::All => sorted,
            VersionPolicy::Specific(wanted) => sorted.into_iter().filter(|v| wanted.contains(v)).collect(),
        }
    }
}

/// Triton's `dynamic_batching` with its default queue policy. It also reads
/// from the gateway's own config (`[models.<name>] dynamic_batching`), with
/// the same field names.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DynamicBatching {
    /// Batch sizes to dispatch as soon as they can be formed.
    pub preferred_batch_size: Vec<u32>,
    /// Longest time the oldest request waits for a batch to fill.
    pub max_queue_delay_microseconds: u64,
    /// Return responses in arrival order (accepted; batches already complete in order per instance).
    #[serde(skip)]
    pub preserve_ordering: bool,
    /// `default_queue_policy.max_queue_size`; 0 takes the gateway's bound.
    pub max_queue_size: u32,
    /// `default_queue_policy.default_timeout_microseconds`; 0 = none.
    pub default_timeout_microseconds: u64,
    /// `default_queue_policy.allow_timeout_override`.
    pub allow_timeout_override: bool,
}

/// Where an instance group runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstanceKind {
    /// GPU if the group lists GPUs, CPU otherwise.
    Auto,
    /// Host CPU.
    Cpu,
    /// The GPUs listed in `gpus` (device 0 when none are listed).
    Gpu,
    /// Wherever the model places itself (treated as CPU).
    Model,
}

impl InstanceKind {
    /// Triton's enum name.
    pub fn name(self) -> &'static str {
        match self {
            InstanceKind::Auto => "KIND_AUTO",
            InstanceKind::Cpu => "KIND_CPU",
            InstanceKind::Gpu => "KIND_GPU",
            InstanceKind::Model => "KIND_MODEL",
        }
    }

    /// Triton's enum value.
    pub fn value(self) -> i32 {
        match self {
            InstanceKind::Auto => 0,
            InstanceKind::Gpu => 1,
            InstanceKind::Cpu => 2,
            InstanceKind::Model => 3,
        }
    }
}

/// Triton's `instance_group` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceGroup {
    /// Group name.
    pub name: String,
    /// Device kind.
    pub kind: InstanceKind,
    /// Instances per device.
    pub count: u32,
    /// GPU ordinals (for `KIND_GPU`).
    pub gpus: Vec<u32>,
}

/// One `model_warmup` entry: synthetic requests run before the version is ready.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warmup {
    /// Sample name.
    pub name: String,
    /// Batch size of the sample (0 for models that do not batch).
    pub batch_size: u32,
    /// Times to run it.
    pub count: u32,
    /// Per input: zero or random data.
    pub random_inputs: bool,
}

/// Why a config cannot be served.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ModelConfigError(pub String);

fn err<T>(message: impl Into<String>) -> Result<T, ModelConfigError> {
    Err(ModelConfigError(message.into()))
}

/// A config as written in `config.pbtxt`, before completion from the model.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConfigFile {
    /// `name`, if given.
    pub name: Option<String>,
    /// `platform`, if given.
    pub platform: Option<String>,
    /// `backend`, if given.
    pub backend: Option<String>,
    /// `version_policy`, if given.
    pub version_policy: Option<VersionPolicy>,
    /// `max_batch_size`, if given (Triton cannot tell 0 from absent; we can).
    pub max_batch_size: Option<u32>,
    /// Inputs (may be empty: completed from the model).
    pub inputs: Vec<IoSpec>,
    /// Outputs (may be empty: completed from the model).
    pub outputs: Vec<IoSpec>,
    /// `dynamic_batching`, if present.
    pub dynamic_batching: Option<DynamicBatching>,
    /// Instance groups.
    pub instance_groups: Vec<InstanceGroup>,
    /// `default_model_filename`, if given.
    pub default_model_filename: Option<String>,
    /// Parameters.
    pub parameters: BTreeMap<String, String>,
    /// Warm-up samples.
    pub warmup: Vec<Warmup>,
    /// Fields accepted but without effect here, for the load log.
    pub ignored: Vec<String>,
}

/// Fields of `ModelConfig` accepted without effect: they tune Triton internals.
const IGNORED_TOP_LEVEL: &[&str] = &[
    "runtime",
    "optimization",
    "cc_model_filenames",
    "metric_tags",
    "model_operations",
    "model_repository_agents",
    "response_cache",
    "model_metrics",
];

/// Fields whose presence means the model needs something the gateway does not do.
const REFUSED_TOP_LEVEL: &[(&str, &str)] = &[
    ("sequence_batching", "sequence batching (stateful models) is not supported"),
    ("ensemble_scheduling", "ensembles are not supported"),
    ("batch_input", "batch_input is not supported"),
    ("batch_output", "batch_output is not supported"),
];

/// Reads `config.pbtxt` text.
pub fn parse_config_file(text: &str) -> Result<ConfigFile, ModelConfigError> {
    let message = pbtxt::parse(text).map_err(|e| ModelConfigError(format!("config.pbtxt: {e}")))?;
    let mut r = Reader::new(message, "config");
    let mut file = ConfigFile {
        name: r.string("name")?,
        platform: r.string("platform")?,
        backend: r.string("backend")?,
        max_batch_size: r.uint("max_batch_size")?.map(|v| v as u32),
        default_model_filename: r.string("default_model_filename")?,
        ..ConfigFile::default()
    };
    if let Some(mut policy) = r.message("version_policy")? {
        file.version_policy = Some(version_policy(&mut policy)?);
        policy.finish(&[])?;
    }
    for mut input in r.messages("input")? {
        file.inputs.push(io_spec(&mut input, "input")?);
    }
    for mut output in r.messages("output")? {
        file.outputs.push(io_spec(&mut output, "output")?);
    }
    if let Some(mut batching) = r.message("dynamic_batching")? {
        file.dynamic_batching = Some(dynamic_batching(&mut batching, &mut file.ignored)?);
    }
    for (index, mut group) in r.messages("instance_group")?.into_iter().enumerate() {
        file.instance_groups.push(instance_group(&mut group, index, &mut file.ignored)?);
    }
    for mut parameter in r.messages("parameters")? {
        let key = parameter.string("key")?.unwrap_or_default();
        let value = match parameter.message("value")? {
            Some(mut v) => {
                let s = v.string("string_value")?.unwrap_or_default();
                v.finish(&[])?;
                s
            }
            None => String::new(),
        };
        parameter.finish(&[])?;
        file.parameters.insert(key, value);
    }
    for mut sample in r.messages("model_warmup")? {
        file.warmup.push(warmup(&mut sample)?);
    }
    if let Some(mut policy) = r.message("model_transaction_policy")? {
        if policy.boolean("decoupled")?.unwrap_or(false) {
            return err("decoupled models (model_transaction_policy.decoupled: true) are not supported");
        }
        policy.finish(&[])?;
    }
    for (field, reason) in REFUSED_TOP_LEVEL {
        if r.has(field) {
            return err(format!("config field '{field}': {reason}"));
        }
    }
    for field in IGNORED_TOP_LEVEL {
        if r.take(field).next().is_some() {
            file.ignored.push((*field).to_owned());
        }
    }
    r.finish(&[])?;
    Ok(file)
}

fn version_policy(r: &mut Reader) -> Result<VersionPolicy, ModelConfigError> {
    if let Some(mut latest) = r.message("latest")? {
        let n = latest.uint("num_versions")?.unwrap_or(1);
        latest.finish(&[])?;
        if n == 0 {
            return err("version_policy.latest.num_versions must be at least 1");
        }
        return Ok(VersionPolicy::Latest(n as u32));
    }
    if let Some(mut all) = r.message("all")? {
        all.finish(&[])?;
        return Ok(VersionPolicy::All);
    }
    if let Some(mut specific) = r.message("specific")? {
        let versions = specific.uints("versions")?;
        specific.finish(&[])?;
        return Ok(VersionPolicy::Specific(versions));
    }
    Ok(VersionPolicy::Latest(1))
}

fn io_spec(r: &mut Reader, role: &str) -> Result<IoSpec, ModelConfigError> {
    let name = r.string("name")?.ok_or_else(|| ModelConfigError(format!("an {role} has no name")))?;
    let dtype = match r.ident("data_type")? {
        Some(t) => DataType::from_config_name(&t)
            .ok_or_else(|| ModelConfigError(format!("{role} '{name}': unknown data_type {t}")))?,
        None => return err(format!("{role} '{name}': data_type is required")),
    };
    let dims = r.ints("dims")?;
    if let Some(d) = dims.iter().find(|&&d| d < -1) {
        return err(format!("{role} '{name}': dimension {d} is invalid (use -1 for any size)"));
    }
    if r.has("reshape") {
        return err(format!("{role} '{name}': reshape is not supported"));
    }
    if r.boolean("is_shape_tensor")?.unwrap_or(false) {
        return err(format!("{role} '{name}': shape tensors are not supported"));
    }
    if r.boolean("allow_ragged_batch")?.unwrap_or(false) {
        return err(format!("{role} '{name}': ragged batches are not supported"));
    }
    if r.boolean("optional")?.unwrap_or(false) {
        return err(format!("{role} '{name}': optional inputs are not supported"));
    }
    r.finish(&["format", "label_filename", "is_non_linear_format_io"])?;
    Ok(IoSpec { name, dtype, dims })
}

fn dynamic_batching(r: &mut Reader, ignored: &mut Vec<String>) -> Result<DynamicBatching, ModelConfigError> {
    let mut batching = DynamicBatching {
        preferred_batch_size: r.uints("preferred_batch_size")?.into_iter().map(|v| v as u32).collect(),
        max_queue_delay_microseconds: r.uint("max_queue_delay_microseconds")?.unwrap_or(0),
        preserve_ordering: r.boolean("preserve_ordering")?.unwrap_or(false),
        ..DynamicBatching::default()
    };
    if let Some(mut policy) = r.message("default_queue_policy")? {
        if let Some(action) = policy.ident("timeout_action")?
            && action != "REJECT"
        {
            return err(format!(
                "dynamic_batching.default_queue_policy.timeout_action {action} is not supported (only REJECT)"
            ));
        }
        batching.default_timeout_microseconds = policy.uint("default_timeout_microseconds")?.unwrap_or(0);
        batching.allow_timeout_override = policy.boolean("allow_timeout_override")?.unwrap_or(false);
        batching.max_queue_size = policy.uint("max_queue_size")?.unwrap_or(0) as u32;
        policy.finish(&[])?;
    }
    for field in ["priority_levels", "default_priority_level", "priority_queue_policy"] {
        if r.take(field).next().is_some() {
            ignored.push(format!("dynamic_batching.{field}"));
        }
    }
    r.finish(&[])?;
    Ok(batching)
}

fn instance_group(r: &mut Reader, index: usize, ignored: &mut Vec<String>) -> Result<InstanceGroup, ModelConfigError> {
    let name = r.string("name")?.unwrap_or_default();
    let kind = match r.ident("kind")?.as_deref() {
        None | Some("KIND_AUTO") => InstanceKind::Auto,
        Some("KIND_CPU") => InstanceKind::Cpu,
        Some("KIND_GPU") => InstanceKind::Gpu,
        Some("KIND_MODEL") => InstanceKind::Model,
        Some(other) => return err(format!("instance_group {index}: unknown kind {other}")),
    };
    let count = r.uint("count")?.unwrap_or(1);
    if count == 0 || count > 64 {
        return err(format!("instance_group {index}: count {count} must be between 1 and 64"));
    }
    let gpus = r.uints("gpus")?.into_iter().map(|g| g as u32).collect();
    for field in ["rate_limiter", "passive", "host_policy", "secondary_devices", "profile"] {
        if r.take(field).next().is_some() {
            ignored.push(format!("instance_group.{field}"));
        }
    }
    r.finish(&[])?;
    Ok(InstanceGroup { name, kind, count: count as u32, gpus })
}

fn warmup(r: &mut Reader) -> Result<Warmup, ModelConfigError> {
    let name = r.string("name")?.unwrap_or_default();
    let batch_size = r.uint("batch_size")?.unwrap_or(1) as u32;
    let count = r.uint("count")?.unwrap_or(1).max(1) as u32;
    let mut random_inputs = false;
    for mut entry in r.messages("inputs")? {
        entry.string("key")?;
        if let Some(mut input) = entry.message("value")? {
            input.ident("data_type")?;
            input.ints("dims")?;
            if input.has("input_data_file") {
                return err(format!(
                    "model_warmup '{name}': input_data_file is not supported (use zero_data or random_data)"
                ));
            }
            random_inputs |= input.boolean("random_data")?.unwrap_or(false);
            input.boolean("zero_data")?;
            input.finish(&[])?;
        }
        entry.finish(&[])?;
    }
    r.finish(&[])?;
    Ok(Warmup { name, batch_size, count: count.min(100), random_inputs })
}

/// Completes a config from the model's own signature (when the format has
/// one), checking that what the config says agrees with the model.
pub fn complete(
    name: &str,
    file: ConfigFile,
    platform: &str,
    backend: &str,
    default_filename: &str,
    model: Option<&ModelSignature>,
    settings: &RepositorySettings,
) -> Result<ModelConfig, ModelConfigError> {
    if let Some(n) = &file.name
        && n != name
    {
        return err(format!("config name '{n}' differs from the directory name '{name}'"));
    }
    if let Some(p) = &file.platform
        && p != platform
    {
        return err(format!("platform '{p}' is not served by the {backend} backend (expected '{platform}')"));
    }
    let batchable =
        model.is_some_and(|sig| sig.inputs.iter().chain(&sig.outputs).all(|t| t.shape.first() == Some(&-1)));
    let max_batch_size = match file.max_batch_size {
        Some(n) => n,
        None if batchable => settings.default_max_batch_size,
        None => 0,
    };
    let mut dynamic_batching = match (&file.dynamic_batching, file.max_batch_size) {
        (Some(b), _) => Some(b.clone()),
        // Triton's auto-complete turns the dynamic batcher on when it picks the batch size.
        (None, None) if max_batch_size > 1 => Some(DynamicBatching::default()),
        (None, _) => None,
    };
    if let Some(b) = dynamic_batching.as_mut()
        && b.max_queue_size == 0
    {
        b.max_queue_size = settings.default_max_queue_size;
    }
    if let Some(b) = &dynamic_batching
        && let Some(p) = b.preferred_batch_size.iter().find(|&&p| p == 0 || p > max_batch_size.max(1))
    {
        return err(format!("preferred_batch_size {p} must be between 1 and max_batch_size {max_batch_size}"));
    }

    let inputs = complete_io(&file.inputs, model.map(|m| m.inputs.as_slice()), max_batch_size, "input", true)?;
    let outputs = complete_io(&file.outputs, model.map(|m| m.outputs.as_slice()), max_batch_size, "output", false)?;
    if inputs.is_empty() {
        return err("the model has no inputs (a config must list them for formats without a signature)");
    }
    if outputs.is_empty() {
        return err("the model has no outputs (a config must list them for formats without a signature)");
    }

    let instance_groups = instance_groups(name, file.instance_groups);

    Ok(ModelConfig {
        name: name.to_owned(),
        platform: platform.to_owned(),
        backend: backend.to_owned(),
        version_policy: file.version_policy.unwrap_or(VersionPolicy::Latest(1)),
        max_batch_size,
        inputs,
        outputs,
        dynamic_batching,
        instance_groups,
        default_model_filename: file.default_model_filename.unwrap_or_else(|| default_filename.to_owned()),
        parameters: file.parameters,
        warmup: file.warmup,
    })
}

/// Names unnamed groups `<model>_<i>` and resolves `KIND_AUTO`; no groups
/// means one CPU instance.
pub fn instance_groups(name: &str, groups: Vec<InstanceGroup>) -> Vec<InstanceGroup> {
    if groups.is_empty() {
        return vec![InstanceGroup { name: format!("{name}_0"), kind: InstanceKind::Cpu, count: 1, gpus: vec![] }];
    }
    groups
        .into_iter()
        .enumerate()
        .map(|(i, mut g)| {
            if g.name.is_empty() {
                g.name = format!("{name}_{i}");
            }
            if g.kind == InstanceKind::Auto {
                g.kind = if g.gpus.is_empty() { InstanceKind::Cpu } else { InstanceKind::Gpu };
            }
            // Triton reports the GPUs a group runs on; with none listed, that is device 0.
            if g.kind == InstanceKind::Gpu && g.gpus.is_empty() {
                g.gpus = vec![0];
            }
            g
        })
        .collect()
}

/// Merges config and model tensors. `all_required`: every model tensor must be
/// listed when the config lists any (inputs); outputs may be a subset.
fn complete_io(
    declared: &[IoSpec],
    model: Option<&[modelgate_backend::TensorSpec]>,
    max_batch_size: u32,
    role: &str,
    all_required: bool,
) -> Result<Vec<IoSpec>, ModelConfigError> {
    let Some(model) = model else {
        return Ok(declared.to_vec());
    };
    // The model's shape as the config would write it (batch dimension dropped).
    let model_dims = |t: &modelgate_backend::TensorSpec| -> Result<Vec<i64>, ModelConfigError> {
        if max_batch_size == 0 {
            return Ok(t.shape.clone());
        }
        match t.shape.split_first() {
            Some((-1, rest)) => Ok(rest.to_vec()),
            Some((d, _)) => err(format!(
                "max_batch_size is {max_batch_size} but {role} '{}' has a fixed first dimension {d}, so the model cannot batch",
                t.name
            )),
            None => err(format!("max_batch_size is {max_batch_size} but {role} '{}' is a scalar", t.name)),
        }
    };
    if declared.is_empty() {
        return model
            .iter()
            .map(|t| Ok(IoSpec { name: t.name.clone(), dtype: t.dtype, dims: model_dims(t)? }))
            .collect();
    }
    for spec in declared {
        let Some(t) = model.iter().find(|t| t.name == spec.name) else {
            return err(format!(
                "{role} '{}' in the config is not in the model (the model has {})",
                spec.name,
                model.iter().map(|t| format!("'{}'", t.name)).collect::<Vec<_>>().join(", ")
            ));
        };
        if t.dtype != spec.dtype {
            return err(format!(
                "{role} '{}': config says {} but the model has {}",
                spec.name,
                spec.dtype.config_name(),
                t.dtype.config_name()
            ));
        }
        let dims = model_dims(t)?;
        let agree = dims.len() == spec.dims.len() && dims.iter().zip(&spec.dims).all(|(&m, &c)| m == -1 || m == c);
        if !agree {
            return err(format!(
                "{role} '{}': config dims {:?} do not match the model's {:?}",
                spec.name, spec.dims, dims
            ));
        }
    }
    if all_required && let Some(t) = model.iter().find(|t| !declared.iter().any(|d| d.name == t.name)) {
        return err(format!("the model's {role} '{}' is missing from the config", t.name));
    }
    Ok(declared.to_vec())
}

impl ModelConfig {
    /// The inputs and outputs clients use.
    pub fn io(&self) -> ModelIo {
        ModelIo::new(self.max_batch_size, self.inputs.clone(), self.outputs.clone())
    }

    /// The signature the backend runs, batch dimension included.
    pub fn signature(&self) -> ModelSignature {
        let full = |s: &IoSpec| {
            let mut shape = Vec::with_capacity(s.dims.len() + 1);
            if self.max_batch_size > 0 {
                shape.push(-1);
            }
            shape.extend_from_slice(&s.dims);
            modelgate_backend::TensorSpec::new(s.name.clone(), s.dtype, shape)
        };
        ModelSignature {
            inputs: self.inputs.iter().map(full).collect(),
            outputs: self.outputs.iter().map(full).collect(),
        }
    }
}

// === Reader: typed access to a parsed message ===

/// Takes typed fields out of a parsed message and complains about leftovers.
struct Reader {
    fields: Vec<Field>,
    context: String,
}

impl Reader {
    fn new(message: Message, context: impl Into<String>) -> Reader {
        Reader { fields: message.fields, context: context.into() }
    }

    fn has(&self, name: &str) -> bool {
        self.fields.iter().any(|f| f.name == name)
    }

    fn take(&mut self, name: &str) -> impl Iterator<Item = Field> + use<> {
        let (taken, kept): (Vec<Field>, Vec<Field>) =
            std::mem::take(&mut self.fields).into_iter().partition(|f| f.name == name);
        self.fields = kept;
        taken.into_iter()
    }

    fn where_(&self, field: &Field) -> String {
        format!("{}.{} (line {})", self.context, field.name, field.line)
    }

    fn scalars(&mut self, name: &str) -> Result<Vec<(Scalar, String)>, ModelConfigError> {
        let fields: Vec<Field> = self.take(name).collect();
        fields
            .into_iter()
            .map(|f| {
                let at = self.where_(&f);
                match f.value {
                    Value::Scalar(s) => Ok((s, at)),
                    Value::Message(_) => err(format!("{at}: expected a value, found a message")),
                }
            })
            .collect()
    }

    fn single(&mut self, name: &str) -> Result<Option<(Scalar, String)>, ModelConfigError> {
        let mut values = self.scalars(name)?;
        if values.len() > 1 {
            return err(format!("{}.{name} is given {} times", self.context, values.len()));
        }
        Ok(values.pop())
    }

    fn string(&mut self, name: &str) -> Result<Option<String>, ModelConfigError> {
        match self.single(name)? {
            None => Ok(None),
            Some((Scalar::Str(s), _)) => Ok(Some(s)),
            Some((other, at)) => err(format!("{at}: expected a quoted string, found {other:?}")),
        }
    }

    fn ident(&mut self, name: &str) -> Result<Option<String>, ModelConfigError> {
        match self.single(name)? {
            None => Ok(None),
            Some((Scalar::Ident(s), _)) => Ok(Some(s)),
            Some((other, at)) => err(format!("{at}: expected a name, found {other:?}")),
        }
    }

    fn boolean(&mut self, name: &str) -> Result<Option<bool>, ModelConfigError> {
        match self.single(name)? {
            None => Ok(None),
            Some((Scalar::Ident(s), at)) => match s.as_str() {
                "true" | "True" | "t" => Ok(Some(true)),
                "false" | "False" | "f" => Ok(Some(false)),
                _ => err(format!("{at}: expected true or false, found {s}")),
            },
            Some((Scalar::Number(n), at)) => match n.as_str() {
                "1" => Ok(Some(true)),
                "0" => Ok(Some(false)),
                _ => err(format!("{at}: expected true or false, found {n}")),
            },
            Some((other, at)) => err(format!("{at}: expected true or false, found {other:?}")),
        }
    }

    fn parse_int(scalar: Scalar, at: &str) -> Result<i64, ModelConfigError> {
        let Scalar::Number(text) = scalar else {
            return err(format!("{at}: expected an integer, found {scalar:?}"));
        };
        let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
            Some(hex) => i64::from_str_radix(hex, 16).ok(),
            None => text.parse::<i64>().ok(),
        };
        parsed.ok_or_else(|| ModelConfigError(format!("{at}: '{text}' is not an integer")))
    }

    fn ints(&mut self, name: &str) -> Result<Vec<i64>, ModelConfigError> {
        self.scalars(name)?.into_iter().map(|(s, at)| Self::parse_int(s, &at)).collect()
    }

    fn uints(&mut self, name: &str) -> Result<Vec<u64>, ModelConfigError> {
        self.scalars(name)?
            .into_iter()
            .map(|(s, at)| {
                let v = Self::parse_int(s, &at)?;
                u64::try_from(v).map_err(|_| ModelConfigError(format!("{at}: {v} must not be negative")))
            })
            .collect()
    }

    fn uint(&mut self, name: &str) -> Result<Option<u64>, ModelConfigError> {
        match self.single(name)? {
            None => Ok(None),
            Some((s, at)) => {
                let v = Self::parse_int(s, &at)?;
                if v < 0 || v > i64::from(i32::MAX) {
                    return err(format!("{at}: {v} is out of range"));
                }
                Ok(Some(v as u64))
            }
        }
    }

    fn messages(&mut self, name: &str) -> Result<Vec<Reader>, ModelConfigError> {
        let fields: Vec<Field> = self.take(name).collect();
        fields
            .into_iter()
            .map(|f| {
                let at = self.where_(&f);
                match f.value {
                    Value::Message(m) => Ok(Reader::new(m, format!("{}.{}", self.context, f.name))),
                    Value::Scalar(_) => err(format!("{at}: expected a message")),
                }
            })
            .collect()
    }

    fn message(&mut self, name: &str) -> Result<Option<Reader>, ModelConfigError> {
        let mut all = self.messages(name)?;
        if all.len() > 1 {
            return err(format!("{}.{name} is given {} times", self.context, all.len()));
        }
        Ok(all.pop())
    }

    /// Fails on any field not read, except those listed as harmless.
    fn finish(&mut self, harmless: &[&str]) -> Result<(), ModelConfigError> {
        self.fields.retain(|f| !harmless.contains(&f.name.as_str()));
        match self.fields.first() {
            None => Ok(()),
            Some(f) => err(format!("{}: unknown field '{}' (line {})", self.context, f.name, f.line)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use modelgate_backend::TensorSpec;

    const SIMPLE: &str = r#"
        name: "simple"
        platform: "onnxruntime_onnx"
        max_batch_size: 8
        input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] }, { name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] } ]
        output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] }, { name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 16 ] } ]
        dynamic_batching { preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 100
          default_queue_policy { max_queue_size: 10 default_timeout_microseconds: 5000 allow_timeout_override: true } }
        instance_group [ { count: 2 kind: KIND_CPU } ]
        version_policy: { latest: { num_versions: 2 } }
        optimization { execution_accelerators { cpu_execution_accelerator: [ { name: "openvino" } ] } }
        parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
    "#;

    fn signature(batch: bool) -> ModelSignature {
        let shape = |d: i64| if batch { vec![-1, d] } else { vec![d] };
        ModelSignature {
            inputs: vec![
                TensorSpec::new("INPUT0", DataType::Int32, shape(16)),
                TensorSpec::new("INPUT1", DataType::Int32, shape(16)),
            ],
            outputs: vec![
                TensorSpec::new("OUTPUT0", DataType::Int32, shape(16)),
                TensorSpec::new("OUTPUT1", DataType::Int32, shape(16)),
            ],
        }
    }

    fn defaults() -> RepositorySettings {
        RepositorySettings { default_max_batch_size: 4, default_max_queue_size: 1024, ..Default::default() }
    }

    fn complete_onnx(file: ConfigFile, sig: &ModelSignature) -> Result<ModelConfig, ModelConfigError> {
        complete("simple", file, "onnxruntime_onnx", "onnxruntime", "model.onnx", Some(sig), &defaults())
    }

    #[test]
    fn reads_every_field_that_matters_from_a_triton_config() {
        let file = parse_config_file(SIMPLE).unwrap();
        assert_eq!(file.max_batch_size, Some(8));
        assert_eq!(file.inputs.len(), 2);
        assert_eq!(file.inputs[0].dims, vec![16]);
        let batching = file.dynamic_batching.clone().unwrap();
        assert_eq!(batching.preferred_batch_size, vec![4]);
        assert_eq!(batching.max_queue_delay_microseconds, 100);
        assert_eq!(batching.max_queue_size, 10);
        assert_eq!(batching.default_timeout_microseconds, 5000);
        assert!(batching.allow_timeout_override);
        assert_eq!(file.instance_groups[0].count, 2);
        assert_eq!(file.instance_groups[0].kind, InstanceKind::Cpu);
        assert_eq!(file.version_policy, Some(VersionPolicy::Latest(2)));
        assert_eq!(file.parameters.get("intra_op_thread_count").map(String::as_str), Some("1"));
        assert_eq!(file.ignored, vec!["optimization".to_owned()]);

        let config = complete_onnx(file, &signature(true)).unwrap();
        assert_eq!(config.max_batch_size, 8);
        assert_eq!(config.instance_groups[0].name, "simple_0");
        assert_eq!(config.signature().inputs[0].shape, vec![-1, 16]);
    }

    #[test]
    fn completes_a_missing_config_from_the_model_like_triton() {
        let config = complete_onnx(ConfigFile::default(), &signature(true)).unwrap();
        assert_eq!(config.max_batch_size, 4);
        assert!(config.dynamic_batching.is_some());
        assert_eq!(config.inputs[0].dims, vec![16]);
        assert_eq!(config.version_policy, VersionPolicy::Latest(1));

        let config = complete_onnx(ConfigFile::default(), &signature(false)).unwrap();
        assert_eq!(config.max_batch_size, 0);
        assert!(config.dynamic_batching.is_none());
        assert_eq!(config.inputs[0].dims, vec![16]);
    }

    #[test]
    fn refuses_configs_that_disagree_with_the_model() {
        let mut file = parse_config_file(SIMPLE).unwrap();
        file.inputs[0].dtype = DataType::Fp32;
        assert!(complete_onnx(file, &signature(true)).unwrap_err().0.contains("config says TYPE_FP32"));

        let file = parse_config_file(SIMPLE).unwrap();
        assert!(complete_onnx(file, &signature(false)).unwrap_err().0.contains("cannot batch"));

        let mut file = parse_config_file(SIMPLE).unwrap();
        file.inputs.pop();
        assert!(complete_onnx(file, &signature(true)).unwrap_err().0.contains("'INPUT1' is missing"));

        let mut file = parse_config_file(SIMPLE).unwrap();
        file.name = Some("other".into());
        assert!(complete_onnx(file, &signature(true)).unwrap_err().0.contains("differs"));
    }

    #[test]
    fn refuses_features_it_cannot_honour_and_unknown_fields() {
        let cases = [
            ("sequence_batching { }", "sequence batching"),
            ("ensemble_scheduling { step [ { model_name: \"a\" model_version: -1 } ] }", "ensembles are not supported"),
            (
                "input [ { name: \"a\" data_type: TYPE_FP32 dims: [1] allow_ragged_batch: true } ]",
                "ragged batches are not supported",
            ),
            ("model_transaction_policy { decoupled: true }", "decoupled"),
            ("input [ { name: \"a\" data_type: TYPE_FP32 dims: [1] reshape { shape: [] } } ]", "reshape"),
            ("input [ { name: \"a\" data_type: TYPE_FP99 dims: [1] } ]", "unknown data_type"),
            ("max_batch_sise: 4", "unknown field 'max_batch_sise'"),
            ("max_batch_size: -1", "out of range"),
            ("instance_group [ { count: 0 } ]", "count 0"),
            ("dynamic_batching { default_queue_policy { timeout_action: DELAY } }", "DELAY"),
        ];
        for (text, expected) in cases {
            let error = parse_config_file(text).unwrap_err();
            assert!(error.0.contains(expected), "{text}: {error}");
        }
    }

    #[test]
    fn version_policy_picks_versions_as_triton_does() {
        let available = [3, 1, 10, 2];
        assert_eq!(VersionPolicy::Latest(1).select(&available), vec![10]);
        assert_eq!(VersionPolicy::Latest(2).select(&available), vec![3, 10]);
        assert_eq!(VersionPolicy::Latest(9).select(&available), vec![1, 2, 3, 10]);
        assert_eq!(VersionPolicy::All.select(&available), vec![1, 2, 3, 10]);
        assert_eq!(VersionPolicy::Specific(vec![2, 7]).select(&available), vec![2]);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2048))]

        /// A config.pbtxt made of Triton's own tokens in any order, or of any
        /// text at all, is read or refused with a reason, never a panic.
        #[test]
        fn any_config_text_is_read_or_refused_never_a_panic(
            tokens in proptest::collection::vec(proptest::sample::select(vec![
                "name:", "\"m\"", "max_batch_size:", "64", "-1", "99999999999999999999", "input", "output",
                "[", "]", "{", "}", ",", "dims:", "data_type:", "TYPE_FP32", "TYPE_STRING", "dynamic_batching",
                "preferred_batch_size:", "max_queue_delay_microseconds:", "instance_group", "count:", "kind:",
                "KIND_GPU", "gpus:", "version_policy", "latest", "num_versions:", "specific", "versions:",
                "parameters", "key:", "value", "string_value:", "model_warmup", "#", "\n", "'", "\\", "1.5e3",
            ]), 0..60),
            noise in ".{0,40}",
        ) {
            for text in [tokens.join(" "), noise] {
                if let Err(error) = parse_config_file(&text) {
                    proptest::prop_assert!(!error.to_string().is_empty(), "a refusal without a reason: {text:?}");
                }
            }
        }

        /// A config written from random values reads back as those values, whatever the
        /// field order and spacing: the reader keeps what it is given, not only its shape.
        #[test]
        fn a_written_config_reads_back_as_its_values(
            max_batch in 0u32..100_000,
            delay in 0u64..10_000_000,
            queue in 0u32..1000,
            dims in proptest::collection::vec(proptest::prop_oneof![proptest::strategy::Just(-1i64), 1i64..4096], 1..4),
            fp32 in proptest::bool::ANY,
            reverse in proptest::bool::ANY,
            sep in proptest::sample::select(vec![" ", "\n", "  \n\t"]),
        ) {
            let dims_text = dims.iter().map(i64::to_string).collect::<Vec<_>>().join(", ");
            let dtype = if fp32 { "TYPE_FP32" } else { "TYPE_INT64" };
            let mut fields = [
                "name: \"m\"".to_string(),
                format!("max_batch_size: {max_batch}"),
                format!("input [ {{ name: \"x\"{sep}data_type: {dtype}{sep}dims: [ {dims_text} ] }} ]"),
                format!(
                    "dynamic_batching {{ max_queue_delay_microseconds: {delay}{sep}default_queue_policy {{ max_queue_size: {queue} }} }}"
                ),
            ];
            if reverse {
                fields.reverse();
            }
            let config = parse_config_file(&fields.join(sep)).map_err(|e| proptest::test_runner::TestCaseError::fail(e.to_string()))?;
            proptest::prop_assert_eq!(config.name.as_deref(), Some("m"));
            proptest::prop_assert_eq!(config.max_batch_size, Some(max_batch));
            proptest::prop_assert_eq!(config.inputs.len(), 1);
            proptest::prop_assert_eq!(&config.inputs[0].name, "x");
            proptest::prop_assert_eq!(&config.inputs[0].dims, &dims);
            let expected = if fp32 { DataType::Fp32 } else { DataType::Int64 };
            proptest::prop_assert_eq!(config.inputs[0].dtype, expected);
            let batching = config.dynamic_batching.expect("dynamic_batching");
            proptest::prop_assert_eq!(batching.max_queue_delay_microseconds, delay);
            proptest::prop_assert_eq!(batching.max_queue_size, queue);
        }
    }
}
