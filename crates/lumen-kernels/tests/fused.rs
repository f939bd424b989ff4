//! Fused producers: a row op that quantizes its output for the next matmul gives the same
//! bits as the op followed by the matmul's own quantizing pass, in every format and layout.

mod common;

use common::{random_f32, random_weights, rng};
use lumen_kernels::{
    fused, matmul_many, matmul_quantized, ops, pack, packs, CpuLevel, MatRef, MatmulScratch,
    ThreadPool, ALL_FORMATS,
};

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn fused_ops_then_matmul_equal_op_then_matmul() {
    let pool = ThreadPool::new(2);
    // 256 columns: the K-quants' block; 80 rows: enough for the ops to split over the pool.
    let (cols, rows, m) = (256usize, 24usize, 80usize);
    for (fi, format) in ALL_FORMATS.into_iter().enumerate() {
        let mut r = rng(500 + fi as u64);
        let data = random_weights(&mut r, format, rows, cols);
        let packed = packs(format).then(|| pack(format, rows, cols, &data).unwrap());
        let mut mats = vec![MatRef::new(format, rows, cols, &data).unwrap()];
        if let Some(p) = &packed {
            mats.push(MatRef::packed(format, rows, cols, p).unwrap());
        }
        let x = random_f32(&mut r, m * cols, 4.0);
        let residual = random_f32(&mut r, m * cols, 1.0);
        let weight = random_f32(&mut r, cols, 1.0);
        for w in &mats {
            for level in CpuLevel::supported() {
                let what = format!("{format} packed {} {level:?}", w.is_packed());
                let mut scratch = MatmulScratch::with_level(level);
                let (mut want, mut got) = (vec![0.0f32; m * rows], vec![f32::NAN; m * rows]);
                let mut h = vec![0.0f32; m * cols];

                // RMSNorm.
                ops::rms_norm_rows(&pool, &x, &weight, 1e-5, &mut h);
                matmul_many(&pool, &[*w], &h, m, &mut [&mut want], &mut scratch);
                let mut h2 = vec![0.0f32; m * cols];
                let input =
                    fused::rms_norm_rows(&pool, &x, &weight, 1e-5, &mut h2, w, &mut scratch);
                matmul_quantized(&pool, &[*w], input, &mut [&mut got]);
                assert_eq!(
                    (bits(&h), bits(&want)),
                    (bits(&h2), bits(&got)),
                    "rms_norm {what}"
                );

                // Residual add + RMSNorm.
                let (mut xa, mut xb) = (x.clone(), x.clone());
                ops::add_rms_norm_rows(&pool, &mut xa, &residual, &weight, 1e-5, &mut h);
                matmul_many(&pool, &[*w], &h, m, &mut [&mut want], &mut scratch);
                let input = fused::add_rms_norm_rows(
                    &pool,
                    &mut xb,
                    &residual,
                    &weight,
                    1e-5,
                    &mut h2,
                    w,
                    &mut scratch,
                );
                matmul_quantized(&pool, &[*w], input, &mut [&mut got]);
                assert_eq!(
                    (bits(&xa), bits(&h), bits(&want)),
                    (bits(&xb), bits(&h2), bits(&got)),
                    "add_rms_norm {what}"
                );

                // SwiGLU.
                let (mut ga, mut gb) = (x.clone(), x.clone());
                ops::swiglu_rows(&pool, &mut ga, &residual, cols);
                matmul_many(&pool, &[*w], &ga, m, &mut [&mut want], &mut scratch);
                let input = fused::swiglu_rows(&pool, &mut gb, &residual, cols, w, &mut scratch);
                matmul_quantized(&pool, &[*w], input, &mut [&mut got]);
                assert_eq!(
                    (bits(&ga), bits(&want)),
                    (bits(&gb), bits(&got)),
                    "swiglu {what}"
                );
            }
        }
    }
}

#[test]
fn an_input_quantized_for_one_format_is_requantized_for_another() {
    let pool = ThreadPool::new(2);
    let (cols, rows, m) = (256usize, 16usize, 8usize);
    let mut r = rng(77);
    let (fa, fb) = (
        lumen_kernels::WeightFormat::Q4_1,
        lumen_kernels::WeightFormat::Q4_K,
    );
    let (da, db) = (
        random_weights(&mut r, fa, rows, cols),
        random_weights(&mut r, fb, rows, cols),
    );
    let (wa, wb) = (
        MatRef::new(fa, rows, cols, &da).unwrap(),
        MatRef::new(fb, rows, cols, &db).unwrap(),
    );
    let x = random_f32(&mut r, m * cols, 2.0);
    let weight = random_f32(&mut r, cols, 1.0);
    let mut scratch = MatmulScratch::new();
    let mut h = vec![0.0f32; m * cols];
    // Quantized for Q4_1 (Q8_1 blocks), multiplied by a Q4_K matrix (Q8_K blocks).
    let input = fused::rms_norm_rows(&pool, &x, &weight, 1e-5, &mut h, &wa, &mut scratch);
    let mut got = vec![0.0f32; m * rows];
    matmul_quantized(&pool, &[wb], input, &mut [&mut got]);
    let mut want = vec![0.0f32; m * rows];
    matmul_many(
        &pool,
        &[wb],
        &h,
        m,
        &mut [&mut want],
        &mut MatmulScratch::new(),
    );
    assert_eq!(bits(&got), bits(&want));
}
