//! End-to-end batched generation through the engine (`lumen bench MODEL --engine`): what a
//! server gets, with the scheduler, chunked prefill, sampling and detokenization included.
//!
//! For each B, B requests of `prompt_tokens` random tokens each are submitted at once with
//! `ignore_eos` and `max_tokens = gen_tokens`; the figure is output tokens over the wall time
//! from submitting to the last request's end. Prompts are fresh every repetition (and salted),
//! so the prefix cache never serves one repetition from another's blocks.

use std::path::Path;
use std::time::{Duration, Instant};

use lumen_engine::registry::{ChatModel, ModelKind, ModelLocation};
use lumen_engine::{
    Engine, EngineConfig, EngineHandle, Event, GenerationParams, SchedulerConfig, BLOCK_SIZE,
};
use lumen_models::KvStorage;

use crate::model_bench::{TestKind, TestResult};
use crate::rng::SplitMix64;
use crate::stats::Summary;
use crate::BenchError;

/// Longest one repetition may take before it counts as a failure.
const REP_TIMEOUT: Duration = Duration::from_secs(900);

/// What to measure through the engine.
#[derive(Clone, Debug)]
pub struct EngineBenchConfig {
    /// Concurrent requests per test.
    pub batch_sizes: Vec<usize>,
    /// Prompt tokens per request.
    pub prompt_tokens: usize,
    /// Generated tokens per request.
    pub gen_tokens: usize,
    /// Timed repetitions per test.
    pub reps: usize,
    /// Compute threads.
    pub threads: usize,
    /// Seed for the prompts.
    pub seed: u64,
    /// A test stops repeating once it has run this long (it always runs once).
    pub max_seconds_per_test: f64,
    /// How the weights are laid out in memory.
    pub layout: lumen_models::WeightLayout,
}

/// Runs the engine tests; one [`TestResult`] per batch size.
pub fn run_engine_bench(
    path: &Path,
    config: &EngineBenchConfig,
) -> Result<Vec<TestResult>, BenchError> {
    if config.reps == 0 || config.gen_tokens == 0 || config.prompt_tokens == 0 {
        return Err(BenchError::Config(
            "the engine test needs repetitions, prompt tokens and generated tokens".into(),
        ));
    }
    if config.batch_sizes.iter().any(|&b| b == 0 || b > 4096) {
        return Err(BenchError::Config(
            "batch sizes must be between 1 and 4096".into(),
        ));
    }
    let Some(max_b) = config.batch_sizes.iter().copied().max() else {
        return Ok(Vec::new());
    };
    let loc = ModelLocation {
        name: "bench".into(),
        kind: ModelKind::Chat,
        path: path.to_path_buf(),
    };
    let chat = ChatModel::load_with(&loc, config.layout)?;
    let c = chat.model.config();
    let per_block = KvStorage::bytes_per_block(chat.model.kv_geometry(BLOCK_SIZE), c.n_layers);
    let span = config.prompt_tokens + config.gen_tokens;
    // Every sequence's blocks, plus slack for the last partial block of each.
    let blocks = max_b * (span.div_ceil(BLOCK_SIZE) + 1) + 8;
    let mut ec = EngineConfig::new("bench");
    ec.threads = config.threads;
    ec.kv_cache_bytes = blocks * per_block;
    ec.scheduler = SchedulerConfig {
        max_num_seqs: max_b.max(SchedulerConfig::default().max_num_seqs),
        ..SchedulerConfig::default()
    };
    ec.max_queued_requests = max_b.max(ec.max_queued_requests);
    // Plain decoding, as llama-bench measures it: random prompts fall into loops that prompt
    // lookup would predict, flattering the figures (`make bench-speculative` measures it).
    ec.speculative.tokens = 0;
    let vocab = c.vocab_size as u64;
    let engine = Engine::start(chat.model.clone(), chat.tokenizer.clone(), ec)?;
    let handle = engine.handle();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut rng = SplitMix64::new(config.seed);
    let mut salt = 0u64;
    let mut results = Vec::new();
    for &b in &config.batch_sizes {
        let mut rep = |gen: usize| {
            salt += 1;
            let prompts: Vec<Vec<u32>> = (0..b)
                .map(|_| {
                    (0..config.prompt_tokens)
                        .map(|_| rng.below(vocab) as u32)
                        .collect()
                })
                .collect();
            rt.block_on(one_rep(&handle, prompts, gen, salt))
        };
        rep(config.gen_tokens.min(16))?; // warm-up
        let started = Instant::now();
        let mut runs = Vec::new();
        for _ in 0..config.reps {
            runs.push(rep(config.gen_tokens)?);
            if started.elapsed().as_secs_f64() > config.max_seconds_per_test {
                break;
            }
        }
        let out: Vec<f64> = runs
            .iter()
            .map(|r| r.output_tokens as f64 / r.total_s)
            .collect();
        let prefill: Vec<f64> = runs
            .iter()
            .map(|r| (b * config.prompt_tokens) as f64 / r.all_first_s)
            .collect();
        results.push(TestResult {
            name: format!(
                "e2e pp{}+tg{}@b{b}",
                config.prompt_tokens, config.gen_tokens
            ),
            kind: TestKind::Engine,
            batch: b,
            n_prompt: config.prompt_tokens,
            n_gen: config.gen_tokens,
            depth: 0,
            tokens_per_s: Summary::of(&out),
            seconds: Summary::of(&runs.iter().map(|r| r.total_s).collect::<Vec<_>>()),
            prefill_tokens_per_s: Some(Summary::of(&prefill)),
        });
    }
    drop(engine);
    Ok(results)
}

/// One repetition's timings.
struct Rep {
    /// Submit to the last request's end.
    total_s: f64,
    /// Submit until every request had its first token.
    all_first_s: f64,
    /// Tokens generated over all requests.
    output_tokens: usize,
}

async fn one_rep(
    handle: &EngineHandle,
    prompts: Vec<Vec<u32>>,
    gen: usize,
    salt: u64,
) -> Result<Rep, BenchError> {
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for prompt in prompts {
        let mut params = GenerationParams::greedy(gen);
        params.ignore_eos = Some(true);
        params.cache_salt = Some(format!("bench-{salt}"));
        let mut stream = handle.submit(handle.prepare(params, prompt)?)?;
        tasks.spawn(async move {
            let mut first = None;
            // A request yields at most `gen` tokens plus its end events; the bound is slack.
            for _ in 0..gen.saturating_mul(2) + 16 {
                match stream.recv().await {
                    Some(Event::Token { .. }) => {
                        first.get_or_insert_with(Instant::now);
                    }
                    Some(Event::Done(usage)) => return Ok((first, usage.completion_tokens)),
                    Some(Event::Error(e)) => return Err(e),
                    Some(Event::GrammarError { message, .. }) => return Err(message),
                    Some(_) => {}
                    None => return Err("the engine closed the stream".to_string()),
                }
            }
            Err("the stream did not end".to_string())
        });
    }
    let joined = tokio::time::timeout(REP_TIMEOUT, async {
        let mut out = Vec::new();
        while let Some(j) = tasks.join_next().await {
            out.push(j.map_err(|e| e.to_string()).and_then(|r| r));
        }
        out
    })
    .await
    .map_err(|_| {
        BenchError::Run(format!(
            "a repetition took longer than {} s",
            REP_TIMEOUT.as_secs()
        ))
    })?;
    let end = Instant::now();
    let mut output_tokens = 0;
    let mut last_first = t0;
    for r in joined {
        let (first, n) = r.map_err(BenchError::Run)?;
        output_tokens += n;
        last_first = last_first.max(first.unwrap_or(end));
    }
    Ok(Rep {
        total_s: (end - t0).as_secs_f64(),
        all_first_s: (last_first - t0).as_secs_f64(),
        output_tokens,
    })
}
