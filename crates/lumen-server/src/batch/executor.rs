//! The batch executor: one task per server that moves batches through their lifecycle and
//! runs their items.
//!
//! Each turn it looks after every active batch (validates new ones, expires those past their
//! window, finalizes those with every item answered, ends cancelled ones once nothing of
//! theirs runs) and then claims as many items as it has free slots (`--batch-concurrency`),
//! under a lease it renews while they run. An item runs through the live endpoint's handler
//! core with a [`RequestCtx`] marking it a batch item, so it is validated, templated,
//! admitted and generated exactly as the live request would be, only at batch priority and
//! against the token budget alone; its usage event comes back through the item's slot and
//! is written with its answer in one transaction. Refusals that say "later" (a full queue, a
//! model still loading, shutdown) give the item back instead of answering it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use lumen_store::{BatchRef, BatchRow, ClaimedItem, ItemOutcome, Outcome, Store, UsageEvent};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use super::line::{is_transient, refusal, request_id_of, result_line, run_body};
use super::BatchConfig;
use crate::error::ServerError;
use crate::state::AppState;
use crate::tenancy::{BatchItemCtx, EventSlot, Principal, RequestCtx};

/// How long a looked-up key is reused before it is read again (revocations take effect).
const KEY_TTL: Duration = Duration::from_secs(2);
/// Pause before a refused ("retry later") item is given back.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// See the module docs.
pub struct Executor {
    state: AppState,
    store: Store,
    config: Arc<BatchConfig>,
    /// This process's lease owner id.
    owner: String,
    /// Batches whose validation runs now.
    validating: Mutex<HashSet<String>>,
    /// Principals by key id, with when they were read.
    keys: Mutex<HashMap<String, (Instant, Principal)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The usage endpoint name of a batch endpoint.
fn endpoint_name(endpoint: &str) -> &'static str {
    match endpoint {
        "/v1/completions" => "completions",
        "/v1/embeddings" => "embeddings",
        _ => "chat.completions",
    }
}

impl Executor {
    /// Starts the executor and its lease renewer on the current runtime. On SQLite (one
    /// server per file) every item left running by an earlier process is reclaimed at once.
    pub async fn start(
        state: AppState,
        store: Store,
        config: Arc<BatchConfig>,
    ) -> Result<(), ServerError> {
        if store.backend() == lumen_store::Backend::Sqlite {
            let n = store.reclaim_all_leases().await?;
            if n > 0 {
                tracing::info!(
                    items = n,
                    "batch items left running by an earlier process will run again"
                );
            }
        }
        let ex = Arc::new(Executor {
            state,
            store,
            config,
            owner: format!("srv_{}", lumen_store::secret::random_hex(8)),
            validating: Mutex::new(HashSet::new()),
            keys: Mutex::new(HashMap::new()),
        });
        let renew = ex.clone();
        tokio::spawn(async move {
            let every = renew.config.lease / 3;
            loop {
                tokio::time::sleep(every).await;
                let until = renew.config.clock.real_ms() + renew.config.lease.as_millis() as u64;
                if let Err(e) = renew.store.renew_leases(&renew.owner, until).await {
                    tracing::warn!(error = %e, "renewing batch leases failed");
                }
            }
        });
        tokio::spawn(ex.run());
        Ok(())
    }

    async fn run(self: Arc<Self>) {
        let slots = Arc::new(Semaphore::new(self.config.concurrency.max(1)));
        let mut last_look = Instant::now() - Duration::from_secs(60);
        // Whether some batch is in progress: without one there is nothing to claim, and no
        // write transaction is spent finding that out.
        let mut running = false;
        loop {
            if self.state.is_draining() {
                return;
            }
            if last_look.elapsed() >= Duration::from_millis(500) {
                last_look = Instant::now();
                match self.look_after_batches().await {
                    Ok(r) => running = r,
                    Err(e) => {
                        running = true;
                        tracing::warn!(error = %e, "batch housekeeping failed");
                    }
                }
            }
            let free = self.free_slots(&slots);
            let mut claimed = 0;
            if running && free > 0 && self.state.is_ready() {
                let now = self.config.clock.real_ms();
                let until = now + self.config.lease.as_millis() as u64;
                match self.store.claim_items(&self.owner, free, now, until).await {
                    Ok(items) => {
                        claimed = items.len();
                        for it in items {
                            let Ok(permit) = slots.clone().acquire_owned().await else {
                                return;
                            };
                            let me = self.clone();
                            tokio::spawn(async move {
                                me.run_item(it).await;
                                drop(permit);
                                me.config.wake.notify_one();
                            });
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "claiming batch items failed"),
                }
            }
            let pause = if claimed > 0 {
                Duration::from_millis(10)
            } else {
                Duration::from_millis(250)
            };
            tokio::select! {
                _ = self.config.wake.notified() => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// How many more items to claim now: up to `--batch-concurrency` in flight on an
    /// otherwise idle server, up to `--batch-concurrency-busy` while other (interactive)
    /// requests are in flight.
    fn free_slots(&self, slots: &Semaphore) -> usize {
        let full = self.config.concurrency.max(1);
        let in_use = full - slots.available_permits().min(full);
        let target = if self.state.tenancy().interactive_in_flight() > 0 {
            self.config.busy_concurrency.clamp(1, full)
        } else {
            full
        };
        target.saturating_sub(in_use)
    }

    /// Moves every active batch along its lifecycle as far as it can go now; whether one is
    /// left in progress (with items to claim).
    async fn look_after_batches(self: &Arc<Self>) -> Result<bool, ServerError> {
        let now = self.config.clock.now_secs();
        let mut running = false;
        for b in self.store.active_batches().await? {
            match b.status.as_str() {
                "validating" => {
                    // Its items appear when validation ends: look again soon.
                    running = true;
                    self.spawn_validation(b)
                }
                "in_progress" => {
                    running = true;
                    if now >= b.expires_at {
                        if self.store.expire_batch(&b.id, now).await? {
                            tracing::info!(batch = %b.id, "batch window ended; unanswered lines expire");
                        }
                        self.finalize(&b.id).await?;
                    } else if self.store.begin_finalizing(&b.id, now).await? {
                        self.finalize(&b.id).await?;
                    }
                }
                "finalizing" => self.finalize(&b.id).await?,
                "cancelling" => {
                    let running = self
                        .store
                        .running_items(&b.id, self.config.clock.real_ms())
                        .await?;
                    if running == 0 {
                        self.finalize(&b.id).await?;
                    }
                }
                _ => {}
            }
        }
        Ok(running)
    }

    async fn finalize(&self, id: &str) -> Result<(), ServerError> {
        let b = self.store.batch_by_id(id).await?;
        super::finalize::finalize(&self.store, &self.config, &b).await
    }

    /// Validates batch `b`'s input on the blocking pool (once at a time per batch).
    fn spawn_validation(self: &Arc<Self>, b: BatchRow) {
        if !lock(&self.validating).insert(b.id.clone()) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.validate(&b).await {
                tracing::warn!(batch = %b.id, error = %e, "batch validation failed; it will be tried again");
            }
            lock(&me.validating).remove(&b.id);
            me.config.wake.notify_one();
        });
    }

    async fn validate(&self, b: &BatchRow) -> Result<(), ServerError> {
        let now = || self.config.clock.now_secs();
        let errors = |code: &str, message: String| {
            json!([{"code": code, "message": message, "param": "input_file_id", "line": null}])
                .to_string()
        };
        if self
            .store
            .get_file(&b.owner, &b.input_file_id)
            .await
            .is_err()
        {
            let e = errors(
                "file_not_found",
                format!("the input file '{}' no longer exists", b.input_file_id),
            );
            self.store.fail_batch(&b.id, &e, now()).await?;
            return Ok(());
        }
        let path = self.config.path_of(&b.input_file_id);
        let endpoint = b.endpoint.clone();
        let max_line = self.state.limits().max_body_bytes;
        let checked =
            crate::api::prepare(move || Ok(super::validate::validate(&path, &endpoint, max_line)))
                .await?;
        match checked {
            Ok(items) => {
                if self.store.start_batch(&b.id, &items, now()).await? {
                    tracing::info!(batch = %b.id, lines = items.len(), "batch validated; in progress");
                }
            }
            Err(errs) => {
                let text = serde_json::to_string(&errs).unwrap_or_else(|_| "[]".into());
                self.store.fail_batch(&b.id, &text, now()).await?;
                tracing::info!(batch = %b.id, errors = errs.len(), "batch refused at validation");
            }
        }
        Ok(())
    }

    /// Whom the items of a batch created by store key `key_id` run as.
    async fn principal(&self, key_id: &str) -> Result<Principal, ServerError> {
        if key_id.is_empty() {
            return Ok(Principal::Open);
        }
        if let Some((at, p)) = lock(&self.keys).get(key_id) {
            if at.elapsed() < KEY_TTL {
                return Ok(p.clone());
            }
        }
        let mut key = self.store.get_key(key_id).await?;
        if let Some(t) = &key.tenant {
            key.tenant_limits = Some(self.store.get_tenant(t).await?.limits);
        }
        if !key.is_active(self.state.tenancy().admission.wall_secs()) {
            return Err(ServerError::Unauthorized);
        }
        let p = Principal::Key(Arc::new(key));
        lock(&self.keys).insert(key_id.to_string(), (Instant::now(), p.clone()));
        Ok(p)
    }

    /// Runs one claimed item and records its answer (or gives it back).
    async fn run_item(&self, it: ClaimedItem) {
        let batch = match self.store.batch_by_id(&it.batch_id).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(batch = %it.batch_id, error = %e, "cannot read the batch of an item");
                return;
            }
        };
        let slot = EventSlot::default();
        let started = Instant::now();
        let principal = self.principal(&batch.key_id).await;
        let result = match &principal {
            Ok(p) => self.call(&batch, &it, p.clone(), slot.clone()).await,
            Err(e) if is_transient(e) => Err(ServerError::StoreUnavailable(e.to_string())),
            Err(_) => Err(ServerError::Unauthorized),
        };
        let (status, body) = match result {
            Ok(r) => r,
            Err(e) if is_transient(&e) => {
                tokio::time::sleep(RETRY_PAUSE).await;
                if let Err(e) = self
                    .store
                    .release_item(&it.batch_id, it.line, &self.owner)
                    .await
                {
                    tracing::warn!(error = %e, "giving a batch item back failed; its lease will end");
                }
                return;
            }
            Err(e) => refusal(e).await,
        };
        let ok = (200..300).contains(&status);
        let request_id = request_id_of(&body).unwrap_or_else(|| self.state.new_id("req"));
        let line = result_line(
            &it.batch_id,
            it.line,
            &it.custom_id,
            status,
            &request_id,
            &body,
        );
        // Requests refused before admission have no meter: record them all the same, so
        // every item has exactly one usage event.
        let event = slot.take().unwrap_or_else(|| {
            let p = principal.as_ref().ok();
            UsageEvent {
                request_id,
                created_at_ms: lumen_store::clock::unix_ms(),
                key_id: p.map_or("", |p| p.key_id()).to_string(),
                tenant_id: p.map_or("", |p| p.tenant_id()).to_string(),
                model: serde_json::from_str::<Value>(&it.body)
                    .ok()
                    .and_then(|b| b.get("model").and_then(Value::as_str).map(str::to_string))
                    .unwrap_or_default(),
                endpoint: endpoint_name(&batch.endpoint).to_string(),
                prompt_tokens: 0,
                cached_tokens: 0,
                completion_tokens: 0,
                status: Outcome::Error,
                latency_ms: started.elapsed().as_millis() as u64,
                ttft_ms: None,
                compute_us: 0,
                batch: Some(BatchRef {
                    batch_id: it.batch_id.clone(),
                    custom_id: it.custom_id.clone(),
                }),
            }
        });
        let outcome = if ok {
            ItemOutcome::Ok
        } else {
            ItemOutcome::Error
        };
        match self
            .store
            .answer_item(
                &it.batch_id,
                it.line,
                &self.owner,
                outcome,
                &line,
                Some(&event),
            )
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(batch = %it.batch_id, line = it.line, "item answered elsewhere (lease lost, expired or cancelled); answer dropped")
            }
            Err(e) => {
                tracing::warn!(batch = %it.batch_id, line = it.line, error = %e, "recording a batch answer failed; the item will run again")
            }
        }
    }

    /// Calls the batch's endpoint with the item's body as `principal`: the live handlers'
    /// own cores. `(status, body)` of the answer.
    async fn call(
        &self,
        batch: &BatchRow,
        it: &ClaimedItem,
        principal: Principal,
        slot: EventSlot,
    ) -> Result<(u16, Bytes), ServerError> {
        let ctx = Arc::new(RequestCtx::for_batch_item(
            principal,
            BatchItemCtx {
                item: BatchRef {
                    batch_id: it.batch_id.clone(),
                    custom_id: it.custom_id.clone(),
                },
                slot,
            },
        ));
        run_body(self.state.clone(), &batch.endpoint, &it.body, Some(ctx)).await
    }
}
