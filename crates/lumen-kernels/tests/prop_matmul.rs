//! Property tests: every matmul kernel (every weight format, the ggml and the packed layout,
//! every CPU level this machine supports) against the scalar reference, over random shapes:
//! batches past the 64-row activation chunk, odd row counts (ragged tiles and groups), and
//! rows of an odd number of blocks (k tails).

mod common;

use common::{matmul_at, random_f32, random_weights, reference, rng};
use lumen_kernels::{pack, packs, CpuLevel, MatRef, ThreadPool, WeightFormat, ALL_FORMATS};
use proptest::prelude::*;

/// One random matmul problem.
#[derive(Clone, Debug)]
struct Case {
    format: WeightFormat,
    packed: bool,
    rows: usize,
    cols: usize,
    m: usize,
    seed: u64,
}

fn case() -> impl Strategy<Value = Case> {
    (
        0..ALL_FORMATS.len(),
        any::<bool>(),
        1usize..=41,
        0usize..=4,
        1usize..=150,
        any::<u64>(),
        1usize..=70,
    )
        .prop_map(|(fi, packed, rows, blocks, m, seed, float_cols)| {
            let format = ALL_FORMATS[fi];
            // Odd numbers of blocks (1, 3, .., 9), so every tile meets a row that ends mid-way
            // through its unrolled steps; the K-quants stop at 3 super-blocks (768 values).
            let cols = match format.block_elems() {
                1 => float_cols,
                256 => 256 * (2 * blocks.min(1) + 1),
                be => be * (2 * blocks + 1),
            };
            Case {
                format,
                packed: packed && packs(format),
                rows,
                cols,
                m,
                seed,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn every_kernel_matches_the_scalar_reference(c in case()) {
        let pool = ThreadPool::new(2);
        let mut r = rng(c.seed);
        let data = random_weights(&mut r, c.format, c.rows, c.cols);
        let packed;
        let w = if c.packed {
            packed = pack(c.format, c.rows, c.cols, &data).unwrap();
            MatRef::packed(c.format, c.rows, c.cols, &packed).unwrap()
        } else {
            MatRef::new(c.format, c.rows, c.cols, &data).unwrap()
        };
        let x = random_f32(&mut r, c.m * c.cols, 1.5);
        let scalar = matmul_at(&pool, CpuLevel::Scalar, &w, &x, c.m);
        prop_assert!(scalar.iter().all(|v| v.is_finite()));
        // Float weights: the SIMD lanes are summed with FMA, so within rounding of the
        // scalar code (the tolerance of tests/matmul.rs); quantized ones: the same bits.
        let want = if c.format.is_quantized() { Vec::new() } else { reference(&w, &x, c.m) };
        for level in CpuLevel::supported().into_iter().skip(1) {
            let got = matmul_at(&pool, level, &w, &x, c.m);
            for (k, (&s, &g)) in scalar.iter().zip(&got).enumerate() {
                if c.format.is_quantized() {
                    prop_assert_eq!(s.to_bits(), g.to_bits(), "{} {:?} out[{}]: scalar {} vs {}", level, c, k, s, g);
                } else {
                    let tol = 1e-5 * want[k].1 + 1e-7;
                    prop_assert!((s - g).abs() as f64 <= tol, "{} {:?} out[{}]: scalar {} vs {}", level, c, k, s, g);
                }
            }
        }
    }
}
