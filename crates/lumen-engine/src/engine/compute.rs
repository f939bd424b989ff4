//! Engine time attributed to requests: what serving one request really cost this machine.
//!
//! The rule: each forward pass's wall time is split among the requests in it in proportion
//! to the tokens (rows) each contributed, so a 200-token prefill chunk pays 200 times what
//! a one-token decode in the same step pays, and the shares of a step add up to exactly the
//! step's time. Summed over requests, the attributed time therefore equals the engine's busy
//! time (`EngineStats::busy_ns`), which the tests check. Only the forward pass is counted
//! (sampling and detokenizing are small beside it, and a request's last share is added before
//! its final event is sent, so a caller that saw `Done` reads its whole total). A request
//! cancelled mid-way keeps what it used until then.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A request's attributed engine time, shared between the engine thread (which adds) and the
/// caller (which reads); cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct ComputeTime(Arc<AtomicU64>);

impl ComputeTime {
    /// The time attributed so far.
    pub fn get(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Relaxed))
    }

    fn add(&self, ns: u64) {
        self.0.fetch_add(ns, Ordering::Relaxed);
    }
}

/// Splits `step_ns` among `rows` (each request's clock and its rows in the step) by rows;
/// the remainder of the integer division goes to the last, so the shares sum to `step_ns`.
pub(crate) fn attribute(step_ns: u64, rows: &[(ComputeTime, usize)]) {
    let total: u64 = rows.iter().map(|r| r.1 as u64).sum();
    if total == 0 {
        return;
    }
    let mut given = 0u64;
    for (i, (clock, n)) in rows.iter().enumerate() {
        let share = if i + 1 == rows.len() {
            step_ns - given
        } else {
            // u128: a long step times many rows must not overflow.
            (step_ns as u128 * *n as u128 / total as u128) as u64
        };
        given += share;
        clock.add(share);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_follow_rows_and_sum_to_the_step() {
        let (a, b, c) = (
            ComputeTime::default(),
            ComputeTime::default(),
            ComputeTime::default(),
        );
        attribute(
            1_000_003,
            &[(a.clone(), 200), (b.clone(), 1), (c.clone(), 1)],
        );
        let ns = |t: &ComputeTime| t.get().as_nanos() as u64;
        assert_eq!(ns(&a) + ns(&b) + ns(&c), 1_000_003);
        assert_eq!(ns(&b), 1_000_003 / 202);
        assert!(ns(&a) > 199 * ns(&b) && ns(&a) < 201 * ns(&b));
        // A request with two chunks in one step (choices) adds both shares.
        attribute(10, &[(a.clone(), 1), (a.clone(), 1)]);
        assert_eq!(ns(&a) + ns(&b) + ns(&c), 1_000_013);
        attribute(5, &[]);
    }
}
