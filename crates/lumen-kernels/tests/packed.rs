//! The packed (row-interleaved) layout: same values as ggml's, matmul against the naive
//! reference, SIMD bit-identical to scalar, batch- and thread-invariant, bad shapes rejected.

mod common;

use common::{matmul_at, random_f32, random_weights, reference, rng};
use lumen_kernels::{
    matmul_many, pack, pack_group, pack_rows, packed_len, packs, CpuLevel, KernelError, MatRef,
    MatmulScratch, ThreadPool, WeightFormat, ALL_FORMATS, PACK_ROWS,
};

const FORMATS: [WeightFormat; 8] = [
    WeightFormat::Q4_0,
    WeightFormat::Q4_1,
    WeightFormat::Q8_0,
    WeightFormat::Q5_0,
    WeightFormat::Q5_1,
    WeightFormat::Q4_K,
    WeightFormat::Q5_K,
    WeightFormat::Q6_K,
];

/// The K-quants, whose packed layout keeps the ggml layout's arithmetic exactly.
fn is_kquant(f: WeightFormat) -> bool {
    matches!(
        f,
        WeightFormat::Q4_K | WeightFormat::Q5_K | WeightFormat::Q6_K
    )
}
const COLS: usize = 512;

fn levels() -> Vec<CpuLevel> {
    CpuLevel::supported()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn only_the_listed_formats_pack() {
    for f in ALL_FORMATS {
        assert_eq!(packs(f), FORMATS.contains(&f), "{f}");
        let rows = if packs(f) { pack_rows(f) } else { 0 };
        assert_eq!(
            rows,
            if is_kquant(f) {
                16
            } else if packs(f) {
                8
            } else {
                0
            }
        );
    }
    assert!(matches!(
        pack(WeightFormat::Q3_K, 1, 256, &[0; 110]),
        Err(KernelError::Unsupported { .. })
    ));
}

#[test]
fn packed_rows_dequantize_like_ggml_rows() {
    for (fi, format) in FORMATS.into_iter().enumerate() {
        let cols = if is_kquant(format) { 512 } else { 96 };
        for rows in [1, 8, 13, 24, 33] {
            let mut r = rng(10 + fi as u64 + rows as u64);
            let data = random_weights(&mut r, format, rows, cols);
            let packed = pack(format, rows, cols, &data).unwrap();
            assert_eq!(packed.len(), packed_len(format, rows, cols).unwrap());
            let (g, p) = (
                MatRef::new(format, rows, cols, &data).unwrap(),
                MatRef::packed(format, rows, cols, &packed).unwrap(),
            );
            assert!(p.is_packed() && !g.is_packed());
            let (mut a, mut b) = (vec![0.0f32; cols], vec![1.0f32; cols]);
            for j in 0..rows {
                g.dequantize_row(j, &mut a);
                p.dequantize_row(j, &mut b);
                assert_eq!(bits(&a), bits(&b), "{format} rows={rows} row {j}");
            }
        }
    }
}

#[test]
fn packed_matmul_matches_naive_reference() {
    let pool = ThreadPool::new(2);
    for (fi, format) in FORMATS.into_iter().enumerate() {
        for level in levels() {
            let mut r = rng(100 + fi as u64);
            let (rows, m) = (37, 5);
            let data = random_weights(&mut r, format, rows, COLS);
            let packed = pack(format, rows, COLS, &data).unwrap();
            let w = MatRef::packed(format, rows, COLS, &packed).unwrap();
            let x = random_f32(&mut r, m * COLS, 2.0);
            let got = matmul_at(&pool, level, &w, &x, m);
            let want = reference(&w, &x, m);
            // Q4_1's min term uses the f16-rounded block sum `s`, as in the ggml layout.
            let tol = if format == WeightFormat::Q4_1 {
                2e-3
            } else {
                1e-4
            };
            for (k, (&g, &(v, a))) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g as f64 - v).abs() <= tol * a + 1e-6,
                    "{format} {level:?} out[{k}]: got {g}, want {v}"
                );
            }
        }
    }
}

#[test]
fn packed_simd_equals_scalar_bit_for_bit() {
    let pool = ThreadPool::new(2);
    for (fi, format) in FORMATS.into_iter().enumerate() {
        // Row counts around the group and tile edges, one and several activation rows.
        for &(rows, m) in &[
            (1, 1),
            (8, 1),
            (19, 3),
            (64, 4),
            (33, 9),
            (16, 2),
            (45, 1),
            (45, 2),
            (29, 3),
            (72, 13),
        ] {
            let mut r = rng(200 + fi as u64 * 31 + rows as u64);
            let data = random_weights(&mut r, format, rows, COLS);
            let packed = pack(format, rows, COLS, &data).unwrap();
            let w = MatRef::packed(format, rows, COLS, &packed).unwrap();
            let x = random_f32(&mut r, m * COLS, 1.0);
            let s = matmul_at(&pool, CpuLevel::Scalar, &w, &x, m);
            for level in levels() {
                assert_eq!(
                    bits(&s),
                    bits(&matmul_at(&pool, level, &w, &x, m)),
                    "{format} {level} {rows}x{m}"
                );
            }
        }
    }
}

#[test]
fn packed_batch_and_thread_invariance() {
    let pools: Vec<ThreadPool> = (1..=3).map(ThreadPool::new).collect();
    for (fi, format) in FORMATS.into_iter().enumerate() {
        for level in levels() {
            let mut r = rng(300 + fi as u64);
            let (rows, m) = (203, 13);
            let data = random_weights(&mut r, format, rows, COLS);
            let packed = pack(format, rows, COLS, &data).unwrap();
            let w = MatRef::packed(format, rows, COLS, &packed).unwrap();
            let x = random_f32(&mut r, m * COLS, 1.5);
            let all = matmul_at(&pools[1], level, &w, &x, m);
            for (a, b) in [(0, 1), (4, 5), (1, 4), (3, 10), (5, 13)] {
                let part = matmul_at(&pools[1], level, &w, &x[a * COLS..b * COLS], b - a);
                assert_eq!(
                    bits(&all[a * rows..b * rows]),
                    bits(&part),
                    "{format} {level:?} rows {a}..{b}"
                );
            }
            for pool in &pools {
                assert_eq!(
                    bits(&matmul_at(pool, level, &w, &x, m)),
                    bits(&all),
                    "{format} {level:?} {} threads",
                    pool.n_threads()
                );
            }
        }
    }
}

#[test]
fn packed_matmul_many_equals_separate_calls() {
    let pool = ThreadPool::new(3);
    let mut r = rng(77);
    for format in FORMATS {
        for m in [1, 7] {
            let shapes = [203, 64, 9];
            let data: Vec<Vec<u8>> = shapes
                .iter()
                .map(|&rows| {
                    pack(
                        format,
                        rows,
                        COLS,
                        &random_weights(&mut r, format, rows, COLS),
                    )
                    .unwrap()
                })
                .collect();
            let ws: Vec<MatRef> = shapes
                .iter()
                .zip(&data)
                .map(|(&rows, d)| MatRef::packed(format, rows, COLS, d).unwrap())
                .collect();
            let x = random_f32(&mut r, m * COLS, 1.0);
            let mut outs: Vec<Vec<f32>> = shapes
                .iter()
                .map(|&rows| vec![f32::NAN; m * rows])
                .collect();
            let mut refs: Vec<&mut [f32]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
            matmul_many(&pool, &ws, &x, m, &mut refs, &mut MatmulScratch::new());
            for (w, got) in ws.iter().zip(&outs) {
                assert_eq!(
                    bits(got),
                    bits(&matmul_at(&pool, CpuLevel::detect(), w, &x, m)),
                    "{format} m={m}"
                );
            }
        }
    }
}

#[test]
fn bad_packed_shapes_are_errors() {
    let f = WeightFormat::Q4_1;
    let len = packed_len(f, 9, 64).unwrap();
    assert_eq!(len, 2 * 2 * 160);
    let data = vec![0u8; len];
    assert!(matches!(
        MatRef::packed(f, 9, 64, &data[1..]),
        Err(KernelError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        MatRef::packed(f, 9, 60, &data),
        Err(KernelError::RowNotBlockAligned { .. })
    ));
    assert!(matches!(
        MatRef::packed(f, usize::MAX, 64, &data),
        Err(KernelError::TooLarge { .. })
    ));
    let rb = f.row_bytes(64).unwrap();
    let mut group = vec![0u8; 2 * 160];
    assert!(pack_group(f, 64, &vec![0u8; (PACK_ROWS + 1) * rb], &mut group).is_err());
    assert!(pack_group(f, 64, &vec![0u8; rb + 1], &mut group).is_err());
    assert!(pack_group(f, 64, &vec![0u8; rb], &mut group[1..]).is_err());
    assert!(pack(f, 3, 64, &vec![0u8; 2 * rb]).is_err());
}

/// A packed K-quant matrix gives exactly the bits of its ggml-layout original (whose tiles
/// are bit-identical to the scalar reference), at every level, batch size and thread count,
/// with the matrix ending inside a group.
#[test]
fn packed_kquants_equal_their_ggml_layout_bit_for_bit() {
    let pools: Vec<ThreadPool> = (1..=2).map(ThreadPool::new).collect();
    for (fi, format) in [WeightFormat::Q4_K, WeightFormat::Q5_K, WeightFormat::Q6_K]
        .into_iter()
        .enumerate()
    {
        for &(rows, m) in &[
            (16, 1),
            (45, 1),
            (32, 2),
            (37, 5),
            (64, 9),
            (48, 23),
            (80, 70),
            (32, 130),
        ] {
            let mut r = rng(500 + fi as u64 * 7 + rows as u64);
            let data = random_weights(&mut r, format, rows, COLS);
            let packed = pack(format, rows, COLS, &data).unwrap();
            let g = MatRef::new(format, rows, COLS, &data).unwrap();
            let p = MatRef::packed(format, rows, COLS, &packed).unwrap();
            let x = random_f32(&mut r, m * COLS, 2.0);
            let want = bits(&matmul_at(&pools[0], CpuLevel::Scalar, &g, &x, m));
            for level in levels() {
                for pool in &pools {
                    assert_eq!(
                        bits(&matmul_at(pool, level, &p, &x, m)),
                        want,
                        "{format} {level} {rows}x{m}, {} threads",
                        pool.n_threads()
                    );
                }
                assert_eq!(
                    bits(&matmul_at(&pools[0], level, &g, &x, m)),
                    want,
                    "ggml layout {format} {level} {rows}x{m}"
                );
            }
        }
    }
}

/// The largest sums the K-quant tiles can meet: every quant at its top value (Q4_K 15, Q5_K
/// 31, Q6_K 63), the biggest scales, and activations that quantize to -128 (all -1 or all 1)
/// or to 127 with one -128 per block. The AVX2 tiles add a sub-block's two-product sums in
/// 16-bit lanes before widening (Q4_K: 8 * 2 * 15 * 128 = 30720), so an overflow there would
/// show as a difference from the scalar reference's 32-bit sums.
#[test]
fn packed_kquants_hold_their_largest_sums() {
    let pool = ThreadPool::new(2);
    let d = half::f16::from_f32(0.001).to_bits().to_le_bytes();
    for format in [WeightFormat::Q4_K, WeightFormat::Q5_K, WeightFormat::Q6_K] {
        for scale_byte in [0xFFu8, 0x80, 0x7F] {
            let rows = 32;
            let bb = format.block_bytes();
            let mut data = vec![0xFFu8; rows * (COLS / 256) * bb];
            for blk in data.chunks_exact_mut(bb) {
                if format == WeightFormat::Q6_K {
                    blk[192..208].fill(scale_byte);
                    blk[208..210].copy_from_slice(&d);
                } else {
                    blk[0..2].copy_from_slice(&d);
                    blk[2..4].copy_from_slice(&d);
                    blk[4..16].fill(scale_byte);
                }
            }
            let packed = pack(format, rows, COLS, &data).unwrap();
            let g = MatRef::new(format, rows, COLS, &data).unwrap();
            let p = MatRef::packed(format, rows, COLS, &packed).unwrap();
            let label = format!("{format} scales {scale_byte:#x}");
            every_level_matches_at_extremes(&pool, &p, &g, &[1, 2, 3, 7, 13], &label);
        }
    }
}

/// Every level's `w` against the scalar path's `reference` at activations of ±127 (rows of
/// -1, of +1, and of +1 with a -1 in every block), for each batch size of `ms`.
fn every_level_matches_at_extremes(
    pool: &ThreadPool,
    w: &MatRef,
    reference: &MatRef,
    ms: &[usize],
    label: &str,
) {
    let block = w.format().block_elems();
    for &m in ms {
        let mut x = Vec::with_capacity(m * COLS);
        for i in 0..m {
            for k in 0..COLS {
                x.push(match i % 3 {
                    0 => -1.0,
                    1 => 1.0,
                    _ if k % block == 5 => -1.0,
                    _ => 1.0,
                });
            }
        }
        let want = bits(&matmul_at(pool, CpuLevel::Scalar, reference, &x, m));
        for level in levels() {
            assert_eq!(
                bits(&matmul_at(pool, level, w, &x, m)),
                want,
                "{label} {level} m={m}"
            );
        }
    }
}

/// The 32-value formats at their largest unsigned quants (all bits set: Q4 15, Q5 31) against
/// activations of ±127: the AVX2 tiles add `maddubs` pairs in 16-bit lanes before widening
/// (four 4-bit steps of 2 * 2 * 15 * 127, two 5-bit ones of 2 * 2 * 31 * 127), so an overflow
/// there would show as a difference from the scalar reference's 32-bit sums.
#[test]
fn packed_block32_hold_their_largest_sums() {
    let pool = ThreadPool::new(2);
    let d = half::f16::from_f32(0.001).to_bits().to_le_bytes();
    for format in [
        WeightFormat::Q4_0,
        WeightFormat::Q4_1,
        WeightFormat::Q5_0,
        WeightFormat::Q5_1,
    ] {
        let rows = 24;
        let bb = format.block_bytes();
        let mut data = vec![0xFFu8; rows * (COLS / 32) * bb];
        for blk in data.chunks_exact_mut(bb) {
            blk[0..2].copy_from_slice(&d);
            if matches!(format, WeightFormat::Q4_1 | WeightFormat::Q5_1) {
                blk[2..4].copy_from_slice(&d);
            }
        }
        let packed = pack(format, rows, COLS, &data).unwrap();
        let p = MatRef::packed(format, rows, COLS, &packed).unwrap();
        every_level_matches_at_extremes(&pool, &p, &p, &[1, 4, 13], &format.to_string());
    }
}

/// A digest of each format's packed bytes for fixed input bytes: it changes exactly when a
/// packed record does, and then [`lumen_kernels::PACKED_LAYOUT_VERSION`] must change with it
/// (packed copies of model files on disk are named after the version; an old copy used by a
/// new layout would compute garbage).
#[test]
fn packed_bytes_are_versioned() {
    const DIGESTS: [(WeightFormat, u64); 8] = [
        (WeightFormat::Q4_0, 0xa84a_905a_611d_6616),
        (WeightFormat::Q4_1, 0x9324_6c0f_a8cb_fbac),
        (WeightFormat::Q8_0, 0x57a3_0d3e_8d0d_077b),
        (WeightFormat::Q5_0, 0xa79e_2309_0476_51db),
        (WeightFormat::Q5_1, 0x21a7_02d1_8b54_d9e5),
        (WeightFormat::Q4_K, 0x5463_334d_894f_03ff),
        (WeightFormat::Q5_K, 0xcdd5_4ae2_d402_e4e6),
        (WeightFormat::Q6_K, 0xcbd5_7a15_1189_5d5d),
    ];
    let (rows, cols) = (16, 512);
    let mut got = Vec::new();
    for (format, _) in DIGESTS {
        let rb = format.row_bytes(cols).unwrap();
        // Input bytes from a fixed formula, so the digest depends on nothing but the layout.
        let src: Vec<u8> = (0..rows * rb)
            .map(|k| ((k as u32).wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let packed = pack(format, rows, cols, &src).unwrap();
        let digest = packed.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        got.push((format, digest));
    }
    assert_eq!(
        got,
        DIGESTS,
        "a packed layout changed: bump PACKED_LAYOUT_VERSION (now {}) and update DIGESTS",
        lumen_kernels::PACKED_LAYOUT_VERSION
    );
}
