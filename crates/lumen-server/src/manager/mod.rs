//! Models on demand: every installed model is served by name, loaded on its first request,
//! unloaded after its `keep_alive` of idleness, and all of them together kept under
//! `--max-memory`.
//!
//! - **One lock, never held across an await or a load.** The registry of models is a plain
//!   mutex-guarded map; loading and unloading run on blocking threads and report back by
//!   changing a model's state (unloaded, loading, loaded, unloading) and waking every waiter ([`tokio::sync::Notify`]).
//! - **Busy models are never unloaded.** A model is busy while a handler holds a [`Lease`]
//!   on it (from lookup until the request is submitted or answered), while its engine has
//!   requests in flight (a stream outlives its handler), or while requests wait for it to
//!   load. Only idle models are evicted or expire.
//! - **The budget counts what is held, not what is wished.** A model being loaded or
//!   unloaded still counts against `--max-memory` until its thread is gone; evicted models
//!   are dropped before the new one loads.
//! - **One compute pool.** Every engine runs on the same [`ThreadPool`] and takes turns by
//!   step, so two busy models share the cores instead of oversubscribing them.

pub mod budget;
pub mod keep_alive;
pub mod lease;
pub mod load;
mod status;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use lumen_engine::registry::{ModelKind, ModelLocation};
use lumen_kernels::ThreadPool;
use tokio::sync::Notify;

use crate::error::ServerError;
use crate::metrics::{Histogram, ModelMetrics};
use crate::state::ServedModel;
pub use keep_alive::KeepAlive;
pub use lease::Lease;
pub use load::{LoadConfig, RunningEngine};
pub use status::ModelStatus;

/// How the manager behaves.
#[derive(Clone, Debug)]
pub struct ManagerConfig {
    /// How engines are sized.
    pub load: LoadConfig,
    /// Bytes all loaded models may hold together.
    pub max_memory: u64,
    /// How long a request waits for its model to load before a 503.
    pub load_timeout: Duration,
    /// Idle time after which a model is unloaded, unless a request says otherwise.
    pub keep_alive: KeepAlive,
    /// Compute threads of the shared pool.
    pub threads: usize,
}

/// Where a model is in its life.
enum Slot {
    Unloaded,
    Loading { since: Instant },
    Loaded(Box<Loaded>),
    Unloading,
}

struct Loaded {
    served: ServedModel,
    /// Held only to be dropped: dropping it stops the engine thread and frees the memory.
    _engine: RunningEngine,
    loaded_at: Instant,
}

struct Entry {
    loc: ModelLocation,
    bytes: u64,
    slot: Slot,
    keep_alive: KeepAlive,
    last_used: Instant,
    leases: usize,
    waiters: usize,
    failures: u64,
    last_error: Option<String>,
    metrics: Arc<ModelMetrics>,
    load_seconds: Arc<Histogram>,
    loads: u64,
}

impl Entry {
    fn in_flight(&self) -> u64 {
        match &self.slot {
            Slot::Loaded(l) => match &l.served {
                ServedModel::Chat(c) => c.handle.in_flight(),
                ServedModel::Embedding(e) => e.handle.in_flight(),
            },
            _ => 0,
        }
    }

    fn busy(&self) -> bool {
        self.leases > 0 || self.waiters > 0 || self.in_flight() > 0
    }

    fn holds_memory(&self) -> bool {
        !matches!(self.slot, Slot::Unloaded)
    }
}

/// Every servable model and its state.
pub struct ModelManager {
    entries: Mutex<BTreeMap<String, Entry>>,
    aliases: BTreeMap<String, String>,
    changed: Notify,
    pool: Arc<ThreadPool>,
    config: ManagerConfig,
}

/// Buckets for a model's load time, seconds.
const LOAD_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

impl ModelManager {
    /// A manager for the models at `locations` (named uniquely) with `aliases` (alias to name).
    pub fn new(
        locations: Vec<ModelLocation>,
        aliases: BTreeMap<String, String>,
        config: ManagerConfig,
    ) -> Result<Arc<ModelManager>, ServerError> {
        let mut entries = BTreeMap::new();
        for loc in locations {
            let name = loc.name.clone();
            let entry = Entry {
                bytes: load::estimate(&loc, &config.load),
                loc,
                slot: Slot::Unloaded,
                keep_alive: config.keep_alive,
                last_used: Instant::now(),
                leases: 0,
                waiters: 0,
                failures: 0,
                last_error: None,
                metrics: Default::default(),
                load_seconds: Arc::new(Histogram::new(LOAD_BUCKETS)),
                loads: 0,
            };
            if entries.insert(name.clone(), entry).is_some() {
                return Err(ServerError::Startup(format!(
                    "two models are named '{name}'"
                )));
            }
        }
        for (alias, target) in &aliases {
            if entries.contains_key(alias) {
                return Err(ServerError::Startup(format!(
                    "--alias {alias}={target}: '{alias}' is already a model's name"
                )));
            }
            if !entries.contains_key(target) {
                return Err(ServerError::Startup(format!(
                    "--alias {alias}={target}: no model '{target}' is served"
                )));
            }
        }
        Ok(Arc::new(ModelManager {
            entries: Mutex::new(entries),
            aliases,
            changed: Notify::new(),
            pool: Arc::new(ThreadPool::new(config.threads.max(1))),
            config,
        }))
    }

    /// An empty manager (no models): for tests of the router.
    pub fn empty() -> Arc<ModelManager> {
        let config = ManagerConfig {
            load: LoadConfig {
                kv_cache_mb: 16,
                scheduler: Default::default(),
                weight_layout: Default::default(),
                max_queued_requests: 1,
                speculative: Default::default(),
            },
            max_memory: 0,
            load_timeout: Duration::from_secs(1),
            keep_alive: KeepAlive::Forever,
            threads: 1,
        };
        Self::new(Vec::new(), BTreeMap::new(), config)
            .unwrap_or_else(|_| unreachable!("no models, no conflicts"))
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The manager's settings.
    pub fn config(&self) -> &ManagerConfig {
        &self.config
    }

    /// Alias to model name.
    pub fn aliases(&self) -> &BTreeMap<String, String> {
        &self.aliases
    }

    /// The model name `name` stands for (itself, or an alias's target).
    pub fn resolve(&self, name: &str) -> Result<String, ServerError> {
        let canonical = self.aliases.get(name).map(String::as_str).unwrap_or(name);
        if self.lock().contains_key(canonical) {
            Ok(canonical.to_string())
        } else {
            Err(ServerError::ModelNotFound(name.to_string()))
        }
    }

    /// The kind of model `name` (after alias resolution).
    pub fn kind(&self, name: &str) -> Result<ModelKind, ServerError> {
        let canonical = self.resolve(name)?;
        self.lock()
            .get(&canonical)
            .map(|e| e.loc.kind)
            .ok_or(ServerError::ModelNotFound(name.to_string()))
    }

    /// The first chat model's name, if any is served.
    pub fn first_chat(&self) -> Option<String> {
        self.lock()
            .values()
            .find(|e| e.loc.kind == ModelKind::Chat)
            .map(|e| e.loc.name.clone())
    }

    /// Every loaded model's engine.
    pub fn loaded(&self) -> Vec<ServedModel> {
        self.lock()
            .values()
            .filter_map(|e| match &e.slot {
                Slot::Loaded(l) => Some(l.served.clone()),
                _ => None,
            })
            .collect()
    }

    /// Bytes held by loaded, loading and unloading models.
    pub fn used_memory(&self) -> u64 {
        self.lock()
            .values()
            .filter(|e| e.holds_memory())
            .map(|e| e.bytes)
            .sum()
    }

    /// Whether every loaded model's engine thread is alive.
    pub fn all_running(&self) -> bool {
        self.loaded().iter().all(ServedModel::is_running)
    }

    /// A lease on model `name` (or its alias), loading it first if needed; waits at most
    /// `--load-timeout` for a load. `keep_alive`, when given, becomes the model's keep-alive.
    pub async fn acquire(
        self: &Arc<Self>,
        name: &str,
        keep_alive: Option<KeepAlive>,
    ) -> Result<Lease, ServerError> {
        let canonical = self.resolve(name)?;
        let deadline = tokio::time::Instant::now() + self.config.load_timeout;
        let _waiting = Waiting::new(self.clone(), &canonical);
        let mut seen_failures: Option<u64> = None;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut entries = self.lock();
                let entry = entries
                    .get_mut(&canonical)
                    .ok_or_else(|| ServerError::ModelNotFound(name.to_string()))?;
                if let Some(k) = keep_alive {
                    entry.keep_alive = k;
                }
                let failures = entry.failures;
                if let Slot::Loaded(l) = &entry.slot {
                    entry.leases += 1;
                    entry.last_used = Instant::now();
                    return Ok(Lease::new(self.clone(), canonical, l.served.clone()));
                }
                if matches!(entry.slot, Slot::Unloaded) {
                    if let Some(seen) = seen_failures.filter(|&s| failures > s) {
                        let _ = seen;
                        return Err(ServerError::LoadFailed {
                            model: canonical,
                            reason: entry.last_error.clone().unwrap_or_default(),
                        });
                    }
                    self.start_load(&mut entries, &canonical)?;
                }
                seen_failures.get_or_insert(failures);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(ServerError::LoadTimeout {
                    model: canonical,
                    secs: self.config.load_timeout.as_secs_f64(),
                });
            }
        }
    }

    /// Loads `name` now (`--preload`, `POST /admin/models/{id}/load`) and waits for it.
    pub async fn load(self: &Arc<Self>, name: &str) -> Result<(), ServerError> {
        self.acquire(name, None).await.map(drop)
    }

    /// Unloads `name` if it is idle; if busy, sets its keep-alive to zero so it goes as soon
    /// as its requests finish. Returns whether it was unloaded now.
    pub fn unload(self: &Arc<Self>, name: &str) -> Result<bool, ServerError> {
        let canonical = self.resolve(name)?;
        let mut entries = self.lock();
        let Some(entry) = entries.get_mut(&canonical) else {
            return Err(ServerError::ModelNotFound(name.to_string()));
        };
        if entry.busy() {
            entry.keep_alive = KeepAlive::For(Duration::ZERO);
            return Ok(false);
        }
        match self.take_loaded(entry) {
            Some(loaded) => {
                drop(entries);
                self.drop_in_background(vec![(canonical, loaded)]);
                Ok(true)
            }
            None => Ok(matches!(entry.slot, Slot::Unloaded)),
        }
    }

    /// Moves an idle loaded model to `Unloading`, handing its engine to the caller to drop.
    fn take_loaded(&self, entry: &mut Entry) -> Option<Box<Loaded>> {
        if !matches!(entry.slot, Slot::Loaded(_)) || entry.busy() {
            return None;
        }
        match std::mem::replace(&mut entry.slot, Slot::Unloading) {
            Slot::Loaded(l) => Some(l),
            other => {
                entry.slot = other;
                None
            }
        }
    }

    /// Marks each unloaded model `Unloaded` once its engine is gone (dropping joins the
    /// engine thread, so it runs on a blocking thread).
    fn finish_unloads(&self, unloaded: Vec<(String, Box<Loaded>)>) {
        let held: Vec<(String, Duration)> = unloaded
            .into_iter()
            .map(|(name, loaded)| {
                let held = loaded.loaded_at.elapsed();
                drop(loaded);
                (name, held)
            })
            .collect();
        // Hand the freed weights' and buffers' heap pages back, or the allocator's arenas
        // keep the high-water mark of every model ever loaded. Before the models show as
        // unloaded, so that "unloaded" means the memory is back (the budget counts on it).
        // (A load with nothing to evict trims once, after loading.)
        if !held.is_empty() {
            lumen_kernels::mem::release_free_memory();
        }
        for (name, held) in held {
            if let Some(e) = self.lock().get_mut(&name) {
                e.slot = Slot::Unloaded;
            }
            tracing::info!(model = %name, held_secs = held.as_secs_f32(), "model unloaded");
        }
        self.changed.notify_waiters();
    }

    fn drop_in_background(self: &Arc<Self>, unloaded: Vec<(String, Box<Loaded>)>) {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.finish_unloads(unloaded));
    }

    /// Starts loading `name` (the lock held), evicting idle models first if the budget needs it.
    fn start_load(
        self: &Arc<Self>,
        entries: &mut BTreeMap<String, Entry>,
        name: &str,
    ) -> Result<(), ServerError> {
        let need = entries.get(name).map(|e| e.bytes).unwrap_or(0);
        let holders: Vec<budget::Holder> = entries
            .values()
            .filter(|e| e.holds_memory())
            .map(|e| budget::Holder {
                name: e.loc.name.clone(),
                bytes: e.bytes,
                idle: matches!(e.slot, Slot::Loaded(_)) && !e.busy(),
                last_used: e.last_used,
            })
            .collect();
        let victims = budget::victims(name, need, self.config.max_memory, &holders)
            .map_err(|budget::NoRoom(m)| ServerError::OverMemory(m))?;
        let mut evicted = Vec::new();
        for v in victims {
            if let Some(entry) = entries.get_mut(&v) {
                if let Some(l) = self.take_loaded(entry) {
                    tracing::info!(model = %v, for_model = %name, "unloading the least recently used idle model to make room");
                    evicted.push((v, l));
                }
            }
        }
        let Some(entry) = entries.get_mut(name) else {
            return Err(ServerError::ModelNotFound(name.to_string()));
        };
        entry.slot = Slot::Loading {
            since: Instant::now(),
        };
        let loc = entry.loc.clone();
        let metrics = entry.metrics.clone();
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            me.finish_unloads(evicted);
            let started = Instant::now();
            let result = load::start(&loc, &me.config.load, &me.pool, &metrics);
            let secs = started.elapsed().as_secs_f64();
            // Loading frees what it only needed on the way (file buffers, the f32 copy of
            // weights stored in another precision or layout): return those pages too, so
            // RSS with a model loaded is the model.
            lumen_kernels::mem::release_free_memory();
            let mut entries = me.lock();
            if let Some(e) = entries.get_mut(&loc.name) {
                match result {
                    Ok((served, engine)) => {
                        e.slot = Slot::Loaded(Box::new(Loaded {
                            served,
                            _engine: engine,
                            loaded_at: Instant::now(),
                        }));
                        e.last_used = Instant::now();
                        e.last_error = None;
                        e.loads += 1;
                        e.load_seconds.observe(secs);
                    }
                    Err(err) => {
                        tracing::error!(model = %loc.name, error = %err, "model failed to load");
                        e.slot = Slot::Unloaded;
                        e.failures += 1;
                        e.last_error = Some(match err {
                            ServerError::LoadFailed { reason, .. } => reason,
                            other => other.to_string(),
                        });
                    }
                }
            }
            drop(entries);
            me.changed.notify_waiters();
        });
        Ok(())
    }

    /// Unloads every idle model whose keep-alive has run out; busy models count as used now.
    pub fn expire_idle(self: &Arc<Self>) {
        let now = Instant::now();
        let mut expired = Vec::new();
        {
            let mut entries = self.lock();
            for (name, e) in entries.iter_mut() {
                if !matches!(e.slot, Slot::Loaded(_)) {
                    continue;
                }
                if e.busy() {
                    e.last_used = now;
                } else if e.keep_alive.expired(now.duration_since(e.last_used)) {
                    if let Some(l) = self.take_loaded(e) {
                        expired.push((name.clone(), l));
                    }
                }
            }
        }
        if !expired.is_empty() {
            self.drop_in_background(expired);
        }
    }

    /// Runs [`ModelManager::expire_idle`] ten times a second until the manager is dropped.
    pub fn spawn_reaper(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(m) => m.expire_idle(),
                    None => return,
                }
            }
        });
    }

    /// Stops every engine (at shutdown), waiting for their threads.
    pub fn unload_all(&self) {
        let all: Vec<Box<Loaded>> = self
            .lock()
            .values_mut()
            .filter_map(|e| match std::mem::replace(&mut e.slot, Slot::Unloaded) {
                Slot::Loaded(l) => Some(l),
                other => {
                    e.slot = other;
                    None
                }
            })
            .collect();
        drop(all);
    }

    /// Ends a lease (called by [`Lease`]'s drop).
    fn release(&self, name: &str) {
        if let Some(e) = self.lock().get_mut(name) {
            e.leases = e.leases.saturating_sub(1);
            e.last_used = Instant::now();
        }
    }

    fn add_lease(&self, name: &str) {
        if let Some(e) = self.lock().get_mut(name) {
            e.leases += 1;
        }
    }

    /// How long a model has been loading, if it is.
    pub fn loading_for(&self, name: &str) -> Option<Duration> {
        match self.lock().get(name)?.slot {
            Slot::Loading { since } => Some(since.elapsed()),
            _ => None,
        }
    }
}

/// Counts a request waiting for a model, so the model is not unloaded under it.
struct Waiting {
    manager: Arc<ModelManager>,
    name: String,
}

impl Waiting {
    fn new(manager: Arc<ModelManager>, name: &str) -> Waiting {
        if let Some(e) = manager.lock().get_mut(name) {
            e.waiters += 1;
        }
        Waiting {
            manager,
            name: name.to_string(),
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some(e) = self.manager.lock().get_mut(&self.name) {
            e.waiters = e.waiters.saturating_sub(1);
        }
    }
}
