//! `lumen perplexity`: a model's perplexity on a text, computed the way llama.cpp's
//! `llama-perplexity` computes it, so the two can be compared number for number.
//!
//! The text's tokens are cut into chunks of `ctx` tokens; each chunk runs as one sequence
//! (its first token replaced by BOS when the model adds one), and only the second half of each
//! chunk is scored, so every scored token has at least `ctx / 2` tokens of context. The result
//! is `exp(mean negative log-likelihood)` over the scored tokens.

use std::time::Instant;

use lumen_kernels::ThreadPool;
use lumen_models::{ForwardWorkspace, KvStorage, LlamaModel, LogitsWanted, SeqChunk};
use serde::Serialize;

use crate::BenchError;

const BLOCK: usize = 16;

/// What to measure.
#[derive(Clone, Debug)]
pub struct PerplexityConfig {
    /// Tokens per chunk (llama-perplexity's `-c`, 512 by default).
    pub ctx: usize,
    /// Most chunks to score (`None`: all whole chunks of the text).
    pub max_chunks: Option<usize>,
    /// Compute threads.
    pub threads: usize,
}

impl Default for PerplexityConfig {
    fn default() -> Self {
        PerplexityConfig {
            ctx: 512,
            max_chunks: None,
            threads: 2,
        }
    }
}

/// The measurement.
#[derive(Clone, Debug, Serialize)]
pub struct PerplexityReport {
    /// Tokens per chunk.
    pub ctx: usize,
    /// Chunks scored.
    pub chunks: usize,
    /// Tokens scored in all.
    pub scored_tokens: usize,
    /// Mean negative log-likelihood per scored token (nats).
    pub mean_nll: f64,
    /// `exp(mean_nll)`.
    pub perplexity: f64,
    /// The perplexity of the chunks so far, after each chunk (llama-perplexity's running
    /// figures).
    pub running: Vec<f64>,
    /// Wall time.
    pub seconds: f64,
}

/// The perplexity of `model` on `tokens` (the text's tokens, no BOS); `bos` replaces each
/// chunk's first token when given.
pub fn run_perplexity(
    model: &LlamaModel,
    tokens: &[u32],
    bos: Option<u32>,
    config: &PerplexityConfig,
) -> Result<PerplexityReport, BenchError> {
    let ctx = config.ctx;
    if ctx < 16 || ctx > model.config().context_len {
        return Err(BenchError::Config(format!(
            "the chunk size must be between 16 and the model's context ({}), got {ctx}",
            model.config().context_len
        )));
    }
    let mut chunks = tokens.len() / ctx;
    if let Some(m) = config.max_chunks {
        chunks = chunks.min(m);
    }
    if chunks == 0 {
        return Err(BenchError::Config(format!(
            "the text has {} tokens, fewer than one chunk of {ctx}",
            tokens.len()
        )));
    }
    let vocab = model.config().vocab_size;
    let table: Vec<u32> = (0..ctx.div_ceil(BLOCK) as u32).collect();
    let mut kv = KvStorage::new(
        model.kv_geometry(BLOCK),
        model.config().n_layers,
        table.len(),
    );
    let mut ws = ForwardWorkspace::new();
    let pool = ThreadPool::new(config.threads.max(1));
    let first = ctx / 2;
    let (mut nll, mut count) = (0.0f64, 0usize);
    let mut running = Vec::with_capacity(chunks);
    let started = Instant::now();
    for c in 0..chunks {
        let mut chunk = tokens[c * ctx..(c + 1) * ctx].to_vec();
        if let Some(b) = bos {
            chunk[0] = b;
        }
        let seq = SeqChunk {
            tokens: &chunk,
            start_pos: 0,
            block_table: &table,
            logits: LogitsWanted::All,
            prompt_len: ctx,
        };
        let logits = model.forward(&pool, &[seq], &mut kv, &mut ws)?;
        // Row j predicts token j + 1; score the predictions of the chunk's second half.
        for j in first..ctx - 1 {
            let row = &logits[j * vocab..(j + 1) * vocab];
            let target = chunk[j + 1] as usize;
            nll -= f64::from(row[target]) - log_sum_exp(row);
            count += 1;
        }
        running.push((nll / count as f64).exp());
    }
    let mean_nll = nll / count as f64;
    Ok(PerplexityReport {
        ctx,
        chunks,
        scored_tokens: count,
        mean_nll,
        perplexity: mean_nll.exp(),
        running,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn log_sum_exp(row: &[f32]) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = row.iter().map(|&x| f64::from(x - max).exp()).sum();
    f64::from(max) + sum.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_sum_exp_is_stable() {
        let v = [1000.0f32, 1000.0];
        assert!((log_sum_exp(&v) - (1000.0 + 2f64.ln())).abs() < 1e-9);
    }
}
