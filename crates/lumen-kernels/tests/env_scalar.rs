//! `LUMEN_KERNELS=scalar` forces the portable path (own test binary: the level is read once).

use lumen_kernels::{simd_level, CpuLevel, MatmulScratch};

#[test]
fn env_forces_scalar() {
    std::env::set_var("LUMEN_KERNELS", "scalar");
    assert_eq!(simd_level(), "scalar");
    assert_eq!(CpuLevel::detect(), CpuLevel::Scalar);
    assert_eq!(MatmulScratch::new().level(), CpuLevel::Scalar);
    assert_eq!(MatmulScratch::default().level(), CpuLevel::Scalar);
}
