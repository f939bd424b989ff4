//! The fast attention arithmetic's x86 kernels: 512-bit and 256-bit versions of the same
//! lane-by-lane operations (see the parent module).

use std::arch::x86_64::*;

use half::f16;

use super::{Ahead, FastBufs, Inputs, Ops, QTile, Task, TILE};
use crate::ggml_math::x86::{exp8, hsum8};

/// [`super::run`] with 512-bit vectors.
///
/// # Safety
/// The CPU must support AVX-512F, AVX2, FMA and F16C; head_dim and block_size must be
/// multiples of 16.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub(super) unsafe fn run_avx512(inputs: &Inputs<'_>, task: Task, bufs: FastBufs<'_>) {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe { super::run::<Simd<Zmm, 4>>(inputs, task, bufs) }
}

/// [`super::run`] with pairs of 256-bit vectors (16 registers: one pair of value lanes at
/// a time).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; head_dim and block_size must be multiples of 16.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn run_avx2(inputs: &Inputs<'_>, task: Task, bufs: FastBufs<'_>) {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe { super::run::<Simd<Ymm2, 1>>(inputs, task, bufs) }
}

/// Sixteen f32 lanes.
trait Lanes: Copy {
    /// # Safety
    /// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
    /// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
    /// pointer argument must be valid for the reads and writes described above.
    unsafe fn zero() -> Self;
    /// Sixteen f16 values at `p`, widened.
    ///
    /// # Safety
    /// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
    /// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
    /// pointer argument must be valid for the reads and writes described above.
    unsafe fn load_f16(p: *const f16) -> Self;
    /// # Safety
    /// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
    /// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
    /// pointer argument must be valid for the reads and writes described above.
    unsafe fn load(p: *const f32) -> Self;
    /// # Safety
    /// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
    /// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
    /// pointer argument must be valid for the reads and writes described above.
    unsafe fn store(self, p: *mut f32);
    /// `self + w * x`.
    ///
    /// # Safety
    /// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
    /// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
    /// pointer argument must be valid for the reads and writes described above.
    unsafe fn fma(self, w: f32, x: Self) -> Self;
    /// `(self + o) * f`.
    ///
    /// # Safety
    /// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
    /// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
    /// pointer argument must be valid for the reads and writes described above.
    unsafe fn add_mul(self, o: Self, f: f32) -> Self;

    /// [`scores16`] in these lanes (which it is unless a type has a better schedule).
    ///
    /// # Safety
    /// As [`scores16`].
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn scores16_q<const Q: usize>(
        k: *const f16,
        bs: usize,
        hd: usize,
        q: *const f32,
        qs: usize,
        scale: f32,
        out: *mut f32,
        stride: usize,
        pf: Ahead,
    ) {
        // SAFETY: forwarded unchanged.
        unsafe { scores16::<Self, Q>(k, bs, hd, q, qs, scale, out, stride, pf) }
    }
}

#[derive(Clone, Copy)]
struct Zmm(__m512);

impl Lanes for Zmm {
    #[inline(always)]
    unsafe fn zero() -> Self {
        // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
        // `# Safety` section; every intrinsic, load and store below relies on exactly those.
        unsafe { Zmm(_mm512_setzero_ps()) }
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const f16) -> Self {
        // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
        // `# Safety` section; every intrinsic, load and store below relies on exactly those.
        unsafe { Zmm(_mm512_cvtph_ps(_mm256_loadu_si256(p.cast()))) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
        // `# Safety` section; every intrinsic, load and store below relies on exactly those.
        unsafe { Zmm(_mm512_loadu_ps(p)) }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
        // `# Safety` section; every intrinsic, load and store below relies on exactly those.
        unsafe { _mm512_storeu_ps(p, self.0) }
    }
    #[inline(always)]
    unsafe fn fma(self, w: f32, x: Self) -> Self {
        // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
        // `# Safety` section; every intrinsic, load and store below relies on exactly those.
        unsafe { Zmm(_mm512_fmadd_ps(_mm512_set1_ps(w), x.0, self.0)) }
    }
    #[inline(always)]
    unsafe fn add_mul(self, o: Self, f: f32) -> Self {
        // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
        // `# Safety` section; every intrinsic, load and store below relies on exactly those.
        unsafe { Zmm(_mm512_mul_ps(_mm512_add_ps(self.0, o.0), _mm512_set1_ps(f))) }
    }
}

#[derive(Clone, Copy)]
struct Ymm2(__m256, __m256);

impl Lanes for Ymm2 {
    #[inline(always)]
    unsafe fn zero() -> Self {
        // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
        // `# Safety` section; every intrinsic, load and store below relies on exactly those.
        unsafe { Ymm2(_mm256_setzero_ps(), _mm256_setzero_ps()) }
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const f16) -> Self {
        // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
        // `# Safety` section; every intrinsic, load and store below relies on exactly those.
        unsafe {
            Ymm2(
                _mm256_cvtph_ps(_mm_loadu_si128(p.cast())),
                _mm256_cvtph_ps(_mm_loadu_si128(p.add(8).cast())),
            )
        }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
        // `# Safety` section; every intrinsic, load and store below relies on exactly those.
        unsafe { Ymm2(_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))) }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
        // `# Safety` section; every intrinsic, load and store below relies on exactly those.
        unsafe {
            _mm256_storeu_ps(p, self.0);
            _mm256_storeu_ps(p.add(8), self.1);
        }
    }
    #[inline(always)]
    unsafe fn fma(self, w: f32, x: Self) -> Self {
        // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
        // `# Safety` section; every intrinsic, load and store below relies on exactly those.
        unsafe {
            let w = _mm256_set1_ps(w);
            Ymm2(
                _mm256_fmadd_ps(w, x.0, self.0),
                _mm256_fmadd_ps(w, x.1, self.1),
            )
        }
    }
    /// Four queries as two pairs: their even and odd sums of 16 slots take all 16 registers,
    /// and the compiler spilled four of them to the stack every step (one layer of a 512-token
    /// prompt at depth 4096 in SmolLM2-1.7B's shape, `cargo bench --bench attention prompt`,
    /// Zen 3: 200 -> 187 ms). Three queries stay one tile: split, SmolLM2-135M's decode
    /// converted its keys twice and ran 8 % slower. Every lane computes what [`scores16`]
    /// computes, so the bits are the same.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn scores16_q<const Q: usize>(
        k: *const f16,
        bs: usize,
        hd: usize,
        q: *const f32,
        qs: usize,
        scale: f32,
        out: *mut f32,
        stride: usize,
        pf: Ahead,
    ) {
        // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
        // `# Safety` section; every intrinsic, load and store below relies on exactly those.
        unsafe {
            if Q < 4 {
                return scores16::<Self, Q>(k, bs, hd, q, qs, scale, out, stride, pf);
            }
            let mut i = 0;
            while i + 2 <= Q {
                let (qi, oi) = (q.add(i * qs), out.add(i * stride));
                let pfi = if i == 0 { pf } else { Ahead::NONE };
                scores16::<Self, 2>(k, bs, hd, qi, qs, scale, oi, stride, pfi);
                i += 2;
            }
            if i < Q {
                let (qi, oi) = (q.add(i * qs), out.add(i * stride));
                let pfi = if i == 0 { pf } else { Ahead::NONE };
                scores16::<Self, 1>(k, bs, hd, qi, qs, scale, oi, stride, pfi);
            }
        }
    }
    #[inline(always)]
    unsafe fn add_mul(self, o: Self, f: f32) -> Self {
        // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
        // `# Safety` section; every intrinsic, load and store below relies on exactly those.
        unsafe {
            let f = _mm256_set1_ps(f);
            Ymm2(
                _mm256_mul_ps(_mm256_add_ps(self.0, o.0), f),
                _mm256_mul_ps(_mm256_add_ps(self.1, o.1), f),
            )
        }
    }
}

/// The operations on `L` lanes; the weighted sum of values keeps `D` lane groups (16 `D`
/// dimensions) of every query of a tile in registers at a time.
struct Simd<L, const D: usize>(std::marker::PhantomData<L>);

/// Scores of `Q` queries (`hd` values, `qs` apart) for the 16 slots from `k` (dimension `d` at
/// `k + d * bs`): two
/// accumulators per query (even and odd dimensions) so that the multiply-adds do not wait
/// on each other, summed at the end; the same order for every tile a query is in.
///
/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn scores16<L: Lanes, const Q: usize>(
    k: *const f16,
    bs: usize,
    hd: usize,
    q: *const f32,
    qs: usize,
    scale: f32,
    out: *mut f32,
    stride: usize,
    pf: Ahead,
) {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        let mut a = [[L::zero(); 2]; Q];
        let mut d = 0;
        let per = pf.per(hd / 2);
        while d + 2 <= hd {
            fetch(pf, d / 2 * per, per);
            let (k0, k1) = (L::load_f16(k.add(d * bs)), L::load_f16(k.add((d + 1) * bs)));
            for (i, a) in a.iter_mut().enumerate() {
                a[0] = a[0].fma(*q.add(i * qs + d), k0);
                a[1] = a[1].fma(*q.add(i * qs + d + 1), k1);
            }
            d += 2;
        }
        if d < hd {
            let k0 = L::load_f16(k.add(d * bs));
            for (i, a) in a.iter_mut().enumerate() {
                a[0] = a[0].fma(*q.add(i * qs + d), k0);
            }
        }
        for (i, a) in a.iter().enumerate() {
            a[0].add_mul(a[1], scale).store(out.add(i * stride));
        }
    }
}

/// `acc_i += sum_s p_i[s] * v row s` for `Q` queries (accumulators `acc_step` apart),
/// dimensions `d0..d0 + 16 D`.
///
/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn accumulate_lanes<L: Lanes, const Q: usize, const D: usize>(
    p: *const f32,
    stride: usize,
    rows: usize,
    v: *const f16,
    hd: usize,
    acc: *mut f32,
    acc_step: usize,
    d0: usize,
    pf: Ahead,
) {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        let mut a = [[L::zero(); D]; Q];
        for (i, a) in a.iter_mut().enumerate() {
            for (g, a) in a.iter_mut().enumerate() {
                *a = L::load(acc.add(i * acc_step + d0 + 16 * g));
            }
        }
        let per = pf.per(rows);
        for s in 0..rows {
            fetch(pf, s * per, per);
            let mut x = [L::zero(); D];
            for (g, x) in x.iter_mut().enumerate() {
                *x = L::load_f16(v.add(s * hd + d0 + 16 * g));
            }
            for (i, a) in a.iter_mut().enumerate() {
                let w = *p.add(i * stride + s);
                for (a, &x) in a.iter_mut().zip(&x) {
                    *a = a.fma(w, x);
                }
            }
        }
        for (i, a) in a.iter().enumerate() {
            for (g, a) in a.iter().enumerate() {
                a.store(acc.add(i * acc_step + d0 + 16 * g));
            }
        }
    }
}

/// [`accumulate_lanes`] over all of `hd`: `D` groups at a time, then one.
///
/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn accumulate_q<L: Lanes, const Q: usize, const D: usize>(
    p: *const f32,
    stride: usize,
    rows: usize,
    v: *const f16,
    hd: usize,
    acc: *mut f32,
    acc_step: usize,
    pf: Ahead,
) {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        let mut d = 0;
        while d + 16 * D <= hd {
            // The first pass over the rows asks for the lines.
            accumulate_lanes::<L, Q, D>(
                p,
                stride,
                rows,
                v,
                hd,
                acc,
                acc_step,
                d,
                if d == 0 { pf } else { Ahead::NONE },
            );
            d += 16 * D;
        }
        while d < hd {
            accumulate_lanes::<L, Q, 1>(
                p,
                stride,
                rows,
                v,
                hd,
                acc,
                acc_step,
                d,
                if d == 0 { pf } else { Ahead::NONE },
            );
            d += 16;
        }
    }
}

/// Asks for lines `from..from + n` of `pf` (those that exist).
///
/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[inline(always)]
unsafe fn fetch(pf: Ahead, from: usize, n: usize) {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        for line in from..(from + n).min(pf.lines) {
            // The last line may run past the cache's end, where a prefetch is harmless;
            // `wrapping_add` keeps the address arithmetic defined there.
            _mm_prefetch::<_MM_HINT_T0>(pf.ptr.wrapping_add(line * 64).cast());
        }
    }
}

impl<L: Lanes, const D: usize> Ops for Simd<L, D> {
    #[inline(always)]
    unsafe fn scores(
        k: &[f16],
        bs: usize,
        q: &[f32],
        tile: QTile,
        scale: f32,
        out: &mut [f32],
        stride: usize,
        pf: Ahead,
    ) {
        // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
        // `# Safety` section; every intrinsic, load and store below relies on exactly those.
        unsafe {
            let QTile { qn, hd, step } = tile;
            assert!(
                (1..=TILE).contains(&qn)
                    && bs.is_multiple_of(16)
                    && k.len() >= hd * bs
                    && q.len() >= (qn - 1) * step + hd
                    && out.len() >= (qn - 1) * stride + bs
            );
            let (kp, qp, op) = (k.as_ptr(), q.as_ptr(), out.as_mut_ptr());
            for c in (0..bs).step_by(16) {
                let pf = Ahead::slice(Some((pf.ptr, pf.lines)), c / 16, bs / 16);
                let (kc, oc) = (kp.add(c), op.add(c));
                // Matches, not closures: closures do not inherit target features.
                match qn {
                    1 => L::scores16_q::<1>(kc, bs, hd, qp, step, scale, oc, stride, pf),
                    2 => L::scores16_q::<2>(kc, bs, hd, qp, step, scale, oc, stride, pf),
                    3 => L::scores16_q::<3>(kc, bs, hd, qp, step, scale, oc, stride, pf),
                    _ => L::scores16_q::<4>(kc, bs, hd, qp, step, scale, oc, stride, pf),
                }
            }
        }
    }

    #[inline(always)]
    unsafe fn accumulate(
        p: &[f32],
        stride: usize,
        rows: usize,
        v: &[f16],
        tile: QTile,
        acc: &mut [f32],
        pf: Ahead,
    ) {
        // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
        // `# Safety` section; every intrinsic, load and store below relies on exactly those.
        unsafe {
            let QTile { qn, hd, step } = tile;
            assert!(
                (1..=TILE).contains(&qn)
                    && hd.is_multiple_of(16)
                    && v.len() >= rows * hd
                    && acc.len() >= (qn - 1) * step + hd
                    && (rows == 0 || p.len() >= (qn - 1) * stride + rows)
            );
            let (pp, vp, ap) = (p.as_ptr(), v.as_ptr(), acc.as_mut_ptr());
            match qn {
                1 => accumulate_q::<L, 1, D>(pp, stride, rows, vp, hd, ap, step, pf),
                2 => accumulate_q::<L, 2, D>(pp, stride, rows, vp, hd, ap, step, pf),
                3 => accumulate_q::<L, 3, D>(pp, stride, rows, vp, hd, ap, step, pf),
                _ => accumulate_q::<L, 4, D>(pp, stride, rows, vp, hd, ap, step, pf),
            }
        }
    }

    #[inline(always)]
    unsafe fn exp_sum(s: &mut [f32]) -> f32 {
        // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
        // `# Safety` section; every intrinsic, load and store below relies on exactly those.
        unsafe {
            assert!(s.len().is_multiple_of(8));
            let p = s.as_mut_ptr();
            let mut maxv = _mm256_set1_ps(f32::NEG_INFINITY);
            for i in (0..s.len()).step_by(8) {
                maxv = _mm256_max_ps(maxv, _mm256_loadu_ps(p.add(i)));
            }
            let mut m = [0.0f32; 8];
            _mm256_storeu_ps(m.as_mut_ptr(), maxv);
            let maxv = _mm256_set1_ps(m.iter().copied().fold(f32::NEG_INFINITY, f32::max));
            let mut sum = _mm256_setzero_ps();
            for i in (0..s.len()).step_by(8) {
                let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), maxv));
                _mm256_storeu_ps(p.add(i), e);
                sum = _mm256_add_ps(sum, e);
            }
            hsum8(sum)
        }
    }

    #[inline(always)]
    unsafe fn round_f16(s: &mut [f32], factor: f32) {
        // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
        // `# Safety` section; every intrinsic, load and store below relies on exactly those.
        unsafe {
            assert!(s.len().is_multiple_of(8));
            let (p, f) = (s.as_mut_ptr(), _mm256_set1_ps(factor));
            for i in (0..s.len()).step_by(8) {
                let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_mul_ps(
                    _mm256_loadu_ps(p.add(i)),
                    f,
                ));
                _mm256_storeu_ps(p.add(i), _mm256_cvtph_ps(h));
            }
        }
    }

    #[inline(always)]
    unsafe fn prefetch(pf: Ahead) {
        // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
        // `# Safety` section; every intrinsic, load and store below relies on exactly those.
        unsafe { fetch(pf, 0, pf.lines) }
    }
}
