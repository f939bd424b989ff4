//! The engine: one thread per loaded model that owns the weights, the KV pool and the
//! scheduler, and an async-friendly handle that submits requests and streams events back.
//!
//! The async world never computes: [`EngineHandle::submit`] takes a [`ValidRequest`] (the
//! rules were applied when it was built, see [`crate::request`]), sends it over a channel and
//! returns a [`RequestStream`]. The engine thread loops: take new commands,
//! plan a step, run the forward pass on the worker pool, sample, and push events. Dropping a
//! stream sends a cancel; the thread frees the sequence's blocks before its next step.

pub mod spec;
mod stats;
mod worker;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use lumen_models::{KvStorage, LlamaModel};
use tokio::sync::mpsc as tmpsc;
use tokio::sync::oneshot;

pub use spec::SpecConfig;
pub use stats::EngineStats;

use crate::constraint::ConstraintCompiler;
use crate::explain::{ExplainJob, ExplainModel, ExplainOutput, MAX_EXPLAIN_QUEUED};
use crate::request::{Event, GenerateRequest, GenerationParams, ValidParams, ValidRequest};
use crate::scheduler::SchedulerConfig;
use crate::tokenizer::Tokenizer;
use crate::EngineError;

/// Tokens per KV block.
pub const BLOCK_SIZE: usize = 16;

/// How an engine is sized.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// The model's public name (also mixed into prefix-cache keys).
    pub model_name: String,
    /// Compute threads (one per physical core is best); ignored when `pool` is given.
    pub threads: usize,
    /// A compute pool shared with other engines (see [`lumen_kernels::ThreadPool::turn`]);
    /// `None`: the engine makes its own of `threads` threads.
    pub pool: Option<Arc<lumen_kernels::ThreadPool>>,
    /// Memory for the KV cache, in bytes.
    pub kv_cache_bytes: usize,
    /// Step limits.
    pub scheduler: SchedulerConfig,
    /// Requests accepted but not yet finished, beyond which `submit` refuses (back-pressure).
    pub max_queued_requests: usize,
    /// Speculative decoding by prompt lookup (used only where the model's arithmetic makes
    /// it exact, see [`spec`]).
    pub speculative: SpecConfig,
}

impl EngineConfig {
    /// Defaults for `model_name`: 256 MiB of KV, 2 threads.
    pub fn new(model_name: impl Into<String>) -> Self {
        EngineConfig {
            model_name: model_name.into(),
            threads: 2,
            pool: None,
            kv_cache_bytes: 256 << 20,
            scheduler: SchedulerConfig::default(),
            max_queued_requests: 256,
            speculative: SpecConfig::default(),
        }
    }
}

enum Command {
    // Boxed: a request is far larger than the other commands.
    Submit {
        id: u64,
        request: Box<GenerateRequest>,
        events: tmpsc::UnboundedSender<Event>,
    },
    Cancel(u64),
    /// An explanation to run at low priority (see `worker/explain.rs`).
    Explain {
        job: Box<ExplainJob>,
        reply: oneshot::Sender<Result<ExplainOutput, EngineError>>,
    },
    Shutdown,
}

/// Facts about the loaded model that request validation needs.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    /// Public name.
    pub name: String,
    /// Context length.
    pub context_len: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// KV blocks in the pool.
    pub kv_blocks: usize,
}

struct Shared {
    commands: mpsc::Sender<Command>,
    info: ModelInfo,
    stats: Arc<EngineStats>,
    tokenizer: Arc<Tokenizer>,
    compiler: ConstraintCompiler,
    next_id: AtomicU64,
    in_flight: Arc<AtomicU64>,
    alive: Arc<AtomicBool>,
    max_queued: usize,
    /// Explanations queued or running.
    explains: Arc<AtomicUsize>,
    explain_model: ExplainModel,
}

/// A cheap, cloneable handle to a running engine.
#[derive(Clone)]
pub struct EngineHandle {
    shared: Arc<Shared>,
}

/// The events of one request; dropping it cancels the request.
pub struct RequestStream {
    id: u64,
    events: tmpsc::UnboundedReceiver<Event>,
    commands: mpsc::Sender<Command>,
    done: bool,
}

impl RequestStream {
    /// The next event, `None` after [`Event::Done`] or [`Event::Error`].
    pub async fn recv(&mut self) -> Option<Event> {
        if self.done {
            return None;
        }
        let ev = self.events.recv().await;
        self.note(&ev);
        ev
    }

    /// Blocking version of [`RequestStream::recv`] for synchronous callers (not in async code).
    pub fn blocking_recv(&mut self) -> Option<Event> {
        if self.done {
            return None;
        }
        let ev = self.events.blocking_recv();
        self.note(&ev);
        ev
    }

    fn note(&mut self, ev: &Option<Event>) {
        if matches!(
            ev,
            None | Some(Event::Done(_)) | Some(Event::Error(_)) | Some(Event::GrammarError { .. })
        ) {
            self.done = true;
        }
    }
}

impl Drop for RequestStream {
    fn drop(&mut self) {
        if !self.done {
            // The engine may already be gone; nothing to cancel then.
            let _ = self.commands.send(Command::Cancel(self.id));
        }
    }
}

/// The running engine thread; dropping it stops the thread.
pub struct Engine {
    handle: EngineHandle,
    thread: Option<JoinHandle<()>>,
}

impl Engine {
    /// Starts the engine thread for `model`.
    pub fn start(
        model: Arc<LlamaModel>,
        tokenizer: Arc<Tokenizer>,
        config: EngineConfig,
    ) -> Result<Engine, EngineError> {
        let geo = model.kv_geometry(BLOCK_SIZE);
        let per_block = KvStorage::bytes_per_block(geo, model.config().n_layers);
        let kv_blocks = config.kv_cache_bytes / per_block;
        if kv_blocks < 2 {
            return Err(EngineError::Config(format!(
                "KV cache of {} bytes holds fewer than 2 blocks of {per_block} bytes",
                config.kv_cache_bytes
            )));
        }
        let info = ModelInfo {
            name: config.model_name.clone(),
            context_len: model.config().context_len,
            vocab_size: model.config().vocab_size,
            kv_blocks,
        };
        let stats = Arc::new(EngineStats::default());
        let in_flight = Arc::new(AtomicU64::new(0));
        let explains = Arc::new(AtomicUsize::new(0));
        let explain_model = ExplainModel {
            n_layers: model.config().n_layers,
            n_heads: model.config().n_heads,
            vocab_size: model.config().vocab_size,
        };
        let (tx, rx) = mpsc::channel();
        let alive = Arc::new(AtomicBool::new(true));
        let worker = worker::Worker::new(
            model,
            tokenizer.clone(),
            &config,
            kv_blocks,
            stats.clone(),
            in_flight.clone(),
            explains.clone(),
        );
        let thread = std::thread::Builder::new()
            .name(format!("lumen-engine-{}", config.model_name))
            .spawn({
                let alive = alive.clone();
                move || worker.run(rx, alive)
            })
            .map_err(|e| EngineError::Config(format!("cannot spawn engine thread: {e}")))?;
        let shared = Shared {
            commands: tx,
            info,
            stats,
            compiler: ConstraintCompiler::new(tokenizer.clone()),
            tokenizer,
            next_id: AtomicU64::new(1),
            in_flight,
            alive,
            max_queued: config.max_queued_requests,
            explains,
            explain_model,
        };
        Ok(Engine {
            handle: EngineHandle {
                shared: Arc::new(shared),
            },
            thread: Some(thread),
        })
    }

    /// A handle for submitting requests.
    pub fn handle(&self) -> EngineHandle {
        self.handle.clone()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Stop the thread (cancelling anything still running) and wait for it, so the
        // weights and KV memory are released when the engine is dropped.
        let _ = self.handle.shared.commands.send(Command::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl EngineHandle {
    /// Facts about the model.
    pub fn info(&self) -> &ModelInfo {
        &self.shared.info
    }

    /// Live counters.
    pub fn stats(&self) -> &Arc<EngineStats> {
        &self.shared.stats
    }

    /// The model's tokenizer.
    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.shared.tokenizer
    }

    /// The model's grammar compiler (structured output and tool calls); see
    /// [`ValidParams::compile_constraint`].
    pub fn constraints(&self) -> &ConstraintCompiler {
        &self.shared.compiler
    }

    /// Checks `params` against the rule book and this model (see [`crate::request`]).
    pub fn validate(&self, params: GenerationParams) -> Result<ValidParams, EngineError> {
        params.validate(&self.shared.info)
    }

    /// Validates `params` and fits them to one tokenized prompt.
    pub fn prepare(
        &self,
        params: GenerationParams,
        prompt: Vec<u32>,
    ) -> Result<ValidRequest, EngineError> {
        let mut valid = self.validate(params)?;
        valid.compile_constraint(&self.shared.compiler)?;
        valid.for_prompt(prompt, &self.shared.info)
    }

    /// Queues a request; events arrive on the returned stream.
    pub fn submit(&self, req: ValidRequest) -> Result<RequestStream, EngineError> {
        let s = &self.shared;
        if req.model != s.info.name {
            return Err(EngineError::Config(format!(
                "a request validated for model '{}' sent to '{}'",
                req.model, s.info.name
            )));
        }
        let req: GenerateRequest = req.request;
        // Reserve a place in the queue first so concurrent submits cannot overshoot it.
        let prev = s.in_flight.fetch_add(1, Ordering::SeqCst);
        if prev as usize >= s.max_queued {
            s.in_flight.fetch_sub(1, Ordering::SeqCst);
            return Err(EngineError::QueueFull);
        }
        let id = s.next_id.fetch_add(1, Ordering::Relaxed);
        s.stats.submitted.fetch_add(1, Ordering::SeqCst);
        let (etx, erx) = tmpsc::unbounded_channel();
        if s.commands
            .send(Command::Submit {
                id,
                request: Box::new(req),
                events: etx,
            })
            .is_err()
        {
            s.in_flight.fetch_sub(1, Ordering::SeqCst);
            s.stats.submitted.fetch_sub(1, Ordering::SeqCst);
            return Err(EngineError::Stopped);
        }
        Ok(RequestStream {
            id,
            events: erx,
            commands: s.commands.clone(),
            done: false,
        })
    }

    /// The model facts an explanation is validated against.
    pub fn explain_model(&self) -> ExplainModel {
        self.shared.explain_model
    }

    /// Queues an explanation; it runs when generation leaves room (one pass every few steps
    /// under load). More than [`MAX_EXPLAIN_QUEUED`] waiting is [`EngineError::QueueFull`].
    pub fn explain(
        &self,
        job: ExplainJob,
    ) -> Result<oneshot::Receiver<Result<ExplainOutput, EngineError>>, EngineError> {
        let s = &self.shared;
        let prev = s.explains.fetch_add(1, Ordering::SeqCst);
        if prev >= MAX_EXPLAIN_QUEUED {
            s.explains.fetch_sub(1, Ordering::SeqCst);
            return Err(EngineError::QueueFull);
        }
        let (reply, rx) = oneshot::channel();
        let cmd = Command::Explain {
            job: Box::new(job),
            reply,
        };
        if s.commands.send(cmd).is_err() {
            s.explains.fetch_sub(1, Ordering::SeqCst);
            return Err(EngineError::Stopped);
        }
        Ok(rx)
    }

    /// Whether the engine thread is still running (false after a shutdown or a crash).
    pub fn is_running(&self) -> bool {
        self.shared.alive.load(Ordering::SeqCst)
    }

    /// Requests accepted and not yet finished.
    pub fn in_flight(&self) -> u64 {
        self.shared.in_flight.load(Ordering::SeqCst)
    }
}
