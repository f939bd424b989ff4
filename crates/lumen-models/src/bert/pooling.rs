//! Pooling token vectors into one sentence vector, and L2 normalization.
//!
//! Mirrors sentence-transformers' `Pooling` module: several modes may be switched on at once,
//! and their results are concatenated in sentence-transformers' fixed order (CLS, max, mean,
//! mean/√len). Every reduction walks the sequence's own tokens in order, so a sentence pools to
//! the same bits whatever else is in the batch.

/// One way of reducing a sequence's token vectors to a single vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolingMode {
    /// The first token's vector (`[CLS]`).
    Cls,
    /// Element-wise maximum over tokens.
    Max,
    /// Element-wise mean over tokens.
    Mean,
    /// Element-wise sum divided by √(number of tokens).
    MeanSqrtLen,
}

/// Which pooling modes a model uses; their outputs are concatenated in the listed order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolingConfig {
    modes: Vec<PoolingMode>,
}

impl PoolingConfig {
    /// Mean pooling alone, sentence-transformers' default.
    pub fn mean() -> PoolingConfig {
        PoolingConfig {
            modes: vec![PoolingMode::Mean],
        }
    }

    /// The given modes, put in sentence-transformers' order with duplicates removed; `None`
    /// when `modes` is empty.
    pub fn new(modes: &[PoolingMode]) -> Option<PoolingConfig> {
        let order = [
            PoolingMode::Cls,
            PoolingMode::Max,
            PoolingMode::Mean,
            PoolingMode::MeanSqrtLen,
        ];
        let modes: Vec<PoolingMode> = order.into_iter().filter(|m| modes.contains(m)).collect();
        (!modes.is_empty()).then_some(PoolingConfig { modes })
    }

    /// The modes in output order.
    pub fn modes(&self) -> &[PoolingMode] {
        &self.modes
    }

    /// Length of the pooled vector for a model of width `hidden`.
    pub fn output_dims(&self, hidden: usize) -> usize {
        hidden * self.modes.len()
    }

    /// Pools `tokens` (row-major, `n × hidden`, `n ≥ 1`) into `out` (`output_dims(hidden)`).
    pub fn pool(&self, tokens: &[f32], hidden: usize, out: &mut [f32]) {
        debug_assert!(hidden > 0 && tokens.len().is_multiple_of(hidden) && !tokens.is_empty());
        debug_assert_eq!(out.len(), self.output_dims(hidden));
        let n = tokens.len() / hidden;
        for (mode, dst) in self.modes.iter().zip(out.chunks_exact_mut(hidden)) {
            match mode {
                PoolingMode::Cls => dst.copy_from_slice(&tokens[..hidden]),
                PoolingMode::Max => {
                    dst.copy_from_slice(&tokens[..hidden]);
                    for row in tokens.chunks_exact(hidden).skip(1) {
                        for (d, &v) in dst.iter_mut().zip(row) {
                            *d = d.max(v);
                        }
                    }
                }
                PoolingMode::Mean | PoolingMode::MeanSqrtLen => {
                    dst.fill(0.0);
                    for row in tokens.chunks_exact(hidden) {
                        for (d, &v) in dst.iter_mut().zip(row) {
                            *d += v;
                        }
                    }
                    let div = match mode {
                        PoolingMode::Mean => n as f32,
                        _ => (n as f32).sqrt(),
                    };
                    for d in dst.iter_mut() {
                        *d /= div;
                    }
                }
            }
        }
    }
}

/// Scales `v` to unit L2 norm, like PyTorch's `F.normalize` (norm clamped below at 1e-12).
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v
        .iter()
        .map(|&x| (x as f64) * (x as f64))
        .sum::<f64>()
        .sqrt();
    let norm = norm.max(1e-12) as f32;
    for x in v.iter_mut() {
        *x /= norm;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Three tokens of width 2.
    const TOKENS: [f32; 6] = [1.0, -4.0, 3.0, 2.0, -1.0, 5.0];

    fn pooled(modes: &[PoolingMode]) -> Vec<f32> {
        let cfg = PoolingConfig::new(modes).unwrap();
        let mut out = vec![0.0; cfg.output_dims(2)];
        cfg.pool(&TOKENS, 2, &mut out);
        out
    }

    #[test]
    fn single_modes() {
        assert_eq!(pooled(&[PoolingMode::Cls]), vec![1.0, -4.0]);
        assert_eq!(pooled(&[PoolingMode::Max]), vec![3.0, 5.0]);
        assert_eq!(pooled(&[PoolingMode::Mean]), vec![1.0, 1.0]);
        let s = 3f32.sqrt();
        assert_eq!(pooled(&[PoolingMode::MeanSqrtLen]), vec![3.0 / s, 3.0 / s]);
    }

    #[test]
    fn combined_modes_use_sentence_transformers_order() {
        let out = pooled(&[
            PoolingMode::Mean,
            PoolingMode::Cls,
            PoolingMode::Max,
            PoolingMode::Mean,
        ]);
        assert_eq!(out, vec![1.0, -4.0, 3.0, 5.0, 1.0, 1.0]);
        assert!(PoolingConfig::new(&[]).is_none());
        assert_eq!(PoolingConfig::mean().modes(), &[PoolingMode::Mean]);
    }

    #[test]
    fn one_token_pools_to_itself() {
        for mode in [
            PoolingMode::Cls,
            PoolingMode::Max,
            PoolingMode::Mean,
            PoolingMode::MeanSqrtLen,
        ] {
            let cfg = PoolingConfig::new(&[mode]).unwrap();
            let mut out = [0.0; 2];
            cfg.pool(&[0.5, -2.0], 2, &mut out);
            assert_eq!(out, [0.5, -2.0], "{mode:?}");
        }
    }

    #[test]
    fn normalize_gives_unit_norm_and_keeps_zero() {
        let mut v = [3.0, 4.0];
        l2_normalize(&mut v);
        assert_eq!(v, [0.6, 0.8]);
        let mut z = [0.0, 0.0];
        l2_normalize(&mut z);
        assert_eq!(z, [0.0, 0.0]);
    }
}
