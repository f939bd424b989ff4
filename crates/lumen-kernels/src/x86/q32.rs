//! AVX2 tiles for the 32-value block formats (Q4_0, Q4_1, Q8_0) against Q8_0/Q8_1 activations.
//!
//! A tile is R weight rows by C activation rows. Per block it unpacks each weight row once and
//! each activation row once, forms the R*C integer dot products with `maddubs`, reduces each
//! to one exact i32, and applies the per-block float update to eight pairs at a time; the
//! float accumulators stay in registers for the whole row.

use std::arch::x86_64::*;
use std::ops::Range;

use super::{pair_index, reduce8, M_CHUNK};
use crate::act::ActBuf;
use crate::matmul::MatRef;

/// Format tag: Q4_0 weights.
pub(crate) const Q4_0: u8 = 0;
/// Format tag: Q4_1 weights.
pub(crate) const Q4_1: u8 = 1;
/// Format tag: Q8_0 weights.
pub(crate) const Q8_0: u8 = 2;

const fn block_bytes(f: u8) -> usize {
    match f {
        Q4_0 => 18,
        Q4_1 => 20,
        _ => 34,
    }
}

/// Computes columns `r` of every output row for a Q4_0/Q4_1/Q8_0 matrix.
///
/// # Safety
/// As [`super::compute_rows`].
pub(crate) unsafe fn rows<const F: u8>(w: &MatRef, act: &ActBuf, r: Range<usize>, out: *mut f32) {
    let (rb, base, ors, m) = (w.row_bytes(), w.data().as_ptr(), w.rows(), act.m);
    let mut i0 = 0;
    while i0 < m {
        let i1 = m.min(i0 + M_CHUNK);
        let mut j = r.start;
        while j + 8 <= r.end {
            let wp = base.add(j * rb);
            let mut i = i0;
            while i < i1 {
                let c = (i1 - i).min(4);
                let o = out.add(i * ors + j);
                match c {
                    4 => {
                        tile::<F, 4, 4>(wp, rb, act, i, o, ors);
                        tile::<F, 4, 4>(wp.add(4 * rb), rb, act, i, o.add(4), ors);
                    }
                    3 => tile::<F, 8, 3>(wp, rb, act, i, o, ors),
                    2 => tile::<F, 8, 2>(wp, rb, act, i, o, ors),
                    _ => tile::<F, 8, 1>(wp, rb, act, i, o, ors),
                }
                i += c;
            }
            j += 8;
        }
        while j < r.end {
            let wp = base.add(j * rb);
            let mut i = i0;
            while i < i1 {
                let c = (i1 - i).min(4);
                let o = out.add(i * ors + j);
                match c {
                    4 => tile::<F, 1, 4>(wp, rb, act, i, o, ors),
                    3 => tile::<F, 1, 3>(wp, rb, act, i, o, ors),
                    2 => tile::<F, 1, 2>(wp, rb, act, i, o, ors),
                    _ => tile::<F, 1, 1>(wp, rb, act, i, o, ors),
                }
                i += c;
            }
            j += 1;
        }
        i0 = i1;
    }
}

/// One block of one weight row: (unsigned operand for `maddubs`, sign source for Q8_0).
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn load_w<const F: u8>(p: *const u8, m4: __m256i) -> (__m256i, __m256i) {
    if F == Q8_0 {
        let raw = _mm256_loadu_si256(p.add(2).cast());
        (_mm256_abs_epi8(raw), raw)
    } else {
        let off = if F == Q4_1 { 4 } else { 2 };
        // Low nibbles are values 0..16, high nibbles 16..32: shift only the upper copy.
        let q = _mm256_broadcastsi128_si256(_mm_loadu_si128(p.add(off).cast()));
        let v = _mm256_and_si256(_mm256_srlv_epi64(q, _mm256_setr_epi64x(0, 0, 4, 4)), m4);
        (v, v)
    }
}

/// R weight rows starting at `w` (stride `rb`) times activation rows `i0..i0+C`; writes pair
/// (r, c) to `out[c * ors + r]`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile<const F: u8, const R: usize, const C: usize>(
    w: *const u8,
    rb: usize,
    act: &ActBuf,
    i0: usize,
    out: *mut f32,
    ors: usize,
) {
    let bb = block_bytes(F);
    let (nb, stride, cols) = (act.nb, act.stride, act.cols);
    let np = R * C;
    let nv = np.div_ceil(8);
    let ones = _mm256_set1_epi16(1);
    let m4 = _mm256_set1_epi8(0x0F);
    // The first word of each row's block holds d and m (Q4_1) as two f16 (Q4_0/Q8_0: d and two
    // quants): move the d halves to qwords 0,1 and the m halves to qwords 2,3.
    let shuf = _mm256_setr_epi8(
        0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15, 0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7,
        10, 11, 14, 15,
    );
    let mut ir = [_mm256_setzero_si256(); 3];
    let mut ic = [_mm256_setzero_si256(); 3];
    for v in 0..nv {
        (ir[v], ic[v]) = pair_index(R, C, v);
    }
    let mut acc = [_mm256_setzero_ps(); 3];
    let dp = act.d.as_ptr().add(i0);
    let sp = act.s.as_ptr().add(i0);
    let ip = act.isum.as_ptr().add(i0);
    let xp = act.qs.as_ptr().add(i0 * cols);
    for b in 0..nb {
        let bp = w.add(b * bb);
        let mut h = [0i32; 8];
        for (r, hv) in h.iter_mut().enumerate().take(R) {
            *hv = std::ptr::read_unaligned(bp.add(r * rb).cast::<i32>());
        }
        let g = _mm256_setr_epi32(h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]);
        let g = _mm256_permute4x64_epi64::<0xD8>(_mm256_shuffle_epi8(g, shuf));
        let dw = _mm256_cvtph_ps(_mm256_castsi256_si128(g));
        let dx = _mm256_loadu_ps(dp.add(b * stride));
        let mut xq = [_mm256_setzero_si256(); C];
        for (c, xv) in xq.iter_mut().enumerate() {
            *xv = _mm256_loadu_si256(xp.add(c * cols + b * 32).cast());
        }
        let mut wu = [_mm256_setzero_si256(); R];
        let mut ws = [_mm256_setzero_si256(); R];
        for r in 0..R {
            (wu[r], ws[r]) = load_w::<F>(bp.add(r * rb), m4);
        }
        for v in 0..nv {
            let mut ps = [_mm256_setzero_si256(); 8];
            for (l, pv) in ps.iter_mut().enumerate() {
                let p = 8 * v + l;
                if p < np {
                    let (r, c) = (p % R, p / R);
                    let xv = if F == Q8_0 {
                        _mm256_sign_epi8(xq[c], ws[r])
                    } else {
                        xq[c]
                    };
                    *pv = _mm256_madd_epi16(_mm256_maddubs_epi16(wu[r], xv), ones);
                }
            }
            let mut s = reduce8(ps);
            if F == Q4_0 {
                let is = _mm256_loadu_si256(ip.add(b * stride).cast());
                s = _mm256_sub_epi32(
                    s,
                    _mm256_slli_epi32::<3>(_mm256_permutevar8x32_epi32(is, ic[v])),
                );
            }
            let dd = _mm256_mul_ps(
                _mm256_permutevar8x32_ps(dw, ir[v]),
                _mm256_permutevar8x32_ps(dx, ic[v]),
            );
            let mut t = _mm256_mul_ps(dd, _mm256_cvtepi32_ps(s));
            if F == Q4_1 {
                let mw = _mm256_cvtph_ps(_mm256_extracti128_si256::<1>(g));
                let sx = _mm256_loadu_ps(sp.add(b * stride));
                let ms = _mm256_mul_ps(
                    _mm256_permutevar8x32_ps(mw, ir[v]),
                    _mm256_permutevar8x32_ps(sx, ic[v]),
                );
                t = _mm256_add_ps(t, ms);
            }
            acc[v] = _mm256_add_ps(acc[v], t);
        }
    }
    let mut tmp = [0.0f32; 24];
    for (v, a) in acc.iter().enumerate().take(nv) {
        _mm256_storeu_ps(tmp.as_mut_ptr().add(8 * v), *a);
    }
    for (p, &val) in tmp.iter().enumerate().take(np) {
        *out.add((p / R) * ors + p % R) = val;
    }
}
