//! Element-wise and row-wise ops of the llama family: RMSNorm, RoPE, SiLU/SwiGLU, softmax.
//!
//! Every op works on one row at a time and reduces in a fixed order, so a row's result never
//! depends on which other rows share the batch (batch invariance). Reductions that feed a
//! normalisation accumulate in f64, as ggml does, which keeps us close to llama.cpp's numbers.

/// RMSNorm of one row, scaled element-wise by `weight`: `out = x / rms(x) * weight`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    assert!(x.len() == weight.len() && x.len() == out.len(), "rms_norm: length mismatch");
    let sum: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
    let mean = (sum / x.len() as f64) as f32;
    let scale = 1.0 / (mean + eps).sqrt();
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = (v * scale) * w;
    }
}

/// RMSNorm applied to each `head_dim` slice of `x` in place (Qwen3's per-head Q/K norm).
pub fn rms_norm_heads_inplace(x: &mut [f32], head_dim: usize, weight: &[f32], eps: f32) {
    assert_eq!(weight.len(), head_dim, "rms_norm_heads: weight length");
    for head in x.chunks_exact_mut(head_dim) {
        let sum: f64 = head.iter().map(|&v| (v as f64) * (v as f64)).sum();
        let scale = 1.0 / ((sum / head_dim as f64) as f32 + eps).sqrt();
        for (v, &w) in head.iter_mut().zip(weight) {
            *v = (*v * scale) * w;
        }
    }
}

/// How RoPE pairs up the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs `(2i, 2i+1)`: llama-style GGUF files (weights permuted at conversion).
    Normal,
    /// Halves `(i, i + d/2)`: GPT-NeoX layout used by Qwen2/Qwen3.
    Neox,
}

/// Precomputed RoPE frequencies for one model.
#[derive(Clone, Debug)]
pub struct Rope {
    style: RopeStyle,
    rot_dims: usize,
    theta_scale: f32,
}

impl Rope {
    /// RoPE over the first `rot_dims` dimensions of each head with base `freq_base`.
    pub fn new(style: RopeStyle, rot_dims: usize, freq_base: f32) -> Rope {
        // Same formula and f32 arithmetic as ggml's rope so angles match llama.cpp's bit for bit.
        let theta_scale = freq_base.powf(-2.0 / rot_dims as f32);
        Rope { style, rot_dims, theta_scale }
    }

    /// Fills `cache` with interleaved (cos, sin) for position `pos`; `cache.len() == rot_dims`.
    pub fn cos_sin(&self, pos: usize, cache: &mut [f32]) {
        let mut theta = pos as f32;
        for pair in cache[..self.rot_dims].chunks_exact_mut(2) {
            pair[0] = theta.cos();
            pair[1] = theta.sin();
            theta *= self.theta_scale;
        }
    }

    /// Rotates every head (each `head_dim` long) of one token's `x` in place, given its `cos_sin`.
    pub fn apply(&self, x: &mut [f32], head_dim: usize, cos_sin: &[f32]) {
        let n = self.rot_dims;
        for head in x.chunks_exact_mut(head_dim) {
            match self.style {
                RopeStyle::Normal => {
                    for (i, pair) in head[..n].chunks_exact_mut(2).enumerate() {
                        let (c, s) = (cos_sin[2 * i], cos_sin[2 * i + 1]);
                        let (x0, x1) = (pair[0], pair[1]);
                        pair[0] = x0 * c - x1 * s;
                        pair[1] = x0 * s + x1 * c;
                    }
                }
                RopeStyle::Neox => {
                    let half = n / 2;
                    for i in 0..half {
                        let (c, s) = (cos_sin[2 * i], cos_sin[2 * i + 1]);
                        let (x0, x1) = (head[i], head[i + half]);
                        head[i] = x0 * c - x1 * s;
                        head[i + half] = x0 * s + x1 * c;
                    }
                }
            }
        }
    }

    /// Number of rotated dimensions per head.
    pub fn rot_dims(&self) -> usize {
        self.rot_dims
    }
}

/// SiLU, `x * sigmoid(x)`.
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// SwiGLU in place: `gate[i] = silu(gate[i]) * up[i]`.
pub fn swiglu_inplace(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = silu(*g) * u;
    }
}

/// Softmax in place over one row; returns nothing, the row sums to one afterwards.
pub fn softmax_inplace(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f64;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v as f64;
    }
    let inv = (1.0 / sum) as f32;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// `a[i] += b[i]`.
pub fn add_inplace(a: &mut [f32], b: &[f32]) {
    for (x, &y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_unit_weight() {
        let x = [3.0f32, 4.0];
        let mut out = [0.0; 2];
        rms_norm(&x, &[1.0, 1.0], 0.0, &mut out);
        let rms = (12.5f32).sqrt();
        assert!((out[0] - 3.0 / rms).abs() < 1e-6 && (out[1] - 4.0 / rms).abs() < 1e-6);
    }

    #[test]
    fn rope_position_zero_is_identity_and_norm_preserving() {
        for style in [RopeStyle::Normal, RopeStyle::Neox] {
            let rope = Rope::new(style, 8, 10000.0);
            let mut cs = [0.0; 8];
            rope.cos_sin(0, &mut cs);
            let orig: Vec<f32> = (0..16).map(|i| i as f32 * 0.1).collect();
            let mut x = orig.clone();
            rope.apply(&mut x, 8, &cs);
            assert_eq!(x, orig);
            rope.cos_sin(37, &mut cs);
            rope.apply(&mut x, 8, &cs);
            let n0: f32 = orig.iter().map(|v| v * v).sum();
            let n1: f32 = x.iter().map(|v| v * v).sum();
            assert!((n0 - n1).abs() < 1e-4);
        }
    }

    #[test]
    fn rope_neox_rotates_halves() {
        let rope = Rope::new(RopeStyle::Neox, 4, 10000.0);
        let mut cs = [0.0; 4];
        rope.cos_sin(1, &mut cs);
        let mut x = [1.0, 0.0, 0.0, 0.0];
        rope.apply(&mut x, 4, &cs);
        // First frequency has theta = 1 radian: (1,0) in the (x0, x2) plane becomes (cos1, sin1).
        assert!((x[0] - 1f32.cos()).abs() < 1e-6 && (x[2] - 1f32.sin()).abs() < 1e-6);
    }

    #[test]
    fn softmax_sums_to_one() {
        let mut x = [1.0, 2.0, 3.0, -1e9];
        softmax_inplace(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(x[3], 0.0);
    }
}
