//! Fixed-bin histogram on given edges.
//!
//! The edges come from the reference (its deciles, say) and every window of that feature uses the
//! same ones, so a window's histogram is comparable bin by bin with the reference's (PSI, JS,
//! Hellinger) and windows merge by adding counts.

use crate::SketchError;

/// Up to this many edges, a value's bin is found by counting every edge below it.
const BRANCHLESS_EDGES: usize = 32;

/// Counts of values per bin, on `edges.len() + 1` half-open bins:
/// `(-inf, e0)`, `[e0, e1)`, …, `[e_last, +inf)`.
///
/// The outer bins are open so that no finite value is ever dropped: a window whose values leave
/// the reference's range shows it as mass in the outer bins. One convention for every bin (unlike
/// `numpy.histogram`, whose last bin is closed) keeps the bin of a value a single binary search;
/// `numpy.searchsorted(edges, x, side="right")` gives the same bin index.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    edges: Vec<f64>,
    counts: Vec<u64>,
}

impl Histogram {
    /// An empty histogram on `edges` (finite, strictly increasing; may be empty: one bin).
    pub fn new(edges: Vec<f64>) -> Result<Self, SketchError> {
        check_edges(&edges)?;
        let counts = vec![0; edges.len() + 1];
        Ok(Self { edges, counts })
    }

    /// Rebuilds a histogram from its edges and counts (one more count than edges).
    pub fn from_parts(edges: Vec<f64>, counts: Vec<u64>) -> Result<Self, SketchError> {
        check_edges(&edges)?;
        if counts.len() != edges.len() + 1 {
            return Err(SketchError::Inconsistent(format!(
                "{} bin counts for {} edges; expected {}",
                counts.len(),
                edges.len(),
                edges.len() + 1
            )));
        }
        Ok(Self { edges, counts })
    }

    /// Adds one value. The caller passes finite values only: a NaN compares false with every edge
    /// and would be counted in the first bin.
    #[inline]
    pub fn update(&mut self, value: f64) {
        // Number of edges <= value, i.e. numpy's searchsorted(side="right"). A few edges are
        // counted without branches (vector compares): a binary search's branches on drifting
        // data mispredict about every other step, which cost more than the whole count.
        let bin = if self.edges.len() <= BRANCHLESS_EDGES {
            self.edges.iter().map(|&edge| usize::from(edge <= value)).sum()
        } else {
            self.edges.partition_point(|&edge| edge <= value)
        };
        self.counts[bin] += 1;
    }

    /// Adds another histogram's counts; both must have the same edges.
    pub fn merge(&mut self, other: &Histogram) -> Result<(), SketchError> {
        self.check_same_edges(other)?;
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        Ok(())
    }

    /// Errors unless `other` has exactly these edges.
    pub fn check_same_edges(&self, other: &Histogram) -> Result<(), SketchError> {
        // Bitwise equality: edges travel as JSON with round-trip floats, so equal edges stay equal.
        if self.edges != other.edges {
            return Err(SketchError::EdgesMismatch { left: self.edges.len(), right: other.edges.len() });
        }
        Ok(())
    }

    /// The bin edges.
    pub fn edges(&self) -> &[f64] {
        &self.edges
    }

    /// The counts, one per bin (`edges().len() + 1`).
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// The number of values counted.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Bytes held on the heap (edges and counts).
    pub fn heap_bytes(&self) -> usize {
        self.edges.capacity() * size_of::<f64>() + self.counts.capacity() * size_of::<u64>()
    }
}

fn check_edges(edges: &[f64]) -> Result<(), SketchError> {
    for (index, &value) in edges.iter().enumerate() {
        let increasing = index == 0 || edges[index - 1] < value;
        if !value.is_finite() || !increasing {
            return Err(SketchError::BadEdge { index, value });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_are_half_open_with_open_outer_bins() -> Result<(), SketchError> {
        let mut h = Histogram::new(vec![0.0, 1.0])?;
        for v in [-5.0, 0.0, 0.5, 1.0, 7.0] {
            h.update(v);
        }
        assert_eq!(h.counts(), &[1, 2, 2]);
        assert_eq!(h.total(), 5);
        Ok(())
    }

    #[test]
    fn edges_must_be_finite_and_strictly_increasing() {
        assert!(matches!(Histogram::new(vec![0.0, 0.0]), Err(SketchError::BadEdge { index: 1, .. })));
        assert!(Histogram::new(vec![f64::NAN]).is_err());
        assert!(Histogram::new(vec![0.0, f64::INFINITY]).is_err());
        assert!(Histogram::new(vec![]).is_ok());
    }

    #[test]
    fn merge_refuses_other_edges() -> Result<(), SketchError> {
        let mut a = Histogram::new(vec![0.0, 1.0])?;
        let b = Histogram::new(vec![0.0, 2.0])?;
        assert!(matches!(a.merge(&b), Err(SketchError::EdgesMismatch { .. })));
        Ok(())
    }
}
