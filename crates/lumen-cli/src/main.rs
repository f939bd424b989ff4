//! `lumen`: the command-line front end. Each subcommand is a thin shell over the library
//! crates; the logic lives there so the server and tests share it.

mod batch;
mod bench;
mod embed;
mod explain;
mod keys;
mod models;
mod perplexity;
mod run;
mod serve;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "lumen",
    version,
    about = "Serve and run language and embedding models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate from a model in the terminal: one prompt, or an interactive chat.
    Run(run::RunArgs),
    /// Explain a completion: a heatmap of the prompt by occlusion, `--lens`, `--json`.
    Explain(explain::ExplainArgs),
    /// Fetch a model from the built-in catalog, or import a local GGUF file or folder.
    Pull(models::PullArgs),
    /// List the installed models (architecture, quantization, parameters, size, context).
    List,
    /// Show one installed model: metadata, chat template, tokenizer, license.
    Show {
        /// The model's name.
        name: String,
    },
    /// Remove installed models.
    Rm {
        /// The models' names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Batch jobs: submit a JSONL file to a server, follow it, fetch results, or run offline.
    Batch(batch::BatchArgs),
    /// Serve the OpenAI-compatible HTTP API.
    Serve(serve::ServeArgs),
    /// Create, list, revoke and rotate API keys in the store.
    Keys(keys::KeysArgs),
    /// Create and list tenants in the store.
    Tenants(keys::TenantsArgs),
    /// Usage report from the store's ledger (JSON, OpenAI's Usage API buckets).
    Usage(keys::UsageArgs),
    /// Benchmark a model (pp/tg/batched decode, like llama-bench) or load-test a server.
    Bench(bench::BenchArgs),
    /// Embed texts with an embedding model; prints one JSON line per input.
    Embed(embed::EmbedArgs),
    /// A model's perplexity on a text file, computed as llama.cpp's llama-perplexity does.
    Perplexity(perplexity::PerplexityArgs),
}

fn main() {
    lumen_kernels::mem::limit_allocator_arenas();
    let cli = Cli::parse();
    // Logs go to stderr only, so stdout carries nothing but the model's output; the server
    // logs at info by default (where it listens, when it is ready).
    let default_level = if matches!(cli.command, Command::Serve(_)) {
        "info"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LUMEN_LOG")
                .unwrap_or_else(|_| default_level.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result: Result<()> = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Explain(args) => explain::explain(args),
        Command::Pull(args) => models::pull(args),
        Command::List => models::list(),
        Command::Show { name } => models::show(&name),
        Command::Rm { names } => models::rm(&names),
        Command::Serve(args) => serve::serve(args),
        Command::Batch(args) => batch::batch(args),
        Command::Keys(args) => keys::keys(args),
        Command::Tenants(args) => keys::tenants(args),
        Command::Usage(args) => keys::usage(args),
        Command::Bench(args) => bench::bench(args),
        Command::Embed(args) => embed::embed(args),
        Command::Perplexity(args) => perplexity::perplexity(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
