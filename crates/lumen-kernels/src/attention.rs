//! Causal attention over a paged KV cache.
//!
//! The cache for one layer is a pool of fixed-size blocks, each `block_size` token slots of
//! `n_kv_heads * head_dim` f16 values, block-major so one block is contiguous. A sequence sees
//! its keys and values through its block table: token position `p` lives in block
//! `table[p / block_size]`, slot `p % block_size`.
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

use half::f16;
use half::slice::HalfFloatSliceExt;

use crate::ggml_math;
use crate::pool::{split_range, ThreadPool};

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
    /// The token is part of a multi-token prompt: llama.cpp evaluates those with its batched
    /// (tinyBLAS) arithmetic, generated tokens with the single-token one. See the module docs.
    pub prompt: bool,
}

/// Per-thread scratch (converted keys and values, scores, accumulators) reused across calls.
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

/// Accumulator rows of the weighted sum of values: ggml's `vec_dot_f16` keeps 4 x 16 lanes.
const ROWS: usize = 64;

impl AttnScratch {
    /// An empty scratch; it grows on first use.
    pub fn new() -> Self {
        Self::default()
    }

    fn ensure(&mut self, parts: usize, max_ctx: usize, head_dim: usize) {
        // Room for a whole 256-token stretch of context, so that a decode step (one more
        // position each time) reallocates once per 256 steps, not every step.
        let room = max_ctx.next_multiple_of(256);
        let stride = 2 * room * head_dim + room + (ROWS + 2) * head_dim;
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
    let avx2 = ggml_math::use_avx2() && geo.head_dim & 7 == 0;
    paged_attention_with(avx2, pool, geo, queries, q, k_layer, v_layer, scale, scratch, out);
}

/// [`paged_attention`] on the AVX2 path or the scalar one (`avx2` requires CPU support).
#[allow(clippy::too_many_arguments)]
fn paged_attention_with(
    avx2: bool,
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
    assert!(!avx2 || (ggml_math::use_avx2() && hd & 7 == 0), "paged_attention: AVX2 path unavailable");
    pool.run(|part, n_parts| {
        // SAFETY: each part index runs exactly once per call and owns
        // scratch[part*stride .. (part+1)*stride]; part < n_parts == the pool's size.
        let buf = unsafe { std::slice::from_raw_parts_mut(scratch_ptr.ptr().add(part * stride), stride) };
        let (kf, rest) = buf.split_at_mut(max_ctx * hd);
        let (vf, rest) = rest.split_at_mut(max_ctx * hd);
        let (scores, rest) = rest.split_at_mut(max_ctx.next_multiple_of(64));
        let (qh, rest) = rest.split_at_mut(hd);
        let (rows, rest) = rest.split_at_mut(ROWS * hd);
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
                    let bufs = Bufs { scores: &mut *scores, qh: &mut *qh, rows: &mut *rows, out: &mut *acc };
                    let mode = if queries[t].prompt && hd % 16 == 0 { Arith::Batched } else { Arith::Single };
                    attend(avx2, mode, &q[qoff..qoff + hd], queries[t].n_ctx, kf, vf, scale, bufs);
                    // SAFETY: (token, head) belongs to exactly one task, run by one part, so
                    // this output range is written by nobody else.
                    let dst = unsafe { std::slice::from_raw_parts_mut(out_ptr.ptr().add(qoff), hd) };
                    dst.copy_from_slice(acc);
                }
            }
        }
    });
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
fn attend(avx2: bool, mode: Arith, q: &[f32], n_ctx: usize, kf: &[f32], vf: &[f32], scale: f32, bufs: Bufs<'_>) {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: `avx2` is true only when the CPU supports AVX2, FMA and F16C, and
        // head_dim % 8 == 0 (checked by the caller).
        return unsafe { avx2::attend(mode, q, n_ctx, kf, vf, scale, bufs) };
    }
    let _ = avx2;
    attend_scalar(mode, q, n_ctx, kf, vf, scale, bufs)
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

/// tinyBLAS's dot of two f16 vectors held as f32 (`len % 16 == 0`): one 16-lane accumulator
/// fed 16 products at a time, then `_mm512_reduce_add_ps`.
#[inline(always)]
fn dot_tiny(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    for (xs, ys) in x.chunks_exact(16).zip(y.chunks_exact(16)) {
        for l in 0..16 {
            acc[l] += xs[l] * ys[l];
        }
    }
    ggml_math::reduce16(&acc)
}

/// `x` rounded to the nearest f16 and back.
#[inline(always)]
fn round_f16(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

/// llama.cpp's padded KV length for a context of `n_ctx` positions.
#[inline(always)]
fn padded_kv(n_ctx: usize) -> usize {
    n_ctx.next_multiple_of(32)
}

/// [`attend`] in portable Rust.
fn attend_scalar(mode: Arith, q: &[f32], n_ctx: usize, kf: &[f32], vf: &[f32], scale: f32, bufs: Bufs<'_>) {
    let hd = q.len();
    let Bufs { scores, qh, rows, out } = bufs;
    for (d, &s) in qh.iter_mut().zip(q) {
        *d = round_f16(s);
    }
    let n16 = n_ctx.next_multiple_of(16);
    let scores = &mut scores[..n16];
    let mut max = f32::NEG_INFINITY;
    for (pos, s) in scores[..n_ctx].iter_mut().enumerate() {
        let k = &kf[pos * hd..(pos + 1) * hd];
        *s = if mode == Arith::Batched { dot_tiny(qh, k) } else { dot_f16(qh, k) } * scale;
        max = max.max(*s);
    }
    scores[n_ctx..].fill(f32::NEG_INFINITY);
    // Chunks past n16 (up to the padded length) are all zero and add nothing.
    let mut total = 0.0f64;
    for c in scores.chunks_exact_mut(16) {
        for e in c.iter_mut() {
            *e = ggml_math::exp(*e - max);
        }
        total += ggml_math::reduce16((&*c).try_into().expect("16 lanes")) as f64;
    }
    let inv = (1.0 / total) as f32;
    for s in scores[..n_ctx].iter_mut() {
        *s = round_f16(*s * inv);
    }
    let p = &scores[..n_ctx];

    if mode == Arith::Batched {
        // Position `pos` feeds lane `pos % 16` in order; masked positions would add +0.
        rows[..BATCH_ROWS * hd].fill(0.0);
        for (pos, &pv) in p.iter().enumerate() {
            let row = &mut rows[(pos % BATCH_ROWS) * hd..(pos % BATCH_ROWS + 1) * hd];
            for (a, &x) in row.iter_mut().zip(&vf[pos * hd..(pos + 1) * hd]) {
                *a += x * pv;
            }
        }
        for (d, o) in out.iter_mut().enumerate() {
            let lanes: [f32; 16] = std::array::from_fn(|l| rows[l * hd + d]);
            *o = ggml_math::reduce16(&lanes);
        }
        return;
    }

    // Weighted sum of values: position `pos < np` goes to accumulator row `pos % 64`.
    let n_kv = padded_kv(n_ctx);
    let np = n_kv & !(ROWS - 1);
    let real = n_ctx.min(np);
    for pos in 0..np {
        let row = &mut rows[(pos % ROWS) * hd..(pos % ROWS + 1) * hd];
        if pos < real {
            let (pv, v) = (p[pos], &vf[pos * hd..(pos + 1) * hd]);
            if pos < ROWS {
                for (a, &x) in row.iter_mut().zip(v) {
                    *a = 0.0 + x * pv;
                }
            } else {
                for (a, &x) in row.iter_mut().zip(v) {
                    *a += x * pv;
                }
            }
        } else if pos < ROWS {
            row.fill(0.0);
        } else {
            // A masked position adds an exact +0 product.
            for a in row.iter_mut() {
                *a += 0.0;
            }
        }
    }
    for (d, o) in out.iter_mut().enumerate() {
        let mut sumf = 0.0f64;
        if np > 0 {
            let r = |i: usize| rows[i * hd + d];
            let mut s = [0.0f32; 16];
            for (l, x) in s.iter_mut().enumerate() {
                *x = (r(l) + r(32 + l)) + (r(16 + l) + r(48 + l));
            }
            sumf = ggml_math::reduce16(&s) as f64;
        }
        for pos in np..n_kv {
            sumf += if pos < n_ctx { (vf[pos * hd + d] * p[pos]) as f64 } else { 0.0 };
        }
        *o = sumf as f32;
    }
}

/// ggml's `ggml_vec_dot_f16` on two vectors of f16 values held as f32 (AVX-512 build).
///
/// Products of two f16 values are exact in f32, so `acc + x * y` is the FMA ggml computes.
#[inline(always)]
fn dot_f16(x: &[f32], y: &[f32]) -> f32 {
    let n = x.len();
    let np = n & !63;
    let mut sums = [[0.0f32; 16]; 4];
    for i in (0..np).step_by(64) {
        for (j, sum) in sums.iter_mut().enumerate() {
            let (xs, ys) = (&x[i + 16 * j..i + 16 * j + 16], &y[i + 16 * j..i + 16 * j + 16]);
            for l in 0..16 {
                sum[l] += xs[l] * ys[l];
            }
        }
    }
    let mut sumf = 0.0f64;
    if np > 0 {
        let mut s = [0.0f32; 16];
        for (l, v) in s.iter_mut().enumerate() {
            *v = (sums[0][l] + sums[2][l]) + (sums[1][l] + sums[3][l]);
        }
        sumf = ggml_math::reduce16(&s) as f64;
    }
    for i in np..n {
        sumf += (x[i] * y[i]) as f64;
    }
    sumf as f32
}

/// The AVX2 path of [`attend`].
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{padded_kv, Arith, Bufs, BATCH_ROWS, ROWS};
    use crate::ggml_math::x86::{exp8, reduce16};

    /// [`super::attend_scalar`] with AVX2, FMA and F16C; same bits.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C; `q.len() % 8 == 0`; the slices as for the
    /// scalar version.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn attend(mode: Arith, q: &[f32], n_ctx: usize, kf: &[f32], vf: &[f32], scale: f32, bufs: Bufs<'_>) {
        let hd = q.len();
        let Bufs { scores, qh, rows, out } = bufs;
        let n16 = n_ctx.next_multiple_of(16);
        let n_kv = padded_kv(n_ctx);
        assert!(hd & 7 == 0 && qh.len() >= hd && out.len() >= hd && rows.len() >= ROWS * hd && scores.len() >= n_kv);
        assert!(kf.len() >= n_ctx * hd && vf.len() >= n_ctx * hd);
        let qh = qh.as_mut_ptr();
        for d in (0..hd).step_by(8) {
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(q.as_ptr().add(d)));
            _mm256_storeu_ps(qh.add(d), _mm256_cvtph_ps(h));
        }

        // Scores and their maximum.
        let sp = scores.as_mut_ptr();
        let mut max = f32::NEG_INFINITY;
        for pos in 0..n_ctx {
            let k = kf.as_ptr().add(pos * hd);
            let s = if mode == Arith::Batched { dot_tiny(qh, k, hd) } else { dot_f16(qh, k, hd) } * scale;
            *sp.add(pos) = s;
            max = max.max(s);
        }
        for pos in n_ctx..n16 {
            *sp.add(pos) = f32::NEG_INFINITY;
        }

        // exp(w - max), summed one 16-lane reduction at a time in f64.
        let maxv = _mm256_set1_ps(max);
        let mut total = 0.0f64;
        for i in (0..n16).step_by(16) {
            let lo = exp8(_mm256_sub_ps(_mm256_loadu_ps(sp.add(i)), maxv));
            let hi = exp8(_mm256_sub_ps(_mm256_loadu_ps(sp.add(i + 8)), maxv));
            _mm256_storeu_ps(sp.add(i), lo);
            _mm256_storeu_ps(sp.add(i + 8), hi);
            total += reduce16(lo, hi) as f64;
        }
        let inv = _mm256_set1_ps((1.0 / total) as f32);
        // Probabilities rounded to f16 (the masked lanes up to n16 become 0).
        for i in (0..n16).step_by(8) {
            let p = _mm256_mul_ps(_mm256_loadu_ps(sp.add(i)), inv);
            _mm256_storeu_ps(sp.add(i), _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(p)));
        }

        if mode == Arith::Batched {
            weighted_sum_tiny(sp, n_ctx, vf.as_ptr(), hd, rows.as_mut_ptr(), out.as_mut_ptr());
            return;
        }

        // Weighted sum of values into ROWS accumulator rows.
        let np = n_kv & !(ROWS - 1);
        let real = n_ctx.min(np);
        let rp = rows.as_mut_ptr();
        let zero = _mm256_setzero_ps();
        for pos in 0..np {
            let row = rp.add((pos % ROWS) * hd);
            if pos < real {
                let pv = _mm256_set1_ps(*sp.add(pos));
                let v = vf.as_ptr().add(pos * hd);
                if pos < ROWS {
                    for d in (0..hd).step_by(8) {
                        _mm256_storeu_ps(row.add(d), _mm256_fmadd_ps(_mm256_loadu_ps(v.add(d)), pv, zero));
                    }
                } else {
                    for d in (0..hd).step_by(8) {
                        _mm256_storeu_ps(row.add(d), _mm256_fmadd_ps(_mm256_loadu_ps(v.add(d)), pv, _mm256_loadu_ps(row.add(d))));
                    }
                }
            } else if pos < ROWS {
                for d in (0..hd).step_by(8) {
                    _mm256_storeu_ps(row.add(d), zero);
                }
            } else {
                for d in (0..hd).step_by(8) {
                    _mm256_storeu_ps(row.add(d), _mm256_add_ps(_mm256_loadu_ps(row.add(d)), zero));
                }
            }
        }

        // Per dimension: ggml's reduction of the rows, then the leftover positions in f64.
        let op = out.as_mut_ptr();
        for d in (0..hd).step_by(8) {
            let (mut lo, mut hi) = (_mm256_setzero_pd(), _mm256_setzero_pd());
            if np > 0 {
                let rd = rp.add(d);
                let mut s = [zero; 16];
                for (l, x) in s.iter_mut().enumerate() {
                    let (a, b) = (_mm256_loadu_ps(rd.add(l * hd)), _mm256_loadu_ps(rd.add((32 + l) * hd)));
                    let (c, e) = (_mm256_loadu_ps(rd.add((16 + l) * hd)), _mm256_loadu_ps(rd.add((48 + l) * hd)));
                    *x = _mm256_add_ps(_mm256_add_ps(a, b), _mm256_add_ps(c, e));
                }
                let mut t8 = [zero; 8];
                for (l, x) in t8.iter_mut().enumerate() {
                    *x = _mm256_add_ps(s[8 + l], s[l]);
                }
                let mut t4 = [zero; 4];
                for (l, x) in t4.iter_mut().enumerate() {
                    *x = _mm256_add_ps(t8[4 + l], t8[l]);
                }
                let f = _mm256_add_ps(_mm256_add_ps(t4[0], t4[2]), _mm256_add_ps(t4[1], t4[3]));
                lo = _mm256_cvtps_pd(_mm256_castps256_ps128(f));
                hi = _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(f));
            }
            for pos in np..n_kv {
                if pos < n_ctx {
                    let prod = _mm256_mul_ps(_mm256_loadu_ps(vf.as_ptr().add(pos * hd + d)), _mm256_set1_ps(*sp.add(pos)));
                    lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(prod)));
                    hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(prod)));
                } else {
                    lo = _mm256_add_pd(lo, _mm256_setzero_pd());
                    hi = _mm256_add_pd(hi, _mm256_setzero_pd());
                }
            }
            _mm256_storeu_ps(op.add(d), _mm256_set_m128(_mm256_cvtpd_ps(hi), _mm256_cvtpd_ps(lo)));
        }
    }

    /// [`super::dot_tiny`] of `n` values at `x` and `y` (`n % 16 == 0`).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_tiny(x: *const f32, y: *const f32, n: usize) -> f32 {
        let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for i in (0..n).step_by(16) {
            lo = _mm256_fmadd_ps(_mm256_loadu_ps(x.add(i)), _mm256_loadu_ps(y.add(i)), lo);
            hi = _mm256_fmadd_ps(_mm256_loadu_ps(x.add(i + 8)), _mm256_loadu_ps(y.add(i + 8)), hi);
        }
        reduce16(lo, hi)
    }

    /// The batched weighted sum of values: position `pos` feeds accumulator row `pos % 16`
    /// (tinyBLAS's lanes), then each dimension reduces its 16 rows like `_mm512_reduce_add_ps`.
    /// `rows` holds `BATCH_ROWS * hd` floats, `p` the f16-rounded probabilities.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn weighted_sum_tiny(p: *const f32, n_ctx: usize, vf: *const f32, hd: usize, rows: *mut f32, out: *mut f32) {
        let zero = _mm256_setzero_ps();
        for i in (0..BATCH_ROWS * hd).step_by(8) {
            _mm256_storeu_ps(rows.add(i), zero);
        }
        for pos in 0..n_ctx {
            let row = rows.add((pos % BATCH_ROWS) * hd);
            let (pv, v) = (_mm256_set1_ps(*p.add(pos)), vf.add(pos * hd));
            for d in (0..hd).step_by(8) {
                _mm256_storeu_ps(row.add(d), _mm256_fmadd_ps(_mm256_loadu_ps(v.add(d)), pv, _mm256_loadu_ps(row.add(d))));
            }
        }
        for d in (0..hd).step_by(8) {
            let r = |l: usize| _mm256_loadu_ps(rows.add(l * hd + d));
            let t8: [__m256; 8] = std::array::from_fn(|l| _mm256_add_ps(r(8 + l), r(l)));
            let t4: [__m256; 4] = std::array::from_fn(|l| _mm256_add_ps(t8[4 + l], t8[l]));
            let f = _mm256_add_ps(_mm256_add_ps(t4[0], t4[2]), _mm256_add_ps(t4[1], t4[3]));
            _mm256_storeu_ps(out.add(d), f);
        }
    }

    /// [`super::dot_f16`] of `n` values at `x` and `y`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_f16(x: *const f32, y: *const f32, n: usize) -> f32 {
        let np = n & !63;
        let mut acc = [_mm256_setzero_ps(); 8];
        for i in (0..np).step_by(64) {
            for (k, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(_mm256_loadu_ps(x.add(i + 8 * k)), _mm256_loadu_ps(y.add(i + 8 * k)), *a);
            }
        }
        let mut sumf = 0.0f64;
        if np > 0 {
            // Accumulator j (16 lanes) is acc[2j] (lanes 0..8) and acc[2j + 1] (lanes 8..16).
            let lo = _mm256_add_ps(_mm256_add_ps(acc[0], acc[4]), _mm256_add_ps(acc[2], acc[6]));
            let hi = _mm256_add_ps(_mm256_add_ps(acc[1], acc[5]), _mm256_add_ps(acc[3], acc[7]));
            sumf = reduce16(lo, hi) as f64;
        }
        for i in np..n {
            sumf += (*x.add(i) * *y.add(i)) as f64;
        }
        sumf as f32
    }
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
        let queries = [AttnQuery { n_ctx, block_table: &table, prompt: false }];
        paged_attention(&pool, geo, &queries, &q, &k, &v, 0.5, &mut AttnScratch::new(), &mut out);
        for h in 0..4 {
            let want = reference(&q[h * 8..h * 8 + 8], &ks[h / 2], &vs[h / 2], 0.5);
            for d in 0..8 {
                assert!((out[h * 8 + d] - want[d]).abs() < 2e-3, "head {h} dim {d}: {} vs {}", out[h * 8 + d], want[d]);
            }
        }
        // Causality and batch invariance: the same query inside a batch gives the same bits.
        let queries2 = [AttnQuery { n_ctx: 3, block_table: &table, prompt: false }, AttnQuery { n_ctx, block_table: &table, prompt: false }];
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
        let long: Vec<AttnQuery> = (1..=30).map(|n| AttnQuery { n_ctx: n, block_table: &table, prompt: false }).collect();
        let q = vec![0.1f32; long.len() * 16];
        let mut out = vec![0.0; q.len()];
        paged_attention(&pool, geo, &long, &q, &k, &v, 0.3, &mut scratch, &mut out);
        let short = [AttnQuery { n_ctx: 3, block_table: &table, prompt: false }];
        let mut after = vec![0.0; 16];
        paged_attention(&pool, geo, &short, &q[..16], &k, &v, 0.3, &mut scratch, &mut after);
        let mut fresh = vec![0.0; 16];
        paged_attention(&pool, geo, &short, &q[..16], &k, &v, 0.3, &mut AttnScratch::new(), &mut fresh);
        assert_eq!(after, fresh);
    }

    /// llama.cpp's `ggml_vec_dot_f16` written out literally (AVX-512 build), on f16 values.
    fn ggml_vec_dot(x: &[f32], y: &[f32]) -> f32 {
        let n = x.len();
        let np = n & !63;
        let mut sums = [[0.0f32; 16]; 4];
        for i in (0..np).step_by(64) {
            for j in 0..4 {
                for l in 0..16 {
                    sums[j][l] = x[i + 16 * j + l].mul_add(y[i + 16 * j + l], sums[j][l]);
                }
            }
        }
        let mut sumf = 0.0f64;
        if np > 0 {
            let [mut s0, mut s1, s2, s3] = sums;
            for l in 0..16 {
                s0[l] += s2[l];
                s1[l] += s3[l];
            }
            for l in 0..16 {
                s0[l] += s1[l];
            }
            sums[0] = s0;
            sumf = ggml_math::reduce16(&sums[0]) as f64;
        }
        for i in np..n {
            sumf += (x[i] * y[i]) as f64;
        }
        sumf as f32
    }

    /// llama.cpp's decode attention for one head, step by step: KQ, masked soft_max over the
    /// padded KV length, f16 probabilities, KQV. Unused cache cells hold zeros.
    fn ggml_reference(q: &[f32], ks: &[Vec<f32>], vs: &[Vec<f32>], scale: f32, n_ctx: usize) -> Vec<f32> {
        let hd = q.len();
        let n_kv = n_ctx.next_multiple_of(32);
        let qh: Vec<f32> = q.iter().map(|&x| round_f16(x)).collect();
        let zeros = vec![0.0f32; hd];
        let cell = |c: &'_ [Vec<f32>], pos: usize| if pos < n_ctx { c[pos].clone() } else { zeros.clone() };
        let mut w: Vec<f32> = (0..n_kv).map(|pos| ggml_vec_dot(&cell(ks, pos), &qh) * scale).collect();
        for x in &mut w[n_ctx..] {
            *x += f32::NEG_INFINITY;
        }
        let max = w.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut total = 0.0f64;
        for c in w.chunks_exact_mut(16) {
            for x in c.iter_mut() {
                *x = ggml_math::exp(*x - max);
            }
            total += ggml_math::reduce16((&*c).try_into().unwrap()) as f64;
        }
        let inv = (1.0 / total) as f32;
        let p: Vec<f32> = w.iter().map(|&e| round_f16(e * inv)).collect();
        (0..hd)
            .map(|d| {
                let col: Vec<f32> = (0..n_kv).map(|pos| cell(vs, pos)[d]).collect();
                ggml_vec_dot(&col, &p)
            })
            .collect()
    }

    struct Case {
        geo: KvGeometry,
        k: Vec<f16>,
        v: Vec<f16>,
        table: Vec<u32>,
        /// [kv_head][pos] -> head_dim values
        ks: Vec<Vec<Vec<f32>>>,
        vs: Vec<Vec<Vec<f32>>>,
    }

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (*seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    fn make_case(head_dim: usize, max_ctx: usize, amp: f32, seed: &mut u64) -> Case {
        let geo = KvGeometry { block_size: 16, n_heads: 4, n_kv_heads: 2, head_dim };
        let n_blocks = max_ctx.div_ceil(16);
        assert!((n_blocks + 1) % 7 != 0, "the scattered table below needs n_blocks + 1 coprime with 7");
        // Blocks in a scattered order, with one unused block in the pool.
        let table: Vec<u32> = (0..n_blocks as u32).map(|b| (b * 7 + 3) % (n_blocks as u32 + 1)).collect();
        let mut k = vec![f16::ZERO; (n_blocks + 1) * geo.block_elems()];
        let mut v = k.clone();
        let mut ks = vec![vec![vec![0.0f32; head_dim]; max_ctx]; 2];
        let mut vs = ks.clone();
        for pos in 0..max_ctx {
            let off = geo.slot_offset(&table, pos);
            for h in 0..2 {
                for d in 0..head_dim {
                    let (a, b) = (f16::from_f32(lcg(seed) * amp), f16::from_f32(lcg(seed)));
                    k[off + h * head_dim + d] = a;
                    v[off + h * head_dim + d] = b;
                    ks[h][pos][d] = a.to_f32();
                    vs[h][pos][d] = b.to_f32();
                }
            }
        }
        Case { geo, k, v, table, ks, vs }
    }

    /// Runs `paged_attention_with` for queries with the given context lengths.
    fn run(case: &Case, avx2: bool, threads: usize, n_ctxs: &[usize], q: &[f32], scale: f32) -> Vec<f32> {
        run_as(false, case, avx2, threads, n_ctxs, q, scale)
    }

    fn run_as(prompt: bool, case: &Case, avx2: bool, threads: usize, n_ctxs: &[usize], q: &[f32], scale: f32) -> Vec<f32> {
        let queries: Vec<AttnQuery> = n_ctxs.iter().map(|&n| AttnQuery { n_ctx: n, block_table: &case.table, prompt }).collect();
        let mut out = vec![0.0; q.len()];
        paged_attention_with(avx2, &ThreadPool::new(threads), case.geo, &queries, q, &case.k, &case.v, scale, &mut AttnScratch::new(), &mut out);
        out
    }

    fn bits(x: &[f32]) -> Vec<u32> {
        x.iter().map(|v| v.to_bits()).collect()
    }

    #[test]
    fn bit_exact_with_ggml_and_avx2_matches_scalar() {
        let avx2 = ggml_math::use_avx2();
        let mut seed = 42u64;
        for head_dim in [64, 128, 80, 8] {
            let max_ctx = 300;
            for amp in [0.3f32, 3.0, 30.0] {
                let case = make_case(head_dim, max_ctx, amp, &mut seed);
                let n_ctxs: Vec<usize> = [1, 2, 15, 16, 17, 31, 32, 33, 47, 48, 63, 64, 65, 95, 96, 97, 127, 128, 129, 160, 191, 192, 193, 255, 256, 257, 300]
                    .into_iter()
                    .collect();
                let q_dim = 4 * head_dim;
                let q: Vec<f32> = (0..n_ctxs.len() * q_dim).map(|_| lcg(&mut seed) * amp).collect();
                let scale = 1.0 / (head_dim as f32).sqrt();
                let scalar = run(&case, false, 2, &n_ctxs, &q, scale);
                for (t, &n_ctx) in n_ctxs.iter().enumerate() {
                    for h in 0..4 {
                        let qo = t * q_dim + h * head_dim;
                        let want = ggml_reference(&q[qo..qo + head_dim], &case.ks[h / 2], &case.vs[h / 2], scale, n_ctx);
                        assert_eq!(bits(&scalar[qo..qo + head_dim]), bits(&want), "hd {head_dim} amp {amp} n_ctx {n_ctx} head {h}");
                    }
                }
                if avx2 && head_dim % 8 == 0 {
                    let fast = run(&case, true, 2, &n_ctxs, &q, scale);
                    assert_eq!(bits(&fast), bits(&scalar), "hd {head_dim} amp {amp}");
                    // A run of consecutive tokens and a different thread count: same bits.
                    let run_ctxs: Vec<usize> = (250..=300).collect();
                    let q2: Vec<f32> = (0..run_ctxs.len() * q_dim).map(|_| lcg(&mut seed) * amp).collect();
                    let a = run(&case, true, 3, &run_ctxs, &q2, scale);
                    let b = run(&case, false, 1, &run_ctxs, &q2, scale);
                    assert_eq!(bits(&a), bits(&b), "run, hd {head_dim} amp {amp}");
                    let last = run(&case, true, 1, &[300], &q2[50 * q_dim..], scale);
                    assert_eq!(bits(&a[50 * q_dim..]), bits(&last), "batch invariance, hd {head_dim}");
                }
            }
        }
    }

    /// llama.cpp's batched (tinyBLAS) arithmetic written out: every dot is one 16-lane FMA
    /// accumulator over the elements in order, then `_mm512_reduce_add_ps`.
    fn tiny_reference(q: &[f32], ks: &[Vec<f32>], vs: &[Vec<f32>], scale: f32, n_ctx: usize) -> Vec<f32> {
        let tiny = |x: &[f32], y: &[f32]| {
            let mut lanes = [0.0f32; 16];
            for (i, (&a, &b)) in x.iter().zip(y).enumerate() {
                lanes[i % 16] = a.mul_add(b, lanes[i % 16]);
            }
            ggml_math::reduce16(&lanes)
        };
        let qh: Vec<f32> = q.iter().map(|&x| round_f16(x)).collect();
        let w: Vec<f32> = (0..n_ctx).map(|pos| tiny(&ks[pos], &qh) * scale).collect();
        let max = w.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut e: Vec<f32> = w.iter().map(|&x| ggml_math::exp(x - max)).collect();
        e.resize(n_ctx.next_multiple_of(16), 0.0);
        let total: f64 = e.chunks_exact(16).map(|c| ggml_math::reduce16(c.try_into().unwrap()) as f64).sum();
        let inv = (1.0 / total) as f32;
        let p: Vec<f32> = e[..n_ctx].iter().map(|&x| round_f16(x * inv)).collect();
        (0..q.len()).map(|d| tiny(&(0..n_ctx).map(|pos| vs[pos][d]).collect::<Vec<_>>(), &p)).collect()
    }

    #[test]
    fn prompt_tokens_follow_llama_cpp_batched_arithmetic() {
        let avx2 = ggml_math::use_avx2();
        let mut seed = 7u64;
        for head_dim in [64, 128, 80] {
            let case = make_case(head_dim, 300, 3.0, &mut seed);
            let n_ctxs: Vec<usize> = [1, 2, 15, 16, 17, 31, 32, 33, 63, 64, 65, 129, 300].into_iter().collect();
            let q_dim = 4 * head_dim;
            let q: Vec<f32> = (0..n_ctxs.len() * q_dim).map(|_| lcg(&mut seed) * 3.0).collect();
            let scale = 1.0 / (head_dim as f32).sqrt();
            let scalar = run_as(true, &case, false, 2, &n_ctxs, &q, scale);
            let single = run_as(false, &case, false, 2, &n_ctxs, &q, scale);
            if head_dim % 16 != 0 {
                // tinyBLAS needs head_dim % 16 == 0; llama.cpp falls back to the single-token dots.
                assert_eq!(bits(&scalar), bits(&single), "hd {head_dim}");
                continue;
            }
            assert_ne!(bits(&scalar), bits(&single), "hd {head_dim}: the two arithmetics should differ somewhere");
            for (t, &n_ctx) in n_ctxs.iter().enumerate() {
                for h in 0..4 {
                    let qo = t * q_dim + h * head_dim;
                    let want = tiny_reference(&q[qo..qo + head_dim], &case.ks[h / 2], &case.vs[h / 2], scale, n_ctx);
                    assert_eq!(bits(&scalar[qo..qo + head_dim]), bits(&want), "hd {head_dim} n_ctx {n_ctx} head {h}");
                }
            }
            if avx2 {
                let fast = run_as(true, &case, true, 3, &n_ctxs, &q, scale);
                assert_eq!(bits(&fast), bits(&scalar), "hd {head_dim}");
            }
        }
    }
}
