//! AVX2 tiles for the K-quants (Q4_K, Q5_K, Q6_K, and Q2_K, Q3_K, IQ4_XS unpacked by
//! [`super::kquant_lowbit`]) against Q8_K activations.
//!
//! For each super-block, up to eight weight rows are unpacked once into [`KRow`]s (one byte per
//! value plus ready-made i16 scale vectors) and then dotted with every activation row of the
//! chunk. All three formats share the inner loop `madd(maddubs(q, x), scale)`; they differ in
//! unpacking and in the correction term (mins for Q4_K/Q5_K per 32 values and Q2_K per 16,
//! the -32 offset for Q6_K, -4 for Q3_K; IQ4_XS's signed values move their sign onto the
//! activations). The per-super-block float update is added into `out`, which starts at zero.
//! The single-row path of [`super::kquant_decode`] serves Q4_K, Q5_K and Q6_K; the others
//! run their one-row tails through the same unpacked rows.

use std::arch::x86_64::*;
use std::ops::Range;

use super::kquant_decode::direct;
use super::kquant_lowbit::{unpack_iq4xs, unpack_q2k, unpack_q3k};
use super::tag::{self, Tag};
use super::{reduce8, reduce8_128, M_CHUNK};
use crate::act::ActBuf;
use crate::blocks::k4_scales_mins;
use crate::cpu::CpuLevel;
use crate::matmul::MatRef;

const fn block_bytes(f: Tag) -> usize {
    match f {
        tag::Q4_K => 144,
        tag::Q5_K => 176,
        tag::Q2_K => 84,
        tag::Q3_K => 110,
        tag::IQ4_XS => 136,
        _ => 210,
    }
}

/// Whether the format has a min term (`- dmin * sum(min * bsum)`).
const fn has_min(f: Tag) -> bool {
    f == tag::Q4_K || f == tag::Q5_K || f == tag::Q2_K
}

/// Whether [`super::kquant_decode`] has a register-only single-row path for the format.
const fn has_direct(f: Tag) -> bool {
    f == tag::Q4_K || f == tag::Q5_K || f == tag::Q6_K
}

/// One unpacked super-block of one weight row.
#[repr(C, align(32))]
#[derive(Clone, Copy)]
pub(super) struct KRow {
    /// Quants, one byte per value, in value order: unsigned, except IQ4_XS's signed values.
    pub(super) q: [u8; 256],
    /// For each 32-value chunk, the i16 scale of each `maddubs` output lane.
    pub(super) scv: [[i16; 16]; 8],
    /// Q6_K and Q3_K: the 16 sub-block scales (for the -32 / -4 correction).
    pub(super) sc16: [i16; 16],
    /// Q4_K/Q5_K: the 8 sub-block mins.
    pub(super) mins: [i16; 8],
    /// Q2_K: the 16 sub-block mins.
    pub(super) mins16: [i16; 16],
    pub(super) d: f32,
    pub(super) dmin: f32,
}

const KROW_ZERO: KRow = KRow {
    q: [0; 256],
    scv: [[0; 16]; 8],
    sc16: [0; 16],
    mins: [0; 8],
    mins16: [0; 16],
    d: 0.0,
    dmin: 0.0,
};

/// Computes columns `r` of every output row for a K-quant matrix, with the VNNI build of the
/// multi-row tiles from [`CpuLevel::Avx512Vnni`] up.
///
/// # Safety
/// As [`super::compute_rows`].
pub(crate) unsafe fn rows<const F: Tag>(
    level: CpuLevel,
    w: &MatRef,
    act: &ActBuf,
    r: Range<usize>,
    out: *mut f32,
) {
    // SAFETY: as this function's contract; `level` says which instructions the CPU has.
    unsafe {
        if level >= CpuLevel::Avx512Vnni {
            rows_with::<F, true>(w, act, r, out)
        } else {
            rows_with::<F, false>(w, act, r, out)
        }
    }
}

/// [`rows`] with the multi-row tiles' scaled sums done by `vpdpwssd` (`V`, AVX512-VNNI on
/// 256-bit registers: one instruction for `madd` + `add`) or by plain AVX2. Both give the same
/// exact lane sums (neither saturates), so the results are bit-identical.
///
/// # Safety
/// As [`super::compute_rows`]; `V` only where the CPU has AVX512-VNNI and AVX512-VL.
unsafe fn rows_with<const F: Tag, const V: bool>(
    w: &MatRef,
    act: &ActBuf,
    r: Range<usize>,
    out: *mut f32,
) {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        let (rb, base, ors, m, nb) = (w.row_bytes(), w.data().as_ptr(), w.rows(), act.m, act.nb);
        let bb = block_bytes(F);
        for i in 0..m {
            for j in r.clone() {
                *out.add(i * ors + j) = 0.0;
            }
        }
        let mut buf = [KROW_ZERO; 8];
        let bp = buf.as_mut_ptr();
        let mut i0 = 0;
        while i0 < m {
            let i1 = m.min(i0 + M_CHUNK);
            let mut j = r.start;
            while j < r.end {
                let rt = (r.end - j).min(8);
                for b in 0..nb {
                    if i1 - i0 >= 2 || !has_direct(F) {
                        prefetch_next_tile(base, rb, ors, j + 8, b, nb);
                        for k in 0..rt {
                            unpack::<F>(base.add((j + k) * rb + b * bb), &mut *bp.add(k));
                        }
                    }
                    let o = out.add(j);
                    let mut i = i0;
                    if rt == 8 {
                        while i + 2 <= i1 {
                            pairs::<F, V, 4, 2>(bp, act, b, i, o.add(i * ors), ors);
                            pairs::<F, V, 4, 2>(bp.add(4), act, b, i, o.add(i * ors + 4), ors);
                            i += 2;
                        }
                        if i < i1 && !has_direct(F) {
                            pairs::<F, V, 4, 1>(bp, act, b, i, o.add(i * ors), ors);
                            pairs::<F, V, 4, 1>(bp.add(4), act, b, i, o.add(i * ors + 4), ors);
                        } else if i < i1 {
                            if i1 - i0 == 1 {
                                prefetch_next_tile(base, rb, ors, j + 8, b, nb);
                            }
                            direct::<F, V, 8>(
                                base.add(j * rb + b * bb),
                                rb,
                                act,
                                b,
                                i,
                                o.add(i * ors),
                                ors,
                            );
                        }
                    } else {
                        for k in 0..rt {
                            let mut i = i0;
                            while i + 2 <= i1 {
                                pairs::<F, V, 1, 2>(bp.add(k), act, b, i, o.add(i * ors + k), ors);
                                i += 2;
                            }
                            if i < i1 && !has_direct(F) {
                                pairs::<F, V, 1, 1>(bp.add(k), act, b, i, o.add(i * ors + k), ors);
                            } else if i < i1 {
                                direct::<F, V, 1>(
                                    base.add((j + k) * rb + b * bb),
                                    rb,
                                    act,
                                    b,
                                    i,
                                    o.add(i * ors + k),
                                    ors,
                                );
                            }
                        }
                    }
                }
                j += rt;
            }
            i0 = i1;
        }
    }
}

/// A tile reads its eight rows block by block, so its loads hop between eight
/// places a row apart; with short rows (2048 columns: 1152 bytes in Q4_K) those hops fall
/// back and forth inside the same few pages and the hardware prefetcher stops following,
/// leaving every block a cache miss (single-row decode of a 32768x2048 Q4_K GEMV ran at half
/// the rate of an 8192x8192 one of the same size, Q6_K at a third). The next tile's rows are one contiguous range, so this
/// prefetches it in order, a `1/nb` share per block of the current tile: one tile ahead,
/// which keeps a steady stream of requests in flight without evicting what is in use.
/// `next_row` may be past the matrix (nothing is fetched then).
#[inline]
fn prefetch_next_tile(
    base: *const u8,
    rb: usize,
    rows: usize,
    next_row: usize,
    b: usize,
    nb: usize,
) {
    let span = rows.min(next_row + 8).saturating_sub(next_row) * rb;
    let per = span.div_ceil(nb);
    let (lo, hi) = (b * per, ((b + 1) * per).min(span));
    let mut off = lo;
    while off < hi {
        // SAFETY: a prefetch never faults, whatever the address; `off < span` keeps it inside
        // the matrix anyway, and SSE is part of x86_64.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(base.wrapping_add(next_row * rb + off).cast()) };
        off += 64;
    }
}

/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unpack<const F: Tag>(p: *const u8, row: &mut KRow) {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        match F {
            tag::Q4_K => unpack_q45k::<false>(p, row),
            tag::Q5_K => unpack_q45k::<true>(p, row),
            tag::Q2_K => unpack_q2k(p, row),
            tag::Q3_K => unpack_q3k(p, row),
            tag::IQ4_XS => unpack_iq4xs(p, row),
            _ => unpack_q6k(p, row),
        }
    }
}

/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn f16_at(p: *const u8) -> f32 {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        let h = std::ptr::read_unaligned(p.cast::<u16>());
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)))
    }
}

/// Unpacks a Q4_K (`HIGH` = false) or Q5_K (`HIGH` = true) super-block.
///
/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unpack_q45k<const HIGH: bool>(p: *const u8, row: &mut KRow) {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        row.d = f16_at(p);
        row.dmin = f16_at(p.add(2));
        let (sc, mn) = k4_scales_mins(std::slice::from_raw_parts(p.add(4), 12));
        for s in 0..8 {
            _mm256_store_si256(
                row.scv[s].as_mut_ptr().cast(),
                _mm256_set1_epi16(sc[s] as i16),
            );
            row.mins[s] = mn[s] as i16;
        }
        let m4 = _mm256_set1_epi8(0x0F);
        let one = _mm256_set1_epi8(1);
        let (qs, hb) = if HIGH {
            (p.add(48), _mm256_loadu_si256(p.add(16).cast()))
        } else {
            (p.add(16), m4)
        };
        let q = row.q.as_mut_ptr();
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
            _mm256_store_si256(q.add(64 * j).cast(), lo);
            _mm256_store_si256(q.add(64 * j + 32).cast(), hi);
        }
    }
}

/// Unpacks a Q6_K super-block (quants stay offset by +32).
///
/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unpack_q6k(p: *const u8, row: &mut KRow) {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        row.d = f16_at(p.add(208));
        let sc = p.add(192).cast::<i8>();
        for g in 0..16 {
            row.sc16[g] = *sc.add(g) as i16;
        }
        for k in 0..8 {
            let lo = _mm_set1_epi16(row.sc16[2 * k]);
            let hi = _mm_set1_epi16(row.sc16[2 * k + 1]);
            _mm256_store_si256(row.scv[k].as_mut_ptr().cast(), _mm256_set_m128i(hi, lo));
        }
        let m4 = _mm256_set1_epi8(0x0F);
        let m3 = _mm256_set1_epi8(3);
        let q = row.q.as_mut_ptr();
        for n in 0..2 {
            let ql0 = _mm256_loadu_si256(p.add(64 * n).cast());
            let ql1 = _mm256_loadu_si256(p.add(64 * n + 32).cast());
            let qh = _mm256_loadu_si256(p.add(128 + 32 * n).cast());
            let h0 = _mm256_slli_epi16::<4>(_mm256_and_si256(qh, m3));
            let h1 = _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srli_epi16::<2>(qh), m3));
            let h2 = _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srli_epi16::<4>(qh), m3));
            let h3 = _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srli_epi16::<6>(qh), m3));
            let q1 = _mm256_or_si256(_mm256_and_si256(ql0, m4), h0);
            let q2 = _mm256_or_si256(_mm256_and_si256(ql1, m4), h1);
            let q3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m4), h2);
            let q4 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4), h3);
            _mm256_store_si256(q.add(128 * n).cast(), q1);
            _mm256_store_si256(q.add(128 * n + 32).cast(), q2);
            _mm256_store_si256(q.add(128 * n + 64).cast(), q3);
            _mm256_store_si256(q.add(128 * n + 96).cast(), q4);
        }
    }
}

/// Super-block `b` of R unpacked rows times activation rows `i0..i0+C`: adds pair (r, c)'s
/// contribution to `out[c * ors + r]`.
///
/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[inline(always)]
unsafe fn pairs<const F: Tag, const V: bool, const R: usize, const C: usize>(
    rows: *const KRow,
    act: &ActBuf,
    b: usize,
    i0: usize,
    out: *mut f32,
    ors: usize,
) {
    // SAFETY: as this function's contract; `V` is set only where the CPU has VNNI.
    unsafe {
        if V {
            pairs_vnni::<F, R, C>(rows, act, b, i0, out, ors)
        } else {
            pairs_avx2::<F, R, C>(rows, act, b, i0, out, ors)
        }
    }
}

/// [`pairs_body`] compiled for AVX2.
///
/// # Safety
/// As [`pairs`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pairs_avx2<const F: Tag, const R: usize, const C: usize>(
    rows: *const KRow,
    act: &ActBuf,
    b: usize,
    i0: usize,
    out: *mut f32,
    ors: usize,
) {
    // SAFETY: the contract of `pairs`, which this forwards unchanged.
    unsafe { pairs_body::<F, false, R, C>(rows, act, b, i0, out, ors) }
}

/// [`pairs_body`] compiled for AVX2 plus AVX-512 (VNNI, and 512-bit dots: [`dots512`]).
///
/// # Safety
/// As [`pairs`], and the CPU must have AVX512-F, -BW, -VL and -VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni,avx512vl")]
unsafe fn pairs_vnni<const F: Tag, const R: usize, const C: usize>(
    rows: *const KRow,
    act: &ActBuf,
    b: usize,
    i0: usize,
    out: *mut f32,
    ors: usize,
) {
    // SAFETY: the contract of `pairs`, which this forwards unchanged.
    unsafe { pairs_body::<F, true, R, C>(rows, act, b, i0, out, ors) }
}

/// The body of [`pairs`], inlined into each build.
///
/// # Safety
/// As [`pairs`].
#[inline(always)]
unsafe fn pairs_body<const F: Tag, const V: bool, const R: usize, const C: usize>(
    rows: *const KRow,
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
        let np = R * C;
        // IQ4_XS moves its signs with `vpsignb`, which has no 512-bit form.
        let mut acc = if V && F != tag::IQ4_XS {
            dots512::<R, C>(rows, act, b, i0)
        } else {
            dots256::<F, V, R, C>(rows, act, b, i0)
        };
        if F == tag::Q6_K || F == tag::Q3_K {
            for c in 0..C {
                let bs = _mm256_loadu_si256(act.bs16.as_ptr().add(((i0 + c) * nb + b) * 16).cast());
                for r in 0..R {
                    let sc = _mm256_load_si256((*rows.add(r)).sc16.as_ptr().cast());
                    let m = _mm256_madd_epi16(sc, bs);
                    // The offset the unpacked quants carry: 32 for Q6_K, 4 for Q3_K.
                    let corr = if F == tag::Q6_K {
                        _mm256_slli_epi32::<5>(m)
                    } else {
                        _mm256_slli_epi32::<2>(m)
                    };
                    acc[c * R + r] = _mm256_sub_epi32(acc[c * R + r], corr);
                }
            }
        }
        let sumi = reduce8(acc);
        let mut dw = [0.0f32; 8];
        let mut dm = [0.0f32; 8];
        let mut mv = [_mm_setzero_si128(); 8];
        for r in 0..R {
            dw[r] = (*rows.add(r)).d;
            dm[r] = (*rows.add(r)).dmin;
        }
        if F == tag::Q2_K {
            for (p, v) in mv.iter_mut().enumerate().take(np) {
                let (r, c) = (p % R, p / R);
                let mins = _mm256_loadu_si256((*rows.add(r)).mins16.as_ptr().cast());
                let bs = _mm256_loadu_si256(act.bs16.as_ptr().add(((i0 + c) * nb + b) * 16).cast());
                let m = _mm256_madd_epi16(mins, bs);
                *v = _mm_add_epi32(_mm256_castsi256_si128(m), _mm256_extracti128_si256::<1>(m));
            }
        } else if has_min(F) {
            for (p, v) in mv.iter_mut().enumerate().take(np) {
                let (r, c) = (p % R, p / R);
                let mins = _mm_loadu_si128((*rows.add(r)).mins.as_ptr().cast());
                *v = _mm_madd_epi16(
                    mins,
                    _mm_loadu_si128(act.bs32.as_ptr().add(((i0 + c) * nb + b) * 8).cast()),
                );
            }
        }
        finish::<F, R, C>(sumi, reduce8_128(mv), &dw, &dm, act, b, i0, out, ors);
    }
}

/// The scaled integer dots of a tile's pairs over one super-block, in 256-bit registers: for
/// each 32-value sub-block `madd(maddubs(q, x), scale)` (`vpdpwssd` where `V`). Lane sums of
/// `acc[c * R + r]` give pair (r, c)'s dot.
///
/// # Safety
/// As [`pairs`].
#[inline(always)]
unsafe fn dots256<const F: Tag, const V: bool, const R: usize, const C: usize>(
    rows: *const KRow,
    act: &ActBuf,
    b: usize,
    i0: usize,
) -> [__m256i; 8] {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        let cols = act.cols;
        let mut acc = [_mm256_setzero_si256(); 8];
        let xb = act.qs.as_ptr().add(i0 * cols + b * 256);
        for s in 0..8 {
            let mut xv = [_mm256_setzero_si256(); C];
            for (c, v) in xv.iter_mut().enumerate() {
                *v = _mm256_loadu_si256(xb.add(c * cols + 32 * s).cast());
            }
            for r in 0..R {
                let kr = &*rows.add(r);
                let wv = _mm256_load_si256(kr.q.as_ptr().add(32 * s).cast());
                let sc = _mm256_load_si256(kr.scv[s].as_ptr().cast());
                // IQ4_XS: |w| times x with w's sign (no i16 overflow: |w|, |x| <= 127).
                let wu = if F == tag::IQ4_XS {
                    _mm256_abs_epi8(wv)
                } else {
                    wv
                };
                for c in 0..C {
                    let xs = if F == tag::IQ4_XS {
                        _mm256_sign_epi8(xv[c], wv)
                    } else {
                        xv[c]
                    };
                    let q = _mm256_maddubs_epi16(wu, xs);
                    acc[c * R + r] = if V {
                        _mm256_dpwssd_epi32(acc[c * R + r], q, sc)
                    } else {
                        _mm256_add_epi32(acc[c * R + r], _mm256_madd_epi16(q, sc))
                    };
                }
            }
        }
        acc
    }
}

/// [`dots256`] in 512-bit registers, two sub-blocks per instruction (AVX512-BW and VNNI; every
/// format but IQ4_XS): the quants, activations and scale vectors of sub-blocks `2k` and
/// `2k + 1` lie next to each other, so one load takes both. The halves are added at the end,
/// which gives the same exact lane sums as [`dots256`] (the products and their pairing are
/// the same, and i32 sums of them cannot overflow), so results stay bit-identical.
///
/// # Safety
/// As [`pairs`], and the CPU must have AVX512-F, AVX512-BW and AVX512-VNNI.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
unsafe fn dots512<const R: usize, const C: usize>(
    rows: *const KRow,
    act: &ActBuf,
    b: usize,
    i0: usize,
) -> [__m256i; 8] {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        let cols = act.cols;
        let mut acc = [_mm512_setzero_si512(); 8];
        let xb = act.qs.as_ptr().add(i0 * cols + b * 256);
        for k in 0..4 {
            let mut xv = [_mm512_setzero_si512(); C];
            for (c, v) in xv.iter_mut().enumerate() {
                *v = _mm512_loadu_si512(xb.add(c * cols + 64 * k).cast());
            }
            for r in 0..R {
                let kr = &*rows.add(r);
                let wv = _mm512_loadu_si512(kr.q.as_ptr().add(64 * k).cast());
                let sc = _mm512_loadu_si512(kr.scv[2 * k].as_ptr().cast());
                for c in 0..C {
                    let q = _mm512_maddubs_epi16(wv, xv[c]);
                    acc[c * R + r] = _mm512_dpwssd_epi32(acc[c * R + r], q, sc);
                }
            }
        }
        let mut out = [_mm256_setzero_si256(); 8];
        for (o, a) in out.iter_mut().zip(acc) {
            *o = _mm256_add_epi32(_mm512_castsi512_si256(a), _mm512_extracti64x4_epi64::<1>(a));
        }
        out
    }
}

/// The float update shared by every tile shape: for pair p = (r, c),
/// `out += (d_r * dy_c) * sumi_p - (dmin_r * dy_c) * summ_p` (no min term for Q6_K, Q3_K and
/// IQ4_XS), exactly the scalar reference's expression.
///
/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[inline]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn finish<const F: Tag, const R: usize, const C: usize>(
    sumi: __m256i,
    summ: __m256i,
    d: &[f32; 8],
    dmin: &[f32; 8],
    act: &ActBuf,
    b: usize,
    i0: usize,
    out: *mut f32,
    ors: usize,
) {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        let np = R * C;
        let mut dw = [0.0f32; 8];
        let mut dm = [0.0f32; 8];
        let mut dy = [0.0f32; 8];
        for p in 0..np {
            let (r, c) = (p % R, p / R);
            dw[p] = d[r];
            dm[p] = dmin[r];
            dy[p] = act.d[act.at(b, i0 + c)];
        }
        let dyv = _mm256_loadu_ps(dy.as_ptr());
        let mut t = _mm256_mul_ps(
            _mm256_mul_ps(_mm256_loadu_ps(dw.as_ptr()), dyv),
            _mm256_cvtepi32_ps(sumi),
        );
        if has_min(F) {
            let mt = _mm256_mul_ps(
                _mm256_mul_ps(_mm256_loadu_ps(dm.as_ptr()), dyv),
                _mm256_cvtepi32_ps(summ),
            );
            t = _mm256_sub_ps(t, mt);
        }
        let mut tt = [0.0f32; 8];
        _mm256_storeu_ps(tt.as_mut_ptr(), t);
        for (p, &v) in tt.iter().enumerate().take(np) {
            let o = out.add((p / R) * ors + p % R);
            *o += v;
        }
    }
}
