//! Element-wise and row-wise ops of the llama family: RMSNorm, RoPE, SiLU/SwiGLU, softmax.
//!
//! Every op works on one row at a time and reduces in a fixed order, so a row's result never
//! depends on which other rows share the batch (batch invariance). Reductions that feed a
//! normalisation accumulate in f64, as ggml does. RMSNorm, RoPE and SwiGLU reproduce the bits of
//! llama.cpp's CPU backend (built for AVX-512): see the `ggml_math` module for the exp recipe.

use std::ops::Range;

use crate::cpu::CpuLevel;
use crate::ggml_math;
use crate::pool::{split_range, PartsPtr, ThreadPool};

/// Below this many values a batch of rows is done on the calling thread alone.
const PARALLEL_MIN_VALUES: usize = 16 * 1024;

/// Calls `f` on the rows `0..m` (of `row_len` values), split over `pool` when there are
/// enough of them. Rows are independent, so the split never changes a result.
fn for_row_parts(pool: &ThreadPool, m: usize, row_len: usize, f: impl Fn(Range<usize>) + Sync) {
    if m < 2 || m * row_len < PARALLEL_MIN_VALUES || pool.n_threads() == 1 {
        f(0..m);
    } else {
        pool.run(|t, n| f(split_range(m, n, t)));
    }
}

/// [`rms_norm`] of every `weight.len()`-value row of `x` into the same row of `out`, the rows
/// split over `pool`.
pub fn rms_norm_rows(pool: &ThreadPool, x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    rms_norm_rows_then(pool, x, weight, eps, out, |_, _| {});
}

/// [`rms_norm_rows`], calling `then(rows_of_out, rows)` on each part's rows once they are
/// done, on the thread that did them (see [`crate::fused`]).
pub(crate) fn rms_norm_rows_then(
    pool: &ThreadPool,
    x: &[f32],
    weight: &[f32],
    eps: f32,
    out: &mut [f32],
    then: impl Fn(&[f32], Range<usize>) + Sync,
) {
    let d = weight.len();
    assert!(
        d > 0 && x.len() == out.len() && x.len().is_multiple_of(d),
        "rms_norm_rows: length mismatch"
    );
    let o = PartsPtr(out.as_mut_ptr());
    for_row_parts(pool, x.len() / d, d, |rows| {
        // SAFETY: each part gets its own rows of `out`, and `run` joins the parts before the
        // borrow of `out` ends.
        let dst =
            unsafe { std::slice::from_raw_parts_mut(o.get().add(rows.start * d), rows.len() * d) };
        norm_rows(&x[rows.start * d..rows.end * d], weight, eps, dst);
        then(dst, rows);
    });
}

/// `x += residual`, then [`rms_norm_rows`] of the sum into `out`: one pass over the pool for
/// the residual add and the next norm (the add alone ran on the calling thread while the
/// others waited). Same bits as the two steps.
pub fn add_rms_norm_rows(
    pool: &ThreadPool,
    x: &mut [f32],
    residual: &[f32],
    weight: &[f32],
    eps: f32,
    out: &mut [f32],
) {
    add_rms_norm_rows_then(pool, x, residual, weight, eps, out, |_, _| {});
}

/// [`add_rms_norm_rows`], calling `then` as [`rms_norm_rows_then`] does.
pub(crate) fn add_rms_norm_rows_then(
    pool: &ThreadPool,
    x: &mut [f32],
    residual: &[f32],
    weight: &[f32],
    eps: f32,
    out: &mut [f32],
    then: impl Fn(&[f32], Range<usize>) + Sync,
) {
    let d = weight.len();
    assert!(
        d > 0 && x.len() == out.len() && x.len() == residual.len() && x.len().is_multiple_of(d),
        "add_rms_norm_rows: length mismatch"
    );
    let (xp, o) = (PartsPtr(x.as_mut_ptr()), PartsPtr(out.as_mut_ptr()));
    for_row_parts(pool, residual.len() / d, d, |rows| {
        let span = rows.start * d..rows.end * d;
        // SAFETY: each part gets its own rows of `x` and `out`, and `run` joins the parts
        // before either borrow ends.
        let (x, dst) = unsafe {
            (
                std::slice::from_raw_parts_mut(xp.get().add(span.start), span.len()),
                std::slice::from_raw_parts_mut(o.get().add(span.start), span.len()),
            )
        };
        add_inplace(x, &residual[span]);
        norm_rows(x, weight, eps, dst);
        then(dst, rows);
    });
}

/// [`rms_norm`] of each `weight.len()`-value row of `src` into `dst`.
fn norm_rows(src: &[f32], weight: &[f32], eps: f32, dst: &mut [f32]) {
    let d = weight.len();
    // Four rows at a time: each row's sum is still one sequential f64 chain (ggml's
    // order, so the same bits), but four independent chains keep the adder busy where
    // one waits on each add's latency (2 % of a 32-sequence decode step before).
    let (src4, src_rest) = src.split_at(src.len() / (4 * d) * 4 * d);
    let (dst4, dst_rest) = dst.split_at_mut(src4.len());
    for (src, dst) in src4.chunks_exact(4 * d).zip(dst4.chunks_exact_mut(4 * d)) {
        let scales = rms_scales4(src, d, eps);
        for ((src, dst), scale) in src.chunks_exact(d).zip(dst.chunks_exact_mut(d)).zip(scales) {
            scale_rows(src, weight, scale, dst);
        }
    }
    for (src, dst) in src_rest.chunks_exact(d).zip(dst_rest.chunks_exact_mut(d)) {
        rms_norm(src, weight, eps, dst);
    }
}

/// [`rms_scale`] of four consecutive rows of `d` values.
#[inline]
fn rms_scales4(x: &[f32], d: usize, eps: f32) -> [f32; 4] {
    let (r0, rest) = x.split_at(d);
    let (r1, rest) = rest.split_at(d);
    let (r2, r3) = rest.split_at(d);
    let mut sum = [0.0f64; 4];
    for i in 0..d {
        sum[0] += (r0[i] * r0[i]) as f64;
        sum[1] += (r1[i] * r1[i]) as f64;
        sum[2] += (r2[i] * r2[i]) as f64;
        sum[3] += (r3[i] * r3[i]) as f64;
    }
    sum.map(|s| 1.0 / ((s / d as f64) as f32 + eps).sqrt())
}

/// `out = (x * scale) * weight`, the second half of [`rms_norm`].
#[inline]
fn scale_rows(x: &[f32], weight: &[f32], scale: f32, out: &mut [f32]) {
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = (v * scale) * w;
    }
}

/// [`swiglu_inplace`] over rows of `row_len` values, the rows split over `pool`.
pub fn swiglu_rows(pool: &ThreadPool, gate: &mut [f32], up: &[f32], row_len: usize) {
    swiglu_rows_then(pool, gate, up, row_len, |_, _| {});
}

/// [`swiglu_rows`], calling `then` as [`rms_norm_rows_then`] does.
pub(crate) fn swiglu_rows_then(
    pool: &ThreadPool,
    gate: &mut [f32],
    up: &[f32],
    row_len: usize,
    then: impl Fn(&[f32], Range<usize>) + Sync,
) {
    assert!(
        row_len > 0 && gate.len() == up.len() && gate.len().is_multiple_of(row_len),
        "swiglu_rows: length mismatch"
    );
    let g = PartsPtr(gate.as_mut_ptr());
    for_row_parts(pool, gate.len() / row_len, row_len, |rows| {
        let span = rows.start * row_len..rows.end * row_len;
        // SAFETY: as in `rms_norm_rows`: disjoint rows per part, joined before the borrow ends.
        let dst = unsafe { std::slice::from_raw_parts_mut(g.get().add(span.start), span.len()) };
        swiglu_inplace(dst, &up[span]);
        then(dst, rows);
    });
}

/// RMSNorm of one row, scaled element-wise by `weight`: `out = x / rms(x) * weight`.
///
/// ggml's arithmetic: each square is rounded to f32 and summed sequentially in f64, the mean
/// is rounded to f32, and `scale = 1 / sqrt(mean + eps)` in f32.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    assert!(
        x.len() == weight.len() && x.len() == out.len(),
        "rms_norm: length mismatch"
    );
    scale_rows(x, weight, rms_scale(x, eps), out);
}

/// `1 / sqrt(mean(x^2) + eps)` as ggml's `rms_norm` computes it.
#[inline]
fn rms_scale(x: &[f32], eps: f32) -> f32 {
    let mut sum = 0.0f64;
    for &v in x {
        sum += (v * v) as f64;
    }
    let mean = (sum / x.len() as f64) as f32;
    1.0 / (mean + eps).sqrt()
}

/// RMSNorm applied to each `head_dim` slice of `x` in place (Qwen3's per-head Q/K norm).
pub fn rms_norm_heads_inplace(x: &mut [f32], head_dim: usize, weight: &[f32], eps: f32) {
    assert_eq!(weight.len(), head_dim, "rms_norm_heads: weight length");
    for head in x.chunks_exact_mut(head_dim) {
        let scale = rms_scale(head, eps);
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
        Rope {
            style,
            rot_dims,
            theta_scale,
        }
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
    ///
    /// Each pair becomes `(fma(x0, c, -(x1 * s)), fma(x0, s, x1 * c))`, the products inside
    /// rounded to f32: what llama.cpp's CPU rope compiles to with FMA contraction.
    pub fn apply(&self, x: &mut [f32], head_dim: usize, cos_sin: &[f32]) {
        self.apply_with(CpuLevel::detect(), x, head_dim, cos_sin);
    }

    /// [`Rope::apply`] at `level`: AVX2 from [`CpuLevel::Avx2`] up (same bits).
    fn apply_with(&self, level: CpuLevel, x: &mut [f32], head_dim: usize, cos_sin: &[f32]) {
        assert!(
            self.rot_dims <= head_dim && cos_sin.len() >= self.rot_dims,
            "rope: shape"
        );
        assert!(level.is_supported(), "rope: CPU level {level} unavailable");
        #[cfg(target_arch = "x86_64")]
        if level >= CpuLevel::Avx2 {
            // SAFETY: the CPU supports `level` (checked above), so AVX2 and FMA.
            return unsafe { self.apply_avx2(x, head_dim, cos_sin) };
        }
        let _ = level;
        for head in x.chunks_exact_mut(head_dim) {
            self.apply_head_scalar(head, cos_sin, 0);
        }
    }

    /// Rotates one head from pair `first` on, in portable Rust.
    fn apply_head_scalar(&self, head: &mut [f32], cos_sin: &[f32], first: usize) {
        let n = self.rot_dims;
        let half = n / 2;
        for i in first..half {
            let (c, s) = (cos_sin[2 * i], cos_sin[2 * i + 1]);
            let (a, b) = match self.style {
                RopeStyle::Normal => (2 * i, 2 * i + 1),
                RopeStyle::Neox => (i, i + half),
            };
            let (x0, x1) = (head[a], head[b]);
            head[a] = x0.mul_add(c, -(x1 * s));
            head[b] = x0.mul_add(s, x1 * c);
        }
    }

    /// [`Rope::apply`] with AVX2+FMA, eight dimensions at a time.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn apply_avx2(&self, x: &mut [f32], head_dim: usize, cos_sin: &[f32]) {
        // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
        // `# Safety` section; every intrinsic, load and store below relies on exactly those.
        unsafe {
            use std::arch::x86_64::*;
            let half = self.rot_dims / 2;
            let cs = cos_sin.as_ptr();
            for head in x.chunks_exact_mut(head_dim) {
                let h = head.as_mut_ptr();
                let mut i = 0;
                match self.style {
                    RopeStyle::Normal => {
                        // Negates the even lanes.
                        let sign = _mm256_setr_ps(-0.0, 0.0, -0.0, 0.0, -0.0, 0.0, -0.0, 0.0);
                        while i + 4 <= half {
                            let xv = _mm256_loadu_ps(h.add(2 * i));
                            let cv = _mm256_loadu_ps(cs.add(2 * i)); // c s c s ...
                            let x0 = _mm256_moveldup_ps(xv);
                            let x1 = _mm256_movehdup_ps(xv);
                            let sc = _mm256_permute_ps::<0b10_11_00_01>(cv); // s c s c ...
                            let t = _mm256_xor_ps(_mm256_mul_ps(x1, sc), sign); // -(x1 s), x1 c
                            _mm256_storeu_ps(h.add(2 * i), _mm256_fmadd_ps(x0, cv, t));
                            i += 4;
                        }
                    }
                    RopeStyle::Neox => {
                        let sign = _mm256_set1_ps(-0.0);
                        while i + 8 <= half {
                            let a = _mm256_loadu_ps(cs.add(2 * i));
                            let b = _mm256_loadu_ps(cs.add(2 * i + 8));
                            // De-interleave (c, s) pairs into eight c and eight s.
                            let c = _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(
                                _mm256_castps_pd(_mm256_shuffle_ps::<0x88>(a, b)),
                            ));
                            let s = _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(
                                _mm256_castps_pd(_mm256_shuffle_ps::<0xdd>(a, b)),
                            ));
                            let x0 = _mm256_loadu_ps(h.add(i));
                            let x1 = _mm256_loadu_ps(h.add(i + half));
                            let t0 = _mm256_xor_ps(_mm256_mul_ps(x1, s), sign);
                            let t1 = _mm256_mul_ps(x1, c);
                            _mm256_storeu_ps(h.add(i), _mm256_fmadd_ps(x0, c, t0));
                            _mm256_storeu_ps(h.add(i + half), _mm256_fmadd_ps(x0, s, t1));
                            i += 8;
                        }
                    }
                }
                self.apply_head_scalar(head, cos_sin, i);
            }
        }
    }

    /// Number of rotated dimensions per head.
    pub fn rot_dims(&self) -> usize {
        self.rot_dims
    }
}

/// SiLU, `x * sigmoid(x)`, computed as ggml does: `x / (1 + exp(0 - x))` with ggml's
/// AVX-512 exp polynomial (module `ggml_math`).
#[inline]
pub fn silu(x: f32) -> f32 {
    ggml_math::silu(x)
}

/// SwiGLU in place: `gate[i] = silu(gate[i]) * up[i]`, bit-identical to llama.cpp's
/// `ggml_vec_swiglu_f32` on AVX-512 (AVX2 and scalar paths agree bit for bit).
pub fn swiglu_inplace(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "swiglu: length mismatch");
    swiglu_with(CpuLevel::detect(), gate, up);
}

/// [`swiglu_inplace`] at `level`: AVX2 from [`CpuLevel::Avx2`] up (same bits).
fn swiglu_with(level: CpuLevel, gate: &mut [f32], up: &[f32]) {
    assert!(
        level.is_supported(),
        "swiglu: CPU level {level} unavailable"
    );
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    if level >= CpuLevel::Avx2 {
        // SAFETY: the CPU supports `level` (checked above), so AVX2 and FMA.
        i = unsafe { swiglu_avx2(gate, up) };
    }
    let _ = level;
    for (g, &u) in gate[i..].iter_mut().zip(&up[i..]) {
        *g = ggml_math::silu(*g) * u;
    }
}

/// The whole 8-lane part of [`swiglu_inplace`]; returns how many elements it did.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `up` at least as long as `gate`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn swiglu_avx2(gate: &mut [f32], up: &[f32]) -> usize {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        use std::arch::x86_64::*;
        let n = gate.len() / 8 * 8;
        let (g, u) = (gate.as_mut_ptr(), up.as_ptr());
        for i in (0..n).step_by(8) {
            let s = ggml_math::x86::silu8(_mm256_loadu_ps(g.add(i)));
            _mm256_storeu_ps(g.add(i), _mm256_mul_ps(s, _mm256_loadu_ps(u.add(i))));
        }
        n
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

    /// The pool-split row ops give each row the bits of the one-row op, for batches below and
    /// above the parallel threshold and pools of one to three threads.
    #[test]
    fn row_ops_split_over_the_pool_equal_one_row_at_a_time() {
        let d = 576;
        let weight: Vec<f32> = (0..d).map(|i| 0.5 + (i % 7) as f32 * 0.1).collect();
        for m in [1, 3, 40, 57] {
            let x: Vec<f32> = (0..m * d)
                .map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0)
                .collect();
            let up: Vec<f32> = x.iter().map(|v| v * 0.5 + 0.1).collect();
            let mut norm_want = vec![0.0f32; m * d];
            let mut glu_want = x.clone();
            for r in 0..m {
                rms_norm(
                    &x[r * d..(r + 1) * d],
                    &weight,
                    1e-5,
                    &mut norm_want[r * d..(r + 1) * d],
                );
                swiglu_inplace(&mut glu_want[r * d..(r + 1) * d], &up[r * d..(r + 1) * d]);
            }
            for threads in 1..=3 {
                let pool = ThreadPool::new(threads);
                let mut norm = vec![f32::NAN; m * d];
                rms_norm_rows(&pool, &x, &weight, 1e-5, &mut norm);
                let mut glu = x.clone();
                swiglu_rows(&pool, &mut glu, &up, d);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&norm),
                    bits(&norm_want),
                    "rms_norm_rows m={m} threads={threads}"
                );
                assert_eq!(
                    bits(&glu),
                    bits(&glu_want),
                    "swiglu_rows m={m} threads={threads}"
                );
                // The residual add fused with the norm: the sum, then the norm of the sum.
                let (mut sum, mut sum_want) = (x.clone(), x.clone());
                add_inplace(&mut sum_want, &up);
                let mut fused = vec![f32::NAN; m * d];
                add_rms_norm_rows(&pool, &mut sum, &up, &weight, 1e-5, &mut fused);
                rms_norm_rows(&pool, &sum_want, &weight, 1e-5, &mut norm);
                assert_eq!(
                    bits(&sum),
                    bits(&sum_want),
                    "add_rms_norm_rows sum m={m} threads={threads}"
                );
                assert_eq!(
                    bits(&fused),
                    bits(&norm),
                    "add_rms_norm_rows norm m={m} threads={threads}"
                );
            }
        }
    }

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

    /// Deterministic pseudo-random f32 in [-amp, amp).
    fn rnd(seed: &mut u64, amp: f32) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * amp
    }

    #[test]
    fn rms_norm_follows_ggml_arithmetic() {
        let mut seed = 3;
        let x: Vec<f32> = (0..257).map(|_| rnd(&mut seed, 3.0)).collect();
        let w: Vec<f32> = (0..257).map(|_| rnd(&mut seed, 1.0)).collect();
        let mut out = vec![0.0; 257];
        rms_norm(&x, &w, 1e-5, &mut out);
        let mut sum = 0.0f64;
        for &v in &x {
            sum += (v * v) as f64;
        }
        let scale = 1.0f32 / ((sum / 257.0) as f32 + 1e-5).sqrt();
        for i in 0..257 {
            assert_eq!(out[i].to_bits(), ((x[i] * scale) * w[i]).to_bits());
        }
        let mut heads = x[..256].to_vec();
        rms_norm_heads_inplace(&mut heads, 64, &w[..64], 1e-6);
        let mut one = vec![0.0; 64];
        rms_norm(&x[64..128], &w[..64], 1e-6, &mut one);
        assert_eq!(&heads[64..128], &one[..]);
    }

    #[test]
    fn rope_every_level_matches_scalar_and_fma_recipe() {
        let mut seed = 5;
        for style in [RopeStyle::Normal, RopeStyle::Neox] {
            for (head_dim, rot) in [(64, 64), (128, 128), (80, 80), (128, 64), (64, 20), (6, 6)] {
                let rope = Rope::new(style, rot, 10000.0);
                let mut cs = vec![0.0; rot];
                rope.cos_sin(1234, &mut cs);
                let x: Vec<f32> = (0..3 * head_dim).map(|_| rnd(&mut seed, 4.0)).collect();
                let mut a = x.clone();
                rope.apply_with(CpuLevel::Scalar, &mut a, head_dim, &cs);
                // The recipe, written out.
                let mut want = x.clone();
                for h in want.chunks_exact_mut(head_dim) {
                    for i in 0..rot / 2 {
                        let (p, q) = if style == RopeStyle::Normal {
                            (2 * i, 2 * i + 1)
                        } else {
                            (i, i + rot / 2)
                        };
                        let (c, s, x0, x1) = (cs[2 * i], cs[2 * i + 1], h[p], h[q]);
                        h[p] = x0.mul_add(c, -(x1 * s));
                        h[q] = x0.mul_add(s, x1 * c);
                    }
                }
                assert_eq!(a, want, "{style:?} {head_dim}/{rot}");
                for level in CpuLevel::supported() {
                    let mut b = x.clone();
                    rope.apply_with(level, &mut b, head_dim, &cs);
                    assert_eq!(
                        b.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        "{level} {style:?} {head_dim}/{rot}"
                    );
                }
            }
        }
    }

    #[test]
    fn swiglu_every_level_matches_scalar() {
        let mut seed = 11;
        for n in [1, 7, 8, 9, 16, 17, 63, 64, 100, 1000] {
            let g: Vec<f32> = (0..n)
                .map(|i| rnd(&mut seed, if i % 5 == 0 { 200.0 } else { 8.0 }))
                .collect();
            let u: Vec<f32> = (0..n).map(|_| rnd(&mut seed, 2.0)).collect();
            let mut a = g.clone();
            swiglu_with(CpuLevel::Scalar, &mut a, &u);
            for i in 0..n {
                assert_eq!(
                    a[i].to_bits(),
                    (g[i] / (1.0 + crate::ggml_math::exp(0.0 - g[i])) * u[i]).to_bits()
                );
            }
            for level in CpuLevel::supported() {
                let mut b = g.clone();
                swiglu_with(level, &mut b, &u);
                assert_eq!(
                    b.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{level} n = {n}"
                );
            }
        }
    }
}
