//! Byte layouts of the formats llama.cpp's presets fall back to or mix in (Q5_0, Q5_1, Q2_K,
//! Q3_K, IQ4_NL, IQ4_XS), unpacked to one integer per value.
//!
//! Every unpacker returns the block's quants as small signed integers in value order plus
//! its integer sub-block scales, so dequantization (`dequant.rs`) and the scalar dot products
//! (`dot_lowbit.rs`) read one decoding, and a decoding bug shows in both the dequantize tests
//! and the end-to-end fixtures. The layouts follow ggml's `block_*` structs byte for byte
//! (`ggml-common.h`); the arithmetic follows its `dequantize_row_*` reference code.

use crate::blocks::{f16_at, QK, QK_K};

/// The 16 values an IQ4_NL/IQ4_XS index selects (ggml's `kvalues_iq4nl`): a non-linear
/// grid, denser near zero, where weights are.
pub(crate) const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// The 32 quants of a Q5_0 (`- 16`, signed) or Q5_1 (unsigned) block; `qh_off` is where the
/// high-bit word starts (2 for Q5_0, after `d`; 4 for Q5_1, after `d` and `m`).
///
/// Value `e` takes bit `e` of the little-endian `qh` word as its fifth bit; its low four bits
/// are the low nibble of `qs[e]` for `e < 16`, the high nibble of `qs[e - 16]` otherwise.
#[inline]
pub(crate) fn q5_values(blk: &[u8], signed: bool) -> [i8; QK] {
    let qh_off = if signed { 2 } else { 4 };
    let qh = u32::from_le_bytes([
        blk[qh_off],
        blk[qh_off + 1],
        blk[qh_off + 2],
        blk[qh_off + 3],
    ]);
    let qs = &blk[qh_off + 4..qh_off + 20];
    let bias = if signed { 16 } else { 0 };
    let mut q = [0i8; QK];
    for (e, v) in q.iter_mut().enumerate() {
        let nib = if e < 16 { qs[e] & 0xF } else { qs[e - 16] >> 4 };
        let hi = ((qh >> e) & 1) as u8;
        *v = ((nib | (hi << 4)) as i16 - bias) as i8;
    }
    q
}

/// The 32 values of an IQ4_NL block (`kvalues_iq4nl` entries; the scale is the f16 at 0).
#[inline]
pub(crate) fn iq4nl_values(blk: &[u8]) -> [i8; QK] {
    let qs = &blk[2..18];
    let mut q = [0i8; QK];
    for j in 0..16 {
        q[j] = KVALUES_IQ4NL[(qs[j] & 0xF) as usize];
        q[j + 16] = KVALUES_IQ4NL[(qs[j] >> 4) as usize];
    }
    q
}

/// A 256-value super-block of Q2_K, Q3_K or IQ4_XS, decoded.
pub(crate) struct SuperBlock {
    /// Quants in value order: Q2_K 0..=3, Q3_K -4..=3, IQ4_XS `kvalues_iq4nl` entries.
    pub q: [i8; QK_K],
    /// Integer sub-block scales: 16 (per 16 values) for Q2_K and Q3_K (already `- 32` for
    /// Q3_K), 8 (per 32 values, already `- 32`) for IQ4_XS.
    pub sc: [i16; 16],
    /// Q2_K's 4-bit sub-block mins, per 16 values (zero for the others).
    pub mins: [i16; 16],
    /// Super-block scale.
    pub d: f32,
    /// Super-block min scale (Q2_K).
    pub dmin: f32,
}

impl SuperBlock {
    fn zeroed() -> Self {
        SuperBlock {
            q: [0; QK_K],
            sc: [0; 16],
            mins: [0; 16],
            d: 0.0,
            dmin: 0.0,
        }
    }
}

/// Where 2-bit quant `e` of a Q2_K/Q3_K block sits: byte `qs[32 * n + l]` (with `n` the 128-
/// value half and `l` 0..32 running over two 16-value sub-blocks), bits `2 * j..2 * j + 2`
/// for the `j`-th 32-value group of the half. Returns (byte index, shift).
#[inline]
fn two_bit_pos(e: usize) -> (usize, usize) {
    let (n, r) = (e / 128, e % 128);
    let (j, l) = (r / 32, r % 32);
    (32 * n + l, 2 * j)
}

/// Decodes an 84-byte Q2_K block: `scales[16]` (low nibble scale, high nibble min), `qs[64]`,
/// f16 `d`, f16 `dmin`; value = d * sc * q - dmin * min.
pub(crate) fn unpack_q2k(b: &[u8]) -> SuperBlock {
    let mut u = SuperBlock::zeroed();
    let (scales, qs) = (&b[0..16], &b[16..80]);
    u.d = f16_at(b, 80);
    u.dmin = f16_at(b, 82);
    for (g, &s) in scales.iter().enumerate() {
        u.sc[g] = (s & 0xF) as i16;
        u.mins[g] = (s >> 4) as i16;
    }
    for (e, v) in u.q.iter_mut().enumerate() {
        let (i, sh) = two_bit_pos(e);
        *v = ((qs[i] >> sh) & 3) as i8;
    }
    u
}

/// Decodes a 110-byte Q3_K block: `hmask[32]`, `qs[64]`, `scales[12]` (sixteen 6-bit values,
/// low nibbles in bytes 0..8, high pairs in 8..12), f16 `d`; value = d * (sc - 32) * q where
/// q is the 2-bit quant minus 4 unless its `hmask` bit is set.
pub(crate) fn unpack_q3k(b: &[u8]) -> SuperBlock {
    let mut u = SuperBlock::zeroed();
    let (hmask, qs, scales) = (&b[0..32], &b[32..96], &b[96..108]);
    u.d = f16_at(b, 108);
    for g in 0..16 {
        // Low four bits: nibble g % 8 of bytes 0..8 (low nibbles first); high two bits:
        // bits 2 * (g / 4) of byte 8 + g % 4.
        let lo = if g < 8 {
            scales[g] & 0xF
        } else {
            scales[g - 8] >> 4
        };
        let hi = (scales[8 + g % 4] >> (2 * (g / 4))) & 3;
        u.sc[g] = (lo | (hi << 4)) as i16 - 32;
    }
    for (e, v) in u.q.iter_mut().enumerate() {
        let (i, sh) = two_bit_pos(e);
        let (n, r) = (e / 128, e % 128);
        // The high bit of value e is bit (4n + group) of hmask[e % 32].
        let h = (hmask[r % 32] >> (4 * n + r / 32)) & 1;
        *v = ((qs[i] >> sh) & 3) as i8 - if h == 0 { 4 } else { 0 };
    }
    u
}

/// Decodes a 136-byte IQ4_XS block: f16 `d`, u16 `scales_h` (two high bits per sub-block),
/// `scales_l[4]` (a nibble per sub-block), `qs[128]` (IQ4_NL's nibble order per 32 values);
/// value = d * (ls - 32) * kvalues_iq4nl[index].
pub(crate) fn unpack_iq4xs(b: &[u8]) -> SuperBlock {
    let mut u = SuperBlock::zeroed();
    u.d = f16_at(b, 0);
    let scales_h = u16::from_le_bytes([b[2], b[3]]);
    let (scales_l, qs) = (&b[4..8], &b[8..136]);
    for ib in 0..8 {
        let lo = (scales_l[ib / 2] >> (4 * (ib % 2))) & 0xF;
        let hi = ((scales_h >> (2 * ib)) & 3) as u8;
        u.sc[ib] = (lo | (hi << 4)) as i16 - 32;
        let q = &qs[16 * ib..16 * ib + 16];
        for j in 0..16 {
            u.q[32 * ib + j] = KVALUES_IQ4NL[(q[j] & 0xF) as usize];
            u.q[32 * ib + j + 16] = KVALUES_IQ4NL[(q[j] >> 4) as usize];
        }
    }
    u
}

/// Dequantizes one block of a format of this module into `y` (32 or 256 values).
pub(crate) fn dequantize_block(format: crate::WeightFormat, b: &[u8], y: &mut [f32]) {
    use crate::WeightFormat as W;
    match format {
        W::Q5_0 | W::IQ4_NL => {
            let d = f16_at(b, 0);
            let q = if format == W::Q5_0 {
                q5_values(b, true)
            } else {
                iq4nl_values(b)
            };
            for (o, &v) in y.iter_mut().zip(&q) {
                *o = v as f32 * d;
            }
        }
        W::Q5_1 => {
            let (d, m) = (f16_at(b, 0), f16_at(b, 2));
            for (o, &v) in y.iter_mut().zip(&q5_values(b, false)) {
                *o = v as f32 * d + m;
            }
        }
        W::Q2_K => {
            let u = unpack_q2k(b);
            for (e, o) in y.iter_mut().enumerate() {
                let (dl, ml) = (u.d * u.sc[e / 16] as f32, u.dmin * u.mins[e / 16] as f32);
                *o = dl * u.q[e] as f32 - ml;
            }
        }
        W::Q3_K => {
            let u = unpack_q3k(b);
            for (e, o) in y.iter_mut().enumerate() {
                *o = u.d * u.sc[e / 16] as f32 * u.q[e] as f32;
            }
        }
        W::IQ4_XS => {
            let u = unpack_iq4xs(b);
            for (e, o) in y.iter_mut().enumerate() {
                *o = u.d * u.sc[e / 32] as f32 * u.q[e] as f32;
            }
        }
        other => unreachable!("lowbit::dequantize_block: {other} is not a format of this module"),
    }
}
