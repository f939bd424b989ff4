//! `lumen perplexity MODEL FILE`: the model's perplexity on a text file, computed as llama.cpp's
//! `llama-perplexity` does (see `lumen_bench::perplexity`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use lumen_bench::{run_perplexity, PerplexityConfig};
use lumen_engine::registry::{lumen_home, resolve, ChatModel};
use lumen_engine::WeightLayout;

/// Flags of `lumen perplexity`.
#[derive(Args, Debug)]
pub struct PerplexityArgs {
    /// Model name (under $LUMEN_HOME/models) or path to a .gguf file.
    pub model: String,
    /// The text to score (UTF-8).
    pub file: PathBuf,
    /// Tokens per chunk; the second half of each chunk is scored (llama-perplexity's -c).
    #[arg(short = 'c', long, default_value_t = 512)]
    pub ctx: usize,
    /// Score at most this many chunks.
    #[arg(long)]
    pub chunks: Option<usize>,
    /// Compute threads.
    #[arg(short = 't', long, env = "LUMEN_THREADS", default_value_t = 2)]
    pub threads: usize,
    /// Weight layout: `packed` (the default, fastest) or `exact` (llama.cpp's arithmetic).
    #[arg(long, env = "LUMEN_WEIGHT_LAYOUT", default_value_t = WeightLayout::default())]
    pub weight_layout: WeightLayout,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn perplexity(args: PerplexityArgs) -> Result<()> {
    let loc = resolve(&args.model, &lumen_home())?;
    let chat = ChatModel::load_with(&loc, args.weight_layout)
        .with_context(|| format!("loading {}", loc.path.display()))?;
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {} (UTF-8 text)", args.file.display()))?;
    let tokens = chat.tokenizer.encode(&text, false, false)?;
    let bos = chat
        .tokenizer
        .adds_bos()
        .then(|| chat.tokenizer.bos_id())
        .flatten();
    let config = PerplexityConfig {
        ctx: args.ctx,
        max_chunks: args.chunks,
        threads: args.threads.max(1),
    };
    let report = run_perplexity(&chat.model, &tokens, bos, &config)?;
    if args.json {
        let mut v = serde_json::to_value(&report)?;
        v["model"] = chat.name.clone().into();
        v["weight_layout"] = args.weight_layout.name().into();
        v["cpu_level"] = lumen_kernels::simd_level().into();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "{}: perplexity {:.4} over {} tokens ({} chunks of {}), {} layout, {:.1} s",
            chat.name,
            report.perplexity,
            report.scored_tokens,
            report.chunks,
            report.ctx,
            args.weight_layout,
            report.seconds
        );
    }
    Ok(())
}
