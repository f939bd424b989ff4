//! AVX2 tiles for the 32-value block formats (Q4_0, Q4_1, Q8_0, Q5_0, Q5_1, IQ4_NL) against
//! Q8_0/Q8_1 activations.
//!
//! The arithmetic is ggml's AVX2 `vec_dot_q4_0_q8_0` / `_q4_1_q8_1` / `_q8_0_q8_0` /
//! `_q5_0_q8_0` / `_q5_1_q8_1` / `_iq4_nl_q8_0`, so every output equals llama.cpp's bit for
//! bit (and the scalar reference in [`crate::dot`]): each
//! (weight row, activation row) pair keeps an eight-lane f32 accumulator; per block, lane `l`
//! gets the exact integer sum of elements `4l..4l+4` (`maddubs` + `madd`), converted to f32 and
//! folded in with one FMA by `d_w * d_x`; Q4_1's and Q5_1's min term accumulates on the side;
//! the lanes are summed once per row at the end like `hsum_float_8`. IQ4_NL, like ggml, keeps
//! a second accumulator for odd blocks (added lane-wise before the sum) and adds an unpaired
//! last block after the sum.
//!
//! Per format only the unpacking differs: Q5_0/Q5_1 or their fifth bits into the nibbles
//! (ggml's `bytes_from_bits_32`), IQ4_NL looks its nibbles up in `kvalues_iq4nl` (`pshufb`).
//!
//! A tile is R weight rows by C activation rows: each weight block is unpacked once per tile
//! and each activation block loaded once, so a batch of C rows reads the weights once.

use std::arch::x86_64::*;
use std::ops::Range;

use super::block32_unpack::{block_bytes, has_min, load_w, load_w_unsigned, vnni_offset};
use super::tag::{self, Tag};
use super::M_CHUNK;
use crate::act::ActBuf;
use crate::cpu::CpuLevel;
use crate::ggml_math::x86::hsum8;
use crate::matmul::MatRef;

/// How many tiles ahead [`tile`] prefetches its weights.
const PREFETCH_TILES: usize = 2;

/// Computes columns `r` of every output row for a matrix in a 32-value block format.
///
/// # Safety
/// As [`super::compute_rows`].
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
            rows_with::<F, true>(w, act, r, out)
        } else {
            rows_with::<F, false>(w, act, r, out)
        }
    }
}

/// [`rows`] with the integer dots done by `vpdpbusd` (`V`, AVX512-VNNI on 256-bit registers)
/// or by `maddubs` + `madd` (plain AVX2). Both give the same exact lane sums.
///
/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
unsafe fn rows_with<const F: Tag, const V: bool>(
    w: &MatRef,
    act: &ActBuf,
    r: Range<usize>,
    out: *mut f32,
) {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        let (rb, base, ors, m) = (w.row_bytes(), w.data().as_ptr(), w.rows(), act.m);
        if m == 1 {
            // Decode: stream the weight rows eight at a time. Each tile prefetches the rows two
            // tiles ahead; the first two tiles of this range are requested here.
            let first = base.add(r.start * rb);
            let lead = (PREFETCH_TILES * 8).min(r.len()) * rb;
            for off in (0..lead).step_by(64) {
                _mm_prefetch::<_MM_HINT_T0>(first.add(off).cast());
            }
            let mut j = r.start;
            while j + 8 <= r.end {
                tile::<F, V, 8, 1>(base.add(j * rb), rb, act, 0, out.add(j), ors, true);
                j += 8;
            }
            while j < r.end {
                tile::<F, V, 1, 1>(base.add(j * rb), rb, act, 0, out.add(j), ors, true);
                j += 1;
            }
            return;
        }
        batch::<F, V, BATCH_R, BATCH_C>(w, act, r, out);
    }
}

/// Tile shape for several activation rows: weight rows x activation rows. Measured on SmolLM2
/// (pp512 and 32-sequence decode, VNNI and AVX2 builds): 4 x 4 beat 4 x 2, 4 x 3, 3 x 4, 2 x 4,
/// 6 x 2, 8 x 2, 8 x 4, 4 x 6 and 4 x 8 (larger tiles spill their accumulators).
const BATCH_R: usize = 4;
const BATCH_C: usize = 4;

/// Computes columns `r` of `m > 1` output rows with BR x BC tiles.
///
/// # Safety
/// As [`rows`].
unsafe fn batch<const F: Tag, const V: bool, const BR: usize, const BC: usize>(
    w: &MatRef,
    act: &ActBuf,
    r: Range<usize>,
    out: *mut f32,
) {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        let (rb, base, ors, m) = (w.row_bytes(), w.data().as_ptr(), w.rows(), act.m);
        let mut i0 = 0;
        while i0 < m {
            let i1 = m.min(i0 + M_CHUNK);
            let mut j = r.start;
            while j < r.end {
                let wp = base.add(j * rb);
                let full = j + BR <= r.end;
                let mut i = i0;
                while i < i1 {
                    let o = out.add(i * ors + j);
                    // The weight tile stays in cache across the activation tiles: the first one
                    // prefetches the tiles ahead for all of them.
                    let pf = i == i0;
                    // Leftover rows get a tile of their own height, not one-row tiles.
                    let n = (i1 - i).min(BC);
                    if full {
                        tile_n::<F, V, BR>(n, wp, rb, act, i, o, ors, pf);
                    } else {
                        tile_n::<F, V, 1>(n, wp, rb, act, i, o, ors, pf);
                    }
                    i += n;
                }
                j += if full { BR } else { 1 };
            }
            i0 = i1;
        }
    }
}

/// [`tile`] for `n` (1..=4) activation rows.
///
/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_n<const F: Tag, const V: bool, const R: usize>(
    n: usize,
    w: *const u8,
    rb: usize,
    act: &ActBuf,
    i0: usize,
    out: *mut f32,
    ors: usize,
    prefetch: bool,
) {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        const { assert!(BATCH_C == 4) };
        match n {
            4 => tile::<F, V, R, 4>(w, rb, act, i0, out, ors, prefetch),
            3 => tile::<F, V, R, 3>(w, rb, act, i0, out, ors, prefetch),
            2 => tile::<F, V, R, 2>(w, rb, act, i0, out, ors, prefetch),
            _ => tile::<F, V, R, 1>(w, rb, act, i0, out, ors, prefetch),
        }
    }
}

/// R weight rows starting at `w` (stride `rb`, R <= 8) times activation rows `i0..i0+C`;
/// writes pair (r, c) to `out[c * ors + r]`. `V` picks the VNNI build of the same body.
///
/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[inline(always)]
unsafe fn tile<const F: Tag, const V: bool, const R: usize, const C: usize>(
    w: *const u8,
    rb: usize,
    act: &ActBuf,
    i0: usize,
    out: *mut f32,
    ors: usize,
    prefetch: bool,
) {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        if V {
            tile_vnni::<F, R, C>(w, rb, act, i0, out, ors, prefetch)
        } else {
            tile_avx2::<F, R, C>(w, rb, act, i0, out, ors, prefetch)
        }
    }
}

/// [`tile_body`] compiled for AVX2.
///
/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_avx2<const F: Tag, const R: usize, const C: usize>(
    w: *const u8,
    rb: usize,
    act: &ActBuf,
    i0: usize,
    out: *mut f32,
    ors: usize,
    prefetch: bool,
) {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe { tile_body::<F, false, R, C>(w, rb, act, i0, out, ors, prefetch) }
}

/// [`tile_body`] compiled for AVX2 plus AVX512-VNNI on 256-bit registers.
///
/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
unsafe fn tile_vnni<const F: Tag, const R: usize, const C: usize>(
    w: *const u8,
    rb: usize,
    act: &ActBuf,
    i0: usize,
    out: *mut f32,
    ors: usize,
    prefetch: bool,
) {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe { tile_body::<F, true, R, C>(w, rb, act, i0, out, ors, prefetch) }
}

/// Scales of block `b` for [`tile_body`]: `d_w * d_x` of every pair into `dd[b % 2]` (as
/// `[c * 8 + r]`), and Q4_1's or Q5_1's min term of block `b` added to `summs`.
///
/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[inline(always)]
unsafe fn block_scales<const F: Tag, const R: usize, const C: usize>(
    w: *const u8,
    rb: usize,
    act: &ActBuf,
    i0: usize,
    b: usize,
    dd: &mut [[f32; 64]; 2],
    summs: &mut [__m256; C],
) {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        // The first word of each row's block holds d and m (Q4_1) as two f16 (Q4_0/Q8_0: d and two
        // quants): move the d halves to qwords 0,1 and the m halves to qwords 2,3.
        let shuf = _mm256_setr_epi8(
            0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15, 0, 1, 4, 5, 8, 9, 12, 13, 2, 3,
            6, 7, 10, 11, 14, 15,
        );
        let bp = w.add(b * block_bytes(F));
        let mut h = [0i32; 8];
        for (r, hv) in h.iter_mut().enumerate().take(R) {
            *hv = std::ptr::read_unaligned(bp.add(r * rb).cast::<i32>());
        }
        let g = _mm256_setr_epi32(h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]);
        let g = _mm256_permute4x64_epi64::<0xD8>(_mm256_shuffle_epi8(g, shuf));
        let dw = _mm256_cvtph_ps(_mm256_castsi256_si128(g));
        let at = i0 + b * act.stride;
        let buf = dd[b & 1].as_mut_ptr();
        for c in 0..C {
            let dx = _mm256_broadcast_ss(&*act.d.as_ptr().add(at + c));
            _mm256_storeu_ps(buf.add(c * 8), _mm256_mul_ps(dw, dx));
        }
        if has_min(F) {
            let mw = _mm256_cvtph_ps(_mm256_extracti128_si256::<1>(g));
            for (c, sm) in summs.iter_mut().enumerate() {
                let sx = _mm256_broadcast_ss(&*act.s.as_ptr().add(at + c));
                *sm = _mm256_fmadd_ps(mw, sx, *sm);
            }
        }
    }
}

/// # Safety
/// The CPU must support the instructions this code is compiled for (AVX2, FMA and F16C,
/// plus any AVX-512 feature its `#[target_feature]`, or its caller's, names), and every
/// pointer argument must be valid for the reads and writes described above.
#[inline(always)]
unsafe fn tile_body<const F: Tag, const V: bool, const R: usize, const C: usize>(
    w: *const u8,
    rb: usize,
    act: &ActBuf,
    i0: usize,
    out: *mut f32,
    ors: usize,
    prefetch: bool,
) {
    // SAFETY: the caller guarantees the CPU features and pointer ranges of this function's
    // `# Safety` section; every intrinsic, load and store below relies on exactly those.
    unsafe {
        // dd holds eight rows per activation row, for at most eight activation rows.
        const { assert!(R <= 8 && C <= 8) };
        let bb = block_bytes(F);
        let (nb, cols) = (act.nb, act.cols);
        let ones = _mm256_set1_epi16(1);
        let m4 = _mm256_set1_epi8(0x0F);
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        // IQ4_NL: odd blocks' accumulators, and an unpaired last block's integer sums.
        let iq4 = F == tag::IQ4_NL;
        let mut acc_odd = [[_mm256_setzero_ps(); C]; R];
        let mut tail = [[0i32; C]; R];
        // Q4_1's and Q5_1's min term, one lane per weight row.
        let mut summs = [_mm256_setzero_ps(); C];
        // d_w * d_x of every pair, as dd[c * 8 + r], read back by broadcasting loads (a load
        // instead of a shuffle and a broadcast on the vector ports). Two buffers: block b + 1's
        // scales are stored while block b runs, so its loads never wait on a fresh store.
        let mut dd = [[0.0f32; 64]; 2];
        let xp = act.qs.as_ptr().add(i0 * cols);
        if nb > 0 {
            block_scales::<F, R, C>(w, rb, act, i0, 0, &mut dd, &mut summs);
        }
        // Weight rows are contiguous, so the tile PREFETCH_TILES ahead is one contiguous region.
        // Asking for its cache lines a few per block hides the memory latency the hardware
        // prefetcher leaves (single-row decode is bound by it, not by arithmetic).
        let ahead = w.add(PREFETCH_TILES * R * rb);
        let lines = (R * rb).div_ceil(64);
        let lines_per_block = lines.div_ceil(nb.max(1));
        for b in 0..nb {
            let bp = w.add(b * bb);
            if prefetch {
                for l in b * lines_per_block..((b + 1) * lines_per_block).min(lines) {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.add(l * 64).cast());
                }
            }
            if b + 1 < nb {
                block_scales::<F, R, C>(w, rb, act, i0, b + 1, &mut dd, &mut summs);
            }
            // Make the loads below read memory rather than forward the values just computed.
            std::hint::black_box(dd.as_mut_ptr());
            let ddb = dd[b & 1].as_ptr();
            let xb = |c: usize| xp.add(c * cols + b * 32).cast::<__m256i>();
            // VNNI, Q4_0/Q8_0: `vpdpbusd` wants unsigned weights, so it multiplies `w + k` (k = 8
            // or 128) and starts from `-k * (x[4l] + .. + x[4l+3])`: the same exact lane sums as
            // the sign trick, without a sign instruction per pair.
            let mut start = [_mm256_setzero_si256(); C];
            if V && !has_min(F) {
                let k = _mm256_set1_epi8(vnni_offset(F));
                for (c, s) in start.iter_mut().enumerate() {
                    let kx =
                        _mm256_dpbusd_epi32(_mm256_setzero_si256(), k, _mm256_loadu_si256(xb(c)));
                    *s = _mm256_sub_epi32(_mm256_setzero_si256(), kx);
                }
            }
            let odd = iq4 && b % 2 == 1;
            let unpaired = iq4 && b + 1 == nb && nb % 2 == 1;
            for r in 0..R {
                let (wu, ws) = if V {
                    (load_w_unsigned::<F>(bp.add(r * rb), m4), m4)
                } else {
                    load_w::<F>(bp.add(r * rb), m4)
                };
                for c in 0..C {
                    let xq = _mm256_loadu_si256(xb(c));
                    // Lane l: the exact sum of products 4l..4l+4 (no i16 saturation: |w| <= 128, |x| <= 127).
                    let p = if V {
                        _mm256_dpbusd_epi32(start[c], wu, xq)
                    } else {
                        let xv = if has_min(F) {
                            xq
                        } else {
                            _mm256_sign_epi8(xq, ws)
                        };
                        _mm256_madd_epi16(_mm256_maddubs_epi16(wu, xv), ones)
                    };
                    if unpaired {
                        tail[r][c] = super::hsum_epi32(p);
                        continue;
                    }
                    let a = if odd {
                        &mut acc_odd[r][c]
                    } else {
                        &mut acc[r][c]
                    };
                    *a = _mm256_fmadd_ps(
                        _mm256_cvtepi32_ps(p),
                        _mm256_broadcast_ss(&*ddb.add(c * 8 + r)),
                        *a,
                    );
                }
            }
        }
        for (c, sm) in summs.iter().enumerate() {
            let mut s = [0.0f32; 8];
            _mm256_storeu_ps(s.as_mut_ptr(), *sm);
            for r in 0..R {
                let h = if iq4 {
                    let h = hsum8(_mm256_add_ps(acc[r][c], acc_odd[r][c]));
                    if nb % 2 == 1 {
                        // ggml's scalar tail for the unpaired block, `sumf += d * sumi`.
                        dd[(nb - 1) & 1][c * 8 + r].mul_add(tail[r][c] as f32, h)
                    } else {
                        h
                    }
                } else {
                    hsum8(acc[r][c])
                };
                *out.add(c * ors + r) = if has_min(F) { h + s[r] } else { h };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::ThreadPool;
    use crate::x86::test_support::{random_rows, Lcg, LOWBIT32_FORMATS, Q32_FORMATS};
    use crate::WeightFormat;

    /// Every level's build (plain AVX2, VNNI) gives the scalar reference's bits for every
    /// format and tile shape, with an even and an odd number of blocks per row (IQ4_NL
    /// pairs blocks and treats an unpaired last one apart).
    #[test]
    fn every_level_matches_scalar() {
        let rows = 21;
        let mut rng = Lcg(5);
        for (cols, (format, kind)) in [256, 288].into_iter().flat_map(|c| {
            Q32_FORMATS
                .into_iter()
                .chain(LOWBIT32_FORMATS)
                .map(move |f| (c, f))
        }) {
            let data = random_rows(&mut rng, format, rows, cols);
            let w = MatRef::new(format, rows, cols, &data).unwrap();
            for m in [1, 2, 5] {
                let x: Vec<f32> = (0..m * cols).map(|_| rng.next()).collect();
                let mut act = ActBuf::default();
                act.prepare(kind, &x, m, cols, CpuLevel::Scalar, &ThreadPool::new(1));
                let want: Vec<u32> = (0..m * rows)
                    .map(|k| {
                        crate::dot::dot(
                            format,
                            w.row_data(k % rows),
                            &x[k / rows * cols..][..cols],
                            &act,
                            k / rows,
                        )
                        .to_bits()
                    })
                    .collect();
                for level in CpuLevel::supported()
                    .into_iter()
                    .filter(|l| *l >= CpuLevel::Avx2)
                {
                    let mut out = vec![f32::NAN; m * rows];
                    // SAFETY: the level is supported; `out` holds m x rows values.
                    unsafe {
                        match format {
                            WeightFormat::Q4_0 => super::rows::<{ tag::Q4_0 }>(
                                level,
                                &w,
                                &act,
                                0..rows,
                                out.as_mut_ptr(),
                            ),
                            WeightFormat::Q4_1 => super::rows::<{ tag::Q4_1 }>(
                                level,
                                &w,
                                &act,
                                0..rows,
                                out.as_mut_ptr(),
                            ),
                            WeightFormat::Q5_0 => super::rows::<{ tag::Q5_0 }>(
                                level,
                                &w,
                                &act,
                                0..rows,
                                out.as_mut_ptr(),
                            ),
                            WeightFormat::Q5_1 => super::rows::<{ tag::Q5_1 }>(
                                level,
                                &w,
                                &act,
                                0..rows,
                                out.as_mut_ptr(),
                            ),
                            WeightFormat::IQ4_NL => super::rows::<{ tag::IQ4_NL }>(
                                level,
                                &w,
                                &act,
                                0..rows,
                                out.as_mut_ptr(),
                            ),
                            _ => super::rows::<{ tag::Q8_0 }>(
                                level,
                                &w,
                                &act,
                                0..rows,
                                out.as_mut_ptr(),
                            ),
                        }
                    }
                    assert_eq!(
                        out.iter().map(|v| v.to_bits()).collect::<Vec<u32>>(),
                        want,
                        "{format} {level} m={m} cols={cols}"
                    );
                }
            }
        }
    }
}
