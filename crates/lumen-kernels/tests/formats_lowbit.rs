//! Hand-encoded blocks of Q5_0, Q5_1, IQ4_NL, Q2_K, Q3_K and IQ4_XS dequantize to the values
//! they encode.
//!
//! The encoders here follow the packing loops of ggml's `quantize_row_*_ref` (the writer's side
//! of each layout), independently of Lumen's decoders, so a decoder that reads a bit from the
//! wrong place fails here and not only in the end-to-end fixtures.

use half::f16;
use lumen_kernels::{dequantize_row, WeightFormat};

/// ggml's `kvalues_iq4nl`.
const KV: [i32; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

fn h(v: f32) -> [u8; 2] {
    f16::from_f32(v).to_bits().to_le_bytes()
}

fn deq(format: WeightFormat, src: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; n];
    dequantize_row(format, src, &mut out);
    out
}

/// Q5_0/Q5_1 quants `q` (0..32) packed as `qh` (bit e: the fifth bit of value e) and `qs`
/// (value j in the low nibble of byte j, value j + 16 in its high nibble).
fn pack_q5(q: &[u8; 32]) -> Vec<u8> {
    let mut qh = 0u32;
    let mut qs = [0u8; 16];
    for j in 0..16 {
        qs[j] = (q[j] & 0xF) | ((q[j + 16] & 0xF) << 4);
        qh |= ((q[j] as u32 >> 4) << j) | ((q[j + 16] as u32 >> 4) << (j + 16));
    }
    let mut b = qh.to_le_bytes().to_vec();
    b.extend(qs);
    b
}

#[test]
fn dequantize_q5_0_q5_1() {
    let q: [u8; 32] = std::array::from_fn(|e| ((e * 13 + 5) % 32) as u8);
    let mut b0 = h(0.25).to_vec();
    b0.extend(pack_q5(&q));
    let y = deq(WeightFormat::Q5_0, &b0, 32);
    for e in 0..32 {
        assert_eq!(y[e], (q[e] as f32 - 16.0) * 0.25, "q5_0 e={e}");
    }
    let mut b1 = [h(0.5), h(-3.0)].concat();
    b1.extend(pack_q5(&q));
    let y = deq(WeightFormat::Q5_1, &b1, 32);
    for e in 0..32 {
        assert_eq!(y[e], q[e] as f32 * 0.5 - 3.0, "q5_1 e={e}");
    }
}

#[test]
fn dequantize_iq4_nl() {
    let idx: [u8; 32] = std::array::from_fn(|e| ((e * 7 + 3) % 16) as u8);
    let mut b = h(0.125).to_vec();
    b.extend((0..16).map(|j| idx[j] | (idx[j + 16] << 4)));
    let y = deq(WeightFormat::IQ4_NL, &b, 32);
    for e in 0..32 {
        assert_eq!(y[e], KV[idx[e] as usize] as f32 * 0.125, "e={e}");
    }
}

/// 2-bit quants of 256 values packed as ggml's K-quants do: per 128 values, byte `l` (0..32)
/// holds values `l`, `l + 32`, `l + 64`, `l + 96` in bits 0-1, 2-3, 4-5, 6-7.
fn pack_2bit(l: &[u8; 256]) -> [u8; 64] {
    let mut qs = [0u8; 64];
    for j in (0..256).step_by(128) {
        for i in 0..32 {
            qs[j / 4 + i] =
                l[j + i] | (l[j + i + 32] << 2) | (l[j + i + 64] << 4) | (l[j + i + 96] << 6);
        }
    }
    qs
}

#[test]
fn dequantize_q2_k() {
    let q: [u8; 256] = std::array::from_fn(|e| ((e * 3 + e / 7) % 4) as u8);
    let sc = |g: usize| ((g * 5 + 1) % 16) as u8;
    let mn = |g: usize| ((g * 3 + 2) % 16) as u8;
    let mut b: Vec<u8> = (0..16).map(|g| sc(g) | (mn(g) << 4)).collect();
    b.extend(pack_2bit(&q));
    b.extend(h(0.5));
    b.extend(h(0.25));
    let y = deq(WeightFormat::Q2_K, &b, 256);
    for e in 0..256 {
        let g = e / 16;
        let want = 0.5 * sc(g) as f32 * q[e] as f32 - 0.25 * mn(g) as f32;
        assert_eq!(y[e], want, "e={e}");
    }
}

#[test]
fn dequantize_q3_k() {
    // Quants -4..=3, stored as 0..=7 (the high bit in hmask, the low two in qs).
    let l: [u8; 256] = std::array::from_fn(|e| ((e * 5 + e / 11) % 8) as u8);
    // Sixteen 6-bit scales stored with +32.
    let ls = |g: usize| ((g * 9 + 4) % 64) as u8;
    let mut scales = [0u8; 12];
    for j in 0..16 {
        let v = ls(j);
        if j < 8 {
            scales[j] = v & 0xF;
        } else {
            scales[j - 8] |= (v & 0xF) << 4;
        }
        scales[j % 4 + 8] |= (v >> 4) << (2 * (j / 4));
    }
    let mut hmask = [0u8; 32];
    let mut low = [0u8; 256];
    for j in 0..256 {
        if l[j] > 3 {
            hmask[j % 32] |= 1 << (j / 32);
        }
        low[j] = l[j] & 3;
    }
    let mut b = hmask.to_vec();
    b.extend(pack_2bit(&low));
    b.extend(scales);
    b.extend(h(0.125));
    let y = deq(WeightFormat::Q3_K, &b, 256);
    for e in 0..256 {
        let want = 0.125 * (ls(e / 16) as f32 - 32.0) * (l[e] as f32 - 4.0);
        assert_eq!(y[e], want, "e={e}");
    }
}

#[test]
fn dequantize_iq4_xs() {
    let idx: [u8; 256] = std::array::from_fn(|e| ((e * 11 + e / 5) % 16) as u8);
    let ls = |ib: usize| ((ib * 17 + 3) % 64) as u16;
    let (mut scales_h, mut scales_l) = (0u16, [0u8; 4]);
    for ib in 0..8 {
        scales_l[ib / 2] |= ((ls(ib) & 0xF) as u8) << (4 * (ib % 2));
        scales_h |= (ls(ib) >> 4) << (2 * ib);
    }
    let mut b = h(0.5).to_vec();
    b.extend(scales_h.to_le_bytes());
    b.extend(scales_l);
    for ib in 0..8 {
        b.extend((0..16).map(|j| idx[32 * ib + j] | (idx[32 * ib + j + 16] << 4)));
    }
    assert_eq!(b.len(), 136);
    let y = deq(WeightFormat::IQ4_XS, &b, 256);
    for e in 0..256 {
        let want = 0.5 * (ls(e / 32) as f32 - 32.0) * KV[idx[e] as usize] as f32;
        assert_eq!(y[e], want, "e={e}");
    }
}
