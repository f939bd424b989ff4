//! Loading a llama-family model from GGUF: one loader for every variant, whose differences are
//! data (optional tensors, RoPE style), not copies of the code.

use std::path::Path;
use std::sync::Arc;

use lumen_gguf::GgufFile;
use lumen_kernels::attention::{AttnArith, KvGeometry};
use lumen_kernels::ops::Rope;

use super::config::{LlamaConfig, LlamaVariant};
use crate::weights::{load_gguf, load_vector, load_vector_optional, Linear, WeightLayout};
use crate::ModelError;

/// Weights of one transformer block.
pub(crate) struct Block {
    pub attn_norm: Vec<f32>,
    pub wq: Linear,
    pub wk: Linear,
    pub wv: Linear,
    pub bq: Option<Vec<f32>>,
    pub bk: Option<Vec<f32>>,
    pub bv: Option<Vec<f32>>,
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    pub wo: Linear,
    pub ffn_norm: Vec<f32>,
    pub w_gate: Linear,
    pub w_up: Linear,
    pub w_down: Linear,
}

/// A loaded llama-family model; weights stay in the mmapped file.
pub struct LlamaModel {
    pub(crate) file: Arc<GgufFile>,
    pub(crate) config: LlamaConfig,
    pub(crate) embedding: Linear,
    pub(crate) blocks: Vec<Block>,
    pub(crate) output_norm: Vec<f32>,
    pub(crate) output: Linear,
    pub(crate) rope: Rope,
    /// Attention's arithmetic, chosen with the weight layout ([`WeightLayout::attention`]).
    pub(crate) attention: AttnArith,
}

impl LlamaModel {
    /// Whether a token's KV comes out the same whether it was computed as part of a prompt
    /// or decoded one at a time: true with the fast attention arithmetic, which has one path
    /// for both; llama.cpp's has a batched path for prompts and another for generated tokens.
    /// Only then may blocks of generated tokens serve later prompts from the prefix cache
    /// without changing their results.
    pub fn kv_is_path_independent(&self) -> bool {
        self.attention == AttnArith::Fast
    }

    /// Opens and loads a GGUF file, weights in the default layout.
    pub fn open(path: &Path) -> Result<Self, ModelError> {
        Self::open_with(path, WeightLayout::default())
    }

    /// Opens and loads a GGUF file with its linear weights in `layout`.
    pub fn open_with(path: &Path, layout: WeightLayout) -> Result<Self, ModelError> {
        Self::load(Arc::new(load_gguf(path, layout)?), layout)
    }

    /// Loads from an already parsed file (shared with the tokenizer), read with
    /// [`load_gguf`] in `layout`.
    pub fn load(file: Arc<GgufFile>, layout: WeightLayout) -> Result<Self, ModelError> {
        let emb = file
            .tensor("token_embd.weight")
            .ok_or_else(|| ModelError::MissingTensor("token_embd.weight".into()))?;
        let vocab = emb.dims.get(1).copied().unwrap_or(0) as usize;
        let config = LlamaConfig::from_metadata(file.metadata(), vocab)?;
        let c = &config;
        let embedding = Linear::load(&file, "token_embd.weight", c.vocab_size, c.d_model)?;
        let mut blocks = Vec::with_capacity(c.n_layers);
        for i in 0..c.n_layers {
            let n = |s: &str| format!("blk.{i}.{s}");
            let biases = matches!(c.variant, LlamaVariant::Qwen2);
            let opt_bias = |s: &str, len: usize| -> Result<Option<Vec<f32>>, ModelError> {
                if biases {
                    load_vector(&file, &n(s), len).map(Some)
                } else {
                    load_vector_optional(&file, &n(s), len)
                }
            };
            let qk_norm = |s: &str| -> Result<Option<Vec<f32>>, ModelError> {
                if c.variant == LlamaVariant::Qwen3 {
                    load_vector(&file, &n(s), c.head_dim).map(Some)
                } else {
                    Ok(None)
                }
            };
            blocks.push(Block {
                attn_norm: load_vector(&file, &n("attn_norm.weight"), c.d_model)?,
                wq: Linear::load(&file, &n("attn_q.weight"), c.q_dim(), c.d_model)?,
                wk: Linear::load(&file, &n("attn_k.weight"), c.kv_dim(), c.d_model)?,
                wv: Linear::load(&file, &n("attn_v.weight"), c.kv_dim(), c.d_model)?,
                bq: opt_bias("attn_q.bias", c.q_dim())?,
                bk: opt_bias("attn_k.bias", c.kv_dim())?,
                bv: opt_bias("attn_v.bias", c.kv_dim())?,
                q_norm: qk_norm("attn_q_norm.weight")?,
                k_norm: qk_norm("attn_k_norm.weight")?,
                wo: Linear::load(&file, &n("attn_output.weight"), c.d_model, c.q_dim())?,
                ffn_norm: load_vector(&file, &n("ffn_norm.weight"), c.d_model)?,
                w_gate: Linear::load(&file, &n("ffn_gate.weight"), c.d_ff, c.d_model)?,
                w_up: Linear::load(&file, &n("ffn_up.weight"), c.d_ff, c.d_model)?,
                w_down: Linear::load(&file, &n("ffn_down.weight"), c.d_model, c.d_ff)?,
            });
        }
        let output_norm = load_vector(&file, "output_norm.weight", c.d_model)?;
        // Tied embeddings: no `output.weight`, the embedding matrix doubles as the head.
        let output = Linear::load_optional(&file, "output.weight", c.vocab_size, c.d_model)?
            .unwrap_or_else(|| embedding.clone());
        let rope = Rope::new(c.variant.rope_style(), c.rope_dims, c.rope_base);
        Ok(LlamaModel {
            file,
            config,
            embedding,
            blocks,
            output_norm,
            output,
            rope,
            attention: layout.attention(),
        })
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The GGUF file the weights live in (for the tokenizer and chat template).
    pub fn file(&self) -> &Arc<GgufFile> {
        &self.file
    }

    /// KV cache geometry for `block_size`-token blocks.
    pub fn kv_geometry(&self, block_size: usize) -> KvGeometry {
        KvGeometry {
            block_size,
            n_heads: self.config.n_heads,
            n_kv_heads: self.config.n_kv_heads,
            head_dim: self.config.head_dim,
            keys: self.attention.key_layout(),
        }
    }
}
