//! Where one connection is in its request cycle, and the read deadline that follows from it.
//!
//! A slow client can hold a connection in four places, each with its own limit: before the
//! first byte of a request (a fresh connection: the header limit; between requests: the
//! keep-alive limit), inside the headers (the header limit, from the first byte), and inside
//! the body (an idle limit between bytes). Once the request is whole the server is the slow
//! one (a long generation, a stream), and no read deadline applies.

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
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            header: Duration::from_secs(10),
            body_idle: Duration::from_secs(30),
            keep_alive: Duration::from_secs(60),
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

/// A connection's phase, shared by its I/O guard and its service.
#[derive(Debug)]
pub struct ConnPhase {
    state: Mutex<(Phase, Instant)>,
}

impl ConnPhase {
    /// A fresh connection accepted now.
    pub fn new() -> Self {
        ConnPhase {
            state: Mutex::new((Phase::Fresh, Instant::now())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Phase, Instant)> {
        // The state is two plain values: a panic elsewhere cannot leave it inconsistent.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The current phase.
    pub fn get(&self) -> Phase {
        self.lock().0
    }

    /// Enters `phase` now.
    pub fn set(&self, phase: Phase) {
        *self.lock() = (phase, Instant::now());
    }

    /// Bytes arrived: a request starts, or a body is still moving.
    pub fn on_bytes(&self) {
        let mut s = self.lock();
        match s.0 {
            Phase::Fresh | Phase::KeepAlive => *s = (Phase::Headers, Instant::now()),
            Phase::Body => s.1 = Instant::now(),
            Phase::Headers | Phase::Busy => {}
        }
    }

    /// When a pending read must give up, if it must; and which limit that is.
    pub fn deadline(&self, t: &Timeouts) -> Option<(Instant, &'static str)> {
        let (phase, since) = *self.lock();
        match phase {
            Phase::Fresh | Phase::Headers => Some((since + t.header, "request headers")),
            Phase::KeepAlive => Some((since + t.keep_alive, "keep-alive idle")),
            Phase::Body => Some((since + t.body_idle, "request body idle")),
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
        };
        let p = ConnPhase::new();
        assert_eq!(p.deadline(&t).map(|d| d.1), Some("request headers"));
        p.on_bytes();
        assert_eq!(p.get(), Phase::Headers);
        assert!(p.get().is_half_sent());
        p.set(Phase::Body);
        let (first, why) = p.deadline(&t).expect("body deadline");
        assert_eq!(why, "request body idle");
        std::thread::sleep(Duration::from_millis(5));
        p.on_bytes();
        assert!(
            p.deadline(&t).expect("body deadline").0 > first,
            "bytes push the idle deadline"
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
        p.on_bytes();
        assert_eq!(p.get(), Phase::Headers);
    }
}
