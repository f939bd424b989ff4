//! What every handler shares: the model manager, limits, keys and metrics.
//!
//! Models are served by the [`ModelManager`], which loads each on its first request; an
//! endpoint asks for the kind it needs (getting a lease that keeps the model loaded while
//! the handler holds it) and answers 400 for a model of another kind. `/ready` says 503 until
//! the `--preload` models are loaded.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lumen_engine::{ChatTemplate, EmbedHandle, EngineHandle};

use crate::auth::ApiKeys;
use crate::error::ServerError;
use crate::manager::lease::{ChatLease, EmbedLease};
use crate::manager::{KeepAlive, ModelManager};
use crate::metrics::ModelMetrics;
use crate::tenancy::Tenancy;

/// A chat/completions model behind its engine.
pub struct ChatServed {
    /// Public name (the `model` field).
    pub name: String,
    /// The engine.
    pub handle: EngineHandle,
    /// How messages become a prompt.
    pub template: ChatTemplate,
    /// Unix time it was loaded.
    pub created: u64,
    /// Latency histograms recorded by the handlers.
    pub metrics: Arc<ModelMetrics>,
}

/// An embedding model behind its engine.
pub struct EmbeddingServed {
    /// Public name (the `model` field).
    pub name: String,
    /// The engine.
    pub handle: EmbedHandle,
    /// Unix time it was loaded.
    pub created: u64,
}

/// A model the server answers for.
#[derive(Clone)]
pub enum ServedModel {
    /// Chat and text completions.
    Chat(Arc<ChatServed>),
    /// Embeddings.
    Embedding(Arc<EmbeddingServed>),
}

impl ServedModel {
    /// Public name.
    pub fn name(&self) -> &str {
        match self {
            ServedModel::Chat(c) => &c.name,
            ServedModel::Embedding(e) => &e.name,
        }
    }

    /// Unix time it was loaded.
    pub fn created(&self) -> u64 {
        match self {
            ServedModel::Chat(c) => c.created,
            ServedModel::Embedding(e) => e.created,
        }
    }

    /// Whether the model's engine thread is alive.
    pub fn is_running(&self) -> bool {
        match self {
            ServedModel::Chat(c) => c.handle.is_running(),
            ServedModel::Embedding(e) => e.handle.is_running(),
        }
    }

    /// Longest sequence the model takes.
    pub fn context_len(&self) -> usize {
        match self {
            ServedModel::Chat(c) => c.handle.info().context_len,
            ServedModel::Embedding(e) => e.handle.info().max_seq_len,
        }
    }

    /// `chat` or `embedding`.
    pub fn kind(&self) -> &'static str {
        match self {
            ServedModel::Chat(_) => "chat",
            ServedModel::Embedding(_) => "embedding",
        }
    }
}

/// Request limits set by flags.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// A request running longer is cancelled (`finish_reason: "cancelled"`).
    pub request_timeout: Option<Duration>,
    /// Most prompts in one completions request.
    pub max_prompts: usize,
    /// Serve `POST /v1/explain` (`--enable-explain`).
    pub explain: bool,
}

struct Inner {
    manager: Arc<ModelManager>,
    ready: AtomicBool,
    draining: AtomicBool,
    tenancy: Arc<Tenancy>,
    limits: Limits,
    next_id: AtomicU64,
    id_base: u64,
    /// Batch jobs, once the server has set them up (they need the store).
    batch: std::sync::OnceLock<Arc<crate::batch::BatchConfig>>,
}

/// Shared server state (cheap to clone).
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl AppState {
    /// An empty, not yet ready state with no models (router tests).
    pub fn new(keys: ApiKeys, limits: Limits) -> Self {
        Self::with_manager(
            Arc::new(Tenancy::static_only(keys)),
            limits,
            ModelManager::empty(),
        )
    }

    /// A not yet ready state serving `manager`'s models, with `tenancy`'s keys and limits.
    pub fn with_manager(tenancy: Arc<Tenancy>, limits: Limits, manager: Arc<ModelManager>) -> Self {
        let id_base = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let inner = Inner {
            manager,
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            tenancy,
            limits,
            next_id: AtomicU64::new(0),
            id_base,
            batch: std::sync::OnceLock::new(),
        };
        AppState {
            inner: Arc::new(inner),
        }
    }

    /// The model manager.
    pub fn manager(&self) -> &Arc<ModelManager> {
        &self.inner.manager
    }

    /// Every loaded model.
    pub fn models(&self) -> Vec<ServedModel> {
        self.inner.manager.loaded()
    }

    /// Marks the server as ready (`/ready` turns 200).
    pub fn set_ready(&self) {
        self.inner.ready.store(true, Ordering::SeqCst);
    }

    /// Whether start-up finished and the server is not draining.
    pub fn is_ready(&self) -> bool {
        // An engine thread that died (a bug) makes the server unready, so orchestrators
        // take it out of rotation instead of sending it traffic it can only fail.
        self.inner.ready.load(Ordering::SeqCst)
            && !self.is_draining()
            && self.inner.manager.all_running()
    }

    /// Marks the server as shutting down (`/ready` turns 503, new generations are refused).
    pub fn set_draining(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    /// Refuses new generation work once shutdown has begun (503 `ShuttingDown`).
    pub fn ensure_accepting(&self) -> Result<(), ServerError> {
        if self.is_draining() {
            return Err(ServerError::ShuttingDown);
        }
        Ok(())
    }

    fn ensure_ready(&self) -> Result<(), ServerError> {
        if !self.inner.ready.load(Ordering::SeqCst) {
            return Err(ServerError::NotReady);
        }
        Ok(())
    }

    /// The chat model called `name` (or the first chat model when `name` is `None`), loaded
    /// if needed; `keep_alive` (the request's) becomes the model's keep-alive.
    pub async fn chat_model(
        &self,
        name: Option<&str>,
        keep_alive: Option<KeepAlive>,
    ) -> Result<ChatLease, ServerError> {
        self.ensure_ready()?;
        let m = &self.inner.manager;
        let name = match name {
            Some(n) => n.to_string(),
            None => m
                .first_chat()
                .ok_or_else(|| ServerError::param("model", "no chat model is served"))?,
        };
        if m.kind(&name)? != lumen_engine::registry::ModelKind::Chat {
            return Err(ServerError::WrongModelKind {
                model: name,
                expected: "chat",
            });
        }
        m.acquire(&name, keep_alive).await?.into_chat()
    }

    /// The embedding model called `name`, loaded if needed.
    pub async fn embedding_model(
        &self,
        name: &str,
        keep_alive: Option<KeepAlive>,
    ) -> Result<EmbedLease, ServerError> {
        self.ensure_ready()?;
        let m = &self.inner.manager;
        if m.kind(name)? != lumen_engine::registry::ModelKind::Embedding {
            return Err(ServerError::WrongModelKind {
                model: name.to_string(),
                expected: "embedding",
            });
        }
        m.acquire(name, keep_alive).await?.into_embedding()
    }

    /// Keys, the store, admission and the ledger.
    pub fn tenancy(&self) -> &Arc<Tenancy> {
        &self.inner.tenancy
    }

    /// Request limits.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// Turns on the Files and Batches APIs with `config` (once).
    pub fn set_batch(&self, config: Arc<crate::batch::BatchConfig>) {
        let _ = self.inner.batch.set(config);
    }

    /// The batch configuration, or 503 when this server runs no batch jobs.
    pub fn batch(&self) -> Result<Arc<crate::batch::BatchConfig>, ServerError> {
        self.inner
            .batch
            .get()
            .cloned()
            .ok_or_else(|| ServerError::StoreUnavailable("this server runs no batch jobs".into()))
    }

    /// Wakes the batch executor (new work or a cancellation).
    pub fn batch_wake(&self) {
        if let Some(b) = self.inner.batch.get() {
            b.wake.notify_one();
        }
    }

    /// A fresh response id such as `chatcmpl-…`.
    pub fn new_id(&self, prefix: &str) -> String {
        let n = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{prefix}-{:016x}{n:08x}", self.inner.id_base)
    }
}
