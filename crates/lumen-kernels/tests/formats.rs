//! Block layouts: format constants, hand-computed dequantization, reference quantizers, MatRef.

mod common;

use common::{random_f32, rng};
use half::{bf16, f16};
use lumen_kernels::{
    dequantize_row, get_scale_min_k4, quantize_row, KernelError, MatRef, WeightFormat, ALL_FORMATS,
};

fn h(v: f32) -> [u8; 2] {
    f16::from_f32(v).to_bits().to_le_bytes()
}

fn deq(format: WeightFormat, src: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; n];
    dequantize_row(format, src, &mut out);
    out
}

#[test]
fn format_constants() {
    let want = [
        (1, 4),
        (1, 2),
        (1, 2),
        (32, 18),
        (32, 20),
        (32, 34),
        (256, 144),
        (256, 176),
        (256, 210),
        (32, 22),
        (32, 24),
        (256, 84),
        (256, 110),
        (32, 18),
        (256, 136),
    ];
    for (f, (be, bb)) in ALL_FORMATS.iter().zip(want) {
        assert_eq!((f.block_elems(), f.block_bytes()), (be, bb), "{f}");
        assert_eq!(WeightFormat::from_ggml_type(f.ggml_type()), Some(*f));
        assert_eq!(f.row_bytes(be * 3), Some(bb * 3));
    }
    assert_eq!(WeightFormat::Q4_0.row_bytes(48), None);
    assert_eq!(WeightFormat::Q6_K.row_bytes(128), None);
    assert_eq!(WeightFormat::F32.row_bytes(7), Some(28));
    assert_eq!(WeightFormat::Q4_K.name(), "q4_K");
    assert_eq!(WeightFormat::from_ggml_type(6), Some(WeightFormat::Q5_0));
    assert_eq!(WeightFormat::IQ4_XS.ggml_type(), 23);
    // IQ2_XXS (16) has no kernels.
    assert_eq!(WeightFormat::from_ggml_type(16), None);
}

#[test]
fn dequantize_float_formats() {
    let mut b = vec![];
    b.extend(1.5f32.to_le_bytes());
    b.extend((-2.0f32).to_le_bytes());
    assert_eq!(deq(WeightFormat::F32, &b, 2), vec![1.5, -2.0]);
    let b: Vec<u8> = [h(1.0), h(-0.5)].concat();
    assert_eq!(deq(WeightFormat::F16, &b, 2), vec![1.0, -0.5]);
    let b: Vec<u8> = [
        bf16::from_f32(1.0).to_bits().to_le_bytes(),
        0xC000u16.to_le_bytes(),
    ]
    .concat();
    assert_eq!(deq(WeightFormat::BF16, &b, 2), vec![1.0, -2.0]);
}

#[test]
fn dequantize_q4_0_q4_1_q8_0() {
    let mut b = h(0.5).to_vec();
    b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let y = deq(WeightFormat::Q4_0, &b, 32);
    for j in 0..16 {
        assert_eq!(y[j], (j as f32 - 8.0) * 0.5);
        assert_eq!(y[16 + j], (7.0 - j as f32) * 0.5);
    }
    let mut b = [h(0.25), h(-1.0)].concat();
    b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let y = deq(WeightFormat::Q4_1, &b, 32);
    for j in 0..16 {
        assert_eq!(y[j], j as f32 * 0.25 - 1.0);
        assert_eq!(y[16 + j], (15 - j) as f32 * 0.25 - 1.0);
    }
    let mut b = h(2.0).to_vec();
    b.extend((0..32i32).map(|j| (j - 16) as i8 as u8));
    let y = deq(WeightFormat::Q8_0, &b, 32);
    for (j, &v) in y.iter().enumerate() {
        assert_eq!(v, (j as f32 - 16.0) * 2.0);
    }
}

/// Packs 6-bit scales and mins the way `get_scale_min_k4` reads them.
fn pack_k4(sc: [u8; 8], mn: [u8; 8]) -> [u8; 12] {
    let mut q = [0u8; 12];
    for j in 0..4 {
        q[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
        q[j + 4] = mn[j] | ((mn[j + 4] >> 4) << 6);
        q[j + 8] = (sc[j + 4] & 0xF) | ((mn[j + 4] & 0xF) << 4);
    }
    q
}

const SC: [u8; 8] = [1, 63, 17, 40, 33, 5, 62, 48];
const MN: [u8; 8] = [0, 7, 63, 32, 16, 1, 50, 60];

#[test]
fn k4_scale_packing() {
    let q = pack_k4(SC, MN);
    for j in 0..8 {
        assert_eq!(get_scale_min_k4(j, &q), (SC[j], MN[j]));
    }
}

#[test]
fn dequantize_q4_k_and_q5_k() {
    let q4 = |e: usize| ((e * 7) % 16) as u8;
    let hb = |e: usize| ((e / 3) % 2) as u8;
    for five in [false, true] {
        let mut b = [h(1.0), h(0.5)].concat();
        b.extend(pack_k4(SC, MN));
        let mut qh = [0u8; 32];
        let mut qs = [0u8; 128];
        for e in 0..256 {
            let (s, l) = (e / 32, e % 32);
            let idx = 32 * (s / 2) + l;
            qs[idx] |= if s % 2 == 0 { q4(e) } else { q4(e) << 4 };
            qh[l] |= hb(e) << s;
        }
        if five {
            b.extend(qh);
        }
        b.extend(qs);
        let format = if five {
            WeightFormat::Q5_K
        } else {
            WeightFormat::Q4_K
        };
        let y = deq(format, &b, 256);
        for (e, &v) in y.iter().enumerate() {
            let s = e / 32;
            let q = q4(e) as f32 + if five { 16.0 * hb(e) as f32 } else { 0.0 };
            assert_eq!(v, SC[s] as f32 * q - 0.5 * MN[s] as f32, "{format} e={e}");
        }
    }
}

#[test]
fn dequantize_q6_k() {
    let q6 = |e: usize| ((e * 5) % 64) as u8;
    let sc = |g: usize| (g as i32 * 3 - 20) as i8;
    let (mut ql, mut qh) = ([0u8; 128], [0u8; 64]);
    for e in 0..256 {
        let (n, k, l) = (e / 128, (e % 128) / 32, e % 32);
        let li = 64 * n + 32 * (k % 2) + l;
        ql[li] |= if k < 2 {
            q6(e) & 0xF
        } else {
            (q6(e) & 0xF) << 4
        };
        qh[32 * n + l] |= (q6(e) >> 4) << (2 * k);
    }
    let mut b = ql.to_vec();
    b.extend(qh);
    b.extend((0..16).map(|g| sc(g) as u8));
    b.extend(h(0.125));
    let y = deq(WeightFormat::Q6_K, &b, 256);
    for (e, &v) in y.iter().enumerate() {
        assert_eq!(
            v,
            0.125 * sc(e / 16) as f32 * (q6(e) as f32 - 32.0),
            "e={e}"
        );
    }
}

#[test]
fn reference_quantizers_round_trip() {
    let mut r = rng(5);
    for format in [
        WeightFormat::Q4_0,
        WeightFormat::Q4_1,
        WeightFormat::Q8_0,
        WeightFormat::F16,
        WeightFormat::BF16,
        WeightFormat::F32,
    ] {
        let x = random_f32(&mut r, 32 * 20, 3.0);
        let mut q = vec![0u8; format.row_bytes(x.len()).unwrap()];
        quantize_row(format, &x, &mut q).unwrap();
        let y = deq(format, &q, x.len());
        for (xb, yb) in x.chunks(32).zip(y.chunks(32)) {
            let amax = xb.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            let (lo, hi) = xb
                .iter()
                .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
            // Q4_0 clamps the extreme opposite the block maximum to 7/8 of it (error up to d).
            let bound = match format {
                WeightFormat::Q4_0 => amax / 8.0 * 1.01,
                WeightFormat::Q4_1 => (hi - lo) / 15.0 * 0.51 + 2e-3 * amax,
                WeightFormat::Q8_0 => amax / 127.0 * 0.51 + 1e-3 * amax,
                WeightFormat::F16 => amax * 1e-3,
                WeightFormat::BF16 => amax * 8e-3,
                _ => 0.0,
            };
            for (a, b) in xb.iter().zip(yb) {
                assert!(
                    (a - b).abs() <= bound,
                    "{format}: {a} -> {b} (bound {bound})"
                );
            }
        }
    }
    let mut q = vec![0u8; 144];
    assert!(matches!(
        quantize_row(WeightFormat::Q4_K, &[0.0; 256], &mut q),
        Err(KernelError::Unsupported { .. })
    ));
    assert!(matches!(
        quantize_row(WeightFormat::Q4_0, &[0.0; 48], &mut q),
        Err(KernelError::RowNotBlockAligned { .. })
    ));
}

#[test]
fn matref_validates_and_slices_rows() {
    let data = vec![0u8; 3 * 36];
    let w = MatRef::new(WeightFormat::Q4_0, 3, 64, &data).unwrap();
    assert_eq!(
        (w.rows(), w.cols(), w.format(), w.row_bytes()),
        (3, 64, WeightFormat::Q4_0, 36)
    );
    assert_eq!(w.row_data(2).len(), 36);
    assert!(matches!(
        MatRef::new(WeightFormat::Q4_0, 3, 64, &data[1..]),
        Err(KernelError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        MatRef::new(WeightFormat::Q4_0, 3, 60, &data),
        Err(KernelError::RowNotBlockAligned { .. })
    ));
    assert!(matches!(
        MatRef::new(WeightFormat::F32, usize::MAX, 4, &data),
        Err(KernelError::TooLarge { .. })
    ));
    // Row r of a matrix dequantizes like the row on its own.
    let mut r = rng(3);
    let x = random_f32(&mut r, 2 * 64, 1.0);
    let mut q = vec![0u8; 2 * 40];
    quantize_row(WeightFormat::Q4_1, &x[64..], &mut q[40..]).unwrap();
    let w = MatRef::new(WeightFormat::Q4_1, 2, 64, &q).unwrap();
    let mut a = vec![0.0; 64];
    w.dequantize_row(1, &mut a);
    assert_eq!(a, deq(WeightFormat::Q4_1, &q[40..], 64));
}
