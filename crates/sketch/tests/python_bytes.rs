//! Sketch bytes written by Python's `datasketches` 5.2.0 (Apache DataSketches C++) are read here:
//! a reference profiled in Python can be tested by the control plane. The other direction
//! (Python reading this crate's bytes) is checked by `load-tests/drift/compare_stats.py`.
//!
//! The fixtures were made with:
//! ```python
//! s = kll_doubles_sketch(200)
//! for i in range(1, 1001): s.update(float(i))
//! f = frequent_strings_sketch(3)
//! f.update("cat", 5); f.update("dog", 3); f.update("eel", 1)
//! base64.b64encode(s.serialize()), base64.b64encode(f.serialize())
//! ```

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use datasketches::common::SearchCriteria;
use datasketches::frequencies::FrequentItemsSketch;
use datasketches::kll::{KllFloat, KllSketch};

const PYTHON_KLL: &str = include_str!("data/python-kll-doubles-k200-1-to-1000.b64");
const PYTHON_FREQUENT_STRINGS: &str =
    "BAEKAwMAAAADAAAAAAAAAAkAAAAAAAAAAAAAAAAAAAAFAAAAAAAAAAMAAAAAAAAAAQAAAAAAAAADAAAAY2F0AwAAAGRvZwMAAABlZWw=";

#[test]
fn a_kll_doubles_sketch_from_python_reads_with_the_same_quantiles() -> Result<(), Box<dyn std::error::Error>> {
    let bytes = BASE64.decode(PYTHON_KLL.trim())?;
    let sketch = KllSketch::<KllFloat<f64>>::deserialize(&bytes)?;
    assert_eq!((sketch.n(), sketch.k(), sketch.num_retained()), (1000, 200, 324));
    let quantile = |rank| sketch.quantile(rank, SearchCriteria::Inclusive).ok().flatten().map(KllFloat::into_inner);
    // What Python's get_quantile(rank, inclusive=True) answers on the same sketch.
    assert_eq!(quantile(0.1), Some(100.0));
    assert_eq!(quantile(0.5), Some(502.0));
    assert_eq!(quantile(0.9), Some(901.0));
    assert_eq!((quantile(0.0), quantile(1.0)), (Some(1.0), Some(1000.0)));
    // And it round-trips to the same bytes.
    assert_eq!(sketch.serialize(), bytes);
    Ok(())
}

#[test]
fn a_frequent_strings_sketch_from_python_reads_with_the_same_counts() -> Result<(), Box<dyn std::error::Error>> {
    let sketch = FrequentItemsSketch::<String>::deserialize(&BASE64.decode(PYTHON_FREQUENT_STRINGS)?)?;
    assert_eq!(sketch.total_weight(), 9);
    assert_eq!((sketch.estimate("cat"), sketch.estimate("dog"), sketch.estimate("eel")), (5, 3, 1));
    Ok(())
}
