//! Deterministic samples for tests, without a random-number crate (this crate's and the
//! gateway's).

/// `n` draws from N(mean, sd²): splitmix64 and Box–Muller, reproducible from `seed`.
pub fn normal(seed: u64, n: usize, mean: f64, sd: f64) -> Vec<f64> {
    // splitmix64: every output is a full mix of the counter, so neighbouring seeds give
    // independent streams.
    let mut state = seed;
    let mut uniform = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // 53 random bits in (0, 1): never 0, so ln() below is finite.
        ((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let (u, v) = (uniform(), uniform());
            mean + sd * (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
        })
        .collect()
}
