//! Placing an instance: the device asked for, or a clear reason why not.

use modelgate_backend::{BackendError, Device, InstanceOptions};

/// The torch device an instance runs on. A CUDA device that libtorch cannot
/// see is a load error, unless the config allows running on the CPU instead.
pub(crate) fn resolve(options: &InstanceOptions) -> Result<tch::Device, BackendError> {
    let Device::Cuda(ordinal) = options.device else {
        return Ok(tch::Device::Cpu);
    };
    // 0 when libtorch has no CUDA library linked in, no driver, or no device.
    let visible = tch::Cuda::device_count();
    if i64::from(ordinal) < visible {
        return Ok(tch::Device::Cuda(ordinal as usize));
    }
    let reason = if visible > 0 {
        format!("libtorch sees {visible} CUDA device(s), numbered from 0")
    } else if cfg!(feature = "libtorch-cuda") {
        "libtorch sees no CUDA device (no GPU, no driver, or CUDA_VISIBLE_DEVICES hides them)".to_owned()
    } else {
        "this build links libtorch without CUDA (cargo features `torch,cuda`, against a CUDA libtorch)".to_owned()
    };
    if options.allow_cpu_fallback {
        tracing::warn!(device = %options.device, %reason, "running on the CPU as the config allows");
        return Ok(tch::Device::Cpu);
    }
    Err(BackendError::Device { device: options.device, reason })
}

/// Bytes of the module's parameters, which live on its device for as long as
/// the instance does. libtorch's caching allocator keeps per-device, not
/// per-module, totals, and `tch` does not expose those either, so activations
/// and cached blocks are not counted.
pub(crate) fn parameter_bytes(module: &tch::CModule) -> Result<u64, tch::TchError> {
    let mut total = 0u64;
    for (_, tensor) in module.named_parameters()? {
        let bytes = tensor.numel() as u64 * tensor.f_kind()?.elt_size_in_bytes() as u64;
        total = total.saturating_add(bytes);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(device: Device, allow_cpu_fallback: bool) -> InstanceOptions {
        InstanceOptions { device, allow_cpu_fallback, ..InstanceOptions::default() }
    }

    #[test]
    fn a_cuda_ordinal_past_the_visible_devices_is_refused_with_the_reason() {
        let missing = Device::Cuda(tch::Cuda::device_count() as u32);
        let err = resolve(&options(missing, false)).unwrap_err();
        let BackendError::Device { device, reason } = &err else { panic!("{err}") };
        assert_eq!(*device, missing);
        assert!(reason.contains("libtorch"), "{reason}");
        assert!(err.to_string().starts_with(&format!("device {missing} unavailable: ")), "{err}");
    }

    #[test]
    fn a_missing_cuda_device_falls_back_to_the_cpu_only_when_allowed() {
        let missing = Device::Cuda(tch::Cuda::device_count() as u32);
        assert_eq!(resolve(&options(missing, true)).unwrap(), tch::Device::Cpu);
        assert_eq!(resolve(&options(Device::Cpu, false)).unwrap(), tch::Device::Cpu);
    }
}
