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
        WeightFormat::Q4_0
        | WeightFormat::Q4_1
        | WeightFormat::Q8_0
        | WeightFormat::Q5_0
        | WeightFormat::Q5_1
        | WeightFormat::IQ4_NL => dot_q32(format, w, a, i),
        WeightFormat::Q2_K | WeightFormat::Q3_K | WeightFormat::IQ4_XS => {
            crate::dot_lowbit::dot_superblock(format, w, a, i)
        }
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

/// The 32 weight quants of a Q4_0/Q4_1/Q8_0/Q5_0/Q5_1/IQ4_NL block, in ggml's element order
/// (the integers its AVX2 dot multiplies: Q4_1 and Q5_1 unsigned, the others signed).
#[inline]
pub(crate) fn q32_values(format: WeightFormat, blk: &[u8]) -> [i8; QK] {
    let mut q = [0i8; QK];
    match format {
        WeightFormat::Q8_0 => {
            for (v, &b) in q.iter_mut().zip(&blk[2..34]) {
                *v = b as i8;
            }
        }
        WeightFormat::Q4_0 | WeightFormat::Q4_1 => {
            let (qs, bias) = if format == WeightFormat::Q4_1 {
                (&blk[4..20], 0)
            } else {
                (&blk[2..18], 8)
            };
            for j in 0..16 {
                q[j] = (qs[j] & 0xF) as i8 - bias;
                q[j + 16] = (qs[j] >> 4) as i8 - bias;
            }
        }
        WeightFormat::Q5_0 => q = crate::lowbit::q5_values(blk, true),
        WeightFormat::Q5_1 => q = crate::lowbit::q5_values(blk, false),
        WeightFormat::IQ4_NL => q = crate::lowbit::iq4nl_values(blk),
        _ => unreachable!("q32_values: {format:?} is not a 32-value block format"),
    }
    q
}

/// ggml's AVX2 `vec_dot_q4_0_q8_0` / `_q4_1_q8_1` / `_q8_0_q8_0` / `_q5_0_q8_0` /
/// `_q5_1_q8_1` / `_iq4_nl_q8_0` arithmetic, lane by lane.
///
/// Lane `l` of a block is the exact integer sum of elements `4l..4l+4`; it is folded into an
/// eight-lane accumulator with one fused multiply-add by `d_w * d_x`. Q4_1's and Q5_1's min
/// term accumulates separately (`summs = fma(m, s, summs)`) and is added after the lane sum.
/// IQ4_NL takes blocks in pairs into two accumulators (even blocks, odd blocks) that are
/// added lane-wise before the lane sum; an unpaired last block is added after it.
fn dot_q32(format: WeightFormat, w: &[u8], a: &ActBuf, i: usize) -> f32 {
    let bb = format.block_bytes();
    let xq = a.row_qs(i);
    let nb = w.len() / bb;
    let iq4 = format == WeightFormat::IQ4_NL;
    let paired = if iq4 { nb / 2 * 2 } else { nb };
    let mut lanes = [[0.0f32; 8]; 2];
    let mut summs = 0.0f32;
    for (b, blk) in w.chunks_exact(bb).enumerate().take(paired) {
        let x = &xq[b * QK..b * QK + QK];
        let k = a.at(b, i);
        let dd = f16_at(blk, 0) * a.d[k];
        let q = q32_values(format, blk);
        let acc = &mut lanes[if iq4 { b & 1 } else { 0 }];
        for (l, lane) in acc.iter_mut().enumerate() {
            let s: i32 = (4 * l..4 * l + 4).map(|e| q[e] as i32 * x[e] as i32).sum();
            *lane = (s as f32).mul_add(dd, *lane);
        }
        if format.has_min() {
            summs = f16_at(blk, 2).mul_add(a.s[k], summs);
        }
    }
    let mut h = if iq4 {
        let mut both = [0.0f32; 8];
        for (o, (p, q)) in both.iter_mut().zip(lanes[0].iter().zip(&lanes[1])) {
            *o = p + q;
        }
        crate::ggml_math::hsum8(&both)
    } else {
        crate::ggml_math::hsum8(&lanes[0])
    };
    for (b, blk) in w.chunks_exact(bb).enumerate().skip(paired) {
        // IQ4_NL's odd last block: ggml's scalar tail, `sumf += d * sumi`.
        let x = &xq[b * QK..b * QK + QK];
        let q = q32_values(format, blk);
        let s: i32 = (0..QK).map(|e| q[e] as i32 * x[e] as i32).sum();
        h = (f16_at(blk, 0) * a.d[a.at(b, i)]).mul_add(s as f32, h);
    }
    if format.has_min() {
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
