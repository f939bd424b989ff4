//! Unpacking one block of a 32-value format (Q4_0, Q4_1, Q8_0, Q5_0, Q5_1, IQ4_NL) into 32
//! bytes in element order for the integer dots of [`super::block32_tiles`]: the only part of
//! those tiles that differs per format.

use std::arch::x86_64::*;

use super::tag::{self, Tag};

pub(super) const fn block_bytes(f: Tag) -> usize {
    match f {
        tag::Q4_0 | tag::IQ4_NL => 18,
        tag::Q4_1 => 20,
        tag::Q5_0 => 22,
        tag::Q5_1 => 24,
        _ => 34,
    }
}

/// Whether the format's quants are unsigned with a min term (`m * s` on the side).
pub(super) const fn has_min(f: Tag) -> bool {
    tag::format(f).has_min()
}

/// What the VNNI build adds to each signed weight to make it unsigned (as an i8 pattern:
/// -128 is +128 modulo 256); the sums then start at `-k * sum(x)`.
pub(super) const fn vnni_offset(f: Tag) -> i8 {
    match f {
        tag::Q4_0 => 8,
        tag::Q5_0 => 16,
        _ => -128,
    }
}

/// One block of one weight row as (unsigned operand for `maddubs`, sign source): Q4_1 and
/// Q5_1 quants are already unsigned; Q4_0 (`nibble - 8`), Q5_0 (`q - 16`), IQ4_NL (table
/// values) and Q8_0 use `|w|` with the sign moved onto x.
///
/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn load_w<const F: Tag>(p: *const u8, m4: __m256i) -> (__m256i, __m256i) {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        if has_min(F) {
            let v = quants::<F>(p, m4);
            (v, v)
        } else {
            let s = signed::<F>(p, m4);
            (_mm256_abs_epi8(s), s)
        }
    }
}

/// One block of one weight row as the unsigned operand of `vpdpbusd`: Q4_0, Q4_1, Q5_0 and
/// Q5_1 quants as they are, Q8_0 and IQ4_NL values plus 128 (the caller starts the sums at
/// `-k * sum(x)`, k from [`vnni_offset`]).
///
/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn load_w_unsigned<const F: Tag>(p: *const u8, m4: __m256i) -> __m256i {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        if F == tag::Q8_0 || F == tag::IQ4_NL {
            _mm256_xor_si256(signed::<F>(p, m4), _mm256_set1_epi8(-128))
        } else {
            quants::<F>(p, m4)
        }
    }
}

/// The signed weights of a Q4_0, Q5_0, IQ4_NL or Q8_0 block, in element order.
///
/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn signed<const F: Tag>(p: *const u8, m4: __m256i) -> __m256i {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        match F {
            tag::Q8_0 => _mm256_loadu_si256(p.add(2).cast()),
            tag::IQ4_NL => {
                let table = _mm256_broadcastsi128_si256(_mm_loadu_si128(
                    crate::lowbit::KVALUES_IQ4NL.as_ptr().cast(),
                ));
                // Nibbles are 0..16, so `pshufb` reads the table (its high bit is clear).
                _mm256_shuffle_epi8(table, quants::<F>(p, m4))
            }
            tag::Q5_0 => _mm256_sub_epi8(quants::<F>(p, m4), _mm256_set1_epi8(16)),
            _ => _mm256_sub_epi8(quants::<F>(p, m4), _mm256_set1_epi8(8)),
        }
    }
}

/// The unsigned quants of a Q4_0/Q4_1/Q5_0/Q5_1 block (nibbles, plus the fifth bit for Q5),
/// or an IQ4_NL block's table indices, as bytes in element order.
///
/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn quants<const F: Tag>(p: *const u8, m4: __m256i) -> __m256i {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        let v = nibbles::<F>(p, m4);
        if F != tag::Q5_0 && F != tag::Q5_1 {
            return v;
        }
        // ggml's `bytes_from_bits_32`: byte e takes byte e / 8 of the `qh` word, keeps bit
        // e % 8, and becomes 0x10 where that bit is set.
        let qh = std::ptr::read_unaligned(p.add(if F == tag::Q5_0 { 2 } else { 4 }).cast::<i32>());
        let spread = _mm256_shuffle_epi8(
            _mm256_set1_epi32(qh),
            _mm256_set_epi64x(
                0x0303_0303_0303_0303,
                0x0202_0202_0202_0202,
                0x0101_0101_0101_0101,
                0,
            ),
        );
        let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
        _mm256_or_si256(v, _mm256_and_si256(set, _mm256_set1_epi8(0x10)))
    }
}

/// The 32 nibbles of a Q4_0/Q4_1/Q5_0/Q5_1/IQ4_NL block as bytes in element order.
///
/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn nibbles<const F: Tag>(p: *const u8, m4: __m256i) -> __m256i {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        let off = match F {
            tag::Q4_1 => 4,
            tag::Q5_0 => 6,
            tag::Q5_1 => 8,
            _ => 2,
        };
        // Low nibbles are elements 0..16, high nibbles 16..32: shift only the upper copy.
        let q = _mm256_broadcastsi128_si256(_mm_loadu_si128(p.add(off).cast()));
        _mm256_and_si256(_mm256_srlv_epi64(q, _mm256_setr_epi64x(0, 0, 4, 4)), m4)
    }
}
