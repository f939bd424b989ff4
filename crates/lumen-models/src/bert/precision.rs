//! The arithmetic an encoder's linear layers run in.
//!
//! BF16 products with f32 sums keep the sentence encoders within cosine 0.99997 of
//! sentence-transformers' f32 embeddings (see `lumen_kernels::bf16_gemm`), and run about
//! twice the multiplies per instruction, so they are the default wherever the CPU has
//! AVX-512 BF16; elsewhere the encoders stay in f32, which an emulated bf16 would not beat.

use std::fmt;

/// Arithmetic of an encoder's linear layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncoderPrecision {
    /// f32 weights and activations.
    F32,
    /// Weights and activations rounded to bf16, products summed in f32 (AVX-512 BF16 only).
    Bf16,
}

impl EncoderPrecision {
    /// The fastest precision this CPU runs that keeps the embedding tests' cosine: bf16 with
    /// AVX-512 BF16, f32 otherwise.
    pub fn auto() -> EncoderPrecision {
        if lumen_kernels::bf16_supported() {
            EncoderPrecision::Bf16
        } else {
            EncoderPrecision::F32
        }
    }

    /// `LUMEN_EMBED_PRECISION` (`f32`, `bf16` or `auto`, the default). Asking for bf16 on a
    /// CPU without it gives f32, with a warning: a setting never makes a model unloadable.
    pub fn from_env() -> EncoderPrecision {
        match std::env::var("LUMEN_EMBED_PRECISION").as_deref() {
            Ok("f32") => EncoderPrecision::F32,
            Ok("bf16") if !lumen_kernels::bf16_supported() => {
                tracing::warn!(
                    "LUMEN_EMBED_PRECISION=bf16: this CPU has no AVX-512 BF16; using f32"
                );
                EncoderPrecision::F32
            }
            Ok("bf16") => EncoderPrecision::Bf16,
            Ok(other) if other != "auto" && !other.is_empty() => {
                tracing::warn!(
                    value = other,
                    "LUMEN_EMBED_PRECISION is f32, bf16 or auto; using auto"
                );
                EncoderPrecision::auto()
            }
            _ => EncoderPrecision::auto(),
        }
    }

    /// "f32" or "bf16".
    pub fn name(self) -> &'static str {
        match self {
            EncoderPrecision::F32 => "f32",
            EncoderPrecision::Bf16 => "bf16",
        }
    }
}

impl fmt::Display for EncoderPrecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
