//! K-quant tiles with a single activation row (decode of one sequence, odd tails): each weight
//! super-block is unpacked in registers and used at once, never stored. The integer sums are
//! the same exact values the [`super::kquant_tiles`] path computes from unpacked rows, and the float
//! update is the shared [`finish`], so results are identical whichever path runs.

use std::arch::x86_64::*;

use super::kquant_tiles::{f16_at, finish};
use super::tag::{self, Tag};
use super::{reduce8, reduce8_128};
use crate::act::ActBuf;
use crate::blocks::k4_scales_mins;

/// Super-block `b` of R weight rows (row 0's block at `w`, row stride `rb`) times activation
/// row `i0`: adds each row's contribution to `out[r]`.
///
/// # Safety
/// AVX2/FMA/F16C available; `w` points at R valid blocks of format F; `act` is Q8_K with row
/// `i0` and block `b`; `out` is valid for R reads and writes.
/// `V`: the scaled sums by `vpdpwssd` (AVX512-VNNI on 256-bit registers, one instruction for
/// `madd` + `add`) instead of plain AVX2; the same exact integers either way.
#[inline(always)]
pub(crate) unsafe fn direct<const F: Tag, const V: bool, const R: usize>(
    w: *const u8,
    rb: usize,
    act: &ActBuf,
    b: usize,
    i0: usize,
    out: *mut f32,
    ors: usize,
) {
    // SAFETY: as this function's contract; `V` is set only where the CPU has VNNI.
    unsafe {
        if V {
            direct_vnni::<F, R>(w, rb, act, b, i0, out, ors)
        } else {
            direct_avx2::<F, R>(w, rb, act, b, i0, out, ors)
        }
    }
}

/// [`direct_body`] compiled for AVX2.
///
/// # Safety
/// As [`direct`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn direct_avx2<const F: Tag, const R: usize>(
    w: *const u8,
    rb: usize,
    act: &ActBuf,
    b: usize,
    i0: usize,
    out: *mut f32,
    ors: usize,
) {
    // SAFETY: the contract of `direct`, which this forwards unchanged.
    unsafe { direct_body::<F, false, R>(w, rb, act, b, i0, out, ors) }
}

/// [`direct_body`] compiled for AVX2 plus AVX512-VNNI on 256-bit registers.
///
/// # Safety
/// As [`direct`], and the CPU must have AVX512-VNNI and AVX512-VL.
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
unsafe fn direct_vnni<const F: Tag, const R: usize>(
    w: *const u8,
    rb: usize,
    act: &ActBuf,
    b: usize,
    i0: usize,
    out: *mut f32,
    ors: usize,
) {
    // SAFETY: the contract of `direct`, which this forwards unchanged.
    unsafe { direct_body::<F, true, R>(w, rb, act, b, i0, out, ors) }
}

/// The body of [`direct`], inlined into each build.
///
/// # Safety
/// As [`direct`].
#[inline(always)]
unsafe fn direct_body<const F: Tag, const V: bool, const R: usize>(
    w: *const u8,
    rb: usize,
    act: &ActBuf,
    b: usize,
    i0: usize,
    out: *mut f32,
    ors: usize,
) {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        let nb = act.nb;
        let x = act.qs.as_ptr().add(i0 * act.cols + b * 256);
        let mut sumi = [_mm256_setzero_si256(); 8];
        let mut summ = [_mm_setzero_si128(); 8];
        let mut d = [0.0f32; 8];
        let mut dmin = [0.0f32; 8];
        for r in 0..R {
            let p = w.add(r * rb);
            if F == tag::Q4_K || F == tag::Q5_K {
                let bs32 = act.bs32.as_ptr().add((i0 * nb + b) * 8);
                (sumi[r], summ[r]) = if F == tag::Q5_K {
                    row_q45k::<true, V>(p, x, bs32)
                } else {
                    row_q45k::<false, V>(p, x, bs32)
                };
                d[r] = f16_at(p);
                dmin[r] = f16_at(p.add(2));
            } else {
                sumi[r] = row_q6k::<V>(p, x, act.bs16.as_ptr().add((i0 * nb + b) * 16));
                d[r] = f16_at(p.add(208));
            }
        }
        finish::<F, R, 1>(
            reduce8(sumi),
            reduce8_128(summ),
            &d,
            &dmin,
            act,
            b,
            i0,
            out,
            ors,
        );
    }
}

/// One Q4_K (`HIGH` = false) or Q5_K super-block times 256 activations: (lanes of the scaled
/// quant sum, lanes of the min sum).
///
/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[inline(always)]
unsafe fn row_q45k<const HIGH: bool, const V: bool>(
    p: *const u8,
    x: *const i8,
    bs32: *const i16,
) -> (__m256i, __m128i) {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        let (sc, mn) = k4_scales_mins(std::slice::from_raw_parts(p.add(4), 12));
        let sc8 = _mm_cvtepu8_epi16(_mm_loadl_epi64(sc.as_ptr().cast()));
        let scales = _mm256_set_m128i(sc8, sc8);
        let mins = _mm_cvtepu8_epi16(_mm_loadl_epi64(mn.as_ptr().cast()));
        let summ = _mm_madd_epi16(mins, _mm_loadu_si128(bs32.cast()));
        let m4 = _mm256_set1_epi8(0x0F);
        let one = _mm256_set1_epi8(1);
        let (qs, hb) = if HIGH {
            (p.add(48), _mm256_loadu_si256(p.add(16).cast()))
        } else {
            (p.add(16), m4)
        };
        let mut acc = _mm256_setzero_si256();
        for j in 0..4 {
            let v = _mm256_loadu_si256(qs.add(32 * j).cast());
            let mut lo = _mm256_and_si256(v, m4);
            let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4);
            if HIGH {
                let bl =
                    _mm256_and_si256(_mm256_srl_epi16(hb, _mm_cvtsi32_si128(2 * j as i32)), one);
                let bh = _mm256_and_si256(
                    _mm256_srl_epi16(hb, _mm_cvtsi32_si128(2 * j as i32 + 1)),
                    one,
                );
                lo = _mm256_or_si256(lo, _mm256_slli_epi16::<4>(bl));
                hi = _mm256_or_si256(hi, _mm256_slli_epi16::<4>(bh));
            }
            // Broadcast the i16 scale of sub-blocks 2j and 2j+1 to every lane.
            let s0 = _mm256_shuffle_epi8(
                scales,
                _mm256_set1_epi16((((4 * j + 1) << 8) | (4 * j)) as i16),
            );
            let s1 = _mm256_shuffle_epi8(
                scales,
                _mm256_set1_epi16((((4 * j + 3) << 8) | (4 * j + 2)) as i16),
            );
            let q0 = _mm256_maddubs_epi16(lo, _mm256_loadu_si256(x.add(64 * j).cast()));
            let q1 = _mm256_maddubs_epi16(hi, _mm256_loadu_si256(x.add(64 * j + 32).cast()));
            acc = if V {
                _mm256_dpwssd_epi32(_mm256_dpwssd_epi32(acc, q0, s0), q1, s1)
            } else {
                let p0 = _mm256_madd_epi16(q0, s0);
                let p1 = _mm256_madd_epi16(q1, s1);
                _mm256_add_epi32(acc, _mm256_add_epi32(p0, p1))
            };
        }
        (acc, summ)
    }
}

/// One Q6_K super-block times 256 activations: lanes of `sum sc * (q - 32) * x`.
///
/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[inline(always)]
unsafe fn row_q6k<const V: bool>(p: *const u8, x: *const i8, bs16: *const i16) -> __m256i {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        let sc = _mm_loadu_si128(p.add(192).cast());
        let corr = _mm256_madd_epi16(_mm256_cvtepi8_epi16(sc), _mm256_loadu_si256(bs16.cast()));
        let mut acc = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32::<5>(corr));
        let m4 = _mm256_set1_epi8(0x0F);
        let m3 = _mm256_set1_epi8(3);
        for n in 0..2 {
            let ql0 = _mm256_loadu_si256(p.add(64 * n).cast());
            let ql1 = _mm256_loadu_si256(p.add(64 * n + 32).cast());
            let qh = _mm256_loadu_si256(p.add(128 + 32 * n).cast());
            let q = [
                _mm256_or_si256(
                    _mm256_and_si256(ql0, m4),
                    _mm256_slli_epi16::<4>(_mm256_and_si256(qh, m3)),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(ql1, m4),
                    _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srli_epi16::<2>(qh), m3)),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m4),
                    _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srli_epi16::<4>(qh), m3)),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4),
                    _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srli_epi16::<6>(qh), m3)),
                ),
            ];
            for (k, &qk) in q.iter().enumerate() {
                let kk = (4 * n + k) as i8;
                // Scale of values 0..16 of this chunk in lanes 0..8, of values 16..32 in lanes 8..16.
                let mask = _mm_setr_epi8(
                    2 * kk,
                    2 * kk,
                    2 * kk,
                    2 * kk,
                    2 * kk,
                    2 * kk,
                    2 * kk,
                    2 * kk,
                    2 * kk + 1,
                    2 * kk + 1,
                    2 * kk + 1,
                    2 * kk + 1,
                    2 * kk + 1,
                    2 * kk + 1,
                    2 * kk + 1,
                    2 * kk + 1,
                );
                let scale = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc, mask));
                let xk = _mm256_loadu_si256(x.add(128 * n + 32 * k).cast());
                let q = _mm256_maddubs_epi16(qk, xk);
                acc = if V {
                    _mm256_dpwssd_epi32(acc, q, scale)
                } else {
                    _mm256_add_epi32(acc, _mm256_madd_epi16(q, scale))
                };
            }
        }
        acc
    }
}
