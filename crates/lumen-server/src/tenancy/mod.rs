//! Who is calling, and what they may do: static keys, admin keys and store keys, the
//! per-request context handlers read, and the meter that admits and records a request.
//!
//! - **Open unless configured.** With no `--api-key`, no `--admin-key` and no key in the
//!   store, every request is let in as [`Principal::Open`] (the `make serve` experience);
//!   once any of them exists, every API request needs a key. Creating a key (API or CLI) on
//!   an open server closes it within a second; revoking the last key does not reopen it.
//! - **Roles.** `/admin/*` needs an admin: a `--admin-key`, or a store key with role
//!   `admin` (on an open server everyone is). Static `--api-key` keys are users.
//! - **Tenant isolation.** A store key's requests carry its tenant's id (or, without a
//!   tenant, its own id) as the prefix-cache salt, so tenants never share cached blocks.

pub mod cache;
pub mod meter;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use lumen_engine::{CallerId, PriorityInput};
use lumen_store::{ApiKey, Backend, Role, Store};

use crate::admission::shared::SharedAdmission;
use crate::admission::{Admission, RateSnapshot};
use crate::auth::ApiKeys;
use crate::error::ServerError;
use crate::ledger::Ledger;
use cache::KeyCache;
pub use meter::{BatchItemCtx, EventSlot, Meter};

/// The authenticated caller of one request.
#[derive(Clone, Debug)]
pub enum Principal {
    /// No key is configured anywhere: the server is open.
    Open,
    /// A static `--api-key`.
    Static(CallerId),
    /// A static `--admin-key`.
    Admin(CallerId),
    /// A key from the store (active when the request arrived).
    Key(Arc<ApiKey>),
}

impl Principal {
    /// Whether the caller may use `/admin/*`.
    pub fn is_admin(&self) -> bool {
        match self {
            Principal::Open | Principal::Admin(_) => true,
            Principal::Static(_) => false,
            Principal::Key(k) => k.role == Role::Admin,
        }
    }

    /// The caller's id as the engine carries it.
    pub fn caller(&self) -> Option<CallerId> {
        match self {
            Principal::Open => None,
            Principal::Static(c) | Principal::Admin(c) => Some(c.clone()),
            Principal::Key(k) => Some(CallerId::new(format!("key:{}", k.id))),
        }
    }

    /// The store key, if the caller used one.
    pub fn key(&self) -> Option<&Arc<ApiKey>> {
        match self {
            Principal::Key(k) => Some(k),
            _ => None,
        }
    }

    /// The store key's id (empty for static keys and open servers), as the ledger records it.
    pub fn key_id(&self) -> &str {
        self.key().map_or("", |k| k.id.as_str())
    }

    /// The tenant's id (empty when none).
    pub fn tenant_id(&self) -> &str {
        self.key().and_then(|k| k.tenant.as_deref()).unwrap_or("")
    }

    /// Whether the caller may use `model` (a store key's allow-list).
    pub fn allows_model(&self, model: &str) -> bool {
        self.key().is_none_or(|k| k.allows_model(model))
    }

    /// The prefix-cache salt of the caller's tenant, combined with the request's own
    /// `cache_salt` (vLLM's field), if any.
    pub fn cache_salt(&self, requested: Option<String>) -> Option<String> {
        let tenant = self
            .key()
            .map(|k| k.tenant.clone().unwrap_or_else(|| k.id.clone()));
        match (tenant, requested) {
            (None, r) => r,
            (Some(t), None) => Some(format!("tenant:{t}")),
            (Some(t), Some(r)) => Some(format!("tenant:{t}:{r}")),
        }
    }
}

/// The priority a request of a key with `max_priority` runs at: vLLM's integer scale (lower
/// runs earlier; above zero is a batch job), where the key may not ask for anything more
/// urgent than its `max_priority`, so a more urgent request is demoted to it. Names map to
/// the scale (`interactive` is 0, `batch` is 1); an unknown name is left for validation.
pub fn clamp_priority(
    requested: Option<PriorityInput>,
    max_priority: Option<i64>,
) -> Option<PriorityInput> {
    let Some(floor) = max_priority else {
        return requested;
    };
    let asked = match &requested {
        None => 0,
        Some(PriorityInput::Int(p)) => *p,
        Some(PriorityInput::Name(n)) if n == "interactive" => 0,
        Some(PriorityInput::Name(n)) if n == "batch" => 1,
        Some(PriorityInput::Name(_)) => return requested,
    };
    if asked >= floor {
        requested
    } else {
        Some(PriorityInput::Int(floor))
    }
}

/// What the auth middleware leaves in a request's extensions.
#[derive(Debug)]
pub struct RequestCtx {
    /// The caller.
    pub principal: Principal,
    /// Set when the request is a batch item run by the batch executor: it runs at batch
    /// priority, is admitted against the token budget only (rpm, tpm and parallel limits
    /// protect interactive traffic), and its usage event goes to the item's slot.
    pub batch: Option<BatchItemCtx>,
    rate: Mutex<Option<RateSnapshot>>,
}

impl RequestCtx {
    /// The context of a request from `principal`.
    pub fn new(principal: Principal) -> Self {
        RequestCtx {
            principal,
            batch: None,
            rate: Mutex::new(None),
        }
    }

    /// The context of batch item `batch` run as `principal`.
    pub fn for_batch_item(principal: Principal, batch: BatchItemCtx) -> Self {
        RequestCtx {
            principal,
            batch: Some(batch),
            rate: Mutex::new(None),
        }
    }

    /// Records the limits the response's `x-ratelimit-*` headers report.
    pub fn set_rate(&self, snap: RateSnapshot) {
        *self.rate.lock().unwrap_or_else(|p| p.into_inner()) = Some(snap);
    }

    /// The limits recorded by admission, if it ran.
    pub fn rate(&self) -> Option<RateSnapshot> {
        *self.rate.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Keys, the store, admission and the ledger: everything multi-tenancy needs.
#[derive(Debug)]
pub struct Tenancy {
    /// `--api-key` keys.
    pub static_keys: ApiKeys,
    /// `--admin-key` keys.
    pub admin_keys: ApiKeys,
    /// The store (none in router tests).
    pub store: Option<Store>,
    /// Cached key lookups.
    pub cache: KeyCache,
    /// Live limit state (in memory; with a PostgreSQL store, its refusal counts and clock).
    pub admission: Arc<Admission>,
    /// Limits shared through the database (a PostgreSQL store), used instead of
    /// `admission`'s in-memory state.
    pub shared: Option<Arc<SharedAdmission>>,
    /// The usage ledger's writer (none without a store).
    pub ledger: Option<Ledger>,
    /// Days raw usage events are kept (`None`: forever); rollups are kept regardless.
    pub retention_days: Option<u64>,
    /// Prices per model (`--price`), for the `cost` of usage reports.
    pub prices: std::collections::BTreeMap<String, lumen_store::Price>,
    store_has_keys: AtomicBool,
    /// Admitted requests that are not batch items and have not ended (the batch executor
    /// runs fewer lines while there are any).
    interactive: Arc<std::sync::atomic::AtomicU64>,
}

impl Tenancy {
    /// Static keys only: no store, no ledger (router tests).
    pub fn static_only(keys: ApiKeys) -> Self {
        Tenancy::new(keys, ApiKeys::default(), None, None, false)
    }

    /// Everything; `store_has_keys` says whether the store held a key at start. A PostgreSQL
    /// store gets shared admission (call from within the runtime: it starts the lease renewer).
    pub fn new(
        static_keys: ApiKeys,
        admin_keys: ApiKeys,
        store: Option<Store>,
        ledger: Option<Ledger>,
        store_has_keys: bool,
    ) -> Self {
        let shared = store
            .as_ref()
            .filter(|s| s.backend() == Backend::Postgres)
            .map(|s| SharedAdmission::start(s.clone()));
        Tenancy {
            static_keys,
            admin_keys,
            shared,
            store,
            cache: KeyCache::default(),
            admission: Admission::new(),
            ledger,
            retention_days: None,
            prices: Default::default(),
            store_has_keys: AtomicBool::new(store_has_keys),
            interactive: Default::default(),
        }
    }

    /// Admitted requests, other than batch items, that have not ended yet.
    pub fn interactive_in_flight(&self) -> u64 {
        self.interactive.load(Ordering::Relaxed)
    }

    /// Whether no key is needed.
    pub fn is_open(&self) -> bool {
        self.static_keys.is_open()
            && self.admin_keys.is_open()
            && !self.store_has_keys.load(Ordering::Relaxed)
    }

    /// Notes that the store now holds a key (the server stops being open).
    pub fn note_store_key(&self) {
        self.store_has_keys.store(true, Ordering::Relaxed);
    }

    /// The store, or 503 when this server has none.
    pub fn store(&self) -> Result<&Store, ServerError> {
        self.store
            .as_ref()
            .ok_or_else(|| ServerError::StoreUnavailable("this server has no database".into()))
    }

    /// Requests in flight for key or tenant `id` (on every server, with shared admission).
    pub async fn in_flight(&self, id: &str) -> Result<u64, ServerError> {
        match &self.shared {
            Some(shared) => shared.in_flight(id).await,
            None => Ok(self.admission.in_flight(id)),
        }
    }

    /// Who `token` (the bearer credentials, if any) identifies.
    pub async fn authenticate(&self, token: Option<&str>) -> Result<Principal, ServerError> {
        if self.is_open() {
            return Ok(Principal::Open);
        }
        let Some(token) = token else {
            return Err(ServerError::Unauthorized);
        };
        if let Some(c) = self.admin_keys.identify(token) {
            return Ok(Principal::Admin(c));
        }
        if let Some(c) = self.static_keys.identify(token) {
            return Ok(Principal::Static(c));
        }
        if let (Some(store), true) = (
            &self.store,
            token.starts_with(lumen_store::secret::SECRET_PREFIX),
        ) {
            if let Some(key) = self.cache.lookup(store, token).await? {
                if key.is_active(self.admission.wall_secs()) {
                    return Ok(Principal::Key(key));
                }
            }
        }
        Err(ServerError::Unauthorized)
    }

    /// Admits a request of `principal` reserving `cost` tokens, and returns the meter that
    /// records its usage and frees its limits when dropped.
    pub async fn admit(
        &self,
        ctx: Option<&RequestCtx>,
        cost: u64,
        event: meter::EventInfo,
    ) -> Result<Meter, ServerError> {
        if let Some(l) = &self.ledger {
            l.ensure_room()?;
        }
        let principal = ctx.map_or(&Principal::Open, |c| &c.principal);
        let batch = ctx.and_then(|c| c.batch.clone());
        // A batch item is checked against the budget alone: the same key with its per-minute
        // and parallel limits lifted.
        let budget_only = match (principal.key(), &batch) {
            (Some(k), Some(_)) => Some(Arc::new(budget_only(k))),
            _ => None,
        };
        let grant = match budget_only.as_ref().or(principal.key()) {
            Some(k) => {
                let (result, snap) = match &self.shared {
                    Some(shared) => shared.admit(&self.admission, k, cost).await,
                    None => {
                        self.admission.load_budget(k, self.store.as_ref()).await?;
                        self.admission.admit(k, cost)
                    }
                };
                if let Some(c) = ctx {
                    c.set_rate(snap);
                }
                if let (Err(e), Some(_)) = (&result, &self.shared) {
                    self.admission.note_refusal(e);
                }
                Some(result?)
            }
            None => None,
        };
        let meter = Meter::new(grant, self.ledger.clone(), principal, event);
        Ok(match batch {
            Some(b) => meter.for_batch(Some(b)),
            None => meter.counted_in(self.interactive.clone()),
        })
    }
}

/// `key` with only its (and its tenant's) token budget: what a batch item is admitted against.
fn budget_only(key: &ApiKey) -> ApiKey {
    let mut k = key.clone();
    let lift = |l: &mut lumen_store::KeyLimits| {
        l.rpm = None;
        l.tpm = None;
        l.max_parallel = None;
    };
    lift(&mut k.limits);
    if let Some(t) = k.tenant_limits.as_mut() {
        lift(t);
    }
    k
}

/// Prunes raw usage events older than the retention (rollups stay), at start and hourly.
fn spawn_retention(t: Arc<Tenancy>) {
    let (Some(store), Some(days)) = (t.store.clone(), t.retention_days) else {
        return;
    };
    tokio::spawn(async move {
        loop {
            let cutoff = lumen_store::clock::unix_ms().saturating_sub(days * 86_400_000);
            match store.prune_events(cutoff).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    events = n,
                    days,
                    "pruned raw usage events past the retention"
                ),
                Err(e) => tracing::warn!(error = %e, "pruning usage events failed"),
            }
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        }
    });
}

/// Starts the background tasks: the retention pruner and, on an open server, a watch that
/// refreshes whether the store holds keys every second until one appears (a key created
/// with `lumen keys create` closes an open server).
pub fn spawn_key_watch(t: Arc<Tenancy>) {
    spawn_retention(t.clone());
    if t.store.is_none() || t.store_has_keys.load(Ordering::Relaxed) {
        return;
    }
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            if t.store_has_keys.load(Ordering::Relaxed) {
                return;
            }
            if let Some(store) = &t.store {
                if let Ok(true) = store.any_key().await {
                    tracing::info!("a key was created in the store: the API now requires keys");
                    t.note_store_key();
                    return;
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> meter::EventInfo {
        meter::EventInfo {
            request_id: "r".into(),
            model: "m".into(),
            endpoint: "chat.completions",
            arrived: std::time::Instant::now(),
        }
    }

    #[tokio::test]
    async fn interactive_requests_are_counted_until_their_meter_drops_batch_items_never() {
        let t = Tenancy::static_only(ApiKeys::default());
        let a = t.admit(None, 10, info()).await.unwrap();
        let ctx = RequestCtx::new(Principal::Open);
        let b = t.admit(Some(&ctx), 10, info()).await.unwrap();
        assert_eq!(t.interactive_in_flight(), 2);
        let slot = EventSlot::default();
        let item = RequestCtx::for_batch_item(
            Principal::Open,
            BatchItemCtx {
                item: lumen_store::BatchRef {
                    batch_id: "batch_x".into(),
                    custom_id: "c".into(),
                },
                slot: slot.clone(),
            },
        );
        let c = t.admit(Some(&item), 10, info()).await.unwrap();
        assert_eq!(
            t.interactive_in_flight(),
            2,
            "a batch item is not interactive"
        );
        drop((a, b));
        assert_eq!(t.interactive_in_flight(), 0);
        drop(c);
        // The batch item's usage event went to its slot, naming the item.
        let e = slot.take().expect("event in the slot");
        assert_eq!(e.batch.map(|b| b.custom_id).as_deref(), Some("c"));
    }

    #[test]
    fn max_priority_demotes_more_urgent_requests() {
        let int = |p| Some(PriorityInput::Int(p));
        let name = |n: &str| Some(PriorityInput::Name(n.into()));
        assert_eq!(clamp_priority(None, None), None);
        assert_eq!(clamp_priority(int(-5), None), int(-5));
        assert_eq!(
            clamp_priority(None, Some(1)),
            int(1),
            "default becomes batch"
        );
        assert_eq!(clamp_priority(name("interactive"), Some(1)), int(1));
        assert_eq!(clamp_priority(name("batch"), Some(1)), name("batch"));
        assert_eq!(clamp_priority(int(-3), Some(0)), int(0));
        assert_eq!(
            clamp_priority(int(7), Some(0)),
            int(7),
            "less urgent is fine"
        );
        assert_eq!(
            clamp_priority(name("x"), Some(1)),
            name("x"),
            "left to validation"
        );
    }
}
