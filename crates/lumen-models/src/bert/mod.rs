//! BERT-family sentence embedding models: BERT (all-MiniLM-L6-v2 and kin) and MPNet
//! (all-mpnet-base-v2).
//!
//! [`BertModel::load`] reads a sentence-transformers folder: `config.json` (the encoder and its
//! [`Family`], from `model_type`),
//! `model.safetensors` (the weights, mapped and checked against the config), and the
//! sentence-transformers files that say how token vectors become one sentence vector
//! (pooling, normalization, maximum sequence length). [`BertModel::embed_batch`] turns
//! already-tokenized sequences into embeddings.
//!
//! # Design
//!
//! **Token ids in, vectors out.** Tokenization belongs to `lumen-engine`, which this crate must
//! not depend on; callers pass `[CLS] … [SEP]` (MPNet: `<s> … </s>`) id sequences, truncated
//! to [`BertModel::max_seq_len`] to match sentence-transformers. Token types are all 0.
//!
//! **One encoder, two families.** MPNet is BERT with other position handling: positions
//! counted from its padding id, no token-type table, and a relative-position bias added to
//! the attention scores (module `mpnet`). Its layers are BERT's under other tensor names. So
//! there is one forward pass here, and the family only changes which tensors are loaded,
//! which position row a token takes and whether attention adds the bias; every fast path
//! (one GEMM per linear layer over the whole ragged batch, pool-split row passes and
//! attention) serves both.
//!
//! **Ragged, not padded.** A batch is the concatenation of its sequences' tokens. The linear
//! layers run as one GEMM over all rows, so weights are read once per step however many
//! sentences there are; attention runs per sequence over its own rows. There is no padding,
//! hence no wasted work on pad tokens and no attention mask.
//!
//! **Batch invariance.** The kernels' GEMM gives each row the same bits whatever rows share
//! the call, and every other op here works per row or per sequence in a fixed order. So a
//! sentence embeds to identical bits alone or inside a batch of 64, and however the batch is
//! split into steps; the tests assert it.
//!
//! **Bounded memory.** Long batches are cut into steps of about [`STEP_ROWS`] tokens (never
//! splitting a sequence), so activation memory stays fixed whatever the batch size.
//!
//! **Precision.** Activations are f32 between layers. The linear layers run in the
//! [`EncoderPrecision`] the CPU does fastest within cosine 0.9999: bf16 products with AVX-512
//! BF16, 16-bit integer products (exact i32 sums) with AVX2, else f32 over the weights in
//! their stored type (F32, F16 or BF16). GELU uses the same erf approximation as PyTorch's
//! CPU kernel; LayerNorm statistics are accumulated in f64. Against sentence-transformers the
//! cosine similarity is above 0.9999 in every precision.

mod attention;
mod config;
mod layer;
mod mpnet;
mod ops;
mod pooling;
mod precision;
mod sentence;
mod weights;

use std::fmt;
use std::ops::Range;
use std::path::Path;

use lumen_kernels::{MatmulScratch, ThreadPool};

pub use config::{Activation, BertConfig, Family};
pub use pooling::{PoolingConfig, PoolingMode};
pub use precision::EncoderPrecision;

use attention::Heads;
use layer::{Buffers, Cx, Layer, Norm};
use mpnet::RelativeBias;
use ops::{layer_norm_inplace, par_rows};
use pooling::l2_normalize;
use sentence::SentenceConfig;
use weights::{MatSlot, WeightFile};

use crate::error::ModelError;

/// Tokens per forward step; a batch with more is run in several steps.
pub const STEP_ROWS: usize = 512;

/// A loaded BERT-family encoder with its sentence-transformers pooling.
pub struct BertModel {
    config: BertConfig,
    sentence: SentenceConfig,
    file: WeightFile,
    word: MatSlot,
    position: Vec<f32>,
    /// Token type 0's row (BERT); MPNet has no token types.
    token_type: Option<Vec<f32>>,
    emb_norm: Norm,
    layers: Vec<Layer>,
    /// MPNet's relative-position bias.
    rel_bias: Option<RelativeBias>,
    precision: EncoderPrecision,
}

impl fmt::Debug for BertModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BertModel")
            .field("config", &self.config)
            .field("sentence", &self.sentence)
            .finish_non_exhaustive()
    }
}

impl BertModel {
    /// Loads the model in folder `dir` (`config.json`, `model.safetensors`, and optionally the
    /// sentence-transformers files), in the precision `LUMEN_EMBED_PRECISION` asks for
    /// ([`EncoderPrecision::from_env`]: bf16 where the CPU has AVX-512 BF16, else 16-bit
    /// integers where it has AVX2, else f32).
    pub fn load(dir: &Path) -> Result<BertModel, ModelError> {
        BertModel::load_with(dir, EncoderPrecision::from_env())
    }

    /// [`load`](Self::load) in a given precision (one the CPU cannot run
    /// ([`EncoderPrecision::supported`]) computes in f32).
    pub fn load_with(dir: &Path, precision: EncoderPrecision) -> Result<BertModel, ModelError> {
        let precision = precision.or_f32();
        let config = BertConfig::load(&dir.join("config.json"))?;
        let sentence = SentenceConfig::load(dir, config.hidden_size, config.max_tokens())?;
        let file = WeightFile::open(&dir.join("model.safetensors"))?;
        let h = config.hidden_size;
        let word = file.matrix("embeddings.word_embeddings.weight", config.vocab_size, h)?;
        let position = file.table(
            "embeddings.position_embeddings.weight",
            config.max_position_embeddings,
            h,
        )?;
        let (token_type, rel_bias) = match config.family {
            Family::Bert => {
                let mut t = file.table(
                    "embeddings.token_type_embeddings.weight",
                    config.type_vocab_size,
                    h,
                )?;
                t.truncate(h);
                (Some(t), None)
            }
            Family::MpNet => {
                let bias = RelativeBias::load(
                    &file,
                    config.relative_buckets,
                    config.num_heads,
                    config.max_tokens(),
                )?;
                (None, Some(bias))
            }
        };
        let emb_norm = Norm::load(&file, "embeddings.LayerNorm", h)?;
        let layers = (0..config.num_layers)
            .map(|i| Layer::load(&file, &config, i, precision))
            .collect::<Result<Vec<_>, _>>()?;
        tracing::debug!(dir = %dir.display(), family = ?config.family, layers = config.num_layers, hidden = h, "loaded encoder");
        Ok(BertModel {
            config,
            sentence,
            file,
            word,
            position,
            token_type,
            emb_norm,
            layers,
            rel_bias,
            precision,
        })
    }

    /// The arithmetic of the linear layers.
    pub fn precision(&self) -> EncoderPrecision {
        self.precision
    }

    /// The encoder's hyper-parameters.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// How token vectors are pooled into a sentence vector.
    pub fn pooling(&self) -> &PoolingConfig {
        &self.sentence.pooling
    }

    /// Length of the returned embeddings.
    pub fn dims(&self) -> usize {
        self.sentence.pooling.output_dims(self.config.hidden_size)
    }

    /// Longest input sentence-transformers feeds this model; callers truncate to it.
    pub fn max_seq_len(&self) -> usize {
        self.sentence.max_seq_len
    }

    /// Longest sequence the model can run at all (what its position table covers).
    pub fn max_positions(&self) -> usize {
        self.config.max_tokens()
    }

    /// Whether embeddings are scaled to unit length.
    pub fn normalize(&self) -> bool {
        self.sentence.normalize
    }

    /// Embeds each token-id sequence of `batch` (each `[CLS] … [SEP]` or `<s> … </s>`, at most
    /// [`max_positions`](Self::max_positions) long); one vector of [`dims`](Self::dims) per input.
    pub fn embed_batch(
        &self,
        pool: &ThreadPool,
        batch: &[&[u32]],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        self.check_batch(batch)?;
        let mut out = Vec::with_capacity(batch.len());
        let mut buf = Buffers::default();
        let mut scratch = MatmulScratch::new();
        let mut start = 0;
        while start < batch.len() {
            // Greedily take sequences while the step stays under STEP_ROWS tokens (at least one).
            let mut end = start + 1;
            let mut rows = batch[start].len();
            while end < batch.len() && rows + batch[end].len() <= STEP_ROWS {
                rows += batch[end].len();
                end += 1;
            }
            self.forward_step(pool, &batch[start..end], &mut buf, &mut scratch, &mut out)?;
            start = end;
        }
        Ok(out)
    }

    /// Rejects empty or over-long sequences and out-of-vocabulary ids.
    fn check_batch(&self, batch: &[&[u32]]) -> Result<(), ModelError> {
        for (i, seq) in batch.iter().enumerate() {
            if seq.is_empty() {
                return Err(ModelError::BadBatch(format!("sequence {i} is empty")));
            }
            if seq.len() > self.max_positions() {
                return Err(ModelError::BadBatch(format!(
                    "sequence {i} has {} tokens, more than the model's {} positions",
                    seq.len(),
                    self.max_positions()
                )));
            }
            if let Some(&id) = seq
                .iter()
                .find(|&&id| id as usize >= self.config.vocab_size)
            {
                return Err(ModelError::BadBatch(format!(
                    "sequence {i} has token id {id}, outside the vocabulary of {}",
                    self.config.vocab_size
                )));
            }
        }
        Ok(())
    }

    /// Runs the encoder over one step's sequences and appends their pooled embeddings to `out`.
    fn forward_step(
        &self,
        pool: &ThreadPool,
        seqs: &[&[u32]],
        buf: &mut Buffers,
        scratch: &mut MatmulScratch,
        out: &mut Vec<Vec<f32>>,
    ) -> Result<(), ModelError> {
        let h = self.config.hidden_size;
        let mut ranges: Vec<Range<usize>> = Vec::with_capacity(seqs.len());
        let mut rows = 0;
        for s in seqs {
            ranges.push(rows..rows + s.len());
            rows += s.len();
        }
        buf.reserve(rows, h, self.config.intermediate_size);
        self.embed_tokens(pool, seqs, &ranges, &mut buf.x[..rows * h]);

        let mut cx = Cx {
            pool,
            file: &self.file,
            scratch,
            bf16: Vec::new(),
            int16: lumen_kernels::I16Scratch::default(),
            heads: Heads {
                n_heads: self.config.num_heads,
                head_dim: self.config.head_dim(),
            },
            eps: self.config.layer_norm_eps,
            act: self.config.activation,
            seqs: &ranges,
            rel_bias: self.rel_bias.as_ref(),
        };
        for layer in &self.layers {
            layer.forward(&mut cx, buf, rows)?;
        }

        for r in &ranges {
            let mut v = vec![0.0; self.dims()];
            self.sentence
                .pooling
                .pool(&buf.x[r.start * h..r.end * h], h, &mut v);
            if self.sentence.normalize {
                l2_normalize(&mut v);
            }
            out.push(v);
        }
        Ok(())
    }

    /// `x = LayerNorm(word + token_type + position)` for every token of the step (MPNet:
    /// `LayerNorm(word + position)`, positions from its padding id).
    fn embed_tokens(
        &self,
        pool: &ThreadPool,
        seqs: &[&[u32]],
        ranges: &[Range<usize>],
        x: &mut [f32],
    ) {
        let h = self.config.hidden_size;
        // Row r is token `tokens[r]`, whose position-table row is `positions[r]`.
        let rows = ranges.last().map_or(0, |r| r.end);
        let mut tokens = Vec::with_capacity(rows);
        let mut positions = vec![0; rows];
        for (seq, r) in seqs.iter().zip(ranges) {
            tokens.extend_from_slice(seq);
            let pos = &mut positions[r.clone()];
            match self.config.family {
                Family::Bert => pos.iter_mut().enumerate().for_each(|(i, p)| *p = i),
                Family::MpNet => mpnet::position_ids(seq, pos),
            }
        }
        par_rows(pool, x, h, |r, row| {
            self.file.decode_row(&self.word, tokens[r] as usize, row);
            let pos = positions[r];
            let p = &self.position[pos * h..(pos + 1) * h];
            match &self.token_type {
                // BERT adds in this order: (word + token type) + position.
                Some(tt) => {
                    for ((v, &t), &p) in row.iter_mut().zip(tt).zip(p) {
                        *v = (*v + t) + p;
                    }
                }
                None => {
                    for (v, &p) in row.iter_mut().zip(p) {
                        *v += p;
                    }
                }
            }
            layer_norm_inplace(
                row,
                &self.emb_norm.w,
                &self.emb_norm.b,
                self.config.layer_norm_eps,
            );
        });
    }
}
