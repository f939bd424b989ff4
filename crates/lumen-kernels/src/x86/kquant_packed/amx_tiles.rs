//! The packed K-quants in AMX tiles: sixteen activation rows by sixteen weight rows (one
//! group) by a whole super-block in eight `tdpbsud`.
//!
//! A sub-block's scale is folded into its values before the tiles see them: `sc * q` (at most
//! 63 * 31 for Q4_K and Q5_K, 128 * 63 for Q6_K's signed scales and offset values) is split
//! into a low byte (unsigned) and a high byte (unsigned, signed for Q6_K), and the super-block
//! is two 64-row planes of them in the packed layout's own shape: one weight row per 32-bit
//! lane, four consecutive values in its bytes, which is an AMX `B` tile as it stands. Sixteen
//! activation rows' bytes, read in place from the Q8_K buffer, are the `A` tile. Then
//! `sum(a * sc * q) = sum(a * low) + 256 * sum(a * high)` over the whole super-block is two
//! tile accumulators, exactly the scaled integer sum the 512-bit tile builds one sub-block at
//! a time with `vpmulld`, and the float update is that tile's ([`Block::finish`]): the output
//! has the same bits at every level. The planes are built once per chunk of activation rows
//! (eight tiles share them); rows that do not fill a tile of sixteen take the 512-bit tiles.

use super::{q45_values, q6_values, Block, Lanes};
use crate::act::ActBuf;
use crate::kpacked::KPACK_ROWS;
use crate::x86::amx::{self, TileConfig};
use crate::x86::tag::{self, Tag};

/// Activation rows per AMX tile (a tile's sixteen rows).
pub(super) const ROWS: usize = 16;

/// Activation rows per chunk on this path: eight tiles share each super-block's planes.
pub(super) const M_AMX: usize = 128;

/// Vectors of one super-block's planes: 64 rows of low bytes, then 64 of high bytes.
pub(super) const PLANES: usize = 128;

/// Every tile is sixteen rows of 64 bytes: `tmm0`, `tmm1` the low and high planes' i32 sums
/// of one tile of activation rows (activation row by weight row), `tmm6`, `tmm7` those of a
/// second; `tmm2`, `tmm3` 64 values of each tile's sixteen activation rows; `tmm4`, `tmm5` the
/// same values' rows of the low and high planes.
pub(super) fn config() -> TileConfig {
    TileConfig::new([(ROWS as u8, 64); 8])
}

/// Writes super-block `rp`'s scaled values as planes: row `g` (values `4g..4g + 4`) of the low
/// plane at `planes[g]`, of the high one at `planes[64 + g]`.
///
/// # Safety
/// `rp` is a whole record of format `F` whose scales `blk` holds; `planes` is valid for
/// [`PLANES`] vectors; the CPU has `L`'s features.
#[inline(always)]
pub(super) unsafe fn unpack_scaled<L: Lanes, const F: Tag>(
    rp: *const u8,
    blk: &Block<L>,
    planes: *mut L::I,
) {
    // SAFETY: as this function's contract; every index is below 64.
    unsafe {
        let subs = if F == tag::Q6_K { 16 } else { 8 };
        // Each lane's scale in both of its 16-bit halves.
        let mut scw = [L::zero(); 16];
        for (w, sc) in scw.iter_mut().zip(blk.sc.iter()).take(subs) {
            *w = L::or(L::and(*sc, L::splat(0xFFFF)), L::slli32::<16>(*sc));
        }
        if F == tag::Q6_K {
            for n in 0..2 {
                for u in 0..8 {
                    // Piece k holds values 128n + 32k + 4u..: row 32n + 8k + u, sub-block
                    // 8n + 2k + u / 4.
                    for (k, q) in q6_values::<L>(rp, 0, n, u).into_iter().enumerate() {
                        let g = 32 * n + 8 * k + u;
                        put::<L>(planes, g, q, scw[g / 4]);
                    }
                }
            }
        } else {
            for c4 in 0..4 {
                for u in 0..8 {
                    // Low nibbles: values 64c4 + 4u.., high ones 32 further.
                    let (lo, hi) = q45_values::<L, F>(rp, 0, c4, u);
                    put::<L>(planes, 16 * c4 + u, lo, scw[2 * c4]);
                    put::<L>(planes, 16 * c4 + 8 + u, hi, scw[2 * c4 + 1]);
                }
            }
        }
    }
}

/// Row `g` of both planes: the values `q` times the scale `sc` (in both 16-bit halves of its
/// lane), split into low and high bytes. A function, not a closure: closures are compiled
/// without the caller's target features.
///
/// # Safety
/// `planes` is valid for [`PLANES`] vectors and `g < 64`; the CPU has `L`'s features.
#[inline(always)]
unsafe fn put<L: Lanes>(planes: *mut L::I, g: usize, q: L::I, sc: L::I) {
    // SAFETY: as this function's contract.
    unsafe {
        let bytes = L::splat(0x00FF_00FF);
        let even = L::mullo16(L::and(q, bytes), sc);
        let odd = L::mullo16(L::srli16::<8>(q), sc);
        *planes.add(g) = L::or(L::and(even, bytes), L::slli16::<8>(odd));
        *planes.add(64 + g) = L::or(
            L::and(L::srli16::<8>(even), bytes),
            L::and(odd, L::splat(0xFF00_FF00u32 as i32)),
        );
    }
}

/// The planes' i32 sums of up to two tiles, as `tilestored` writes them: tile `t`'s low sums
/// at `[2t]`, high at `[2t + 1]`; row = activation row, lane = weight row.
type Sums = [[i32; ROWS * KPACK_ROWS]; 4];

/// Two [`Sums`], one per pair of tiles in flight, aligned for the tile stores.
#[repr(C, align(64))]
struct SumsPair([Sums; 2]);

/// Super-block `b` of one group times activation rows `i0..i0 + 16 * n` (`n` whole tiles):
/// adds each row's float update to `acc[(i - i0) * 16 ..]` (to zero if `first`), as
/// [`Block::tile`] does.
///
/// Tiles go in pairs that share each load of the planes (their four accumulators also keep
/// the matrix unit busy where one tile's two chains would wait on each other). A pair's float
/// updates are computed while the next pair's products run: the vector work and the matrix
/// unit overlap instead of taking turns.
///
/// # Safety
/// Tiles configured by [`config`] on this thread; `L` is the 512-bit lanes (sixteen per
/// register); `planes` holds the super-block as [`unpack_scaled`] wrote it; `act` holds rows
/// `i0..i0 + 16 * n`; `acc` is valid for `16 * n` rows of sixteen floats.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn tiles<const F: Tag, L: Lanes>(
    blk: &Block<L>,
    planes: *const L::I,
    act: &ActBuf,
    b: usize,
    i0: usize,
    n: usize,
    acc: *mut f32,
    first: bool,
) {
    debug_assert_eq!(L::N, KPACK_ROWS);
    // SAFETY: as this function's contract; every tile row read lies inside `planes` or the
    // activation rows `i0..i0 + 16 * n` of super-block `b`, and each pair's sums are read
    // only after its stores and before the buffer is stored to again.
    unsafe {
        let cols = act.cols;
        let (lo, hi) = (planes.cast::<u8>(), planes.add(64).cast::<u8>());
        // Written by the tile stores before any read (zeroing them cost 3 %).
        let mut sums = std::mem::MaybeUninit::<SumsPair>::uninit();
        let sums = sums.as_mut_ptr().cast::<Sums>();
        let mut pending: Option<(usize, usize, *const Sums)> = None;
        let (mut t, mut k) = (0, 0);
        // One pass more than there are pairs: the last finishes what the one before stored.
        loop {
            let pair = t + 2 <= n;
            let i = i0 + ROWS * t;
            if t < n {
                let xp = act.qs.as_ptr().cast::<u8>().add(i * cols + b * 256);
                amx::zero::<0>();
                amx::zero::<1>();
                if pair {
                    amx::zero::<6>();
                    amx::zero::<7>();
                }
                for j in 0..4 {
                    amx::load::<4>(lo.add(1024 * j), 64);
                    amx::load::<5>(hi.add(1024 * j), 64);
                    amx::load::<2>(xp.add(64 * j), cols);
                    dot_planes::<F, 0, 1, 2>();
                    if pair {
                        amx::load::<3>(xp.add(ROWS * cols + 64 * j), cols);
                        dot_planes::<F, 6, 7, 3>();
                    }
                }
            }
            if let Some((pi, pn, ps)) = pending {
                let a = acc.add((pi - i0) * KPACK_ROWS);
                finish_rows::<F, L>(blk, &*ps, act, b, pi, pn, a, first);
            }
            if t == n {
                break;
            }
            let sp = sums.add(k).cast::<[i32; ROWS * KPACK_ROWS]>();
            amx::store::<0>(sp.cast(), 64);
            amx::store::<1>(sp.add(1).cast(), 64);
            if pair {
                amx::store::<6>(sp.add(2).cast(), 64);
                amx::store::<7>(sp.add(3).cast(), 64);
            }
            let tn = if pair { 2 } else { 1 };
            pending = Some((i, ROWS * tn, sums.add(k)));
            (t, k) = (t + tn, k ^ 1);
        }
    }
}

/// Rows `i..i + n` of one or two tiles' sums: `low + 256 * high` is the scaled integer sum,
/// then the float update ([`Block::finish`]) goes to `acc[c * 16 ..]` (to zero if `first`).
///
/// # Safety
/// `act` holds the rows, `acc` is valid for `n` rows of sixteen floats; the CPU has `L`'s
/// features.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn finish_rows<const F: Tag, L: Lanes>(
    blk: &Block<L>,
    sums: &Sums,
    act: &ActBuf,
    b: usize,
    i: usize,
    n: usize,
    acc: *mut f32,
    first: bool,
) {
    // SAFETY: as this function's contract; `sums` holds 2 * n / 16 planes of sixteen rows.
    unsafe {
        for c in 0..n {
            let (t, r) = (c / ROWS, c % ROWS);
            let l = L::load(sums[2 * t].as_ptr().add(KPACK_ROWS * r).cast());
            let h = L::load(sums[2 * t + 1].as_ptr().add(KPACK_ROWS * r).cast());
            let si = L::add(l, L::slli32::<8>(h));
            blk.f
                .finish::<F>(si, act, b, i + c, acc.add(c * KPACK_ROWS), first);
        }
    }
}

/// `LO += A . low plane (tmm4)`, `HI += A . high plane (tmm5)`, the high bytes signed for
/// Q6_K.
///
/// # Safety
/// Tiles configured by [`config`] and loaded.
#[inline(always)]
unsafe fn dot_planes<const F: Tag, const LO: u8, const HI: u8, const A: u8>() {
    // SAFETY: as this function's contract.
    unsafe {
        amx::dot_su::<LO, A, 4>();
        if F == tag::Q6_K {
            amx::dot_ss::<HI, A, 5>();
        } else {
            amx::dot_su::<HI, A, 5>();
        }
    }
}
