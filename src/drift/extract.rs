//! Profiling batches: reads each planned feature's value per row out of the
//! batches' tensors and adds it to that feature's summary.
//!
//! The batches of one version in a take are gathered first ([`gather`]) and
//! profiled together ([`profile`]): at high request rates a batch holds a row
//! or two, and a pass over a feature's column then costs mostly its set-up.
//! Every tensor the plan reads is checked against the schema's layout first
//! (element type, dims, byte length, BYTES element count): a batch that does
//! not fit is left out whole, so no index can fall outside a buffer and a
//! window never holds half a batch. Values are decoded once per tensor into a
//! reused `f64` buffer (integers above 2^53 lose precision there, which no
//! drift statistic notices); BYTES elements are located, not copied.

use std::ops::Range;

use modelgate_backend::{DataType, bytes_elements};
use modelgate_sketch::Summary;

use super::handoff::DriftBatch;
use super::plan::Plan;
use super::schema::{Reduce, Schema, Source};
use smallvec::SmallVec;

/// Which rows of a batch enter the quantile sketches: every `every`-th row
/// counted across the window, starting at row `first` of this batch. Counts,
/// histograms and frequent items take every row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sketched {
    /// The batch's first sketched row.
    pub first: usize,
    /// One row in this many.
    pub every: usize,
}

impl Sketched {
    /// Every row.
    pub const ALL: Sketched = Sketched { first: 0, every: 1 };

    /// One row in `every` (at least 1) of a window that has `rows_before` rows already.
    pub fn one_in(every: u64, rows_before: u64) -> Sketched {
        let every = every.max(1);
        let first = (every - rows_before % every) % every;
        Sketched { first: usize::try_from(first).unwrap_or(usize::MAX), every: usize::try_from(every).unwrap_or(1) }
    }

    /// The sketched rows among `rows`.
    fn rows(self, rows: usize) -> std::iter::StepBy<Range<usize>> {
        (self.first.min(rows)..rows).step_by(self.every)
    }
}

/// Why a batch was not profiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch(pub String);

/// What [`gather`] did with a batch that fits the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gathered {
    /// Its rows were decoded after the rows gathered before it.
    Added,
    /// It fits the schema but not the rows gathered so far (it carries another set of outputs,
    /// or another row size on a variable dimension): [`profile`] those, then gather it anew.
    Apart,
}

/// The decoded rows of the batches gathered for one version, and the buffers
/// they live in, reused from take to take (the profiler thread owns one).
///
/// Batches are gathered first and profiled together: at high request rates the
/// batcher's batches hold a row or two, and one pass over a feature's column of
/// a whole take costs far less than a pass per batch.
#[derive(Debug, Default)]
pub struct Scratch {
    tensors: Vec<Decoded>,
    /// Batches gathered since the last [`Scratch::clear`].
    batches: usize,
    /// Their rows.
    rows: usize,
}

impl Scratch {
    /// Forgets the gathered rows; keeps the buffers.
    pub fn clear(&mut self) {
        for decoded in &mut self.tensors {
            decoded.present = false;
            decoded.numbers.clear();
            decoded.strings.clear();
            decoded.row_stats.clear();
        }
        (self.batches, self.rows) = (0, 0);
    }

    /// Rows gathered since the last [`Scratch::clear`].
    pub fn rows(&self) -> usize {
        self.rows
    }
}

/// One tensor of the gathered batches, decoded.
#[derive(Debug, Default)]
struct Decoded {
    /// Whether the gathered batches carry it (the first decides, the others agree).
    present: bool,
    is_bytes: bool,
    per_row: usize,
    numbers: Vec<f64>,
    /// BYTES elements: the batch (its index in the caller's slice) and the byte range in its data.
    strings: Vec<(usize, Range<usize>)>,
    /// Per row: mean, std, min, max of the finite elements (filled on first use).
    row_stats: Vec<[f64; 4]>,
}

/// The bytes of a source tensor and its shape, if the batch has it.
fn tensor_of(batch: &DriftBatch, source: Source) -> Option<(DataType, &[i64], &[u8])> {
    match source {
        Source::Input(i) => batch.inputs.get(i).map(|t| (t.dtype, t.shape.as_slice(), &t.data[..])),
        Source::Output(j) => {
            batch.outputs.iter().find(|(index, _)| *index == j).map(|(_, t)| (t.dtype, t.shape.as_slice(), &t.data[..]))
        }
    }
}

fn slot(schema: &Schema, source: Source) -> usize {
    match source {
        Source::Input(i) => i,
        Source::Output(j) => schema.inputs.len() + j,
    }
}

/// Checks `batch` (the caller's `index`-th) against the schema and decodes the
/// tensors the plan reads after the rows gathered before it. A batch that does
/// not fit is left out whole (nothing of it stays in `scratch`), so no index
/// can fall outside a buffer and a window never holds half a batch.
pub fn gather(
    schema: &Schema,
    plan: &Plan,
    scratch: &mut Scratch,
    batch: &DriftBatch,
    index: usize,
) -> Result<Gathered, Mismatch> {
    let slots = schema.inputs.len() + schema.outputs.len();
    if scratch.tensors.len() != slots {
        scratch.tensors.resize_with(slots, Decoded::default);
    }
    let first = scratch.batches == 0;
    // Every check before any decoding.
    let mut reads: SmallVec<[Read<'_>; 4]> = SmallVec::new();
    for &source in &plan.sources {
        let decoded = &scratch.tensors[slot(schema, source)];
        let Some((dtype, shape, data)) = tensor_of(batch, source) else {
            if matches!(source, Source::Input(_)) {
                return Err(Mismatch(format!("the batch has no input {source:?}")));
            }
            // An output the batch's requests did not ask for gets no rows from it.
            if !first && decoded.present {
                return Ok(Gathered::Apart);
            }
            continue;
        };
        let layout = schema.layout(source).ok_or_else(|| Mismatch(format!("{source:?} is not in the schema")))?;
        let (rows, per_row) = layout
            .rows_of(dtype, shape, schema.batched)
            .ok_or_else(|| Mismatch(format!("{source:?}: {dtype:?} {shape:?} does not fit {layout:?}")))?;
        if rows != batch.rows {
            return Err(Mismatch(format!("{source:?} has {rows} rows, the batch {}", batch.rows)));
        }
        if !first && (!decoded.present || decoded.per_row != per_row) {
            return Ok(Gathered::Apart);
        }
        let (numbers, strings) = (decoded.numbers.len(), decoded.strings.len());
        reads.push(Read { source, dtype, data, per_row, numbers, strings });
    }
    for (done, read) in reads.iter().enumerate() {
        let decoded = &mut scratch.tensors[slot(schema, read.source)];
        if let Err(e) = decode(read.dtype, read.data, batch.rows * read.per_row, decoded, index) {
            // Take back what this batch decoded.
            for undone in &reads[..=done] {
                let decoded = &mut scratch.tensors[slot(schema, undone.source)];
                decoded.numbers.truncate(undone.numbers);
                decoded.strings.truncate(undone.strings);
                decoded.present = !first;
            }
            return Err(Mismatch(format!("{:?}: {e}", read.source)));
        }
        decoded.per_row = read.per_row;
        decoded.is_bytes = read.dtype == DataType::Bytes;
        decoded.present = true;
    }
    scratch.batches += 1;
    scratch.rows += batch.rows;
    Ok(Gathered::Added)
}

/// One tensor of a batch that [`gather`] decodes, with the lengths the
/// scratch's buffers had before it (to take a failed batch back).
struct Read<'a> {
    source: Source,
    dtype: DataType,
    data: &'a [u8],
    per_row: usize,
    numbers: usize,
    strings: usize,
}

/// Adds the gathered rows to `summaries` (one per planned feature, in the plan's
/// order) and clears `scratch`; returns the rows added. `batches` is the slice
/// the gathered batches were indexed in (BYTES features read their bytes there).
pub fn profile(
    schema: &Schema,
    plan: &Plan,
    summaries: &mut [Summary],
    batches: &[DriftBatch],
    sketched: Sketched,
    scratch: &mut Scratch,
) -> u64 {
    let rows = scratch.rows;
    let mut text = String::new();
    for (planned, summary) in plan.features.iter().zip(summaries.iter_mut()) {
        let source = planned.feature.source;
        let decoded = &mut scratch.tensors[slot(schema, source)];
        if !decoded.present {
            continue;
        }
        let per_row = decoded.per_row;
        match (summary, planned.feature.reduce) {
            (Summary::Numeric(p), Reduce::Element(i)) => {
                let value = |r: usize| decoded.numbers[r * per_row + i];
                p.update_counts_all((0..rows).map(value));
                for r in sketched.rows(rows) {
                    p.update_sketch(value(r));
                }
            }
            (Summary::Numeric(p), Reduce::Argmax) => {
                let value =
                    |r: usize| argmax(&decoded.numbers[r * per_row..(r + 1) * per_row]).map_or(f64::NAN, |i| i as f64);
                p.update_counts_all((0..rows).map(value));
                for r in sketched.rows(rows) {
                    p.update_sketch(value(r));
                }
            }
            (Summary::Numeric(p), stat) => {
                let which = match stat {
                    Reduce::Mean => 0,
                    Reduce::Std => 1,
                    Reduce::Min => 2,
                    _ => 3,
                };
                if decoded.row_stats.len() != rows {
                    decoded.row_stats.clear();
                    decoded.row_stats.extend(decoded.numbers.chunks_exact(per_row.max(1)).take(rows).map(row_stats));
                    // A row of zero elements has no statistics.
                    decoded.row_stats.resize(rows, [f64::NAN; 4]);
                }
                p.update_counts_all(decoded.row_stats.iter().map(|stats| stats[which]));
                for r in sketched.rows(rows) {
                    p.update_sketch(decoded.row_stats[r][which]);
                }
            }
            (Summary::Categorical(p), Reduce::Element(i)) if decoded.is_bytes => {
                for r in 0..rows {
                    let (batch, range) = decoded.strings[r * per_row + i].clone();
                    let data = batches.get(batch).and_then(|b| tensor_of(b, source)).map_or(&[][..], |(_, _, d)| d);
                    match data.get(range) {
                        None | Some([]) => p.update_missing(),
                        Some(element) => p.update(&String::from_utf8_lossy(element)),
                    }
                }
            }
            (Summary::Categorical(p), Reduce::Element(i)) => {
                for r in 0..rows {
                    let value = decoded.numbers[r * per_row + i];
                    if value.is_nan() {
                        p.update_missing();
                    } else {
                        text.clear();
                        category_of(value, &mut text);
                        p.update(&text);
                    }
                }
            }
            (Summary::Categorical(p), Reduce::Argmax) => {
                let mut buffer = itoa::Buffer::new();
                for r in 0..rows {
                    match argmax(&decoded.numbers[r * per_row..(r + 1) * per_row]) {
                        Some(i) => p.update(buffer.format(i)),
                        None => p.update_missing(),
                    }
                }
            }
            // The plan never makes a per-row statistic categorical.
            (Summary::Categorical(_), _) => {}
        }
    }
    scratch.clear();
    rows as u64
}

/// Decodes `elements` values of `dtype` from `data` (batch `index`) after those
/// in `out`, checking the length. On an error `out` may hold part of them.
fn decode(dtype: DataType, data: &[u8], elements: usize, out: &mut Decoded, index: usize) -> Result<(), String> {
    if dtype == DataType::Bytes {
        let (before, mut at) = (out.strings.len(), 0usize);
        for element in bytes_elements(data) {
            let element = element.map_err(|e| e.to_string())?;
            at += 4;
            out.strings.push((index, at..at + element.len()));
            at += element.len();
        }
        let found = out.strings.len() - before;
        if found != elements {
            return Err(format!("{found} BYTES elements, the shape says {elements}"));
        }
        return Ok(());
    }
    let size = dtype.element_size().unwrap_or(1);
    if data.len() != elements * size {
        return Err(format!("{} bytes, the shape needs {}", data.len(), elements * size));
    }
    match dtype {
        DataType::Bool | DataType::Uint8 => out.numbers.extend(data.iter().map(|&b| f64::from(b))),
        DataType::Int8 => out.numbers.extend(data.iter().map(|&b| f64::from(b as i8))),
        DataType::Uint16 => out.numbers.extend(le::<2>(data).map(|b| f64::from(u16::from_le_bytes(b)))),
        DataType::Int16 => out.numbers.extend(le::<2>(data).map(|b| f64::from(i16::from_le_bytes(b)))),
        DataType::Uint32 => out.numbers.extend(le::<4>(data).map(|b| f64::from(u32::from_le_bytes(b)))),
        DataType::Int32 => out.numbers.extend(le::<4>(data).map(|b| f64::from(i32::from_le_bytes(b)))),
        DataType::Uint64 => out.numbers.extend(le::<8>(data).map(|b| u64::from_le_bytes(b) as f64)),
        DataType::Int64 => out.numbers.extend(le::<8>(data).map(|b| i64::from_le_bytes(b) as f64)),
        DataType::Fp16 => out.numbers.extend(le::<2>(data).map(|b| half::f16::from_le_bytes(b).to_f64())),
        DataType::Bf16 => out.numbers.extend(le::<2>(data).map(|b| half::bf16::from_le_bytes(b).to_f64())),
        DataType::Fp32 => out.numbers.extend(le::<4>(data).map(|b| f64::from(f32::from_le_bytes(b)))),
        DataType::Fp64 => out.numbers.extend(le::<8>(data).map(f64::from_le_bytes)),
        DataType::Bytes => {}
    }
    Ok(())
}

/// Little-endian element bytes, whatever the buffer's alignment.
fn le<const N: usize>(data: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    data.chunks_exact(N).map(|c| {
        let mut b = [0u8; N];
        b.copy_from_slice(c);
        b
    })
}

/// Index of the largest finite element (the first of ties); `None` when none is finite.
fn argmax(row: &[f64]) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, &v) in row.iter().enumerate() {
        if v.is_finite() && best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i)
}

/// Mean, population std, min and max of a row's finite elements (NaN when none is finite).
fn row_stats(row: &[f64]) -> [f64; 4] {
    let (mut n, mut mean, mut m2) = (0.0f64, 0.0f64, 0.0f64);
    let (mut min, mut max) = (f64::INFINITY, f64::NEG_INFINITY);
    for &v in row.iter().filter(|v| v.is_finite()) {
        n += 1.0;
        let delta = v - mean;
        mean += delta / n;
        m2 += delta * (v - mean);
        min = min.min(v);
        max = max.max(v);
    }
    if n == 0.0 { [f64::NAN; 4] } else { [mean, (m2.max(0.0) / n).sqrt(), min, max] }
}

/// A number as a category: integers without a fraction (`3`, not `3.0`), so
/// an integer input reads like the reference's labels.
fn category_of(value: f64, out: &mut String) {
    if value.fract() == 0.0 && value.abs() < 9.007_199_254_740_992e15 {
        out.push_str(itoa::Buffer::new().format(value as i64));
    } else {
        out.push_str(ryu::Buffer::new().format(value));
    }
}
