//! Tiles for the packed K-quant layout ([`crate::kpacked`]: Q4_K, Q5_K, Q6_K): one weight row per 32-bit lane,
//! sixteen rows per 512-bit register with AVX512-VNNI, eight per 256-bit register (the two
//! halves of a group in turn) with AVX2.
//!
//! Per (group, super-block) the scales and mins are decoded once into lane vectors and the
//! tile then walks the activation rows of the chunk [`C_WIDE`], [`C`] (Q6_K), [`C_AVX2`] or
//! [`C_AVX2_Q6K`] at a time:
//!
//! - each quant vector is loaded once per tile and split into its nibbles (Q6_K adds the two
//!   high bits; Q5_K and Q6_K, whose unpacking costs more, do it once per super-block into a
//!   buffer that all the chunk's tiles read), and each piece is dotted with four activation
//!   bytes broadcast to all lanes (Q5_K first adds each value's fifth bit from its high-bit
//!   vector);
//! - with VNNI (`Block::dword_sums`) a piece is one `vpdpbusd` into one accumulator per
//!   sub-block, and a sub-block's exact sum is multiplied by its scale lane-wise (`vpmulld`)
//!   into `sumi`; with AVX2 ([`Lanes::FOLD`], `Block::word_sums`) `maddubs` sums a run of
//!   pieces of one sub-block in 16-bit lanes, as long a run as stays exact, and one `madd`
//!   with the scale's word pair widens and scales it into `sumi` (Q4_K, Q5_K, Q6_K at 128
//!   rows on one Zen 3 core: 64 / 66 / 62 GMAC/s summing each piece to 32 bits, 92 / 87 / 75
//!   with the runs and six-row tiles, Q6_K 77-79 with four-row ones);
//! - one to three activation rows (decode of a few sequences) on AVX2 take both halves of a
//!   record in one pass, its scales decoded for all sixteen rows at once ([`single`]);
//! - the mins (Q4_K, Q5_K) and the -32 offset (Q6_K) are `vpdpwssd` of word pairs with the
//!   activations' sub-block sums;
//! - one float update per super-block, in the reference's order, goes to a per-chunk buffer
//!   that is written out when the group is done (the matrix may end inside it).
//!
//! The integer sums are the ggml layout's exact sums, so the output has the same bits as the
//! ggml-layout tiles and the scalar reference.
//!
//! Both register widths share one body through [`Lanes`]: what differs is an instruction
//! or two per operation, not the algorithm.

use std::arch::x86_64::*;
use std::ops::Range;

use super::tag::{self, Tag};
use super::M_CHUNK;
use crate::act::ActBuf;
use crate::cpu::CpuLevel;
use crate::kpacked::{q4k, q5k, q6k, record_bytes, KPACK_ROWS};
use crate::matmul::MatRef;

mod amx_tiles;
mod lanes;
mod single;
mod sums;

use lanes::{Lanes, Y, Z};

/// Activation rows per 512-bit tile (the Q6_K tile holds five accumulators per row).
const C: usize = 4;

/// Activation rows per 512-bit tile for Q4_K and Q5_K (three accumulators per row).
const C_WIDE: usize = 8;

/// Activation rows per 256-bit Q4_K and Q5_K tile (Q6_K takes [`C_AVX2_Q6K`]): with the
/// scales folded in ([`Lanes::FOLD`]) a row needs one accumulator (Q4_K two more, of 16-bit
/// sums), and six rows beat two by 5-25 % (Q4_K, Q5_K, Q6_K at 128 rows on Zen 3; eight
/// spill).
const C_AVX2: usize = 6;

/// Activation rows per 256-bit Q6_K tile: its eight value vectors per pair of pieces and four
/// rows' sums fit the sixteen registers, where six rows spilled. One Zen 3 core, 1536 x 1536,
/// GMAC/s at 16 / 128 / 512 rows: 63 / 74 / 73 at six rows, 66-70 / 77-79 / 72-74 at four
/// (four alternating runs; 32 rows alike).
const C_AVX2_Q6K: usize = 4;

/// Computes columns `r` (whole groups: `r.start` is a multiple of 16) of every output row.
///
/// # Safety
/// As [`super::compute_rows`], and `w` must be packed in format `F` (Q4_K, Q5_K or Q6_K).
pub(crate) unsafe fn rows<const F: Tag>(
    level: CpuLevel,
    w: &MatRef,
    act: &ActBuf,
    r: Range<usize>,
    out: *mut f32,
) {
    // SAFETY: the caller's contract; `level` says which instructions the CPU has.
    unsafe {
        if level >= CpuLevel::Amx && act.m >= amx_tiles::ROWS {
            rows_512::<F, true>(w, act, r, out)
        } else if level >= CpuLevel::Avx512Vnni {
            rows_512::<F, false>(w, act, r, out)
        } else {
            rows_256::<F>(w, act, r, out)
        }
    }
}

/// [`rows_with`] in 512-bit registers, with sixteen-row AMX tiles where `AMX`.
///
/// # Safety
/// As [`rows`], and the CPU must have AVX512-F, -BW, -VL and -VNNI (and AMX-INT8, granted,
/// where `AMX`).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn rows_512<const F: Tag, const AMX: bool>(
    w: &MatRef,
    act: &ActBuf,
    r: Range<usize>,
    out: *mut f32,
) {
    // SAFETY: forwarded unchanged; this build has the features `Z` needs, and the caller
    // vouches for AMX; the tiles are configured before and released after their use.
    unsafe {
        if AMX {
            super::amx::configure(&amx_tiles::config());
        }
        if F == tag::Q6_K {
            rows_with::<F, Z, C, AMX>(w, act, r, out)
        } else {
            rows_with::<F, Z, C_WIDE, AMX>(w, act, r, out)
        }
        if AMX {
            super::amx::release();
        }
    }
}

/// [`rows_with`] in 256-bit registers.
///
/// # Safety
/// As [`rows`], and the CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_256<const F: Tag>(w: &MatRef, act: &ActBuf, r: Range<usize>, out: *mut f32) {
    // SAFETY: forwarded unchanged; this build has the features `Y` needs.
    unsafe {
        if act.m <= single::max_rows(F) {
            single::rows::<F>(w, act, r, out)
        } else if F == tag::Q6_K {
            rows_with::<F, Y, C_AVX2_Q6K, false>(w, act, r, out)
        } else {
            rows_with::<F, Y, C_AVX2, false>(w, act, r, out)
        }
    }
}

/// Walks the groups of `r`: per chunk of activation rows and group, every super-block's
/// scales (and, where it pays, values) are decoded once per lane half and its tiles of `T`
/// activation rows (with `AMX`, first as many AMX tiles of sixteen as fit) are accumulated
/// into `acc`, then the group's rows are written out.
///
/// # Safety
/// As [`rows`], with the CPU features of `L` (and, with `AMX`, 512-bit lanes and tiles
/// configured by [`amx_tiles::config`]).
#[inline(always)]
unsafe fn rows_with<const F: Tag, L: Lanes, const T: usize, const AMX: bool>(
    w: &MatRef,
    act: &ActBuf,
    r: Range<usize>,
    out: *mut f32,
) {
    // SAFETY: the caller's contract: `w` is a packed F matrix whose groups `r` covers, `act`
    // holds its Q8_K activations and `out` the m x rows outputs, columns `r` ours alone.
    unsafe {
        debug_assert!(r.start.is_multiple_of(KPACK_ROWS));
        let (ors, m, nb) = (w.rows(), act.m, act.nb);
        let rec = record_bytes(tag::format(F));
        let gb = nb * rec;
        let base = w.data().as_ptr();
        let chunk = if AMX { amx_tiles::M_AMX } else { M_CHUNK };
        let mut acc = [0.0f32; amx_tiles::M_AMX * KPACK_ROWS];
        let mut buf = [L::zero(); UNPACKED];
        // Written by `unpack_scaled` before any read, and only on the AMX path.
        let mut planes = std::mem::MaybeUninit::<[L::I; amx_tiles::PLANES]>::uninit();
        let planes = planes.as_mut_ptr().cast::<L::I>();
        let mut i0 = 0;
        while i0 < m {
            let i1 = m.min(i0 + chunk);
            // The chunk's whole AMX tiles of sixteen rows (none without AMX).
            let n_amx = if AMX { (i1 - i0) / amx_tiles::ROWS } else { 0 };
            let amx_rows = n_amx * amx_tiles::ROWS;
            for g in r.start / KPACK_ROWS..r.end.div_ceil(KPACK_ROWS) {
                // AMX tiles start their rows' sums themselves (zeroing all of them cost 2-4 %
                // of a prompt); the rows the 512-bit tiles take are zeroed here.
                acc[amx_rows * KPACK_ROWS..(i1 - i0) * KPACK_ROWS].fill(0.0);
                let gp = base.add(g * gb);
                for b in 0..nb {
                    let rp = gp.add(b * rec);
                    // Past the matrix's end a prefetch is harmless; `wrapping_add` keeps the
                    // address arithmetic defined there.
                    if L::PREFETCH_RECORDS > 0 {
                        let ahead = rp.wrapping_add(L::PREFETCH_RECORDS * rec);
                        for off in (0..rec).step_by(64) {
                            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(off).cast());
                        }
                    }
                    for lane0 in (0..KPACK_ROWS).step_by(L::N) {
                        let blk = Block::<L>::decode::<F>(rp, lane0);
                        if n_amx > 0 {
                            amx_tiles::unpack_scaled::<L, F>(rp, &blk, planes);
                            let (a, first) = (acc.as_mut_ptr(), b == 0);
                            amx_tiles::tiles::<F, L>(&blk, planes, act, b, i0, n_amx, a, first);
                        }
                        let mut i = i0 + amx_rows;
                        // More than one tile: unpack the values once for all of them, where
                        // that is dearer than loading them twice (not Q4_K's nibbles).
                        let shared = !AMX && F != tag::Q4_K && i1 - i0 > T;
                        if shared {
                            unpack::<L, F>(rp, lane0, buf.as_mut_ptr());
                        }
                        while i < i1 {
                            let n = (i1 - i).min(T);
                            let a = acc.as_mut_ptr().add((i - i0) * KPACK_ROWS + lane0);
                            if shared {
                                blk.tile_n::<F, T, true>(n, rp, lane0, buf.as_ptr(), act, b, i, a);
                            } else {
                                blk.tile_n::<F, T, false>(n, rp, lane0, buf.as_ptr(), act, b, i, a);
                            }
                            i += n;
                        }
                    }
                }
                store_group(&acc, out, i0..i1, g, ors);
            }
            i0 = i1;
        }
    }
}

/// Writes group `g`'s sums for activation rows `rows` (row `i` at `acc[(i - rows.start) * 16
/// ..]`) to `out` (rows of `ors` outputs), leaving out the rows past the matrix's end.
///
/// # Safety
/// `acc` holds the rows' sums and `out` is valid for `rows.end` output rows.
#[inline(always)]
unsafe fn store_group(acc: &[f32], out: *mut f32, rows: Range<usize>, g: usize, ors: usize) {
    // SAFETY: as this function's contract.
    unsafe {
        let left = (ors - g * KPACK_ROWS).min(KPACK_ROWS);
        for i in rows.clone() {
            let src = acc.as_ptr().add((i - rows.start) * KPACK_ROWS);
            let dst = out.add(i * ors + g * KPACK_ROWS);
            if left == KPACK_ROWS {
                // A constant length is a register copy; a variable one called
                // memmove for each 64 bytes (7 % of a 512-token prompt).
                std::ptr::copy_nonoverlapping(src, dst, KPACK_ROWS);
            } else {
                std::ptr::copy_nonoverlapping(src, dst, left);
            }
        }
    }
}

/// Vectors of one super-block's values for `N` rows: Q4_K/Q5_K's `(low, high)` pair of
/// vector `u` of chunk `c4` at `2 * (8 * c4 + u)`, Q6_K's four values of piece `(n, u)` at
/// `4 * (8 * n + u)`.
const UNPACKED: usize = 64;

/// Unpacks lanes `lane0..lane0 + N` of record `rp` into `buf` ([`UNPACKED`] vectors).
///
/// # Safety
/// `rp` must be a whole record of format `F`; the CPU must have `L`'s features.
#[inline(always)]
unsafe fn unpack<L: Lanes, const F: Tag>(rp: *const u8, lane0: usize, buf: *mut L::I) {
    // SAFETY: as this function's contract; `buf` holds `UNPACKED` vectors.
    unsafe {
        if F == tag::Q6_K {
            for n in 0..2 {
                for u in 0..8 {
                    let q = q6_values::<L>(rp, lane0, n, u);
                    for (k, v) in q.into_iter().enumerate() {
                        *buf.add(4 * (8 * n + u) + k) = v;
                    }
                }
            }
        } else {
            for c4 in 0..4 {
                for u in 0..8 {
                    let (lo, hi) = q45_values::<L, F>(rp, lane0, c4, u);
                    *buf.add(2 * (8 * c4 + u)) = lo;
                    *buf.add(2 * (8 * c4 + u) + 1) = hi;
                }
            }
        }
    }
}

/// Q4_K/Q5_K: the values of vector `u` of chunk `c4`, lanes `lane0..`: the low nibbles
/// (sub-block `2 * c4`) and the high ones (`2 * c4 + 1`), Q5_K's fifth bits added.
///
/// # Safety
/// As [`unpack`].
#[inline(always)]
unsafe fn q45_values<L: Lanes, const F: Tag>(
    rp: *const u8,
    lane0: usize,
    c4: usize,
    u: usize,
) -> (L::I, L::I) {
    // SAFETY: every read is inside the record (offsets from `crate::kpacked`).
    unsafe {
        let m4 = L::splat(0x0F0F_0F0F);
        let qs = rp.add(if F == tag::Q5_K { q5k::QS } else { q4k::QS } + 4 * lane0);
        let q = L::load(qs.add(64 * (8 * c4 + u)));
        let mut lo = L::and(q, m4);
        let mut hi = L::and(L::srli16::<4>(q), m4);
        if F == tag::Q5_K {
            // Bits 2 * c4 and 2 * c4 + 1 of the value's qh byte, as bit 4.
            let bit5 = L::splat(0x1010_1010);
            let hb = L::srl16(L::load(rp.add(q5k::QH + 4 * lane0 + 64 * u)), 2 * c4 as i32);
            lo = L::or(lo, L::and(L::slli16::<4>(hb), bit5));
            hi = L::or(hi, L::and(L::slli16::<3>(hb), bit5));
        }
        (lo, hi)
    }
}

/// Q6_K: ggml's q1..q4 (values `128n + 4u ..`, `+ 32`, `+ 64`, `+ 96`, offset by +32) of piece
/// `(n, u)`, lanes `lane0..`: q1..q3 are the low six bits of the piece's three vectors, q4 the
/// three top bit pairs put together ([`crate::kpacked`]'s `q6_piece`).
///
/// # Safety
/// As [`unpack`].
#[inline(always)]
unsafe fn q6_values<L: Lanes>(rp: *const u8, lane0: usize, n: usize, u: usize) -> [L::I; 4] {
    // SAFETY: every read is inside the record (offsets from `crate::kpacked`).
    unsafe {
        let m6 = L::splat(0x3F3F_3F3F);
        let piece = rp.add(q6k::VALS + 4 * lane0 + 3 * 64 * (8 * n + u));
        let a = L::load(piece);
        let b = L::load(piece.add(64));
        let c = L::load(piece.add(128));
        // 16-bit shifts: the bits a byte takes from its neighbour fall outside each mask.
        let q4 = L::or(
            L::or(
                L::and(L::srli16::<6>(a), L::splat(0x0303_0303)),
                L::and(L::srli16::<4>(b), L::splat(0x0C0C_0C0C)),
            ),
            L::and(L::srli16::<2>(c), L::splat(0x3030_3030)),
        );
        [L::and(a, m6), L::and(b, m6), L::and(c, m6), q4]
    }
}

/// One super-block's per-lane factors for `N` rows of a group.
struct Block<L: Lanes> {
    /// Sub-block scales as i32 (8 for Q4_K and Q5_K, 16 for Q6_K).
    sc: [L::I; 16],
    /// The same scales in both 16-bit halves of their lanes, for [`Lanes::dot4_scaled`]
    /// (filled only where [`Lanes::FOLD`]).
    sc16: [L::I; 16],
    /// What the float update needs.
    f: Factors<L>,
}

/// What a super-block's float update ([`Factors::finish`]) needs of `N` rows.
struct Factors<L: Lanes> {
    /// Word pairs for `dot2`: Q4_K's and Q5_K's mins `(m[2k], m[2k+1])`, Q6_K's scales
    /// `(sc[2k], sc[2k+1])`.
    pairs: [L::I; 8],
    d: L::F,
    dmin: L::F,
}

impl<L: Lanes> Block<L> {
    /// Decodes the scales of lanes `lane0..lane0 + N` of record `rp`.
    ///
    /// # Safety
    /// `rp` must be a whole record of format `F`; the CPU must have `L`'s features.
    #[inline(always)]
    unsafe fn decode<const F: Tag>(rp: *const u8, lane0: usize) -> Self {
        // SAFETY: every read is inside the record (offsets from `crate::kpacked`).
        unsafe {
            let mut sc = [L::zero(); 16];
            let mut pairs = [L::zero(); 8];
            let low16 = L::splat(0xFFFF);
            if F != tag::Q6_K {
                let (m4, m3) = (L::splat(0xF), L::splat(3));
                let mut mn = [L::zero(); 8];
                for k in 0..4 {
                    let h = L::widen(rp.add(q4k::HIGH + 16 * k + lane0), false);
                    for (e, hs) in [h, L::srli32::<4>(h)].into_iter().enumerate() {
                        let s = 2 * k + e;
                        let l = L::widen(rp.add(q4k::LOW + 16 * s + lane0), false);
                        sc[s] = L::or(L::and(l, m4), L::slli32::<4>(L::and(hs, m3)));
                        mn[s] = L::or(L::srli32::<4>(l), L::slli32::<2>(L::and(hs, L::splat(0xC))));
                    }
                    pairs[k] = L::or(mn[2 * k], L::slli32::<16>(mn[2 * k + 1]));
                }
                Block {
                    sc16: Self::halves(&sc),
                    sc,
                    f: Factors {
                        pairs,
                        d: L::f16s(rp.add(q4k::D + 2 * lane0)),
                        dmin: L::f16s(rp.add(q4k::DMIN + 2 * lane0)),
                    },
                }
            } else {
                for (s, v) in sc.iter_mut().enumerate() {
                    *v = L::widen(rp.add(q6k::SC + 16 * s + lane0), true);
                }
                for (k, p) in pairs.iter_mut().enumerate() {
                    *p = L::or(L::and(sc[2 * k], low16), L::slli32::<16>(sc[2 * k + 1]));
                }
                let d = L::f16s(rp.add(q6k::D + 2 * lane0));
                Block {
                    sc16: Self::halves(&sc),
                    sc,
                    f: Factors { pairs, d, dmin: d },
                }
            }
        }
    }

    /// Each scale of `sc` (i32 lanes holding a signed byte) in both 16-bit halves of its
    /// lane, where the tiles fold scales in ([`Lanes::FOLD`]); zeros otherwise.
    ///
    /// # Safety
    /// The CPU must have `L`'s features.
    #[inline(always)]
    unsafe fn halves(sc: &[L::I; 16]) -> [L::I; 16] {
        // SAFETY: register operations only.
        unsafe {
            let mut out = [L::zero(); 16];
            if L::FOLD {
                let low16 = L::splat(0xFFFF);
                for (o, s) in out.iter_mut().zip(sc) {
                    *o = L::or(L::and(*s, low16), L::slli32::<16>(*s));
                }
            }
            out
        }
    }

    /// [`Block::tile`] for `n` (1..=`T`) activation rows.
    ///
    /// # Safety
    /// As [`Block::tile`].
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile_n<const F: Tag, const T: usize, const BUF: bool>(
        &self,
        n: usize,
        rp: *const u8,
        lane0: usize,
        buf: *const L::I,
        act: &ActBuf,
        b: usize,
        i0: usize,
        acc: *mut f32,
    ) {
        // SAFETY: forwarded unchanged.
        unsafe {
            match n {
                _ if n >= T => self.tile::<F, T, BUF>(rp, lane0, buf, act, b, i0, acc),
                7 => self.tile::<F, 7, BUF>(rp, lane0, buf, act, b, i0, acc),
                6 => self.tile::<F, 6, BUF>(rp, lane0, buf, act, b, i0, acc),
                5 => self.tile::<F, 5, BUF>(rp, lane0, buf, act, b, i0, acc),
                4 => self.tile::<F, 4, BUF>(rp, lane0, buf, act, b, i0, acc),
                3 => self.tile::<F, 3, BUF>(rp, lane0, buf, act, b, i0, acc),
                2 => self.tile::<F, 2, BUF>(rp, lane0, buf, act, b, i0, acc),
                _ => self.tile::<F, 1, BUF>(rp, lane0, buf, act, b, i0, acc),
            }
        }
    }

    /// Super-block `b` (record `rp`, lanes `lane0..`) times activation rows `i0..i0 + R`:
    /// adds each pair's float update to `acc[c * 16 ..]`. With `BUF` the values come
    /// ready from `buf` ([`unpack`]'s), otherwise from the record.
    ///
    /// # Safety
    /// `rp` is a whole record of format `F`, `act` holds rows `i0..i0 + R`, `acc` is valid
    /// for `R` rows of 16 floats, `buf` (with `BUF`) for [`UNPACKED`] vectors; the CPU must
    /// have `L`'s features.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const F: Tag, const R: usize, const BUF: bool>(
        &self,
        rp: *const u8,
        lane0: usize,
        buf: *const L::I,
        act: &ActBuf,
        b: usize,
        i0: usize,
        acc: *mut f32,
    ) {
        // SAFETY: as this function's contract.
        unsafe {
            let cols = act.cols;
            let xp = act.qs.as_ptr().cast::<u8>().add(i0 * cols + b * 256);
            let sumi = if L::FOLD {
                self.word_sums::<F, R, BUF>(rp, lane0, buf, xp, cols)
            } else {
                self.dword_sums::<F, R, BUF>(rp, lane0, buf, xp, cols)
            };
            for (c, si) in sumi.iter().enumerate() {
                self.f
                    .finish::<F>(*si, act, b, i0 + c, acc.add(c * KPACK_ROWS), false);
            }
        }
    }

    /// Q4_K/Q5_K: the values of piece `u` of chunk `c4` (low and high nibbles), from `buf`
    /// with `BUF`, else from the record.
    ///
    /// # Safety
    /// As [`Block::tile`].
    #[inline(always)]
    unsafe fn q45<const F: Tag, const BUF: bool>(
        rp: *const u8,
        lane0: usize,
        buf: *const L::I,
        c4: usize,
        u: usize,
    ) -> (L::I, L::I) {
        // SAFETY: as this function's contract (`unpack`'s buffer layout).
        unsafe {
            if BUF {
                let v = 2 * (8 * c4 + u);
                (*buf.add(v), *buf.add(v + 1))
            } else {
                q45_values::<L, F>(rp, lane0, c4, u)
            }
        }
    }

    /// As [`Block::q45`], for Q6_K's four values of piece `(n, u)`.
    ///
    /// # Safety
    /// As [`Block::tile`].
    #[inline(always)]
    unsafe fn q6<const BUF: bool>(
        rp: *const u8,
        lane0: usize,
        buf: *const L::I,
        n: usize,
        u: usize,
    ) -> [L::I; 4] {
        // SAFETY: as this function's contract (`unpack`'s buffer layout).
        unsafe {
            if BUF {
                let v = 4 * (8 * n + u);
                [
                    *buf.add(v),
                    *buf.add(v + 1),
                    *buf.add(v + 2),
                    *buf.add(v + 3),
                ]
            } else {
                q6_values::<L>(rp, lane0, n, u)
            }
        }
    }
}

impl<L: Lanes> Factors<L> {
    /// Adds super-block `b`'s float update for activation row `i` to `acc` (`N` floats; to
    /// zero if `first`, without reading `acc`):
    /// `sumi` is the row's scaled integer sum; the mins (Q4_K, Q5_K) or the +32 offset (Q6_K)
    /// come off here, in the reference's order.
    ///
    /// # Safety
    /// `act` holds row `i`, `acc` is valid for `N` floats; the CPU must have `L`'s features.
    #[inline(always)]
    unsafe fn finish<const F: Tag>(
        &self,
        si: L::I,
        act: &ActBuf,
        b: usize,
        i: usize,
        acc: *mut f32,
        first: bool,
    ) {
        // SAFETY: as this function's contract.
        unsafe {
            let nb = act.nb;
            let dy = L::splatf(*act.d.as_ptr().add(act.at(b, i)));
            let t = if F != tag::Q6_K {
                let bs = act.bs32.as_ptr().add((i * nb + b) * 8).cast::<u8>();
                let mut summ = L::zero();
                for (k, p) in self.pairs.iter().take(4).enumerate() {
                    summ = L::dot2(summ, *p, L::bcast(bs.add(4 * k)));
                }
                let t = L::mulf(L::mulf(self.d, dy), L::cvt(si));
                L::subf(t, L::mulf(L::mulf(self.dmin, dy), L::cvt(summ)))
            } else {
                // The quants carry +32: take 32 * sum(sc * bsum16) back out, exactly.
                let bs = act.bs16.as_ptr().add((i * nb + b) * 16).cast::<u8>();
                let mut corr = L::zero();
                for (k, p) in self.pairs.iter().enumerate() {
                    corr = L::dot2(corr, *p, L::bcast(bs.add(4 * k)));
                }
                L::mulf(
                    L::mulf(self.d, dy),
                    L::cvt(L::sub(si, L::slli32::<5>(corr))),
                )
            };
            // The first super-block adds to zero as the reference does (0 + -0 is +0).
            let before = if first { L::splatf(0.0) } else { L::loadf(acc) };
            L::storef(acc, L::addf(before, t));
        }
    }
}
