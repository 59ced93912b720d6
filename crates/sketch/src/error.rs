//! The crate's one error type: bad parameters, mismatched profiles, unreadable serialized
//! profiles. Data conditions that only prevent a verdict (an empty window) are
//! [`NoVerdict`](crate::NoVerdict), not errors.

/// Why a profile could not be built, merged or read.
#[derive(Debug, thiserror::Error)]
pub enum SketchError {
    /// Histogram edges must be finite and strictly increasing.
    #[error("histogram edge {index} is {value}: edges must be finite and strictly increasing")]
    BadEdge {
        /// Position of the offending edge.
        index: usize,
        /// Its value.
        value: f64,
    },
    /// Two histograms of one feature must share their edges to be merged or compared.
    #[error(
        "histogram edges differ ({left} edges vs {right}, or different values): profiles of one feature must share the reference's edges"
    )]
    EdgesMismatch {
        /// Number of edges on the left.
        left: usize,
        /// Number of edges on the right.
        right: usize,
    },
    /// A sketch parameter out of range (KLL `k`, frequent-items map size).
    #[error("sketch parameter {name} = {value} is out of range: {reason}")]
    BadParameter {
        /// The parameter.
        name: &'static str,
        /// The value given.
        value: u64,
        /// What the range is.
        reason: &'static str,
    },
    /// The sketch library refused an operation or a byte image.
    #[error("sketch: {0}")]
    Sketch(#[from] datasketches::error::Error),
    /// A serialized profile's sketch is not valid base64.
    #[error("sketch bytes are not base64: {0}")]
    Base64(#[from] base64::DecodeError),
    /// A serialized profile whose fields disagree with each other.
    #[error("inconsistent profile: {0}")]
    Inconsistent(String),
}
