//! One to three activation rows against whole records: the decode path of a few sequences on
//! AVX2.
//!
//! Decoding one sequence streams every weight from memory once. The tile path walks a
//! record a half at a time (the first 32 bytes of every cache line, then back for the rest)
//! with a `vpmulld` per sub-block; here each line is used whole where it is loaded, the
//! activations' broadcasts serve both halves and the scales are folded in. With Q6_K's
//! pieces in reading order ([`crate::kpacked`]) a Q6_K stream from memory went from 10 to
//! 13 GB/s on one Zen 3 core (the ggml layout's 14), and to 15.5 without software prefetch
//! ([`Lanes::PREFETCH_RECORDS`]; `cargo bench -p lumen-kernels --bench matmul`, m = 1).
//!
//! With one activation row nothing amortizes a record's scales, so they are decoded for all
//! sixteen rows at once in bytes ([`k4_scales`], [`q6_scales`]) and spread to the lanes'
//! word pairs by shuffles, into arrays of their own rather than the tiles' [`Block`]s (whose
//! unused fields were stored for every record). Decoding lane-wise, each half on its own as
//! the tiles do ([`Block::decode`]), took ~350 instructions per Q4_K record, ~100 of its ~265
//! cycles by `llvm-mca -mcpu=znver3` over the compiled loop. Two or three rows (a few
//! sequences decoding together) share the pass's decoded scales and unpacked values, as far
//! as the registers hold their sums ([`max_rows`]). One Zen 3 core, 1536 x 1536, best of four
//! alternating rounds, GMAC/s before -> after at one / two / three rows: Q4_K 41.5 -> 50.4,
//! 49.8 -> 62.2, 57.5 -> 63.3; Q5_K 32.5 -> 34.1, 37.6 -> 44.8; Q6_K 29.6 -> 31.8, 37.7 ->
//! 39.7 (Q4_K 4096 x 4096 at one row 39.0 -> 51.4). Summing runs of pieces in 16-bit lanes
//! first, as the tiles do, was no faster here (Q4_K 46.3 against 43.2 at one row).
//!
//! [`Block`]: super::Block
//! [`Block::decode`]: super::Block::decode

use std::arch::x86_64::*;
use std::ops::Range;

use super::lanes::{Lanes, Y};
use super::tag::{self, Tag};
use super::{q45_values, q6_values, store_group, Factors};
use crate::act::ActBuf;
use crate::kpacked::{q4k, q6k, record_bytes, KPACK_ROWS};
use crate::matmul::MatRef;

/// Activation rows up to which [`rows`] serves a matmul of format `f`; from there on the
/// tiles, which unpack a record's values once for more rows, are faster. One Zen 3 core,
/// 1536 x 1536, best of four or five alternating rounds, GMAC/s here against the tiles: Q4_K
/// 60.5 / 49.5 at two rows, 60.6 / 55.9 at three; Q5_K 43.6 / 37.9 at two, 47.5 / 49.4 at
/// three; Q6_K 37.7 / 36.2 at two, 45.0 / 47.4 at three.
pub(super) const fn max_rows(f: Tag) -> usize {
    if f == tag::Q4_K {
        3
    } else {
        2
    }
}

/// The most rows of any format (the size of [`rows_of`]'s sums).
const MAX_ROWS: usize = 3;
const _: () = assert!(max_rows(tag::Q4_K) <= MAX_ROWS && max_rows(tag::Q6_K) <= MAX_ROWS);

/// Computes columns `r` (whole groups) of the output rows, `act.m` of them.
///
/// # Safety
/// As [`super::rows`] with `act.m` in `1..=3`; the CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn rows<const F: Tag>(w: &MatRef, act: &ActBuf, r: Range<usize>, out: *mut f32) {
    // SAFETY: forwarded unchanged.
    unsafe {
        match act.m {
            1 => rows_of::<F, 1>(w, act, r, out),
            2 => rows_of::<F, 2>(w, act, r, out),
            // Right for any format; only Q4_K is sent three (see `max_rows`).
            _ => rows_of::<F, 3>(w, act, r, out),
        }
    }
}

/// [`rows`] for `R` activation rows.
///
/// # Safety
/// As [`rows`], with `act.m == R`.
#[inline(always)]
unsafe fn rows_of<const F: Tag, const R: usize>(
    w: &MatRef,
    act: &ActBuf,
    r: Range<usize>,
    out: *mut f32,
) {
    // `acc` below holds MAX_ROWS rows: a larger R would write past it.
    const { assert!(R <= MAX_ROWS) };
    // SAFETY: the caller's contract: `w` is a packed F matrix whose groups `r` covers, `act`
    // holds its R Q8_K rows and `out` the R rows of outputs, columns `r` ours alone.
    unsafe {
        debug_assert!(act.m == R && r.start.is_multiple_of(KPACK_ROWS));
        let rec = record_bytes(tag::format(F));
        let gb = act.nb * rec;
        let base = w.data().as_ptr();
        for g in r.start / KPACK_ROWS..r.end.div_ceil(KPACK_ROWS) {
            let mut acc = [0.0f32; MAX_ROWS * KPACK_ROWS];
            let gp = base.add(g * gb);
            for b in 0..act.nb {
                let rp = gp.add(b * rec);
                if F == tag::Q6_K {
                    let (sc16, lo, hi) = q6_scales(rp);
                    pass::<F, R>(&sc16, [&lo, &hi], rp, act, b, acc.as_mut_ptr());
                } else {
                    let (sc16, lo, hi) = k4_scales(rp);
                    pass::<F, R>(&sc16, [&lo, &hi], rp, act, b, acc.as_mut_ptr());
                }
            }
            store_group(&acc, out, 0..R, g, w.rows());
        }
    }
}

/// Super-block `b` (record `rp`) of all sixteen rows of a group times the `R` activation
/// rows: adds the float updates to `acc[16 * c..][..16]` for row `c`. `sc16[s]` holds
/// sub-block `s`'s scales as word pairs ([`Lanes::dot4_scaled`]) for rows `0..8` and
/// `8..16`, `f` the two halves' factors.
///
/// # Safety
/// `rp` is a whole record of format `F` and `sc16` and `f` its scales, `act` holds rows
/// `0..R`, `acc` is valid for `16 * R` floats; the CPU must have AVX2.
#[inline(always)]
unsafe fn pass<const F: Tag, const R: usize>(
    sc16: &[[__m256i; 2]],
    f: [&Factors<Y>; 2],
    rp: *const u8,
    act: &ActBuf,
    b: usize,
    acc: *mut f32,
) {
    // SAFETY: as this function's contract.
    unsafe {
        let xp = act.qs.as_ptr().cast::<u8>().add(b * 256);
        let cols = act.cols;
        // Row c's sums of rows 0..8 and 8..16.
        let mut s = [[Y::zero(); 2]; R];
        if F == tag::Q6_K {
            for n in 0..2 {
                for u in 0..8 {
                    let q0 = q6_values::<Y>(rp, 0, n, u);
                    let q1 = q6_values::<Y>(rp, Y::N, n, u);
                    for (c, sc) in s.iter_mut().enumerate() {
                        let x = xp.add(c * cols + 128 * n + 4 * u);
                        for k in 0..4 {
                            let xk = Y::bcast(x.add(32 * k));
                            let sub = &sc16[8 * n + u / 4 + 2 * k];
                            sc[0] = Y::dot4_scaled(sc[0], q0[k], xk, sub[0]);
                            sc[1] = Y::dot4_scaled(sc[1], q1[k], xk, sub[1]);
                        }
                    }
                }
            }
        } else {
            for c4 in 0..4 {
                for u in 0..8 {
                    let (l0, h0) = q45_values::<Y, F>(rp, 0, c4, u);
                    let (l1, h1) = q45_values::<Y, F>(rp, Y::N, c4, u);
                    let (a, e) = (sc16[2 * c4], sc16[2 * c4 + 1]);
                    for (c, sc) in s.iter_mut().enumerate() {
                        let x = xp.add(c * cols + 64 * c4 + 4 * u);
                        let (xl, xh) = (Y::bcast(x), Y::bcast(x.add(32)));
                        sc[0] = Y::dot4_scaled(sc[0], l0, xl, a[0]);
                        sc[0] = Y::dot4_scaled(sc[0], h0, xh, e[0]);
                        sc[1] = Y::dot4_scaled(sc[1], l1, xl, a[1]);
                        sc[1] = Y::dot4_scaled(sc[1], h1, xh, e[1]);
                    }
                }
            }
        }
        for (c, sc) in s.iter().enumerate() {
            let a = acc.add(c * KPACK_ROWS);
            f[0].finish::<F>(sc[0], act, b, c, a, false);
            f[1].finish::<F>(sc[1], act, b, c, a.add(Y::N), false);
        }
    }
}

/// A `vpshufb` control whose 128-bit halves take bytes `a0 + j` (low half) and `a1 + j`
/// (high half), `j` in `0..4`, to lane `j` of their half as the words `(byte, byte2)`, where
/// `byte2` is byte `a + j + second` (zero-extended both).
///
/// # Safety
/// The CPU must have AVX2.
#[inline(always)]
unsafe fn words_of(a0: i8, a1: i8, second: i8) -> __m256i {
    // SAFETY: register operations only.
    unsafe {
        // 0x80: a zero byte.
        let mut c = [i8::MIN; 32];
        for (half, a) in [a0, a1].into_iter().enumerate() {
            for j in 0..4 {
                c[16 * half + 4 * j] = a + j as i8;
                c[16 * half + 4 * j + 2] = a + j as i8 + second;
            }
        }
        _mm256_loadu_si256(c.as_ptr().cast())
    }
}

/// Sub-block scales as word pairs for rows `0..8` and `8..16` and the halves' factors, as
/// [`Block::decode`](super::Block::decode) gives them for the folded tiles.
type Scales<const S: usize> = ([[__m256i; 2]; S], Factors<Y>, Factors<Y>);

/// Q4_K and Q5_K: record `rp`'s scales and mins.
///
/// Per pair of sub-blocks `2k, 2k + 1` one 32-byte load holds the low bits of both (sub-block
/// `2k` in the low 128 bits, one byte per row) and the high bits come from one 16-byte load
/// seen in both halves, the high half shifted to the second pair of bit fields. The six-bit
/// values are assembled in bytes for all sixteen rows, and shuffles spread each row's byte to
/// its lane's two words.
///
/// # Safety
/// `rp` is a whole Q4_K or Q5_K record; the CPU must have AVX2 and F16C.
#[inline(always)]
unsafe fn k4_scales(rp: *const u8) -> Scales<8> {
    // SAFETY: every read is inside the record's first 256 bytes (offsets from `crate::kpacked`).
    unsafe {
        let (m4, m3, mc) = (
            _mm256_set1_epi8(0x0F),
            _mm256_set1_epi8(0x03),
            _mm256_set1_epi8(0x0C),
        );
        let shift = _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4);
        // Rows 0..8 and 8..16 of a sub-block duplicated into both halves: its byte twice.
        let (dup_lo, dup_hi) = (words_of(0, 4, 0), words_of(8, 12, 0));
        // Sub-blocks 2k (bytes 0..8 of a half) and 2k + 1 (bytes 8..16) side by side.
        let pair = words_of(0, 4, 8);
        let mut sc16 = [[Y::zero(); 2]; 8];
        let mut lo = factors(rp.add(q4k::D), rp.add(q4k::DMIN));
        let mut hi = factors(rp.add(q4k::D + 2 * Y::N), rp.add(q4k::DMIN + 2 * Y::N));
        for k in 0..4 {
            let l = _mm256_loadu_si256(rp.add(q4k::LOW + 32 * k).cast());
            let h = _mm256_broadcastsi128_si256(_mm_loadu_si128(rp.add(q4k::HIGH + 16 * k).cast()));
            // Within each byte: bits 0-1 the scale's high bits, 2-3 the min's.
            let h = _mm256_srlv_epi32(h, shift);
            let sc = _mm256_or_si256(
                _mm256_and_si256(l, m4),
                _mm256_slli_epi16::<4>(_mm256_and_si256(h, m3)),
            );
            let mn = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(l), m4),
                _mm256_slli_epi16::<2>(_mm256_and_si256(h, mc)),
            );
            let s0 = _mm256_permute2x128_si256::<0x00>(sc, sc);
            let s1 = _mm256_permute2x128_si256::<0x11>(sc, sc);
            sc16[2 * k] = [
                _mm256_shuffle_epi8(s0, dup_lo),
                _mm256_shuffle_epi8(s0, dup_hi),
            ];
            sc16[2 * k + 1] = [
                _mm256_shuffle_epi8(s1, dup_lo),
                _mm256_shuffle_epi8(s1, dup_hi),
            ];
            // Rows 0..8 (8..16) of both sub-blocks in each half: qwords 0, 2 (1, 3).
            lo.pairs[k] = _mm256_shuffle_epi8(_mm256_permute4x64_epi64::<0x88>(mn), pair);
            hi.pairs[k] = _mm256_shuffle_epi8(_mm256_permute4x64_epi64::<0xDD>(mn), pair);
        }
        (sc16, lo, hi)
    }
}

/// Q6_K: record `rp`'s scales: each sub-block's sixteen signed bytes widened to words once,
/// then spread to the halves' lanes (`sc16`) and paired with the next sub-block's (`pairs`).
///
/// # Safety
/// `rp` is a whole Q6_K record; the CPU must have AVX2 and F16C.
#[inline(always)]
unsafe fn q6_scales(rp: *const u8) -> Scales<16> {
    // SAFETY: every read is inside the record's first 288 bytes (offsets from `crate::kpacked`).
    unsafe {
        let mut sc16 = [[Y::zero(); 2]; 16];
        let mut lo = factors(rp.add(q6k::D), rp.add(q6k::D));
        let mut hi = factors(rp.add(q6k::D + 2 * Y::N), rp.add(q6k::D + 2 * Y::N));
        // No closures here: they would not inherit the target features, and their
        // intrinsics became calls (Q6_K decode at a third of its speed in a model).
        for k in 0..8 {
            let mut halves = [[Y::zero(); 2]; 2];
            for (e, hv) in halves.iter_mut().enumerate() {
                let s = 2 * k + e;
                let w = _mm256_cvtepi8_epi16(_mm_loadu_si128(rp.add(q6k::SC + 16 * s).cast()));
                // Rows 0..4 and 4..8 (8..12 and 12..16) in the low words of the two halves.
                *hv = [
                    _mm256_permute4x64_epi64::<0x50>(w),
                    _mm256_permute4x64_epi64::<0xFA>(w),
                ];
                sc16[s] = [
                    _mm256_unpacklo_epi16(hv[0], hv[0]),
                    _mm256_unpacklo_epi16(hv[1], hv[1]),
                ];
            }
            lo.pairs[k] = _mm256_unpacklo_epi16(halves[0][0], halves[1][0]);
            hi.pairs[k] = _mm256_unpacklo_epi16(halves[0][1], halves[1][1]);
        }
        (sc16, lo, hi)
    }
}

/// The factors `d` and `dmin` of eight rows (f16 at `d` and `dmin`) and zero pairs, for
/// [`k4_scales`] and [`q6_scales`] to fill.
///
/// # Safety
/// `d` and `dmin` must be valid for 16 bytes; the CPU must have AVX2 and F16C.
#[inline(always)]
unsafe fn factors(d: *const u8, dmin: *const u8) -> Factors<Y> {
    // SAFETY: as this function's contract.
    unsafe {
        Factors {
            pairs: [Y::zero(); 8],
            d: Y::f16s(d),
            dmin: Y::f16s(dmin),
        }
    }
}
