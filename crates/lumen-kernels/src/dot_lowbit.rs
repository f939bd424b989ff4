//! Scalar reference dots for the formats of [`crate::lowbit`] (Q5_0, Q5_1, IQ4_NL against
//! Q8_0/Q8_1 activations; Q2_K, Q3_K, IQ4_XS against Q8_K), llama.cpp's `vec_dot_type`
//! pairings.
//!
//! The 32-value formats go through [`crate::dot`]'s `dot_q32`, which reproduces llama.cpp's
//! AVX2 lane order, so they match llama.cpp bit for bit. The super-block formats sum each
//! sub-block's exact integer dot, scale it by its integer sub-block scale, and fold the
//! super-block into one f32 accumulator, like Lumen's Q4_K/Q5_K/Q6_K: llama.cpp's float order
//! differs, so those agree with it within rounding.

use crate::act::ActBuf;
use crate::blocks::QK_K;
use crate::lowbit::{unpack_iq4xs, unpack_q2k, unpack_q3k};
use crate::WeightFormat;

/// Dot of a Q2_K, Q3_K or IQ4_XS weight row `w` with Q8_K activation row `i` of `a`.
pub(crate) fn dot_superblock(format: WeightFormat, w: &[u8], a: &ActBuf, i: usize) -> f32 {
    let xq = a.row_qs(i);
    let bb = format.block_bytes();
    let mut acc = 0.0f32;
    for (b, blk) in w.chunks_exact(bb).enumerate() {
        let x = &xq[b * QK_K..b * QK_K + QK_K];
        let dy = a.d[a.at(b, i)];
        // Sub-block width: 16 values for Q2_K/Q3_K, 32 for IQ4_XS.
        let (u, width) = match format {
            WeightFormat::Q2_K => (unpack_q2k(blk), 16),
            WeightFormat::Q3_K => (unpack_q3k(blk), 16),
            WeightFormat::IQ4_XS => (unpack_iq4xs(blk), 32),
            other => unreachable!("dot_superblock: {other} is not a Q8_K super-block format"),
        };
        let mut sumi = 0i32;
        for g in 0..QK_K / width {
            let p: i32 = (g * width..(g + 1) * width)
                .map(|e| u.q[e] as i32 * x[e] as i32)
                .sum();
            sumi += u.sc[g] as i32 * p;
        }
        if format == WeightFormat::Q2_K {
            // The min term: sum over sub-blocks of min * (sum of the activation quants), in
            // one expression with the scale term, as the AVX2 tiles' shared update has it.
            let bs16 = &a.bs16[(i * a.nb + b) * 16..][..16];
            let summ: i32 = (0..16).map(|g| u.mins[g] as i32 * bs16[g] as i32).sum();
            acc += (u.d * dy) * sumi as f32 - (u.dmin * dy) * summ as f32;
        } else {
            acc += (u.d * dy) * sumi as f32;
        }
    }
    acc
}
