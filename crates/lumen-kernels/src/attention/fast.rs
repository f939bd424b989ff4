//! The fast arithmetic ([`AttnArith::Fast`](super::AttnArith::Fast)): plain f32 attention in
//! whatever order is cheapest, computed one cache block at a time straight from the f16 cache.
//!
//! Why a second arithmetic: reproducing llama.cpp's order (see the module docs) means 64
//! accumulator rows per head reduced per dimension, f64 tails, and the whole context widened
//! to f32 before any arithmetic starts — first a pass that only waits on memory, then one that
//! only computes. Here a task walks its cache blocks once for keys and once for values, widens
//! one block into a buffer that stays in L1, lets every query of the task use it, and asks for
//! the block two ahead meanwhile, so the cache's memory traffic overlaps the arithmetic.
//!
//! The roundings llama.cpp applies are kept (the query and the probabilities rounded to f16,
//! as its f16 matrix products need), so results differ from the llama.cpp arithmetic only in
//! summation order (f32 throughout, no f64 tails). Each query's result depends only on its own
//! query, context length and cache contents: its scores are reduced position by position in
//! one fixed order, its weighted sum visits the blocks in order, so results stay batch- and
//! thread-invariant.

use half::f16;
use half::slice::HalfFloatSliceExt;

use super::{AttnQuery, KvGeometry, Task};
use crate::ggml_math;

/// Cache blocks asked for ahead of the one being computed on.
const PREFETCH_BLOCKS: usize = 2;

/// Scratch of one task: `kv` holds one widened block (`block_size * head_dim`), `scores` one
/// row of [`score_stride`] per query, `acc` one `head_dim` result per query, `qh` one
/// `head_dim` query rounded to f16 per query.
pub(super) struct FastBufs<'a> {
    pub kv: &'a mut [f32],
    pub scores: &'a mut [f32],
    pub acc: &'a mut [f32],
    pub qh: &'a mut [f32],
}

/// What every task of one attention call reads.
#[derive(Clone, Copy)]
pub(super) struct Inputs<'a> {
    pub geo: &'a KvGeometry,
    pub queries: &'a [AttnQuery<'a>],
    /// Queries, `queries.len() x n_heads * head_dim`.
    pub q: &'a [f32],
    pub k_layer: &'a [f16],
    pub v_layer: &'a [f16],
    pub scale: f32,
}

/// Score row length for contexts up to `max_ctx`: padded so that whole 8-lane chunks can be
/// read (the padding holds -inf, whose exp is 0).
pub(super) fn score_stride(max_ctx: usize) -> usize {
    max_ctx.next_multiple_of(8)
}

/// The inner steps, per instruction set.
trait Ops {
    /// f16 rows to f32 (exact).
    unsafe fn widen(src: &[f16], dst: &mut [f32]);
    /// `out[r] = dot(q, k row r) * scale` for the `out.len()` rows of `k` (`q.len()` each).
    unsafe fn scores(q: &[f32], k: &[f32], scale: f32, out: &mut [f32]);
    /// `s[i] = exp(s[i] - max(s))`, returning the sum (`s.len() % 8 == 0`).
    unsafe fn exp_sum(s: &mut [f32]) -> f32;
    /// `s[i] = round_f16(s[i] * factor)` (`s.len() % 8 == 0`).
    unsafe fn round_f16(s: &mut [f32], factor: f32);
    /// `acc += sum_r p[r] * v row r`, rows of `acc.len()`.
    unsafe fn accumulate(p: &[f32], v: &[f32], acc: &mut [f32]);
    /// Hint that slice `part` of `parts` of the `lines` cache lines from `ptr` is needed soon.
    unsafe fn prefetch(ptr: *const u8, lines: usize, part: usize, parts: usize);
}

/// Runs `task`, leaving query `j`'s result in `bufs.acc[j * head_dim..]` (query `j` as
/// [`Task::query_offset`] numbers them).
pub(super) fn run_task(avx2: bool, inputs: &Inputs<'_>, task: Task, bufs: FastBufs<'_>) {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: `avx2` is true only when the CPU has AVX2, FMA and F16C and head_dim % 8 == 0
        // (checked by the caller).
        return unsafe {
            match inputs.geo.head_dim {
                64 => x86::run::<64>(inputs, task, bufs),
                128 => x86::run::<128>(inputs, task, bufs),
                _ => x86::run::<0>(inputs, task, bufs),
            }
        };
    }
    let _ = avx2;
    // SAFETY: the portable operations have no preconditions beyond the slice shapes, which
    // `run` checks.
    unsafe { run::<Scalar>(inputs, task, bufs) }
}

/// The task's loop, shared by every instruction set: keys block by block into scores, the
/// softmax's exponentials, values block by block into the accumulators. A block's rows of the
/// task's heads are widened once into `bufs.kv` (head `h` at `h * block_size * head_dim`) and
/// read there by every query that sees them.
///
/// # Safety
/// `O`'s operations must be supported by the CPU.
#[inline(always)]
unsafe fn run<O: Ops>(inputs: &Inputs<'_>, task: Task, bufs: FastBufs<'_>) {
    let Inputs { geo, queries, q, k_layer, v_layer, scale } = *inputs;
    let (hd, bs) = (geo.head_dim, geo.block_size);
    let group = geo.n_heads / geo.n_kv_heads;
    let heads = task.n_kv * group;
    let table = queries[task.first].block_table;
    let max_ctx = queries[task.end - 1].n_ctx;
    let stride = score_stride(max_ctx);
    let nq = (task.end - task.first) * heads;
    let FastBufs { kv, scores, acc, qh } = bufs;
    assert!(
        kv.len() >= task.n_kv * bs * hd && scores.len() >= nq * stride && acc.len() >= nq * hd && qh.len() >= nq * hd,
        "fast attention: scratch too small"
    );
    // Query j: its context length and where its KV head's rows sit in `kv`.
    let query = |j: usize| (queries[task.first + j / heads].n_ctx, (j % heads) / group * bs * hd);
    for j in 0..nq {
        let off = task.query_offset(j, geo);
        qh[j * hd..(j + 1) * hd].copy_from_slice(&q[off..off + hd]);
        O::round_f16(&mut qh[j * hd..(j + 1) * hd], 1.0);
    }
    let n_blocks = max_ctx.div_ceil(bs);
    // Block `b`'s rows of the task's heads: `rows` rows per head, heads `bs * hd` apart.
    let rows_of = |b: usize| bs.min(max_ctx - b * bs);
    let start = |b: usize| geo.head_offset(table, b * bs, task.kv_head);
    // One stream of blocks, keys then values: while step `s` computes, step
    // `s + PREFETCH_BLOCKS` is asked for, a slice after each query rather than all at once (a
    // burst fills the core's miss queue, stalls, and leaves nothing in flight while the
    // arithmetic runs). `ahead(step)`: the step's first byte and its length in cache lines.
    let ahead = |step: usize| -> Option<(*const u8, usize)> {
        let layer = if step < n_blocks { k_layer } else if step < 2 * n_blocks { v_layer } else { return None };
        let b = step % n_blocks;
        let values = (task.n_kv - 1) * bs * hd + rows_of(b) * hd;
        Some((layer[start(b)..].as_ptr().cast(), (values * 2).div_ceil(64)))
    };
    for step in 0..PREFETCH_BLOCKS {
        if let Some((p, lines)) = ahead(step) {
            O::prefetch(p, lines, 0, 1);
        }
    }

    for b in 0..n_blocks {
        let next = ahead(b + PREFETCH_BLOCKS);
        widen::<O>(k_layer, start(b), rows_of(b) * hd, task.n_kv, bs * hd, kv);
        for j in 0..nq {
            if let Some((p, lines)) = next {
                O::prefetch(p, lines, j, nq);
            }
            let (n_ctx, at) = query(j);
            if n_ctx > b * bs {
                let rows = bs.min(n_ctx - b * bs);
                let row = &mut scores[j * stride + b * bs..j * stride + b * bs + rows];
                O::scores(&qh[j * hd..(j + 1) * hd], &kv[at..at + rows * hd], scale, row);
            }
        }
    }
    for j in 0..nq {
        let n_ctx = query(j).0;
        let row = &mut scores[j * stride..(j + 1) * stride];
        let n8 = n_ctx.next_multiple_of(8);
        row[n_ctx..n8].fill(f32::NEG_INFINITY);
        let sum = O::exp_sum(&mut row[..n8]);
        // Probabilities in place (the padding becomes 0).
        O::round_f16(&mut row[..n8], 1.0 / sum);
        acc[j * hd..(j + 1) * hd].fill(0.0);
    }
    for b in 0..n_blocks {
        let next = ahead(n_blocks + b + PREFETCH_BLOCKS);
        widen::<O>(v_layer, start(b), rows_of(b) * hd, task.n_kv, bs * hd, kv);
        for j in 0..nq {
            if let Some((p, lines)) = next {
                O::prefetch(p, lines, j, nq);
            }
            let (n_ctx, at) = query(j);
            if n_ctx > b * bs {
                let rows = bs.min(n_ctx - b * bs);
                let p = &scores[j * stride + b * bs..j * stride + b * bs + rows];
                O::accumulate(p, &kv[at..at + rows * hd], &mut acc[j * hd..(j + 1) * hd]);
            }
        }
    }
}

/// Widens `n_kv` pieces of `len` values, `step` apart from `start` in `layer`, into `kv` at
/// the same spacing. (A function, not a closure: closures do not inherit target features.)
#[inline(always)]
unsafe fn widen<O: Ops>(layer: &[f16], start: usize, len: usize, n_kv: usize, step: usize, kv: &mut [f32]) {
    for h in 0..n_kv {
        let src = start + h * step;
        O::widen(&layer[src..src + len], &mut kv[h * step..h * step + len]);
    }
}

/// Portable Rust, the reference for the others.
struct Scalar;

impl Ops for Scalar {
    unsafe fn widen(src: &[f16], dst: &mut [f32]) {
        src.convert_to_f32_slice(dst);
    }

    unsafe fn scores(q: &[f32], k: &[f32], scale: f32, out: &mut [f32]) {
        for (s, row) in out.iter_mut().zip(k.chunks_exact(q.len())) {
            *s = q.iter().zip(row).map(|(a, b)| a * b).sum::<f32>() * scale;
        }
    }

    unsafe fn exp_sum(s: &mut [f32]) -> f32 {
        let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for x in s.iter_mut() {
            *x = ggml_math::exp(*x - max);
            sum += *x;
        }
        sum
    }

    unsafe fn accumulate(p: &[f32], v: &[f32], acc: &mut [f32]) {
        for (&w, row) in p.iter().zip(v.chunks_exact(acc.len())) {
            for (a, x) in acc.iter_mut().zip(row) {
                *a += w * x;
            }
        }
    }

    unsafe fn round_f16(s: &mut [f32], factor: f32) {
        for x in s.iter_mut() {
            *x = crate::blocks::round_f16(*x * factor);
        }
    }

    unsafe fn prefetch(_ptr: *const u8, _lines: usize, _part: usize, _parts: usize) {}
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use half::f16;

    use super::{FastBufs, Inputs, Ops, Task};
    use crate::attention::avx2::hsum8x8;
    use crate::ggml_math::x86::{exp8, hsum8};

    /// [`super::run`] with AVX2, FMA and F16C; `HD` is the head dimension when it is known at
    /// compile time (loops over it unroll, the query stays in registers), else 0.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C, and `geo.head_dim % 8 == 0`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn run<const HD: usize>(inputs: &Inputs<'_>, task: Task, bufs: FastBufs<'_>) {
        assert!(inputs.geo.head_dim.is_multiple_of(8) && (HD == 0 || HD == inputs.geo.head_dim));
        super::run::<Avx2<HD>>(inputs, task, bufs)
    }

    struct Avx2<const HD: usize>;

    impl<const HD: usize> Avx2<HD> {
        /// The eight-lane partial sums of `q · k` (`n` values, `n % 8 == 0`).
        #[inline(always)]
        unsafe fn lanes(q: *const f32, k: *const f32, n: usize) -> __m256 {
            let n = if HD > 0 { HD } else { n };
            let (mut a, mut b) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let mut i = 0;
            while i + 16 <= n {
                a = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(i)), _mm256_loadu_ps(k.add(i)), a);
                b = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(i + 8)), _mm256_loadu_ps(k.add(i + 8)), b);
                i += 16;
            }
            if i < n {
                a = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(i)), _mm256_loadu_ps(k.add(i)), a);
            }
            _mm256_add_ps(a, b)
        }
    }

    impl<const HD: usize> Ops for Avx2<HD> {
        #[inline(always)]
        unsafe fn widen(src: &[f16], dst: &mut [f32]) {
            crate::attention::avx2::widen(src, dst)
        }

        #[inline(always)]
        unsafe fn scores(q: &[f32], k: &[f32], scale: f32, out: &mut [f32]) {
            let hd = q.len();
            assert!(k.len() >= out.len() * hd);
            let (qp, kp, op) = (q.as_ptr(), k.as_ptr(), out.as_mut_ptr());
            let scalev = _mm256_set1_ps(scale);
            let eights = out.len() & !7;
            for r in (0..eights).step_by(8) {
                // Loops, not closures, here and below: closures do not inherit target features.
                let mut lanes = [_mm256_setzero_ps(); 8];
                for (i, l) in lanes.iter_mut().enumerate() {
                    *l = Self::lanes(qp, kp.add((r + i) * hd), hd);
                }
                // Lane i of hsum8x8 is hsum8 of lanes[i]: the same sum as a lone row's below.
                _mm256_storeu_ps(op.add(r), _mm256_mul_ps(hsum8x8(lanes), scalev));
            }
            for r in eights..out.len() {
                *op.add(r) = hsum8(Self::lanes(qp, kp.add(r * hd), hd)) * scale;
            }
        }

        #[inline(always)]
        unsafe fn exp_sum(s: &mut [f32]) -> f32 {
            assert!(s.len().is_multiple_of(8));
            let p = s.as_mut_ptr();
            let mut maxv = _mm256_set1_ps(f32::NEG_INFINITY);
            for i in (0..s.len()).step_by(8) {
                maxv = _mm256_max_ps(maxv, _mm256_loadu_ps(p.add(i)));
            }
            let mut m = [0.0f32; 8];
            _mm256_storeu_ps(m.as_mut_ptr(), maxv);
            let maxv = _mm256_set1_ps(m.iter().copied().fold(f32::NEG_INFINITY, f32::max));
            let mut sum = _mm256_setzero_ps();
            for i in (0..s.len()).step_by(8) {
                let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), maxv));
                _mm256_storeu_ps(p.add(i), e);
                sum = _mm256_add_ps(sum, e);
            }
            hsum8(sum)
        }

        #[inline(always)]
        unsafe fn accumulate(p: &[f32], v: &[f32], acc: &mut [f32]) {
            let hd = acc.len();
            assert!(v.len() >= p.len() * hd && (HD == 0 || HD == hd));
            let (vp, ap) = (v.as_ptr(), acc.as_mut_ptr());
            // 64 dimensions (eight registers) at a time over all rows, then eight at a time.
            let mut d = 0;
            while d + 64 <= hd {
                let mut a = [_mm256_setzero_ps(); 8];
                for (k, x) in a.iter_mut().enumerate() {
                    *x = _mm256_loadu_ps(ap.add(d + 8 * k));
                }
                for (r, &w) in p.iter().enumerate() {
                    let wv = _mm256_set1_ps(w);
                    for (k, x) in a.iter_mut().enumerate() {
                        *x = _mm256_fmadd_ps(_mm256_loadu_ps(vp.add(r * hd + d + 8 * k)), wv, *x);
                    }
                }
                for (k, x) in a.iter().enumerate() {
                    _mm256_storeu_ps(ap.add(d + 8 * k), *x);
                }
                d += 64;
            }
            while d < hd {
                let mut a = _mm256_loadu_ps(ap.add(d));
                for (r, &w) in p.iter().enumerate() {
                    a = _mm256_fmadd_ps(_mm256_loadu_ps(vp.add(r * hd + d)), _mm256_set1_ps(w), a);
                }
                _mm256_storeu_ps(ap.add(d), a);
                d += 8;
            }
        }

        #[inline(always)]
        unsafe fn round_f16(s: &mut [f32], factor: f32) {
            assert!(s.len().is_multiple_of(8));
            let (p, f) = (s.as_mut_ptr(), _mm256_set1_ps(factor));
            for i in (0..s.len()).step_by(8) {
                let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_mul_ps(_mm256_loadu_ps(p.add(i)), f));
                _mm256_storeu_ps(p.add(i), _mm256_cvtph_ps(h));
            }
        }

        #[inline(always)]
        unsafe fn prefetch(ptr: *const u8, lines: usize, part: usize, parts: usize) {
            // The last line may run past the cache's end, where a prefetch is harmless;
            // `wrapping_add` keeps the address arithmetic defined there.
            for line in lines * part / parts..lines * (part + 1) / parts {
                _mm_prefetch::<_MM_HINT_T0>(ptr.wrapping_add(line * 64).cast());
            }
        }
    }
}
