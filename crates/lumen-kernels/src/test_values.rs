//! Deterministic pseudo-random inputs for the kernels' unit tests.

/// `n` values in [-2, 2) from a 64-bit LCG seeded with `seed`: the same list on every run and
/// every machine, so a failing case can be replayed.
pub(crate) fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
        })
        .collect()
}
