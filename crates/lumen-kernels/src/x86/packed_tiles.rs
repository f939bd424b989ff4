//! Tiles for the packed layout ([`crate::packed`]): G groups of eight weight rows by C
//! activation rows, each lane one weight row.
//!
//! Per block and (group, activation row) the integer dot accumulates in one vector whose lane
//! `j` is row `j`'s exact block sum: eight steps (four for the 4- and 5-bit formats, which
//! unpack two steps from each loaded vector; Q5_0 and Q5_1 OR in their fifth bits, one shift
//! and one mask per step), each broadcasting four activation bytes to all lanes. Then one
//! convert, one scale product and one FMA (two for Q4_1 and Q5_1) update eight pairs at once,
//! in the order of [`crate::packed::dot`], so the scalar reference and every tile shape give
//! the same bits.
//!
//! With AVX512-VNNI a step is one `vpdpbusd` (whose unsigned operand is the weights: the 4-
//! and 5-bit quants as they are, Q8_0 bytes plus 128, with the sums started at `-k * sum(x)`
//! to take the offsets back out); plain AVX2 uses `maddubs` + `madd` (Q8_0 with the sign
//! trick). On AVX2 one Zen 3 core runs Q5_0 1536 x 1536 at 39 / 62 / 59 GMAC/s at 1 / 16 /
//! 128 activation rows, against 12 / 24 / 24 in the ggml layout (`cargo bench --bench matmul
//! q5_0`).

use std::arch::x86_64::*;
use std::ops::Range;

use super::tag::{self, Tag};
use super::{packed_tiles_512, M_CHUNK};
use crate::act::ActBuf;
use crate::cpu::CpuLevel;
use crate::matmul::MatRef;
use crate::packed::PACK_ROWS;

/// How many tiles ahead a tile prefetches its weights.
pub(super) const PREFETCH_TILES: usize = 2;

/// Bytes of a (group, block) record.
pub(super) const fn record(f: Tag) -> usize {
    match crate::packed::record_bytes(tag::format(f)) {
        Some(n) => n,
        None => 0,
    }
}

/// Bytes of scales before the quants.
pub(super) const fn scales(f: Tag) -> usize {
    crate::packed::scale_bytes(tag::format(f))
}

/// Computes columns `r` (whole groups: `r.start` is a multiple of 8) of every output row.
///
/// # Safety
/// As [`super::compute_rows`], and `w` must be packed in format `F`.
pub(crate) unsafe fn rows<const F: Tag>(
    level: CpuLevel,
    w: &MatRef,
    act: &ActBuf,
    r: Range<usize>,
    out: *mut f32,
) {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        if level >= CpuLevel::Avx512Vnni {
            rows_vnni::<F>(w, act, r, out)
        } else {
            rows_avx2::<F>(w, act, r, out)
        }
    }
}

/// Pairs of groups as 512-bit tiles ([`super::packed_tiles_512`]), a last odd group as 1 x 4; 4 groups
/// for single-row decode.
///
/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl,avx512f,avx512bw")]
unsafe fn rows_vnni<const F: Tag>(w: &MatRef, act: &ActBuf, r: Range<usize>, out: *mut f32) {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe { rows_with::<F, true, 1, 4>(w, act, r, out) }
}

/// 1 group x 4 rows: the accumulators of a wider tile would not fit AVX2's 16 registers.
///
/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_avx2<const F: Tag>(w: &MatRef, act: &ActBuf, r: Range<usize>, out: *mut f32) {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe { rows_with::<F, false, 1, 4>(w, act, r, out) }
}

/// Activation rows per tile (fewer only for the last rows of a chunk).
const C: usize = 4;

/// Walks the groups of `r` with G x [`C`] tiles (D x 1 for a single activation row); with
/// VNNI (`V`), pairs of groups go to 512-bit tiles of [`packed_tiles_512::C`] rows.
///
/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[inline(always)]
unsafe fn rows_with<const F: Tag, const V: bool, const G: usize, const D: usize>(
    w: &MatRef,
    act: &ActBuf,
    r: Range<usize>,
    out: *mut f32,
) {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        debug_assert!(r.start.is_multiple_of(PACK_ROWS));
        let (ors, m) = (w.rows(), act.m);
        let gb = act.nb * record(F);
        let (g0, g1) = (r.start / PACK_ROWS, r.end.div_ceil(PACK_ROWS));
        let base = w.data().as_ptr();
        if m == 1 {
            let mut g = g0;
            while g + D <= g1 {
                tile::<F, V, D, 1>(
                    base.add(g * gb),
                    gb,
                    act,
                    0,
                    out.add(g * PACK_ROWS),
                    ors,
                    ors - g * PACK_ROWS,
                    true,
                );
                g += D;
            }
            while g < g1 {
                tile::<F, V, 1, 1>(
                    base.add(g * gb),
                    gb,
                    act,
                    0,
                    out.add(g * PACK_ROWS),
                    ors,
                    ors - g * PACK_ROWS,
                    true,
                );
                g += 1;
            }
            return;
        }
        let mut i0 = 0;
        while i0 < m {
            let i1 = m.min(i0 + M_CHUNK);
            let mut g = g0;
            while g < g1 {
                let pair = V && g + 2 <= g1;
                let full = g + G <= g1;
                let mut i = i0;
                while i < i1 {
                    let o = out.add(i * ors + g * PACK_ROWS);
                    // Leftover rows get a tile of their own height, not one-row tiles: batches of
                    // any size are common (sequences finish at different steps).
                    let n = (i1 - i).min(if pair { packed_tiles_512::C } else { C });
                    // The weight tile stays in cache across the activation tiles: the first one
                    // prefetches the tiles ahead for all of them.
                    let (wp, left, pf) = (base.add(g * gb), ors - g * PACK_ROWS, i == i0);
                    if pair {
                        packed_tiles_512::tile_n::<F>(n, wp, gb, act, i, o, ors, left, pf);
                    } else if full {
                        tile_n::<F, V, G>(n, wp, gb, act, i, o, ors, left, pf);
                    } else {
                        tile_n::<F, V, 1>(n, wp, gb, act, i, o, ors, left, pf);
                    }
                    i += n;
                }
                g += if pair {
                    2
                } else if full {
                    G
                } else {
                    1
                };
            }
            i0 = i1;
        }
    }
}

/// [`tile`] for `n` (1..=[`C`]) activation rows.
///
/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_n<const F: Tag, const V: bool, const G: usize>(
    n: usize,
    w: *const u8,
    gb: usize,
    act: &ActBuf,
    i0: usize,
    out: *mut f32,
    ors: usize,
    left: usize,
    prefetch: bool,
) {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        const { assert!(C == 4) };
        match n {
            4 => tile::<F, V, G, 4>(w, gb, act, i0, out, ors, left, prefetch),
            3 => tile::<F, V, G, 3>(w, gb, act, i0, out, ors, left, prefetch),
            2 => tile::<F, V, G, 2>(w, gb, act, i0, out, ors, left, prefetch),
            _ => tile::<F, V, G, 1>(w, gb, act, i0, out, ors, left, prefetch),
        }
    }
}

/// Whether format `f`'s values have a fifth bit (Q5_0, Q5_1).
pub(super) const fn fifth(f: Tag) -> bool {
    crate::packed::has_fifth_bit(tag::format(f))
}

/// Where a record of format `f` keeps its fifth bits.
pub(super) const fn fifth_at(f: Tag) -> usize {
    crate::packed::fifth_bits_at(tag::format(f))
}

/// Whether format `f` has a min term (Q4_1, Q5_1).
pub(super) const fn has_min(f: Tag) -> bool {
    tag::format(f).has_min()
}

/// The offset `k` that format `f`'s signed values carry as the tiles multiply them (the sums
/// start at `-k * sum(x)`): Q4_0's 8 and Q5_0's 16 (their unsigned quants), and Q8_0's 128
/// where `vpdpbusd` (`vnni`) takes its bytes plus 128.
pub(super) const fn offset(f: Tag, vnni: bool) -> i32 {
    match f {
        tag::Q4_0 => 8,
        tag::Q5_0 => 16,
        tag::Q8_0 if vnni => 128,
        _ => 0,
    }
}

/// Quant vector `V` of a 4- or 5-bit record as unsigned bytes: its low nibbles (elements
/// `4V..`) and its high ones (`16 + 4V..`), with Q5's fifth bits from `hp` (the record's
/// fifth-bit vector, [`crate::packed`]'s layout: bits `2V` and `2V + 1`) moved to bit 4.
///
/// # Safety
/// The CPU must support AVX2; for Q5_0 and Q5_1 `hp` must be valid for 32 bytes.
#[inline(always)]
unsafe fn values<const F: Tag, const V: usize>(q: __m256i, hp: *const u8) -> (__m256i, __m256i) {
    // SAFETY: a CPU with AVX2 and a readable `hp` (the caller's contract).
    unsafe {
        let m4 = _mm256_set1_epi8(0x0F);
        let lo = _mm256_and_si256(q, m4);
        let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4);
        if !fifth(F) {
            return (lo, hi);
        }
        let qh = _mm256_loadu_si256(hp.cast());
        // A 16-bit shift by at most 4 never carries a neighbour byte's bit into bit 4.
        let (l5, h5) = match V {
            0 => (_mm256_slli_epi16::<4>(qh), _mm256_slli_epi16::<3>(qh)),
            1 => (_mm256_slli_epi16::<2>(qh), _mm256_slli_epi16::<1>(qh)),
            2 => (qh, _mm256_srli_epi16::<1>(qh)),
            _ => (_mm256_srli_epi16::<2>(qh), _mm256_srli_epi16::<3>(qh)),
        };
        let b4 = _mm256_set1_epi8(0x10);
        (
            _mm256_or_si256(lo, _mm256_and_si256(l5, b4)),
            _mm256_or_si256(hi, _mm256_and_si256(h5, b4)),
        )
    }
}

/// Quant vector `Q` (0..4) of the 4- or 5-bit records of `G` groups (quants at `qrow`, fifth
/// bits at `hrow`, groups `gb` bytes apart) times `C` activation rows (`xrow`, `cols` apart),
/// added to `sums`: 32-bit sums by `vpdpbusd` with `VNNI`, `maddubs` pairs in 16-bit lanes
/// otherwise.
///
/// # Safety
/// As [`tile`], with the pointers at one block of the tile's records and activation rows.
#[inline(always)]
unsafe fn nibble_step<
    const F: Tag,
    const VNNI: bool,
    const G: usize,
    const C: usize,
    const Q: usize,
>(
    qrow: *const u8,
    hrow: *const u8,
    gb: usize,
    xrow: *const i8,
    cols: usize,
    sums: &mut [[__m256i; C]; G],
) {
    // SAFETY: as this function's contract.
    unsafe {
        for (g, sg) in sums.iter_mut().enumerate() {
            let q = _mm256_loadu_si256(qrow.add(g * gb + 32 * Q).cast());
            let (lo, hi) = values::<F, Q>(q, hrow.add(g * gb));
            for (c, s) in sg.iter_mut().enumerate() {
                let (xl, xh) = (
                    bcast4(xrow.add(c * cols + 4 * Q)),
                    bcast4(xrow.add(c * cols + 16 + 4 * Q)),
                );
                *s = if VNNI {
                    _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(*s, lo, xl), hi, xh)
                } else {
                    let p = _mm256_add_epi16(
                        _mm256_maddubs_epi16(lo, xl),
                        _mm256_maddubs_epi16(hi, xh),
                    );
                    _mm256_add_epi16(*s, p)
                };
            }
        }
    }
}

/// Widens the 16-bit sums `s16` into `isum` (and zeroes them for the next run).
///
/// # Safety
/// The CPU must support AVX2.
#[inline(always)]
unsafe fn widen<const G: usize, const C: usize>(
    isum: &mut [[__m256i; C]; G],
    s16: &mut [[__m256i; C]; G],
) {
    // SAFETY: register operations only, on a CPU with AVX2 (the caller's contract).
    unsafe {
        let ones = _mm256_set1_epi16(1);
        for (is, sg) in isum.iter_mut().zip(s16.iter_mut()) {
            for (s, p) in is.iter_mut().zip(sg.iter_mut()) {
                *s = _mm256_add_epi32(*s, _mm256_madd_epi16(*p, ones));
                *p = _mm256_setzero_si256();
            }
        }
    }
}

/// Four activation bytes at `p` broadcast to every lane.
///
/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[inline(always)]
unsafe fn bcast4(p: *const i8) -> __m256i {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe { _mm256_set1_epi32(std::ptr::read_unaligned(p.cast::<i32>())) }
}

/// G groups starting at `w` (stride `gb` bytes) times activation rows `i0..i0+C`; writes the
/// eight rows of group g for activation row c to `out[c * ors + 8g ..]`, at most `left` rows
/// counted from the tile's first one (the matrix may end inside the last group). With
/// `prefetch`, each block also asks for the same block of the groups [`PREFETCH_TILES`] tiles
/// ahead: the hardware prefetcher alone leaves memory latency exposed when the weights come
/// from memory (a model's do; a micro-benchmark's may not).
///
/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const F: Tag, const V: bool, const G: usize, const C: usize>(
    w: *const u8,
    gb: usize,
    act: &ActBuf,
    i0: usize,
    out: *mut f32,
    ors: usize,
    left: usize,
    prefetch: bool,
) {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        let (rec, sb, nb, cols) = (record(F), scales(F), act.nb, act.cols);
        let xp = act.qs.as_ptr().add(i0 * cols);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_ps(); C]; G];
        // Past the matrix's end a prefetch is harmless; `wrapping_add` keeps the address
        // arithmetic defined there.
        let ahead = w.wrapping_add(PREFETCH_TILES * G * gb);
        for b in 0..nb {
            if prefetch {
                for g in 0..G {
                    for off in (0..rec).step_by(64) {
                        _mm_prefetch::<_MM_HINT_T0>(
                            ahead.wrapping_add(g * gb + b * rec + off).cast(),
                        );
                    }
                }
            }
            // Integer block sums, started at -k * sum(x) where the weights carry an offset k.
            let mut isum = [[_mm256_setzero_si256(); C]; G];
            let k = offset(F, V);
            if k != 0 {
                for c in 0..C {
                    let s = _mm256_set1_epi32(-k * *act.isum.as_ptr().add(act.at(b, i0 + c)));
                    for is in isum.iter_mut() {
                        is[c] = s;
                    }
                }
            }
            // Pointer arithmetic only (closures would not inherit the target features).
            let xrow = xp.add(b * 32);
            let qrow = w.add(b * rec + sb);
            // Q5_0's and Q5_1's fifth bits, reloaded for each quant vector: held in registers
            // for the four groups of a single row's tile they spilled its sums (Q5_0 1536 x
            // 1536 at m = 1 ran at 26 GMAC/s against Q4_0's 57).
            let hrow = w.add(b * rec + fifth_at(F));
            if F == tag::Q8_0 {
                for v in 0..8 {
                    for (g, is) in isum.iter_mut().enumerate() {
                        let q = _mm256_loadu_si256(qrow.add(g * gb + 32 * v).cast());
                        if V {
                            let u = _mm256_xor_si256(q, _mm256_set1_epi8(-128));
                            for (c, s) in is.iter_mut().enumerate() {
                                *s = _mm256_dpbusd_epi32(*s, u, bcast4(xrow.add(c * cols + 4 * v)));
                            }
                        } else {
                            let u = _mm256_abs_epi8(q);
                            for (c, s) in is.iter_mut().enumerate() {
                                let x = _mm256_sign_epi8(bcast4(xrow.add(c * cols + 4 * v)), q);
                                *s = _mm256_add_epi32(
                                    *s,
                                    _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), ones),
                                );
                            }
                        }
                    }
                }
            } else {
                // The quant vectors one by one, each a step of its own so the fifth bits'
                // shifts are constants (looped, the single row's four-group tile kept `v` in a
                // register and jumped through a table). With AVX2 the steps add `maddubs` pairs
                // in 16-bit lanes: nibble x quant pairs are at most 2 * 15 * 127 in magnitude,
                // so all four steps fit before the one `madd` that widens them; 5-bit values
                // (2 * 31 * 127) fit two, so Q5 widens twice.
                let mut s16 = [[_mm256_setzero_si256(); C]; G];
                let s = if V { &mut isum } else { &mut s16 };
                nibble_step::<F, V, G, C, 0>(qrow, hrow, gb, xrow, cols, s);
                nibble_step::<F, V, G, C, 1>(qrow, hrow, gb, xrow, cols, s);
                if !V && fifth(F) {
                    widen(&mut isum, &mut s16);
                }
                let s = if V { &mut isum } else { &mut s16 };
                nibble_step::<F, V, G, C, 2>(qrow, hrow, gb, xrow, cols, s);
                nibble_step::<F, V, G, C, 3>(qrow, hrow, gb, xrow, cols, s);
                if !V {
                    widen(&mut isum, &mut s16);
                }
            }
            for (g, (acc_g, is)) in acc.iter_mut().zip(&isum).enumerate() {
                let sp = w.add(g * gb + b * rec);
                let dw = _mm256_cvtph_ps(_mm_loadu_si128(sp.cast()));
                let mw = if has_min(F) {
                    _mm256_cvtph_ps(_mm_loadu_si128(sp.add(16).cast()))
                } else {
                    dw
                };
                for (c, (a, s)) in acc_g.iter_mut().zip(is).enumerate() {
                    let k = act.at(b, i0 + c);
                    let dd = _mm256_mul_ps(dw, _mm256_set1_ps(*act.d.as_ptr().add(k)));
                    *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(*s), dd, *a);
                    if has_min(F) {
                        *a = _mm256_fmadd_ps(mw, _mm256_set1_ps(*act.s.as_ptr().add(k)), *a);
                    }
                }
            }
        }
        for (g, acc_g) in acc.iter().enumerate() {
            let n = left.saturating_sub(g * PACK_ROWS).min(PACK_ROWS);
            for (c, a) in acc_g.iter().enumerate() {
                let o = out.add(c * ors + g * PACK_ROWS);
                if n == PACK_ROWS {
                    _mm256_storeu_ps(o, *a);
                } else {
                    let mut t = [0.0f32; PACK_ROWS];
                    _mm256_storeu_ps(t.as_mut_ptr(), *a);
                    std::ptr::copy_nonoverlapping(t.as_ptr(), o, n);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack;
    use crate::pool::ThreadPool;
    use crate::x86::test_support::{random_rows, Lcg, LOWBIT32_FORMATS, Q32_FORMATS};

    /// Every level's build gives the scalar reference's bits for every format, with the
    /// matrix ending inside a group and tiles of every shape (on VNNI cores the pairs of
    /// groups run as 512-bit tiles of 8, 3 and 5 rows).
    #[test]
    fn every_level_matches_scalar() {
        let (rows, cols) = (45, 256);
        let mut rng = Lcg(5);
        let formats = Q32_FORMATS.into_iter().chain(LOWBIT32_FORMATS);
        for (format, kind) in formats.filter(|(f, _)| crate::packs(*f)) {
            let packed = pack(
                format,
                rows,
                cols,
                &random_rows(&mut rng, format, rows, cols),
            )
            .unwrap();
            let w = MatRef::packed(format, rows, cols, &packed).unwrap();
            for m in [1, 2, 5, 8, 11, 19] {
                let x: Vec<f32> = (0..m * cols).map(|_| rng.next()).collect();
                let mut act = ActBuf::default();
                act.prepare(kind, &x, m, cols, CpuLevel::Scalar, &ThreadPool::new(1));
                let scalar: Vec<u32> = (0..m * rows)
                    .map(|k| {
                        crate::packed::dot(format, &packed, cols, k % rows, &act, k / rows)
                            .to_bits()
                    })
                    .collect();
                for level in CpuLevel::supported()
                    .into_iter()
                    .filter(|l| *l >= CpuLevel::Avx2)
                {
                    let mut out = vec![f32::NAN; m * rows];
                    // SAFETY: the level is supported; `out` holds m x rows values, and the
                    // packed matrix reaches this module's tiles.
                    unsafe {
                        crate::x86::compute_rows(level, &w, &x, &act, 0..rows, out.as_mut_ptr())
                    }
                    assert_eq!(
                        out.iter().map(|v| v.to_bits()).collect::<Vec<u32>>(),
                        scalar,
                        "{format} {level} m={m}"
                    );
                }
            }
        }
    }
}
