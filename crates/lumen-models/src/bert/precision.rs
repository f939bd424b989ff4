//! The arithmetic an encoder's linear layers run in.
//!
//! BF16 products with f32 sums keep the sentence encoders within cosine 0.99997 of
//! sentence-transformers' f32 embeddings (see `lumen_kernels::bf16_gemm`), and run about
//! twice the multiplies per instruction, so they are the default wherever the CPU has
//! AVX-512 BF16. Without it (AVX2 CPUs: Zen 3, older Xeons) an emulated bf16 would be no
//! faster than f32, but 16-bit integers are: `vpmaddwd` does twice an FMA's multiplies, and
//! 13-bit inputs against 11-bit weights with exact integer sums keep cosine ≥ 0.99996 (see
//! `lumen_kernels::i16_gemm`), so they are the default there. f32 remains for CPUs with
//! neither, and on request.

use std::fmt;

/// Arithmetic of an encoder's linear layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncoderPrecision {
    /// f32 weights and activations.
    F32,
    /// Weights and activations rounded to bf16, products summed in f32 (AVX-512 BF16 only).
    Bf16,
    /// Weights rounded to 11-bit and activations to 13-bit integers, one scale per row,
    /// products summed exactly in i32 (AVX2).
    Int16,
}

impl EncoderPrecision {
    /// Every precision, whether or not this CPU runs it.
    pub const ALL: [EncoderPrecision; 3] = [
        EncoderPrecision::F32,
        EncoderPrecision::Bf16,
        EncoderPrecision::Int16,
    ];

    /// The fastest precision this CPU runs that keeps the embedding tests' cosine: bf16 with
    /// AVX-512 BF16, else 16-bit integers with AVX2, else f32.
    pub fn auto() -> EncoderPrecision {
        if lumen_kernels::bf16_supported() {
            EncoderPrecision::Bf16
        } else if lumen_kernels::i16_supported() {
            EncoderPrecision::Int16
        } else {
            EncoderPrecision::F32
        }
    }

    /// Whether this CPU runs the precision (f32 runs everywhere).
    pub fn supported(self) -> bool {
        match self {
            EncoderPrecision::F32 => true,
            EncoderPrecision::Bf16 => lumen_kernels::bf16_supported(),
            EncoderPrecision::Int16 => lumen_kernels::i16_supported(),
        }
    }

    /// `self` where the CPU runs it, f32 otherwise.
    pub fn or_f32(self) -> EncoderPrecision {
        if self.supported() {
            self
        } else {
            EncoderPrecision::F32
        }
    }

    /// A precision by its [`name`](Self::name).
    pub fn parse(name: &str) -> Option<EncoderPrecision> {
        EncoderPrecision::ALL.into_iter().find(|p| p.name() == name)
    }

    /// `LUMEN_EMBED_PRECISION` (`f32`, `bf16`, `int16` or `auto`, the default). Asking for a
    /// precision the CPU lacks gives f32, with a warning: a setting never makes a model
    /// unloadable.
    pub fn from_env() -> EncoderPrecision {
        let value = std::env::var("LUMEN_EMBED_PRECISION").unwrap_or_default();
        match EncoderPrecision::parse(&value) {
            Some(p) if !p.supported() => {
                tracing::warn!(
                    value = %value,
                    "LUMEN_EMBED_PRECISION: this CPU cannot run it; using f32"
                );
                EncoderPrecision::F32
            }
            Some(p) => p,
            None if value.is_empty() || value == "auto" => EncoderPrecision::auto(),
            None => {
                tracing::warn!(
                    value = %value,
                    "LUMEN_EMBED_PRECISION is f32, bf16, int16 or auto; using auto"
                );
                EncoderPrecision::auto()
            }
        }
    }

    /// "f32", "bf16" or "int16".
    pub fn name(self) -> &'static str {
        match self {
            EncoderPrecision::F32 => "f32",
            EncoderPrecision::Bf16 => "bf16",
            EncoderPrecision::Int16 => "int16",
        }
    }
}

impl fmt::Display for EncoderPrecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
