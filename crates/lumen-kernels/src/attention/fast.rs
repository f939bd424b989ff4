//! The fast arithmetic ([`AttnArith::Fast`](super::AttnArith::Fast)): plain f32 attention in
//! whatever order is cheapest, computed one cache block at a time straight from the f16 cache.
//!
//! Why a second arithmetic: reproducing llama.cpp's order (see the module docs) means 64
//! accumulator rows per head reduced per dimension, f64 tails, and the whole context widened
//! to f32 before any arithmetic starts — first a pass that only waits on memory, then one that
//! only computes. Here a task walks its cache blocks once for keys and once for values and
//! asks for the block two ahead meanwhile, so the cache's memory traffic overlaps the
//! arithmetic.
//!
//! The cache's keys are transposed for it ([`KeyLayout::Columns`](super::KeyLayout)): a
//! block's keys of one head are `head_dim` rows of 16-slot vectors, so a tile of query heads
//! (the heads of one token that share the KV head) scores 16 positions with one f16 load and
//! conversion per dimension and one multiply-add per query, and needs no horizontal sums.
//! Values keep their rows: one conversion of a value row feeds every query of the tile. Keys
//! and values are read straight from the cache, never widened into a copy (measured with
//! `cargo bench -p lumen-kernels --bench attention`, 32 sequences, 192 positions, 30
//! layers: the widening design took 8.1 ms, 5.8-7.0 ms even with the cache in L3).
//!
//! The roundings llama.cpp applies are kept (the query and the probabilities rounded to f16,
//! as its f16 matrix products need), so results differ from the llama.cpp arithmetic only in
//! summation order (f32 throughout, no f64 tails). Each query's result depends only on its own
//! query, context length and cache contents: its scores are sums over the head dimension in
//! one fixed order, its weighted sum visits the positions in order, whichever tile it shares,
//! so results stay batch- and thread-invariant.

use half::f16;

use super::{AttnQuery, KvGeometry, Task};
use crate::cpu::CpuLevel;
use crate::ggml_math;

/// Cache blocks asked for ahead of the one being computed on.
const PREFETCH_BLOCKS: usize = 2;

/// Most query heads in one tile (the heads of a token that share a KV head, four at a time):
/// their accumulators and the block's converted values fit in the registers.
const TILE: usize = 4;

/// The queries of one tile: `qn` (1..=[`TILE`]) of `hd` values each, `step` values apart
/// (in the rounded queries and in the accumulators alike): `hd` for the heads of one token
/// that share a KV head, `heads * hd` for one head of consecutive tokens.
#[derive(Clone, Copy)]
struct QTile {
    qn: usize,
    hd: usize,
    step: usize,
}

/// Scratch of one task: `scores` one row of [`score_stride`] per query, `acc` one `head_dim`
/// result per query, `qh` one `head_dim` query rounded to f16 per query.
pub(super) struct FastBufs<'a> {
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

/// Score row length for contexts up to `max_ctx`: whole blocks (the key pass scores all of a
/// block's slots; those past a query's context are overwritten or never read), and whole
/// 8-lane chunks (the padding past the context holds -inf, whose exp is 0).
pub(super) fn score_stride(max_ctx: usize, block_size: usize) -> usize {
    max_ctx.next_multiple_of(block_size).next_multiple_of(8)
}

/// The inner steps, per instruction set.
trait Ops {
    /// For the `qn` queries of `tile.hd` values in `q`, `tile.step` apart: `out[i * stride +
    /// s] = dot(query i, key of slot s) * scale` for the `bs` slots of one block's keys `k`
    /// (`[head_dim][bs]`), asking for `pf`'s lines along the way.
    ///
    /// # Safety
    /// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
    /// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
    /// pointer argument must be valid for the reads and writes described above.
    #[allow(clippy::too_many_arguments)]
    unsafe fn scores(
        k: &[f16],
        bs: usize,
        q: &[f32],
        tile: QTile,
        scale: f32,
        out: &mut [f32],
        stride: usize,
        pf: Ahead,
    );
    /// `s[i] = exp(s[i] - max(s))`, returning the sum (`s.len() % 8 == 0`).
    ///
    /// # Safety
    /// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
    /// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
    /// pointer argument must be valid for the reads and writes described above.
    unsafe fn exp_sum(s: &mut [f32]) -> f32;
    /// `s[i] = round_f16(s[i] * factor)` (`s.len() % 8 == 0`).
    ///
    /// # Safety
    /// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
    /// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
    /// pointer argument must be valid for the reads and writes described above.
    unsafe fn round_f16(s: &mut [f32], factor: f32);
    /// For the `tile.qn` queries: `acc_i += sum_{s < rows} p[i * stride + s] * v row s`, where
    /// `v` holds `rows` rows of `tile.hd` values and query `i`'s accumulators start at
    /// `acc[i * tile.step]`, asking for `pf`'s lines along the way.
    ///
    /// # Safety
    /// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
    /// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
    /// pointer argument must be valid for the reads and writes described above.
    unsafe fn accumulate(
        p: &[f32],
        stride: usize,
        rows: usize,
        v: &[f16],
        tile: QTile,
        acc: &mut [f32],
        pf: Ahead,
    );
    /// Asks for all of `pf`'s lines.
    ///
    /// # Safety
    /// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
    /// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
    /// pointer argument must be valid for the reads and writes described above.
    unsafe fn prefetch(pf: Ahead);
}

/// Runs `task`, leaving query `j`'s result in `bufs.acc[j * head_dim..]` (query `j` as
/// [`Task::query_offset`] numbers them).
/// From [`CpuLevel::Avx512`] up the steps are 16-lane registers, from [`CpuLevel::Avx2`] up
/// pairs of 8-lane ones (same operations lane by lane, so the same bits).
pub(super) fn run_task(level: CpuLevel, inputs: &Inputs<'_>, task: Task, bufs: FastBufs<'_>) {
    #[cfg(target_arch = "x86_64")]
    if inputs.geo.head_dim.is_multiple_of(16) && inputs.geo.block_size.is_multiple_of(16) {
        if level >= CpuLevel::Avx512 {
            // SAFETY: the caller uses a level only when the CPU supports it; both SIMD
            // versions need 16-slot blocks and rows of a multiple of 16 values, checked above.
            return unsafe { x86::run_avx512(inputs, task, bufs) };
        }
        if level >= CpuLevel::Avx2 {
            // SAFETY: as for the AVX-512 version.
            return unsafe { x86::run_avx2(inputs, task, bufs) };
        }
    }
    let _ = level;
    // SAFETY: the portable operations have no preconditions beyond the slice shapes, which
    // `run` checks.
    unsafe { run::<Scalar>(inputs, task, bufs) }
}

/// The task's loop, shared by every instruction set: keys block by block into scores, the
/// softmax's exponentials, values block by block into the accumulators, each block's work
/// done tile by tile (a token's query heads of one KV head, [`TILE`] at a time).
///
/// # Safety
/// `O`'s operations must be supported by the CPU.
#[inline(always)]
unsafe fn run<O: Ops>(inputs: &Inputs<'_>, task: Task, bufs: FastBufs<'_>) {
    // SAFETY: the caller guarantees that the CPU supports `O`'s operations; every slice handed to them is sized by the assertion and the block arithmetic below.
    unsafe {
        let Inputs {
            geo,
            queries,
            q,
            k_layer,
            v_layer,
            scale,
        } = *inputs;
        let (hd, bs) = (geo.head_dim, geo.block_size);
        let group = geo.n_heads / geo.n_kv_heads;
        let heads = task.n_kv * group;
        let tokens = task.end - task.first;
        let table = queries[task.first].block_table;
        let max_ctx = queries[task.end - 1].n_ctx;
        let stride = score_stride(max_ctx, bs);
        let nq = tokens * heads;
        let FastBufs { scores, acc, qh } = bufs;
        assert!(
            scores.len() >= nq * stride && acc.len() >= nq * hd && qh.len() >= nq * hd,
            "fast attention: scratch too small"
        );
        for j in 0..nq {
            let off = task.query_offset(j, geo);
            qh[j * hd..(j + 1) * hd].copy_from_slice(&q[off..off + hd]);
            O::round_f16(&mut qh[j * hd..(j + 1) * hd], 1.0);
        }
        let n_blocks = max_ctx.div_ceil(bs);
        // The task's KV heads of block `b` are one contiguous piece from `start(b)`, `piece`
        // values per head, keys and values alike.
        let piece = bs * hd;
        let start = |b: usize| table[b] as usize * geo.block_elems() + task.kv_head * piece;
        // One stream of blocks, keys then values: while block step `s` computes, step
        // `s + PREFETCH_BLOCKS` is asked for, spread over the kernels' iterations rather than
        // all at once (a burst fills the core's miss queue, stalls, and leaves nothing in flight
        // while the arithmetic runs: spreading it took 32-sequence decode's attention from 6.6 to
        // 5.1 ms). `ahead(step)`: the step's first byte and its length in cache lines.
        let ahead = |step: usize| -> Option<(*const u8, usize)> {
            let layer = if step < n_blocks {
                k_layer
            } else if step < 2 * n_blocks {
                v_layer
            } else {
                return None;
            };
            Some((
                layer[start(step % n_blocks)..].as_ptr().cast(),
                (task.n_kv * piece * 2).div_ceil(64),
            ))
        };
        for step in 0..PREFETCH_BLOCKS {
            O::prefetch(Ahead::slice(ahead(step), 0, 1));
        }

        // Without grouped heads (one query head per KV head), a tile is one head of up to
        // four consecutive tokens, so that each key and value converted from f16 serves four
        // queries instead of one (a 512-token prompt at depth 4096 of a 32-head model spent
        // most of its time converting). Every query's arithmetic is the same in either tile.
        let by_tokens = group == 1;
        let n_ctx = |t: usize| queries[task.first + t].n_ctx;
        for b in 0..n_blocks {
            let next = ahead(b + PREFETCH_BLOCKS);
            for (t0, tn) in tiles(tokens, by_tokens) {
                for hl in 0..task.n_kv {
                    // A tile's tokens past this block score it too (slots no one reads).
                    if (t0..t0 + tn).all(|t| n_ctx(t) <= b * bs) {
                        continue;
                    }
                    let at = start(b) + hl * piece;
                    let k = &k_layer[at..at + piece];
                    for g in (0..group).step_by(TILE) {
                        let j0 = t0 * heads + hl * group + g;
                        let tile = q_tile(tn, TILE.min(group - g), hd, heads, by_tokens);
                        let pf = if t0 + tn == tokens && g == 0 {
                            Ahead::slice(next, hl, task.n_kv)
                        } else {
                            Ahead::NONE
                        };
                        O::scores(
                            k,
                            bs,
                            &qh[j0 * hd..],
                            tile,
                            scale,
                            &mut scores[j0 * stride + b * bs..],
                            tile.step / hd * stride,
                            pf,
                        );
                    }
                }
            }
        }
        for j in 0..nq {
            let n_ctx = queries[task.first + j / heads].n_ctx;
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
            for (t0, tn) in tiles(tokens, by_tokens) {
                for hl in 0..task.n_kv {
                    let pf = if t0 + tn == tokens {
                        Ahead::slice(next, hl, task.n_kv)
                    } else {
                        Ahead::NONE
                    };
                    let at = start(b) + hl * piece;
                    // Only the slots inside the context: past it the cache may hold anything,
                    // so a tile of tokens shares a block only where it is whole for all of them.
                    if tn > 1 && (t0..t0 + tn).all(|t| n_ctx(t) >= (b + 1) * bs) {
                        let j0 = t0 * heads + hl;
                        let tile = q_tile(tn, 1, hd, heads, true);
                        O::accumulate(
                            &scores[j0 * stride + b * bs..],
                            heads * stride,
                            bs,
                            &v_layer[at..at + piece],
                            tile,
                            &mut acc[j0 * hd..],
                            pf,
                        );
                        continue;
                    }
                    for t in t0..t0 + tn {
                        if n_ctx(t) <= b * bs {
                            continue;
                        }
                        let rows = bs.min(n_ctx(t) - b * bs);
                        let v = &v_layer[at..at + rows * hd];
                        for g in (0..group).step_by(TILE) {
                            let j0 = t * heads + hl * group + g;
                            let tile = q_tile(1, TILE.min(group - g), hd, heads, false);
                            let pf = if t + 1 == tokens && g == 0 {
                                pf
                            } else {
                                Ahead::NONE
                            };
                            O::accumulate(
                                &scores[j0 * stride + b * bs..],
                                stride,
                                rows,
                                v,
                                tile,
                                &mut acc[j0 * hd..],
                                pf,
                            );
                        }
                    }
                }
            }
        }
    }
}

/// The task's tokens in tiles `(first, count)`: up to [`TILE`] at a time `by_tokens`,
/// otherwise one by one.
fn tiles(tokens: usize, by_tokens: bool) -> impl Iterator<Item = (usize, usize)> {
    let n = if by_tokens { TILE } else { 1 };
    (0..tokens)
        .step_by(n)
        .map(move |t0| (t0, n.min(tokens - t0)))
}

/// A tile of `tn` tokens' one head (`by_tokens`: queries `heads * hd` apart) or of one token's
/// `gn` heads (`hd` apart).
fn q_tile(tn: usize, gn: usize, hd: usize, heads: usize, by_tokens: bool) -> QTile {
    if by_tokens {
        QTile {
            qn: tn,
            hd,
            step: heads * hd,
        }
    } else {
        QTile {
            qn: gn,
            hd,
            step: hd,
        }
    }
}

/// Cache lines to ask for while a kernel computes, spread over its iterations.
#[derive(Clone, Copy)]
struct Ahead {
    ptr: *const u8,
    lines: usize,
}

impl Ahead {
    const NONE: Ahead = Ahead {
        ptr: std::ptr::null(),
        lines: 0,
    };

    /// Slice `part` of `parts` of a step's lines (none if there is no step).
    fn slice(step: Option<(*const u8, usize)>, part: usize, parts: usize) -> Ahead {
        let Some((ptr, lines)) = step else {
            return Ahead::NONE;
        };
        let (a, b) = (lines * part / parts, lines * (part + 1) / parts);
        Ahead {
            ptr: ptr.wrapping_add(a * 64),
            lines: b - a,
        }
    }

    /// Lines per iteration to cover all of them in `iters` iterations.
    fn per(self, iters: usize) -> usize {
        self.lines.div_ceil(iters.max(1))
    }
}

/// Portable Rust, the reference for the others.
struct Scalar;

impl Ops for Scalar {
    unsafe fn scores(
        k: &[f16],
        bs: usize,
        q: &[f32],
        tile: QTile,
        scale: f32,
        out: &mut [f32],
        stride: usize,
        _pf: Ahead,
    ) {
        for i in 0..tile.qn {
            let q = &q[i * tile.step..i * tile.step + tile.hd];
            for s in 0..bs {
                let dot: f32 = q
                    .iter()
                    .enumerate()
                    .map(|(d, &x)| x * k[d * bs + s].to_f32())
                    .sum();
                out[i * stride + s] = dot * scale;
            }
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

    unsafe fn accumulate(
        p: &[f32],
        stride: usize,
        rows: usize,
        v: &[f16],
        tile: QTile,
        acc: &mut [f32],
        _pf: Ahead,
    ) {
        for i in 0..tile.qn {
            let acc = &mut acc[i * tile.step..i * tile.step + tile.hd];
            for (s, row) in v.chunks_exact(tile.hd).take(rows).enumerate() {
                let w = p[i * stride + s];
                for (a, x) in acc.iter_mut().zip(row) {
                    *a += w * x.to_f32();
                }
            }
        }
    }

    unsafe fn round_f16(s: &mut [f32], factor: f32) {
        for x in s.iter_mut() {
            *x = crate::blocks::round_f16(*x * factor);
        }
    }

    unsafe fn prefetch(_pf: Ahead) {}
}

#[cfg(target_arch = "x86_64")]
mod x86;
