//! Shared helpers for the integration tests: fixture paths and the default model.
#![allow(dead_code)]

use std::path::PathBuf;

use lumen_kernels::ThreadPool;
use lumen_models::{ForwardWorkspace, KvStorage, LlamaModel, LogitsWanted, SeqChunk};

/// The repository's `fixtures/llama` folder.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/llama")
}

/// The default chat model, or `None` (with a note) when it was not fetched. Under CI
/// (`CI` set) a missing model is a failure, so the suite cannot pass by skipping.
pub fn smollm2() -> Option<PathBuf> {
    lumen_testkit::chat_gguf()
}

/// A single-sequence runner over the model's forward pass with a contiguous block table.
pub struct Runner {
    pub model: LlamaModel,
    pub pool: ThreadPool,
    pub kv: KvStorage,
    pub ws: ForwardWorkspace,
    pub table: Vec<u32>,
    pub pos: usize,
    /// Positions below this are prompt tokens (see `SeqChunk::prompt_len`).
    pub prompt_len: usize,
}

impl Runner {
    pub fn new(model: LlamaModel, threads: usize, max_tokens: usize) -> Self {
        let geo = model.kv_geometry(16);
        let blocks = max_tokens.div_ceil(16);
        let kv = KvStorage::new(geo, model.config().n_layers, blocks + 3);
        // A scattered table (reversed) so paging bugs cannot hide behind contiguous blocks.
        let table = (0..blocks as u32).rev().map(|b| b + 3).collect();
        Runner {
            model,
            pool: ThreadPool::new(threads),
            kv,
            ws: ForwardWorkspace::new(),
            table,
            pos: 0,
            prompt_len: 0,
        }
    }

    /// Runs `tokens` at the current position; returns the wanted logits rows.
    pub fn step(&mut self, tokens: &[u32], logits: LogitsWanted) -> Vec<f32> {
        let chunk = SeqChunk {
            tokens,
            start_pos: self.pos,
            block_table: &self.table,
            logits,
            prompt_len: self.prompt_len,
        };
        let out = self
            .model
            .forward(&self.pool, &[chunk], &mut self.kv, &mut self.ws)
            .expect("forward")
            .to_vec();
        self.pos += tokens.len();
        out
    }
}

/// log-softmax of one row, in f64.
pub fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
    row.iter().map(|&v| v as f64 - max - sum.ln()).collect()
}

/// Index of the largest value (lowest index on ties).
pub fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}
