//! Lumen's own HTTP/1 accept loop: connection limits and a shutdown that tells half-sent
//! requests from running ones.
//!
//! `axum::serve` gives no read timeouts and closes every connection alike on shutdown, so a
//! handful of clients that send nothing, or one byte a second, hold sockets for ever and hold
//! a drain for its whole grace period. Here each connection's phase is tracked
//! ([`phase`]): its socket enforces the header, body-idle and keep-alive limits ([`guard`]),
//! at most `max_per_ip` connections come from one address, and [`Connections`] can drop the
//! half-sent ones at once while waiting, bounded, for the running ones.

pub mod guard;
pub mod phase;
mod service;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::{AbortHandle, JoinHandle};

pub use phase::{Phase, Timeouts};

use guard::Guarded;
use phase::ConnPhase;

/// Connection-level limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnLimits {
    /// Read deadlines.
    pub timeouts: Timeouts,
    /// Most simultaneous connections from one IP address.
    pub max_per_ip: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            timeouts: Timeouts::default(),
            max_per_ip: 256,
        }
    }
}

#[derive(Default)]
struct Table {
    conns: HashMap<u64, (Arc<ConnPhase>, AbortHandle, IpAddr)>,
    per_ip: HashMap<IpAddr, usize>,
}

/// The open connections, shared by the accept loop and the shutdown sequence.
#[derive(Default)]
struct Tracker {
    table: Mutex<Table>,
    next_id: AtomicU64,
}

impl Tracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // Plain maps updated in single statements: usable after a panic elsewhere.
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes a place for a connection from `ip`, unless it has `max` already.
    fn admit(&self, ip: IpAddr, max: usize) -> bool {
        let mut t = self.lock();
        let n = t.per_ip.entry(ip).or_insert(0);
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    fn release(&self, id: u64, ip: IpAddr) {
        let mut t = self.lock();
        t.conns.remove(&id);
        if let Some(n) = t.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                t.per_ip.remove(&ip);
            }
        }
    }

    fn count(&self, f: impl Fn(Phase) -> bool) -> usize {
        self.lock()
            .conns
            .values()
            .filter(|(p, ..)| f(p.get()))
            .count()
    }
}

/// Gives a connection's place back however its task ends (finished, failed or aborted).
struct Place {
    tracker: Arc<Tracker>,
    id: u64,
    ip: IpAddr,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.tracker.release(self.id, self.ip);
    }
}

/// The accept loop and its connections.
pub struct Connections {
    tracker: Arc<Tracker>,
    accept: JoinHandle<()>,
}

impl Connections {
    /// Accepts connections on `listener` and serves `app` on each, within `limits`.
    pub fn start(listener: TcpListener, app: Router, limits: ConnLimits) -> Connections {
        let tracker = Arc::new(Tracker::default());
        let accept = tokio::spawn(accept_loop(listener, app, limits, tracker.clone()));
        Connections { tracker, accept }
    }

    /// Connections whose request is whole and being answered.
    pub fn running(&self) -> usize {
        self.tracker.count(|p| p == Phase::Busy)
    }

    /// Open connections.
    pub fn open(&self) -> usize {
        self.tracker.count(|_| true)
    }

    /// Closes every connection holding a half-sent request; returns how many.
    pub fn drop_half_sent(&self) -> usize {
        let t = self.tracker.lock();
        let mut n = 0;
        for (phase, abort, _) in t.conns.values() {
            if phase.get().is_half_sent() {
                abort.abort();
                n += 1;
            }
        }
        n
    }

    /// Waits until no request is running, at most `grace`; returns how many still run.
    pub async fn wait_running(&self, grace: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let running = self.running();
            if running == 0 || tokio::time::Instant::now() >= deadline {
                return running;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops accepting and closes every connection.
    pub fn close_all(self) {
        self.accept.abort();
        for (_, abort, _) in self.tracker.lock().conns.values() {
            abort.abort();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    app: Router,
    limits: ConnLimits,
    tracker: Arc<Tracker>,
) {
    loop {
        let (stream, peer): (_, SocketAddr) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: pause instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let ip = peer.ip();
        if !tracker.admit(ip, limits.max_per_ip) {
            tracing::debug!(%ip, max = limits.max_per_ip, "refusing a connection over the per-address limit");
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let id = tracker.next_id.fetch_add(1, Ordering::Relaxed);
        let phase = Arc::new(ConnPhase::new());
        let place = Place {
            tracker: tracker.clone(),
            id,
            ip,
        };
        let io = TokioIo::new(Guarded::new(stream, phase.clone(), limits.timeouts));
        let (app, p) = (app.clone(), phase.clone());
        let svc = hyper::service::service_fn(move |req| service::call(app.clone(), p.clone(), req));
        // Registration happens before the task can finish, so its `Place` always finds it.
        let mut table = tracker.lock();
        let task = tokio::spawn(async move {
            let _place = place;
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                // The guard enforces the read limits; hyper's own header timer would also
                // cut idle keep-alive connections at the header limit.
                .header_read_timeout(None)
                .serve_connection(io, svc);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
        table.conns.insert(id, (phase, task.abort_handle(), ip));
        drop(table);
    }
}
