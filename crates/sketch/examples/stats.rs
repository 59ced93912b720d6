//! Profiles reference and window samples from `.npy` files and prints every statistic as JSON, for
//! `load-tests/drift/compare_stats.py` to hold against scipy and numpy.
//!
//! ```text
//! cargo run --release -p modelgate-sketch --example stats -- \
//!     --reference ref.npy --windows win.npy [--bins 10] [--k 200] \
//!     [--categorical] [--python-kll ref.kll]
//! ```
//!
//! `ref.npy` is `(trials, n)` or `(n,)` float64 (int64 with `--categorical`), `win.npy` is
//! `(trials, m)`: window `i` is tested against reference row `i` (or the one reference). With
//! `--python-kll` a KLL sketch serialized by Python's `datasketches` is read and its quantiles
//! printed, to prove the formats agree.

use std::error::Error;

use modelgate_sketch::drift::{self, Rule};
use modelgate_sketch::stats::{self, StepCdfs};
use modelgate_sketch::{CategoricalProfile, FeatureProfile, categorical, numeric};
use serde_json::{Value, json};

/// A 1-D or 2-D C-order array read from a `.npy` file, as rows of f64.
struct Array {
    rows: Vec<Vec<f64>>,
}

/// Reads NumPy's format v1–v3 for `<f8` and `<i8` (all that the comparison script writes).
fn read_npy(path: &str) -> Result<Array, Box<dyn Error>> {
    let bytes = std::fs::read(path)?;
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(format!("{path}: not a .npy file").into());
    }
    let (header_len, start) = if bytes[6] == 1 {
        (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10)
    } else {
        let len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        (usize::try_from(len)?, 12)
    };
    let header = std::str::from_utf8(&bytes[start..start + header_len])?;
    if header.contains("'fortran_order': True") {
        return Err(format!("{path}: Fortran order is not supported").into());
    }
    let integer = if header.contains("'<i8'") {
        true
    } else if header.contains("'<f8'") {
        false
    } else {
        return Err(format!("{path}: dtype must be <f8 or <i8: {header}").into());
    };
    let shape_text = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| format!("{path}: no shape in {header}"))?;
    let shape: Vec<usize> =
        shape_text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::parse).collect::<Result<_, _>>()?;
    let (trials, width) = match shape[..] {
        [n] => (1, n),
        [t, n] => (t, n),
        _ => return Err(format!("{path}: shape {shape:?} is not 1-D or 2-D").into()),
    };
    let data = &bytes[start + header_len..];
    if data.len() != trials * width * 8 {
        return Err(format!("{path}: {} data bytes for shape {shape:?}", data.len()).into());
    }
    let values: Vec<f64> = data
        .chunks_exact(8)
        .map(|c| {
            let raw: [u8; 8] = c.try_into().unwrap_or([0; 8]);
            if integer { i64::from_le_bytes(raw) as f64 } else { f64::from_le_bytes(raw) }
        })
        .collect();
    let rows = values.chunks(width.max(1)).map(<[f64]>::to_vec).collect();
    Ok(Array { rows })
}

struct Args {
    reference: String,
    windows: String,
    bins: usize,
    k: u16,
    reference_k: u16,
    categorical: bool,
    python_kll: Option<String>,
}

fn parse_args() -> Result<Args, Box<dyn Error>> {
    let mut args = Args {
        reference: String::new(),
        windows: String::new(),
        bins: 10,
        k: numeric::DEFAULT_K,
        reference_k: numeric::REFERENCE_K,
        categorical: false,
        python_kll: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--reference" => args.reference = value()?,
            "--windows" => args.windows = value()?,
            "--bins" => args.bins = value()?.parse()?,
            "--k" => args.k = value()?.parse()?,
            "--reference-k" => args.reference_k = value()?.parse()?,
            "--python-kll" => args.python_kll = Some(value()?),
            "--categorical" => args.categorical = true,
            _ => return Err(format!("unknown argument {flag}").into()),
        }
    }
    if args.reference.is_empty() || args.windows.is_empty() {
        return Err("--reference and --windows are required".into());
    }
    Ok(args)
}

fn numeric_window(reference: &FeatureProfile, values: &[f64], k: u16) -> Result<Value, Box<dyn Error>> {
    let mut current = FeatureProfile::new(reference.histogram().edges().to_vec(), k)?;
    current.extend(values);
    let (r, c) = (reference.histogram().counts(), current.histogram().counts());
    let cdfs = StepCdfs::new(reference.kll(), current.kll()).ok_or("empty sample")?;
    let d = cdfs.ks_statistic();
    let auto = drift::evaluate_numeric(reference, &current, Rule::Auto, 1)?;
    Ok(json!({
        "edges": reference.histogram().edges(),
        "reference_bins": r,
        "ks_d": d,
        "ks_p": stats::ks_sketch_p_value(d, reference.kll(), current.kll()),
        "wasserstein": cdfs.wasserstein(),
        "reference_std": reference.std(),
        "psi": stats::psi(r, c),
        "js": stats::jensen_shannon(r, c),
        "hellinger": stats::hellinger(r, c),
        "bins": c,
        "auto": auto,
    }))
}

fn categorical_profile(values: &[f64]) -> Result<CategoricalProfile, Box<dyn Error>> {
    let mut p = CategoricalProfile::new(categorical::DEFAULT_MAX_ITEMS)?;
    for v in values {
        p.update(&format!("{v}"));
    }
    Ok(p)
}

fn main() -> Result<(), Box<dyn Error>> {
    let args = parse_args()?;
    let references = read_npy(&args.reference)?;
    let windows = read_npy(&args.windows)?;
    let mut out_windows = Vec::with_capacity(windows.rows.len());
    let mut reference_info = Value::Null;
    for (i, window) in windows.rows.iter().enumerate() {
        let reference = &references.rows[i.min(references.rows.len() - 1)];
        if args.categorical {
            let (r, c) = (categorical_profile(reference)?, categorical_profile(window)?);
            let table = drift::category_table(&r, &c);
            let (chi2, dof, p) = stats::chi_squared(&table).ok_or("empty sample")?;
            let (rc, cc): (Vec<u64>, Vec<u64>) = table.iter().copied().unzip();
            let auto = drift::evaluate_categorical(&r, &c, Rule::Auto, 1)?;
            if i == 0 {
                reference_info = json!({ "profile": r, "counts": r.counts(), "memory_bytes": r.memory_bytes() });
            }
            out_windows.push(json!({
                "table": table, "chi2": chi2, "dof": dof, "chi2_p": p,
                "js": stats::jensen_shannon(&rc, &cc), "auto": auto,
            }));
        } else {
            let profile = FeatureProfile::reference(reference, args.bins, args.reference_k)?;
            if i == 0 {
                reference_info = json!({
                    "profile": profile,
                    "memory_bytes": profile.memory_bytes(),
                    "deciles": (1..10).map(|d| profile.quantile(f64::from(d) / 10.0)).collect::<Vec<_>>(),
                });
            }
            // One reference row per window: build each window's reference once.
            out_windows.push(numeric_window(&profile, window, args.k)?);
        }
    }
    let python_kll = match &args.python_kll {
        Some(path) => {
            let sketch =
                datasketches::kll::KllSketch::<datasketches::kll::KllFloat<f64>>::deserialize(&std::fs::read(path)?)?;
            let quantile = |r: f64| {
                sketch
                    .quantile(r, datasketches::common::SearchCriteria::Inclusive)
                    .ok()
                    .flatten()
                    .map(|q| q.into_inner())
            };
            json!({ "n": sketch.n(), "k": sketch.k(), "deciles": (1..10).map(|d| quantile(f64::from(d) / 10.0)).collect::<Vec<_>>() })
        }
        None => Value::Null,
    };
    let out = json!({ "reference": reference_info, "windows": out_windows, "python_kll": python_kll });
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}
