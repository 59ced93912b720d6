//! The loader: checks the config's signature against what TorchScript can
//! take, places the module on its device, and builds an instance.

use std::path::Path;

use modelgate_backend::{Backend, BackendError, InstanceOptions, ModelLoader, ModelSignature, TensorSpec};

use crate::instance::{Bound, TorchBackend};
use crate::{binding, device, instance, kind, threads};

/// Creates TorchScript instances (`model.pt`).
#[derive(Debug, Default)]
pub struct TorchLoader {
    _private: (),
}

impl TorchLoader {
    /// A loader; libtorch is linked in, so there is nothing to open.
    pub fn new() -> TorchLoader {
        TorchLoader::default()
    }
}

impl ModelLoader for TorchLoader {
    fn platform(&self) -> &'static str {
        "pytorch_libtorch"
    }

    fn backend_name(&self) -> &'static str {
        "pytorch"
    }

    fn default_filename(&self) -> &'static str {
        "model.pt"
    }

    fn load(
        &self,
        model_file: &Path,
        signature: Option<&ModelSignature>,
        options: &InstanceOptions,
    ) -> Result<Box<dyn Backend>, BackendError> {
        let signature = signature.ok_or_else(|| {
            BackendError::Load(
                "a TorchScript model has no signature of its own: list every input and output \
                 (name, data_type, dims) in config.pbtxt"
                    .into(),
            )
        })?;
        let inputs = bind(&signature.inputs, "input", binding::input_positions)?;
        let outputs = bind(&signature.outputs, "output", binding::output_positions)?;
        let threads = threads::resolve(options.intra_op_threads).map_err(BackendError::Load)?;
        if options.inter_op_threads > 0 {
            // libtorch has one inter-op pool per process, sized once before
            // first use (and TorchScript only uses it for `fork`).
            tracing::warn!(
                threads = options.inter_op_threads,
                "inter_op_thread_count is ignored for TorchScript models"
            );
        }
        let device = device::resolve(options)?;
        threads::use_on_this_thread(threads);
        let file_name = model_file.file_name().unwrap_or_default().to_string_lossy();
        let mut module = tch::CModule::load_on_device(model_file, device).map_err(|e| {
            // libtorch names the full path; operators know the repository.
            let message = instance::concise(&e).replace(&*model_file.to_string_lossy(), &file_name);
            BackendError::Load(format!("cannot read TorchScript from {file_name}: {message}"))
        })?;
        module.f_set_eval().map_err(|e| BackendError::Load(instance::concise(&e)))?;
        let device_memory = match device {
            tch::Device::Cpu => None,
            _ => Some(device::parameter_bytes(&module).map_err(|e| BackendError::Load(instance::concise(&e)))?),
        };
        tracing::debug!(file = %file_name, ?device, threads, "TorchScript module loaded");
        Ok(Box::new(TorchBackend::new(module, device, inputs, outputs, threads, device_memory)))
    }
}

/// Pairs each configured tensor with its torch type and forward position.
fn bind(
    specs: &[TensorSpec],
    role: &str,
    positions: fn(&[&str]) -> Result<Vec<usize>, String>,
) -> Result<Vec<Bound>, BackendError> {
    let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    let positions = positions(&names).map_err(BackendError::Load)?;
    specs
        .iter()
        .zip(positions)
        .map(|(spec, position)| {
            let kind = kind::torch_kind(spec.dtype)
                .map_err(|why| BackendError::Load(format!("{role} '{}' is {}: {why}", spec.name, spec.dtype)))?;
            Ok(Bound { spec: spec.clone(), kind, position })
        })
        .collect()
}
