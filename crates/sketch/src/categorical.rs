//! [`CategoricalProfile`]: bounded frequent items of one categorical feature over one window.

use datasketches::frequencies::{ErrorType, FrequentItemsSketch};

use crate::SketchError;

/// Default map size: at most 0.75 × 64 = 48 categories are tracked exactly; the rest is "other".
pub const DEFAULT_MAX_ITEMS: usize = 64;

/// Counts per category with bounded memory.
///
/// DataSketches' frequent-items sketch (Misra–Gries with reverse purge): at most
/// `0.75 × max_map_size` categories are held, and a purge subtracts a common offset from every
/// count, so a flood of distinct values (a client sending request ids as a feature) costs a fixed
/// map, not one entry per value. Counts the sketch no longer holds are reported as "other".
#[derive(Debug, Clone)]
pub struct CategoricalProfile {
    pub(crate) missing: u64,
    pub(crate) items: FrequentItemsSketch<String>,
}

impl CategoricalProfile {
    /// An empty profile; `max_map_size` is a power of two in 8..=2^30.
    pub fn new(max_map_size: usize) -> Result<Self, SketchError> {
        let items = FrequentItemsSketch::new(max_map_size).map_err(|_| SketchError::BadParameter {
            name: "max_map_size",
            value: max_map_size as u64,
            reason: "a power of two in 8..=2^30",
        })?;
        Ok(Self { missing: 0, items })
    }

    /// Adds one value. Allocates only for a category the sketch does not hold yet.
    #[inline]
    pub fn update(&mut self, value: &str) {
        self.items.update_ref(value);
    }

    /// Counts a row with no value (null, or an empty string when the caller so decides).
    pub fn update_missing(&mut self) {
        self.missing += 1;
    }

    /// Adds another profile of the same feature.
    pub fn merge(&mut self, other: &CategoricalProfile) {
        self.items.merge(&other.items);
        self.missing += other.missing;
    }

    /// Rows with a value (missing ones excluded).
    pub fn count(&self) -> u64 {
        self.items.total_weight()
    }

    /// Rows with no value.
    pub fn missing_count(&self) -> u64 {
        self.missing
    }

    /// The categories held and their counts, largest first, and the "other" count: everything
    /// the sketch no longer attributes to a category. The counts are the sketch's lower bounds
    /// (exact until the first purge), so the categories plus "other" add up to [`count`](Self::count).
    pub fn counts(&self) -> (Vec<(String, u64)>, u64) {
        let rows = self.items.frequent_items_with_threshold(ErrorType::NoFalseNegatives, 0);
        let mut counts: Vec<(String, u64)> = rows
            .into_iter()
            .filter(|row| row.lower_bound() > 0)
            .map(|row| (row.item().clone(), row.lower_bound()))
            .collect();
        counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let held: u64 = counts.iter().map(|(_, c)| c).sum();
        (counts, self.count() - held)
    }

    /// Upper bound on how far any count is from the truth (0 until the first purge).
    pub fn maximum_error(&self) -> u64 {
        self.items.maximum_error()
    }

    /// The frequent-items sketch.
    pub fn sketch(&self) -> &FrequentItemsSketch<String> {
        &self.items
    }

    /// Bytes this profile holds (the sketch's own estimate plus the struct).
    pub fn memory_bytes(&self) -> usize {
        size_of::<Self>() + self.items.estimated_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_exact_below_capacity() -> Result<(), SketchError> {
        let mut p = CategoricalProfile::new(DEFAULT_MAX_ITEMS)?;
        for v in ["a", "b", "a", "c", "a"] {
            p.update(v);
        }
        p.update_missing();
        let (counts, other) = p.counts();
        assert_eq!(counts[0], ("a".to_string(), 3));
        assert_eq!(counts.len(), 3);
        assert_eq!(other, 0);
        assert_eq!(p.count(), 5);
        assert_eq!(p.missing_count(), 1);
        Ok(())
    }

    #[test]
    fn a_flood_of_distinct_values_stays_bounded_and_keeps_the_heavy_hitters() -> Result<(), SketchError> {
        let mut p = CategoricalProfile::new(DEFAULT_MAX_ITEMS)?;
        let before_flood = {
            p.update("warm");
            p.memory_bytes()
        };
        for i in 0..100_000 {
            p.update(&format!("id-{i}"));
            if i % 4 == 0 {
                p.update("frequent");
            }
        }
        let (counts, other) = p.counts();
        assert!(counts.len() <= DEFAULT_MAX_ITEMS, "{} categories held", counts.len());
        assert_eq!(counts[0].0, "frequent");
        assert_eq!(counts.iter().map(|c| c.1).sum::<u64>() + other, p.count());
        // The map grows to its maximum once and no further: a few KiB, not 100,000 strings.
        assert!(p.memory_bytes() < 16 * 1024, "{} bytes", p.memory_bytes());
        assert!(before_flood <= p.memory_bytes());
        Ok(())
    }

    #[test]
    fn merge_adds_counts() -> Result<(), SketchError> {
        let mut a = CategoricalProfile::new(DEFAULT_MAX_ITEMS)?;
        let mut b = CategoricalProfile::new(DEFAULT_MAX_ITEMS)?;
        a.update("x");
        b.update("x");
        b.update("y");
        b.update_missing();
        a.merge(&b);
        assert_eq!(a.counts().0, vec![("x".to_string(), 2), ("y".to_string(), 1)]);
        assert_eq!(a.missing_count(), 1);
        Ok(())
    }
}
