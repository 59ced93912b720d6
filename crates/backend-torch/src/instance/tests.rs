use std::path::{Path, PathBuf};

use modelgate_backend::{Device, InstanceOptions, ModelLoader};

use super::*;
use crate::TorchLoader;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn mlp_torch() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/mlp_torch/1/model.pt")
}

fn spec(name: &str, dtype: DataType, shape: &[i64]) -> TensorSpec {
    TensorSpec::new(name, dtype, shape.to_vec())
}

fn sig(inputs: Vec<TensorSpec>, outputs: Vec<TensorSpec>) -> ModelSignature {
    ModelSignature { inputs, outputs }
}

fn one_thread() -> InstanceOptions {
    InstanceOptions { intra_op_threads: 1, ..InstanceOptions::default() }
}

fn load(path: &Path, signature: &ModelSignature) -> Result<Box<dyn Backend>, BackendError> {
    TorchLoader::new().load(path, Some(signature), &one_thread())
}

fn load_error(result: Result<Box<dyn Backend>, BackendError>) -> String {
    match result {
        Ok(_) => panic!("the load succeeded"),
        Err(e) => e.to_string(),
    }
}

/// A copy of `bytes` aligned to 8 bytes, as the gateway hands inputs over.
struct Aligned {
    words: Vec<u64>,
    len: usize,
}

impl Aligned {
    fn new(bytes: &[u8]) -> Aligned {
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..bytes.len()].copy_from_slice(bytes);
        Aligned { words, len: bytes.len() }
    }

    fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice::<u64, u8>(&self.words)[..self.len]
    }
}

fn f32_bytes(values: &[f32]) -> Aligned {
    Aligned::new(&values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())
}

fn f32_values(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

fn input<'a>(dtype: DataType, shape: &'a [i64], data: &'a Aligned) -> InputTensor<'a> {
    InputTensor { dtype, shape, data: data.bytes() }
}

/// Traces a one-input, one-output function into a saved module.
fn traced(dir: &Path, name: &str, example: Tensor, f: impl Fn(&Tensor) -> Tensor) -> PathBuf {
    let mut closure = |xs: &[Tensor]| vec![f(&xs[0])];
    let module = CModule::create_by_tracing(name, "forward", &[example], &mut closure).unwrap();
    let path = dir.join(format!("{name}.pt"));
    module.save(&path).unwrap();
    path
}

fn mlp_signature() -> ModelSignature {
    sig(vec![spec("INPUT__0", DataType::Fp32, &[-1, 64])], vec![spec("OUTPUT__0", DataType::Fp32, &[-1, 10])])
}

#[test]
fn mlp_torch_gives_what_tch_gives_for_a_copied_input() {
    let mut backend = load(&mlp_torch(), &mlp_signature()).unwrap();
    let x: Vec<f32> = (0..3 * 64).map(|i| (i as f32 * 0.37).sin()).collect();
    let data = f32_bytes(&x);
    let out = backend.execute(&[input(DataType::Fp32, &[3, 64], &data)], &[0]).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].dtype, out[0].shape.clone()), (DataType::Fp32, vec![3, 10]));

    let module = CModule::load(mlp_torch()).unwrap();
    let expected = tch::no_grad(|| module.forward_ts(&[Tensor::from_slice(&x).reshape([3, 64])])).unwrap();
    let expected: Vec<f32> = Vec::try_from(expected.flatten(0, -1)).unwrap();
    assert_eq!(f32_values(&out[0].data), expected);
    assert_eq!(backend.device_memory_bytes(), None, "host memory is not device memory");
}

#[test]
fn every_v2_type_torch_has_goes_in_and_out_with_its_layout() {
    let dir = tempfile::tempdir().unwrap();
    for dtype in DataType::ALL {
        let Ok(kind) = kind::torch_kind(dtype) else { continue };
        let size = kind.elt_size_in_bytes();
        let name = format!("flip_{}", dtype.v2_name().to_lowercase());
        let path = traced(dir.path(), &name, Tensor::zeros([2, 3], (kind, tch::Device::Cpu)), |x| x.flip([-1]));
        let signature = sig(vec![spec("x", dtype, &[-1, 3])], vec![spec("y", dtype, &[-1, 3])]);
        let mut backend = load(&path, &signature).unwrap();

        let bytes: Vec<u8> =
            (0..6 * size).map(|i| if dtype == DataType::Bool { (i % 2) as u8 } else { (i * 37 % 251) as u8 }).collect();
        let data = Aligned::new(&bytes);
        let out = backend.execute(&[input(dtype, &[2, 3], &data)], &[0]).unwrap();

        // Each row's elements reversed, each element's bytes intact.
        let expected: Vec<u8> = bytes
            .chunks_exact(3 * size)
            .flat_map(|row| row.chunks_exact(size).rev().flatten().copied().collect::<Vec<u8>>())
            .collect();
        assert_eq!((out[0].dtype, out[0].shape.clone()), (dtype, vec![2, 3]), "{dtype}");
        assert_eq!(&out[0].data[..], &expected[..], "{dtype}");
    }
}

#[test]
fn triton_indexed_names_bind_by_index_whatever_the_config_order() {
    let signature = sig(
        vec![spec("INPUT__1", DataType::Fp32, &[-1, 2]), spec("INPUT__0", DataType::Fp32, &[-1, 2])],
        vec![spec("OUTPUT__1", DataType::Fp32, &[-1, 2]), spec("OUTPUT__0", DataType::Fp32, &[-1, 2])],
    );
    let mut backend = load(&fixture("pair.pt"), &signature).unwrap();
    let (b, a) = (f32_bytes(&[10.0, 20.0]), f32_bytes(&[1.0, 2.0]));
    let out =
        backend.execute(&[input(DataType::Fp32, &[1, 2], &b), input(DataType::Fp32, &[1, 2], &a)], &[0, 1]).unwrap();
    assert_eq!(f32_values(&out[0].data), vec![-9.0, -18.0], "OUTPUT__1 = INPUT__0 - INPUT__1");
    assert_eq!(f32_values(&out[1].data), vec![11.0, 22.0], "OUTPUT__0 = INPUT__0 + INPUT__1");
}

#[test]
fn other_names_bind_in_config_order_and_outputs_come_as_requested() {
    let signature = sig(
        vec![spec("left", DataType::Fp32, &[-1, 2]), spec("right", DataType::Fp32, &[-1, 2])],
        vec![spec("sum", DataType::Fp32, &[-1, 2]), spec("difference", DataType::Fp32, &[-1, 2])],
    );
    let mut backend = load(&fixture("pair.pt"), &signature).unwrap();
    let (left, right) = (f32_bytes(&[1.0, 2.0, 3.0, 4.0]), f32_bytes(&[10.0, 20.0, 30.0, 40.0]));
    let inputs = [input(DataType::Fp32, &[2, 2], &left), input(DataType::Fp32, &[2, 2], &right)];
    let out = backend.execute(&inputs, &[1]).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(f32_values(&out[0].data), vec![-9.0, -18.0, -27.0, -36.0]);
    assert_eq!(out[0].shape, vec![2, 2]);
}

#[test]
fn a_list_result_maps_to_the_outputs_in_order() {
    let signature = sig(
        vec![spec("x", DataType::Fp32, &[-1, 3])],
        vec![spec("doubled", DataType::Fp32, &[-1, 3]), spec("sums", DataType::Fp32, &[-1])],
    );
    let mut backend = load(&fixture("split.pt"), &signature).unwrap();
    let x = f32_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let out = backend.execute(&[input(DataType::Fp32, &[2, 3], &x)], &[1, 0]).unwrap();
    assert_eq!((f32_values(&out[0].data), out[0].shape.clone()), (vec![6.0, 15.0], vec![2]));
    assert_eq!(f32_values(&out[1].data), vec![2.0, 4.0, 6.0, 8.0, 10.0, 12.0]);
}

#[test]
fn a_result_that_is_not_a_tensor_or_is_missing_is_an_execution_error() {
    let signature = |output: &str| {
        sig(
            vec![spec("INPUT__0", DataType::Fp32, &[-1, 2]), spec("INPUT__1", DataType::Fp32, &[-1, 2])],
            vec![spec(output, DataType::Fp32, &[-1, 2])],
        )
    };
    let (a, b) = (f32_bytes(&[1.0, 2.0]), f32_bytes(&[3.0, 4.0]));
    let inputs = [input(DataType::Fp32, &[1, 2], &a), input(DataType::Fp32, &[1, 2], &b)];

    let mut backend = load(&fixture("pair.pt"), &signature("OUTPUT__2")).unwrap();
    let err = backend.execute(&inputs, &[0]).unwrap_err();
    assert!(matches!(err, BackendError::Execute(_)));
    assert_eq!(
        err.to_string(),
        "model execution failed: output 'OUTPUT__2': the model's result 2 is a number, not a tensor"
    );

    let mut backend = load(&fixture("pair.pt"), &signature("OUTPUT__5")).unwrap();
    let err = backend.execute(&inputs, &[0]).unwrap_err().to_string();
    assert!(err.contains("output 'OUTPUT__5' is result 5 but the model returned 3 value(s)"), "{err}");
}

#[test]
fn outputs_that_disagree_with_the_config_are_errors_not_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let x = f32_bytes(&[1.0, 2.0, 3.0]);
    let as_double =
        traced(dir.path(), "as_double", Tensor::zeros([1, 3], tch::kind::FLOAT_CPU), |x| x.to_kind(Kind::Double));
    let signature = sig(vec![spec("x", DataType::Fp32, &[-1, 3])], vec![spec("y", DataType::Fp32, &[-1, 3])]);
    let err = load(&as_double, &signature).unwrap().execute(&[input(DataType::Fp32, &[1, 3], &x)], &[0]).unwrap_err();
    assert_eq!(err.to_string(), "model execution failed: output 'y': the model returned FP64, the config says FP32");

    let flip = traced(dir.path(), "flip", Tensor::zeros([1, 3], tch::kind::FLOAT_CPU), |x| x.flip([-1]));
    let signature = sig(vec![spec("x", DataType::Fp32, &[-1, 3])], vec![spec("y", DataType::Fp32, &[-1, 4])]);
    let err = load(&flip, &signature).unwrap().execute(&[input(DataType::Fp32, &[1, 3], &x)], &[0]).unwrap_err();
    assert!(err.to_string().ends_with("output 'y': the model returned shape [1, 3], the config says [-1, 4]"), "{err}");
}

#[test]
fn a_failing_forward_reports_torchscripts_error_without_the_cpp_backtrace() {
    let signature = sig(
        vec![spec("INPUT__0", DataType::Fp32, &[-1, -1]), spec("INPUT__1", DataType::Fp32, &[-1, -1])],
        vec![spec("OUTPUT__0", DataType::Fp32, &[-1, -1])],
    );
    let mut backend = load(&fixture("pair.pt"), &signature).unwrap();
    let (a, b) = (f32_bytes(&[1.0, 2.0]), f32_bytes(&[1.0, 2.0, 3.0]));
    let err = backend.execute(&[input(DataType::Fp32, &[1, 2], &a), input(DataType::Fp32, &[1, 3], &b)], &[0]);
    let err = err.unwrap_err().to_string();
    assert_eq!(
        err,
        "model execution failed: RuntimeError: The size of tensor a (2) must match the size of tensor b (3) at \
         non-singleton dimension 1"
    );
}

#[test]
fn misaligned_input_bytes_are_copied_rather_than_refused() {
    let mut backend = load(&mlp_torch(), &mlp_signature()).unwrap();
    let x: Vec<f32> = (0..64).map(|i| i as f32 / 64.0).collect();
    let data = f32_bytes(&x);
    let aligned = backend.execute(&[input(DataType::Fp32, &[1, 64], &data)], &[0]).unwrap();
    let mut shifted = vec![0u8; 1];
    shifted.extend_from_slice(data.bytes());
    let words = Aligned::new(&shifted);
    let view = InputTensor { dtype: DataType::Fp32, shape: &[1, 64], data: &words.bytes()[1..] };
    assert_eq!(backend.execute(&[view], &[0]).unwrap(), aligned);
}

#[test]
fn inputs_that_do_not_fit_the_config_are_refused_before_torch_sees_them() {
    let mut backend = load(&mlp_torch(), &mlp_signature()).unwrap();
    let short = f32_bytes(&[0.0; 63]);
    let err = backend.execute(&[input(DataType::Fp32, &[1, 64], &short)], &[0]).unwrap_err().to_string();
    assert!(err.contains("input 'INPUT__0' has 252 bytes, its shape [1, 64] needs 256"), "{err}");
    let err = backend.execute(&[], &[0]).unwrap_err().to_string();
    assert!(err.contains("the model takes 1 inputs, the batch has 0"), "{err}");
    let ints = Aligned::new(&[0u8; 256]);
    let err = backend.execute(&[input(DataType::Int32, &[1, 64], &ints)], &[0]).unwrap_err().to_string();
    assert!(err.contains("input 'INPUT__0' is INT32, the config says FP32"), "{err}");
}

#[test]
fn the_load_refuses_what_torchscript_cannot_serve_and_says_why() {
    let loader = TorchLoader::new();
    let err = load_error(loader.load(&mlp_torch(), None, &one_thread()));
    assert!(err.contains("no signature of its own: list every input and output"), "{err}");

    let strings = sig(vec![spec("text", DataType::Bytes, &[-1])], vec![spec("y", DataType::Fp32, &[-1])]);
    let err = load_error(load(&mlp_torch(), &strings));
    assert_eq!(
        err,
        "model load failed: input 'text' is BYTES: TorchScript tensors cannot hold strings (BYTES / TYPE_STRING)"
    );

    let unsigned = sig(vec![spec("x", DataType::Fp32, &[-1])], vec![spec("y", DataType::Uint32, &[-1])]);
    assert!(
        load_error(load(&mlp_torch(), &unsigned)).contains("output 'y' is UINT32: libtorch has no usable unsigned")
    );

    let many = InstanceOptions { intra_op_threads: 100_000, ..InstanceOptions::default() };
    assert!(load_error(loader.load(&mlp_torch(), Some(&mlp_signature()), &many)).contains("between 1 and 256"));

    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("model.pt");
    std::fs::write(&garbage, b"not a zip archive").unwrap();
    let missing = dir.path().join("absent.pt");
    for (file, why) in [(&garbage, "not a ZIP archive"), (&missing, "No such file or directory")] {
        let err = load_error(load(file, &mlp_signature()));
        let name = file.file_name().unwrap().to_str().unwrap();
        assert!(err.starts_with(&format!("model load failed: cannot read TorchScript from {name}: ")), "{err}");
        assert!(err.contains(why), "{err}");
        assert!(!err.contains(dir.path().to_str().unwrap()) && !err.contains("frame #"), "{err}");
    }
}

#[test]
fn a_cuda_device_that_cannot_be_met_fails_the_load_unless_cpu_fallback_is_allowed() {
    let missing = Device::Cuda(tch::Cuda::device_count() as u32);
    let strict = InstanceOptions { device: missing, ..one_thread() };
    let err = load_error(TorchLoader::new().load(&mlp_torch(), Some(&mlp_signature()), &strict));
    assert!(err.starts_with(&format!("device {missing} unavailable: ")), "{err}");

    let lenient = InstanceOptions { allow_cpu_fallback: true, ..strict };
    let mut backend = TorchLoader::new().load(&mlp_torch(), Some(&mlp_signature()), &lenient).unwrap();
    let x = f32_bytes(&[0.5; 64]);
    assert_eq!(backend.execute(&[input(DataType::Fp32, &[1, 64], &x)], &[0]).unwrap()[0].shape, vec![1, 10]);
    assert_eq!(backend.device_memory_bytes(), None);
}

/// The mlp's weights: 64x256 + 256, 256x256 + 256, 256x10 + 10 floats.
#[cfg(feature = "libtorch-cuda")]
const MLP_PARAMETER_BYTES: u64 = ((64 * 256 + 256) + (256 * 256 + 256) + (256 * 10 + 10)) * 4;

#[cfg(feature = "libtorch-cuda")]
#[test]
#[ignore = "needs a CUDA GPU: cargo test --workspace --features torch,cuda -- --ignored gpu_"]
fn gpu_mlp_torch_on_cuda_0_matches_the_cpu_and_reports_its_weights() {
    let x: Vec<f32> = (0..7 * 64).map(|i| (i as f32 * 0.11).cos()).collect();
    let data = f32_bytes(&x);
    let run = |device: Device| {
        let options = InstanceOptions { device, ..one_thread() };
        let mut backend = TorchLoader::new().load(&mlp_torch(), Some(&mlp_signature()), &options).unwrap();
        let out = backend.execute(&[input(DataType::Fp32, &[7, 64], &data)], &[0]).unwrap();
        (f32_values(&out[0].data), backend.device_memory_bytes())
    };
    let (cpu, _) = run(Device::Cpu);
    let (gpu, memory) = run(Device::Cuda(0));
    assert_eq!(memory, Some(MLP_PARAMETER_BYTES));
    let worst = cpu.iter().zip(&gpu).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(worst < 1e-4, "max |cpu - gpu| = {worst}");
}
