//! AMX tiles: detection, the kernel's permission, and the handful of tile instructions the
//! K-quant kernels use.
//!
//! AMX is eight 1 KiB tile registers (`tmm0`..`tmm7`, up to 16 rows of 64 bytes each, shaped
//! by `ldtilecfg`) and a matrix unit that multiplies them: `tdpbsud C, A, B` adds to each
//! i32 `C[m][n]` the dot of signed bytes `A[m][4k..4k+4]` with unsigned bytes
//! `B[k][4n..4n+4]`. `B`'s rows are exactly the packed K-quant layout's vectors (one weight
//! row per 32-bit lane, four consecutive values in its bytes), and `A`'s rows are activation
//! rows as the Q8_K buffer holds them, so neither needs reshaping: one instruction does the
//! 16 x 16 x 32 sub-block dot that `vpdpbusd` does in 128 steps.
//!
//! Rust's AMX intrinsics and target features are not stable, so the instructions are inline
//! assembly; the assembler knows them without a target feature. Linux enables the tile data
//! state only for processes that ask (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`);
//! [`available`] asks once and only says yes if the kernel granted it, and a tile
//! instruction before that would fault.

use std::arch::asm;
use std::sync::OnceLock;

/// Whether the CPU has AMX-TILE and AMX-INT8 and the kernel let this process use them (asked
/// once; the permission covers every thread of the process).
pub(crate) fn available() -> bool {
    static GRANTED: OnceLock<bool> = OnceLock::new();
    *GRANTED.get_or_init(|| cpu_has_amx_int8() && request_permission())
}

/// CPUID leaf 7: EDX bit 24 is AMX-TILE, bit 25 AMX-INT8.
fn cpu_has_amx_int8() -> bool {
    // CPUID exists on every x86-64 CPU; leaf 7 reads as zeros where unsupported.
    let leaf = std::arch::x86_64::__cpuid_count(7, 0);
    leaf.edx & (1 << 24) != 0 && leaf.edx & (1 << 25) != 0
}

/// Asks Linux for the tile data state; true when granted (kernels before 5.16 refuse).
#[cfg(target_os = "linux")]
fn request_permission() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with this request only changes which register state the process may
    // use; it reads and writes no memory of ours.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    rc == 0
}

/// Elsewhere the permission protocol is unknown: no AMX.
#[cfg(not(target_os = "linux"))]
fn request_permission() -> bool {
    false
}

/// A palette-1 tile configuration: the 64-byte operand of `ldtilecfg`.
#[repr(C, align(64))]
pub(crate) struct TileConfig([u8; 64]);

impl TileConfig {
    /// Tile `t` shaped `shapes[t] = (rows, bytes per row)`; unused tiles are `(0, 0)`.
    pub(crate) const fn new(shapes: [(u8, u16); 8]) -> Self {
        let mut b = [0u8; 64];
        b[0] = 1;
        let mut t = 0;
        while t < 8 {
            let (rows, colsb) = shapes[t];
            b[16 + 2 * t] = colsb as u8;
            b[17 + 2 * t] = (colsb >> 8) as u8;
            b[48 + t] = rows;
            t += 1;
        }
        TileConfig(b)
    }
}

/// Shapes the tiles for this thread (tile state is per thread).
///
/// # Safety
/// [`available`] must have returned true.
#[inline(always)]
pub(crate) unsafe fn configure(c: &TileConfig) {
    // SAFETY: the caller checked AMX is usable; the operand is 64 readable bytes.
    unsafe { asm!("ldtilecfg [{0}]", in(reg) c.0.as_ptr(), options(nostack, readonly)) }
}

/// Returns the tile state to its initial (unused) state, so that context switches stop
/// saving 8 KiB of tiles for this thread.
///
/// # Safety
/// [`available`] must have returned true.
#[inline(always)]
pub(crate) unsafe fn release() {
    // SAFETY: as the caller's contract.
    unsafe { asm!("tilerelease", options(nostack, nomem)) }
}

/// Zeroes tile `T`.
///
/// # Safety
/// Tiles configured by [`configure`] on this thread.
#[inline(always)]
pub(crate) unsafe fn zero<const T: u8>() {
    // SAFETY: as the caller's contract.
    unsafe { asm!("tilezero tmm{t}", t = const T, options(nostack, nomem)) }
}

/// Loads tile `T`'s rows from `p`, `stride` bytes apart.
///
/// # Safety
/// Tiles configured on this thread; every row (`stride` apart, the configured bytes each)
/// readable.
#[inline(always)]
pub(crate) unsafe fn load<const T: u8>(p: *const u8, stride: usize) {
    // SAFETY: as the caller's contract.
    unsafe {
        asm!(
            "tileloadd tmm{t}, [{p} + {s}*1]",
            t = const T, p = in(reg) p, s = in(reg) stride,
            options(nostack, readonly)
        )
    }
}

/// Stores tile `T`'s rows to `p`, `stride` bytes apart.
///
/// # Safety
/// Tiles configured on this thread; every row writable.
#[inline(always)]
pub(crate) unsafe fn store<const T: u8>(p: *mut u8, stride: usize) {
    // SAFETY: as the caller's contract.
    unsafe {
        asm!(
            "tilestored [{p} + {s}*1], tmm{t}",
            t = const T, p = in(reg) p, s = in(reg) stride,
            options(nostack)
        )
    }
}

/// `C += A . B` with A's bytes signed and B's unsigned (`tdpbsud`), exact in i32.
///
/// # Safety
/// Tiles configured on this thread with compatible shapes, and loaded.
#[inline(always)]
pub(crate) unsafe fn dot_su<const C: u8, const A: u8, const B: u8>() {
    // SAFETY: as the caller's contract.
    unsafe {
        asm!(
            "tdpbsud tmm{c}, tmm{a}, tmm{b}",
            c = const C, a = const A, b = const B,
            options(nostack, nomem)
        )
    }
}

/// `C += A . B` with both operands' bytes signed (`tdpbssd`), exact in i32.
///
/// # Safety
/// As [`dot_su`].
#[inline(always)]
pub(crate) unsafe fn dot_ss<const C: u8, const A: u8, const B: u8>() {
    // SAFETY: as the caller's contract.
    unsafe {
        asm!(
            "tdpbssd tmm{c}, tmm{a}, tmm{b}",
            c = const C, a = const A, b = const B,
            options(nostack, nomem)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 16 x 16 x 64 product against the obvious loops, on a machine that has AMX.
    #[test]
    fn tdpbsud_is_the_signed_by_unsigned_dot() {
        if !available() {
            return;
        }
        let a: Vec<i8> = (0..16 * 64)
            .map(|i| ((i * 37 + 11) % 255) as u8 as i8)
            .collect();
        let b: Vec<u8> = (0..16 * 64).map(|i| ((i * 91 + 5) % 256) as u8).collect();
        let mut c = [0i32; 256];
        let cfg = TileConfig::new([
            (16, 64),
            (16, 64),
            (16, 64),
            (0, 0),
            (0, 0),
            (0, 0),
            (0, 0),
            (0, 0),
        ]);
        // SAFETY: AMX is available; every pointer covers its tile's 16 rows of 64 bytes.
        unsafe {
            configure(&cfg);
            zero::<0>();
            load::<1>(a.as_ptr().cast(), 64);
            load::<2>(b.as_ptr(), 64);
            dot_su::<0, 1, 2>();
            store::<0>(c.as_mut_ptr().cast(), 64);
            release();
        }
        for m in 0..16 {
            for n in 0..16 {
                let want: i32 = (0..64)
                    .map(|k| a[m * 64 + k] as i32 * b[(k / 4) * 64 + 4 * n + k % 4] as i32)
                    .sum();
                assert_eq!(c[m * 16 + n], want, "C[{m}][{n}]");
            }
        }
    }
}
