//! Start-up, routing and shutdown.
//!
//! The listener is bound first and models load in the background, so `/health` answers at
//! once and `/ready` turns 200 when every model is loaded and warmed up (a load balancer or
//! Kubernetes sends traffic only then). SIGTERM or SIGINT flips `/ready` to 503, stops
//! accepting connections, lets in-flight requests finish for up to the grace period, stops
//! the engines and returns, so the process exits 0.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::{middleware, Router};
use lumen_engine::registry::{resolve, ChatModel, EmbeddingModel, ModelKind};
use lumen_engine::{
    EmbedConfig, EmbedEngine, Engine, EngineConfig, Event, GenerationParams, SchedulerConfig,
};
use tokio::net::TcpListener;

use crate::api::chat::Chat;
use crate::api::completions::Completions;
use crate::api::generate::handler;
use crate::api::{embeddings, models, ops};
use crate::auth::{require_key, ApiKeys};
use crate::conn::{ConnLimits, Connections};
use crate::error::ServerError;
use crate::state::{unix_now, AppState, ChatServed, EmbeddingServed, Limits, ServedModel};

/// Everything `lumen serve` can be told.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Address to bind.
    pub host: String,
    /// Port to bind (0: any free port).
    pub port: u16,
    /// Model names (under `$LUMEN_HOME/models`) or paths.
    pub models: Vec<String>,
    /// Accepted API keys (none: open).
    pub api_keys: Vec<String>,
    /// Requests in flight per model (running or queued) beyond which new ones get 429.
    pub max_queued_requests: usize,
    /// KV cache per model, MiB.
    pub kv_cache_mb: usize,
    /// Per-step limits of each chat model's scheduler.
    pub scheduler: SchedulerConfig,
    /// Compute threads per model.
    pub threads: usize,
    /// How chat models' weights are laid out in memory.
    pub weight_layout: lumen_engine::WeightLayout,
    /// Cancel requests running longer than this.
    pub request_timeout: Option<Duration>,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// Connection read deadlines and the per-address connection cap.
    pub conn: ConnLimits,
    /// Where named models are looked up (`$LUMEN_HOME`).
    pub home: PathBuf,
}

/// The default models served when none are named: a chat model and an embedding model.
pub const DEFAULT_MODELS: &[&str] = &["smollm2", "all-minilm-l6-v2"];

/// Most tokens one embedding forward pass takes.
const EMBED_BATCH_TOKENS: usize = 8192;

impl ServerConfig {
    /// Defaults: 127.0.0.1:8080, the default models, open, 256 queued, 256 MiB KV.
    pub fn new(home: PathBuf) -> Self {
        ServerConfig {
            host: "127.0.0.1".into(),
            port: 8080,
            models: DEFAULT_MODELS.iter().map(|s| s.to_string()).collect(),
            api_keys: Vec::new(),
            max_queued_requests: 256,
            kv_cache_mb: 256,
            scheduler: SchedulerConfig::default(),
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            request_timeout: Some(Duration::from_secs(600)),
            shutdown_grace: Duration::from_secs(30),
            max_body_bytes: 4 << 20,
            conn: ConnLimits::default(),
            weight_layout: lumen_engine::WeightLayout::default(),
            home,
        }
    }
}

/// The router over `state`.
pub fn router(state: AppState) -> Router {
    let limit = state.limits().max_body_bytes;
    let api = Router::new()
        .route("/v1/chat/completions", post(handler::<Chat>))
        .route("/v1/completions", post(handler::<Completions>))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/v1/models", get(models::list_models))
        .route("/v1/models/{id}", get(models::get_model))
        .route("/tokenize", post(models::tokenize))
        .route("/detokenize", post(models::detokenize))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            refuse_while_draining,
        ));
    Router::new()
        .merge(api)
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            refuse_oversized,
        ))
        .with_state(state)
}

/// Answers API requests with 503 and `Retry-After` once shutdown has begun (operations
/// endpoints keep answering: `/ready` says 503 itself).
async fn refuse_while_draining(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: axum::extract::Request,
    next: middleware::Next,
) -> Result<axum::response::Response, ServerError> {
    if state.is_draining() {
        return Err(ServerError::ShuttingDown);
    }
    Ok(next.run(req).await)
}

/// Answers 413 at once when `Content-Length` already says the body is over the limit,
/// instead of waiting for a body that will be refused anyway.
async fn refuse_oversized(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: axum::extract::Request,
    next: middleware::Next,
) -> Result<axum::response::Response, ServerError> {
    let limit = state.limits().max_body_bytes;
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ServerError::PayloadTooLarge { limit });
    }
    Ok(next.run(req).await)
}

/// A running engine of either kind; dropping it stops its thread.
pub enum RunningEngine {
    /// A chat model's engine.
    Chat(Engine),
    /// An embedding model's engine.
    Embedding(EmbedEngine),
}

/// Loads, starts and warms up one model's engine, of the kind found on disk.
pub fn start_model(
    name_or_path: &str,
    config: &ServerConfig,
) -> Result<(ServedModel, RunningEngine), ServerError> {
    let loc = resolve(name_or_path, &config.home).map_err(|e| {
        ServerError::Startup(format!("{e} (fetch the default models with `make models`)"))
    })?;
    match loc.kind {
        ModelKind::Chat => start_chat_model(&loc, config).map(|(s, e)| (s, RunningEngine::Chat(e))),
        ModelKind::Embedding => {
            start_embedding_model(&loc, config).map(|(s, e)| (s, RunningEngine::Embedding(e)))
        }
    }
}

/// Loads, starts and warms up one embedding model's engine.
pub fn start_embedding_model(
    loc: &lumen_engine::registry::ModelLocation,
    config: &ServerConfig,
) -> Result<(ServedModel, EmbedEngine), ServerError> {
    let started = std::time::Instant::now();
    let em = EmbeddingModel::load(loc)
        .map_err(|e| ServerError::Startup(format!("loading {}: {e}", loc.path.display())))?;
    let ec = EmbedConfig {
        threads: config.threads.max(1),
        max_batch_tokens: EMBED_BATCH_TOKENS,
        max_queued: config.max_queued_requests.max(1),
    };
    let engine = EmbedEngine::start(em.model.clone(), em.tokenizer.clone(), ec)
        .map_err(|e| ServerError::Startup(format!("starting the engine for {}: {e}", em.name)))?;
    let handle = engine.handle();
    // One tiny pass so the first client does not pay for cold caches.
    if let Ok(ids) = handle.prepare(vec![lumen_engine::EmbedInput::Text("Hello".into())], None) {
        let _ = handle.embed_blocking(ids);
    }
    tracing::info!(model = %em.name, path = %loc.path.display(), dims = handle.info().dims, max_seq_len = handle.info().max_seq_len, secs = started.elapsed().as_secs_f32(), "embedding model loaded");
    let served = EmbeddingServed {
        name: em.name,
        handle,
        created: unix_now(),
    };
    Ok((ServedModel::Embedding(std::sync::Arc::new(served)), engine))
}

/// Loads, starts and warms up one chat model's engine.
pub fn start_chat_model(
    loc: &lumen_engine::registry::ModelLocation,
    config: &ServerConfig,
) -> Result<(ServedModel, Engine), ServerError> {
    let started = std::time::Instant::now();
    let chat = ChatModel::load_with(loc, config.weight_layout)
        .map_err(|e| ServerError::Startup(format!("loading {}: {e}", loc.path.display())))?;
    let mut ec = EngineConfig::new(chat.name.clone());
    ec.threads = config.threads.max(1);
    ec.kv_cache_bytes = config.kv_cache_mb.saturating_mul(1 << 20);
    ec.max_queued_requests = config.max_queued_requests.max(1);
    ec.scheduler = config.scheduler;
    let sched = ec.scheduler;
    let engine = Engine::start(chat.model.clone(), chat.tokenizer.clone(), ec)
        .map_err(|e| ServerError::Startup(format!("starting the engine for {}: {e}", chat.name)))?;
    let handle = engine.handle();
    warm_up(&handle);
    tracing::info!(model = %chat.name, path = %loc.path.display(), kv_blocks = handle.info().kv_blocks, context = handle.info().context_len, max_num_batched_tokens = sched.max_num_batched_tokens, max_num_seqs = sched.max_num_seqs, weight_layout = %config.weight_layout, secs = started.elapsed().as_secs_f32(), "model loaded");
    let served = ChatServed {
        name: chat.name,
        handle,
        template: chat.template,
        created: unix_now(),
        metrics: Default::default(),
    };
    Ok((ServedModel::Chat(std::sync::Arc::new(served)), engine))
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

fn load_all(config: &ServerConfig, state: &AppState) -> Result<Vec<RunningEngine>, ServerError> {
    let mut engines = Vec::new();
    for name in &config.models {
        let (served, engine) = start_model(name, config)?;
        if !state.add_model(served) {
            return Err(ServerError::Startup(format!(
                "two models are named '{name}'"
            )));
        }
        engines.push(engine);
    }
    Ok(engines)
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received; draining"),
                    _ = int.recv() => tracing::info!("SIGINT received; draining"),
                }
                return;
            }
            _ => tracing::warn!("cannot install signal handlers; only Ctrl-C stops the server"),
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Binds, loads the models and serves until SIGTERM/SIGINT, then drains and returns.
pub async fn serve(config: ServerConfig) -> Result<(), ServerError> {
    let listener = TcpListener::bind((config.host.as_str(), config.port))
        .await
        .map_err(|e| {
            ServerError::Startup(format!(
                "cannot listen on {}:{}: {e}",
                config.host, config.port
            ))
        })?;
    let addr: SocketAddr = listener
        .local_addr()
        .map_err(|e| ServerError::Startup(e.to_string()))?;
    let keys = ApiKeys::new(&config.api_keys);
    if keys.is_open() && !addr.ip().is_loopback() {
        tracing::warn!(%addr, "no --api-key given and not bound to loopback: anyone who can reach this address can use the API");
    }
    let limits = Limits {
        max_body_bytes: config.max_body_bytes,
        request_timeout: config.request_timeout,
        max_prompts: config.max_queued_requests.max(1),
    };
    let state = AppState::new(keys, limits);
    let conns = Connections::start(listener, router(state.clone()), config.conn);
    tracing::info!("listening on http://{addr}");

    let (cfg, st) = (config.clone(), state.clone());
    let loader = tokio::task::spawn_blocking(move || load_all(&cfg, &st));
    let engines = tokio::select! {
        loaded = loader => match loaded {
            Ok(Ok(engines)) => engines,
            Ok(Err(e)) => {
                conns.close_all();
                return Err(e);
            }
            Err(e) => {
                conns.close_all();
                return Err(ServerError::Startup(format!("model loading panicked: {e}")));
            }
        },
        _ = shutdown_signal() => {
            conns.close_all();
            return Ok(());
        }
    };
    state.set_ready();
    tracing::info!(models = ?config.models, "ready");
    shutdown_signal().await;
    drain(&state, conns, config.shutdown_grace).await;
    drop(engines);
    tracing::info!("stopped");
    Ok(())
}

/// The shutdown sequence: `/ready` turns 503 and new requests get 503 with `Retry-After`
/// (connections stay open and accepted, so load balancers can see it); half-sent requests
/// are dropped at once; running ones get up to `grace` to finish; then everything closes.
async fn drain(state: &AppState, conns: Connections, grace: Duration) {
    state.set_draining();
    let dropped = conns.drop_half_sent();
    let running = conns.running();
    tracing::info!(
        running,
        dropped_half_sent = dropped,
        open_connections = conns.open(),
        grace_secs = grace.as_secs_f32(),
        "draining"
    );
    if running > 0 {
        match conns.wait_running(grace).await {
            0 => tracing::info!("all running requests finished"),
            left => tracing::warn!(
                left,
                grace_secs = grace.as_secs_f32(),
                "grace period over; cancelling requests still running"
            ),
        }
    }
    conns.close_all();
}

/// Runs [`serve`] on its own multi-threaded runtime (for a synchronous `main`).
pub fn run(config: ServerConfig) -> Result<(), ServerError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // Prompt preparation (templates, tokenization) runs on the blocking pool; tokio's
        // default of 512 threads would let a burst of large prompts spawn hundreds of
        // threads, each with its stack and malloc arena, which stay mapped afterwards.
        // Eight keep the cores busy and excess work queued.
        .max_blocking_threads(8)
        .thread_name("lumen-http")
        .enable_all()
        .build()
        .map_err(|e| ServerError::Startup(format!("cannot start the async runtime: {e}")))?;
    let result = rt.block_on(serve(config));
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}
