//! `lumen embed`: embeddings for scripts, one JSON line per input on stdout.
//!
//! Texts come from the command line, or one per line from stdin when none are given. Inputs
//! follow the same rules as `/v1/embeddings` (the engine's `prepare`): an input over the
//! model's maximum length is an error unless `--truncate N` asks to cut it to N tokens.

use std::io::{BufRead, BufWriter, Write};

use anyhow::{bail, Context, Result};
use clap::Args;
use lumen_engine::registry::{lumen_home, resolve, EmbeddingModel, ModelKind};
use lumen_engine::{EmbedConfig, EmbedEngine, EmbedInput, MAX_EMBED_INPUTS};

/// Flags of `lumen embed`.
#[derive(Args, Debug)]
pub struct EmbedArgs {
    /// Embedding model name (under $LUMEN_HOME/models) or path to its folder.
    pub model: String,
    /// Texts to embed; without any, one text per line is read from stdin.
    pub texts: Vec<String>,
    /// Cut inputs longer than this many tokens (special tokens included) instead of failing.
    #[arg(long)]
    pub truncate: Option<usize>,
    /// Compute threads.
    #[arg(long, env = "LUMEN_THREADS", default_value_t = default_threads())]
    pub threads: usize,
}

/// One output line; vectors print as the shortest decimals that read back to the same f32.
#[derive(serde::Serialize)]
struct Line<'a> {
    index: usize,
    embedding: &'a [f32],
}

fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn read_stdin() -> Result<Vec<String>> {
    let mut texts = Vec::new();
    for (i, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line.context("reading stdin")?;
        if line.is_empty() {
            bail!(
                "line {} of stdin is empty; every line is one text to embed",
                i + 1
            );
        }
        texts.push(line);
    }
    Ok(texts)
}

pub fn embed(args: EmbedArgs) -> Result<()> {
    let texts = if args.texts.is_empty() {
        read_stdin()?
    } else {
        args.texts
    };
    if texts.is_empty() {
        bail!("nothing to embed: give texts as arguments or one per line on stdin");
    }
    let loc = resolve(&args.model, &lumen_home())
        .context("fetch the default models with `make models`")?;
    if loc.kind != ModelKind::Embedding {
        bail!(
            "'{}' is a chat model; `lumen embed` needs an embedding model such as all-minilm-l6-v2",
            loc.name
        );
    }
    let em =
        EmbeddingModel::load(&loc).with_context(|| format!("loading {}", loc.path.display()))?;
    let config = EmbedConfig {
        threads: args.threads.max(1),
        ..EmbedConfig::default()
    };
    let engine = EmbedEngine::start(em.model.clone(), em.tokenizer.clone(), config)?;
    let handle = engine.handle();
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut index = 0;
    // Requests of at most MAX_EMBED_INPUTS texts; the engine packs each into passes.
    for chunk in texts.chunks(MAX_EMBED_INPUTS) {
        let inputs = chunk.iter().map(|t| EmbedInput::Text(t.clone())).collect();
        let seqs = handle
            .prepare(inputs, args.truncate)
            .map_err(|e| anyhow::anyhow!("{e} (input {}..{})", index, index + chunk.len()))?;
        for v in handle.embed_blocking(seqs)? {
            serde_json::to_writer(
                &mut out,
                &Line {
                    index,
                    embedding: &v,
                },
            )?;
            out.write_all(b"\n")?;
            index += 1;
        }
    }
    out.flush()?;
    Ok(())
}
