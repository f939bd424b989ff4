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
        let (tx, rx) = mpsc::channel(CAPACITY);
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
        CAPACITY - self.tx.capacity()
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
