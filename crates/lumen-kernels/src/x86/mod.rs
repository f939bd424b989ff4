//! The x86-64 kernels: AVX2 + FMA + F16C tiles, with AVX-512 and VNNI builds of some, chosen
//! by the [`CpuLevel`] the caller passes (see [`crate::cpu`]).
//!
//! Every tile computes, for each (weight row, activation row) pair and each block, the same
//! exact integer sums and the same float updates as the scalar reference in [`crate::dot`], so
//! results do not depend on the tile shape.

pub(crate) mod fl;
pub(crate) mod kdirect;
pub(crate) mod kq;
pub(crate) mod p8;
mod p8x2;
pub(crate) mod q32;
pub(crate) mod quant;

use std::arch::x86_64::*;
use std::ops::Range;

use crate::act::ActBuf;
use crate::cpu::CpuLevel;
use crate::matmul::MatRef;
use crate::WeightFormat;

/// Activation rows processed together, so that their quantized rows stay in cache.
pub(crate) const M_CHUNK: usize = 64;

/// Computes columns `r` of all output rows with the kernels of `level` (AVX2 or above).
///
/// # Safety
/// The CPU must support `level`, which must be [`CpuLevel::Avx2`] or above; `out` must be valid for `act.m * w.rows()` writes
/// and columns `r` must not be accessed by anyone else meanwhile; `act` must hold `x` quantized
/// for `w.format()`.
pub(crate) unsafe fn compute_rows(
    level: CpuLevel,
    w: &MatRef,
    x: &[f32],
    act: &ActBuf,
    r: Range<usize>,
    out: *mut f32,
) {
    if w.is_packed() {
        match w.format() {
            WeightFormat::Q4_0 => p8::rows::<{ p8::Q4_0 }>(level, w, act, r, out),
            WeightFormat::Q4_1 => p8::rows::<{ p8::Q4_1 }>(level, w, act, r, out),
            WeightFormat::Q8_0 => p8::rows::<{ p8::Q8_0 }>(level, w, act, r, out),
            other => unreachable!("packed {other:?}: MatRef::packed admits only Q4_0, Q4_1, Q8_0"),
        }
        return;
    }
    match w.format() {
        WeightFormat::F32 => fl::rows::<{ fl::F32 }>(w, x, act.m, r, out),
        WeightFormat::F16 => fl::rows::<{ fl::F16 }>(w, x, act.m, r, out),
        WeightFormat::BF16 => fl::rows::<{ fl::BF16 }>(w, x, act.m, r, out),
        WeightFormat::Q4_0 => q32::rows::<{ q32::Q4_0 }>(level, w, act, r, out),
        WeightFormat::Q4_1 => q32::rows::<{ q32::Q4_1 }>(level, w, act, r, out),
        WeightFormat::Q8_0 => q32::rows::<{ q32::Q8_0 }>(level, w, act, r, out),
        WeightFormat::Q4_K => kq::rows::<{ kq::Q4K }>(w, act, r, out),
        WeightFormat::Q5_K => kq::rows::<{ kq::Q5K }>(w, act, r, out),
        WeightFormat::Q6_K => kq::rows::<{ kq::Q6K }>(w, act, r, out),
    }
}

/// Lane k of the result is the sum of the eight i32 lanes of `v[k]`.
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn reduce8(v: [__m256i; 8]) -> __m256i {
    let h01 = _mm256_hadd_epi32(v[0], v[1]);
    let h23 = _mm256_hadd_epi32(v[2], v[3]);
    let h45 = _mm256_hadd_epi32(v[4], v[5]);
    let h67 = _mm256_hadd_epi32(v[6], v[7]);
    let q0 = _mm256_hadd_epi32(h01, h23);
    let q1 = _mm256_hadd_epi32(h45, h67);
    let lo = _mm256_permute2x128_si256::<0x20>(q0, q1);
    let hi = _mm256_permute2x128_si256::<0x31>(q0, q1);
    _mm256_add_epi32(lo, hi)
}

/// Lane k of the result is the sum of the four i32 lanes of `v[k]`.
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn reduce8_128(v: [__m128i; 8]) -> __m256i {
    let q0 = _mm_hadd_epi32(_mm_hadd_epi32(v[0], v[1]), _mm_hadd_epi32(v[2], v[3]));
    let q1 = _mm_hadd_epi32(_mm_hadd_epi32(v[4], v[5]), _mm_hadd_epi32(v[6], v[7]));
    _mm256_set_m128i(q1, q0)
}

/// Sum of the eight i32 lanes.
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn hsum_epi32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

/// Random weights and activations shared by the tile tests of [`q32`] and [`p8`].
#[cfg(test)]
pub(crate) mod test_support {
    use crate::act::ActKind;
    use crate::{quantize_row, WeightFormat};

    /// The 32-value block formats, each with the activation format it is dotted against.
    pub(crate) const Q32_FORMATS: [(WeightFormat, ActKind); 3] =
        [(WeightFormat::Q4_0, ActKind::Q8_0), (WeightFormat::Q4_1, ActKind::Q8_1), (WeightFormat::Q8_0, ActKind::Q8_0)];

    /// A deterministic stream of values in -1..1.
    pub(crate) struct Lcg(pub(crate) u64);

    impl Lcg {
        pub(crate) fn next(&mut self) -> f32 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
    }

    /// `rows` rows of `cols` random values (-3..3) quantized to `format`, ggml layout.
    pub(crate) fn random_rows(rng: &mut Lcg, format: WeightFormat, rows: usize, cols: usize) -> Vec<u8> {
        let rb = format.row_bytes(cols).expect("block-aligned cols");
        let mut data = vec![0u8; rows * rb];
        for row in data.chunks_exact_mut(rb) {
            let src: Vec<f32> = (0..cols).map(|_| rng.next() * 3.0).collect();
            quantize_row(format, &src, row).expect("a quantizable format");
        }
        data
    }
}
