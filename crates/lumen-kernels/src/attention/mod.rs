//! Causal attention over a paged KV cache.
//!
//! The cache for one layer is a pool of fixed-size blocks, each `block_size` token slots of
//! `n_kv_heads * head_dim` f16 values, block-major so one block is contiguous. A sequence sees
//! its keys and values through its block table: token position `p` lives in block
//! `table[p / block_size]`, slot `p % block_size`. Inside a block the values are head-major
//! (`[kv_head][slot][head_dim]`), so that one KV head's values of a block are one contiguous
//! piece, not `head_dim`-sized pieces `kv_dim` apart. Keys are laid out the same way, or, for
//! the fast arithmetic, transposed within the head's piece (`[kv_head][head_dim][slot]`, see
//! [`KeyLayout`]).
//!
//! Numerics reproduce, bit for bit, llama.cpp's CPU path (no flash attention, f16 cache, ggml
//! built for AVX-512). llama.cpp has two: a step with one token uses `ggml_vec_dot_f16`, a step
//! with several uses llamafile's tinyBLAS F16 GEMM, and they round differently. Lumen picks per
//! query token ([`AttnQuery::prompt`]): prompt tokens get the batched arithmetic, generated
//! tokens the single-token one, which is what llama.cpp does when it evaluates a prompt and
//! then decodes — but here the choice never depends on what else shares the step, so results
//! stay batch-invariant. The single-token arithmetic:
//!
//! - the query is rounded to f16 and each score is `ggml_vec_dot_f16(k, q)`: 64-element chunks
//!   accumulate in four 16-lane FMA accumulators, which are then summed `(s0 + s2) + (s1 + s3)`
//!   and reduced in `_mm512_reduce_add_ps` order, in f64 from there on with the `head_dim % 64`
//!   leftover products added one by one;
//! - llama.cpp pads the KV length to `n_kv`, a multiple of 32, and masks the padding. The softmax
//!   computes `exp(w - max)` with ggml's exp polynomial and sums it in f64 one 16-lane reduction
//!   at a time; probabilities are `e * (1 / sum)` rounded to f16;
//! - each output dimension is `ggml_vec_dot_f16` over the `n_kv` positions of the value column
//!   and the probabilities, so position `p` feeds accumulator lane `p % 64` while `p` is below
//!   `n_kv & !63`, the rest is added in f64. We vectorise across the head dimension instead: 64
//!   rows of `head_dim` accumulators, reduced per dimension in ggml's tree order.
//!
//! The batched arithmetic (only when `head_dim % 16 == 0`, else llama.cpp falls back to the
//! single-token dots): each score is one 16-lane FMA accumulator over the head dimension in
//! order, then `_mm512_reduce_add_ps`; the softmax is the same; each output dimension
//! accumulates position `p` into lane `p % 16` in order and reduces the 16 lanes the same way.
//!
//! The AVX2 and scalar paths perform the same operations in the same order (products of two f16
//! values are exact in f32, so FMA and multiply-then-add agree there) and give the same bits.
//! Each (token, head) depends only on its own query and context and is computed by one thread
//! in a fixed order, so results do not depend on how the batch is split (batch invariance).

use std::sync::atomic::{AtomicUsize, Ordering};

use half::f16;
use half::slice::HalfFloatSliceExt;

use crate::blocks::round_f16;
use crate::cpu::CpuLevel;
use crate::pool::{PartsPtr, ThreadPool};

#[cfg(target_arch = "x86_64")]
mod avx2;
mod fast;
#[cfg(test)]
mod fast_tests;
mod scalar;
mod store;
#[cfg(test)]
mod tests;

use scalar::attend_scalar;
pub use store::store_step;

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
    /// How a block holds a KV head's keys; it must be the layout of the arithmetic the cache
    /// is read with ([`AttnArith::key_layout`]).
    pub keys: KeyLayout,
}

/// How a cache block holds one KV head's `block_size x head_dim` keys.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyLayout {
    /// `[slot][head_dim]`, as the values: llama.cpp's arithmetic takes a whole key row per
    /// score.
    #[default]
    Rows,
    /// `[head_dim][slot]`: the fast arithmetic scores 16 slots at once, one vector of keys
    /// per dimension times the query's value of that dimension, with no horizontal sums and
    /// no widened copy of the block (`fast.rs`).
    Columns,
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

    /// Offset of KV head `kv_head`'s `head_dim` values for token position `pos` in a layer's
    /// storage, given the block table. Later positions of the same block follow contiguously.
    #[inline]
    pub fn head_offset(&self, block_table: &[u32], pos: usize, kv_head: usize) -> usize {
        let block = block_table[pos / self.block_size] as usize;
        block * self.block_elems()
            + (kv_head * self.block_size + pos % self.block_size) * self.head_dim
    }

    /// Offset of dimension `d` of KV head `kv_head`'s key at position `pos`, in the layout of
    /// [`KvGeometry::keys`] (with `Rows`, `head_offset(..) + d`).
    #[inline]
    pub fn key_offset(&self, block_table: &[u32], pos: usize, kv_head: usize, d: usize) -> usize {
        match self.keys {
            KeyLayout::Rows => self.head_offset(block_table, pos, kv_head) + d,
            KeyLayout::Columns => {
                let block = block_table[pos / self.block_size] as usize;
                block * self.block_elems()
                    + (kv_head * self.head_dim + d) * self.block_size
                    + pos % self.block_size
            }
        }
    }
}

/// Which arithmetic attention follows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttnArith {
    /// llama.cpp's, bit for bit (the default; see the module docs).
    #[default]
    LlamaCpp,
    /// f32 sums in the cheapest order, straight from the f16 cache block by block
    /// (`fast.rs`): llama.cpp's roundings but not its summation order, about twice as fast
    /// when the cache streams from memory.
    Fast,
}

impl AttnArith {
    /// The key layout this arithmetic reads.
    pub fn key_layout(self) -> KeyLayout {
        match self {
            AttnArith::LlamaCpp => KeyLayout::Rows,
            AttnArith::Fast => KeyLayout::Columns,
        }
    }
}

/// One query token of a batch: how much context it sees and where that context lives.
#[derive(Clone, Copy, Debug)]
pub struct AttnQuery<'a> {
    /// The token attends to positions `0..n_ctx` (its own position is `n_ctx - 1`).
    pub n_ctx: usize,
    /// The sequence's block table.
    pub block_table: &'a [u32],
    /// The token is part of a multi-token prompt: llama.cpp evaluates those with its batched
    /// (tinyBLAS) arithmetic, generated tokens with the single-token one. See the module docs.
    pub prompt: bool,
}

/// Per-thread scratch (converted keys and values, scores, accumulators) reused across calls.
#[derive(Default)]
pub struct AttnScratch {
    buf: Vec<f32>,
    stride: usize,
    runs: Vec<Task>,
    tasks: Vec<Task>,
}

/// A run of consecutive query tokens of one sequence, for KV heads `kv_head..kv_head + n_kv`.
#[derive(Clone, Copy, Debug)]
struct Task {
    first: usize,
    end: usize,
    kv_head: usize,
    n_kv: usize,
}

impl Task {
    /// Where query `j` of the task (token `first + j / heads`, head `kv_head * group +
    /// j % heads`, `heads` being the task's `n_kv * group` query heads) starts in `q` and in
    /// the output.
    fn query_offset(&self, j: usize, geo: &KvGeometry) -> usize {
        let group = geo.n_heads / geo.n_kv_heads;
        let heads = self.n_kv * group;
        (self.first + j / heads) * geo.n_heads * geo.head_dim
            + (self.kv_head * group + j % heads) * geo.head_dim
    }
}

/// Most query tokens one task covers: long prefills split into several tasks so both cores
/// get work, while each task still converts its context's keys and values only once.
const RUN_TOKENS: usize = 16;

/// Most queries one fast-arithmetic (sub-)task holds in its scratch: a run of prompt tokens
/// goes one KV head at a time ([`run_fast_tasks`]), a one-token task may take every head.
fn fast_queries(geo: &KvGeometry) -> usize {
    (RUN_TOKENS * (geo.n_heads / geo.n_kv_heads)).max(geo.n_heads)
}

/// Accumulator rows of the weighted sum of values: ggml's `vec_dot_f16` keeps 4 x 16 lanes.
const ROWS: usize = 64;

impl AttnScratch {
    /// An empty scratch; it grows on first use.
    pub fn new() -> Self {
        Self::default()
    }

    fn ensure(&mut self, arith: AttnArith, parts: usize, max_ctx: usize, geo: &KvGeometry) {
        // Room for a whole 256-token stretch of context, so that a decode step (one more
        // position each time) reallocates once per 256 steps, not every step.
        let room = max_ctx.next_multiple_of(256);
        let head_dim = geo.head_dim;
        let stride = match arith {
            AttnArith::LlamaCpp => 2 * room * head_dim + room + (ROWS + 2) * head_dim,
            AttnArith::Fast => {
                fast_queries(geo) * (fast::score_stride(room, geo.block_size) + 2 * head_dim)
            }
        };
        if self.stride < stride || self.buf.len() < parts * self.stride.max(stride) {
            self.stride = stride.max(self.stride);
            self.buf = vec![0.0; parts * self.stride];
        }
    }

    /// Splits the batch into runs of consecutive tokens of one sequence, times KV heads:
    /// one task per KV head, or, when `whole` and there are runs enough to keep `threads`
    /// busy, one task for all of a run's heads (a one-token task then reads each cache block
    /// as one contiguous piece, which streams from memory faster: see `fast.rs`; a longer
    /// run still goes head by head inside its task, see [`run_fast_tasks`]).
    fn plan(&mut self, queries: &[AttnQuery<'_>], n_kv_heads: usize, whole: bool, threads: usize) {
        self.runs.clear();
        let mut first = 0;
        while first < queries.len() {
            let mut end = first + 1;
            while end < queries.len()
                && end - first < RUN_TOKENS
                && same_run(&queries[end - 1], &queries[end])
            {
                end += 1;
            }
            self.runs.push(Task {
                first,
                end,
                kv_head: 0,
                n_kv: n_kv_heads,
            });
            first = end;
        }
        self.tasks.clear();
        if whole && self.runs.len() >= 2 * threads {
            self.tasks.extend_from_slice(&self.runs);
        } else {
            self.tasks.extend(self.runs.iter().flat_map(|r| {
                (0..n_kv_heads).map(move |kv_head| Task {
                    kv_head,
                    n_kv: 1,
                    ..*r
                })
            }));
        }
        // Threads claim tasks in this order: longest first, so that under a causal prompt
        // (whose late tokens see the most context) no thread is left with the long tail.
        // The order never changes a result: every (token, head) is computed the same way.
        self.tasks.sort_unstable_by_key(|t| {
            std::cmp::Reverse((t.end - t.first) * queries[t.end - 1].n_ctx)
        });
    }
}

/// Whether `b` is the token right after `a` in the same sequence.
fn same_run(a: &AttnQuery<'_>, b: &AttnQuery<'_>) -> bool {
    std::ptr::eq(a.block_table, b.block_table) && b.n_ctx == a.n_ctx + 1
}

/// Attention for a batch of query tokens: `q` is `queries.len() × n_heads·head_dim`, `out` the same.
///
/// `k_layer`/`v_layer` are one layer's cache storage; every position below each query's
/// `n_ctx` must already hold its key and value.
#[allow(clippy::too_many_arguments)]
pub fn paged_attention(
    pool: &ThreadPool,
    arith: AttnArith,
    geo: KvGeometry,
    queries: &[AttnQuery<'_>],
    q: &[f32],
    k_layer: &[f16],
    v_layer: &[f16],
    scale: f32,
    scratch: &mut AttnScratch,
    out: &mut [f32],
) {
    paged_attention_at(
        CpuLevel::detect(),
        pool,
        arith,
        geo,
        queries,
        q,
        k_layer,
        v_layer,
        scale,
        scratch,
        out,
    );
}

/// The CPU level attention runs at for `head_dim`: `level`, or scalar when the head is not
/// a whole number of 8-lane vectors (every SIMD step needs `head_dim % 8 == 0`). From
/// [`CpuLevel::Avx2`] up the llama.cpp arithmetic runs on AVX2 (compiled for AVX-512VL's 32
/// registers from [`CpuLevel::Avx512`] up, the same operations), the fast arithmetic on
/// AVX2 or, from [`CpuLevel::Avx512`] up, on 16-lane registers.
fn level_for(level: CpuLevel, head_dim: usize) -> CpuLevel {
    if head_dim.is_multiple_of(8) {
        level
    } else {
        CpuLevel::Scalar
    }
}

/// Every level this CPU can run attention at for `head_dim`, for tests.
#[cfg(test)]
fn levels(head_dim: usize) -> Vec<CpuLevel> {
    let mut all: Vec<CpuLevel> = CpuLevel::supported()
        .into_iter()
        .map(|l| level_for(l, head_dim))
        .collect();
    all.dedup();
    all
}

/// [`paged_attention`] at a given CPU level, for tests and benches; panics if the CPU does
/// not support `level`. Every level gives the same bits with [`AttnArith::LlamaCpp`]; with
/// [`AttnArith::Fast`] the SIMD levels agree with each other and with the scalar code within
/// f32 rounding.
#[allow(clippy::too_many_arguments)]
pub fn paged_attention_at(
    level: CpuLevel,
    pool: &ThreadPool,
    arith: AttnArith,
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
    assert!(
        geo.n_heads.is_multiple_of(geo.n_kv_heads),
        "paged_attention: heads not divisible"
    );
    assert_eq!(
        geo.keys,
        arith.key_layout(),
        "paged_attention: the cache's key layout is not the one {arith:?} reads"
    );
    let max_ctx = queries.iter().map(|t| t.n_ctx).max().unwrap_or(0);
    for t in queries {
        let blocks_needed = t.n_ctx.div_ceil(geo.block_size);
        assert!(
            t.n_ctx > 0 && t.block_table.len() >= blocks_needed,
            "paged_attention: block table too short"
        );
        for &b in &t.block_table[..blocks_needed] {
            assert!(
                (b as usize + 1) * geo.block_elems() <= k_layer.len().min(v_layer.len()),
                "paged_attention: block out of range"
            );
        }
    }
    let parts = pool.n_threads();
    scratch.ensure(arith, parts, max_ctx, &geo);
    scratch.plan(queries, geo.n_kv_heads, arith == AttnArith::Fast, parts);
    let stride = scratch.stride;
    let tasks = &scratch.tasks;
    let scratch_ptr = PartsPtr(scratch.buf.as_mut_ptr());
    let out_ptr = PartsPtr(out.as_mut_ptr());
    let (hd, group) = (geo.head_dim, geo.n_heads / geo.n_kv_heads);
    let level = level_for(level, hd);
    assert!(
        level.is_supported(),
        "paged_attention: CPU level {level} unavailable"
    );
    let next_task = AtomicUsize::new(0);
    pool.run(|part, _| {
        // SAFETY: each part index runs exactly once per call and owns
        // scratch[part*stride .. (part+1)*stride]; part < n_parts == the pool's size.
        let buf =
            unsafe { std::slice::from_raw_parts_mut(scratch_ptr.get().add(part * stride), stride) };
        if arith == AttnArith::Fast {
            let inputs = fast::Inputs {
                geo: &geo,
                queries,
                q,
                k_layer,
                v_layer,
                scale,
            };
            return run_fast_tasks(level, &inputs, max_ctx, tasks, &next_task, buf, out_ptr);
        }
        let (kf, rest) = buf.split_at_mut(max_ctx * hd);
        let (vf, rest) = rest.split_at_mut(max_ctx * hd);
        let (scores, rest) = rest.split_at_mut(max_ctx.next_multiple_of(64));
        let (qh, rest) = rest.split_at_mut(hd);
        let (rows, rest) = rest.split_at_mut(ROWS * hd);
        let acc = &mut rest[..hd];
        loop {
            let claimed = next_task.fetch_add(1, Ordering::Relaxed);
            let Some(task) = tasks.get(claimed) else {
                break;
            };
            // Convert this run's context for its KV head once; every query of the run and
            // every query head of the group reads it.
            // One call per cache block, whose rows for this head are contiguous.
            let ctx = queries[task.end - 1].n_ctx;
            let table = queries[task.first].block_table;
            let mut pos = 0;
            while pos < ctx {
                let n = (geo.block_size - pos % geo.block_size).min(ctx - pos);
                let off = geo.head_offset(table, pos, task.kv_head);
                let (src, dst) = (off..off + n * hd, pos * hd..(pos + n) * hd);
                widen(level, &k_layer[src.clone()], &mut kf[dst.clone()]);
                widen(level, &v_layer[src], &mut vf[dst]);
                pos += n;
            }
            #[allow(clippy::needless_range_loop)] // t also places the output
            for t in task.first..task.end {
                for head in task.kv_head * group..(task.kv_head + 1) * group {
                    let qoff = t * q_dim + head * hd;
                    let bufs = Bufs {
                        scores: &mut *scores,
                        qh: &mut *qh,
                        rows: &mut *rows,
                        out: &mut *acc,
                    };
                    let mode = if queries[t].prompt && hd % 16 == 0 {
                        Arith::Batched
                    } else {
                        Arith::Single
                    };
                    attend(
                        level,
                        mode,
                        &q[qoff..qoff + hd],
                        queries[t].n_ctx,
                        kf,
                        vf,
                        scale,
                        bufs,
                    );
                    // SAFETY: (token, head) belongs to exactly one task, run by one part, so
                    // this output range is written by nobody else.
                    let dst =
                        unsafe { std::slice::from_raw_parts_mut(out_ptr.get().add(qoff), hd) };
                    dst.copy_from_slice(acc);
                }
            }
        }
    });
}

/// The tasks this thread claims, with the fast arithmetic; `buf` is its scratch.
/// `max_ctx` is the longest context of the call.
fn run_fast_tasks(
    level: CpuLevel,
    inputs: &fast::Inputs<'_>,
    max_ctx: usize,
    tasks: &[Task],
    next_task: &AtomicUsize,
    buf: &mut [f32],
    out: PartsPtr<f32>,
) {
    let geo = inputs.geo;
    let (hd, group) = (geo.head_dim, geo.n_heads / geo.n_kv_heads);
    let nq = fast_queries(geo);
    let (scores, rest) = buf.split_at_mut(nq * fast::score_stride(max_ctx, geo.block_size));
    let (acc, rest) = rest.split_at_mut(nq * hd);
    let qh = &mut rest[..nq * hd];
    loop {
        let claimed = next_task.fetch_add(1, Ordering::Relaxed);
        let Some(&task) = tasks.get(claimed) else {
            break;
        };
        // A run of prompt tokens goes one KV head at a time: its score rows (tokens x stride)
        // then stay in the core's cache, where all heads' rows at once (512 rows of 18 KB for
        // 16 tokens of a 32-head model at depth 4096) made every block's scores a cache and
        // TLB miss per row. One token (decode) keeps the whole block as one piece.
        let per_head = task.end - task.first > 1;
        let parts = if per_head { task.n_kv } else { 1 };
        for h in 0..parts {
            let sub = if per_head {
                Task {
                    kv_head: task.kv_head + h,
                    n_kv: 1,
                    ..task
                }
            } else {
                task
            };
            let bufs = fast::FastBufs {
                scores: &mut *scores,
                acc: &mut *acc,
                qh: &mut *qh,
            };
            fast::run_task(level, inputs, sub, bufs);
            for (j, res) in acc
                .chunks_exact(hd)
                .take((sub.end - sub.first) * sub.n_kv * group)
                .enumerate()
            {
                let qoff = sub.query_offset(j, geo);
                // SAFETY: (token, head) belongs to exactly one task, run by one thread, so
                // this output range is written by nobody else.
                unsafe { std::slice::from_raw_parts_mut(out.get().add(qoff), hd) }
                    .copy_from_slice(res);
            }
        }
    }
}

/// Scratch slices for one (token, head): `scores` holds at least `n_ctx` rounded up to 64,
/// `qh` and `out` `head_dim` values, `rows` `ROWS * head_dim`.
struct Bufs<'a> {
    scores: &'a mut [f32],
    qh: &'a mut [f32],
    rows: &'a mut [f32],
    out: &'a mut [f32],
}

/// One query head over `n_ctx` converted key/value rows (`head_dim` each); the result is left
/// in `bufs.out`.
#[allow(clippy::too_many_arguments)]
fn attend(
    level: CpuLevel,
    mode: Arith,
    q: &[f32],
    n_ctx: usize,
    kf: &[f32],
    vf: &[f32],
    scale: f32,
    bufs: Bufs<'_>,
) {
    #[cfg(target_arch = "x86_64")]
    if level >= CpuLevel::Avx2 {
        // SAFETY: the caller checked that the CPU supports `level`, and a SIMD level is only
        // used when head_dim % 8 == 0 ([`level_for`]).
        return unsafe { avx2::attend(level, mode, q, n_ctx, kf, vf, scale, bufs) };
    }
    let _ = level;
    attend_scalar(mode, q, n_ctx, kf, vf, scale, bufs)
}

/// Keys or values of consecutive positions (contiguous inside a block) as f32, exact either
/// way; F16C from [`CpuLevel::Avx2`] up.
fn widen(level: CpuLevel, src: &[f16], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if level >= CpuLevel::Avx2 {
        // SAFETY: the caller checked that the CPU supports `level` (so AVX2 and F16C), and a
        // SIMD level is only used when head_dim % 8 == 0 (so every piece widened is a
        // multiple of eight values).
        return unsafe { avx2::widen(src, dst) };
    }
    let _ = level;
    src.convert_to_f32_slice(dst);
}

/// Which of llama.cpp's two attention arithmetics a (token, head) follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arith {
    /// One token per step: `ggml_vec_dot_f16` for scores and for the weighted values.
    Single,
    /// A token of a multi-token batch: llamafile's tinyBLAS F16 GEMM (`head_dim % 16 == 0`).
    Batched,
}

/// Accumulator rows of the batched weighted sum: tinyBLAS keeps one 16-lane accumulator.
const BATCH_ROWS: usize = 16;

/// llama.cpp's padded KV length for a context of `n_ctx` positions.
#[inline(always)]
fn padded_kv(n_ctx: usize) -> usize {
    n_ctx.next_multiple_of(32)
}
