//! Shared helpers for the engine's integration tests: the default model and a collector that
//! runs a request to completion.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use lumen_engine::registry::{resolve, ChatModel};
use lumen_engine::{
    Engine, EngineConfig, Event, FinishReason, GenerationParams, RequestStream, Usage,
};

/// The default chat model, or `None` with a note when absent (a failure under CI; see
/// `lumen_testkit`).
pub fn smollm2() -> Option<ChatModel> {
    lumen_testkit::chat_gguf()?;
    let loc =
        resolve(lumen_testkit::CHAT_MODEL, &lumen_testkit::lumen_home()).expect("resolve smollm2");
    Some(ChatModel::load(&loc).expect("load smollm2"))
}

/// An engine over `chat` with a KV budget in blocks.
pub fn engine(chat: &ChatModel, kv_blocks: usize, max_seqs: usize) -> Engine {
    let geo = chat.model.kv_geometry(lumen_engine::BLOCK_SIZE);
    let per_block = lumen_models::KvStorage::bytes_per_block(geo, chat.model.config().n_layers);
    let mut cfg = EngineConfig::new("smollm2");
    cfg.threads = 2;
    cfg.kv_cache_bytes = kv_blocks * per_block;
    cfg.scheduler.max_num_seqs = max_seqs;
    cfg.max_queued_requests = 1024;
    Engine::start(chat.model.clone(), chat.tokenizer.clone(), cfg).expect("engine")
}

/// Everything one request produced.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Outcome {
    pub tokens: Vec<Vec<u32>>,
    pub logprobs: Vec<Vec<f32>>,
    pub text: Vec<String>,
    pub finish: Vec<Option<FinishReason>>,
    pub usage: Usage,
}

/// Drains a stream to its end.
pub fn collect(mut stream: RequestStream, n: usize) -> Outcome {
    let mut out = Outcome {
        tokens: vec![vec![]; n],
        logprobs: vec![vec![]; n],
        text: vec![String::new(); n],
        finish: vec![None; n],
        usage: Usage::default(),
    };
    while let Some(ev) = stream.blocking_recv() {
        match ev {
            Event::Token {
                choice,
                token,
                text,
                logprob,
                ..
            } => {
                out.tokens[choice].push(token);
                if let Some(lp) = logprob {
                    out.logprobs[choice].push(lp.logprob);
                }
                out.text[choice].push_str(&text);
            }
            Event::Finished {
                choice,
                reason,
                text,
            } => {
                out.text[choice].push_str(&text);
                out.finish[choice] = Some(reason);
            }
            Event::Done(u) => out.usage = u,
            Event::Error(e) => panic!("request failed: {e}"),
            Event::GrammarError { message, .. } => panic!("grammar failed: {message}"),
            Event::PromptLogprobs(_) => {}
        }
    }
    out
}

/// Deterministic pseudo-random prompt of `len` ordinary tokens (ids 100..20000).
pub fn prompt(seed: u64, len: usize) -> Vec<u32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            100 + (x % 19_900) as u32
        })
        .collect()
}

/// A prompt and the parameters to run it with.
#[derive(Clone, Debug)]
pub struct Req {
    pub prompt: Vec<u32>,
    pub params: GenerationParams,
}

/// A greedy request that runs exactly `max_tokens` tokens.
pub fn greedy(prompt: Vec<u32>, max_tokens: usize) -> Req {
    let mut params = GenerationParams::greedy(max_tokens);
    params.ignore_eos = Some(true);
    Req { prompt, params }
}

/// Validates `r` for `engine` and submits it.
pub fn submit(engine: &Engine, r: Req) -> Result<RequestStream, lumen_engine::EngineError> {
    let handle = engine.handle();
    handle.submit(handle.prepare(r.params, r.prompt)?)
}

/// Submits every request at once and collects all outcomes (one thread per stream).
pub fn run_all(engine: &Engine, reqs: Vec<Req>) -> Vec<Outcome> {
    let streams: Vec<(RequestStream, usize)> = reqs
        .into_iter()
        .map(|r| {
            let n = r.params.n.unwrap_or(1) as usize;
            (submit(engine, r).expect("submit"), n)
        })
        .collect();
    let threads: Vec<_> = streams
        .into_iter()
        .map(|(s, n)| std::thread::spawn(move || collect(s, n)))
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().expect("collector"))
        .collect()
}

/// Blocks referenced by a sequence right now.
pub fn blocks_in_use(engine: &Engine) -> u64 {
    engine
        .handle()
        .stats()
        .blocks_in_use
        .load(std::sync::atomic::Ordering::SeqCst)
}

/// Waits (bounded) until the engine reports no running or waiting sequence.
pub fn wait_idle(engine: &Engine) {
    let stats = engine.handle().stats().clone();
    for _ in 0..500 {
        if stats.running.load(std::sync::atomic::Ordering::SeqCst) == 0
            && stats.waiting.load(std::sync::atomic::Ordering::SeqCst) == 0
            && engine.handle().in_flight() == 0
        {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("engine did not become idle");
}

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

pub type Shared = Arc<ChatModel>;
