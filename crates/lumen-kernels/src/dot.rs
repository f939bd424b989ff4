//! Scalar reference dot products, one per (weight format, activation format) pair.
//!
//! For the quantized formats each block contributes an exact integer sum, and the float update
//! of the accumulator is a fixed expression that the AVX2 tiles evaluate lane-wise in the same
//! order, so both paths give bit-identical results. The float formats accumulate in eight
//! lanes (element k into lane k % 8) that are then summed as a fixed tree; AVX2 does the same
//! with fused multiply-adds, so those two paths agree within rounding only.

use crate::act::ActBuf;
use crate::blocks::{
    bf16_at, f16_at, f32_at, unpack_q4k, unpack_q5k, unpack_q6k, KUnpacked, QK, QK_K,
};
use crate::WeightFormat;

/// Dot of weight row `w` with activation row `i` (`x` is that row in f32, `a` its quantized form).
pub(crate) fn dot(format: WeightFormat, w: &[u8], x: &[f32], a: &ActBuf, i: usize) -> f32 {
    match format {
        WeightFormat::F32 => dot_float(x, |j| f32_at(w, 4 * j)),
        WeightFormat::F16 => dot_float(x, |j| f16_at(w, 2 * j)),
        WeightFormat::BF16 => dot_float(x, |j| bf16_at(w, 2 * j)),
        WeightFormat::Q4_0 | WeightFormat::Q4_1 | WeightFormat::Q8_0 => dot_q32(format, w, a, i),
        WeightFormat::Q4_K => dot_q45k(w, a, i, 144, unpack_q4k),
        WeightFormat::Q5_K => dot_q45k(w, a, i, 176, unpack_q5k),
        WeightFormat::Q6_K => dot_q6k(w, a, i),
    }
}

/// Sums the eight lanes in the fixed order every float path uses.
#[inline]
pub(crate) fn lane_tree(l: &[f32; 8]) -> f32 {
    ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]))
}

fn dot_float(x: &[f32], w: impl Fn(usize) -> f32) -> f32 {
    let n8 = x.len() / 8 * 8;
    let mut l = [0.0f32; 8];
    for k in (0..n8).step_by(8) {
        for (j, lane) in l.iter_mut().enumerate() {
            *lane += w(k + j) * x[k + j];
        }
    }
    let mut s = lane_tree(&l);
    for (j, &xv) in x.iter().enumerate().skip(n8) {
        s += w(j) * xv;
    }
    s
}

/// Weight value `e` (0..32) of a Q4_0/Q4_1/Q8_0 block, in ggml's element order.
#[inline]
fn q32_value(format: WeightFormat, blk: &[u8], e: usize) -> i32 {
    match format {
        WeightFormat::Q8_0 => (blk[2 + e] as i8) as i32,
        WeightFormat::Q4_0 | WeightFormat::Q4_1 => {
            let qs = if format == WeightFormat::Q4_1 {
                &blk[4..20]
            } else {
                &blk[2..18]
            };
            let nib = if e < 16 { qs[e] & 0xF } else { qs[e - 16] >> 4 } as i32;
            if format == WeightFormat::Q4_0 {
                nib - 8
            } else {
                nib
            }
        }
        _ => unreachable!("q32_value: {format:?} is not a 32-value block format"),
    }
}

/// ggml's AVX2 `vec_dot_q4_0_q8_0` / `_q4_1_q8_1` / `_q8_0_q8_0` arithmetic, lane by lane.
///
/// Lane `l` of a block is the exact integer sum of elements `4l..4l+4`; it is folded into an
/// eight-lane accumulator with one fused multiply-add by `d_w * d_x`. Q4_1's min term
/// accumulates separately (`summs = fma(m, s, summs)`) and is added after the lane sum.
fn dot_q32(format: WeightFormat, w: &[u8], a: &ActBuf, i: usize) -> f32 {
    let bb = format.block_bytes();
    let xq = a.row_qs(i);
    let mut lanes = [0.0f32; 8];
    let mut summs = 0.0f32;
    for (b, blk) in w.chunks_exact(bb).enumerate() {
        let x = &xq[b * QK..b * QK + QK];
        let k = a.at(b, i);
        let dd = f16_at(blk, 0) * a.d[k];
        for (l, lane) in lanes.iter_mut().enumerate() {
            let s: i32 = (4 * l..4 * l + 4)
                .map(|e| q32_value(format, blk, e) * x[e] as i32)
                .sum();
            *lane = (s as f32).mul_add(dd, *lane);
        }
        if format == WeightFormat::Q4_1 {
            summs = f16_at(blk, 2).mul_add(a.s[k], summs);
        }
    }
    let h = crate::ggml_math::hsum8(&lanes);
    if format == WeightFormat::Q4_1 {
        h + summs
    } else {
        h
    }
}

fn dot_q45k(w: &[u8], a: &ActBuf, i: usize, bb: usize, unpack: fn(&[u8]) -> KUnpacked) -> f32 {
    let xq = a.row_qs(i);
    let mut acc = 0.0f32;
    for (b, blk) in w.chunks_exact(bb).enumerate() {
        let u = unpack(blk);
        let x = &xq[b * QK_K..b * QK_K + QK_K];
        let mut sumi = 0i32;
        for s in 0..8 {
            let p: i32 = (0..32)
                .map(|l| u.q[32 * s + l] as i32 * x[32 * s + l] as i32)
                .sum();
            sumi += u.sc[s] as i32 * p;
        }
        let bs32 = &a.bs32[(i * a.nb + b) * 8..][..8];
        let summ: i32 = (0..8).map(|s| u.mins[s] as i32 * bs32[s] as i32).sum();
        let dy = a.d[a.at(b, i)];
        acc += (u.d * dy) * sumi as f32 - (u.dmin * dy) * summ as f32;
    }
    acc
}

fn dot_q6k(w: &[u8], a: &ActBuf, i: usize) -> f32 {
    let xq = a.row_qs(i);
    let mut acc = 0.0f32;
    for (b, blk) in w.chunks_exact(210).enumerate() {
        let u = unpack_q6k(blk);
        let x = &xq[b * QK_K..b * QK_K + QK_K];
        let mut sumi = 0i32;
        for g in 0..16 {
            let p: i32 = (0..16)
                .map(|l| (u.q[16 * g + l] as i32 - 32) * x[16 * g + l] as i32)
                .sum();
            sumi += u.sc[g] as i32 * p;
        }
        acc += (u.d * a.d[a.at(b, i)]) * sumi as f32;
    }
    acc
}
