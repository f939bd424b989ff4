//! Micro-benchmark: the sentence encoders' linear layers in each arithmetic (f32, 16-bit
//! integers, bf16 where the CPU has it), on all-MiniLM-L6-v2's and all-mpnet-base-v2's shapes.
//!
//! `cargo bench -p lumen-kernels --bench encoder_gemm`; `LUMEN_BENCH_THREADS=n` for the pool
//! size (default 2), `LUMEN_BENCH_M=10,320,2560` for the input rows (tokens in the batch).

use std::hint::black_box;
use std::time::Duration;

use lumen_kernels::{
    bf16_supported, i16_supported, matmul, matmul_bf16, matmul_i16, simd_level, Bf16Matrix,
    I16Matrix, I16Scratch, MatRef, MatmulScratch, ThreadPool, WeightFormat,
};

#[path = "common/timing.rs"]
mod timing;
use timing::time_it;

fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect()
}

fn main() {
    let threads = std::env::var("LUMEN_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let ms: Vec<usize> = std::env::var("LUMEN_BENCH_M")
        .unwrap_or_else(|_| "10,320,2560".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let pool = ThreadPool::new(threads);
    let budget = Duration::from_millis(400);
    println!(
        "encoder GEMMs, kernels at {}, {threads} threads",
        simd_level()
    );
    for &(rows, cols) in &[(384usize, 384usize), (1536, 384), (384, 1536), (3072, 768)] {
        let wv = values(rows * cols, 7);
        let bytes: Vec<u8> = wv.iter().flat_map(|v| v.to_le_bytes()).collect();
        let w = MatRef::new(WeightFormat::F32, rows, cols, &bytes).expect("f32 matrix");
        let fill = |j: usize, buf: &mut [f32]| buf.copy_from_slice(&wv[j * cols..(j + 1) * cols]);
        let wi = i16_supported().then(|| I16Matrix::from_rows(rows, cols, fill));
        let wb = bf16_supported().then(|| Bf16Matrix::from_rows(rows, cols, fill));
        for &m in &ms {
            let x = values(m * cols, 11);
            let mut out = vec![0.0f32; m * rows];
            let macs = (m * rows * cols) as f64;
            let mut line = format!("{rows:>5}x{cols:<5} m={m:<5}");
            let mut scratch = MatmulScratch::default();
            let t = time_it(budget, || {
                matmul(&pool, &w, black_box(&x), m, &mut out, &mut scratch)
            });
            line += &format!("  f32 {:7.1} GMAC/s", macs / t / 1e9);
            if let Some(wi) = &wi {
                let mut s = I16Scratch::default();
                let t = time_it(budget, || {
                    matmul_i16(&pool, wi, black_box(&x), m, &mut out, &mut s)
                });
                line += &format!("  int16 {:7.1} GMAC/s", macs / t / 1e9);
            }
            if let Some(wb) = &wb {
                let mut s = Vec::new();
                let t = time_it(budget, || {
                    matmul_bf16(&pool, wb, black_box(&x), m, &mut out, &mut s)
                });
                line += &format!("  bf16 {:7.1} GMAC/s", macs / t / 1e9);
            }
            println!("{line}");
        }
    }
}
