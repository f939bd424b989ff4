//! Start-up, routing and shutdown.
//!
//! The listener is bound first and the `--preload` models load in the background, so
//! `/health` answers at once and `/ready` turns 200 when they are loaded and warmed up (a
//! load balancer or Kubernetes sends traffic only then); every other model loads on its
//! first request. SIGTERM or SIGINT flips `/ready` to 503, stops
//! accepting connections, lets in-flight requests finish for up to the grace period, stops
//! the engines and returns, so the process exits 0.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, patch, post};
use axum::{middleware, Router};
use lumen_engine::registry::{self, ModelLocation};
use lumen_engine::{SchedulerConfig, SpecConfig};
use tokio::net::TcpListener;

use crate::api::chat::Chat;
use crate::api::completions::Completions;
use crate::api::generate::handler;
use crate::api::{admin, embeddings, explain, keys, models, ops, usage};
use crate::auth::{authenticate, require_admin, ApiKeys};
use crate::batch;
use crate::conn::{ConnLimits, Connections};
use crate::error::ServerError;
use crate::ledger::Ledger;
use crate::manager::budget::default_max_memory;
use crate::manager::{KeepAlive, LoadConfig, ManagerConfig, ModelManager};
use crate::state::{AppState, Limits};
use crate::tenancy::Tenancy;

/// Everything `lumen serve` can be told.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Address to bind.
    pub host: String,
    /// Port to bind (0: any free port).
    pub port: u16,
    /// Model names (under `$LUMEN_HOME/models`) or paths; empty: every installed model.
    pub models: Vec<String>,
    /// Models loaded at start (`/ready` waits for them).
    pub preload: Vec<String>,
    /// Alias to model name.
    pub aliases: Vec<(String, String)>,
    /// Bytes all loaded models may hold together (`None`: 75 % of RAM).
    pub max_memory: Option<u64>,
    /// How long a request waits for its model to load.
    pub load_timeout: Duration,
    /// Idle time after which a model is unloaded (unless a request sets its own).
    pub keep_alive: KeepAlive,
    /// Accepted API keys (none: open).
    pub api_keys: Vec<String>,
    /// Static administrator keys (`--admin-key`).
    pub admin_keys: Vec<String>,
    /// The database: a file path, `sqlite://PATH` (default `$LUMEN_HOME/lumen.db`) or
    /// `postgres://…`.
    pub database_url: Option<String>,
    /// Days raw usage events are kept (`None`: forever; rollups are always kept).
    pub usage_retention_days: Option<u64>,
    /// Prices per model (`--price`), for the `cost` in usage reports.
    pub prices: std::collections::BTreeMap<String, lumen_store::Price>,
    /// Requests in flight per model (running or queued) beyond which new ones get 429.
    pub max_queued_requests: usize,
    /// KV cache per model, MiB.
    pub kv_cache_mb: usize,
    /// Per-step limits of each chat model's scheduler.
    pub scheduler: SchedulerConfig,
    /// Speculative decoding of chat models.
    pub speculative: SpecConfig,
    /// Compute threads of the pool all models share.
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
    /// Serve the playground at `/` (`--no-ui` turns it off).
    pub ui: bool,
    /// Serve `POST /v1/explain`.
    pub enable_explain: bool,
    /// Batch items this server runs at once.
    pub batch_concurrency: usize,
    /// Batch items it keeps running while interactive requests are in flight.
    pub batch_concurrency_busy: usize,
    /// How long a batch item's claim lasts without renewal.
    pub batch_lease: Duration,
    /// A file holding seconds added to the batch clock (tests of the completion window).
    pub test_clock_file: Option<PathBuf>,
    /// Where files live (`None`: `$LUMEN_HOME/files`).
    pub files_dir: Option<PathBuf>,
}

/// Largest `POST /v1/files` body: the largest file plus room for the multipart framing.
const UPLOAD_BODY_LIMIT: usize = batch::MAX_FILE_BYTES as usize + (1 << 20);

/// The models `make models` installs: a chat model and an embedding model.
pub const DEFAULT_MODELS: &[&str] = &["smollm2", "all-minilm-l6-v2"];

impl ServerConfig {
    /// Defaults: 127.0.0.1:8080, every installed model, open, 256 queued, 256 MiB KV,
    /// 5 minutes of keep-alive, 75 % of RAM, 10 minutes of load timeout.
    pub fn new(home: PathBuf) -> Self {
        ServerConfig {
            host: "127.0.0.1".into(),
            port: 8080,
            models: Vec::new(),
            preload: Vec::new(),
            aliases: Vec::new(),
            max_memory: None,
            load_timeout: Duration::from_secs(600),
            keep_alive: KeepAlive::For(Duration::from_secs(300)),
            api_keys: Vec::new(),
            admin_keys: Vec::new(),
            database_url: None,
            usage_retention_days: Some(90),
            prices: Default::default(),
            max_queued_requests: 256,
            kv_cache_mb: 256,
            scheduler: SchedulerConfig::default(),
            speculative: SpecConfig::default(),
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            request_timeout: Some(Duration::from_secs(600)),
            shutdown_grace: Duration::from_secs(30),
            max_body_bytes: 4 << 20,
            conn: ConnLimits::default(),
            weight_layout: lumen_engine::WeightLayout::default(),
            home,
            ui: true,
            enable_explain: false,
            batch_concurrency: 32,
            batch_concurrency_busy: 1,
            batch_lease: Duration::from_secs(30),
            test_clock_file: None,
            files_dir: None,
        }
    }
}

/// The router over `state`: the API alone, without the playground.
pub fn router(state: AppState) -> Router {
    app(state, false)
}

/// The whole router over `state`, with the playground's page and assets when `ui`.
pub fn app(state: AppState, ui: bool) -> Router {
    let limit = state.limits().max_body_bytes;
    let api = Router::new()
        .route("/v1/chat/completions", post(handler::<Chat>))
        .route("/v1/completions", post(handler::<Completions>))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/v1/models", get(models::list_models))
        .route("/v1/models/{id}", get(models::get_model))
        .route("/v1/usage", get(usage::own_usage))
        .route(
            "/v1/files",
            post(batch::files::upload)
                .get(batch::files::list)
                // Uploads stream to disk and count their own bytes (up to 200 MB).
                .layer(DefaultBodyLimit::max(UPLOAD_BODY_LIMIT)),
        )
        .route(
            "/v1/files/{id}",
            get(batch::files::get).delete(batch::files::delete),
        )
        .route("/v1/files/{id}/content", get(batch::files::content))
        .route(
            "/v1/batches",
            post(batch::api::create).get(batch::api::list),
        )
        .route("/v1/batches/{id}", get(batch::api::get))
        .route("/v1/batches/{id}/cancel", post(batch::api::cancel))
        .route("/tokenize", post(models::tokenize))
        .route("/detokenize", post(models::detokenize));
    // Explanations cost many forward passes: only where the operator turned them on.
    let api = if state.limits().explain {
        api.route("/v1/explain", post(explain::explain))
    } else {
        api
    };
    // Operator endpoints: administrators only (a user key gets 403).
    let admin = Router::new()
        .route("/admin/models", get(admin::list))
        .route("/admin/models/{id}/load", post(admin::load))
        .route("/admin/models/{id}/unload", post(admin::unload))
        .route(
            "/admin/tenants",
            post(keys::create_tenant).get(keys::list_tenants),
        )
        .route("/admin/tenants/{id}", patch(keys::update_tenant))
        .route("/admin/keys", post(keys::create_key).get(keys::list_keys))
        .route(
            "/admin/keys/{id}",
            get(keys::get_key)
                .patch(keys::update_key)
                .delete(keys::revoke_key),
        )
        .route("/admin/keys/{id}/rotate", post(keys::rotate_key))
        .route("/admin/usage", get(usage::admin_usage))
        .route("/admin/usage/events", get(usage::events))
        .route_layer(middleware::from_fn(require_admin));
    let api = api
        .merge(admin)
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            refuse_while_draining,
        ));
    let mut root = Router::new().merge(api);
    if ui {
        root = root.merge(crate::ui::routes());
    }
    root.route("/health", get(ops::health))
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
    let limit = if req.uri().path() == "/v1/files" {
        UPLOAD_BODY_LIMIT
    } else {
        state.limits().max_body_bytes
    };
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

/// The models `config` serves: the `--model` names or paths, or every installed model.
fn locations(config: &ServerConfig) -> Result<Vec<ModelLocation>, ServerError> {
    if config.models.is_empty() {
        return Ok(registry::list(&config.home));
    }
    config
        .models
        .iter()
        .map(|m| {
            registry::resolve(m, &config.home)
                .map_err(|e| ServerError::Startup(format!("{e} (fetch it with `lumen pull {m}`)")))
        })
        .collect()
}

/// The model manager for `config`.
pub fn manager(config: &ServerConfig) -> Result<Arc<ModelManager>, ServerError> {
    let locs = locations(config)?;
    if locs.is_empty() {
        tracing::warn!(home = %config.home.display(), "no models installed; fetch one with `lumen pull smollm2`");
    }
    let mc = ManagerConfig {
        load: LoadConfig {
            kv_cache_mb: config.kv_cache_mb,
            scheduler: config.scheduler,
            weight_layout: config.weight_layout,
            max_queued_requests: config.max_queued_requests,
            speculative: config.speculative,
        },
        max_memory: config.max_memory.unwrap_or_else(default_max_memory),
        load_timeout: config.load_timeout,
        keep_alive: config.keep_alive,
        threads: config.threads,
    };
    ModelManager::new(locs, config.aliases.iter().cloned().collect(), mc)
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
    let admin_keys = ApiKeys::new(&config.admin_keys);
    let url = config.database_url.clone().unwrap_or_else(|| {
        config
            .home
            .join(lumen_store::DEFAULT_FILE)
            .to_string_lossy()
            .into_owned()
    });
    let store = lumen_store::Store::open(&url)
        .await
        .map_err(|e| ServerError::Startup(format!("cannot open the database {url}: {e}")))?;
    let store_has_keys = store
        .any_key()
        .await
        .map_err(|e| ServerError::Startup(format!("cannot read the database {url}: {e}")))?;
    let (ledger, ledger_task) = Ledger::start(store.clone());
    let mut tenancy = Tenancy::new(
        keys,
        admin_keys,
        Some(store.clone()),
        Some(ledger.clone()),
        store_has_keys,
    );
    tenancy.retention_days = config.usage_retention_days;
    tenancy.prices = config.prices.clone();
    let tenancy = Arc::new(tenancy);
    crate::tenancy::spawn_key_watch(tenancy.clone());
    if tenancy.is_open() && !addr.ip().is_loopback() {
        tracing::warn!(%addr, "no key configured (--api-key, --admin-key or the store) and not bound to loopback: anyone who can reach this address can use the API");
    }
    tracing::info!(database = %url, open = tenancy.is_open(), "keys and usage database ready");
    let limits = Limits {
        max_body_bytes: config.max_body_bytes,
        request_timeout: config.request_timeout,
        max_prompts: config.max_queued_requests.max(1),
        explain: config.enable_explain,
    };
    let manager = manager(&config)?;
    let state = AppState::with_manager(tenancy, limits, manager.clone());
    let mut batch_config = batch::BatchConfig::new(&config.home);
    batch_config.concurrency = config.batch_concurrency.max(1);
    batch_config.busy_concurrency = config.batch_concurrency_busy.max(1);
    batch_config.lease = config.batch_lease;
    batch_config.clock = batch::Clock::new(config.test_clock_file.clone());
    if let Some(dir) = &config.files_dir {
        batch_config.files_dir = dir.clone();
    }
    tokio::fs::create_dir_all(&batch_config.files_dir)
        .await
        .map_err(|e| {
            ServerError::Startup(format!(
                "cannot create {}: {e}",
                batch_config.files_dir.display()
            ))
        })?;
    batch::files::sweep(&store, &batch_config).await?;
    let batch_config = Arc::new(batch_config);
    state.set_batch(batch_config.clone());
    batch::executor::Executor::start(state.clone(), store.clone(), batch_config).await?;
    let conns = Connections::start(listener, app(state.clone(), config.ui), config.conn);
    tracing::info!("listening on http://{addr}");
    if config.ui {
        tracing::info!(
            "playground on http://{addr}/ ({} KB; --no-ui turns it off)",
            crate::ui::page_bytes() / 1000
        );
    }
    manager.spawn_reaper();
    tracing::info!(
        models = ?manager.statuses().iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
        max_memory_mib = manager.config().max_memory >> 20,
        keep_alive = %config.keep_alive,
        threads = config.threads,
        "serving models on demand"
    );

    let preload = async {
        for name in &config.preload {
            // A path names the model `--model PATH` made of it (its file stem).
            let name = match registry::resolve(name, &config.home) {
                Ok(loc) if std::path::Path::new(name).exists() => loc.name,
                _ => name.clone(),
            };
            manager.load(&name).await?;
        }
        Ok::<(), ServerError>(())
    };
    tokio::select! {
        loaded = preload => if let Err(e) = loaded {
            conns.close_all();
            ledger_task.finish(Duration::from_secs(5)).await;
            return Err(ServerError::Startup(format!("--preload: {e}")));
        },
        _ = shutdown_signal() => {
            conns.close_all();
            ledger_task.finish(Duration::from_secs(5)).await;
            return Ok(());
        }
    };
    state.set_ready();
    tracing::info!(preloaded = ?config.preload, "ready");
    shutdown_signal().await;
    drain(&state, conns, config.shutdown_grace).await;
    // Every request has ended (or been cancelled): write the last usage events.
    ledger_task.finish(Duration::from_secs(10)).await;
    store.close().await;
    let m = manager.clone();
    let _ = tokio::task::spawn_blocking(move || m.unload_all()).await;
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
