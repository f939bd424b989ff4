//! Bidirectional multi-head self-attention over a ragged batch.
//!
//! The batch is the concatenation of its sequences' rows, so attention runs per (head,
//! sequence) over that sequence's own rows: no padding, no mask, and nothing one sequence does
//! can reach another's numbers. The work items are ordered head-major, which makes each item's
//! output a contiguous block of a head-major buffer (`[head][row][head_dim]`); consecutive
//! items are handed to each pool thread, so every thread owns one contiguous slice of that
//! buffer. A final pass transposes it back to the row-major `[row][hidden]` layout the output
//! projection needs.
//!
//! MPNet adds a relative-position bias to the scaled scores before the softmax, as
//! transformers does (`q kᵀ / √d + bias`); BERT passes none.

use std::ops::Range;

use lumen_kernels::{split_range, ThreadPool};

use super::mpnet::RelativeBias;
#[cfg(target_arch = "x86_64")]
use super::ops::dot_avx2;
use super::ops::{dot, exp_nonpos, par_chunks, par_rows, per_cpu};

/// Shapes shared by every attention call of one model.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Heads {
    pub(crate) n_heads: usize,
    pub(crate) head_dim: usize,
}

impl Heads {
    fn hidden(&self) -> usize {
        self.n_heads * self.head_dim
    }
}

/// Computes `ctx = softmax(q kᵀ / √d + bias) v` for every head of every sequence.
///
/// `q`, `k`, `v` and `ctx` are `rows × hidden`; `seqs` are the sequences' row ranges, in order
/// and covering all rows; `scratch` is a `rows × hidden` buffer that is overwritten; `bias`
/// is MPNet's relative-position bias (covering the longest sequence), `None` for BERT.
pub(crate) fn attention(
    pool: &ThreadPool,
    heads: Heads,
    seqs: &[Range<usize>],
    (q, k, v): (&[f32], &[f32], &[f32]),
    bias: Option<&RelativeBias>,
    scratch: &mut [f32],
    ctx: &mut [f32],
) {
    let Heads {
        n_heads,
        head_dim: d,
    } = heads;
    let hidden = heads.hidden();
    let rows = q.len() / hidden;
    let n_items = n_heads * seqs.len();
    // Start of item `i`'s output in the head-major buffer; `n_items` maps to the end.
    let item_start = |i: usize| -> usize {
        if i >= n_items {
            return n_heads * rows * d;
        }
        let (h, s) = (i / seqs.len(), i % seqs.len());
        (h * rows + seqs[s].start) * d
    };
    let parts = pool.n_threads().clamp(1, n_items.max(1));
    let item_ranges: Vec<Range<usize>> =
        (0..parts).map(|p| split_range(n_items, parts, p)).collect();
    let mut cuts = vec![0];
    cuts.extend(item_ranges.iter().map(|r| item_start(r.end)));
    let scale = 1.0 / (d as f32).sqrt();

    par_chunks(
        pool,
        &mut scratch[..n_heads * rows * d],
        &cuts,
        |p, chunk| {
            let items = item_ranges[p].clone();
            let base = item_start(items.start);
            let mut scores = Vec::new();
            for i in items {
                let (h, s) = (i / seqs.len(), i % seqs.len());
                let seq = seqs[s].clone();
                let off = item_start(i) - base;
                let out = &mut chunk[off..off + seq.len() * d];
                attend(
                    Head {
                        q,
                        k,
                        v,
                        hidden,
                        col: h * d,
                        d,
                        scale,
                        bias: bias.map(|b| (b, h)),
                    },
                    seq,
                    out,
                    &mut scores,
                );
            }
        },
    );

    let hm = &*scratch;
    par_rows(pool, ctx, hidden, |r, row| {
        for (h, dst) in row.chunks_exact_mut(d).enumerate() {
            let src = (h * rows + r) * d;
            dst.copy_from_slice(&hm[src..src + d]);
        }
    });
}

/// One head's view of the projections.
struct Head<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    hidden: usize,
    col: usize,
    d: usize,
    scale: f32,
    /// The relative-position bias and this head's index in it.
    bias: Option<(&'a RelativeBias, usize)>,
}

impl Head<'_> {
    fn row<'b>(&self, m: &'b [f32], r: usize) -> &'b [f32] {
        let at = r * self.hidden + self.col;
        &m[at..at + self.d]
    }
}

per_cpu! {
    /// Attention of one head over the rows `seq`, written to `out` (`seq.len() × d`).
    fn attend(head: Head<'_>, seq: Range<usize>, out: &mut [f32], scores: &mut Vec<f32>) {
        simd: attend_portable::<true>(head, seq, out, scores),
        portable: attend_portable::<false>(head, seq, out, scores),
    }
}

/// The attention of one head; `SIMD` (set only by callers compiled for AVX2 or more) takes
/// the scores from [`dot_avx2`], which gives [`dot`]'s bits.
#[inline(always)]
fn attend_portable<const SIMD: bool>(
    head: Head<'_>,
    seq: Range<usize>,
    out: &mut [f32],
    scores: &mut Vec<f32>,
) {
    let n = seq.len();
    scores.resize(n, 0.0);
    for (i, o) in out.chunks_exact_mut(head.d).enumerate() {
        let qi = head.row(head.q, seq.start + i);
        for (j, s) in scores.iter_mut().enumerate() {
            let kj = head.row(head.k, seq.start + j);
            #[cfg(target_arch = "x86_64")]
            let d = if SIMD {
                // SAFETY: SIMD is set only by callers compiled for AVX2 on a CPU with it.
                unsafe { dot_avx2(qi, kj) }
            } else {
                dot(qi, kj)
            };
            #[cfg(not(target_arch = "x86_64"))]
            let d = dot(qi, kj);
            *s = d * head.scale;
        }
        if let Some((bias, h)) = head.bias {
            for (s, &b) in scores.iter_mut().zip(bias.row(h, i, n)) {
                *s += b;
            }
        }
        let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
        let mut sum = 0.0f32;
        // Branch-free exp (every argument is ≤ 0), so this loop vectorizes; the sum stays
        // in order.
        for s in scores.iter_mut() {
            *s = exp_nonpos(*s - max);
        }
        for &s in scores.iter() {
            sum += s;
        }
        let inv = 1.0 / sum;
        o.fill(0.0);
        for (j, &s) in scores.iter().enumerate() {
            let p = s * inv;
            for (acc, &x) in o.iter_mut().zip(head.row(head.v, seq.start + j)) {
                *acc += p * x;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Straightforward reference: per sequence, per head, per query, in f64.
    fn naive(heads: Heads, seqs: &[Range<usize>], q: &[f32], k: &[f32], v: &[f32]) -> Vec<f32> {
        let hidden = heads.hidden();
        let d = heads.head_dim;
        let mut out = vec![0.0; q.len()];
        for seq in seqs {
            for h in 0..heads.n_heads {
                for i in seq.clone() {
                    let at = |m: &[f32], r: usize, c: usize| m[r * hidden + h * d + c] as f64;
                    let s: Vec<f64> = seq
                        .clone()
                        .map(|j| {
                            (0..d).map(|c| at(q, i, c) * at(k, j, c)).sum::<f64>()
                                / (d as f64).sqrt()
                        })
                        .collect();
                    let max = s.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for c in 0..d {
                        let val: f64 = seq.clone().zip(&e).map(|(j, w)| w / z * at(v, j, c)).sum();
                        out[i * hidden + h * d + c] = val as f32;
                    }
                }
            }
        }
        out
    }

    fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn matches_naive_and_is_split_invariant() {
        let heads = Heads {
            n_heads: 3,
            head_dim: 4,
        };
        let seqs = [0..1, 1..6, 6..9];
        let n = 9 * heads.hidden();
        let (q, k, v) = (rand_vec(n, 1), rand_vec(n, 2), rand_vec(n, 3));
        let want = naive(heads, &seqs, &q, &k, &v);
        let mut results = Vec::new();
        for threads in [1, 2, 5] {
            let pool = ThreadPool::new(threads);
            let (mut scratch, mut ctx) = (vec![0.0; n], vec![0.0; n]);
            attention(
                &pool,
                heads,
                &seqs,
                (&q, &k, &v),
                None,
                &mut scratch,
                &mut ctx,
            );
            for (a, b) in ctx.iter().zip(&want) {
                assert!((a - b).abs() < 1e-5, "{a} vs {b}");
            }
            results.push(ctx);
        }
        assert!(results.windows(2).all(|w| w[0] == w[1]));
        // A sequence alone gives the same bits as inside the batch.
        let pool = ThreadPool::new(2);
        let rows = heads.hidden()..6 * heads.hidden();
        let (mut scratch, mut ctx) = (vec![0.0; rows.len()], vec![0.0; rows.len()]);
        let (qs, ks, vs) = (&q[rows.clone()], &k[rows.clone()], &v[rows.clone()]);
        let alone = std::slice::from_ref(&(0..5));
        attention(
            &pool,
            heads,
            alone,
            (qs, ks, vs),
            None,
            &mut scratch,
            &mut ctx,
        );
        assert_eq!(ctx[..], results[0][rows]);
    }
}
