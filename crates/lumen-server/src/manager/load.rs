//! Starting one model's engine (on a blocking thread) and estimating what it will hold.

use std::sync::Arc;
use std::time::Instant;

use lumen_engine::registry::{ChatModel, EmbeddingModel, ModelKind, ModelLocation};
use lumen_engine::{
    EmbedConfig, EmbedEngine, Engine, EngineConfig, Event, GenerationParams, SchedulerConfig,
    SpecConfig, WeightLayout,
};
use lumen_kernels::ThreadPool;

use crate::error::ServerError;
use crate::metrics::ModelMetrics;
use crate::state::{unix_now, ChatServed, EmbeddingServed, ServedModel};

/// Most tokens one embedding forward pass takes.
pub const EMBED_BATCH_TOKENS: usize = 8192;

/// How every model's engine is sized.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// KV cache per chat model, MiB.
    pub kv_cache_mb: usize,
    /// Per-step limits of each chat model's scheduler.
    pub scheduler: SchedulerConfig,
    /// How chat models' weights are laid out.
    pub weight_layout: WeightLayout,
    /// Requests in flight per model beyond which new ones get 429.
    pub max_queued_requests: usize,
    /// Speculative decoding of chat models.
    pub speculative: SpecConfig,
}

/// A running engine of either kind; dropping it stops its thread and frees its memory.
pub enum RunningEngine {
    /// A chat model's engine.
    Chat(Engine),
    /// An embedding model's engine.
    Embedding(EmbedEngine),
}

fn file_len(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Bytes the model at `loc` will hold once loaded: its weights (read into memory) plus its KV
/// cache, or for an embedding model its weights plus the activations of one full pass.
pub fn estimate(loc: &ModelLocation, config: &LoadConfig) -> u64 {
    match loc.kind {
        ModelKind::Chat => file_len(&loc.path) + (config.kv_cache_mb as u64) * (1 << 20),
        ModelKind::Embedding => {
            let weights = file_len(&loc.path.join("model.safetensors"));
            let hidden = std::fs::read_to_string(loc.path.join("config.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .and_then(|c| c["intermediate_size"].as_u64())
                .unwrap_or(1536);
            // A pass keeps a few row buffers of the widest layer for every token in it.
            weights + EMBED_BATCH_TOKENS as u64 * hidden * 4 * 3
        }
    }
}

/// Loads, starts and warms up the model at `loc` on the shared compute `pool`.
pub fn start(
    loc: &ModelLocation,
    config: &LoadConfig,
    pool: &Arc<ThreadPool>,
    metrics: &Arc<ModelMetrics>,
) -> Result<(ServedModel, RunningEngine), ServerError> {
    let started = Instant::now();
    let failed = |reason: String| ServerError::LoadFailed {
        model: loc.name.clone(),
        reason,
    };
    match loc.kind {
        ModelKind::Chat => {
            let chat = ChatModel::load_with(loc, config.weight_layout)
                .map_err(|e| failed(e.to_string()))?;
            let mut ec = EngineConfig::new(chat.name.clone());
            ec.threads = pool.n_threads();
            ec.pool = Some(pool.clone());
            ec.kv_cache_bytes = config.kv_cache_mb.saturating_mul(1 << 20);
            ec.max_queued_requests = config.max_queued_requests.max(1);
            ec.scheduler = config.scheduler;
            ec.speculative = config.speculative;
            let engine = Engine::start(chat.model.clone(), chat.tokenizer.clone(), ec)
                .map_err(|e| failed(format!("starting its engine: {e}")))?;
            let handle = engine.handle();
            warm_up(&handle);
            tracing::info!(model = %chat.name, path = %loc.path.display(), kv_blocks = handle.info().kv_blocks, context = handle.info().context_len, max_num_batched_tokens = config.scheduler.max_num_batched_tokens, max_num_seqs = config.scheduler.max_num_seqs, weight_layout = %config.weight_layout, weights_memory = weights_memory(&loc.path), packed_cache = %chat.model.file().cache_outcome(), speculative_tokens = config.speculative.tokens, secs = started.elapsed().as_secs_f32(), "model loaded");
            let served = ChatServed {
                name: chat.name,
                handle,
                template: chat.template,
                created: unix_now(),
                metrics: metrics.clone(),
            };
            Ok((
                ServedModel::Chat(Arc::new(served)),
                RunningEngine::Chat(engine),
            ))
        }
        ModelKind::Embedding => {
            let em = EmbeddingModel::load(loc).map_err(|e| failed(e.to_string()))?;
            let ec = EmbedConfig {
                threads: pool.n_threads(),
                pool: Some(pool.clone()),
                max_batch_tokens: EMBED_BATCH_TOKENS,
                max_queued: config.max_queued_requests.max(1),
            };
            let engine = EmbedEngine::start(em.model.clone(), em.tokenizer.clone(), ec)
                .map_err(|e| failed(format!("starting its engine: {e}")))?;
            let handle = engine.handle();
            // One tiny pass so the first client does not pay for cold caches.
            if let Ok(ids) =
                handle.prepare(vec![lumen_engine::EmbedInput::Text("Hello".into())], None)
            {
                let _ = handle.embed_blocking(ids);
            }
            tracing::info!(model = %em.name, path = %loc.path.display(), dims = handle.info().dims, max_seq_len = handle.info().max_seq_len, precision = %em.model.precision(), secs = started.elapsed().as_secs_f32(), "embedding model loaded");
            let served = EmbeddingServed {
                name: em.name,
                handle,
                created: unix_now(),
            };
            Ok((
                ServedModel::Embedding(Arc::new(served)),
                RunningEngine::Embedding(engine),
            ))
        }
    }
}

/// Runs one tiny generation so the first client does not pay for cold caches.
fn warm_up(handle: &lumen_engine::EngineHandle) {
    let tok = handle.tokenizer();
    let Ok(prompt) = tok.encode("Hello", true, false) else {
        return;
    };
    let Ok(req) = handle.prepare(GenerationParams::greedy(2), prompt) else {
        return;
    };
    if let Ok(mut s) = handle.submit(req) {
        while let Some(ev) = s.blocking_recv() {
            if matches!(
                ev,
                Event::Done(_) | Event::Error(_) | Event::GrammarError { .. }
            ) {
                break;
            }
        }
    }
}

/// How the weights of the file at `path` are held (`LUMEN_WEIGHTS_MEMORY` resolved for its
/// size), for the load log line.
fn weights_memory(path: &std::path::Path) -> &'static str {
    let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    lumen_engine::Residency::from_env().map_or("invalid", |r| r.resolve(len).name())
}
