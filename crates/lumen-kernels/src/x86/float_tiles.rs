//! AVX2 tiles for float weights (F32, F16, BF16) against f32 activations.
//!
//! Each (weight row, activation row) pair accumulates in eight lanes with FMA, element k into
//! lane k % 8, then sums the lanes in the fixed tree of [`crate::dot::lane_tree`] and adds the
//! tail elements in order, so every tile shape gives the same bits.

use std::arch::x86_64::*;
use std::ops::Range;

use super::tag::{self, Tag};
use super::M_CHUNK;
use crate::blocks::{bf16_at, f16_at, f32_at};
use crate::dot::lane_tree;
use crate::matmul::MatRef;

/// Computes columns `r` of every output row for a float matrix.
///
/// # Safety
/// As [`super::compute_rows`]; `x` holds m rows of `w.cols()` values.
pub(crate) unsafe fn rows<const F: Tag>(
    w: &MatRef,
    x: &[f32],
    m: usize,
    r: Range<usize>,
    out: *mut f32,
) {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        let (rb, base, ors, cols) = (w.row_bytes(), w.data().as_ptr(), w.rows(), w.cols());
        let xp = x.as_ptr();
        let mut i0 = 0;
        while i0 < m {
            let i1 = m.min(i0 + M_CHUNK);
            let mut j = r.start;
            while j + 4 <= r.end {
                let wp = base.add(j * rb);
                let mut i = i0;
                while i + 2 <= i1 {
                    tile::<F, 4, 2>(wp, rb, xp.add(i * cols), cols, out.add(i * ors + j), ors);
                    i += 2;
                }
                if i < i1 {
                    tile::<F, 4, 1>(wp, rb, xp.add(i * cols), cols, out.add(i * ors + j), ors);
                }
                j += 4;
            }
            while j < r.end {
                let wp = base.add(j * rb);
                let mut i = i0;
                while i + 2 <= i1 {
                    tile::<F, 1, 2>(wp, rb, xp.add(i * cols), cols, out.add(i * ors + j), ors);
                    i += 2;
                }
                if i < i1 {
                    tile::<F, 1, 1>(wp, rb, xp.add(i * cols), cols, out.add(i * ors + j), ors);
                }
                j += 1;
            }
            i0 = i1;
        }
    }
}

/// Weight values k..k+8 of the row at `p`, as f32.
///
/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load8<const F: Tag>(p: *const u8, k: usize) -> __m256 {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        match F {
            tag::F32 => _mm256_loadu_ps(p.add(4 * k).cast()),
            tag::F16 => _mm256_cvtph_ps(_mm_loadu_si128(p.add(2 * k).cast())),
            _ => {
                let h = _mm256_cvtepu16_epi32(_mm_loadu_si128(p.add(2 * k).cast()));
                _mm256_castsi256_ps(_mm256_slli_epi32::<16>(h))
            }
        }
    }
}

/// One weight value, as the scalar path reads it.
#[inline]
fn scalar_w<const F: Tag>(row: &[u8], j: usize) -> f32 {
    match F {
        tag::F32 => f32_at(row, 4 * j),
        tag::F16 => f16_at(row, 2 * j),
        _ => bf16_at(row, 2 * j),
    }
}

/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile<const F: Tag, const R: usize, const C: usize>(
    w: *const u8,
    rb: usize,
    x: *const f32,
    cols: usize,
    out: *mut f32,
    ors: usize,
) {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        let n8 = cols / 8 * 8;
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        let mut k = 0;
        while k < n8 {
            let mut xv = [_mm256_setzero_ps(); C];
            for (c, v) in xv.iter_mut().enumerate() {
                *v = _mm256_loadu_ps(x.add(c * cols + k));
            }
            for (r, accr) in acc.iter_mut().enumerate() {
                let wv = load8::<F>(w.add(r * rb), k);
                for (a, &xc) in accr.iter_mut().zip(&xv) {
                    *a = _mm256_fmadd_ps(wv, xc, *a);
                }
            }
            k += 8;
        }
        for (r, accr) in acc.iter().enumerate() {
            let row = std::slice::from_raw_parts(w.add(r * rb), rb);
            for (c, a) in accr.iter().enumerate() {
                let mut l = [0.0f32; 8];
                _mm256_storeu_ps(l.as_mut_ptr(), *a);
                let mut s = lane_tree(&l);
                for j in n8..cols {
                    s += scalar_w::<F>(row, j) * *x.add(c * cols + j);
                }
                *out.add(c * ors + r) = s;
            }
        }
    }
}
