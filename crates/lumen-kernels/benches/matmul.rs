//! Micro-benchmarks: one GEMV/GEMM per weight format, pool dispatch cost.
//!
//! `cargo bench -p lumen-kernels --bench matmul [-- FILTER]`; `LUMEN_KERNELS=scalar` for the
//! portable path; `LUMEN_BENCH_THREADS=n` for the pool size (default 1).

use std::hint::black_box;
use std::time::Duration;

use lumen_kernels::{
    matmul, quantize_row, simd_level, MatRef, MatmulScratch, ThreadPool, WeightFormat, ALL_FORMATS,
};

#[path = "common/timing.rs"]
mod timing;
use timing::time_it;

fn weights(format: WeightFormat, rows: usize, cols: usize) -> Vec<u8> {
    let rb = format.row_bytes(cols).unwrap();
    let mut data = vec![0u8; rows * rb];
    let mut seed = 12345u32;
    let mut src = vec![0.0f32; cols];
    for r in 0..rows {
        for v in src.iter_mut() {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            *v = (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
        }
        let row = &mut data[r * rb..(r + 1) * rb];
        if quantize_row(format, &src, row).is_err() {
            // No reference quantizer: random bits with small f16 scales where ggml keeps
            // them (a random scale could be a NaN or a subnormal, which time differently).
            for (k, b) in row.iter_mut().enumerate() {
                *b = (k as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) as u8;
            }
            let bb = format.block_bytes();
            let d = half::f16::from_f32(0.002).to_bits().to_le_bytes();
            let offsets: &[usize] = match format {
                WeightFormat::Q6_K => &[208],
                WeightFormat::Q2_K => &[80, 82],
                WeightFormat::Q3_K => &[108],
                WeightFormat::Q5_0 | WeightFormat::IQ4_NL | WeightFormat::IQ4_XS => &[0],
                _ => &[0, 2],
            };
            for blk in row.chunks_exact_mut(bb) {
                for &off in offsets {
                    blk[off..off + 2].copy_from_slice(&d);
                }
            }
        }
    }
    data
}

fn main() {
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let threads: usize = std::env::var("LUMEN_BENCH_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let pool = ThreadPool::new(threads);
    let budget = Duration::from_millis(400);
    // Activation rows per matmul: decode batch sizes by default; prompt-sized ones on request
    // (`LUMEN_BENCH_M=32,128,512`).
    let ms: Vec<usize> = std::env::var("LUMEN_BENCH_M")
        .ok()
        .map(|v| v.split(',').filter_map(|m| m.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 4, 15, 32]);
    println!("CPU level: {}, threads: {threads}", simd_level());

    if filter.as_deref().is_none_or(|f| "dispatch".contains(f)) {
        let p2 = ThreadPool::new(2);
        let s = time_it(budget, || {
            p2.run(|t, _| {
                black_box(t);
            })
        });
        println!("pool dispatch (2 threads, empty job): {:.0} ns", s * 1e9);
    }

    if filter.as_deref().is_some_and(|f| "layers".contains(f)) {
        layer_stream(&pool);
    }

    let mut shapes: Vec<(WeightFormat, usize, usize)> = vec![
        (WeightFormat::Q4_1, 576, 576),
        (WeightFormat::Q4_1, 1536, 576),
        // A decode layer of SmolLM2-135M: Q/K/V together, gate/up together, down.
        (WeightFormat::Q4_1, 960, 576),
        (WeightFormat::Q4_1, 3072, 576),
        (WeightFormat::Q4_1, 576, 1536),
        // Bigger than the last-level cache: weights stream from memory, as in a model.
        (WeightFormat::Q4_1, 65536, 576),
        (WeightFormat::Q8_0, 49152, 576),
        // llama.cpp's Q4_K_M falls back to Q5_0 for rows that are not whole super-blocks.
        (WeightFormat::Q5_0, 65536, 576),
        // The 1.7B shape's decode (hidden 2048, FFN 8192, vocabulary 49152) in the formats of
        // Q4_K_M, streamed from memory like a model's layers: gate/up, down, the output.
        (WeightFormat::Q4_K, 32768, 2048),
        (WeightFormat::Q4_K, 8192, 8192),
        // 151 MB: no last-level cache holds part of it between calls (37 MB ones partly stay).
        (WeightFormat::Q4_K, 131072, 2048),
        (WeightFormat::Q6_K, 49152, 2048),
        // The same layer in Q6_K: QKV, attention output, gate/up, down.
        (WeightFormat::Q6_K, 6144, 2048),
        (WeightFormat::Q6_K, 2048, 2048),
        (WeightFormat::Q6_K, 16384, 2048),
        (WeightFormat::Q6_K, 2048, 8192),
        (WeightFormat::Q8_0, 32768, 2048),
        // The Llama-3-8B shape's attention output and down projection (rows of 4096 and
        // 14336 values) in the formats of Q4_K_M.
        (WeightFormat::Q4_K, 4096, 4096),
        (WeightFormat::Q4_K, 4096, 14336),
        (WeightFormat::Q6_K, 4096, 14336),
    ];
    for &f in &ALL_FORMATS {
        shapes.push((f, 1536, 1536));
    }
    for (format, rows, cols) in shapes {
        let name = format!("{}_{rows}x{cols}", format.name());
        if filter.as_deref().is_some_and(|f| !name.contains(f)) {
            continue;
        }
        let data = weights(format, rows, cols);
        let packed = lumen_kernels::packs(format)
            .then(|| lumen_kernels::pack(format, rows, cols, &data).unwrap());
        let mut layouts = vec![("ggml", MatRef::new(format, rows, cols, &data).unwrap())];
        if let Some(p) = &packed {
            layouts.push(("packed", MatRef::packed(format, rows, cols, p).unwrap()));
        }
        for (layout, w) in layouts {
            for &m in &ms {
                let x: Vec<f32> = (0..m * cols)
                    .map(|k| ((k * 7919) % 1000) as f32 / 500.0 - 1.0)
                    .collect();
                let mut out = vec![0.0f32; m * rows];
                let mut scratch = MatmulScratch::new();
                let s = time_it(budget, || matmul(&pool, &w, &x, m, &mut out, &mut scratch));
                let gbs = data.len() as f64 / s / 1e9;
                let gmacs = (rows * cols * m) as f64 / s / 1e9;
                println!(
                "{name:<18} {layout:<6} m={m:<3} {:>9.1} us  {gbs:>6.2} GB/s weights  {gmacs:>7.2} GMAC/s",
                s * 1e6
            );
            }
        }
    }
}

/// A decode step's matmuls as a model runs them: the 1.7B shape's layer (Q/K/V together,
/// attention output, gate/up together, down) for eight layers in Q4_K (300 MB, more than any
/// last-level cache), each matrix once per step, one activation row, in the packed layout.
/// Unlike one big matrix, every call starts cold and ends with the pool's tail, as in the
/// model; the gap between the two figures is what per-call costs take from decode.
/// `cargo bench -p lumen-kernels --bench matmul layers` (`LUMEN_BENCH_THREADS`).
fn layer_stream(pool: &ThreadPool) {
    let (hidden, ffn, layers) = (2048usize, 8192usize, 8usize);
    let shapes = [
        (3 * hidden, hidden),
        (hidden, hidden),
        (2 * ffn, hidden),
        (hidden, ffn),
    ];
    let format = WeightFormat::Q4_K;
    let mut mats = Vec::new();
    for _ in 0..layers {
        for &(rows, cols) in &shapes {
            let data = weights(format, rows, cols);
            let packed = lumen_kernels::pack(format, rows, cols, &data).unwrap();
            mats.push((rows, cols, data.len(), packed));
        }
    }
    let bytes: usize = mats.iter().map(|m| m.2).sum();
    let x: Vec<f32> = (0..ffn)
        .map(|k| ((k * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let mut out = vec![0.0f32; 2 * ffn];
    let mut scratch = MatmulScratch::new();
    let s = time_it(Duration::from_millis(2000), || {
        for (rows, cols, _, p) in &mats {
            let w = MatRef::packed(format, *rows, *cols, p).unwrap();
            matmul(pool, &w, &x[..*cols], 1, &mut out[..*rows], &mut scratch);
        }
    });
    println!(
        "decode layers (1.7B shape, Q4_K, {layers} layers, {} MB) m=1 {:>9.1} us  {:>6.2} GB/s weights",
        bytes / 1_000_000,
        s * 1e6,
        bytes as f64 / s / 1e9
    );
}
