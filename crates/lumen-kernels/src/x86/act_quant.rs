//! AVX2 activation quantizers, bit-identical to the scalar ones in [`crate::act`].

use std::arch::x86_64::*;

use super::hsum_epi32;
use crate::blocks::round_f16_f16c;

/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn abs_ps(v: __m256) -> __m256 {
    _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff)))
}

/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn hmax_ps(a: __m256) -> f32 {
    let h = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
    let h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    let h = _mm_max_ss(h, _mm_movehdup_ps(h));
    _mm_cvtss_f32(h)
}

/// Packs 32 i32 lanes (values in -127..=127) to 32 bytes in order and stores them.
///
/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn store_packed(q: *mut i8, i: [__m256i; 4]) {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        let p0 = _mm256_packs_epi32(i[0], i[1]);
        let p1 = _mm256_packs_epi32(i[2], i[3]);
        let p = _mm256_packs_epi16(p0, p1);
        let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(q.cast(), p);
    }
}

/// A row of `nb` Q8_0/Q8_1 blocks: quants to `q`, and for block b the f16-rounded scale to
/// `d[b * stride]`, the quant sum to `isum[b * stride]` and the f16-rounded `sum * scale` to
/// `s[b * stride]` (the block-major arrays of [`crate::act::ActBuf`]). One call per row, so
/// that the per-block work inlines (a call per block was 7 % of a 32-sequence decode step).
///
/// # Safety
/// AVX2, FMA and F16C must be available; `x` readable for `32 * nb` floats, `q` writable for
/// `32 * nb` bytes, `d`, `isum` and `s` for `(nb - 1) * stride + 1` elements.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q8_row(
    x: *const f32,
    q: *mut i8,
    nb: usize,
    d: *mut f32,
    isum: *mut i32,
    s: *mut f32,
    stride: usize,
) {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        let mut b = 0;
        while b + 8 <= nb {
            q8_blocks8(
                x.add(32 * b),
                q.add(32 * b),
                d.add(b * stride),
                isum.add(b * stride),
                s.add(b * stride),
                stride,
            );
            b += 8;
        }
        for b in b..nb {
            let (scale, sum) = q8_block(x.add(32 * b), q.add(32 * b));
            let k = b * stride;
            *d.add(k) = round_f16_f16c(scale);
            *isum.add(k) = sum;
            *s.add(k) = round_f16_f16c(sum as f32 * scale);
        }
    }
}

/// Eight consecutive blocks of [`q8_row`], their scalar steps done eight lanes at a time: the
/// maxima and sums reduced by transposing (not one horizontal reduction per block), the two
/// divisions, the f16 roundings and the `sum * scale` products as vectors. Each lane's
/// operations are the one-block path's, so the results are the same bits.
///
/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_blocks8(
    x: *const f32,
    q: *mut i8,
    d: *mut f32,
    isum: *mut i32,
    s: *mut f32,
    stride: usize,
) {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        let mut m = [_mm256_setzero_ps(); 8];
        for (k, m) in m.iter_mut().enumerate() {
            let p = x.add(32 * k);
            *m = _mm256_max_ps(
                _mm256_max_ps(
                    abs_ps(_mm256_loadu_ps(p)),
                    abs_ps(_mm256_loadu_ps(p.add(8))),
                ),
                _mm256_max_ps(
                    abs_ps(_mm256_loadu_ps(p.add(16))),
                    abs_ps(_mm256_loadu_ps(p.add(24))),
                ),
            );
        }
        let amax = reduce8x8::<Max>(m);
        let scale = _mm256_div_ps(amax, _mm256_set1_ps(127.0));
        let nonzero = _mm256_cmp_ps::<_CMP_NEQ_UQ>(amax, _mm256_setzero_ps());
        let inv = _mm256_and_ps(_mm256_div_ps(_mm256_set1_ps(127.0), amax), nonzero);
        let mut sums = [_mm256_setzero_ps(); 8];
        for (k, sum) in sums.iter_mut().enumerate() {
            let p = x.add(32 * k);
            let idv = _mm256_permutevar8x32_ps(inv, _mm256_set1_epi32(k as i32));
            let mut iv = [_mm256_setzero_si256(); 4];
            for (j, iv) in iv.iter_mut().enumerate() {
                let v = _mm256_mul_ps(_mm256_loadu_ps(p.add(8 * j)), idv);
                *iv = _mm256_cvtps_epi32(_mm256_round_ps::<
                    { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
                >(v));
            }
            *sum = _mm256_castsi256_ps(_mm256_add_epi32(
                _mm256_add_epi32(iv[0], iv[1]),
                _mm256_add_epi32(iv[2], iv[3]),
            ));
            store_packed(q.add(32 * k), iv);
        }
        let sum = _mm256_castps_si256(reduce8x8::<AddI32>(sums));
        let dr = _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(scale));
        let sr = _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_mul_ps(
            _mm256_cvtepi32_ps(sum),
            scale,
        )));
        let (mut dv, mut iv, mut sv) = ([0.0f32; 8], [0i32; 8], [0.0f32; 8]);
        _mm256_storeu_ps(dv.as_mut_ptr(), dr);
        _mm256_storeu_si256(iv.as_mut_ptr().cast(), sum);
        _mm256_storeu_ps(sv.as_mut_ptr(), sr);
        for k in 0..8 {
            *d.add(k * stride) = dv[k];
            *isum.add(k * stride) = iv[k];
            *s.add(k * stride) = sv[k];
        }
    }
}

/// A lane-wise associative operation for [`reduce8x8`].
trait Fold {
    /// # Safety
    /// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
    /// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
    /// pointer argument must be valid for the reads and writes described above.
    unsafe fn fold(a: __m256, b: __m256) -> __m256;
}

/// f32 maximum (exact, so the order of a reduction does not matter).
struct Max;

impl Fold for Max {
    #[inline(always)]
    unsafe fn fold(a: __m256, b: __m256) -> __m256 {
        // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
        // `# Safety` section; every intrinsic, load and store below relies on exactly those.
        unsafe { _mm256_max_ps(a, b) }
    }
}

/// i32 sum (exact), on vectors that hold i32 bits.
struct AddI32;

impl Fold for AddI32 {
    #[inline(always)]
    unsafe fn fold(a: __m256, b: __m256) -> __m256 {
        // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
        // `# Safety` section; every intrinsic, load and store below relies on exactly those.
        unsafe {
            _mm256_castsi256_ps(_mm256_add_epi32(
                _mm256_castps_si256(a),
                _mm256_castps_si256(b),
            ))
        }
    }
}

/// Lane `k` of the result is the fold of the eight lanes of `v[k]` (an exact fold: the order
/// differs from a horizontal reduction's).
///
/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[inline(always)]
unsafe fn reduce8x8<F: Fold>(v: [__m256; 8]) -> __m256 {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        // Halves: lanes i and i + 4 of each vector, two vectors per register.
        let h01 = F::fold(
            _mm256_permute2f128_ps::<0x20>(v[0], v[1]),
            _mm256_permute2f128_ps::<0x31>(v[0], v[1]),
        );
        let h23 = F::fold(
            _mm256_permute2f128_ps::<0x20>(v[2], v[3]),
            _mm256_permute2f128_ps::<0x31>(v[2], v[3]),
        );
        let h45 = F::fold(
            _mm256_permute2f128_ps::<0x20>(v[4], v[5]),
            _mm256_permute2f128_ps::<0x31>(v[4], v[5]),
        );
        let h67 = F::fold(
            _mm256_permute2f128_ps::<0x20>(v[6], v[7]),
            _mm256_permute2f128_ps::<0x31>(v[6], v[7]),
        );
        // Pairs: (t0, t2) with (t1, t3) of each 128-bit half.
        let p0 = F::fold(
            _mm256_shuffle_ps::<0x44>(h01, h23),
            _mm256_shuffle_ps::<0xEE>(h01, h23),
        );
        let p1 = F::fold(
            _mm256_shuffle_ps::<0x44>(h45, h67),
            _mm256_shuffle_ps::<0xEE>(h45, h67),
        );
        // Last pair, in lanes 0 2 4 6 | 1 3 5 7 of the vectors, then put in order.
        let o = F::fold(
            _mm256_shuffle_ps::<0x88>(p0, p1),
            _mm256_shuffle_ps::<0xDD>(p0, p1),
        );
        _mm256_permutevar8x32_ps(o, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
    }
}

/// One Q8_0/Q8_1 block of 32 values: returns `(amax / 127, sum of quants)`.
///
/// llama.cpp's x86 quantizer: multiply by `127 / amax` and round half to even.
///
/// # Safety
/// AVX2 must be available; `x` must be readable for 32 floats and `q` writable for 32 bytes.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn q8_block(x: *const f32, q: *mut i8) -> (f32, i32) {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        let v = [
            _mm256_loadu_ps(x),
            _mm256_loadu_ps(x.add(8)),
            _mm256_loadu_ps(x.add(16)),
            _mm256_loadu_ps(x.add(24)),
        ];
        let a = _mm256_max_ps(
            _mm256_max_ps(abs_ps(v[0]), abs_ps(v[1])),
            _mm256_max_ps(abs_ps(v[2]), abs_ps(v[3])),
        );
        let amax = hmax_ps(a);
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let idv = _mm256_set1_ps(id);
        let mut iv = [_mm256_setzero_si256(); 4];
        for k in 0..4 {
            let s = _mm256_mul_ps(v[k], idv);
            iv[k] = _mm256_cvtps_epi32(_mm256_round_ps::<
                { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
            >(s));
        }
        let sum = hsum_epi32(_mm256_add_epi32(
            _mm256_add_epi32(iv[0], iv[1]),
            _mm256_add_epi32(iv[2], iv[3]),
        ));
        store_packed(q, iv);
        (d, sum)
    }
}

/// One Q8_K block of 256 values: fills 256 quants and 16 sums, returns the f32 scale.
///
/// # Safety
/// AVX2 must be available; `x` readable for 256 floats, `q` writable for 256 bytes and `bs`
/// for 16 i16.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn q8k_block(x: *const f32, q: *mut i8, bs: *mut i16) -> f32 {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        let mut a = _mm256_setzero_ps();
        for k in 0..32 {
            a = _mm256_max_ps(a, abs_ps(_mm256_loadu_ps(x.add(8 * k))));
        }
        let amax = hmax_ps(a);
        if amax == 0.0 {
            std::ptr::write_bytes(q, 0, 256);
            std::ptr::write_bytes(bs, 0, 16);
            return 0.0;
        }
        // The signed value of the first element with the largest magnitude, as the scalar scan finds.
        let av = _mm256_set1_ps(amax);
        let mut first = 0usize;
        for k in 0..32 {
            let mask = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(
                abs_ps(_mm256_loadu_ps(x.add(8 * k))),
                av,
            ));
            if mask != 0 {
                first = 8 * k + mask.trailing_zeros() as usize;
                break;
            }
        }
        let max = *x.add(first);
        let iscale = -127.0 / max;
        let isv = _mm256_set1_ps(iscale);
        let cap = _mm256_set1_epi32(127);
        for k in 0..8 {
            let mut iv = [_mm256_setzero_si256(); 4];
            for (j, o) in iv.iter_mut().enumerate() {
                let s = _mm256_mul_ps(_mm256_loadu_ps(x.add(32 * k + 8 * j)), isv);
                *o = _mm256_min_epi32(_mm256_cvtps_epi32(s), cap);
            }
            *bs.add(2 * k) = hsum_epi32(_mm256_add_epi32(iv[0], iv[1])) as i16;
            *bs.add(2 * k + 1) = hsum_epi32(_mm256_add_epi32(iv[2], iv[3])) as i16;
            store_packed(q.add(32 * k), iv);
        }
        1.0 / iscale
    }
}
