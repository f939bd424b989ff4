//! Sentences per second through the embedding engine, texts in and vectors out (not a test).
//!
//! ```text
//! cargo run --release -p lumen-engine --example embed_throughput -- BATCH [THREADS [REPS]] < sentences.txt
//! ```
//!
//! Reads one sentence per line from stdin, builds a batch of BATCH sentences (cycling through
//! them), and times REPS requests of that batch through [`EmbedHandle::prepare`] (tokenization)
//! and [`EmbedHandle::embed_blocking`] (the forward passes): the path `/v1/embeddings` takes,
//! without HTTP. Prints one JSON line. `scripts/bench-embeddings.sh` runs it alternately with
//! sentence-transformers' `encode`, which also tokenizes, on the same sentences.
//!
//! [`EmbedHandle::prepare`]: lumen_engine::EmbedHandle::prepare
//! [`EmbedHandle::embed_blocking`]: lumen_engine::EmbedHandle::embed_blocking

use std::io::BufRead;
use std::time::Instant;

use lumen_engine::registry::{lumen_home, resolve, EmbeddingModel};
use lumen_engine::{EmbedConfig, EmbedEngine, EmbedInput};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(|s| s.parse::<usize>()).transpose();
    let batch = arg(0)?.ok_or("usage: embed_throughput BATCH [THREADS [REPS]] < sentences")?;
    let threads = arg(1)?.unwrap_or(2);
    let reps = arg(2)?.unwrap_or_else(|| (1024 / batch.max(1)).clamp(4, 256));
    let model = std::env::var("LUMEN_EMBED_MODEL").unwrap_or_else(|_| "all-minilm-l6-v2".into());
    let sentences: Vec<String> = std::io::stdin()
        .lock()
        .lines()
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter(|l| !l.is_empty())
        .collect();
    if sentences.is_empty() || batch == 0 {
        return Err("need a batch of at least 1 and sentences on stdin".into());
    }
    let em = EmbeddingModel::load(&resolve(&model, &lumen_home())?)?;
    let config = EmbedConfig {
        threads,
        ..EmbedConfig::default()
    };
    let engine = EmbedEngine::start(em.model.clone(), em.tokenizer.clone(), config)?;
    let h = engine.handle();
    let inputs: Vec<EmbedInput> = (0..batch)
        .map(|i| EmbedInput::Text(sentences[i % sentences.len()].clone()))
        .collect();
    let run = || -> Result<usize, lumen_engine::EngineError> {
        let seqs = h.prepare(inputs.clone(), None)?;
        Ok(h.embed_blocking(seqs)?.len())
    };
    run()?; // warm-up
    let t0 = Instant::now();
    let mut n = 0;
    for _ in 0..reps {
        n += run()?;
    }
    let dt = t0.elapsed().as_secs_f64();
    // The arithmetic and kernel level that ran, so every figure says which path it measures.
    println!(
        "{{\"batch\":{batch},\"threads\":{threads},\"reps\":{reps},\"seconds\":{dt:.6},\"sentences_per_s\":{:.2},\"precision\":\"{}\",\"cpu_level\":\"{}\"}}",
        n as f64 / dt,
        em.model.precision(),
        lumen_kernels::simd_level()
    );
    Ok(())
}
