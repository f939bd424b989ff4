//! AVX2 tiles for [`crate::i16_gemm`]: `vpmaddwd` of a broadcast input pair against a
//! packed panel of 16 weight rows.
//!
//! A tile is up to six input rows × one panel: 12 accumulators of eight i32, two panel
//! registers, one broadcast and one product, all sixteen ymm registers (four rows × 24
//! columns needed seventeen). The compiler spilled even the six-row tile (see `six_rows`), so
//! its loop is assembly; narrower tiles (a block's last rows) stay intrinsics. Per twelve
//! multiply-adds the tile loads two panel vectors and six broadcasts, and on Zen 3 those
//! loads, not the multipliers, bound it: the same loop with broadcasts held in registers runs
//! 1.6x faster, and shapes with more loads per multiply-add (4 × 3 with one panel operand
//! from memory, 2 × 6) ran slower. Its integer sums are exact, so
//! only the float steps after each chunk (convert, add in chunk order, scale) could differ
//! between tile shapes, and they are the same per output in every shape.
//!
//! The loops run input rows in blocks of [`M_BLOCK`], and within a block chunk by chunk,
//! panel by panel: a panel's chunk (16 × 512 values, 16 KiB) stays in L1 while the block's
//! tiles pass it, the block's rounded rows (48 × 1 KiB per chunk) come from L2, and the
//! block's partial sums live in `out` itself between chunks.

use std::arch::x86_64::*;
use std::ops::Range;

use crate::i16_gemm::{scale_of, I16Matrix, Quantized, I16_CHUNK, PANEL};

/// Input rows per block: a multiple of the tile's six rows (at 64, every block's last four
/// rows ran in a narrower tile, 7 % of the product's time). With 256-input chunks 36 to 60
/// rows measured alike on Zen 3; with 512, 24 rows (whose chunk of input and a panel's
/// share L1) were no faster than 48.
const M_BLOCK: usize = 48;
/// Rows per tile.
const MR: usize = 6;

/// What a tile does with a chunk's sums.
#[derive(Clone, Copy)]
struct Finish {
    /// Add them to the partial sums already in `out` (not the first chunk).
    add: bool,
    /// Scale the total by weight × input scale (the last chunk).
    scale: bool,
}

/// Computes the columns of `panels` for the `m` output rows.
///
/// # Safety
/// The CPU has AVX2; `x` holds `m` rounded rows of `w`'s padded width; `out` points to
/// `m × w.rows()` f32 of which this call alone writes the columns of `panels`.
pub(crate) unsafe fn rows(
    w: &I16Matrix,
    x: &Quantized<'_>,
    m: usize,
    panels: Range<usize>,
    out: *mut f32,
) {
    let (pairs, ors) = (w.pairs(), w.rows());
    let chunk_pairs = I16_CHUNK / 2;
    let xp = x.values.as_ptr();
    let mut i0 = 0;
    while i0 < m {
        let i1 = m.min(i0 + M_BLOCK);
        let mut q0 = 0;
        while q0 < pairs {
            let q1 = pairs.min(q0 + chunk_pairs);
            let finish = Finish {
                add: q0 > 0,
                scale: q1 == pairs,
            };
            for p in panels.clone() {
                let wp = w.panel_at(p, q0);
                let j0 = p * PANEL;
                let width = PANEL.min(ors - j0);
                let sw = &w.scales()[j0..j0 + width];
                let mut i = i0;
                while i < i1 {
                    let r = MR.min(i1 - i);
                    let tile = Tile {
                        x: xp.wrapping_add(i * x.stride + 2 * q0),
                        stride: x.stride,
                        w: wp,
                        pairs: q1 - q0,
                        sa: &x.scales[i..i + r],
                        sw,
                    };
                    let o = out.wrapping_add(i * ors + j0);
                    // SAFETY: rows i..i+r and the panel's columns are in range by the loop
                    // bounds; the caller guarantees the features and buffers (`# Safety`).
                    unsafe {
                        match r {
                            6 => tile.run::<6>(o, ors, finish),
                            5 => tile.run::<5>(o, ors, finish),
                            4 => tile.run::<4>(o, ors, finish),
                            3 => tile.run::<3>(o, ors, finish),
                            2 => tile.run::<2>(o, ors, finish),
                            _ => tile.run::<1>(o, ors, finish),
                        }
                    }
                    i += r;
                }
            }
            q0 = q1;
        }
        i0 = i1;
    }
}

/// One tile's operands.
struct Tile<'a> {
    /// The first input row's values from the chunk's first pair.
    x: *const i16,
    /// Integers per input row.
    stride: usize,
    /// The panel from the chunk's first pair.
    w: *const i16,
    /// Pairs in the chunk.
    pairs: usize,
    /// The tile's input rows' scales.
    sa: &'a [f32],
    /// The panel's weight rows' scales (fewer than 16 in a last, partial panel).
    sw: &'a [f32],
}

impl Tile<'_> {
    /// Runs the chunk for `R` input rows into `out` (row stride `ors`).
    ///
    /// # Safety
    /// As [`rows`]; `out` holds the tile's `R` rows of `sw.len()` columns.
    unsafe fn run<const R: usize>(&self, out: *mut f32, ors: usize, finish: Finish) {
        if self.sw.len() == PANEL {
            // SAFETY: as this function's.
            unsafe { self.chunk::<R>(out, ors, finish) }
        } else {
            // A partial panel: through a whole tile on the stack, then its real columns.
            let mut buf = [0.0f32; MR * PANEL];
            let width = self.sw.len();
            for r in 0..R {
                for c in 0..width {
                    // SAFETY: row r, column c < width of the tile is in `out` (`# Safety`).
                    buf[r * PANEL + c] = unsafe { *out.add(r * ors + c) };
                }
            }
            // SAFETY: the buffer holds R rows of PANEL columns; `sw` is read only up to its
            // length by `chunk` (padded scales are 0 there).
            unsafe { self.chunk::<R>(buf.as_mut_ptr(), PANEL, finish) };
            for r in 0..R {
                for c in 0..width {
                    // SAFETY: as above.
                    unsafe { *out.add(r * ors + c) = buf[r * PANEL + c] };
                }
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn chunk<const R: usize>(&self, out: *mut f32, ors: usize, finish: Finish) {
        // SAFETY: the caller guarantees the features and the buffers (`run`'s `# Safety`).
        unsafe {
            let mut acc = [[_mm256_setzero_si256(); 2]; R];
            if R == 6 {
                // A whole tile: the assembly loop (see `six_rows`). R is 6, so `acc` is
                // the array it takes.
                let acc6 = &mut *acc.as_mut_ptr().cast::<[[__m256i; 2]; 6]>();
                six_rows(acc6, self.x, self.stride, self.w, self.pairs);
            } else {
                let (mut xp, mut wp) = (self.x, self.w);
                // Two pairs per iteration: the loop's own instructions compete with the
                // multiply-adds for the same dispatch slots.
                for _ in 0..self.pairs / 2 {
                    pair_step(&mut acc, xp, self.stride, wp);
                    pair_step(&mut acc, xp.add(2), self.stride, wp.add(2 * PANEL));
                    xp = xp.add(4);
                    wp = wp.add(4 * PANEL);
                }
                if self.pairs % 2 == 1 {
                    pair_step(&mut acc, xp, self.stride, wp);
                }
            }
            let mut sw = [0.0f32; PANEL];
            if finish.scale {
                sw[..self.sw.len()].copy_from_slice(self.sw);
            }
            for (r, a) in acc.iter().enumerate() {
                let o = out.add(r * ors);
                let sa = _mm256_set1_ps(if finish.scale { self.sa[r] } else { 0.0 });
                for (c, &v) in a.iter().enumerate() {
                    let mut t = _mm256_cvtepi32_ps(v);
                    if finish.add {
                        t = _mm256_add_ps(_mm256_loadu_ps(o.add(8 * c)), t);
                    }
                    if finish.scale {
                        let s = _mm256_mul_ps(_mm256_loadu_ps(sw.as_ptr().add(8 * c)), sa);
                        t = _mm256_mul_ps(t, s);
                    }
                    _mm256_storeu_ps(o.add(8 * c), t);
                }
            }
        }
    }
}

/// Every pair of a chunk for a six-row tile, in assembly: its twelve accumulators, the two
/// panel registers, the broadcast and the product take all sixteen ymm registers, and the
/// compiler, given the same loop as intrinsics, kept four panel registers live over its
/// two-pair unrolling and spilled two accumulators to the stack every pair (a store and two
/// loads more per twelve multiply-adds, on a core whose loads already limit the tile).
///
/// # Safety
/// AVX2; `x` (row stride `stride` integers) holds `pairs` pairs for six rows, `w` `pairs`
/// pairs of the panel.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn six_rows(
    acc: &mut [[__m256i; 2]; 6],
    x: *const i16,
    stride: usize,
    w: *const i16,
    pairs: usize,
) {
    if pairs == 0 {
        return;
    }
    let [[a0, a1], [a2, a3], [a4, a5], [a6, a7], [a8, a9], [a10, a11]] = acc;
    let s = stride * 2;
    // SAFETY: the loop reads `pairs` pairs of the six rows (x, x + s, x + 2s and the three
    // from x + 3s) and `pairs · 64` bytes of the panel, in range by the caller's contract;
    // it writes only the named registers and the loop counters.
    unsafe {
        std::arch::asm!(
            "2:",
            "vmovdqu ymm12, ymmword ptr [{w}]",
            "vmovdqu ymm13, ymmword ptr [{w} + 32]",
            "vpbroadcastd ymm14, dword ptr [{xa}]",
            "vpmaddwd ymm15, ymm14, ymm12",
            "vpaddd ymm0, ymm0, ymm15",
            "vpmaddwd ymm14, ymm14, ymm13",
            "vpaddd ymm1, ymm1, ymm14",
            "vpbroadcastd ymm14, dword ptr [{xa} + {s}]",
            "vpmaddwd ymm15, ymm14, ymm12",
            "vpaddd ymm2, ymm2, ymm15",
            "vpmaddwd ymm14, ymm14, ymm13",
            "vpaddd ymm3, ymm3, ymm14",
            "vpbroadcastd ymm14, dword ptr [{xa} + 2*{s}]",
            "vpmaddwd ymm15, ymm14, ymm12",
            "vpaddd ymm4, ymm4, ymm15",
            "vpmaddwd ymm14, ymm14, ymm13",
            "vpaddd ymm5, ymm5, ymm14",
            "vpbroadcastd ymm14, dword ptr [{xb}]",
            "vpmaddwd ymm15, ymm14, ymm12",
            "vpaddd ymm6, ymm6, ymm15",
            "vpmaddwd ymm14, ymm14, ymm13",
            "vpaddd ymm7, ymm7, ymm14",
            "vpbroadcastd ymm14, dword ptr [{xb} + {s}]",
            "vpmaddwd ymm15, ymm14, ymm12",
            "vpaddd ymm8, ymm8, ymm15",
            "vpmaddwd ymm14, ymm14, ymm13",
            "vpaddd ymm9, ymm9, ymm14",
            "vpbroadcastd ymm14, dword ptr [{xb} + 2*{s}]",
            "vpmaddwd ymm15, ymm14, ymm12",
            "vpaddd ymm10, ymm10, ymm15",
            "vpmaddwd ymm14, ymm14, ymm13",
            "vpaddd ymm11, ymm11, ymm14",
            "add {xa}, 4",
            "add {xb}, 4",
            "add {w}, 64",
            "dec {n}",
            "jnz 2b",
            xa = inout(reg) x => _,
            xb = inout(reg) x.wrapping_byte_add(3 * s) => _,
            s = in(reg) s,
            w = inout(reg) w => _,
            n = inout(reg) pairs => _,
            inout("ymm0") *a0,
            inout("ymm1") *a1,
            inout("ymm2") *a2,
            inout("ymm3") *a3,
            inout("ymm4") *a4,
            inout("ymm5") *a5,
            inout("ymm6") *a6,
            inout("ymm7") *a7,
            inout("ymm8") *a8,
            inout("ymm9") *a9,
            inout("ymm10") *a10,
            inout("ymm11") *a11,
            out("ymm12") _,
            out("ymm13") _,
            out("ymm14") _,
            out("ymm15") _,
            options(nostack, readonly),
        );
    }
}

/// One input pair of `R` rows against one pair of the panel's 16 rows.
///
/// # Safety
/// AVX2; `x` (row stride `stride`) and `w` hold the pair for every row.
#[inline(always)]
unsafe fn pair_step<const R: usize>(
    acc: &mut [[__m256i; 2]; R],
    x: *const i16,
    stride: usize,
    w: *const i16,
) {
    // SAFETY: as this function's (`# Safety`); called only from AVX2 code.
    unsafe {
        let w0 = _mm256_loadu_si256(w.cast());
        let w1 = _mm256_loadu_si256(w.add(16).cast());
        for (r, a) in acc.iter_mut().enumerate() {
            let b = _mm256_set1_epi32(x.add(r * stride).cast::<i32>().read_unaligned());
            a[0] = _mm256_add_epi32(a[0], _mm256_madd_epi16(b, w0));
            a[1] = _mm256_add_epi32(a[1], _mm256_madd_epi16(b, w1));
        }
    }
}

/// Rounds one row to integers in ±`max` (`dst`, as long as `src`; inputs per call, weights
/// at load) and returns its scale: the same values and scale as the reference's `row_scale`
/// and `round_to`.
///
/// # Safety
/// The CPU has AVX2.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn round_row(src: &[f32], dst: &mut [i16], max: i32) -> f32 {
    debug_assert_eq!(src.len(), dst.len());
    let n = src.len();
    let body = n / 16 * 16;
    // SAFETY: every load reads src[k..k + 16] with k + 16 <= body <= n, every store writes
    // dst[k..k + 16] likewise; AVX2 is present (`# Safety`).
    unsafe {
        let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
        let inf = _mm256_set1_ps(f32::INFINITY);
        let (mut vmax, mut bad) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for k in (0..body).step_by(8) {
            let a = _mm256_and_ps(_mm256_loadu_ps(src.as_ptr().add(k)), abs_mask);
            vmax = _mm256_max_ps(vmax, a);
            // |v| >= inf is true for infinities; unordered (NaN) compares true as well.
            bad = _mm256_or_ps(bad, _mm256_cmp_ps::<_CMP_NLT_UQ>(a, inf));
        }
        let mut lanes = [0.0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), vmax);
        let mut amax = lanes.iter().fold(0.0f32, |m, &v| m.max(v));
        let mut nonfinite = _mm256_movemask_ps(bad) != 0;
        for &v in &src[body..] {
            amax = amax.max(v.abs());
            nonfinite |= !v.is_finite();
        }
        let (scale, inv) = scale_of(amax, nonfinite, max);
        if inv == 0.0 {
            dst.fill(0);
            return scale;
        }
        let vinv = _mm256_set1_ps(inv);
        let (lo, hi) = (_mm256_set1_epi32(-max), _mm256_set1_epi32(max));
        for k in (0..body).step_by(16) {
            let a = round8(_mm256_loadu_ps(src.as_ptr().add(k)), vinv, lo, hi);
            let b = round8(_mm256_loadu_ps(src.as_ptr().add(k + 8)), vinv, lo, hi);
            // packs interleaves 128-bit halves: a0-3 b0-3 a4-7 b4-7; put them back in order.
            let packed = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(a, b));
            _mm256_storeu_si256(dst.as_mut_ptr().add(k).cast(), packed);
        }
        for k in body..n {
            dst[k] = crate::i16_gemm::round_to(src[k], inv, max);
        }
        scale
    }
}

/// Eight values times `inv`, rounded to nearest (ties to even, the default MXCSR mode) and
/// clamped to `lo..=hi`. A function, not a closure: closures in a `#[target_feature]`
/// function do not inherit its features.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn round8(v: __m256, inv: __m256, lo: __m256i, hi: __m256i) -> __m256i {
    let q = _mm256_cvtps_epi32(_mm256_mul_ps(v, inv));
    _mm256_min_epi32(_mm256_max_epi32(q, lo), hi)
}
