//! Causal attention over a paged KV cache.
//!
//! The cache for one layer is a pool of fixed-size blocks, each `block_size` token slots of
//! `n_kv_heads * head_dim` f16 values, block-major so one block is contiguous. A sequence sees
//! its keys and values through its block table: token position `p` lives in block
//! `table[p / block_size]`, slot `p % block_size`.
//!
//! Numerics follow llama.cpp's CPU path with an f16 cache: the query is rounded to f16 before
//! the dot with each key, scores are scaled and soft-maxed in f32, and the probabilities are
//! rounded to f16 before weighting the values. Each (token, head) is computed by one thread in a
//! fixed order, so results do not depend on how the batch is split (batch invariance).

use half::f16;
use half::slice::HalfFloatSliceExt;

use crate::pool::{split_range, ThreadPool};
use crate::simd::SimdLevel;

/// Shape of the KV cache and the attention heads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvGeometry {
    /// Token slots per block.
    pub block_size: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `n_heads`).
    pub n_kv_heads: usize,
    /// Dimensions per head.
    pub head_dim: usize,
}

impl KvGeometry {
    /// f16 values per token slot (all KV heads).
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// f16 values per block.
    pub fn block_elems(&self) -> usize {
        self.block_size * self.kv_dim()
    }

    /// Offset of token position `pos` in a layer's storage, given the block table.
    #[inline]
    pub fn slot_offset(&self, block_table: &[u32], pos: usize) -> usize {
        let block = block_table[pos / self.block_size] as usize;
        block * self.block_elems() + (pos % self.block_size) * self.kv_dim()
    }
}

/// One query token of a batch: how much context it sees and where that context lives.
#[derive(Clone, Copy, Debug)]
pub struct AttnQuery<'a> {
    /// The token attends to positions `0..n_ctx` (its own position is `n_ctx - 1`).
    pub n_ctx: usize,
    /// The sequence's block table.
    pub block_table: &'a [u32],
}

/// Per-thread scratch (converted keys and values, scores) reused across calls.
#[derive(Default)]
pub struct AttnScratch {
    buf: Vec<f32>,
    stride: usize,
    tasks: Vec<Task>,
}

/// A run of consecutive query tokens of one sequence, for one KV head.
#[derive(Clone, Copy, Debug)]
struct Task {
    first: usize,
    end: usize,
    kv_head: usize,
}

/// Most query tokens one task covers: long prefills split into several tasks so both cores
/// get work, while each task still converts its context's keys and values only once.
const RUN_TOKENS: usize = 16;

impl AttnScratch {
    /// An empty scratch; it grows on first use.
    pub fn new() -> Self {
        Self::default()
    }

    fn ensure(&mut self, parts: usize, max_ctx: usize, head_dim: usize) {
        let stride = max_ctx * (2 * head_dim + 1) + 2 * head_dim;
        if self.stride < stride || self.buf.len() < parts * self.stride.max(stride) {
            self.stride = stride.max(self.stride);
            self.buf = vec![0.0; parts * self.stride];
        }
    }

    /// Splits the batch into runs of consecutive tokens of one sequence, times KV heads.
    fn plan(&mut self, queries: &[AttnQuery<'_>], n_kv_heads: usize) {
        self.tasks.clear();
        let mut first = 0;
        while first < queries.len() {
            let mut end = first + 1;
            while end < queries.len() && end - first < RUN_TOKENS && same_run(&queries[end - 1], &queries[end]) {
                end += 1;
            }
            for kv_head in 0..n_kv_heads {
                self.tasks.push(Task { first, end, kv_head });
            }
            first = end;
        }
    }
}

/// Whether `b` is the token right after `a` in the same sequence.
fn same_run(a: &AttnQuery<'_>, b: &AttnQuery<'_>) -> bool {
    std::ptr::eq(a.block_table, b.block_table) && b.n_ctx == a.n_ctx + 1
}

/// Raw pointer that may be shared across the pool's threads for disjoint writes.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: every use below writes only to ranges owned by one thread (disjoint by construction).
unsafe impl Send for SharedMut {}
// SAFETY: as above; the pointer is only dereferenced on disjoint ranges.
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// Going through a method makes closures capture the whole (Sync) wrapper, not the raw field.
    fn ptr(&self) -> *mut f32 {
        self.0
    }
}

/// Attention for a batch of query tokens: `q` is `queries.len() × n_heads·head_dim`, `out` the same.
///
/// `k_layer`/`v_layer` are one layer's cache storage; every position below each query's
/// `n_ctx` must already hold its key and value.
#[allow(clippy::too_many_arguments)]
pub fn paged_attention(
    pool: &ThreadPool,
    geo: KvGeometry,
    queries: &[AttnQuery<'_>],
    q: &[f32],
    k_layer: &[f16],
    v_layer: &[f16],
    scale: f32,
    scratch: &mut AttnScratch,
    out: &mut [f32],
) {
    let q_dim = geo.n_heads * geo.head_dim;
    assert_eq!(q.len(), queries.len() * q_dim, "paged_attention: q shape");
    assert_eq!(out.len(), q.len(), "paged_attention: out shape");
    assert!(geo.n_heads % geo.n_kv_heads == 0, "paged_attention: heads not divisible");
    let max_ctx = queries.iter().map(|t| t.n_ctx).max().unwrap_or(0);
    for t in queries {
        let blocks_needed = t.n_ctx.div_ceil(geo.block_size);
        assert!(t.n_ctx > 0 && t.block_table.len() >= blocks_needed, "paged_attention: block table too short");
        for &b in &t.block_table[..blocks_needed] {
            assert!((b as usize + 1) * geo.block_elems() <= k_layer.len().min(v_layer.len()), "paged_attention: block out of range");
        }
    }
    let parts = pool.n_threads();
    scratch.ensure(parts, max_ctx, geo.head_dim);
    scratch.plan(queries, geo.n_kv_heads);
    let stride = scratch.stride;
    let tasks = &scratch.tasks;
    let scratch_ptr = SharedMut(scratch.buf.as_mut_ptr());
    let out_ptr = SharedMut(out.as_mut_ptr());
    let (hd, group) = (geo.head_dim, geo.n_heads / geo.n_kv_heads);
    let avx2 = SimdLevel::detect() == SimdLevel::Avx2;
    pool.run(|part, n_parts| {
        // SAFETY: each part index runs exactly once per call and owns
        // scratch[part*stride .. (part+1)*stride]; part < n_parts == the pool's size.
        let buf = unsafe { std::slice::from_raw_parts_mut(scratch_ptr.ptr().add(part * stride), stride) };
        let (kf, rest) = buf.split_at_mut(max_ctx * hd);
        let (vf, rest) = rest.split_at_mut(max_ctx * hd);
        let (scores, rest) = rest.split_at_mut(max_ctx);
        let (qh, rest) = rest.split_at_mut(hd);
        let acc = &mut rest[..hd];
        for task in &tasks[split_range(tasks.len(), n_parts, part)] {
            // Convert this run's context for its KV head once; every query of the run and
            // every query head of the group reads it.
            let ctx = queries[task.end - 1].n_ctx;
            let table = queries[task.first].block_table;
            for pos in 0..ctx {
                let off = geo.slot_offset(table, pos) + task.kv_head * hd;
                k_layer[off..off + hd].convert_to_f32_slice(&mut kf[pos * hd..(pos + 1) * hd]);
                v_layer[off..off + hd].convert_to_f32_slice(&mut vf[pos * hd..(pos + 1) * hd]);
            }
            for t in task.first..task.end {
                for head in task.kv_head * group..(task.kv_head + 1) * group {
                    let qoff = t * q_dim + head * hd;
                    attend(avx2, &q[qoff..qoff + hd], queries[t].n_ctx, kf, vf, scale, scores, qh, acc);
                    // SAFETY: (token, head) belongs to exactly one task, run by one part, so
                    // this output range is written by nobody else.
                    let dst = unsafe { std::slice::from_raw_parts_mut(out_ptr.ptr().add(qoff), hd) };
                    dst.copy_from_slice(acc);
                }
            }
        }
    });
}

/// One query head over `n_ctx` converted key/value rows (`head_dim` each).
///
/// The body is compiled twice: for the baseline target and with AVX2 enabled, so the dot
/// products and the weighted sum of values vectorise 8 lanes wide where the CPU allows. Rust
/// never contracts `a * b + c` into an FMA, so both versions compute the same bits.
#[allow(clippy::too_many_arguments)]
fn attend(avx2: bool, q: &[f32], n_ctx: usize, kf: &[f32], vf: &[f32], scale: f32, scores: &mut [f32], qh: &mut [f32], acc: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: `avx2` is true only when the CPU supports AVX2 (checked by the caller).
        return unsafe { attend_avx2(q, n_ctx, kf, vf, scale, scores, qh, acc) };
    }
    let _ = avx2;
    attend_body(q, n_ctx, kf, vf, scale, scores, qh, acc)
}

/// [`attend`] compiled with AVX2.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_avx2(q: &[f32], n_ctx: usize, kf: &[f32], vf: &[f32], scale: f32, scores: &mut [f32], qh: &mut [f32], acc: &mut [f32]) {
    attend_body(q, n_ctx, kf, vf, scale, scores, qh, acc)
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn attend_body(q: &[f32], n_ctx: usize, kf: &[f32], vf: &[f32], scale: f32, scores: &mut [f32], qh: &mut [f32], acc: &mut [f32]) {
    let hd = q.len();
    // Round the query to f16 as llama.cpp does before its f16 dot products.
    for (d, &s) in qh.iter_mut().zip(q) {
        *d = f16::from_f32(s).to_f32();
    }
    let scores = &mut scores[..n_ctx];
    let mut max = f32::NEG_INFINITY;
    for (pos, s) in scores.iter_mut().enumerate() {
        *s = dot(qh, &kf[pos * hd..(pos + 1) * hd]) * scale;
        max = max.max(*s);
    }
    let mut sum = 0.0f64;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s as f64;
    }
    let inv = (1.0 / sum) as f32;
    acc.fill(0.0);
    for (pos, &s) in scores.iter().enumerate() {
        let p = f16::from_f32(s * inv).to_f32();
        for (a, &v) in acc.iter_mut().zip(&vf[pos * hd..(pos + 1) * hd]) {
            *a += p * v;
        }
    }
}

/// Dot product with eight independent accumulators in a fixed order (vectorises, and is
/// independent of anything but the two inputs).
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = 0.0;
    for (x, y) in ra.iter().zip(rb) {
        tail += x * y;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Naive attention in f32 over contiguous K/V, the reference.
    fn reference(q: &[f32], ks: &[Vec<f32>], vs: &[Vec<f32>], scale: f32) -> Vec<f32> {
        let scores: Vec<f32> = ks.iter().map(|k| k.iter().zip(q).map(|(a, b)| a * b).sum::<f32>() * scale).collect();
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
        let sum: f32 = e.iter().sum();
        let mut out = vec![0.0; q.len()];
        for (p, v) in e.iter().zip(vs) {
            for (o, x) in out.iter_mut().zip(v) {
                *o += p / sum * x;
            }
        }
        out
    }

    #[test]
    fn matches_reference_through_scattered_blocks() {
        let geo = KvGeometry { block_size: 4, n_heads: 4, n_kv_heads: 2, head_dim: 8 };
        let n_blocks = 6;
        let mut k = vec![f16::ZERO; n_blocks * geo.block_elems()];
        let mut v = k.clone();
        let table = [5u32, 1, 3];
        let n_ctx = 10;
        let mut seed = 1u32;
        let mut rnd = || {
            seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
            ((seed >> 8) as f32 / (1u32 << 24) as f32) - 0.5
        };
        let mut ks = vec![vec![vec![0.0f32; 8]; n_ctx]; 2];
        let mut vs = ks.clone();
        for pos in 0..n_ctx {
            let off = geo.slot_offset(&table, pos);
            for kvh in 0..2 {
                for d in 0..8 {
                    let (a, b) = (f16::from_f32(rnd()), f16::from_f32(rnd()));
                    k[off + kvh * 8 + d] = a;
                    v[off + kvh * 8 + d] = b;
                    ks[kvh][pos][d] = a.to_f32();
                    vs[kvh][pos][d] = b.to_f32();
                }
            }
        }
        let q: Vec<f32> = (0..32).map(|_| f16::from_f32(rnd()).to_f32()).collect();
        let pool = ThreadPool::new(3);
        let mut out = vec![0.0; 32];
        let queries = [AttnQuery { n_ctx, block_table: &table }];
        paged_attention(&pool, geo, &queries, &q, &k, &v, 0.5, &mut AttnScratch::new(), &mut out);
        for h in 0..4 {
            let want = reference(&q[h * 8..h * 8 + 8], &ks[h / 2], &vs[h / 2], 0.5);
            for d in 0..8 {
                assert!((out[h * 8 + d] - want[d]).abs() < 2e-3, "head {h} dim {d}: {} vs {}", out[h * 8 + d], want[d]);
            }
        }
        // Causality and batch invariance: the same query inside a batch gives the same bits.
        let queries2 = [AttnQuery { n_ctx: 3, block_table: &table }, AttnQuery { n_ctx, block_table: &table }];
        let mut q2 = q.clone();
        q2.extend_from_slice(&q);
        let mut out2 = vec![0.0; 64];
        paged_attention(&ThreadPool::new(1), geo, &queries2, &q2, &k, &v, 0.5, &mut AttnScratch::new(), &mut out2);
        assert_eq!(&out2[32..], &out[..]);
    }

    #[test]
    fn short_call_after_long_one_reuses_scratch() {
        // The scratch only grows; a later, shorter call must slice exactly what it needs.
        let geo = KvGeometry { block_size: 4, n_heads: 2, n_kv_heads: 1, head_dim: 8 };
        let k: Vec<f16> = (0..8 * geo.block_elems()).map(|i| f16::from_f32((i % 7) as f32 * 0.1)).collect();
        let v = k.clone();
        let table: Vec<u32> = (0..8).collect();
        let pool = ThreadPool::new(2);
        let mut scratch = AttnScratch::new();
        let long: Vec<AttnQuery> = (1..=30).map(|n| AttnQuery { n_ctx: n, block_table: &table }).collect();
        let q = vec![0.1f32; long.len() * 16];
        let mut out = vec![0.0; q.len()];
        paged_attention(&pool, geo, &long, &q, &k, &v, 0.3, &mut scratch, &mut out);
        let short = [AttnQuery { n_ctx: 3, block_table: &table }];
        let mut after = vec![0.0; 16];
        paged_attention(&pool, geo, &short, &q[..16], &k, &v, 0.3, &mut scratch, &mut after);
        let mut fresh = vec![0.0; 16];
        paged_attention(&pool, geo, &short, &q[..16], &k, &v, 0.3, &mut AttnScratch::new(), &mut fresh);
        assert_eq!(after, fresh);
    }
}
