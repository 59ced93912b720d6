//! What the zero-copy input view saves: the same module run on the same
//! bytes, once aligned (a view, as the gateway passes them) and once shifted
//! by one byte, which makes the backend copy them into a torch tensor first.
//! The copied run is the baseline; both are measured in the same run.
//!
//! `cargo bench -p modelgate-backend-torch --features libtorch --bench input`

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use modelgate_backend::{Backend, DataType, InputTensor, InstanceOptions, ModelLoader, ModelSignature, TensorSpec};
use modelgate_backend_torch::TorchLoader;

fn load(path: &Path, signature: ModelSignature) -> Box<dyn Backend> {
    let options = InstanceOptions { intra_op_threads: 1, ..InstanceOptions::default() };
    TorchLoader::new().load(path, Some(&signature), &options).expect("model loads")
}

/// 8-byte-aligned words holding `floats`, with one spare word so that a view
/// shifted by one byte still fits.
fn words(floats: usize) -> Vec<u64> {
    (0..floats.div_ceil(2) + 1).map(|i| (i as u64 % 97) * 0x3c00_0000_3c00_0000).collect()
}

fn bench_pair(c: &mut Criterion, name: &str, backend: &mut dyn Backend, shape: &[i64]) {
    let floats = shape.iter().product::<i64>() as usize;
    let buffer = words(floats);
    let bytes: &[u8] = bytemuck::cast_slice(&buffer);
    let mut group = c.benchmark_group(name);
    for (label, data) in [("copied (baseline)", &bytes[1..=floats * 4]), ("zero-copy view", &bytes[..floats * 4])] {
        let input = [InputTensor { dtype: DataType::Fp32, shape, data }];
        group.bench_function(label, |b| {
            b.iter(|| black_box(backend.execute(black_box(&input), &[0]).expect("batch runs")))
        });
    }
    group.finish();
}

fn inputs(c: &mut Criterion) {
    let mlp = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/mlp_torch/1/model.pt");
    let signature = ModelSignature {
        inputs: vec![TensorSpec::new("INPUT__0", DataType::Fp32, vec![-1, 64])],
        outputs: vec![TensorSpec::new("OUTPUT__0", DataType::Fp32, vec![-1, 10])],
    };
    bench_pair(c, "mlp_torch batch 64 (16 KiB in)", load(&mlp, signature).as_mut(), &[64, 64]);

    // A cheap model over a large input (a batch of 16 images): copying shows.
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("mean.pt");
    let example = tch::Tensor::zeros([1, 3, 224, 224], tch::kind::FLOAT_CPU);
    let mut mean = |xs: &[tch::Tensor]| vec![xs[0].mean_dim([1, 2, 3].as_slice(), false, tch::Kind::Float)];
    tch::CModule::create_by_tracing("Mean", "forward", &[example], &mut mean)
        .and_then(|m| m.save(&path))
        .expect("traced module saved");
    let signature = ModelSignature {
        inputs: vec![TensorSpec::new("x", DataType::Fp32, vec![-1, 3, 224, 224])],
        outputs: vec![TensorSpec::new("y", DataType::Fp32, vec![-1])],
    };
    bench_pair(c, "mean batch 16x3x224x224 (9.2 MiB in)", load(&path, signature).as_mut(), &[16, 3, 224, 224]);
}

criterion_group!(benches, inputs);
criterion_main!(benches);
