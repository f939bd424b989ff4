//! Softmax arithmetic over a whole vocabulary row, written so that the compiler vectorizes
//! it: sampling runs on the engine thread after every step, once per sampled row, while the
//! compute threads wait, so its cost is paid by every stream in the batch.
//!
//! Exponentials are Cephes' `expf` polynomial in f32, written with plain multiplies and adds
//! (no fused multiply-add, which baseline x86-64 code would call in software, and which would
//! make results depend on the CPU), for exponents in [-87, 0]: below e^-87, far below any
//! probability that matters, a weight is 0, so no result goes subnormal. Sums of weights are
//! taken in f64, sixteen lanes at a time, in a fixed order, so a row always gives the same
//! bits.

/// Lanes of the partial maxima and sums.
const LANES: usize = 16;

/// Exponents below this give weight 0 (e^-87 ≈ 1.6e-38 is the smallest normal result).
const FLOOR: f32 = -87.0;

/// Defines `pub fn $name`, running its body compiled for AVX2 where the CPU has it (eight
/// f32 lanes instead of baseline x86-64's four). No fused multiply-adds are enabled, so
/// both builds give the same bits.
macro_rules! avx2_or_baseline {
    ($(#[$doc:meta])* fn $name:ident($($a:ident: $t:ty),*) $(-> $r:ty)? $body:block) => {
        $(#[$doc])*
        pub fn $name($($a: $t),*) $(-> $r)? {
            #[inline(always)]
            fn imp($($a: $t),*) $(-> $r)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($a: $t),*) $(-> $r)? {
                    imp($($a),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has AVX2.
                    return unsafe { avx2($($a),*) };
                }
            }
            imp($($a),*)
        }
    };
}

avx2_or_baseline! {
/// The largest value that is not NaN; −∞ when there is none.
fn max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            // A comparison with NaN is false: NaN never wins.
            if x > *a {
                *a = x;
            }
        }
    }
    let mut m = f32::NEG_INFINITY;
    for &x in acc.iter().chain(tail) {
        if x > m {
            m = x;
        }
    }
    m
}
}

/// Index of the largest value that is not NaN, ties to the lowest index; 0 when all are NaN.
pub fn argmax(xs: &[f32]) -> u32 {
    let m = max(xs);
    // A row of −∞ (and NaN) picks its first −∞, as a scan keeping the first non-NaN would.
    xs.iter().position(|&x| x == m).unwrap_or(0) as u32
}

/// `exp(x·scale − shift)` of each value into `out`, 0 for NaN and for exponents below e^-87;
/// returns their sum.
pub fn exp_weights(xs: &[f32], scale: f32, shift: f32, out: &mut Vec<f32>) -> f64 {
    out.clear();
    out.resize(xs.len(), 0.0);
    fill_weights(xs, scale, shift, out);
    sum(out)
}

avx2_or_baseline! {
/// `out[i] = exp(xs[i]·scale − shift)` ([`weight`]).
fn fill_weights(xs: &[f32], scale: f32, shift: f32, out: &mut [f32]) {
    for (o, &x) in out.iter_mut().zip(xs) {
        *o = weight(x * scale - shift);
    }
}
}

avx2_or_baseline! {
/// The sum of `exp(x − shift)` over the values, as [`exp_weights`] would give, without
/// keeping the weights.
fn exp_sum(xs: &[f32], shift: f32) -> f64 {
    lane_sum(xs, |x| weight(x - shift))
}
}

avx2_or_baseline! {
/// The mass of the weights at or above `cutoff`.
fn mass_at_least(ws: &[f32], cutoff: f32) -> f64 {
    lane_sum(ws, |w| if w >= cutoff { w } else { 0.0 })
}
}

/// A weight such that the weights at or above it hold at least `limit` of the mass
/// (the largest weight being 1): 2^-10, 2^-20, … of the largest, or 0 (every weight)
/// when `limit` needs them all. Rounding is covered by a margin of one part in 10^6.
pub fn cutoff_holding(ws: &[f32], limit: f64) -> f32 {
    let want = limit * (1.0 + 1e-6);
    let mut cutoff = 1.0f32;
    for _ in 0..12 {
        cutoff *= 1.0 / 1024.0;
        if cutoff < 1e-30 {
            break;
        }
        if mass_at_least(ws, cutoff) >= want {
            return cutoff;
        }
    }
    0.0
}

/// The first index at which the running sum of `ws` passes `target` (a draw in
/// `[0, total)`); when rounding leaves the running sum short of it, the last index with
/// a weight. `None` only when no weight is positive.
pub fn pick(ws: &[f32], target: f64) -> Option<usize> {
    // Whole blocks are skipped by their (vectorized) sums; only the block holding the
    // target is walked one weight at a time.
    const BLOCK: usize = 512;
    let mut acc = 0.0f64;
    for (b, block) in ws.chunks(BLOCK).enumerate() {
        let s = sum(block);
        if acc + s <= target {
            acc += s;
            continue;
        }
        for (i, &w) in block.iter().enumerate() {
            acc += f64::from(w);
            if acc > target {
                return Some(b * BLOCK + i);
            }
        }
    }
    ws.iter().rposition(|&w| w > 0.0)
}

/// `e^x` for `x` at most 0 (larger values are taken as 0), or 0 below [`FLOOR`] and for NaN.
#[inline(always)]
pub fn weight(x: f32) -> f32 {
    let e = exp_nonpos(x.clamp(FLOOR, 0.0));
    if x >= FLOOR {
        e
    } else {
        0.0
    }
}

/// Cephes' `expf` for `x` in [FLOOR, 0], where `2^n` stays a normal number.
#[inline(always)]
fn exp_nonpos(x: f32) -> f32 {
    // Adding 1.5 · 2^23 rounds to an integer (no floor call on baseline x86-64).
    const ROUND: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let z = x * std::f32::consts::LOG2_E + ROUND;
    let n = z - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let e = p * r * r + r + 1.0;
    // `n` read from z's low mantissa bits (z is 1.5 · 2^23 + n): integer lanes, where
    // `n as i32` would be a scalar, saturating conversion per value.
    let k = (z.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    e * f32::from_bits(((k + 127) as u32) << 23)
}

avx2_or_baseline! {
/// Sum in f64, lane by lane, then the lanes in order.
fn sum(ws: &[f32]) -> f64 {
    lane_sum(ws, |w| w)
}
}

/// The sum of `f(x)` in f64: [`LANES`] partial sums over whole chunks, then the partial
/// sums and the tail in order (a fixed order, so the same values give the same bits).
/// Inlined into each caller's AVX2 or baseline build.
#[inline(always)]
fn lane_sum(xs: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut acc = [0.0f64; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += f64::from(f(x));
        }
    }
    acc.iter().sum::<f64>() + tail.iter().map(|&x| f64::from(f(x))).sum::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_and_argmax_skip_nan_and_take_the_first_of_ties() {
        let mut xs = vec![0.0f32; 100];
        xs[3] = f32::NAN;
        xs[40] = 5.0;
        xs[77] = 5.0;
        xs[90] = f32::NAN;
        assert_eq!(max(&xs), 5.0);
        assert_eq!(argmax(&xs), 40);
        assert_eq!(argmax(&[f32::NAN, f32::NAN]), 0);
        assert_eq!(argmax(&[f32::NAN, f32::NEG_INFINITY, f32::NEG_INFINITY]), 1);
        assert_eq!(argmax(&[]), 0);
        assert_eq!(max(&[]), f32::NEG_INFINITY);
        // Every position of a long row, also in the unrolled tail.
        for at in 0..37 {
            let mut row = vec![-1.0f32; 37];
            row[at] = 2.0;
            assert_eq!(argmax(&row), at as u32);
        }
    }

    #[test]
    fn weights_match_f64_exponentials_and_zero_what_must_never_be_drawn() {
        let xs: Vec<f32> = (0..1000).map(|i| -(i as f32) * 0.09).collect();
        let mut out = Vec::new();
        let total = exp_weights(&xs, 1.0, 0.0, &mut out);
        let want: f64 = xs.iter().map(|&x| f64::from(x).exp()).sum();
        assert!((total / want - 1.0).abs() < 1e-6, "{total} vs {want}");
        for (&x, &w) in xs.iter().zip(&out) {
            let e = f64::from(x).exp();
            if x >= FLOOR {
                assert!(
                    (f64::from(w) / e - 1.0).abs() < 1e-6,
                    "exp({x}) = {w}, want {e}"
                );
            } else {
                assert_eq!(w, 0.0);
            }
        }
        let mut out = Vec::new();
        exp_weights(&[f32::NEG_INFINITY, f32::NAN, 0.0], 0.5, 0.0, &mut out);
        assert_eq!(out, [0.0, 0.0, 1.0]);
        assert_eq!(exp_sum(&xs, 0.0), total);
    }

    #[test]
    fn pick_follows_the_running_sum_across_blocks_and_never_picks_a_zero_weight() {
        let mut ws = vec![0.0f32; 2000];
        ws[10] = 1.0;
        ws[600] = 2.0;
        ws[1500] = 1.0;
        assert_eq!(pick(&ws, 0.0), Some(10));
        assert_eq!(pick(&ws, 0.999), Some(10));
        assert_eq!(pick(&ws, 1.0), Some(600));
        assert_eq!(pick(&ws, 2.5), Some(600));
        assert_eq!(pick(&ws, 3.5), Some(1500));
        // Past the total (rounding): the last weighted index, never a zero after it.
        assert_eq!(pick(&ws, 4.0), Some(1500));
        assert_eq!(pick(&[0.0; 8], 0.0), None);
    }

    #[test]
    fn the_cutoff_keeps_at_least_the_mass_asked_for() {
        // One sure token, a few likely ones, a long flat tail.
        let mut ws = vec![1e-5f32; 50_000];
        ws[7] = 1.0;
        for w in &mut ws[100..110] {
            *w = 0.05;
        }
        let total = sum(&ws);
        for top_p in [0.1, 0.5, 0.6, 0.9, 0.99, 1.0] {
            let limit = top_p * total;
            let c = cutoff_holding(&ws, limit);
            assert!(mass_at_least(&ws, c) >= limit, "top_p {top_p}: cutoff {c}");
        }
        // Half the mass is in the tail: 0.9 needs every weight.
        assert!(cutoff_holding(&ws, 0.9 * total) <= 1e-5);
        assert_eq!(cutoff_holding(&ws, 1.01 * total), 0.0);
        assert!(cutoff_holding(&ws, 0.5 * total) > 1e-5);
    }
}
