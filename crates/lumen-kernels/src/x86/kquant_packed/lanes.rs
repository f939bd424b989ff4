//! The two register widths of the packed K-quant tiles: one weight row per 32-bit lane,
//! sixteen lanes in a 512-bit register ([`Z`]) or eight in a 256-bit one ([`Y`]). The tiles
//! are written once against [`Lanes`]; each impl maps an operation to its instruction or two.

use std::arch::x86_64::*;

/// One register width's operations on lanes of i32 (and f32), each lane one weight row.
pub(super) trait Lanes {
    type I: Copy;
    type F: Copy;
    /// Rows per register.
    const N: usize;
    /// Records ahead of the one being computed that a tile prefetches (0: none). On Zen 3
    /// (AVX2) the hardware prefetcher follows a group's records on its own, and prefetching
    /// two ahead cost 7-10 % of a stream from memory (m = 1, Q4_K 131072 x 2048 on two cores:
    /// 25.8 GB/s with it, 28.3 without; Q6_K 49152 x 2048: 27.5 against 29.0; the stream-read
    /// bound 29.8); the 512-bit path keeps the two records it was tuned with on Intel.
    const PREFETCH_RECORDS: usize;
    /// Whether the tiles fold each sub-block's scale into the product sums
    /// ([`Lanes::dot4_scaled`]) rather than summing a sub-block apart and scaling it once
    /// (`vpmulld`): with AVX2 a four-product sum is two instructions either way
    /// (`maddubs` + `madd`), so multiplying by the scale's word pair instead of ones is free and
    /// leaves one accumulator per activation row instead of one per sub-block; with VNNI it
    /// would turn one `vpdpbusd` into two instructions.
    const FOLD: bool;

    unsafe fn zero() -> Self::I;
    unsafe fn splat(v: i32) -> Self::I;
    /// `4 * N` bytes.
    unsafe fn load(p: *const u8) -> Self::I;
    unsafe fn and(a: Self::I, b: Self::I) -> Self::I;
    unsafe fn or(a: Self::I, b: Self::I) -> Self::I;
    unsafe fn add(a: Self::I, b: Self::I) -> Self::I;
    unsafe fn sub(a: Self::I, b: Self::I) -> Self::I;
    unsafe fn mullo(a: Self::I, b: Self::I) -> Self::I;
    /// Low halves of the 16-bit lanes' products.
    unsafe fn mullo16(a: Self::I, b: Self::I) -> Self::I;
    unsafe fn srli16<const K: u32>(a: Self::I) -> Self::I;
    unsafe fn slli16<const K: u32>(a: Self::I) -> Self::I;
    /// Each 16-bit lane shifted right by `n`.
    unsafe fn srl16(a: Self::I, n: i32) -> Self::I;
    unsafe fn srli32<const K: u32>(a: Self::I) -> Self::I;
    unsafe fn slli32<const K: u32>(a: Self::I) -> Self::I;
    /// `acc + sum of the four u8 x i8 products` per lane (`vpdpbusd`).
    unsafe fn dot4(acc: Self::I, w: Self::I, x: Self::I) -> Self::I;
    /// `acc + s * (sum of the four u8 x i8 products)` per lane, where `s` holds the lane's
    /// scale in both of its 16-bit halves; exact while a pair of products fits i16 (6-bit
    /// weights: at most 2 * 63 * 128) and `s` is a byte.
    unsafe fn dot4_scaled(acc: Self::I, w: Self::I, x: Self::I, s: Self::I) -> Self::I;
    /// `acc` plus the two-product sums of `w`'s u8 and `x`'s i8 bytes, in 16-bit lanes
    /// (`maddubs` + `paddw`): exact while the sums fit i16, which the caller bounds.
    unsafe fn dot2_words(acc: Self::I, w: Self::I, x: Self::I) -> Self::I;
    /// `acc + sum of the two i16 x i16 products` per lane (`vpdpwssd`).
    unsafe fn dot2(acc: Self::I, a: Self::I, b: Self::I) -> Self::I;
    /// Four bytes at `p` in every lane.
    unsafe fn bcast(p: *const u8) -> Self::I;
    /// `N` bytes at `p`, zero- (`signed` = false) or sign-extended to the lanes.
    unsafe fn widen(p: *const u8, signed: bool) -> Self::I;
    /// `N` f16 at `p`.
    unsafe fn f16s(p: *const u8) -> Self::F;
    unsafe fn splatf(v: f32) -> Self::F;
    unsafe fn cvt(a: Self::I) -> Self::F;
    unsafe fn mulf(a: Self::F, b: Self::F) -> Self::F;
    unsafe fn addf(a: Self::F, b: Self::F) -> Self::F;
    unsafe fn subf(a: Self::F, b: Self::F) -> Self::F;
    unsafe fn loadf(p: *const f32) -> Self::F;
    unsafe fn storef(p: *mut f32, v: Self::F);
}

/// Sixteen rows per 512-bit register (AVX512-F, -BW and -VNNI).
pub(super) struct Z;

/// Eight rows per 256-bit register (AVX2).
pub(super) struct Y;

// Both impls: every method is an intrinsic or two; callers run them only inside functions
// compiled for (and called on CPUs with) the features named in the type's doc, and pass
// pointers valid for the bytes each method reads or writes. With a constant count, LLVM
// emits the immediate form of AVX2's shifts by register.
impl Lanes for Z {
    type I = __m512i;
    type F = __m512;
    const N: usize = 16;
    const PREFETCH_RECORDS: usize = 2;
    const FOLD: bool = false;

    #[inline(always)]
    unsafe fn zero() -> __m512i {
        // SAFETY: the impl's CPU features, and pointers the caller vouches for.
        unsafe { _mm512_setzero_si512() }
    }
    #[inline(always)]
    unsafe fn splat(v: i32) -> __m512i {
        // SAFETY: the impl's CPU features, and pointers the caller vouches for.
        unsafe { _mm512_set1_epi32(v) }
    }
    #[inline(always)]
    unsafe fn load(p: *const u8) -> __m512i {
        // SAFETY: the impl's CPU features, and pointers the caller vouches for.
        unsafe { _mm512_loadu_si512(p.cast()) }
    }
    #[inline(always)]
    unsafe fn and(a: __m512i, b: __m512i) -> __m512i {
        // SAFETY: the impl's CPU features, and pointers the caller vouches for.
        unsafe { _mm512_and_si512(a, b) }
    }
    #[inline(always)]
    unsafe fn or(a: __m512i, b: __m512i) -> __m512i {
        // SAFETY: the impl's CPU features, and pointers the caller vouches for.
        unsafe { _mm512_or_si512(a, b) }
    }
    #[inline(always)]
    unsafe fn add(a: __m512i, b: __m512i) -> __m512i {
        // SAFETY: the impl's CPU features, and pointers the caller vouches for.
        unsafe { _mm512_add_epi32(a, b) }
    }
    #[inline(always)]
    unsafe fn sub(a: __m512i, b: __m512i) -> __m512i {
        // SAFETY: the impl's CPU features, and pointers the caller vouches for.
        unsafe { _mm512_sub_epi32(a, b) }
    }
    #[inline(always)]
    unsafe fn mullo(a: __m512i, b: __m512i) -> __m512i {
        // SAFETY: the impl's CPU features, and pointers the caller vouches for.
        unsafe { _mm512_mullo_epi32(a, b) }
    }
    #[inline(always)]
    unsafe fn mullo16(a: __m512i, b: __m512i) -> __m512i {
        // SAFETY: the impl's CPU features, and pointers the caller vouches for.
        unsafe { _mm512_mullo_epi16(a, b) }
    }
    #[inline(always)]
    unsafe fn srli16<const K: u32>(a: __m512i) -> __m512i {
        // SAFETY: the impl's CPU features, and pointers the caller vouches for.
        unsafe { _mm512_srli_epi16::<K>(a) }
    }
    #[inline(always)]
    unsafe fn slli16<const K: u32>(a: __m512i) -> __m512i {
        // SAFETY: the impl's CPU features, and pointers the caller vouches for.
        unsafe { _mm512_slli_epi16::<K>(a) }
    }
    #[inline(always)]
    unsafe fn srl16(a: __m512i, n: i32) -> __m512i {
        // SAFETY: the impl's CPU features, and pointers the caller vouches for.
        unsafe { _mm512_srl_epi16(a, _mm_cvtsi32_si128(n)) }
    }
    #[inline(always)]
    unsafe fn srli32<const K: u32>(a: __m512i) -> __m512i {
        // SAFETY: the impl's CPU features, and pointers the caller vouches for.
        unsafe { _mm512_srli_epi32::<K>(a) }
    }
    #[inline(always)]
    unsafe fn slli32<const K: u32>(a: __m512i) -> __m512i {
        // SAFETY: the impl's CPU features, and pointers the caller vouches for.
        unsafe { _mm512_slli_epi32::<K>(a) }
    }
    #[inline(always)]
    unsafe fn dot4(acc: __m512i, w: __m512i, x: __m512i) -> __m512i {
        // SAFETY: the impl's CPU features, and pointers the caller vouches for.
        unsafe { _mm512_dpbusd_epi32(acc, w, x) }
    }
    #[inline(always)]
    unsafe fn dot2_words(acc: __m512i, w: __m512i, x: __m512i) -> __m512i {
        // SAFETY: the impl's CPU features, and pointers the caller vouches for.
        unsafe { _mm512_add_epi16(acc, _mm512_maddubs_epi16(w, x)) }
    }
    #[inline(always)]
    unsafe fn dot4_scaled(acc: __m512i, w: __m512i, x: __m512i, s: __m512i) -> __m512i {
        // SAFETY: the impl's CPU features, and pointers the caller vouches for.
        unsafe { _mm512_dpwssd_epi32(acc, _mm512_maddubs_epi16(w, x), s) }
    }
    #[inline(always)]
    unsafe fn dot2(acc: __m512i, a: __m512i, b: __m512i) -> __m512i {
        // SAFETY: the impl's CPU features, and pointers the caller vouches for.
        unsafe { _mm512_dpwssd_epi32(acc, a, b) }
    }
    #[inline(always)]
    unsafe fn bcast(p: *const u8) -> __m512i {
        // SAFETY: the impl's CPU features, and pointers the caller vouches for.
        unsafe { _mm512_set1_epi32(std::ptr::read_unaligned(p.cast::<i32>())) }
    }
    #[inline(always)]
    unsafe fn widen(p: *const u8, signed: bool) -> __m512i {
        // SAFETY: the impl's CPU features, and pointers the caller vouches for.
        unsafe {
            let b = _mm_loadu_si128(p.cast());
            if signed {
                _mm512_cvtepi8_epi32(b)
            } else {
                _mm512_cvtepu8_epi32(b)
            }
        }
    }
    #[inline(always)]
    unsafe fn f16s(p: *const u8) -> __m512 {
        // SAFETY: the impl's CPU features, and pointers the caller vouches for.
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())) }
    }
    #[inline(always)]
    unsafe fn splatf(v: f32) -> __m512 {
        // SAFETY: the impl's CPU features, and pointers the caller vouches for.
        unsafe { _mm512_set1_ps(v) }
    }
    #[inline(always)]
    unsafe fn cvt(a: __m512i) -> __m512 {
        // SAFETY: the impl's CPU features, and pointers the caller vouches for.
        unsafe { _mm512_cvtepi32_ps(a) }
    }
    #[inline(always)]
    unsafe fn mulf(a: __m512, b: __m512) -> __m512 {
        // SAFETY: the impl's CPU features, and pointers the caller vouches for.
        unsafe { _mm512_mul_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn addf(a: __m512, b: __m512) -> __m512 {
        // SAFETY: the impl's CPU features, and pointers the caller vouches for.
        unsafe { _mm512_add_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn subf(a: __m512, b: __m512) -> __m512 {
        // SAFETY: the impl's CPU features, and pointers the caller vouches for.
        unsafe { _mm512_sub_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn loadf(p: *const f32) -> __m512 {
        // SAFETY: the impl's CPU features, and pointers the caller vouches for.
        unsafe { _mm512_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn storef(p: *mut f32, v: __m512) {
        // SAFETY: the impl's CPU features, and pointers the caller vouches for.
        unsafe { _mm512_storeu_ps(p, v) }
    }
}

impl Lanes for Y {
    type I = __m256i;
    type F = __m256;
    const N: usize = 8;
    const PREFETCH_RECORDS: usize = 0;
    const FOLD: bool = true;

    #[inline(always)]
    unsafe fn zero() -> __m256i {
        // SAFETY: the impl's CPU features, and pointers the caller vouches for.
        unsafe { _mm256_setzero_si256() }
    }
    #[inline(always)]
    unsafe fn splat(v: i32) -> __m256i {
        // SAFETY: the impl's CPU features, and pointers the caller vouches for.
        unsafe { _mm256_set1_epi32(v) }
    }
    #[inline(always)]
    unsafe fn load(p: *const u8) -> __m256i {
        // SAFETY: the impl's CPU features, and pointers the caller vouches for.
        unsafe { _mm256_loadu_si256(p.cast()) }
    }
    #[inline(always)]
    unsafe fn and(a: __m256i, b: __m256i) -> __m256i {
        // SAFETY: the impl's CPU features, and pointers the caller vouches for.
        unsafe { _mm256_and_si256(a, b) }
    }
    #[inline(always)]
    unsafe fn or(a: __m256i, b: __m256i) -> __m256i {
        // SAFETY: the impl's CPU features, and pointers the caller vouches for.
        unsafe { _mm256_or_si256(a, b) }
    }
    #[inline(always)]
    unsafe fn add(a: __m256i, b: __m256i) -> __m256i {
        // SAFETY: the impl's CPU features, and pointers the caller vouches for.
        unsafe { _mm256_add_epi32(a, b) }
    }
    #[inline(always)]
    unsafe fn sub(a: __m256i, b: __m256i) -> __m256i {
        // SAFETY: the impl's CPU features, and pointers the caller vouches for.
        unsafe { _mm256_sub_epi32(a, b) }
    }
    #[inline(always)]
    unsafe fn mullo(a: __m256i, b: __m256i) -> __m256i {
        // SAFETY: the impl's CPU features, and pointers the caller vouches for.
        unsafe { _mm256_mullo_epi32(a, b) }
    }
    #[inline(always)]
    unsafe fn mullo16(a: __m256i, b: __m256i) -> __m256i {
        // SAFETY: the impl's CPU features, and pointers the caller vouches for.
        unsafe { _mm256_mullo_epi16(a, b) }
    }
    #[inline(always)]
    unsafe fn srli16<const K: u32>(a: __m256i) -> __m256i {
        // SAFETY: the impl's CPU features, and pointers the caller vouches for.
        unsafe { _mm256_srl_epi16(a, _mm_cvtsi32_si128(K as i32)) }
    }
    #[inline(always)]
    unsafe fn slli16<const K: u32>(a: __m256i) -> __m256i {
        // SAFETY: the impl's CPU features, and pointers the caller vouches for.
        unsafe { _mm256_sll_epi16(a, _mm_cvtsi32_si128(K as i32)) }
    }
    #[inline(always)]
    unsafe fn srl16(a: __m256i, n: i32) -> __m256i {
        // SAFETY: the impl's CPU features, and pointers the caller vouches for.
        unsafe { _mm256_srl_epi16(a, _mm_cvtsi32_si128(n)) }
    }
    #[inline(always)]
    unsafe fn srli32<const K: u32>(a: __m256i) -> __m256i {
        // SAFETY: the impl's CPU features, and pointers the caller vouches for.
        unsafe { _mm256_srl_epi32(a, _mm_cvtsi32_si128(K as i32)) }
    }
    #[inline(always)]
    unsafe fn slli32<const K: u32>(a: __m256i) -> __m256i {
        // SAFETY: the impl's CPU features, and pointers the caller vouches for.
        unsafe { _mm256_sll_epi32(a, _mm_cvtsi32_si128(K as i32)) }
    }
    #[inline(always)]
    unsafe fn dot4(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
        // Pairs of nibble or 6-bit products fit i16 (at most 2 * 63 * 128), so the sum is exact.
        // SAFETY: the impl's CPU features, and pointers the caller vouches for.
        unsafe {
            _mm256_add_epi32(
                acc,
                _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1)),
            )
        }
    }
    #[inline(always)]
    unsafe fn dot2_words(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
        // SAFETY: the impl's CPU features, and pointers the caller vouches for.
        unsafe { _mm256_add_epi16(acc, _mm256_maddubs_epi16(w, x)) }
    }
    #[inline(always)]
    unsafe fn dot4_scaled(acc: __m256i, w: __m256i, x: __m256i, s: __m256i) -> __m256i {
        // SAFETY: the impl's CPU features, and pointers the caller vouches for.
        unsafe { _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), s)) }
    }
    #[inline(always)]
    unsafe fn dot2(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        // SAFETY: the impl's CPU features, and pointers the caller vouches for.
        unsafe { _mm256_add_epi32(acc, _mm256_madd_epi16(a, b)) }
    }
    #[inline(always)]
    unsafe fn bcast(p: *const u8) -> __m256i {
        // SAFETY: the impl's CPU features, and pointers the caller vouches for.
        unsafe { _mm256_set1_epi32(std::ptr::read_unaligned(p.cast::<i32>())) }
    }
    #[inline(always)]
    unsafe fn widen(p: *const u8, signed: bool) -> __m256i {
        // SAFETY: the impl's CPU features, and pointers the caller vouches for.
        unsafe {
            let b = _mm_loadl_epi64(p.cast());
            if signed {
                _mm256_cvtepi8_epi32(b)
            } else {
                _mm256_cvtepu8_epi32(b)
            }
        }
    }
    #[inline(always)]
    unsafe fn f16s(p: *const u8) -> __m256 {
        // SAFETY: the impl's CPU features, and pointers the caller vouches for.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
    }
    #[inline(always)]
    unsafe fn splatf(v: f32) -> __m256 {
        // SAFETY: the impl's CPU features, and pointers the caller vouches for.
        unsafe { _mm256_set1_ps(v) }
    }
    #[inline(always)]
    unsafe fn cvt(a: __m256i) -> __m256 {
        // SAFETY: the impl's CPU features, and pointers the caller vouches for.
        unsafe { _mm256_cvtepi32_ps(a) }
    }
    #[inline(always)]
    unsafe fn mulf(a: __m256, b: __m256) -> __m256 {
        // SAFETY: the impl's CPU features, and pointers the caller vouches for.
        unsafe { _mm256_mul_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn addf(a: __m256, b: __m256) -> __m256 {
        // SAFETY: the impl's CPU features, and pointers the caller vouches for.
        unsafe { _mm256_add_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn subf(a: __m256, b: __m256) -> __m256 {
        // SAFETY: the impl's CPU features, and pointers the caller vouches for.
        unsafe { _mm256_sub_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn loadf(p: *const f32) -> __m256 {
        // SAFETY: the impl's CPU features, and pointers the caller vouches for.
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn storef(p: *mut f32, v: __m256) {
        // SAFETY: the impl's CPU features, and pointers the caller vouches for.
        unsafe { _mm256_storeu_ps(p, v) }
    }
}
