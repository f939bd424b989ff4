//! Quantized activations: `matmul` quantizes its m input rows once per call into an [`ActBuf`]
//! that every tile then reads. The block arithmetic is what llama.cpp's x86 build computes
//! (`quantize_row_q8_0`/`_q8_1` with AVX2: `127 / amax`, ties to even; `quantize_row_q8_K_ref`),
//! so quantized activations equal llama.cpp's bit for bit; the AVX2 versions equal the scalar.

use std::ops::Range;

use crate::blocks::{round_f16, QK, QK_K};
use crate::cpu::CpuLevel;
use crate::pool::{split_range, ThreadPool};
use crate::WeightFormat;

/// The activation format a weight format is dotted against (ggml's `vec_dot_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ActKind {
    /// Plain f32 rows (float weights).
    F32,
    /// 32-value blocks, f16 scale (for Q4_0 and Q8_0 weights).
    Q8_0,
    /// Q8_0 plus `s = d * sum(q)` as f16 (for Q4_1 weights).
    Q8_1,
    /// 256-value blocks, f32 scale, sums per 16 values (for K-quant weights).
    Q8K,
}

impl ActKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            ActKind::F32 => "f32",
            ActKind::Q8_0 => "q8_0",
            ActKind::Q8_1 => "q8_1",
            ActKind::Q8K => "q8_K",
        }
    }
}

/// m quantized activation rows. Per-block scalars are stored block-major (`[block][row]`, row
/// stride `stride`, padded to whole cache lines) so a tile loads the scales of its rows with
/// one vector load, and threads that fill different rows never write to one cache line.
#[derive(Default)]
pub(crate) struct ActBuf {
    pub m: usize,
    pub cols: usize,
    /// Blocks per row.
    pub nb: usize,
    /// Row stride of the block-major scalar arrays (a multiple of 8, at least m).
    pub stride: usize,
    /// Quants, row-major `[m][cols]`.
    pub qs: Vec<i8>,
    /// Block scales as f32 (f16-rounded for Q8_0/Q8_1), `[nb][stride]`.
    pub d: LineBuf<f32>,
    /// Q8_1 `s` (f16-rounded `d * sum`), `[nb][stride]`.
    pub s: LineBuf<f32>,
    /// Sum of the quants of each 32-block, `[nb][stride]`.
    pub isum: LineBuf<i32>,
    /// Q8_K sums per 16 values, `[m][nb][16]`.
    pub bs16: Vec<i16>,
    /// Q8_K sums per 32 values, `[m][nb][8]`.
    pub bs32: Vec<i16>,
}

fn grow<T: Copy + Default>(v: &mut Vec<T>, n: usize) {
    if v.len() < n {
        v.resize(n, T::default());
    }
}

/// Four-byte values per cache line.
const LINE: usize = 16;

/// A growable array of four-byte values whose first element starts a cache line.
///
/// The block-major scalars of the rows two threads quantize sat in shared lines (a `Vec` is
/// only 16-byte aligned): the quantizer stalled on its stores while the line moved between
/// cores.
#[derive(Default)]
pub(crate) struct LineBuf<T: Copy + Default>(Vec<Line<T>>);

#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
struct Line<T: Copy + Default>([T; LINE]);

const _: () =
    assert!(std::mem::size_of::<Line<f32>>() == 64 && std::mem::size_of::<Line<i32>>() == 64);

impl<T: Copy + Default> LineBuf<T> {
    /// Makes room for at least `n` values (new ones are `T::default()`).
    fn grow(&mut self, n: usize) {
        if self.0.len() * LINE < n {
            self.0.resize(n.div_ceil(LINE), Line::default());
        }
    }
}

impl<T: Copy + Default> std::ops::Deref for LineBuf<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        // SAFETY: a Line is exactly LINE values of T (repr(C), and T is four bytes, so the
        // 64-byte alignment adds no padding), so the lines are one contiguous run of values.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast::<T>(), self.0.len() * LINE) }
    }
}

impl<T: Copy + Default> std::ops::DerefMut for LineBuf<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`.
        unsafe {
            std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast::<T>(), self.0.len() * LINE)
        }
    }
}

/// Below this many values (or 4 rows) activations are quantized on the calling thread alone.
const PARALLEL_MIN_VALUES: usize = 8192;

impl ActBuf {
    /// Quantizes the m rows of `x` (m x cols) for weights that dot against `kind`, splitting the
    /// rows over `pool` when there are enough of them.
    pub(crate) fn prepare(
        &mut self,
        kind: ActKind,
        x: &[f32],
        m: usize,
        cols: usize,
        level: CpuLevel,
        pool: &ThreadPool,
    ) {
        assert!(x.len() >= m * cols, "ActBuf::prepare: x too short");
        let Some(fill) = self.begin(kind, m, cols) else {
            return;
        };
        let job = |t: usize, parts: usize| {
            let rows = split_range(m, parts, t);
            // SAFETY: `begin` sized the buffers for m rows of this geometry, and each part
            // writes only its own rows (disjoint elements), all before `prepare` returns.
            unsafe { fill.rows(kind, &x[rows.start * cols..rows.end * cols], rows, level) }
        };
        if m >= 4 && m * cols >= PARALLEL_MIN_VALUES && pool.n_threads() > 1 {
            pool.run(job);
        } else {
            job(0, 1);
        }
    }

    /// Sizes the buffer for m rows of `cols` values of `kind` and returns raw views to fill
    /// them through ([`Fill::rows`]), or `None` for f32 rows (nothing to quantize).
    pub(crate) fn begin(&mut self, kind: ActKind, m: usize, cols: usize) -> Option<Fill> {
        self.m = m;
        self.cols = cols;
        self.stride = m.next_multiple_of(LINE);
        self.nb = match kind {
            ActKind::F32 => return None,
            ActKind::Q8_0 | ActKind::Q8_1 => cols / QK,
            ActKind::Q8K => cols / QK_K,
        };
        let n = self.nb * self.stride + 8;
        grow(&mut self.qs, m * cols);
        self.d.grow(n);
        if kind == ActKind::Q8K {
            grow(&mut self.bs16, m * self.nb * 16);
            grow(&mut self.bs32, m * self.nb * 8);
        } else {
            self.s.grow(n);
            self.isum.grow(n);
        }
        Some(Fill {
            qs: self.qs.as_mut_ptr(),
            d: self.d.as_mut_ptr(),
            s: self.s.as_mut_ptr(),
            isum: self.isum.as_mut_ptr(),
            bs16: self.bs16.as_mut_ptr(),
            bs32: self.bs32.as_mut_ptr(),
            cols,
            nb: self.nb,
            stride: self.stride,
        })
    }

    /// Quants of row i.
    #[inline]
    pub(crate) fn row_qs(&self, i: usize) -> &[i8] {
        &self.qs[i * self.cols..(i + 1) * self.cols]
    }

    /// Index of (block b, row i) in the block-major arrays.
    #[inline]
    pub(crate) fn at(&self, b: usize, i: usize) -> usize {
        b * self.stride + i
    }
}

/// Raw views of an [`ActBuf`]'s arrays, so that several threads can fill disjoint rows.
#[derive(Clone, Copy)]
pub(crate) struct Fill {
    qs: *mut i8,
    d: *mut f32,
    s: *mut f32,
    isum: *mut i32,
    bs16: *mut i16,
    bs32: *mut i16,
    cols: usize,
    nb: usize,
    stride: usize,
}

// SAFETY: a Fill is only used by the parts of one pool job, which write disjoint rows.
unsafe impl Send for Fill {}
// SAFETY: as above.
unsafe impl Sync for Fill {}

impl Fill {
    /// Quantizes rows `rows` as `kind` (the kind the buffer was begun for) from `x`, which
    /// holds exactly those rows.
    ///
    /// # Safety
    /// The arrays must be sized for these rows (by [`ActBuf::begin`], whose buffer must still
    /// be alive and not moved), and no one else may access these rows meanwhile.
    pub(crate) unsafe fn rows(self, kind: ActKind, x: &[f32], rows: Range<usize>, level: CpuLevel) {
        // SAFETY: the caller's contract is the one `q8_rows` and `q8k_rows` state.
        unsafe {
            assert_eq!(
                x.len(),
                rows.len() * self.cols,
                "Fill::rows: x does not hold the rows"
            );
            if kind == ActKind::Q8K {
                self.q8k_rows(x, rows, level)
            } else {
                self.q8_rows(x, rows, level)
            }
        }
    }

    /// Quantizes rows `rows` to Q8_0/Q8_1 blocks (`x` starts at row `rows.start`).
    ///
    /// # Safety
    /// As [`Fill::rows`].
    unsafe fn q8_rows(self, x: &[f32], rows: Range<usize>, level: CpuLevel) {
        // SAFETY: `begin` sized every array for these rows and no one else touches them (the caller's contract), so every offset below stays inside its array and the slices made from them alias nothing; a level of Avx2 or above is only used when the CPU supports it.
        unsafe {
            let first = rows.start;
            #[cfg(target_arch = "x86_64")]
            if level >= CpuLevel::Avx2 {
                for i in rows {
                    let off = i * self.cols;
                    // SAFETY: a level of Avx2 or above is only selected when the CPU has AVX2, FMA and F16C; the row
                    // and the arrays are sized as the caller guarantees.
                    crate::x86::act_quant::q8_row(
                        x[(i - first) * self.cols..].as_ptr(),
                        self.qs.add(off),
                        self.nb,
                        self.d.add(i),
                        self.isum.add(i),
                        self.s.add(i),
                        self.stride,
                    );
                }
                return;
            }
            for i in rows {
                for b in 0..self.nb {
                    let off = i * self.cols + b * QK;
                    let xo = (i - first) * self.cols + b * QK;
                    let q = std::slice::from_raw_parts_mut(self.qs.add(off), QK);
                    let (d, sum) = q8_block(level, &x[xo..xo + QK], q);
                    let k = b * self.stride + i;
                    *self.d.add(k) = round_f16(d);
                    *self.isum.add(k) = sum;
                    *self.s.add(k) = round_f16(sum as f32 * d);
                }
            }
        }
    }

    /// Quantizes rows `rows` to Q8_K blocks (`x` starts at row `rows.start`).
    ///
    /// # Safety
    /// As [`Fill::rows`].
    unsafe fn q8k_rows(self, x: &[f32], rows: Range<usize>, level: CpuLevel) {
        // SAFETY: `begin` sized every array for these rows and no one else touches them (the caller's contract), so every offset below stays inside its array and the slices made from them alias nothing.
        unsafe {
            let first = rows.start;
            for i in rows {
                for b in 0..self.nb {
                    let off = i * self.cols + b * QK_K;
                    let xo = (i - first) * self.cols + b * QK_K;
                    let q = std::slice::from_raw_parts_mut(self.qs.add(off), QK_K);
                    let bs =
                        std::slice::from_raw_parts_mut(self.bs16.add((i * self.nb + b) * 16), 16);
                    *self.d.add(b * self.stride + i) = q8k_block(level, &x[xo..xo + QK_K], q, bs);
                    let b32 = self.bs32.add((i * self.nb + b) * 8);
                    for k in 0..8 {
                        *b32.add(k) = bs[2 * k] + bs[2 * k + 1];
                    }
                }
            }
        }
    }
}

fn q8_block(level: CpuLevel, x: &[f32], q: &mut [i8]) -> (f32, i32) {
    #[cfg(target_arch = "x86_64")]
    if level >= CpuLevel::Avx2 {
        assert!(x.len() >= QK && q.len() >= QK);
        // SAFETY: a level of Avx2 or above is only selected when the CPU supports it; both slices hold 32 elements.
        return unsafe { crate::x86::act_quant::q8_block(x.as_ptr(), q.as_mut_ptr()) };
    }
    let _ = level;
    q8_block_scalar(x, q)
}

fn q8k_block(level: CpuLevel, x: &[f32], q: &mut [i8], bs: &mut [i16]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if level >= CpuLevel::Avx2 {
        assert!(x.len() >= QK_K && q.len() >= QK_K && bs.len() >= 16);
        // SAFETY: a level of Avx2 or above is only selected when the CPU supports it; the slices hold 256/256/16.
        return unsafe {
            crate::x86::act_quant::q8k_block(x.as_ptr(), q.as_mut_ptr(), bs.as_mut_ptr())
        };
    }
    let _ = level;
    q8k_block_scalar(x, q, bs)
}

/// One Q8_0/Q8_1 block: returns the unrounded scale `amax / 127` and the sum of the quants.
///
/// This is llama.cpp's x86 quantizer (`quantize_row_q8_0`/`_q8_1` built with AVX2), not its
/// portable reference: the inverse scale is `127 / amax` (not `1 / d`) and ties round to even.
pub(crate) fn q8_block_scalar(x: &[f32], q: &mut [i8]) -> (f32, i32) {
    let amax = x[..QK]
        .iter()
        .fold(0.0f32, |a, v| if v.abs() > a { v.abs() } else { a });
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut sum = 0i32;
    for (o, v) in q[..QK].iter_mut().zip(&x[..QK]) {
        *o = (v * id).round_ties_even() as i8;
        sum += *o as i32;
    }
    (d, sum)
}

/// ggml's `nearest_int`: round half to even through the float mantissa.
#[inline]
fn nearest_int(v: f32) -> i32 {
    let t = v + 12_582_912.0;
    (t.to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}

/// One Q8_K block: fills quants and 16-value sums, returns the f32 scale.
pub(crate) fn q8k_block_scalar(x: &[f32], q: &mut [i8], bs: &mut [i16]) -> f32 {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in &x[..QK_K] {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax == 0.0 {
        q[..QK_K].fill(0);
        bs[..16].fill(0);
        return 0.0;
    }
    let iscale = -127.0 / max;
    for (o, v) in q[..QK_K].iter_mut().zip(&x[..QK_K]) {
        *o = nearest_int(iscale * v).min(127) as i8;
    }
    for (k, s) in bs[..16].iter_mut().enumerate() {
        *s = q[16 * k..16 * k + 16].iter().map(|&v| v as i16).sum();
    }
    1.0 / iscale
}

/// Quantizes `x` the way `matmul` does for weights in `format`, then dequantizes it into `out`
/// (what the weights are effectively dotted with; for tests and diagnostics).
pub fn activation_roundtrip(format: WeightFormat, x: &[f32], out: &mut [f32]) {
    assert_eq!(x.len(), out.len(), "activation_roundtrip: length mismatch");
    match format.act_kind() {
        ActKind::F32 => out.copy_from_slice(x),
        ActKind::Q8_0 | ActKind::Q8_1 => {
            assert_eq!(
                x.len() % QK,
                0,
                "activation_roundtrip: length not a multiple of 32"
            );
            let mut q = [0i8; QK];
            for (xs, o) in x.chunks_exact(QK).zip(out.chunks_exact_mut(QK)) {
                let d = round_f16(q8_block_scalar(xs, &mut q).0);
                for (v, &qv) in o.iter_mut().zip(&q) {
                    *v = qv as f32 * d;
                }
            }
        }
        ActKind::Q8K => {
            assert_eq!(
                x.len() % QK_K,
                0,
                "activation_roundtrip: length not a multiple of 256"
            );
            let mut q = [0i8; QK_K];
            let mut bs = [0i16; 16];
            for (xs, o) in x.chunks_exact(QK_K).zip(out.chunks_exact_mut(QK_K)) {
                let d = q8k_block_scalar(xs, &mut q, &mut bs);
                for (v, &qv) in o.iter_mut().zip(&q) {
                    *v = d * qv as f32;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// Inputs that hit the rounding edge cases: exact ties after scaling, zeros, repeated maxima.
    fn cases() -> Vec<Vec<f32>> {
        let mut seed = 42u64;
        let mut v: Vec<Vec<f32>> = (0..200)
            .map(|k| {
                (0..QK_K)
                    .map(|_| lcg(&mut seed) * (1.0 + k as f32))
                    .collect()
            })
            .collect();
        // amax = 127 gives d = 1 and id = 1, so x.5 values are exact ties.
        v.push(
            (0..QK_K)
                .map(|j| {
                    if j % 32 == 0 {
                        127.0
                    } else {
                        (j % 64) as f32 - 31.5
                    }
                })
                .collect(),
        );
        v.push(
            (0..QK_K)
                .map(|j| {
                    if j % 32 == 7 {
                        -127.0
                    } else {
                        0.5 * ((j % 9) as f32 - 4.0)
                    }
                })
                .collect(),
        );
        v.push(vec![0.0; QK_K]);
        v.push(
            (0..QK_K)
                .map(|j| if j % 2 == 0 { 3.0 } else { -3.0 })
                .collect(),
        );
        v.push(
            (0..QK_K)
                .map(|j| if j == 200 { -1e-3 } else { 0.0 })
                .collect(),
        );
        v
    }

    #[test]
    fn ties_round_to_even() {
        let mut x = [0.0f32; QK];
        x[0] = 127.0;
        x[1] = 2.5;
        x[2] = -3.5;
        x[3] = 0.5;
        x[4] = -0.5;
        let mut q = [0i8; QK];
        q8_block_scalar(&x, &mut q);
        assert_eq!(&q[..5], &[127, 2, -4, 0, 0]);
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn activation_quantizers_are_bit_identical_at_every_level() {
        for level in CpuLevel::supported() {
            for x in cases() {
                for blk in x.chunks_exact(QK) {
                    let (mut qa, mut qb) = ([0i8; QK], [0i8; QK]);
                    let a = q8_block(CpuLevel::Scalar, blk, &mut qa);
                    let b = q8_block(level, blk, &mut qb);
                    assert_eq!((a.0.to_bits(), a.1), (b.0.to_bits(), b.1), "{level}");
                    assert_eq!(qa, qb, "{level}");
                }
                let (mut qa, mut qb) = ([0i8; QK_K], [0i8; QK_K]);
                let (mut ba, mut bb) = ([0i16; 16], [0i16; 16]);
                let a = q8k_block(CpuLevel::Scalar, &x, &mut qa, &mut ba);
                let b = q8k_block(level, &x, &mut qb, &mut bb);
                assert_eq!(a.to_bits(), b.to_bits(), "{level}");
                assert_eq!(qa, qb, "{level}");
                assert_eq!(ba, bb, "{level}");
            }
        }
    }

    /// The whole-row path of every level fills the same buffers as the portable one, every row
    /// (several rows split over threads, the block-major arrays at their stride).
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn prepared_rows_equal_across_levels() {
        let x: Vec<f32> = cases().concat();
        let pool = ThreadPool::new(2);
        // Whole groups of eight blocks (done eight at a time), and eleven (a group and a tail).
        for cols in [2 * QK_K, 11 * QK] {
            let m = x.len() / cols;
            assert!(m >= 4);
            let prepared = |level| {
                let mut a = ActBuf::default();
                a.prepare(ActKind::Q8_1, &x, m, cols, level, &pool);
                let n = a.nb * a.stride;
                (
                    a.qs[..m * cols].to_vec(),
                    a.d[..n].iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    a.isum[..n].to_vec(),
                    a.s[..n].iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                )
            };
            let scalar = prepared(CpuLevel::Scalar);
            for level in CpuLevel::supported() {
                assert_eq!(prepared(level), scalar, "{level}, {cols} columns");
            }
        }
    }

    #[test]
    fn q8k_matches_ggml_reference_formula() {
        // First maximum is negative: iscale = -127 / max > 0, so it quantizes to -127.
        let mut x = vec![0.25f32; QK_K];
        x[10] = -2.0;
        x[20] = 2.0;
        let (mut q, mut bs) = ([0i8; QK_K], [0i16; 16]);
        let d = q8k_block_scalar(&x, &mut q, &mut bs);
        assert_eq!(q[10], -127);
        assert_eq!(q[20], 127);
        assert_eq!(d, 1.0 / (-127.0 / -2.0));
        assert_eq!(bs[0] as i32, q[..16].iter().map(|&v| v as i32).sum::<i32>());
    }
}
