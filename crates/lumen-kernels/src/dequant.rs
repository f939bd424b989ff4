//! Dequantization of one row to f32, with ggml's arithmetic (used for embedding lookups and as
//! the ground truth in tests).

use crate::blocks::{bf16_at, f16_at, f32_at, unpack_q4k, unpack_q5k, unpack_q6k, QK, QK_K};
use crate::WeightFormat;

/// Dequantizes one row: `src` holds `dst.len()` values in `format`.
///
/// Panics if `dst.len()` is not a whole number of blocks or `src` has the wrong length.
pub fn dequantize_row(format: WeightFormat, src: &[u8], dst: &mut [f32]) {
    let need = format.row_bytes(dst.len());
    assert_eq!(
        need,
        Some(src.len()),
        "dequantize_row: {} row of {} values",
        format.name(),
        dst.len()
    );
    match format {
        WeightFormat::F32 => {
            for (o, c) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *o = f32_at(c, 0);
            }
        }
        WeightFormat::F16 => {
            for (o, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *o = f16_at(c, 0);
            }
        }
        WeightFormat::BF16 => {
            for (o, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *o = bf16_at(c, 0);
            }
        }
        WeightFormat::Q4_0 => {
            for (y, b) in dst.chunks_exact_mut(QK).zip(src.chunks_exact(18)) {
                let d = f16_at(b, 0);
                for j in 0..16 {
                    y[j] = ((b[2 + j] & 0xF) as i32 - 8) as f32 * d;
                    y[j + 16] = ((b[2 + j] >> 4) as i32 - 8) as f32 * d;
                }
            }
        }
        WeightFormat::Q4_1 => {
            for (y, b) in dst.chunks_exact_mut(QK).zip(src.chunks_exact(20)) {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                for j in 0..16 {
                    y[j] = (b[4 + j] & 0xF) as f32 * d + m;
                    y[j + 16] = (b[4 + j] >> 4) as f32 * d + m;
                }
            }
        }
        WeightFormat::Q8_0 => {
            for (y, b) in dst.chunks_exact_mut(QK).zip(src.chunks_exact(34)) {
                let d = f16_at(b, 0);
                for j in 0..32 {
                    y[j] = (b[2 + j] as i8) as f32 * d;
                }
            }
        }
        WeightFormat::Q4_K | WeightFormat::Q5_K => {
            let bb = format.block_bytes();
            for (y, b) in dst.chunks_exact_mut(QK_K).zip(src.chunks_exact(bb)) {
                let u = if format == WeightFormat::Q4_K {
                    unpack_q4k(b)
                } else {
                    unpack_q5k(b)
                };
                for s in 0..8 {
                    let d1 = u.d * u.sc[s] as f32;
                    let m1 = u.dmin * u.mins[s] as f32;
                    for l in 0..32 {
                        y[32 * s + l] = d1 * u.q[32 * s + l] as f32 - m1;
                    }
                }
            }
        }
        WeightFormat::Q5_0
        | WeightFormat::Q5_1
        | WeightFormat::IQ4_NL
        | WeightFormat::Q2_K
        | WeightFormat::Q3_K
        | WeightFormat::IQ4_XS => {
            let (be, bb) = (format.block_elems(), format.block_bytes());
            for (y, b) in dst.chunks_exact_mut(be).zip(src.chunks_exact(bb)) {
                crate::lowbit::dequantize_block(format, b, y);
            }
        }
        WeightFormat::Q6_K => {
            for (y, b) in dst.chunks_exact_mut(QK_K).zip(src.chunks_exact(210)) {
                let u = unpack_q6k(b);
                for (e, o) in y.iter_mut().enumerate() {
                    *o = u.d * u.sc[e / 16] as f32 * (u.q[e] as i32 - 32) as f32;
                }
            }
        }
    }
}
