//! The portable version of both attention arithmetics, and the reference for the AVX2 one.

use super::{padded_kv, round_f16, Arith, Bufs, BATCH_ROWS, ROWS};
use crate::ggml_math;

/// tinyBLAS's dot of two f16 vectors held as f32 (`len % 16 == 0`): one 16-lane accumulator
/// fed 16 products at a time, then `_mm512_reduce_add_ps`.
#[inline(always)]
pub(super) fn dot_tiny(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    for (xs, ys) in x.chunks_exact(16).zip(y.chunks_exact(16)) {
        for l in 0..16 {
            acc[l] += xs[l] * ys[l];
        }
    }
    ggml_math::reduce16(&acc)
}

/// [`attend`] in portable Rust.
pub(super) fn attend_scalar(
    mode: Arith,
    q: &[f32],
    n_ctx: usize,
    kf: &[f32],
    vf: &[f32],
    scale: f32,
    bufs: Bufs<'_>,
) {
    let hd = q.len();
    let Bufs {
        scores,
        qh,
        rows,
        out,
    } = bufs;
    for (d, &s) in qh.iter_mut().zip(q) {
        *d = round_f16(s);
    }
    let n16 = n_ctx.next_multiple_of(16);
    let scores = &mut scores[..n16];
    let mut max = f32::NEG_INFINITY;
    for (pos, s) in scores[..n_ctx].iter_mut().enumerate() {
        let k = &kf[pos * hd..(pos + 1) * hd];
        *s = if mode == Arith::Batched {
            dot_tiny(qh, k)
        } else {
            dot_f16(qh, k)
        } * scale;
        max = max.max(*s);
    }
    scores[n_ctx..].fill(f32::NEG_INFINITY);
    // Chunks past n16 (up to the padded length) are all zero and add nothing.
    let mut total = 0.0f64;
    for c in scores.chunks_exact_mut(16) {
        for e in c.iter_mut() {
            *e = ggml_math::exp(*e - max);
        }
        total += ggml_math::reduce16((&*c).try_into().expect("16 lanes")) as f64;
    }
    let inv = (1.0 / total) as f32;
    for s in scores[..n_ctx].iter_mut() {
        *s = round_f16(*s * inv);
    }
    let p = &scores[..n_ctx];

    if mode == Arith::Batched {
        // Position `pos` feeds lane `pos % 16` in order; masked positions would add +0.
        rows[..BATCH_ROWS * hd].fill(0.0);
        for (pos, &pv) in p.iter().enumerate() {
            let row = &mut rows[(pos % BATCH_ROWS) * hd..(pos % BATCH_ROWS + 1) * hd];
            for (a, &x) in row.iter_mut().zip(&vf[pos * hd..(pos + 1) * hd]) {
                *a += x * pv;
            }
        }
        for (d, o) in out.iter_mut().enumerate() {
            let lanes: [f32; 16] = std::array::from_fn(|l| rows[l * hd + d]);
            *o = ggml_math::reduce16(&lanes);
        }
        return;
    }

    // Weighted sum of values: position `pos < np` goes to accumulator row `pos % 64`.
    let n_kv = padded_kv(n_ctx);
    let np = n_kv & !(ROWS - 1);
    let real = n_ctx.min(np);
    for pos in 0..np {
        let row = &mut rows[(pos % ROWS) * hd..(pos % ROWS + 1) * hd];
        if pos < real {
            let (pv, v) = (p[pos], &vf[pos * hd..(pos + 1) * hd]);
            if pos < ROWS {
                for (a, &x) in row.iter_mut().zip(v) {
                    *a = 0.0 + x * pv;
                }
            } else {
                for (a, &x) in row.iter_mut().zip(v) {
                    *a += x * pv;
                }
            }
        } else if pos < ROWS {
            row.fill(0.0);
        } else {
            // A masked position adds an exact +0 product.
            for a in row.iter_mut() {
                *a += 0.0;
            }
        }
    }
    for (d, o) in out.iter_mut().enumerate() {
        let mut sumf = 0.0f64;
        if np > 0 {
            let r = |i: usize| rows[i * hd + d];
            let mut s = [0.0f32; 16];
            for (l, x) in s.iter_mut().enumerate() {
                *x = (r(l) + r(32 + l)) + (r(16 + l) + r(48 + l));
            }
            sumf = ggml_math::reduce16(&s) as f64;
        }
        for pos in np..n_kv {
            sumf += if pos < n_ctx {
                (vf[pos * hd + d] * p[pos]) as f64
            } else {
                0.0
            };
        }
        *o = sumf as f32;
    }
}

/// ggml's `ggml_vec_dot_f16` on two vectors of f16 values held as f32 (AVX-512 build).
///
/// Products of two f16 values are exact in f32, so `acc + x * y` is the FMA ggml computes.
#[inline(always)]
pub(super) fn dot_f16(x: &[f32], y: &[f32]) -> f32 {
    let n = x.len();
    let np = n & !63;
    let mut sums = [[0.0f32; 16]; 4];
    for i in (0..np).step_by(64) {
        for (j, sum) in sums.iter_mut().enumerate() {
            let (xs, ys) = (
                &x[i + 16 * j..i + 16 * j + 16],
                &y[i + 16 * j..i + 16 * j + 16],
            );
            for l in 0..16 {
                sum[l] += xs[l] * ys[l];
            }
        }
    }
    let mut sumf = 0.0f64;
    if np > 0 {
        let mut s = [0.0f32; 16];
        for (l, v) in s.iter_mut().enumerate() {
            *v = (sums[0][l] + sums[2][l]) + (sums[1][l] + sums[3][l]);
        }
        sumf = ggml_math::reduce16(&s) as f64;
    }
    for i in np..n {
        sumf += (x[i] * y[i]) as f64;
    }
    sumf as f32
}
