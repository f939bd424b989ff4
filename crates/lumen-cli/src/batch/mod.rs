//! `lumen batch`: submit a JSONL file to a running server's Batches API, follow it, fetch its
//! results, or run one offline on this machine's engine (`lumen batch run`).

mod client;
mod offline;

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use client::Client;

/// `lumen batch …`.
#[derive(Args)]
pub struct BatchArgs {
    #[command(subcommand)]
    command: BatchCommand,
}

/// Where the server is.
#[derive(Args, Clone)]
pub struct ServerArgs {
    /// The server (`http://HOST:PORT`).
    #[arg(long, env = "LUMEN_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The API key to send.
    #[arg(long, env = "LUMEN_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

#[derive(Subcommand)]
enum BatchCommand {
    /// Upload INPUT.jsonl and create a batch; prints its id (with --wait, follows it to the end).
    Submit {
        /// The input: one `{"custom_id","method":"POST","url","body"}` per line.
        input: PathBuf,
        /// The endpoint every line calls.
        #[arg(long, default_value = "/v1/chat/completions")]
        endpoint: String,
        /// Metadata pairs, KEY=VALUE (repeatable).
        #[arg(long = "metadata", value_parser = parse_pair)]
        metadata: Vec<(String, String)>,
        /// Follow the batch with a progress line until it ends.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Print a batch (OpenAI's batch object, as JSON).
    Status {
        /// The batch id.
        id: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Write a batch's results to FILE: the output lines, then the error lines (each
    /// custom_id once).
    Results {
        /// The batch id.
        id: String,
        /// Where to write them.
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Run INPUT.jsonl on this machine, without a server: the same engine and handlers.
    /// Rerun with the same OUTPUT to resume (custom_ids already there are skipped).
    Run(offline::RunArgs),
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got '{s}'")),
    }
}

/// Runs `lumen batch`.
pub fn batch(args: BatchArgs) -> Result<()> {
    match args.command {
        BatchCommand::Submit {
            input,
            endpoint,
            metadata,
            wait,
            server,
        } => {
            let c = Client::new(&server.url, server.api_key)?;
            let file = c.upload(&input)?;
            let file_id = file["id"].as_str().context("upload answered no id")?;
            let mut body = json!({
                "input_file_id": file_id,
                "endpoint": endpoint,
                "completion_window": "24h",
            });
            if !metadata.is_empty() {
                body["metadata"] = json!(metadata
                    .into_iter()
                    .collect::<std::collections::BTreeMap<_, _>>());
            }
            let b = c.post("/v1/batches", &body)?;
            let id = b["id"]
                .as_str()
                .context("create answered no id")?
                .to_string();
            println!("{id}");
            if wait {
                let b = follow(&c, &id)?;
                print_summary(&b);
                if b["status"] != "completed" {
                    bail!("batch {id} ended {}", b["status"]);
                }
            }
            Ok(())
        }
        BatchCommand::Status { id, server } => {
            let c = Client::new(&server.url, server.api_key)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&c.get(&format!("/v1/batches/{id}"))?)?
            );
            Ok(())
        }
        BatchCommand::Results { id, output, server } => {
            let c = Client::new(&server.url, server.api_key)?;
            let b = c.get(&format!("/v1/batches/{id}"))?;
            let files: Vec<&str> = ["output_file_id", "error_file_id"]
                .iter()
                .filter_map(|k| b[*k].as_str())
                .collect();
            if files.is_empty() {
                bail!("batch {id} has no results yet (status {})", b["status"]);
            }
            let tmp = output.with_extension("part");
            let mut out = std::io::BufWriter::new(
                std::fs::File::create(&tmp)
                    .with_context(|| format!("cannot write {}", tmp.display()))?,
            );
            for f in files {
                c.download(f, &mut out)?;
            }
            out.flush()?;
            drop(out);
            std::fs::rename(&tmp, &output)?;
            print_summary(&b);
            eprintln!("results written to {}", output.display());
            Ok(())
        }
        BatchCommand::Run(args) => offline::run(args),
    }
}

/// Polls batch `id` with a progress line on stderr until it ends; the final object.
fn follow(c: &Client, id: &str) -> Result<Value> {
    let started = Instant::now();
    let mut first_done: Option<(Instant, u64)> = None;
    loop {
        let b = c.get(&format!("/v1/batches/{id}"))?;
        let status = b["status"].as_str().unwrap_or("?").to_string();
        let n = |k: &str| b["request_counts"][k].as_u64().unwrap_or(0);
        let (total, done) = (n("total"), n("completed") + n("failed"));
        let start = *first_done.get_or_insert((Instant::now(), done));
        let rate = (done - start.1.min(done)) as f64 / start.0.elapsed().as_secs_f64().max(1e-3);
        let eta = if rate > 0.0 && total > done {
            format!("ETA {:.0}s", (total - done) as f64 / rate)
        } else {
            "ETA -".into()
        };
        eprint!(
            "\r{status:<11} {done}/{total} ({} failed) {rate:.1} lines/s {eta} [{:.0}s]   ",
            n("failed"),
            started.elapsed().as_secs_f64()
        );
        if matches!(
            status.as_str(),
            "completed" | "failed" | "expired" | "cancelled"
        ) {
            eprintln!();
            return Ok(b);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn print_summary(b: &Value) {
    let n = |k: &str| b["request_counts"][k].as_u64().unwrap_or(0);
    eprintln!(
        "{} {}: {} lines, {} completed, {} failed",
        b["id"].as_str().unwrap_or(""),
        b["status"].as_str().unwrap_or(""),
        n("total"),
        n("completed"),
        n("failed")
    );
    if let Some(errors) = b["errors"]["data"].as_array() {
        for e in errors {
            eprintln!(
                "  line {}: {} ({})",
                e["line"],
                e["message"].as_str().unwrap_or(""),
                e["code"].as_str().unwrap_or("")
            );
        }
    }
}
