//! Matmul against a naive reference, SIMD against scalar, and batch invariance.

mod common;

use common::{matmul_at, random_f32, random_weights, reference, rng};
use lumen_kernels::{
    matmul, matmul_many, CpuLevel, MatRef, MatmulScratch, ThreadPool, WeightFormat, ALL_FORMATS,
};

/// Column counts every format can take (256 is the K-quant block).
const COLS: usize = 512;

fn levels() -> Vec<CpuLevel> {
    CpuLevel::supported()
}

#[test]
fn matmul_matches_naive_reference() {
    let pool = ThreadPool::new(2);
    for (fi, &format) in ALL_FORMATS.iter().enumerate() {
        for level in levels() {
            let mut r = rng(100 + fi as u64);
            let (rows, m) = (37, 5);
            let data = random_weights(&mut r, format, rows, COLS);
            let w = MatRef::new(format, rows, COLS, &data).unwrap();
            let x = random_f32(&mut r, m * COLS, 2.0);
            let got = matmul_at(&pool, level, &w, &x, m);
            let want = reference(&w, &x, m);
            // Q4_1's min term uses the f16-rounded block sum `s`, hence a loose-ish bound.
            let tol = if format == WeightFormat::Q4_1 {
                2e-3
            } else {
                1e-4
            };
            for (k, (&g, &(v, a))) in got.iter().zip(&want).enumerate() {
                let err = (g as f64 - v).abs();
                assert!(
                    err <= tol * a + 1e-6,
                    "{format} {level:?} out[{k}]: got {g}, want {v} (sum|wx| {a})"
                );
            }
        }
    }
}

#[test]
fn every_level_matches_scalar() {
    let pool = ThreadPool::new(2);
    for (fi, &format) in ALL_FORMATS.iter().enumerate() {
        for &(rows, m) in &[(1, 1), (8, 1), (19, 3), (64, 4), (33, 9), (16, 2)] {
            let mut r = rng(200 + fi as u64 * 31 + rows as u64);
            let data = random_weights(&mut r, format, rows, COLS);
            let w = MatRef::new(format, rows, COLS, &data).unwrap();
            let x = random_f32(&mut r, m * COLS, 1.0);
            let s = matmul_at(&pool, CpuLevel::Scalar, &w, &x, m);
            for level in levels() {
                let v = matmul_at(&pool, level, &w, &x, m);
                if format.is_quantized() {
                    for k in 0..s.len() {
                        assert_eq!(
                            s[k].to_bits(),
                            v[k].to_bits(),
                            "{format} {level} {rows}x{m} out[{k}]: scalar {} simd {}",
                            s[k],
                            v[k]
                        );
                    }
                } else {
                    let want = reference(&w, &x, m);
                    for k in 0..s.len() {
                        let tol = 1e-5 * want[k].1 + 1e-7;
                        assert!(
                            (s[k] - v[k]).abs() as f64 <= tol,
                            "{format} {level} {rows}x{m} out[{k}]: scalar {} simd {}",
                            s[k],
                            v[k]
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn float_formats_take_unaligned_cols() {
    let pool = ThreadPool::new(2);
    for format in [WeightFormat::F32, WeightFormat::F16, WeightFormat::BF16] {
        for level in levels() {
            let mut r = rng(7);
            let (rows, cols, m) = (11, 45, 3);
            let data = random_weights(&mut r, format, rows, cols);
            let w = MatRef::new(format, rows, cols, &data).unwrap();
            let x = random_f32(&mut r, m * cols, 1.0);
            let got = matmul_at(&pool, level, &w, &x, m);
            for (k, (&g, &(v, a))) in got.iter().zip(&reference(&w, &x, m)).enumerate() {
                assert!(
                    (g as f64 - v).abs() <= 1e-5 * a + 1e-7,
                    "{format} {level:?} out[{k}]"
                );
            }
        }
    }
}

#[test]
fn batch_invariance() {
    let pools: Vec<ThreadPool> = (1..=3).map(ThreadPool::new).collect();
    for (fi, &format) in ALL_FORMATS.iter().enumerate() {
        for level in levels() {
            let mut r = rng(300 + fi as u64);
            let (rows, m) = (45, 13);
            let data = random_weights(&mut r, format, rows, COLS);
            let w = MatRef::new(format, rows, COLS, &data).unwrap();
            let x = random_f32(&mut r, m * COLS, 1.5);
            let all = matmul_at(&pools[1], level, &w, &x, m);
            for i in 0..m {
                let one = matmul_at(&pools[1], level, &w, &x[i * COLS..(i + 1) * COLS], 1);
                for j in 0..rows {
                    assert_eq!(
                        all[i * rows + j].to_bits(),
                        one[j].to_bits(),
                        "{format} {level:?}: row {i} col {j} differs between m=13 and m=1"
                    );
                }
            }
            // Sub-batches that start at other offsets (different tile groupings).
            for (a, b) in [(1, 4), (3, 10), (5, 13)] {
                let part = matmul_at(&pools[1], level, &w, &x[a * COLS..b * COLS], b - a);
                for i in a..b {
                    for j in 0..rows {
                        assert_eq!(
                            all[i * rows + j].to_bits(),
                            part[(i - a) * rows + j].to_bits(),
                            "{format} {level:?} rows {a}..{b}"
                        );
                    }
                }
            }
            for pool in &pools {
                let o = matmul_at(pool, level, &w, &x, m);
                assert!(
                    o.iter().zip(&all).all(|(p, q)| p.to_bits() == q.to_bits()),
                    "{format} {level:?}: {} threads differ",
                    pool.n_threads()
                );
            }
        }
    }
}

#[test]
fn large_matrices_split_across_threads_agree() {
    // Big enough that the pool is used (for the activations too) and every thread gets several
    // tiles.
    let pools: Vec<ThreadPool> = (1..=3).map(ThreadPool::new).collect();
    for format in [
        WeightFormat::Q4_1,
        WeightFormat::Q8_0,
        WeightFormat::Q4_K,
        WeightFormat::Q6_K,
        WeightFormat::F16,
    ] {
        let mut r = rng(9);
        let (rows, cols, m) = (203, 768, 24);
        let data = random_weights(&mut r, format, rows, cols);
        let w = MatRef::new(format, rows, cols, &data).unwrap();
        let x = random_f32(&mut r, m * cols, 1.0);
        let base = matmul_at(&pools[0], CpuLevel::detect(), &w, &x, m);
        for pool in &pools[1..] {
            let o = matmul_at(pool, CpuLevel::detect(), &w, &x, m);
            assert!(
                o.iter().zip(&base).all(|(p, q)| p.to_bits() == q.to_bits()),
                "{format}: {} threads",
                pool.n_threads()
            );
        }
    }
}

#[test]
fn zero_rows_and_zero_activations() {
    let pool = ThreadPool::new(2);
    for &format in &ALL_FORMATS {
        let mut r = rng(1);
        let data = random_weights(&mut r, format, 9, COLS);
        let w = MatRef::new(format, 9, COLS, &data).unwrap();
        let x = vec![0.0f32; 2 * COLS];
        for level in levels() {
            let o = matmul_at(&pool, level, &w, &x, 2);
            assert!(
                o.iter().all(|&v| v == 0.0),
                "{format} {level:?}: zero input gives {o:?}"
            );
            let mut empty: Vec<f32> = vec![];
            matmul(
                &pool,
                &w,
                &[],
                0,
                &mut empty,
                &mut MatmulScratch::with_level(level),
            );
        }
    }
}

#[test]
fn matmul_many_equals_separate_calls() {
    // Same format (one fused dispatch, several threads) and mixed formats (the fallback).
    let pool = ThreadPool::new(3);
    let mut r = rng(77);
    for formats in [
        [WeightFormat::Q4_1; 3],
        [WeightFormat::Q8_0; 3],
        [WeightFormat::Q4_K, WeightFormat::Q4_K, WeightFormat::Q6_K],
    ] {
        for m in [1, 7] {
            let shapes = [203, 64, 9];
            let data: Vec<Vec<u8>> = formats
                .iter()
                .zip(shapes)
                .map(|(&f, rows)| random_weights(&mut r, f, rows, COLS))
                .collect();
            let ws: Vec<MatRef> = formats
                .iter()
                .zip(shapes)
                .zip(&data)
                .map(|((&f, rows), d)| MatRef::new(f, rows, COLS, d).unwrap())
                .collect();
            let x = random_f32(&mut r, m * COLS, 1.0);
            let mut outs: Vec<Vec<f32>> = shapes
                .iter()
                .map(|&rows| vec![f32::NAN; m * rows])
                .collect();
            let mut refs: Vec<&mut [f32]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
            matmul_many(&pool, &ws, &x, m, &mut refs, &mut MatmulScratch::new());
            for (w, got) in ws.iter().zip(&outs) {
                let want = matmul_at(&pool, CpuLevel::detect(), w, &x, m);
                assert!(
                    got.iter()
                        .zip(&want)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{:?} m={m}",
                    w.format()
                );
            }
        }
    }
}
