//! `lumen serve`: the OpenAI-compatible HTTP service (all logic lives in `lumen-server`).

use std::time::Duration;

use anyhow::Result;
use clap::Args;
use lumen_engine::registry::lumen_home;
use lumen_engine::{SchedulerConfig, SpecConfig, WeightLayout};
use lumen_server::conn::{ConnLimits, Timeouts};
use lumen_server::manager::KeepAlive;
use lumen_server::ServerConfig;

/// Flags of `lumen serve` (each with a `LUMEN_*` environment fallback).
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to bind.
    #[arg(long, env = "LUMEN_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to bind (0 picks a free one).
    #[arg(long, env = "LUMEN_PORT", default_value_t = 8080)]
    pub port: u16,
    /// Restrict serving to this model, by name under $LUMEN_HOME/models or by path;
    /// repeatable (LUMEN_MODEL takes a comma-separated list). Default: every installed model.
    #[arg(long = "model", env = "LUMEN_MODEL", value_delimiter = ',')]
    pub models: Vec<String>,
    /// Load this model at start (`/ready` waits for it); repeatable. Others load on their
    /// first request.
    #[arg(long = "preload", env = "LUMEN_PRELOAD", value_delimiter = ',')]
    pub preload: Vec<String>,
    /// Another name for a model, as ALIAS=MODEL (`gpt-4o-mini=smollm2`); repeatable.
    #[arg(long = "alias", env = "LUMEN_ALIAS", value_delimiter = ',', value_parser = parse_alias)]
    pub aliases: Vec<(String, String)>,
    /// Memory all loaded models may hold together (weights and KV caches), like `8GiB`,
    /// `512MiB` or a byte count; loading past it unloads the least recently used idle model.
    /// Default: 75 % of RAM.
    #[arg(long, env = "LUMEN_MAX_MEMORY", value_parser = lumen_models::parse_byte_size)]
    pub max_memory: Option<u64>,
    /// Seconds a request waits for its model to load before a 503.
    #[arg(long, env = "LUMEN_LOAD_TIMEOUT", default_value_t = 600.0, value_parser = positive_secs)]
    pub load_timeout: f64,
    /// How long a model stays loaded once idle: seconds or a duration (`5m`, `1h`); negative
    /// keeps it forever, 0 unloads it as soon as its requests finish. Requests may set their
    /// own `keep_alive`.
    #[arg(long, env = "LUMEN_KEEP_ALIVE", default_value = "5m", value_parser = KeepAlive::parse, allow_hyphen_values = true)]
    pub keep_alive: KeepAlive,
    /// Accepted API key; repeatable (LUMEN_API_KEY takes a comma-separated list). None: open.
    #[arg(
        long = "api-key",
        env = "LUMEN_API_KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<String>,
    /// Administrator key (the admin API and everything else); repeatable (LUMEN_ADMIN_KEY
    /// takes a comma-separated list). Store keys with role `admin` work too.
    #[arg(
        long = "admin-key",
        env = "LUMEN_ADMIN_KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub admin_keys: Vec<String>,
    /// The keys and usage database: a file path, sqlite://PATH, or postgres://USER@HOST/DB
    /// (several servers on one PostgreSQL share their limits). Default: $LUMEN_HOME/lumen.db.
    #[arg(long, env = "LUMEN_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Days raw usage events are kept in the database (hourly and daily totals are kept
    /// forever); 0 keeps them forever.
    #[arg(long, env = "LUMEN_USAGE_RETENTION_DAYS", default_value_t = 90)]
    pub usage_retention_days: u64,
    /// A model's price for usage reports' `cost`: MODEL=IN:OUT in USD per million input and
    /// output tokens (cached input tokens count as input), e.g. smollm2=0.05:0.2; repeatable
    /// (or comma-separated in the environment). Models without a price cost nothing.
    #[arg(long = "price", env = "LUMEN_PRICES", value_delimiter = ',', value_parser = parse_price)]
    pub prices: Vec<String>,
    /// Requests in flight per model (running or queued) beyond which new ones get 429.
    #[arg(long, env = "LUMEN_MAX_QUEUED_REQUESTS", default_value_t = 256)]
    pub max_queued_requests: usize,
    /// KV cache per model, in MiB.
    #[arg(long, env = "LUMEN_KV_CACHE_MB", default_value_t = 256)]
    pub kv_cache_mb: usize,
    /// Most tokens (prompt chunks and decodes) one engine step computes: smaller gives
    /// steadier streams, larger gives faster prefill of long prompts.
    #[arg(long, env = "LUMEN_MAX_NUM_BATCHED_TOKENS", default_value_t = SchedulerConfig::default().max_num_batched_tokens as u32, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub max_num_batched_tokens: u32,
    /// Most sequences one engine step runs at once.
    #[arg(long, env = "LUMEN_MAX_NUM_SEQS", default_value_t = SchedulerConfig::default().max_num_seqs as u32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_num_seqs: u32,
    /// Weight layout of chat models: `packed` (the default: row-interleaved Q4_0/Q4_1/Q8_0/Q5_0/Q5_1/Q4_K/Q5_K/Q6_K
    /// and the fast attention arithmetic, equal to llama.cpp within float rounding) or
    /// `exact` (llama.cpp's arithmetic, bit for bit).
    #[arg(long, env = "LUMEN_WEIGHT_LAYOUT", default_value_t = WeightLayout::default())]
    pub weight_layout: WeightLayout,
    /// Speculative decoding by prompt lookup: most draft tokens per step (0: off). Output is
    /// unchanged; it runs with the packed layout only, while few sequences run.
    #[arg(long, env = "LUMEN_NUM_SPECULATIVE_TOKENS", default_value_t = SpecConfig::default().tokens as u32, value_parser = clap::value_parser!(u32).range(0..=64))]
    pub num_speculative_tokens: u32,
    /// Speculate only while at most this many sequences run.
    #[arg(long, env = "LUMEN_SPECULATIVE_MAX_SEQS", default_value_t = SpecConfig::default().max_seqs as u32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub speculative_max_seqs: u32,
    /// Compute threads, shared by all loaded models (default: one per CPU).
    #[arg(long, env = "LUMEN_THREADS")]
    pub threads: Option<usize>,
    /// Serve `POST /v1/explain` (occlusion, logit lens, logit attribution, attention; see
    /// docs/explain.md). Explanations run below generation, but each costs many forward passes.
    #[arg(long, env = "LUMEN_ENABLE_EXPLAIN")]
    pub enable_explain: bool,
    /// Batch-job lines (`/v1/batches`) this server runs at once, at batch priority: enough
    /// to fill the engine's batch, well under --max-queued-requests.
    #[arg(long, env = "LUMEN_BATCH_CONCURRENCY", default_value_t = 32)]
    pub batch_concurrency: usize,
    /// Batch-job lines that advance while interactive requests are in flight: the server
    /// keeps only this many running, and the engine gives batch sequences only this many
    /// tokens of a step (decode rows and prompt tokens alike) while any interactive sequence
    /// runs or waits, since every row of a step costs the streams time. The rest wait for
    /// idle capacity. 0 pauses batch work entirely while interactive work runs.
    #[arg(long, env = "LUMEN_BATCH_CONCURRENCY_BUSY", default_value_t = 1)]
    pub batch_concurrency_busy: usize,
    /// Milliseconds batch work keeps yielding after the last interactive request ended, so
    /// that a client's next request, sent a moment later, does not wait behind a step full
    /// of batch prefills.
    #[arg(long, env = "LUMEN_BATCH_YIELD_GRACE_MS", default_value_t = 50)]
    pub batch_yield_grace_ms: u64,
    /// Seconds a batch line's claim lasts without renewal: after a server dies, its lines
    /// run again elsewhere (or after its restart) once this passes.
    #[arg(long, env = "LUMEN_BATCH_LEASE", default_value_t = 30)]
    pub batch_lease: u64,
    /// Where uploaded files and batch results are kept (default `$LUMEN_HOME/files`); one
    /// folder per database: at start, files in it without a row in the database are deleted.
    #[arg(long, env = "LUMEN_FILES_DIR")]
    pub files_dir: Option<std::path::PathBuf>,
    /// Tests only: a file holding seconds added to the batch clock (moves batches past
    /// their completion window).
    #[arg(long, env = "LUMEN_TEST_CLOCK_FILE", hide = true)]
    pub test_clock_file: Option<std::path::PathBuf>,
    /// Seconds after which a request is cancelled: a generation ends with finish_reason
    /// "cancelled" and what it has, an embedding request is answered 504; 0: never.
    #[arg(long, env = "LUMEN_REQUEST_TIMEOUT", default_value_t = 600)]
    pub request_timeout: u64,
    /// Seconds in-flight requests may take to finish after SIGTERM.
    #[arg(long, env = "LUMEN_SHUTDOWN_GRACE", default_value_t = 30)]
    pub shutdown_grace: u64,
    /// Largest request body, in bytes.
    #[arg(long, env = "LUMEN_MAX_BODY_BYTES", default_value_t = 4 << 20)]
    pub max_body_bytes: usize,
    /// Seconds a client may take to send a request's headers (from its first byte, or from
    /// connecting); then the connection is closed.
    #[arg(long, env = "LUMEN_HEADER_TIMEOUT", default_value_t = 10.0, value_parser = positive_secs)]
    pub header_timeout: f64,
    /// Seconds of silence allowed inside a request body.
    #[arg(long, env = "LUMEN_BODY_TIMEOUT", default_value_t = 30.0, value_parser = positive_secs)]
    pub body_timeout: f64,
    /// Seconds an idle keep-alive connection stays open between requests.
    #[arg(long, env = "LUMEN_KEEP_ALIVE_TIMEOUT", default_value_t = 60.0, value_parser = positive_secs)]
    pub keep_alive_timeout: f64,
    /// Bytes per second a request body must average after its first --body-timeout seconds
    /// (a body gets one more second per this many bytes received).
    #[arg(long, env = "LUMEN_MIN_BODY_RATE", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    pub min_body_rate: u32,
    /// Most simultaneous connections from one IP address; more are closed at once.
    #[arg(long, env = "LUMEN_MAX_CONNECTIONS_PER_IP", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections_per_ip: u32,
    /// Do not serve the playground page at `/` (the API is unchanged).
    #[arg(long, env = "LUMEN_NO_UI")]
    pub no_ui: bool,
}

/// Checks one `--price` flag (the whole list is parsed again, for duplicates, at start).
fn parse_price(s: &str) -> Result<String, String> {
    lumen_store::Price::parse_flag(s).map(|_| s.to_string())
}

/// A duration flag in seconds: finite, above zero, at most a day.
fn positive_secs(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|e| format!("not a number of seconds: {e}"))?;
    if v.is_finite() && v > 0.0 && v <= 86_400.0 {
        Ok(v)
    } else {
        Err(format!(
            "must be above 0 and at most 86400 seconds, got {v}"
        ))
    }
}

/// `ALIAS=MODEL`, both non-empty.
fn parse_alias(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((a, m)) if !a.trim().is_empty() && !m.trim().is_empty() => {
            Ok((a.trim().to_string(), m.trim().to_string()))
        }
        _ => Err(format!("expected ALIAS=MODEL, got '{s}'")),
    }
}

pub fn serve(args: ServeArgs) -> Result<()> {
    // Models load on demand, perhaps long after the start: a bad setting is refused now.
    lumen_models::check_load_env().map_err(anyhow::Error::msg)?;
    let mut config = ServerConfig::new(lumen_home());
    config.host = args.host;
    config.port = args.port;
    config.models = args.models;
    config.preload = args.preload;
    config.aliases = args.aliases;
    config.max_memory = args.max_memory;
    config.load_timeout = Duration::from_secs_f64(args.load_timeout);
    config.keep_alive = args.keep_alive;
    config.api_keys = args
        .api_keys
        .into_iter()
        .filter(|k| !k.is_empty())
        .collect();
    config.admin_keys = args
        .admin_keys
        .into_iter()
        .filter(|k| !k.is_empty())
        .collect();
    config.database_url = args.database_url;
    config.usage_retention_days =
        (args.usage_retention_days > 0).then_some(args.usage_retention_days);
    config.prices = lumen_store::Price::parse_flags(&args.prices).map_err(anyhow::Error::msg)?;
    config.max_queued_requests = args.max_queued_requests;
    config.kv_cache_mb = args.kv_cache_mb;
    config.scheduler = SchedulerConfig {
        max_num_batched_tokens: args.max_num_batched_tokens as usize,
        max_num_seqs: args.max_num_seqs as usize,
        busy_batch_tokens: args.batch_concurrency_busy,
        busy_grace: Duration::from_millis(args.batch_yield_grace_ms),
        // The engine turns it on where the model allows it.
        ..SchedulerConfig::default()
    };
    config.weight_layout = args.weight_layout;
    config.enable_explain = args.enable_explain;
    config.batch_concurrency = args.batch_concurrency.max(1);
    config.batch_concurrency_busy = args.batch_concurrency_busy.max(1);
    config.batch_lease = Duration::from_secs(args.batch_lease.max(1));
    config.test_clock_file = args.test_clock_file.clone();
    config.files_dir = args.files_dir.clone();
    config.speculative = SpecConfig {
        tokens: args.num_speculative_tokens as usize,
        max_seqs: args.speculative_max_seqs as usize,
    };
    if let Some(t) = args.threads {
        config.threads = t.max(1);
    }
    config.request_timeout =
        (args.request_timeout > 0).then(|| Duration::from_secs(args.request_timeout));
    config.shutdown_grace = Duration::from_secs(args.shutdown_grace);
    config.max_body_bytes = args.max_body_bytes;
    config.ui = !args.no_ui;
    config.conn = ConnLimits {
        timeouts: Timeouts {
            header: Duration::from_secs_f64(args.header_timeout),
            body_idle: Duration::from_secs_f64(args.body_timeout),
            keep_alive: Duration::from_secs_f64(args.keep_alive_timeout),
            min_body_rate: args.min_body_rate,
        },
        max_per_ip: args.max_connections_per_ip as usize,
    };
    tracing::info!(
        cpu_level = lumen_kernels::simd_level(),
        "kernels run at CPU level {}",
        lumen_kernels::simd_level()
    );
    lumen_server::run(config)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases() {
        assert_eq!(parse_alias("a=b"), Ok(("a".into(), "b".into())));
        assert!(parse_alias("a=").is_err() && parse_alias("ab").is_err());
    }
}
