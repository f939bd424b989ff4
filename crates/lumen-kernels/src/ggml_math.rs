//! ggml's AVX-512 float recipes, reproduced bit for bit with AVX2+FMA and in portable Rust.
//!
//! llama.cpp's CPU backend, built for an AVX-512 machine, computes `exp` with a short
//! polynomial (`ggml_v_expf`) and reduces 16-lane vectors in a fixed tree
//! (`_mm512_reduce_add_ps`). Lumen follows the same arithmetic so that softmax and SwiGLU give
//! the same bits as llama.cpp, using 8-lane AVX2 vectors (never AVX-512) or scalar `mul_add`.
//! Both paths perform exactly the same IEEE operations in the same order, so they agree bit for
//! bit with each other and with ggml.

/// `0x1.8p23`: adding it rounds `x * log2(e)` to an integer.
const ROUND: f32 = f32::from_bits(0x4b40_0000);
/// `0x1.715476p+0`, log2(e).
const LOG2E: f32 = f32::from_bits(0x3fb8_aa3b);
/// `0x1.62e4p-1`, the high part of ln(2).
const LN2_HI: f32 = f32::from_bits(0x3f31_7200);
/// `0x1.7f7d1cp-20`, the low part of ln(2).
const LN2_LO: f32 = f32::from_bits(0x35bf_be8e);
/// Polynomial coefficients, highest degree first.
const C5: f32 = f32::from_bits(0x3c07_2010);
const C4: f32 = f32::from_bits(0x3d2b_9f17);
const C3: f32 = f32::from_bits(0x3e2a_af33);
const C2: f32 = f32::from_bits(0x3eff_fedb);
const C1: f32 = f32::from_bits(0x3f7f_fff6);
/// Beyond this |n| ggml returns 0 (n <= 0) or +inf instead of scaling.
const BIG: f32 = 192.0;

/// `2^e` for `-126 <= e <= 127`.
#[inline(always)]
fn pow2(e: i32) -> f32 {
    f32::from_bits(((e + 127) as u32) << 23)
}

/// ggml's `ggml_v_expf` for one value (scalar reference of [`x86::exp8`]).
///
/// The result is `j * 2^n` rounded once, as `_mm512_scalef_ps` does: the power of two is
/// applied in two exact halves, `(j * 2^(n>>1)) * 2^(n - (n>>1))`, where the first product is
/// exact (normal, no overflow) so only the second one rounds, even into subnormals or overflow.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let z = x.mul_add(LOG2E, ROUND);
    let n = z - ROUND;
    let b = (-n).mul_add(LN2_HI, x);
    let b = (-n).mul_add(LN2_LO, b);
    let u = b * b;
    let j = C5
        .mul_add(b, C4)
        .mul_add(u, C3.mul_add(b, C2))
        .mul_add(u, C1.mul_add(b, 1.0));
    if n.abs() > BIG {
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    // NaN n (NaN x) casts to 0; j is NaN then, and so is the result.
    let k = n as i32;
    let k1 = k >> 1;
    (j * pow2(k1)) * pow2(k - k1)
}

/// ggml's SiLU, `x / (1 + exp(0 - x))`, with [`exp`].
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(0.0 - x))
}

/// `_mm512_reduce_add_ps`: lanes `i + 8` onto `i`, then [`hsum8`].
#[inline(always)]
pub fn reduce16(v: &[f32; 16]) -> f32 {
    hsum8(&std::array::from_fn(|i| v[i + 8] + v[i]))
}

/// ggml's `hsum_float_8` (and the tail of `_mm512_reduce_add_ps`): lanes `i + 4` onto `i`,
/// then `(t0 + t2) + (t1 + t3)`.
#[inline(always)]
pub fn hsum8(l: &[f32; 8]) -> f32 {
    let t = [l[4] + l[0], l[5] + l[1], l[6] + l[2], l[7] + l[3]];
    (t[0] + t[2]) + (t[1] + t[3])
}

/// AVX2 versions.
#[cfg(target_arch = "x86_64")]
pub mod x86 {
    use std::arch::x86_64::*;

    use super::*;

    /// [`exp`](super::exp) on eight lanes.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp8(x: __m256) -> __m256 {
        let r = _mm256_set1_ps(ROUND);
        let z = _mm256_fmadd_ps(x, _mm256_set1_ps(LOG2E), r);
        let n = _mm256_sub_ps(z, r);
        let b = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
        let b = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), b);
        let u = _mm256_mul_ps(b, b);
        let hi = _mm256_fmadd_ps(
            _mm256_fmadd_ps(_mm256_set1_ps(C5), b, _mm256_set1_ps(C4)),
            u,
            _mm256_fmadd_ps(_mm256_set1_ps(C3), b, _mm256_set1_ps(C2)),
        );
        let j = _mm256_fmadd_ps(
            hi,
            u,
            _mm256_fmadd_ps(_mm256_set1_ps(C1), b, _mm256_set1_ps(1.0)),
        );
        // j * 2^n in two exact halves (see the scalar version). Lanes with |n| > 192 or NaN
        // get a clamped exponent here and are replaced below (or stay NaN through j).
        let k = _mm256_cvtps_epi32(n);
        let k = _mm256_max_epi32(
            _mm256_min_epi32(k, _mm256_set1_epi32(192)),
            _mm256_set1_epi32(-192),
        );
        let k1 = _mm256_srai_epi32::<1>(k);
        let k2 = _mm256_sub_epi32(k, k1);
        let bias = _mm256_set1_epi32(127);
        let p1 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(k1, bias)));
        let p2 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(k2, bias)));
        let res = _mm256_mul_ps(_mm256_mul_ps(j, p1), p2);
        let abs_n = _mm256_and_ps(n, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff)));
        let big = _mm256_cmp_ps::<_CMP_GT_OQ>(abs_n, _mm256_set1_ps(BIG));
        let le0 = _mm256_cmp_ps::<_CMP_LE_OQ>(n, _mm256_setzero_ps());
        let alt = _mm256_blendv_ps(_mm256_set1_ps(f32::INFINITY), _mm256_setzero_ps(), le0);
        _mm256_blendv_ps(res, alt, big)
    }

    /// [`silu`](super::silu) on eight lanes.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn silu8(x: __m256) -> __m256 {
        // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
        // `# Safety` section; every intrinsic, load and store below relies on exactly those.
        unsafe {
            let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), x));
            _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0), e))
        }
    }

    /// [`reduce16`](super::reduce16) of the 16 lanes `lo` (0..8) and `hi` (8..16).
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub unsafe fn reduce16(lo: __m256, hi: __m256) -> f32 {
        // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
        // `# Safety` section; every intrinsic, load and store below relies on exactly those.
        unsafe { hsum8(_mm256_add_ps(hi, lo)) }
    }

    /// [`hsum8`](super::hsum8) of eight lanes, as ggml's `hsum_float_8`.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub unsafe fn hsum8(v: __m256) -> f32 {
        let t4 = _mm_add_ps(_mm256_extractf128_ps::<1>(v), _mm256_castps256_ps128(v));
        // (t0 + t2), (t1 + t3), then their sum.
        let t2 = _mm_add_ps(t4, _mm_movehl_ps(t4, t4));
        _mm_cvtss_f32(_mm_add_ss(t2, _mm_movehdup_ps(t2)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place between two finite positive f32.
    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_is_within_two_ulp_of_f64_exp() {
        // Normal results: x in [-87.3, 88.7].
        let mut worst = 0;
        let n = 2_000_000;
        for i in 0..=n {
            let x = -87.3 + (88.7 + 87.3) * (i as f64 / n as f64);
            let x = x as f32;
            let want = (x as f64).exp() as f32;
            let got = exp(x);
            worst = worst.max(ulps(got, want));
        }
        assert!(worst <= 2, "worst error {worst} ulp");
        // Small arguments, where exp is close to 1.
        for i in -1000..=1000 {
            let x = i as f32 * 1e-6;
            assert!(ulps(exp(x), (x as f64).exp() as f32) <= 2, "x = {x}");
        }
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-0.0), 1.0);
    }

    #[test]
    fn exp_edges() {
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
        assert_eq!(exp(-200.0), 0.0);
        assert_eq!(exp(-1e30), 0.0);
        assert_eq!(exp(200.0), f32::INFINITY);
        assert_eq!(exp(f32::MAX), f32::INFINITY);
        // Subnormal results round once, like ggml's scalef: close to exp within an absolute
        // error of one subnormal step.
        for i in 0..1000 {
            let x = -87.5 - i as f32 * 0.0175;
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            assert!(
                (got - want).abs() <= 1.5 * 2f64.powi(-149) + want * 3e-7,
                "x = {x}: {got} vs {want}"
            );
        }
        // Largest results near overflow stay finite where exp does.
        assert!(exp(88.7).is_finite());
        assert_eq!(exp(89.0), f32::INFINITY);
    }

    #[test]
    fn reduce16_order() {
        // Values whose sum depends on the order: only ggml's tree gives this exact result.
        let mut v = [0.0f32; 16];
        for (i, x) in v.iter_mut().enumerate() {
            *x = (i as f32 + 1.0) * 1.000_000_1 * if i % 3 == 0 { 1e7 } else { 0.3 };
        }
        let mut t8 = [0.0f32; 8];
        for i in 0..8 {
            t8[i] = v[i + 8] + v[i];
        }
        let t4 = [t8[4] + t8[0], t8[5] + t8[1], t8[6] + t8[2], t8[7] + t8[3]];
        assert_eq!(reduce16(&v), (t4[0] + t4[2]) + (t4[1] + t4[3]));
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_matches_scalar_bit_for_bit() {
        use std::arch::x86_64::*;
        if crate::cpu::CpuLevel::detect() < crate::cpu::CpuLevel::Avx2 {
            return;
        }
        let mut seed = 7u64;
        let mut bits = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 32) as u32
        };
        let mut xs: Vec<f32> = Vec::new();
        // Random bit patterns (every magnitude, NaN and inf included).
        for _ in 0..200_000 {
            xs.push(f32::from_bits(bits()));
        }
        // Dense ranges around the interesting regions: normal, subnormal, overflow, zero rule.
        for i in 0..400_000 {
            let t = bits() as f32 / u32::MAX as f32;
            let x = match i % 4 {
                0 => -150.0 + 300.0 * t,
                1 => -104.0 + 17.0 * t,
                2 => 87.0 + 3.0 * t,
                _ => -20.0 + 40.0 * t,
            };
            xs.push(x);
        }
        xs.extend([
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::MAX,
            f32::MIN,
            88.72,
            -87.33,
            -103.97,
            -133.0,
            133.0,
        ]);
        while xs.len() & 15 != 0 {
            xs.push(1.0);
        }
        for c in xs.chunks_exact(8) {
            let mut e = [0.0f32; 8];
            let mut s = [0.0f32; 8];
            // SAFETY: the process's CPU level is AVX2 or above (checked above): AVX2, FMA and F16C.
            unsafe {
                let v = _mm256_loadu_ps(c.as_ptr());
                _mm256_storeu_ps(e.as_mut_ptr(), x86::exp8(v));
                _mm256_storeu_ps(s.as_mut_ptr(), x86::silu8(v));
            }
            for l in 0..8 {
                let (want, got) = (exp(c[l]), e[l]);
                assert!(
                    want.to_bits() == got.to_bits() || (want.is_nan() && got.is_nan()),
                    "exp({:e}): {want:e} vs {got:e}",
                    c[l]
                );
                let (want, got) = (silu(c[l]), s[l]);
                assert!(
                    want.to_bits() == got.to_bits() || (want.is_nan() && got.is_nan()),
                    "silu({:e}): {want:e} vs {got:e}",
                    c[l]
                );
            }
        }
        for c in xs.chunks_exact(16) {
            let v: [f32; 16] = c.try_into().unwrap();
            let v = v.map(|x| if x.is_finite() { x } else { 0.5 });
            // SAFETY: as above.
            let got = unsafe {
                x86::reduce16(
                    _mm256_loadu_ps(v.as_ptr()),
                    _mm256_loadu_ps(v.as_ptr().add(8)),
                )
            };
            assert_eq!(got.to_bits(), reduce16(&v).to_bits());
        }
    }
}
