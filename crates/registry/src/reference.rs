//! Building a drift reference from a data file: `modelgate profile DATA` and
//! `modelgate registry push --reference DATA`.
//!
//! Features are named as the gateway's profiler names what it serves, so windows and reference
//! line up: an `.npy` array of shape `[rows, F]` gives `INPUT[0]`..`INPUT[F-1]` (`INPUT` is
//! `--input`), shape `[rows]` gives `INPUT`, and higher ranks are summarised per row as
//! `INPUT.mean`, `INPUT.std`, `INPUT.min`, `INPUT.max`. A CSV's columns keep their header names,
//! or become `INPUT[i]` with `--input`; a column with any value that is not a number is
//! categorical (as are those named by `--categorical`), and an empty cell is missing.
//!
//! With `--adaptive`, each feature gets NannyML's adaptive threshold: the reference is cut into
//! chunks of `--chunk-rows`, each chunk is compared with the whole reference, and the threshold is
//! the mean of those statistics plus three standard deviations (normed Wasserstein for numbers,
//! Jensen–Shannon for categories: distances, whose spread over same-distribution chunks is what
//! the rule measures).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use modelgate_sketch::{CategoricalProfile, FeatureProfile, Profile, Rule, Stat, Summary};

use crate::drift::Reference;

/// Rows read from one file at most (a reference is a sample, not a data lake).
pub const MAX_ROWS: usize = 10_000_000;

/// Flags of `modelgate profile`.
#[derive(Debug, Clone, clap::Args)]
pub struct ProfileArgs {
    /// A `.npy` array or a `.csv` file with a header row.
    pub data: PathBuf,
    /// The model input the data is for: names features `INPUT[i]` (default for `.npy`: INPUT0).
    #[arg(long)]
    pub input: Option<String>,
    /// A CSV column (by header name) to treat as categorical (repeatable).
    #[arg(long = "categorical")]
    pub categorical: Vec<String>,
    /// Histogram bins per numeric feature (the reference's quantiles are the edges).
    #[arg(long, default_value_t = 10)]
    pub bins: usize,
    /// Set NannyML-style adaptive thresholds from reference chunks.
    #[arg(long)]
    pub adaptive: bool,
    /// Rows per chunk for `--adaptive` (the size of a typical evaluated span).
    #[arg(long, default_value_t = 1000)]
    pub chunk_rows: usize,
    /// Where to write the reference (default: stdout).
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

/// Why a reference could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    /// The file could not be read.
    #[error("{path}: {message}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The data or the flags do not make a reference.
    #[error("{0}")]
    Invalid(String),
}

/// One feature's values as read.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    /// Numbers (NaN for a missing one).
    Numeric(Vec<f64>),
    /// Categories (`None` for a missing one).
    Categorical(Vec<Option<String>>),
}

/// A data file's features, by name, in file order.
pub type Table = Vec<(String, Values)>;

fn read_error(path: &Path, message: impl std::fmt::Display) -> ReferenceError {
    ReferenceError::Read { path: path.to_owned(), message: message.to_string() }
}

/// Reads `.npy` or `.csv` by extension.
pub fn read(path: &Path, input: Option<&str>, categorical: &BTreeSet<String>) -> Result<Table, ReferenceError> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("npy") => read_npy(path, input.unwrap_or("INPUT0")),
        Some("csv") => read_csv(path, input, categorical),
        Some("parquet") => Err(read_error(
            path,
            "Parquet is not read here: convert it (pandas: df.to_csv or np.save) or build the profile in Python",
        )),
        _ => Err(read_error(path, "expected a .npy or .csv file")),
    }
}

/// Reads a NumPy array of any numeric dtype (booleans as 0/1).
pub fn read_npy(path: &Path, input: &str) -> Result<Table, ReferenceError> {
    let file = std::fs::File::open(path).map_err(|e| read_error(path, e))?;
    let npy = npyz::NpyFile::new(std::io::BufReader::new(file)).map_err(|e| read_error(path, e))?;
    let shape: Vec<usize> = npy.shape().iter().map(|&d| usize::try_from(d).unwrap_or(usize::MAX)).collect();
    if npy.order() != npyz::Order::C {
        return Err(read_error(path, "a Fortran-order array: save it with np.save(np.ascontiguousarray(a))"));
    }
    let rows = *shape.first().ok_or_else(|| read_error(path, "a 0-d array has no rows"))?;
    if rows == 0 || rows > MAX_ROWS {
        return Err(read_error(path, format!("{rows} rows: expected 1 to {MAX_ROWS}")));
    }
    let descr = npy.dtype().descr();
    let kind = descr.trim_matches('\'').trim_start_matches(['<', '>', '|', '=']);
    let map = |e: std::io::Error| read_error(path, e);
    let values: Vec<f64> = match kind {
        "f8" => npy.into_vec::<f64>().map_err(map)?,
        "f4" => npy.into_vec::<f32>().map_err(map)?.into_iter().map(f64::from).collect(),
        "i8" => npy.into_vec::<i64>().map_err(map)?.into_iter().map(|v| v as f64).collect(),
        "i4" => npy.into_vec::<i32>().map_err(map)?.into_iter().map(f64::from).collect(),
        "i2" => npy.into_vec::<i16>().map_err(map)?.into_iter().map(f64::from).collect(),
        "i1" => npy.into_vec::<i8>().map_err(map)?.into_iter().map(f64::from).collect(),
        "u8" => npy.into_vec::<u64>().map_err(map)?.into_iter().map(|v| v as f64).collect(),
        "u4" => npy.into_vec::<u32>().map_err(map)?.into_iter().map(f64::from).collect(),
        "u2" => npy.into_vec::<u16>().map_err(map)?.into_iter().map(f64::from).collect(),
        "u1" => npy.into_vec::<u8>().map_err(map)?.into_iter().map(f64::from).collect(),
        "b1" => npy.into_vec::<bool>().map_err(map)?.into_iter().map(|b| f64::from(u8::from(b))).collect(),
        other => return Err(read_error(path, format!("dtype {other}: expected a numeric array"))),
    };
    Ok(split_rows(input, &shape, &values))
}

/// Cuts a C-order array of `shape` into per-row features, named as the gateway names them.
pub fn split_rows(input: &str, shape: &[usize], values: &[f64]) -> Table {
    let rows = shape.first().copied().unwrap_or(0);
    match shape.len() {
        1 => vec![(input.to_owned(), Values::Numeric(values.to_vec()))],
        2 => {
            let width = shape[1];
            (0..width)
                .map(|f| {
                    let column = (0..rows).map(|r| values[r * width + f]).collect();
                    (format!("{input}[{f}]"), Values::Numeric(column))
                })
                .collect()
        }
        _ => {
            let width: usize = shape[1..].iter().product();
            let mut stats: [Vec<f64>; 4] = Default::default();
            for row in values.chunks(width.max(1)).take(rows) {
                let [mean, std, min, max] = row_summary(row);
                stats[0].push(mean);
                stats[1].push(std);
                stats[2].push(min);
                stats[3].push(max);
            }
            ["mean", "std", "min", "max"]
                .into_iter()
                .zip(stats)
                .map(|(name, column)| (format!("{input}.{name}"), Values::Numeric(column)))
                .collect()
        }
    }
}

/// Mean, population std, min and max of one row of a higher-rank tensor, the gateway's
/// summary of it (NaN when the row holds no finite value).
pub fn row_summary(row: &[f64]) -> [f64; 4] {
    let finite: Vec<f64> = row.iter().copied().filter(|v| v.is_finite()).collect();
    if finite.is_empty() {
        return [f64::NAN; 4];
    }
    let n = finite.len() as f64;
    let mean = finite.iter().sum::<f64>() / n;
    let var = finite.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    let min = finite.iter().copied().fold(f64::INFINITY, f64::min);
    let max = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    [mean, var.sqrt(), min, max]
}

/// Reads a CSV with a header row.
pub fn read_csv(path: &Path, input: Option<&str>, categorical: &BTreeSet<String>) -> Result<Table, ReferenceError> {
    let mut reader = csv::Reader::from_path(path).map_err(|e| read_error(path, e))?;
    let header: Vec<String> = reader.headers().map_err(|e| read_error(path, e))?.iter().map(str::to_owned).collect();
    if let Some(unknown) = categorical.iter().find(|c| !header.contains(c)) {
        return Err(read_error(path, format!("--categorical {unknown}: no such column")));
    }
    let mut cells: Vec<Vec<String>> = vec![Vec::new(); header.len()];
    for (line, record) in reader.records().enumerate() {
        let record = record.map_err(|e| read_error(path, e))?;
        if line >= MAX_ROWS {
            return Err(read_error(path, format!("more than {MAX_ROWS} rows")));
        }
        for (column, cell) in cells.iter_mut().zip(record.iter()) {
            column.push(cell.trim().to_owned());
        }
    }
    if cells.first().is_none_or(Vec::is_empty) {
        return Err(read_error(path, "no rows under the header"));
    }
    Ok(header
        .iter()
        .zip(cells)
        .enumerate()
        .map(|(i, (name, column))| {
            let feature = input.map_or_else(|| name.clone(), |input| format!("{input}[{i}]"));
            let numbers: Option<Vec<f64>> = match categorical.contains(name) {
                true => None,
                false => {
                    column.iter().map(|c| if c.is_empty() { Some(f64::NAN) } else { c.parse::<f64>().ok() }).collect()
                }
            };
            let values = match numbers {
                Some(n) => Values::Numeric(n),
                None => Values::Categorical(column.into_iter().map(|c| (!c.is_empty()).then_some(c)).collect()),
            };
            (feature, values)
        })
        .collect())
}

/// Profiles every feature of `table` as a reference (`bins` quantile bins, KLL k = 2000).
pub fn profile(table: &Table, bins: usize) -> Result<Profile, ReferenceError> {
    if !(1..=1000).contains(&bins) {
        return Err(ReferenceError::Invalid(format!("--bins {bins}: expected 1 to 1000")));
    }
    let mut features = BTreeMap::new();
    for (name, values) in table {
        let summary = match values {
            Values::Numeric(v) => Summary::Numeric(
                FeatureProfile::reference(v, bins, modelgate_sketch::numeric::REFERENCE_K)
                    .map_err(|e| ReferenceError::Invalid(format!("{name}: {e}")))?,
            ),
            Values::Categorical(v) => Summary::Categorical(categorical_profile(v)?),
        };
        if features.insert(name.clone(), summary).is_some() {
            return Err(ReferenceError::Invalid(format!("feature '{name}' appears twice")));
        }
    }
    Ok(Profile { features })
}

fn categorical_profile(values: &[Option<String>]) -> Result<CategoricalProfile, ReferenceError> {
    let mut p = CategoricalProfile::new(modelgate_sketch::categorical::DEFAULT_MAX_ITEMS)
        .map_err(|e| ReferenceError::Invalid(e.to_string()))?;
    for v in values {
        match v {
            Some(v) => p.update(v),
            None => p.update_missing(),
        }
    }
    Ok(p)
}

/// NannyML's adaptive threshold per feature: chunks of `chunk_rows` against the whole
/// reference; mean + 3σ of their distances. Needs at least two full chunks.
pub fn adaptive_rules(
    table: &Table,
    reference: &Profile,
    chunk_rows: usize,
) -> Result<BTreeMap<String, Rule>, ReferenceError> {
    let mut rules = BTreeMap::new();
    for (name, values) in table {
        let Some(whole) = reference.features.get(name) else { continue };
        let rows = match values {
            Values::Numeric(v) => v.len(),
            Values::Categorical(v) => v.len(),
        };
        if chunk_rows == 0 || rows / chunk_rows < 2 {
            return Err(ReferenceError::Invalid(format!(
                "--adaptive needs at least two chunks of {chunk_rows} rows; the data has {rows}"
            )));
        }
        let stat = match values {
            Values::Numeric(_) => Stat::Wasserstein,
            Values::Categorical(_) => Stat::JensenShannon,
        };
        let probe = Rule::Fixed { stat, threshold: f64::MAX };
        let mut distances = Vec::new();
        for chunk in 0..rows / chunk_rows {
            let range = chunk * chunk_rows..(chunk + 1) * chunk_rows;
            let mut window = Summary::empty(&whole.spec()).map_err(|e| ReferenceError::Invalid(e.to_string()))?;
            match (&mut window, values) {
                (Summary::Numeric(w), Values::Numeric(v)) => w.extend(&v[range]),
                (Summary::Categorical(w), Values::Categorical(v)) => {
                    for value in &v[range] {
                        match value {
                            Some(value) => w.update(value),
                            None => w.update_missing(),
                        }
                    }
                }
                _ => continue,
            }
            if let Ok(verdict) = whole.evaluate(&window, probe, 1) {
                distances.push(verdict.value);
            }
        }
        if let Some((_, upper)) = modelgate_sketch::stats::adaptive_threshold(&distances) {
            // A constant feature has zero spread: any change at all is drift, but a bound of
            // exactly 0 would flag rounding.
            rules.insert(name.clone(), Rule::Fixed { stat, threshold: upper.max(1e-9) });
        }
    }
    Ok(rules)
}

/// Builds a reference from a data file as `args` asks.
pub fn build(args: &ProfileArgs) -> Result<Reference, ReferenceError> {
    let categorical: BTreeSet<String> = args.categorical.iter().cloned().collect();
    let table = read(&args.data, args.input.as_deref(), &categorical)?;
    let profile = profile(&table, args.bins)?;
    let rules = if args.adaptive { adaptive_rules(&table, &profile, args.chunk_rows)? } else { BTreeMap::new() };
    Ok(Reference { profile, rules })
}

/// Reads a reference: a `.json` written by `modelgate profile` (or by hand, or Python), or a data
/// file profiled with the defaults (and `input` naming its features).
pub fn load(path: &Path, input: Option<&str>) -> Result<Reference, ReferenceError> {
    if path.extension().and_then(|e| e.to_str()) == Some("json") {
        let text = std::fs::read_to_string(path).map_err(|e| read_error(path, e))?;
        let reference: Reference = serde_json::from_str(&text).map_err(|e| read_error(path, e))?;
        return Ok(reference);
    }
    let args = ProfileArgs {
        data: path.to_owned(),
        input: input.map(str::to_owned),
        categorical: Vec::new(),
        bins: 10,
        adaptive: false,
        chunk_rows: 1000,
        output: None,
    };
    build(&args)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_two_dimensional_array_gives_one_feature_per_column_and_higher_ranks_a_row_summary() {
        let table = split_rows("INPUT0", &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(table[1], ("INPUT0[1]".to_string(), Values::Numeric(vec![2.0, 5.0])));
        let table = split_rows("IMG", &[1, 2, 2], &[1.0, 3.0, 1.0, 3.0]);
        let names: Vec<&str> = table.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["IMG.mean", "IMG.std", "IMG.min", "IMG.max"]);
        assert_eq!(table[0].1, Values::Numeric(vec![2.0]));
        assert_eq!(table[1].1, Values::Numeric(vec![1.0]));
    }

    #[test]
    fn a_csv_column_with_words_is_categorical_and_an_empty_cell_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "d.csv", "age,city\n30,Paris\n,Rome\n41,\n");
        let table = read_csv(&path, None, &BTreeSet::new()).unwrap();
        let Values::Numeric(age) = &table[0].1 else { panic!() };
        assert!(age[1].is_nan());
        assert_eq!(table[1].1, Values::Categorical(vec![Some("Paris".into()), Some("Rome".into()), None]));
        let named = read_csv(&path, Some("INPUT0"), &BTreeSet::from(["age".to_string()])).unwrap();
        assert_eq!(named[0].0, "INPUT0[0]");
        assert!(matches!(named[0].1, Values::Categorical(_)));
        let err = read_csv(&path, None, &BTreeSet::from(["zip".to_string()])).unwrap_err();
        assert!(err.to_string().contains("no such column"), "{err}");
    }

    #[test]
    fn an_npy_file_of_float32_is_profiled_per_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.npy");
        let data: Vec<f32> = (0..300).map(|i| (i % 100) as f32).collect();
        use npyz::WriterBuilder as _;
        let file = std::fs::File::create(&path).unwrap();
        let mut out =
            npyz::WriteOptions::<f32>::new().default_dtype().shape(&[100, 3]).writer(file).begin_nd().unwrap();
        out.extend(data).unwrap();
        out.finish().unwrap();
        let reference = load(&path, Some("x")).unwrap();
        assert_eq!(reference.profile.features.len(), 3);
        assert_eq!(reference.profile.rows(), 100);
        assert!(reference.profile.features.contains_key("x[2]"));
    }

    #[test]
    fn adaptive_thresholds_sit_above_what_same_distribution_chunks_show() {
        let values: Vec<f64> = (0..10_000).map(|i| ((i * 7919) % 10_007) as f64 / 10_007.0).collect();
        let table = vec![("x".to_string(), Values::Numeric(values))];
        let reference = profile(&table, 10).unwrap();
        let rules = adaptive_rules(&table, &reference, 1000).unwrap();
        let Rule::Fixed { stat, threshold } = rules["x"] else { panic!() };
        assert_eq!(stat, Stat::Wasserstein);
        assert!(threshold > 0.0 && threshold < 0.2, "{threshold}");
        let short = vec![("x".to_string(), Values::Numeric(vec![1.0; 1500]))];
        assert!(adaptive_rules(&short, &profile(&short, 10).unwrap(), 1000).is_err());
    }

    #[test]
    fn a_parquet_or_unknown_file_is_refused_with_the_reason() {
        let err = read(Path::new("d.parquet"), None, &BTreeSet::new()).unwrap_err();
        assert!(err.to_string().contains("convert it"), "{err}");
        assert!(read(Path::new("d.txt"), None, &BTreeSet::new()).is_err());
    }
}
