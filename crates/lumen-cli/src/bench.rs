//! `lumen bench MODEL` (forward-pass pp/tg/batched decode, like llama-bench) and
//! `lumen bench serve --url URL` (a load generator for OpenAI-compatible servers).
//! The measuring lives in `lumen-bench`; this module only turns flags into its configs.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use lumen_bench::{
    measure_read_bandwidth, run_engine_bench, run_model_bench, run_serve_bench, table, Endpoint,
    EngineBenchConfig, ModelBenchConfig, PromptMix, ServeConfig, Slo,
};
use lumen_engine::registry::{lumen_home, resolve};
use lumen_models::WeightLayout;

/// Flags of `lumen bench`.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct BenchArgs {
    /// Load-test a running server instead of timing a model.
    #[command(subcommand)]
    pub command: Option<BenchCommand>,
    /// Settings of the model benchmark.
    #[command(flatten)]
    pub model: ModelArgs,
}

/// Subcommands of `lumen bench`.
#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Load-test an OpenAI-compatible server (Lumen, llama-server, vLLM) with streaming clients.
    Serve(ServeBenchArgs),
    /// Measure this machine's stream-read bandwidth (the bound on single-stream decode).
    Bandwidth(BandwidthArgs),
}

/// Flags of `lumen bench bandwidth`.
#[derive(Args, Debug)]
pub struct BandwidthArgs {
    /// Buffer size in MiB (well above the last-level cache).
    #[arg(long, default_value_t = 1024)]
    pub mib: usize,
    /// Reading threads (decode uses all compute threads, so the default is the same).
    #[arg(short = 't', long, env = "LUMEN_THREADS", default_value_t = default_threads())]
    pub threads: usize,
    /// Timed repetitions; the best is the figure.
    #[arg(short = 'r', long = "repetitions", default_value_t = 5)]
    pub reps: usize,
    /// Print JSON instead of a line.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `lumen bench MODEL`.
#[derive(Args, Debug)]
pub struct ModelArgs {
    /// Model name (under $LUMEN_HOME/models) or path to a .gguf file.
    #[arg(required = true)]
    pub model: Option<String>,
    /// Prompt length of the pp test (0 skips it).
    #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
    pub n_prompt: usize,
    /// Decode steps of the tg test, from an empty context (0 skips it).
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    pub n_gen: usize,
    /// Context tokens already in the cache before the pp and tg tests (llama-bench's -d),
    /// filled once, untimed.
    #[arg(short = 'd', long = "depth", default_value_t = 0)]
    pub depth: usize,
    /// Sequence counts for batched decode, comma-separated ("0" or "" skips it).
    #[arg(short = 'b', long = "batch", default_value = "1,8,32,64")]
    pub batch: String,
    /// Prompt tokens per sequence before batched decode (llama-batched-bench's -npp).
    #[arg(long = "npp", default_value_t = 128)]
    pub batch_prompt: usize,
    /// Decode steps of batched decode (llama-batched-bench's -ntg).
    #[arg(long = "ntg", default_value_t = 128)]
    pub batch_gen: usize,
    /// Timed repetitions of each test (after one warm-up).
    #[arg(short = 'r', long = "repetitions", default_value_t = 5)]
    pub reps: usize,
    /// Compute threads.
    #[arg(short = 't', long, env = "LUMEN_THREADS", default_value_t = default_threads())]
    pub threads: usize,
    /// Seed for the random token ids.
    #[arg(long, default_value_t = 1234)]
    pub seed: u64,
    /// A test stops repeating after this many seconds (it always runs once).
    #[arg(long, default_value_t = 300.0)]
    pub max_seconds: f64,
    /// Also run each batched test end to end through the engine (scheduler and sampling too).
    #[arg(long)]
    pub engine: bool,
    /// Weight layout: `packed` (the default: row-interleaved Q4_0/Q4_1/Q8_0/Q5_0/Q5_1/Q4_K/Q5_K/Q6_K
    /// and the fast attention arithmetic, equal to llama.cpp within float rounding) or
    /// `exact` (llama.cpp's arithmetic, bit for bit).
    #[arg(long, env = "LUMEN_WEIGHT_LAYOUT", default_value_t = WeightLayout::default())]
    pub weight_layout: WeightLayout,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `lumen bench serve`.
#[derive(Args, Debug)]
pub struct ServeBenchArgs {
    /// The server's base URL (http only), e.g. http://127.0.0.1:8080.
    #[arg(long, env = "LUMEN_BENCH_URL")]
    pub url: String,
    /// Concurrent streaming clients.
    #[arg(short = 'c', long, default_value_t = 16)]
    pub concurrency: usize,
    /// Timed requests in all.
    #[arg(long, default_value_t = 64)]
    pub requests: usize,
    /// max_tokens of every request.
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// Model name to send (default: the first one /v1/models lists).
    #[arg(long)]
    pub model: Option<String>,
    /// Call /v1/chat/completions instead of /v1/completions.
    #[arg(long)]
    pub chat: bool,
    /// Sampling temperature sent with every request.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Do not send ignore_eos (replies may then stop before max_tokens).
    #[arg(long)]
    pub no_ignore_eos: bool,
    /// Untimed requests sent one at a time before the test.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// No request starts after this many seconds.
    #[arg(long, default_value_t = 600.0)]
    pub max_duration_s: f64,
    /// A request is abandoned (an error) after this many seconds.
    #[arg(long, default_value_t = 300.0)]
    pub timeout_s: f64,
    /// Seed of the prompt mix.
    #[arg(long, default_value_t = 2024)]
    pub seed: u64,
    /// Fewest filler words per prompt.
    #[arg(long, default_value_t = 32)]
    pub min_words: usize,
    /// Most filler words per prompt.
    #[arg(long, default_value_t = 256)]
    pub max_words: usize,
    /// Goodput objective: most time to first token, ms.
    #[arg(long)]
    pub slo_ttft_ms: Option<f64>,
    /// Goodput objective: most mean time per output token after the first, ms.
    #[arg(long)]
    pub slo_itl_ms: Option<f64>,
    /// Goodput objective: most end-to-end latency, ms.
    #[arg(long)]
    pub slo_e2e_ms: Option<f64>,
    /// Bearer token for the server.
    #[arg(long, env = "LUMEN_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// A JSON object merged into every request body, e.g.
    /// '{"response_format": {"type": "json_object"}}' to measure constrained decoding.
    #[arg(long)]
    pub extra_body: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Runs `lumen bench`.
pub fn bench(args: BenchArgs) -> Result<()> {
    match args.command {
        Some(BenchCommand::Serve(s)) => serve(s),
        Some(BenchCommand::Bandwidth(b)) => bandwidth(b),
        None => model(args.model),
    }
}

fn parse_batches(s: &str) -> Result<Vec<usize>> {
    let s = s.trim();
    if s.is_empty() || s == "0" {
        return Ok(Vec::new());
    }
    s.split(',')
        .map(|x| {
            x.trim()
                .parse::<usize>()
                .with_context(|| format!("bad batch size {x:?} in -b {s:?}"))
        })
        .collect()
}

fn model(a: ModelArgs) -> Result<()> {
    let Some(name) = a.model else {
        bail!("give a model name or a .gguf path")
    };
    let loc =
        resolve(&name, &lumen_home()).context("fetch the default models with `make models`")?;
    let config = ModelBenchConfig {
        prompt_tokens: a.n_prompt,
        gen_tokens: a.n_gen,
        batch_sizes: parse_batches(&a.batch)?,
        batch_prompt: a.batch_prompt,
        batch_gen: a.batch_gen,
        reps: a.reps,
        threads: a.threads,
        seed: a.seed,
        max_seconds_per_test: a.max_seconds,
        layout: a.weight_layout,
        depth: a.depth,
    };
    let mut report = run_model_bench(&loc.path, &config)
        .with_context(|| format!("benchmarking {}", loc.path.display()))?;
    if a.engine && !config.batch_sizes.is_empty() {
        let ec = EngineBenchConfig {
            batch_sizes: config.batch_sizes.clone(),
            prompt_tokens: config.batch_prompt,
            gen_tokens: config.batch_gen,
            reps: config.reps,
            threads: config.threads,
            seed: config.seed,
            max_seconds_per_test: config.max_seconds_per_test,
            layout: config.layout,
        };
        report
            .results
            .extend(run_engine_bench(&loc.path, &ec).context("the engine benchmark")?);
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table::model_table(&report));
    }
    Ok(())
}

fn bandwidth(a: BandwidthArgs) -> Result<()> {
    let r = measure_read_bandwidth(a.mib, a.threads, a.reps);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "stream read: {:.1} GB/s best, {:.1} GB/s median ({} MiB, {} threads, {} reps)",
            r.best_gb_per_s, r.median_gb_per_s, a.mib, r.threads, r.reps
        );
    }
    Ok(())
}

fn serve(a: ServeBenchArgs) -> Result<()> {
    let mut config = ServeConfig::new(a.url);
    config.endpoint = if a.chat {
        Endpoint::Chat
    } else {
        Endpoint::Completions
    };
    config.model = a.model;
    config.concurrency = a.concurrency;
    config.requests = a.requests;
    config.max_tokens = a.max_tokens;
    config.temperature = a.temperature;
    config.ignore_eos = !a.no_ignore_eos;
    config.warmup = a.warmup;
    config.max_duration_s = a.max_duration_s;
    config.timeout_s = a.timeout_s;
    config.mix = PromptMix {
        seed: a.seed,
        min_words: a.min_words,
        max_words: a.max_words,
    };
    config.slo = Slo {
        ttft_ms: a.slo_ttft_ms,
        itl_ms: a.slo_itl_ms,
        e2e_ms: a.slo_e2e_ms,
    };
    config.api_key = a.api_key;
    if let Some(extra) = a.extra_body {
        match serde_json::from_str(&extra) {
            Ok(serde_json::Value::Object(m)) => config.extra_body = m,
            _ => anyhow::bail!("--extra-body must be a JSON object, got {extra}"),
        }
    }
    let report =
        run_serve_bench(&config).with_context(|| format!("load-testing {}", config.url))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table::serve_table(&report));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_lists() {
        assert_eq!(parse_batches("1,8, 32").unwrap(), vec![1, 8, 32]);
        assert!(parse_batches("").unwrap().is_empty());
        assert!(parse_batches("0").unwrap().is_empty());
        assert!(parse_batches("1,x").is_err());
    }
}
