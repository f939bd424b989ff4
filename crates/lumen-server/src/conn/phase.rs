//! Where one connection is in its request cycle, and the read deadline that follows from it.
//!
//! A slow client can hold a connection in four places, each with its own limit: before the
//! first byte of a request (a fresh connection: the header limit; between requests: the
//! keep-alive limit), inside the headers (the header limit, from the first byte), and inside
//! the body (an idle limit between bytes, and a minimum average rate as Apache's
//! mod_reqtimeout has it: the body gets the idle limit plus one second per `min_body_rate`
//! bytes received, so a body trickled one byte a second cannot hold a connection for
//! hours). Once the request is whole the server is the slow one (a long generation, a
//! stream), and no read deadline applies.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The connection-level time limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// From the first byte of a request (or a fresh connection's accept) to its last header.
    pub header: Duration,
    /// Longest silence inside a request body.
    pub body_idle: Duration,
    /// Longest silence between two requests on one connection.
    pub keep_alive: Duration,
    /// Bytes per second a body must average beyond its first `body_idle`.
    pub min_body_rate: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            header: Duration::from_secs(10),
            body_idle: Duration::from_secs(30),
            keep_alive: Duration::from_secs(60),
            min_body_rate: 500,
        }
    }
}

/// The stage of the request cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Accepted; no byte yet.
    Fresh,
    /// Between two requests.
    KeepAlive,
    /// Some bytes of a request's head have arrived, not all.
    Headers,
    /// The head is parsed; the body is still arriving.
    Body,
    /// The request is whole: a handler runs or a response is being sent.
    Busy,
}

impl Phase {
    /// Whether a request has started arriving but is not whole (dropped at once on shutdown).
    pub fn is_half_sent(self) -> bool {
        matches!(self, Phase::Headers | Phase::Body)
    }
}

#[derive(Clone, Copy, Debug)]
struct State {
    phase: Phase,
    /// When the phase began, or (in `Body`) when the last bytes came.
    since: Instant,
    /// When the body began.
    body_start: Instant,
    /// Body bytes received so far.
    body_bytes: u64,
}

/// A connection's phase, shared by its I/O guard and its service.
#[derive(Debug)]
pub struct ConnPhase {
    state: Mutex<State>,
}

impl ConnPhase {
    /// A fresh connection accepted now.
    pub fn new() -> Self {
        let now = Instant::now();
        ConnPhase {
            state: Mutex::new(State {
                phase: Phase::Fresh,
                since: now,
                body_start: now,
                body_bytes: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is plain values: a panic elsewhere cannot leave it inconsistent.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The current phase.
    pub fn get(&self) -> Phase {
        self.lock().phase
    }

    /// Enters `phase` now.
    pub fn set(&self, phase: Phase) {
        let now = Instant::now();
        let mut s = self.lock();
        if phase == Phase::Body && s.phase != Phase::Body {
            s.body_start = now;
            s.body_bytes = 0;
        }
        s.phase = phase;
        s.since = now;
    }

    /// `n` bytes arrived: a request starts, or a body is still moving.
    pub fn on_bytes(&self, n: usize) {
        let now = Instant::now();
        let mut s = self.lock();
        match s.phase {
            Phase::Fresh | Phase::KeepAlive => {
                s.phase = Phase::Headers;
                s.since = now;
            }
            Phase::Body => {
                s.since = now;
                s.body_bytes += n as u64;
            }
            Phase::Headers | Phase::Busy => {}
        }
    }

    /// When a pending read must give up, if it must; and which limit that is.
    pub fn deadline(&self, t: &Timeouts) -> Option<(Instant, &'static str)> {
        let s = *self.lock();
        match s.phase {
            Phase::Fresh | Phase::Headers => Some((s.since + t.header, "request headers")),
            Phase::KeepAlive => Some((s.since + t.keep_alive, "keep-alive idle")),
            Phase::Body => {
                let idle = s.since + t.body_idle;
                let earned = Duration::from_secs_f64(
                    s.body_bytes as f64 / f64::from(t.min_body_rate.max(1)),
                );
                let rate = s.body_start + t.body_idle + earned;
                Some(if rate < idle {
                    (rate, "request body rate")
                } else {
                    (idle, "request body idle")
                })
            }
            Phase::Busy => None,
        }
    }
}

impl Default for ConnPhase {
    fn default() -> Self {
        ConnPhase::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_follow_the_phase() {
        let t = Timeouts {
            header: Duration::from_secs(1),
            body_idle: Duration::from_secs(2),
            keep_alive: Duration::from_secs(3),
            min_body_rate: 500,
        };
        let p = ConnPhase::new();
        assert_eq!(p.deadline(&t).map(|d| d.1), Some("request headers"));
        p.on_bytes(10);
        assert_eq!(p.get(), Phase::Headers);
        assert!(p.get().is_half_sent());
        p.set(Phase::Body);
        let (first, why) = p.deadline(&t).expect("body deadline");
        assert_eq!(why, "request body idle");
        std::thread::sleep(Duration::from_millis(5));
        p.on_bytes(1);
        let (second, _) = p.deadline(&t).expect("body deadline");
        assert!(second > first, "bytes push the deadline");
        // A trickle earns 2 ms per byte at 500 B/s, less than the time it takes: the rate
        // limit comes before the idle one.
        std::thread::sleep(Duration::from_millis(30));
        p.on_bytes(1);
        assert_eq!(
            p.deadline(&t).expect("body deadline").1,
            "request body rate"
        );
        p.on_bytes(1_000_000);
        assert_eq!(
            p.deadline(&t).expect("body deadline").1,
            "request body idle",
            "a fast body is held to the idle limit only"
        );
        p.set(Phase::Busy);
        assert_eq!(
            p.deadline(&t),
            None,
            "no read deadline while the server works"
        );
        assert!(!p.get().is_half_sent());
        p.set(Phase::KeepAlive);
        assert_eq!(p.deadline(&t).map(|d| d.1), Some("keep-alive idle"));
        p.on_bytes(3);
        assert_eq!(p.get(), Phase::Headers);
    }
}
