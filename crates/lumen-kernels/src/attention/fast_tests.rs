//! The fast arithmetic against an f64 reference, and its invariances: every (token, head)
//! gets the same bits whatever else shares the call, however the work is split.

use super::tests::{bits, lcg, make_case, run_with};
use super::*;

/// Attention for one head in f64, straight from the definition, with llama.cpp's two
/// roundings: the query and the probabilities to f16.
fn reference(q: &[f32], ks: &[Vec<f32>], vs: &[Vec<f32>], scale: f32, n_ctx: usize) -> Vec<f64> {
    let qh: Vec<f64> = q.iter().map(|&x| round_f16(x) as f64).collect();
    let s: Vec<f64> = ks[..n_ctx]
        .iter()
        .map(|k| k.iter().zip(&qh).map(|(&a, &b)| a as f64 * b).sum::<f64>() * scale as f64)
        .collect();
    let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    let p: Vec<f64> = e
        .iter()
        .map(|x| round_f16((x / sum) as f32) as f64)
        .collect();
    (0..q.len())
        .map(|d| p.iter().zip(vs).map(|(p, v)| p * v[d] as f64).sum::<f64>())
        .collect()
}

#[test]
fn fast_matches_f64_reference() {
    let mut seed = 7u64;
    for head_dim in [64, 128, 80, 8, 12] {
        for amp in [0.3f32, 3.0, 30.0] {
            let case = make_case(head_dim, 300, amp, KeyLayout::Columns, &mut seed);
            // Lengths around the 16-slot blocks and the 8-position score groups; not
            // consecutive, so that each is a run of its own.
            let n_ctxs = [1usize, 7, 8, 9, 15, 17, 33, 100, 191, 256, 300];
            let q_dim = 4 * head_dim;
            let q: Vec<f32> = (0..n_ctxs.len() * q_dim)
                .map(|_| lcg(&mut seed) * amp)
                .collect();
            let scale = 1.0 / (head_dim as f32).sqrt();
            for level in levels(head_dim) {
                let got = run_with(AttnArith::Fast, false, &case, level, 2, &n_ctxs, &q, scale);
                for (t, &n_ctx) in n_ctxs.iter().enumerate() {
                    for h in 0..4 {
                        let qo = t * q_dim + h * head_dim;
                        let want = reference(
                            &q[qo..qo + head_dim],
                            &case.ks[h / 2],
                            &case.vs[h / 2],
                            scale,
                            n_ctx,
                        );
                        for (d, (&g, &w)) in got[qo..qo + head_dim].iter().zip(&want).enumerate() {
                            // Values lie in [-1, 1]. Apart from f32 sums (~1e-6 here), a
                            // probability near an f16 rounding boundary may round the other
                            // way: at most 2^-11 of it.
                            assert!((g as f64 - w).abs() < 5e-4, "{level} hd {head_dim} amp {amp} n_ctx {n_ctx} head {h} dim {d}: {g} vs {w}");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn fast_results_do_not_depend_on_the_batch_or_the_split() {
    let mut seed = 11u64;
    for head_dim in [64, 80] {
        let case = make_case(head_dim, 300, 3.0, KeyLayout::Columns, &mut seed);
        let q_dim = 4 * head_dim;
        let scale = 0.125;
        // Consecutive tokens (runs of up to 16 share a task) and, separately, many one-token
        // runs (enough to give each task all KV heads); each token alone gets tasks per head.
        let prompt_like: Vec<usize> = (250..=300).collect();
        let decode_like: Vec<usize> = (1..=40).map(|i| i * 7).collect();
        for n_ctxs in [prompt_like, decode_like] {
            let q: Vec<f32> = (0..n_ctxs.len() * q_dim)
                .map(|_| lcg(&mut seed) * 3.0)
                .collect();
            let mut simd_bits = None;
            for level in levels(head_dim) {
                let together = run_with(AttnArith::Fast, true, &case, level, 2, &n_ctxs, &q, scale);
                assert!(together.iter().all(|x| x.is_finite()));
                assert_eq!(
                    bits(&together),
                    bits(&run_with(
                        AttnArith::Fast,
                        false,
                        &case,
                        level,
                        3,
                        &n_ctxs,
                        &q,
                        scale
                    )),
                    "threads / prompt flag"
                );
                for (t, &n_ctx) in n_ctxs.iter().enumerate() {
                    let qt = &q[t * q_dim..(t + 1) * q_dim];
                    let alone =
                        run_with(AttnArith::Fast, false, &case, level, 2, &[n_ctx], qt, scale);
                    assert_eq!(
                        bits(&together[t * q_dim..(t + 1) * q_dim]),
                        bits(&alone),
                        "{level} hd {head_dim} n_ctx {n_ctx}"
                    );
                }
                // 256- and 512-bit registers do the same operations lane by lane.
                if level != CpuLevel::Scalar {
                    let b = bits(&together);
                    assert_eq!(
                        simd_bits.get_or_insert_with(|| b.clone()),
                        &b,
                        "{level} differs from the other SIMD path"
                    );
                }
            }
        }
    }
}

#[test]
fn fast_plan_gives_whole_tasks_only_when_there_are_runs_enough() {
    let table = [0u32; 4];
    let one = |n_ctx| AttnQuery {
        n_ctx,
        block_table: &table,
        prompt: false,
    };
    let mut s = AttnScratch::new();
    // Three separate runs for two threads: per-head tasks keep both busy.
    s.plan(&[one(3), one(9), one(20)], 3, true, 2);
    assert_eq!(s.tasks.len(), 9);
    assert!(s.tasks.iter().all(|t| t.n_kv == 1));
    // Four runs: one task per run, all heads.
    s.plan(&[one(3), one(9), one(20), one(40)], 3, true, 2);
    assert_eq!(s.tasks.len(), 4);
    assert!(s.tasks.iter().all(|t| t.n_kv == 3 && t.kv_head == 0));
    // The llama.cpp arithmetic always works per head.
    s.plan(&[one(3), one(9), one(20), one(40)], 3, false, 2);
    assert_eq!(s.tasks.len(), 12);
}

/// Without grouped heads (SmolLM2-1.7B, Llama 2) a prompt's consecutive tokens share tiles of
/// one head: each token still gets exactly the bits it gets alone, at every level, matches
/// the f64 reference, and never reads the NaN slots past any context.
#[test]
fn fast_tiles_of_tokens_give_each_token_its_own_bits() {
    let mut seed = 23u64;
    for head_dim in [64, 80] {
        let mut case = make_case(head_dim, 300, 3.0, KeyLayout::Columns, &mut seed);
        case.geo.n_heads = case.geo.n_kv_heads;
        let heads = case.geo.n_heads;
        let q_dim = heads * head_dim;
        let scale = 0.125;
        // Runs crossing block edges at different offsets, and a run shorter than a tile.
        for n_ctxs in [
            (250..=300).collect::<Vec<_>>(),
            (13..=35).collect(),
            vec![40, 41],
        ] {
            let q: Vec<f32> = (0..n_ctxs.len() * q_dim)
                .map(|_| lcg(&mut seed) * 3.0)
                .collect();
            for level in levels(head_dim) {
                let together = run_with(AttnArith::Fast, true, &case, level, 2, &n_ctxs, &q, scale);
                for (t, &n_ctx) in n_ctxs.iter().enumerate() {
                    let qt = &q[t * q_dim..(t + 1) * q_dim];
                    let alone =
                        run_with(AttnArith::Fast, false, &case, level, 1, &[n_ctx], qt, scale);
                    let got = &together[t * q_dim..(t + 1) * q_dim];
                    assert_eq!(
                        bits(got),
                        bits(&alone),
                        "{level} hd {head_dim} n_ctx {n_ctx}"
                    );
                    for h in 0..heads {
                        let qh = &qt[h * head_dim..(h + 1) * head_dim];
                        let want = reference(qh, &case.ks[h], &case.vs[h], scale, n_ctx);
                        for (g, w) in got[h * head_dim..].iter().zip(&want) {
                            assert!(
                                (*g as f64 - w).abs() < 5e-4,
                                "{level} n_ctx {n_ctx}: {g} vs {w}"
                            );
                        }
                    }
                }
            }
        }
    }
}
