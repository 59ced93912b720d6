//! In-process ONNX Runtime baseline: the gateway's own backend
//! (`modelgate_backend_onnx::OnnxLoader`, the same library, optimisation level
//! and thread settings as `modelgate serve`), called directly in a loop with
//! no network, queue or batcher in between. The load tests compare what the
//! server achieves with this, at the same batch sizes.
//!
//! Run: `cargo bench --bench ort_baseline -- [--model PATH] [--batch-sizes 1,8,64]
//!       [--seconds S] [--intra-op-threads N] [--parameter KEY=VALUE ...] [--csv]`
//!
//! Prints a table (µs per call, rows/s) on stderr and, with `--csv`, one CSV
//! line per batch size on stdout for scripts:
//! `model,batch_size,calls,us_per_call,rows_per_s`.
//!
//! Defaults: `models/mlp/1/model.onnx`, batch sizes 1,2,4,8,16,32,64, 1 s per
//! size, 1 intra-op thread (the gateway's `repository.intra_op_threads`).
//! The model must take one FP32 input of shape [batch, width].

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use modelgate_backend::{DataType, InputTensor, InstanceOptions, ModelLoader};
use modelgate_backend_onnx::OnnxLoader;

struct Args {
    model: PathBuf,
    batch_sizes: Vec<usize>,
    seconds: f64,
    intra_op_threads: usize,
    csv: bool,
    /// Model parameters as in `config.pbtxt` (`--parameter enable_mem_arena=1`).
    parameters: std::collections::BTreeMap<String, String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        model: PathBuf::from("models/mlp/1/model.onnx"),
        batch_sizes: vec![1, 2, 4, 8, 16, 32, 64],
        seconds: 1.0,
        intra_op_threads: 1,
        csv: false,
        parameters: std::collections::BTreeMap::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            // Passed by `cargo bench` to every bench binary.
            "--bench" => {}
            "--model" => args.model = PathBuf::from(value()?),
            "--batch-sizes" => {
                args.batch_sizes = value()?
                    .split(',')
                    .map(|s| s.trim().parse::<usize>().map_err(|e| format!("--batch-sizes: {s:?}: {e}")))
                    .collect::<Result<_, _>>()?;
                if args.batch_sizes.iter().any(|&b| b == 0 || b > 1 << 16) {
                    return Err("--batch-sizes must be between 1 and 65536".into());
                }
            }
            "--seconds" => {
                args.seconds = value()?.parse().map_err(|e| format!("--seconds: {e}"))?;
                if !(0.01..=600.0).contains(&args.seconds) {
                    return Err("--seconds must be between 0.01 and 600".into());
                }
            }
            "--intra-op-threads" => {
                args.intra_op_threads = value()?.parse().map_err(|e| format!("--intra-op-threads: {e}"))?;
            }
            "--csv" => args.csv = true,
            "--parameter" => {
                let pair = value()?;
                let (key, value) =
                    pair.split_once('=').ok_or_else(|| format!("--parameter {pair:?}: not KEY=VALUE"))?;
                args.parameters.insert(key.to_owned(), value.to_owned());
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

/// Calls and elapsed time of running one batch size for about `budget`.
fn measure(run: &mut dyn FnMut(), budget: Duration) -> (u64, Duration) {
    // Warm-up: first runs allocate ORT's arena and settle the caches.
    let warm = Instant::now();
    while warm.elapsed() < budget / 10 {
        run();
    }
    let start = Instant::now();
    let mut calls = 0u64;
    // Check the clock every few calls so that timing a 10 µs call is not
    // dominated by reading the clock.
    while start.elapsed() < budget {
        for _ in 0..8 {
            run();
        }
        calls += 8;
    }
    (calls, start.elapsed())
}

fn run(args: &Args) -> Result<(), String> {
    let library = std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .or_else(|| option_env!("ORT_DYLIB_PATH").map(PathBuf::from))
        .ok_or("ORT_DYLIB_PATH is not set: run scripts/setup.sh (cargo sets it from .cargo/config.toml)")?;
    let loader = OnnxLoader::new(library).map_err(|e| e.to_string())?;
    let options = InstanceOptions {
        intra_op_threads: args.intra_op_threads,
        parameters: args.parameters.clone(),
        ..InstanceOptions::default()
    };
    let mut backend = loader.load(&args.model, None, &options).map_err(|e| e.to_string())?;
    let signature = backend.signature().ok_or("the ONNX backend reports no signature")?.clone();
    let [input] = signature.inputs.as_slice() else {
        return Err(format!(
            "{} has {} inputs; this baseline drives one",
            args.model.display(),
            signature.inputs.len()
        ));
    };
    let width = match input.shape.as_slice() {
        [_, w] if *w > 0 && input.dtype == DataType::Fp32 => *w as usize,
        _ => {
            return Err(format!(
                "input '{}' is {} {:?}, expected FP32 [batch, width]",
                input.name, input.dtype, input.shape
            ));
        }
    };
    let model = args.model.display().to_string();
    eprintln!(
        "{model}: input [batch, {width}] FP32, {} intra-op thread(s), {} s per batch size",
        args.intra_op_threads, args.seconds
    );
    eprintln!("{:>6} {:>10} {:>12} {:>12}", "batch", "calls", "µs/call", "rows/s");
    if args.csv {
        println!("model,batch_size,calls,us_per_call,rows_per_s");
    }
    for &batch in &args.batch_sizes {
        // A Vec<f32> is aligned for FP32, as the gateway's assembled batches are.
        let values: Vec<f32> = (0..batch * width).map(|i| (i % 97) as f32 * 0.01).collect();
        let shape = [batch as i64, width as i64];
        let view = InputTensor { dtype: DataType::Fp32, shape: &shape, data: bytemuck::cast_slice(&values) };
        let mut failure = None;
        let (calls, elapsed) = measure(
            &mut || {
                if let Err(e) = backend.execute(std::slice::from_ref(&view), &[0]) {
                    failure.get_or_insert(e.to_string());
                }
            },
            Duration::from_secs_f64(args.seconds),
        );
        if let Some(e) = failure {
            return Err(format!("batch {batch}: {e}"));
        }
        let us_per_call = elapsed.as_secs_f64() * 1e6 / calls as f64;
        let rows_per_s = (calls * batch as u64) as f64 / elapsed.as_secs_f64();
        eprintln!("{batch:>6} {calls:>10} {us_per_call:>12.2} {rows_per_s:>12.0}");
        if args.csv {
            println!("{model},{batch},{calls},{us_per_call:.3},{rows_per_s:.1}");
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let outcome = parse_args().and_then(|args| run(&args));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ort_baseline: {e}");
            ExitCode::FAILURE
        }
    }
}
