//! The CPU feature ladder: one ordered level, detected once, that every kernel dispatches on.
//!
//! Each kernel family (matmul tiles, activation quantization, attention, RoPE/SwiGLU/norm
//! ops, f16 conversion) asks one question, "is the level at least L?", of the one value
//! [`CpuLevel::detect`] returns (or of a level a caller pinned, for tests and benches: see
//! [`crate::MatmulScratch::with_level`]). Every level computes the same bits as the scalar
//! reference where the tests say so; a higher level is only faster.

use std::sync::OnceLock;

/// An instruction-set level the kernels can run at, ordered from the portable code up.
///
/// The order is a ladder: kernels test `level >= CpuLevel::Avx512Vnni` and the like. Each
/// level needs the features of the levels below it, with one exception: [`CpuLevel::Avx512`]
/// and above do not need AVX-VNNI (the VEX encoding of [`CpuLevel::Avx2Vnni`]; AMD Zen 4 has
/// AVX-512 VNNI but not AVX-VNNI). No kernel uses AVX-VNNI yet, so that level runs the AVX2
/// kernels and nothing relies on it being implied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CpuLevel {
    /// Portable Rust: runs anywhere and is the reference in tests.
    Scalar,
    /// x86-64 with AVX2, FMA and F16C: every kernel's 256-bit version.
    Avx2,
    /// AVX2 plus AVX-VNNI (`vpdpbusd` on 256-bit registers, VEX encoded). No kernel of its
    /// own yet: it runs the AVX2 kernels.
    Avx2Vnni,
    /// AVX2 plus AVX-512 F, VL, BW and DQ: the 256-bit kernels compiled for 32 registers
    /// and the fast attention's 512-bit steps.
    Avx512,
    /// AVX-512 plus AVX-512 VNNI: the quantized matmul's integer dots in one `vpdpbusd`
    /// (256-bit for the ggml layout, 512-bit for the packed one).
    Avx512Vnni,
    /// AVX-512 VNNI plus AMX-INT8 tiles (Intel Sapphire Rapids and later), which Linux hands
    /// out only on request (`arch_prctl(ARCH_REQ_XCOMP_PERM)`, made once by the detection):
    /// the packed K-quants' sub-block dots for sixteen activation rows at a time in one
    /// `tdpbsud` (prompt processing and batched decode). Everything else runs the
    /// `avx512-vnni` kernels.
    Amx,
}

impl CpuLevel {
    /// Every level, lowest first.
    pub const ALL: [CpuLevel; 6] = [
        CpuLevel::Scalar,
        CpuLevel::Avx2,
        CpuLevel::Avx2Vnni,
        CpuLevel::Avx512,
        CpuLevel::Avx512Vnni,
        CpuLevel::Amx,
    ];

    /// The level this process uses: the highest one the CPU supports, capped by the level
    /// named in `LUMEN_KERNELS` (`scalar`, `avx2`, `avx2-vnni`, `avx512`, `avx512-vnni`, `amx`; an
    /// unknown name caps nothing). Read once.
    pub fn detect() -> CpuLevel {
        static LEVEL: OnceLock<CpuLevel> = OnceLock::new();
        *LEVEL.get_or_init(|| {
            let cap = std::env::var("LUMEN_KERNELS")
                .ok()
                .and_then(|v| CpuLevel::parse(&v))
                .unwrap_or(CpuLevel::Amx);
            CpuLevel::supported_up_to(cap)
        })
    }

    /// The highest level at most `cap` that this CPU supports (at worst [`CpuLevel::Scalar`]).
    pub fn supported_up_to(cap: CpuLevel) -> CpuLevel {
        CpuLevel::ALL
            .into_iter()
            .filter(|l| *l <= cap && l.is_supported())
            .max()
            .unwrap_or(CpuLevel::Scalar)
    }

    /// The levels this CPU supports, lowest first: what tests that compare paths iterate over.
    pub fn supported() -> Vec<CpuLevel> {
        CpuLevel::ALL
            .into_iter()
            .filter(|l| l.is_supported())
            .collect()
    }

    /// Whether this CPU can run the level (whatever `LUMEN_KERNELS` says).
    pub fn is_supported(self) -> bool {
        features::supports(self)
    }

    /// Lower-case name: "scalar", "avx2", "avx2-vnni", "avx512", "avx512-vnni", "amx".
    pub fn name(self) -> &'static str {
        match self {
            CpuLevel::Scalar => "scalar",
            CpuLevel::Avx2 => "avx2",
            CpuLevel::Avx2Vnni => "avx2-vnni",
            CpuLevel::Avx512 => "avx512",
            CpuLevel::Avx512Vnni => "avx512-vnni",
            CpuLevel::Amx => "amx",
        }
    }

    /// The level a name stands for, ignoring case, `-` and `_` ("AVX512_VNNI" is
    /// [`CpuLevel::Avx512Vnni`]).
    pub fn parse(name: &str) -> Option<CpuLevel> {
        let key: String = name
            .trim()
            .chars()
            .filter(|c| *c != '-' && *c != '_')
            .map(|c| c.to_ascii_lowercase())
            .collect();
        CpuLevel::ALL
            .into_iter()
            .find(|l| l.name().replace('-', "") == key)
    }
}

impl std::fmt::Display for CpuLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(target_arch = "x86_64")]
mod features {
    use super::CpuLevel;

    /// Whether the CPU has every feature `level`'s kernels are compiled with.
    pub(super) fn supports(level: CpuLevel) -> bool {
        let avx2 = || {
            is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
        };
        let avx512 = || {
            avx2()
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512dq")
        };
        match level {
            CpuLevel::Scalar => true,
            CpuLevel::Avx2 => avx2(),
            CpuLevel::Avx2Vnni => avx2() && is_x86_feature_detected!("avxvnni"),
            CpuLevel::Avx512 => avx512(),
            CpuLevel::Avx512Vnni => avx512() && is_x86_feature_detected!("avx512vnni"),
            CpuLevel::Amx => supports(CpuLevel::Avx512Vnni) && crate::x86::amx::available(),
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod features {
    use super::CpuLevel;

    /// Only the portable code runs off x86-64.
    pub(super) fn supports(level: CpuLevel) -> bool {
        level == CpuLevel::Scalar
    }
}

/// Name of the level this process runs at ([`CpuLevel::detect`]), e.g. "avx512-vnni".
pub fn simd_level() -> &'static str {
    CpuLevel::detect().name()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_the_ladder_is_ordered() {
        for w in CpuLevel::ALL.windows(2) {
            assert!(w[0] < w[1]);
        }
        for l in CpuLevel::ALL {
            assert_eq!(CpuLevel::parse(l.name()), Some(l));
            assert_eq!(
                CpuLevel::parse(&l.name().to_uppercase().replace('-', "_")),
                Some(l)
            );
        }
        assert_eq!(CpuLevel::parse("avx512vnni"), Some(CpuLevel::Avx512Vnni));
        assert_eq!(CpuLevel::parse("sse"), None);
    }

    #[test]
    fn capping_picks_the_highest_supported_level_below() {
        assert_eq!(
            CpuLevel::supported_up_to(CpuLevel::Scalar),
            CpuLevel::Scalar
        );
        let all = CpuLevel::supported();
        assert_eq!(all[0], CpuLevel::Scalar);
        for cap in CpuLevel::ALL {
            let got = CpuLevel::supported_up_to(cap);
            assert!(got <= cap && got.is_supported());
            assert_eq!(Some(&got), all.iter().rfind(|l| **l <= cap));
        }
        assert!(CpuLevel::detect().is_supported());
    }
}
