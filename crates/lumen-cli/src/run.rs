//! `lumen run`: stream a reply to stdout, or chat interactively.

use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use lumen_engine::registry::{lumen_home, resolve, ChatModel};
use lumen_engine::{
    ChatMessage, Engine, EngineConfig, EngineHandle, Event, GenerationParams, BLOCK_SIZE,
};
use lumen_models::WeightLayout;

/// Flags of `lumen run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Model name (under $LUMEN_HOME/models) or path to a .gguf file.
    pub model: String,
    /// The prompt; without one, an interactive chat starts.
    pub prompt: Option<String>,
    /// Send the prompt as written, without the chat template.
    #[arg(long)]
    pub raw: bool,
    /// Most tokens to generate per reply.
    #[arg(long, default_value_t = 512)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 = off).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Nucleus sampling threshold (1 = off).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Seed for reproducible sampling.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Compute threads.
    #[arg(long, env = "LUMEN_THREADS", default_value_t = default_threads())]
    pub threads: usize,
    /// Weight layout: `packed` (the default: row-interleaved Q4_0/Q4_1/Q8_0/Q5_0/Q5_1/Q4_K/Q5_K/Q6_K
    /// and the fast attention arithmetic, equal to llama.cpp within float rounding) or
    /// `exact` (llama.cpp's arithmetic, bit for bit).
    #[arg(long, env = "LUMEN_WEIGHT_LAYOUT", default_value_t = WeightLayout::default())]
    pub weight_layout: WeightLayout,
}

fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

pub fn run(args: RunArgs) -> Result<()> {
    let home = lumen_home();
    let loc = resolve(&args.model, &home)
        .with_context(|| "fetch the default models with `make models`".to_string())?;
    let chat = ChatModel::load_with(&loc, args.weight_layout)
        .with_context(|| format!("loading {}", loc.path.display()))?;
    let mut config = EngineConfig::new(chat.name.clone());
    config.threads = args.threads.max(1);
    let engine = Engine::start(chat.model.clone(), chat.tokenizer.clone(), config)?;
    let handle = engine.handle();
    let params = GenerationParams {
        temperature: Some(f64::from(args.temperature)),
        top_k: Some(i64::try_from(args.top_k).unwrap_or(i64::MAX)),
        top_p: Some(f64::from(args.top_p)),
        seed: args.seed.map(|s| s as i64),
        max_tokens: Some(i64::try_from(args.max_tokens).unwrap_or(i64::MAX)),
        ..GenerationParams::default()
    };
    // The flags go through the same rules as an API request, once, before any prompt.
    handle
        .validate(params.clone())
        .context("invalid generation flags")?;
    let interrupted = Arc::new(AtomicBool::new(false));
    let generating = Arc::new(AtomicBool::new(false));
    {
        let (i, g) = (interrupted.clone(), generating.clone());
        ctrlc::set_handler(move || {
            if g.load(Ordering::SeqCst) {
                i.store(true, Ordering::SeqCst);
            } else {
                std::process::exit(130);
            }
        })
        .context("installing the Ctrl-C handler")?;
    }
    let ctx = Session {
        chat: &chat,
        handle,
        args: &args,
        params,
        interrupted,
        generating,
    };
    match &args.prompt {
        Some(p) => {
            let prompt = if args.raw {
                p.clone()
            } else {
                ctx.render(&[ChatMessage::new("user", p)])?
            };
            ctx.generate(&prompt)?;
            Ok(())
        }
        None => ctx.interactive(),
    }
}

struct Session<'a> {
    chat: &'a ChatModel,
    handle: EngineHandle,
    args: &'a RunArgs,
    params: GenerationParams,
    interrupted: Arc<AtomicBool>,
    generating: Arc<AtomicBool>,
}

impl Session<'_> {
    fn render(&self, messages: &[ChatMessage]) -> Result<String> {
        Ok(self.chat.template.render(messages, true, None)?)
    }

    /// Streams one reply to stdout and returns its text.
    fn generate(&self, prompt: &str) -> Result<String> {
        let ids = self.chat.tokenizer.encode(prompt, true, true)?;
        let info = self.handle.info();
        let limit = info
            .context_len
            .min(info.kv_blocks.saturating_mul(BLOCK_SIZE));
        let room = limit.saturating_sub(ids.len());
        if room == 0 {
            bail!(
                "the conversation ({} tokens) fills the model's context of {limit}",
                ids.len()
            );
        }
        let mut params = self.params.clone();
        params.max_tokens = Some(i64::try_from(self.args.max_tokens.min(room)).unwrap_or(i64::MAX));
        let req = self.handle.prepare(params, ids)?;
        self.interrupted.store(false, Ordering::SeqCst);
        self.generating.store(true, Ordering::SeqCst);
        let mut stream = self.handle.submit(req)?;
        let mut out = std::io::stdout().lock();
        let mut reply = String::new();
        // Ctrl-C is checked between events; dropping the stream cancels the request.
        while let Some(ev) = stream.blocking_recv() {
            if self.interrupted.load(Ordering::SeqCst) {
                break;
            }
            match ev {
                Event::Token { text, .. } | Event::Finished { text, .. } => {
                    out.write_all(text.as_bytes())?;
                    out.flush()?;
                    reply.push_str(&text);
                }
                Event::Done(_) => break,
                Event::Error(e) => bail!("generation failed: {e}"),
                Event::GrammarError { message, .. } => bail!("generation failed: {message}"),
                Event::PromptLogprobs(_) => {}
            }
        }
        self.generating.store(false, Ordering::SeqCst);
        writeln!(out)?;
        Ok(reply)
    }

    fn interactive(&self) -> Result<()> {
        eprintln!(
            "Chatting with {}. Ctrl-C stops a reply, Ctrl-D leaves.",
            self.chat.name
        );
        let mut history: Vec<ChatMessage> = Vec::new();
        let stdin = std::io::stdin();
        loop {
            eprint!(">>> ");
            std::io::stderr().flush()?;
            let mut line = String::new();
            if stdin.lock().read_line(&mut line)? == 0 {
                eprintln!();
                return Ok(());
            }
            let line = line.trim_end_matches(['\n', '\r']);
            if line.trim().is_empty() {
                continue;
            }
            history.push(ChatMessage::new("user", line));
            let prompt = if self.args.raw {
                line.to_string()
            } else {
                self.render(&history)?
            };
            match self.generate(&prompt) {
                Ok(reply) => history.push(ChatMessage::new("assistant", &reply)),
                Err(e) => {
                    eprintln!("error: {e:#}");
                    history.pop();
                }
            }
        }
    }
}
