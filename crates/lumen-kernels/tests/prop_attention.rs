//! Property tests: attention at every CPU level this machine supports against the scalar
//! code, over random head counts, head sizes, block sizes, context lengths and scattered
//! block tables, for both arithmetics and both kinds of query token.

use half::f16;
use lumen_kernels::attention::{paged_attention_at, AttnArith, AttnQuery, AttnScratch, KvGeometry};
use lumen_kernels::{CpuLevel, ThreadPool};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// One random attention call.
#[derive(Clone, Debug)]
struct Case {
    fast: bool,
    block_size: usize,
    n_kv_heads: usize,
    group: usize,
    head_dim: usize,
    /// Per query: (context length, prompt token).
    queries: Vec<(usize, bool)>,
    amp: f32,
    seed: u64,
}

fn case() -> impl Strategy<Value = Case> {
    let head_dims = prop::sample::select(vec![8usize, 12, 16, 24, 32, 48, 64, 80, 128]);
    let block_sizes = prop::sample::select(vec![8usize, 16, 32]);
    let amps = prop::sample::select(vec![0.3f32, 3.0, 30.0]);
    (
        any::<bool>(),
        block_sizes,
        1usize..=3,
        1usize..=3,
        head_dims,
        prop::collection::vec((1usize..=200, any::<bool>()), 1..=5),
        amps,
        any::<u64>(),
    )
        .prop_map(
            |(fast, block_size, n_kv_heads, group, head_dim, queries, amp, seed)| Case {
                fast,
                block_size,
                n_kv_heads,
                group,
                head_dim,
                queries,
                amp,
                seed,
            },
        )
}

/// Runs the case at `level`.
fn run(c: &Case, level: CpuLevel) -> Vec<f32> {
    let arith = if c.fast {
        AttnArith::Fast
    } else {
        AttnArith::LlamaCpp
    };
    let geo = KvGeometry {
        block_size: c.block_size,
        n_heads: c.n_kv_heads * c.group,
        n_kv_heads: c.n_kv_heads,
        head_dim: c.head_dim,
        keys: arith.key_layout(),
    };
    let mut r = StdRng::seed_from_u64(c.seed);
    // Each query gets its own sequence, whose blocks are scattered through one shared pool.
    let max_ctx = c.queries.iter().map(|q| q.0).max().unwrap_or(1);
    let per_seq = max_ctx.div_ceil(c.block_size);
    let n_blocks = per_seq * c.queries.len() + 1;
    let mut ids: Vec<u32> = (0..n_blocks as u32).collect();
    ids.shuffle(&mut r);
    let tables: Vec<Vec<u32>> = ids
        .chunks(per_seq)
        .take(c.queries.len())
        .map(|t| t.to_vec())
        .collect();
    let k: Vec<f16> = (0..n_blocks * geo.block_elems())
        .map(|_| f16::from_f32(r.gen_range(-1.0f32..1.0) * c.amp))
        .collect();
    let v: Vec<f16> = (0..k.len())
        .map(|_| f16::from_f32(r.gen_range(-1.0f32..1.0)))
        .collect();
    let queries: Vec<AttnQuery> = c
        .queries
        .iter()
        .zip(&tables)
        .map(|(&(n_ctx, prompt), t)| AttnQuery {
            n_ctx,
            block_table: t,
            prompt,
        })
        .collect();
    let q_dim = geo.n_heads * geo.head_dim;
    let q: Vec<f32> = (0..queries.len() * q_dim)
        .map(|_| r.gen_range(-1.0f32..1.0) * c.amp)
        .collect();
    let mut out = vec![f32::NAN; q.len()];
    let scale = 1.0 / (c.head_dim as f32).sqrt();
    paged_attention_at(
        level,
        &ThreadPool::new(2),
        arith,
        geo,
        &queries,
        &q,
        &k,
        &v,
        scale,
        &mut AttnScratch::new(),
        &mut out,
    );
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn every_level_matches_the_scalar_code(c in case()) {
        let scalar = run(&c, CpuLevel::Scalar);
        prop_assert!(scalar.iter().all(|x| x.is_finite()));
        let mut simd: Option<Vec<u32>> = None;
        for level in CpuLevel::supported().into_iter().skip(1) {
            let got = run(&c, level);
            if c.fast {
                // Values lie in [-1, 1]: f32 sums in another order, and a probability near an
                // f16 rounding boundary rounded the other way (tests of fast_tests.rs).
                for (k, (&s, &g)) in scalar.iter().zip(&got).enumerate() {
                    prop_assert!((s - g).abs() < 1e-3, "{} {:?} out[{}]: scalar {} vs {}", level, c, k, s, g);
                }
                // The SIMD levels do the same operations lane by lane.
                let b: Vec<u32> = got.iter().map(|x| x.to_bits()).collect();
                prop_assert_eq!(simd.get_or_insert_with(|| b.clone()), &b, "{} {:?}", level, c);
            } else {
                for (k, (&s, &g)) in scalar.iter().zip(&got).enumerate() {
                    prop_assert_eq!(s.to_bits(), g.to_bits(), "{} {:?} out[{}]: scalar {} vs {}", level, c, k, s, g);
                }
            }
        }
    }
}
