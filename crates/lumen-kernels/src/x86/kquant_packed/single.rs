//! One activation row against a whole record: the decode path of one sequence on AVX2.

use super::lanes::Lanes;
use super::tag::{self, Tag};
use super::{q45_values, q6_values, Block};
use crate::act::ActBuf;

/// Super-block `b` (record `rp`) of all sixteen rows of a group times the one activation row
/// `i`, in two register halves ([`Lanes::FOLD`] lanes of eight rows): adds the float updates to
/// `acc[..16]`.
///
/// Decoding one sequence streams every weight from memory once. The tile path walks a
/// record a half at a time (the first 32 bytes of every cache line, then back for the rest)
/// with a `vpmulld` per sub-block; here each line is used whole where it is loaded, the
/// activations' broadcasts serve both halves and the scales are folded in. With Q6_K's
/// pieces in reading order ([`crate::kpacked`]) a Q6_K stream from memory went from 10 to
/// 13 GB/s on one Zen 3 core (the ggml layout's 14), and to 15.5 without software prefetch
/// ([`Lanes::PREFETCH_RECORDS`]; `cargo bench -p lumen-kernels --bench matmul`, m = 1).
///
/// # Safety
/// `rp` is a whole record of format `F`, `lo` and `hi` its blocks of lanes `0..8` and `8..16`,
/// `act` holds row `i`, `acc` is valid for 16 floats; the CPU must have `L`'s features.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn single<const F: Tag, L: Lanes>(
    lo: &Block<L>,
    hi: &Block<L>,
    rp: *const u8,
    act: &ActBuf,
    b: usize,
    i: usize,
    acc: *mut f32,
) {
    // SAFETY: as this function's contract.
    unsafe {
        let xp = act.qs.as_ptr().cast::<u8>().add(i * act.cols + b * 256);
        let (mut s0, mut s1) = (L::zero(), L::zero());
        if F == tag::Q6_K {
            for n in 0..2 {
                for u in 0..8 {
                    let q0 = q6_values::<L>(rp, 0, n, u);
                    let q1 = q6_values::<L>(rp, L::N, n, u);
                    let x = xp.add(128 * n + 4 * u);
                    for k in 0..4 {
                        let xk = L::bcast(x.add(32 * k));
                        let sub = 8 * n + u / 4 + 2 * k;
                        s0 = L::dot4_scaled(s0, q0[k], xk, lo.sc16[sub]);
                        s1 = L::dot4_scaled(s1, q1[k], xk, hi.sc16[sub]);
                    }
                }
            }
        } else {
            for c4 in 0..4 {
                for u in 0..8 {
                    let (l0, h0) = q45_values::<L, F>(rp, 0, c4, u);
                    let (l1, h1) = q45_values::<L, F>(rp, L::N, c4, u);
                    let x = xp.add(64 * c4 + 4 * u);
                    let (xl, xh) = (L::bcast(x), L::bcast(x.add(32)));
                    s0 = L::dot4_scaled(s0, l0, xl, lo.sc16[2 * c4]);
                    s0 = L::dot4_scaled(s0, h0, xh, lo.sc16[2 * c4 + 1]);
                    s1 = L::dot4_scaled(s1, l1, xl, hi.sc16[2 * c4]);
                    s1 = L::dot4_scaled(s1, h1, xh, hi.sc16[2 * c4 + 1]);
                }
            }
        }
        lo.finish::<F>(s0, act, b, i, acc, false);
        hi.finish::<F>(s1, act, b, i, acc.add(L::N), false);
    }
}
