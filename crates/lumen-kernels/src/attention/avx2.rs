//! The AVX2 path of [`super::attend`]: the same operations in the same order as
//! [`super::scalar`], eight lanes at a time. Where AVX-512VL is present the same code is
//! compiled a second time for its 32 registers (queries and accumulator rows stay in
//! registers); the instructions and their order, hence the bits, are the same.

use std::arch::x86_64::*;

use super::{padded_kv, Arith, Bufs, BATCH_ROWS, ROWS};
use crate::cpu::CpuLevel;
use crate::ggml_math::x86::{exp8, hsum8, reduce16};

/// [`super::scalar::attend_scalar`] with AVX2, FMA and F16C; same bits.
///
/// From [`CpuLevel::Avx512`] up, the same body compiled for AVX-512VL's 32 registers runs.
///
/// # Safety
/// The CPU must support `level`, which must be [`CpuLevel::Avx2`] or above;
/// `q.len() % 8 == 0`; the slices as for the scalar version.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn attend(
    level: CpuLevel,
    mode: Arith,
    q: &[f32],
    n_ctx: usize,
    kf: &[f32],
    vf: &[f32],
    scale: f32,
    bufs: Bufs<'_>,
) {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        if level >= CpuLevel::Avx512 {
            attend_vl(mode, q, n_ctx, kf, vf, scale, bufs)
        } else {
            attend_body::<false>(mode, q, n_ctx, kf, vf, scale, bufs)
        }
    }
}

/// [`attend`] compiled with AVX-512VL's 32 registers: the query stays in registers while the
/// scores of eight positions are computed.
///
/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl")]
unsafe fn attend_vl(
    mode: Arith,
    q: &[f32],
    n_ctx: usize,
    kf: &[f32],
    vf: &[f32],
    scale: f32,
    bufs: Bufs<'_>,
) {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe { attend_body::<true>(mode, q, n_ctx, kf, vf, scale, bufs) }
}

/// The body of [`attend`]; `VL`: compiled with AVX-512VL's 32 registers.
///
/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[inline(always)]
unsafe fn attend_body<const VL: bool>(
    mode: Arith,
    q: &[f32],
    n_ctx: usize,
    kf: &[f32],
    vf: &[f32],
    scale: f32,
    bufs: Bufs<'_>,
) {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        let hd = q.len();
        let Bufs {
            scores,
            qh,
            rows,
            out,
        } = bufs;
        let n16 = n_ctx.next_multiple_of(16);
        let n_kv = padded_kv(n_ctx);
        assert!(
            hd & 7 == 0
                && qh.len() >= hd
                && out.len() >= hd
                && rows.len() >= ROWS * hd
                && scores.len() >= n_kv
        );
        assert!(kf.len() >= n_ctx * hd && vf.len() >= n_ctx * hd);
        let qh = qh.as_mut_ptr();
        for d in (0..hd).step_by(8) {
            let h =
                _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(q.as_ptr().add(d)));
            _mm256_storeu_ps(qh.add(d), _mm256_cvtph_ps(h));
        }

        // Scores and their maximum: eight positions at a time when the dot's lanes allow it
        // (their eight final reductions done together, in the same order), then one at a time.
        let sp = scores.as_mut_ptr();
        let batched = mode == Arith::Batched;
        let eights = if batched || hd.is_multiple_of(64) {
            n_ctx & !7
        } else {
            0
        };
        let scalev = _mm256_set1_ps(scale);
        let mut maxv = _mm256_set1_ps(f32::NEG_INFINITY);
        for pos in (0..eights).step_by(8) {
            let k = kf.as_ptr().add(pos * hd);
            // The common head sizes get loops the compiler unrolls, with the query in registers.
            let lanes = match hd {
                64 => lanes8::<64>(batched, qh, k, hd),
                128 => lanes8::<128>(batched, qh, k, hd),
                _ => lanes8::<0>(batched, qh, k, hd),
            };
            let s = _mm256_mul_ps(hsum8x8(lanes), scalev);
            _mm256_storeu_ps(sp.add(pos), s);
            maxv = _mm256_max_ps(maxv, s);
        }
        let mut m8 = [0.0f32; 8];
        _mm256_storeu_ps(m8.as_mut_ptr(), maxv);
        let mut max = m8.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for pos in eights..n_ctx {
            let k = kf.as_ptr().add(pos * hd);
            let s = if batched {
                dot_tiny(qh, k, hd)
            } else {
                dot_f16(qh, k, hd)
            } * scale;
            *sp.add(pos) = s;
            max = max.max(s);
        }
        for pos in n_ctx..n16 {
            *sp.add(pos) = f32::NEG_INFINITY;
        }

        // exp(w - max), summed one 16-lane reduction at a time in f64.
        let maxv = _mm256_set1_ps(max);
        let mut total = 0.0f64;
        for i in (0..n16).step_by(16) {
            let lo = exp8(_mm256_sub_ps(_mm256_loadu_ps(sp.add(i)), maxv));
            let hi = exp8(_mm256_sub_ps(_mm256_loadu_ps(sp.add(i + 8)), maxv));
            _mm256_storeu_ps(sp.add(i), lo);
            _mm256_storeu_ps(sp.add(i + 8), hi);
            total += reduce16(lo, hi) as f64;
        }
        let inv = _mm256_set1_ps((1.0 / total) as f32);
        // Probabilities rounded to f16 (the masked lanes up to n16 become 0).
        for i in (0..n16).step_by(8) {
            let p = _mm256_mul_ps(_mm256_loadu_ps(sp.add(i)), inv);
            _mm256_storeu_ps(
                sp.add(i),
                _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(p)),
            );
        }

        if mode == Arith::Batched {
            weighted_sum_tiny::<VL>(
                sp,
                n_ctx,
                vf.as_ptr(),
                hd,
                rows.as_mut_ptr(),
                out.as_mut_ptr(),
            );
            return;
        }

        // Weighted sum of values into ROWS accumulator rows: row `l` takes positions l, l + ROWS,
        // ... below `real` in order (the first onto +0), then +0 once if a masked position below
        // `np` falls on it.
        let np = n_kv & !(ROWS - 1);
        let real = n_ctx.min(np);
        let rp = rows.as_mut_ptr();
        let zero = _mm256_setzero_ps();
        if real >= 2 * ROWS {
            // Rows in registers pay once each row has a few positions (measured: 32-sequence
            // decode at 128..256 positions faster, single-stream decode below 128 slower).
            value_rows::<VL>(sp, vf.as_ptr(), hd, ROWS, real, np, rp);
        } else {
            single_rows_by_position(sp, vf.as_ptr(), hd, real, np, rp);
        }

        // Per dimension: ggml's reduction of the rows, then the leftover positions in f64.
        let op = out.as_mut_ptr();
        for d in (0..hd).step_by(8) {
            let (mut lo, mut hi) = (_mm256_setzero_pd(), _mm256_setzero_pd());
            if np > 0 {
                let rd = rp.add(d);
                let mut s = [zero; 16];
                for (l, x) in s.iter_mut().enumerate() {
                    let (a, b) = (
                        _mm256_loadu_ps(rd.add(l * hd)),
                        _mm256_loadu_ps(rd.add((32 + l) * hd)),
                    );
                    let (c, e) = (
                        _mm256_loadu_ps(rd.add((16 + l) * hd)),
                        _mm256_loadu_ps(rd.add((48 + l) * hd)),
                    );
                    *x = _mm256_add_ps(_mm256_add_ps(a, b), _mm256_add_ps(c, e));
                }
                let f = reduce16_lanes(&s);
                lo = _mm256_cvtps_pd(_mm256_castps256_ps128(f));
                hi = _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(f));
            }
            for pos in np..n_kv {
                if pos < n_ctx {
                    let prod = _mm256_mul_ps(
                        _mm256_loadu_ps(vf.as_ptr().add(pos * hd + d)),
                        _mm256_set1_ps(*sp.add(pos)),
                    );
                    lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(prod)));
                    hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(prod)));
                } else {
                    lo = _mm256_add_pd(lo, _mm256_setzero_pd());
                    hi = _mm256_add_pd(hi, _mm256_setzero_pd());
                }
            }
            _mm256_storeu_ps(
                op.add(d),
                _mm256_set_m128(_mm256_cvtpd_ps(hi), _mm256_cvtpd_ps(lo)),
            );
        }
    }
}

/// [`super::scalar::dot_tiny`] of `n` values at `x` and `y` (`n % 16 == 0`).
///
/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_tiny(x: *const f32, y: *const f32, n: usize) -> f32 {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe { hsum8(lanes_tiny(x, y, n)) }
}

/// The eight lanes whose [`hsum8`] is [`dot_tiny`]: the 16-lane accumulator's halves added.
///
/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[inline(always)]
unsafe fn lanes_tiny(x: *const f32, y: *const f32, n: usize) -> __m256 {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for i in (0..n).step_by(16) {
            lo = _mm256_fmadd_ps(_mm256_loadu_ps(x.add(i)), _mm256_loadu_ps(y.add(i)), lo);
            hi = _mm256_fmadd_ps(
                _mm256_loadu_ps(x.add(i + 8)),
                _mm256_loadu_ps(y.add(i + 8)),
                hi,
            );
        }
        _mm256_add_ps(hi, lo)
    }
}

/// The eight lanes whose [`hsum8`] is [`dot_f16`] when `n % 64 == 0`.
///
/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[inline(always)]
unsafe fn lanes_f16(x: *const f32, y: *const f32, n: usize) -> __m256 {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); 8];
        for i in (0..n).step_by(64) {
            for (k, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(
                    _mm256_loadu_ps(x.add(i + 8 * k)),
                    _mm256_loadu_ps(y.add(i + 8 * k)),
                    *a,
                );
            }
        }
        // Accumulator j (16 lanes) is acc[2j] (lanes 0..8) and acc[2j + 1] (lanes 8..16).
        let lo = _mm256_add_ps(_mm256_add_ps(acc[0], acc[4]), _mm256_add_ps(acc[2], acc[6]));
        let hi = _mm256_add_ps(_mm256_add_ps(acc[1], acc[5]), _mm256_add_ps(acc[3], acc[7]));
        _mm256_add_ps(hi, lo)
    }
}

/// The eight-lane vectors whose [`hsum8`]s are the dots of `q` with the eight rows from `k`
/// (stride `hd`); `HD` is `hd` when it is known at compile time, else 0.
///
/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[inline(always)]
unsafe fn lanes8<const HD: usize>(
    batched: bool,
    q: *const f32,
    k: *const f32,
    hd: usize,
) -> [__m256; 8] {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        let n = if HD > 0 { HD } else { hd };
        let mut lanes = [_mm256_setzero_ps(); 8];
        for (i, l) in lanes.iter_mut().enumerate() {
            *l = if batched {
                lanes_tiny(q, k.add(i * n), n)
            } else {
                lanes_f16(q, k.add(i * n), n)
            };
        }
        lanes
    }
}

/// Lane `i` is [`hsum8`] of `v[i]`, with the same additions in the same order.
///
/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn hsum8x8(v: [__m256; 8]) -> __m256 {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        let (t01, t23, t45, t67) = (
            fold_halves(v[0], v[1]),
            fold_halves(v[2], v[3]),
            fold_halves(v[4], v[5]),
            fold_halves(v[6], v[7]),
        );
        let (e0123, e4567) = (fold_pairs(t01, t23), fold_pairs(t45, t67));
        // (t0 + t2) + (t1 + t3), in lanes o0 o2 o4 o6 | o1 o3 o5 o7.
        let o = _mm256_add_ps(
            _mm256_shuffle_ps::<0x88>(e0123, e4567),
            _mm256_shuffle_ps::<0xDD>(e0123, e4567),
        );
        _mm256_permutevar8x32_ps(o, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
    }
}

/// hsum8's first step for two vectors: `t[i] = l[i + 4] + l[i]`, `a`'s in the low half.
///
/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn fold_halves(a: __m256, b: __m256) -> __m256 {
    _mm256_add_ps(
        _mm256_permute2f128_ps::<0x31>(a, b),
        _mm256_permute2f128_ps::<0x20>(a, b),
    )
}

/// hsum8's second step: per 128-bit half, `(t0 + t2, t1 + t3)` of `a`, then of `b`.
///
/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn fold_pairs(a: __m256, b: __m256) -> __m256 {
    _mm256_add_ps(
        _mm256_shuffle_ps::<0x44>(a, b),
        _mm256_shuffle_ps::<0xEE>(a, b),
    )
}

/// [`super::scalar::dot_f16`] of `n` values at `x` and `y`.
///
/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_f16(x: *const f32, y: *const f32, n: usize) -> f32 {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        let np = n & !63;
        let mut sumf = 0.0f64;
        if np > 0 {
            sumf = hsum8(lanes_f16(x, y, np)) as f64;
        }
        for i in np..n {
            sumf += (*x.add(i) * *y.add(i)) as f64;
        }
        sumf as f32
    }
}

/// The batched weighted sum of values: position `pos` feeds accumulator row `pos % 16`
/// (tinyBLAS's lanes), then each dimension reduces its 16 rows like `_mm512_reduce_add_ps`.
/// `rows` holds `BATCH_ROWS * hd` floats, `p` the f16-rounded probabilities. `VL`: 32
/// registers are available.
///
/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[inline(always)]
unsafe fn weighted_sum_tiny<const VL: bool>(
    p: *const f32,
    n_ctx: usize,
    vf: *const f32,
    hd: usize,
    rows: *mut f32,
    out: *mut f32,
) {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        value_rows::<VL>(p, vf, hd, BATCH_ROWS, n_ctx, n_ctx, rows);
        for d in (0..hd).step_by(8) {
            let mut r = [_mm256_setzero_ps(); 16];
            for (l, x) in r.iter_mut().enumerate() {
                *x = _mm256_loadu_ps(rows.add(l * hd + d));
            }
            _mm256_storeu_ps(out.add(d), reduce16_lanes(&r));
        }
    }
}

/// Lane-wise [`reduce16`](crate::ggml_math::reduce16) of 16 vectors: lane `i` of the result
/// reduces lane `i` of `v[0..16]` as `_mm512_reduce_add_ps` does.
///
/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[inline(always)]
unsafe fn reduce16_lanes(v: &[__m256; 16]) -> __m256 {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        // A loop, not a closure: closures do not inherit the caller's target features.
        let mut t8 = [_mm256_setzero_ps(); 8];
        for (l, t) in t8.iter_mut().enumerate() {
            *t = _mm256_add_ps(v[8 + l], v[l]);
        }
        let t4 = [
            _mm256_add_ps(t8[4], t8[0]),
            _mm256_add_ps(t8[5], t8[1]),
            _mm256_add_ps(t8[6], t8[2]),
            _mm256_add_ps(t8[7], t8[3]),
        ];
        _mm256_add_ps(_mm256_add_ps(t4[0], t4[2]), _mm256_add_ps(t4[1], t4[3]))
    }
}

/// [`chain_rows`] in the register shape that suits the build: with `VL`'s 32 registers two
/// rows of 64 dimensions, else four rows of 16, or of 8 when `hd` is an odd number of 8-lane
/// vectors (16-dimension steps would run past the head).
///
/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn value_rows<const VL: bool>(
    p: *const f32,
    vf: *const f32,
    hd: usize,
    n_rows: usize,
    end: usize,
    np: usize,
    rows: *mut f32,
) {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        if VL && hd.is_multiple_of(64) {
            chain_rows::<2, 8>(p, vf, hd, n_rows, end, np, rows);
        } else if hd.is_multiple_of(16) {
            chain_rows::<4, 2>(p, vf, hd, n_rows, end, np, rows);
        } else {
            chain_rows::<4, 1>(p, vf, hd, n_rows, end, np, rows);
        }
    }
}

/// The rows of the single-token weighted sum, one position after the other (each row lives
/// in memory): row `pos % ROWS` gets `0 + v * p` for its first position, `+= v * p` after,
/// and `+0` (or `0` for an untouched row) for a masked position below `np`.
///
/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[inline(always)]
unsafe fn single_rows_by_position(
    sp: *const f32,
    vf: *const f32,
    hd: usize,
    real: usize,
    np: usize,
    rp: *mut f32,
) {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        let zero = _mm256_setzero_ps();
        for pos in 0..np {
            let row = rp.add((pos % ROWS) * hd);
            if pos < real {
                let pv = _mm256_set1_ps(*sp.add(pos));
                let v = vf.add(pos * hd);
                if pos < ROWS {
                    for d in (0..hd).step_by(8) {
                        _mm256_storeu_ps(
                            row.add(d),
                            _mm256_fmadd_ps(_mm256_loadu_ps(v.add(d)), pv, zero),
                        );
                    }
                } else {
                    for d in (0..hd).step_by(8) {
                        _mm256_storeu_ps(
                            row.add(d),
                            _mm256_fmadd_ps(
                                _mm256_loadu_ps(v.add(d)),
                                pv,
                                _mm256_loadu_ps(row.add(d)),
                            ),
                        );
                    }
                }
            } else if pos < ROWS {
                for d in (0..hd).step_by(8) {
                    _mm256_storeu_ps(row.add(d), zero);
                }
            } else {
                for d in (0..hd).step_by(8) {
                    _mm256_storeu_ps(row.add(d), _mm256_add_ps(_mm256_loadu_ps(row.add(d)), zero));
                }
            }
        }
    }
}

/// Accumulator rows `0..n_rows` of a weighted sum: row `l` is `+0`, then `+= v[pos] * p[pos]`
/// for pos = l, l + n_rows, ... below `end` in order, then `+0` once if a position of its own
/// lies in `end..np` (a masked one). The products are of two f16 values, exact in f32, so the
/// FMA equals the multiply-add. `R` rows of `8 * W` dimensions at a time stay in registers
/// over the positions (a row in memory would cost a load and a store per position); `hd`
/// must be a multiple of `8 * W`.
///
/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn chain_rows<const R: usize, const W: usize>(
    p: *const f32,
    vf: *const f32,
    hd: usize,
    n_rows: usize,
    end: usize,
    np: usize,
    rows: *mut f32,
) {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        debug_assert!(
            hd.is_multiple_of(8 * W),
            "chain_rows: {hd} dimensions are not whole steps of {}",
            8 * W
        );
        let full = end - end % n_rows;
        for r0 in (0..n_rows).step_by(R) {
            for d in (0..hd).step_by(8 * W) {
                let mut acc = [[_mm256_setzero_ps(); W]; R];
                // Whole groups of `n_rows` positions, then the last partial one.
                let mut pos = r0;
                while pos < full {
                    for (r, a) in acc.iter_mut().enumerate() {
                        madd(a, p.add(pos + r), vf.add((pos + r) * hd + d));
                    }
                    pos += n_rows;
                }
                for (r, a) in acc.iter_mut().enumerate() {
                    if pos + r < end {
                        madd(a, p.add(pos + r), vf.add((pos + r) * hd + d));
                    }
                }
                for (r, a) in acc.iter().enumerate() {
                    let l = r0 + r;
                    // The first position of row l at or past `end`.
                    let first_masked = if l >= end {
                        l
                    } else {
                        l + (end - l).div_ceil(n_rows) * n_rows
                    };
                    let row = rows.add(l * hd + d);
                    for (k, v) in a.iter().enumerate() {
                        let v = if first_masked < np {
                            _mm256_add_ps(*v, _mm256_setzero_ps())
                        } else {
                            *v
                        };
                        _mm256_storeu_ps(row.add(8 * k), v);
                    }
                }
            }
        }
    }
}

/// `a[k] += v[8k..8k + 8] * p` (one broadcast weight).
///
/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[inline(always)]
unsafe fn madd<const W: usize>(a: &mut [__m256; W], p: *const f32, v: *const f32) {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        let pv = _mm256_set1_ps(*p);
        for (k, x) in a.iter_mut().enumerate() {
            *x = _mm256_fmadd_ps(_mm256_loadu_ps(v.add(8 * k)), pv, *x);
        }
    }
}

/// [`super::widen`]: f16 values to f32, eight at a time (both arithmetics use it).
///
/// # Safety
/// The CPU must support AVX2 and F16C.
#[inline]
#[target_feature(enable = "avx2,f16c")]
pub(super) unsafe fn widen(src: &[half::f16], dst: &mut [f32]) {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        assert!(src.len() == dst.len() && src.len().is_multiple_of(8));
        let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
        for i in (0..src.len()).step_by(8) {
            _mm256_storeu_ps(d.add(i), _mm256_cvtph_ps(_mm_loadu_si128(s.add(i).cast())));
        }
    }
}
