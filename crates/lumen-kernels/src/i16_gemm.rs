//! 16-bit integer matrix products with exact integer sums, for the sentence encoders on CPUs
//! without AVX-512 BF16.
//!
//! An AVX2 core multiplies eight f32 per FMA, but sixteen 16-bit integers per `vpmaddwd`,
//! which also adds each pair: on Zen 3 an FMA-bound f32 GEMM peaks at about 50 GMAC/s per
//! core, `vpmaddwd` + `vpaddd` at about 80. Int8 would go further but moves
//! all-MiniLM-L6-v2's embeddings to cosine 0.988 of sentence-transformers' f32; 16-bit
//! integers lose nothing that matters:
//!
//! - each weight row is rounded to integers in ±[`I16_WEIGHT_MAX`] (11 bits) with its own scale,
//!   once at load;
//! - each input row to integers in ±[`I16_ACT_MAX`] (13 bits) with its own scale, per call;
//! - products are summed exactly in i32 over chunks of [`I16_CHUNK`] inputs
//!   (`4095 · 1023 · 512 < 2³¹`, so no chunk can overflow), each chunk's sum converted to
//!   f32 and added in chunk order, and the total scaled by `weight scale · input scale`.
//!
//! Against sentence-transformers' f32 embeddings on the fixtures that keeps
//! all-MiniLM-L6-v2 at cosine ≥ 0.999972 and all-mpnet-base-v2 at ≥ 0.999964 (bf16 gives
//! 0.99997), inside the 0.9999 the embedding tests hold every path to. The bits are split
//! that way because a chunk's sums are finished (converted, added to the output, loaded
//! again for the next chunk) at every chunk's end: with 12-bit weights a chunk held 256
//! inputs and a 384-wide MiniLM row took two; at 512 the tiles ran 4-6 % faster on Zen 3
//! (71-72 -> 75-76 GMAC/s on one core), at a cosine of 0.999972 / 0.999964 instead of
//! 0.999987 / 0.999991. Twelve bits for the inputs and the weights fit the same chunk and
//! were worse for MiniLM (0.999960), whose activations carry the outliers.
//!
//! Integer sums do not depend on their order, and the float steps after them are the same
//! per output whatever the tile, so a row gives the same bits alone, in any batch and on any
//! thread count; [`matmul_i16_reference`] computes the same bits in plain code.
//!
//! Weights are packed for the AVX2 tiles: panels of [`PANEL`] weight rows, and within a panel
//! for each pair of inputs the 16 rows' two values side by side, which is the operand order
//! `vpmaddwd` wants against a broadcast pair of input values.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::pool::{for_rows_in_parts, split_range, PartsPtr, ThreadPool};

/// Largest magnitude of a rounded input value (13 bits).
pub const I16_ACT_MAX: i32 = 4095;
/// Largest magnitude of a rounded weight (11 bits).
pub const I16_WEIGHT_MAX: i32 = 1023;
/// Inputs summed exactly in i32 before a chunk's sum goes to f32: `I16_ACT_MAX · I16_WEIGHT_MAX ·
/// I16_CHUNK` must stay below 2³¹.
pub const I16_CHUNK: usize = 512;
/// Weight rows per packed panel (two 8-lane registers of outputs in a tile).
pub const PANEL: usize = 16;

const _: () =
    assert!((I16_ACT_MAX as i64) * (I16_WEIGHT_MAX as i64) * (I16_CHUNK as i64) < (1i64 << 31));

/// Chunks of panels per thread (see [`matmul_i16`]).
const CHUNKS_PER_THREAD: usize = 6;

/// Below this many multiply-adds a product runs on the calling thread alone.
const PARALLEL_MIN_MACS: usize = 1 << 16;

/// A weight matrix rounded to 16-bit integers once, one scale per row, packed in panels.
#[derive(Clone)]
pub struct I16Matrix {
    rows: usize,
    cols: usize,
    /// Input pairs per row (`cols` rounded up to even, halved).
    pairs: usize,
    /// `panels × pairs × PANEL × 2` values; rows and columns past the matrix are zeros.
    data: Vec<i16>,
    /// Per row: what one integer step is worth (0 for an all-zero row).
    scales: Vec<f32>,
}

impl std::fmt::Debug for I16Matrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "I16Matrix({} x {})", self.rows, self.cols)
    }
}

/// The scale that maps `values`' largest magnitude to `max`, and its inverse, as both the
/// kernels and the reference compute them. A row of zeros gets scale 0 (its integers are 0);
/// a row holding a NaN or infinity gets a NaN scale, so its outputs are NaN as in f32.
pub(crate) fn row_scale(values: &[f32], max: i32) -> (f32, f32) {
    let amax = values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let nonfinite = values.iter().any(|v| !v.is_finite());
    scale_of(amax, nonfinite, max)
}

/// [`row_scale`] from the row's largest magnitude.
pub(crate) fn scale_of(amax: f32, nonfinite: bool, max: i32) -> (f32, f32) {
    if nonfinite {
        (f32::NAN, 0.0)
    } else if amax < f32::MIN_POSITIVE {
        (0.0, 0.0)
    } else {
        (amax / max as f32, max as f32 / amax)
    }
}

/// One value rounded to the integer grid (nearest, ties to even), clamped to ±`max`.
#[inline]
pub(crate) fn round_to(v: f32, inv: f32, max: i32) -> i16 {
    let q = (v * inv).round_ties_even();
    // A NaN product (only from a non-finite row, whose scale is NaN anyway) becomes 0.
    (q.clamp(-(max as f32), max as f32) as i32) as i16
}

impl I16Matrix {
    /// Builds a `rows × cols` matrix from its f32 rows, `row(j, buf)` filling row `j`.
    pub fn from_rows(rows: usize, cols: usize, mut row: impl FnMut(usize, &mut [f32])) -> Self {
        let pairs = cols.div_ceil(2);
        let panels = rows.div_ceil(PANEL);
        let mut data = vec![0i16; panels * pairs * PANEL * 2];
        let mut scales = vec![0.0f32; rows];
        let mut buf = vec![0.0f32; cols];
        let mut q = vec![0i16; cols];
        for (j, scale) in scales.iter_mut().enumerate() {
            row(j, &mut buf);
            *scale = round_weights(&buf, &mut q);
            let (panel, lane) = (j / PANEL, j % PANEL);
            for (k, &v) in q.iter().enumerate() {
                data[((panel * pairs + k / 2) * PANEL + lane) * 2 + k % 2] = v;
            }
        }
        I16Matrix {
            rows,
            cols,
            pairs,
            data,
            scales,
        }
    }

    /// Output columns (weight rows).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input width.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Input pairs per row (the packed depth).
    pub(crate) fn pairs(&self) -> usize {
        self.pairs
    }

    /// The packed values of panel `p` from input pair `q` on.
    pub(crate) fn panel_at(&self, p: usize, q: usize) -> *const i16 {
        self.data
            .as_ptr()
            .wrapping_add((p * self.pairs + q) * PANEL * 2)
    }

    /// Per-row scales.
    pub(crate) fn scales(&self) -> &[f32] {
        &self.scales
    }

    /// Weight `(j, k)` as its integer (for the reference).
    fn at(&self, j: usize, k: usize) -> i16 {
        let (panel, lane) = (j / PANEL, j % PANEL);
        self.data[((panel * self.pairs + k / 2) * PANEL + lane) * 2 + k % 2]
    }
}

/// Rounds one weight row into `q` and returns its scale: with the AVX2 rounding where the
/// CPU has it (a tenth of the scalar loop's time, whose `round_ties_even` is a libm call
/// in the baseline build), the same values either way.
fn round_weights(row: &[f32], q: &mut [i16]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if i16_supported() {
        // SAFETY: the CPU has AVX2 (`i16_supported`).
        return unsafe { crate::x86::i16_tiles::round_row(row, q, I16_WEIGHT_MAX) };
    }
    let (scale, inv) = row_scale(row, I16_WEIGHT_MAX);
    for (d, &v) in q.iter_mut().zip(row) {
        *d = round_to(v, inv, I16_WEIGHT_MAX);
    }
    scale
}

/// Whether this CPU runs [`matmul_i16`] (AVX2; `LUMEN_KERNELS=scalar` turns it off).
pub fn i16_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::CpuLevel::detect() >= crate::CpuLevel::Avx2
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The rounded input of [`matmul_i16`], kept between calls.
#[derive(Default)]
pub struct I16Scratch {
    /// `m` rows of `2 · pairs` integers.
    values: Vec<i16>,
    /// Per row: what one integer step is worth.
    scales: Vec<f32>,
}

/// `out[i*rows + j] ≈ Σ_k x[i][k] · w[j][k]` for the `m` rows of `x` (`m × cols`, row-major),
/// in the rounding the module describes.
///
/// # Panics
/// When the buffers do not match the shape, or the CPU lacks AVX2 ([`i16_supported`]: check
/// it before choosing this path).
pub fn matmul_i16(
    pool: &ThreadPool,
    w: &I16Matrix,
    x: &[f32],
    m: usize,
    out: &mut [f32],
    scratch: &mut I16Scratch,
) {
    assert_eq!(x.len(), m * w.cols, "matmul_i16: x is not m x cols");
    assert_eq!(out.len(), m * w.rows, "matmul_i16: out is not m x rows");
    assert!(i16_supported(), "matmul_i16 needs AVX2");
    if m == 0 || w.rows == 0 {
        return;
    }
    let macs = m.saturating_mul(w.rows).saturating_mul(w.cols);
    let panels = w.rows.div_ceil(PANEL);
    let n = if macs < PARALLEL_MIN_MACS {
        1
    } else {
        pool.n_threads().min(panels)
    };
    let stride = 2 * w.pairs;
    // Every value is written below (the rounding fills each row, the odd column's pad is
    // zeroed there), so the buffers only grow: zeroing them was 1-2 % of an embedding batch.
    if scratch.values.len() < m * stride {
        scratch.values.resize(m * stride, 0);
    }
    if scratch.scales.len() < m {
        scratch.scales.resize(m, 0.0);
    }
    // Rounding the input is a pass over every row, shared out by whole rows.
    let (vp, sp) = (
        PartsPtr(scratch.values.as_mut_ptr()),
        PartsPtr(scratch.scales.as_mut_ptr()),
    );
    for_rows_in_parts(pool, m, n, |i| {
        // SAFETY: row i of the values (m rows of `stride`) and scale i are visited by one
        // part alone; AVX2 is present (asserted above).
        #[cfg(target_arch = "x86_64")]
        unsafe {
            let dst = std::slice::from_raw_parts_mut(vp.get().add(i * stride), stride);
            let (values, pad) = dst.split_at_mut(w.cols);
            *sp.get().add(i) =
                crate::x86::i16_tiles::round_row(&x[i * w.cols..][..w.cols], values, I16_ACT_MAX);
            pad.fill(0);
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (i, &vp, &sp);
    });
    let xs = Quantized {
        values: &scratch.values,
        scales: &scratch.scales,
        stride,
    };
    let ptr = PartsPtr(out.as_mut_ptr());
    // Whole panels per chunk, so no tile shape depends on the split; a few chunks per thread,
    // claimed from a counter, so a thread that loses its core for a while (a busy neighbour
    // on a shared machine) holds back one chunk, not half the product. Which thread computes
    // a chunk never changes its values.
    let n_chunks = if n == 1 {
        1
    } else {
        panels.min(n * CHUNKS_PER_THREAD)
    };
    let next = AtomicUsize::new(0);
    let job = || loop {
        let c = next.fetch_add(1, Ordering::Relaxed);
        if c >= n_chunks {
            return;
        }
        let mine = split_range(panels, n_chunks, c);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 is present (asserted above); `xs` holds m rounded rows, and only the
        // claimer of chunk c writes the columns of panels `mine` of `out` (m x rows).
        unsafe {
            crate::x86::i16_tiles::rows(w, &xs, m, mine, ptr.get())
        };
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (mine, &ptr, &xs);
    };
    if n == 1 {
        job();
    } else {
        pool.run(|_, _| job());
    }
}

/// The rounded input rows the tiles read.
pub(crate) struct Quantized<'a> {
    pub(crate) values: &'a [i16],
    pub(crate) scales: &'a [f32],
    /// Integers per row (`2 · pairs`).
    pub(crate) stride: usize,
}

/// The product as plain code with the kernels' exact arithmetic: the same bits.
pub fn matmul_i16_reference(w: &I16Matrix, x: &[f32], m: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; m * w.rows];
    for i in 0..m {
        let row = &x[i * w.cols..(i + 1) * w.cols];
        let (sa, inv) = row_scale(row, I16_ACT_MAX);
        let q: Vec<i16> = row.iter().map(|&v| round_to(v, inv, I16_ACT_MAX)).collect();
        for j in 0..w.rows {
            let mut total = 0.0f32;
            for (c, k0) in (0..w.cols).step_by(I16_CHUNK).enumerate() {
                let sum: i32 = (k0..w.cols.min(k0 + I16_CHUNK))
                    .map(|k| i32::from(q[k]) * i32::from(w.at(j, k)))
                    .sum();
                total = if c == 0 {
                    sum as f32
                } else {
                    total + sum as f32
                };
            }
            out[i * w.rows + j] = total * (w.scales[j] * sa);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_values::values;

    #[test]
    fn matches_the_reference_bit_for_bit_and_is_batch_invariant() {
        if !i16_supported() {
            eprintln!("skipped: this CPU has no AVX2");
            return;
        }
        let pool = ThreadPool::new(2);
        let mut scratch = I16Scratch::default();
        // Widths odd, under and over a chunk, and several chunks; row counts off the panel
        // and off the tile of six.
        for &(rows, cols) in &[
            (7usize, 45usize),
            (384, 384),
            (130, 1536),
            (25, 257),
            (48, 3),
        ] {
            let mut wv = values(rows * cols, rows as u64);
            // An all-zero weight row must give zeros, not NaN.
            wv[..cols].iter_mut().for_each(|v| *v = 0.0);
            let w = I16Matrix::from_rows(rows, cols, |j, buf| {
                buf.copy_from_slice(&wv[j * cols..(j + 1) * cols])
            });
            for &m in &[1usize, 2, 3, 5, 9, 70, 131] {
                let x = values(m * cols, 7 + m as u64);
                let mut out = vec![0.0f32; m * rows];
                matmul_i16(&pool, &w, &x, m, &mut out, &mut scratch);
                let want = matmul_i16_reference(&w, &x, m);
                for (k, (a, b)) in out.iter().zip(&want).enumerate() {
                    assert_eq!(
                        a.to_bits(),
                        b.to_bits(),
                        "{rows}x{cols} m={m} at {k}: {a} vs {b}"
                    );
                }
                // Close to the f32 product: the rounding is 11 and 13 bits.
                for i in 0..m {
                    for j in 0..rows {
                        let exact: f64 = (0..cols)
                            .map(|k| f64::from(x[i * cols + k]) * f64::from(wv[j * cols + k]))
                            .sum();
                        let tol = 4e-3 * (cols as f64).sqrt();
                        let got = f64::from(out[i * rows + j]);
                        assert!(
                            (got - exact).abs() <= tol,
                            "{rows}x{cols} ({i},{j}): {got} vs {exact}"
                        );
                    }
                }
                // Each row alone gives the same bits as in the batch.
                for i in [0, m / 2, m - 1] {
                    let mut one = vec![0.0f32; rows];
                    matmul_i16(
                        &pool,
                        &w,
                        &x[i * cols..(i + 1) * cols],
                        1,
                        &mut one,
                        &mut scratch,
                    );
                    assert_eq!(one, out[i * rows..(i + 1) * rows]);
                }
            }
        }
    }

    #[test]
    fn simd_rounding_gives_the_scalar_values_and_scale() {
        if !i16_supported() {
            eprintln!("skipped: this CPU has no AVX2");
            return;
        }
        for (n, max) in [
            (1usize, I16_WEIGHT_MAX),
            (17, I16_ACT_MAX),
            (384, I16_WEIGHT_MAX),
            (1000, I16_ACT_MAX),
        ] {
            let mut row = values(n, n as u64);
            // Values exactly halfway between two steps round to even in both.
            row[0] = 2.0;
            if n > 1 {
                row[1] = 2.0 * (0.5 / max as f32);
            }
            let (scale, inv) = row_scale(&row, max);
            let want: Vec<i16> = row.iter().map(|&v| round_to(v, inv, max)).collect();
            let mut got = vec![0i16; n];
            // SAFETY: the CPU has AVX2 (checked above).
            let got_scale = unsafe { crate::x86::i16_tiles::round_row(&row, &mut got, max) };
            assert_eq!(got, want, "n = {n}");
            assert_eq!(got_scale.to_bits(), scale.to_bits());
        }
    }

    #[test]
    fn extreme_rows_stay_exact_and_non_finite_rows_give_nan() {
        if !i16_supported() {
            eprintln!("skipped: this CPU has no AVX2");
            return;
        }
        let pool = ThreadPool::new(1);
        let mut scratch = I16Scratch::default();
        // Every value at the largest magnitude, signs alike: the biggest sum a chunk can
        // reach, which must not wrap.
        let (rows, cols) = (24, 1024);
        let w = I16Matrix::from_rows(rows, cols, |_, buf| buf.fill(-3.0));
        let x = vec![-5.0f32; 2 * cols];
        let mut out = vec![0.0f32; 2 * rows];
        matmul_i16(&pool, &w, &x, 2, &mut out, &mut scratch);
        assert!(
            out.iter().all(|&v| (v - 15.0 * cols as f32).abs() < 1e-2),
            "{out:?}"
        );
        let mut bad = x.clone();
        bad[cols + 3] = f32::NAN;
        matmul_i16(&pool, &w, &bad, 2, &mut out, &mut scratch);
        assert!(out[..rows].iter().all(|v| v.is_finite()));
        assert!(out[rows..].iter().all(|v| v.is_nan()));
    }
}
