//! Micro-benchmark: paged attention of one decode step of a batch, over every layer's cache.
//!
//! `cargo bench -p lumen-kernels --bench attention`; `LUMEN_BENCH_THREADS=n` for the pool size
//! (default 2). The shape is SmolLM2-135M's (9 query heads, 3 KV heads of 64, 30 layers); each
//! layer has its own cache so that, as in a model, keys and values stream from memory rather
//! than from the last-level cache. The `prompt` case is one layer of a 512-token prompt after
//! 4096 cached tokens in SmolLM2-1.7B's shape (32 heads of 64, no grouping), with the fast
//! arithmetic: `llama-bench -d 4096`'s attention.

use std::hint::black_box;
use std::time::{Duration, Instant};

use half::f16;
use lumen_kernels::attention::{
    paged_attention, AttnArith, AttnQuery, AttnScratch, KeyLayout, KvGeometry,
};
use lumen_kernels::ThreadPool;

const LAYERS: usize = 30;

/// Fastest of several timed runs of `f`, in seconds, within about `budget`.
fn best_of(budget: Duration, mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    let mut best = f64::MAX;
    while start.elapsed() < budget {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}

fn main() {
    let threads: usize = std::env::var("LUMEN_BENCH_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let pool = ThreadPool::new(threads);
    let geo = KvGeometry {
        block_size: 16,
        n_heads: 9,
        n_kv_heads: 3,
        head_dim: 64,
        keys: KeyLayout::Rows,
    };
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    if filter.as_deref().is_none_or(|f| "prompt".contains(f)) {
        prompt_at_depth(&pool);
    }
    for (batch, n_ctx, interleaved) in [
        (1usize, 192usize, false),
        (32, 192, false),
        (32, 192, true),
        (16, 1024, true),
    ] {
        let blocks_per_seq = n_ctx.div_ceil(geo.block_size);
        let n_blocks = batch * blocks_per_seq;
        // Each sequence's blocks in one run (as after a prompt), or interleaved with the
        // others' (as blocks handed out one decode step at a time end up).
        let tables: Vec<Vec<u32>> = (0..batch)
            .map(|s| {
                (0..blocks_per_seq)
                    .map(|b| if interleaved { b * batch + s } else { s * blocks_per_seq + b } as u32)
                    .collect()
            })
            .collect();
        let name = format!(
            "decode B={batch} ctx={n_ctx} {}",
            if interleaved {
                "interleaved"
            } else {
                "contiguous"
            }
        );
        if filter.as_deref().is_some_and(|f| !name.contains(f)) {
            continue;
        }
        let mut seed = 7u32;
        let mut cache = |n: usize| -> Vec<f16> {
            (0..n)
                .map(|_| {
                    seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    f16::from_f32((seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5)
                })
                .collect()
        };
        let layers: Vec<(Vec<f16>, Vec<f16>)> = (0..LAYERS)
            .map(|_| {
                (
                    cache(n_blocks * geo.block_elems()),
                    cache(n_blocks * geo.block_elems()),
                )
            })
            .collect();
        let queries: Vec<AttnQuery<'_>> = tables
            .iter()
            .map(|t| AttnQuery {
                n_ctx,
                block_table: t,
                prompt: false,
            })
            .collect();
        let q_dim = geo.n_heads * geo.head_dim;
        let q: Vec<f32> = (0..batch * q_dim)
            .map(|k| ((k * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let mut out = vec![0.0f32; q.len()];
        for arith in [AttnArith::LlamaCpp, AttnArith::Fast] {
            let mut scratch = AttnScratch::new();
            let s = best_of(Duration::from_millis(1500), || {
                for (k, v) in &layers {
                    // Random contents either way; only the layout the arithmetic expects differs.
                    let geo = KvGeometry {
                        keys: arith.key_layout(),
                        ..geo
                    };
                    paged_attention(
                        &pool,
                        arith,
                        geo,
                        &queries,
                        &q,
                        k,
                        v,
                        0.125,
                        &mut scratch,
                        &mut out,
                    );
                }
                black_box(&out);
            });
            let kv_bytes = 2 * LAYERS * batch * n_ctx * geo.kv_dim() * 2;
            println!(
                "{name:<34} {LAYERS} layers, {:<8} {:>8.3} ms  {:>6.2} GB/s of K/V",
                format!("{arith:?}"),
                s * 1e3,
                kv_bytes as f64 / s / 1e9
            );
        }
    }
}

/// A 512-token prompt after 4096 cached tokens, one layer in SmolLM2-1.7B's attention shape.
fn prompt_at_depth(pool: &ThreadPool) {
    let depth: usize = std::env::var("DEPTH")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4096);
    let n = 512usize;
    let geo = KvGeometry {
        block_size: 16,
        n_heads: 32,
        n_kv_heads: 32,
        head_dim: 64,
        keys: AttnArith::Fast.key_layout(),
    };
    let n_ctx = depth + n;
    let table: Vec<u32> = (0..n_ctx.div_ceil(geo.block_size) as u32).collect();
    let elems = table.len() * geo.block_elems();
    let mut seed = 11u32;
    let mut cache = || -> Vec<f16> {
        (0..elems)
            .map(|_| {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                f16::from_f32((seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5)
            })
            .collect()
    };
    let (k, v) = (cache(), cache());
    let queries: Vec<AttnQuery<'_>> = (0..n)
        .map(|t| AttnQuery {
            n_ctx: depth + t + 1,
            block_table: &table,
            prompt: true,
        })
        .collect();
    let q: Vec<f32> = (0..n * geo.n_heads * geo.head_dim)
        .map(|k| ((k * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let mut out = vec![0.0f32; q.len()];
    let mut scratch = AttnScratch::new();
    let s = best_of(Duration::from_millis(3000), || {
        paged_attention(
            pool,
            AttnArith::Fast,
            geo,
            &queries,
            &q,
            &k,
            &v,
            0.125,
            &mut scratch,
            &mut out,
        );
        black_box(&out);
    });
    // Scores and weighted values: two multiply-adds per (query head, position, dimension).
    let macs: usize =
        queries.iter().map(|t| 2 * t.n_ctx).sum::<usize>() * geo.n_heads * geo.head_dim;
    println!(
        "prompt {n} at depth {depth}, 32 heads, 1 layer, Fast {:>8.3} ms  {:>6.2} GMAC/s",
        s * 1e3,
        macs as f64 / s / 1e9
    );
}
