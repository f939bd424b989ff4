//! Run-time choice of the SIMD level, with an environment override for tests and benches.

use std::sync::OnceLock;

/// An instruction-set level the kernels can run at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SimdLevel {
    /// Portable Rust: runs anywhere and is the reference in tests.
    Scalar,
    /// x86-64 with AVX2, FMA and F16C.
    Avx2,
}

impl SimdLevel {
    /// The level this process uses: the best the CPU supports, or scalar when `LUMEN_KERNELS=scalar`.
    pub fn detect() -> SimdLevel {
        static LEVEL: OnceLock<SimdLevel> = OnceLock::new();
        *LEVEL.get_or_init(|| {
            let forced = std::env::var("LUMEN_KERNELS").ok();
            match forced.as_deref().map(str::trim) {
                Some(s) if s.eq_ignore_ascii_case("scalar") => SimdLevel::Scalar,
                _ if SimdLevel::Avx2.is_supported() => SimdLevel::Avx2,
                _ => SimdLevel::Scalar,
            }
        })
    }

    /// Whether this CPU can run the level.
    pub fn is_supported(self) -> bool {
        match self {
            SimdLevel::Scalar => true,
            SimdLevel::Avx2 => avx2_supported(),
        }
    }

    /// Lower-case name ("scalar", "avx2").
    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Scalar => "scalar",
            SimdLevel::Avx2 => "avx2",
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn avx2_supported() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

#[cfg(not(target_arch = "x86_64"))]
fn avx2_supported() -> bool {
    false
}

/// Run-time detected SIMD level ("avx2" or "scalar"), overridable with env `LUMEN_KERNELS=scalar`.
pub fn simd_level() -> &'static str {
    SimdLevel::detect().name()
}
