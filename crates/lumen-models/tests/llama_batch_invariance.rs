//! The forward pass gives every sequence the same bits whatever else shares the step:
//! ragged batches, chunked prefill and scattered block tables change nothing.

mod common;

use common::fixtures;
use lumen_kernels::ThreadPool;
use lumen_models::{ForwardWorkspace, KvStorage, LlamaModel, LogitsWanted, SeqChunk, WeightLayout};

fn ids(seed: u32, n: usize, vocab: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed * 97)) % vocab)
        .collect()
}

#[test]
fn ragged_batch_equals_solo_runs() {
    ragged_batch_equals_solo_runs_in(WeightLayout::Exact);
}

#[test]
fn ragged_batch_equals_solo_runs_packed() {
    ragged_batch_equals_solo_runs_in(WeightLayout::Packed);
}

fn ragged_batch_equals_solo_runs_in(layout: WeightLayout) {
    let model = LlamaModel::open_with(&fixtures().join("tiny_llama_q4_1.gguf"), layout).unwrap();
    let vocab = model.config().vocab_size;
    let pool = ThreadPool::new(2);
    let geo = model.kv_geometry(16);
    let lens = [37usize, 5, 80, 16, 1];
    let prompts: Vec<Vec<u32>> = lens
        .iter()
        .enumerate()
        .map(|(i, &n)| ids(i as u32, n, vocab as u32))
        .collect();

    // Solo: each sequence alone, its prompt in one chunk.
    let mut solo = Vec::new();
    for p in &prompts {
        let mut kv = KvStorage::new(geo, model.config().n_layers, 8);
        let table: Vec<u32> = (0..8).collect();
        let mut ws = ForwardWorkspace::new();
        let chunk = SeqChunk {
            tokens: p,
            start_pos: 0,
            block_table: &table,
            logits: LogitsWanted::Last,
            prompt_len: p.len(),
        };
        solo.push(
            model
                .forward(&pool, &[chunk], &mut kv, &mut ws)
                .unwrap()
                .to_vec(),
        );
    }

    // Together: every prompt split in two chunks over two steps, interleaved tables.
    let mut kv = KvStorage::new(geo, model.config().n_layers, 64);
    let tables: Vec<Vec<u32>> = (0..lens.len() as u32)
        .map(|s| (0..8).map(|b| 63 - (b * 5 + s)).collect())
        .collect();
    let mut ws = ForwardWorkspace::new();
    let first: Vec<SeqChunk> = prompts
        .iter()
        .zip(&tables)
        .filter(|(p, _)| p.len() > 1)
        .map(|(p, t)| SeqChunk {
            tokens: &p[..p.len() / 2],
            start_pos: 0,
            block_table: t,
            logits: LogitsWanted::None,
            prompt_len: p.len(),
        })
        .collect();
    model.forward(&pool, &first, &mut kv, &mut ws).unwrap();
    let second: Vec<SeqChunk> = prompts
        .iter()
        .zip(&tables)
        .map(|(p, t)| {
            let start = if p.len() > 1 { p.len() / 2 } else { 0 };
            SeqChunk {
                tokens: &p[start..],
                start_pos: start,
                block_table: t,
                logits: LogitsWanted::Last,
                prompt_len: p.len(),
            }
        })
        .collect();
    let together = model
        .forward(&pool, &second, &mut kv, &mut ws)
        .unwrap()
        .to_vec();
    for (i, s) in solo.iter().enumerate() {
        assert!(
            together[i * vocab..(i + 1) * vocab] == s[..],
            "sequence {i} differs in the batch"
        );
    }
}
