//! The x86-64 kernels: AVX2 + FMA + F16C tiles, with AVX-512 and VNNI builds of some, chosen
//! by the [`CpuLevel`] the caller passes (see [`crate::cpu`]).
//!
//! Every tile computes, for each (weight row, activation row) pair and each block, the same
//! exact integer sums and the same float updates as the scalar reference in [`crate::dot`], so
//! results do not depend on the tile shape or the level.
//!
//! - [`block32_tiles`]: ggml-layout Q4_0 / Q4_1 / Q8_0 / Q5_0 / Q5_1 / IQ4_NL against
//!   Q8_0 / Q8_1 activations, llama.cpp's arithmetic (VNNI build from
//!   [`CpuLevel::Avx512Vnni`] up), with [`block32_unpack`], each format's block as bytes;
//! - [`packed_tiles`]: the same formats but IQ4_NL in the row-interleaved layout of [`crate::packed`],
//!   one weight row per lane, and [`packed_tiles_512`], its 512-bit tiles for pairs of groups
//!   (from [`CpuLevel::Avx512Vnni`] up);
//! - [`kquant_packed`]: Q4_K / Q5_K / Q6_K in the row-interleaved layout of [`crate::kpacked`],
//!   sixteen rows per 512-bit register (VNNI) or eight per 256-bit one, and sixteen
//!   activation rows at a time in AMX tiles ([`amx`], from [`CpuLevel::Amx`] up);
//! - [`kquant_tiles`]: Q4_K / Q5_K / Q6_K / Q2_K / Q3_K / IQ4_XS super-blocks unpacked once
//!   per eight rows for every activation row ([`kquant_lowbit`] unpacks the last three), and
//!   [`kquant_decode`], the register-only path for a single activation row (Q4_K, Q5_K,
//!   Q6_K);
//! - [`float_tiles`]: F32 / F16 / BF16 weights against f32 activations;
//! - [`act_quant`]: the activation quantizers (Q8_0, Q8_1, Q8_K);
//! - [`tag`]: the weight-format tags the tiles take as const generic parameters.

pub(crate) mod act_quant;
pub(crate) mod amx;
pub(crate) mod bf16_tiles;
mod block32_tiles;
mod block32_unpack;
mod float_tiles;
pub(crate) mod i16_tiles;
mod kquant_decode;
mod kquant_lowbit;
mod kquant_packed;
mod kquant_tiles;
mod packed_tiles;
mod packed_tiles_512;
mod tag;

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
/// The CPU must support `level`, which must be [`CpuLevel::Avx2`] or above; `out` must be
/// valid for `act.m * w.rows()` writes and columns `r` must not be accessed by anyone else
/// meanwhile; `act` must hold `x` quantized for `w.format()`.
pub(crate) unsafe fn compute_rows(
    level: CpuLevel,
    w: &MatRef,
    x: &[f32],
    act: &ActBuf,
    r: Range<usize>,
    out: *mut f32,
) {
    // SAFETY: the caller's contract (the CPU supports `level` >= Avx2; `out` holds the m x rows outputs, columns `r` its alone; `act` quantized for the format) is each tile kernel's contract, and packed matrices only reach the packed tiles.
    unsafe {
        if w.is_packed() {
            match w.format() {
                WeightFormat::Q4_0 => packed_tiles::rows::<{ tag::Q4_0 }>(level, w, act, r, out),
                WeightFormat::Q4_1 => packed_tiles::rows::<{ tag::Q4_1 }>(level, w, act, r, out),
                WeightFormat::Q8_0 => packed_tiles::rows::<{ tag::Q8_0 }>(level, w, act, r, out),
                WeightFormat::Q5_0 => packed_tiles::rows::<{ tag::Q5_0 }>(level, w, act, r, out),
                WeightFormat::Q5_1 => packed_tiles::rows::<{ tag::Q5_1 }>(level, w, act, r, out),
                WeightFormat::Q4_K => kquant_packed::rows::<{ tag::Q4_K }>(level, w, act, r, out),
                WeightFormat::Q5_K => kquant_packed::rows::<{ tag::Q5_K }>(level, w, act, r, out),
                WeightFormat::Q6_K => kquant_packed::rows::<{ tag::Q6_K }>(level, w, act, r, out),
                other => unreachable!(
                    "packed {other:?}: MatRef::packed admits only Q4_0, Q4_1, Q8_0, Q5_0, Q5_1 and Q4_K, Q5_K, Q6_K"
                ),
            }
            return;
        }
        match w.format() {
            WeightFormat::F32 => float_tiles::rows::<{ tag::F32 }>(w, x, act.m, r, out),
            WeightFormat::F16 => float_tiles::rows::<{ tag::F16 }>(w, x, act.m, r, out),
            WeightFormat::BF16 => float_tiles::rows::<{ tag::BF16 }>(w, x, act.m, r, out),
            WeightFormat::Q4_0 => block32_tiles::rows::<{ tag::Q4_0 }>(level, w, act, r, out),
            WeightFormat::Q4_1 => block32_tiles::rows::<{ tag::Q4_1 }>(level, w, act, r, out),
            WeightFormat::Q8_0 => block32_tiles::rows::<{ tag::Q8_0 }>(level, w, act, r, out),
            WeightFormat::Q4_K => kquant_tiles::rows::<{ tag::Q4_K }>(level, w, act, r, out),
            WeightFormat::Q5_K => kquant_tiles::rows::<{ tag::Q5_K }>(level, w, act, r, out),
            WeightFormat::Q6_K => kquant_tiles::rows::<{ tag::Q6_K }>(level, w, act, r, out),
            WeightFormat::Q5_0 => block32_tiles::rows::<{ tag::Q5_0 }>(level, w, act, r, out),
            WeightFormat::Q5_1 => block32_tiles::rows::<{ tag::Q5_1 }>(level, w, act, r, out),
            WeightFormat::IQ4_NL => block32_tiles::rows::<{ tag::IQ4_NL }>(level, w, act, r, out),
            WeightFormat::Q2_K => kquant_tiles::rows::<{ tag::Q2_K }>(level, w, act, r, out),
            WeightFormat::Q3_K => kquant_tiles::rows::<{ tag::Q3_K }>(level, w, act, r, out),
            WeightFormat::IQ4_XS => kquant_tiles::rows::<{ tag::IQ4_XS }>(level, w, act, r, out),
        }
    }
}

/// Lane k of the result is the sum of the eight i32 lanes of `v[k]`.
///
/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
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
///
/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn reduce8_128(v: [__m128i; 8]) -> __m256i {
    let q0 = _mm_hadd_epi32(_mm_hadd_epi32(v[0], v[1]), _mm_hadd_epi32(v[2], v[3]));
    let q1 = _mm_hadd_epi32(_mm_hadd_epi32(v[4], v[5]), _mm_hadd_epi32(v[6], v[7]));
    _mm256_set_m128i(q1, q0)
}

/// Sum of the eight i32 lanes.
///
/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn hsum_epi32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

/// Random weights and activations shared by the tile tests of [`block32_tiles`] and [`packed_tiles`].
#[cfg(test)]
pub(crate) mod test_support {
    use crate::act::ActKind;
    use crate::{quantize_row, WeightFormat};

    /// The 32-value block formats, each with the activation format it is dotted against.
    pub(crate) const Q32_FORMATS: [(WeightFormat, ActKind); 3] = [
        (WeightFormat::Q4_0, ActKind::Q8_0),
        (WeightFormat::Q4_1, ActKind::Q8_1),
        (WeightFormat::Q8_0, ActKind::Q8_0),
    ];

    /// The 32-value formats added for llama.cpp's fallbacks (Q5_0 and Q5_1 have a packed
    /// layout, IQ4_NL has none).
    pub(crate) const LOWBIT32_FORMATS: [(WeightFormat, ActKind); 3] = [
        (WeightFormat::Q5_0, ActKind::Q8_0),
        (WeightFormat::Q5_1, ActKind::Q8_1),
        (WeightFormat::IQ4_NL, ActKind::Q8_0),
    ];

    /// A deterministic stream of values in -1..1.
    pub(crate) struct Lcg(pub(crate) u64);

    impl Lcg {
        pub(crate) fn next(&mut self) -> f32 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
    }

    /// `rows` rows of `cols` random values (-3..3) quantized to `format`, ggml layout.
    pub(crate) fn random_rows(
        rng: &mut Lcg,
        format: WeightFormat,
        rows: usize,
        cols: usize,
    ) -> Vec<u8> {
        let rb = format.row_bytes(cols).expect("block-aligned cols");
        let mut data = vec![0u8; rows * rb];
        for row in data.chunks_exact_mut(rb) {
            let src: Vec<f32> = (0..cols).map(|_| rng.next() * 3.0).collect();
            if quantize_row(format, &src, row).is_ok() {
                continue;
            }
            // No reference quantizer (Q5_0, Q5_1, IQ4_NL): random bits with a small f16 d,
            // and for Q5_1 a small m (both at the start of each 32-value block).
            let bb = format.block_bytes();
            for blk in row.chunks_exact_mut(bb) {
                for byte in blk.iter_mut() {
                    *byte = (rng.next() * 128.0 + 128.0) as u8;
                }
                let d = half::f16::from_f32(0.01 + 0.02 * rng.next().abs());
                blk[..2].copy_from_slice(&d.to_bits().to_le_bytes());
                if format == WeightFormat::Q5_1 {
                    let m = half::f16::from_f32(0.1 * rng.next());
                    blk[2..4].copy_from_slice(&m.to_bits().to_le_bytes());
                }
            }
        }
        data
    }
}
