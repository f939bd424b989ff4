//! The two per-minute limits as pure arithmetic on nanosecond clocks, tested alone.
//!
//! - Requests per minute is GCRA (the generic cell rate algorithm): one "theoretical arrival
//!   time" per key; each request pushes it one emission interval (`60 s / rpm`) later, and a
//!   request is allowed while that time stays within one minute of now. A fresh key can thus
//!   take `rpm` requests at once, then one per interval: exactly `rpm` per minute, with no
//!   window edges to game and O(1) state.
//! - Tokens per minute is a token bucket holding at most `tpm`, refilled at `tpm / 60` per
//!   second, debited by each request's worst case and credited back with what it did not use.

/// Nanoseconds in a minute, the window of both limits.
pub const MINUTE_NS: u64 = 60_000_000_000;

/// GCRA state for requests per minute.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestRate {
    /// Theoretical arrival time (ns on the admission clock).
    tat: u64,
}

/// What a limit looks like at a moment (for `x-ratelimit-*` headers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitView {
    /// The limit per minute.
    pub limit: u64,
    /// What is left right now.
    pub remaining: u64,
    /// Nanoseconds until the limit is whole again.
    pub reset_ns: u64,
}

impl RequestRate {
    fn interval(rpm: u64) -> u64 {
        (MINUTE_NS / rpm.max(1)).max(1)
    }

    /// Whether one more request fits at `now`; `Err(ns)` is how long until it would.
    pub fn check(&self, rpm: u64, now: u64) -> Result<(), u64> {
        let t = Self::interval(rpm);
        let next = self.tat.max(now) + t;
        let ahead = next - now;
        if ahead <= MINUTE_NS {
            Ok(())
        } else {
            Err(ahead - MINUTE_NS)
        }
    }

    /// Takes one request at `now` (after [`RequestRate::check`] said yes).
    pub fn take(&mut self, rpm: u64, now: u64) {
        self.tat = self.tat.max(now) + Self::interval(rpm);
    }

    /// The limit as headers show it.
    pub fn view(&self, rpm: u64, now: u64) -> LimitView {
        let t = Self::interval(rpm);
        let busy = self.tat.saturating_sub(now);
        LimitView {
            limit: rpm,
            remaining: (MINUTE_NS.saturating_sub(busy) / t).min(rpm),
            reset_ns: busy,
        }
    }
}

/// Token bucket for tokens per minute.
#[derive(Clone, Copy, Debug)]
pub struct TokenRate {
    /// Tokens available at `at`.
    level: f64,
    /// When `level` was last brought up to date (ns).
    at: u64,
}

impl TokenRate {
    /// A full bucket of `tpm` at `now`.
    pub fn full(tpm: u64, now: u64) -> Self {
        TokenRate {
            level: tpm as f64,
            at: now,
        }
    }

    fn refill(&mut self, tpm: u64, now: u64) {
        let cap = tpm as f64;
        if now > self.at {
            let per_ns = cap / MINUTE_NS as f64;
            self.level = (self.level + (now - self.at) as f64 * per_ns).min(cap);
            self.at = now;
        }
        self.level = self.level.min(cap);
    }

    /// Whether `cost` tokens fit at `now`; `Err(ns)` is how long until they would.
    pub fn check(&mut self, tpm: u64, cost: u64, now: u64) -> Result<(), u64> {
        self.refill(tpm, now);
        let missing = cost as f64 - self.level;
        if missing <= 0.0 {
            return Ok(());
        }
        let ns = missing * MINUTE_NS as f64 / tpm.max(1) as f64;
        Err(ns.ceil() as u64)
    }

    /// Debits `cost` (after [`TokenRate::check`] said yes).
    pub fn take(&mut self, cost: u64) {
        self.level -= cost as f64;
    }

    /// Credits back `tokens` a request reserved and did not use.
    pub fn refund(&mut self, tpm: u64, tokens: u64, now: u64) {
        self.refill(tpm, now);
        self.level = (self.level + tokens as f64).min(tpm as f64);
    }

    /// The limit as headers show it.
    pub fn view(&mut self, tpm: u64, now: u64) -> LimitView {
        self.refill(tpm, now);
        let missing = (tpm as f64 - self.level).max(0.0);
        LimitView {
            limit: tpm,
            remaining: self.level.max(0.0).floor() as u64,
            reset_ns: (missing * MINUTE_NS as f64 / tpm.max(1) as f64).ceil() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn gcra_takes_exactly_rpm_at_once_then_one_per_interval() {
        for rpm in [1, 7, 10, 60, 1000] {
            let mut r = RequestRate::default();
            let now = 100 * S;
            let mut ok = 0;
            for _ in 0..rpm * 3 {
                if r.check(rpm, now).is_ok() {
                    r.take(rpm, now);
                    ok += 1;
                }
            }
            assert_eq!(ok, rpm, "rpm {rpm}");
            let wait = r.check(rpm, now).unwrap_err();
            assert!(wait <= MINUTE_NS / rpm && wait > 0);
            assert!(r.check(rpm, now + wait).is_ok());
            assert_eq!(r.view(rpm, now).remaining, 0);
        }
    }

    #[test]
    fn gcra_view_counts_down_and_recovers() {
        let mut r = RequestRate::default();
        let now = 5 * S;
        assert_eq!(r.view(10, now).remaining, 10);
        r.take(10, now);
        let v = r.view(10, now);
        assert_eq!((v.remaining, v.reset_ns), (9, 6 * S));
        assert_eq!(r.view(10, now + 6 * S).remaining, 10);
    }

    #[test]
    fn bucket_refuses_then_refunds() {
        let now = S;
        let mut b = TokenRate::full(1000, now);
        for _ in 0..2 {
            assert!(b.check(1000, 450, now).is_ok());
            b.take(450);
        }
        let wait = b.check(1000, 450, now).unwrap_err();
        // 350 tokens short at 1000 per minute: 21 s.
        assert_eq!(wait, 21 * S);
        b.refund(1000, 400, now);
        assert!(b.check(1000, 450, now).is_ok(), "the refund admits at once");
        b.refund(1000, 10_000, now);
        assert_eq!(b.view(1000, now).remaining, 1000, "never above capacity");
        b.take(1000);
        assert_eq!(b.view(1000, now + 30 * S).remaining, 500);
    }
}
