//! Kernels: block formats, quantized GEMM, attention and element-wise ops, and the worker pool.
//!
//! # The quantized matmul
//!
//! [`matmul()`] multiplies m activation rows (f32) by a weight matrix read in place from its GGUF
//! bytes ([`MatRef`], ggml block layouts). It is the engine's hot spot; five decisions shape it.
//!
//! **Arithmetic follows llama.cpp bit for bit.** Each weight format is dotted against the
//! activation format llama.cpp's CPU backend uses for it (its `vec_dot_type`): Q4_0, Q5_0,
//! IQ4_NL and Q8_0 weights against Q8_0 activations, Q4_1 and Q5_1 against Q8_1 (whose
//! `s = d * sum(q)` carries the min term), the K-quants (Q2_K to Q6_K) and IQ4_XS against
//! Q8_K. Activations are quantized as llama.cpp's x86 build does (`127 / amax`, ties to
//! even), and the 32-block formats accumulate each block's integer dot in eight f32 lanes
//! with one FMA, summed once per row in `hsum_float_8` order, so Q4_0, Q4_1, Q5_0, Q5_1,
//! IQ4_NL and Q8_0 matmuls give llama.cpp's exact outputs; so do RMSNorm, RoPE, SwiGLU
//! (ggml's exp polynomial) and attention ([`attention`]). The point is reproducibility
//! against the reference everyone knows: a greedy continuation is token for token
//! llama.cpp's. Float weights (F32, F16, BF16) are dotted against f32 activations (llama.cpp
//! rounds them to f16/bf16 first), and the K-quants and IQ4_XS sum in our own order, so
//! those agree within rounding.
//!
//! **Tiling.** Activations are quantized once per call (once for Q/K/V together, see
//! [`matmul_many`]), weight rows are cut into chunks of whole 8-row tiles that the pool's
//! threads claim from a shared counter (each core streams its own slices of the weights), and a
//! tile unpacks each weight block once and dots it with several activation rows using `maddubs`
//! (or VNNI `vpdpbusd`): 4 weight rows x 4 activation rows for the 32-value formats (8 x 1 for
//! decode, with software prefetch of the rows two tiles ahead), K-quant super-blocks unpacked
//! once per 8 rows and reused by every activation row of the call (a register-only path serves
//! single-row decode), 4 x 2 FMA tiles for float weights. A decode step with 32 sequences
//! therefore reads the weights from memory once, not 32 times.
//!
//! **A second, faster layout, opt-in.** Exactness has a price: per (weight row, activation
//! row, block) llama.cpp's order needs an integer dot, a convert and an FMA of eight lanes, and
//! a 32-row batch is bound by that. [`pack`] interleaves eight rows so that each SIMD lane is
//! one row ([`MatRef::packed`], module `packed`; Q4_0, Q4_1, Q8_0, Q5_0, Q5_1): the block's
//! integer dot is finished before
//! it is scaled, and one convert and one FMA serve eight rows, about 2.4x the throughput for
//! batches. Its results differ from llama.cpp's by float rounding, so the model loader only
//! packs when asked (`--weight-layout packed`); both layouts have exact-equality tests between
//! their scalar and SIMD paths. Q4_K, Q5_K and Q6_K pack sixteen rows per group (module `kpacked`):
//! there the lanes take the ggml layout's exact integer sums and float order, so a packed
//! K-quant matrix gives its original's bits, about twice as fast for batches.
//!
//! **Batch invariance.** Every output value is bit-identical whatever m, the other rows of the
//! call, the tile shape or the thread count. For the quantized formats, each (row, column, block)
//! yields exact integer sums and the accumulator update is one fixed float expression; the
//! AVX2 tiles evaluate it in the same order as the scalar reference in `dot.rs`, so the scalar
//! and AVX2 paths even agree bit for bit. Float weights accumulate in eight FMA lanes
//! summed in a fixed tree (scalar and AVX2 agree within rounding there).
//!
//! **The pool.** [`ThreadPool`] keeps `n - 1` OS threads that spin on an epoch counter for a
//! short while after each job and then park; a warm dispatch is a pointer store and a few
//! atomics, about a hundred nanoseconds, with no syscall. No rayon, no tokio. Every thread,
//! the caller included, claims the job's parts from one epoch-tagged counter, so a worker that
//! is slow to wake (a busy machine) never stalls the step: the caller takes its part. Panics
//! in any part are caught and re-raised in the caller after every part has finished, so
//! borrowed data never outlives a running part.
//!
//! **Where the code lives.** Block layouts are `blocks.rs` and, for Q5_0, Q5_1, Q2_K, Q3_K,
//! IQ4_NL and IQ4_XS, `lowbit.rs`. The scalar references are `dot.rs` and `dot_lowbit.rs`
//! (ggml layout), `packed.rs` (packed layout), `kpacked.rs` (the packed K-quant layout),
//! `act.rs` (activation quantizers) and `attention/scalar.rs`; the x86-64 kernels are in
//! `x86/`: `block32_tiles` with `block32_unpack` (ggml-layout 32-value formats),
//! `packed_tiles` and `packed_tiles_512` (the packed layout, 256- and 512-bit),
//! `kquant_packed` (packed Q4_K/Q5_K/Q6_K), `kquant_tiles`, `kquant_lowbit`
//! and `kquant_decode` (K-quants and IQ4_XS, batched and single-row), `float_tiles` (F32/F16/BF16),
//! `act_quant` (activation quantizers), each tile monomorphized per weight format through the
//! tags of `x86/tag.rs`; attention's are `attention/avx2.rs` and `attention/fast.rs`.
//!
//! **One CPU feature ladder.** Every kernel family dispatches on one ordered [`CpuLevel`],
//! detected once ([`CpuLevel::detect`], named by [`simd_level`]): `scalar` (portable Rust,
//! also the reference in tests) < `avx2` (AVX2 + FMA + F16C: every kernel's 256-bit version)
//! < `avx2-vnni` (AVX-VNNI; no kernels of its own yet, it runs the AVX2 ones) < `avx512`
//! (F + VL + BW + DQ: the 256-bit kernels compiled for 32 registers, the fast attention's
//! 512-bit steps) < `avx512-vnni` (the quantized matmul's integer dots in `vpdpbusd`, the
//! K-quant tiles' scaled sums in `vpdpwssd`, 512-bit tiles for the packed layout) < `amx`
//! (AMX-INT8 tiles, where Linux grants them: the packed K-quants' prompt-sized matmuls). `LUMEN_KERNELS=<level>` caps it (`scalar` forces the
//! portable code, `avx2` turns the AVX-512 kernels off). Every level gives the scalar
//! reference's bits wherever the tests compare them exactly.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod attention;
pub mod fused;
pub mod ops;

mod act;
mod bf16_gemm;
mod blocks;
mod cpu;
mod dequant;
mod dot;
mod dot_lowbit;
mod error;
mod format;
mod ggml_math;
mod i16_gemm;
mod kpacked;
mod lowbit;
mod matmul;
pub mod mem;
mod packed;
mod pool;
mod quantize;
#[cfg(test)]
mod test_values;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use act::activation_roundtrip;
pub use bf16_gemm::{bf16_supported, matmul_bf16, matmul_bf16_reference, Bf16Matrix, BF16_BLOCK};
pub use blocks::get_scale_min_k4;
pub use cpu::{simd_level, CpuLevel};
pub use dequant::dequantize_row;
pub use error::KernelError;
pub use format::{WeightFormat, ALL_FORMATS};
pub use i16_gemm::{
    i16_supported, matmul_i16, matmul_i16_reference, I16Matrix, I16Scratch, I16_ACT_MAX, I16_CHUNK,
    I16_WEIGHT_MAX,
};
pub use kpacked::KPACK_ROWS;
pub use matmul::{matmul, matmul_many, matmul_quantized, MatRef, MatmulScratch, QuantizedInput};
pub use packed::{
    pack, pack_group, pack_rows, packed_group_bytes, packed_len, packs, PACKED_LAYOUT_VERSION,
    PACK_ROWS,
};
pub use pool::{split_range, ThreadPool, Turn};
pub use quantize::quantize_row;
