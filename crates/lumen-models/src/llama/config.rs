//! Hyper-parameters of a llama-family model, read from GGUF metadata and validated.

use lumen_gguf::Metadata;
use lumen_kernels::ops::RopeStyle;

use crate::ModelError;

/// The variants of the llama family Lumen implements, keyed by `general.architecture`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LlamaVariant {
    /// Llama 1/2/3, SmolLM, Mistral (as converted to the `llama` arch).
    Llama,
    /// Mistral files that keep their own arch name.
    Mistral,
    /// Qwen2 / Qwen2.5: NeoX RoPE, biases on Q, K and V.
    Qwen2,
    /// Qwen3: NeoX RoPE, RMSNorm on each Q and K head.
    Qwen3,
}

impl LlamaVariant {
    /// Maps an architecture name to a variant.
    pub fn from_arch(arch: &str) -> Option<Self> {
        Some(match arch {
            "llama" => Self::Llama,
            "mistral" => Self::Mistral,
            "qwen2" => Self::Qwen2,
            "qwen3" => Self::Qwen3,
            _ => return None,
        })
    }

    /// How this variant lays out RoPE pairs (llama.cpp's per-arch choice).
    pub fn rope_style(self) -> RopeStyle {
        match self {
            Self::Llama | Self::Mistral => RopeStyle::Normal,
            Self::Qwen2 | Self::Qwen3 => RopeStyle::Neox,
        }
    }
}

/// Validated hyper-parameters.
#[derive(Clone, Debug)]
pub struct LlamaConfig {
    /// The architecture variant.
    pub variant: LlamaVariant,
    /// The `general.architecture` string.
    pub arch: String,
    /// Transformer blocks.
    pub n_layers: usize,
    /// Residual width.
    pub d_model: usize,
    /// Feed-forward hidden width.
    pub d_ff: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Dimensions per head.
    pub head_dim: usize,
    /// Dimensions rotated by RoPE in each head.
    pub rope_dims: usize,
    /// RoPE base frequency.
    pub rope_base: f32,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// Trained context length.
    pub context_len: usize,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
}

/// Upper bounds that keep a hostile file from asking for absurd allocations.
const MAX_DIM: usize = 1 << 16;
const MAX_LAYERS: usize = 1024;
const MAX_HEADS: usize = 1024;

impl LlamaConfig {
    /// Reads and checks the hyper-parameters; `vocab_size` comes from the embedding tensor.
    pub fn from_metadata(meta: &Metadata, vocab_size: usize) -> Result<Self, ModelError> {
        let arch = meta.get_str("general.architecture")?.to_string();
        let variant = LlamaVariant::from_arch(&arch)
            .ok_or_else(|| ModelError::UnsupportedArch(arch.clone()))?;
        let key = |k: &str| format!("{arch}.{k}");
        let get = |k: &str| -> Result<usize, ModelError> { Ok(meta.get_u64(&key(k))? as usize) };
        let n_layers = get("block_count")?;
        let d_model = get("embedding_length")?;
        let d_ff = get("feed_forward_length")?;
        let n_heads = get("attention.head_count")?;
        let n_kv_heads = if meta.get(&key("attention.head_count_kv")).is_some() {
            get("attention.head_count_kv")?
        } else {
            n_heads
        };
        let head_dim = if meta.get(&key("attention.key_length")).is_some() {
            get("attention.key_length")?
        } else {
            d_model.checked_div(n_heads).unwrap_or(0)
        };
        let rope_dims = if meta.get(&key("rope.dimension_count")).is_some() {
            get("rope.dimension_count")?
        } else {
            head_dim
        };
        let rope_base = if meta.get(&key("rope.freq_base")).is_some() {
            meta.get_f32(&key("rope.freq_base"))?
        } else {
            10000.0
        };
        let rms_eps = meta.get_f32(&key("attention.layer_norm_rms_epsilon"))?;
        let context_len = get("context_length")?;
        let cfg = LlamaConfig {
            variant,
            arch,
            n_layers,
            d_model,
            d_ff,
            n_heads,
            n_kv_heads,
            head_dim,
            rope_dims,
            rope_base,
            rms_eps,
            context_len,
            vocab_size,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::BadConfig(m));
        if self.n_layers == 0 || self.n_layers > MAX_LAYERS {
            return bad(format!(
                "block_count {} out of range 1..={MAX_LAYERS}",
                self.n_layers
            ));
        }
        for (name, v) in [
            ("embedding_length", self.d_model),
            ("feed_forward_length", self.d_ff),
            ("head_dim", self.head_dim),
            ("vocab_size", self.vocab_size),
        ] {
            if v == 0 || v > MAX_DIM * 64 {
                return bad(format!("{name} {v} out of range"));
            }
        }
        if self.n_heads == 0
            || self.n_heads > MAX_HEADS
            || self.n_kv_heads == 0
            || !self.n_heads.is_multiple_of(self.n_kv_heads)
        {
            return bad(format!(
                "head_count {} must be a positive multiple of head_count_kv {}",
                self.n_heads, self.n_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2)
            || self.rope_dims == 0
            || self.rope_dims > self.head_dim
            || !self.rope_dims.is_multiple_of(2)
        {
            return bad(format!(
                "rope.dimension_count {} must be even and at most head_dim {}",
                self.rope_dims, self.head_dim
            ));
        }
        if !(self.rope_base.is_finite() && self.rope_base > 0.0) {
            return bad(format!(
                "rope.freq_base {} must be positive",
                self.rope_base
            ));
        }
        if !(self.rms_eps.is_finite() && self.rms_eps >= 0.0) {
            return bad(format!(
                "layer_norm_rms_epsilon {} must be non-negative",
                self.rms_eps
            ));
        }
        if self.context_len == 0 {
            return bad("context_length must be positive".into());
        }
        Ok(())
    }

    /// Width of the concatenated query heads.
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// Width of the concatenated key (or value) heads.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}
