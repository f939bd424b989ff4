//! BF16 matrix products with f32 accumulation, for the sentence encoders.
//!
//! Float encoders (BERT, MPNet) spend nearly all their time in f32 GEMMs, and f32 FMA is
//! where a CPU is slowest per multiply. Rounding weights and activations to bf16 and
//! accumulating in f32 (`vdpbf16ps`, AVX-512 BF16: twice the multiplies of an f32 FMA per
//! instruction, half the bytes per weight) keeps all-MiniLM-L6-v2 and all-mpnet-base-v2 at
//! cosine ≥ 0.99997 against sentence-transformers' f32 embeddings (measured on the fixtures),
//! inside the 0.9999 every embedding test holds them to. So it is the default where the CPU
//! has the instruction ([`bf16_supported`]) and f32 everywhere else: a CPU without it would
//! only emulate it, no faster than f32.
//!
//! Each output is one fixed sequence of instructions over its (weight row, input row) pair,
//! whatever the tile, the batch or the thread count: a sentence embeds to the same bits alone
//! and in any batch. Rows are padded to whole 32-value blocks with zeros, which add nothing.

use crate::pool::{for_rows_in_parts, split_range, PartsPtr, ThreadPool};

/// Values per block: one 512-bit register of bf16.
pub const BF16_BLOCK: usize = 32;

/// Below this many multiply-adds a product runs on the calling thread alone.
const PARALLEL_MIN_MACS: usize = 1 << 16;

/// A weight matrix rounded to bf16 once (round to nearest even), rows padded with zeros to
/// whole blocks.
#[derive(Clone)]
pub struct Bf16Matrix {
    rows: usize,
    cols: usize,
    stride: usize,
    data: Vec<u16>,
}

impl std::fmt::Debug for Bf16Matrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bf16Matrix({} x {})", self.rows, self.cols)
    }
}

/// Rounds `src` to bf16 bits into `dst` (same length).
fn round_row(src: &[f32], dst: &mut [u16]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = half::bf16::from_f32(s).to_bits();
    }
}

impl Bf16Matrix {
    /// Builds a `rows × cols` matrix from its f32 rows, `row(j, buf)` filling row `j`.
    pub fn from_rows(rows: usize, cols: usize, mut row: impl FnMut(usize, &mut [f32])) -> Self {
        let stride = cols.div_ceil(BF16_BLOCK) * BF16_BLOCK;
        let mut data = vec![0u16; rows * stride];
        let mut buf = vec![0.0f32; cols];
        for (j, dst) in data.chunks_exact_mut(stride.max(1)).enumerate().take(rows) {
            row(j, &mut buf);
            round_row(&buf, &mut dst[..cols]);
        }
        Bf16Matrix {
            rows,
            cols,
            stride,
            data,
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

    /// Row `j`'s padded bf16 bits.
    pub(crate) fn row_bits(&self, j: usize) -> &[u16] {
        &self.data[j * self.stride..(j + 1) * self.stride]
    }

    /// Padded row length.
    pub(crate) fn stride(&self) -> usize {
        self.stride
    }
}

/// Whether this CPU runs [`matmul_bf16`] natively (AVX-512 BF16), and the kernels may use
/// AVX-512 at all (`LUMEN_KERNELS` below `avx512` turns it off, as it does every AVX-512 path).
pub fn bf16_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::CpuLevel::detect() >= crate::CpuLevel::Avx512
            && is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `out[i*rows + j] = Σ_k bf16(x[i][k]) · w[j][k]`, accumulated in f32, for the `m` rows of
/// `x` (`m × cols`, row-major). `scratch` holds the rounded input between calls.
///
/// # Panics
/// When the buffers do not match the shape, or the CPU lacks AVX-512 BF16 ([`bf16_supported`]:
/// check it before choosing this path).
pub fn matmul_bf16(
    pool: &ThreadPool,
    w: &Bf16Matrix,
    x: &[f32],
    m: usize,
    out: &mut [f32],
    scratch: &mut Vec<u16>,
) {
    assert_eq!(x.len(), m * w.cols, "matmul_bf16: x is not m x cols");
    assert_eq!(out.len(), m * w.rows, "matmul_bf16: out is not m x rows");
    assert!(bf16_supported(), "matmul_bf16 needs AVX-512 BF16");
    if m == 0 || w.rows == 0 {
        return;
    }
    let macs = m.saturating_mul(w.rows).saturating_mul(w.cols);
    let n = if macs < PARALLEL_MIN_MACS {
        1
    } else {
        pool.n_threads().min(w.rows.div_ceil(4))
    };
    scratch.clear();
    scratch.resize(m * w.stride, 0);
    // Rounding the input is a pass over every row: shared out like the product (each part
    // rounds whole rows of its own, so which part did it never changes a bit).
    let xs_ptr = PartsPtr(scratch.as_mut_ptr());
    for_rows_in_parts(pool, m, n, |i| {
        // SAFETY: row i of the scratch (m rows of `stride`) is visited by one part alone.
        let dst = unsafe { std::slice::from_raw_parts_mut(xs_ptr.get().add(i * w.stride), w.cols) };
        round_row(&x[i * w.cols..(i + 1) * w.cols], dst);
    });
    let xs: &[u16] = scratch;
    let ptr = PartsPtr(out.as_mut_ptr());
    let part = |p: usize| {
        // Whole tiles of four weight rows per part, so no tile shape depends on the split.
        let tiles = split_range(w.rows.div_ceil(4), n, p);
        let r = (tiles.start * 4).min(w.rows)..(tiles.end * 4).min(w.rows);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512 BF16 is present (asserted above); `xs` holds m padded rows, `w`
        // its padded rows, and this part alone writes columns `r` of `out` (m x rows).
        unsafe {
            crate::x86::bf16_tiles::rows(w, xs, m, r, ptr.get())
        };
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (r, &ptr);
    };
    if n == 1 {
        part(0);
    } else {
        pool.run(|p, _| {
            if p < n {
                part(p);
            }
        });
    }
}

/// The product as plain code, in f64 over the bf16-rounded inputs: what tests compare the
/// kernel with (the kernel rounds its f32 sums, so the two agree to f32 accuracy, not bits).
pub fn matmul_bf16_reference(w: &Bf16Matrix, x: &[f32], m: usize) -> Vec<f32> {
    let mut xr = vec![0u16; w.cols];
    let mut out = vec![0.0f32; m * w.rows];
    for i in 0..m {
        round_row(&x[i * w.cols..(i + 1) * w.cols], &mut xr);
        for j in 0..w.rows {
            let wr = &w.data[j * w.stride..j * w.stride + w.cols];
            let dot: f64 = xr
                .iter()
                .zip(wr)
                .map(|(&a, &b)| {
                    f64::from(half::bf16::from_bits(a).to_f32())
                        * f64::from(half::bf16::from_bits(b).to_f32())
                })
                .sum();
            out[i * w.rows + j] = dot as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_values::values;

    #[test]
    fn matches_the_reference_and_is_batch_invariant() {
        if !bf16_supported() {
            eprintln!("skipped: this CPU has no AVX-512 BF16");
            return;
        }
        let pool = ThreadPool::new(2);
        let mut scratch = Vec::new();
        // Widths with and without a partial last block; row counts off the tile of four.
        for &(rows, cols) in &[(7usize, 45usize), (384, 384), (130, 1536), (5, 32)] {
            let wv = values(rows * cols, rows as u64);
            let w = Bf16Matrix::from_rows(rows, cols, |j, buf| {
                buf.copy_from_slice(&wv[j * cols..(j + 1) * cols])
            });
            for &m in &[1usize, 2, 3, 9, 70] {
                let x = values(m * cols, 7 + m as u64);
                let mut out = vec![0.0f32; m * rows];
                matmul_bf16(&pool, &w, &x, m, &mut out, &mut scratch);
                let want = matmul_bf16_reference(&w, &x, m);
                for (k, (a, b)) in out.iter().zip(&want).enumerate() {
                    let tol = 1e-5 * (cols as f32).sqrt() * 4.0;
                    assert!(
                        (a - b).abs() <= tol,
                        "{rows}x{cols} m={m} at {k}: {a} vs {b}"
                    );
                }
                // Each row alone gives the same bits as in the batch.
                for i in 0..m {
                    let mut one = vec![0.0f32; rows];
                    matmul_bf16(
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
}
