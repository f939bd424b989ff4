//! Shared helpers for the kernel tests: random weights in every format and a naive reference.
#![allow(dead_code)]

use half::f16;
use lumen_kernels::{
    activation_roundtrip, matmul, quantize_row, CpuLevel, MatRef, MatmulScratch, ThreadPool,
    WeightFormat,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

pub fn random_f32(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| rng.gen_range(-1.0f32..1.0) * scale)
        .collect()
}

fn put_f16(b: &mut [u8], off: usize, v: f32) {
    b[off..off + 2].copy_from_slice(&f16::from_f32(v).to_bits().to_le_bytes());
}

/// A random `rows` x `cols` matrix in `format`: quantized from random floats where a reference
/// quantizer exists, random valid blocks (random bits, sane f16 scales) for the K-quants.
pub fn random_weights(rng: &mut StdRng, format: WeightFormat, rows: usize, cols: usize) -> Vec<u8> {
    let rb = format.row_bytes(cols).expect("block-aligned cols");
    let mut data = vec![0u8; rows * rb];
    match format {
        WeightFormat::Q4_K | WeightFormat::Q5_K | WeightFormat::Q6_K => {
            rng.fill(&mut data[..]);
            let bb = format.block_bytes();
            for blk in data.chunks_exact_mut(bb) {
                let d = rng.gen_range(0.0005f32..0.004);
                let dmin = rng.gen_range(0.0005f32..0.004);
                if format == WeightFormat::Q6_K {
                    put_f16(blk, 208, d);
                } else {
                    put_f16(blk, 0, d);
                    put_f16(blk, 2, dmin);
                }
            }
        }
        WeightFormat::Q5_0
        | WeightFormat::Q5_1
        | WeightFormat::Q2_K
        | WeightFormat::Q3_K
        | WeightFormat::IQ4_NL
        | WeightFormat::IQ4_XS => {
            // No reference quantizer: random bits with sane f16 scales at their ggml offsets
            // (d, and Q5_1's m / Q2_K's dmin).
            rng.fill(&mut data[..]);
            let bb = format.block_bytes();
            let (d_off, m_off, d_hi) = match format {
                WeightFormat::Q5_0 => (0, None, 0.05),
                WeightFormat::Q5_1 => (0, Some(2), 0.05),
                WeightFormat::Q2_K => (80, Some(82), 0.05),
                WeightFormat::Q3_K => (108, None, 0.01),
                WeightFormat::IQ4_NL => (0, None, 0.008),
                _ => (0, None, 0.0003),
            };
            for blk in data.chunks_exact_mut(bb) {
                put_f16(blk, d_off, rng.gen_range(d_hi / 8.0..d_hi));
                if let Some(o) = m_off {
                    put_f16(blk, o, rng.gen_range(-d_hi..d_hi));
                }
            }
        }
        _ => {
            for r in 0..rows {
                let src = random_f32(rng, cols, 0.5);
                quantize_row(format, &src, &mut data[r * rb..(r + 1) * rb]).unwrap();
            }
        }
    }
    data
}

/// Naive reference: dequantized weights dotted (in f64) with x as the matmul quantizes it.
/// Returns (value, sum of |w x|) per output, the latter for scaling tolerances.
pub fn reference(w: &MatRef, x: &[f32], m: usize) -> Vec<(f64, f64)> {
    let (rows, cols) = (w.rows(), w.cols());
    let mut xq = vec![0.0f32; x.len()];
    for i in 0..m {
        activation_roundtrip(
            w.format(),
            &x[i * cols..(i + 1) * cols],
            &mut xq[i * cols..(i + 1) * cols],
        );
    }
    let mut wr = vec![0.0f32; cols];
    let mut out = vec![(0.0, 0.0); m * rows];
    for j in 0..rows {
        w.dequantize_row(j, &mut wr);
        for i in 0..m {
            let xi = &xq[i * cols..(i + 1) * cols];
            let (mut s, mut a) = (0.0f64, 0.0f64);
            for k in 0..cols {
                let p = wr[k] as f64 * xi[k] as f64;
                s += p;
                a += p.abs();
            }
            out[i * rows + j] = (s, a);
        }
    }
    out
}

/// `w` times the `m` rows of `x`, computed at CPU level `level` (NaN-filled output, so an
/// unwritten value shows).
pub fn matmul_at(pool: &ThreadPool, level: CpuLevel, w: &MatRef, x: &[f32], m: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; m * w.rows()];
    let mut scratch = MatmulScratch::with_level(level);
    matmul(pool, w, x, m, &mut out, &mut scratch);
    out
}
