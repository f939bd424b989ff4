//! Throughput of `BertModel::embed_batch` on short sentences (not a test; numbers only).
//!
//! ```text
//! cargo run --release -p lumen-models --example embed_bench [-- THREADS [MODEL_DIR]]
//! ```
//!
//! MODEL_DIR defaults to all-minilm-l6-v2; give all-mpnet-base-v2's folder to time MPNet.
//! Uses the token ids of the short `bench` sentences in the fixture (of the model's family)
//! written by
//! `scripts/make_embedding_fixtures.py`, which times sentence-transformers on the same
//! sentences with `--bench`; so no tokenizer is needed and both sides run the same tokens.

use std::path::PathBuf;
use std::time::Instant;

use lumen_kernels::ThreadPool;
use lumen_models::bert::{BertModel, Family};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let threads: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(2);
    let dir = match args.get(2) {
        Some(d) => PathBuf::from(d),
        None => {
            let home = std::env::var_os("LUMEN_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".lumen")
                });
            home.join("models/all-minilm-l6-v2")
        }
    };
    let model = BertModel::load(&dir)?;
    // The fixture of the model's own tokenizer (MPNet's ids differ from BERT's).
    let fixture = match model.config().family {
        Family::Bert => concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/minilm_reference.json"
        ),
        Family::MpNet => concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/mpnet_reference.json"
        ),
    };
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture)?)?;
    // The short sentences sentence-transformers is timed on (`bench` in the fixture).
    let mut seqs: Vec<Vec<u32>> = Vec::new();
    for s in doc["bench"]
        .as_array()
        .ok_or("fixture has no bench sentences")?
    {
        let ids = s["ids"].as_array().ok_or("bench sentence without ids")?;
        seqs.push(
            ids.iter()
                .filter_map(|x| x.as_u64())
                .map(|x| x as u32)
                .collect(),
        );
    }
    let avg = seqs.iter().map(Vec::len).sum::<usize>() as f64 / seqs.len() as f64;
    println!(
        "{} short sentences, {avg:.1} tokens on average, {threads} threads",
        seqs.len()
    );
    let pool = ThreadPool::new(threads);
    for batch_size in [1usize, 32, 256] {
        let batch: Vec<&[u32]> = (0..batch_size)
            .map(|i| seqs[i % seqs.len()].as_slice())
            .collect();
        model.embed_batch(&pool, &batch)?; // warm-up
        let reps = (1024 / batch_size).clamp(4, 256);
        let (t0, cpu0) = (Instant::now(), cpu_seconds());
        for _ in 0..reps {
            model.embed_batch(&pool, &batch)?;
        }
        let dt = t0.elapsed().as_secs_f64();
        let n = (batch_size * reps) as f64;
        let per_cpu = match (cpu0, cpu_seconds()) {
            (Some(a), Some(b)) if b > a => format!(", {:.1} per CPU-second", n / (b - a)),
            _ => String::new(),
        };
        println!(
            "lumen, {threads} threads, batch {batch_size:>3}: {:8.1} sentences/s ({:.2} ms per call{per_cpu})",
            n / dt,
            dt * 1e3 / reps as f64
        );
    }
    Ok(())
}

/// CPU time (user + system) this process has used, from `/proc/self/stat` (Linux only).
///
/// On a shared machine wall-clock throughput depends on the neighbours; sentences per
/// CPU-second (with one thread) is the steadier number to compare.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0) // USER_HZ is 100 on every Linux Lumen targets
}
