//! `lumen batch run`: a batch file on this machine's engine, without a server.
//!
//! The lines are checked by the server's own validator and answered by the server's own
//! handler cores (an in-process server state with no HTTP in front), so an offline answer
//! equals what `/v1/batches` or the live endpoint would return. Every answer is appended to
//! OUTPUT and flushed as it arrives; a rerun with the same OUTPUT first cuts a torn last line
//! (a kill mid-write) and skips every custom_id already there, so an interrupted run resumes.

use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use lumen_engine::registry::lumen_home;
use lumen_server::auth::ApiKeys;
use lumen_server::batch::line::{answer, request_id_of, result_line};
use lumen_server::state::Limits;
use lumen_server::tenancy::Tenancy;
use lumen_server::{AppState, ServerConfig};
use serde_json::Value;

/// `lumen batch run` flags.
#[derive(Args)]
pub struct RunArgs {
    /// The input: one `{"custom_id","method":"POST","url","body"}` per line.
    input: PathBuf,
    /// Where the answers go (OpenAI's batch output lines; errors included, each custom_id
    /// once). Rerun with the same file to resume.
    #[arg(short, long)]
    output: PathBuf,
    /// Run every line on this model (instead of each body's `model`).
    #[arg(long)]
    model: Option<String>,
    /// The endpoint the lines call (default: the first line's `url`).
    #[arg(long)]
    endpoint: Option<String>,
    /// Lines in flight at once (the engine batches them).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Compute threads (default: every core).
    #[arg(long)]
    threads: Option<usize>,
}

/// The first line's `url`.
fn first_url(input: &Path) -> Result<String> {
    let f =
        std::fs::File::open(input).with_context(|| format!("cannot open {}", input.display()))?;
    for line in std::io::BufReader::new(f).lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(&line).context("the first line is not JSON")?;
        return v["url"]
            .as_str()
            .map(str::to_string)
            .context("the first line has no url");
    }
    bail!("{} has no lines", input.display())
}

/// The custom_ids already answered in `output`, after cutting a torn last line.
fn resume(output: &Path) -> Result<HashSet<String>> {
    let Ok(mut bytes) = std::fs::read(output) else {
        return Ok(HashSet::new());
    };
    let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if whole < bytes.len() {
        eprintln!("cutting a torn last line from {}", output.display());
        bytes.truncate(whole);
        std::fs::write(output, &bytes)?;
    }
    let mut done = HashSet::new();
    for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let v: Value = serde_json::from_slice(line)
            .with_context(|| format!("{} holds a line that is not JSON", output.display()))?;
        if let Some(id) = v["custom_id"].as_str() {
            done.insert(id.to_string());
        }
    }
    Ok(done)
}

/// Runs `lumen batch run`.
pub fn run(args: RunArgs) -> Result<()> {
    let endpoint = match &args.endpoint {
        Some(e) => e.clone(),
        None => first_url(&args.input)?,
    };
    let items = match lumen_server::batch::validate::validate(&args.input, &endpoint, 4 << 20) {
        Ok(items) => items,
        Err(errors) => {
            for e in &errors {
                eprintln!("line {:?}: {} ({})", e.line, e.message, e.code);
            }
            bail!("{} is not a valid batch input", args.input.display());
        }
    };
    let done = resume(&args.output)?;
    let total = items.len();
    let todo: Vec<_> = items
        .into_iter()
        .filter(|it| !done.contains(&it.custom_id))
        .collect();
    if !done.is_empty() {
        eprintln!(
            "resuming: {} of {total} lines already in {}",
            total - todo.len(),
            args.output.display()
        );
    }
    let mut config = ServerConfig::new(lumen_home());
    config.models = args.model.iter().cloned().collect();
    if let Some(t) = args.threads {
        config.threads = t.max(1);
    }
    let manager = lumen_server::server::manager(&config)?;
    let limits = Limits {
        max_body_bytes: 4 << 20,
        request_timeout: None,
        max_prompts: config.max_queued_requests,
        explain: false,
    };
    let tenancy = Arc::new(Tenancy::static_only(ApiKeys::new::<&str>(&[])));
    let state = AppState::with_manager(tenancy, limits, manager.clone());
    state.set_ready();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let left = todo.len();
    let result = rt.block_on(run_lines(&args, state, &endpoint, todo, left, total));
    manager.unload_all();
    result
}

async fn run_lines(
    args: &RunArgs,
    state: AppState,
    endpoint: &str,
    todo: Vec<lumen_store::NewItem>,
    left: usize,
    total: usize,
) -> Result<()> {
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.output)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    let slots = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let model = args.model.clone();
    let endpoint_owned = endpoint.to_string();
    let feeder = {
        let state = state.clone();
        tokio::spawn(async move {
            for it in todo {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return;
                };
                let (state, tx, endpoint) = (state.clone(), tx.clone(), endpoint_owned.clone());
                let body = with_model(&it.body, model.as_deref());
                tokio::spawn(async move {
                    // "Retry later" refusals (a full queue, a model loading) are retried.
                    let answered = loop {
                        match answer(state.clone(), &endpoint, &body, None).await {
                            Ok(a) => break a,
                            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                        }
                    };
                    drop(permit);
                    let _ = tx.send((it, answered));
                });
            }
        })
    };
    let started = Instant::now();
    let (mut n, mut failed, mut tokens) = (0usize, 0usize, 0u64);
    let already = total - left;
    while n < left {
        let Some((it, (status, body))) = rx.recv().await else {
            break;
        };
        let request_id = request_id_of(&body).unwrap_or_else(|| state.new_id("req"));
        let line = result_line(
            "batch_offline",
            it.line,
            &it.custom_id,
            status,
            &request_id,
            &body,
        );
        out.write_all(line.as_bytes())?;
        out.write_all(b"\n")?;
        out.flush()?;
        n += 1;
        if !(200..300).contains(&status) {
            failed += 1;
        }
        tokens += tokens_of(&body);
        let secs = started.elapsed().as_secs_f64().max(1e-3);
        let eta = (left - n) as f64 / (n as f64 / secs);
        eprint!(
            "\r{}/{total} lines ({failed} failed)  {:.1} tokens/s  ETA {:.0}s   ",
            already + n,
            tokens as f64 / secs,
            eta
        );
    }
    eprintln!();
    feeder.await.ok();
    eprintln!(
        "{n} lines answered in {:.1}s ({failed} failed); results in {}",
        started.elapsed().as_secs_f64(),
        args.output.display()
    );
    Ok(())
}

/// `body` with its `model` replaced by `model`, if one is given.
fn with_model(body: &str, model: Option<&str>) -> String {
    let Some(m) = model else {
        return body.to_string();
    };
    match serde_json::from_str::<Value>(body) {
        Ok(Value::Object(mut o)) => {
            o.insert("model".into(), Value::String(m.to_string()));
            Value::Object(o).to_string()
        }
        _ => body.to_string(),
    }
}

/// Tokens an answer generated (or, for embeddings, read).
fn tokens_of(body: &[u8]) -> u64 {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return 0;
    };
    let u = &v["usage"];
    u["completion_tokens"]
        .as_u64()
        .filter(|&t| t > 0)
        .or_else(|| u["prompt_tokens"].as_u64())
        .unwrap_or(0)
}
