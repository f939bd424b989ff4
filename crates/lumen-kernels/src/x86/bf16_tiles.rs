//! AVX-512 BF16 tiles for [`crate::bf16_gemm`]: `vdpbf16ps` over 32-value blocks.
//!
//! A tile is R weight rows × C input rows, R·C zmm accumulators of 16 f32 lanes; each block
//! adds its 32 products pairwise into the 16 lanes, and the lanes are summed at the end by
//! `_mm512_reduce_add_ps`. Every (weight row, input row) pair runs that same sequence
//! whatever R and C are, so the tile shape never changes a result. Tiles are 4 × 3 (12
//! accumulators): at 4 × 4 the compiler kept one accumulator on the stack, and the
//! store-to-load round trip in every block took a quarter of the tile's time.

use std::arch::x86_64::*;
use std::ops::Range;

use crate::bf16_gemm::{Bf16Matrix, BF16_BLOCK};

/// Computes columns `r` of the `m` output rows.
///
/// # Safety
/// The CPU has AVX-512 F/BW/BF16; `x` holds `m` rows of `w.stride()` bf16 bits; `out` points
/// to `m × w.rows()` f32 of which this call alone writes columns `r`.
pub(crate) unsafe fn rows(w: &Bf16Matrix, x: &[u16], m: usize, r: Range<usize>, out: *mut f32) {
    let (stride, ors) = (w.stride(), w.rows());
    debug_assert!(x.len() >= m * stride && r.end <= ors);
    // Input rows in chunks that stay in L2 while every weight tile of the range passes.
    const M_CHUNK: usize = 64;
    let xp = x.as_ptr();
    let mut i0 = 0;
    while i0 < m {
        let i1 = m.min(i0 + M_CHUNK);
        let mut j = r.start;
        while j < r.end {
            let quad = j + 4 <= r.end;
            let mut i = i0;
            while i < i1 {
                let wide = i + 3 <= i1;
                let (xi, o) = (xp.wrapping_add(i * stride), out.wrapping_add(i * ors + j));
                // SAFETY: rows j.. and i.. are in range by the loop bounds; the caller
                // guarantees the features and the buffers (function `# Safety`).
                unsafe {
                    match (quad, wide) {
                        (true, true) => tile::<4, 3>(w, j, xi, stride, o, ors),
                        (true, false) => tile::<4, 1>(w, j, xi, stride, o, ors),
                        (false, true) => tile::<1, 3>(w, j, xi, stride, o, ors),
                        (false, false) => tile::<1, 1>(w, j, xi, stride, o, ors),
                    }
                }
                i += if wide { 3 } else { 1 };
            }
            j += if quad { 4 } else { 1 };
        }
        i0 = i1;
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn tile<const R: usize, const C: usize>(
    w: &Bf16Matrix,
    j: usize,
    x: *const u16,
    stride: usize,
    out: *mut f32,
    ors: usize,
) {
    let wp: [*const u16; R] = std::array::from_fn(|r| w.row_bits(j + r).as_ptr());
    // acc[c][r]: input row c against weight row r.
    let mut acc = [[_mm512_setzero_ps(); R]; C];
    let mut k = 0;
    while k < stride {
        // SAFETY: k < stride and every row holds `stride` values (caller's `# Safety`).
        unsafe {
            let wv: [__m512bh; R] = std::array::from_fn(|r| {
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(wp[r].add(k).cast()))
            });
            for (c, row) in acc.iter_mut().enumerate() {
                let xv = std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                    x.add(c * stride + k).cast(),
                ));
                for (a, &wr) in row.iter_mut().zip(&wv) {
                    *a = _mm512_dpbf16_ps(*a, wr, xv);
                }
            }
        }
        k += BF16_BLOCK;
    }
    for (c, row) in acc.iter().enumerate() {
        for (r, a) in row.iter().enumerate() {
            // SAFETY: output (i + c, j + r) is in this call's columns (caller's `# Safety`).
            unsafe { *out.add(c * ors + r) = _mm512_reduce_add_ps(*a) };
        }
    }
}
