//! The ledger writer: usage events leave the request path through a bounded channel and one
//! task writes them to the store in batches (one transaction per batch, rollups included).
//!
//! A request never waits for the store. If the store is slow or down, events queue in the
//! channel (up to [`CAPACITY`]) while the writer retries; when the queue is full, admission
//! answers new requests 503 rather than serving them unrecorded. An event is committed
//! within about [`FLUSH_EVERY`] of its request's end (that is what a `kill -9` can lose);
//! on a clean shutdown the queue is flushed before the process exits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lumen_store::{Store, UsageEvent};
use tokio::sync::{mpsc, Notify};

use crate::error::ServerError;

/// Events that may wait in memory for the writer.
pub const CAPACITY: usize = 50_000;
/// Most events in one transaction.
const BATCH: usize = 512;
/// How long the writer lets a batch gather once it has an event.
pub const FLUSH_EVERY: Duration = Duration::from_millis(20);

/// The sending side (cheap to clone).
#[derive(Clone, Debug)]
pub struct Ledger {
    tx: mpsc::Sender<UsageEvent>,
    dropped: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
}

/// The writer task, to be awaited at shutdown.
pub struct LedgerTask {
    handle: tokio::task::JoinHandle<()>,
    stop: Arc<Notify>,
}

impl Ledger {
    /// Starts the writer on the current runtime.
    pub fn start(store: Store) -> (Ledger, LedgerTask) {
        Self::with_capacity(store, CAPACITY)
    }

    /// [`Ledger::start`] with room for `capacity` queued events.
    pub fn with_capacity(store: Store, capacity: usize) -> (Ledger, LedgerTask) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let stop = Arc::new(Notify::new());
        let written = Arc::new(AtomicU64::new(0));
        let handle = tokio::spawn(write_loop(store, rx, stop.clone(), written.clone()));
        (
            Ledger {
                tx,
                dropped: Arc::new(AtomicU64::new(0)),
                written,
            },
            LedgerTask { handle, stop },
        )
    }

    /// Refuses new work (503) while the queue has no room for its event.
    pub fn ensure_room(&self) -> Result<(), ServerError> {
        if self.tx.capacity() == 0 {
            return Err(ServerError::LedgerFull);
        }
        Ok(())
    }

    /// Queues `event` without waiting; counts (and logs) an event that found no room.
    pub fn send(&self, event: UsageEvent) {
        if let Err(e) = self.tx.try_send(event) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "usage event lost: the ledger queue is full or closed");
        }
    }

    /// Events queued and not yet written.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Events committed so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Events lost for want of room.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl LedgerTask {
    /// Writes what is queued and stops the writer, waiting at most `grace`.
    pub async fn finish(self, grace: Duration) {
        self.stop.notify_one();
        if tokio::time::timeout(grace, self.handle).await.is_err() {
            tracing::warn!("usage ledger not flushed within {grace:?}; events may be lost");
        }
    }
}

async fn write_loop(
    store: Store,
    mut rx: mpsc::Receiver<UsageEvent>,
    stop: Arc<Notify>,
    written: Arc<AtomicU64>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut stopping = false;
    loop {
        if batch.is_empty() && !stopping {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Some(ev) => batch.push(ev),
                    None => stopping = true,
                },
                _ = stop.notified() => stopping = true,
            }
            if !stopping {
                // Let a burst gather into one transaction.
                tokio::time::sleep(FLUSH_EVERY).await;
            }
        }
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(ev) => batch.push(ev),
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            if stopping {
                return;
            }
            continue;
        }
        let mut delay = Duration::from_millis(50);
        loop {
            match store.record(&batch).await {
                Ok(()) => {
                    written.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    batch.clear();
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, events = batch.len(), "writing usage events failed; retrying");
                    if stopping && delay > Duration::from_secs(2) {
                        return;
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lumen_store::Outcome;

    fn event(i: usize) -> UsageEvent {
        UsageEvent {
            request_id: format!("r{i}"),
            created_at_ms: lumen_store::clock::unix_ms(),
            key_id: String::new(),
            tenant_id: String::new(),
            model: "m".into(),
            endpoint: "completions".into(),
            prompt_tokens: 1,
            cached_tokens: 0,
            completion_tokens: 1,
            status: Outcome::Ok,
            latency_ms: 1,
            ttft_ms: None,
            compute_us: 0,
            batch: None,
        }
    }

    #[tokio::test]
    async fn events_are_written_in_batches_and_flushed_at_the_end() {
        let store = Store::open("sqlite::memory:").await.unwrap();
        let (ledger, task) = Ledger::with_capacity(store.clone(), 100);
        for i in 0..60 {
            ledger.ensure_room().unwrap();
            ledger.send(event(i));
        }
        task.finish(Duration::from_secs(10)).await;
        assert_eq!((ledger.written(), ledger.dropped()), (60, 0));
        assert_eq!(store.usage_events(0, 1000, None).await.unwrap().len(), 60);
    }

    #[tokio::test]
    async fn a_database_that_is_down_fills_the_queue_then_refuses_new_work() {
        let store = Store::open("sqlite::memory:").await.unwrap();
        // Every write now fails: the writer keeps retrying while events queue.
        store.close().await;
        let (ledger, _task) = Ledger::with_capacity(store, 8);
        let mut admitted = 0;
        for i in 0..2000 {
            if ledger.ensure_room().is_err() {
                break;
            }
            ledger.send(event(i));
            admitted += 1;
            tokio::task::yield_now().await;
        }
        // The writer holds at most one batch aside; the rest fill the queue, then new work
        // is refused.
        assert!((8..=8 + BATCH).contains(&admitted), "{admitted}");
        assert!(matches!(ledger.ensure_room(), Err(ServerError::LedgerFull)));
        assert_eq!(ledger.dropped(), 0, "nothing admitted went unrecorded");
        assert_eq!(ledger.written(), 0);
    }
}
