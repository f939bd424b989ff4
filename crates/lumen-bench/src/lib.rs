//! Benchmarks that compare with llama.cpp's own: `lumen bench MODEL` and `lumen bench serve`.
//!
//! Two halves, two ideas:
//!
//! - [`model_bench`] times the forward pass and kernels directly (no scheduler, no sampler,
//!   no HTTP), the way llama-bench and llama-batched-bench time llama.cpp: `ppN`, `tgN` from an
//!   empty context, and batched decode at B sequences reported as llama-batched-bench's
//!   `S_TG`. Same definitions, so the two tools' numbers can be put side by side.
//!   [`engine_bench`] adds the same batched workload end to end through `lumen-engine`
//!   (scheduler, sampling, detokenization), to show what the forward pass loses on the way.
//! - [`serve`] is a load generator for any OpenAI-compatible server (Lumen, llama-server,
//!   vLLM): concurrent streaming clients over a seeded prompt mix, reporting throughput,
//!   TTFT, inter-token and end-to-end latency percentiles, errors and goodput under an SLO.
//!
//! Design choices:
//!
//! - **Median and spread, never one number.** Every timed figure is repeated; the report gives
//!   the median with stddev and min/max ([`stats::Summary`]). Noise on shared 2-core machines
//!   is real, so the comparison script alternates the two engines inside one run instead of
//!   comparing with an old number.
//! - **Reproducible inputs without data sets.** Token ids and prompts come from a seeded
//!   SplitMix64 ([`rng`]), which gives the same stream on every machine and dependency version.
//! - **A light client.** The load generator is a plain HTTP/1.1 hyper client on one thread,
//!   so it takes little CPU from the server it measures on the same machine; it counts output
//!   tokens from `usage` when the server reports it, else one per streamed chunk with text
//!   (both llama-server and Lumen stream one token per chunk).
//! - [`bandwidth`] measures the machine's stream-read bandwidth, the bound that single-stream
//!   decode is compared with.
//! - **No timing assertions.** Tests cover statistics, parsing and bookkeeping only.
pub mod bandwidth;
pub mod engine_bench;
pub mod error;
pub mod model_bench;
pub mod perplexity;
pub mod rng;
pub mod serve;
pub mod stats;
pub mod table;

pub use bandwidth::{measure_read_bandwidth, BandwidthReport};
pub use engine_bench::{run_engine_bench, EngineBenchConfig};
pub use error::BenchError;
pub use model_bench::{run_model_bench, ModelBenchConfig, ModelBenchReport, TestKind, TestResult};
pub use perplexity::{run_perplexity, PerplexityConfig, PerplexityReport};
pub use serve::{run_serve_bench, Endpoint, PromptMix, ServeConfig, ServeReport, Slo};
pub use stats::{Percentiles, Summary};
