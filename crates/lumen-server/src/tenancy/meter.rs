//! One request's meter: it holds the admission [`Grant`] and, when dropped, settles the
//! grant with the tokens really used and queues the request's usage event.
//!
//! Dropping is the only way it ends, so every path (a finished answer, an error, a timeout,
//! a client that disconnects mid-stream and so drops the response body) frees the slot,
//! refunds the unused reservation and is recorded. A meter never told how the request ended
//! records it as `cancelled` with the counts it was given.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lumen_engine::{ComputeTime, Usage};
use lumen_store::{BatchRef, Outcome, UsageEvent};

use super::Principal;
use crate::admission::Grant;
use crate::ledger::Ledger;

/// What the ledger event says about the request itself.
#[derive(Clone, Debug)]
pub struct EventInfo {
    /// The response id.
    pub request_id: String,
    /// The model.
    pub model: String,
    /// `chat.completions`, `completions` or `embeddings`.
    pub endpoint: &'static str,
    /// When the request arrived.
    pub arrived: Instant,
}

/// Where a batch item's meter leaves its usage event instead of the ledger: the batch
/// executor writes it in the transaction that records the item's answer, so an answer and
/// its usage commit together or not at all.
#[derive(Clone, Debug, Default)]
pub struct EventSlot(Arc<Mutex<Option<UsageEvent>>>);

impl EventSlot {
    /// The event left by the meter, if it has dropped.
    pub fn take(&self) -> Option<UsageEvent> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn put(&self, e: UsageEvent) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
    }
}

/// A batch item a request answers: its usage event names it and goes to `slot`.
#[derive(Clone, Debug)]
pub struct BatchItemCtx {
    /// The batch and the line's `custom_id`.
    pub item: BatchRef,
    /// Where the usage event goes.
    pub slot: EventSlot,
}

/// See the module docs.
#[derive(Debug)]
pub struct Meter {
    grant: Option<Grant>,
    ledger: Option<Ledger>,
    /// Set for a batch item: the event goes here, not to the ledger.
    batch: Option<BatchItemCtx>,
    /// A count of live requests this one is in (decremented on drop).
    live: Option<Arc<std::sync::atomic::AtomicU64>>,
    info: EventInfo,
    key_id: String,
    tenant_id: String,
    usage: Usage,
    outcome: Outcome,
    ttft: Option<Duration>,
    /// The engine time of each of the request's engine requests, read at the end.
    compute: Vec<ComputeTime>,
}

impl Meter {
    /// A meter for a request admitted with `grant`.
    pub fn new(
        grant: Option<Grant>,
        ledger: Option<Ledger>,
        principal: &Principal,
        info: EventInfo,
    ) -> Self {
        Meter {
            grant,
            ledger,
            batch: None,
            live: None,
            info,
            key_id: principal.key_id().to_string(),
            tenant_id: principal.tenant_id().to_string(),
            usage: Usage::default(),
            outcome: Outcome::Cancelled,
            ttft: None,
            compute: Vec::new(),
        }
    }

    /// This meter for batch item `batch`: its event goes to the item's slot.
    pub fn for_batch(mut self, batch: Option<BatchItemCtx>) -> Self {
        self.batch = batch;
        self
    }

    /// Counts this request in `live` until the meter drops.
    pub fn counted_in(mut self, live: Arc<std::sync::atomic::AtomicU64>) -> Self {
        live.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.live = Some(live);
        self
    }

    /// Updates the token counts so far (what a cancelled request is charged).
    pub fn set_usage(&mut self, usage: Usage) {
        self.usage = usage;
    }

    /// Says how the request ended.
    pub fn set_outcome(&mut self, outcome: Outcome) {
        self.outcome = outcome;
    }

    /// Adds an engine request whose attributed time the event records (summed at the end).
    pub fn add_compute(&mut self, compute: ComputeTime) {
        self.compute.push(compute);
    }

    /// Time to the first token, once known.
    pub fn set_ttft(&mut self, ttft: Duration) {
        self.ttft.get_or_insert(ttft);
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        if let Some(live) = self.live.take() {
            live.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        let u = self.usage;
        if let Some(g) = self.grant.as_mut() {
            g.set_used((u.prompt_tokens + u.completion_tokens) as u64);
        }
        // The grant is released here, before the event is queued.
        self.grant = None;
        if self.ledger.is_none() && self.batch.is_none() {
            return;
        }
        let event = UsageEvent {
            request_id: std::mem::take(&mut self.info.request_id),
            created_at_ms: lumen_store::clock::unix_ms(),
            key_id: std::mem::take(&mut self.key_id),
            tenant_id: std::mem::take(&mut self.tenant_id),
            model: std::mem::take(&mut self.info.model),
            endpoint: self.info.endpoint.to_string(),
            prompt_tokens: u.prompt_tokens as u64,
            cached_tokens: u.cached_prompt_tokens as u64,
            completion_tokens: u.completion_tokens as u64,
            status: self.outcome,
            latency_ms: self.info.arrived.elapsed().as_millis() as u64,
            ttft_ms: self.ttft.map(|t| t.as_millis() as u64),
            compute_us: self
                .compute
                .iter()
                .map(|c| c.get().as_micros() as u64)
                .sum(),
            batch: self.batch.as_ref().map(|b| b.item.clone()),
        };
        match (&self.batch, &self.ledger) {
            (Some(b), _) => b.slot.put(event),
            (None, Some(ledger)) => ledger.send(event),
            (None, None) => {}
        }
    }
}
