//! BERT's small row-wise ops (LayerNorm, GELU) and spreading row-wise work over the pool.
//!
//! Every op here transforms one row (or one contiguous chunk) on its own and reduces in a fixed
//! order, so which rows share a batch, and how they are split among threads, never changes a
//! row's bits.

use std::sync::{Mutex, PoisonError};

use lumen_kernels::{split_range, ThreadPool};

use super::config::Activation;

/// Defines a function that runs `simd` compiled for AVX-512 or for AVX2, whichever the CPU
/// has, and `portable` elsewhere. `simd` and `portable` call one `#[inline(always)]` body, so
/// each copy is the same operations in wider registers (no fused multiply-adds: the same
/// bits on every CPU); the body may also take a flag saying it is compiled for AVX2 or more.
macro_rules! per_cpu {
    (
        $(#[$doc:meta])*
        $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) {
            simd: $simd:expr,
            portable: $portable:expr $(,)?
        }
    ) => {
        $(#[$doc])*
        $vis fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                use lumen_kernels::CpuLevel;
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512($($arg: $ty),*) {
                    $simd
                }
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($arg: $ty),*) {
                    $simd
                }
                let level = CpuLevel::detect();
                if level >= CpuLevel::Avx512 {
                    // SAFETY: the CPU has AVX-512 F (the level implies it).
                    return unsafe { avx512($($arg),*) };
                }
                if level >= CpuLevel::Avx2 {
                    // SAFETY: the CPU has AVX2 (the level implies it).
                    return unsafe { avx2($($arg),*) };
                }
            }
            $portable
        }
    };
}
pub(crate) use per_cpu;

/// Below this many elements a pass runs on the calling thread; waking the pool costs more.
const PAR_MIN_ELEMS: usize = 8 * 1024;

/// Runs `f(part, chunk)` for the chunks `data[cuts[p]..cuts[p + 1]]`, one part per pool thread.
///
/// `cuts` must be non-decreasing, start at 0, end at `data.len()` and have at most
/// `pool.n_threads() + 1` entries. Each chunk goes to exactly one thread, so the chunks can be
/// written without `unsafe`: each sits behind its own (never contended) mutex.
pub(crate) fn par_chunks<F>(pool: &ThreadPool, data: &mut [f32], cuts: &[usize], f: F)
where
    F: Fn(usize, &mut [f32]) + Sync,
{
    debug_assert!(cuts.len() >= 2 && cuts.len() <= pool.n_threads() + 1);
    debug_assert!(cuts.first() == Some(&0) && cuts.last() == Some(&data.len()));
    let mut parts = Vec::with_capacity(cuts.len().saturating_sub(1));
    let mut rest = data;
    for w in cuts.windows(2) {
        let (head, tail) = std::mem::take(&mut rest).split_at_mut(w[1] - w[0]);
        parts.push(Mutex::new(head));
        rest = tail;
    }
    if parts.len() == 1 {
        for (p, part) in parts.iter_mut().enumerate() {
            f(p, part.get_mut().unwrap_or_else(PoisonError::into_inner));
        }
        return;
    }
    pool.run(|thread, _| {
        if let Some(part) = parts.get(thread) {
            let mut guard = part.lock().unwrap_or_else(PoisonError::into_inner);
            f(thread, &mut guard);
        }
    });
}

/// Runs `f(row_index, row)` over every `row_len`-wide row of `data`, rows split among threads.
pub(crate) fn par_rows<F>(pool: &ThreadPool, data: &mut [f32], row_len: usize, f: F)
where
    F: Fn(usize, &mut [f32]) + Sync,
{
    let n_rows = data.len() / row_len.max(1);
    let parts = if data.len() < PAR_MIN_ELEMS {
        1
    } else {
        pool.n_threads().clamp(1, n_rows.max(1))
    };
    let mut cuts = Vec::with_capacity(parts + 1);
    cuts.push(0);
    let mut first_rows = Vec::with_capacity(parts);
    for p in 0..parts {
        let r = split_range(n_rows, parts, p);
        first_rows.push(r.start);
        cuts.push(r.end * row_len);
    }
    par_chunks(pool, data, &cuts, |p, chunk| {
        for (i, row) in chunk.chunks_exact_mut(row_len).enumerate() {
            f(first_rows[p] + i, row);
        }
    });
}

per_cpu! {
    /// LayerNorm of one row in place: `x = (x - mean) / sqrt(var + eps) * weight + bias`.
    pub(crate) fn layer_norm_inplace(x: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
        simd: layer_norm_portable(x, weight, bias, eps),
        portable: layer_norm_portable(x, weight, bias, eps),
    }
}

#[inline(always)]
fn layer_norm_portable(x: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
    let n = x.len() as f64;
    // f64 sums keep the statistics exact enough that summation order stops mattering, so
    // they run in four independent lanes: one f64 chain was a 3-cycle add per element.
    let mean = sum4(x, f64::from) / n;
    let var = sum4(x, |v| (f64::from(v) - mean).powi(2)) / n;
    let inv = (1.0 / (var + eps as f64).sqrt()) as f32;
    let mean = mean as f32;
    for ((v, &w), &b) in x.iter_mut().zip(weight).zip(bias) {
        *v = (*v - mean) * inv * w + b;
    }
}

/// The sum of `f(v)` over `x` in four lanes (element k into lane k % 4), lanes added pairwise.
#[inline(always)]
fn sum4(x: &[f32], f: impl Fn(f32) -> f64) -> f64 {
    let mut lanes = [0.0f64; 4];
    let chunks = x.chunks_exact(4);
    let rest = chunks.remainder();
    for c in chunks {
        for (lane, &v) in lanes.iter_mut().zip(c) {
            *lane += f(v);
        }
    }
    for (lane, &v) in lanes.iter_mut().zip(rest) {
        *lane += f(v);
    }
    (lanes[0] + lanes[1]) + (lanes[2] + lanes[3])
}

/// Error function, Abramowitz–Stegun 7.1.26 (absolute error below 1.5e-7).
///
/// This is the formula PyTorch's vectorized CPU `erf` uses (and so its default GELU), which
/// keeps us close to the reference while costing one `exp` and one division per element. With
/// [`exp_nonpos`] it is branch-free, so a loop of GELUs compiles to SIMD code.
#[inline]
pub(crate) fn erf(x: f32) -> f32 {
    erf_lanes([x])[0]
}

/// [`erf`] of `N` values at once, step by step over all of them: the same operations per
/// value, but each step is `N / 8` independent vector operations, so the out-of-order core
/// overlaps the values' long dependency chains (one value at a time, a GELU waited on its
/// own chain: five cycles per element on Zen 3).
#[inline(always)]
fn erf_lanes<const N: usize>(x: [f32; N]) -> [f32; N] {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_8,
        -1.453_152_1,
        1.061_405_4,
    ];
    // -x² held at -80 or above: past that `1 - r·t·e` rounds to exactly 1 in f32 either way
    // (`e^-80 < 2^-115`), so erf is unchanged, but `r·t·e` stays a normal float. From `e^-87`
    // it was subnormal, and subnormal products take a microcode assist (GELU of a value
    // beyond ±13 cost ten times the others).
    let mut e = [0.0f32; N];
    for (e, &x) in e.iter_mut().zip(&x) {
        *e = (-x * x).max(-80.0);
    }
    let e = exp_nonpos_lanes(e);
    let mut t = [0.0f32; N];
    for (t, &x) in t.iter_mut().zip(&x) {
        *t = 1.0 / (P * x.abs() + 1.0);
    }
    let mut out = [0.0f32; N];
    for i in 0..N {
        let t = t[i];
        let r = (((A[4] * t + A[3]) * t + A[2]) * t + A[1]) * t + A[0];
        out[i] = (1.0 - r * t * e[i]).copysign(x[i]);
    }
    out
}

/// `e^x` for `x <= 0`, branch-free (Cephes' `expf` polynomial; relative error about 2e-7).
///
/// Inputs below -87 (where `e^x` leaves the normal range) return about `e^-87` (1.6e-38),
/// which is as good as 0 for every use here. libm's `expf` is a call the compiler cannot vectorize; this is plain arithmetic.
#[inline]
pub(crate) fn exp_nonpos(x: f32) -> f32 {
    exp_nonpos_lanes([x])[0]
}

/// [`exp_nonpos`] of `N` values at once (see [`erf_lanes`] for why).
#[inline(always)]
fn exp_nonpos_lanes<const N: usize>(x: [f32; N]) -> [f32; N] {
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer.
    let mut out = [0.0f32; N];
    for (o, &x) in out.iter_mut().zip(&x) {
        let x = x.clamp(-87.0, 0.0);
        let shifted = x * std::f32::consts::LOG2_E + ROUND;
        let n = shifted - ROUND;
        // x - n ln 2, with ln 2 split in two so the reduction stays exact.
        let r = (x - n * 0.693_359_4) + n * 2.121_944_4e-4;
        let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2)
            * r
            + 1.666_666_5e-1)
            * r
            + 0.5;
        let y = p * r * r + r + 1.0;
        // n is in [-126, 0], so 2^n is a normal float built from its exponent bits.
        // `shifted` holds n in its low mantissa bits (ROUND's ulp is 1), read as an
        // integer: a float to int cast (`n as i32`) saturates, with compares the compiler
        // does not vectorize.
        let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
        *o = y * f32::from_bits(n_bits.wrapping_add(127) << 23);
    }
    out
}

/// `row[i] = gelu(row[i] + bias[i])` ([`activate`]'s operations), 32 values at a time
/// through [`erf_lanes`].
#[inline(always)]
fn gelu_row(row: &mut [f32], bias: &[f32]) {
    const N: usize = 32;
    let mut rows = row.chunks_exact_mut(N);
    let mut biases = bias.chunks_exact(N);
    for (r, b) in rows.by_ref().zip(biases.by_ref()) {
        let mut x = [0.0f32; N];
        let mut z = [0.0f32; N];
        for i in 0..N {
            x[i] = r[i] + b[i];
            z[i] = x[i] * std::f32::consts::FRAC_1_SQRT_2;
        }
        let e = erf_lanes(z);
        for i in 0..N {
            r[i] = 0.5 * x[i] * (1.0 + e[i]);
        }
    }
    for (v, &b) in rows.into_remainder().iter_mut().zip(biases.remainder()) {
        *v = activate(Activation::Gelu, *v + b);
    }
}

/// Applies `act` to one value.
#[inline]
pub(crate) fn activate(act: Activation, x: f32) -> f32 {
    match act {
        Activation::Gelu => 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2)),
        Activation::GeluTanh => {
            const C: f32 = 0.797_884_6; // sqrt(2 / pi)
            0.5 * x * (1.0 + (C * (x + 0.044_715 * x * x * x)).tanh())
        }
        Activation::Relu => x.max(0.0),
    }
}

per_cpu! {
    /// `row[i] = act(row[i] + bias[i])`, the activation chosen once outside the loop so that
    /// each arm compiles to a vectorized loop, 16 lanes wide where the CPU has AVX-512 and 8
    /// with AVX2 (GELU is a tenth of an embedding batch on an AVX2 CPU; the baseline build
    /// vectorizes it only four lanes wide).
    pub(crate) fn bias_activate(act: Activation, row: &mut [f32], bias: &[f32]) {
        simd: bias_activate_portable(act, row, bias),
        portable: bias_activate_portable(act, row, bias),
    }
}

#[inline(always)]
fn bias_activate_portable(act: Activation, row: &mut [f32], bias: &[f32]) {
    let pairs = |row: &mut [f32], f: fn(f32) -> f32| {
        row.iter_mut().zip(bias).for_each(|(v, &b)| *v = f(*v + b))
    };
    match act {
        Activation::Gelu => gelu_row(row, bias),
        Activation::GeluTanh => pairs(row, |x| activate(Activation::GeluTanh, x)),
        Activation::Relu => pairs(row, |x| activate(Activation::Relu, x)),
    }
}

/// Dot product with eight independent accumulators (vectorizes; fixed order per call).
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut tail = 0.0;
    for (x, y) in ar.iter().zip(br) {
        tail += x * y;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// [`dot`] in AVX2 intrinsics: the same operations in the same order (eight lanes, each
/// summed from zero chunk by chunk, the same tree, the tail last), so the same bits. The
/// compiler's version of [`dot`] for short rows (a head's 32 values) shuffled its lanes
/// through 128-bit halves, and attention spent most of its time there.
///
/// # Safety
/// The CPU has AVX2, and the caller is compiled for it (inline only into such code).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let body = n / 8 * 8;
    // SAFETY: loads read a[k..k + 8] and b[k..k + 8] with k + 8 <= body <= both lengths;
    // AVX2 is present (`# Safety`).
    unsafe {
        let mut acc = _mm256_setzero_ps();
        for k in (0..body).step_by(8) {
            let p = _mm256_mul_ps(
                _mm256_loadu_ps(a.as_ptr().add(k)),
                _mm256_loadu_ps(b.as_ptr().add(k)),
            );
            acc = _mm256_add_ps(acc, p);
        }
        let mut tail = 0.0f32;
        for k in body..n {
            tail += a[k] * b[k];
        }
        // (l0 + l4, l1 + l5, l2 + l6, l3 + l7), then ((0) + (1)) + ((2) + (3)).
        let h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps::<1>(acc));
        let pairs = _mm_add_ps(h, _mm_movehdup_ps(h)); // (h0 + h1, _, h2 + h3, _)
        let high = _mm_movehl_ps(pairs, pairs); // (h2 + h3, ...)
        _mm_cvtss_f32(_mm_add_ss(pairs, high)) + tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_is_accurate() {
        let cases = [
            (0.0, 0.0),
            (0.5, 0.520_499_9),
            (1.0, 0.842_700_8),
            (2.0, 0.995_322_3),
            (-1.0, -0.842_700_8),
        ];
        for (x, want) in cases {
            assert!((erf(x) - want).abs() < 3e-7, "erf({x}) = {}", erf(x));
        }
    }

    #[test]
    fn exp_nonpos_is_accurate() {
        let mut x = 0.0f32;
        while x > -87.0 {
            let want = (x as f64).exp();
            let got = exp_nonpos(x) as f64;
            assert!(
                ((got - want) / want).abs() < 4e-7,
                "exp({x}) = {got}, want {want}"
            );
            x -= 0.013;
        }
        assert_eq!(exp_nonpos(0.0), 1.0);
        assert!(exp_nonpos(-1000.0) < 1e-37);
    }

    #[test]
    fn gelu_in_lanes_gives_activates_bits() {
        for n in [1usize, 31, 32, 33, 200, 1536] {
            let x: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin() * 12.0).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let mut got = x.clone();
            bias_activate(Activation::Gelu, &mut got, &b);
            for ((g, &x), &b) in got.iter().zip(&x).zip(&b) {
                let v = x + b;
                let want = 0.5 * v * (1.0 + erf_lanes([v * std::f32::consts::FRAC_1_SQRT_2])[0]);
                assert_eq!(g.to_bits(), want.to_bits());
                assert_eq!(g.to_bits(), activate(Activation::Gelu, v).to_bits());
            }
        }
    }

    #[test]
    fn activations() {
        assert!((activate(Activation::Gelu, 1.0) - 0.841_344_7).abs() < 1e-6);
        assert!((activate(Activation::Gelu, -3.0) - -0.004_049_7).abs() < 1e-6);
        assert!((activate(Activation::GeluTanh, 1.0) - 0.841_192).abs() < 1e-5);
        assert_eq!(activate(Activation::Relu, -2.0), 0.0);
        assert_eq!(activate(Activation::Relu, 2.0), 2.0);
    }

    #[test]
    fn layer_norm_normalizes() {
        let mut x = [1.0, 2.0, 3.0, 4.0];
        layer_norm_inplace(&mut x, &[1.0; 4], &[0.5; 4], 0.0);
        let want = [-1.341_640_8, -0.447_213_6, 0.447_213_6, 1.341_640_8];
        for (v, w) in x.iter().zip(want) {
            assert!((v - (w + 0.5)).abs() < 1e-6);
        }
    }

    #[test]
    fn dot_matches_naive() {
        let a: Vec<f32> = (0..19).map(|i| i as f32 * 0.5).collect();
        let b: Vec<f32> = (0..19).map(|i| 1.0 - i as f32).collect();
        let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - naive).abs() < 1e-3);
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn dot_avx2_gives_dots_bits() {
        if lumen_kernels::CpuLevel::detect() < lumen_kernels::CpuLevel::Avx2 {
            return;
        }
        let mut s = 9u32;
        let mut v = || {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        for n in [0usize, 1, 7, 8, 9, 32, 64, 77] {
            let a: Vec<f32> = (0..n).map(|_| v() * 1e3).collect();
            let b: Vec<f32> = (0..n).map(|_| v() * 1e-3).collect();
            // SAFETY: the CPU has AVX2 (checked above).
            let got = unsafe { dot_avx2(&a, &b) };
            assert_eq!(got.to_bits(), dot(&a, &b).to_bits(), "n = {n}");
        }
    }

    #[test]
    fn par_rows_visits_every_row_once() {
        let pool = ThreadPool::new(2);
        for rows in [1, 3, 5000] {
            let mut data = vec![0.0f32; rows * 4];
            par_rows(&pool, &mut data, 4, |i, row| {
                row.iter_mut().for_each(|v| *v += i as f32 + 1.0)
            });
            for (i, row) in data.chunks_exact(4).enumerate() {
                assert!(row.iter().all(|&v| v == i as f32 + 1.0));
            }
        }
    }
}
