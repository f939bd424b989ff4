//! A tile's integer sums over one super-block: 16-bit runs with the scales folded into
//! `madd` on AVX2 (`word_sums`), 32-bit `vpdpbusd` sums scaled lane-wise with VNNI
//! (`dword_sums`). Both give the exact sums of the ggml layout's tiles.

use super::lanes::Lanes;
use super::tag::{self, Tag};
use super::Block;

impl<L: Lanes> Block<L> {
    /// The scaled integer sums of activation rows `xp`, `xp + cols`, .. (`R` of them) with
    /// [`Lanes::FOLD`] lanes (AVX2, where a four-product sum is `maddubs` + `madd` anyway):
    /// the two-product sums of `maddubs` add up in 16-bit lanes over a run of pieces of one
    /// sub-block, and one `madd` with the scale's word pair widens and scales the run. A run
    /// is as long as its values keep the 16-bit sum exact (activations down to -128): Q4_K
    /// eight pieces (8 * 2 * 15 * 128 = 30720), Q5_K four (4 * 2 * 31 * 128 = 31744), Q6_K
    /// two (2 * 2 * 63 * 128 = 32256). Per piece that is one multiply plus a share of one,
    /// where summing each piece to 32 bits took two.
    ///
    /// # Safety
    /// As [`Block::tile`], with `xp` the first row's bytes of super-block `b`.
    #[inline(always)]
    pub(super) unsafe fn word_sums<const F: Tag, const R: usize, const BUF: bool>(
        &self,
        rp: *const u8,
        lane0: usize,
        buf: *const L::I,
        xp: *const u8,
        cols: usize,
    ) -> [L::I; R] {
        // SAFETY: as this function's contract.
        unsafe {
            let mut sumi = [L::zero(); R];
            if F != tag::Q6_K {
                let run = if F == tag::Q4_K { 8 } else { 4 };
                for c4 in 0..4 {
                    let (mut lo16, mut hi16) = ([L::zero(); R], [L::zero(); R]);
                    for u in 0..8 {
                        let (lo, hi) = Self::q45::<F, BUF>(rp, lane0, buf, c4, u);
                        for c in 0..R {
                            let x = xp.add(c * cols + 64 * c4 + 4 * u);
                            lo16[c] = L::dot2_words(lo16[c], lo, L::bcast(x));
                            hi16[c] = L::dot2_words(hi16[c], hi, L::bcast(x.add(32)));
                        }
                        if (u + 1) % run == 0 {
                            for c in 0..R {
                                sumi[c] = L::dot2(sumi[c], lo16[c], self.sc16[2 * c4]);
                                sumi[c] = L::dot2(sumi[c], hi16[c], self.sc16[2 * c4 + 1]);
                                (lo16[c], hi16[c]) = (L::zero(), L::zero());
                            }
                        }
                    }
                }
            } else {
                // Pieces u, u + 1 of sub-blocks 8n + h + {0, 2, 4, 6} (ggml's q1..q4).
                for n in 0..2 {
                    for u in (0..8).step_by(2) {
                        let qa = Self::q6::<BUF>(rp, lane0, buf, n, u);
                        let qb = Self::q6::<BUF>(rp, lane0, buf, n, u + 1);
                        for k in 0..4 {
                            let s = self.sc16[8 * n + u / 4 + 2 * k];
                            for (c, si) in sumi.iter_mut().enumerate() {
                                let xk = xp.add(c * cols + 128 * n + 4 * u + 32 * k);
                                let w = L::dot2_words(L::zero(), qa[k], L::bcast(xk));
                                let w = L::dot2_words(w, qb[k], L::bcast(xk.add(4)));
                                *si = L::dot2(*si, w, s);
                            }
                        }
                    }
                }
            }
            sumi
        }
    }

    /// [`Block::word_sums`] for lanes without [`Lanes::FOLD`] (AVX512-VNNI): each
    /// sub-block summed to 32 bits by `vpdpbusd`, then scaled lane-wise (`vpmulld`).
    ///
    /// # Safety
    /// As [`Block::word_sums`].
    #[inline(always)]
    pub(super) unsafe fn dword_sums<const F: Tag, const R: usize, const BUF: bool>(
        &self,
        rp: *const u8,
        lane0: usize,
        buf: *const L::I,
        xp: *const u8,
        cols: usize,
    ) -> [L::I; R] {
        // SAFETY: as this function's contract.
        unsafe {
            let mut sumi = [L::zero(); R];
            if F != tag::Q6_K {
                for c4 in 0..4 {
                    let (mut lo_acc, mut hi_acc) = ([L::zero(); R], [L::zero(); R]);
                    for u in 0..8 {
                        let (lo, hi) = Self::q45::<F, BUF>(rp, lane0, buf, c4, u);
                        for c in 0..R {
                            let x = xp.add(c * cols + 64 * c4 + 4 * u);
                            lo_acc[c] = L::dot4(lo_acc[c], lo, L::bcast(x));
                            hi_acc[c] = L::dot4(hi_acc[c], hi, L::bcast(x.add(32)));
                        }
                    }
                    for c in 0..R {
                        let s = L::add(
                            L::mullo(lo_acc[c], self.sc[2 * c4]),
                            L::mullo(hi_acc[c], self.sc[2 * c4 + 1]),
                        );
                        sumi[c] = L::add(sumi[c], s);
                    }
                }
            } else {
                for n in 0..2 {
                    for h in 0..2 {
                        // Sub-blocks 8n + h + {0, 2, 4, 6}: ggml's q1..q4 of values 16h..16h+16.
                        let mut a = [[L::zero(); R]; 4];
                        for uu in 0..4 {
                            let u = 4 * h + uu;
                            let q = Self::q6::<BUF>(rp, lane0, buf, n, u);
                            for c in 0..R {
                                let x = xp.add(c * cols + 128 * n + 4 * u);
                                for (k, ak) in a.iter_mut().enumerate() {
                                    ak[c] = L::dot4(ak[c], q[k], L::bcast(x.add(32 * k)));
                                }
                            }
                        }
                        for c in 0..R {
                            for (k, ak) in a.iter().enumerate() {
                                let s = self.sc[8 * n + h + 2 * k];
                                sumi[c] = L::add(sumi[c], L::mullo(ak[c], s));
                            }
                        }
                    }
                }
            }
            sumi
        }
    }
}
