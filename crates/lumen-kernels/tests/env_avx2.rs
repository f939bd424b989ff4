//! `LUMEN_KERNELS=avx2` caps the level at AVX2 (own test binary: the level is read once).

use lumen_kernels::{simd_level, CpuLevel, MatmulScratch};

#[test]
fn env_caps_at_avx2() {
    std::env::set_var("LUMEN_KERNELS", "avx2");
    let want = CpuLevel::supported_up_to(CpuLevel::Avx2);
    assert_eq!(CpuLevel::detect(), want);
    assert_eq!(simd_level(), want.name());
    assert_eq!(MatmulScratch::new().level(), want);
    assert!(CpuLevel::detect() <= CpuLevel::Avx2);
}
