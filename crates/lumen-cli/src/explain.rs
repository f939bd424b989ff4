//! `lumen explain`: why a model answered as it did, in the terminal.
//!
//! Runs in-process like `lumen run` (an engine of its own, no server), through the very code
//! `POST /v1/explain` uses (`lumen_server::api::explain`), so `--json` prints exactly the API's
//! answer. Without `--json` it prints the completion and the prompt as a heatmap of occlusion
//! scores (how much the completion's total logprob drops without each word): coloured on a
//! terminal, one scored line per span otherwise; `--lens` adds a layer × position grid of the
//! logit lens's most likely token.

use std::io::IsTerminal;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use lumen_engine::registry::{lumen_home, resolve, ChatModel};
use lumen_engine::{Engine, EngineConfig};
use lumen_models::WeightLayout;
use lumen_server::api::explain::{prepare_explain, run_explain, ExplainBody};
use lumen_server::api::explain_out::ExplainResponse;
use lumen_server::metrics::ModelMetrics;
use lumen_server::state::ChatServed;

/// Flags of `lumen explain`.
#[derive(Args, Debug)]
pub struct ExplainArgs {
    /// Model name (under $LUMEN_HOME/models) or path to a .gguf file.
    pub model: String,
    /// The prompt (a user message, unless `--raw`).
    pub prompt: String,
    /// Send the prompt as written, without the chat template.
    #[arg(long)]
    pub raw: bool,
    /// The completion to explain; without it, one is generated greedily.
    #[arg(long)]
    pub completion: Option<String>,
    /// Most tokens to generate (at most 32).
    #[arg(long, default_value_t = 16)]
    pub max_tokens: i64,
    /// How the prompt is cut for occlusion: token, word or sentence.
    #[arg(long, default_value = "word")]
    pub spans: String,
    /// Occlusion mode: mask (positions kept) or delete.
    #[arg(long, default_value = "mask")]
    pub mode: String,
    /// Also print the logit lens: each layer's most likely next token at each position.
    #[arg(long)]
    pub lens: bool,
    /// Print the API's JSON answer instead.
    #[arg(long)]
    pub json: bool,
    /// Compute threads.
    #[arg(long, env = "LUMEN_THREADS")]
    pub threads: Option<usize>,
    /// Weight layout (`packed` or `exact`), as `lumen run`.
    #[arg(long, env = "LUMEN_WEIGHT_LAYOUT", default_value_t = WeightLayout::default())]
    pub weight_layout: WeightLayout,
}

/// Runs `lumen explain`.
pub fn explain(args: ExplainArgs) -> Result<()> {
    let home = lumen_home();
    let loc = resolve(&args.model, &home)
        .with_context(|| "fetch the default models with `make models`".to_string())?;
    let chat = ChatModel::load_with(&loc, args.weight_layout)
        .with_context(|| format!("loading {}", loc.path.display()))?;
    let mut config = EngineConfig::new(chat.name.clone());
    if let Some(t) = args.threads {
        config.threads = t.max(1);
    }
    let engine = Engine::start(chat.model.clone(), chat.tokenizer.clone(), config)?;
    let served = ChatServed {
        name: chat.name.clone(),
        handle: engine.handle(),
        template: chat.template,
        created: 0,
        metrics: Arc::new(ModelMetrics::default()),
    };
    let mut body = serde_json::json!({
        "model": chat.name,
        "max_tokens": args.max_tokens,
        "occlusion": {"spans": args.spans, "mode": args.mode},
    });
    if args.raw {
        body["prompt"] = args.prompt.clone().into();
    } else {
        body["messages"] = serde_json::json!([{"role": "user", "content": args.prompt}]);
    }
    if let Some(c) = &args.completion {
        body["completion"] = c.clone().into();
    }
    if args.lens {
        body["logit_lens"] = serde_json::json!({"top_k": 1});
    }
    let body: ExplainBody = serde_json::from_value(body)?;
    let prepared = prepare_explain(&body, &served).map_err(|e| anyhow::anyhow!("{e}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let answer = rt
        .block_on(run_explain(&served, prepared))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    let tty = std::io::stdout().is_terminal();
    print!("{}", render(&answer, tty, args.lens));
    Ok(())
}

/// Per prompt token, the score of the span that holds it (total logprob drop of the
/// completion when the span is occluded); `None` for tokens in no span.
fn token_scores(a: &ExplainResponse) -> Vec<Option<f32>> {
    let mut scores = vec![None; a.tokens.prompt.len()];
    if let Some(o) = &a.occlusion {
        for (s, span) in o.spans.iter().enumerate() {
            let total: f32 = o.delta.iter().map(|row| row[s]).sum();
            for slot in scores.iter_mut().take(span.end).skip(span.start) {
                *slot = Some(total);
            }
        }
    }
    scores
}

/// A 256-colour background: reds for spans the completion relies on, blues for spans that
/// work against it, stronger for larger scores.
fn colour(score: f32, max: f32) -> u8 {
    const RED: [u8; 5] = [224, 217, 210, 203, 196];
    const BLUE: [u8; 5] = [195, 153, 117, 75, 33];
    let level = ((score.abs() / max.max(1e-6)) * 4.0)
        .round()
        .clamp(0.0, 4.0) as usize;
    if score >= 0.0 {
        RED[level]
    } else {
        BLUE[level]
    }
}

fn visible(text: &str) -> String {
    text.replace('\n', "\\n")
}

/// The report as text.
fn render(a: &ExplainResponse, tty: bool, lens: bool) -> String {
    let mut out = String::new();
    out.push_str(&format!("completion: {}\n\n", a.completion.trim_end()));
    let scores = token_scores(a);
    let max = scores.iter().flatten().fold(0.0f32, |m, s| m.max(s.abs()));
    if tty {
        for (t, s) in a.tokens.prompt.iter().zip(&scores) {
            match s {
                Some(s) if !t.protected => out.push_str(&format!(
                    "\x1b[48;5;{}m\x1b[30m{}\x1b[0m",
                    colour(*s, max),
                    t.text
                )),
                _ => out.push_str(&format!("\x1b[2m{}\x1b[0m", t.text)),
            }
        }
        out.push_str("\n\n(red: the completion depends on it; blue: it works against it)\n");
    } else if let Some(o) = &a.occlusion {
        out.push_str("score   span (logprob drop of the completion without it)\n");
        for (s, span) in o.spans.iter().enumerate() {
            let total: f32 = o.delta.iter().map(|row| row[s]).sum();
            out.push_str(&format!("{total:>7.3} {}\n", visible(&span.text)));
        }
    }
    if lens {
        if let Some(cells) = &a.logit_lens {
            out.push_str("\nlogit lens (most likely next token per layer; columns: positions)\n");
            out.push_str("layer");
            for c in cells {
                let next = a
                    .tokens
                    .prompt
                    .iter()
                    .chain(&a.tokens.completion)
                    .nth(c.position + 1)
                    .map_or(String::new(), |t| visible(&t.text));
                out.push_str(&format!(" | {:<12}", format!("{}→{}", c.position, next)));
            }
            out.push('\n');
            let layers = cells.first().map_or(0, |c| c.layers.len());
            for l in 0..layers {
                out.push_str(&format!("{l:>5}"));
                for c in cells {
                    let cell = &c.layers[l];
                    let top = cell.top.first();
                    let text = top.map_or(String::new(), |t| visible(&t.text));
                    let p = top.map_or(0.0, |t| t.logprob.exp());
                    let text: String = text.chars().take(8).collect();
                    out.push_str(&format!(" | {text:<8}{p:>4.2}"));
                }
                out.push('\n');
            }
        }
    }
    out
}
