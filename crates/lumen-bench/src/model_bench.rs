//! `lumen bench MODEL`: prompt processing, single-stream decode and batched decode, timed on
//! the forward pass itself (no scheduler, no sampler), the way llama-bench and
//! llama-batched-bench time llama.cpp.
//!
//! - **ppN** is one forward over N random tokens from position 0, logits for the last one
//!   (llama-bench's `pp`).
//! - **tgN** is N single-token steps from position 0, logits each step (llama-bench's `tg`,
//!   which also decodes from an empty context).
//! - With a **depth** D (llama-bench's `-d`), pp and tg run after D random tokens already in
//!   the cache (filled once, untimed, and kept: the timed tokens only write positions past
//!   it), and are named `ppN@dD`, `tgN@dD`: attention over a long context is then part of
//!   the figure.
//! - **Batched decode at B** prefills B sequences with `batch_prompt` tokens each (timed
//!   apart), then runs `batch_gen` steps in which every sequence decodes one token (one
//!   forward with B one-token chunks); the figure is `B * batch_gen / time`, which is
//!   llama-batched-bench's `S_TG`.
//!
//! Each test runs once to warm up (caches, page faults, the pool's threads), then `reps` times;
//! tokens/s are summarised as median and spread. Token ids come from a seeded generator, so
//! every run feeds the same input.

use std::path::{Path, PathBuf};
use std::time::Instant;

use lumen_kernels::ThreadPool;
use lumen_models::{ForwardWorkspace, KvStorage, LlamaModel, LogitsWanted, SeqChunk, WeightLayout};
use serde::Serialize;

use crate::rng::SplitMix64;
use crate::stats::Summary;
use crate::BenchError;

/// Tokens per KV block in the benchmark's cache (the engine's block size).
const BLOCK: usize = 16;
/// Most tokens one prefill forward carries (llama.cpp's default `-b 2048`).
const MAX_STEP_TOKENS: usize = 2048;
/// Most decode steps a warm-up runs.
const WARMUP_STEPS: usize = 16;

/// What to measure.
#[derive(Clone, Debug)]
pub struct ModelBenchConfig {
    /// Prompt length for the pp test (0 skips it).
    pub prompt_tokens: usize,
    /// Decode steps for the tg test (0 skips it).
    pub gen_tokens: usize,
    /// Sequence counts for batched decode (empty skips it).
    pub batch_sizes: Vec<usize>,
    /// Prompt tokens per sequence before batched decode (llama-batched-bench's `-npp`).
    pub batch_prompt: usize,
    /// Decode steps of batched decode (llama-batched-bench's `-ntg`).
    pub batch_gen: usize,
    /// Timed repetitions per test.
    pub reps: usize,
    /// Compute threads.
    pub threads: usize,
    /// Seed for the token ids.
    pub seed: u64,
    /// A test stops repeating once it has run this long (it always runs at least once).
    pub max_seconds_per_test: f64,
    /// How the weights are laid out in memory.
    pub layout: WeightLayout,
    /// Context tokens in the cache before the pp and tg tests (llama-bench's `-d`).
    pub depth: usize,
}

impl Default for ModelBenchConfig {
    fn default() -> Self {
        ModelBenchConfig {
            prompt_tokens: 512,
            gen_tokens: 128,
            batch_sizes: vec![1, 8, 32, 64],
            batch_prompt: 128,
            batch_gen: 128,
            reps: 5,
            threads: 2,
            seed: 1234,
            max_seconds_per_test: 300.0,
            layout: WeightLayout::default(),
            depth: 0,
        }
    }
}

/// Which kind of test a result is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TestKind {
    /// Prompt processing.
    Prompt,
    /// Single-stream decode.
    Decode,
    /// Batched decode.
    Batched,
    /// Batched generation through the engine, end to end.
    Engine,
}

/// One test's measurements.
#[derive(Clone, Debug, Serialize)]
pub struct TestResult {
    /// llama-bench style name: `pp512`, `tg128`, `tg128@b32`.
    pub name: String,
    /// What kind of test.
    pub kind: TestKind,
    /// Sequences decoded together (1 for pp and tg).
    pub batch: usize,
    /// Prompt tokens per sequence (0 for tg).
    pub n_prompt: usize,
    /// Generated tokens per sequence (0 for pp).
    pub n_gen: usize,
    /// Context tokens already in the cache (pp and tg; 0 for batched decode).
    pub depth: usize,
    /// Tokens/s of the timed phase, over repetitions.
    pub tokens_per_s: Summary,
    /// Seconds of the timed phase, over repetitions.
    pub seconds: Summary,
    /// Batched decode only: tokens/s of the prefill before it (llama-batched-bench's `S_PP`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefill_tokens_per_s: Option<Summary>,
}

/// Everything `lumen bench MODEL` measured.
#[derive(Clone, Debug, Serialize)]
pub struct ModelBenchReport {
    /// The model file.
    pub model: PathBuf,
    /// Its size in bytes.
    pub model_bytes: u64,
    /// Architecture name from the file.
    pub arch: String,
    /// Compute threads.
    pub threads: usize,
    /// The kernels' CPU level (`lumen_kernels::CpuLevel` name: `scalar`, `avx2`, ...,
    /// `avx512-vnni`).
    pub simd: String,
    /// Weight layout (`ggml` or `packed`).
    pub layout: String,
    /// Timed repetitions asked for.
    pub reps: usize,
    /// The tests, in the order they ran.
    pub results: Vec<TestResult>,
}

/// Loads `path` and runs every test `config` asks for.
pub fn run_model_bench(
    path: &Path,
    config: &ModelBenchConfig,
) -> Result<ModelBenchReport, BenchError> {
    validate(config)?;
    let model = LlamaModel::open_with(path, config.layout)?;
    let c = model.config();
    let after_depth = |n: usize| if n > 0 { n + config.depth } else { 0 };
    let longest = after_depth(config.prompt_tokens)
        .max(after_depth(config.gen_tokens))
        .max(if config.batch_sizes.is_empty() {
            0
        } else {
            config.batch_prompt + config.batch_gen
        });
    if longest > c.context_len {
        return Err(BenchError::Config(format!(
            "a test needs {longest} positions; the model's context is {}",
            c.context_len
        )));
    }
    let per_seq = |n: usize| n.div_ceil(BLOCK).max(1);
    let max_b = config.batch_sizes.iter().copied().max().unwrap_or(0);
    let n_blocks = per_seq(after_depth(config.prompt_tokens))
        .max(per_seq(after_depth(config.gen_tokens)))
        .max(max_b * per_seq(config.batch_prompt + config.batch_gen));
    let mut bench = Bench {
        kv: KvStorage::new(model.kv_geometry(BLOCK), c.n_layers, n_blocks),
        ws: ForwardWorkspace::new(),
        pool: ThreadPool::new(config.threads),
        rng: SplitMix64::new(config.seed),
        vocab: c.vocab_size as u64,
        model: &model,
        depth: config.depth,
        depth_filled: false,
    };
    let mut results = Vec::new();
    if config.prompt_tokens > 0 {
        results.push(bench.repeat(config, TestKind::Prompt, 1, config.prompt_tokens, 0)?);
    }
    if config.gen_tokens > 0 {
        results.push(bench.repeat(config, TestKind::Decode, 1, 0, config.gen_tokens)?);
    }
    for &b in &config.batch_sizes {
        results.push(bench.repeat(
            config,
            TestKind::Batched,
            b,
            config.batch_prompt,
            config.batch_gen,
        )?);
    }
    Ok(ModelBenchReport {
        model: path.to_path_buf(),
        model_bytes: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
        arch: c.arch.clone(),
        threads: bench.pool.n_threads(),
        simd: lumen_kernels::simd_level().to_string(),
        layout: config.layout.to_string(),
        reps: config.reps,
        results,
    })
}

fn validate(config: &ModelBenchConfig) -> Result<(), BenchError> {
    let bad = |m: &str| Err(BenchError::Config(m.to_string()));
    if config.reps == 0 {
        return bad("repetitions must be at least 1");
    }
    if config.threads == 0 || config.threads > 1024 {
        return bad("threads must be between 1 and 1024");
    }
    if config.batch_sizes.iter().any(|&b| b == 0 || b > 4096) {
        return bad("batch sizes must be between 1 and 4096");
    }
    if !config.batch_sizes.is_empty() && config.batch_gen == 0 {
        return bad("batched decode needs at least one step");
    }
    if config.prompt_tokens == 0 && config.gen_tokens == 0 && config.batch_sizes.is_empty() {
        return bad("nothing to measure: -p, -n and -b are all empty");
    }
    Ok(())
}

/// The state a run shares between tests.
struct Bench<'m> {
    model: &'m LlamaModel,
    kv: KvStorage,
    ws: ForwardWorkspace,
    pool: ThreadPool,
    rng: SplitMix64,
    vocab: u64,
    /// Context tokens before pp and tg.
    depth: usize,
    /// Whether positions `0..depth` of blocks `0..` hold that context now.
    depth_filled: bool,
}

/// One repetition's timings.
struct Timing {
    seconds: f64,
    tokens: usize,
    prefill: Option<(f64, usize)>,
}

impl Bench<'_> {
    fn tokens(&mut self, n: usize) -> Vec<u32> {
        (0..n).map(|_| self.rng.below(self.vocab) as u32).collect()
    }

    fn repeat(
        &mut self,
        config: &ModelBenchConfig,
        kind: TestKind,
        batch: usize,
        n_prompt: usize,
        n_gen: usize,
    ) -> Result<TestResult, BenchError> {
        // Warm-up: the whole pp, or a short decode.
        self.once(kind, batch, n_prompt, n_gen.min(WARMUP_STEPS))?;
        let started = Instant::now();
        let mut runs = Vec::with_capacity(config.reps);
        for _ in 0..config.reps {
            runs.push(self.once(kind, batch, n_prompt, n_gen)?);
            if started.elapsed().as_secs_f64() > config.max_seconds_per_test {
                break;
            }
        }
        let rate = |secs: f64, toks: usize| {
            if secs > 0.0 {
                toks as f64 / secs
            } else {
                f64::NAN
            }
        };
        let at_depth = matches!(kind, TestKind::Prompt | TestKind::Decode) && self.depth > 0;
        let depth = if at_depth { self.depth } else { 0 };
        let name = match kind {
            TestKind::Prompt => format!("pp{n_prompt}"),
            TestKind::Decode => format!("tg{n_gen}"),
            TestKind::Batched | TestKind::Engine => format!("tg{n_gen}@b{batch}"),
        } + &if at_depth {
            format!("@d{depth}")
        } else {
            String::new()
        };
        let prefill: Vec<f64> = runs
            .iter()
            .filter_map(|r| r.prefill.map(|(s, t)| rate(s, t)))
            .collect();
        Ok(TestResult {
            name,
            kind,
            batch,
            n_prompt,
            n_gen,
            depth,
            tokens_per_s: Summary::of(
                &runs
                    .iter()
                    .map(|r| rate(r.seconds, r.tokens))
                    .collect::<Vec<_>>(),
            ),
            seconds: Summary::of(&runs.iter().map(|r| r.seconds).collect::<Vec<_>>()),
            prefill_tokens_per_s: (!prefill.is_empty()).then(|| Summary::of(&prefill)),
        })
    }

    fn once(
        &mut self,
        kind: TestKind,
        batch: usize,
        n_prompt: usize,
        n_gen: usize,
    ) -> Result<Timing, BenchError> {
        match kind {
            TestKind::Prompt => {
                let d = self.fill_depth()?;
                let toks = self.tokens(n_prompt);
                let table = block_table(0, d + n_prompt);
                let t0 = Instant::now();
                let chunk = SeqChunk {
                    tokens: &toks,
                    start_pos: d,
                    block_table: &table,
                    logits: LogitsWanted::Last,
                    prompt_len: d + n_prompt,
                };
                self.model
                    .forward(&self.pool, &[chunk], &mut self.kv, &mut self.ws)?;
                Ok(Timing {
                    seconds: t0.elapsed().as_secs_f64(),
                    tokens: n_prompt,
                    prefill: None,
                })
            }
            TestKind::Decode => {
                let d = self.fill_depth()?;
                let toks = self.tokens(n_gen);
                let table = block_table(0, d + n_gen);
                let t0 = Instant::now();
                for (pos, tok) in toks.iter().enumerate() {
                    let chunk = SeqChunk {
                        tokens: std::slice::from_ref(tok),
                        start_pos: d + pos,
                        block_table: &table,
                        logits: LogitsWanted::Last,
                        prompt_len: d,
                    };
                    self.model
                        .forward(&self.pool, &[chunk], &mut self.kv, &mut self.ws)?;
                }
                Ok(Timing {
                    seconds: t0.elapsed().as_secs_f64(),
                    tokens: n_gen,
                    prefill: None,
                })
            }
            TestKind::Batched | TestKind::Engine => self.batched(batch, n_prompt, n_gen),
        }
    }

    /// Puts `depth` random tokens at positions `0..depth` of blocks `0..` unless they are
    /// there already; returns the depth.
    fn fill_depth(&mut self) -> Result<usize, BenchError> {
        let d = self.depth;
        if d == 0 || self.depth_filled {
            return Ok(d);
        }
        let toks = self.tokens(d);
        let table = block_table(0, d);
        for start in (0..d).step_by(MAX_STEP_TOKENS) {
            let end = d.min(start + MAX_STEP_TOKENS);
            let chunk = SeqChunk {
                tokens: &toks[start..end],
                start_pos: start,
                block_table: &table,
                logits: LogitsWanted::None,
                prompt_len: d,
            };
            self.model
                .forward(&self.pool, &[chunk], &mut self.kv, &mut self.ws)?;
        }
        self.depth_filled = true;
        Ok(d)
    }

    fn batched(
        &mut self,
        batch: usize,
        n_prompt: usize,
        n_gen: usize,
    ) -> Result<Timing, BenchError> {
        // The sequences' blocks start at 0: the depth context is overwritten.
        self.depth_filled = false;
        let span = n_prompt + n_gen;
        let tables: Vec<Vec<u32>> = (0..batch)
            .map(|s| block_table(s * span.div_ceil(BLOCK).max(1), span))
            .collect();
        let prompts: Vec<Vec<u32>> = (0..batch).map(|_| self.tokens(n_prompt)).collect();

        // Prefill: whole prompts packed into forwards of at most MAX_STEP_TOKENS tokens.
        let t0 = Instant::now();
        for pack in pack_prefill(batch, n_prompt, MAX_STEP_TOKENS) {
            let chunks: Vec<SeqChunk<'_>> = pack
                .iter()
                .map(|&(s, start, len)| SeqChunk {
                    tokens: &prompts[s][start..start + len],
                    start_pos: start,
                    block_table: &tables[s],
                    logits: LogitsWanted::Last,
                    prompt_len: n_prompt,
                })
                .collect();
            self.model
                .forward(&self.pool, &chunks, &mut self.kv, &mut self.ws)?;
        }
        let prefill_secs = t0.elapsed().as_secs_f64();

        // Decode: every sequence one token per step.
        let steps: Vec<Vec<u32>> = (0..n_gen).map(|_| self.tokens(batch)).collect();
        let t1 = Instant::now();
        for (i, toks) in steps.iter().enumerate() {
            let chunks: Vec<SeqChunk<'_>> = (0..batch)
                .map(|s| SeqChunk {
                    tokens: std::slice::from_ref(&toks[s]),
                    start_pos: n_prompt + i,
                    block_table: &tables[s],
                    logits: LogitsWanted::Last,
                    prompt_len: n_prompt,
                })
                .collect();
            self.model
                .forward(&self.pool, &chunks, &mut self.kv, &mut self.ws)?;
        }
        let prefill = (n_prompt > 0).then_some((prefill_secs, batch * n_prompt));
        Ok(Timing {
            seconds: t1.elapsed().as_secs_f64(),
            tokens: batch * n_gen,
            prefill,
        })
    }
}

/// Blocks `first..` covering `positions` positions.
fn block_table(first: usize, positions: usize) -> Vec<u32> {
    (first..first + positions.div_ceil(BLOCK).max(1))
        .map(|b| b as u32)
        .collect()
}

/// Splits `batch` prompts of `n_prompt` tokens into forwards of at most `max_tokens` tokens:
/// each forward is a list of `(sequence, start, len)`, with at most one piece per sequence.
fn pack_prefill(
    batch: usize,
    n_prompt: usize,
    max_tokens: usize,
) -> Vec<Vec<(usize, usize, usize)>> {
    let max_tokens = max_tokens.max(1);
    let mut packs = Vec::new();
    let mut cur: Vec<(usize, usize, usize)> = Vec::new();
    let mut used = 0;
    for s in 0..batch {
        let mut start = 0;
        while start < n_prompt {
            let len = (n_prompt - start).min(max_tokens);
            if used + len > max_tokens || cur.iter().any(|&(q, _, _)| q == s) {
                packs.push(std::mem::take(&mut cur));
                used = 0;
            }
            cur.push((s, start, len));
            used += len;
            start += len;
        }
    }
    if !cur.is_empty() {
        packs.push(cur);
    }
    packs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_cover_every_prompt_once_in_order() {
        for (batch, n, max) in [
            (1, 512, 2048),
            (32, 128, 2048),
            (3, 5000, 2048),
            (64, 128, 100),
            (2, 0, 2048),
        ] {
            let packs = pack_prefill(batch, n, max);
            let mut next = vec![0usize; batch];
            for pack in &packs {
                assert!(pack.iter().map(|p| p.2).sum::<usize>() <= max);
                for (i, &(s, start, len)) in pack.iter().enumerate() {
                    assert!(
                        pack[..i].iter().all(|p| p.0 != s),
                        "one piece per sequence per forward"
                    );
                    assert_eq!(start, next[s]);
                    assert!(len > 0);
                    next[s] += len;
                }
            }
            assert!(next.iter().all(|&x| x == n));
        }
    }

    #[test]
    fn block_tables_are_disjoint_and_long_enough() {
        assert_eq!(block_table(0, 512).len(), 32);
        assert_eq!(block_table(0, 0), vec![0]);
        assert_eq!(block_table(16, 17), vec![16, 17]);
    }

    #[test]
    fn bad_settings_are_refused() {
        let ok = ModelBenchConfig::default();
        assert!(validate(&ok).is_ok());
        assert!(validate(&ModelBenchConfig {
            reps: 0,
            ..ok.clone()
        })
        .is_err());
        assert!(validate(&ModelBenchConfig {
            batch_sizes: vec![0],
            ..ok.clone()
        })
        .is_err());
        assert!(validate(&ModelBenchConfig {
            prompt_tokens: 0,
            gen_tokens: 0,
            batch_sizes: vec![],
            ..ok.clone()
        })
        .is_err());
        assert!(validate(&ModelBenchConfig { batch_gen: 0, ..ok }).is_err());
    }
}
