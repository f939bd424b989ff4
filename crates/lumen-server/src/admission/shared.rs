//! Admission against the PostgreSQL store: the same limits as [`super::Admission`], with the
//! state in the database so that every server on it shares one set.
//!
//! - **One round trip per request** to admit ([`lumen_store::Store::admit_shared`], a single
//!   statement that checks and debits every limit of the key and its tenant) and one to
//!   release, which runs on a spawned task when the [`Grant`] drops, so a request's end never
//!   waits for the database.
//! - **Slots are leases.** This server renews the grants of its requests in flight every
//!   third of the store's lease (30 s by default), so a server that dies (or loses the
//!   database) frees its slots and budget reservations within one lease; a release that
//!   cannot run (no runtime at shutdown, the database down) is covered the same way.
//! - A request larger than a tokens-per-minute limit is refused here, before the database.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, Weak};

use lumen_store::admission::{SharedDecision, SharedSubject, SharedView};
use lumen_store::{ApiKey, Period, Store};

use super::rate::LimitView;
use super::refusal::{limited, over_budget, too_large, too_many_in_flight};
use super::{subjects, Admission, Grant, Holder, RateSnapshot, Subject};
use crate::error::ServerError;

/// Grant ids of this server's requests in flight (renewed until released).
type Live = Arc<Mutex<HashSet<String>>>;

/// See the module docs.
#[derive(Debug)]
pub struct SharedAdmission {
    store: Store,
    live: Live,
}

fn view(v: SharedView) -> LimitView {
    LimitView {
        limit: v.limit,
        remaining: v.remaining,
        reset_ns: v.reset_us.saturating_mul(1000),
    }
}

fn lock(live: &Live) -> std::sync::MutexGuard<'_, HashSet<String>> {
    // Plain ids: a panic elsewhere leaves nothing half-done.
    live.lock().unwrap_or_else(|p| p.into_inner())
}

impl SharedAdmission {
    /// Admission on `store` (PostgreSQL), with a task renewing this server's leases.
    pub fn start(store: Store) -> Arc<Self> {
        let me = Arc::new(SharedAdmission {
            store,
            live: Arc::default(),
        });
        let weak: Weak<SharedAdmission> = Arc::downgrade(&me);
        let every = me.store.lease() / 3;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(me) = weak.upgrade() else { return };
                let ids: Vec<String> = lock(&me.live).iter().cloned().collect();
                if let Err(e) = me.store.renew_grants(&ids).await {
                    tracing::warn!(error = %e, grants = ids.len(), "renewing admission leases failed");
                }
            }
        });
        me
    }

    /// Checks and debits every limit of `key` and its tenant for a request reserving `cost`
    /// tokens; budget periods are those of `admission`'s wall clock.
    pub async fn admit(
        self: &Arc<Self>,
        admission: &Admission,
        key: &ApiKey,
        cost: u64,
    ) -> (Result<Grant, ServerError>, RateSnapshot) {
        let subs = subjects(key);
        if let Some((s, tpm)) = subs
            .iter()
            .find_map(|s| s.limits.tpm.filter(|&t| cost > t).map(|t| (s, t)))
        {
            return (Err(too_large(s, cost, tpm)), RateSnapshot::default());
        }
        let wall = admission.wall_secs();
        let shared: Vec<SharedSubject> = subs
            .iter()
            .map(|s| {
                let budget = Admission::period(&s.limits);
                let bounds = budget.map(|(_, p)| p.bounds(wall));
                SharedSubject {
                    id: s.id.clone(),
                    kind: s.what,
                    rpm: s.limits.rpm,
                    tpm: s.limits.tpm,
                    max_parallel: s.limits.max_parallel,
                    budget: budget.map(|(b, _)| b),
                    budget_start: bounds.map(|b| b.0),
                    budget_end: bounds.map(|b| b.1),
                }
            })
            .collect();
        let id = format!("grant_{}", lumen_store::secret::random_hex(12));
        let d = match self.store.admit_shared(&shared, &id, cost).await {
            Ok(d) => d,
            Err(e) => return (Err(e.into()), RateSnapshot::default()),
        };
        let snap = RateSnapshot {
            requests: d.rpm.map(view),
            tokens: d.tpm.map(view),
        };
        if d.ok {
            let held = d.held > 0;
            if held {
                lock(&self.live).insert(id.clone());
            }
            let refunds = subs
                .iter()
                .filter_map(|s| s.limits.tpm.map(|t| (s.id.clone(), t)))
                .collect();
            let grant = Grant {
                holder: Holder::Shared {
                    shared: self.clone(),
                    id,
                    held,
                    refunds,
                },
                cost,
                used: cost,
            };
            return (Ok(grant), snap);
        }
        (Err(refusal(&subs, &d, cost)), snap)
    }

    /// Ends grant `id` of `cost` tokens, `used` of them used (from [`Grant`]'s drop), on a
    /// spawned task; skipped when it holds no rows and has no tokens to refund.
    pub(super) fn release(
        &self,
        id: &str,
        held: bool,
        refunds: &[(String, u64)],
        cost: u64,
        used: u64,
    ) {
        let unused = cost.saturating_sub(used);
        if !held && (refunds.is_empty() || unused == 0) {
            return;
        }
        let (id, refunds) = (id.to_string(), refunds.to_vec());
        let store = self.store.clone();
        let live = self.live.clone();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(grant = %id, "no runtime to release an admission grant; its lease will expire");
            return;
        };
        rt.spawn(async move {
            if let Err(e) = store.release_shared(&id, used, cost, &refunds).await {
                tracing::warn!(error = %e, grant = %id, "releasing an admission grant failed; its lease will expire");
            }
            lock(&live).remove(&id);
        });
    }

    /// Requests in flight for key or tenant `id`, on every server.
    pub async fn in_flight(&self, id: &str) -> Result<u64, ServerError> {
        Ok(self.store.shared_in_flight(id).await?)
    }
}

/// The error of a refused decision, worded as the in-memory admission words it.
fn refusal(subs: &[Subject], d: &SharedDecision, cost: u64) -> ServerError {
    let Some(r) = &d.refusal else {
        return ServerError::StoreUnavailable("admission refused without a reason".into());
    };
    let Some(s) = subs.get(r.subject) else {
        return ServerError::StoreUnavailable("admission refused an unknown subject".into());
    };
    match r.reason.as_str() {
        "budget" => {
            let period = s.limits.budget_period.unwrap_or(Period::Month);
            over_budget(s, period, (r.used, r.reserved, r.limit), cost)
        }
        "parallel" => too_many_in_flight(s, r.limit),
        "rpm" => limited("requests", s, r.limit, r.wait_us.saturating_mul(1000)),
        _ => limited("tokens", s, r.limit, r.wait_us.saturating_mul(1000)),
    }
}
