//! The embedding engine: one thread that owns a BERT-family model and batches every request
//! waiting for it into a few forward passes.
//!
//! # Design
//!
//! **The same shape as the chat engine.** One thread per embedding model owns the weights,
//! the worker pool and the queue; async callers reach it only through [`EmbedHandle`], which
//! validates a request, sends it over a channel and awaits a tokio oneshot for the vectors.
//! No async task ever computes, and [`EmbedHandle::embed_blocking`] serves synchronous callers
//! (the CLI) the same way.
//!
//! **Batching by draining the queue.** Encoders need no KV cache and no decode loop, so the
//! scheduler is small: whenever the thread is free it takes everything queued and packs whole
//! requests, in arrival order, into one forward pass of at most
//! [`EmbedConfig::max_batch_tokens`] tokens. While a pass runs, new requests pile up and go
//! into the next one, so a hundred clients that each send one sentence are served in a
//! handful of passes rather than a hundred. A request's inputs are never split across passes
//! unless the request alone is over the budget; then it is cut into budget-sized pieces that
//! take turns with other requests, so one huge request cannot hold small ones up for long.
//!
//! **Batching cannot change a result.** `BertModel::embed_batch` is batch invariant (each
//! row gets the same bits whatever shares its pass), so a sentence embeds to identical bits
//! alone or among a hundred others; the tests assert it.
//!
//! **Back-pressure and cancellation.** Requests accepted and not yet answered are bounded by
//! [`EmbedConfig::max_queued`]; past it [`EmbedHandle::embed`] fails at once with
//! [`EngineError::QueueFull`]. A caller that goes away (a dropped future, a disconnected
//! client) closes its oneshot, and the thread skips its work before the next pass.
//!
//! **Input policy lives here too.** [`input`] turns texts and token ids into the sequences the
//! encoder takes (special tokens, the maximum length, explicit truncation), so the HTTP server
//! and the CLI share one set of rules.

pub mod input;
pub mod model;
mod worker;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use lumen_models::bert::BertModel;
use tokio::sync::oneshot;

pub use input::{EmbedInput, MAX_EMBED_INPUTS};
pub use model::EmbeddingModel;

use crate::engine::ComputeTime;
use crate::tokenizer::Tokenizer;
use crate::EngineError;

/// How an embedding engine is sized.
#[derive(Clone, Debug)]
pub struct EmbedConfig {
    /// Compute threads (one per physical core is best); ignored when `pool` is given.
    pub threads: usize,
    /// A compute pool shared with other engines; `None`: the engine makes its own.
    pub pool: Option<Arc<lumen_kernels::ThreadPool>>,
    /// Most tokens one forward pass takes (a single longer request is cut into pieces).
    pub max_batch_tokens: usize,
    /// Requests accepted but not yet answered, beyond which new ones are refused.
    pub max_queued: usize,
}

impl Default for EmbedConfig {
    /// 2 threads, passes of up to 8192 tokens, 256 requests in flight.
    fn default() -> Self {
        EmbedConfig {
            threads: 2,
            pool: None,
            max_batch_tokens: 8192,
            max_queued: 256,
        }
    }
}

/// Facts about the loaded model that request validation needs.
#[derive(Clone, Debug)]
pub struct EmbedInfo {
    /// Length of each embedding.
    pub dims: usize,
    /// Longest input accepted without explicit truncation (sentence-transformers' limit).
    pub max_seq_len: usize,
    /// Longest sequence the model can run at all.
    pub max_positions: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Whether embeddings are scaled to unit length.
    pub normalize: bool,
    /// The special tokens the tokenizer appends after the text (`[SEP]` for BERT).
    pub suffix: Vec<u32>,
}

/// Live counters of one embedding engine, read by the server's metrics.
#[derive(Debug, Default)]
pub struct EmbedStats {
    /// Requests answered with embeddings.
    pub requests: AtomicU64,
    /// Inputs embedded.
    pub inputs: AtomicU64,
    /// Tokens embedded.
    pub tokens: AtomicU64,
    /// Forward passes run.
    pub batches: AtomicU64,
    /// Requests dropped by their caller before they were computed.
    pub cancelled: AtomicU64,
    /// Requests that failed in the model.
    pub failed: AtomicU64,
}

/// What one request is answered with.
type Reply = Result<Vec<Vec<f32>>, EngineError>;

/// One accepted request on its way to the thread.
struct Job {
    inputs: Vec<Vec<u32>>,
    reply: oneshot::Sender<Reply>,
    /// Engine time attributed to the request (its tokens' share of each pass).
    compute: ComputeTime,
}

enum Command {
    Embed(Job),
    Shutdown,
}

struct Shared {
    commands: mpsc::Sender<Command>,
    info: EmbedInfo,
    stats: Arc<EmbedStats>,
    tokenizer: Arc<Tokenizer>,
    in_flight: Arc<AtomicU64>,
    alive: Arc<AtomicBool>,
    max_queued: usize,
}

/// A cheap, cloneable handle to a running embedding engine.
#[derive(Clone)]
pub struct EmbedHandle {
    shared: Arc<Shared>,
}

/// The running embedding thread; dropping it stops the thread.
pub struct EmbedEngine {
    handle: EmbedHandle,
    thread: Option<JoinHandle<()>>,
}

impl EmbedEngine {
    /// Starts the thread for `model`, whose texts `tokenizer` turns into ids.
    pub fn start(
        model: Arc<BertModel>,
        tokenizer: Arc<Tokenizer>,
        config: EmbedConfig,
    ) -> Result<EmbedEngine, EngineError> {
        if config.max_batch_tokens == 0 || config.max_queued == 0 {
            return Err(EngineError::Config(
                "max_batch_tokens and max_queued must be at least 1".into(),
            ));
        }
        let vocab_size = model.config().vocab_size;
        if tokenizer.vocab_size() > vocab_size {
            return Err(EngineError::Config(format!(
                "the tokenizer has {} tokens but the model only {vocab_size}",
                tokenizer.vocab_size()
            )));
        }
        let info = EmbedInfo {
            dims: model.dims(),
            max_seq_len: model.max_seq_len().min(model.max_positions()),
            max_positions: model.max_positions(),
            vocab_size,
            normalize: model.normalize(),
            suffix: input::special_suffix(&tokenizer)?,
        };
        let stats = Arc::new(EmbedStats::default());
        let in_flight = Arc::new(AtomicU64::new(0));
        let alive = Arc::new(AtomicBool::new(true));
        let (tx, rx) = mpsc::channel();
        let worker = worker::Worker::new(model, &config, stats.clone(), in_flight.clone());
        let thread = std::thread::Builder::new()
            .name("lumen-embed".into())
            .spawn({
                let alive = alive.clone();
                move || worker.run(rx, alive)
            })
            .map_err(|e| EngineError::Config(format!("cannot spawn the embedding thread: {e}")))?;
        let shared = Shared {
            commands: tx,
            info,
            stats,
            tokenizer,
            in_flight,
            alive,
            max_queued: config.max_queued,
        };
        Ok(EmbedEngine {
            handle: EmbedHandle {
                shared: Arc::new(shared),
            },
            thread: Some(thread),
        })
    }

    /// A handle for submitting requests.
    pub fn handle(&self) -> EmbedHandle {
        self.handle.clone()
    }
}

impl Drop for EmbedEngine {
    fn drop(&mut self) {
        // Requests still queued are answered `Stopped`; wait so the weights are released.
        let _ = self.handle.shared.commands.send(Command::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl EmbedHandle {
    /// Facts about the model.
    pub fn info(&self) -> &EmbedInfo {
        &self.shared.info
    }

    /// Live counters.
    pub fn stats(&self) -> &Arc<EmbedStats> {
        &self.shared.stats
    }

    /// The model's tokenizer.
    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.shared.tokenizer
    }

    /// Whether the thread is still running (false after a shutdown or a crash).
    pub fn is_running(&self) -> bool {
        self.shared.alive.load(Ordering::SeqCst)
    }

    /// Requests accepted and not yet answered.
    pub fn in_flight(&self) -> u64 {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// Turns request inputs into token sequences under the model's length rules
    /// (see [`input::prepare`]); run it off the async workers, it tokenizes.
    pub fn prepare(
        &self,
        inputs: Vec<EmbedInput>,
        truncate: Option<usize>,
    ) -> Result<Vec<Vec<u32>>, EngineError> {
        input::prepare(&self.shared.tokenizer, &self.shared.info, inputs, truncate)
    }

    /// Embeds token sequences (each with its special tokens); one vector per input, in order.
    pub async fn embed(&self, inputs: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>, EngineError> {
        self.embed_metered(inputs, ComputeTime::default()).await
    }

    /// [`EmbedHandle::embed`], adding the engine time attributed to the request to `compute`
    /// (each pass's time split among its requests by tokens, as for generation).
    pub async fn embed_metered(
        &self,
        inputs: Vec<Vec<u32>>,
        compute: ComputeTime,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        let rx = self.submit(inputs, compute)?;
        rx.await.map_err(|_| EngineError::Stopped)?
    }

    /// Blocking version of [`EmbedHandle::embed`] for synchronous callers (not in async code).
    pub fn embed_blocking(&self, inputs: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>, EngineError> {
        let rx = self.submit(inputs, ComputeTime::default())?;
        rx.blocking_recv().map_err(|_| EngineError::Stopped)?
    }

    /// Checks token sequences against what the model can run, without queueing them.
    pub fn validate(&self, inputs: &[Vec<u32>]) -> Result<(), EngineError> {
        let info = &self.shared.info;
        let bad = |message: String| {
            Err(EngineError::InvalidRequest {
                param: "input",
                message,
            })
        };
        if inputs.is_empty() {
            return bad("input must not be empty".into());
        }
        for (i, seq) in inputs.iter().enumerate() {
            if seq.is_empty() {
                return bad(format!("input[{i}] has no tokens"));
            }
            if seq.len() > info.max_positions {
                return bad(format!(
                    "input[{i}] has {} tokens, more than the model's {} positions",
                    seq.len(),
                    info.max_positions
                ));
            }
            if let Some(&t) = seq.iter().find(|&&t| t as usize >= info.vocab_size) {
                return bad(format!(
                    "input[{i}] has token id {t}, outside the vocabulary of {} tokens",
                    info.vocab_size
                ));
            }
        }
        Ok(())
    }

    /// Validates and queues a request; its vectors arrive on the returned oneshot.
    fn submit(
        &self,
        inputs: Vec<Vec<u32>>,
        compute: ComputeTime,
    ) -> Result<oneshot::Receiver<Reply>, EngineError> {
        self.validate(&inputs)?;
        let s = &self.shared;
        // Reserve a place first so concurrent submits cannot overshoot the limit.
        if s.in_flight.fetch_add(1, Ordering::SeqCst) as usize >= s.max_queued {
            s.in_flight.fetch_sub(1, Ordering::SeqCst);
            return Err(EngineError::QueueFull);
        }
        let (tx, rx) = oneshot::channel();
        if s.commands
            .send(Command::Embed(Job {
                inputs,
                reply: tx,
                compute,
            }))
            .is_err()
        {
            s.in_flight.fetch_sub(1, Ordering::SeqCst);
            return Err(EngineError::Stopped);
        }
        Ok(rx)
    }
}
