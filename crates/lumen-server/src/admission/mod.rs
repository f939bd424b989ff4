//! Admission: a key's limits checked and debited all at once before a request reaches the
//! engine, and credited back by a drop-safe [`Grant`] when it ends.
//!
//! One mutex-guarded map holds each key's live state (GCRA time for requests per minute, a
//! token bucket for tokens per minute, requests in flight, and the budget period's used and
//! reserved tokens). [`Admission::admit`] checks every limit and only then debits them all, so
//! a refused request costs nothing. The request's worst case is reserved: prompt tokens plus
//! the most it may generate, so concurrent requests cannot together overshoot a token limit
//! or a budget. The [`Grant`] returned frees the slot and refunds the unused part when
//! dropped, whatever ended the request (finish, error, timeout, client disconnect).
//!
//! With a SQLite store the state is in memory, so limits hold per process (one server per
//! SQLite file); budgets start each process from the store's rollups. With a PostgreSQL
//! store, [`shared::SharedAdmission`] keeps the same state in the database instead, so every
//! server on it enforces one set of limits; the [`Grant`] it returns behaves the same.

pub mod headers;
pub mod rate;
mod refusal;
pub mod shared;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use lumen_store::{ApiKey, KeyLimits, Period, Store};

use crate::error::ServerError;
use rate::{LimitView, RequestRate, TokenRate};
use refusal::{limited, over_budget, too_large, too_many_in_flight};

/// A key's budget period as admission tracks it.
#[derive(Clone, Copy, Debug)]
struct Budget {
    /// Unix seconds the period started.
    start: u64,
    /// Unix seconds it ends.
    end: u64,
    /// Tokens used in it (from the store at the period's first request, then counted here).
    used: u64,
    /// Tokens reserved by requests in flight.
    reserved: u64,
}

#[derive(Debug)]
struct KeyState {
    requests: RequestRate,
    tokens: Option<TokenRate>,
    in_flight: u64,
    budget: Option<Budget>,
}

/// What the `x-ratelimit-*` headers report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateSnapshot {
    /// Requests per minute, when limited.
    pub requests: Option<LimitView>,
    /// Tokens per minute, when limited.
    pub tokens: Option<LimitView>,
}

/// Live limit state of every key (one per server).
#[derive(Debug)]
pub struct Admission {
    keys: Mutex<HashMap<String, KeyState>>,
    /// Refusals by [`REFUSALS`] reason, for `/metrics`.
    refused: [AtomicU64; 4],
    epoch: Instant,
    /// Unix seconds offset added to the wall clock (tests move budget periods with it).
    clock_offset: u64,
}

/// Why admission refuses, as `/metrics` labels them: a per-minute or in-flight limit, a
/// request larger than a per-minute capacity, a spent budget, a full ledger.
pub const REFUSALS: [&str; 4] = ["rate_limited", "too_large", "insufficient_quota", "other"];

/// One party whose limits a request is checked against: its key, then the key's tenant.
#[derive(Clone, Debug)]
struct Subject {
    /// Map key: `key_…` or `tnt_…`.
    id: String,
    /// `key` or `tenant`, for messages.
    what: &'static str,
    limits: KeyLimits,
}

/// The subjects of a request by `key`: the key, and its tenant when the tenant has limits.
fn subjects(key: &ApiKey) -> Vec<Subject> {
    let mut out = vec![Subject {
        id: key.id.clone(),
        what: "key",
        limits: key.limits.clone(),
    }];
    if let (Some(t), Some(l)) = (&key.tenant, &key.tenant_limits) {
        let limited = l.rpm.is_some()
            || l.tpm.is_some()
            || l.max_parallel.is_some()
            || l.budget_tokens.is_some();
        if limited {
            out.push(Subject {
                id: t.clone(),
                what: "tenant",
                limits: l.clone(),
            });
        }
    }
    out
}

/// A request let in: frees its slots and refunds what it did not use when dropped.
#[derive(Debug)]
pub struct Grant {
    holder: Holder,
    cost: u64,
    used: u64,
}

/// Where a grant's debits live.
#[derive(Debug)]
enum Holder {
    /// This process's [`Admission`]: each subject debited, with the budget period it was
    /// charged to.
    Local {
        admission: Arc<Admission>,
        held: Vec<(Subject, Option<u64>)>,
    },
    /// The database's shared state, under this grant id.
    Shared {
        shared: Arc<shared::SharedAdmission>,
        id: String,
        /// Whether grant rows (slots, reservations) were written.
        held: bool,
        /// Subjects with tokens per minute, and that limit: where unused tokens go back.
        refunds: Vec<(String, u64)>,
    },
}

impl Admission {
    /// Empty state on the real clock.
    pub fn new() -> Arc<Self> {
        Self::with_clock_offset(0)
    }

    /// Empty state whose wall clock runs `offset` seconds ahead (budget-period tests).
    pub fn with_clock_offset(offset: u64) -> Arc<Self> {
        Arc::new(Admission {
            keys: Mutex::new(HashMap::new()),
            refused: Default::default(),
            epoch: Instant::now(),
            clock_offset: offset,
        })
    }

    fn now_ns(&self) -> u64 {
        // A minute in the future as the origin keeps GCRA's arithmetic unsigned.
        self.epoch.elapsed().as_nanos() as u64 + rate::MINUTE_NS
    }

    /// Unix seconds as budgets see them.
    pub fn wall_secs(&self) -> u64 {
        lumen_store::clock::unix_secs() + self.clock_offset
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, KeyState>> {
        // A panic while holding the lock leaves plain numbers behind: keep going.
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn state<'a>(
        map: &'a mut HashMap<String, KeyState>,
        s: &Subject,
        now: u64,
    ) -> &'a mut KeyState {
        let st = map.entry(s.id.clone()).or_insert_with(|| KeyState {
            requests: RequestRate::default(),
            tokens: None,
            in_flight: 0,
            budget: None,
        });
        if let Some(tpm) = s.limits.tpm {
            st.tokens.get_or_insert_with(|| TokenRate::full(tpm, now));
        }
        st
    }

    fn period(l: &KeyLimits) -> Option<(u64, Period)> {
        l.budget_tokens
            .map(|b| (b, l.budget_period.unwrap_or(Period::Month)))
    }

    /// Loads the tokens used this period by the key and its tenant from `store`, unless
    /// admission already counts them (the first request of a period, or of this process).
    pub async fn load_budget(
        &self,
        key: &ApiKey,
        store: Option<&Store>,
    ) -> Result<(), ServerError> {
        for s in subjects(key) {
            let Some((_, period)) = Self::period(&s.limits) else {
                continue;
            };
            let (start, end) = period.bounds(self.wall_secs());
            let known = self
                .lock()
                .get(&s.id)
                .and_then(|st| st.budget)
                .is_some_and(|b| b.start == start);
            if known {
                continue;
            }
            let used = match (store, s.what) {
                (Some(st), "tenant") => st.tenant_tokens_used(&s.id, start, end).await?,
                (Some(st), _) => st.tokens_used(&s.id, start, end).await?,
                (None, _) => 0,
            };
            let now = self.now_ns();
            let mut map = self.lock();
            let st = Self::state(&mut map, &s, now);
            if st.budget.is_none_or(|b| b.start != start) {
                st.budget = Some(Budget {
                    start,
                    end,
                    used,
                    reserved: 0,
                });
            }
        }
        Ok(())
    }

    /// Whether `s` can take a request of `cost` now; `Ok` carries the budget period start.
    fn check(
        st: &mut KeyState,
        s: &Subject,
        cost: u64,
        now: u64,
        wall: u64,
    ) -> Result<Option<u64>, ServerError> {
        let l = &s.limits;
        if let Some(tpm) = l.tpm {
            if cost > tpm {
                return Err(too_large(s, cost, tpm));
            }
        }
        let mut budget_start = None;
        if let Some((budget, period)) = Self::period(l) {
            let b = st.budget.filter(|b| wall >= b.start && wall < b.end);
            let (used, reserved) = b.map(|b| (b.used, b.reserved)).unwrap_or((0, 0));
            if used + reserved + cost > budget {
                return Err(over_budget(s, period, (used, reserved, budget), cost));
            }
            budget_start = Some(b.map(|b| b.start).unwrap_or_else(|| period.bounds(wall).0));
        }
        if let Some(max) = l.max_parallel {
            if st.in_flight >= max {
                return Err(too_many_in_flight(s, max));
            }
        }
        if let Some(rpm) = l.rpm {
            st.requests
                .check(rpm, now)
                .map_err(|w| limited("requests", s, rpm, w))?;
        }
        if let (Some(tpm), Some(bucket)) = (l.tpm, st.tokens.as_mut()) {
            bucket
                .check(tpm, cost, now)
                .map_err(|w| limited("tokens", s, tpm, w))?;
        }
        Ok(budget_start)
    }

    fn debit(
        st: &mut KeyState,
        s: &Subject,
        cost: u64,
        now: u64,
        wall: u64,
        budget_start: Option<u64>,
    ) {
        let l = &s.limits;
        if let Some(rpm) = l.rpm {
            st.requests.take(rpm, now);
        }
        if let Some(bucket) = st.tokens.as_mut() {
            bucket.take(cost);
        }
        st.in_flight += 1;
        if let Some(start) = budget_start {
            if st.budget.is_none_or(|b| b.start != start) {
                let (_, end) = l.budget_period.unwrap_or(Period::Month).bounds(wall);
                st.budget = Some(Budget {
                    start,
                    end,
                    used: 0,
                    reserved: 0,
                });
            }
            if let Some(b) = st.budget.as_mut() {
                b.reserved += cost;
            }
        }
    }

    /// Checks every limit of `key` and of its tenant for a request reserving `cost` tokens
    /// and, only if all pass, debits them all. Call [`Admission::load_budget`] first.
    pub fn admit(
        self: &Arc<Self>,
        key: &Arc<ApiKey>,
        cost: u64,
    ) -> (Result<Grant, ServerError>, RateSnapshot) {
        let now = self.now_ns();
        let wall = self.wall_secs();
        let subs = subjects(key);
        let mut map = self.lock();
        let mut starts = Vec::with_capacity(subs.len());
        let mut refused = None;
        for s in &subs {
            let st = Self::state(&mut map, s, now);
            match Self::check(st, s, cost, now, wall) {
                Ok(b) => starts.push(b),
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
        }
        let result = match refused {
            Some(e) => {
                self.note_refusal(&e);
                Err(e)
            }
            None => {
                // Every check passed: debit everything at once.
                for (s, b) in subs.iter().zip(&starts) {
                    let st = Self::state(&mut map, s, now);
                    Self::debit(st, s, cost, now, wall, *b);
                }
                Ok(Grant {
                    holder: Holder::Local {
                        admission: self.clone(),
                        held: subs.iter().cloned().zip(starts).collect(),
                    },
                    cost,
                    used: cost,
                })
            }
        };
        let snap = Self::snapshot_locked(&mut map, &subs, now);
        (result, snap)
    }

    /// Per dimension, the limit of the first subject that has one (the key's, else its
    /// tenant's).
    fn snapshot_locked(
        map: &mut HashMap<String, KeyState>,
        subs: &[Subject],
        now: u64,
    ) -> RateSnapshot {
        let mut snap = RateSnapshot::default();
        for s in subs {
            let st = Self::state(map, s, now);
            if snap.requests.is_none() {
                snap.requests = s.limits.rpm.map(|rpm| st.requests.view(rpm, now));
            }
            if snap.tokens.is_none() {
                if let (Some(tpm), Some(b)) = (s.limits.tpm, st.tokens.as_mut()) {
                    snap.tokens = Some(b.view(tpm, now));
                }
            }
        }
        snap
    }

    /// The key's limits as they stand (for responses that took no admission).
    pub fn snapshot(&self, key: &ApiKey) -> RateSnapshot {
        let subs = subjects(key);
        if subs
            .iter()
            .all(|s| s.limits.rpm.is_none() && s.limits.tpm.is_none())
        {
            return RateSnapshot::default();
        }
        let now = self.now_ns();
        let mut map = self.lock();
        Self::snapshot_locked(&mut map, &subs, now)
    }

    /// Counts a refusal under its [`REFUSALS`] reason.
    pub fn note_refusal(&self, e: &ServerError) {
        let reason = match e {
            ServerError::RateLimited { .. } => 0,
            ServerError::RequestTooLarge(_) => 1,
            ServerError::QuotaExceeded(_) => 2,
            _ => 3,
        };
        self.refused[reason].fetch_add(1, Ordering::Relaxed);
    }

    /// Requests refused so far, per [`REFUSALS`] reason.
    pub fn refused(&self) -> [u64; 4] {
        std::array::from_fn(|i| self.refused[i].load(Ordering::Relaxed))
    }

    /// Requests in flight for key or tenant `id` (tests and `/admin`).
    pub fn in_flight(&self, id: &str) -> u64 {
        self.lock().get(id).map_or(0, |s| s.in_flight)
    }

    fn release(&self, held: &[(Subject, Option<u64>)], cost: u64, used: u64) {
        let now = self.now_ns();
        let mut map = self.lock();
        let unused = cost.saturating_sub(used);
        for (s, budget_start) in held {
            let Some(st) = map.get_mut(&s.id) else {
                continue;
            };
            st.in_flight = st.in_flight.saturating_sub(1);
            if let (Some(tpm), Some(b)) = (s.limits.tpm, st.tokens.as_mut()) {
                b.refund(tpm, unused, now);
            }
            if let (Some(start), Some(b)) = (budget_start, st.budget.as_mut()) {
                if b.start == *start {
                    b.reserved = b.reserved.saturating_sub(cost);
                    b.used += used;
                }
            }
        }
    }
}

impl Grant {
    /// Sets the tokens the request really used (prompt plus generated); the rest of the
    /// reservation is refunded on drop. Never more than was reserved.
    pub fn set_used(&mut self, tokens: u64) {
        self.used = tokens.min(self.cost);
    }

    /// The tokens reserved.
    pub fn cost(&self) -> u64 {
        self.cost
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        match &self.holder {
            Holder::Local { admission, held } => admission.release(held, self.cost, self.used),
            Holder::Shared {
                shared,
                id,
                held,
                refunds,
            } => shared.release(id, *held, refunds, self.cost, self.used),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lumen_store::KeyLimits;

    fn key(limits: KeyLimits) -> Arc<ApiKey> {
        Arc::new(ApiKey {
            id: "key_t".into(),
            object: "api_key",
            name: "t".into(),
            prefix: "sk-lumen-0000".into(),
            role: lumen_store::Role::User,
            tenant: None,
            models: None,
            limits,
            expires_at: None,
            revoked: false,
            created_at: 0,
            tenant_limits: None,
        })
    }

    #[test]
    fn parallel_slots_come_back_on_drop() {
        let a = Admission::new();
        let k = key(KeyLimits {
            max_parallel: Some(2),
            ..KeyLimits::default()
        });
        let g1 = a.admit(&k, 10).0.unwrap();
        let g2 = a.admit(&k, 10).0.unwrap();
        assert!(matches!(
            a.admit(&k, 10).0,
            Err(ServerError::RateLimited { .. })
        ));
        drop(g1);
        let g3 = a.admit(&k, 10).0.unwrap();
        assert_eq!(a.in_flight("key_t"), 2);
        drop((g2, g3));
        assert_eq!(a.in_flight("key_t"), 0);
    }

    #[test]
    fn a_refused_request_debits_nothing() {
        let a = Admission::new();
        let k = key(KeyLimits {
            rpm: Some(100),
            tpm: Some(1000),
            max_parallel: Some(5),
            ..KeyLimits::default()
        });
        let g = a.admit(&k, 900).0.unwrap();
        // Refused on tokens: the request and the slot it would have taken stay free.
        assert!(a.admit(&k, 200).0.is_err());
        assert_eq!(a.in_flight("key_t"), 1);
        assert_eq!(a.snapshot(&k).requests.unwrap().remaining, 99);
        assert!(matches!(
            a.admit(&k, 2000).0,
            Err(ServerError::RequestTooLarge(_))
        ));
        assert_eq!(a.refused(), [1, 1, 0, 0]);
        drop(g);
    }

    #[test]
    fn budget_reserves_worst_case_and_keeps_what_was_used() {
        let a = Admission::new();
        let k = key(KeyLimits {
            budget_tokens: Some(1000),
            budget_period: Some(Period::Day),
            ..KeyLimits::default()
        });
        let mut grants: Vec<Grant> = Vec::new();
        let mut refused = 0;
        for _ in 0..10 {
            match a.admit(&k, 300).0 {
                Ok(g) => grants.push(g),
                Err(ServerError::QuotaExceeded(_)) => refused += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(
            (grants.len(), refused),
            (3, 7),
            "never more than the budget reserved"
        );
        for mut g in grants {
            g.set_used(100);
        }
        // 300 used; 700 left.
        assert!(a.admit(&k, 700).0.is_ok());
        assert!(matches!(
            a.admit(&k, 701).0,
            Err(ServerError::QuotaExceeded(_))
        ));
    }

    #[test]
    fn a_tenant_limit_binds_all_its_keys_at_once() {
        let a = Admission::new();
        let tenant = |id: &str| {
            let mut k = (*key(KeyLimits::default())).clone();
            k.id = id.into();
            k.tenant = Some("tnt_1".into());
            k.tenant_limits = Some(KeyLimits {
                max_parallel: Some(1),
                rpm: Some(100),
                ..KeyLimits::default()
            });
            Arc::new(k)
        };
        let (k1, k2) = (tenant("key_1"), tenant("key_2"));
        let g = a.admit(&k1, 10).0.unwrap();
        let e = a.admit(&k2, 10).0.unwrap_err();
        assert!(e.to_string().contains("tenant"), "{e}");
        assert_eq!(a.in_flight("key_2"), 0, "the refused key was not debited");
        assert_eq!(a.admit(&k2, 10).1.requests.unwrap().remaining, 99);
        drop(g);
        assert_eq!((a.in_flight("tnt_1"), a.in_flight("key_1")), (0, 0));
        assert!(a.admit(&k2, 10).0.is_ok());
    }

    #[test]
    fn budget_resets_at_the_period_boundary() {
        let k = key(KeyLimits {
            budget_tokens: Some(100),
            budget_period: Some(Period::Day),
            ..KeyLimits::default()
        });
        let today = Admission::new();
        today.admit(&k, 100).0.unwrap().set_used(100);
        assert!(today.admit(&k, 1).0.is_err());
        // The same live state seen a day later (the test clock): a fresh period.
        let tomorrow = Arc::new(Admission {
            keys: Mutex::new(std::mem::take(&mut *today.lock())),
            refused: Default::default(),
            epoch: today.epoch,
            clock_offset: 86_400,
        });
        assert!(tomorrow.admit(&k, 100).0.is_ok());
    }
}
