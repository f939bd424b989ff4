//! Attention against written-out references of llama.cpp's arithmetic, every CPU level
//! against scalar.

use super::*;
use crate::ggml_math;

/// Naive attention in f32 over contiguous K/V, the reference.
fn reference(q: &[f32], ks: &[Vec<f32>], vs: &[Vec<f32>], scale: f32) -> Vec<f32> {
    let scores: Vec<f32> = ks
        .iter()
        .map(|k| k.iter().zip(q).map(|(a, b)| a * b).sum::<f32>() * scale)
        .collect();
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
    let geo = KvGeometry {
        block_size: 4,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 8,
        keys: KeyLayout::Rows,
    };
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
        for kvh in 0..2 {
            let off = geo.head_offset(&table, pos, kvh);
            for d in 0..8 {
                let (a, b) = (f16::from_f32(rnd()), f16::from_f32(rnd()));
                k[off + d] = a;
                v[off + d] = b;
                ks[kvh][pos][d] = a.to_f32();
                vs[kvh][pos][d] = b.to_f32();
            }
        }
    }
    let q: Vec<f32> = (0..32).map(|_| f16::from_f32(rnd()).to_f32()).collect();
    let pool = ThreadPool::new(3);
    let mut out = vec![0.0; 32];
    let queries = [AttnQuery {
        n_ctx,
        block_table: &table,
        prompt: false,
    }];
    paged_attention(
        &pool,
        AttnArith::LlamaCpp,
        geo,
        &queries,
        &q,
        &k,
        &v,
        0.5,
        &mut AttnScratch::new(),
        &mut out,
    );
    for h in 0..4 {
        let want = reference(&q[h * 8..h * 8 + 8], &ks[h / 2], &vs[h / 2], 0.5);
        for d in 0..8 {
            assert!(
                (out[h * 8 + d] - want[d]).abs() < 2e-3,
                "head {h} dim {d}: {} vs {}",
                out[h * 8 + d],
                want[d]
            );
        }
    }
    // Causality and batch invariance: the same query inside a batch gives the same bits.
    let queries2 = [
        AttnQuery {
            n_ctx: 3,
            block_table: &table,
            prompt: false,
        },
        AttnQuery {
            n_ctx,
            block_table: &table,
            prompt: false,
        },
    ];
    let mut q2 = q.clone();
    q2.extend_from_slice(&q);
    let mut out2 = vec![0.0; 64];
    paged_attention(
        &ThreadPool::new(1),
        AttnArith::LlamaCpp,
        geo,
        &queries2,
        &q2,
        &k,
        &v,
        0.5,
        &mut AttnScratch::new(),
        &mut out2,
    );
    assert_eq!(&out2[32..], &out[..]);
}

#[test]
fn short_call_after_long_one_reuses_scratch() {
    // The scratch only grows; a later, shorter call must slice exactly what it needs.
    let geo = KvGeometry {
        block_size: 4,
        n_heads: 2,
        n_kv_heads: 1,
        head_dim: 8,
        keys: KeyLayout::Rows,
    };
    let k: Vec<f16> = (0..8 * geo.block_elems())
        .map(|i| f16::from_f32((i % 7) as f32 * 0.1))
        .collect();
    let v = k.clone();
    let table: Vec<u32> = (0..8).collect();
    let pool = ThreadPool::new(2);
    let mut scratch = AttnScratch::new();
    let long: Vec<AttnQuery> = (1..=30)
        .map(|n| AttnQuery {
            n_ctx: n,
            block_table: &table,
            prompt: false,
        })
        .collect();
    let q = vec![0.1f32; long.len() * 16];
    let mut out = vec![0.0; q.len()];
    paged_attention(
        &pool,
        AttnArith::LlamaCpp,
        geo,
        &long,
        &q,
        &k,
        &v,
        0.3,
        &mut scratch,
        &mut out,
    );
    let short = [AttnQuery {
        n_ctx: 3,
        block_table: &table,
        prompt: false,
    }];
    let mut after = vec![0.0; 16];
    paged_attention(
        &pool,
        AttnArith::LlamaCpp,
        geo,
        &short,
        &q[..16],
        &k,
        &v,
        0.3,
        &mut scratch,
        &mut after,
    );
    let mut fresh = vec![0.0; 16];
    paged_attention(
        &pool,
        AttnArith::LlamaCpp,
        geo,
        &short,
        &q[..16],
        &k,
        &v,
        0.3,
        &mut AttnScratch::new(),
        &mut fresh,
    );
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
fn ggml_reference(
    q: &[f32],
    ks: &[Vec<f32>],
    vs: &[Vec<f32>],
    scale: f32,
    n_ctx: usize,
) -> Vec<f32> {
    let hd = q.len();
    let n_kv = n_ctx.next_multiple_of(32);
    let qh: Vec<f32> = q.iter().map(|&x| round_f16(x)).collect();
    let zeros = vec![0.0f32; hd];
    let cell = |c: &'_ [Vec<f32>], pos: usize| {
        if pos < n_ctx {
            c[pos].clone()
        } else {
            zeros.clone()
        }
    };
    let mut w: Vec<f32> = (0..n_kv)
        .map(|pos| ggml_vec_dot(&cell(ks, pos), &qh) * scale)
        .collect();
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

pub(super) struct Case {
    pub(super) geo: KvGeometry,
    pub(super) k: Vec<f16>,
    pub(super) v: Vec<f16>,
    pub(super) table: Vec<u32>,
    /// [kv_head][pos] -> head_dim values
    pub(super) ks: Vec<Vec<Vec<f32>>>,
    pub(super) vs: Vec<Vec<Vec<f32>>>,
}

pub(super) fn lcg(seed: &mut u64) -> f32 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (*seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
}

pub(super) fn make_case(
    head_dim: usize,
    max_ctx: usize,
    amp: f32,
    keys: KeyLayout,
    seed: &mut u64,
) -> Case {
    let geo = KvGeometry {
        block_size: 16,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim,
        keys,
    };
    let n_blocks = max_ctx.div_ceil(16);
    assert!(
        !(n_blocks + 1).is_multiple_of(7),
        "the scattered table below needs n_blocks + 1 coprime with 7"
    );
    // Blocks in a scattered order, with one unused block in the pool.
    let table: Vec<u32> = (0..n_blocks as u32)
        .map(|b| (b * 7 + 3) % (n_blocks as u32 + 1))
        .collect();
    // Slots nobody wrote (past max_ctx, and the unused block) hold NaN: no result may read them.
    let mut k = vec![f16::NAN; (n_blocks + 1) * geo.block_elems()];
    let mut v = k.clone();
    let mut ks = vec![vec![vec![0.0f32; head_dim]; max_ctx]; 2];
    let mut vs = ks.clone();
    for pos in 0..max_ctx {
        for h in 0..2 {
            let off = geo.head_offset(&table, pos, h);
            for d in 0..head_dim {
                let (a, b) = (f16::from_f32(lcg(seed) * amp), f16::from_f32(lcg(seed)));
                k[geo.key_offset(&table, pos, h, d)] = a;
                v[off + d] = b;
                ks[h][pos][d] = a.to_f32();
                vs[h][pos][d] = b.to_f32();
            }
        }
    }
    Case {
        geo,
        k,
        v,
        table,
        ks,
        vs,
    }
}

/// Runs `paged_attention_at` for queries with the given context lengths.
fn run(
    case: &Case,
    level: CpuLevel,
    threads: usize,
    n_ctxs: &[usize],
    q: &[f32],
    scale: f32,
) -> Vec<f32> {
    run_with(
        AttnArith::LlamaCpp,
        false,
        case,
        level,
        threads,
        n_ctxs,
        q,
        scale,
    )
}

/// Runs `paged_attention_at` with arithmetic `arith`, every query a prompt token or every
/// query a generated one (the output starts as NaN, so an unwritten value shows).
#[allow(clippy::too_many_arguments)]
pub(super) fn run_with(
    arith: AttnArith,
    prompt: bool,
    case: &Case,
    level: CpuLevel,
    threads: usize,
    n_ctxs: &[usize],
    q: &[f32],
    scale: f32,
) -> Vec<f32> {
    let queries: Vec<AttnQuery> = n_ctxs
        .iter()
        .map(|&n| AttnQuery {
            n_ctx: n,
            block_table: &case.table,
            prompt,
        })
        .collect();
    let mut out = vec![f32::NAN; q.len()];
    paged_attention_at(
        level,
        &ThreadPool::new(threads),
        arith,
        case.geo,
        &queries,
        q,
        &case.k,
        &case.v,
        scale,
        &mut AttnScratch::new(),
        &mut out,
    );
    out
}

pub(super) fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn bit_exact_with_ggml_and_every_level_matches_scalar() {
    let mut seed = 42u64;
    for head_dim in [64, 128, 80, 24, 8] {
        let max_ctx = 300;
        for amp in [0.3f32, 3.0, 30.0] {
            let case = make_case(head_dim, max_ctx, amp, KeyLayout::Rows, &mut seed);
            let n_ctxs: Vec<usize> = [
                1, 2, 15, 16, 17, 31, 32, 33, 47, 48, 63, 64, 65, 95, 96, 97, 127, 128, 129, 160,
                191, 192, 193, 255, 256, 257, 300,
            ]
            .into_iter()
            .collect();
            let q_dim = 4 * head_dim;
            let q: Vec<f32> = (0..n_ctxs.len() * q_dim)
                .map(|_| lcg(&mut seed) * amp)
                .collect();
            let scale = 1.0 / (head_dim as f32).sqrt();
            let scalar = run(&case, CpuLevel::Scalar, 2, &n_ctxs, &q, scale);
            for (t, &n_ctx) in n_ctxs.iter().enumerate() {
                for h in 0..4 {
                    let qo = t * q_dim + h * head_dim;
                    let want = ggml_reference(
                        &q[qo..qo + head_dim],
                        &case.ks[h / 2],
                        &case.vs[h / 2],
                        scale,
                        n_ctx,
                    );
                    assert_eq!(
                        bits(&scalar[qo..qo + head_dim]),
                        bits(&want),
                        "hd {head_dim} amp {amp} n_ctx {n_ctx} head {h}"
                    );
                }
            }
            // A run of consecutive tokens and other thread counts: same bits at every level.
            let run_ctxs: Vec<usize> = (250..=300).collect();
            let q2: Vec<f32> = (0..run_ctxs.len() * q_dim)
                .map(|_| lcg(&mut seed) * amp)
                .collect();
            let b = run(&case, CpuLevel::Scalar, 1, &run_ctxs, &q2, scale);
            for level in levels(head_dim)
                .into_iter()
                .filter(|l| *l > CpuLevel::Scalar)
            {
                let fast = run(&case, level, 2, &n_ctxs, &q, scale);
                assert_eq!(
                    bits(&fast),
                    bits(&scalar),
                    "{level} hd {head_dim} amp {amp}"
                );
                let a = run(&case, level, 3, &run_ctxs, &q2, scale);
                assert_eq!(bits(&a), bits(&b), "{level} run, hd {head_dim} amp {amp}");
                let last = run(&case, level, 1, &[300], &q2[50 * q_dim..], scale);
                assert_eq!(
                    bits(&a[50 * q_dim..]),
                    bits(&last),
                    "{level} batch invariance, hd {head_dim}"
                );
            }
        }
    }
}

/// llama.cpp's batched (tinyBLAS) arithmetic written out: every dot is one 16-lane FMA
/// accumulator over the elements in order, then `_mm512_reduce_add_ps`.
fn tiny_reference(
    q: &[f32],
    ks: &[Vec<f32>],
    vs: &[Vec<f32>],
    scale: f32,
    n_ctx: usize,
) -> Vec<f32> {
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
    let total: f64 = e
        .chunks_exact(16)
        .map(|c| ggml_math::reduce16(c.try_into().unwrap()) as f64)
        .sum();
    let inv = (1.0 / total) as f32;
    let p: Vec<f32> = e[..n_ctx].iter().map(|&x| round_f16(x * inv)).collect();
    (0..q.len())
        .map(|d| tiny(&(0..n_ctx).map(|pos| vs[pos][d]).collect::<Vec<_>>(), &p))
        .collect()
}

#[test]
fn prompt_tokens_follow_llama_cpp_batched_arithmetic() {
    let mut seed = 7u64;
    for head_dim in [64, 128, 80] {
        let case = make_case(head_dim, 300, 3.0, KeyLayout::Rows, &mut seed);
        let n_ctxs: Vec<usize> = [1, 2, 15, 16, 17, 31, 32, 33, 63, 64, 65, 129, 300]
            .into_iter()
            .collect();
        let q_dim = 4 * head_dim;
        let q: Vec<f32> = (0..n_ctxs.len() * q_dim)
            .map(|_| lcg(&mut seed) * 3.0)
            .collect();
        let scale = 1.0 / (head_dim as f32).sqrt();
        let scalar = run_with(
            AttnArith::LlamaCpp,
            true,
            &case,
            CpuLevel::Scalar,
            2,
            &n_ctxs,
            &q,
            scale,
        );
        let single = run_with(
            AttnArith::LlamaCpp,
            false,
            &case,
            CpuLevel::Scalar,
            2,
            &n_ctxs,
            &q,
            scale,
        );
        if head_dim % 16 != 0 {
            // tinyBLAS needs head_dim % 16 == 0; llama.cpp falls back to the single-token dots.
            assert_eq!(bits(&scalar), bits(&single), "hd {head_dim}");
            continue;
        }
        assert_ne!(
            bits(&scalar),
            bits(&single),
            "hd {head_dim}: the two arithmetics should differ somewhere"
        );
        for (t, &n_ctx) in n_ctxs.iter().enumerate() {
            for h in 0..4 {
                let qo = t * q_dim + h * head_dim;
                let want = tiny_reference(
                    &q[qo..qo + head_dim],
                    &case.ks[h / 2],
                    &case.vs[h / 2],
                    scale,
                    n_ctx,
                );
                assert_eq!(
                    bits(&scalar[qo..qo + head_dim]),
                    bits(&want),
                    "hd {head_dim} n_ctx {n_ctx} head {h}"
                );
            }
        }
        for level in levels(head_dim)
            .into_iter()
            .filter(|l| *l > CpuLevel::Scalar)
        {
            let fast = run_with(
                AttnArith::LlamaCpp,
                true,
                &case,
                level,
                3,
                &n_ctxs,
                &q,
                scale,
            );
            assert_eq!(bits(&fast), bits(&scalar), "{level} hd {head_dim}");
        }
    }
}
