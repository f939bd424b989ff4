//! The quantized matmul: `out[i][j] = dot(x row i, W row j)` for a weight matrix read in place.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::act::{ActBuf, ActKind};
use crate::cpu::CpuLevel;
use crate::dequant::dequantize_row;
use crate::dot::dot;
use crate::pool::{split_range, PartsPtr, ThreadPool};
use crate::{KernelError, WeightFormat};

/// Weight rows are handed to threads in whole tiles of this many rows (ggml layout).
pub(crate) const TILE_ROWS: usize = 8;

/// Rows per tile handed out for `w`: two groups for the packed 32-value formats, whose widest
/// kernel tiles take groups in pairs (a chunk ending inside a pair leaves a lone group to a
/// tile half as wide; with 576-row matrices in eight chunks, every chunk did), one group of
/// sixteen for the packed K-quants.
fn tile_rows(w: &MatRef) -> usize {
    if w.packed && crate::kpacked::kpacks(w.format) {
        crate::kpacked::KPACK_ROWS
    } else if w.packed {
        2 * crate::packed::PACK_ROWS
    } else {
        TILE_ROWS
    }
}

/// Below this many multiply-adds a matmul runs on the calling thread alone.
const PARALLEL_MIN_MACS: usize = 64 * 1024;

/// A borrowed weight matrix: `rows` output features, each a row of `cols` input features stored
/// in `format` (ggml layout, row-major, exactly like a GGUF tensor with dims `[cols, rows]`).
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    format: WeightFormat,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    /// Whether `data` is in the row-interleaved layout of [`crate::packed`].
    packed: bool,
    data: &'a [u8],
}

impl<'a> MatRef<'a> {
    /// Wraps `data`, checking that it holds exactly `rows` rows of `cols` values in `format`.
    pub fn new(
        format: WeightFormat,
        rows: usize,
        cols: usize,
        data: &'a [u8],
    ) -> Result<Self, KernelError> {
        let total = format.matrix_bytes(rows, cols)?;
        Self::with_layout(format, rows, cols, data, false, total, "weight data bytes")
    }

    /// Wraps `data` in the row-interleaved layout made by [`crate::pack`] (Q4_0, Q4_1, Q8_0,
    /// Q5_0, Q5_1, Q4_K, Q5_K, Q6_K), checking its length against the shape.
    pub fn packed(
        format: WeightFormat,
        rows: usize,
        cols: usize,
        data: &'a [u8],
    ) -> Result<Self, KernelError> {
        let total = crate::packed::packed_len(format, rows, cols)?;
        Self::with_layout(
            format,
            rows,
            cols,
            data,
            true,
            total,
            "packed weight data bytes",
        )
    }

    /// The view, once `data` is checked to be the `total` bytes its layout needs.
    fn with_layout(
        format: WeightFormat,
        rows: usize,
        cols: usize,
        data: &'a [u8],
        packed: bool,
        total: usize,
        what: &'static str,
    ) -> Result<Self, KernelError> {
        if data.len() != total {
            return Err(KernelError::ShapeMismatch {
                what,
                expected: total,
                actual: data.len(),
            });
        }
        // Both layouts exist only for block-aligned rows, so this is never the fallback.
        let row_bytes = format.row_bytes(cols).unwrap_or(0);
        Ok(MatRef {
            format,
            rows,
            cols,
            row_bytes,
            packed,
            data,
        })
    }

    /// Whether the data is in the packed layout rather than ggml's.
    pub fn is_packed(&self) -> bool {
        self.packed
    }

    /// Number of rows (output features).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns (input features).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Storage format.
    pub fn format(&self) -> WeightFormat {
        self.format
    }

    /// Bytes per row in ggml's layout.
    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }

    /// The whole matrix's bytes.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// The bytes of row `r` in ggml's layout. Panics for a packed matrix, whose rows are
    /// interleaved (use [`MatRef::dequantize_row`]).
    pub fn row_data(&self, r: usize) -> &'a [u8] {
        assert!(
            !self.packed,
            "row_data: a packed matrix has no contiguous rows"
        );
        &self.data[r * self.row_bytes..(r + 1) * self.row_bytes]
    }

    /// Dequantizes row `r` into `out` (`cols` values).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        if self.packed {
            crate::packed::dequantize_row(self.format, self.data, self.cols, r, out);
        } else {
            dequantize_row(self.format, self.row_data(r), out);
        }
    }
}

/// Reusable buffers (quantized activations) so that the steady-state step allocates nothing.
pub struct MatmulScratch {
    level: CpuLevel,
    pub(crate) act: ActBuf,
}

impl MatmulScratch {
    /// Scratch using the process's CPU level ([`CpuLevel::detect`]).
    pub fn new() -> Self {
        Self::with_level(CpuLevel::detect())
    }

    /// Scratch pinned to `level`, or to the highest level below it that the CPU supports;
    /// for tests and benches.
    pub fn with_level(level: CpuLevel) -> Self {
        let level = CpuLevel::supported_up_to(level);
        MatmulScratch {
            level,
            act: ActBuf::default(),
        }
    }

    /// The CPU level matmuls with this scratch run at (and quantize their activations at).
    pub fn level(&self) -> CpuLevel {
        self.level
    }
}

impl std::fmt::Debug for MatmulScratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MatmulScratch")
            .field("level", &self.level)
            .field("act_bytes", &self.act.qs.capacity())
            .finish()
    }
}

impl Default for MatmulScratch {
    fn default() -> Self {
        Self::new()
    }
}

/// `out[i*rows + j] = dot(x[i*cols .. (i+1)*cols], W row j)` for `i` in `0..m`.
///
/// `x` is m x cols f32 row-major, `out` is m x rows. Each output value is bit-identical whatever
/// m, the other rows, and the pool size. Panics if the buffer lengths do not match the shape.
pub fn matmul(
    pool: &ThreadPool,
    w: &MatRef,
    x: &[f32],
    m: usize,
    out: &mut [f32],
    scratch: &mut MatmulScratch,
) {
    matmul_many(pool, &[*w], x, m, &mut [out], scratch);
}

/// Several matmuls of the same input in one pass: `outs[k] = x * ws[k]^T`, as [`matmul`] each.
///
/// When every matrix has the same format, the activations are quantized once and all the
/// matrices' rows are shared out over the pool in one dispatch (the Q/K/V and gate/up
/// projections of a layer); otherwise it falls back to one [`matmul`] per matrix. The results
/// are bit-identical to separate calls either way.
pub fn matmul_many(
    pool: &ThreadPool,
    ws: &[MatRef],
    x: &[f32],
    m: usize,
    outs: &mut [&mut [f32]],
    scratch: &mut MatmulScratch,
) {
    matmul_many_from(pool, ws, x, m, outs, scratch, None);
}

/// An m-row input that its producer has already quantized into a scratch for the matrices it
/// meets next ([`crate::fused`]), so that [`matmul_quantized`] skips its own pass over the
/// rows. It borrows the rows: they cannot change between the two.
pub struct QuantizedInput<'a> {
    pub(crate) x: &'a [f32],
    pub(crate) m: usize,
    pub(crate) kind: ActKind,
    pub(crate) scratch: &'a mut MatmulScratch,
}

/// [`matmul_many`] of an input its producer quantized: the same results, without the pass
/// that quantizes the rows (done already, by the thread that computed each row, while it was
/// in that core's cache). If the matrices take another activation format than the one the
/// input was quantized for, the rows are quantized again here.
pub fn matmul_quantized(
    pool: &ThreadPool,
    ws: &[MatRef],
    input: QuantizedInput<'_>,
    outs: &mut [&mut [f32]],
) {
    let QuantizedInput {
        x,
        m,
        kind,
        scratch,
    } = input;
    matmul_many_from(pool, ws, x, m, outs, scratch, Some(kind));
}

/// [`matmul_many`]; `ready` is the activation kind `scratch` already holds `x` quantized as.
fn matmul_many_from(
    pool: &ThreadPool,
    ws: &[MatRef],
    x: &[f32],
    m: usize,
    outs: &mut [&mut [f32]],
    scratch: &mut MatmulScratch,
    ready: Option<ActKind>,
) {
    assert_eq!(
        ws.len(),
        outs.len(),
        "matmul_many: {} matrices but {} outputs",
        ws.len(),
        outs.len()
    );
    let Some(first) = ws.first() else { return };
    if ws
        .iter()
        .any(|w| w.format != first.format || w.cols != first.cols || w.packed != first.packed)
    {
        // Each matrix quantizes the rows for itself (the buffer holds one kind at a time).
        for (w, out) in ws.iter().zip(outs.iter_mut()) {
            matmul_many(
                pool,
                std::slice::from_ref(w),
                x,
                m,
                std::slice::from_mut(out),
                scratch,
            );
        }
        return;
    }
    let cols = first.cols;
    assert_eq!(
        x.len(),
        m * cols,
        "matmul: x has {} values, expected {m} x {cols}",
        x.len()
    );
    for (w, out) in ws.iter().zip(outs.iter()) {
        assert_eq!(
            out.len(),
            m * w.rows,
            "matmul: out has {} values, expected {m} x {}",
            out.len(),
            w.rows
        );
    }
    if m == 0 {
        return;
    }
    let level = scratch.level;
    let kind = first.format.act_kind();
    if ready != Some(kind) || scratch.act.m != m || scratch.act.cols != cols {
        scratch.act.prepare(kind, x, m, cols, level, pool);
    }
    let act = &scratch.act;
    // Tiles of all matrices, numbered consecutively; thread t takes one contiguous range.
    let mut tile_end = [0usize; MAX_MATS];
    assert!(
        ws.len() <= MAX_MATS,
        "matmul_many: at most {MAX_MATS} matrices"
    );
    let tr = tile_rows(first);
    let mut total = 0;
    for (k, w) in ws.iter().enumerate() {
        total += w.rows.div_ceil(tr);
        tile_end[k] = total;
    }
    if total == 0 {
        return;
    }
    let rows_all: usize = ws.iter().map(|w| w.rows).sum();
    let macs = rows_all.saturating_mul(cols).saturating_mul(m);
    let n = if macs < PARALLEL_MIN_MACS {
        1
    } else {
        pool.n_threads().min(total)
    };
    // Each chunk's claimer writes only its own weight rows' columns (see `compute_rows`).
    let mut ptrs = [PartsPtr(std::ptr::null_mut::<f32>()); MAX_MATS];
    for (p, out) in ptrs.iter_mut().zip(outs.iter_mut()) {
        *p = PartsPtr(out.as_mut_ptr());
    }
    // The tiles are cut into a few chunks per thread, claimed from a shared counter: a thread
    // that starts late (woken from sleep, or sharing its core) takes fewer, so nobody waits
    // long at the end. Which thread computes a chunk never changes its values.
    let n_chunks = if n == 1 {
        1
    } else {
        total.min(n * CHUNKS_PER_THREAD)
    };
    let next = AtomicUsize::new(0);
    let job = |_: usize, _: usize| loop {
        let c = next.fetch_add(1, Ordering::Relaxed);
        if c >= n_chunks {
            return;
        }
        // Claims alternate between the threads, so claim c takes chunk c / n of region c % n:
        // each thread's chunks then usually follow each other in memory, and the weights a
        // tile prefetches past the end of its chunk are the ones it computes next (with
        // chunks in claim order, a thread's next chunk was two away and every chunk started
        // cold: 7-10 % of single-stream decode).
        let c = if n_chunks == n * CHUNKS_PER_THREAD {
            c % n * CHUNKS_PER_THREAD + c / n
        } else {
            c
        };
        let mine = split_range(total, n_chunks, c);
        let mut start = 0;
        for (k, w) in ws.iter().enumerate() {
            let (lo, hi) = (mine.start.max(start), mine.end.min(tile_end[k]));
            if lo < hi {
                let r = ((lo - start) * tr).min(w.rows)..((hi - start) * tr).min(w.rows);
                // SAFETY: `outs[k]` holds m x rows values and only the claimer of this chunk
                // writes its columns `r`.
                unsafe { compute_rows(level, w, x, act, r, ptrs[k].get()) };
            }
            start = tile_end[k];
        }
    };
    if n == 1 {
        job(0, 1);
    } else {
        pool.run(job);
    }
}

/// Chunks of tiles per pool thread in one matmul (see `matmul_many`).
const CHUNKS_PER_THREAD: usize = 4;

/// Most matrices one [`matmul_many`] call takes.
const MAX_MATS: usize = 4;

/// Computes columns `r` of all m output rows.
///
/// # Safety
/// `out` must be valid for m x `w.rows` writes, and no other thread may access columns `r`.
unsafe fn compute_rows(
    level: CpuLevel,
    w: &MatRef,
    x: &[f32],
    act: &ActBuf,
    r: Range<usize>,
    out: *mut f32,
) {
    // SAFETY: the caller guarantees that `out` holds m x `w.rows` values whose columns `r` no one else touches, and `level` comes from `MatmulScratch`, which keeps only levels the CPU supports: the x86 kernels' contract, and every write below stays in `out`.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        if level >= CpuLevel::Avx2 {
            crate::x86::compute_rows(level, w, x, act, r, out);
            return;
        }
        let _ = level;
        let (m, cols, rows) = (act.m, w.cols, w.rows);
        if w.packed {
            for j in r {
                for i in 0..m {
                    *out.add(i * rows + j) = crate::packed::dot(w.format, w.data, cols, j, act, i);
                }
            }
            return;
        }
        for j in r {
            let wr = w.row_data(j);
            for i in 0..m {
                *out.add(i * rows + j) = dot(w.format, wr, &x[i * cols..(i + 1) * cols], act, i);
            }
        }
    }
}
