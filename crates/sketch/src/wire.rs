//! The serialized form of profiles: plain fields, the sketches as their DataSketches bytes in
//! base64 (the bytes Python's `datasketches` reads: `kll_doubles_sketch.deserialize`,
//! `frequent_strings_sketch.deserialize`). Reading checks that the fields agree with each other,
//! since a profile arrives from a gateway or a user's file.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use datasketches::frequencies::FrequentItemsSketch;
use datasketches::kll::KllSketch;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{CategoricalProfile, FeatureProfile, Histogram, SketchError};

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FeatureWire {
    rows: u64,
    nan: u64,
    pos_inf: u64,
    neg_inf: u64,
    // None when no finite value was seen: JSON has no infinity.
    min: Option<f64>,
    max: Option<f64>,
    sum: f64,
    mean: f64,
    m2: f64,
    edges: Vec<f64>,
    bins: Vec<u64>,
    kll: String,
}

impl From<&FeatureProfile> for FeatureWire {
    fn from(p: &FeatureProfile) -> Self {
        Self {
            rows: p.rows,
            nan: p.nan,
            pos_inf: p.pos_inf,
            neg_inf: p.neg_inf,
            min: p.min(),
            max: p.max(),
            sum: p.sum,
            mean: p.mean,
            m2: p.m2,
            edges: p.histogram.edges().to_vec(),
            bins: p.histogram.counts().to_vec(),
            kll: BASE64.encode(p.kll.serialize()),
        }
    }
}

impl TryFrom<FeatureWire> for FeatureProfile {
    type Error = SketchError;

    fn try_from(w: FeatureWire) -> Result<Self, SketchError> {
        let histogram = Histogram::from_parts(w.edges, w.bins)?;
        let kll = KllSketch::deserialize(&BASE64.decode(w.kll)?)?;
        let finite = w
            .nan
            .checked_add(w.pos_inf)
            .and_then(|x| x.checked_add(w.neg_inf))
            .and_then(|x| w.rows.checked_sub(x))
            .ok_or_else(|| SketchError::Inconsistent("more NaN and inf than rows".into()))?;
        if histogram.total() != finite || kll.n() != finite {
            return Err(SketchError::Inconsistent(format!(
                "{finite} finite rows, {} in the histogram, {} in the KLL sketch",
                histogram.total(),
                kll.n()
            )));
        }
        let (min, max) = match (w.min, w.max, finite) {
            (Some(min), Some(max), 1..) if min <= max => (min, max),
            (None, None, 0) => (f64::INFINITY, f64::NEG_INFINITY),
            _ => return Err(SketchError::Inconsistent("min/max disagree with the counts".into())),
        };
        Ok(FeatureProfile {
            rows: w.rows,
            nan: w.nan,
            pos_inf: w.pos_inf,
            neg_inf: w.neg_inf,
            min,
            max,
            sum: w.sum,
            mean: w.mean,
            m2: w.m2,
            histogram,
            kll,
        })
    }
}

impl Serialize for FeatureProfile {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        FeatureWire::from(self).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for FeatureProfile {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = FeatureWire::deserialize(deserializer)?;
        FeatureProfile::try_from(wire).map_err(serde::de::Error::custom)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CategoricalWire {
    missing: u64,
    items: String,
}

impl Serialize for CategoricalProfile {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        CategoricalWire { missing: self.missing, items: BASE64.encode(self.items.serialize()) }.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for CategoricalProfile {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = CategoricalWire::deserialize(deserializer)?;
        let read = || -> Result<CategoricalProfile, SketchError> {
            let bytes = BASE64.decode(wire.items)?;
            Ok(CategoricalProfile { missing: wire.missing, items: FrequentItemsSketch::deserialize(&bytes)? })
        };
        read().map_err(serde::de::Error::custom)
    }
}
