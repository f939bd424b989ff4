//! Byte layouts of the ggml blocks and the scalar unpacking shared by dequantization and the
//! reference dot products.

use half::{bf16, f16};

use crate::cpu::CpuLevel;

/// Values per block of Q4_0, Q4_1, Q8_0 (and the Q8_0/Q8_1 activation blocks).
pub(crate) const QK: usize = 32;
/// Values per K-quant super-block (and per Q8_K activation block).
pub(crate) const QK_K: usize = 256;

/// Reads a little-endian f16 at `off` as f32.
#[inline]
pub(crate) fn f16_at(b: &[u8], off: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[off], b[off + 1]])).to_f32()
}

/// Reads a little-endian bf16 at `off` as f32.
#[inline]
pub(crate) fn bf16_at(b: &[u8], off: usize) -> f32 {
    bf16::from_bits(u16::from_le_bytes([b[off], b[off + 1]])).to_f32()
}

/// Reads a little-endian f32 at `off`.
#[inline]
pub(crate) fn f32_at(b: &[u8], off: usize) -> f32 {
    f32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// Rounds to f16 and back, as storing a scale in an f16 field does.
///
/// With F16C when the CPU level ([`CpuLevel::detect`]) is AVX2 or above: `half`'s conversion
/// is software unless the whole build targets F16C, and activation quantization rounds two
/// scales per 32 values (2 % of a server's time). Both round to nearest even and keep
/// infinities, NaNs and subnormals.
#[inline]
pub(crate) fn round_f16(x: f32) -> f32 {
    round_f16_at(CpuLevel::detect(), x)
}

/// [`round_f16`] at `level` (which the CPU must support; a lower one is always fine).
#[inline]
pub(crate) fn round_f16_at(level: CpuLevel, x: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if level >= CpuLevel::Avx2 {
        // SAFETY: a level of AVX2 or above is only used on CPUs with F16C.
        return unsafe { round_f16_f16c(x) };
    }
    let _ = level;
    f16::from_f32(x).to_f32()
}

/// [`round_f16`] with F16C.
///
/// # Safety
/// The CPU must support F16C.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "f16c")]
pub(crate) unsafe fn round_f16_f16c(x: f32) -> f32 {
    use std::arch::x86_64::*;
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(
        _mm_set_ss(x),
    )))
}

/// ggml's `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` (0..8) of Q4_K/Q5_K.
pub fn get_scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// All eight (scale, min) pairs of a Q4_K/Q5_K block at once (ggml's `utmp` unpacking).
#[inline]
pub(crate) fn k4_scales_mins(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    const KM1: u32 = 0x3f3f_3f3f;
    const KM2: u32 = 0x0f0f_0f0f;
    const KM3: u32 = 0x0303_0303;
    let w = |i: usize| u32::from_le_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]);
    let (u0, u1, u2) = (w(0), w(4), w(8));
    let u3 = ((u2 >> 4) & KM2) | (((u1 >> 6) & KM3) << 4);
    let mins_lo = u1 & KM1;
    let sc_hi = (u2 & KM2) | (((u0 >> 6) & KM3) << 4);
    let sc_lo = u0 & KM1;
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    sc[..4].copy_from_slice(&sc_lo.to_le_bytes());
    sc[4..].copy_from_slice(&sc_hi.to_le_bytes());
    mn[..4].copy_from_slice(&mins_lo.to_le_bytes());
    mn[4..].copy_from_slice(&u3.to_le_bytes());
    (sc, mn)
}

/// A K-quant super-block with its quants spread to one unsigned byte per value, in value order.
pub(crate) struct KUnpacked {
    /// Unsigned quants (0..15 for Q4_K, 0..31 for Q5_K, 0..63 for Q6_K).
    pub q: [u8; QK_K],
    /// Sub-block scales: 8 (per 32 values) for Q4_K/Q5_K, 16 signed (per 16 values) for Q6_K.
    pub sc: [i16; 16],
    /// Sub-block mins (Q4_K/Q5_K), per 32 values.
    pub mins: [i16; 8],
    /// Super-block scale.
    pub d: f32,
    /// Super-block min scale (Q4_K/Q5_K).
    pub dmin: f32,
}

impl KUnpacked {
    fn zeroed() -> Self {
        KUnpacked {
            q: [0; QK_K],
            sc: [0; 16],
            mins: [0; 8],
            d: 0.0,
            dmin: 0.0,
        }
    }
}

/// Unpacks a 144-byte Q4_K block.
pub(crate) fn unpack_q4k(b: &[u8]) -> KUnpacked {
    let mut u = KUnpacked::zeroed();
    u.d = f16_at(b, 0);
    u.dmin = f16_at(b, 2);
    let (sc, mn) = k4_scales_mins(&b[4..16]);
    for s in 0..8 {
        u.sc[s] = sc[s] as i16;
        u.mins[s] = mn[s] as i16;
    }
    let qs = &b[16..144];
    for j in 0..4 {
        for l in 0..32 {
            let v = qs[32 * j + l];
            u.q[64 * j + l] = v & 0xF;
            u.q[64 * j + 32 + l] = v >> 4;
        }
    }
    u
}

/// Unpacks a 176-byte Q5_K block.
pub(crate) fn unpack_q5k(b: &[u8]) -> KUnpacked {
    let mut u = KUnpacked::zeroed();
    u.d = f16_at(b, 0);
    u.dmin = f16_at(b, 2);
    let (sc, mn) = k4_scales_mins(&b[4..16]);
    for s in 0..8 {
        u.sc[s] = sc[s] as i16;
        u.mins[s] = mn[s] as i16;
    }
    let qh = &b[16..48];
    let qs = &b[48..176];
    for j in 0..4 {
        for l in 0..32 {
            let v = qs[32 * j + l];
            let h = qh[l];
            u.q[64 * j + l] = (v & 0xF) | (((h >> (2 * j)) & 1) << 4);
            u.q[64 * j + 32 + l] = (v >> 4) | (((h >> (2 * j + 1)) & 1) << 4);
        }
    }
    u
}

/// Unpacks a 210-byte Q6_K block (quants stay offset by +32).
pub(crate) fn unpack_q6k(b: &[u8]) -> KUnpacked {
    let mut u = KUnpacked::zeroed();
    let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
    u.d = f16_at(b, 208);
    for (g, &s) in sc.iter().enumerate() {
        u.sc[g] = s as i8 as i16;
    }
    for n in 0..2 {
        let (ql, qh) = (&ql[64 * n..], &qh[32 * n..]);
        let q = &mut u.q[128 * n..128 * n + 128];
        for l in 0..32 {
            q[l] = (ql[l] & 0xF) | ((qh[l] & 3) << 4);
            q[l + 32] = (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4);
            q[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
            q[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
        }
    }
    u
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k4_scales_match_get_scale_min_k4() {
        let mut seed = 0x1234_5678u32;
        for _ in 0..1000 {
            let mut q = [0u8; 12];
            for b in q.iter_mut() {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                *b = (seed >> 24) as u8;
            }
            let (sc, mn) = k4_scales_mins(&q);
            for j in 0..8 {
                assert_eq!(get_scale_min_k4(j, &q), (sc[j], mn[j]));
            }
        }
    }

    /// The rounding at every level equals `half`'s software one: ties, subnormals, overflow, NaN.
    #[test]
    fn round_f16_matches_half() {
        let mut vals = vec![
            0.0f32,
            -0.0,
            1.0,
            65504.0,
            65520.0,
            1e6,
            -1e6,
            6e-8,
            3e-8,
            1e-5,
            5.96e-8,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MIN_POSITIVE,
        ];
        // Ties to even around 1.0 (f16 spacing 2^-10) and a sweep of bit patterns.
        vals.extend([1.0 + 2f32.powi(-11), 1.0 + 3.0 * 2f32.powi(-11)]);
        vals.extend((0..200_000u32).map(|i| f32::from_bits(i.wrapping_mul(2_654_435_761))));
        for level in CpuLevel::supported() {
            for &x in &vals {
                let (a, b) = (round_f16_at(level, x), f16::from_f32(x).to_f32());
                assert!(
                    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                    "{level}: {x:e}: {a:e} vs {b:e}"
                );
            }
        }
    }
}
