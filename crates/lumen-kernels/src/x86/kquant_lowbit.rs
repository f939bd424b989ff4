//! Unpacking Q2_K, Q3_K and IQ4_XS super-blocks into the [`KRow`]s of
//! [`super::kquant_tiles`], so the three formats share its integer inner loop with Q4_K,
//! Q5_K and Q6_K.
//!
//! Each stores one byte per value for `maddubs`: Q2_K's quants as they are (0..=3, the min
//! term on the side like Q4_K's, but per 16 values); Q3_K's plus 4 (0..=7, the `-4 * scale *
//! sum(x)` correction applied like Q6_K's `-32`); IQ4_XS's signed table values (the tile
//! moves their sign onto the activations, as the 32-value tiles do for Q4_0).

use std::arch::x86_64::*;

use super::kquant_tiles::{f16_at, KRow};
use crate::lowbit::KVALUES_IQ4NL;

/// Stores 16 per-16-value scales as the `maddubs`-lane scale vectors of the eight 32-value
/// chunks (lanes 0..8 take sub-block 2k, lanes 8..16 sub-block 2k + 1).
///
/// # Safety
/// AVX2 available.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn store_scales16(row: &mut KRow, sc: &[i16; 16]) {
    // SAFETY: AVX2 is the caller's promise; `scv` rows are 32-byte aligned (KRow's repr).
    unsafe {
        for k in 0..8 {
            let lo = _mm_set1_epi16(sc[2 * k]);
            let hi = _mm_set1_epi16(sc[2 * k + 1]);
            _mm256_store_si256(row.scv[k].as_mut_ptr().cast(), _mm256_set_m128i(hi, lo));
        }
    }
}

/// The 2-bit fields of a Q2_K/Q3_K block's `qs` (64 bytes at `qs`) into `row.q` in value
/// order: per 128 values, byte `l` holds values `l`, `l + 32`, `l + 64`, `l + 96`; Q3_K
/// (`hmask` not null) ORs in 4 where the value's `hmask` bit is set.
///
/// # Safety
/// AVX2 available; `qs` valid for 64 reads, `hmask` null or valid for 32.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn two_bit(qs: *const u8, hmask: *const u8, row: &mut KRow) {
    // SAFETY: AVX2 and the pointer ranges are the caller's promise; `row.q` is 256 bytes.
    unsafe {
        let m3 = _mm256_set1_epi8(3);
        let one = _mm256_set1_epi8(1);
        let hm = if hmask.is_null() {
            _mm256_setzero_si256()
        } else {
            _mm256_loadu_si256(hmask.cast())
        };
        let q = row.q.as_mut_ptr();
        for n in 0..2 {
            let v = _mm256_loadu_si256(qs.add(32 * n).cast());
            for j in 0..4 {
                let sh = _mm_cvtsi32_si128(2 * j as i32);
                let mut u = _mm256_and_si256(_mm256_srl_epi16(v, sh), m3);
                if !hmask.is_null() {
                    let hb = _mm_cvtsi32_si128((4 * n + j) as i32);
                    let h = _mm256_and_si256(_mm256_srl_epi16(hm, hb), one);
                    u = _mm256_or_si256(u, _mm256_slli_epi16::<2>(h));
                }
                _mm256_store_si256(q.add(128 * n + 32 * j).cast(), u);
            }
        }
    }
}

/// Unpacks an 84-byte Q2_K super-block.
///
/// # Safety
/// AVX2, FMA and F16C available; `p` valid for 84 reads.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn unpack_q2k(p: *const u8, row: &mut KRow) {
    // SAFETY: the caller's promise covers every read below (`p` holds one block).
    unsafe {
        row.d = f16_at(p.add(80));
        row.dmin = f16_at(p.add(82));
        let mut sc = [0i16; 16];
        for (g, s) in sc.iter_mut().enumerate() {
            let b = *p.add(g);
            *s = (b & 0xF) as i16;
            row.mins16[g] = (b >> 4) as i16;
        }
        store_scales16(row, &sc);
        two_bit(p.add(16), std::ptr::null(), row);
    }
}

/// Unpacks a 110-byte Q3_K super-block (quants offset by +4, scales in `sc16` for the
/// correction).
///
/// # Safety
/// AVX2, FMA and F16C available; `p` valid for 110 reads.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn unpack_q3k(p: *const u8, row: &mut KRow) {
    // SAFETY: the caller's promise covers every read below (`p` holds one block).
    unsafe {
        row.d = f16_at(p.add(108));
        // ggml's word-wise unpacking of the sixteen 6-bit scales (low nibbles in bytes
        // 0..8, high pairs in 8..12): one pass over three words instead of a loop of bytes.
        const KM1: u32 = 0x0303_0303;
        const KM2: u32 = 0x0f0f_0f0f;
        let w = |o: usize| std::ptr::read_unaligned(p.add(96 + o).cast::<u32>());
        let (a0, a1, t) = (w(0), w(4), w(8));
        let words = [
            (a0 & KM2) | ((t & KM1) << 4),
            (a1 & KM2) | (((t >> 2) & KM1) << 4),
            ((a0 >> 4) & KM2) | (((t >> 4) & KM1) << 4),
            ((a1 >> 4) & KM2) | (((t >> 6) & KM1) << 4),
        ];
        let mut bytes = [0u8; 16];
        for (k, word) in words.iter().enumerate() {
            bytes[4 * k..4 * k + 4].copy_from_slice(&word.to_le_bytes());
        }
        let sc = _mm256_sub_epi16(
            _mm256_cvtepu8_epi16(_mm_loadu_si128(bytes.as_ptr().cast())),
            _mm256_set1_epi16(32),
        );
        _mm256_storeu_si256(row.sc16.as_mut_ptr().cast(), sc);
        let sc = row.sc16;
        store_scales16(row, &sc);
        two_bit(p.add(32), p, row);
    }
}

/// Unpacks a 136-byte IQ4_XS super-block (signed table values stored as bytes).
///
/// # Safety
/// AVX2, FMA and F16C available; `p` valid for 136 reads.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn unpack_iq4xs(p: *const u8, row: &mut KRow) {
    // SAFETY: the caller's promise covers every read below (`p` holds one block).
    unsafe {
        row.d = f16_at(p);
        let sh = std::ptr::read_unaligned(p.add(2).cast::<u16>());
        let table = _mm_loadu_si128(KVALUES_IQ4NL.as_ptr().cast());
        let m4 = _mm_set1_epi8(0x0F);
        let q = row.q.as_mut_ptr();
        for ib in 0..8 {
            let lo = (*p.add(4 + ib / 2) >> (4 * (ib % 2))) & 0xF;
            let hi = ((sh >> (2 * ib)) & 3) as u8;
            let ls = (lo | (hi << 4)) as i16 - 32;
            _mm256_store_si256(row.scv[ib].as_mut_ptr().cast(), _mm256_set1_epi16(ls));
            let v = _mm_loadu_si128(p.add(8 + 16 * ib).cast());
            let a = _mm_shuffle_epi8(table, _mm_and_si128(v, m4));
            let b = _mm_shuffle_epi8(table, _mm_and_si128(_mm_srli_epi16::<4>(v), m4));
            _mm256_store_si256(q.add(32 * ib).cast(), _mm256_set_m128i(b, a));
        }
    }
}
