//! 512-bit tiles for the packed layout: two groups of eight weight rows side by side in one
//! register (lane `8g + j` is group g's row j), times up to [`C`] activation rows.
//!
//! The arithmetic per lane is exactly [`super::packed_tiles`]'s (same integer sums, same convert, scale
//! product and FMAs in the same order), so results are the same bits; what changes is that
//! one instruction does the work of two. On AVX-512 cores that execute a 512-bit operation as
//! two 256-bit halves (AMD Zen 4) the arithmetic rate is unchanged, but the 256-bit tiles
//! were limited by how many instructions the core can issue (loads, unpacking, scale
//! products and conversions around each `vpdpbusd`), not by `vpdpbusd` itself. Measured with
//! `LUMEN_BENCH_THREADS=2 cargo bench -p lumen-kernels --bench matmul -- x576`, m=32: cold
//! 65536x576 Q4_1 241 -> 303 GMAC/s, 49152x576 Q8_0 234 -> 267-288.

use std::arch::x86_64::*;

use super::packed_tiles::{fifth, fifth_at, has_min, offset, record, scales, PREFETCH_TILES};
use super::tag::{self, Tag};
use crate::act::ActBuf;
use crate::packed::PACK_ROWS;

/// Activation rows per tile (fewer only for the last rows of a chunk): with 8, the integer
/// sums and float accumulators take 16 of the 32 registers (m=32, two threads, cold
/// 65536x576 Q4_1: 12 rows measured slower).
pub(super) const C: usize = 8;

/// [`tile`] for `n` (1..=[`C`]) activation rows.
///
/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn tile_n<const F: Tag>(
    n: usize,
    w: *const u8,
    gb: usize,
    act: &ActBuf,
    i0: usize,
    out: *mut f32,
    ors: usize,
    left: usize,
    prefetch: bool,
) {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        match n {
            8 => tile::<F, 8>(w, gb, act, i0, out, ors, left, prefetch),
            7 => tile::<F, 7>(w, gb, act, i0, out, ors, left, prefetch),
            6 => tile::<F, 6>(w, gb, act, i0, out, ors, left, prefetch),
            5 => tile::<F, 5>(w, gb, act, i0, out, ors, left, prefetch),
            4 => tile::<F, 4>(w, gb, act, i0, out, ors, left, prefetch),
            3 => tile::<F, 3>(w, gb, act, i0, out, ors, left, prefetch),
            2 => tile::<F, 2>(w, gb, act, i0, out, ors, left, prefetch),
            _ => tile::<F, 1>(w, gb, act, i0, out, ors, left, prefetch),
        }
    }
}

/// 32 bytes of group 0 at `p` and of group 1 at `p + gb`, in the low and high halves.
///
/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[inline(always)]
unsafe fn load2(p: *const u8, gb: usize) -> __m512i {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        _mm512_inserti64x4::<1>(
            _mm512_castsi256_si512(_mm256_loadu_si256(p.cast())),
            _mm256_loadu_si256(p.add(gb).cast()),
        )
    }
}

/// Eight f16 scales of group 0 at `p` and of group 1 at `p + gb`, as 16 f32 lanes.
///
/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[inline(always)]
unsafe fn scales2(p: *const u8, gb: usize) -> __m512 {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        _mm512_cvtph_ps(_mm256_inserti128_si256::<1>(
            _mm256_castsi128_si256(_mm_loadu_si128(p.cast())),
            _mm_loadu_si128(p.add(gb).cast()),
        ))
    }
}

/// Groups 0 and 1 from `w` (stride `gb` bytes) times activation rows `i0..i0+N`, as
/// [`super::packed_tiles::tile`] computes them for one group, with lane `8g + j` holding group g's row
/// j; writes the 16 rows for activation row c to `out[c * ors..]`, at most `left` of them.
///
/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const F: Tag, const N: usize>(
    w: *const u8,
    gb: usize,
    act: &ActBuf,
    i0: usize,
    out: *mut f32,
    ors: usize,
    left: usize,
    prefetch: bool,
) {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        let (rec, sb, nb, cols) = (record(F), scales(F), act.nb, act.cols);
        let xp = act.qs.as_ptr().add(i0 * cols);
        let mut acc = [_mm512_setzero_ps(); N];
        let ahead = w.wrapping_add(PREFETCH_TILES * 2 * gb);
        for b in 0..nb {
            if prefetch {
                for g in 0..2 {
                    for off in (0..rec).step_by(64) {
                        _mm_prefetch::<_MM_HINT_T0>(
                            ahead.wrapping_add(g * gb + b * rec + off).cast(),
                        );
                    }
                }
            }
            let mut isum = [_mm512_setzero_si512(); N];
            let k = offset(F, true);
            if k != 0 {
                for (c, s) in isum.iter_mut().enumerate() {
                    *s = _mm512_set1_epi32(-k * *act.isum.as_ptr().add(act.at(b, i0 + c)));
                }
            }
            let xrow = xp.add(b * 32);
            let qrow = w.add(b * rec + sb);
            if F == tag::Q8_0 {
                for v in 0..8 {
                    let u = _mm512_xor_si512(load2(qrow.add(32 * v), gb), _mm512_set1_epi8(-128));
                    for (c, s) in isum.iter_mut().enumerate() {
                        *s = _mm512_dpbusd_epi32(*s, u, bcast16(xrow.add(c * cols + 4 * v)));
                    }
                }
            } else {
                let qh = if fifth(F) {
                    load2(w.add(b * rec + fifth_at(F)), gb)
                } else {
                    _mm512_setzero_si512()
                };
                for v in 0..4 {
                    let (lo, hi) = values::<F>(load2(qrow.add(32 * v), gb), qh, v);
                    for (c, s) in isum.iter_mut().enumerate() {
                        *s = _mm512_dpbusd_epi32(*s, lo, bcast16(xrow.add(c * cols + 4 * v)));
                        *s = _mm512_dpbusd_epi32(*s, hi, bcast16(xrow.add(c * cols + 16 + 4 * v)));
                    }
                }
            }
            let sp = w.add(b * rec);
            let dw = scales2(sp, gb);
            let mw = if has_min(F) {
                scales2(sp.add(16), gb)
            } else {
                dw
            };
            for (c, (a, s)) in acc.iter_mut().zip(&isum).enumerate() {
                let k = act.at(b, i0 + c);
                let dd = _mm512_mul_ps(dw, _mm512_set1_ps(*act.d.as_ptr().add(k)));
                *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(*s), dd, *a);
                if has_min(F) {
                    *a = _mm512_fmadd_ps(mw, _mm512_set1_ps(*act.s.as_ptr().add(k)), *a);
                }
            }
        }
        let n = left.min(2 * PACK_ROWS);
        for (c, a) in acc.iter().enumerate() {
            let o = out.add(c * ors);
            if n == 2 * PACK_ROWS {
                _mm512_storeu_ps(o, *a);
            } else {
                let mut t = [0.0f32; 2 * PACK_ROWS];
                _mm512_storeu_ps(t.as_mut_ptr(), *a);
                std::ptr::copy_nonoverlapping(t.as_ptr(), o, n);
            }
        }
    }
}

/// [`super::packed_tiles`]'s `values` for two groups side by side: quant vector `v`'s low and
/// high nibbles, with Q5's fifth bits from `qh` moved to bit 4.
///
/// # Safety
/// The CPU must support AVX512-F and -BW.
#[inline(always)]
unsafe fn values<const F: Tag>(q: __m512i, qh: __m512i, v: usize) -> (__m512i, __m512i) {
    // SAFETY: register operations only, on a CPU with AVX512-F and -BW (the caller's contract).
    unsafe {
        let m4 = _mm512_set1_epi8(0x0F);
        let lo = _mm512_and_si512(q, m4);
        let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(q), m4);
        if !fifth(F) {
            return (lo, hi);
        }
        // A 16-bit shift by at most 4 never carries a neighbour byte's bit into bit 4.
        let (l5, h5) = match v {
            0 => (_mm512_slli_epi16::<4>(qh), _mm512_slli_epi16::<3>(qh)),
            1 => (_mm512_slli_epi16::<2>(qh), _mm512_slli_epi16::<1>(qh)),
            2 => (qh, _mm512_srli_epi16::<1>(qh)),
            _ => (_mm512_srli_epi16::<2>(qh), _mm512_srli_epi16::<3>(qh)),
        };
        let b4 = _mm512_set1_epi8(0x10);
        (
            _mm512_or_si512(lo, _mm512_and_si512(l5, b4)),
            _mm512_or_si512(hi, _mm512_and_si512(h5, b4)),
        )
    }
}

/// Four activation bytes at `p` broadcast to every lane.
///
/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[inline(always)]
unsafe fn bcast16(p: *const i8) -> __m512i {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe { _mm512_set1_epi32(std::ptr::read_unaligned(p.cast::<i32>())) }
}
